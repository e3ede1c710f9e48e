//! The manifest exactly as written: strict serde structs (unknown fields rejected) with spans so
//! semantic errors can point at the offending key. Numbers are read as `i64` so range errors say
//! what range is allowed instead of serde's "expected u16".

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{HealthKind, ProxyProtocol, RouteKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawManifest {
    pub schema_version: Option<Spanned<i64>>,
    pub resources: Option<Spanned<RawResources>>,
    pub env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    pub secrets: Option<RawSecrets>,
    pub release: Option<Spanned<RawRelease>>,
    pub processes: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawProcess>>>>,
    pub routes: Option<Vec<Spanned<RawRoute>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    pub cpu: Option<Spanned<f64>>,
    pub memory_mb: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecrets {
    pub path: Option<Spanned<String>>,
    pub as_env: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRelease {
    pub command: Spanned<Vec<String>>,
    pub timeout_s: Option<Spanned<i64>>,
    pub resources: Option<Spanned<RawResources>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProcess {
    pub command: Option<Spanned<Vec<String>>>,
    pub ports: Option<Vec<Spanned<i64>>>,
    pub scale: Option<Spanned<i64>>,
    pub stop_grace_s: Option<Spanned<i64>>,
    pub resources: Option<Spanned<RawResources>>,
    pub health: Option<Spanned<RawHealth>>,
    pub volumes: Option<Vec<Spanned<RawVolume>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub kind: HealthKind,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub interval_s: Option<Spanned<i64>>,
    pub timeout_s: Option<Spanned<i64>>,
    pub grace_s: Option<Spanned<i64>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVolume {
    pub name: Spanned<String>,
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub process: Spanned<String>,
    pub kind: RouteKind,
    pub hostname: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub backend_port: Spanned<i64>,
    pub proxy_protocol: Option<ProxyProtocol>,
    pub ipv4: Option<bool>,
}
