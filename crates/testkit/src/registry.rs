//! A real OCI registry for tests: Debian's `docker-registry` on a free loopback port with its
//! storage in a directory the test owns; killed when dropped. [`Registry::push_small_image`]
//! pushes a small image to it through the registry HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    child: Child,
    pub port: u16,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the registry (config and storage under `dir`) and waits until it accepts connections.
pub fn start_registry(dir: &Path) -> Registry {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("/usr/bin/docker-registry (Debian package docker-registry)");
    let reg = Registry { child, port };
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return reg;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("docker-registry did not start");
}

impl Registry {
    /// Pushes a small image as `name:tag` (a config and one layer whose bytes name `tag`, so
    /// each tag is a different image) through the registry HTTP API; returns the manifest digest
    /// the registry reported, checked against the sha256 of the manifest pushed.
    pub fn push_small_image(&self, name: &str, tag: &str) -> String {
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/srv"]},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let layer =
            format!("not really a layer, but the registry does not look: {tag}").into_bytes();
        let (cd, ld) = (sha256(&config), sha256(&layer));
        for (d, blob) in [(&cd, &config), (&ld, &layer)] {
            let r = self.call("POST", &format!("/v2/{name}/blobs/uploads/"), None, &[]);
            assert_eq!(r.status, 202, "start the upload of blob {d}");
            let loc = r.header("location").expect("an upload location");
            // Absolute (`http://127.0.0.1:PORT/v2/…`) or a path.
            let loc = match loc.find("/v2/") {
                Some(i) => &loc[i..],
                None => panic!("unexpected upload location {loc:?}"),
            };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = self.call(
                "PUT",
                &format!("{loc}{sep}digest={d}"),
                Some("application/octet-stream"),
                blob,
            );
            assert_eq!(r.status, 201, "blob {d}");
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}],
        }))
        .unwrap();
        let r = self.call(
            "PUT",
            &format!("/v2/{name}/manifests/{tag}"),
            Some("application/vnd.oci.image.manifest.v1+json"),
            &manifest,
        );
        assert_eq!(r.status, 201, "manifest: {}", r.text());
        let reported = r
            .header("docker-content-digest")
            .expect("Docker-Content-Digest")
            .to_owned();
        assert_eq!(reported, sha256(&manifest));
        reported
    }

    /// One HTTP/1.1 request to the registry (blocking; the connection is closed after it).
    fn call(
        &self,
        method: &str,
        target: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> crate::http::Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the registry");
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some(t) = content_type {
            req.push_str(&format!("Content-Type: {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        crate::http::parse(&raw).unwrap_or_else(|| {
            panic!(
                "malformed registry response: {:?}",
                String::from_utf8_lossy(&raw)
            )
        })
    }
}

/// `sha256:…` of `data`, by sha256sum(1).
fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}
