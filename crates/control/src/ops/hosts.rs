//! Host records, managed by admins of the operator org. Registering a host issues its agent
//! credential (shown once); removing it revokes the credential. Reads show each host's overlay
//! end as its agent last reported it (`ops::overlay`).

use scalebox_store::Event;
use scalebox_store::events::HostRegistered;
use scalebox_types::api::{self, Role};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{append, check_name, overlay, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

/// Columns read by [`host`], from [`FROM`].
const COLS: &str =
    "h.id, h.name, h.address, h.cpus, h.memory_mb, h.labels, h.version, h.created_at,
     h.draining, h.ipv6_prefix, s.overlay_public_key, s.overlay_endpoint, s.overlay_peers";
/// Hosts with their operational status (none before the first report).
const FROM: &str = "v_hosts h LEFT JOIN host_status s ON s.host_id = h.id";

fn host(
    r: &Row,
    peers: Vec<api::OverlayPeerHealth>,
    names: &std::collections::HashMap<Uuid, String>,
) -> api::Host {
    api::Host {
        id: r.get::<_, Uuid>(0).to_string(),
        name: r.get(1),
        address: r.get(2),
        cpus: r.get(3),
        memory_mb: r.get(4),
        labels: r.get(5),
        draining: r.get(8),
        ipv6_prefix: r.get(9),
        overlay: overlay::host_overlay(r.get(10), r.get(11), peers, names),
        version: r.get(6),
        created_at: ts(r.get(7)),
    }
}

/// The hosts matching `filter` (SQL after `FROM`, over `h` and `s`), unreachable peers named.
async fn read(
    c: &impl GenericClient,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<api::Host>, ApiError> {
    let rows = c
        .query(&format!("SELECT {COLS} FROM {FROM} {filter}"), params)
        .await?;
    let peers: Vec<_> = rows
        .iter()
        .map(|r| overlay::stored_peers(r.get(12)))
        .collect();
    let ids: Vec<Uuid> = peers.iter().flat_map(|p| overlay::unreachable(p)).collect();
    let names = overlay::host_names(c, &ids).await?;
    Ok(rows
        .iter()
        .zip(peers)
        .map(|(r, p)| host(r, p, &names))
        .collect())
}

/// The host with id `id` (it exists).
async fn by_id(c: &impl GenericClient, id: Uuid) -> Result<api::Host, ApiError> {
    read(c, "WHERE h.id = $1", &[&id])
        .await?
        .pop()
        .ok_or_else(ApiError::internal)
}

pub async fn list(c: &impl GenericClient, p: &Principal) -> Result<Vec<api::Host>, ApiError> {
    p.must_operator()?;
    read(c, "ORDER BY h.name", &[]).await
}

pub async fn get(c: &impl GenericClient, p: &Principal, name: &str) -> Result<api::Host, ApiError> {
    p.must_operator()?;
    read(c, "WHERE h.name = $1", &[&name])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("host {name:?}")))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    body: api::CreateHost,
) -> Result<Reply, ApiError> {
    p.must_operator()?;
    register(ctl, p, idem, body).await
}

/// A new host joining with a join token (`scaleboxd agent --join`): registers it and returns
/// its own agent credential.
pub async fn join(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    body: api::JoinHost,
) -> Result<Reply, ApiError> {
    if !(p.operator && p.role == Role::Join) {
        return Err(ApiError::forbidden(
            "joining a host needs a join token of the operator org (`sb tokens create --role join`)",
        ));
    }
    let body = api::CreateHost {
        name: body.name,
        address: body.address,
        cpus: body.cpus,
        memory_mb: body.memory_mb,
        labels: body.labels,
    };
    register(ctl, p, idem, body).await
}

