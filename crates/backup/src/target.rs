//! Where backups are stored: the [`Target`] trait (a flat object store keyed by `/`-separated
//! names) and [`LocalDir`], a directory on this host for single-host installs. The S3 target
//! is in [`crate::s3`].

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::TargetError;

/// An object store. Keys are validated by [`validate_key`]; a `put` replaces an object whole
/// (readers see the old or the new object, never a part).
pub trait Target: Send + Sync {
    /// Stores `data` under `key`.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TargetError>;
    /// The object's bytes, or `None` if there is no such object.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TargetError>;
    /// Whether an object exists.
    fn exists(&self, key: &str) -> Result<bool, TargetError>;
    /// Every key starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError>;
    /// Removes an object; removing a missing object is not an error.
    fn delete(&self, key: &str) -> Result<(), TargetError>;
    /// A human description for messages (never includes credentials).
    fn describe(&self) -> String;
}

/// Checks an object key: 1-512 bytes of `A-Z a-z 0-9 - _ . /`, `/`-separated segments that are
/// not empty and do not start with `.` (which also rules out `..` and temporary files).
pub fn validate_key(key: &str) -> Result<(), TargetError> {
    let bad = |reason| {
        Err(TargetError::InvalidKey {
            key: key.chars().take(100).collect(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 512 {
        return bad("must be 1-512 bytes");
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return bad("only A-Z a-z 0-9 - _ . / are allowed");
    }
    if key.split('/').any(|s| s.is_empty() || s.starts_with('.')) {
        return bad("segments must be non-empty and not start with '.'");
    }
    Ok(())
}

/// Checks a list prefix: empty, or a valid key prefix (may end with `/`).
fn validate_prefix(prefix: &str) -> Result<(), TargetError> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.trim_end_matches('/'))
}

/// A directory as an object store: object `a/b` is the file `<dir>/a/b`, written to a temporary
/// file, fsynced, renamed into place and the directory fsynced.
#[derive(Debug, Clone)]
pub struct LocalDir {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalDir {
    /// Opens (creating if needed) the directory.
    pub fn open(dir: &Path) -> Result<LocalDir, TargetError> {
        fs::create_dir_all(dir).map_err(|source| TargetError::Io {
            op: "create directory",
            key: String::new(),
            target: dir.display().to_string(),
            source,
        })?;
        Ok(LocalDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, op: &'static str, key: &str) -> impl FnOnce(std::io::Error) -> TargetError {
        let key = key.to_owned();
        let target = self.describe();
        move |source| TargetError::Io {
            op,
            key,
            target,
            source,
        }
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        out: &mut Vec<String>,
    ) -> Result<(), TargetError> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("list", prefix)(e)),
        };
        for ent in rd {
            let ent = ent.map_err(self.io("list", prefix))?;
            let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue; // temporary files
            }
            let key = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let ft = ent.file_type().map_err(self.io("list", prefix))?;
            if ft.is_dir() {
                // Descend only where the prefix can still match.
                let k = format!("{key}/");
                if k.starts_with(prefix) || prefix.starts_with(&k) {
                    self.walk(&ent.path(), &key, prefix, out)?;
                }
            } else if ft.is_file() && key.starts_with(prefix) {
                out.push(key);
            }
        }
        Ok(())
    }
}

/// fsyncs a directory so a rename in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Target for LocalDir {
    fn put(&self, key: &str, data: &[u8]) -> Result<(), TargetError> {
        validate_key(key)?;
        let path = self.dir.join(key);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&parent).map_err(self.io("put", key))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = parent.join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fsync_dir(&parent)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            self.io("put", key)(e)
        })
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TargetError> {
        validate_key(key)?;
        match fs::read(self.dir.join(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("get", key)(e)),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, TargetError> {
        validate_key(key)?;
        match fs::metadata(self.dir.join(key)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("stat", key)(e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, TargetError> {
        validate_prefix(prefix)?;
        let mut out = Vec::new();
        self.walk(&self.dir, "", prefix, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), TargetError> {
        validate_key(key)?;
        match fs::remove_file(self.dir.join(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("delete", key)(e)),
        }
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("chunks/ab12").is_ok());
        assert!(validate_key("backups/x-1.json").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/./b",
            "a/.hidden",
            "sp ace",
            "a/",
            "ü",
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn local_dir_put_get_list_delete() {
        let tmp = tempfile::tempdir().unwrap();
        let t = LocalDir::open(&tmp.path().join("store")).unwrap();
        assert_eq!(t.get("chunks/a").unwrap(), None);
        assert!(!t.exists("chunks/a").unwrap());
        t.put("chunks/a", b"one").unwrap();
        t.put("chunks/b", b"two").unwrap();
        t.put("backups/x.json", b"{}").unwrap();
        t.put("chunks/a", b"uno").unwrap();
        assert_eq!(t.get("chunks/a").unwrap().unwrap(), b"uno");
        assert!(t.exists("chunks/b").unwrap());
        assert_eq!(t.list("chunks/").unwrap(), vec!["chunks/a", "chunks/b"]);
        assert_eq!(t.list("").unwrap().len(), 3);
        assert_eq!(t.list("backups/").unwrap(), vec!["backups/x.json"]);
        // A stray temporary file is not an object.
        fs::write(tmp.path().join("store/chunks/.c.tmp-1-1"), b"x").unwrap();
        assert_eq!(t.list("chunks/").unwrap().len(), 2);
        t.delete("chunks/a").unwrap();
        t.delete("chunks/a").unwrap();
        assert_eq!(t.list("chunks/").unwrap(), vec!["chunks/b"]);
        assert!(t.put("../escape", b"x").is_err());
    }
}
