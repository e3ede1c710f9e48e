//! Instance IPv6 addresses as IPAM allocations (docs/overlay.md): a placed instance gets the next
//! free address of its host's /64 after the host's cursor (next-fit: a released address is not
//! handed out again until the cursor comes round), recorded as `InstanceAddressAllocated` on
//! stream `instance-address:<instance>`; deleting the instance record appends
//! `InstanceAddressReleased`. `::0` and `::1` (the host's own overlay address) are never handed
//! out. The allocator is `scalebox_overlay::Ipam`, rebuilt for the host from the views
//! `v_instance_addresses` (what is held) and `v_instance_address_cursors` (the cursor).

use std::net::Ipv6Addr;

use scalebox_overlay::{Allocation, Ipam, IpamConfig, Ipv6Net};
use scalebox_store::Event;
use scalebox_store::events::{InstanceAddressAllocated, InstanceAddressReleased};
use scalebox_store::log;
use tokio_postgres::{Row, Transaction};
use uuid::Uuid;

use crate::ApiError;

const ACTOR: &str = "system:ipam";
/// One instance allocation at a time (two placements must not pick the same next address).
const LOCK: i64 = 0x5ca1_eb0c_0006;

/// The host's slice of the IPAM (`scalebox_overlay::Ipam`): its /64, the addresses its instances
/// hold, and its next-fit cursor restored from the address handed out last.
fn host_ipam(
    cluster: Ipv6Net,
    host: &str,
    prefix: Ipv6Net,
    held: &[(String, Ipv6Addr)],
    last: Option<Ipv6Addr>,
) -> Result<Ipam, scalebox_overlay::IpamError> {
    let mut log = vec![Allocation::HostPrefix {
        host: host.to_owned(),
        index: prefix.addr().segments()[3],
        prefix,
    }];
    log.extend(
        held.iter()
            .map(|(instance, address)| Allocation::InstanceAddress {
                host: host.to_owned(),
                instance: instance.clone(),
                address: *address,
            }),
    );
    let mut ipam = Ipam::replay(IpamConfig::new(cluster), &log)?;
    if let Some(last) = last {
        ipam.resume_instances_after(host, last);
    }
    Ok(ipam)
}

/// Allocates `instance`'s address on `host` (org `org`), or `None` when the host has no /64
/// (registered before IPAM; its agent then derives the address itself).
pub async fn allocate(
    tx: &Transaction<'_>,
    org: Uuid,
    host: Uuid,
    instance: &str,
) -> Result<Option<String>, ApiError> {
    let Some(row) = tx
        .query_opt(
            "SELECT h.ipv6_prefix, c.ula FROM v_hosts h LEFT JOIN v_cluster c ON c.id = 1
             WHERE h.id = $1 AND h.ipv6_prefix IS NOT NULL",
            &[&host],
        )
        .await?
    else {
        return Ok(None);
    };
    let bad = |what: &str| {
        tracing::error!(%host, what, "a stored IPv6 prefix does not parse");
        ApiError::internal()
    };
    let prefix: Ipv6Net = row
        .get::<_, String>(0)
        .parse()
        .map_err(|_| bad("host /64"))?;
    let cluster: Ipv6Net = row
        .get::<_, Option<String>>(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("cluster /48"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    let held: Vec<(String, Ipv6Addr)> = tx
        .query(
            "SELECT instance, address FROM v_instance_addresses WHERE host_id = $1",
            &[&host],
        )
        .await?
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, String>(1).parse().ok()?)))
        .collect();
    let last: Option<Ipv6Addr> = tx
        .query_opt(
            "SELECT last_address FROM v_instance_address_cursors WHERE host_id = $1",
            &[&host],
        )
        .await?
        .and_then(|r| r.get::<_, String>(0).parse().ok());
    let host_key = host.to_string();
    let address = host_ipam(cluster, &host_key, prefix, &held, last)
        .and_then(|mut ipam| ipam.allocate_instance(&host_key, instance))
        .map_err(|e| ApiError::conflict(e.to_string()))?
        .value
        .to_string();
    log::append(
        tx,
        ACTOR,
        Some(org),
        &format!("instance-address:{instance}"),
        0,
        &[Event::InstanceAddressAllocated(InstanceAddressAllocated {
            instance: instance.to_owned(),
            host_id: host,
            address: address.clone(),
        })],
    )
    .await?;
    Ok(Some(address))
}

/// Releases the addresses of the instance records a `DELETE … RETURNING id, org_id, host_id,
/// ipv6_address` removed.
pub async fn release(tx: &Transaction<'_>, deleted: &[Row]) -> Result<(), ApiError> {
    for r in deleted {
        let Some(address) = r.get::<_, Option<String>>(3) else {
            continue;
        };
        let instance: String = r.get(0);
        log::append(
            tx,
            ACTOR,
            Some(r.get(1)),
            &format!("instance-address:{instance}"),
            1,
            &[Event::InstanceAddressReleased(InstanceAddressReleased {
                instance,
                host_id: r.get(2),
                address,
            })],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_slice_allocates_after_the_restored_cursor_and_skips_held() {
        let cluster: Ipv6Net = "fd00:1:2::/48".parse().unwrap();
        let prefix: Ipv6Net = "fd00:1:2:7::/64".parse().unwrap();
        let a = |s: &str| -> Ipv6Addr { s.parse().unwrap() };
        let fresh = host_ipam(cluster, "h", prefix, &[], None).unwrap();
        assert_eq!(
            fresh.clone().allocate_instance("h", "i").unwrap().value,
            a("fd00:1:2:7::2")
        );
        // ::2 was released after ::9 was handed out; ::a is held.
        let held = [("x".to_owned(), a("fd00:1:2:7::a"))];
        let mut ipam = host_ipam(cluster, "h", prefix, &held, Some(a("fd00:1:2:7::9"))).unwrap();
        assert_eq!(
            ipam.allocate_instance("h", "i").unwrap().value,
            a("fd00:1:2:7::b")
        );
    }
}
