//! The backup manifest (`backups/<id>.json`): what a backup is. It is written last, so a backup
//! without a manifest does not exist. Parsing is strict and every field is validated: a corrupt
//! or hostile manifest is an error, never a panic or a huge allocation.

use serde::{Deserialize, Serialize};

use crate::error::BackupError;

/// The manifest format version written by this crate.
pub const FORMAT: u32 = 1;
/// Chunk sizes accepted when reading (and writing) manifests.
pub const MIN_CHUNK_SIZE: u64 = 4096;
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

/// What was backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub volume: String,
    pub snapshot: String,
}

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub source: Source,
    /// Image size in bytes.
    pub size: u64,
    pub chunk_size: u64,
    /// Whether chunks (and this manifest) are encrypted.
    pub encrypted: bool,
    /// SHA-256 (hex) of the whole image.
    pub image_sha256: String,
    /// Per chunk: the SHA-256 (hex) of its plaintext, or `null` for an all-zero chunk (a hole).
    pub chunks: Vec<Option<String>>,
}

/// Checks a backup id: 1-128 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
pub fn validate_id(id: &str) -> Result<(), BackupError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BackupError::InvalidId(id.chars().take(140).collect()))
    }
}

/// The object key of a backup's manifest.
pub fn manifest_key(id: &str) -> String {
    format!("backups/{id}.json")
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// Number of chunks an image of `size` bytes has.
    pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
        size.div_ceil(chunk_size)
    }

    /// The length of chunk `index`.
    pub fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * self.chunk_size;
        self.chunk_size.min(self.size.saturating_sub(start))
    }

    /// Parses and validates manifest JSON read for backup `id`.
    pub fn parse(id: &str, bytes: &[u8]) -> Result<Manifest, BackupError> {
        let corrupt = |reason: String| BackupError::ManifestCorrupt {
            id: id.to_owned(),
            reason,
        };
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if m.format != FORMAT {
            return Err(corrupt(format!("unsupported format {}", m.format)));
        }
        if m.id != id {
            return Err(corrupt(format!("names backup {:?}", m.id)));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&m.chunk_size) {
            return Err(corrupt(format!("chunk size {} out of range", m.chunk_size)));
        }
        let want = Manifest::chunk_count(m.size, m.chunk_size);
        if m.chunks.len() as u64 != want {
            return Err(corrupt(format!(
                "{} chunks listed for {} bytes in {}-byte chunks (want {want})",
                m.chunks.len(),
                m.size,
                m.chunk_size
            )));
        }
        if !is_hash(&m.image_sha256) {
            return Err(corrupt(
                "image_sha256 is not a SHA-256 hex digest".to_owned(),
            ));
        }
        if let Some(i) = m
            .chunks
            .iter()
            .position(|c| c.as_deref().is_some_and(|h| !is_hash(h)))
        {
            return Err(corrupt(format!(
                "chunk {i} hash is not a SHA-256 hex digest"
            )));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            id: "b1".to_owned(),
            created_at: "2025-01-01T00:00:00Z".to_owned(),
            source: Source {
                volume: "v".to_owned(),
                snapshot: "s".to_owned(),
            },
            size: 10_000,
            chunk_size: 4096,
            encrypted: false,
            image_sha256: "a".repeat(64),
            chunks: vec![Some("b".repeat(64)), None, Some("c".repeat(64))],
        }
    }

    #[test]
    fn valid_manifest_round_trips() {
        let m = sample();
        let b = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse("b1", &b).unwrap(), m);
        assert_eq!(m.chunk_len(0), 4096);
        assert_eq!(m.chunk_len(2), 10_000 - 8192);
    }

    #[test]
    fn corrupt_manifests_are_errors() {
        let check = |f: &dyn Fn(&mut Manifest), what: &str| {
            let mut m = sample();
            f(&mut m);
            let b = serde_json::to_vec(&m).unwrap();
            let e = Manifest::parse("b1", &b).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        check(&|m| m.format = 2, "format");
        check(&|m| m.id = "other".to_owned(), "names backup");
        check(&|m| m.chunk_size = 0, "chunk size");
        check(&|m| m.size = u64::MAX, "chunks listed");
        check(&|m| m.chunks.pop().map(drop).unwrap_or(()), "chunks listed");
        check(&|m| m.chunks[0] = Some("zz".to_owned()), "chunk 0 hash");
        check(&|m| m.image_sha256 = "x".to_owned(), "image_sha256");
        assert!(Manifest::parse("b1", b"{not json").is_err());
        assert!(Manifest::parse("b1", b"{\"format\":1,\"extra\":1}").is_err());
    }

    #[test]
    fn ids() {
        assert!(validate_id("vol-1.snap_2").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
