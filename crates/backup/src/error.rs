//! Errors. Messages name the backup, chunk index, object key or file involved and never
//! contain credentials or key material.

use std::path::PathBuf;

/// A failed operation on a [`Target`](crate::Target).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{op} {key:?} in {target}: {source}")]
    Io {
        op: &'static str,
        key: String,
        target: String,
        source: std::io::Error,
    },
    #[error("{op} {key:?} in {target}: HTTP {status} {code}: {message}")]
    Http {
        op: &'static str,
        key: String,
        target: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{op} {key:?} in {target}: {message}")]
    Transport {
        op: &'static str,
        key: String,
        target: String,
        message: String,
    },
}

/// A failed backup, restore, listing or garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup configuration: {0}")]
    Config(String),
    #[error("encryption key file {path}: {message}")]
    KeyFile { path: PathBuf, message: String },
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "invalid backup id {0:?}: use 1-128 characters from A-Z a-z 0-9 . _ - (not starting with .)"
    )]
    InvalidId(String),
    #[error("backup {0:?} already exists")]
    AlreadyExists(String),
    #[error("backup {0:?} not found")]
    NotFound(String),
    #[error(
        "backup {id:?} interrupted after uploading {uploaded} chunks (test hook max_chunks); run it again with the same id to resume"
    )]
    Interrupted { id: String, uploaded: usize },
    #[error("backup {id:?}: manifest is corrupt: {reason}")]
    ManifestCorrupt { id: String, reason: String },
    #[error(
        "backup {id:?} is encrypted; configure encryption_key_file with the key it was made with"
    )]
    EncryptedNoKey { id: String },
    #[error(
        "backup {id:?} is not encrypted but an encryption key is configured; refusing an unauthenticated manifest"
    )]
    NotEncrypted { id: String },
    #[error("backup {id:?}: chunk {index} (object {key}) is missing from the target")]
    ChunkMissing {
        id: String,
        index: usize,
        key: String,
    },
    #[error("backup {id:?}: chunk {index} (object {key}) is corrupt: {reason}")]
    ChunkCorrupt {
        id: String,
        index: usize,
        key: String,
        reason: String,
    },
    #[error("backup {id:?}: restored image hash {actual} does not match the manifest's {expected}")]
    ImageCorrupt {
        id: String,
        expected: String,
        actual: String,
    },
    #[error(
        "backup {id:?}: chunk {index} (object {key}) vanished from the target during the backup (was gc running?)"
    )]
    ChunkVanished {
        id: String,
        index: usize,
        key: String,
    },
    #[error("restore destination {0} already exists")]
    DestinationExists(PathBuf),
    #[error("random number generator failed: {0}")]
    Rng(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let context = context.into();
    move |source| BackupError::Io { context, source }
}
