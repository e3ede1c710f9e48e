//! Which manifest of an image index (an OCI index, `index.json`, or a Docker manifest list) to
//! run, free of I/O: the one tagged with the reference asked for; else the linux/amd64 one (any
//! variant; the most compatible: none, else the lowest); else the only one, when it claims no
//! other platform. Attestations (`unknown/unknown`, as buildx adds) are not images to run.
//!
//! One crate (depending on `serde_json` only) so that `sb`, which names a local image by
//! digest before uploading it, and the image crate, which the control plane verifies uploads
//! with and the hosts run images with, always choose the same manifest.

use serde_json::Value;

/// The annotation that tags a manifest in an OCI `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why no manifest of an index can be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoChoice {
    /// The index lists no manifests.
    Empty,
    /// None is tagged `tag`; `tags` are the tags there are.
    NoSuchTag { tag: String, tags: Vec<String> },
    /// Several images, none for linux/amd64 nor one without a platform: which one must be
    /// named. `tags` are the tags there are.
    Ambiguous { images: usize, tags: Vec<String> },
    /// No linux/amd64 image; `platforms` are the ones there are.
    NoLinuxAmd64 { platforms: Vec<String> },
}

/// `its tags: a, b`, or `it has no tags`.
pub fn tag_list(tags: &[String]) -> String {
    if tags.is_empty() {
        "it has no tags".to_owned()
    } else {
        format!("its tags: {}", tags.join(", "))
    }
}

impl NoChoice {
    /// The refusal as a sentence; `what` names the index.
    pub fn describe(&self, what: &str) -> String {
        match self {
            NoChoice::Empty => format!("{what} lists no manifests"),
            NoChoice::NoSuchTag { tag, tags } => {
                format!("no manifest tagged {tag:?} in {what} ({})", tag_list(tags))
            }
            NoChoice::Ambiguous { images, tags } => format!(
                "{what} has {images} manifests and none for linux/amd64; name one with a reference ({})",
                tag_list(tags)
            ),
            NoChoice::NoLinuxAmd64 { platforms } => format!(
                "{what} has no linux/amd64 image, which is what Scalebox runs (it has {})",
                platforms.join(", ")
            ),
        }
    }
}

/// `os/architecture[/variant]` a descriptor declares, if any.
pub fn platform(d: &Value) -> Option<String> {
    let p = &d["platform"];
    let (os, arch) = (p["os"].as_str()?, p["architecture"].as_str()?);
    Some(match p["variant"].as_str().filter(|v| !v.is_empty()) {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    })
}

