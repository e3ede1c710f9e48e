//! `oci:DIR[:TAG]` as an upload: the OCI image layout directory is checked (an `oci-layout`
//! file, an `index.json` naming the image, every blob the image needs present at the size its
//! descriptor declares) and packed on the fly into an OCI archive, the same bytes every time:
//!
//! - a ustar tar of `oci-layout` (as found), `index.json` (naming only the chosen manifest, so
//!   the server resolves exactly the image the release pins) and the image's blobs
//!   (`blobs/sha256/<hex>`, in digest order; only those the chosen manifest reaches, and of a
//!   nested multi-platform index only its linux/amd64 image's, the one the hosts run);
//! - every entry a regular file, mode 0644, owner 0:0, no owner names, mtime 0; two zero blocks
//!   at the end.
//!
//! The archive's length is known before a byte is read, so it is streamed straight from the
//! layout (nothing is written to disk), and reading can start at any offset, which is how an
//! interrupted upload resumes. Blobs are not hashed here: the control plane verifies each one
//! (and the manifest digest) before it keeps the image.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use scalebox_oci_platform::NoChoice;
use serde_json::{Value, json};

use crate::error::{CliError, Result};

const BLOCK: u64 = 512;
/// Manifests and indexes are small; anything bigger is not one.
const MAX_JSON: u64 = 4 << 20;

/// A layout packed as an archive: what it holds and how to read it.
pub struct Packed {
    /// The manifest digest the archive's `index.json` names.
    pub digest: String,
    /// How many blobs it carries.
    pub blobs: usize,
    len: u64,
    segments: Arc<Vec<Segment>>,
}

/// A piece of the archive: bytes made here (headers, padding, `index.json`) or a whole file.
enum Segment {
    Mem(Vec<u8>),
    File { path: PathBuf, len: u64 },
}

impl Segment {
    fn len(&self) -> u64 {
        match self {
            Segment::Mem(b) => b.len() as u64,
            Segment::File { len, .. } => *len,
        }
    }
}

/// `oci:DIR[:TAG]` → (DIR, TAG), as `image_ref::digest_of` reads it.
pub fn split(rest: &str) -> (&str, Option<&str>) {
    match rest.rsplit_once(':') {
        Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t)),
        _ => (rest, None),
    }
}

fn not_layout(dir: &Path, what: &str) -> CliError {
    CliError::failure(format!(
        "{} is not an OCI image layout: {what} (a layout has an oci-layout file, index.json and \
         blobs/sha256/; `skopeo copy … oci:DIR` or `docker buildx build --output type=oci,tar=false,dest=DIR` make one)",
        dir.display()
    ))
}

