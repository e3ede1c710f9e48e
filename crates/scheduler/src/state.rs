//! Working state of one scheduling run: hosts sorted by id with the memory and CPU already committed
//! on them, plus indexes by host id and by volume name.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::{Config, Group, Host, HostState, Resources};

pub(crate) struct HostSlot<'a> {
    pub host: &'a Host,
    /// Memory committed to kept and newly placed instances.
    pub used_mem: u64,
    /// CPU millicores committed to kept and newly placed instances.
    pub used_cpu: u64,
    /// `cpus * 1000 * oversubscription`.
    pub cpu_cap: u64,
}

impl HostSlot<'_> {
    pub fn free_mem(&self) -> u64 {
        self.host.memory_mb.saturating_sub(self.used_mem)
    }
    pub fn free_cpu(&self) -> u64 {
        self.cpu_cap.saturating_sub(self.used_cpu)
    }
    pub fn fits(&self, r: Resources) -> bool {
        self.free_mem() >= r.memory_mb && self.free_cpu() >= r.cpu_millis
    }
    pub fn add(&mut self, r: Resources) {
        self.used_mem += r.memory_mb;
        self.used_cpu += r.cpu_millis;
    }
    pub fn sub(&mut self, r: Resources) {
        self.used_mem = self.used_mem.saturating_sub(r.memory_mb);
        self.used_cpu = self.used_cpu.saturating_sub(r.cpu_millis);
    }
    /// Whether the host carries every label `group` requires.
    pub fn has_labels(&self, group: &Group) -> bool {
        group
            .required_labels
            .iter()
            .all(|(k, v)| self.host.labels.get(k) == Some(v))
    }
}

pub(crate) struct Cluster<'a> {
    /// Sorted by host id; duplicates dropped (first in input order wins).
    pub hosts: Vec<HostSlot<'a>>,
    pub by_id: HashMap<&'a str, usize>,
    /// Volume name -> indexes of the hosts that have it, ascending.
    pub volumes: BTreeMap<&'a str, Vec<usize>>,
    pub cpu_ratio: f64,
    /// Schedulable hosts ordered by most free memory, then index; built by [`Cluster::index_free`]
    /// once existing placements are accounted, kept current by [`Cluster::commit`].
    pub by_free: BTreeSet<(Reverse<u64>, usize)>,
}

impl<'a> Cluster<'a> {
    pub fn new(hosts: &'a [Host], config: &Config) -> Self {
        let ratio = if config.cpu_oversubscription.is_finite() && config.cpu_oversubscription > 0.0
        {
            config.cpu_oversubscription
        } else {
            1.0
        };
        let mut sorted: Vec<&Host> = hosts.iter().collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        sorted.dedup_by(|b, a| a.id == b.id);
        let hosts: Vec<HostSlot> = sorted
            .into_iter()
            .map(|host| HostSlot {
                host,
                used_mem: 0,
                used_cpu: 0,
                cpu_cap: (f64::from(host.cpus) * 1000.0 * ratio) as u64,
            })
            .collect();
        let by_id = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (h.host.id.as_str(), i))
            .collect();
        let mut volumes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, h) in hosts.iter().enumerate() {
            for v in &h.host.volumes {
                volumes.entry(v.as_str()).or_default().push(i);
            }
        }
        Cluster {
            hosts,
            by_id,
            volumes,
            cpu_ratio: ratio,
            by_free: BTreeSet::new(),
        }
    }

    /// Builds the free-memory index of schedulable hosts.
    pub fn index_free(&mut self) {
        self.by_free = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.host.state == HostState::Schedulable)
            .map(|(i, h)| (Reverse(h.free_mem()), i))
            .collect();
    }

    /// Commits a new instance with resources `r` to host `i`, keeping the index current.
    pub fn commit(&mut self, i: usize, r: Resources) {
        let indexed = self.by_free.remove(&(Reverse(self.hosts[i].free_mem()), i));
        self.hosts[i].add(r);
        if indexed {
            self.by_free.insert((Reverse(self.hosts[i].free_mem()), i));
        }
    }

    pub fn state(&self, i: usize) -> HostState {
        self.hosts[i].host.state
    }
}

/// Formats millicores as vCPUs: 1500 -> "1.5", 2000 -> "2".
pub(crate) fn vcpus(millis: u64) -> String {
    let whole = millis / 1000;
    let frac = millis % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        let s = format!("{whole}.{frac:03}");
        s.trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_vcpus() {
        assert_eq!(vcpus(0), "0");
        assert_eq!(vcpus(1500), "1.5");
        assert_eq!(vcpus(2000), "2");
        assert_eq!(vcpus(250), "0.25");
        assert_eq!(vcpus(1001), "1.001");
    }
}
