//! Edge configuration (`[edge]` TOML section or a standalone TOML file) with working defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::EdgeError;

/// Configuration of the edge. Every field has a default that works on one machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Admin listener for `/metrics`, `/healthz` and `PUT /table`.
    pub admin_addr: SocketAddr,
    /// Directory holding the persisted table (`table.json`).
    pub state_dir: PathBuf,
    /// Optional table file re-read on SIGHUP (and applied at start when newer than the
    /// persisted table).
    pub table_file: Option<PathBuf>,
    /// Reload `table_file` on SIGHUP.
    pub reload_on_sighup: bool,
    /// IPv6 listen address for routes that do not name one.
    pub default_ipv6_addr: IpAddr,
    /// IPv4 listen address for routes with `ipv4: true` that do not name one.
    pub default_ipv4_addr: IpAddr,
    /// Largest ClientHello accepted, in bytes (record headers included).
    pub hello_max_bytes: usize,
    /// Time a client has to send its complete ClientHello, in milliseconds.
    pub hello_timeout_ms: u64,
    /// Backend connect timeout, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a backend that refused or timed out is skipped, in milliseconds.
    pub backend_down_ms: u64,
    /// Drain deadline on shutdown, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Bytes relayed in one direction before switching that direction to splice(2).
    pub splice_after_bytes: u64,
    /// Relay buffer size for the userspace copy path, in bytes.
    pub relay_buffer_bytes: usize,
    /// listen(2) backlog.
    pub backlog: u32,
    /// Send the first bytes to a backend (PROXY v2 header, ClientHello: both safe to replay)
    /// in the SYN with TCP Fast Open when the backend supports it; saves a packet and a system
    /// call per connection. Backends without it get a plain connect.
    pub backend_fast_open: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            admin_addr: "127.0.0.1:9901".parse().expect("static address"),
            state_dir: PathBuf::from("/var/lib/scalebox/edge"),
            table_file: None,
            reload_on_sighup: true,
            default_ipv6_addr: "::".parse().expect("static address"),
            default_ipv4_addr: "0.0.0.0".parse().expect("static address"),
            hello_max_bytes: 16384,
            hello_timeout_ms: 5000,
            connect_timeout_ms: 3000,
            backend_down_ms: 10_000,
            drain_timeout_ms: 30_000,
            splice_after_bytes: 256 * 1024,
            relay_buffer_bytes: 16384,
            backlog: 1024,
            backend_fast_open: true,
        }
    }
}

impl EdgeConfig {
    /// Loads a TOML file; errors name the path and the problem.
    pub fn load(path: &Path) -> Result<Self, EdgeError> {
        let text = std::fs::read_to_string(path).map_err(|e| EdgeError::Config {
            path: path.to_path_buf(),
            problem: format!("cannot read: {e}"),
        })?;
        let cfg: EdgeConfig = toml::from_str(&text).map_err(|e| EdgeError::Config {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        cfg.validate().map_err(|problem| EdgeError::Config {
            path: path.to_path_buf(),
            problem,
        })?;
        Ok(cfg)
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(512..=1 << 20).contains(&self.hello_max_bytes) {
            return Err("hello_max_bytes must be between 512 and 1048576".into());
        }
        if !(1024..=1 << 22).contains(&self.relay_buffer_bytes) {
            return Err("relay_buffer_bytes must be between 1024 and 4194304".into());
        }
        if self.hello_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err("hello_timeout_ms and connect_timeout_ms must be positive".into());
        }
        if !self.default_ipv6_addr.is_ipv6() || !self.default_ipv4_addr.is_ipv4() {
            return Err("default_ipv6_addr must be IPv6 and default_ipv4_addr IPv4".into());
        }
        Ok(())
    }

    pub(crate) fn persisted_table_path(&self) -> PathBuf {
        self.state_dir.join("table.json")
    }

    pub(crate) fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_strict_toml() {
        let c: EdgeConfig = toml::from_str("hello_timeout_ms = 1000").unwrap();
        assert_eq!(c.hello_timeout_ms, 1000);
        assert_eq!(c.hello_max_bytes, 16384);
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<EdgeConfig>("nope = 1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("edge.toml");
        std::fs::write(&p, "hello_max_bytes = 1").unwrap();
        let e = EdgeConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("edge.toml") && e.contains("hello_max_bytes"),
            "{e}"
        );
    }
}
