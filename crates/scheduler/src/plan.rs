//! One scheduling run: account existing placements, drop those that are no longer wanted or whose
//! host is gone or over its memory, scale groups down (most crowded host, then newest first) or up,
//! move instances off draining hosts, and assemble a sorted plan.
//!
//! Memory freed by removals in a plan is not reused in the same plan: new instances only go where
//! they fit while every instance the plan removes is still running, so a host never exceeds its
//! memory whatever order the agents apply the plan in. The next run uses the freed memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::model::*;
use crate::place::place_group;
use crate::state::Cluster;

/// An existing instance kept on a present host.
#[derive(Clone, Copy)]
struct Kept<'a> {
    p: &'a Placement,
    host: usize,
}

/// A removed or movable instance a new placement replaces.
enum Link<'a> {
    /// Already removed (host gone or over-committed).
    Dead(&'a Placement),
    /// On a draining host: removed only once its replacement is placed.
    Draining(Kept<'a>),
}

impl Link<'_> {
    fn instance(&self) -> &str {
        match self {
            Link::Dead(p) => &p.instance,
            Link::Draining(k) => &k.p.instance,
        }
    }
}

struct Need<'a> {
    group: &'a Group,
    count: usize,
    links: Vec<Link<'a>>,
    counts: HashMap<usize, u32>,
}

/// Computes the placement plan for `snapshot`. Deterministic: the same snapshot (in any order)
/// gives the same plan.
pub fn plan(snapshot: &Snapshot, config: &Config) -> Plan {
    plan_impl(snapshot, config, true)
}

/// [`plan`] without its fast path (every group placed through the heap over all candidate hosts).
/// Gives the same plan; exists so tests and the benchmark can check that.
#[doc(hidden)]
pub fn plan_reference(snapshot: &Snapshot, config: &Config) -> Plan {
    plan_impl(snapshot, config, false)
}

fn plan_impl(snapshot: &Snapshot, config: &Config, fast: bool) -> Plan {
    let mut cluster = Cluster::new(&snapshot.hosts, config);
    let mut out = Plan::default();

    let mut groups: Vec<&Group> = snapshot.groups.iter().collect();
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    groups.dedup_by(|b, a| a.key == b.key);
    let group_idx: HashMap<&GroupKey, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| (&g.key, i))
        .collect();

    let mut placements: Vec<&Placement> = snapshot.placements.iter().collect();
    placements.sort_by(|a, b| a.instance.cmp(&b.instance));
    placements.dedup_by(|b, a| a.instance == b.instance);

    let remove = |out: &mut Plan, p: &Placement, reason| {
        out.remove.push(Removal {
            instance: p.instance.clone(),
            group: p.group.clone(),
            host: p.host.clone(),
            reason,
        })
    };

    // 1. Account existing placements; drop unwanted ones and those on unknown hosts.
    let mut dead: Vec<Vec<&Placement>> = vec![Vec::new(); groups.len()];
    let mut per_host: Vec<Vec<&Placement>> = vec![Vec::new(); cluster.hosts.len()];
    let mut leaving_mem: Vec<u64> = vec![0; cluster.hosts.len()];
    for p in placements {
        let Some(&g) = group_idx.get(&p.group) else {
            // Still running until the agent stops it: its memory stays counted in this run.
            if let Some(&h) = cluster.by_id.get(p.host.as_str()) {
                cluster.hosts[h].add(p.resources);
                leaving_mem[h] += p.resources.memory_mb;
            }
            remove(&mut out, p, RemovalReason::NotDesired);
            continue;
        };
        let Some(&h) = cluster.by_id.get(p.host.as_str()) else {
            remove(&mut out, p, RemovalReason::HostGone);
            dead[g].push(p);
            continue;
        };
        cluster.hosts[h].add(p.resources);
        per_host[h].push(p);
    }

    // 2. Hosts whose memory shrank below what their kept instances use lose their newest ones.
    let mut per_group: Vec<Vec<Kept>> = vec![Vec::new(); groups.len()];
    for (h, ps) in per_host.iter_mut().enumerate() {
        let slot = &mut cluster.hosts[h];
        let staying = |slot: &crate::state::HostSlot| slot.used_mem - leaving_mem[h];
        if staying(slot) > slot.host.memory_mb {
            ps.sort_by(|a, b| (b.seq, &b.instance).cmp(&(a.seq, &a.instance)));
            let mut keep_from = 0;
            while staying(slot) > slot.host.memory_mb && keep_from < ps.len() {
                let p = ps[keep_from];
                slot.sub(p.resources);
                remove(&mut out, p, RemovalReason::HostOverCommitted);
                dead[group_idx[&p.group]].push(p);
                keep_from += 1;
            }
            ps.drain(..keep_from);
            // The evicted instances still run until their agent stops them: take nothing new
            // on this host in this run.
            slot.used_mem = slot.used_mem.max(slot.host.memory_mb);
        }
        for p in ps.iter() {
            per_group[group_idx[&p.group]].push(Kept { p, host: h });
        }
    }

    // 3. Per group: scale down, or work out how many new instances it needs.
    let mut needs: Vec<Need> = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let mut kept = std::mem::take(&mut per_group[g]);
        kept.sort_by(|a, b| a.p.instance.cmp(&b.p.instance));
        let mut healthy = Vec::new();
        let mut draining = Vec::new();
        for k in kept {
            if cluster.state(k.host) != HostState::Draining {
                healthy.push(k);
            } else if let Some(v) = volume_on_host(&cluster, group, k.host) {
                out.blocked.push(Blocked {
                    instance: k.p.instance.clone(),
                    group: group.key.clone(),
                    host: k.p.host.clone(),
                    reason: format!(
                        "host is draining but the instance uses volume `{v}`, which lives on this \
                         host; it stays until the volume is moved or the instance is stopped"
                    ),
                });
                healthy.push(k);
            } else {
                draining.push(k);
            }
        }
        let scale = group.scale as usize;
        if healthy.len() > scale {
            for k in scale_down(&cluster, &mut healthy, scale) {
                remove(&mut out, k.p, RemovalReason::ScaleDown);
            }
        }
        let count = scale.saturating_sub(healthy.len());
        let mut links: Vec<Link> = std::mem::take(&mut dead[g])
            .into_iter()
            .map(Link::Dead)
            .collect();
        for k in draining {
            if links.len() < count {
                links.push(Link::Draining(k));
            } else {
                // Not needed any more: nothing replaces it.
                remove(&mut out, k.p, RemovalReason::HostDraining);
            }
        }
        let mut counts: HashMap<usize, u32> = HashMap::new();
        for k in &healthy {
            *counts.entry(k.host).or_insert(0) += 1;
        }
        if count > 0 {
            needs.push(Need {
                group,
                count,
                links,
                counts,
            });
        }
    }

    // 4. Place, most constrained and largest groups first.
    needs.sort_by(|a, b| {
        let ka = (
            a.group.volume.is_none(),
            Reverse(a.group.resources.memory_mb),
        );
        let kb = (
            b.group.volume.is_none(),
            Reverse(b.group.resources.memory_mb),
        );
        (ka, Reverse(a.group.resources.cpu_millis), &a.group.key).cmp(&(
            kb,
            Reverse(b.group.resources.cpu_millis),
            &b.group.key,
        ))
    });
    cluster.index_free();
    for need in needs {
        let group = need.group;
        let placed = place_group(&mut cluster, group, need.count, need.counts, fast);
        let mut links = need.links.into_iter();
        for (n, &h) in placed.hosts.iter().enumerate() {
            let link = links.next();
            if let Some(Link::Draining(k)) = &link {
                remove(&mut out, k.p, RemovalReason::HostDraining);
            }
            out.place.push(NewPlacement {
                group: group.key.clone(),
                host: cluster.hosts[h].host.id.clone(),
                resources: group.resources,
                replaces: link.as_ref().map(|l| l.instance().to_owned()),
                creates_volume: (n == 0)
                    .then_some(placed.creates_volume)
                    .flatten()
                    .map(str::to_owned),
            });
        }
        if let Some(reason) = placed.unplaced_reason {
            for link in links {
                if let Link::Draining(k) = link {
                    out.blocked.push(Blocked {
                        instance: k.p.instance.clone(),
                        group: group.key.clone(),
                        host: k.p.host.clone(),
                        reason: format!(
                            "host is draining but no replacement could be placed: {reason}"
                        ),
                    });
                }
            }
            out.unplaced.push(Unplaced {
                group: group.key.clone(),
                count: (need.count - placed.hosts.len()) as u32,
                reason,
            });
        }
    }

    out.place
        .sort_by(|a, b| (&a.group, &a.host, &a.replaces).cmp(&(&b.group, &b.host, &b.replaces)));
    out.remove.sort_by(|a, b| a.instance.cmp(&b.instance));
    out.unplaced.sort_by(|a, b| a.group.cmp(&b.group));
    out.blocked.sort_by(|a, b| a.instance.cmp(&b.instance));
    out
}

