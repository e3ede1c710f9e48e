//! The root filesystem cache: one ext4 image per image digest, built once (a lock file per digest
//! serialises concurrent builders, in-process and across processes), atomically (staging in a
//! temporary directory, rename as the commit point; leftovers of a crashed build are removed by
//! the next build of that digest). A registry image's layers are downloaded into the staging
//! directory, one at a time, and only when the image is not cached yet.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::oci::{self, ImageConfig, ImageSource, Layer};
use crate::{ImageError, registry, unpack};

/// A built (or cached) root filesystem.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub digest: String,
    pub ext4: PathBuf,
    pub config: ImageConfig,
    pub size_bytes: u64,
    pub cache_hit: bool,
    pub build_duration: Duration,
}

pub struct ImageCache {
    root: PathBuf,
}

/// The layers a build unpacks: located in local files (an archive, a layout), or still in a
/// registry (downloaded into the build's staging directory one at a time).
enum Layers<'a> {
    Located(&'a [Layer]),
    Pull(&'a mut registry::Pull),
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Bytes used by a tree (files + a 4 KiB block per inode).
fn tree_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            n += 4096 + if m.is_file() { m.len() } else { 0 };
            if m.is_dir() {
                n += tree_size(&e.path());
            }
        }
    }
    n
}

impl ImageCache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<ImageCache, ImageError> {
        std::fs::create_dir_all(root)
            .map_err(ImageError::io(format!("create {}", root.display())))?;
        Ok(ImageCache {
            root: root.to_owned(),
        })
    }

    /// Removes staging directories of `hex` left by an interrupted build (the caller holds that
    /// digest's build lock, so none of them is in use).
    fn remove_stale(&self, hex: &str) {
        let prefix = format!(".build-{hex}-");
        for e in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                log_notice(&format!(
                    "removing leftover of an interrupted build: {}",
                    e.path().display()
                ));
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The ext4 root filesystem of `source`, built if not cached.
    pub fn rootfs(&self, source: &ImageSource) -> Result<Rootfs, ImageError> {
        let started = Instant::now();
        // A local archive built before (same path, size, mtime, inode) is found without
        // re-reading and re-hashing it.
        let fingerprint = archive_fingerprint(source);
        if let Some(fp) = &fingerprint
            && let Some(hit) = self.known(fp, started)
        {
            return Ok(hit);
        }
        if let ImageSource::Registry {
            reference,
            insecure_http,
        } = source
        {
            // Manifest and config first: a cached image downloads no layer.
            let mut pull = registry::fetch(reference, *insecure_http)?;
            let (digest, config) = (pull.digest.clone(), pull.config.clone());
            return self.build(&digest, &config, Layers::Pull(&mut pull), started);
        }
        // Layers are verified as they are unpacked (a mismatch fails the build, nothing is
        // cached), not in a pass of their own first.
        let img = oci::locate(source)?;
        let built = self.build(
            &img.digest,
            &img.config,
            Layers::Located(&img.layers),
            started,
        )?;
        if let Some(fp) = &fingerprint {
            let _ = std::fs::write(self.root.join(format!("src-{fp}")), img.digest.as_bytes());
        }
        Ok(built)
    }

    /// The root filesystem of the image `digest`, built from `layers` unless cached.
    fn build(
        &self,
        digest: &str,
        config: &ImageConfig,
        mut layers: Layers<'_>,
        started: Instant,
    ) -> Result<Rootfs, ImageError> {
        let hex = digest.trim_start_matches("sha256:").to_owned();
        let ext4 = self.root.join(format!("{hex}.ext4"));
        let meta = self.root.join(format!("{hex}.json"));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(format!("{hex}.lock")))
            .map_err(ImageError::io("open the build lock"))?;
        // SAFETY: flock on a valid fd; released when `lock` drops.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        let done = |cache_hit: bool| -> Result<Rootfs, ImageError> {
            Ok(Rootfs {
                digest: digest.to_owned(),
                size_bytes: std::fs::metadata(&ext4).map(|m| m.len()).unwrap_or(0),
                ext4: ext4.clone(),
                config: config.clone(),
                cache_hit,
                build_duration: started.elapsed(),
            })
        };
        if ext4.is_file() && meta.is_file() {
            return done(true);
        }
        self.remove_stale(&hex);
        let staging = self.root.join(format!(".build-{hex}-{}", unique()));
        let result = (|| {
            let tree = staging.join("tree");
            std::fs::create_dir_all(&tree).map_err(ImageError::io("create the staging tree"))?;
            match &mut layers {
                Layers::Located(located) => {
                    for layer in *located {
                        unpack::apply_layer(&tree, layer)?;
                    }
                }
                Layers::Pull(pull) => {
                    // One layer on disk at a time: downloaded (verified), unpacked, removed.
                    let blobs = staging.join("blobs");
                    std::fs::create_dir_all(&blobs)
                        .map_err(ImageError::io("create the download directory"))?;
                    for i in 0..pull.layers.len() {
                        let layer = pull.layer(i, &blobs)?;
                        unpack::apply_layer(&tree, &layer)?;
                        if let oci::BlobSource::File { path, .. } = &layer.source {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                }
            }
            // Content plus 30% and 32 MiB of headroom, in MiB.
            let size_mb = (tree_size(&tree) * 13 / 10) / (1 << 20) + 32;
            let tmp = staging.join("rootfs.ext4");
            let out = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
                .arg(&tree)
                .arg(&tmp)
                .arg(format!("{size_mb}M"))
                .output()
                .map_err(|e| {
                    ImageError::Mkfs(format!(
                        "cannot run mkfs.ext4 (Debian package e2fsprogs): {e}"
                    ))
                })?;
            if !out.status.success() {
                return Err(ImageError::Mkfs(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ));
            }
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(ImageError::io("sync the image"))?;
            let mtmp = staging.join("config.json");
            std::fs::write(
                &mtmp,
                serde_json::to_vec(config).expect("config serializes"),
            )
            .map_err(ImageError::io("write config"))?;
            std::fs::rename(&mtmp, &meta).map_err(ImageError::io("install config"))?;
            std::fs::rename(&tmp, &ext4).map_err(ImageError::io("install the image"))
        })();
        let _ = std::fs::remove_dir_all(&staging);
        result?;
        done(false)
    }
}

