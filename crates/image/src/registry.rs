//! Pulling from an OCI distribution registry (the `/v2/` API): manifests (following image
//! indexes / manifest lists to linux/amd64, as [`crate::platform`] chooses), config and layer
//! blobs (held in memory), all digest-verified; the bearer-token challenge
//! (`WWW-Authenticate: Bearer realm=...`) for anonymous pulls. HTTPS by default; plain HTTP
//! only when asked (a registry on loopback).

use std::io::Read;

use serde_json::Value;

use crate::oci::{self, BlobSource, Layer, Resolved, sha256, verify};
use crate::{ImageError, platform};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
const MAX_BLOB: u64 = 8 << 30;

/// `host[:port]/name[:tag|@sha256:...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub host: String,
    pub name: String,
    pub reference: String,
}

pub fn parse_reference(r: &str) -> Result<Reference, ImageError> {
    let bad = |why: &str| {
        ImageError::Invalid(format!(
            "image reference {r:?}: {why} (expected registry.example.com[:port]/name[:tag|@sha256:...])"
        ))
    };
    // Docker's rules: the first component is a registry host when it has a `.` or a `:` or is
    // `localhost`; otherwise the image is on Docker Hub, one-component names under `library/`.
    let (host, rest) = match r.split_once('/') {
        Some((h, rest)) if h.contains('.') || h.contains(':') || h == "localhost" => {
            let h = if h == "docker.io" || h == "index.docker.io" {
                "registry-1.docker.io"
            } else {
                h
            };
            (h.to_owned(), rest.to_owned())
        }
        Some(_) => ("registry-1.docker.io".to_owned(), r.to_owned()),
        None => ("registry-1.docker.io".to_owned(), format!("library/{r}")),
    };
    let host = host.as_str();
    let rest = if host == "registry-1.docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    let rest = rest.as_str();
    let (name, reference) = if let Some((n, d)) = rest.split_once('@') {
        // `name:tag@sha256:…`: the digest decides; the tag is informative.
        let n = match n.rsplit_once(':') {
            Some((base, tag)) if !tag.contains('/') => base,
            _ => n,
        };
        (n.to_owned(), d.to_owned())
    } else {
        match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n.to_owned(), t.to_owned()),
            _ => (rest.to_owned(), "latest".to_owned()),
        }
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
    {
        return Err(bad("invalid repository name"));
    }
    Ok(Reference {
        host: host.to_owned(),
        name,
        reference,
    })
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

fn challenge_param(h: &str, key: &str) -> Option<String> {
    let i = h.find(&format!("{key}=\""))? + key.len() + 2;
    Some(h[i..].split('"').next()?.to_owned())
}

impl Client {
    fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
    ) -> Result<(Vec<u8>, Option<String>), ImageError> {
        for attempt in 0..2 {
            let url = format!("{}{path}", self.base);
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            let mut resp = req
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
                let realm = challenge_param(&h, "realm").ok_or_else(|| ImageError::Invalid(format!("registry requires authentication ({h:?}); only anonymous bearer tokens are supported")))?;
                let mut q = Vec::new();
                for k in ["service", "scope"] {
                    if let Some(v) = challenge_param(&h, k) {
                        q.push(format!("{k}={v}"));
                    }
                }
                let tok_url = format!("{realm}?{}", q.join("&"));
                let mut t =
                    self.agent.get(&tok_url).call().map_err(|e| {
                        ImageError::Invalid(format!("token request {tok_url}: {e}"))
                    })?;
                let body: Value =
                    serde_json::from_str(&t.body_mut().read_to_string().unwrap_or_default())
                        .unwrap_or(Value::Null);
                self.token = body["token"]
                    .as_str()
                    .or(body["access_token"].as_str())
                    .map(str::to_owned);
                if self.token.is_none() {
                    return Err(ImageError::Invalid(
                        "the registry's token endpoint returned no token".into(),
                    ));
                }
                continue;
            }
            if status != 200 {
                return Err(ImageError::Invalid(format!(
                    "registry answered {status} for {url}"
                )));
            }
            let digest = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut buf = Vec::new();
            resp.body_mut()
                .with_config()
                .limit(MAX_BLOB)
                .reader()
                .read_to_end(&mut buf)
                .map_err(|e| ImageError::Invalid(format!("reading {url}: {e}")))?;
            return Ok((buf, digest));
        }
        Err(ImageError::Invalid("registry authentication failed".into()))
    }

    fn blob(&mut self, name: &str, digest: &str) -> Result<Vec<u8>, ImageError> {
        let (b, _) = self.get(&format!("/v2/{name}/blobs/{digest}"), None)?;
        verify(digest, &b)?;
        Ok(b)
    }
}

