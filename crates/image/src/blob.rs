//! Blob bytes without holding them: where a blob is (a byte range of a file — an archive entry
//! or a layout's blob file — or bytes already in memory), readers over it, and sha256 checked
//! as the bytes stream past. Only small metadata blobs (indexes, manifests, configs) are ever
//! read whole, and only up to [`MAX_METADATA`].

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::ImageError;

/// The most an index, manifest or config may weigh (real ones are a few KiB).
pub const MAX_METADATA: u64 = 4 << 20;

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
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
    /// Bytes already in memory (fetched from a registry, or built by a test).
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
            return Err(ImageError::Invalid(format!(
                "{what} is {len} bytes; image metadata (index, manifest, config) is limited to {} MiB",
                MAX_METADATA >> 20
            )));
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
