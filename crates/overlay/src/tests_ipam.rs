//! IPAM tests: the addressing plan, idempotence, releases, exhaustion, reuse policy, replay and
//! serialisation, plus property tests over random operation sequences.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use crate::ipam::*;
use crate::ula;

fn cluster() -> crate::Ipv6Net {
    ula::generate([0x12, 0x34, 0x56, 0x78, 0x9a])
}

fn ipam() -> Ipam {
    Ipam::new(IpamConfig::new(cluster())).unwrap()
}

fn small(hosts: u16, instances: u64, pool: &[&str]) -> Ipam {
    let mut i = Ipam::new(IpamConfig {
        cluster: cluster(),
        max_hosts: hosts,
        max_instances_per_host: instances,
    })
    .unwrap();
    i.set_ipv4_pool(Ipv4Pool::parse(pool).unwrap()).unwrap();
    i
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn addressing_plan() {
    let mut i = ipam();
    let a = i.allocate_host_prefix("h1").unwrap();
    assert_eq!(a.value.to_string(), "fd12:3456:789a:1::/64");
    assert_eq!(
        a.event,
        Some(Allocation::HostPrefix {
            host: "h1".into(),
            index: 1,
            prefix: a.value
        })
    );
    assert_eq!(i.gateway("h1"), Some(v6("fd12:3456:789a:1::1")));
    let b = i.allocate_host_prefix("h2").unwrap();
    assert_eq!(b.value.to_string(), "fd12:3456:789a:2::/64");
    let x = i.allocate_instance("h1", "i1").unwrap();
    assert_eq!(x.value, v6("fd12:3456:789a:1::2"));
    let y = i.allocate_instance("h1", "i2").unwrap();
    assert_eq!(y.value, v6("fd12:3456:789a:1::3"));
    let z = i.allocate_instance("h2", "i3").unwrap();
    assert_eq!(z.value, v6("fd12:3456:789a:2::2"));
    assert_eq!(i.instance_address("i2"), Some(("h1", y.value)));
    assert_eq!(
        i.instances_on("h1"),
        vec![("i1".to_string(), x.value), ("i2".to_string(), y.value)]
    );
    assert_eq!(i.hosts().len(), 2);
}

#[test]
fn operations_are_idempotent() {
    let mut i = small(4, 4, &["203.0.113.1"]);
    let p = i.allocate_host_prefix("h").unwrap();
    let again = i.allocate_host_prefix("h").unwrap();
    assert_eq!((again.value, again.event), (p.value, None));
    let a = i.allocate_instance("h", "i").unwrap();
    let again = i.allocate_instance("h", "i").unwrap();
    assert_eq!((again.value, again.event), (a.value, None));
    let e = i.allocate_env_ipv4("e").unwrap();
    assert_eq!(e.value, v4("203.0.113.1"));
    assert_eq!(i.allocate_env_ipv4("e").unwrap().event, None);
    assert!(i.release_instance("i").unwrap().is_some());
    assert_eq!(i.release_instance("i").unwrap(), None);
    assert_eq!(i.release_instance("never").unwrap(), None);
    assert!(i.release_env_ipv4("e").unwrap().is_some());
    assert_eq!(i.release_env_ipv4("e").unwrap(), None);
    assert!(i.release_host("h").unwrap().is_some());
    assert_eq!(i.release_host("h").unwrap(), None);
    // Applying an event twice is a no-op.
    let before = i.clone();
    let ev = i.allocate_host_prefix("h2").unwrap().event.unwrap();
    let after = i.clone();
    i.apply(&ev).unwrap();
    assert_eq!(i, after);
    assert_ne!(i, before);
}

#[test]
fn refusals_are_clear_and_change_nothing() {
    let mut i = small(4, 4, &[]);
    let e = i.allocate_instance("h", "i").unwrap_err();
    assert!(matches!(e, IpamError::HostNotEnrolled { .. }));
    assert!(e.to_string().contains("enrolment"), "{e}");
    i.allocate_host_prefix("h").unwrap();
    i.allocate_host_prefix("g").unwrap();
    i.allocate_instance("h", "i").unwrap();
    let before = i.clone();
    let e = i.release_host("h").unwrap_err();
    assert_eq!(
        e,
        IpamError::HostHasInstances {
            host: "h".into(),
            count: 1
        }
    );
    assert!(e.to_string().contains("delete"), "{e}");
    let e = i.allocate_instance("g", "i").unwrap_err();
    assert!(matches!(e, IpamError::InstanceOnOtherHost { .. }), "{e}");
    assert!(i.allocate_host_prefix("").is_err());
    assert!(i.allocate_instance("h", "").is_err());
    assert!(i.allocate_env_ipv4("").is_err());
    let e = i.allocate_env_ipv4("env").unwrap_err();
    assert_eq!(e, IpamError::Ipv4Exhausted { size: 0 });
    assert!(e.to_string().contains("add addresses to the pool"), "{e}");
    assert_eq!(i, before);
}

#[test]
fn exhaustion_errors_name_the_space() {
    let mut i = small(2, 2, &["192.0.2.1"]);
    i.allocate_host_prefix("a").unwrap();
    i.allocate_host_prefix("b").unwrap();
    let e = i.allocate_host_prefix("c").unwrap_err();
    assert_eq!(e, IpamError::HostPrefixesExhausted { max: 2 });
    assert!(e.to_string().contains("host prefixes exhausted"), "{e}");
    i.allocate_instance("a", "1").unwrap();
    i.allocate_instance("a", "2").unwrap();
    let e = i.allocate_instance("a", "3").unwrap_err();
    assert!(
        e.to_string()
            .contains("instance addresses exhausted on host `a`"),
        "{e}"
    );
    // Another host still has room.
    assert!(i.allocate_instance("b", "3").is_ok());
    i.allocate_env_ipv4("x").unwrap();
    let e = i.allocate_env_ipv4("y").unwrap_err();
    assert_eq!(e, IpamError::Ipv4Exhausted { size: 1 });
}

#[test]
fn released_values_are_not_reused_quickly() {
    let mut i = small(3, 3, &["198.51.100.1-198.51.100.3"]);
    assert_eq!(
        i.allocate_host_prefix("a").unwrap().value.to_string(),
        "fd12:3456:789a:1::/64"
    );
    i.release_host("a").unwrap();
    // Index 1 is free again but 2 and 3 have never been used: they come first.
    assert_eq!(
        i.allocate_host_prefix("b").unwrap().value.to_string(),
        "fd12:3456:789a:2::/64"
    );
    assert_eq!(
        i.allocate_host_prefix("c").unwrap().value.to_string(),
        "fd12:3456:789a:3::/64"
    );
    // Now the cursor wraps round to 1.
    assert_eq!(
        i.allocate_host_prefix("d").unwrap().value.to_string(),
        "fd12:3456:789a:1::/64"
    );

    let x = i.allocate_instance("b", "x").unwrap().value;
    i.release_instance("x").unwrap();
    let y = i.allocate_instance("b", "y").unwrap().value;
    assert_ne!(x, y);
    assert_eq!(y, v6("fd12:3456:789a:2::3"));

    assert_eq!(i.allocate_env_ipv4("e1").unwrap().value, v4("198.51.100.1"));
    i.release_env_ipv4("e1").unwrap();
    assert_eq!(i.allocate_env_ipv4("e2").unwrap().value, v4("198.51.100.2"));
    assert_eq!(i.allocate_env_ipv4("e3").unwrap().value, v4("198.51.100.3"));
    assert_eq!(i.allocate_env_ipv4("e4").unwrap().value, v4("198.51.100.1"));
}

#[test]
fn default_limits_cover_the_whole_plan() {
    let mut i = ipam();
    assert_eq!(i.config().max_hosts, 65535);
    // The last subnet index and the highest instance address are reachable via apply.
    let last = cluster().subnet(64, 65535).unwrap();
    i.apply(&Allocation::HostPrefix {
        host: "last".into(),
        index: 65535,
        prefix: last,
    })
    .unwrap();
    assert_eq!(last.to_string(), "fd12:3456:789a:ffff::/64");
    // After the top index the cursor wraps to 1 (never 0).
    assert_eq!(
        i.allocate_host_prefix("next").unwrap().value.to_string(),
        "fd12:3456:789a:1::/64"
    );
    let top = v6("fd12:3456:789a:ffff:ffff:ffff:ffff:ffff");
    i.apply(&Allocation::InstanceAddress {
        host: "last".into(),
        instance: "top".into(),
        address: top,
    })
    .unwrap();
    assert_eq!(
        i.allocate_instance("last", "wrapped").unwrap().value,
        v6("fd12:3456:789a:ffff::2")
    );
}

#[test]
fn apply_refuses_contradictions() {
    let mut i = small(4, 4, &["192.0.2.0/30"]);
    i.allocate_host_prefix("h").unwrap();
    i.allocate_instance("h", "i").unwrap();
    i.allocate_env_ipv4("e").unwrap();
    let before = i.clone();
    let bad = [
        // Index 0, out of range, wrong prefix, held index.
        Allocation::HostPrefix {
            host: "x".into(),
            index: 0,
            prefix: cluster().subnet(64, 0).unwrap(),
        },
        Allocation::HostPrefix {
            host: "x".into(),
            index: 5,
            prefix: cluster().subnet(64, 5).unwrap(),
        },
        Allocation::HostPrefix {
            host: "x".into(),
            index: 2,
            prefix: cluster().subnet(64, 3).unwrap(),
        },
        Allocation::HostPrefix {
            host: "x".into(),
            index: 1,
            prefix: cluster().subnet(64, 1).unwrap(),
        },
        Allocation::HostPrefix {
            host: "h".into(),
            index: 2,
            prefix: cluster().subnet(64, 2).unwrap(),
        },
        // Gateway, out of the /64, held address, unknown host, beyond the limit.
        Allocation::InstanceAddress {
            host: "h".into(),
            instance: "j".into(),
            address: v6("fd12:3456:789a:1::1"),
        },
        Allocation::InstanceAddress {
            host: "h".into(),
            instance: "j".into(),
            address: v6("fd12:3456:789a:2::2"),
        },
        Allocation::InstanceAddress {
            host: "h".into(),
            instance: "j".into(),
            address: v6("fd12:3456:789a:1::2"),
        },
        Allocation::InstanceAddress {
            host: "nope".into(),
            instance: "j".into(),
            address: v6("fd12:3456:789a:1::3"),
        },
        Allocation::InstanceAddress {
            host: "h".into(),
            instance: "j".into(),
            address: v6("fd12:3456:789a:1::6"),
        },
        Allocation::InstanceReleased {
            host: "h".into(),
            instance: "i".into(),
            address: v6("fd12:3456:789a:1::9"),
        },
        Allocation::HostReleased {
            host: "h".into(),
            prefix: cluster().subnet(64, 1).unwrap(),
        },
        Allocation::HostReleased {
            host: "h".into(),
            prefix: cluster().subnet(64, 2).unwrap(),
        },
        Allocation::EnvIpv4 {
            env: "f".into(),
            address: v4("192.0.2.0"),
        },
        Allocation::EnvIpv4 {
            env: "f".into(),
            address: v4("10.0.0.1"),
        },
        Allocation::EnvIpv4 {
            env: "e".into(),
            address: v4("192.0.2.3"),
        },
        Allocation::EnvIpv4Released {
            env: "e".into(),
            address: v4("192.0.2.3"),
        },
        Allocation::Ipv4Pool {
            pool: Ipv4Pool::parse(&["192.0.2.2/31"]).unwrap(),
        },
    ];
    for a in &bad {
        assert!(i.apply(a).is_err(), "{a}");
        assert_eq!(i, before, "{a}");
    }
}

#[test]
fn ipv4_pool_entries() {
    let p = Ipv4Pool::parse(&[
        "203.0.113.8/30",
        "203.0.113.12-203.0.113.13",
        " 198.51.100.7 ",
    ])
    .unwrap();
    assert_eq!(
        p.entries(),
        vec!["198.51.100.7", "203.0.113.8-203.0.113.13"]
    );
    assert_eq!(p.size(), 7);
    assert!(p.contains(v4("203.0.113.11")) && !p.contains(v4("203.0.113.14")));
    for bad in [
        &["203.0.113.1-203.0.113.0"][..],
        &["203.0.113.0/24", "203.0.113.9"],
        &["nope"],
        &["203.0.113.1/24"],
        &["1.2.3.4-"],
    ] {
        let e = Ipv4Pool::parse(bad).unwrap_err();
        assert!(matches!(e, IpamError::PoolEntry { .. }), "{e}");
    }
    let all = Ipv4Pool::parse(&["0.0.0.0/0"]).unwrap();
    assert_eq!(all.size(), 1 << 32);
    let j = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Ipv4Pool>(&j).unwrap(), p);
    // Growing the pool is fine; shrinking past a held address is refused.
    let mut i = small(1, 1, &["192.0.2.1"]);
    i.allocate_env_ipv4("e").unwrap();
    let e = i
        .set_ipv4_pool(Ipv4Pool::parse(&["192.0.2.2"]).unwrap())
        .unwrap_err();
    assert_eq!(
        e,
        IpamError::PoolDropsHeld {
            addresses: vec![v4("192.0.2.1")]
        }
    );
    assert!(
        i.set_ipv4_pool(Ipv4Pool::parse(&["192.0.2.1-192.0.2.2"]).unwrap())
            .unwrap()
            .is_some()
    );
    assert_eq!(i.allocate_env_ipv4("f").unwrap().value, v4("192.0.2.2"));
}

