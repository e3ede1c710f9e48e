//! Placing the new instances of one group: among candidate hosts (schedulable, labels, volume
//! locality), repeatedly take the one with the fewest replicas of the group, then the most free
//! memory, then the lowest index. [`place_heap`] does this literally with a heap over every
//! candidate; [`place_spread`] gets the same answer for groups without a volume by walking the
//! cluster's free-memory index, touching only the hosts it needs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::model::{Group, HostState, Resources};
use crate::reason::{
    capacity_reason, capacity_reason_indexed, labels, no_eligible_host, state_word,
};
use crate::state::Cluster;

/// Where the new instances of a group went.
pub(crate) struct Placed<'a> {
    /// Host index per placed instance, in placement order.
    pub hosts: Vec<usize>,
    /// Volume created on the first placed instance's host.
    pub creates_volume: Option<&'a str>,
    /// Why `need - hosts.len()` instances were not placed (`None` when all were).
    pub unplaced_reason: Option<String>,
}

/// Places up to `need` instances of `group`; `counts` holds its current replicas per host.
/// `fast` selects [`place_spread`] for groups without a volume (same answer as the heap).
pub(crate) fn place_group<'a>(
    cluster: &mut Cluster<'a>,
    group: &'a Group,
    need: usize,
    counts: HashMap<usize, u32>,
    fast: bool,
) -> Placed<'a> {
    if need == 0 {
        return Placed {
            hosts: Vec::new(),
            creates_volume: None,
            unplaced_reason: None,
        };
    }
    if fast && group.volume.is_none() {
        place_spread(cluster, group, need, counts)
    } else {
        place_heap(cluster, group, need, counts)
    }
}

/// The heap order restated: every eligible host without a replica that has room comes first
/// (most free memory, lowest index: the free-memory index's order), one instance each; only then
/// hosts that hold replicas (the ones that had some, and those just used), through a small heap.
fn place_spread<'a>(
    cluster: &mut Cluster<'a>,
    group: &'a Group,
    need: usize,
    mut counts: HashMap<usize, u32>,
) -> Placed<'a> {
    let r = group.resources;
    let mut hosts = Vec::with_capacity(need);
    for &(Reverse(free), i) in &cluster.by_free {
        if hosts.len() == need || free < r.memory_mb {
            break;
        }
        let h = &cluster.hosts[i];
        if counts.get(&i).copied().unwrap_or(0) == 0
            && h.free_cpu() >= r.cpu_millis
            && h.has_labels(group)
        {
            hosts.push(i);
        }
    }
    for &i in &hosts {
        cluster.commit(i, r);
        counts.insert(i, 1);
    }
    if hosts.len() < need {
        let holders: Vec<usize> = counts
            .iter()
            .filter(|&(&i, &c)| {
                c > 0
                    && cluster.state(i) == HostState::Schedulable
                    && cluster.hosts[i].has_labels(group)
            })
            .map(|(&i, _)| i)
            .collect();
        fill_from_heap(cluster, r, need, &mut counts, &holders, &mut hosts, None);
    }
    let unplaced_reason = (hosts.len() < need).then(|| {
        capacity_reason_indexed(cluster, group).unwrap_or_else(|| no_eligible_host(cluster, group))
    });
    Placed {
        hosts,
        creates_volume: None,
        unplaced_reason,
    }
}

