//! Control plane configuration: one TOML file (unknown keys rejected), every setting defaulted
//! for a single machine. `DATABASE_URL` overrides `database_url`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use scalebox_overlay::Ipv4Pool;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// External Postgres. When absent, a private cluster is managed under `data_dir/pg`.
    pub database_url: Option<String>,
    /// State directory (private Postgres, secrets key, bootstrap token).
    pub data_dir: PathBuf,
    /// Secrets encryption key file (32 random bytes, hex); generated with mode 0600 when missing.
    /// Default: `data_dir/secrets.key`.
    pub secrets_key_file: Option<PathBuf>,
    /// Name of the operator org created on first start.
    pub operator_org: String,
    /// Raw TCP listener ports are allocated from this inclusive range.
    pub tcp_port_range: (u16, u16),
    /// Maximum request body size in bytes.
    pub body_limit: usize,
    /// Database connection pool size.
    pub pool_size: usize,
    /// A host whose agent has not reported for this long is lost; its instances are replaced.
    pub host_lost_after_s: u32,
    /// A ready instance being stopped leaves the routing table this long before it is stopped.
    pub drain_s: u32,
    /// A rollout fails after this many instances of the new release failed.
    pub rollout_max_failures: u32,
    /// Run the reconcilers in this process (turn off for API-only replicas).
    pub reconcile: bool,
    /// The VM sandbox surface (`/vms`, `/templates`; docs/vms.md).
    pub vms: scalebox_sandbox::SandboxConfig,
    /// Largest image archive `PUT /v1/orgs/{org}/images/{digest}` accepts, in bytes.
    pub image_upload_limit: u64,
    /// The operator's public IPv4 addresses for the dedicated-IPv4 add-on (`POST
    /// .../envs/{env}/ipv4`): addresses, inclusive ranges (`a-b`) and networks (`a/n`, every
    /// address). Empty (the default): the add-on is unavailable. Checked at start.
    #[serde(deserialize_with = "ipv4_pool")]
    pub ipv4_pool: Ipv4Pool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: "127.0.0.1:7443".parse().expect("valid address"),
            database_url: None,
            data_dir: PathBuf::from("/var/lib/scalebox"),
            secrets_key_file: None,
            operator_org: "default".into(),
            tcp_port_range: (20000, 29999),
            body_limit: 1 << 20,
            pool_size: 32,
            host_lost_after_s: 30,
            drain_s: 2,
            rollout_max_failures: 3,
            reconcile: true,
            vms: scalebox_sandbox::SandboxConfig::default(),
            image_upload_limit: 8 << 30,
            ipv4_pool: Ipv4Pool::empty(),
        }
    }
}

/// `ipv4_pool`, checked with `Ipv4Pool::parse` (overlaps, reversed ranges, bad addresses).
fn ipv4_pool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Ipv4Pool, D::Error> {
    let entries = Vec::<String>::deserialize(d)?;
    Ipv4Pool::parse(&entries).map_err(|e| {
        serde::de::Error::custom(format!(
            "ipv4_pool: {e} (entries are addresses, `first-last` ranges or `address/len` networks)"
        ))
    })
}

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ControlConfig {
    /// Loads `path` (if given), then applies `DATABASE_URL`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.into(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Invalid {
                    path: p.into(),
                    message,
                })?
            }
            None => ControlConfig::default(),
        };
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.is_empty()
        {
            cfg.database_url = Some(url);
        }
        Ok(cfg)
    }

    /// Parses and validates the TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: ControlConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if cfg.tcp_port_range.0 == 0 || cfg.tcp_port_range.0 > cfg.tcp_port_range.1 {
            return Err(format!(
                "tcp_port_range = {:?}: expected [low, high] with 1 <= low <= high <= 65535",
                cfg.tcp_port_range
            ));
        }
        cfg.vms.validate()?;
        scalebox_types::name::validate(&cfg.operator_org)
            .map_err(|e| format!("operator_org: {e}"))?;
        Ok(cfg)
    }

    pub fn secrets_key_path(&self) -> PathBuf {
        self.secrets_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = ControlConfig::parse("listen = \"127.0.0.1:9000\"").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.operator_org, "default");
        let e = ControlConfig::parse("lisen = 1").unwrap_err();
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let e = ControlConfig::parse("tcp_port_range = [5, 1]").unwrap_err();
        assert!(e.contains("tcp_port_range"), "{e}");
    }

    #[test]
    fn ipv4_pool_is_checked() {
        assert_eq!(ControlConfig::parse("").unwrap().ipv4_pool.size(), 0);
        let c = ControlConfig::parse(
            r#"ipv4_pool = ["203.0.113.10-203.0.113.20", "198.51.100.7", "192.0.2.0/30"]"#,
        )
        .unwrap();
        assert_eq!(c.ipv4_pool.size(), 11 + 1 + 4);
        for (bad, says) in [
            (r#"ipv4_pool = ["203.0.113.300"]"#, "not an IPv4 address"),
            (
                r#"ipv4_pool = ["203.0.113.9-203.0.113.1"]"#,
                "ends before it starts",
            ),
            (r#"ipv4_pool = ["192.0.2.0/30", "192.0.2.2"]"#, "overlaps"),
            (r#"ipv4_pool = "192.0.2.1""#, "sequence"),
        ] {
            let e = ControlConfig::parse(bad).unwrap_err();
            assert!(e.contains("ipv4_pool") && e.contains(says), "{bad}: {e}");
        }
    }
}
