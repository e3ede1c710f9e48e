//! Secrets at rest: XChaCha20-Poly1305 with a key from the control plane's key file (generated
//! on first start with mode 0600). The associated data binds a ciphertext to its org, env and
//! version, so a ciphertext copied elsewhere does not decrypt.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Errors loading the key or opening a ciphertext. Messages never include secret values.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("secrets key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("secret material could not be decrypted (wrong key or corrupted data)")]
    Open,
    #[error("random number generator failed: {0}")]
    Rng(String),
}

/// The secrets key.
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| CryptoError::Rng(e.to_string()))?;
    Ok(b)
}

impl SecretsKey {
    /// Loads the key at `path`, creating it (0600, atomically) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, CryptoError> {
        let err = |message: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            message,
        };
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("cannot create directory: {e}")))?;
            }
            let key = random_bytes::<32>()?;
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(format!("cannot create: {e}")))?;
            f.write_all(hex::encode(key).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(format!("cannot write: {e}")))?;
            // hard_link fails if another process created the key first: then use theirs.
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            if let Err(e) = linked
                && e.kind() != std::io::ErrorKind::AlreadyExists
            {
                return Err(err(format!("cannot install: {e}")));
            }
            tracing::info!(path = %path.display(), "generated secrets encryption key");
        }
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(err(format!(
                "permissions {:o} let other users read it; run `chmod 600 {}`",
                meta.permissions().mode() & 0o777,
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| err("expected 64 hex characters (a 32-byte key)".into()))?;
        Ok(SecretsKey(
            XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| err("bad key length".into()))?,
        ))
    }

    /// Encrypts `values`; returns (nonce, ciphertext).
    pub fn seal(
        &self,
        aad: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let nonce = random_bytes::<24>()?;
        let msg = serde_json::to_vec(values).expect("maps of strings serialize");
        let ct = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &msg,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        Ok((nonce.to_vec(), ct))
    }

    /// Decrypts what [`seal`](Self::seal) produced with the same `aad`.
    pub fn open(
        &self,
        aad: &str,
        nonce: &[u8],
        ct: &[u8],
    ) -> Result<BTreeMap<String, String>, CryptoError> {
        if nonce.len() != 24 {
            return Err(CryptoError::Open);
        }
        let pt = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        serde_json::from_slice(&pt).map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = SecretsKey::load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let vals = BTreeMap::from([("A".to_string(), "s3cret".to_string())]);
        let (n, ct) = k.seal("org/env/1", &vals).unwrap();
        assert!(!String::from_utf8_lossy(&ct).contains("s3cret"));
        let k2 = SecretsKey::load_or_create(&p).unwrap();
        assert_eq!(k2.open("org/env/1", &n, &ct).unwrap(), vals);
        assert!(
            k2.open("org/env/2", &n, &ct).is_err(),
            "aad binds the version"
        );
    }

    #[test]
    fn refuses_world_readable_and_garbage_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "zz").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            SecretsKey::load_or_create(&p)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            SecretsKey::load_or_create(&p)
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
    }
}