/// Pulls `reference` and verifies every blob.
pub fn pull(reference: &str, insecure_http: bool) -> Result<Resolved, ImageError> {
    let r = parse_reference(reference)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .build()
        .into();
    let scheme = if insecure_http { "http" } else { "https" };
    let mut c = Client {
        agent,
        base: format!("{scheme}://{}", r.host),
        token: None,
    };
    let mut target = r.reference.clone();
    for _ in 0..3 {
        let (body, header_digest) =
            c.get(&format!("/v2/{}/manifests/{target}", r.name), Some(ACCEPT))?;
        let digest = sha256(&body);
        if target.starts_with("sha256:") {
            verify(&target, &body)?;
        } else if let Some(h) = header_digest.filter(|h| h.starts_with("sha256:")) {
            verify(&h, &body)?;
        }
        let m: Value = serde_json::from_slice(&body)
            .map_err(|e| ImageError::Invalid(format!("manifest is not JSON: {e}")))?;
        if m["manifests"].is_array() {
            let pick = platform::pick(&m, None, reference).map_err(ImageError::Platform)?;
            target = pick["digest"].as_str().unwrap_or_default().to_owned();
            continue;
        }
        let cfg_digest = m["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid("manifest without config".into()))?
            .to_owned();
        let cfg: Value = serde_json::from_slice(&c.blob(&r.name, &cfg_digest)?)
            .map_err(|e| ImageError::Invalid(format!("config is not JSON: {e}")))?;
        let mut layers = Vec::new();
        for l in m["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"]
                .as_str()
                .ok_or_else(|| ImageError::Invalid("layer without digest".into()))?
                .to_owned();
            let data = c.blob(&r.name, &d)?;
            layers.push(Layer {
                digest: d,
                media_type: l["mediaType"].as_str().unwrap_or("").to_owned(),
                source: BlobSource::Memory(data),
            });
        }
        return Ok(Resolved {
            digest,
            config: oci::parse_config(&cfg),
            layers,
        });
    }
    Err(ImageError::Invalid(
        "image indexes nested too deeply".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = parse_reference("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.host.as_str(), r.name.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "team/app", "v1")
        );
        let r = parse_reference("reg.example.com/app@sha256:abc").unwrap();
        assert_eq!(r.reference, "sha256:abc");
        assert_eq!(
            parse_reference("reg.example.com/app").unwrap().reference,
            "latest"
        );
        // Docker Hub names, and a tag next to a digest (the digest decides).
        let h = parse_reference("nginx:1.27").unwrap();
        assert_eq!(
            (h.host.as_str(), h.name.as_str(), h.reference.as_str()),
            ("registry-1.docker.io", "library/nginx", "1.27")
        );
        let h = parse_reference("docker.io/team/app").unwrap();
        assert_eq!(
            (h.host.as_str(), h.name.as_str()),
            ("registry-1.docker.io", "team/app")
        );
        let p = parse_reference("reg.example.com/app:1.2@sha256:abc").unwrap();
        assert_eq!(
            (p.name.as_str(), p.reference.as_str()),
            ("app", "sha256:abc")
        );
        assert!(parse_reference("reg.example.com/App").is_err());
    }
}
