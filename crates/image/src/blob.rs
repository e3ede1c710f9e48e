//! Blob bytes without holding them: where a blob is (a byte range of a file — an archive entry
//! or a layout's blob file — or bytes already in memory), readers over it, and sha256 checked
//! as the bytes stream past; a stream (a registry download) saved to a file while it is hashed,
//! kept only when it matches its digest. Only small metadata blobs (indexes, manifests, configs)
//! are ever read whole, and only up to [`MAX_METADATA`].

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ImageError;

/// The most an index, manifest or config may weigh (real ones are a few KiB).
pub const MAX_METADATA: u64 = 4 << 20;

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// The hex of a `sha256:<64 hex digits>` digest (safe as a file name), or an error naming it.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::Invalid(format!("bad digest {digest:?}")))
}

/// The refusal of a metadata blob (`what`) larger than [`MAX_METADATA`]; `len` when known.
pub(crate) fn metadata_too_big(what: &str, len: Option<u64>) -> ImageError {
    let is = match len {
        Some(n) => format!("is {n} bytes"),
        None => format!("is larger than {} MiB", MAX_METADATA >> 20),
    };
    ImageError::Invalid(format!(
        "{what} {is}; image metadata (index, manifest, config) is limited to {} MiB",
        MAX_METADATA >> 20
    ))
}

/// Refuses digests of other algorithms than sha256.
fn algorithm(digest: &str) -> Result<(), ImageError> {
    if digest.starts_with("sha256:") {
        Ok(())
    } else {
        Err(ImageError::Invalid(format!(
            "unsupported digest algorithm in {digest:?} (only sha256)"
        )))
    }
}

fn compare(expected: &str, actual: String) -> Result<(), ImageError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ImageError::Digest {
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// Checks `data` against `digest` (`sha256:<hex>`).
pub fn verify(digest: &str, data: &[u8]) -> Result<(), ImageError> {
    algorithm(digest)?;
    compare(digest, sha256(data))
}

/// Where a blob's bytes are.
#[derive(Clone, PartialEq, Eq)]
pub enum BlobSource {
    /// `len` bytes at `offset` of the file at `path` (an archive entry, or a whole blob file of
    /// a layout directory). Opened afresh for each read.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// Bytes already in memory (built by a test).
    Memory(Vec<u8>),
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobSource::File { path, offset, len } => f
                .debug_struct("File")
                .field("path", path)
                .field("offset", offset)
                .field("len", len)
                .finish(),
            BlobSource::Memory(b) => write!(f, "Memory({} bytes)", b.len()),
        }
    }
}

impl BlobSource {
    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            BlobSource::File { len, .. } => *len,
            BlobSource::Memory(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over the blob's bytes (unchecked).
    pub fn open(&self) -> Result<Box<dyn Read + '_>, ImageError> {
        match self {
            BlobSource::File { path, offset, len } => {
                let what = || format!("open {}", path.display());
                let mut f = std::fs::File::open(path).map_err(ImageError::io(what()))?;
                f.seek(SeekFrom::Start(*offset))
                    .map_err(ImageError::io(what()))?;
                Ok(Box::new(
                    std::io::BufReader::with_capacity(1 << 16, f).take(*len),
                ))
            }
            BlobSource::Memory(b) => Ok(Box::new(&b[..])),
        }
    }

    /// A reader over the blob's bytes that checks them against `digest` (see [`Verifying`]).
    pub fn open_verified(&self, digest: &str) -> Result<Verifying<Box<dyn Read + '_>>, ImageError> {
        Verifying::new(digest, self.open()?)
    }

    /// The whole blob, refused (naming it `what`) when larger than [`MAX_METADATA`]: for
    /// indexes, manifests and configs only.
    pub fn read_small(&self, what: &str) -> Result<Vec<u8>, ImageError> {
        let len = self.len();
        if len > MAX_METADATA {
            return Err(metadata_too_big(what, Some(len)));
        }
        let mut b = Vec::with_capacity(len as usize);
        self.open()?
            .read_to_end(&mut b)
            .map_err(ImageError::io(format!("read {what}")))?;
        Ok(b)
    }

    /// Streams the blob through sha256 and checks it against `digest`.
    pub fn verify(&self, digest: &str) -> Result<(), ImageError> {
        self.open_verified(digest)?.finish()
    }
}

/// A reader that hashes what it reads; [`Verifying::finish`] reads whatever is left and then
/// compares the digest. Bytes handed out before `finish` are not yet known to be good: callers
/// write them only to places that are thrown away when `finish` fails.
pub struct Verifying<R> {
    inner: R,
    hash: Sha256,
    digest: String,
}

impl<R: Read> Verifying<R> {
    pub fn new(digest: &str, inner: R) -> Result<Self, ImageError> {
        algorithm(digest)?;
        Ok(Verifying {
            inner,
            hash: Sha256::new(),
            digest: digest.to_owned(),
        })
    }

