//! The WireGuard overlay as the control plane sees it (docs/overlay.md): each host's end as its
//! agent reports it (public key, underlay endpoint, peer health; checked here and kept in
//! `host_status`), the peer list an agent configures (`GET /v1/agent/overlay`), the peers a host
//! cannot reach (their instances leave that host's edge table) and the overlay shown by
//! `GET /v1/hosts`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

use scalebox_types::api;
use serde_json::Value;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::ApiError;
use crate::auth::Principal;

/// Most peers one report may list.
pub const MAX_PEERS: usize = 10_000;

/// At most 64 characters of caller input, for error messages.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// An overlay report that passed [`check`], in canonical form (key re-encoded, endpoint
/// re-printed, peer ids as lowercase hyphenated UUIDs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub public_key: String,
    pub endpoint: String,
    pub peers: Vec<api::OverlayPeerHealth>,
}

/// Validates an agent's overlay report.
pub fn check(r: &api::OverlayReport) -> Result<Checked, ApiError> {
    let key: scalebox_overlay::PublicKey = r.public_key.parse().map_err(|e| {
        ApiError::bad_request(format!(
            "overlay.public_key {:?} is not a WireGuard public key: {e}",
            clip(&r.public_key)
        ))
    })?;
    let endpoint: SocketAddr = r.endpoint.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "overlay.endpoint {:?} is not an underlay `ip:port` (`203.0.113.7:51820`, `[2001:db8::7]:51820`)",
            clip(&r.endpoint)
        ))
    })?;
    if r.peers.len() > MAX_PEERS {
        return Err(ApiError::bad_request(format!(
            "overlay.peers lists {} peers; a report holds at most {MAX_PEERS}",
            r.peers.len()
        )));
    }
    let mut seen = HashSet::with_capacity(r.peers.len());
    let mut peers = Vec::with_capacity(r.peers.len());
    for (i, p) in r.peers.iter().enumerate() {
        let host: Uuid = p.host.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "overlay.peers[{i}].host {:?} is not a host id (a UUID from GET /v1/agent/overlay)",
                clip(&p.host)
            ))
        })?;
        if !seen.insert(host) {
            return Err(ApiError::bad_request(format!(
                "overlay.peers lists host {host} more than once"
            )));
        }
        peers.push(api::OverlayPeerHealth {
            host: host.to_string(),
            ..p.clone()
        });
    }
    Ok(Checked {
        public_key: key.to_base64(),
        endpoint: endpoint.to_string(),
        peers,
    })
}

/// The ids of the peers marked unreachable.
pub fn unreachable(peers: &[api::OverlayPeerHealth]) -> BTreeSet<Uuid> {
    peers
        .iter()
        .filter(|p| !p.reachable)
        .filter_map(|p| p.host.parse().ok())
        .collect()
}

/// The peers stored in `host_status.overlay_peers` (empty when there is no row).
pub fn stored_peers(v: Option<Value>) -> Vec<api::OverlayPeerHealth> {
    match v {
        None => Vec::new(),
        Some(v) => serde_json::from_value(v).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "host_status.overlay_peers does not decode; ignored");
            Vec::new()
        }),
    }
}

/// Stores `host`'s checked report in its `host_status` row (which the report has just written).
/// Returns whether the set of peers it cannot reach changed (edge tables depend on it).
pub async fn store(tx: &Transaction<'_>, host: Uuid, r: &Checked) -> Result<bool, ApiError> {
    // Every peer list must map keys to hosts one to one (`mesh::plan` refuses a shared key).
    if let Some(other) = tx
        .query_opt(
            "SELECT h.name FROM host_status s JOIN v_hosts h ON h.id = s.host_id
             WHERE s.overlay_public_key = $1 AND s.host_id <> $2 LIMIT 1",
            &[&r.public_key, &host],
        )
        .await?
    {
        return Err(ApiError::conflict(format!(
            "overlay.public_key is already host {:?}'s; every host needs its own WireGuard key",
            other.get::<_, String>(0)
        )));
    }
    let old: Value = tx
        .query_one(
            "SELECT overlay_peers FROM host_status WHERE host_id = $1 FOR UPDATE",
            &[&host],
        )
        .await?
        .get(0);
    let peers = serde_json::to_value(&r.peers).map_err(|_| ApiError::internal())?;
    tx.execute(
        "UPDATE host_status SET overlay_public_key = $2, overlay_endpoint = $3, overlay_peers = $4
         WHERE host_id = $1",
        &[&host, &r.public_key, &r.endpoint, &peers],
    )
    .await?;
    Ok(unreachable(&stored_peers(Some(old))) != unreachable(&r.peers))
}

/// The hosts `host` last reported as unreachable, never `host` itself.
pub async fn unreachable_from(
    c: &impl GenericClient,
    host: Uuid,
) -> Result<BTreeSet<Uuid>, ApiError> {
    let peers = c
        .query_opt(
            "SELECT overlay_peers FROM host_status WHERE host_id = $1",
            &[&host],
        )
        .await?
        .map(|r| r.get::<_, Value>(0));
    let mut out = unreachable(&stored_peers(peers));
    out.remove(&host);
    Ok(out)
}