fn is_attestation(d: &Value) -> bool {
    d["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
        || (d["platform"]["os"] == "unknown" && d["platform"]["architecture"] == "unknown")
}

fn is_linux_amd64(d: &Value) -> bool {
    d["platform"]["os"] == "linux" && d["platform"]["architecture"] == "amd64"
}

/// The descriptor of `index` to use: tagged `reference` when given, else as the module says.
pub fn pick<'a>(index: &'a Value, reference: Option<&str>) -> Result<&'a Value, NoChoice> {
    let ms = index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or(NoChoice::Empty)?;
    let tags = || -> Vec<String> {
        ms.iter()
            .filter_map(|m| m["annotations"][REF_NAME].as_str().map(str::to_owned))
            .collect()
    };
    if let Some(r) = reference {
        return ms
            .iter()
            .find(|m| m["annotations"][REF_NAME] == r)
            .ok_or_else(|| NoChoice::NoSuchTag {
                tag: r.to_owned(),
                tags: tags(),
            });
    }
    let images: Vec<&Value> = ms.iter().filter(|m| !is_attestation(m)).collect();
    if let Some(m) = images
        .iter()
        .filter(|m| is_linux_amd64(m))
        .min_by_key(|m| m["platform"]["variant"].as_str().unwrap_or(""))
    {
        return Ok(m);
    }
    if let [only] = images[..]
        && platform(only).is_none()
    {
        return Ok(only);
    }
    let platforms: Vec<String> = images.iter().filter_map(|m| platform(m)).collect();
    if platforms.is_empty() {
        Err(NoChoice::Ambiguous {
            images: images.len(),
            tags: tags(),
        })
    } else {
        Err(NoChoice::NoLinuxAmd64 { platforms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn desc(digest: &str, platform: Option<(&str, &str, Option<&str>)>) -> Value {
        let mut d = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": digest, "size": 1});
        if let Some((os, arch, variant)) = platform {
            d["platform"] = json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                d["platform"]["variant"] = json!(v);
            }
        }
        d
    }

    fn chosen(index: &Value) -> Result<&str, String> {
        pick(index, None)
            .map(|d| d["digest"].as_str().unwrap())
            .map_err(|e| e.describe("the index"))
    }

    #[test]
    fn linux_amd64_of_a_multi_platform_index() {
        let attestation = json!({"digest": "att", "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"}});
        let idx = json!({"manifests": [
            desc("arm", Some(("linux", "arm64", Some("v8")))),
            attestation,
            desc("v3", Some(("linux", "amd64", Some("v3")))),
            desc("amd", Some(("linux", "amd64", None))),
            desc("win", Some(("windows", "amd64", None))),
        ]});
        assert_eq!(chosen(&idx), Ok("amd"), "the baseline amd64 over v3");
        let only_variant = json!({"manifests": [
            desc("arm", Some(("linux", "arm64", None))),
            desc("v2", Some(("linux", "amd64", Some("v2")))),
        ]});
        assert_eq!(chosen(&only_variant), Ok("v2"), "variants do not matter");
    }

    #[test]
    fn no_linux_amd64_names_what_there_is() {
        let idx = json!({"manifests": [
            desc("arm", Some(("linux", "arm64", Some("v8")))),
            desc("s390", Some(("linux", "s390x", None))),
            {"digest": "att", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]});
        let e = chosen(&idx).unwrap_err();
        assert_eq!(
            e,
            "the index has no linux/amd64 image, which is what Scalebox runs (it has linux/arm64/v8, linux/s390x)"
        );
        // One manifest, for another platform: refused as well.
        let arm = json!({"manifests": [desc("arm", Some(("linux", "arm64", None)))]});
        assert!(chosen(&arm).unwrap_err().contains("(it has linux/arm64)"));
    }

    #[test]
    fn single_references_and_refusals() {
        // One manifest that says nothing about its platform: that one.
        let one = json!({"manifests": [desc("m", None)]});
        assert_eq!(chosen(&one), Ok("m"));
        // Several unannotated, no reference: name one.
        let mut a = desc("a", None);
        a["annotations"] = json!({REF_NAME: "v1"});
        let mut b = desc("b", None);
        b["annotations"] = json!({REF_NAME: "v2"});
        let two = json!({"manifests": [a, b]});
        let e = chosen(&two).unwrap_err();
        assert!(
            e.contains("has 2 manifests and none for linux/amd64; name one with a reference (its tags: v1, v2)"),
            "{e}"
        );
        assert_eq!(
            pick(&two, None).unwrap_err(),
            NoChoice::Ambiguous {
                images: 2,
                tags: vec!["v1".into(), "v2".into()]
            }
        );
        assert_eq!(pick(&two, Some("v2")).unwrap()["digest"], "b");
        let e = pick(&two, Some("v3")).unwrap_err().describe("index.json");
        assert_eq!(
            e,
            "no manifest tagged \"v3\" in index.json (its tags: v1, v2)"
        );
        assert_eq!(
            chosen(&json!({"manifests": []})).unwrap_err(),
            "the index lists no manifests"
        );
        assert_eq!(
            chosen(&json!({})).unwrap_err(),
            "the index lists no manifests"
        );
        assert_eq!(
            platform(&desc("x", Some(("linux", "arm", Some("v7"))))).as_deref(),
            Some("linux/arm/v7")
        );
    }
}