#[test]
fn config_is_validated() {
    let mut c = IpamConfig::new("fd00::/56".parse().unwrap());
    assert!(matches!(
        Ipam::new(c.clone()),
        Err(IpamError::ClusterPrefix(_))
    ));
    c.cluster = cluster();
    c.max_hosts = 0;
    assert!(matches!(Ipam::new(c.clone()), Err(IpamError::Limits(_))));
    c.max_hosts = 1;
    c.max_instances_per_host = u64::MAX;
    assert!(matches!(Ipam::new(c.clone()), Err(IpamError::Limits(_))));
    let c: IpamConfig = serde_json::from_str(r#"{"cluster":"fd12:3456:789a::/48"}"#).unwrap();
    assert_eq!(c, IpamConfig::new(cluster()));
}

#[test]
fn events_serialise_as_tagged_json() {
    let ev = Allocation::InstanceAddress {
        host: "h".into(),
        instance: "i".into(),
        address: v6("fd12:3456:789a:1::2"),
    };
    let j = serde_json::to_value(&ev).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"kind": "instance_address", "host": "h", "instance": "i", "address": "fd12:3456:789a:1::2"})
    );
    assert_eq!(serde_json::from_value::<Allocation>(j).unwrap(), ev);
}

#[test]
fn snapshot_roundtrip_and_checked_load() {
    let mut i = small(8, 8, &["192.0.2.0/29"]);
    i.allocate_host_prefix("a").unwrap();
    i.allocate_host_prefix("b").unwrap();
    i.allocate_instance("a", "x").unwrap();
    i.allocate_instance("a", "y").unwrap();
    i.release_instance("x").unwrap();
    i.allocate_env_ipv4("e").unwrap();
    let j = serde_json::to_string(&i).unwrap();
    let back: Ipam = serde_json::from_str(&j).unwrap();
    assert_eq!(back, i);
    // An instance address outside its host's /64 is refused on load.
    let mut v: serde_json::Value = serde_json::from_str(&j).unwrap();
    v["instances"]["y"]["address"] = "fd12:3456:789a:2::2".into();
    assert!(serde_json::from_value::<Ipam>(v).is_err());
}