    /// Reads to the end and checks the digest of everything read.
    pub fn finish(mut self) -> Result<(), ImageError> {
        std::io::copy(&mut self, &mut std::io::sink())
            .map_err(ImageError::io(format!("read blob {}", self.digest)))?;
        compare(
            &self.digest,
            format!("sha256:{}", hex::encode(self.hash.finalize())),
        )
    }
}

impl<R: Read> Read for Verifying<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Copies at most `limit` bytes of `from` into the file `dest` while hashing them, and keeps the
/// file only when they are the blob `digest`: they are written to `dest` + `.part`, renamed to
/// `dest` once the digest matches, and the partial file is removed on any error (a mismatch, a
/// read or write failure), so a file at `dest` is always the whole, verified blob. `what` names
/// the source in errors. Returns the number of bytes.
pub fn save_verified(
    from: impl Read,
    digest: &str,
    limit: u64,
    dest: &Path,
    what: &str,
) -> Result<u64, ImageError> {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let result = (|| {
        let mut v = Verifying::new(digest, from.take(limit))?;
        let f = std::fs::File::create(&part)
            .map_err(ImageError::io(format!("create {}", part.display())))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            let got = match v.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ImageError::io(format!(
                        "download blob {digest} from {what}"
                    ))(e));
                }
            };
            w.write_all(&buf[..got])
                .map_err(ImageError::io(format!("write {}", part.display())))?;
            n += got as u64;
        }
        w.flush()
            .map_err(ImageError::io(format!("write {}", part.display())))?;
        v.finish()?;
        std::fs::rename(&part, dest)
            .map_err(ImageError::io(format!("install {}", dest.display())))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ranges_memory_and_digests() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, b"xxhelloyy").unwrap();
        let range = BlobSource::File {
            path: p.clone(),
            offset: 2,
            len: 5,
        };
        assert_eq!(range.len(), 5);
        assert_eq!(
            format!("{:?}", BlobSource::Memory(vec![0; 3])),
            "Memory(3 bytes)"
        );
        assert_eq!(range.read_small("greeting").unwrap(), b"hello");
        let good = sha256(b"hello");
        range.verify(&good).unwrap();
        BlobSource::Memory(b"hello".to_vec()).verify(&good).unwrap();
        let e = range.verify(&sha256(b"hellx")).unwrap_err();
        assert!(matches!(e, ImageError::Digest { .. }), "{e}");
        assert!(
            e.to_string().contains(&good),
            "names what it hashed to: {e}"
        );
        let e = range.verify("md5:abc").unwrap_err();
        assert!(e.to_string().contains("only sha256"), "{e}");
        // Partly read, then finished: the rest is read and the whole is checked.
        let mut v = range.open_verified(&good).unwrap();
        let mut two = [0u8; 2];
        v.read_exact(&mut two).unwrap();
        v.finish().unwrap();
        // A file cut short is a mismatch, not a silent success.
        std::fs::write(&p, b"xxhel").unwrap();
        assert!(matches!(
            range.verify(&good),
            Err(ImageError::Digest { .. })
        ));
    }

    #[test]
    fn saved_only_when_verified() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("blob");
        let good = sha256(b"hello");
        assert_eq!(
            save_verified(&b"hello"[..], &good, 100, &dest, "here").unwrap(),
            5
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        let listing = || {
            let mut l: Vec<String> = std::fs::read_dir(t.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            l.sort();
            l
        };
        // Corrupt, cut short by the limit, or failing part-way: refused, nothing left behind.
        let other = t.path().join("other");
        let e = save_verified(&b"hellx"[..], &good, 100, &other, "here").unwrap_err();
        assert!(matches!(e, ImageError::Digest { .. }), "{e}");
        let e = save_verified(&b"hello"[..], &good, 4, &other, "here").unwrap_err();
        assert!(matches!(e, ImageError::Digest { .. }), "{e}");
        struct Breaks(bool);
        impl Read for Breaks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if std::mem::replace(&mut self.0, true) {
                    return Err(std::io::Error::other("connection reset"));
                }
                buf[..3].copy_from_slice(b"hel");
                Ok(3)
            }
        }
        let e = save_verified(Breaks(false), &good, 100, &other, "the registry").unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "download blob {good} from the registry: connection reset"
            )),
            "{e}"
        );
        assert_eq!(listing(), ["blob"]);
        assert!(sha256_hex("sha256:../../etc/passwd").is_err());
        assert_eq!(sha256_hex(&good).unwrap(), &good[7..]);
    }

    #[test]
    fn metadata_is_capped() {
        let big = BlobSource::File {
            path: "/nonexistent".into(),
            offset: 0,
            len: MAX_METADATA + 1,
        };
        let e = big.read_small("the image config").unwrap_err().to_string();
        assert!(
            e.contains("the image config is 4194305 bytes") && e.contains("limited to 4 MiB"),
            "{e}"
        );
    }
}
