//! Pulling from an OCI distribution registry (the `/v2/` API): the manifest (following image
//! indexes / manifest lists to linux/amd64, as [`scalebox_oci_platform`] chooses) and config,
//! each read whole but at most [`crate::blob::MAX_METADATA`]; then the layers, each streamed
//! into a file of a directory the caller owns (the root filesystem cache uses its build's
//! staging directory) while it is hashed, so a layer of any size takes no more memory than a
//! buffer.
//! Everything is digest-verified; a layer that does not match its digest leaves no file
//! behind. HTTPS by default; plain HTTP only when asked (a registry on loopback). The HTTP side
//! (bearer tokens, capped reads, downloads) is `client`.

mod client;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ImageError;
use crate::blob::sha256_hex;
use crate::oci::{self, BlobSource, ImageConfig, Layer, Resolved, sha256, verify};
use client::Client;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

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

/// A layer as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: String,
    pub media_type: String,
    /// The size the manifest declares (the download is cut off there).
    pub size: Option<u64>,
}

/// What an image manifest lists: its config's digest and its layers, bottom first.
fn image_manifest(m: &Value) -> Result<(String, Vec<Descriptor>), ImageError> {
    let config = m["config"]["digest"]
        .as_str()
        .ok_or_else(|| ImageError::Invalid("manifest without config".into()))?
        .to_owned();
    let mut layers = Vec::new();
    for l in m["layers"].as_array().into_iter().flatten() {
        let digest = l["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid("layer without digest".into()))?;
        sha256_hex(digest)?;
        layers.push(Descriptor {
            digest: digest.to_owned(),
            media_type: l["mediaType"].as_str().unwrap_or("").to_owned(),
            size: l["size"].as_u64(),
        });
    }
    Ok((config, layers))
}

/// Checks a manifest fetched as `target` (a tag or a digest) against that digest, else against
/// the `Docker-Content-Digest` the registry sent; returns its digest.
fn check_manifest(target: &str, body: &[u8], header: Option<&str>) -> Result<String, ImageError> {
    if target.starts_with("sha256:") {
        verify(target, body)?;
    } else if let Some(h) = header.filter(|h| h.starts_with("sha256:")) {
        verify(h, body)?;
    }
    Ok(sha256(body))
}

/// An image whose manifest and config are fetched and verified; its layers are downloaded one
/// at a time by [`Pull::layer`].
pub struct Pull {
    client: Client,
    name: String,
    /// The image manifest's digest.
    pub digest: String,
    pub config: ImageConfig,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// Fetches the manifest (an index leads to its linux/amd64 image) and config of `reference`.
pub fn fetch(reference: &str, insecure_http: bool) -> Result<Pull, ImageError> {
    let r = parse_reference(reference)?;
    let mut client = Client::new(&r.host, insecure_http);
    let mut target = r.reference.clone();
    for _ in 0..3 {
        let (body, header) = client.small(
            &format!("/v2/{}/manifests/{target}", r.name),
            Some(ACCEPT),
            "manifest",
        )?;
        let digest = check_manifest(&target, &body, header.as_deref())?;
        let m: Value = serde_json::from_slice(&body)
            .map_err(|e| ImageError::Invalid(format!("manifest is not JSON: {e}")))?;
        if m["manifests"].is_array() {
            let pick = oci::pick(&m, None, reference)?;
            let d = pick["digest"].as_str().unwrap_or_default();
            // Checked before it goes into a URL.
            sha256_hex(d)?;
            target = d.to_owned();
            continue;
        }
        let (cfg_digest, layers) = image_manifest(&m)?;
        let (cfg, _) = client.small(
            &format!("/v2/{}/blobs/{cfg_digest}", r.name),
            None,
            "image config",
        )?;
        verify(&cfg_digest, &cfg)?;
        let cfg: Value = serde_json::from_slice(&cfg)
            .map_err(|e| ImageError::Invalid(format!("config is not JSON: {e}")))?;
        return Ok(Pull {
            client,
            name: r.name,
            digest,
            config: oci::parse_config(&cfg),
            layers,
        });
    }
    Err(ImageError::Invalid(
        "image indexes nested too deeply".into(),
    ))
}

impl Pull {
    /// Layer `i`, downloaded into `dir` as `<hex of its digest>` and verified on the way (see
    /// [`crate::blob::save_verified`]: a mismatch is [`ImageError::Digest`] and leaves no
    /// file); the layer reads from that file. A file still there from this pull (a layer
    /// listed twice, when the caller has not removed it yet) is used as it is; the rootfs cache
    /// removes each layer after unpacking it, so there a repeated layer is downloaded again.
    /// The caller removes the file when done with it.
    pub fn layer(&mut self, i: usize, dir: &Path) -> Result<Layer, ImageError> {
        let d = &self.layers[i];
        let path = dir.join(sha256_hex(&d.digest)?);
        let len = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            _ => self.client.download(&self.name, &d.digest, d.size, &path)?,
        };
        Ok(Layer {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            source: BlobSource::File {
                path,
                offset: 0,
                len,
            },
        })
    }
}

/// Pulls `reference` with every layer downloaded (and verified) into `dir`, which the caller
/// owns and removes.
pub fn pull(reference: &str, insecure_http: bool, dir: &Path) -> Result<Resolved, ImageError> {
    let mut p = fetch(reference, insecure_http)?;
    let layers = (0..p.layers.len())
        .map(|i| p.layer(i, dir))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Resolved {
        digest: p.digest,
        config: p.config,
        layers,
        downloads: None,
    })
}

/// A directory of downloaded layers that is removed with everything in it when dropped (the
/// layers of a [`Resolved`] registry image pulled by [`crate::oci::resolve`]).
#[derive(Debug)]
pub(crate) struct Downloads(PathBuf);

impl Downloads {
    /// A new, empty directory in `parent`.
    pub(crate) fn create_in(parent: &Path) -> Result<Downloads, ImageError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let p = parent.join(format!(
            "scalebox-pull-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).map_err(ImageError::io(format!("create {}", p.display())))?;
        Ok(Downloads(p))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

    #[test]
    fn manifests_and_their_digests() {
        let good = format!("sha256:{}", "a".repeat(64));
        let m = serde_json::json!({"config": {"digest": "sha256:cfg"}, "layers": [
            {"digest": good, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 7},
            {"digest": good}]});
        let (cfg, layers) = image_manifest(&m).unwrap();
        assert_eq!(cfg, "sha256:cfg");
        assert_eq!(layers[0].size, Some(7));
        assert_eq!((layers[1].size, layers[1].media_type.as_str()), (None, ""));
        // A layer digest that is not a file name is refused before anything is downloaded.
        let bad = serde_json::json!({"config": {"digest": "sha256:cfg"},
            "layers": [{"digest": "sha256:../../x"}]});
        assert!(
            image_manifest(&bad)
                .unwrap_err()
                .to_string()
                .contains("bad digest")
        );
        assert!(image_manifest(&serde_json::json!({"layers": []})).is_err());

        let body = b"{}";
        let d = sha256(body);
        assert_eq!(check_manifest("v1", body, None).unwrap(), d);
        assert_eq!(check_manifest(&d, body, None).unwrap(), d);
        assert_eq!(check_manifest("v1", body, Some(&d)).unwrap(), d);
        let other = sha256(b"[]");
        assert!(matches!(
            check_manifest(&other, body, None),
            Err(ImageError::Digest { .. })
        ));
        assert!(matches!(
            check_manifest("v1", body, Some(&other)),
            Err(ImageError::Digest { .. })
        ));
    }
}
