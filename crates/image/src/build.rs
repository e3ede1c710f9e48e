//! Writing OCI images without Docker: a layout directory or archive from directory trees (used
//! by tests and by the example app's build script).

use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::ImageError;
use crate::oci::{ImageConfig, sha256};

/// A gzip'd tar of the tree at `dir` (symlinks stored as symlinks, owners and modes kept).
pub fn layer_from_dir(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)
        .map_err(ImageError::io(format!("tar {}", dir.display())))?;
    let gz = b.into_inner().map_err(ImageError::io("finish tar"))?;
    gz.finish().map_err(ImageError::io("finish gzip"))
}

fn put(out: &Path, data: &[u8]) -> Result<String, ImageError> {
    let d = sha256(data);
    let p = out
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    std::fs::create_dir_all(p.parent().expect("blob dir"))
        .map_err(ImageError::io("create blobs"))?;
    std::fs::write(&p, data).map_err(ImageError::io("write blob"))?;
    Ok(d)
}

/// Writes an OCI image layout at `out` with the given gzip'd tar layers (bottom first); returns
/// the manifest digest.
pub fn write_oci_layout(
    out: &Path,
    layers: &[Vec<u8>],
    config: &ImageConfig,
    tag: &str,
) -> Result<String, ImageError> {
    std::fs::create_dir_all(out).map_err(ImageError::io(format!("create {}", out.display())))?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l[..]), &mut raw)
            .map_err(ImageError::io("gunzip layer"))?;
        diff_ids.push(sha256(&raw));
        let d = put(out, l)?;
        descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": l.len()}));
    }
    let cfg = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": config.entrypoint, "Cmd": config.cmd, "Env": config.env,
                   "User": config.user.clone().unwrap_or_default(), "WorkingDir": config.working_dir.clone().unwrap_or_default()},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let cfg_bytes = serde_json::to_vec(&cfg).expect("json");
    let cfg_digest = put(out, &cfg_bytes)?;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_digest, "size": cfg_bytes.len()},
        "layers": descs,
    });
    let m_bytes = serde_json::to_vec(&manifest).expect("json");
    let m_digest = put(out, &m_bytes)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_bytes.len(),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(
        out.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .map_err(ImageError::io("write index.json"))?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(ImageError::io("write oci-layout"))?;
    Ok(m_digest)
}

/// Packs a layout directory into an OCI archive (tar) at `archive`.
pub fn write_oci_archive(layout: &Path, archive: &Path) -> Result<(), ImageError> {
    let f = std::fs::File::create(archive)
        .map_err(ImageError::io(format!("create {}", archive.display())))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    b.append_dir_all(".", layout)
        .map_err(ImageError::io("tar the layout"))?;
    let mut w = b.into_inner().map_err(ImageError::io("finish tar"))?;
    w.flush().map_err(ImageError::io("flush"))
}
