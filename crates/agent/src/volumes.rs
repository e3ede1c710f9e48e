//! Volume disks and their snapshots on this host: `<data>/volumes/<name>.ext4` (ext4, sparse,
//! made once and atomically at the declared size), point-in-time snapshots
//! `<data>/volume-snapshots/<name>/<id>.ext4` (copy-on-write clones, reflink where the filesystem
//! supports it; the caller quiesces a running guest first), restores of a snapshot into a new
//! volume. Names and ids are checked so no path escapes these directories.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::BackendError;

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    pub volume: String,
    pub size_bytes: u64,
    /// How the copy was made: `reflink` or `copy`.
    pub how: String,
}

/// Error kinds callers map to statuses (anything else is an I/O failure, kind `volume`).
pub const INVALID: &str = "volume_invalid";
pub const NOT_FOUND: &str = "volume_not_found";
pub const CONFLICT: &str = "volume_conflict";

fn err(message: impl Into<String>) -> BackendError {
    BackendError::new("volume", message)
}

/// Volume names and snapshot ids: letters, digits, `-`, `_`; not starting with `-`.
pub fn check_name(what: &str, name: &str) -> Result<(), BackendError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(BackendError::new(
            INVALID,
            format!("invalid {what} {name:?}: use letters, digits, '-' and '_'"),
        ))
    }
}

/// The volume disks and snapshots under an agent's data directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    disks: PathBuf,
    snapshots: PathBuf,
}

impl VolumeStore {
    pub fn new(data_dir: &Path) -> VolumeStore {
        VolumeStore {
            disks: data_dir.join("volumes"),
            snapshots: data_dir.join("volume-snapshots"),
        }
    }

    pub fn disks_dir(&self) -> &Path {
        &self.disks
    }

    pub fn disk_path(&self, name: &str) -> Result<PathBuf, BackendError> {
        check_name("volume name", name)?;
        Ok(self.disks.join(format!("{name}.ext4")))
    }

    pub fn snapshot_path(&self, volume: &str, id: &str) -> Result<PathBuf, BackendError> {
        check_name("volume name", volume)?;
        check_name("snapshot id", id)?;
        Ok(self.snapshots.join(volume).join(format!("{id}.ext4")))
    }

