//! The desired instance spec the control plane sends to `PUT /v1/instances/{id}`, and its
//! validation (pure, no I/O). Secret values are never printed by `Debug`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where the instance's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ImageSource {
    /// A registry reference such as `registry.example:5000/app@sha256:...`.
    Registry { reference: String },
    /// A local OCI layout directory, optionally selecting a tag.
    OciLayout {
        path: String,
        #[serde(default)]
        tag: Option<String>,
    },
    /// A `docker save` or OCI archive file.
    Archive { path: String },
    /// An archive uploaded to the control plane (`sb deploy --image oci-archive:…`), by digest:
    /// the agent's control plane link downloads it once, then it is an `Archive`.
    Upload { digest: String },
}

/// Resources: memory is a hard cap, CPU a soft share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default = "default_cpu")]
    pub cpu: u32,
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
}

fn default_cpu() -> u32 {
    1
}
fn default_memory() -> u32 {
    256
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu: default_cpu(),
            memory_mb: default_memory(),
        }
    }
}

/// A port the workload listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default = "default_proto")]
    pub protocol: String,
}

fn default_proto() -> String {
    "tcp".into()
}

/// Health check kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    Tcp,
    Http,
}

/// Health check, in the manifest's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub port: u16,
    /// HTTP path (http only), default `/`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "d_interval")]
    pub interval_s: u32,
    #[serde(default = "d_timeout")]
    pub timeout_s: u32,
    /// Failures during the first `grace_s` seconds after start do not count.
    #[serde(default)]
    pub grace_s: u32,
    #[serde(default = "d_one")]
    pub healthy_threshold: u32,
    #[serde(default = "d_three")]
    pub unhealthy_threshold: u32,
}

fn d_interval() -> u32 {
    10
}
fn d_timeout() -> u32 {
    2
}
fn d_one() -> u32 {
    1
}
fn d_three() -> u32 {
    3
}

/// A volume attached to the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub name: String,
    pub mount_path: String,
    /// Size of the disk made on first use, in GiB (default 1).
    #[serde(default)]
    pub size_gb: Option<u32>,
}

/// Secrets: names to values. `Debug` shows only the names.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The desired state of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpec {
    /// Increases every time the desired spec changes.
    pub generation: u64,
    pub image: ImageSource,
    /// The image manifest digest the control plane pinned (`sha256:<hex>`); a prepared image
    /// with another digest fails the instance.
    #[serde(default)]
    pub image_digest: Option<String>,
    /// Overrides the image entrypoint+cmd; run by a shell (`sh -c`).
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    #[serde(default)]
    pub secrets: Secrets,
    /// Where the secrets file appears in the guest (init's default when unset).
    #[serde(default)]
    pub secrets_path: Option<String>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Seconds between SIGTERM and kill on stop.
    #[serde(default = "d_grace")]
    pub stop_grace_s: u32,
    /// The IPv6 address the control plane's IPAM allocated in this host's /64; without one the
    /// agent derives the address from the instance key.
    #[serde(default)]
    pub ipv6_address: Option<std::net::Ipv6Addr>,
}

fn d_grace() -> u32 {
    10
}

/// What is wrong with a spec or instance id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Checks an instance id: 1-64 characters of `a-z0-9-_`, not starting with `-`/`_`.
pub fn validate_instance_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !id.starts_with(['-', '_']);
    if ok {
        Ok(())
    } else {
        Err(SpecError(format!(
            "invalid instance id {:?}: use 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            id.chars().take(80).collect::<String>()
        )))
    }
}

