//! Resumable image uploads: what a `PUT /v1/orgs/{org}/images/{digest}` received so far is kept
//! per (org, digest), so an interrupted upload continues from there instead of from byte 0.
//!
//! - A partial upload is one file, `<data_dir>/images/.partial/<org>/<hex>-<total>.part` (mode
//!   0600; the directories 0700): the bytes received, in order, of an archive of `<total>` bytes.
//!   Its length is the offset the next piece must start at. A partial untouched for a day
//!   ([`EXPIRY`]) is deleted.
//! - A request names its piece with `Content-Range: bytes START-END/TOTAL` (END inclusive), or
//!   sends the whole archive without one (`START` 0, `TOTAL` its `Content-Length`). A piece
//!   starting at 0 discards any partial; any other start must be exactly the partial's length,
//!   for the same total ([`decide`]), else the answer is 409 with the server's offset.
//! - One request at a time writes a given (org, digest) ([`lock`]); the bytes are written by a
//!   task of their own, so a request dropped with its connection still leaves a consistent file.
//!
//! The parsing and the offset decision are pure; `images.rs` drives the files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::OwnedMutexGuard;

/// Partials untouched this long are deleted.
pub const EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// How long a request waits for another upload of the same image to finish writing.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The piece of the archive a request carries: bytes `start..end` of `total` (unknown for a
/// whole upload sent without a length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub start: u64,
    /// Exclusive; `None` when neither header gives it.
    pub end: Option<u64>,
    pub total: Option<u64>,
}

/// The piece a request carries, from its `Content-Range` and `Content-Length` headers.
pub fn piece(content_range: Option<&str>, content_length: Option<u64>) -> Result<Piece, String> {
    let Some(h) = content_range else {
        return Ok(Piece {
            start: 0,
            end: content_length,
            total: content_length,
        });
    };
    let bad = || {
        format!(
            "Content-Range {:?} is not `bytes START-END/TOTAL` (END inclusive, TOTAL the whole \
             archive's size)",
            h.chars().take(80).collect::<String>()
        )
    };
    let rest = h.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = rest.split_once('/').ok_or_else(bad)?;
    let (s, e) = range.split_once('-').ok_or_else(bad)?;
    let num = |x: &str| x.trim().parse::<u64>().map_err(|_| bad());
    let (start, last, total) = (num(s)?, num(e)?, num(total)?);
    if start > last || last >= total {
        return Err(format!(
            "Content-Range bytes {start}-{last}/{total} is out of order or past the end"
        ));
    }
    let end = last + 1;
    if let Some(n) = content_length
        && n != end - start
    {
        return Err(format!(
            "Content-Length {n} does not match Content-Range bytes {start}-{last} ({} bytes)",
            end - start
        ));
    }
    Ok(Piece {
        start,
        end: Some(end),
        total: Some(total),
    })
}

/// A partial upload on disk: its bytes so far, of `total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partial {
    pub path: PathBuf,
    pub len: u64,
    pub total: u64,
}

/// How a piece is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// From byte 0 into a new file (any partial is discarded).
    Fresh,
    /// Appended to the partial.
    Append,
}

/// Whether a piece starting at `start` of an archive of `total` bytes can be written, given the
/// partial (its length and total); `Err(offset)`: it cannot, the client should send from
/// `offset` (0 when the partial is for an archive of another size, or there is none).
pub fn decide(partial: Option<(u64, u64)>, start: u64, total: Option<u64>) -> Result<Write, u64> {
    if start == 0 {
        return Ok(Write::Fresh);
    }
    match partial {
        Some((len, t)) if Some(t) == total && len == start => Ok(Write::Append),
        Some((len, t)) if Some(t) == total => Err(len),
        _ => Err(0),
    }
}

/// `<data_dir>/images/.partial`.
pub fn root(data_dir: &Path) -> PathBuf {
    data_dir.join("images").join(".partial")
}

/// The file of a partial upload of `hex` of `total` bytes in `dir`.
pub fn path(dir: &Path, hex: &str, total: u64) -> PathBuf {
    dir.join(format!("{hex}-{total}.part"))
}

/// `<hex>-<total>.part` → total.
fn total_of(name: &str, hex: &str) -> Option<u64> {
    name.strip_prefix(hex)?
        .strip_prefix('-')?
        .strip_suffix(".part")?
        .parse()
        .ok()
}

/// The partial upload of `hex` in `dir`, if there is one that has not expired. With `tidy` (the
/// writer, holding the [`lock`]) expired ones and any other file of `hex` are deleted.
pub fn find(
    dir: &Path,
    hex: &str,
    now: SystemTime,
    tidy: bool,
) -> std::io::Result<Option<Partial>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut found = None;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(hex) {
            continue;
        }
        let meta = e.metadata()?;
        match total_of(&name, hex) {
            Some(total) if found.is_none() && !expired(&meta, now) => {
                found = Some(Partial {
                    path: e.path(),
                    len: meta.len(),
                    total,
                })
            }
            _ if tidy => {
                let _ = std::fs::remove_file(e.path());
            }
            _ => {}
        }
    }
    Ok(found)
}