/// Registers a host straight in the database as the operator (`scaleboxd up` registering its
/// own machine). Returns the host's agent token.
pub async fn register_direct(ctl: &Control, body: api::CreateHost) -> Result<String, ApiError> {
    let row = ctl
        .db
        .client()
        .await?
        .query_one("SELECT id, name FROM v_orgs WHERE operator", &[])
        .await?;
    let p = Principal {
        token_id: Uuid::nil(),
        org_id: row.get(0),
        org_name: row.get(1),
        operator: true,
        role: Role::Admin,
        host_id: None,
        actor: "system:up".into(),
    };
    let idem = Idempotency {
        key: None,
        fingerprint: String::new(),
    };
    let reply = register(ctl, &p, &idem, body).await?;
    reply.body["agent_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(ApiError::internal)
}

/// The new host's /64 of the cluster's ULA /48 (IPAM, `scalebox-overlay`): the /48 is chosen
/// once (an event), the /64s held by registered hosts are never handed out again while held.
async fn allocate_prefix(
    tx: &tokio_postgres::Transaction<'_>,
    p: &Principal,
    host_id: Uuid,
) -> Result<String, ApiError> {
    use scalebox_overlay::{Allocation, Ipam, IpamConfig, Ipv6Net};
    // One allocation at a time: concurrent registrations would pick the same subnet.
    const IPAM_LOCK: i64 = 0x5ca1_eb0c_0004;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IPAM_LOCK])
        .await?;
    let ula: String = match tx
        .query_opt("SELECT ula FROM v_cluster WHERE id = 1", &[])
        .await?
    {
        Some(r) => r.get(0),
        None => {
            let mut id = [0u8; 5];
            getrandom::fill(&mut id).map_err(|_| ApiError::internal())?;
            let prefix = scalebox_overlay::ula::generate(id).to_string();
            append(
                tx,
                p,
                "cluster".into(),
                0,
                None,
                &[Event::ClusterPrefixChosen(
                    scalebox_store::events::ClusterPrefixChosen {
                        prefix: prefix.clone(),
                    },
                )],
            )
            .await?;
            prefix
        }
    };
    let cluster: Ipv6Net = ula.parse().map_err(|_| ApiError::internal())?;
    let held: Vec<Allocation> = tx
        .query(
            "SELECT id, ipv6_prefix FROM v_hosts WHERE ipv6_prefix IS NOT NULL",
            &[],
        )
        .await?
        .iter()
        .filter_map(|r| {
            let prefix: Ipv6Net = r.get::<_, String>(1).parse().ok()?;
            Some(Allocation::HostPrefix {
                host: r.get::<_, Uuid>(0).to_string(),
                index: prefix.addr().segments()[3],
                prefix,
            })
        })
        .collect();
    let mut ipam = Ipam::replay(IpamConfig::new(cluster), &held).map_err(|e| {
        tracing::error!(error = %e, "the hosts' IPv6 prefixes do not replay");
        ApiError::internal()
    })?;
    let out = ipam
        .allocate_host_prefix(&host_id.to_string())
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok(out.value.to_string())
}

async fn register(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    body: api::CreateHost,
) -> Result<Reply, ApiError> {
    check_name("host name", &body.name)?;
    body.address.parse::<std::net::IpAddr>().map_err(|_| {
        ApiError::bad_request(format!("address {:?} is not an IP address", body.address))
    })?;
    if !(1..=4096).contains(&body.cpus) || !(64..=1 << 26).contains(&body.memory_mb) {
        return Err(ApiError::bad_request(
            "cpus must be 1-4096 and memory_mb 64-67108864",
        ));
    }
    let p = p.clone();
    ctl.command(p.org_id, idem, move |tx| {
        Box::pin(async move {
            let host_id = Uuid::new_v4();
            let labels = serde_json::to_value(&body.labels).expect("maps serialize");
            let ipv6_prefix = allocate_prefix(tx, &p, host_id).await?;
            append(
                tx,
                &p,
                format!("host:{host_id}"),
                0,
                None,
                &[Event::HostRegistered(HostRegistered {
                    host_id,
                    name: body.name.clone(),
                    address: body.address,
                    cpus: body.cpus,
                    memory_mb: body.memory_mb,
                    labels,
                    ipv6_prefix: Some(ipv6_prefix),
                })],
            )
            .await
            .map_err(|e| {
                if e.status == axum::http::StatusCode::CONFLICT {
                    ApiError::conflict(format!(
                        "a host named {:?} is already registered; remove it first (`DELETE /v1/hosts/{}`) or pick another name",
                        body.name, body.name
                    ))
                } else {
                    e
                }
            })?;
            let agent_name = format!("agent-{}", body.name);
            let (_, token) = super::tokens::append_token(
                tx,
                &p.actor,
                p.org_id,
                &agent_name,
                Role::Agent,
                Some(host_id),
            )
            .await?;
            Ok(Reply::created(&api::HostCreated {
                host: by_id(tx, host_id).await?,
                agent_token: token,
            }))
        })
    })
    .await
}

/// Puts a host into drain (its instances move elsewhere, it takes no new ones) or out of it.
pub async fn set_draining(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    name: &str,
    draining: bool,
) -> Result<Reply, ApiError> {
    p.must_operator()?;
    let (p, name) = (p.clone(), name.to_owned());
    ctl.command(p.org_id, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_opt(
                    "SELECT id, version FROM v_hosts WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("host {name:?}")))?;
            let id: Uuid = row.get(0);
            append(
                tx,
                &p,
                format!("host:{id}"),
                row.get(1),
                None,
                &[Event::HostDrainSet(scalebox_store::events::HostDrainSet {
                    host_id: id,
                    draining,
                })],
            )
            .await?;
            Ok(Reply::ok(&by_id(tx, id).await?))
        })
    })
    .await
}

pub async fn delete(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    name: &str,
) -> Result<Reply, ApiError> {
    p.must_operator()?;
    let (p, name) = (p.clone(), name.to_owned());
    ctl.command(p.org_id, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_opt(
                    "SELECT id, version FROM v_hosts WHERE name = $1 FOR UPDATE",
                    &[&name],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("host {name:?}")))?;
            let id: Uuid = row.get(0);
            remove(tx, &p, "host", id, row.get(1), Event::HostRemoved).await
        })
    })
    .await
}