    /// The disk of `name`, formatted ext4 of `size` bytes on first use (built aside, then
    /// renamed into place, so a crash never leaves a half-made volume).
    pub fn ensure_disk(&self, name: &str, size: u64) -> Result<PathBuf, BackendError> {
        let path = self.disk_path(name)?;
        if path.exists() {
            return Ok(path);
        }
        let io = |what: &str, e: std::io::Error| err(format!("{what}: {e}"));
        std::fs::create_dir_all(&self.disks).map_err(|e| io("create the volumes directory", e))?;
        let tmp = self
            .disks
            .join(format!(".{name}.ext4.{}", std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(|e| io("create the volume disk", e))?;
        f.set_len(size).map_err(|e| io("size the volume disk", e))?;
        drop(f);
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "scalebox-vol"])
            .arg(&tmp)
            .output()
            .map_err(|e| io("run mkfs.ext4", e))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, &path).map_err(|e| io("put the volume disk in place", e))?;
        tracing::info!(volume = name, path = %path.display(), "volume created");
        Ok(path)
    }

    /// Copies the disk of `volume` to snapshot `id` (the caller has quiesced its guest).
    pub fn take_snapshot(&self, volume: &str, id: &str) -> Result<SnapshotInfo, BackendError> {
        let src = self.disk_path(volume)?;
        if !src.is_file() {
            return Err(BackendError::new(
                NOT_FOUND,
                format!(
                    "volume {volume:?} has no disk on this host yet (it is made when an instance first mounts it)"
                ),
            ));
        }
        let dst = self.snapshot_path(volume, id)?;
        if dst.exists() {
            return Err(BackendError::new(
                CONFLICT,
                format!("snapshot {id:?} already exists"),
            ));
        }
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(|e| err(format!("create {}: {e}", d.display())))?;
        }
        let kind = scalebox_image::clone_file(&src, &dst)
            .map_err(|e| err(format!("copy the volume disk: {e}")))?;
        Ok(self.info(volume, id, &dst, kind_name(kind)))
    }

    fn info(&self, volume: &str, id: &str, path: &Path, how: &str) -> SnapshotInfo {
        SnapshotInfo {
            id: id.to_owned(),
            volume: volume.to_owned(),
            size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            how: how.to_owned(),
        }
    }

    /// The snapshots of `volume` on this host.
    pub fn list_snapshots(&self, volume: &str) -> Result<Vec<SnapshotInfo>, BackendError> {
        check_name("volume name", volume)?;
        let mut out: Vec<SnapshotInfo> = std::fs::read_dir(self.snapshots.join(volume))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let id = n.strip_suffix(".ext4")?;
                (!id.starts_with('.')).then(|| self.info(volume, id, &e.path(), ""))
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn delete_snapshot(&self, volume: &str, id: &str) -> Result<bool, BackendError> {
        let p = self.snapshot_path(volume, id)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(err(format!("delete {}: {e}", p.display()))),
        }
    }

    /// Makes a new volume `new_volume` from snapshot `id` of `volume` (refused when a disk by
    /// that name exists: restores never overwrite).
    pub fn restore_snapshot(
        &self,
        volume: &str,
        id: &str,
        new_volume: &str,
    ) -> Result<PathBuf, BackendError> {
        let src = self.snapshot_path(volume, id)?;
        if !src.is_file() {
            return Err(BackendError::new(
                NOT_FOUND,
                format!("snapshot {id:?} of volume {volume:?} not found on this host"),
            ));
        }
        let dst = self.disk_path(new_volume)?;
        if dst.exists() {
            return Err(BackendError::new(
                CONFLICT,
                format!(
                    "volume {new_volume:?} already has a disk on this host; restores make new volumes"
                ),
            ));
        }
        std::fs::create_dir_all(&self.disks)
            .map_err(|e| err(format!("create the volumes directory: {e}")))?;
        scalebox_image::clone_file(&src, &dst)
            .map_err(|e| err(format!("copy the snapshot: {e}")))?;
        Ok(dst)
    }
}

fn kind_name(k: scalebox_image::cache::CloneKind) -> &'static str {
    match k {
        scalebox_image::cache::CloneKind::Reflink => "reflink",
        scalebox_image::cache::CloneKind::SparseCopy => "copy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_restore_round_trip_byte_exact() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::new(d.path());
        let disk = s.ensure_disk("org-data", 64 << 20).unwrap();
        assert_eq!(s.ensure_disk("org-data", 1).unwrap(), disk, "made once");
        let probe = std::process::Command::new("dumpe2fs")
            .arg("-h")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&probe.stdout).contains("scalebox-vol"));
        // Write recognisable data into the disk (as a workload would through the guest).
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(std::io::SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        drop(f);
        let snap = s.take_snapshot("org-data", "s1").unwrap();
        assert_eq!(snap.size_bytes, 64 << 20);
        assert!(s.take_snapshot("org-data", "s1").is_err(), "ids are unique");
        // The volume changes after the snapshot; the snapshot does not.
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(std::io::SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(&[9u8; 8192]).unwrap();
        drop(f);
        let restored = s.restore_snapshot("org-data", "s1", "org-copy").unwrap();
        let snap_bytes = std::fs::read(s.snapshot_path("org-data", "s1").unwrap()).unwrap();
        assert_eq!(std::fs::read(&restored).unwrap(), snap_bytes, "byte-exact");
        assert_eq!(snap_bytes[(40 << 20) as usize], 7);
        assert!(
            s.restore_snapshot("org-data", "s1", "org-copy").is_err(),
            "never overwrites"
        );
        assert_eq!(s.list_snapshots("org-data").unwrap().len(), 1);
        assert!(s.delete_snapshot("org-data", "s1").unwrap());
        assert!(!s.delete_snapshot("org-data", "s1").unwrap());
        for bad in ["../x", "", "-a", "a/b"] {
            assert!(s.disk_path(bad).is_err(), "{bad:?}");
            assert!(s.snapshot_path("v", bad).is_err(), "{bad:?}");
        }
        assert!(
            s.take_snapshot("nodisk", "s")
                .unwrap_err()
                .message
                .contains("no disk")
        );
    }
}