/// `GET /v1/agent/overlay`: the calling host's prefixes and every other registered host that has
/// reported its key and endpoint, by name. A removed host is gone from `v_hosts` and so from the
/// list (its `host_status` row is never joined).
pub async fn for_agent(
    c: &impl GenericClient,
    p: &Principal,
) -> Result<api::AgentOverlay, ApiError> {
    let host = p.must_agent()?;
    let me = c
        .query_opt(
            "SELECT h.ipv6_prefix, c.ula FROM v_hosts h LEFT JOIN v_cluster c ON c.id = 1
             WHERE h.id = $1",
            &[&host],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("host {host}")))?;
    let (Some(prefix), Some(cluster_prefix)) = (
        me.get::<_, Option<String>>(0),
        me.get::<_, Option<String>>(1),
    ) else {
        return Err(ApiError::conflict(
            "this host has no IPv6 /64 of the cluster's /48 (it was registered before IPAM); \
             remove it (`DELETE /v1/hosts/{name}`) and join it again",
        ));
    };
    let peers = c
        .query(
            "SELECT h.id, h.name, h.ipv6_prefix, s.overlay_public_key, s.overlay_endpoint
             FROM v_hosts h JOIN host_status s ON s.host_id = h.id
             WHERE h.id <> $1 AND h.ipv6_prefix IS NOT NULL
               AND s.overlay_public_key IS NOT NULL AND s.overlay_endpoint IS NOT NULL
             ORDER BY h.name",
            &[&host],
        )
        .await?
        .iter()
        .map(|r| api::AgentOverlayPeer {
            host: r.get::<_, Uuid>(0).to_string(),
            name: r.get(1),
            public_key: r.get(3),
            endpoint: r.get(4),
            allowed_ips: vec![r.get(2)],
        })
        .collect();
    // Org isolation: every live instance address of each org that has an instance here.
    let isolation = c
        .query(
            "SELECT org_id, array_agg(DISTINCT address ORDER BY address) FROM instances
             WHERE address IS NOT NULL
               AND org_id IN (SELECT org_id FROM instances WHERE host_id = $1)
             GROUP BY org_id ORDER BY org_id",
            &[&host],
        )
        .await?
        .iter()
        .map(|r| api::OrgInstanceAddresses {
            org: r.get::<_, Uuid>(0).to_string(),
            addresses: r.get(1),
        })
        .collect();
    Ok(api::AgentOverlay {
        host: host.to_string(),
        cluster_prefix,
        prefix,
        peers,
        isolation,
    })
}

/// Names of the registered hosts among `ids`.
pub async fn host_names(
    c: &impl GenericClient,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(
        c.query("SELECT id, name FROM v_hosts WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect(),
    )
}

/// A host's overlay for `GET /v1/hosts`: none until its agent reported one. Unreachable peers are
/// shown by name (by id when the host is not registered any more), sorted.
pub fn host_overlay(
    public_key: Option<String>,
    endpoint: Option<String>,
    peers: Vec<api::OverlayPeerHealth>,
    names: &HashMap<Uuid, String>,
) -> Option<api::HostOverlay> {
    let (public_key, endpoint) = (public_key?, endpoint?);
    let mut unreachable: Vec<String> = unreachable(&peers)
        .into_iter()
        .map(|id| names.get(&id).cloned().unwrap_or_else(|| id.to_string()))
        .collect();
    unreachable.sort();
    Some(api::HostOverlay {
        public_key,
        endpoint,
        unreachable,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn report(key: &str, endpoint: &str, hosts: &[&str]) -> api::OverlayReport {
        api::OverlayReport {
            public_key: key.into(),
            endpoint: endpoint.into(),
            peers: hosts
                .iter()
                .map(|h| api::OverlayPeerHealth {
                    host: (*h).into(),
                    reachable: true,
                    last_handshake_secs: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn canonical_forms() {
        let id = "8F7D0B9E-4C33-4A57-9E0B-2B1D8E4C9A11";
        let c = check(&report(KEY, "[2001:db8:0::7]:51820", &[id])).unwrap();
        assert_eq!(c.public_key, KEY);
        assert_eq!(c.endpoint, "[2001:db8::7]:51820");
        assert_eq!(c.peers[0].host, id.to_lowercase());
    }

    #[test]
    fn refusals_name_the_field_and_clip_the_input() {
        let long = "x".repeat(5000);
        for (r, field) in [
            (report(&long, "10.0.0.1:51820", &[]), "overlay.public_key"),
            (report(KEY, &long, &[]), "overlay.endpoint"),
            (report(KEY, "10.0.0.1", &[]), "overlay.endpoint"),
            (
                report(KEY, "10.0.0.1:51820", &[&long]),
                "overlay.peers[0].host",
            ),
        ] {
            let e = check(&r).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with(field), "{}", e.message);
            assert!(e.message.len() < 300, "{}", e.message);
        }
        let id = Uuid::new_v4().to_string();
        let e = check(&report(KEY, "10.0.0.1:51820", &[&id, &id])).unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
        let many: Vec<String> = (0..=MAX_PEERS)
            .map(|_| Uuid::new_v4().to_string())
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = check(&report(KEY, "10.0.0.1:51820", &many)).unwrap_err();
        assert!(e.message.contains("at most 10000"), "{}", e.message);
    }

    #[test]
    fn unreachable_names_fall_back_to_ids() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut r = report(KEY, "10.0.0.1:51820", &[&a.to_string(), &b.to_string()]);
        for p in &mut r.peers {
            p.reachable = false;
        }
        let names = HashMap::from([(a, "zeta".to_string())]);
        let o = host_overlay(Some(KEY.into()), Some("x".into()), r.peers, &names).unwrap();
        let mut want = vec!["zeta".to_string(), b.to_string()];
        want.sort();
        assert_eq!(o.unreachable, want);
        assert_eq!(host_overlay(None, None, vec![], &names), None);
    }
}