fn expired(meta: &std::fs::Metadata, now: SystemTime) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age > EXPIRY)
}

/// Deletes every partial upload under `root` untouched for [`EXPIRY`]; how many.
pub fn sweep(root: &Path, now: SystemTime) -> usize {
    let mut n = 0;
    for org in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(org.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.metadata().is_ok_and(|m| m.is_file() && expired(&m, now))
                && std::fs::remove_file(f.path()).is_ok()
            {
                n += 1;
            }
        }
    }
    n
}

/// One writer per partial upload (keyed by its directory and digest).
static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Default::default);

/// The right to write the partial upload `key`; the lock's entry goes when nobody wants it.
pub struct Lock {
    key: PathBuf,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and our guard's: nobody else waits for it.
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 2)
        {
            locks.remove(&self.key);
        }
    }
}

/// Waits up to `wait` for the right to write the partial upload `key`.
pub async fn lock(key: PathBuf, wait: Duration) -> Option<Lock> {
    let m = LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key.clone())
        .or_default()
        .clone();
    let guard = tokio::time::timeout(wait, m.lock_owned()).await.ok()?;
    Some(Lock { key, _guard: guard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_from_headers() {
        assert_eq!(
            piece(None, Some(10)).unwrap(),
            Piece {
                start: 0,
                end: Some(10),
                total: Some(10)
            }
        );
        assert_eq!(
            piece(None, None).unwrap(),
            Piece {
                start: 0,
                end: None,
                total: None
            }
        );
        assert_eq!(
            piece(Some("bytes 5-9/10"), Some(5)).unwrap(),
            Piece {
                start: 5,
                end: Some(10),
                total: Some(10)
            }
        );
        assert_eq!(
            piece(Some("bytes 0-3/10"), None).unwrap(),
            Piece {
                start: 0,
                end: Some(4),
                total: Some(10)
            }
        );
        for bad in [
            "bytes 5-9/*",
            "bytes */10",
            "5-9/10",
            "bytes 9-5/10",
            "bytes 5-10/10",
            "bytes a-b/c",
        ] {
            assert!(piece(Some(bad), None).is_err(), "{bad}");
        }
        let e = piece(Some("bytes 5-9/10"), Some(4)).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn offsets() {
        // From 0: always, whatever is there.
        assert_eq!(decide(None, 0, Some(10)), Ok(Write::Fresh));
        assert_eq!(decide(Some((4, 10)), 0, Some(10)), Ok(Write::Fresh));
        assert_eq!(decide(Some((4, 10)), 0, None), Ok(Write::Fresh));
        // Exactly at the partial's end, same total.
        assert_eq!(decide(Some((4, 10)), 4, Some(10)), Ok(Write::Append));
        assert_eq!(decide(Some((4, 10)), 5, Some(10)), Err(4));
        assert_eq!(decide(Some((4, 10)), 3, Some(10)), Err(4));
        // Another archive (total), or nothing to resume: start over.
        assert_eq!(decide(Some((4, 10)), 4, Some(11)), Err(0));
        assert_eq!(decide(None, 4, Some(10)), Err(0));
    }

    #[test]
    fn partial_files_found_expired_and_swept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("org");
        let hex = "ab".repeat(32);
        let now = SystemTime::now();
        assert_eq!(find(&dir, &hex, now, true).unwrap(), None);
        std::fs::create_dir_all(&dir).unwrap();
        let p = path(&dir, &hex, 10);
        std::fs::write(&p, b"1234").unwrap();
        std::fs::write(dir.join(format!("{hex}-junk")), b"x").unwrap();
        std::fs::write(dir.join("other-10.part"), b"x").unwrap();
        let junk = dir.join(format!("{hex}-junk"));
        assert!(find(&dir, &hex, now, false).unwrap().is_some());
        assert!(junk.exists(), "only the writer tidies");
        assert_eq!(
            find(&dir, &hex, now, true).unwrap(),
            Some(Partial {
                path: p.clone(),
                len: 4,
                total: 10
            })
        );
        assert!(!junk.exists(), "stray files go");
        assert!(dir.join("other-10.part").exists(), "other digests stay");
        let later = now + EXPIRY + Duration::from_secs(60);
        assert_eq!(sweep(d.path(), now), 0);
        assert_eq!(find(&dir, &hex, later, false).unwrap(), None);
        assert!(p.exists());
        assert_eq!(find(&dir, &hex, later, true).unwrap(), None);
        assert!(!p.exists(), "an expired partial is deleted");
        assert_eq!(sweep(d.path(), later), 1);
        assert!(!dir.join("other-10.part").exists());
    }

    #[tokio::test]
    async fn one_writer_at_a_time() {
        let key = PathBuf::from("/nonexistent/k");
        let a = lock(key.clone(), LOCK_WAIT).await.unwrap();
        assert!(lock(key.clone(), Duration::from_millis(50)).await.is_none());
        drop(a);
        assert!(!LOCKS.lock().unwrap().contains_key(&key), "entry removed");
        let b = lock(key.clone(), Duration::from_millis(50)).await;
        assert!(b.is_some());
    }
}