/// Checks the layout at `dir` and plans its archive: the manifest tagged `tag`, else the one
/// whose digest is `digest`, else the only one.
pub fn pack(dir: &Path, tag: Option<&str>, digest: Option<&str>) -> Result<Packed> {
    if !dir.is_dir() {
        return Err(CliError::failure(format!(
            "{} is not a directory (oci:DIR names an OCI image layout directory)",
            dir.display()
        )));
    }
    let layout = read_small(&dir.join("oci-layout"), 64 << 10)
        .map_err(|e| not_layout(dir, &format!("no readable oci-layout file ({e})")))?;
    let version: Value = serde_json::from_slice(&layout)
        .map_err(|e| not_layout(dir, &format!("oci-layout is not JSON ({e})")))?;
    if !version["imageLayoutVersion"].is_string() {
        return Err(not_layout(dir, "oci-layout has no imageLayoutVersion"));
    }
    let index = read_small(&dir.join("index.json"), MAX_JSON)
        .map_err(|e| not_layout(dir, &format!("no readable index.json ({e})")))?;
    let index: Value = serde_json::from_slice(&index)
        .map_err(|e| CliError::failure(format!("{}/index.json is not JSON: {e}", dir.display())))?;
    let what = format!("{}/index.json", dir.display());
    let chosen = choose(&index, tag, digest, &what)?;
    let top = descriptor(&chosen, "the chosen manifest")?;
    let mut read_json = |hex: &str, size: u64| -> Result<Value> {
        let p = blob_path(dir, hex);
        let found = std::fs::metadata(&p).map(|m| m.len()).map_err(|e| {
            CliError::failure(format!(
                "{}: blob sha256:{hex} (an image manifest) is missing from blobs/sha256/ ({e}); the layout is incomplete",
                dir.display()
            ))
        })?;
        if found != size {
            return Err(CliError::failure(format!(
                "{}: blob sha256:{hex} (an image manifest) is {found} bytes but its descriptor says {size}; the layout is corrupt",
                dir.display()
            )));
        }
        if size > MAX_JSON {
            return Err(CliError::failure(format!(
                "{}: sha256:{hex} is {size} bytes, too big for an image manifest or index",
                dir.display()
            )));
        }
        let b = read_small(&p, MAX_JSON).map_err(|e| {
            CliError::failure(format!(
                "{}: cannot read {}: {e}",
                dir.display(),
                p.display()
            ))
        })?;
        serde_json::from_slice(&b).map_err(|e| {
            CliError::failure(format!(
                "{}: blob sha256:{hex} is not a JSON manifest: {e}",
                dir.display()
            ))
        })
    };
    let mut blobs = BTreeMap::new();
    reachable(&chosen, 0, &mut read_json, &mut blobs)?;
    let mut segments = Vec::new();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [chosen],
    }))
    .expect("json");
    push_mem(&mut segments, "oci-layout", layout);
    push_mem(&mut segments, "index.json", index);
    for (hex, (size, what)) in &blobs {
        let path = blob_path(dir, hex);
        let found = std::fs::metadata(&path).map(|m| m.len()).map_err(|e| {
            CliError::failure(format!(
                "{}: blob sha256:{hex} ({what}) is missing from blobs/sha256/ ({e}); the layout is incomplete",
                dir.display()
            ))
        })?;
        if found != *size {
            return Err(CliError::failure(format!(
                "{}: blob sha256:{hex} ({what}) is {found} bytes but its descriptor says {size}; the layout is corrupt",
                dir.display()
            )));
        }
        segments.push(Segment::Mem(
            header(&format!("blobs/sha256/{hex}"), *size).to_vec(),
        ));
        segments.push(Segment::File { path, len: *size });
        segments.push(Segment::Mem(vec![0; padding(*size) as usize]));
    }
    segments.push(Segment::Mem(vec![0; 2 * BLOCK as usize]));
    let segments: Vec<Segment> = segments.into_iter().filter(|s| s.len() > 0).collect();
    Ok(Packed {
        digest: top.0,
        blobs: blobs.len(),
        len: segments.iter().map(Segment::len).sum(),
        segments: Arc::new(segments),
    })
}

impl Packed {
    /// The archive's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The archive from byte `offset` on.
    pub fn reader_at(&self, offset: u64) -> Reader {
        let mut r = Reader {
            segments: self.segments.clone(),
            idx: 0,
            off: 0,
            file: None,
        };
        let mut left = offset.min(self.len);
        while r.idx < r.segments.len() && left >= r.segments[r.idx].len() {
            left -= r.segments[r.idx].len();
            r.idx += 1;
        }
        r.off = left;
        r
    }
}

/// Reads a [`Packed`] archive, opening each blob when its turn comes.
pub struct Reader {
    segments: Arc<Vec<Segment>>,
    idx: usize,
    /// Position within `segments[idx]`.
    off: u64,
    file: Option<std::fs::File>,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(seg) = self.segments.get(self.idx) else {
                return Ok(0);
            };
            if self.off >= seg.len() {
                self.idx += 1;
                self.off = 0;
                self.file = None;
                continue;
            }
            let want = (seg.len() - self.off).min(buf.len() as u64) as usize;
            let n = match seg {
                Segment::Mem(b) => {
                    let start = self.off as usize;
                    buf[..want].copy_from_slice(&b[start..start + want]);
                    want
                }
                Segment::File { path, len } => {
                    if self.file.is_none() {
                        let mut f = std::fs::File::open(path).map_err(|e| {
                            std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                        })?;
                        if f.metadata()?.len() != *len {
                            return Err(changed(path));
                        }
                        f.seek(SeekFrom::Start(self.off))?;
                        self.file = Some(f);
                    }
                    let n = self.file.as_mut().expect("opened").read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(changed(path));
                    }
                    n
                }
            };
            self.off += n as u64;
            return Ok(n);
        }
    }
}

