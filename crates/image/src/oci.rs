//! Reading an OCI image (layout directory or archive) down to its verified manifest, config and
//! layers. Every blob is checked against its sha256 digest before use; layers are never read
//! into memory: they are located (a range of the archive, a blob file, a file a registry layer
//! was downloaded to) and streamed.

use std::io::Read;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ImageError;
use crate::archive::ArchiveIndex;
pub use crate::blob::{BlobSource, MAX_METADATA, Verifying, sha256, verify};

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

/// A layer of a resolved image: its digest (for a `docker save` archive, the diff ID of the
/// uncompressed tar), media type, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub source: BlobSource,
}

impl Layer {
    /// The layer's bytes, checked against its digest as they are read (see [`Verifying`]).
    pub fn open(&self) -> Result<Verifying<Box<dyn Read + '_>>, ImageError> {
        self.source.open_verified(&self.digest)
    }
}

/// A resolved image: the digest identifying it, its config, and its layers (bottom first).
///
/// The digest is the one the image is known by: for a registry, the image manifest's; for a
/// layout or archive, the descriptor `index.json` names: the image manifest or, for a
/// multi-platform image, its index (as `sb` computes it from `index.json` for uploads); the
/// linux/amd64 image of that index is the one whose config and layers are here.
///
/// The layers of a registry image are files downloaded for it: in a temporary directory that
/// goes away with the `Resolved` when [`resolve`] pulled it, in the directory given to
/// [`crate::registry::pull`] otherwise.
#[derive(Debug)]
pub struct Resolved {
    pub digest: String,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    /// Where [`resolve`] downloaded a registry image's layers; removed when dropped.
    pub(crate) downloads: Option<crate::registry::Downloads>,
}

/// Files by path inside a layout (directory or archive): where their bytes are.
trait Files {
    fn find(&self, path: &str) -> Result<Option<BlobSource>, ImageError>;
}

struct Dir(PathBuf);

impl Files for Dir {
    fn find(&self, path: &str) -> Result<Option<BlobSource>, ImageError> {
        let p = self.0.join(path);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(BlobSource::File {
                path: p,
                offset: 0,
                len: m.len(),
            })),
            Ok(_) => Err(ImageError::Invalid(format!(
                "{} is not a file",
                p.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io(format!("read {}", p.display()))(e)),
        }
    }
}

impl Files for ArchiveIndex {
    fn find(&self, path: &str) -> Result<Option<BlobSource>, ImageError> {
        Ok(self.get(path))
    }
}

fn json(b: &[u8], what: &str) -> Result<Value, ImageError> {
    serde_json::from_slice(b)
        .map_err(|e| ImageError::Invalid(format!("{what} is not valid JSON: {e}")))
}

/// A small file (index, manifest, config) read whole, `None` when absent.
fn small(files: &dyn Files, path: &str) -> Result<Option<Vec<u8>>, ImageError> {
    files.find(path)?.map(|s| s.read_small(path)).transpose()
}

/// Where the blob `digest` is.
fn blob(files: &dyn Files, digest: &str) -> Result<BlobSource, ImageError> {
    let hex = crate::blob::sha256_hex(digest)?;
    files
        .find(&format!("blobs/sha256/{hex}"))?
        .ok_or_else(|| ImageError::Invalid(format!("blob {digest} is missing from the image")))
}

/// A metadata blob (manifest, index, config), read whole and verified.
fn small_blob(files: &dyn Files, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
    let data = blob(files, digest)?.read_small(&format!("{what} {digest}"))?;
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

/// The descriptor of `index` to use (see [`scalebox_oci_platform`]); `what` names the index in
/// errors.
pub(crate) fn pick<'a>(
    index: &'a Value,
    reference: Option<&str>,
    what: &str,
) -> Result<&'a Value, ImageError> {
    scalebox_oci_platform::pick(index, reference)
        .map_err(|e| ImageError::Platform(e.describe(what)))
}

/// Whether layers are hashed while resolving, or only as they are read later.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layers {
    Verify,
    Locate,
}

