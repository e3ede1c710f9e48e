//! The dedicated-IPv4 add-on: an environment may hold one public IPv4 address from the operator's
//! pool (`ipv4_pool` in the control config). The edge binds the env's IPv4 routes on it and
//! forwards to the instances over IPv6 (`ops::agent`).
//!
//! Allocations are events on the env's stream (`EnvIpv4Allocated`, `EnvIpv4Released`) projected
//! into `v_envs.ipv4` (unique) and the pool's next-fit cursor `v_ipv4_cursor`. They are made one
//! at a time under an advisory lock by `scalebox-overlay`'s IPAM: a held address is never handed
//! to another env, a released one not again at once. Shrinking the pool never takes an address
//! away from the env holding it; once released, an address outside the pool is not handed out.
//! A pool address that a route names as its explicit listen `address` is never handed out.

use std::net::Ipv4Addr;

use scalebox_overlay::{Ipam, IpamError, Ipv4Pool};
use scalebox_store::Event;
use scalebox_store::events::{EnvIpv4Allocated, EnvIpv4Released};
use scalebox_types::api;
use tokio_postgres::Transaction;
use uuid::Uuid;

use super::{EnvPath, append, env_id};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

/// One allocation at a time: concurrent enables would pick the same address.
const IPV4_LOCK: i64 = 0x5ca1_eb0c_0005;

/// The env IPv4 space as the IPAM sees it: the configured pool plus every held address the
/// operator has since removed from it (still held by its env), the holders (env ids, or
/// `route:<address>` for pool addresses a route names as its listen `address`, which are never
/// handed out), and the next-fit cursor just past `last`, the address handed out last.
fn ipam(
    pool: &Ipv4Pool,
    held: &[(String, Ipv4Addr)],
    last: Option<Ipv4Addr>,
) -> Result<Ipam, IpamError> {
    let mut entries = pool.entries();
    entries.extend(
        held.iter()
            .filter(|(_, a)| !pool.contains(*a))
            .map(|(_, a)| a.to_string()),
    );
    let effective = Ipv4Pool::parse(&entries)?;
    let env_ipv4: serde_json::Map<String, serde_json::Value> = held
        .iter()
        .map(|(holder, a)| (holder.clone(), serde_json::json!(a)))
        .collect();
    // Restored from the IPAM's snapshot form so the cursor is exactly where the last allocation
    // left it (replaying only what is held would put it after the highest held address). Only
    // the IPv4 space is used: the /48 is a placeholder.
    let snapshot = serde_json::json!({
        "config": {"cluster": "fd00::/48"},
        "ipv4_pool": effective,
        "next_host": 1,
        "next_ipv4": last.map_or(0, |a| u64::from(u32::from(a)) + 1),
        "hosts": {},
        "instances": {},
        "env_ipv4": env_ipv4,
    });
    serde_json::from_value(snapshot).map_err(|e| IpamError::Conflict(e.to_string()))
}

/// Parses a stored address; a malformed one is a bug, logged.
fn stored(a: &str) -> Result<Ipv4Addr, ApiError> {
    a.parse().map_err(|_| {
        tracing::error!(address = a, "a stored env IPv4 does not parse");
        ApiError::internal()
    })
}

/// A new address for `env` (which holds none), under the lock.
async fn allocate(tx: &Transaction<'_>, pool: &Ipv4Pool, env: Uuid) -> Result<String, ApiError> {
    let mut held = Vec::new();
    for r in tx
        .query("SELECT id, ipv4 FROM v_envs WHERE ipv4 IS NOT NULL", &[])
        .await?
    {
        held.push((r.get::<_, Uuid>(0).to_string(), stored(r.get(1))?));
    }
    // Routes created with an explicit listen address before it joined the pool keep it.
    for r in tx
        .query(
            "SELECT DISTINCT address FROM v_routes WHERE address IS NOT NULL",
            &[],
        )
        .await?
    {
        if let Ok(a) = r.get::<_, &str>(0).parse::<Ipv4Addr>()
            && pool.contains(a)
            && !held.iter().any(|(_, h)| *h == a)
        {
            held.push((format!("route:{a}"), a));
        }
    }
    let last = match tx
        .query_opt("SELECT last_address FROM v_ipv4_cursor WHERE id = 1", &[])
        .await?
    {
        Some(r) => Some(stored(r.get(0))?),
        None => None,
    };
    let mut ipam = ipam(pool, &held, last).map_err(|e| {
        tracing::error!(error = %e, "the held env IPv4 addresses do not replay");
        ApiError::internal()
    })?;
    match ipam.allocate_env_ipv4(&env.to_string()) {
        Ok(out) => Ok(out.value.to_string()),
        Err(e @ IpamError::Ipv4Exhausted { .. }) => Err(ApiError::conflict(e.to_string())),
        Err(e) => {
            tracing::error!(error = %e, "env IPv4 allocation failed");
            Err(ApiError::internal())
        }
    }
}