// ---- property tests ----

#[derive(Debug, Clone)]
enum Op {
    Host(u8),
    ReleaseHost(u8),
    Instance(u8, u8),
    ReleaseInstance(u8),
    Env(u8),
    ReleaseEnv(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..6).prop_map(Op::Host),
        (0u8..6).prop_map(Op::ReleaseHost),
        (0u8..6, 0u8..12).prop_map(|(h, i)| Op::Instance(h, i)),
        (0u8..12).prop_map(Op::ReleaseInstance),
        (0u8..8).prop_map(Op::Env),
        (0u8..8).prop_map(Op::ReleaseEnv),
    ]
}

/// Values handed out, by space, for the reuse checks.
#[derive(Default)]
struct Seen {
    ever: BTreeMap<String, BTreeSet<String>>,
    released: BTreeMap<String, BTreeSet<String>>,
}

impl Seen {
    /// Record `value` handed out in `space` of `size` values: it must not be a released value
    /// while some value of the space has never been handed out.
    fn handed(&mut self, space: &str, size: usize, value: String) -> Result<(), TestCaseError> {
        let ever = self.ever.entry(space.into()).or_default();
        let released = self.released.entry(space.into()).or_default();
        if released.contains(&value) {
            prop_assert!(
                ever.len() == size,
                "{value} reused in {space} before every value was used once"
            );
            released.remove(&value);
        }
        ever.insert(value);
        Ok(())
    }

