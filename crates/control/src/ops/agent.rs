//! What host agents and edges pull and push: each host's desired instances (long-polled by
//! generation), instance reports (which are also the heartbeat, and carry the host's overlay end:
//! `ops::overlay`), and the edge routing table (route backends = ready instances, minus those on
//! hosts the edge's host cannot reach over the overlay; IPv4 listeners on envs' dedicated
//! addresses). Agents only ever see and change their own host's instances.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use scalebox_types::api;
use serde_json::{Value, json};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::auth::Principal;
use crate::ops::overlay;
use crate::ops::secrets::material;
use crate::orchestrate::feed;
use crate::{ApiError, Control};

/// Longest long-poll wait a caller may ask for.
pub const MAX_WAIT_S: u64 = 60;

/// The instances host `host` should run, with secret values filled in.
async fn host_desired(
    ctl: &Control,
    c: &impl GenericClient,
    host: Uuid,
) -> Result<(String, Vec<api::AgentInstance>), ApiError> {
    let rows = c
        .query(
            "SELECT id, org_id, env_id, secrets_version, spec, secrets_as_env FROM instances
             WHERE host_id = $1 AND (desired = 'run' OR stop_at > now()) ORDER BY id",
            &[&host],
        )
        .await?;
    let mut hasher_input = String::new();
    let mut cache: HashMap<(Uuid, i64), BTreeMap<String, String>> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (id, org, env, sv): (String, Uuid, Uuid, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let mut spec: Value = r.get(4);
        // The hash covers the spec and the secrets *version*, never the values.
        hasher_input.push_str(&format!("{id}\n{sv}\n{spec}\n"));
        let secrets = match cache.get(&(env, sv)) {
            Some(s) => s.clone(),
            None => {
                let s = material(ctl, c, org, env, sv).await?;
                cache.insert((env, sv), s.clone());
                s
            }
        };
        if r.get::<_, bool>(5)
            && let Some(e) = spec["env"].as_object_mut()
        {
            for (k, v) in &secrets {
                e.insert(k.clone(), Value::String(v.clone()));
            }
        }
        spec["secrets"] = json!(secrets);
        out.push(api::AgentInstance { id, spec });
    }
    Ok((feed::hash(hasher_input.as_bytes()), out))
}