/// sha256 of (canonical path, size, mtime, inode) of an archive source.
fn archive_fingerprint(source: &ImageSource) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ImageSource::Archive { path } = source else {
        return None;
    };
    let p = std::fs::canonicalize(path).ok()?;
    let m = std::fs::metadata(&p).ok()?;
    let key = format!(
        "{}\0{}\0{}\0{}\0{}",
        p.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    );
    Some(
        oci::sha256(key.as_bytes())
            .trim_start_matches("sha256:")
            .to_owned(),
    )
}

impl ImageCache {
    /// The cached root filesystem remembered for an archive fingerprint, if still complete.
    fn known(&self, fp: &str, started: Instant) -> Option<Rootfs> {
        let digest = std::fs::read_to_string(self.root.join(format!("src-{fp}"))).ok()?;
        let hex = digest.trim().trim_start_matches("sha256:").to_owned();
        let ext4 = self.root.join(format!("{hex}.ext4"));
        let config: ImageConfig =
            serde_json::from_slice(&std::fs::read(self.root.join(format!("{hex}.json"))).ok()?)
                .ok()?;
        let size_bytes = std::fs::metadata(&ext4).ok()?.len();
        Some(Rootfs {
            digest: digest.trim().to_owned(),
            ext4,
            config,
            size_bytes,
            cache_hit: true,
            build_duration: started.elapsed(),
        })
    }
}

/// How a clone was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    Reflink,
    SparseCopy,
}

/// Copy-on-write clone of `src` at `dst`: FICLONE where the filesystem supports it, else a
/// sparse copy (zero blocks are skipped).
pub fn clone_file(src: &Path, dst: &Path) -> Result<CloneKind, ImageError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let from =
        std::fs::File::open(src).map_err(ImageError::io(format!("open {}", src.display())))?;
    let tmp = dst.with_extension("tmp");
    let mut to =
        std::fs::File::create(&tmp).map_err(ImageError::io(format!("create {}", tmp.display())))?;
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: ioctl with two valid fds.
    let kind = if unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) } == 0 {
        CloneKind::Reflink
    } else {
        let len = from.metadata().map_err(ImageError::io("stat"))?.len();
        let mut r = std::io::BufReader::with_capacity(1 << 20, from);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).map_err(ImageError::io("read"))?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().all(|&b| b == 0) {
                to.seek(SeekFrom::Current(n as i64))
                    .map_err(ImageError::io("seek"))?;
            } else {
                to.write_all(&buf[..n]).map_err(ImageError::io("write"))?;
            }
        }
        to.set_len(len).map_err(ImageError::io("set length"))?;
        CloneKind::SparseCopy
    };
    to.sync_all().map_err(ImageError::io("sync"))?;
    std::fs::rename(&tmp, dst).map_err(ImageError::io(format!("install {}", dst.display())))?;
    Ok(kind)
}

fn log_notice(msg: &str) {
    eprintln!("scalebox-image: {msg}");
}