    fn released(&mut self, space: &str, value: String) {
        self.released.entry(space.into()).or_default().insert(value);
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    const HOSTS: u16 = 4;
    const INSTANCES: u64 = 3;
    let mut i = small(HOSTS, INSTANCES, &["192.0.2.1-192.0.2.3", "198.51.100.9"]);
    let config = i.config().clone();
    let mut log = vec![Allocation::Ipv4Pool {
        pool: i.ipv4_pool().clone(),
    }];
    let mut seen = Seen::default();
    for op in ops {
        let before = i.clone();
        let event = match op {
            Op::Host(h) => {
                let host = format!("h{h}");
                let had = i.host_prefix(&host);
                match i.allocate_host_prefix(&host) {
                    Ok(o) => {
                        if let Some(p) = had {
                            prop_assert_eq!(o.value, p);
                            prop_assert!(o.event.is_none());
                        } else {
                            seen.handed("hosts", HOSTS.into(), o.value.to_string())?;
                        }
                        o.event
                    }
                    Err(e) => {
                        prop_assert_eq!(e, IpamError::HostPrefixesExhausted { max: HOSTS });
                        prop_assert_eq!(i.hosts().len(), usize::from(HOSTS));
                        None
                    }
                }
            }
            Op::ReleaseHost(h) => {
                let host = format!("h{h}");
                let prefix = i.host_prefix(&host);
                match i.release_host(&host) {
                    Ok(ev) => {
                        if let Some(p) = prefix {
                            seen.released("hosts", p.to_string());
                            // Its instance space starts afresh if the /64 is handed out again.
                            seen.ever.remove(&format!("inst:{p}"));
                            seen.released.remove(&format!("inst:{p}"));
                        }
                        ev
                    }
                    Err(e) => {
                        let refused = matches!(e, IpamError::HostHasInstances { .. });
                        prop_assert!(refused, "{}", e);
                        prop_assert!(!i.instances_on(&host).is_empty());
                        None
                    }
                }
            }
            Op::Instance(h, n) => {
                let host = format!("h{h}");
                let inst = format!("i{n}");
                let had = i.instance_address(&inst).map(|(h, a)| (h.to_string(), a));
                match i.allocate_instance(&host, &inst) {
                    Ok(o) => {
                        let prefix = i.host_prefix(&host).unwrap();
                        prop_assert!(prefix.contains(&o.value));
                        if let Some((_, a)) = had {
                            prop_assert_eq!(o.value, a);
                            prop_assert!(o.event.is_none());
                        } else {
                            seen.handed(
                                &format!("inst:{prefix}"),
                                INSTANCES as usize,
                                o.value.to_string(),
                            )?;
                        }
                        o.event
                    }
                    Err(IpamError::HostNotEnrolled { .. }) => {
                        prop_assert!(i.host_prefix(&host).is_none());
                        None
                    }
                    Err(IpamError::InstanceOnOtherHost { holder, .. }) => {
                        prop_assert_ne!(holder, host);
                        None
                    }
                    Err(IpamError::InstanceAddressesExhausted { .. }) => {
                        prop_assert_eq!(i.instances_on(&host).len() as u64, INSTANCES);
                        None
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected {e}"))),
                }
            }
            Op::ReleaseInstance(n) => {
                let inst = format!("i{n}");
                if let Some((h, a)) = i.instance_address(&inst) {
                    let p = i.host_prefix(h).unwrap();
                    seen.released(&format!("inst:{p}"), a.to_string());
                }
                i.release_instance(&inst).unwrap()
            }
            Op::Env(n) => {
                let env = format!("e{n}");
                let had = i.env_ipv4(&env);
                match i.allocate_env_ipv4(&env) {
                    Ok(o) => {
                        if let Some(a) = had {
                            prop_assert_eq!(o.value, a);
                        } else {
                            seen.handed("ipv4", 4, o.value.to_string())?;
                        }
                        o.event
                    }
                    Err(e) => {
                        prop_assert_eq!(e, IpamError::Ipv4Exhausted { size: 4 });
                        None
                    }
                }
            }
            Op::ReleaseEnv(n) => {
                let env = format!("e{n}");
                if let Some(a) = i.env_ipv4(&env) {
                    seen.released("ipv4", a.to_string());
                }
                i.release_env_ipv4(&env).unwrap()
            }
        };
        if event.is_none() {
            prop_assert_eq!(&i, &before, "no event but the state changed after {:?}", op);
        }
        log.extend(event);
        check_invariants(&i)?;
    }
    // Replaying the log into a fresh IPAM gives the same state, cursors included.
    let replayed = Ipam::replay(config, &log).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&replayed, &i);
    // And so does the serialised snapshot.
    let back: Ipam = serde_json::from_str(&serde_json::to_string(&i).unwrap()).unwrap();
    prop_assert_eq!(&back, &i);
    Ok(())
}

/// No two holders share a prefix or an address; every instance address is in its host's /64 and
/// is not the gateway.
fn check_invariants(i: &Ipam) -> Result<(), TestCaseError> {
    let hosts = i.hosts();
    let prefixes: BTreeSet<_> = hosts.iter().map(|(_, p)| *p).collect();
    prop_assert_eq!(prefixes.len(), hosts.len());
    for (_, p) in &hosts {
        prop_assert!(i.cluster().contains_net(p));
        prop_assert_ne!(*p, i.cluster().subnet(64, 0).unwrap());
    }
    let mut addresses = BTreeSet::new();
    for (h, p) in &hosts {
        for (inst, a) in i.instances_on(h) {
            prop_assert!(p.contains(&a));
            prop_assert_ne!(Some(a), i.gateway(h));
            prop_assert!(addresses.insert(a), "{} shared", a);
            prop_assert_eq!(i.instance_address(&inst), Some((h.as_str(), a)));
        }
    }
    let mut v4s = BTreeSet::new();
    for n in 0..8 {
        if let Some(a) = i.env_ipv4(&format!("e{n}")) {
            prop_assert!(i.ipv4_pool().contains(a));
            prop_assert!(v4s.insert(a), "{} shared", a);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 0..120)) {
        run(&ops)?;
    }

    #[test]
    fn apply_never_panics_on_arbitrary_events(
        idx: u16, part: u64, v4bits: u32, host in "[a-c]{0,1}", inst in "[x-z]{0,1}",
    ) {
        let mut i = small(4, 4, &["192.0.2.0/30"]);
        let _ = i.allocate_host_prefix("a");
        let prefix = cluster().subnet(64, u128::from(idx)).unwrap();
        let address = prefix.nth(u128::from(part)).unwrap();
        for a in [
            Allocation::HostPrefix { host: host.clone(), index: idx, prefix },
            Allocation::InstanceAddress { host: host.clone(), instance: inst.clone(), address },
            Allocation::InstanceReleased { host: host.clone(), instance: inst.clone(), address },
            Allocation::EnvIpv4 { env: inst.clone(), address: Ipv4Addr::from(v4bits) },
            Allocation::HostReleased { host: host.clone(), prefix },
        ] {
            let _ = i.apply(&a);
            check_invariants(&i)?;
        }
    }
}

#[test]
fn an_instance_cursor_restored_from_held_state_skips_released_addresses() {
    // State rebuilt from what is held (as the control plane does) would hand out a released
    // address again; restoring the cursor from the last address handed out prevents it.
    let mut i = ipam();
    let p = i.allocate_host_prefix("h").unwrap().value;
    let a = i.allocate_instance("h", "a").unwrap().value;
    let b = i.allocate_instance("h", "b").unwrap().value;
    let held = [Allocation::HostPrefix {
        host: "h".into(),
        index: p.addr().segments()[3],
        prefix: p,
    }];
    let mut rebuilt = Ipam::replay(IpamConfig::new(cluster()), &held).unwrap();
    assert_eq!(
        rebuilt.clone().allocate_instance("h", "c").unwrap().value,
        a
    );
    rebuilt.resume_instances_after("h", b);
    let c = rebuilt.allocate_instance("h", "c").unwrap().value;
    assert!(c != a && c != b, "{c}");
    assert_eq!(u128::from(c), u128::from(b) + 1);
    // A cursor outside the host's /64, or for an unknown host, changes nothing.
    let mut other = Ipam::replay(IpamConfig::new(cluster()), &held).unwrap();
    other.resume_instances_after("h", v6("fd00::9"));
    other.resume_instances_after("nope", b);
    assert_eq!(other.allocate_instance("h", "c").unwrap().value, a);
}