/// The volume of `group` that lives on host `h`, if any: such an instance cannot move.
fn volume_on_host<'a>(cluster: &Cluster<'_>, group: &'a Group, h: usize) -> Option<&'a str> {
    let v = group.volume.as_ref()?;
    cluster.hosts[h]
        .host
        .volumes
        .contains(&v.name)
        .then_some(v.name.as_str())
}

/// Removes instances from `healthy` until `scale` remain and returns them: first from cordoned
/// hosts, then from the host with the most replicas of the group, newest instance first.
fn scale_down<'a>(
    cluster: &Cluster<'_>,
    healthy: &mut Vec<Kept<'a>>,
    scale: usize,
) -> Vec<Kept<'a>> {
    let mut by_host: HashMap<usize, Vec<Kept<'a>>> = HashMap::new();
    for k in healthy.drain(..) {
        by_host.entry(k.host).or_default().push(k);
    }
    let key = |h: usize, ks: &Vec<Kept<'a>>| {
        let newest = ks.last().map(|k| k.p);
        (
            cluster.state(h) == HostState::Cordoned,
            ks.len(),
            newest.map(|p| p.seq),
            newest.map(|p| p.instance.clone()),
            Reverse(h),
        )
    };
    let mut heap = BinaryHeap::new();
    let mut total = 0;
    for (&h, ks) in by_host.iter_mut() {
        ks.sort_by(|a, b| (a.p.seq, &a.p.instance).cmp(&(b.p.seq, &b.p.instance)));
        total += ks.len();
        heap.push(key(h, ks));
    }
    // Each host has exactly one heap entry, re-pushed with its new key after every removal.
    let mut removed = Vec::new();
    while total > scale {
        let Some((_, _, _, _, Reverse(h))) = heap.pop() else {
            break;
        };
        let Some(ks) = by_host.get_mut(&h) else {
            continue;
        };
        if let Some(k) = ks.pop() {
            removed.push(k);
            total -= 1;
        }
        if !ks.is_empty() {
            heap.push(key(h, ks));
        }
    }
    let mut hosts: Vec<usize> = by_host.keys().copied().collect();
    hosts.sort_unstable();
    for h in hosts {
        healthy.extend(by_host.remove(&h).unwrap_or_default());
    }
    removed
}
