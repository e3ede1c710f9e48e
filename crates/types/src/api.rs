//! Request and response bodies of the `/v1` API. Requests reject unknown fields; responses only
//! ever carry names and versions of secrets, never values.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Roles a token can have within its org.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and deleting the org.
    Admin,
    /// Every change except tokens and the org itself.
    Deployer,
    /// Read only.
    Reader,
    /// A host agent's credential (operator org only).
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Reader => "reader",
            Role::Agent => "agent",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "deployer" => Role::Deployer,
            "reader" => Role::Reader,
            "agent" => Role::Agent,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Org {
    pub id: String,
    pub name: String,
    /// The operator org manages hosts.
    pub operator: bool,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    pub name: String,
}

/// A newly created org with the first admin token for it (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrgCreated {
    pub org: Org,
    pub admin_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub project: Option<String>,
    pub description: String,
    pub release_count: i64,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    pub name: String,
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Fields to change; omitted fields keep their value. `project: null` removes the grouping.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub project: Option<Option<String>>,
    #[serde(default)]
    pub description: Option<String>,
    /// Optimistic concurrency: the app version this change is based on (or send `If-Match`).
    #[serde(default)]
    pub expected_version: Option<i64>,
}

mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Env {
    pub id: String,
    pub app: String,
    pub name: String,
    pub secrets_version: i64,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnv {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessType {
    pub name: String,
    /// The process type as declared in the normalised manifest.
    pub spec: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Release {
    pub id: String,
    pub app: String,
    /// Sequential per app: 1, 2, 3...
    pub number: i64,
    pub image_ref: String,
    pub image_digest: String,
    pub manifest_hash: String,
    /// The normalised manifest.
    pub manifest: Value,
    pub process_types: Vec<ProcessType>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// Image reference as the user wrote it (e.g. `registry.example/api:1.2`).
    pub image_ref: String,
    /// Content digest the release pins: `sha256:<64 hex>`.
    pub image_digest: String,
    /// The manifest (`scalebox.toml`) text.
    pub manifest: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// TLS passthrough routed by SNI.
    Tls,
    /// Raw TCP by listener port.
    Tcp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Route {
    pub id: String,
    pub app: String,
    pub env: String,
    pub kind: RouteKind,
    pub hostname: Option<String>,
    pub address: Option<String>,
    pub listener_port: i32,
    pub process_type: String,
    pub backend_port: i32,
    pub proxy_protocol_v2: bool,
    pub ipv4_required: bool,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoute {
    pub app: String,
    pub env: String,
    pub kind: RouteKind,
    /// Required for `tls`; optional for `tcp`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Bind to a specific address (e.g. a dedicated IPv4) instead of the shared listeners.
    #[serde(default)]
    pub address: Option<String>,
    /// Listener port. `tls` defaults to 443; `tcp` ports are allocated from the configured
    /// range when omitted.
    #[serde(default)]
    pub listener_port: Option<i32>,
    pub process_type: String,
    pub backend_port: i32,
    #[serde(default)]
    pub proxy_protocol_v2: bool,
    #[serde(default)]
    pub ipv4_required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretsVersion {
    pub version: i64,
    /// Secret names in this version (values are never returned).
    pub names: Vec<String>,
    pub actor: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Secrets {
    pub app: String,
    pub env: String,
    /// Current version (0: no secrets yet).
    pub version: i64,
    pub names: Vec<String>,
}

/// Creates a new secrets version from the current one: `set` adds or replaces, `unset` removes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSecrets {
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
    /// Optimistic concurrency: the secrets version this change is based on.
    #[serde(default)]
    pub expected_version: Option<i64>,
}

/// Secret values of one version, for the agent delivering them to an instance.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretsMaterial {
    pub version: i64,
    pub values: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    pub size_gb: i32,
    pub app: Option<String>,
    pub env: Option<String>,
    pub host: Option<String>,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    pub size_gb: i32,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub address: String,
    pub cpus: i32,
    pub memory_mb: i64,
    pub labels: Value,
    pub version: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHost {
    pub name: String,
    pub address: String,
    pub cpus: i32,
    pub memory_mb: i64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A registered host and its agent credential (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostCreated {
    pub host: Host,
    pub agent_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// First characters of the token, to recognise it.
    pub prefix: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: Role,
}

/// A new token; `token` is shown only in this response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: Token,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    pub stream: String,
    pub stream_version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    /// Who did it (`token:<name>` or `system`).
    pub actor: String,
    pub occurred_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `after` to get the next page; null when this page is the last.
    pub next_after: Option<i64>,
}

/// Who the calling token is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub org: String,
    pub role: Role,
    /// `token:<name>`: how the token appears as an actor in the audit log.
    pub actor: String,
    pub operator: bool,
}

/// A list response: `{"items": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
}
