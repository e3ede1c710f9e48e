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
    /// Joins new hosts (`POST /v1/agent/join`) and nothing else (operator org only).
    Join,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Reader => "reader",
            Role::Agent => "agent",
            Role::Join => "join",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "deployer" => Role::Deployer,
            "reader" => Role::Reader,
            "agent" => Role::Agent,
            "join" => Role::Join,
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
    /// The env's dedicated public IPv4 (the IPv4 add-on, `POST .../envs/{env}/ipv4`); `null`
    /// when it has none.
    #[serde(default)]
    pub ipv4: Option<String>,
    pub version: i64,
    pub created_at: String,
}

/// An environment's dedicated public IPv4 address from the operator's pool. The edge binds the
/// env's IPv4 routes (`ipv4_required`) on it and forwards to the instances over IPv6.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvIpv4 {
    pub address: String,
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
    /// Bind to a specific address instead of the shared listeners. Addresses of the operator's
    /// IPv4 pool are refused: enable the env's dedicated IPv4 and set `ipv4_required` instead.
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
    /// Also served over IPv4: on the env's dedicated IPv4 when it holds one, else on the edge's
    /// shared IPv4 address.
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

/// A point-in-time copy of a volume's disk, kept on the volume's host.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeSnapshot {
    pub id: String,
    pub volume: String,
    pub host: Option<String>,
    pub size_bytes: i64,
    pub created_at: String,
}

/// An off-host copy of a snapshot in the backup target.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VolumeBackup {
    pub id: String,
    pub volume: String,
    pub snapshot: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    pub bytes_done: i64,
    pub bytes_total: i64,
    pub size_bytes: Option<i64>,
    pub image_sha256: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// `POST …/volumes/{volume}/backups`: back up this snapshot, or (none) a new one taken now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeBackup {
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// `POST …/volumes/{volume}/restore`: from a backup (a succeeded backup id, or `latest`) or a
/// snapshot, either into a new volume (`into`), or (backups only) the volume's own disk anew on
/// another host after its host was lost, its instances then running there.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreVolume {
    /// A succeeded backup id, or `latest`. Give either this or `snapshot`.
    #[serde(default)]
    pub backup: Option<String>,
    /// A snapshot id (only with `into`: the copy is made on the snapshot's host).
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Restore into this new volume instead of re-making the volume's own disk.
    #[serde(default)]
    pub into: Option<String>,
    /// Target host (default: a live host; for the volume itself, one other than its lost host).
    #[serde(default)]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub address: String,
    pub cpus: i32,
    pub memory_mb: i64,
    pub labels: Value,
    /// Draining: takes no new instances; its instances move elsewhere.
    pub draining: bool,
    /// The host's /64 of the cluster's IPv6 /48 (IPAM).
    #[serde(default)]
    pub ipv6_prefix: Option<String>,
    /// The host's overlay end (key, endpoint, peer health), once its agent reported it.
    #[serde(default)]
    pub overlay: Option<HostOverlay>,
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

/// A host's overlay state in `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostOverlay {
    pub public_key: String,
    pub endpoint: String,
    /// Names of the peers this host cannot reach (degraded: their instances are not routed by
    /// an edge on this host).
    pub unreachable: Vec<String>,
    /// The peers as last reported.
    pub peers: Vec<OverlayPeerHealth>,
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

// ---- deploys, status ---------------------------------------------------------------------------

/// Promotes a release to an environment and starts a rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Release number; the app's newest release when omitted. Deploying an older number is a
    /// rollback (nothing is rebuilt).
    #[serde(default)]
    pub release: Option<i64>,
    /// Seconds the rollout may take before it is stopped and reported failed (default 600).
    #[serde(default)]
    pub deadline_s: Option<u32>,
    /// Extra instances a process type may run above its scale during the rollout (default 1).
    #[serde(default)]
    pub max_surge: Option<u32>,
    /// Ready instances a process type may lose during the rollout (default 0: new instances
    /// become ready before old ones stop).
    #[serde(default)]
    pub max_unavailable: Option<u32>,
}

/// One rollout of an environment to a (release, secrets version).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    /// Release number.
    pub release: i64,
    pub secrets_version: i64,
    /// `pending`, `release_command`, `rolling`, `succeeded`, `failed` or `superseded`.
    pub state: String,
    /// Why it failed, or what it is waiting for.
    pub reason: String,
    /// What triggered it: `deploy` or `secrets`.
    pub cause: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Sets instance counts of process types (others keep theirs).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Process type name → instance count (0-100).
    pub scales: std::collections::BTreeMap<String, u32>,
}

/// One instance as the control plane sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InstanceStatus {
    pub id: String,
    pub process_type: String,
    /// `service`, or `release` for a release command run.
    pub kind: String,
    pub release: i64,
    pub secrets_version: i64,
    pub host: String,
    /// `run` or `stop`.
    pub desired: String,
    /// As last reported by the host agent (`pending` until then).
    pub state: String,
    pub ready: bool,
    pub reason: String,
    pub address: Option<String>,
    /// The IPv6 address IPAM allocated to the instance in its host's /64 (none on hosts
    /// registered before IPAM).
    #[serde(default)]
    pub ipv6_address: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub created_at: String,
}

