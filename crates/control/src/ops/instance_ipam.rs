//! Instance IPv6 addresses as IPAM allocations (docs/overlay.md): a placed instance gets the next
//! free address of its host's /64 after the host's cursor (next-fit: a released address is not
//! handed out again until the cursor comes round), recorded as `InstanceAddressAllocated` on
//! stream `instance-address:<instance>`; deleting the instance record appends
//! `InstanceAddressReleased`. `::0` and `::1` (the host's own overlay address) are never handed
//! out. The views `v_instance_addresses` / `v_instance_address_cursors` are what is held.

use std::collections::HashSet;
use std::net::Ipv6Addr;

use scalebox_store::Event;
use scalebox_store::events::{InstanceAddressAllocated, InstanceAddressReleased};
use scalebox_store::log;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::ApiError;

const ACTOR: &str = "system:ipam";
/// One instance allocation at a time (two placements must not pick the same next address).
const LOCK: i64 = 0x5ca1_eb0c_0006;

/// The next free address of `prefix` (a /64) after `last` (from `::2` when none), wrapping
/// round once; `None` when every address is held.
pub fn next_address(
    prefix: Ipv6Addr,
    last: Option<Ipv6Addr>,
    held: &HashSet<Ipv6Addr>,
) -> Option<Ipv6Addr> {
    let net = u128::from(prefix) & !u128::from(u64::MAX);
    let first: u128 = 2;
    let max: u128 = u64::MAX as u128;
    let start = match last {
        Some(a) if u128::from(a) & !u128::from(u64::MAX) == net => {
            let h = u128::from(a) & u128::from(u64::MAX);
            if h >= max { first } else { (h + 1).max(first) }
        }
        _ => first,
    };
    // In practice the first candidate is free: the cursor only wraps after 2^64 allocations.
    let mut h = start;
    for _ in 0..held.len() + 1 {
        let a = Ipv6Addr::from(net | h);
        if !held.contains(&a) {
            return Some(a);
        }
        h = if h >= max { first } else { h + 1 };
    }
    None
}

/// Allocates `instance`'s address on `host` (org `org`), or `None` when the host has no /64
/// (registered before IPAM; its agent then derives the address itself).
pub async fn allocate(
    tx: &Transaction<'_>,
    org: Uuid,
    host: Uuid,
    instance: &str,
) -> Result<Option<String>, ApiError> {
    let Some(prefix) = tx
        .query_opt("SELECT ipv6_prefix FROM v_hosts WHERE id = $1", &[&host])
        .await?
        .and_then(|r| r.get::<_, Option<String>>(0))
    else {
        return Ok(None);
    };
    let prefix: Ipv6Addr = prefix
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(ApiError::internal)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    let held: HashSet<Ipv6Addr> = tx
        .query(
            "SELECT address FROM v_instance_addresses WHERE host_id = $1",
            &[&host],
        )
        .await?
        .iter()
        .filter_map(|r| r.get::<_, String>(0).parse().ok())
        .collect();
    let last: Option<Ipv6Addr> = tx
        .query_opt(
            "SELECT last_address FROM v_instance_address_cursors WHERE host_id = $1",
            &[&host],
        )
        .await?
        .and_then(|r| r.get::<_, String>(0).parse().ok());
    let address = next_address(prefix, last, &held)
        .ok_or_else(|| {
            ApiError::conflict(
                "this host's /64 has no free instance address; delete instances on it or place new ones on another host",
            )
        })?
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

/// Releases the addresses of deleted instance records: `(instance, org, host, address)`.
pub async fn release(
    tx: &Transaction<'_>,
    deleted: &[(String, Uuid, Uuid, Option<String>)],
) -> Result<(), ApiError> {
    for (instance, org, host, address) in deleted {
        let Some(address) = address else { continue };
        log::append(
            tx,
            ACTOR,
            Some(*org),
            &format!("instance-address:{instance}"),
            1,
            &[Event::InstanceAddressReleased(InstanceAddressReleased {
                instance: instance.clone(),
                host_id: *host,
                address: address.clone(),
            })],
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn next_fit_from_two_skipping_held_and_wrapping() {
        let p = a("fd00:0:0:7::");
        let none = HashSet::new();
        assert_eq!(next_address(p, None, &none), Some(a("fd00:0:0:7::2")));
        // After the cursor, even when lower addresses were released.
        assert_eq!(
            next_address(p, Some(a("fd00:0:0:7::9")), &none),
            Some(a("fd00:0:0:7::a"))
        );
        let held: HashSet<_> = [a("fd00:0:0:7::a"), a("fd00:0:0:7::b")].into();
        assert_eq!(
            next_address(p, Some(a("fd00:0:0:7::9")), &held),
            Some(a("fd00:0:0:7::c"))
        );
        // Wraps past the end of the /64 to ::2 (never ::0 or ::1).
        let end = a("fd00:0:0:7:ffff:ffff:ffff:ffff");
        assert_eq!(next_address(p, Some(end), &none), Some(a("fd00:0:0:7::2")));
        // A cursor from another /64 (the host got a new prefix) starts again at ::2.
        assert_eq!(
            next_address(p, Some(a("fd00:0:0:8::5")), &none),
            Some(a("fd00:0:0:7::2"))
        );
    }

    #[test]
    fn skips_a_run_of_held_addresses() {
        let p = a("fd00:0:0:7::");
        let held: HashSet<_> = (2u16..6)
            .map(|i| Ipv6Addr::new(0xfd00, 0, 0, 7, 0, 0, 0, i))
            .collect();
        assert_eq!(next_address(p, None, &held), Some(a("fd00:0:0:7::6")));
    }
}
