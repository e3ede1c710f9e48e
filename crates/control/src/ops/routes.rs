//! Routes: (hostname or address + listener port) → (env, process type, backend port). A hostname
//! belongs to at most one environment across all orgs; raw-TCP ports come from the configured
//! range; a dedicated IPv4 (`ops::ipv4`) is bound only for the env holding it.

use scalebox_store::Event;
use scalebox_store::events::RouteCreated;
use scalebox_types::api::{self, RouteKind};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{append, check_name, env_id, parse_id, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

const COLS: &str = "r.id, a.name, e.name, r.kind, r.hostname, r.address, r.listener_port, r.process_type, \
                    r.backend_port, r.proxy_protocol_v2, r.ipv4_required, r.version, r.created_at";
const FROM: &str = "v_routes r JOIN v_apps a ON a.id = r.app_id JOIN v_envs e ON e.id = r.env_id";

const TCP_PORT_LOCK: i64 = 0x5ca1_eb0c_0002;

fn route(r: &Row) -> api::Route {
    api::Route {
        id: r.get::<_, Uuid>(0).to_string(),
        app: r.get(1),
        env: r.get(2),
        kind: if r.get::<_, &str>(3) == "tcp" {
            RouteKind::Tcp
        } else {
            RouteKind::Tls
        },
        hostname: r.get(4),
        address: r.get(5),
        listener_port: r.get(6),
        process_type: r.get(7),
        backend_port: r.get(8),
        proxy_protocol_v2: r.get(9),
        ipv4_required: r.get(10),
        version: r.get(11),
        created_at: ts(r.get(12)),
    }
}

/// Checks a DNS hostname (lowercase letters, digits, '-', dots between labels; wildcards are not
/// supported). Returns it lowercased.
pub fn check_hostname(h: &str) -> Result<String, ApiError> {
    let h = h.trim_end_matches('.').to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.contains('.')
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(h)
    } else {
        Err(ApiError::bad_request(format!(
            "hostname {:?} is not a valid DNS name (labels of a-z, 0-9, '-', separated by dots, e.g. api.example.com)",
            h.chars().take(100).collect::<String>()
        )))
    }
}

fn check_port(what: &str, p: i32) -> Result<(), ApiError> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {p} is out of range; expected 1-65535"
        )))
    }
}

/// Refuses an explicit listen `address` that is a dedicated IPv4 (in the operator's pool, or held
/// by an env): those are handed out and bound only through the IPv4 add-on, so a route can never
/// outlive its env's hold on one or listen on another env's. Says the same whoever holds it.
async fn check_dedicated(
    tx: &tokio_postgres::Transaction<'_>,
    pool: &scalebox_overlay::Ipv4Pool,
    address: &str,
) -> Result<(), ApiError> {
    let Ok(v4) = address.parse::<std::net::Ipv4Addr>() else {
        return Ok(());
    };
    let held = tx
        .query_opt("SELECT 1 FROM v_envs WHERE ipv4 = $1", &[&v4.to_string()])
        .await?
        .is_some();
    if !held && !pool.contains(v4) {
        return Ok(());
    }
    Err(ApiError::conflict(format!(
        "address {v4} is in the operator's dedicated IPv4 pool and cannot be named by a route; \
         enable the environment's IPv4 (`sb envs ipv4 enable`) and create the route with \
         ipv4_required and no address: the edge then binds it on the environment's address"
    )))
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
) -> Result<Vec<api::Route>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let rows = c
        .query(
            &format!("SELECT {COLS} FROM {FROM} WHERE r.org_id = $1 ORDER BY r.created_at, r.id"),
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(route).collect())
}

pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    id: &str,
) -> Result<api::Route, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let id = parse_id("route", id)?;
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM {FROM} WHERE r.org_id = $1 AND r.id = $2"),
            &[&org, &id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("route {id}")))?;
    Ok(route(&row))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    body: api::CreateRoute,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    check_name("process_type", &body.process_type)?;
    check_port("backend_port", body.backend_port)?;
    let hostname = match (&body.kind, &body.hostname) {
        (_, Some(h)) => Some(check_hostname(h)?),
        (RouteKind::Tls, None) if body.address.is_none() => {
            return Err(ApiError::bad_request(
                "a tls route needs a hostname (or an address to bind to)",
            ));
        }
        _ => None,
    };
    if let Some(a) = &body.address {
        a.parse::<std::net::IpAddr>()
            .map_err(|_| ApiError::bad_request(format!("address {a:?} is not an IP address")))?;
    }
    if let Some(port) = body.listener_port {
        check_port("listener_port", port)?;
    }
    let range = ctl.config.tcp_port_range;
    let pool = ctl.config.ipv4_pool.clone();
    let (p, kind) = (p.clone(), body.kind);
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (app_id, env_id, _) = env_id(tx, org, &body.app, &body.env).await?;
            if let Some(a) = &body.address {
                check_dedicated(tx, &pool, a).await?;
            }
            let listener_port = match (kind, body.listener_port) {
                (_, Some(port)) => port,
                (RouteKind::Tls, None) => 443,
                (RouteKind::Tcp, None) => {
                    // Serialise allocation across concurrent creators.
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&TCP_PORT_LOCK])
                        .await?;
                    let used: Vec<i32> = tx
                        .query("SELECT listener_port FROM v_routes WHERE kind = 'tcp'", &[])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    (range.0 as i32..=range.1 as i32)
                        .find(|p| !used.contains(p))
                        .ok_or_else(|| {
                            ApiError::conflict(format!(
                                "no free raw-TCP port left in the configured range {}-{}",
                                range.0, range.1
                            ))
                        })?
                }
            };
            let id = Uuid::new_v4();
            let kind_s = if kind == RouteKind::Tcp { "tcp" } else { "tls" };
            append(
                tx,
                &p,
                format!("route:{id}"),
                0,
                None,
                &[Event::RouteCreated(RouteCreated {
                    route_id: id,
                    org_id: org,
                    app_id,
                    env_id,
                    kind: kind_s.into(),
                    hostname,
                    address: body.address,
                    listener_port,
                    process_type: body.process_type,
                    backend_port: body.backend_port,
                    proxy_protocol_v2: body.proxy_protocol_v2,
                    ipv4_required: body.ipv4_required,
                })],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {COLS} FROM {FROM} WHERE r.id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Reply::created(&route(&row)))
        })
    })
    .await
}

pub async fn delete(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    let id = parse_id("route", id)?;
    let p = p.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_opt(
                    "SELECT version FROM v_routes WHERE org_id = $1 AND id = $2 FOR UPDATE",
                    &[&org, &id],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("route {id}")))?;
            remove(tx, &p, "route", id, row.get(0), Event::RouteDeleted).await
        })
    })
    .await
}
