//! The WireGuard full mesh between hosts: what to change on one host's device so its peers match
//! the host list, and which overlay routes point at which peer.
//!
//! [`plan`] compares the peers a host's device has (`current`, from the agent's own record) with
//! the peers it should have (`desired`, every other enrolled host, from the control plane) and
//! returns only the differences: [`Change::Remove`] for hosts that left, [`Change::Update`] for
//! hosts whose endpoint, key or allowed IPs changed (each [`PeerUpdate`] says which), and
//! [`Change::Add`] for new hosts. Unchanged peers produce nothing, so their tunnels are never
//! touched. Allowed IPs compare as sets (order and duplicates do not matter).
//!
//! Changes come removals first, then updates, then additions (each sorted by host), so a key or
//! an allowed IP that moves from a leaving host to a new one is free before it is reused.
//! WireGuard identifies a peer by its public key, so the agent applies [`PeerUpdate::KeyRotated`]
//! as "remove the peer with the old key, add it with the new key, endpoint and allowed IPs".

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::net::Ipv6Net;

/// One host as a WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The host id.
    pub host: String,
    /// Its WireGuard public key (validated base64 of 32 bytes).
    pub public_key: PublicKey,
    /// Where its WireGuard listens.
    pub endpoint: SocketAddr,
    /// The overlay networks routed to it (normally its /64).
    pub allowed: Vec<Ipv6Net>,
}

impl Peer {
    /// The same peer with its allowed IPs sorted and deduplicated.
    pub fn normalised(&self) -> Peer {
        Peer {
            allowed: normalise(&self.allowed),
            ..self.clone()
        }
    }
}

fn normalise(nets: &[Ipv6Net]) -> Vec<Ipv6Net> {
    nets.iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// One difference of a single peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerUpdate {
    /// The host's WireGuard endpoint moved.
    Endpoint { from: SocketAddr, to: SocketAddr },
    /// The host rotated its key.
    KeyRotated { old: PublicKey, new: PublicKey },
    /// The networks routed to the host changed (`to` is the full new set, sorted).
    AllowedIps {
        from: Vec<Ipv6Net>,
        to: Vec<Ipv6Net>,
    },
}

/// One change to a host's WireGuard device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// A new peer (allowed IPs sorted).
    Add(Peer),
    /// The peer of this host goes.
    Remove(String),
    /// The peer of `host` stays but changes; `what` lists each difference (in the order endpoint,
    /// key, allowed IPs).
    Update { host: String, what: Vec<PeerUpdate> },
}

/// Why a peer list cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    #[error("a peer has an empty host id")]
    EmptyHost,
    #[error("host `{host}` appears twice in the {list} peer list")]
    DuplicateHost { host: String, list: &'static str },
    #[error(
        "hosts `{first}` and `{second}` have the same public key {key}: every host needs its own key pair"
    )]
    DuplicateKey {
        key: PublicKey,
        first: String,
        second: String,
    },
    #[error(
        "allowed IPs overlap: {first_net} of host `{first}` and {second_net} of host `{second}` (WireGuard routes each address to one peer)"
    )]
    OverlappingAllowed {
        first: String,
        first_net: Ipv6Net,
        second: String,
        second_net: Ipv6Net,
    },
}

fn by_host<'a>(
    peers: &'a [Peer],
    list: &'static str,
) -> Result<BTreeMap<&'a str, &'a Peer>, MeshError> {
    let mut map = BTreeMap::new();
    for p in peers {
        if p.host.is_empty() {
            return Err(MeshError::EmptyHost);
        }
        if map.insert(p.host.as_str(), p).is_some() {
            return Err(MeshError::DuplicateHost {
                host: p.host.clone(),
                list,
            });
        }
    }
    Ok(map)
}

