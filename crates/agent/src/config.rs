//! Agent configuration (`[agent]` TOML / typed struct): every setting has a default that works
//! on one machine; unknown keys are rejected.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// Which VM backend runs instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Dev/test only: instances are plain local processes, no isolation
    /// (see `process_backend`). The microVM backend is wired in by `scaleboxd`.
    Process,
}

/// The agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// API listen address (local only by default).
    pub listen: SocketAddr,
    /// Where state, logs, rootfs clones and VM run dirs live.
    pub data_dir: PathBuf,
    /// Bearer token for the API. If unset, `token_file` is read; if that is unset too, a random
    /// token is generated into `<data_dir>/api-token` (mode 0600).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub backend: BackendKind,
    /// Size of one log segment file.
    pub log_segment_bytes: u64,
    /// Cap on the log ring of one instance.
    pub log_max_bytes: u64,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Address health checks use for instances without a network attachment.
    pub health_host: IpAddr,
    /// The instances' IPv6 /64 on this host (first 64 bits used; the bridge gets `::1`).
    pub instance_ipv6_prefix: std::net::Ipv6Addr,
    /// The instances' IPv4 egress /16 (the bridge gets `.0.1`).
    pub instance_ipv4_net: Ipv4Addr,
    /// The control plane credential (`control.json`: url, host token) written when the host
    /// joined. When set, the agent converges on the control plane's desired state for this host
    /// and reports its instances there (docs/agent.md, "Control plane link").
    pub control_credential: Option<PathBuf>,
    /// Where volume backups go (`[backup]`, docs/backups.md); none: backups are refused.
    pub backup: Option<scalebox_backup::Config>,
    /// The cluster's WireGuard mesh (`[overlay]`, docs/overlay.md); off by default.
    pub overlay: crate::overlay::OverlayConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7070),
            data_dir: PathBuf::from("/var/lib/scalebox/agent"),
            token: None,
            token_file: None,
            backend: BackendKind::Process,
            log_segment_bytes: 1 << 20,
            log_max_bytes: 16 << 20,
            max_body_bytes: 1 << 20,
            health_host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            instance_ipv6_prefix: "fd5c:a1e0:0:1::".parse().expect("valid"),
            instance_ipv4_net: Ipv4Addr::new(10, 88, 0, 0),
            control_credential: None,
            backup: None,
            overlay: Default::default(),
        }
    }
}

impl AgentConfig {
    /// Parses TOML; errors name `path`.
    pub fn from_toml(path: &Path, text: &str) -> Result<AgentConfig, AgentError> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| AgentError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        c.validate().map_err(|m| AgentError::Config {
            path: path.to_owned(),
            message: m,
        })?;
        Ok(c)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::from_toml(path, &text)
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), String> {
        if self.log_segment_bytes < 4096 {
            return Err("log_segment_bytes must be at least 4096".into());
        }
        if self.log_max_bytes < 2 * self.log_segment_bytes {
            return Err("log_max_bytes must be at least twice log_segment_bytes".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("max_body_bytes must be at least 1024".into());
        }
        if let Some(t) = &self.token
            && t.len() < 16
        {
            return Err("token must be at least 16 characters".into());
        }
        self.overlay.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let p = Path::new("/etc/scalebox/agent.toml");
        let c = AgentConfig::from_toml(p, "").unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", AgentConfig::default()));
        let c = AgentConfig::from_toml(p, "[backup]\ntarget = { type = \"local\", dir = \"/b\" }")
            .unwrap();
        assert!(c.backup.is_some());
        let c = AgentConfig::from_toml(p, "listen = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/x\"")
            .unwrap();
        assert_eq!(c.listen.port(), 9000);
        let e = AgentConfig::from_toml(p, "listn = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("agent.toml") && e.contains("listn"), "{e}");
        let e = AgentConfig::from_toml(p, "token = \"short\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 16"), "{e}");
    }
}
