//! The content digest of an image reference, worked out on this machine so `sb deploy --image`
//! and `sb releases create` need no `--digest` for local images: an OCI archive
//! (`oci-archive:PATH`, a tar with `index.json`), an OCI layout directory (`oci:DIR[:TAG]`), or a
//! registry reference pinned by digest (`…@sha256:…`).

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::error::{CliError, Result};

/// The manifest digest `image_ref` names, or an error saying how to give it.
pub fn digest_of(image_ref: &str) -> Result<String> {
    if let Some(path) = image_ref
        .strip_prefix("oci-archive:")
        .or_else(|| image_ref.strip_prefix("archive:"))
    {
        let index = index_from_tar(Path::new(path))?;
        return pick(&index, None, image_ref);
    }
    if let Some(rest) = image_ref.strip_prefix("oci:") {
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t)),
            _ => (rest, None),
        };
        let text = std::fs::read_to_string(Path::new(dir).join("index.json")).map_err(|e| {
            CliError::failure(format!(
                "cannot read {dir}/index.json (an OCI layout?): {e}"
            ))
        })?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::failure(format!("{dir}/index.json is not JSON: {e}")))?;
        return pick(&index, tag, image_ref);
    }
    if let Some((_, d)) = image_ref.rsplit_once('@')
        && valid_digest(d)
    {
        return Ok(d.to_owned());
    }
    Err(CliError::usage(format!(
        "cannot tell the digest of {image_ref:?}: give --digest sha256:…, pin the reference \
         (`name@sha256:…`), or use a local image (`oci-archive:PATH` or `oci:DIR`)"
    )))
}

pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The manifest of `index` (the one tagged `tag`, else the only one).
fn pick(index: &Value, tag: Option<&str>, what: &str) -> Result<String> {
    let ms = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen = match tag {
        Some(t) => ms
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == t),
        None if ms.len() == 1 => ms.first(),
        None => {
            return Err(CliError::usage(format!(
                "{what} holds {} images; name one (`oci:DIR:TAG`) or give --digest",
                ms.len()
            )));
        }
    };
    let d = chosen
        .and_then(|m| m["digest"].as_str())
        .filter(|d| valid_digest(d))
        .ok_or_else(|| {
            CliError::failure(format!("{what}: no image manifest digest in index.json"))
        })?;
    Ok(d.to_owned())
}

/// `index.json` from an OCI archive (tar).
fn index_from_tar(path: &Path) -> Result<Value> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::failure(format!("cannot open {}: {e}", path.display())))?;
    let bad = |m: &str| CliError::failure(format!("{}: {m}", path.display()));
    let mut header = [0u8; 512];
    loop {
        if f.read_exact(&mut header).is_err() || header.iter().all(|&b| b == 0) {
            return Err(bad(
                "no index.json: not an OCI archive (a legacy `docker save` tar has no manifest digest; give --digest)",
            ));
        }
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).into_owned();
        let size_field = String::from_utf8_lossy(&header[124..136]).into_owned();
        let size = u64::from_str_radix(size_field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .map_err(|_| bad("corrupt tar header"))?;
        let padded = size.div_ceil(512) * 512;
        if name.trim_start_matches("./") == "index.json" && header[156] != b'x' {
            if size > 1 << 20 {
                return Err(bad("index.json is larger than 1 MiB"));
            }
            let mut body = vec![0u8; size as usize];
            f.read_exact(&mut body)
                .map_err(|_| bad("truncated archive"))?;
            return serde_json::from_slice(&body).map_err(|e| bad(&format!("index.json: {e}")));
        }
        std::io::copy(&mut (&mut f).take(padded), &mut std::io::sink())
            .map_err(|_| bad("truncated archive"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn archives_layouts_and_pinned_references() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(&layout).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{D}","annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#
        );
        std::fs::write(layout.join("index.json"), &index).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        assert_eq!(digest_of(&format!("oci:{}", layout.display())).unwrap(), D);
        assert_eq!(
            digest_of(&format!("oci:{}:v1", layout.display())).unwrap(),
            D
        );
        assert!(digest_of(&format!("oci:{}:v2", layout.display())).is_err());
        // A real tar made by tar(1), with another entry before index.json.
        let tar = dir.path().join("img.tar");
        let st = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&layout)
            .args(["oci-layout", "index.json"])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            digest_of(&format!("oci-archive:{}", tar.display())).unwrap(),
            D
        );
        assert_eq!(digest_of(&format!("reg.example/app@{D}")).unwrap(), D);
        let e = digest_of("reg.example/app:1").unwrap_err();
        assert!(e.message.contains("--digest"), "{}", e.message);
        let e = digest_of(&format!(
            "oci-archive:{}",
            layout.join("oci-layout").display()
        ))
        .unwrap_err();
        assert!(
            e.message.contains("no index.json") || e.message.contains("corrupt"),
            "{}",
            e.message
        );
    }
}
