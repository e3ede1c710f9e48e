//! Event types (the persisted vocabulary of state changes), their schema versions, and upcasting
//! of old versions on read. History is never rewritten: an old payload is converted to the current
//! shape every time it is read.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// An event as stored in the log.
#[derive(Debug, Clone)]
pub struct EventEnvelope {
    pub seq: i64,
    pub stream: String,
    pub stream_version: i64,
    pub actor: String,
    pub org_id: Option<Uuid>,
    pub occurred_at: OffsetDateTime,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgCreated {
    pub org_id: Uuid,
    pub name: String,
    pub operator: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCreated {
    pub token_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub role: String,
    /// SHA-256 of the token; the token itself is never stored.
    pub hash: String,
    pub prefix: String,
    #[serde(default)]
    pub host_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreated {
    pub project_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
}

/// Schema v2. v1 had only `app_id`, `org_id` and `name` (see [`upcast`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCreated {
    pub app_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub project_id: Option<Uuid>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppUpdated {
    pub app_id: Uuid,
    pub project_id: Option<Uuid>,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvCreated {
    pub env_id: Uuid,
    pub org_id: Uuid,
    pub app_id: Uuid,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessTypeSpec {
    pub name: String,
    pub spec: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCreated {
    pub release_id: Uuid,
    pub org_id: Uuid,
    pub app_id: Uuid,
    pub number: i64,
    pub image_ref: String,
    pub image_digest: String,
    pub manifest_hash: String,
    pub manifest: Value,
    pub process_types: Vec<ProcessTypeSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCreated {
    pub route_id: Uuid,
    pub org_id: Uuid,
    pub app_id: Uuid,
    pub env_id: Uuid,
    pub kind: String,
    pub hostname: Option<String>,
    pub address: Option<String>,
    pub listener_port: i32,
    pub process_type: String,
    pub backend_port: i32,
    pub proxy_protocol_v2: bool,
    pub ipv4_required: bool,
}

/// A new immutable secrets version: names only; values live encrypted in `secret_material`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsVersionCreated {
    pub org_id: Uuid,
    pub env_id: Uuid,
    pub version: i64,
    pub names: Vec<String>,
    pub material_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreated {
    pub volume_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub size_gb: i32,
    pub app_id: Option<Uuid>,
    pub env_id: Option<Uuid>,
    pub host_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRegistered {
    pub host_id: Uuid,
    pub name: String,
    pub address: String,
    pub cpus: i32,
    pub memory_mb: i64,
    pub labels: Value,
    /// The host's /64 of the cluster /48 (IPAM); absent in events from before IPAM.
    #[serde(default)]
    pub ipv6_prefix: Option<String>,
}

/// The cluster's IPv6 ULA /48 was chosen (once; stream `cluster`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterPrefixChosen {
    pub prefix: String,
}

/// Environment `env_id` was given the dedicated public IPv4 `address` from the operator's pool
/// (the IPv4 add-on; stream `env:<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvIpv4Allocated {
    pub env_id: Uuid,
    pub address: String,
}

/// Environment `env_id` gave back its dedicated IPv4 `address` (disabled, or the env was deleted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvIpv4Released {
    pub env_id: Uuid,
    pub address: String,
}

/// Instance `instance` was placed on host `host_id` and given `address` of that host's /64
/// (stream `instance-address:<instance>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAddressAllocated {
    pub instance: String,
    pub host_id: Uuid,
    pub address: String,
}

/// Instance `instance`'s record was deleted: its `address` is free again (not handed out soon).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceAddressReleased {
    pub instance: String,
    pub host_id: Uuid,
    pub address: String,
}

/// An environment was promoted to a release: a new deployment starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvDeployed {
    pub env_id: Uuid,
    pub release_id: Uuid,
    pub deployment_id: Uuid,
    pub deadline_s: u32,
    pub max_surge: u32,
    /// Added later; absent in older events (0).
    #[serde(default)]
    pub max_unavailable: u32,
}

/// Instance counts of some process types of an environment changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvScaled {
    pub env_id: Uuid,
    pub scales: std::collections::BTreeMap<String, u32>,
}

/// An environment was stopped (every instance stops) or started again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRunStateSet {
    pub env_id: Uuid,
    pub stopped: bool,
}

/// A host was put into (or taken out of) drain: its instances move elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostDrainSet {
    pub host_id: Uuid,
    pub draining: bool,
}

/// Removal of a resource identified by id (the stream tells the kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Removed {
    pub id: Uuid,
}

/// Every state change the control plane records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum Event {
    OrgCreated(OrgCreated),
    OrgDeleted(Removed),
    TokenCreated(TokenCreated),
    TokenRevoked(Removed),
    ProjectCreated(ProjectCreated),
    ProjectDeleted(Removed),
    AppCreated(AppCreated),
    AppUpdated(AppUpdated),
    AppDeleted(Removed),
    EnvCreated(EnvCreated),
    EnvDeleted(Removed),
    ReleaseCreated(ReleaseCreated),
    RouteCreated(RouteCreated),
    RouteDeleted(Removed),
    SecretsVersionCreated(SecretsVersionCreated),
    VolumeCreated(VolumeCreated),
    VolumeDeleted(Removed),
    HostRegistered(HostRegistered),
    HostRemoved(Removed),
    EnvDeployed(EnvDeployed),
    EnvScaled(EnvScaled),
    EnvRunStateSet(EnvRunStateSet),
    HostDrainSet(HostDrainSet),
    ClusterPrefixChosen(ClusterPrefixChosen),
    EnvIpv4Allocated(EnvIpv4Allocated),
    EnvIpv4Released(EnvIpv4Released),
    InstanceAddressAllocated(InstanceAddressAllocated),
    InstanceAddressReleased(InstanceAddressReleased),
}

