//! Reading an OCI image (layout directory or archive) down to its verified manifest, config and
//! layer blobs. Every blob is checked against its sha256 digest before use.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::ImageError;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), optionally selecting
    /// the manifest whose `org.opencontainers.image.ref.name` is `reference`.
    OciLayout {
        dir: PathBuf,
        reference: Option<String>,
    },
    /// A registry reference (`registry.example.com[:port]/name[:tag|@digest]`); plain HTTP only
    /// when `insecure_http` (a registry on loopback).
    Registry {
        reference: String,
        insecure_http: bool,
    },
    /// A tar archive: an OCI layout (e.g. `docker save` since Docker 25, `skopeo copy
    /// oci-archive:`) or a legacy `docker save` (`manifest.json` + layer tars).
    Archive { path: PathBuf },
}

/// How the image wants to be run (from its config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub exposed_ports: Vec<String>,
}

/// A resolved image: digest identifying it, its config, and its layers (media type, bytes).
pub struct Resolved {
    pub digest: String,
    pub config: ImageConfig,
    pub layers: Vec<(String, String, Vec<u8>)>,
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Checks `data` against `digest` (`sha256:<hex>`).
pub fn verify(digest: &str, data: &[u8]) -> Result<(), ImageError> {
    if !digest.starts_with("sha256:") {
        return Err(ImageError::Invalid(format!(
            "unsupported digest algorithm in {digest:?} (only sha256)"
        )));
    }
    let actual = sha256(data);
    if actual != digest {
        return Err(ImageError::Digest {
            expected: digest.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Blobs by path inside a layout (directory or archive).
trait Files {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImageError>;
}

struct Dir(PathBuf);

impl Files for Dir {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImageError> {
        let p = self.0.join(path);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("read {}", p.display()))(e)),
        }
    }
}

/// An archive read into memory (entries by normalised path).
struct Archive(HashMap<String, Vec<u8>>);

impl Archive {
    fn open(path: &Path) -> Result<Archive, ImageError> {
        let f = std::fs::File::open(path)
            .map_err(ImageError::io(format!("open {}", path.display())))?;
        let mut a = tar::Archive::new(std::io::BufReader::new(f));
        let mut map = HashMap::new();
        for e in a
            .entries()
            .map_err(ImageError::io(format!("read archive {}", path.display())))?
        {
            let mut e = e.map_err(ImageError::io(format!("read archive {}", path.display())))?;
            if !e.header().entry_type().is_file() {
                continue;
            }
            let name = e
                .path()
                .map_err(ImageError::io("archive entry name"))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            let mut b = Vec::new();
            e.read_to_end(&mut b)
                .map_err(ImageError::io(format!("read archive entry {name}")))?;
            map.insert(name, b);
        }
        Ok(Archive(map))
    }
}

impl Files for Archive {
    fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImageError> {
        Ok(self.0.remove(path).or_else(|| self.0.get(path).cloned()))
    }
}

fn json(b: &[u8], what: &str) -> Result<Value, ImageError> {
    serde_json::from_slice(b)
        .map_err(|e| ImageError::Invalid(format!("{what} is not valid JSON: {e}")))
}

fn blob(files: &mut dyn Files, digest: &str) -> Result<Vec<u8>, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::Invalid(format!("bad digest {digest:?}")))?;
    let data = files
        .read(&format!("blobs/sha256/{hex}"))?
        .ok_or_else(|| ImageError::Invalid(format!("blob {digest} is missing from the image")))?;
    verify(digest, &data)?;
    Ok(data)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn parse_config(cfg: &Value) -> ImageConfig {
    let c = &cfg["config"];
    let opt = |k: &str| c[k].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        user: opt("User"),
        working_dir: opt("WorkingDir"),
        exposed_ports: c["ExposedPorts"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    }
}

/// Picks the manifest descriptor from an index: by ref name, else linux/amd64, else the only one.
fn pick<'a>(index: &'a Value, reference: Option<&str>) -> Result<&'a Value, ImageError> {
    let ms = index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ImageError::Invalid("index.json lists no manifests".into()))?;
    if let Some(r) = reference {
        return ms
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(r))
            .ok_or_else(|| {
                ImageError::Invalid(format!("no manifest tagged {r:?} in the image index"))
            });
    }
    if let Some(m) = ms
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
    {
        return Ok(m);
    }
    if ms.len() == 1 {
        return Ok(&ms[0]);
    }
    Err(ImageError::Invalid(
        "the image index has several manifests and none for linux/amd64; name one with a reference"
            .into(),
    ))
}

