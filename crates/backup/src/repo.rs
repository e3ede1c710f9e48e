//! A backup repository: a [`Target`] plus an optional [`EncryptionKey`], and the operations on
//! it: back up a snapshot file (chunked, holes skipped, content-addressed, resumable), restore
//! into a new file (verified chunk by chunk and whole), list, delete and garbage-collect.
//!
//! Everything is blocking; call it from a blocking task.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::crypto::{self, EncryptionKey};
use crate::error::{BackupError, io_err};
use crate::manifest::{self, FORMAT, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Manifest, Source};
use crate::target::{Target, fsync_dir};

/// The default chunk size (4 MiB).
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Options for one backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The backup id (re-running with the same id resumes a crashed backup).
    pub id: String,
    pub source: Source,
    /// Chunk size in bytes (default 4 MiB); 4 KiB-64 MiB.
    pub chunk_size: u64,
    /// Test hook: upload at most this many chunks, then fail with
    /// [`BackupError::Interrupted`] before writing the manifest (a simulated crash).
    pub max_chunks: Option<usize>,
}

impl BackupOptions {
    pub fn new(id: &str, volume: &str, snapshot: &str) -> BackupOptions {
        BackupOptions {
            id: id.to_owned(),
            source: Source {
                volume: volume.to_owned(),
                snapshot: snapshot.to_owned(),
            },
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_chunks: None,
        }
    }
}

/// Progress of a backup or restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub manifest: Manifest,
    /// Chunks holding data (not holes).
    pub data_chunks: usize,
    pub hole_chunks: usize,
    /// Chunks uploaded by this run.
    pub uploaded_chunks: usize,
    /// Bytes sent for those chunks (after encryption).
    pub uploaded_bytes: u64,
    /// Data chunks not uploaded because the object already existed (an earlier backup, an
    /// interrupted run of this one, or a repeat within the image).
    pub skipped_chunks: usize,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub fetched_chunks: usize,
    pub fetched_bytes: u64,
}

/// What garbage collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: usize,
    pub chunks_kept: usize,
    pub chunks_deleted: usize,
}

/// A target and an optional encryption key.
pub struct Repository {
    target: Box<dyn Target>,
    key: Option<EncryptionKey>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("target", &self.target.describe())
            .field("encrypted", &self.key.is_some())
            .finish()
    }
}

const CHUNK_PREFIX: &str = "chunks/";
const MANIFEST_PREFIX: &str = "backups/";