/// `POST .../envs/{env}/ipv4`: the env's dedicated IPv4, allocated now (201) or already held
/// (200).
pub async fn enable(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    at: EnvPath<'_>,
) -> Result<Reply, ApiError> {
    let org = p.org(at.org)?;
    p.can_write()?;
    let (p, app, name) = (p.clone(), at.app.to_owned(), at.env.to_owned());
    let pool = ctl.config.ipv4_pool.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (_, id, _) = env_id(tx, org, &app, &name).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IPV4_LOCK])
                .await?;
            let row = tx
                .query_opt(
                    "SELECT ipv4, version FROM v_envs WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!("environment {name:?} of app {app:?}"))
                })?;
            if let Some(address) = row.get::<_, Option<String>>(0) {
                return Ok(Reply::ok(&api::EnvIpv4 { address }));
            }
            if pool.size() == 0 {
                return Err(ApiError::conflict(
                    "the dedicated-IPv4 add-on is not available: the operator has configured no IPv4 pool (`ipv4_pool` in the control plane configuration)",
                ));
            }
            let address = allocate(tx, &pool, id).await?;
            append(
                tx,
                &p,
                format!("env:{id}"),
                row.get(1),
                None,
                &[Event::EnvIpv4Allocated(EnvIpv4Allocated {
                    env_id: id,
                    address: address.clone(),
                })],
            )
            .await?;
            Ok(Reply::created(&api::EnvIpv4 { address }))
        })
    })
    .await
}

/// `DELETE .../envs/{env}/ipv4`: gives the env's address back to the pool. 204 also when the
/// env holds none.
pub async fn disable(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    at: EnvPath<'_>,
) -> Result<Reply, ApiError> {
    let org = p.org(at.org)?;
    p.can_write()?;
    let (p, app, name) = (p.clone(), at.app.to_owned(), at.env.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (_, id, _) = env_id(tx, org, &app, &name).await?;
            let row = tx
                .query_one(
                    "SELECT ipv4, version FROM v_envs WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?;
            release(tx, &p, id, row.get(0), row.get(1)).await?;
            Ok(Reply::no_content())
        })
    })
    .await
}

/// Appends the release of `address` (when the env holds one) to the env's stream at `version`;
/// the env's version after it. Used by `disable` and when the env is deleted.
pub async fn release(
    tx: &Transaction<'_>,
    p: &Principal,
    env: Uuid,
    address: Option<String>,
    version: i64,
) -> Result<i64, ApiError> {
    let Some(address) = address else {
        return Ok(version);
    };
    append(
        tx,
        p,
        format!("env:{env}"),
        version,
        None,
        &[Event::EnvIpv4Released(EnvIpv4Released {
            env_id: env,
            address,
        })],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_cursor_survives_and_released_addresses_wait() {
        let pool = Ipv4Pool::parse(&["192.0.2.1-192.0.2.3"]).unwrap();
        let (e1, e2) = ("e1".to_string(), "e2".to_string());
        // .1 was handed out and released: the next one is .2, not .1 again.
        let mut i = ipam(&pool, &[], Some(a("192.0.2.1"))).unwrap();
        assert_eq!(i.allocate_env_ipv4("x").unwrap().value, a("192.0.2.2"));
        // Held ones are skipped; the cursor wraps round.
        let held = [(e1, a("192.0.2.3")), (e2, a("192.0.2.1"))];
        let mut i = ipam(&pool, &held, Some(a("192.0.2.3"))).unwrap();
        assert_eq!(i.allocate_env_ipv4("x").unwrap().value, a("192.0.2.2"));
        let e = i.allocate_env_ipv4("y").unwrap_err().to_string();
        assert!(e.contains("release an environment's IPv4"), "{e}");
        // Nothing handed out yet: the first address.
        let mut i = ipam(&pool, &[], None).unwrap();
        assert_eq!(i.allocate_env_ipv4("x").unwrap().value, a("192.0.2.1"));
    }

    #[test]
    fn a_shrunk_pool_keeps_held_addresses_and_hands_out_only_its_own() {
        let pool = Ipv4Pool::parse(&["192.0.2.2"]).unwrap();
        let e1 = "e1".to_string();
        // .3 left the pool while e1 held it: still e1's, never handed to anyone else.
        let held = [(e1.clone(), a("192.0.2.3"))];
        let mut i = ipam(&pool, &held, Some(a("192.0.2.3"))).unwrap();
        assert_eq!(i.env_ipv4(&e1), Some(a("192.0.2.3")));
        assert_eq!(i.allocate_env_ipv4("x").unwrap().value, a("192.0.2.2"));
        assert!(i.allocate_env_ipv4("y").is_err());
        // Once released it is outside the pool, so not handed out again.
        let mut i = ipam(&pool, &[], Some(a("192.0.2.3"))).unwrap();
        assert_eq!(i.allocate_env_ipv4("x").unwrap().value, a("192.0.2.2"));
        assert!(i.allocate_env_ipv4("y").is_err());
    }
}
