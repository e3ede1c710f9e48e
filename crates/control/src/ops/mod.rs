//! Per-resource operations: validation, reads scoped by org, and commands that append events.
//! Handlers in `api` only parse requests and call these.

pub mod agent;
pub mod agent_http;
pub mod apps;
pub mod audit;
pub mod deploys;
pub mod envs;
pub mod exec;
pub mod hosts;
pub mod image_upload;
pub mod images;
pub mod instance_ipam;
pub mod ipv4;
pub mod logs;
pub mod orgs;
pub mod overlay;
pub mod projects;
pub mod releases;
pub mod routes;
pub mod secrets;
pub mod tokens;
pub mod volume_data;
pub mod volumes;

use scalebox_store::{Event, log};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::ApiError;
use crate::auth::Principal;

/// RFC 3339 timestamp.
pub fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Validates a user-supplied resource name.
pub fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    scalebox_types::name::validate(name).map_err(|e| ApiError::bad_request(format!("{what}: {e}")))
}

/// Appends events to `stream`. `expected` is the version the caller based the change on
/// (`If-Match`/`expected_version`), defaulting to `current`.
pub async fn append(
    tx: &Transaction<'_>,
    p: &Principal,
    stream: String,
    current: i64,
    expected: Option<i64>,
    events: &[Event],
) -> Result<i64, ApiError> {
    let base = expected.unwrap_or(current);
    if base != current {
        return Err(ApiError::conflict(format!(
            "stale version: you sent version {base} but the resource is at version {current}; reload and retry"
        )));
    }
    log::append(tx, &p.actor, Some(p.org_id), &stream, base, events).await?;
    Ok(base + events.len() as i64)
}

/// Appends the removal of resource `id` (stream `<kind>:<id>`, currently at `version`) and
/// answers 204.
pub async fn remove(
    tx: &Transaction<'_>,
    p: &Principal,
    kind: &str,
    id: Uuid,
    version: i64,
    event: fn(scalebox_store::events::Removed) -> Event,
) -> Result<crate::command::Reply, ApiError> {
    append(
        tx,
        p,
        format!("{kind}:{id}"),
        version,
        None,
        &[event(scalebox_store::events::Removed { id })],
    )
    .await?;
    Ok(crate::command::Reply::no_content())
}

/// An app of the org, by name: (id, version).
pub async fn app_id(
    c: &impl GenericClient,
    org: Uuid,
    name: &str,
) -> Result<(Uuid, i64), ApiError> {
    let row = c
        .query_opt(
            "SELECT id, version FROM v_apps WHERE org_id = $1 AND name = $2",
            &[&org, &name],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("app {name:?}")))?;
    Ok((row.get(0), row.get(1)))
}

/// An environment of an app of the org: (app id, env id, env version).
pub async fn env_id(
    c: &impl GenericClient,
    org: Uuid,
    app: &str,
    env: &str,
) -> Result<(Uuid, Uuid, i64), ApiError> {
    let (app_id, _) = app_id(c, org, app).await?;
    let row = c
        .query_opt(
            "SELECT id, version FROM v_envs WHERE org_id = $1 AND app_id = $2 AND name = $3",
            &[&org, &app_id, &env],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("environment {env:?} of app {app:?}")))?;
    Ok((app_id, row.get(0), row.get(1)))
}

/// Parses an id from a URL segment; a malformed id is simply not found.
pub fn parse_id(what: &str, s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::not_found(format!("{what} {s:?}")))
}

/// Where an environment-scoped command applies.
#[derive(Debug, Clone, Copy)]
pub struct EnvPath<'a> {
    pub org: &'a str,
    pub app: &'a str,
    pub env: &'a str,
}
