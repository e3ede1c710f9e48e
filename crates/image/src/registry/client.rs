//! The HTTP side of a registry pull: `GET`s against one registry, answering its bearer-token
//! challenge (`WWW-Authenticate: Bearer realm=...`, anonymous tokens only) once; manifests and
//! configs read whole but only up to [`MAX_METADATA`]; blobs streamed to files through sha256
//! ([`crate::blob::save_verified`]), never held in memory.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::ImageError;
use crate::blob::{MAX_METADATA, metadata_too_big, save_verified};

/// The most a blob without a declared size may weigh.
const MAX_BLOB: u64 = 8 << 30;

pub(super) struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// The value of `key="..."` in a `WWW-Authenticate` header.
fn challenge_param(h: &str, key: &str) -> Option<String> {
    let i = h.find(&format!("{key}=\""))? + key.len() + 2;
    Some(h[i..].split('"').next()?.to_owned())
}

impl Client {
    /// A client for the registry at `host` (HTTPS, or plain HTTP when `insecure_http`).
    pub(super) fn new(host: &str, insecure_http: bool) -> Client {
        // No limit on a whole request: a multi-GiB layer may take long. A registry that stops
        // sending (or never answers) is given up on after two minutes of silence.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .timeout_per_read(Some(Duration::from_secs(120)))
            .build()
            .into();
        let scheme = if insecure_http { "http" } else { "https" };
        Client {
            agent,
            base: format!("{scheme}://{host}"),
            token: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path`; the response once it is `200` (a `401` bearer challenge is answered once).
    fn call(
        &mut self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
        let url = self.url(path);
        for attempt in 0..2 {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            let resp = req
                .call()
                .map_err(|e| ImageError::Invalid(format!("registry request {url} failed: {e}")))?;
            let status = resp.status().as_u16();
            if status == 401 && attempt == 0 {
                let h = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                self.token = Some(self.token_for(&h)?);
                continue;
            }
            if status != 200 {
                return Err(ImageError::Invalid(format!(
                    "registry answered {status} for {url}"
                )));
            }
            return Ok(resp);
        }
        Err(ImageError::Invalid("registry authentication failed".into()))
    }

    /// An anonymous token from the realm of the challenge `h`.
    fn token_for(&self, h: &str) -> Result<String, ImageError> {
        let realm = challenge_param(h, "realm").ok_or_else(|| {
            ImageError::Invalid(format!(
                "registry requires authentication ({h:?}); only anonymous bearer tokens are supported"
            ))
        })?;
        let mut q = Vec::new();
        for k in ["service", "scope"] {
            if let Some(v) = challenge_param(h, k) {
                q.push(format!("{k}={v}"));
            }
        }
        let tok_url = format!("{realm}?{}", q.join("&"));
        let mut t = self
            .agent
            .get(&tok_url)
            .call()
            .map_err(|e| ImageError::Invalid(format!("token request {tok_url}: {e}")))?;
        let body: Value = t
            .body_mut()
            .with_config()
            .limit(MAX_METADATA)
            .read_to_vec()
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| {
                ImageError::Invalid("the registry's token endpoint returned no token".into())
            })
    }

    /// A manifest, index or config (`what`) read whole, refused above [`MAX_METADATA`]; with
    /// the `Docker-Content-Digest` the registry sent.
    pub(super) fn small(
        &mut self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<(Vec<u8>, Option<String>), ImageError> {
        let mut resp = self.call(path, accept)?;
        let url = self.url(path);
        let what = format!("{what} {url}");
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(n) = resp.body().content_length().filter(|&n| n > MAX_METADATA) {
            return Err(metadata_too_big(&what, Some(n)));
        }
        let mut buf = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_METADATA + 1)
            .read_to_end(&mut buf)
            .map_err(ImageError::io(format!("read {what}")))?;
        if buf.len() as u64 > MAX_METADATA {
            return Err(metadata_too_big(&what, None));
        }
        Ok((buf, digest))
    }

    /// Streams the blob `digest` of repository `name` into the file `dest`, hashing it on the
    /// way (see [`save_verified`]: on a mismatch or a broken download nothing is left at
    /// `dest`); at most `size` bytes, the size its descriptor declares. Returns its length.
    pub(super) fn download(
        &mut self,
        name: &str,
        digest: &str,
        size: Option<u64>,
        dest: &Path,
    ) -> Result<u64, ImageError> {
        let path = format!("/v2/{name}/blobs/{digest}");
        let resp = self.call(&path, None)?;
        let url = self.url(&path);
        save_verified(
            resp.into_body().into_reader(),
            digest,
            size.unwrap_or(MAX_BLOB),
            dest,
            &url,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A one-shot HTTP server on loopback answering each of `responses` to one request, in
    /// order; its `host:port`.
    fn serve(responses: Vec<Vec<u8>>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap() == 1 {
                    req.push(b[0]);
                }
                let _ = s.write_all(&r);
            }
        });
        addr
    }

    #[test]
    fn metadata_reads_are_capped() {
        let big = MAX_METADATA as usize + 1;
        // Declared too big: refused before the body is read. Chunked (no length): refused
        // once more than the cap has arrived.
        let mut chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for _ in 0..big.div_ceil(1 << 16) {
            chunked.extend_from_slice(format!("{:x}\r\n", 1 << 16).as_bytes());
            chunked.extend_from_slice(&[b' '; 1 << 16]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let host = serve(vec![
            format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\nConnection: close\r\n\r\n")
                .into_bytes(),
            chunked,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDocker-Content-Digest: sha256:x\r\nConnection: close\r\n\r\n{}".to_vec(),
        ]);
        let mut c = Client::new(&host, true);
        let e = c.small("/v2/a/manifests/v1", None, "manifest").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "invalid image: manifest http://{host}/v2/a/manifests/v1 is 4194305 bytes; image metadata (index, manifest, config) is limited to 4 MiB"
            )
        );
        let e = c
            .small("/v2/a/blobs/sha256:c", None, "image config")
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("/v2/a/blobs/sha256:c is larger than 4 MiB; image metadata"),
            "{e}"
        );
        let (body, digest) = c.small("/v2/a/manifests/v1", None, "manifest").unwrap();
        assert_eq!(
            (&body[..], digest.as_deref()),
            (&b"{}"[..], Some("sha256:x"))
        );
    }

    #[test]
    fn bearer_challenges() {
        let h = r#"Bearer realm="https://auth.example/token",service="reg.example",scope="repository:a/b:pull""#;
        assert_eq!(
            challenge_param(h, "realm").as_deref(),
            Some("https://auth.example/token")
        );
        assert_eq!(
            challenge_param(h, "scope").as_deref(),
            Some("repository:a/b:pull")
        );
        assert_eq!(challenge_param(h, "error"), None);
    }
}
