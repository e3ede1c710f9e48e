//! The content digest of an image reference, worked out on this machine so `sb deploy --image`
//! and `sb releases create` need no `--digest`: an OCI archive (`oci-archive:PATH`, a tar with
//! `index.json`), an OCI layout directory (`oci:DIR[:TAG]`), a registry reference pinned by
//! digest (`…@sha256:…`), or a registry tag, resolved by asking the registry
//! ([`crate::registry`]); the release then names the tag pinned to that digest.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

use crate::error::{CliError, Result};
use crate::output::Out;
use crate::registry;

/// Prefixes of images on a disk rather than in a registry.
const LOCAL: &[&str] = &["oci-archive:", "archive:", "oci:", "docker-archive:"];

/// The image reference and digest a release of `image` names. A registry tag is resolved to
/// its digest (unless `--digest` gives it) and pinned: `REF@sha256:…`. A `--digest` that
/// contradicts a pinned reference is a usage error.
pub fn pin(image: &str, digest: Option<String>, out: Out) -> Result<(String, String)> {
    if LOCAL.iter().any(|p| image.starts_with(p)) {
        let d = match digest {
            Some(d) => d,
            None => digest_of(image)?,
        };
        return Ok((image.to_owned(), d));
    }
    let contradicts = |pinned: &str, given: &Option<String>| -> Result<()> {
        match given {
            Some(g) if g != pinned => Err(CliError::usage(format!(
                "--digest {g} contradicts {image:?}, which names {pinned}; give one of them"
            ))),
            _ => Ok(()),
        }
    };
    if let Some(d) = image.strip_prefix("upload:") {
        if !valid_digest(d) {
            return Err(CliError::usage(format!(
                "{image:?}: an uploaded image is named upload:sha256:… (64 hex digits)"
            )));
        }
        contradicts(d, &digest)?;
        return Ok((image.to_owned(), d.to_owned()));
    }
    let r = registry::parse(image)?;
    if let Some(pinned) = &r.digest {
        contradicts(pinned, &digest)?;
        return Ok((image.to_owned(), pinned.clone()));
    }
    let d = match digest {
        Some(g) if valid_digest(&g) => g,
        Some(g) => {
            return Err(CliError::usage(format!(
                "--digest {g:?} is not an image digest (sha256: and 64 hex digits)"
            )));
        }
        None => {
            let creds = registry::Creds::from_env();
            let d = registry::resolve(&r, registry::use_http(&r), creds.as_ref())?;
            if !out.json {
                eprintln!("Resolved {image} → {d}");
            }
            d
        }
    };
    Ok((format!("{image}@{d}"), d))
}

/// The manifest digest the local image `image_ref` names (`oci-archive:PATH`, `archive:PATH`,
/// `oci:DIR[:TAG]`), or an error saying how to give it.
pub fn digest_of(image_ref: &str) -> Result<String> {
    if let Some(path) = image_ref
        .strip_prefix("oci-archive:")
        .or_else(|| image_ref.strip_prefix("archive:"))
    {
        let index = index_from_tar(Path::new(path))?;
        return pick(&index, None, image_ref);
    }
    if let Some(rest) = image_ref.strip_prefix("oci:") {
        let (dir, tag) = crate::layout_archive::split(rest);
        let text = std::fs::read_to_string(Path::new(dir).join("index.json")).map_err(|e| {
            CliError::failure(format!(
                "cannot read {dir}/index.json (an OCI layout?): {e}"
            ))
        })?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::failure(format!("{dir}/index.json is not JSON: {e}")))?;
        return pick(&index, tag, image_ref);
    }
    Err(CliError::usage(format!(
        "cannot tell the digest of {image_ref:?}: give --digest sha256:…, or use an OCI archive \
         (`oci-archive:PATH`) or layout (`oci:DIR`)"
    )))
}

pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The manifest digest of `index` (the one tagged `tag`, else the only one).
fn pick(index: &Value, tag: Option<&str>, what: &str) -> Result<String> {
    let chosen = crate::layout_archive::choose(index, tag, None, what)?;
    let d = chosen["digest"]
        .as_str()
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
    let len = f
        .metadata()
        .map_err(|e| CliError::failure(format!("cannot read {}: {e}", path.display())))?
        .len();
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
        // Skipped, not read: index.json often comes after gigabytes of layers.
        let next = f
            .seek(SeekFrom::Current(padded as i64))
            .map_err(|_| bad("corrupt tar header"))?;
        if next > len {
            return Err(bad("truncated archive"));
        }
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
        let e = digest_of("docker-archive:/tmp/x.tar").unwrap_err();
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
        // Entries before index.json are skipped; one longer than what is left of the file
        // means the archive was cut short.
        std::fs::write(layout.join("big"), vec![7u8; 10_000]).unwrap();
        let big = dir.path().join("big.tar");
        let st = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&big)
            .arg("-C")
            .arg(&layout)
            .args(["big", "index.json"])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            digest_of(&format!("oci-archive:{}", big.display())).unwrap(),
            D
        );
        let mut cut = std::fs::read(&big).unwrap();
        cut.truncate(512 + 100);
        std::fs::write(&big, &cut).unwrap();
        let e = digest_of(&format!("oci-archive:{}", big.display())).unwrap_err();
        assert!(e.message.contains("truncated archive"), "{}", e.message);
    }

    #[test]
    fn pinning_and_digest_overrides() {
        const E: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
        let out = Out { json: true };
        let pinned = format!("reg.example/app:1@{D}");
        assert_eq!(pin(&pinned, None, out).unwrap(), (pinned.clone(), D.into()));
        assert_eq!(
            pin(&pinned, Some(D.into()), out).unwrap(),
            (pinned.clone(), D.into())
        );
        let e = pin(&pinned, Some(E.into()), out).unwrap_err();
        assert_eq!(e.exit, crate::error::exit::USAGE);
        assert!(e.message.contains("contradicts"), "{}", e.message);
        // --digest overrides resolving a tag (no registry is asked); the reference is pinned.
        assert_eq!(
            pin("reg.invalid/app:1", Some(E.into()), out).unwrap(),
            (format!("reg.invalid/app:1@{E}"), E.into())
        );
        let e = pin("reg.invalid/app:1", Some("sha256:12".into()), out).unwrap_err();
        assert_eq!(e.exit, crate::error::exit::USAGE);
        assert_eq!(
            pin(&format!("upload:{D}"), None, out).unwrap().1,
            D.to_owned()
        );
        assert!(pin(&format!("upload:{D}"), Some(E.into()), out).is_err());
        assert!(pin("reg.example/App:1", None, out).is_err());
        // Local images keep their reference.
        assert_eq!(
            pin("oci:/nonexistent", Some(E.into()), out).unwrap(),
            ("oci:/nonexistent".into(), E.into())
        );
    }
}