fn resolve_layout(
    files: &dyn Files,
    reference: Option<&str>,
    layers_are: Layers,
) -> Result<Resolved, ImageError> {
    let index = json(
        &small(files, "index.json")?.ok_or_else(|| ImageError::Invalid("no index.json".into()))?,
        "index.json",
    )?;
    let top = pick(&index, reference, "index.json")?;
    let digest_of = |d: &Value| {
        d["digest"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ImageError::Invalid("manifest descriptor without digest".into()))
    };
    let identity = digest_of(top)?;
    let mut digest = identity.clone();
    // Follow nested indexes (multi-platform images) down to an image manifest.
    for _ in 0..4 {
        let m = json(&small_blob(files, &digest, "manifest")?, "manifest")?;
        if m["manifests"].is_array() {
            digest = digest_of(pick(&m, None, &format!("the image index {digest}"))?)?;
            continue;
        }
        let cfg_digest = m["config"]["digest"]
            .as_str()
            .ok_or_else(|| ImageError::Invalid("manifest without config".into()))?;
        let config = parse_config(&json(
            &small_blob(files, cfg_digest, "image config")?,
            "image config",
        )?);
        let mut layers = Vec::new();
        for l in m["layers"].as_array().into_iter().flatten() {
            let d = l["digest"]
                .as_str()
                .ok_or_else(|| ImageError::Invalid("layer without digest".into()))?
                .to_owned();
            let source = blob(files, &d)?;
            if layers_are == Layers::Verify {
                source.verify(&d)?;
            }
            layers.push(Layer {
                digest: d,
                media_type: l["mediaType"].as_str().unwrap_or("").to_owned(),
                source,
            });
        }
        return Ok(Resolved {
            digest: identity,
            config,
            layers,
            downloads: None,
        });
    }
    Err(ImageError::Invalid(
        "image indexes nested too deeply".into(),
    ))
}

/// Legacy `docker save`: `manifest.json` names the config and layer tars; layers are verified
/// against the config's `rootfs.diff_ids`.
fn resolve_docker(
    files: &dyn Files,
    manifest: &[u8],
    layers_are: Layers,
) -> Result<Resolved, ImageError> {
    let m = json(manifest, "manifest.json")?;
    let entry = m
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| ImageError::Invalid("manifest.json is empty".into()))?;
    let cfg_path = entry["Config"]
        .as_str()
        .ok_or_else(|| ImageError::Invalid("manifest.json has no Config".into()))?;
    let cfg_bytes = small(files, cfg_path)?
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
        let source = files
            .find(p)?
            .ok_or_else(|| ImageError::Invalid(format!("layer {p} is missing")))?;
        if layers_are == Layers::Verify {
            source.verify(d)?;
        }
        layers.push(Layer {
            digest: d.clone(),
            media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
            source,
        });
    }
    Ok(Resolved {
        digest: sha256(&cfg_bytes),
        config: parse_config(&cfg),
        layers,
        downloads: None,
    })
}

fn resolve_with(source: &ImageSource, layers_are: Layers) -> Result<Resolved, ImageError> {
    match source {
        ImageSource::Registry {
            reference,
            insecure_http,
        } => {
            // Layers are verified as they are downloaded, whichever `layers_are` says.
            let downloads = crate::registry::Downloads::create_in(&std::env::temp_dir())?;
            let mut r = crate::registry::pull(reference, *insecure_http, downloads.path())?;
            r.downloads = Some(downloads);
            Ok(r)
        }
        ImageSource::OciLayout { dir, reference } => {
            resolve_layout(&Dir(dir.clone()), reference.as_deref(), layers_are)
        }
        ImageSource::Archive { path } => {
            let a = ArchiveIndex::open(path)?;
            if a.contains("index.json") {
                resolve_layout(&a, None, layers_are)
            } else if let Some(m) = small(&a, "manifest.json")? {
                resolve_docker(&a, &m, layers_are)
            } else {
                Err(ImageError::Invalid(format!(
                    "{} is neither an OCI archive (index.json) nor a docker save archive (manifest.json)",
                    path.display()
                )))
            }
        }
    }
}

/// Reads and verifies the image at `source`: manifests and config are read (each at most
/// [`MAX_METADATA`]) and checked; every layer is streamed through sha256, never held whole (a
/// registry image's layers are downloaded to files in the temporary directory, `$TMPDIR`, for
/// as long as the [`Resolved`] lives; [`crate::ImageCache`] downloads into its own directory).
pub fn resolve(source: &ImageSource) -> Result<Resolved, ImageError> {
    resolve_with(source, Layers::Verify)
}

/// As [`resolve`], but the layers of a layout or archive are only located, not hashed: their
/// digests are checked as [`Layer::open`]'s reader is read to its end, which unpacking does.
/// For a consumer that reads every layer anyway (building a root filesystem), this saves a
/// pass over the image.
pub fn locate(source: &ImageSource) -> Result<Resolved, ImageError> {
    resolve_with(source, Layers::Locate)
}
