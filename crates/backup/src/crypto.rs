//! Optional encryption: XChaCha20-Poly1305 with a random 24-byte nonce per object, and object
//! names derived with HMAC-SHA256 so the store learns neither contents nor plaintext hashes.
//!
//! Two subkeys are derived from the 32-byte master key with HMAC-SHA256 (domain-separated):
//! one for the AEAD, one for object names. An encrypted object is
//! `"SBE1" || nonce (24) || ciphertext+tag`, with the object's key as associated data, so a
//! ciphertext moved to another name does not open.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::BackupError;
use crate::sigv4::hmac_sha256;

/// The first bytes of every encrypted object.
pub const MAGIC: &[u8; 4] = b"SBE1";
const NONCE: usize = 24;

/// A loaded encryption key.
#[derive(Clone)]
pub struct EncryptionKey {
    aead: XChaCha20Poly1305,
    names: [u8; 32],
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EncryptionKey(..)")
    }
}

impl EncryptionKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(master: &[u8; 32]) -> EncryptionKey {
        let enc = hmac_sha256(master, b"scalebox-backup v1 object encryption");
        let names = hmac_sha256(master, b"scalebox-backup v1 object names");
        EncryptionKey {
            aead: XChaCha20Poly1305::new((&enc).into()),
            names,
        }
    }

    /// Loads a key file: 64 hex characters (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<EncryptionKey, BackupError> {
        let err = |message: String| BackupError::KeyFile {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let mut raw = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut raw)
            .map_err(|_| err("must hold exactly 64 hex characters (a 32-byte key)".to_owned()))?;
        Ok(EncryptionKey::from_bytes(&raw))
    }

    /// A new random key as 64 hex characters, for writing to a key file.
    pub fn generate_hex() -> Result<String, BackupError> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| BackupError::Rng(e.to_string()))?;
        Ok(hex::encode(raw))
    }

    /// The object name (hex) for a chunk whose plaintext SHA-256 is `plain_hash`.
    pub fn object_name(&self, plain_hash: &[u8; 32]) -> String {
        hex::encode(hmac_sha256(&self.names, plain_hash))
    }

    /// Encrypts `plain` to be stored under `key`.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| BackupError::Rng(e.to_string()))?;
        let ct = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| BackupError::Rng("encryption failed".to_owned()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts an object read from `key`; the error says why it was refused.
    pub fn open(&self, key: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        let body = data
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| "not an encrypted object (bad header)".to_owned())?;
        if body.len() < NONCE + 16 {
            return Err("encrypted object is truncated".to_owned());
        }
        let (nonce, ct) = body.split_at(NONCE);
        self.aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| {
                "authentication tag mismatch (corrupted, tampered with, or another key)".to_owned()
            })
    }
}

/// Whether `data` looks like an encrypted object.
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detection() {
        let k = EncryptionKey::from_bytes(&[7u8; 32]);
        let sealed = k.seal("chunks/x", b"hello world").unwrap();
        assert!(is_encrypted(&sealed));
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        assert_eq!(k.open("chunks/x", &sealed).unwrap(), b"hello world");
        // Random nonces: sealing twice differs.
        assert_ne!(k.seal("chunks/x", b"hello world").unwrap(), sealed);
        // Another name (associated data), another key, a flipped bit, truncation: all refused.
        assert!(k.open("chunks/y", &sealed).is_err());
        assert!(
            EncryptionKey::from_bytes(&[8u8; 32])
                .open("chunks/x", &sealed)
                .is_err()
        );
        let mut bad = sealed.clone();
        let n = bad.len() - 1;
        bad[n] ^= 1;
        assert!(k.open("chunks/x", &bad).is_err());
        assert!(k.open("chunks/x", &sealed[..20]).is_err());
        assert!(k.open("chunks/x", b"plain").is_err());
        assert!(!format!("{k:?}").contains('7'));
    }

    #[test]
    fn object_names_hide_the_hash() {
        let k = EncryptionKey::from_bytes(&[1u8; 32]);
        let h = [9u8; 32];
        let name = k.object_name(&h);
        assert_eq!(name.len(), 64);
        assert_ne!(name, hex::encode(h));
        assert_eq!(name, k.object_name(&h));
        assert_ne!(name, EncryptionKey::from_bytes(&[2u8; 32]).object_name(&h));
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, format!("{}\n", EncryptionKey::generate_hex().unwrap())).unwrap();
        assert!(EncryptionKey::load(&p).is_ok());
        std::fs::write(&p, "abcd").unwrap();
        let e = EncryptionKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("64 hex") && !e.contains("abcd"), "{e}");
        assert!(EncryptionKey::load(&dir.path().join("missing")).is_err());
    }
}
