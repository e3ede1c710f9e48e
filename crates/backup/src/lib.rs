//! Off-host backups of volume snapshots.
//!
//! A snapshot file (a sparse ext4 image) is split into fixed-size chunks; all-zero chunks are
//! recorded as holes, every other chunk is stored once under `chunks/<sha256 of plaintext>`
//! (or an HMAC of it when encrypted), and a manifest `backups/<id>.json` written last lists them
//! with the whole-image hash. Backups resume after a crash, restores verify every chunk and the
//! whole image, and `gc` removes chunks no manifest references. Targets: a local directory
//! ([`LocalDir`]) or S3-compatible object storage ([`S3`], SigV4 by hand). See
//! `docs/backups.md`.
//!
//! The API is blocking; run it on a blocking thread.

pub mod config;
pub mod crypto;
pub mod error;
pub mod manifest;
pub mod repo;
pub mod s3;
pub mod sigv4;
pub mod target;

pub use config::{Config, Secret, TargetConfig};
pub use crypto::EncryptionKey;
pub use error::{BackupError, TargetError};
pub use manifest::{Manifest, Source};
pub use repo::{
    BackupOptions, BackupReport, DEFAULT_CHUNK_SIZE, GcReport, Progress, Repository, RestoreReport,
};
pub use s3::{S3, S3Settings};
pub use target::{LocalDir, Target};
