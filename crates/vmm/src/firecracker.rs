//! Firecracker driver: the API requests (per `firecracker-api.yaml`) that configure and start a
//! VM from a [`VmSpec`] (its `kernel` must be the uncompressed `vmlinux`), pause/resume and
//! snapshot it, and a tiny HTTP/1.1 client for the API socket. [`launch`] starts the
//! `firecracker` process (directly or through the jailer, [`jail`]); the control channel runs
//! over the guest's vsock device, reached through its hybrid vsock socket ([`crate::vsock`]).
//! Firecracker needs KVM: on hosts where KVM cannot boot guests the agent uses QEMU
//! (docs/guest.md).

pub mod jail;
pub mod launch;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::VmmError;
use crate::qemu::VmSpec;

/// Guest CID given to every VM (each VM has its own vsock device, so it can be constant).
pub const GUEST_CID: u32 = 3;

pub fn api_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("firecracker.sock")
}

pub fn vsock_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("vsock.sock")
}

/// The guest kernel command line: serial console, reboot through the keyboard controller (which
/// makes Firecracker exit), no PCI, and the control channel on vsock (`scalebox-init` then
/// listens on vsock port 1024 instead of looking for a virtio-serial port).
pub const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1 pci=off quiet scalebox.channel=vsock";

/// One API call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: &'static str,
    pub path: String,
    pub body: Value,
}

fn req(method: &'static str, path: impl Into<String>, body: Value) -> ApiRequest {
    ApiRequest {
        method,
        path: path.into(),
        body,
    }
}

/// The configuration requests, in order, ending with InstanceStart. `spec.kernel` must be
/// the uncompressed `vmlinux`.
pub fn boot_requests(spec: &VmSpec) -> Vec<ApiRequest> {
    let mut v = vec![
        req(
            "PUT",
            "/machine-config",
            json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib }),
        ),
        req(
            "PUT",
            "/boot-source",
            json!({
                "kernel_image_path": spec.kernel.display().to_string(),
                "initrd_path": spec.initramfs.display().to_string(),
                "boot_args": BOOT_ARGS,
            }),
        ),
        req(
            "PUT",
            "/drives/rootfs",
            json!({ "drive_id": "rootfs", "path_on_host": spec.rootfs.display().to_string(), "is_root_device": false, "is_read_only": false }),
        ),
    ];
    for (i, d) in spec.disks.iter().enumerate() {
        let id = format!("disk{i}");
        v.push(req(
            "PUT",
            format!("/drives/{id}"),
            json!({ "drive_id": id, "path_on_host": d.display().to_string(), "is_root_device": false, "is_read_only": false }),
        ));
    }
    if let Some((tap, mac)) = &spec.tap {
        v.push(req(
            "PUT",
            "/network-interfaces/eth0",
            json!({ "iface_id": "eth0", "host_dev_name": tap, "guest_mac": mac }),
        ));
    }
    v.push(req(
        "PUT",
        "/vsock",
        json!({ "guest_cid": GUEST_CID, "uds_path": vsock_socket(&spec.dir).display().to_string() }),
    ));
    v.push(req(
        "PUT",
        "/actions",
        json!({ "action_type": "InstanceStart" }),
    ));
    v
}

pub fn pause_request() -> ApiRequest {
    req("PATCH", "/vm", json!({ "state": "Paused" }))
}
pub fn resume_request() -> ApiRequest {
    req("PATCH", "/vm", json!({ "state": "Resumed" }))
}
/// Full snapshot of a paused VM.
pub fn snapshot_request(snapshot_path: &Path, mem_path: &Path) -> ApiRequest {
    req(
        "PUT",
        "/snapshot/create",
        json!({ "snapshot_type": "Full", "snapshot_path": snapshot_path.display().to_string(), "mem_file_path": mem_path.display().to_string() }),
    )
}

/// Serialise a request as HTTP/1.1.
pub fn encode_http(r: &ApiRequest) -> Vec<u8> {
    let body = r.body.to_string();
    format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        r.method,
        r.path,
        body.len(),
        body
    )
    .into_bytes()
}

/// Parse an HTTP/1.1 response: (status, body). Needs the whole response (Content-Length).
pub fn parse_http_response(buf: &[u8]) -> Option<(u16, String)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status: u16 = head
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + len)?;
    Some((status, String::from_utf8_lossy(body).into_owned()))
}