impl InstanceSpec {
    /// Checks the values serde cannot: ranges and consistency.
    pub fn validate(&self) -> Result<(), SpecError> {
        let e = |m: String| Err(SpecError(m));
        if self.generation == 0 {
            return e("generation must be at least 1".into());
        }
        if self.resources.cpu == 0 || self.resources.cpu > 64 {
            return e(format!(
                "resources.cpu {} must be 1..=64",
                self.resources.cpu
            ));
        }
        if self.resources.memory_mb < 16 || self.resources.memory_mb > 1 << 20 {
            return e(format!(
                "resources.memory_mb {} must be 16..=1048576",
                self.resources.memory_mb
            ));
        }
        for k in self.env.keys().chain(self.secrets.0.keys()) {
            if k.is_empty() || k.contains(['=', '\0']) {
                return e(format!(
                    "env/secret name {k:?} is invalid: it must be non-empty and contain no '=' or NUL"
                ));
            }
        }
        if let Some(c) = &self.command
            && c.contains('\0')
        {
            return e("command contains a NUL byte".into());
        }
        if let Some(h) = &self.health {
            validate_health(h)?;
        }
        if self.stop_grace_s > 3600 {
            return e(format!(
                "stop_grace_s {} must be at most 3600",
                self.stop_grace_s
            ));
        }
        Ok(())
    }
}

/// Checks a health check's numbers and path.
pub fn validate_health(h: &HealthCheck) -> Result<(), SpecError> {
    let e = |m: &str| Err(SpecError(format!("health: {m}")));
    if h.port == 0 {
        return e("port must be 1..=65535");
    }
    if h.interval_s == 0 || h.timeout_s == 0 {
        return e("interval_s and timeout_s must be at least 1");
    }
    if h.timeout_s > h.interval_s {
        return e("timeout_s must not exceed interval_s");
    }
    if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
        return e("healthy_threshold and unhealthy_threshold must be at least 1");
    }
    match (&h.kind, &h.path) {
        (HealthKind::Tcp, Some(_)) => return e("path is only valid for kind \"http\""),
        (HealthKind::Http, Some(p))
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) =>
        {
            return e("path must start with '/' and contain no spaces or control characters");
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<InstanceSpec, String> {
        let v: InstanceSpec = serde_json::from_str(s).map_err(|e| e.to_string())?;
        v.validate().map_err(|e| e.0)?;
        Ok(v)
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = parse(r#"{"generation":1,"image":{"kind":"archive","path":"/x.tar"}}"#).unwrap();
        assert_eq!(s.resources, Resources::default());
        assert_eq!(s.stop_grace_s, 10);
    }

    #[test]
    fn health_check_parsing() {
        let s = parse(
            r#"{"generation":2,"image":{"kind":"registry","reference":"r/a:1"},
                "health":{"kind":"http","port":8080,"path":"/healthz","interval_s":5}}"#,
        )
        .unwrap();
        let h = s.health.unwrap();
        assert_eq!(h.kind, HealthKind::Http);
        assert_eq!((h.interval_s, h.timeout_s, h.grace_s), (5, 2, 0));
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (1, 3));
        for (bad, why) in [
            (r#"{"kind":"tcp","port":1,"path":"/"}"#, "only valid"),
            (r#"{"kind":"http","port":0}"#, "port"),
            (r#"{"kind":"http","port":1,"path":"x"}"#, "start with"),
            (r#"{"kind":"http","port":1,"timeout_s":20}"#, "exceed"),
            (r#"{"kind":"udp","port":1}"#, "unknown variant"),
            (r#"{"kind":"tcp","port":1,"bogus":1}"#, "unknown field"),
        ] {
            let body = format!(
                r#"{{"generation":1,"image":{{"kind":"archive","path":"/a"}},"health":{bad}}}"#
            );
            let err = parse(&body).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        assert!(
            parse(r#"{"generation":1,"image":{"kind":"archive","path":"/a"},"x":1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            parse(r#"{"generation":0,"image":{"kind":"archive","path":"/a"}}"#)
                .unwrap_err()
                .contains("generation")
        );
    }

    #[test]
    fn secrets_debug_hides_values() {
        let mut m = BTreeMap::new();
        m.insert("DB_PASSWORD".to_string(), "hunter2".to_string());
        let d = format!("{:?}", Secrets(m));
        assert!(d.contains("DB_PASSWORD") && !d.contains("hunter2"));
    }

    #[test]
    fn instance_ids() {
        assert!(validate_instance_id("web-1").is_ok());
        for bad in ["", "-a", "A", "a/b", &"x".repeat(65)] {
            assert!(validate_instance_id(bad).is_err(), "{bad}");
        }
    }
}