/// Removes a file on drop unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Repository {
    pub fn new(target: Box<dyn Target>, key: Option<EncryptionKey>) -> Repository {
        Repository { target, key }
    }

    /// Opens the configured target and loads the key file, if any.
    pub fn open(config: &Config) -> Result<Repository, BackupError> {
        let target = config.target.open()?;
        let key = match &config.encryption_key_file {
            Some(p) => Some(EncryptionKey::load(p)?),
            None => None,
        };
        Ok(Repository::new(target, key))
    }

    pub fn target(&self) -> &dyn Target {
        self.target.as_ref()
    }

    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The object key of a chunk with this plaintext SHA-256.
    pub fn chunk_key(&self, plain_hash: &[u8; 32]) -> String {
        match &self.key {
            Some(k) => format!("{CHUNK_PREFIX}{}", k.object_name(plain_hash)),
            None => format!("{CHUNK_PREFIX}{}", hex::encode(plain_hash)),
        }
    }

    fn chunk_key_hex(&self, hash_hex: &str) -> String {
        let mut h = [0u8; 32];
        // Manifests are validated, so this cannot fail; fall back to the raw string regardless.
        if hex::decode_to_slice(hash_hex, &mut h).is_err() {
            return format!("{CHUNK_PREFIX}{hash_hex}");
        }
        self.chunk_key(&h)
    }

    /// Backs up the snapshot file at `src`. Re-running with the id of an interrupted backup
    /// resumes it: chunks already in the target are not uploaded again.
    pub fn backup(
        &self,
        src: &Path,
        opts: &BackupOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<BackupReport, BackupError> {
        manifest::validate_id(&opts.id)?;
        let cs = opts.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) {
            return Err(BackupError::Config(format!(
                "chunk size {cs} out of range {MIN_CHUNK_SIZE}-{MAX_CHUNK_SIZE}"
            )));
        }
        let mkey = manifest::manifest_key(&opts.id);
        if self.target.exists(&mkey)? {
            return Err(BackupError::AlreadyExists(opts.id.clone()));
        }
        let mut file = File::open(src).map_err(io_err(format!("open {}", src.display())))?;
        let size = file
            .metadata()
            .map_err(io_err(format!("stat {}", src.display())))?
            .len();
        // One listing instead of a HEAD per chunk.
        let existing: HashSet<String> = self.target.list(CHUNK_PREFIX)?.into_iter().collect();
        let mut uploaded_now: HashSet<String> = HashSet::new();

        let n = Manifest::chunk_count(size, cs) as usize;
        let mut chunks: Vec<Option<String>> = Vec::with_capacity(n);
        let mut image = Sha256::new();
        let mut buf = vec![0u8; cs as usize];
        let mut report = BackupReport {
            manifest: empty_manifest(),
            data_chunks: 0,
            hole_chunks: 0,
            uploaded_chunks: 0,
            uploaded_bytes: 0,
            skipped_chunks: 0,
        };
        progress(Progress {
            bytes_done: 0,
            bytes_total: size,
        });
        for index in 0..n {
            let off = index as u64 * cs;
            let len = cs.min(size - off) as usize;
            let data = &mut buf[..len];
            file.read_exact(data).map_err(io_err(format!(
                "read {} at offset {off} (did the snapshot change size?)",
                src.display()
            )))?;
            image.update(&*data);
            if is_zero(data) {
                chunks.push(None);
                report.hole_chunks += 1;
            } else {
                report.data_chunks += 1;
                let hash: [u8; 32] = Sha256::digest(&*data).into();
                let key = self.chunk_key(&hash);
                if existing.contains(&key) || uploaded_now.contains(&key) {
                    report.skipped_chunks += 1;
                } else {
                    if opts.max_chunks.is_some_and(|m| report.uploaded_chunks >= m) {
                        return Err(BackupError::Interrupted {
                            id: opts.id.clone(),
                            uploaded: report.uploaded_chunks,
                        });
                    }
                    let body = match &self.key {
                        Some(k) => k.seal(&key, data)?,
                        None => data.to_vec(),
                    };
                    self.target.put(&key, &body)?;
                    report.uploaded_chunks += 1;
                    report.uploaded_bytes += body.len() as u64;
                    uploaded_now.insert(key);
                }
                chunks.push(Some(hex::encode(hash)));
            }
            progress(Progress {
                bytes_done: off + len as u64,
                bytes_total: size,
            });
        }
        // Guard against a concurrent gc having deleted chunks this backup relies on.
        let present: HashSet<String> = self.target.list(CHUNK_PREFIX)?.into_iter().collect();
        for (index, c) in chunks.iter().enumerate() {
            if let Some(h) = c {
                let key = self.chunk_key_hex(h);
                if !present.contains(&key) {
                    return Err(BackupError::ChunkVanished {
                        id: opts.id.clone(),
                        index,
                        key,
                    });
                }
            }
        }
        let m = Manifest {
            format: FORMAT,
            id: opts.id.clone(),
            created_at: now_rfc3339(),
            source: opts.source.clone(),
            size,
            chunk_size: cs,
            encrypted: self.key.is_some(),
            image_sha256: hex::encode(image.finalize()),
            chunks,
        };
        let json = serde_json::to_vec_pretty(&m).map_err(|e| BackupError::ManifestCorrupt {
            id: m.id.clone(),
            reason: format!("cannot serialize: {e}"),
        })?;
        let body = match &self.key {
            Some(k) => k.seal(&mkey, &json)?,
            None => json,
        };
        // Last: the backup exists from here on.
        self.target.put(&mkey, &body)?;
        tracing::info!(
            id = %m.id,
            size,
            uploaded = report.uploaded_chunks,
            skipped = report.skipped_chunks,
            holes = report.hole_chunks,
            "backup written"
        );
        report.manifest = m;
        Ok(report)
    }

    /// Reads and verifies a backup's manifest.
    pub fn manifest(&self, id: &str) -> Result<Manifest, BackupError> {
        manifest::validate_id(id)?;
        let key = manifest::manifest_key(id);
        let bytes = self
            .target
            .get(&key)?
            .ok_or_else(|| BackupError::NotFound(id.to_owned()))?;
        let json = match (&self.key, crypto::is_encrypted(&bytes)) {
            (Some(k), true) => {
                k.open(&key, &bytes)
                    .map_err(|reason| BackupError::ManifestCorrupt {
                        id: id.to_owned(),
                        reason,
                    })?
            }
            (None, true) => return Err(BackupError::EncryptedNoKey { id: id.to_owned() }),
            (Some(_), false) => return Err(BackupError::NotEncrypted { id: id.to_owned() }),
            (None, false) => bytes,
        };
        let m = Manifest::parse(id, &json)?;
        if m.encrypted != self.key.is_some() {
            return Err(BackupError::ManifestCorrupt {
                id: id.to_owned(),
                reason: "encryption flag does not match how the manifest is stored".to_owned(),
            });
        }
        Ok(m)
    }

    /// Restores backup `id` into a new file `dst` (which must not exist): every chunk is
    /// verified (hash, and AEAD tag when encrypted), holes stay sparse, the whole-image hash is
    /// checked, and only then is `<dst>.tmp` fsynced and renamed to `dst`. On any error nothing
    /// is left at `dst` or `<dst>.tmp`.
    pub fn restore(
        &self,
        id: &str,
        dst: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RestoreReport, BackupError> {
        let m = self.manifest(id)?;
        if dst.symlink_metadata().is_ok() {
            return Err(BackupError::DestinationExists(dst.to_path_buf()));
        }
        let mut tmp_name = dst.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut guard = RemoveOnDrop(Some(tmp.clone()));
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(format!("create {}", tmp.display())))?;
        f.set_len(m.size)
            .map_err(io_err(format!("size {}", tmp.display())))?;
        let mut image = Sha256::new();
        let zeros = vec![0u8; m.chunk_size as usize];
        let mut report = RestoreReport {
            manifest: m.clone(),
            fetched_chunks: 0,
            fetched_bytes: 0,
        };
        progress(Progress {
            bytes_done: 0,
            bytes_total: m.size,
        });
        for (index, c) in m.chunks.iter().enumerate() {
            let off = index as u64 * m.chunk_size;
            let len = m.chunk_len(index) as usize;
            match c {
                None => image.update(&zeros[..len]),
                Some(h) => {
                    let key = self.chunk_key_hex(h);
                    let corrupt = |reason: String| BackupError::ChunkCorrupt {
                        id: id.to_owned(),
                        index,
                        key: key.clone(),
                        reason,
                    };
                    let raw = self
                        .target
                        .get(&key)?
                        .ok_or_else(|| BackupError::ChunkMissing {
                            id: id.to_owned(),
                            index,
                            key: key.clone(),
                        })?;
                    report.fetched_chunks += 1;
                    report.fetched_bytes += raw.len() as u64;
                    let data = match &self.key {
                        Some(k) => k.open(&key, &raw).map_err(corrupt)?,
                        None => raw,
                    };
                    if data.len() != len {
                        return Err(corrupt(format!(
                            "{} bytes where {len} were expected",
                            data.len()
                        )));
                    }
                    let actual = hex::encode(Sha256::digest(&data));
                    if &actual != h {
                        return Err(corrupt(format!(
                            "content hash {actual} does not match the manifest's {h}"
                        )));
                    }
                    image.update(&data);
                    f.write_all_at(&data, off)
                        .map_err(io_err(format!("write {} at offset {off}", tmp.display())))?;
                }
            }
            progress(Progress {
                bytes_done: off + len as u64,
                bytes_total: m.size,
            });
        }
        let actual = hex::encode(image.finalize());
        if actual != m.image_sha256 {
            return Err(BackupError::ImageCorrupt {
                id: id.to_owned(),
                expected: m.image_sha256.clone(),
                actual,
            });
        }
        f.sync_all()
            .map_err(io_err(format!("fsync {}", tmp.display())))?;
        drop(f);
        // Refuse to replace something that appeared meanwhile (rename would clobber it).
        if dst.symlink_metadata().is_ok() {
            return Err(BackupError::DestinationExists(dst.to_path_buf()));
        }
        std::fs::rename(&tmp, dst).map_err(io_err(format!(
            "rename {} to {}",
            tmp.display(),
            dst.display()
        )))?;
        guard.0 = None;
        let parent = dst
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fsync_dir(parent).map_err(io_err(format!("fsync {}", parent.display())))?;
        Ok(report)
    }

    /// Ids of all backups (manifests present), sorted.
    pub fn list_ids(&self) -> Result<Vec<String>, BackupError> {
        Ok(self
            .target
            .list(MANIFEST_PREFIX)?
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix(MANIFEST_PREFIX)
                    .and_then(|r| r.strip_suffix(".json"))
                    .filter(|id| !id.contains('/') && manifest::validate_id(id).is_ok())
                    .map(str::to_owned)
            })
            .collect())
    }

    /// All backups' manifests, sorted by id. A manifest that cannot be read or verified is an
    /// error naming it.
    pub fn list(&self) -> Result<Vec<Manifest>, BackupError> {
        self.list_ids()?
            .iter()
            .map(|id| self.manifest(id))
            .collect()
    }

    /// Deletes a backup (its manifest; chunks are left to [`Repository::gc`]).
    pub fn delete(&self, id: &str) -> Result<(), BackupError> {
        manifest::validate_id(id)?;
        let key = manifest::manifest_key(id);
        if !self.target.exists(&key)? {
            return Err(BackupError::NotFound(id.to_owned()));
        }
        self.target.delete(&key)?;
        Ok(())
    }

    /// Deletes chunks referenced by no manifest. Every manifest must be readable (with this
    /// repository's key), or nothing is deleted. Do not run it while a backup is in progress
    /// (it would delete the chunks that backup has uploaded so far; the backup then fails with
    /// [`BackupError::ChunkVanished`] and can be re-run).
    pub fn gc(&self) -> Result<GcReport, BackupError> {
        let manifests = self.list()?;
        let mut live: BTreeSet<String> = BTreeSet::new();
        for m in &manifests {
            for h in m.chunks.iter().flatten() {
                live.insert(self.chunk_key_hex(h));
            }
        }
        let mut report = GcReport {
            manifests: manifests.len(),
            ..GcReport::default()
        };
        for key in self.target.list(CHUNK_PREFIX)? {
            if live.contains(&key) {
                report.chunks_kept += 1;
            } else {
                self.target.delete(&key)?;
                report.chunks_deleted += 1;
            }
        }
        tracing::info!(?report, "backup gc done");
        Ok(report)
    }
}

