//! A real OCI registry for tests: Debian's `docker-registry` on a free loopback port with its
//! storage in a directory the test owns; killed when dropped. [`Registry::push_small_image`]
//! pushes a small image to it through the registry HTTP API, [`Registry::push_image`] one whose
//! layers are files (streamed, so they can be large); [`Registry::blob_file`] says where the
//! registry keeps a blob, for tests that corrupt it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Registry {
    child: Child,
    pub port: u16,
    storage: PathBuf,
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
    let storage = dir.join("storage");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
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
    let reg = Registry {
        child,
        port,
        storage,
    };
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
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/srv"]},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer =
            format!("not really a layer, but the registry does not look: {tag}").into_bytes();
        let ld = sha256(&layer);
        self.push_blob(name, &ld, layer.len() as u64, &mut &layer[..]);
        self.push_manifest(
            name,
            tag,
            config,
            &[(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                ld,
                layer.len() as u64,
            )],
        )
    }

    /// Pushes an image as `name:tag`: `config` (the image config's JSON) and `layers` (media
    /// type, file), each layer streamed from its file; returns the manifest digest (as for
    /// [`Registry::push_small_image`]).
    pub fn push_image(
        &self,
        name: &str,
        tag: &str,
        config: &[u8],
        layers: &[(&str, &Path)],
    ) -> String {
        let mut descs = Vec::new();
        for (media_type, path) in layers {
            let d = sha256_file(path);
            let mut f = std::fs::File::open(path).unwrap();
            let len = f.metadata().unwrap().len();
            self.push_blob(name, &d, len, &mut f);
            descs.push((*media_type, d, len));
        }
        self.push_manifest(name, tag, config, &descs)
    }

    /// Where the registry keeps the blob `digest` (its filesystem storage driver's layout).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Uploads `len` bytes of `body` as the blob `digest` of `name` (monolithic upload).
    fn push_blob(&self, name: &str, digest: &str, len: u64, body: &mut dyn Read) {
        let r = self.call("POST", &format!("/v2/{name}/blobs/uploads/"), None, &[]);
        assert_eq!(r.status, 202, "start the upload of blob {digest}");
        let loc = r.header("location").expect("an upload location");
        // Absolute (`http://127.0.0.1:PORT/v2/…`) or a path.
        let loc = match loc.find("/v2/") {
            Some(i) => &loc[i..],
            None => panic!("unexpected upload location {loc:?}"),
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self.call_with(
            "PUT",
            &format!("{loc}{sep}digest={digest}"),
            Some("application/octet-stream"),
            len,
            body,
        );
        assert_eq!(r.status, 201, "blob {digest}: {}", r.text());
    }

    /// Pushes `config` and a manifest naming it and `layers` (media type, digest, size, already
    /// pushed) as `name:tag`; the manifest digest, checked against the registry's.
    fn push_manifest(
        &self,
        name: &str,
        tag: &str,
        config: &[u8],
        layers: &[(&str, String, u64)],
    ) -> String {
        let cd = sha256(config);
        self.push_blob(name, &cd, config.len() as u64, &mut &config[..]);
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(t, d, n)| serde_json::json!({"mediaType": t, "digest": d, "size": n}))
            .collect();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": layers,
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
        self.call_with(
            method,
            target,
            content_type,
            body.len() as u64,
            &mut &body[..],
        )
    }

    /// As [`Registry::call`], with a body of `len` bytes streamed from `body`.
    fn call_with(
        &self,
        method: &str,
        target: &str,
        content_type: Option<&str>,
        len: u64,
        body: &mut dyn Read,
    ) -> crate::http::Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the registry");
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {len}\r\n",
            self.port,
        );
        if let Some(t) = content_type {
            req.push_str(&format!("Content-Type: {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let sent = std::io::copy(&mut body.take(len), &mut s).unwrap();
        assert_eq!(sent, len, "the body is shorter than its Content-Length");
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

/// `sha256:…` of the file at `path`, by sha256sum(1).
fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}
