//! Mesh plan tests: add/remove/rotate/move, validation, routes, and property tests that a plan
//! applied to `current` yields `desired` and touches only peers that differ.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use proptest::prelude::*;

use crate::keys::PublicKey;
use crate::mesh::*;
use crate::net::Ipv6Net;
use crate::ula;

/// A distinct public key per `n` (real keys are not needed to plan, and debug-build X25519 is
/// slow across thousands of property-test cases).
fn key(n: u8) -> PublicKey {
    PublicKey::from_bytes([n; 32])
}

fn net(n: u16) -> Ipv6Net {
    ula::generate([1, 2, 3, 4, 5])
        .subnet(64, u128::from(n))
        .unwrap()
}

fn ep(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

fn peer(host: &str, k: u8, port: u16, nets: &[u16]) -> Peer {
    Peer {
        host: host.into(),
        public_key: key(k),
        endpoint: ep(port),
        allowed: nets.iter().map(|n| net(*n)).collect(),
    }
}

#[test]
fn add_remove_update_and_nothing_else() {
    let current = vec![
        peer("a", 1, 51820, &[1]),
        peer("b", 2, 51820, &[2]),
        peer("c", 3, 51820, &[3]),
        peer("d", 4, 51820, &[4]),
    ];
    let desired = vec![
        peer("a", 1, 51820, &[1]),     // unchanged
        peer("b", 22, 51820, &[2]),    // key rotated
        peer("c", 3, 51821, &[3, 30]), // endpoint and allowed IPs
        peer("e", 5, 51820, &[5]),     // new
    ];
    let changes = plan(&current, &desired).unwrap();
    assert_eq!(
        changes,
        vec![
            Change::Remove("d".into()),
            Change::Update {
                host: "b".into(),
                what: vec![PeerUpdate::KeyRotated {
                    old: key(2),
                    new: key(22)
                }],
            },
            Change::Update {
                host: "c".into(),
                what: vec![
                    PeerUpdate::Endpoint {
                        from: ep(51820),
                        to: ep(51821)
                    },
                    PeerUpdate::AllowedIps {
                        from: vec![net(3)],
                        to: vec![net(3), net(30)]
                    },
                ],
            },
            Change::Add(peer("e", 5, 51820, &[5])),
        ]
    );
    let mut sorted = desired.clone();
    sorted.sort_by(|x, y| x.host.cmp(&y.host));
    assert_eq!(apply(&current, &changes), sorted);
    assert!(plan(&desired, &desired).unwrap().is_empty());
}

#[test]
fn allowed_ips_compare_as_sets() {
    let current = vec![peer("a", 1, 1, &[1, 2, 2])];
    let desired = vec![peer("a", 1, 1, &[2, 1])];
    assert!(plan(&current, &desired).unwrap().is_empty());
}

#[test]
fn bad_desired_lists_are_refused() {
    let dup = vec![peer("a", 1, 1, &[1]), peer("a", 2, 1, &[2])];
    assert!(matches!(
        plan(&[], &dup),
        Err(MeshError::DuplicateHost { .. })
    ));
    let same_key = vec![peer("a", 1, 1, &[1]), peer("b", 1, 1, &[2])];
    let e = plan(&[], &same_key).unwrap_err();
    assert!(matches!(e, MeshError::DuplicateKey { .. }), "{e}");
    let overlap = vec![
        Peer {
            allowed: vec![ula::generate([1, 2, 3, 4, 5])],
            ..peer("a", 1, 1, &[])
        },
        peer("b", 2, 1, &[7]),
    ];
    let e = plan(&[], &overlap).unwrap_err();
    assert!(matches!(e, MeshError::OverlappingAllowed { .. }), "{e}");
    assert!(
        e.to_string().contains("`a`") && e.to_string().contains("`b`"),
        "{e}"
    );
    let same_net = vec![peer("a", 1, 1, &[4]), peer("b", 2, 1, &[4])];
    assert!(plan(&[], &same_net).is_err());
    assert_eq!(plan(&[], &[peer("", 1, 1, &[])]), Err(MeshError::EmptyHost));
    let cur_dup = vec![peer("a", 1, 1, &[1]), peer("a", 1, 1, &[1])];
    assert!(plan(&cur_dup, &[]).is_err());
    // One host's own nets may nest.
    let nested = vec![Peer {
        allowed: vec![ula::generate([1, 2, 3, 4, 5]), net(3)],
        ..peer("a", 1, 1, &[])
    }];
    assert!(validate(&nested).is_ok());
    // Disjoint nets after a wide one of another host are fine.
    let ok = vec![
        peer("a", 1, 1, &[1]),
        Peer {
            allowed: vec!["fd99::/16".parse().unwrap()],
            ..peer("b", 2, 1, &[])
        },
    ];
    assert!(validate(&ok).is_ok());
}

#[test]
fn routes_skip_self_and_sort() {
    let all = vec![
        peer("b", 2, 1, &[2, 20]),
        peer("a", 1, 1, &[1]),
        peer("self", 9, 1, &[9]),
    ];
    assert_eq!(
        routes("self", &all),
        vec![
            (net(1), "a".to_string()),
            (net(2), "b".to_string()),
            (net(20), "b".to_string())
        ]
    );
    assert_eq!(peers_for("self", &all).len(), 2);
}

#[test]
fn changes_serialise() {
    let c = Change::Update {
        host: "b".into(),
        what: vec![PeerUpdate::Endpoint {
            from: ep(1),
            to: ep(2),
        }],
    };
    let j = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Change>(&j).unwrap(), c);
    let p = peer("a", 1, 51820, &[1]);
    let j = serde_json::to_value(&p).unwrap();
    assert_eq!(j["public_key"], key(1).to_base64());
    assert_eq!(j["allowed"][0], net(1).to_string());
    let mut bad = j.clone();
    bad["public_key"] = "short".into();
    assert!(serde_json::from_value::<Peer>(bad).is_err());
}

