//! Why instances stay unplaced: messages that name the constraint and the closest host, e.g.
//! "no host with 512 MB free memory; largest free is 300 MB on host-3".

use std::cmp::Reverse;

use crate::model::{Group, HostState};
use crate::state::{Cluster, vcpus};

pub(crate) fn no_eligible_host(cluster: &Cluster<'_>, group: &Group) -> String {
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

pub(crate) fn labels(group: &Group) -> String {
    let l: Vec<String> = group
        .required_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    l.join(",")
}

pub(crate) fn state_word(s: HostState) -> &'static str {
    match s {
        HostState::Schedulable => "schedulable",
        HostState::Cordoned => "cordoned",
        HostState::Draining => "draining",
    }
}

/// Why no candidate host can take one more instance of `group` (`cands` is non-empty).
pub(crate) fn capacity_reason(cluster: &Cluster<'_>, group: &Group, cands: &[usize]) -> String {
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

/// [`capacity_reason`] over every eligible (schedulable, labelled) host, found by walking the
/// free-memory index instead of a candidate list; `None` if no host is eligible at all.
pub(crate) fn capacity_reason_indexed(cluster: &Cluster<'_>, group: &Group) -> Option<String> {
    let r = group.resources;
    let mut eligible = cluster
        .by_free
        .iter()
        .map(|&(Reverse(free), i)| (free, i))
        .filter(|&(_, i)| cluster.hosts[i].has_labels(group));
    // The index is ordered by most free memory, then lowest index: the first eligible host is
    // the one `capacity_reason` would name.
    let (best_free, best) = eligible.next()?;
    if best_free < r.memory_mb {
        return Some(capacity_reason(cluster, group, &[best]));
    }
    let mut roomy = vec![best];
    roomy.extend(
        eligible
            .take_while(|&(free, _)| free >= r.memory_mb)
            .map(|(_, i)| i),
    );
    Some(capacity_reason(cluster, group, &roomy))
}