/// Firecracker's `{"fault_message": ...}` error text, else the body as it came.
pub fn fault_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// Send one request on the API socket; non-2xx is an error carrying Firecracker's message.
pub fn call(socket: &Path, r: &ApiRequest) -> Result<String, VmmError> {
    let err = |e: std::io::Error| VmmError::Vmm(format!("{} {}: {e}", r.method, r.path));
    let mut s = UnixStream::connect(socket).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    s.write_all(&encode_http(r)).map_err(err)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, body)) = parse_http_response(&buf) {
            if !(200..300).contains(&status) {
                return Err(VmmError::Vmm(format!(
                    "{} {} -> {status}: {}",
                    r.method,
                    r.path,
                    fault_message(&body)
                )));
            }
            return Ok(body);
        }
        let n = s.read(&mut chunk).map_err(err)?;
        if n == 0 || buf.len() > 1 << 20 {
            return Err(VmmError::Vmm(format!(
                "{} {}: incomplete response",
                r.method, r.path
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    //! Request building checked against the Firecracker OpenAPI spec
    //! (`/work/shared/reference/firecracker-api.yaml`, or `FIRECRACKER_API_YAML`): each
    //! request's path and method exist, and each body's fields are properties of the schema
    //! the spec names, with every required field present. The YAML is read with a small
    //! indentation-based reader (no YAML dependency).

    use super::*;
    use crate::qemu::Accel;

    fn spec_text() -> String {
        // The spec lives in the shared design folder beside the repository (not copied into it).
        let p = std::env::var("FIRECRACKER_API_YAML").unwrap_or_else(|_| {
            format!(
                "{}/../../../shared/reference/firecracker-api.yaml",
                env!("CARGO_MANIFEST_DIR")
            )
        });
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {p}: {e}"))
    }

    fn indent(l: &str) -> usize {
        l.len() - l.trim_start().len()
    }

    /// Lines of the block starting after `header` at `ind` until the next line with indent <= ind.
    fn block<'a>(lines: &[&'a str], start: usize, ind: usize) -> Vec<&'a str> {
        lines[start + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > ind)
            .copied()
            .collect()
    }

    fn find(lines: &[&str], from: usize, ind: usize, key: &str) -> Option<usize> {
        (from..lines.len())
            .find(|&i| indent(lines[i]) == ind && lines[i].trim() == format!("{key}:"))
    }

    /// (properties, required) of a definition.
    fn schema(text: &str, name: &str) -> (Vec<String>, Vec<String>) {
        let lines: Vec<&str> = text.lines().collect();
        let defs = find(&lines, 0, 0, "definitions").expect("definitions section");
        let d = find(&lines, defs, 2, name).unwrap_or_else(|| panic!("definition {name}"));
        let body = block(&lines, d, 2);
        let mut props = Vec::new();
        let mut req = Vec::new();
        let mut mode = "";
        for l in body {
            if indent(l) == 4 {
                mode = l.trim().trim_end_matches(':');
                if let Some(r) = l.trim().strip_prefix("required:") {
                    // inline list form: required: [a, b]
                    req.extend(
                        r.trim()
                            .trim_matches(['[', ']'])
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty()),
                    );
                }
                continue;
            }
            match mode {
                "properties" if indent(l) == 6 && l.trim().ends_with(':') => {
                    props.push(l.trim().trim_end_matches(':').to_string())
                }
                "required" if indent(l) == 6 => {
                    req.push(l.trim().trim_start_matches("- ").to_string())
                }
                _ => {}
            }
        }
        (props, req)
    }

    /// Schema name used by the body of `method path` (its `$ref`), or None.
    fn body_schema(text: &str, method: &str, path: &str) -> Option<String> {
        let lines: Vec<&str> = text.lines().collect();
        let paths = find(&lines, 0, 0, "paths")?;
        let p = find(&lines, paths, 2, path)?;
        let pb = block(&lines, p, 2);
        let m = pb
            .iter()
            .position(|l| indent(l) == 4 && l.trim() == format!("{}:", method.to_lowercase()))?;
        let mut in_body = false;
        for l in &pb[m + 1..] {
            if indent(l) <= 4 {
                break;
            }
            if l.contains("in: body") {
                in_body = true;
            }
            if l.trim().starts_with("- name:") {
                in_body = false;
            }
            if let Some(r) = l.trim().strip_prefix("$ref:")
                && in_body
            {
                return Some(
                    r.trim()
                        .trim_matches(['"', '\''])
                        .rsplit('/')
                        .next()?
                        .to_string(),
                );
            }
        }
        None
    }

    fn spec_path(p: &str) -> String {
        for (prefix, templ) in [
            ("/drives/", "/drives/{drive_id}"),
            ("/network-interfaces/", "/network-interfaces/{iface_id}"),
        ] {
            if p.starts_with(prefix) {
                return templ.to_string();
            }
        }
        p.to_string()
    }

    fn check(text: &str, r: &ApiRequest) {
        let path = spec_path(&r.path);
        let name = body_schema(text, r.method, &path)
            .unwrap_or_else(|| panic!("{} {path} with a body schema not in spec", r.method));
        let (props, required) = schema(text, &name);
        let obj = r.body.as_object().expect("object body");
        for k in obj.keys() {
            assert!(
                props.contains(k),
                "{} {path}: field {k} not in {name} {props:?}",
                r.method
            );
        }
        for k in &required {
            assert!(
                obj.contains_key(k),
                "{} {path}: required {k} of {name} missing",
                r.method
            );
        }
    }

    fn test_spec() -> VmSpec {
        VmSpec {
            id: "fc1".into(),
            dir: "/run/sb/fc1".into(),
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initrd".into(),
            rootfs: "/r.img".into(),
            disks: vec!["/v.img".into()],
            vcpus: 2,
            memory_mib: 256,
            tap: Some(("tap1".into(), "52:54:00:00:00:02".into())),
            netns: None,
            accel: Accel::Kvm,
        }
    }

    #[test]
    fn requests_match_the_openapi_spec() {
        let text = spec_text();
        let reqs = boot_requests(&test_spec());
        assert_eq!(reqs.last().unwrap().body["action_type"], "InstanceStart");
        assert!(reqs.iter().any(|r| r.path == "/vsock"));
        assert!(reqs.iter().any(|r| r.path == "/network-interfaces/eth0"));
        for r in reqs.iter().chain([
            &pause_request(),
            &resume_request(),
            &snapshot_request(Path::new("/s"), Path::new("/m")),
        ]) {
            check(&text, r);
        }
        // enum values
        assert!(
            text.contains("- InstanceStart")
                && text.contains("- Paused")
                && text.contains("- Resumed")
        );
    }

    #[test]
    fn checker_catches_wrong_fields() {
        let text = spec_text();
        let bad = ApiRequest {
            method: "PUT",
            path: "/machine-config".into(),
            body: json!({ "vcpus": 1, "mem_size_mib": 1 }),
        };
        assert!(std::panic::catch_unwind(|| check(&text, &bad)).is_err());
    }

    /// `call` against a stand-in API socket that refuses the request the way Firecracker does.
    #[test]
    fn non_2xx_carries_the_fault_message() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            for answer in ["HTTP/1.1 204 No Content\r\n\r\n".to_string(), {
                let b = r#"{"fault_message":"Invalid kernel path: No such file"}"#;
                format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
            }] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("PUT /boot-source "));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let r = boot_requests(&test_spec())
            .into_iter()
            .find(|r| r.path == "/boot-source")
            .unwrap();
        assert_eq!(call(&sock, &r).unwrap(), "");
        let e = call(&sock, &r).unwrap_err().to_string();
        assert_eq!(
            e,
            "PUT /boot-source -> 400: Invalid kernel path: No such file"
        );
        t.join().unwrap();
        assert_eq!(fault_message("oops "), "oops");
    }

    #[test]
    fn http_roundtrip() {
        let r = pause_request();
        let enc = String::from_utf8(encode_http(&r)).unwrap();
        assert!(enc.starts_with("PATCH /vm HTTP/1.1\r\n"));
        assert!(enc.ends_with("\r\n\r\n{\"state\":\"Paused\"}"));
        assert!(enc.contains("Content-Length: 18\r\n"));
        let resp =
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 21\r\n\r\n{\"fault_message\":\"x\"}";
        assert_eq!(
            parse_http_response(resp),
            Some((400, "{\"fault_message\":\"x\"}".into()))
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Some((204, String::new()))
        );
        assert_eq!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"),
            None
        );
    }
}