/// Current schema version of each event type.
pub fn schema_version(event_type: &str) -> i32 {
    match event_type {
        "AppCreated" => 2,
        _ => 1,
    }
}

impl Event {
    /// Splits the event into (type name, current schema version, payload).
    pub fn encode(&self) -> (String, i32, Value) {
        let v = serde_json::to_value(self).expect("events always serialize");
        let Value::Object(mut m) = v else {
            unreachable!("tagged enums serialize to objects")
        };
        let t = match m.remove("type") {
            Some(Value::String(s)) => s,
            _ => unreachable!("tagged enums carry their tag"),
        };
        let payload = m.remove("payload").unwrap_or(Value::Null);
        let version = schema_version(&t);
        (t, version, payload)
    }

    /// Rebuilds an event from its stored form, upcasting old schema versions.
    pub fn decode(
        seq: i64,
        event_type: &str,
        version: i32,
        payload: Value,
    ) -> Result<Event, StoreError> {
        let err = |message: String| StoreError::Decode {
            seq,
            event_type: event_type.to_owned(),
            version,
            message,
        };
        let current = schema_version(event_type);
        if version > current {
            return Err(err(format!(
                "schema version {version} is newer than this binary understands ({current}); upgrade scaleboxd"
            )));
        }
        let payload = upcast(event_type, version, payload).map_err(err)?;
        serde_json::from_value(serde_json::json!({"type": event_type, "payload": payload}))
            .map_err(|e| err(e.to_string()))
    }
}

/// Converts a payload of an old schema version to the current one, one step at a time.
pub fn upcast(event_type: &str, mut version: i32, mut payload: Value) -> Result<Value, String> {
    while version < schema_version(event_type) {
        payload = match (event_type, version) {
            // v1 -> v2: apps gained an optional project and a description.
            ("AppCreated", 1) => {
                let Value::Object(mut m) = payload else {
                    return Err("payload is not an object".into());
                };
                m.entry("project_id").or_insert(Value::Null);
                m.entry("description")
                    .or_insert(Value::String(String::new()));
                Value::Object(m)
            }
            _ => return Err(format!("no upcaster from version {version}")),
        };
        version += 1;
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let e = Event::ProjectCreated(ProjectCreated {
            project_id: Uuid::new_v4(),
            org_id: Uuid::new_v4(),
            name: "p".into(),
        });
        let (t, v, p) = e.encode();
        assert_eq!((t.as_str(), v), ("ProjectCreated", 1));
        assert_eq!(Event::decode(1, &t, v, p).unwrap(), e);
    }

    #[test]
    fn instance_address_events_round_trip() {
        let host_id = Uuid::new_v4();
        for e in [
            Event::InstanceAddressAllocated(InstanceAddressAllocated {
                instance: "web-1".into(),
                host_id,
                address: "fd00:0:0:1::2".into(),
            }),
            Event::InstanceAddressReleased(InstanceAddressReleased {
                instance: "web-1".into(),
                host_id,
                address: "fd00:0:0:1::2".into(),
            }),
        ] {
            let (t, v, p) = e.encode();
            assert_eq!(v, 1);
            assert_eq!(Event::decode(1, &t, v, p).unwrap(), e);
        }
    }

    #[test]
    fn env_ipv4_events_round_trip() {
        let env_id = Uuid::new_v4();
        for e in [
            Event::EnvIpv4Allocated(EnvIpv4Allocated {
                env_id,
                address: "192.0.2.7".into(),
            }),
            Event::EnvIpv4Released(EnvIpv4Released {
                env_id,
                address: "192.0.2.7".into(),
            }),
        ] {
            let (t, v, p) = e.encode();
            assert_eq!(v, 1);
            assert_eq!(p["address"], "192.0.2.7");
            assert_eq!(Event::decode(1, &t, v, p).unwrap(), e);
        }
    }

    #[test]
    fn app_created_v1_upcasts() {
        let id = Uuid::new_v4();
        let org = Uuid::new_v4();
        let p = serde_json::json!({"app_id": id, "org_id": org, "name": "api"});
        let e = Event::decode(7, "AppCreated", 1, p).unwrap();
        assert_eq!(
            e,
            Event::AppCreated(AppCreated {
                app_id: id,
                org_id: org,
                name: "api".into(),
                project_id: None,
                description: String::new()
            })
        );
    }

    #[test]
    fn future_versions_and_garbage_are_refused() {
        let e = Event::decode(3, "AppCreated", 9, serde_json::json!({})).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        let e = Event::decode(3, "Nope", 1, serde_json::json!({})).unwrap_err();
        assert!(e.to_string().contains("#3"), "{e}");
    }
}
