//! The normalised manifest: every default filled in, per-process resources resolved, lists sorted.
//! This is what the rest of Scalebox stores and reads; [`crate::parse`] is the only way to get one
//! from user input (its invariants hold only for values it produced).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default vCPUs per instance.
pub const DEFAULT_CPU: f64 = 1.0;
/// Default memory cap per instance, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 256;
/// Default secrets file mount path inside the guest.
pub const DEFAULT_SECRETS_PATH: &str = "/run/secrets/scalebox.env";
/// Default release command timeout, in seconds.
pub const DEFAULT_RELEASE_TIMEOUT_S: u32 = 300;
/// Default initial instance count per process type.
pub const DEFAULT_SCALE: u32 = 1;
/// Default time between SIGTERM and SIGKILL when stopping an instance, in seconds.
pub const DEFAULT_STOP_GRACE_S: u32 = 10;
/// Health check defaults.
pub const DEFAULT_HEALTH_INTERVAL_S: u32 = 5;
pub const DEFAULT_HEALTH_TIMEOUT_S: u32 = 2;
pub const DEFAULT_HEALTH_GRACE_S: u32 = 10;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Default listener port of a TLS route.
pub const DEFAULT_TLS_PORT: u16 = 443;

/// A validated, normalised manifest (schema version 1).
///
/// Field order puts plain values before tables so the value serialises to valid TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1.
    pub schema_version: u32,
    /// Plain (non-secret) environment variables for every process type and the release command.
    pub env: BTreeMap<String, String>,
    pub secrets: Secrets,
    /// The release command (e.g. migrations), if any.
    pub release: Option<ReleaseCommand>,
    /// Process types by name (at least one).
    pub processes: BTreeMap<String, ProcessType>,
    /// Routing intent, sorted.
    pub routes: Vec<Route>,
}

/// Per-instance resources.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// vCPUs; soft (CPU is oversubscribed). 0 < cpu <= 64.
    pub cpu: f64,
    /// Memory hard cap in MiB, 64..=65536.
    pub memory_mb: u32,
}

/// How secrets reach the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Absolute path of the secrets file (KEY=VALUE lines) inside the guest.
    pub path: String,
    /// Also export every secret as an environment variable of the workload.
    pub as_env: bool,
}

/// A command run once per release, in its own microVM, before rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCommand {
    /// argv; never empty.
    pub command: Vec<String>,
    pub timeout_s: u32,
    pub resources: Resources,
}

/// One process type (e.g. `web`, `worker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessType {
    /// argv; `None` runs the image's ENTRYPOINT/CMD.
    pub command: Option<Vec<String>>,
    /// Ports the workload listens on, sorted, unique.
    pub ports: Vec<u16>,
    /// Initial instance count.
    pub scale: u32,
    /// Seconds between SIGTERM and SIGKILL on stop.
    pub stop_grace_s: u32,
    pub resources: Resources,
    pub health: Option<HealthCheck>,
    /// Volume mounts, sorted by path.
    pub volumes: Vec<VolumeMount>,
}

/// Health check kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// Ready when a TCP connect to the port succeeds.
    Tcp,
    /// Ready when `GET <path>` answers 2xx or 3xx.
    Http,
}

/// Readiness/liveness check of a process type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: HealthKind,
    /// One of the process type's ports.
    pub port: u16,
    /// HTTP path (starts with `/`); `Some` exactly when `kind` is `http`.
    pub path: Option<String>,
    pub interval_s: u32,
    /// At most `interval_s`.
    pub timeout_s: u32,
    /// Failures during the first `grace_s` seconds after start do not count.
    pub grace_s: u32,
    /// Consecutive successes to become ready.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
}

/// A named persistent volume mounted into the guest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// Volume name (a resource name).
    pub name: String,
    /// Absolute mount path without `..`.
    pub path: String,
}

/// Route kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// TLS passthrough selected by SNI hostname.
    Tls,
    /// Raw TCP on a listener port of its own.
    Tcp,
}

/// PROXY protocol header sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    Off,
    V2,
}

/// Routing intent: a listener on the edge forwarding to a process type's port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub process: String,
    pub kind: RouteKind,
    /// SNI hostname (required for `tls`, informational for `tcp`).
    pub hostname: Option<String>,
    /// Listener port; `None` (tcp only) = allocated by the platform.
    pub port: Option<u16>,
    /// One of the process type's ports.
    pub backend_port: u16,
    pub proxy_protocol: ProxyProtocol,
    /// Also listen on the environment's dedicated IPv4 address.
    pub ipv4: bool,
}

impl Manifest {
    /// The process type called `name`.
    pub fn process(&self, name: &str) -> Option<&ProcessType> {
        self.processes.get(name)
    }

    /// Process types in name order.
    pub fn process_types(&self) -> impl Iterator<Item = (&str, &ProcessType)> {
        self.processes.iter().map(|(n, p)| (n.as_str(), p))
    }

    /// Routes that target process type `name`.
    pub fn routes_for<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| r.process == name)
    }

    /// Canonical JSON of the normalised manifest: compact, object keys sorted, defaults filled.
    pub fn normalized_json(&self) -> String {
        crate::canonical::to_canonical_json(self)
    }

    /// `"sha256:<hex>"` of [`Manifest::normalized_json`]: identical for manifests that differ only
    /// in key order, formatting, comments or spelled-out defaults.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.normalized_json().as_bytes());
        format!("sha256:{}", hex::encode(digest))
    }

    /// The normalised manifest as TOML; [`crate::parse`] of it gives back an equal manifest.
    pub fn to_toml(&self) -> String {
        // Serialising plain data (strings, integers, finite floats, maps with string keys) into
        // TOML cannot fail; if it ever did, return a TOML comment saying so rather than panic.
        toml::to_string(self)
            .unwrap_or_else(|e| format!("# could not render manifest as TOML: {e}\n"))
    }
}

impl ProcessType {
    /// Names of the volumes this process type mounts.
    pub fn volume_names(&self) -> impl Iterator<Item = &str> {
        self.volumes.iter().map(|v| v.name.as_str())
    }
}
