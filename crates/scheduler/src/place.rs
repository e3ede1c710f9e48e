//! Placing the new instances of one group: filter candidate hosts (schedulable, labels, volume
//! locality), then repeatedly take the candidate with the fewest replicas of the group, then the
//! most free memory, then the lowest id, via a heap. Also explains why instances stay unplaced.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::model::{Group, HostState};
use crate::state::{Cluster, vcpus};

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
pub(crate) fn place_group<'a>(
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
    if need == 0 {
        return out;
    }
    let (cands, creates) = match candidates(cluster, group) {
        Ok(c) => c,
        Err(reason) => {
            out.unplaced_reason = Some(reason);
            return out;
        }
    };
    let r = group.resources;
    let key = |cluster: &Cluster, counts: &HashMap<usize, u32>, i: usize| {
        let c = counts.get(&i).copied().unwrap_or(0);
        Reverse((c, Reverse(cluster.hosts[i].free_mem()), i))
    };
    let mut heap: BinaryHeap<_> = cands.iter().map(|&i| key(cluster, &counts, i)).collect();
    while out.hosts.len() < need {
        let Some(Reverse((_, _, i))) = heap.pop() else {
            break;
        };
        // Free capacity only shrinks during a run, so a host that cannot take one instance of
        // this group now never will: drop it.
        if !cluster.hosts[i].fits(r) {
            continue;
        }
        cluster.hosts[i].add(r);
        *counts.entry(i).or_insert(0) += 1;
        out.hosts.push(i);
        if let Some(v) = creates
            && out.creates_volume.is_none()
        {
            // The volume now lives on this host: the group's other instances must follow.
            out.creates_volume = Some(v);
            cluster.volumes.entry(v).or_default().push(i);
            heap.clear();
        }
        heap.push(key(cluster, &counts, i));
    }
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
                    "volume `{}` is not on any known host (its host may be lost); restore the host \
                     or recreate the volume",
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

fn no_eligible_host(cluster: &Cluster<'_>, group: &Group) -> String {
    let n = cluster.hosts.len();
    if n == 0 {
        return "no hosts are enrolled; add one with `scaleboxd agent --join`".to_owned();
    }
    let schedulable = (0..n)
        .filter(|&i| cluster.state(i) == HostState::Schedulable)
        .count();
    if schedulable == 0 {
        let draining = (0..n)
            .filter(|&i| cluster.state(i) == HostState::Draining)
            .count();
        return format!(
            "no schedulable host ({draining} draining, {} cordoned)",
            n - draining
        );
    }
    format!(
        "none of the {schedulable} schedulable hosts has labels {}",
        labels(group)
    )
}

fn labels(group: &Group) -> String {
    let l: Vec<String> = group
        .required_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    l.join(",")
}

fn state_word(s: HostState) -> &'static str {
    match s {
        HostState::Schedulable => "schedulable",
        HostState::Cordoned => "cordoned",
        HostState::Draining => "draining",
    }
}

/// Why no candidate host can take one more instance of `group` (`cands` is non-empty).
fn capacity_reason(cluster: &Cluster<'_>, group: &Group, cands: &[usize]) -> String {
    let r = group.resources;
    let h = |i: usize| &cluster.hosts[i];
    let best_mem = cands
        .iter()
        .copied()
        .max_by_key(|&i| (h(i).free_mem(), Reverse(i)))
        .unwrap_or(0);
    if h(best_mem).free_mem() < r.memory_mb {
        return format!(
            "no host with {} MB free memory; largest free is {} MB on {}",
            r.memory_mb,
            h(best_mem).free_mem(),
            h(best_mem).host.id
        );
    }
    let best_cpu = cands
        .iter()
        .copied()
        .filter(|&i| h(i).free_mem() >= r.memory_mb)
        .max_by_key(|&i| (h(i).free_cpu(), Reverse(i)))
        .unwrap_or(best_mem);
    format!(
        "no host with {} MB free memory has {} vCPUs free (CPU oversubscribed {}x); most free is {} \
         vCPUs on {}",
        r.memory_mb,
        vcpus(r.cpu_millis),
        cluster.cpu_ratio,
        vcpus(h(best_cpu).free_cpu()),
        h(best_cpu).host.id
    )
}
