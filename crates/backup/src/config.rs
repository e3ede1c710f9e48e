//! Configuration (serde, strict): which target, its credentials, and an optional encryption key
//! file. Secret values are held in [`Secret`], whose `Debug` prints `Secret(..)`.
//!
//! ```toml
//! encryption_key_file = "/etc/scalebox/backup.key"   # optional: 64 hex characters
//! [target]
//! type = "s3"                                        # or "local" with `dir = "/srv/backups"`
//! endpoint = "https://s3.example.com"
//! region = "us-east-1"
//! bucket = "scalebox-backups"
//! access_key_id = "AKIA…"
//! secret_access_key_file = "/etc/scalebox/s3.secret" # or secret_access_key = "…"
//! prefix = "host-1/"                                 # optional
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::BackupError;
use crate::s3::{S3, S3Settings};
use crate::target::{LocalDir, Target};

/// A secret string: never printed by `Debug` or in errors.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The secret value, for signing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Backup configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub target: TargetConfig,
    /// A file holding a 32-byte key as 64 hex characters; backups are encrypted when set.
    #[serde(default)]
    pub encryption_key_file: Option<PathBuf>,
}

/// Where backups go.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TargetConfig {
    /// A directory on this host.
    Local { dir: PathBuf },
    /// An S3-compatible object store.
    S3 {
        endpoint: String,
        region: String,
        bucket: String,
        access_key_id: String,
        #[serde(default)]
        secret_access_key: Option<Secret>,
        #[serde(default)]
        secret_access_key_file: Option<PathBuf>,
        #[serde(default)]
        prefix: String,
    },
}

impl TargetConfig {
    /// Builds the target (reading secret files; no network request is made).
    pub fn open(&self) -> Result<Box<dyn Target>, BackupError> {
        match self {
            TargetConfig::Local { dir } => Ok(Box::new(LocalDir::open(dir)?)),
            TargetConfig::S3 {
                endpoint,
                region,
                bucket,
                access_key_id,
                secret_access_key,
                secret_access_key_file,
                prefix,
            } => {
                let secret = match (secret_access_key, secret_access_key_file) {
                    (Some(s), None) => s.clone(),
                    (None, Some(p)) => Secret(read_secret_file(p)?),
                    _ => {
                        return Err(BackupError::Config(
                            "set exactly one of secret_access_key and secret_access_key_file"
                                .to_owned(),
                        ));
                    }
                };
                let s3 = S3::new(S3Settings {
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    bucket: bucket.clone(),
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret,
                    prefix: prefix.clone(),
                })
                .map_err(BackupError::Config)?;
                Ok(Box::new(s3))
            }
        }
    }
}

fn read_secret_file(p: &Path) -> Result<String, BackupError> {
    let s = std::fs::read_to_string(p).map_err(|e| {
        BackupError::Config(format!("cannot read secret file {}: {e}", p.display()))
    })?;
    let s = s.trim();
    if s.is_empty() {
        return Err(BackupError::Config(format!(
            "secret file {} is empty",
            p.display()
        )));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strictly_and_hides_secrets() {
        let c: Config = toml::from_str(
            r#"
            encryption_key_file = "/k"
            [target]
            type = "s3"
            endpoint = "http://127.0.0.1:9000"
            region = "us-east-1"
            bucket = "b-1"
            access_key_id = "AKID"
            secret_access_key = "hunter2-secret"
            "#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2-secret"));
        assert!(c.target.open().is_ok());

        let c: Config = toml::from_str("[target]\ntype = \"local\"\ndir = \"/tmp/x\"\n").unwrap();
        assert!(matches!(c.target, TargetConfig::Local { .. }));
        assert!(c.encryption_key_file.is_none());

        let unknown =
            toml::from_str::<Config>("[target]\ntype = \"local\"\ndir = \"/x\"\nbogus = 1\n");
        assert!(unknown.is_err());
        let unknown =
            toml::from_str::<Config>("bogus = 1\n[target]\ntype = \"local\"\ndir = \"/x\"\n");
        assert!(unknown.is_err());
        let kind = toml::from_str::<Config>("[target]\ntype = \"ftp\"\n");
        assert!(kind.is_err());
    }

    #[test]
    fn exactly_one_secret_source() {
        let c: Config = toml::from_str(
            "[target]\ntype = \"s3\"\nendpoint = \"http://h\"\nregion = \"r\"\nbucket = \"bbb\"\naccess_key_id = \"a\"\n",
        )
        .unwrap();
        let e = c.target.open().err().unwrap().to_string();
        assert!(e.contains("exactly one"), "{e}");
    }
}
