//! Org isolation on the overlay (docs/networking.md, "Isolation model"): the nftables rules that
//! let IPv6 reach an instance of this host only from an instance of the same org (on this host
//! or any other), from a host's own overlay address (edges, health checks), or as a reply.
//!
//! Two tables, replaced as a whole with one `nft -f` transaction when the input changes:
//!
//! - `inet scalebox_iso`, forward hook: routed traffic into this host's /64 (from the WireGuard
//!   device); replies are recognised by conntrack.
//! - `bridge scalebox_iso`, forward hook: traffic between two TAPs of the instance bridge (the
//!   bridge family has no conntrack here, and none is needed: both directions are checked the
//!   same way). Instances never exchange IPv4 (it is for egress only), so bridged IPv4 is dropped.
//!
//! Each org with an instance on this host gets a set of its instances' addresses (cluster-wide)
//! and a chain accepting only those sources; a verdict map sends traffic for each local instance
//! address to its org's chain. Anything else addressed to the host's /64 is dropped.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv6Addr;

use scalebox_overlay::Ipv6Net;

/// The addresses of one org's instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgAddresses {
    pub org: String,
    pub addresses: BTreeSet<Ipv6Addr>,
}

/// What the rules are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// This host's /64.
    pub prefix: Ipv6Net,
    /// Every host's own overlay address (`::1` of each /64), this host included.
    pub hosts: BTreeSet<Ipv6Addr>,
    /// Orgs with an instance on this host.
    pub orgs: Vec<OrgAddresses>,
}

fn elements(out: &mut String, addrs: impl Iterator<Item = String>) {
    let v: Vec<String> = addrs.collect();
    if !v.is_empty() {
        let _ = writeln!(out, "    elements = {{ {} }}", v.join(", "));
    }
}

fn family_body(out: &mut String, p: &Policy, bridge: bool) {
    let _ = writeln!(out, "  set hosts {{\n    type ipv6_addr");
    elements(out, p.hosts.iter().map(ToString::to_string));
    out.push_str("  }\n");
    for (i, o) in p.orgs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  set org_{i} {{\n    type ipv6_addr\n    comment \"org {}\"",
            o.org.replace('"', "")
        );
        elements(out, o.addresses.iter().map(ToString::to_string));
        out.push_str("  }\n");
        let _ = writeln!(
            out,
            "  chain org_{i} {{\n    ip6 saddr @org_{i} accept\n    drop\n  }}"
        );
    }
    out.push_str("  map instance_org {\n    type ipv6_addr : verdict\n");
    elements(
        out,
        p.orgs.iter().enumerate().flat_map(|(i, o)| {
            o.addresses
                .iter()
                .filter(|a| p.prefix.contains(a))
                .map(move |a| format!("{a} : jump org_{i}"))
        }),
    );
    out.push_str("  }\n");
    out.push_str("  chain forward {\n    type filter hook forward priority -5; policy accept;\n");
    if bridge {
        out.push_str("    ether type ip drop\n    ether type != ip6 accept\n");
    } else {
        out.push_str("    meta nfproto ipv4 accept\n");
    }
    let _ = writeln!(out, "    ip6 daddr != {} accept", p.prefix);
    if !bridge {
        out.push_str("    ct state established,related accept\n");
    }
    out.push_str(
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept\n",
    );
    out.push_str("    ip6 saddr @hosts accept\n    ip6 daddr vmap @instance_org\n    drop\n  }\n");
}

/// The ruleset for `p` (both tables, each created if missing, deleted and defined again: one
/// atomic `nft -f`, so sets and chains of orgs that left go too).
pub fn ruleset(p: &Policy) -> String {
    let mut out = String::new();
    for (family, bridge) in [("inet", false), ("bridge", true)] {
        let _ = writeln!(
            out,
            "table {family} scalebox_iso {{}}\ndelete table {family} scalebox_iso\ntable {family} scalebox_iso {{"
        );
        family_body(&mut out, p, bridge);
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn maps_local_instances_to_their_org_and_lists_every_member() {
        let p = Policy {
            prefix: "fd00:0:0:1::/64".parse().unwrap(),
            hosts: [a("fd00:0:0:1::1"), a("fd00:0:0:2::1")].into(),
            orgs: vec![
                OrgAddresses {
                    org: "x".into(),
                    addresses: [a("fd00:0:0:1::a"), a("fd00:0:0:2::c")].into(),
                },
                OrgAddresses {
                    org: "y".into(),
                    addresses: [a("fd00:0:0:1::b")].into(),
                },
            ],
        };
        let r = ruleset(&p);
        assert!(r.contains("elements = { fd00:0:0:1::a, fd00:0:0:2::c }"));
        // Only this host's instances are in the verdict map.
        assert!(
            r.contains("elements = { fd00:0:0:1::a : jump org_0, fd00:0:0:1::b : jump org_1 }")
        );
        assert!(!r.contains("fd00:0:0:2::c : jump"));
        assert!(r.contains("ip6 daddr != fd00:0:0:1::/64 accept"));
        assert_eq!(r.matches("table inet scalebox_iso {\n").count(), 1);
        assert_eq!(r.matches("table bridge scalebox_iso {\n").count(), 1);
        assert_eq!(
            r.matches("ct state").count(),
            1,
            "conntrack only in the inet table"
        );
        // No org: empty sets and maps carry no elements line (nft rejects `{ }`).
        let empty = ruleset(&Policy {
            orgs: vec![],
            hosts: BTreeSet::new(),
            ..p
        });
        assert!(!empty.contains("elements"));
    }
}