fn changed(path: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "{} changed while it was being uploaded; run the command again",
        path.display()
    ))
}

fn blob_path(dir: &Path, hex: &str) -> PathBuf {
    dir.join("blobs/sha256").join(hex)
}

fn read_small(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut b = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut b)?;
    if b.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(b)
}

fn push_mem(segments: &mut Vec<Segment>, name: &str, data: Vec<u8>) {
    let size = data.len() as u64;
    segments.push(Segment::Mem(header(name, size).to_vec()));
    segments.push(Segment::Mem(data));
    segments.push(Segment::Mem(vec![0; padding(size) as usize]));
}

/// The manifest descriptor of `index` the release means: tagged `tag`, else with `digest`,
/// else the one the hosts would run ([`scalebox_oci_platform::pick`], as the control plane
/// chooses when it verifies the upload): the linux/amd64 image of an index listing several
/// platforms, or the only image.
pub fn choose(index: &Value, tag: Option<&str>, digest: Option<&str>, what: &str) -> Result<Value> {
    let ms = index["manifests"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            CliError::failure(format!(
                "{what} lists no manifests: there is no image to upload"
            ))
        })?;
    let found = if let Some(t) = tag {
        let m = scalebox_oci_platform::pick(index, Some(t))
            .map_err(|e| CliError::failure(e.describe(what)))?;
        if let Some(d) = digest
            && m["digest"] != d
        {
            return Err(CliError::usage(format!(
                "--digest {d} contradicts tag {t:?}, which names {} in {what}; give one of them",
                m["digest"].as_str().unwrap_or("?")
            )));
        }
        m
    } else if let Some(d) = digest {
        ms.iter().find(|m| m["digest"] == d).ok_or_else(|| {
            CliError::usage(format!(
                "--digest {d} is not a manifest of {what} (it lists {})",
                ms.iter()
                    .filter_map(|m| m["digest"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?
    } else {
        scalebox_oci_platform::pick(index, None).map_err(|e| match e {
            NoChoice::Ambiguous { images, tags } => CliError::usage(format!(
                "{what} holds {images} images; name one (`oci:DIR:TAG`, {}) or give --digest",
                scalebox_oci_platform::tag_list(&tags)
            )),
            other => CliError::failure(other.describe(what)),
        })?
    };
    Ok(found.clone())
}

/// (`sha256:<hex>`, size) of a descriptor.
fn descriptor(d: &Value, what: &str) -> Result<(String, u64)> {
    let digest = d["digest"]
        .as_str()
        .filter(|s| crate::image_ref::valid_digest(s))
        .ok_or_else(|| {
            CliError::failure(format!(
                "{what}: descriptor without a sha256 digest ({})",
                d["digest"]
            ))
        })?;
    let size = d["size"]
        .as_u64()
        .ok_or_else(|| CliError::failure(format!("{what} {digest}: descriptor without a size")))?;
    Ok((digest.to_ascii_lowercase(), size))
}

/// Adds the blobs descriptor `d` reaches to `out` (hex → (size, what it is)): itself, and for
/// an image manifest its config and layers, for an index every manifest it lists. `read_json`
/// reads a manifest or index blob by hex and size.
fn reachable(
    d: &Value,
    depth: usize,
    read_json: &mut dyn FnMut(&str, u64) -> Result<Value>,
    out: &mut BTreeMap<String, (u64, &'static str)>,
) -> Result<()> {
    if depth > 4 {
        return Err(CliError::failure(
            "image indexes nested too deeply (more than 4 levels)",
        ));
    }
    let (digest, size) = descriptor(d, "manifest")?;
    let hex = digest["sha256:".len()..].to_owned();
    if out.contains_key(&hex) {
        return Ok(());
    }
    let body = read_json(&hex, size)?;
    out.insert(hex, (size, "manifest"));
    if body["manifests"].is_array() {
        // A multi-platform image (`docker buildx` writes one under the tag): only the image the
        // hosts run, chosen as the control plane chooses when it verifies the upload, which
        // reads nothing else. Other platforms' manifests, layers and attestations stay home.
        let what = format!("the image index {digest}");
        let child = scalebox_oci_platform::pick(&body, None)
            .map_err(|e| CliError::failure(e.describe(&what)))?;
        return reachable(child, depth + 1, read_json, out);
    }
    let config = descriptor(&body["config"], &format!("manifest {digest}: config"))?;
    out.insert(config.0["sha256:".len()..].to_owned(), (config.1, "config"));
    for l in body["layers"].as_array().into_iter().flatten() {
        let (ld, ls) = descriptor(l, &format!("manifest {digest}: layer"))?;
        out.insert(ld["sha256:".len()..].to_owned(), (ls, "layer"));
    }
    Ok(())
}

/// Zero bytes after `size` bytes of content up to the next 512-byte block.
fn padding(size: u64) -> u64 {
    size.next_multiple_of(BLOCK) - size
}

/// `n` as a NUL-terminated octal field of `width` bytes, or (when it does not fit, for files of
/// 8 GiB and more) GNU base-256: the high bit set, then big-endian.
fn numeric(field: &mut [u8], n: u64) {
    let width = field.len();
    let octal = format!("{n:0w$o}", w = width - 1);
    if octal.len() < width {
        field[..width - 1].copy_from_slice(octal.as_bytes());
        field[width - 1] = 0;
    } else {
        field.fill(0);
        field[width - 8..].copy_from_slice(&n.to_be_bytes());
        field[0] |= 0x80;
    }
}

/// A ustar header for a regular file `name` (under 100 bytes) of `size` bytes: mode 0644,
/// owner 0:0, mtime 0.
fn header(name: &str, size: u64) -> [u8; 512] {
    assert!(name.len() < 100, "tar name {name:?} too long");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    numeric(&mut h[100..108], 0o644);
    numeric(&mut h[108..116], 0);
    numeric(&mut h[116..124], 0);
    numeric(&mut h[124..136], size);
    numeric(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let chk = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(chk.as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalebox_oci_platform::REF_NAME as TAG_ANNOTATION;
    use sha2::{Digest, Sha256};

    fn put(dir: &Path, data: &[u8]) -> (String, u64) {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(blob_path(dir, &hex), data).unwrap();
        (format!("sha256:{hex}"), data.len() as u64)
    }

    /// A layout with two images (tags v1, v2) sharing a layer; returns v1's manifest digest.
    fn layout(dir: &Path) -> (String, String) {
        let layer = put(dir, &vec![7u8; 3000]);
        let mut ds = Vec::new();
        for tag in ["v1", "v2"] {
            let cfg = put(dir, format!("{{\"tag\":\"{tag}\"}}").as_bytes());
            let m = json!({"schemaVersion": 2, "config": {"digest": cfg.0, "size": cfg.1},
                           "layers": [{"digest": layer.0, "size": layer.1}]});
            let m = put(dir, &serde_json::to_vec(&m).unwrap());
            ds.push((m, tag));
        }
        let index = json!({"schemaVersion": 2, "manifests": ds.iter().map(|((d, s), t)| json!(
            {"digest": d, "size": s, "annotations": {TAG_ANNOTATION: t}})).collect::<Vec<_>>()});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        (ds[0].0.0.clone(), ds[1].0.0.clone())
    }

    fn all(p: &Packed, at: u64) -> Vec<u8> {
        let mut b = Vec::new();
        p.reader_at(at).read_to_end(&mut b).unwrap();
        b
    }

    #[test]
    fn packs_the_chosen_image_deterministically_and_reads_from_any_offset() {
        let d = tempfile::tempdir().unwrap();
        let (v1, v2) = layout(d.path());
        let p = pack(d.path(), Some("v1"), None).unwrap();
        assert_eq!(p.digest, v1);
        assert_eq!(p.blobs, 3, "manifest, config, layer of v1 only");
        let bytes = all(&p, 0);
        assert_eq!(bytes.len() as u64, p.len());
        assert_eq!(bytes.len() % 512, 0);
        assert_eq!(all(&pack(d.path(), Some("v1"), None).unwrap(), 0), bytes);
        for at in [
            1,
            511,
            512,
            1000,
            1536,
            p.len() - 1024,
            p.len() - 1,
            p.len(),
        ] {
            assert_eq!(all(&p, at), bytes[at as usize..], "from {at}");
        }
        // tar(1) reads it: the entries, owners and times as promised.
        let tar = d.path().join("out.tar");
        std::fs::write(&tar, &bytes).unwrap();
        let o = std::process::Command::new("tar")
            .args(["--numeric-owner", "-tvf"])
            .arg(&tar)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let list = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(lines.len(), 5, "{list}");
        assert!(lines[0].starts_with("-rw-r--r-- 0/0") && lines[0].ends_with(" oci-layout"));
        assert!(lines[0].contains("1970-01-01"), "{list}");
        assert!(lines[1].ends_with(" index.json"), "{list}");
        let blobs: Vec<&str> = lines[2..]
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        let mut sorted = blobs.clone();
        sorted.sort();
        assert_eq!(blobs, sorted, "blobs in digest order");
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        assert!(
            std::process::Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(&x)
                .status()
                .unwrap()
                .success()
        );
        let idx: Value =
            serde_json::from_slice(&std::fs::read(x.join("index.json")).unwrap()).unwrap();
        assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(idx["manifests"][0]["digest"], v1.as_str());
        for b in &blobs {
            assert_eq!(
                std::fs::read(x.join(b)).unwrap(),
                std::fs::read(d.path().join(b)).unwrap()
            );
        }
        // By digest instead of tag; the other image.
        assert_eq!(pack(d.path(), None, Some(&v2)).unwrap().digest, v2);
        assert_eq!(pack(d.path(), Some("v2"), Some(&v2)).unwrap().digest, v2);
    }

    #[test]
    fn refuses_what_is_not_a_complete_layout() {
        let d = tempfile::tempdir().unwrap();
        let (v1, _) = layout(d.path());
        let msg = |r: Result<Packed>| r.err().expect("refused").message;
        let e = pack(d.path(), None, None).err().unwrap();
        assert_eq!(e.exit, crate::error::exit::USAGE);
        assert!(
            e.message.contains("holds 2 images") && e.message.contains("v1, v2"),
            "{}",
            e.message
        );
        assert!(msg(pack(d.path(), Some("v3"), None)).contains("no manifest tagged \"v3\""));
        let e = pack(d.path(), Some("v2"), Some(&v1)).err().unwrap();
        assert_eq!(e.exit, crate::error::exit::USAGE);
        assert!(e.message.contains("contradicts"), "{}", e.message);
        let other = format!("sha256:{}", "0".repeat(64));
        assert!(msg(pack(d.path(), None, Some(&other))).contains("is not a manifest of"));
        assert!(msg(pack(&d.path().join("nope"), None, None)).contains("is not a directory"));

        // A missing layer, a truncated config, a missing manifest.
        let m: Value =
            serde_json::from_slice(&std::fs::read(blob_path(d.path(), &v1[7..])).unwrap()).unwrap();
        let layer = blob_path(d.path(), &m["layers"][0]["digest"].as_str().unwrap()[7..]);
        let saved = std::fs::read(&layer).unwrap();
        std::fs::remove_file(&layer).unwrap();
        let e = msg(pack(d.path(), Some("v1"), None));
        assert!(e.contains("(layer) is missing from blobs/sha256/"), "{e}");
        std::fs::write(&layer, &saved[..100]).unwrap();
        let e = msg(pack(d.path(), Some("v1"), None));
        assert!(
            e.contains("is 100 bytes but its descriptor says 3000"),
            "{e}"
        );
        std::fs::write(&layer, &saved).unwrap();
        std::fs::remove_file(blob_path(d.path(), &v1[7..])).unwrap();
        let e = msg(pack(d.path(), Some("v1"), None));
        assert!(e.contains("(an image manifest) is missing"), "{e}");

        // No manifests; no index.json; no oci-layout.
        std::fs::write(
            d.path().join("index.json"),
            r#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        assert!(msg(pack(d.path(), None, None)).contains("lists no manifests"));
        std::fs::remove_file(d.path().join("index.json")).unwrap();
        let e = msg(pack(d.path(), None, None));
        assert!(
            e.contains("is not an OCI image layout: no readable index.json"),
            "{e}"
        );
        std::fs::remove_file(d.path().join("oci-layout")).unwrap();
        let e = msg(pack(d.path(), None, None));
        assert!(
            e.contains("is not an OCI image layout: no readable oci-layout"),
            "{e}"
        );
    }

    /// A layout whose `index.json` lists a manifest per platform directly (no nested index), as
    /// `skopeo copy --all` writes one: `platforms` as (os, arch, variant); their digests.
    fn multi_platform(dir: &Path, platforms: &[(&str, &str, Option<&str>)]) -> Vec<String> {
        let layer = put(dir, &vec![9u8; 1000]);
        let mut descs = Vec::new();
        let mut digests = Vec::new();
        for (os, arch, variant) in platforms {
            let cfg = put(dir, format!("{{\"architecture\":\"{arch}\"}}").as_bytes());
            let m = json!({"schemaVersion": 2, "config": {"digest": cfg.0, "size": cfg.1},
                           "layers": [{"digest": layer.0, "size": layer.1}]});
            let (d, size) = put(dir, &serde_json::to_vec(&m).unwrap());
            let mut desc = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                  "digest": d, "size": size,
                                  "platform": {"os": os, "architecture": arch}});
            if let Some(v) = variant {
                desc["platform"]["variant"] = json!(v);
            }
            descs.push(desc);
            digests.push(d);
        }
        let index = json!({"schemaVersion": 2, "manifests": descs});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        digests
    }

    #[test]
    fn several_platforms_without_a_tag_mean_linux_amd64() {
        let d = tempfile::tempdir().unwrap();
        let ds = multi_platform(
            d.path(),
            &[
                ("linux", "arm64", Some("v8")),
                ("unknown", "unknown", None),
                ("linux", "amd64", None),
            ],
        );
        let p = pack(d.path(), None, None).unwrap();
        assert_eq!(p.digest, ds[2], "the linux/amd64 manifest");
        assert_eq!(p.blobs, 3, "its manifest, config and layer");
        let bytes = all(&p, 0);
        let tar = d.path().join("out.tar");
        std::fs::write(&tar, &bytes).unwrap();
        let x = d.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = std::process::Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        let idx: Value =
            serde_json::from_slice(&std::fs::read(x.join("index.json")).unwrap()).unwrap();
        assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(idx["manifests"][0]["digest"], ds[2].as_str());
        assert_eq!(idx["manifests"][0]["platform"]["architecture"], "amd64");
        // The same choice as the control plane and the hosts make.
        let index: Value =
            serde_json::from_slice(&std::fs::read(d.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            scalebox_oci_platform::pick(&index, None).unwrap()["digest"],
            ds[2].as_str()
        );
        // --digest still picks another.
        assert_eq!(pack(d.path(), None, Some(&ds[0])).unwrap().digest, ds[0]);

        // No linux/amd64 image: refused (exit 1), naming the platforms there are.
        let e = tempfile::tempdir().unwrap();
        multi_platform(
            e.path(),
            &[("linux", "arm64", None), ("linux", "s390x", None)],
        );
        let err = pack(e.path(), None, None).err().expect("refused");
        assert_eq!(err.exit, crate::error::exit::FAILURE);
        assert!(
            err.message
                .ends_with("has no linux/amd64 image, which is what Scalebox runs (it has linux/arm64, linux/s390x)"),
            "{}",
            err.message
        );
    }

    /// `multi_platform` under one tagged descriptor of the nested index, as `docker buildx
    /// --output type=oci` writes it; the nested index's digest.
    fn nested(dir: &Path, platforms: &[(&str, &str, Option<&str>)]) -> (String, Vec<String>) {
        let ds = multi_platform(dir, platforms);
        let inner = std::fs::read(dir.join("index.json")).unwrap();
        let (d, size) = put(dir, &inner);
        let top = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": size,
            "annotations": {TAG_ANNOTATION: "latest"}}]});
        std::fs::write(dir.join("index.json"), top.to_string()).unwrap();
        (d, ds)
    }

    /// A tag naming a multi-platform index pins the index, and the archive holds the index and
    /// the linux/amd64 image only (what the control plane reads when it verifies the upload).
    #[test]
    fn a_nested_index_uploads_only_the_image_the_hosts_run() {
        let d = tempfile::tempdir().unwrap();
        let platforms = [
            ("linux", "arm64", Some("v8")),
            ("unknown", "unknown", None),
            ("linux", "amd64", None),
        ];
        let (index, ds) = nested(d.path(), &platforms);
        let p = pack(d.path(), Some("latest"), None).unwrap();
        assert_eq!(p.digest, index);
        assert_eq!(
            p.blobs, 4,
            "the index, the amd64 manifest, its config, the layer"
        );
        let tar = d.path().join("out.tar");
        std::fs::write(&tar, all(&p, 0)).unwrap();
        let o = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&tar)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&o.stdout).to_string();
        let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
        assert!(
            list.contains(&hex(&index)) && list.contains(&hex(&ds[2])),
            "{list}"
        );
        assert!(
            !list.contains(&hex(&ds[0])) && !list.contains(&hex(&ds[1])),
            "other platforms stay home: {list}"
        );

        // A nested index without a linux/amd64 image: refused, naming what it has.
        let e = tempfile::tempdir().unwrap();
        let (index, _) = nested(e.path(), &[("linux", "arm64", None)]);
        let err = pack(e.path(), None, None).err().expect("refused");
        assert_eq!(err.exit, crate::error::exit::FAILURE);
        assert!(
            err.message.contains(&format!("the image index {index}"))
                && err.message.contains("(it has linux/arm64)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_blob_changing_underneath_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let (v1, _) = layout(d.path());
        let p = pack(d.path(), Some("v1"), None).unwrap();
        let m: Value =
            serde_json::from_slice(&std::fs::read(blob_path(d.path(), &v1[7..])).unwrap()).unwrap();
        let layer = blob_path(d.path(), &m["layers"][0]["digest"].as_str().unwrap()[7..]);
        std::fs::write(&layer, b"short").unwrap();
        let mut b = Vec::new();
        let e = p.reader_at(0).read_to_end(&mut b).unwrap_err();
        assert!(
            e.to_string()
                .contains("changed while it was being uploaded"),
            "{e}"
        );
    }

    #[test]
    fn headers_and_numbers() {
        let h = header("blobs/sha256/ab", 3000);
        assert_eq!(&h[124..136], b"00000005670\0");
        assert_eq!(&h[257..265], b"ustar\x0000");
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    b' ' as u32
                } else {
                    b as u32
                }
            })
            .sum();
        let field = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(field, 8).unwrap(), sum);
        let mut f = [0u8; 12];
        numeric(&mut f, (8 << 30) - 1);
        assert_eq!(&f, b"77777777777\0");
        numeric(&mut f, 8 << 30);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..].try_into().unwrap()), 8 << 30);
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(split("/a/b:v1"), ("/a/b", Some("v1")));
        assert_eq!(split("/a/b"), ("/a/b", None));
        assert_eq!(split("./x:y/z"), ("./x:y/z", None));
    }
}