/// A peer list over hosts 0..6: each host present or not, with one of two keys (key generation
/// `g` gives host `h` the key `10 * g + h`, so keys never collide between hosts), one of two
/// endpoints, and its own /64 plus optionally an extra one of its own.
fn peers() -> impl Strategy<Value = Vec<Peer>> {
    proptest::collection::vec(
        (any::<bool>(), 0u8..2, 0u16..2, any::<bool>(), any::<bool>()),
        6,
    )
    .prop_map(|hosts| {
        hosts
            .into_iter()
            .enumerate()
            .filter(|(_, (present, ..))| *present)
            .map(|(h, (_, generation, port, extra, reverse))| {
                let h8 = h as u8;
                let h16 = h as u16;
                let mut nets = vec![h16 + 1];
                if extra {
                    nets.push(100 + h16);
                }
                if reverse {
                    nets.reverse();
                }
                peer(&format!("h{h}"), 10 * generation + h8, 51820 + port, &nets)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn plan_applied_to_current_yields_desired(current in peers(), desired in peers()) {
        let changes = plan(&current, &desired).unwrap();
        let mut want: Vec<Peer> = desired.iter().map(Peer::normalised).collect();
        want.sort_by(|a, b| a.host.cmp(&b.host));
        prop_assert_eq!(apply(&current, &changes), want);

        // Nothing for unchanged peers; every changed host appears exactly once.
        let mut touched = BTreeSet::new();
        for c in &changes {
            let host = match c {
                Change::Add(p) => p.host.clone(),
                Change::Remove(h) => h.clone(),
                Change::Update { host, what } => {
                    prop_assert!(!what.is_empty());
                    host.clone()
                }
            };
            prop_assert!(touched.insert(host));
        }
        for d in &desired {
            let unchanged = current.iter().any(|c| c.normalised() == d.normalised());
            prop_assert_eq!(unchanged, !touched.contains(&d.host));
        }
    }

    #[test]
    fn plan_of_a_list_against_itself_is_empty(x in peers()) {
        prop_assert!(plan(&x, &x).unwrap().is_empty());
        let routes = routes("h0", &x);
        prop_assert!(routes.iter().all(|(_, h)| h != "h0"));
    }
}