fn resolve_layout(files: &mut dyn Files, reference: Option<&str>) -> Result<Resolved, ImageError> {
    let index = json(
        &files
            .read("index.json")?
            .ok_or_else(|| ImageError::Invalid("no index.json".into()))?,
        "index.json",
    )?;
    let mut desc = pick(&index, reference)?.clone();
    // Follow nested indexes (multi-platform images) down to an image manifest.
    for _ in 0..4 {
        let digest = desc["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid("manifest descriptor without digest".into()))?
            .to_owned();
        let body = blob(files, &digest)?;
        let m = json(&body, "manifest")?;
        if m["manifests"].is_array() {
            desc = pick(&m, None)?.clone();
            continue;
        }
        let cfg_digest = m["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid("manifest without config".into()))?;
        let config = parse_config(&json(&blob(files, cfg_digest)?, "image config")?);
        let mut layers = Vec::new();
        for l in m["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"]
                .as_str()
                .ok_or_else(|| ImageError::Invalid("layer without digest".into()))?
                .to_owned();
            let mt = l["mediaType"].as_str().unwrap_or("").to_owned();
            let data = blob(files, &d)?;
            layers.push((d, mt, data));
        }
        return Ok(Resolved {
            digest,
            config,
            layers,
        });
    }
    Err(ImageError::Invalid(
        "image indexes nested too deeply".into(),
    ))
}

/// Legacy `docker save`: `manifest.json` names the config and layer tars; layers are verified
/// against the config's `rootfs.diff_ids`.
fn resolve_docker(files: &mut dyn Files, manifest: &[u8]) -> Result<Resolved, ImageError> {
    let m = json(manifest, "manifest.json")?;
    let entry = m
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| ImageError::Invalid("manifest.json is empty".into()))?;
    let cfg_path = entry["Config"]
        .as_str()
        .ok_or_else(|| ImageError::Invalid("manifest.json has no Config".into()))?;
    let cfg_bytes = files
        .read(cfg_path)?
        .ok_or_else(|| ImageError::Invalid(format!("{cfg_path} is missing")))?;
    let cfg = json(&cfg_bytes, "image config")?;
    let diff_ids = strings(&cfg["rootfs"]["diff_ids"]);
    let paths = strings(&entry["Layers"]);
    if diff_ids.len() != paths.len() {
        return Err(ImageError::Invalid(format!(
            "{} layers but {} diff_ids in the config",
            paths.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (p, d) in paths.iter().zip(&diff_ids) {
        let data = files
            .read(p)?
            .ok_or_else(|| ImageError::Invalid(format!("layer {p} is missing")))?;
        verify(d, &data)?;
        layers.push((
            d.clone(),
            "application/vnd.oci.image.layer.v1.tar".to_owned(),
            data,
        ));
    }
    Ok(Resolved {
        digest: sha256(&cfg_bytes),
        config: parse_config(&cfg),
        layers,
    })
}

/// Reads and verifies the image at `source`.
pub fn resolve(source: &ImageSource) -> Result<Resolved, ImageError> {
    match source {
        ImageSource::Registry {
            reference,
            insecure_http,
        } => crate::registry::pull(reference, *insecure_http),
        ImageSource::OciLayout { dir, reference } => {
            resolve_layout(&mut Dir(dir.clone()), reference.as_deref())
        }
        ImageSource::Archive { path } => {
            let mut a = Archive::open(path)?;
            if a.0.contains_key("index.json") {
                resolve_layout(&mut a, None)
            } else if let Some(m) = a.0.get("manifest.json").cloned() {
                resolve_docker(&mut a, &m)
            } else {
                Err(ImageError::Invalid(format!(
                    "{} is neither an OCI archive (index.json) nor a docker save archive (manifest.json)",
                    path.display()
                )))
            }
        }
    }
}