/// Waits until `read` yields a generation above `after` or `wait` passes, re-reading whenever
/// state changes (and every second, for changes made by other control plane processes).
async fn long_poll<T, F, Fut>(ctl: &Control, after: i64, wait: u64, read: F) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(i64, T), ApiError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.min(MAX_WAIT_S));
    let mut changes = ctl.changes.subscribe();
    let mut stopping = ctl.stopping.subscribe();
    loop {
        changes.borrow_and_update();
        let (generation, value) = read().await?;
        if generation > after
            || tokio::time::Instant::now() >= deadline
            || *stopping.borrow_and_update()
        {
            return Ok(value);
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = stopping.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `GET /v1/agent/desired?after=G&wait=S`.
pub async fn desired(
    ctl: &Control,
    p: &Principal,
    after: i64,
    wait: u64,
) -> Result<api::AgentDesired, ApiError> {
    let host = p.must_agent()?;
    long_poll(ctl, after, wait, || async {
        let c = ctl.db.client().await?;
        let (h, instances) = host_desired(ctl, &**c, host).await?;
        let generation = feed::generation(&**c, &format!("host:{host}"), &h).await?;
        Ok((
            generation,
            api::AgentDesired {
                generation,
                instances,
            },
        ))
    })
    .await
}

const STATES: &[&str] = &[
    "pending",
    "preparing",
    "booting",
    "running",
    "ready",
    "stopping",
    "exited",
    "failed",
];

/// `POST /v1/agent/report`: the host's instances as they are; also the host's heartbeat.
pub async fn report(ctl: &Control, p: &Principal, body: api::AgentReport) -> Result<(), ApiError> {
    let host = p.must_agent()?;
    if body.instances.len() > 10_000 {
        return Err(ApiError::bad_request(
            "a report holds at most 10000 instances",
        ));
    }
    for i in &body.instances {
        if !STATES.contains(&i.state.as_str()) {
            return Err(ApiError::bad_request(format!(
                "instance {:?}: unknown state {:?}; one of {}",
                i.id.chars().take(64).collect::<String>(),
                i.state.chars().take(32).collect::<String>(),
                STATES.join(", ")
            )));
        }
    }
    let overlay = body.overlay.as_ref().map(overlay::check).transpose()?;
    let mut client = ctl.db.client().await?;
    let tx = client.transaction().await?;
    let (api_url, api_token) = match &body.agent_api {
        Some(a) => {
            if !(a.url.starts_with("http://") || a.url.starts_with("https://")) || a.url.len() > 200
            {
                return Err(ApiError::bad_request(
                    "agent_api.url must be an http(s) URL of at most 200 characters",
                ));
            }
            if !(16..=200).contains(&a.token.len()) || a.token.chars().any(char::is_whitespace) {
                return Err(ApiError::bad_request(
                    "agent_api.token must be 16-200 characters without whitespace",
                ));
            }
            (Some(a.url.clone()), Some(a.token.clone()))
        }
        None => (None, None),
    };
    tx.execute(
        "INSERT INTO host_status (host_id, last_seen, api_url, api_token) VALUES ($1, now(), $2, $3)
         ON CONFLICT (host_id) DO UPDATE SET last_seen = now(),
           api_url = coalesce(EXCLUDED.api_url, host_status.api_url),
           api_token = coalesce(EXCLUDED.api_token, host_status.api_token)",
        &[&host, &api_url, &api_token],
    )
    .await?;
    // A change in the peers this host cannot reach changes its edge table.
    let mut changed = match &overlay {
        Some(o) if overlay::store(&tx, host, o).await? => 1,
        _ => 0,
    };
    for i in &body.instances {
        let logs = json!(i.last_logs.iter().rev().take(20).rev().collect::<Vec<_>>());
        let reason: String = i.reason.chars().take(2000).collect();
        let health: Option<String> = i
            .health_error
            .as_ref()
            .map(|h| h.chars().take(500).collect());
        // Only this host's instances; a lost instance stays lost.
        changed += tx
            .execute(
                "UPDATE instances SET state = $3, reason = CASE WHEN desired = 'run' THEN $4 ELSE reason END,
                        ready = $5 AND desired = 'run', address = $6, exit_code = $7, signal = $8, health_error = $9,
                        last_logs = CASE WHEN jsonb_array_length($10::jsonb) > 0 THEN $10::jsonb ELSE last_logs END,
                        reported_at = now()
                 WHERE id = $1 AND host_id = $2 AND state <> 'lost'
                   AND (state, ready, address, exit_code, signal, health_error, reason)
                       IS DISTINCT FROM ($3, $5 AND desired = 'run', $6, $7, $8, $9, CASE WHEN desired = 'run' THEN $4 ELSE reason END)",
                &[&i.id, &host, &i.state, &reason, &i.ready, &i.address, &i.exit_code, &i.signal, &health, &logs],
            )
            .await?;
    }
    // Stopped instances the agent no longer has are gone.
    let reported: Vec<&str> = body.instances.iter().map(|i| i.id.as_str()).collect();
    let gone = tx
        .query(
            "DELETE FROM instances WHERE host_id = $1 AND desired = 'stop'
               AND (stop_at IS NULL OR stop_at <= now()) AND id <> ALL($2)
             RETURNING id, org_id, host_id, ipv6_address",
            &[&host, &reported],
        )
        .await?;
    changed += gone.len() as u64;
    crate::ops::instance_ipam::release(&tx, &gone).await?;
    tx.commit().await?;
    if changed > 0 {
        ctl.poke();
    }
    Ok(())
}

/// The routing table (docs/edge.md format) of the edge on `host`, and its content hash. Ready
/// instances on hosts that `host` reported unreachable over the overlay are left out (they come
/// back once it reports them reachable again). An IPv4 route (`ipv4_required`) of an env holding
/// a dedicated IPv4 (`ops::ipv4`) listens on that address; one of an env without, on the edge's
/// shared `default_ipv4_addr`. A route's explicit `address` wins. Backends stay the instances'
/// (IPv6 overlay) addresses.
async fn edge_table(c: &impl GenericClient, host: Uuid) -> Result<(String, Vec<Value>), ApiError> {
    let routes = c
        .query(
            "SELECT r.id, r.kind, r.hostname, r.address, r.listener_port, r.process_type,
                    r.backend_port, r.proxy_protocol_v2, r.ipv4_required, r.env_id, e.ipv4
             FROM v_routes r LEFT JOIN v_envs e ON e.id = r.env_id ORDER BY r.id",
            &[],
        )
        .await?;
    let cut: Vec<Uuid> = overlay::unreachable_from(c, host)
        .await?
        .into_iter()
        .collect();
    let backends = c
        .query(
            "SELECT env_id, process_type, address FROM instances
             WHERE desired = 'run' AND ready AND kind = 'service' AND address IS NOT NULL
               AND host_id <> ALL($1)
             ORDER BY id",
            &[&cut],
        )
        .await?;
    let mut out = Vec::new();
    for r in &routes {
        let env: Uuid = r.get(9);
        let process: String = r.get(5);
        let port: i32 = r.get(6);
        let addrs: Vec<String> = backends
            .iter()
            .filter(|b| b.get::<_, Uuid>(0) == env && b.get::<_, String>(1) == process)
            .filter_map(|b| {
                let a: String = b.get(2);
                a.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| std::net::SocketAddr::new(ip, port as u16).to_string())
            })
            .collect();
        let mut route = json!({
            "id": r.get::<_, Uuid>(0).to_string(),
            "kind": r.get::<_, String>(1),
            "port": r.get::<_, i32>(4),
            "backends": addrs,
            "proxy_protocol_v2": r.get::<_, bool>(7),
            "ipv4": r.get::<_, bool>(8),
        });
        if let Some(h) = r.get::<_, Option<String>>(2)
            && r.get::<_, String>(1) == "tls"
        {
            route["hostname"] = json!(h);
        }
        if let Some(a) = r
            .get::<_, Option<String>>(3)
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        {
            if a.is_ipv4() {
                route["listen_v4"] = json!(a);
                route["ipv4"] = json!(true);
            } else {
                route["listen_v6"] = json!(a);
            }
        }
        if r.get::<_, bool>(8)
            && route.get("listen_v4").is_none()
            && let Some(dedicated) = r.get::<_, Option<String>>(10)
        {
            route["listen_v4"] = json!(dedicated);
        }
        out.push(route);
    }
    let h = feed::hash(serde_json::to_string(&out).unwrap_or_default().as_bytes());
    Ok((h, out))
}

/// `GET /v1/edge/table?after=G&wait=S`: the whole routing table of the edge on the caller's host
/// once it is newer than `after`. The table depends on the host (overlay reachability), so each
/// host has its own feed, `edge:<host id>`; a new one continues from the single `edge` feed of
/// earlier versions, so an edge never sees its generation go back across the upgrade.
pub async fn edge(ctl: &Control, p: &Principal, after: i64, wait: u64) -> Result<Value, ApiError> {
    let host = p.must_agent()?;
    let name = format!("edge:{host}");
    long_poll(ctl, after, wait, || async {
        let c = ctl.db.client().await?;
        let (h, routes) = edge_table(&**c, host).await?;
        let generation = feed::generation_continuing(&**c, &name, "edge", &h).await?;
        Ok((
            generation,
            json!({"generation": generation, "routes": routes}),
        ))
    })
    .await
}