/// Check a desired peer list: non-empty, unique host ids, unique keys, no overlapping allowed IPs
/// between different hosts.
pub fn validate(desired: &[Peer]) -> Result<(), MeshError> {
    let hosts = by_host(desired, "desired")?;
    let mut keys: BTreeMap<PublicKey, &str> = BTreeMap::new();
    for (host, p) in &hosts {
        if let Some(first) = keys.insert(p.public_key, host) {
            return Err(MeshError::DuplicateKey {
                key: p.public_key,
                first: first.to_string(),
                second: host.to_string(),
            });
        }
    }
    let mut nets: Vec<(Ipv6Net, &str)> = hosts
        .iter()
        .flat_map(|(h, p)| normalise(&p.allowed).into_iter().map(move |n| (n, *h)))
        .collect();
    nets.sort();
    // Sorted by (address, length): a network that contains later ones comes first, so checking
    // each against the widest open one before it finds every overlap.
    let mut open: Option<(Ipv6Net, &str)> = None;
    for (net, host) in nets {
        if let Some((o, oh)) = open
            && o.contains_net(&net)
        {
            if oh != host {
                return Err(MeshError::OverlappingAllowed {
                    first: oh.to_string(),
                    first_net: o,
                    second: host.to_string(),
                    second_net: net,
                });
            }
            continue;
        }
        open = Some((net, host));
    }
    Ok(())
}

/// What to change so a device with the `current` peers has the `desired` ones. Unchanged peers
/// produce nothing; `plan(x, x)` is empty.
pub fn plan(current: &[Peer], desired: &[Peer]) -> Result<Vec<Change>, MeshError> {
    validate(desired)?;
    let cur = by_host(current, "current")?;
    let want = by_host(desired, "desired")?;
    let mut removes = Vec::new();
    let mut updates = Vec::new();
    let mut adds = Vec::new();
    for host in cur.keys() {
        if !want.contains_key(host) {
            removes.push(Change::Remove(host.to_string()));
        }
    }
    for (host, w) in &want {
        let Some(c) = cur.get(host) else {
            adds.push(Change::Add(w.normalised()));
            continue;
        };
        let mut what = Vec::new();
        if c.endpoint != w.endpoint {
            what.push(PeerUpdate::Endpoint {
                from: c.endpoint,
                to: w.endpoint,
            });
        }
        if c.public_key != w.public_key {
            what.push(PeerUpdate::KeyRotated {
                old: c.public_key,
                new: w.public_key,
            });
        }
        let (from, to) = (normalise(&c.allowed), normalise(&w.allowed));
        if from != to {
            what.push(PeerUpdate::AllowedIps { from, to });
        }
        if !what.is_empty() {
            updates.push(Change::Update {
                host: host.to_string(),
                what,
            });
        }
    }
    removes.extend(updates);
    removes.extend(adds);
    Ok(removes)
}

/// The peers after applying `changes` to `current` (what the agent records once its device is
/// changed), sorted by host with allowed IPs normalised. Changes naming unknown hosts are
/// ignored.
pub fn apply(current: &[Peer], changes: &[Change]) -> Vec<Peer> {
    let mut peers: BTreeMap<String, Peer> = current
        .iter()
        .map(|p| (p.host.clone(), p.normalised()))
        .collect();
    for change in changes {
        match change {
            Change::Add(p) => {
                peers.insert(p.host.clone(), p.normalised());
            }
            Change::Remove(host) => {
                peers.remove(host);
            }
            Change::Update { host, what } => {
                let Some(p) = peers.get_mut(host) else {
                    continue;
                };
                for u in what {
                    match u {
                        PeerUpdate::Endpoint { to, .. } => p.endpoint = *to,
                        PeerUpdate::KeyRotated { new, .. } => p.public_key = *new,
                        PeerUpdate::AllowedIps { to, .. } => p.allowed = normalise(to),
                    }
                }
            }
        }
    }
    peers.into_values().collect()
}

/// The peers `self_host` should have: every host of the cluster but itself.
pub fn peers_for(self_host: &str, all_hosts: &[Peer]) -> Vec<Peer> {
    all_hosts
        .iter()
        .filter(|p| p.host != self_host)
        .cloned()
        .collect()
}

/// The overlay routes of `self_host`: each allowed network of every other peer, to that peer,
/// sorted by network.
pub fn routes(self_host: &str, desired: &[Peer]) -> Vec<(Ipv6Net, String)> {
    let mut out: Vec<(Ipv6Net, String)> = desired
        .iter()
        .filter(|p| p.host != self_host)
        .flat_map(|p| {
            normalise(&p.allowed)
                .into_iter()
                .map(move |n| (n, p.host.clone()))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
