//! Scheduler input (hosts, desired groups, existing placements, config) and output (the plan).
//! Plain data with serde so the control plane can store plans and show them in reconciler status.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Default CPU oversubscription ratio: a host with 8 vCPUs accepts instances asking for 32.
pub const DEFAULT_CPU_OVERSUBSCRIPTION: f64 = 4.0;

/// Per-instance (or per-host) resources. CPU is in millicores (1000 = one vCPU) so sums are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mb: u64,
    pub cpu_millis: u64,
}

impl Resources {
    /// Resources from a manifest's `cpu` (vCPUs, fractional) and `memory_mb`.
    pub fn from_vcpus(cpu: f64, memory_mb: u64) -> Self {
        let millis = (cpu * 1000.0).round();
        Resources {
            memory_mb,
            cpu_millis: if millis.is_finite() && millis > 0.0 {
                millis as u64
            } else {
                0
            },
        }
    }
}

/// Whether a host takes new instances and keeps its current ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Takes new instances.
    Schedulable,
    /// Takes no new instances; existing ones stay.
    Cordoned,
    /// Takes no new instances; existing ones are moved elsewhere (those bound to a local volume
    /// stay and are reported as blocked).
    Draining,
}

/// A host as the scheduler sees it. Hosts missing from the input are considered lost: their
/// instances are removed and replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    /// Memory available to instances (hard cap).
    pub memory_mb: u64,
    /// Physical vCPUs available to instances (oversubscribed by the configured ratio).
    pub cpus: u32,
    pub labels: BTreeMap<String, String>,
    /// Names of the local volumes present on this host.
    pub volumes: BTreeSet<String>,
    pub state: HostState,
}

/// Identifies a process type of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    pub env: String,
    pub process: String,
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.process)
    }
}

/// A local volume an instance must run next to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VolumeNeed {
    pub name: String,
    /// If no host has the volume yet, the instance may go on any host and the volume is created
    /// there ([`NewPlacement::creates_volume`]). If false, the instance waits for the volume.
    pub create_if_absent: bool,
}

/// Desired state of one process type of one environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: GroupKey,
    /// Desired instance count.
    pub scale: u32,
    /// Resources of each new instance.
    pub resources: Resources,
    pub volume: Option<VolumeNeed>,
    /// Labels a host must carry (all of them, same values) to run this group.
    pub required_labels: BTreeMap<String, String>,
}

/// An instance that already has a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub instance: String,
    pub group: GroupKey,
    pub host: String,
    /// Resources the instance was placed with (may differ from the group's current ones).
    pub resources: Resources,
    /// Creation order: larger is newer. Scale-down removes newer instances first.
    pub seq: u64,
}

/// Scheduler settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// A host accepts instances asking for up to `cpus * cpu_oversubscription` vCPUs in total.
    /// A value that is not a positive number is treated as 1.0.
    pub cpu_oversubscription: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cpu_oversubscription: DEFAULT_CPU_OVERSUBSCRIPTION,
        }
    }
}

/// Everything the scheduler looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub hosts: Vec<Host>,
    pub groups: Vec<Group>,
    pub placements: Vec<Placement>,
}

/// A new instance to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPlacement {
    pub group: GroupKey,
    pub host: String,
    pub resources: Resources,
    /// The displaced instance this one replaces (remove it once this one is ready).
    pub replaces: Option<String>,
    /// The volume to create on `host` (first placement of a volume no host has yet).
    pub creates_volume: Option<String>,
}

/// Why an existing instance is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemovalReason {
    /// The group has more instances than its scale.
    ScaleDown,
    /// The group is no longer desired.
    NotDesired,
    /// The host is draining; a replacement was placed elsewhere.
    HostDraining,
    /// The host is not in the snapshot (lost or deleted).
    HostGone,
    /// The host's memory shrank below what its instances use.
    HostOverCommitted,
}

/// An existing instance to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub instance: String,
    pub group: GroupKey,
    pub host: String,
    pub reason: RemovalReason,
}

/// Instances of a group that could not be placed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    pub group: GroupKey,
    pub count: u32,
    pub reason: String,
}

/// An existing instance that should move but cannot (it stays where it is for now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub instance: String,
    pub group: GroupKey,
    pub host: String,
    pub reason: String,
}

/// The scheduler's answer. Empty `place` and `remove` mean the snapshot is converged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Sorted by group, then host.
    pub place: Vec<NewPlacement>,
    /// Sorted by instance id.
    pub remove: Vec<Removal>,
    /// Sorted by group.
    pub unplaced: Vec<Unplaced>,
    /// Sorted by instance id.
    pub blocked: Vec<Blocked>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_noop(&self) -> bool {
        self.place.is_empty() && self.remove.is_empty()
    }
}