/// Takes hosts from a heap over `cands` ordered by (replicas, most free memory, index) until
/// `hosts` holds `need`. With `creates` set, the first placement creates that volume and pins the
/// rest of the group to the same host.
fn fill_from_heap<'a>(
    cluster: &mut Cluster<'a>,
    r: Resources,
    need: usize,
    counts: &mut HashMap<usize, u32>,
    cands: &[usize],
    hosts: &mut Vec<usize>,
    creates: Option<&'a str>,
) -> Option<&'a str> {
    let key = |cluster: &Cluster, counts: &HashMap<usize, u32>, i: usize| {
        let c = counts.get(&i).copied().unwrap_or(0);
        Reverse((c, Reverse(cluster.hosts[i].free_mem()), i))
    };
    let mut created = None;
    let mut heap: BinaryHeap<_> = cands.iter().map(|&i| key(cluster, counts, i)).collect();
    while hosts.len() < need {
        let Some(Reverse((_, _, i))) = heap.pop() else {
            break;
        };
        // Free capacity only shrinks during a run, so a host that cannot take one instance of
        // this group now never will: drop it.
        if !cluster.hosts[i].fits(r) {
            continue;
        }
        cluster.commit(i, r);
        *counts.entry(i).or_insert(0) += 1;
        hosts.push(i);
        if let Some(v) = creates
            && created.is_none()
        {
            // The volume now lives on this host: the group's other instances must follow.
            created = Some(v);
            cluster.volumes.entry(v).or_default().push(i);
            heap.clear();
        }
        heap.push(key(cluster, counts, i));
    }
    created
}

/// Places through a heap over every candidate host (volume groups, and the reference mode).
fn place_heap<'a>(
    cluster: &mut Cluster<'a>,
    group: &'a Group,
    need: usize,
    mut counts: HashMap<usize, u32>,
) -> Placed<'a> {
    let mut out = Placed {
        hosts: Vec::with_capacity(need),
        creates_volume: None,
        unplaced_reason: None,
    };
    let (cands, creates) = match candidates(cluster, group) {
        Ok(c) => c,
        Err(reason) => {
            out.unplaced_reason = Some(reason);
            return out;
        }
    };
    out.creates_volume = fill_from_heap(
        cluster,
        group.resources,
        need,
        &mut counts,
        &cands,
        &mut out.hosts,
        creates,
    );
    if out.hosts.len() < need {
        let cands = if out.creates_volume.is_some() {
            vec![out.hosts[0]]
        } else {
            cands
        };
        out.unplaced_reason = Some(capacity_reason(cluster, group, &cands));
    }
    out
}

/// Hosts that may run `group` regardless of free capacity, and the volume to create if the group
/// needs one that no host has yet. `Err` explains why there is none.
fn candidates<'a>(
    cluster: &Cluster<'_>,
    group: &'a Group,
) -> Result<(Vec<usize>, Option<&'a str>), String> {
    let eligible =
        |i: usize| cluster.state(i) == HostState::Schedulable && cluster.hosts[i].has_labels(group);
    if let Some(vol) = &group.volume {
        match cluster.volumes.get(vol.name.as_str()) {
            Some(on) => {
                let c: Vec<usize> = on.iter().copied().filter(|&i| eligible(i)).collect();
                if c.is_empty() {
                    let why: Vec<String> = on
                        .iter()
                        .map(|&i| {
                            let h = &cluster.hosts[i];
                            match h.host.state {
                                HostState::Schedulable => {
                                    format!("{} (lacks labels {})", h.host.id, labels(group))
                                }
                                s => format!("{} ({})", h.host.id, state_word(s)),
                            }
                        })
                        .collect();
                    return Err(format!(
                        "volume `{}` is only on host {}, which cannot take new instances",
                        vol.name,
                        why.join(", ")
                    ));
                }
                return Ok((c, None));
            }
            None if !vol.create_if_absent => {
                return Err(format!(
                    "volume `{}` is not on any live host (its host is lost or gone); bring the host \
                     back, or restore the volume from a backup onto another host with \
                     `sb volumes restore <volume>`",
                    vol.name
                ));
            }
            None => {
                let c: Vec<usize> = (0..cluster.hosts.len()).filter(|&i| eligible(i)).collect();
                if c.is_empty() {
                    return Err(no_eligible_host(cluster, group));
                }
                return Ok((c, Some(vol.name.as_str())));
            }
        }
    }
    let c: Vec<usize> = (0..cluster.hosts.len()).filter(|&i| eligible(i)).collect();
    if c.is_empty() {
        Err(no_eligible_host(cluster, group))
    } else {
        Ok((c, None))
    }
}