/// Desired vs actual of one process type.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProcessStatus {
    pub name: String,
    /// Desired instance count.
    pub desired: u32,
    /// Ready instances of the target release.
    pub ready: u32,
    /// Instances meant to run (any release).
    pub running: u32,
}

/// An environment's deploy state: what should run, what runs, and why they differ.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvStatus {
    pub app: String,
    pub env: String,
    /// Release number the environment is promoted to.
    pub release: Option<i64>,
    /// Release number currently serving (last successful deployment).
    pub serving_release: Option<i64>,
    pub stopped: bool,
    pub converged: bool,
    /// Why it is not converged (empty when it is).
    pub reasons: Vec<String>,
    pub deployment: Option<Deployment>,
    pub processes: Vec<ProcessStatus>,
    pub instances: Vec<InstanceStatus>,
}

// ---- host agents and the edge --------------------------------------------------------------------

/// A host joining the cluster with a join token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinHost {
    pub name: String,
    /// Address other hosts and the edge reach this host's instances through.
    pub address: String,
    pub cpus: i32,
    pub memory_mb: i64,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Everything one host should run. `spec` has the agent's instance spec shape (docs/agent.md).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentDesired {
    /// Increases whenever the content changes; pass it back as `after` to wait for the next.
    pub generation: i64,
    pub instances: Vec<AgentInstance>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInstance {
    pub id: String,
    pub spec: Value,
}

/// What a host agent reports about its instances (also its heartbeat).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    pub instances: Vec<ReportedInstance>,
    /// Where the control plane reaches this agent's local API (for instance logs).
    #[serde(default)]
    pub agent_api: Option<AgentApi>,
    /// This host's end of the WireGuard overlay and what it sees of its peers (docs/overlay.md).
    #[serde(default)]
    pub overlay: Option<OverlayReport>,
}

/// A host's overlay device as its agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverlayReport {
    /// The host's WireGuard public key (44-character base64).
    pub public_key: String,
    /// Where other hosts send this host's tunnel traffic: `ip:port` on the underlay.
    pub endpoint: String,
    /// One entry per peer the agent has configured.
    #[serde(default)]
    pub peers: Vec<OverlayPeerHealth>,
}

/// The health of one overlay peer as seen from the reporting host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OverlayPeerHealth {
    /// The peer's host id.
    pub host: String,
    /// Traffic (data or keepalives) arrived from the peer within the agent's peer timeout.
    pub reachable: bool,
    /// Seconds since the last completed handshake; none before the first one.
    #[serde(default)]
    pub last_handshake_secs: Option<u64>,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
}

/// `GET /v1/agent/overlay`: what a host's overlay device should look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentOverlay {
    /// This host's id.
    pub host: String,
    /// The cluster's ULA /48.
    pub cluster_prefix: String,
    /// This host's /64 (instances and the host's own overlay address `::1`).
    pub prefix: String,
    /// Every other registered host that has reported its overlay key and endpoint.
    pub peers: Vec<AgentOverlayPeer>,
    /// For each org with an instance on this host, the overlay addresses of all its instances
    /// in the cluster (org isolation, docs/networking.md).
    #[serde(default)]
    pub isolation: Vec<OrgInstanceAddresses>,
}

/// The instance addresses of one org.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgInstanceAddresses {
    pub org: String,
    pub addresses: Vec<String>,
}

/// One peer of the full mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentOverlayPeer {
    pub host: String,
    pub name: String,
    pub public_key: String,
    /// `ip:port` on the underlay.
    pub endpoint: String,
    /// Networks routed to this peer (its /64).
    pub allowed_ips: Vec<String>,
}

/// A host agent's local API: base URL and bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentApi {
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedInstance {
    pub id: String,
    pub state: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom: bool,
    /// Last health check error, if failing.
    #[serde(default)]
    pub health_error: Option<String>,
    /// Last lines of output, sent once the instance has ended.
    #[serde(default)]
    pub last_logs: Vec<String>,
}

/// A command to run inside one instance of an environment.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The instance; default: the first ready instance of `process`.
    #[serde(default)]
    pub instance: Option<String>,
    /// Process type to pick an instance of (default `web`) when `instance` is not given.
    #[serde(default)]
    pub process: Option<String>,
    /// The command and its arguments (run without a shell; use `["sh", "-c", "..."]` for one).
    pub argv: Vec<String>,
    /// Seconds to wait for it (1-3600, default 60).
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// What a command run inside an instance printed and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub instance: String,
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why it could not run.
    pub error: Option<String>,
    pub timed_out: bool,
    /// Output beyond 1 MiB per stream was dropped.
    pub truncated: bool,
}