fn empty_manifest() -> Manifest {
    Manifest {
        format: FORMAT,
        id: String::new(),
        created_at: String::new(),
        source: Source {
            volume: String::new(),
            snapshot: String::new(),
        },
        size: 0,
        chunk_size: 0,
        encrypted: false,
        image_sha256: String::new(),
        chunks: Vec::new(),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Whether every byte is zero (4 KiB blocks OR-folded, which vectorises; stops at the first
/// non-zero block).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::LocalDir;

    const CS: u64 = 64 * 1024;

    fn repo(dir: &Path, key: Option<EncryptionKey>) -> Repository {
        Repository::new(Box::new(LocalDir::open(&dir.join("store")).unwrap()), key)
    }

    /// 10 chunks + 100 bytes: chunks 0 and 4 data (identical), 2 partly data, the tail data,
    /// everything else holes.
    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("img");
        let f = File::create(&p).unwrap();
        let size = 10 * CS + 100;
        f.set_len(size).unwrap();
        let block: Vec<u8> = (0..CS).map(|i| (i % 251) as u8 + 1).collect();
        f.write_all_at(&block, 0).unwrap();
        f.write_all_at(&block, 4 * CS).unwrap();
        f.write_all_at(b"partial", 2 * CS + 17).unwrap();
        f.write_all_at(b"tail", 10 * CS + 50).unwrap();
        p
    }

    fn opts(id: &str) -> BackupOptions {
        BackupOptions {
            chunk_size: CS,
            ..BackupOptions::new(id, "vol", "snap")
        }
    }

    #[test]
    fn chunks_holes_dedup_and_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let r = repo(d.path(), None);
        let src = image(d.path());
        let mut seen = Vec::new();
        let rep = r.backup(&src, &opts("b1"), &mut |p| seen.push(p)).unwrap();
        assert_eq!(rep.manifest.chunks.len(), 11);
        assert_eq!(rep.data_chunks, 4);
        assert_eq!(rep.hole_chunks, 7);
        assert_eq!(rep.uploaded_chunks, 3, "chunk 4 repeats chunk 0");
        assert_eq!(rep.skipped_chunks, 1);
        assert_eq!(rep.manifest.chunks[0], rep.manifest.chunks[4]);
        assert!(rep.manifest.chunks[1].is_none());
        assert_eq!(seen.last().unwrap().bytes_done, 10 * CS + 100);
        assert_eq!(r.target().list("chunks/").unwrap().len(), 3);
        // Plaintext objects are named by their hash.
        let h0 = rep.manifest.chunks[0].clone().unwrap();
        assert!(r.target().exists(&format!("chunks/{h0}")).unwrap());

        let dst = d.path().join("restored");
        r.restore("b1", &dst, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        // Holes stay sparse.
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&dst).unwrap();
        assert!(md.blocks() * 512 < md.len() / 2, "{} blocks", md.blocks());

        assert!(matches!(
            r.backup(&src, &opts("b1"), &mut |_| {}),
            Err(BackupError::AlreadyExists(_))
        ));
        assert!(matches!(
            r.restore("b1", &dst, &mut |_| {}),
            Err(BackupError::DestinationExists(_))
        ));
        assert_eq!(r.list().unwrap().len(), 1);
        r.delete("b1").unwrap();
        assert!(matches!(r.delete("b1"), Err(BackupError::NotFound(_))));
        let gc = r.gc().unwrap();
        assert_eq!(gc.chunks_deleted, 3);
    }

    #[test]
    fn empty_image() {
        let d = tempfile::tempdir().unwrap();
        let r = repo(d.path(), None);
        let src = d.path().join("empty");
        File::create(&src).unwrap();
        let rep = r.backup(&src, &opts("e"), &mut |_| {}).unwrap();
        assert!(rep.manifest.chunks.is_empty());
        let dst = d.path().join("out");
        r.restore("e", &dst, &mut |_| {}).unwrap();
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 0);
    }

    #[test]
    fn encrypted_round_trip_and_key_mismatches() {
        let d = tempfile::tempdir().unwrap();
        let key = EncryptionKey::from_bytes(&[3u8; 32]);
        let r = repo(d.path(), Some(key));
        let src = image(d.path());
        let rep = r.backup(&src, &opts("enc"), &mut |_| {}).unwrap();
        let keys = r.target().list("chunks/").unwrap();
        for h in rep.manifest.chunks.iter().flatten() {
            assert!(!keys.contains(&format!("chunks/{h}")));
        }
        let raw = r.target().get("backups/enc.json").unwrap().unwrap();
        assert!(crypto::is_encrypted(&raw));
        assert!(!raw.windows(5).any(|w| w == b"chunk"));
        let dst = d.path().join("restored");
        r.restore("enc", &dst, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());

        let nokey = repo(d.path(), None);
        assert!(matches!(
            nokey.restore("enc", &d.path().join("x"), &mut |_| {}),
            Err(BackupError::EncryptedNoKey { .. })
        ));
        let other = repo(d.path(), Some(EncryptionKey::from_bytes(&[4u8; 32])));
        assert!(matches!(
            other.manifest("enc"),
            Err(BackupError::ManifestCorrupt { .. })
        ));
        // gc with the wrong key refuses (cannot read a manifest) and deletes nothing.
        assert!(other.gc().is_err());
        assert_eq!(r.target().list("chunks/").unwrap().len(), keys.len());
    }

    #[test]
    fn corrupt_chunk_and_manifest_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = repo(d.path(), None);
        let src = image(d.path());
        let rep = r.backup(&src, &opts("c"), &mut |_| {}).unwrap();
        let h2 = rep.manifest.chunks[2].clone().unwrap();
        let key = format!("chunks/{h2}");
        let mut obj = r.target().get(&key).unwrap().unwrap();
        obj[100] ^= 0x40;
        r.target().put(&key, &obj).unwrap();
        let dst = d.path().join("restored");
        let e = r.restore("c", &dst, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, BackupError::ChunkCorrupt { index: 2, key: k, .. } if *k == key),
            "{e}"
        );
        assert!(e.to_string().contains("chunk 2"));
        assert!(!dst.exists());
        assert!(!d.path().join("restored.tmp").exists());

        r.target().delete(&key).unwrap();
        let e = r.restore("c", &dst, &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, BackupError::ChunkMissing { index: 2, .. }),
            "{e}"
        );

        r.target().put("backups/c.json", b"{garbage").unwrap();
        assert!(matches!(
            r.restore("c", &dst, &mut |_| {}),
            Err(BackupError::ManifestCorrupt { .. })
        ));
        assert!(r.list().is_err());
        assert!(!dst.exists());
    }

    #[test]
    fn interrupted_backup_resumes() {
        let d = tempfile::tempdir().unwrap();
        let r = repo(d.path(), None);
        let src = image(d.path());
        let o = BackupOptions {
            max_chunks: Some(2),
            ..opts("i")
        };
        assert!(matches!(
            r.backup(&src, &o, &mut |_| {}),
            Err(BackupError::Interrupted { uploaded: 2, .. })
        ));
        assert!(
            r.list_ids().unwrap().is_empty(),
            "no manifest before the end"
        );
        assert_eq!(r.target().list("chunks/").unwrap().len(), 2);
        let rep = r.backup(&src, &opts("i"), &mut |_| {}).unwrap();
        assert_eq!(rep.uploaded_chunks, 1);
        assert_eq!(rep.skipped_chunks, 3);
        let dst = d.path().join("restored");
        r.restore("i", &dst, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 10000]));
        let mut v = vec![0u8; 10000];
        v[9999] = 1;
        assert!(!is_zero(&v));
    }
}
