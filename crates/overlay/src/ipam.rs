//! IP address management: the cluster /48, a /64 per host, an address per instance, a dedicated
//! public IPv4 per environment.
//!
//! Everything is data in, data out. Each operation that changes the state returns an
//! [`Allocation`], an event-like value the control plane appends to its event log;
//! [`Ipam::apply`] replays such values, so `Ipam::replay(config, log)` rebuilds the state exactly
//! (cursors included). Operations are idempotent: asking again for something already held returns
//! the same value and no event; releasing something not held returns no event.
//!
//! Addressing plan (see docs/overlay.md):
//! - host *n* (subnet index 1..=65535, never 0) gets `<cluster /48>:<n>::/64`;
//! - in a host's /64, `::1` is the host's bridge gateway and instances get `::2`, `::3`, …;
//! - env IPv4s come from an operator-configured [`Ipv4Pool`] of addresses, ranges and networks.
//!
//! Reuse policy (next-fit, see `pool`): a held value is never handed out; a released one is not
//! handed out again while any other value of its space has never been handed out, and after that
//! only when the allocation cursor has come round to it again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::net::{Ipv4Net, Ipv6Net};
use crate::pool::{cursor_after, next_fit};

/// Subnet indices of host /64s inside the cluster /48 (index 0 is never used).
pub const MAX_HOSTS: u16 = u16::MAX;
/// Host part of a host's bridge gateway in its /64.
pub const GATEWAY_HOST_PART: u64 = 1;
/// Host part of the first instance address in a host's /64.
pub const FIRST_INSTANCE_HOST_PART: u64 = 2;
/// Instance addresses per host /64: host parts `::2` to `::ffff:ffff:ffff:ffff`.
pub const MAX_INSTANCES_PER_HOST: u64 = u64::MAX - 1;

/// Why an IPAM operation was refused. Nothing is changed when an error is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("the cluster prefix must be a /48 (e.g. from `ula::generate`), got {0}")]
    ClusterPrefix(Ipv6Net),
    #[error("invalid IPAM limits: {0}")]
    Limits(String),
    #[error("{kind} id must not be empty")]
    EmptyId { kind: &'static str },
    #[error("host `{host}` has no /64 yet: allocate its host prefix (enrolment) first")]
    HostNotEnrolled { host: String },
    #[error(
        "host `{host}` still holds {count} instance address(es): delete (release) its instances before releasing the host"
    )]
    HostHasInstances { host: String, count: usize },
    #[error(
        "instance `{instance}` already holds an address on host `{holder}`, not `{requested}`: release it first to move it"
    )]
    InstanceOnOtherHost {
        instance: String,
        holder: String,
        requested: String,
    },
    #[error(
        "host prefixes exhausted: all {max} /64s of the cluster /48 are held; release hosts that left the cluster"
    )]
    HostPrefixesExhausted { max: u16 },
    #[error(
        "instance addresses exhausted on host `{host}`: all {max} addresses of its /64 are held; delete instances on it or place new ones on another host"
    )]
    InstanceAddressesExhausted { host: String, max: u64 },
    #[error(
        "the IPv4 pool is exhausted: all {size} address(es) are held by environments; add addresses to the pool or release an environment's IPv4"
    )]
    Ipv4Exhausted { size: u64 },
    #[error("invalid IPv4 pool entry `{entry}`: {reason}")]
    PoolEntry { entry: String, reason: String },
    #[error("the new IPv4 pool leaves out address(es) still held by environments: {addresses:?}")]
    PoolDropsHeld { addresses: Vec<Ipv4Addr> },
    #[error("allocation does not fit the current state: {0}")]
    Conflict(String),
}

/// An inclusive range of IPv4 addresses in a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct V4Range {
    lo: u32,
    hi: u32,
}

/// The operator's pool of public IPv4 addresses for the dedicated-IPv4 add-on.
///
/// Written as a list of entries: a single address (`203.0.113.7`), an inclusive range
/// (`203.0.113.10-203.0.113.20`) or a network (`198.51.100.0/28`: *every* address in it, so list
/// a range instead when the network and broadcast addresses are not usable). Entries may not
/// overlap; adjacent ones are merged. Serialises as the normalised list of entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ipv4Pool {
    ranges: Vec<V4Range>,
}

impl Ipv4Pool {
    /// An empty pool (the add-on is then unavailable: allocation says the pool is exhausted).
    pub fn empty() -> Self {
        Self::default()
    }

    /// The pool from its entries.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, IpamError> {
        let mut ranges = Vec::with_capacity(entries.len());
        for e in entries {
            ranges.push(parse_entry(e.as_ref().trim())?);
        }
        ranges.sort();
        let mut merged: Vec<V4Range> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.lo <= last.hi => {
                    return Err(IpamError::PoolEntry {
                        entry: fmt_range(r),
                        reason: format!("overlaps `{}`", fmt_range(*last)),
                    });
                }
                Some(last) if u64::from(r.lo) == u64::from(last.hi) + 1 => last.hi = r.hi,
                _ => merged.push(r),
            }
        }
        Ok(Self { ranges: merged })
    }

    /// The normalised entries.
    pub fn entries(&self) -> Vec<String> {
        self.ranges.iter().map(|r| fmt_range(*r)).collect()
    }

    /// Number of addresses in the pool.
    pub fn size(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| u64::from(r.hi) - u64::from(r.lo) + 1)
            .sum()
    }

    /// Whether `addr` is in the pool.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        self.ranges.iter().any(|r| r.lo <= a && a <= r.hi)
    }

    fn spans(&self) -> Vec<(u64, u64)> {
        self.ranges
            .iter()
            .map(|r| (u64::from(r.lo), u64::from(r.hi)))
            .collect()
    }
}

fn fmt_range(r: V4Range) -> String {
    if r.lo == r.hi {
        Ipv4Addr::from(r.lo).to_string()
    } else {
        format!("{}-{}", Ipv4Addr::from(r.lo), Ipv4Addr::from(r.hi))
    }
}

fn parse_entry(entry: &str) -> Result<V4Range, IpamError> {
    let err = |reason: String| IpamError::PoolEntry {
        entry: entry.to_string(),
        reason,
    };
    let addr = |s: &str| -> Result<u32, IpamError> {
        Ipv4Addr::from_str(s.trim())
            .map(u32::from)
            .map_err(|_| err(format!("`{}` is not an IPv4 address", s.trim())))
    };
    if entry.contains('/') {
        let net = Ipv4Net::from_str(entry).map_err(|e| err(e.to_string()))?;
        let (lo, hi) = net.bounds();
        Ok(V4Range {
            lo: u32::from(lo),
            hi: u32::from(hi),
        })
    } else if let Some((a, b)) = entry.split_once('-') {
        let (lo, hi) = (addr(a)?, addr(b)?);
        if lo > hi {
            return Err(err("the range ends before it starts".to_string()));
        }
        Ok(V4Range { lo, hi })
    } else {
        let a = addr(entry)?;
        Ok(V4Range { lo: a, hi: a })
    }
}

impl Serialize for Ipv4Pool {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.entries().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ipv4Pool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        Self::parse(&entries).map_err(serde::de::Error::custom)
    }
}

/// What an [`Ipam`] allocates from. Persisted by the caller with the cluster (the /48 is generated
/// once with [`crate::ula::generate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    /// The cluster's /48.
    pub cluster: Ipv6Net,
    /// Host /64s use subnet indices `1..=max_hosts` (at most 65535).
    #[serde(default = "default_max_hosts")]
    pub max_hosts: u16,
    /// Instance addresses per host use host parts `2..=1 + max_instances_per_host`.
    #[serde(default = "default_max_instances")]
    pub max_instances_per_host: u64,
}

fn default_max_hosts() -> u16 {
    MAX_HOSTS
}
fn default_max_instances() -> u64 {
    MAX_INSTANCES_PER_HOST
}

impl IpamConfig {
    /// The full plan for `cluster`: 65535 hosts, every address of each /64 from `::2`.
    pub fn new(cluster: Ipv6Net) -> Self {
        Self {
            cluster,
            max_hosts: MAX_HOSTS,
            max_instances_per_host: MAX_INSTANCES_PER_HOST,
        }
    }

    fn validate(&self) -> Result<(), IpamError> {
        if self.cluster.prefix_len() != 48 {
            return Err(IpamError::ClusterPrefix(self.cluster));
        }
        if self.max_hosts == 0 {
            return Err(IpamError::Limits("max_hosts must be at least 1".into()));
        }
        if self.max_instances_per_host == 0 || self.max_instances_per_host > MAX_INSTANCES_PER_HOST
        {
            return Err(IpamError::Limits(format!(
                "max_instances_per_host must be in 1..={MAX_INSTANCES_PER_HOST}"
            )));
        }
        Ok(())
    }

    fn host_span(&self) -> [(u64, u64); 1] {
        [(1, u64::from(self.max_hosts))]
    }

    fn instance_span(&self) -> [(u64, u64); 1] {
        [(
            FIRST_INSTANCE_HOST_PART,
            FIRST_INSTANCE_HOST_PART + (self.max_instances_per_host - 1),
        )]
    }

    fn host_prefix(&self, index: u16) -> Option<Ipv6Net> {
        self.cluster.subnet(64, u128::from(index))
    }
}

/// A change to the IPAM state, to be appended to the control plane's event log and replayed with
/// [`Ipam::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Allocation {
    /// Host `host` was given subnet `index` of the cluster: `prefix`.
    HostPrefix {
        host: String,
        index: u16,
        prefix: Ipv6Net,
    },
    /// Host `host` gave back its /64.
    HostReleased { host: String, prefix: Ipv6Net },
    /// Instance `instance` on host `host` was given `address`.
    InstanceAddress {
        host: String,
        instance: String,
        address: Ipv6Addr,
    },
    /// Instance `instance` gave back `address`.
    InstanceReleased {
        host: String,
        instance: String,
        address: Ipv6Addr,
    },
    /// Environment `env` was given the dedicated IPv4 `address`.
    EnvIpv4 { env: String, address: Ipv4Addr },
    /// Environment `env` gave back `address`.
    EnvIpv4Released { env: String, address: Ipv4Addr },
    /// The IPv4 pool became `pool`.
    Ipv4Pool { pool: Ipv4Pool },
}

/// The value an allocation produced, and the event to log when it was new (`None` when the holder
/// already had it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<T> {
    pub value: T,
    pub event: Option<Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    index: u16,
    /// Next-fit cursor over instance host parts.
    next_instance: u64,
    /// Host part → instance.
    #[serde(skip)]
    held: BTreeMap<u64, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceEntry {
    host: String,
    address: Ipv6Addr,
}

/// The serialised form of [`Ipam`]: reverse indexes are rebuilt (and checked) on load.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    config: IpamConfig,
    ipv4_pool: Ipv4Pool,
    next_host: u64,
    next_ipv4: u64,
    hosts: BTreeMap<String, HostEntry>,
    instances: BTreeMap<String, InstanceEntry>,
    env_ipv4: BTreeMap<String, Ipv4Addr>,
}

/// The IPAM state. Serialisable (as a checked snapshot); usually rebuilt from the log with
/// [`Ipam::replay`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Snapshot", into = "Snapshot")]
pub struct Ipam {
    config: IpamConfig,
    ipv4_pool: Ipv4Pool,
    next_host: u64,
    next_ipv4: u64,
    hosts: BTreeMap<String, HostEntry>,
    /// Subnet index → host.
    host_indexes: BTreeMap<u64, String>,
    instances: BTreeMap<String, InstanceEntry>,
    env_ipv4: BTreeMap<String, Ipv4Addr>,
    /// IPv4 (as u32) → env.
    ipv4_holders: BTreeMap<u64, String>,
}

impl From<Ipam> for Snapshot {
    fn from(i: Ipam) -> Self {
        Snapshot {
            config: i.config,
            ipv4_pool: i.ipv4_pool,
            next_host: i.next_host,
            next_ipv4: i.next_ipv4,
            hosts: i.hosts,
            instances: i.instances,
            env_ipv4: i.env_ipv4,
        }
    }
}

impl TryFrom<Snapshot> for Ipam {
    type Error = IpamError;
    fn try_from(s: Snapshot) -> Result<Self, IpamError> {
        let mut ipam = Ipam::new(s.config)?;
        ipam.ipv4_pool = s.ipv4_pool;
        for (host, entry) in &s.hosts {
            let prefix = ipam.config.host_prefix(entry.index).ok_or_else(|| {
                IpamError::Conflict(format!("host `{host}`: bad index {}", entry.index))
            })?;
            ipam.apply(&Allocation::HostPrefix {
                host: host.clone(),
                index: entry.index,
                prefix,
            })?;
        }
        for (instance, entry) in &s.instances {
            ipam.apply(&Allocation::InstanceAddress {
                host: entry.host.clone(),
                instance: instance.clone(),
                address: entry.address,
            })?;
        }
        for (env, address) in &s.env_ipv4 {
            ipam.apply(&Allocation::EnvIpv4 {
                env: env.clone(),
                address: *address,
            })?;
        }
        // Restore the cursors as they were (applying moved them).
        ipam.next_host = s.next_host;
        ipam.next_ipv4 = s.next_ipv4;
        for (host, entry) in s.hosts {
            if let Some(e) = ipam.hosts.get_mut(&host) {
                e.next_instance = entry.next_instance;
            }
        }
        Ok(ipam)
    }
}

fn non_empty(kind: &'static str, id: &str) -> Result<(), IpamError> {
    if id.is_empty() {
        Err(IpamError::EmptyId { kind })
    } else {
        Ok(())
    }
}

fn host_part(address: Ipv6Addr) -> u64 {
    // The low 64 bits: truncation is the point.
    (u128::from(address) & u128::from(u64::MAX)) as u64
}

impl Ipam {
    /// An empty IPAM for `config` with an empty IPv4 pool.
    pub fn new(config: IpamConfig) -> Result<Self, IpamError> {
        config.validate()?;
        Ok(Self {
            config,
            ipv4_pool: Ipv4Pool::empty(),
            next_host: 1,
            next_ipv4: 0,
            hosts: BTreeMap::new(),
            host_indexes: BTreeMap::new(),
            instances: BTreeMap::new(),
            env_ipv4: BTreeMap::new(),
            ipv4_holders: BTreeMap::new(),
        })
    }

    /// The state after replaying `log` onto an empty IPAM for `config`.
    pub fn replay<'a>(
        config: IpamConfig,
        log: impl IntoIterator<Item = &'a Allocation>,
    ) -> Result<Self, IpamError> {
        let mut ipam = Self::new(config)?;
        for a in log {
            ipam.apply(a)?;
        }
        Ok(ipam)
    }

    /// The configuration.
    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    /// The cluster /48.
    pub fn cluster(&self) -> Ipv6Net {
        self.config.cluster
    }

    /// The IPv4 pool.
    pub fn ipv4_pool(&self) -> &Ipv4Pool {
        &self.ipv4_pool
    }

    /// The /64 held by `host`.
    pub fn host_prefix(&self, host: &str) -> Option<Ipv6Net> {
        self.hosts
            .get(host)
            .and_then(|e| self.config.host_prefix(e.index))
    }

    /// The bridge gateway address (`::1`) of `host`'s /64.
    pub fn gateway(&self, host: &str) -> Option<Ipv6Addr> {
        self.host_prefix(host)
            .and_then(|p| p.nth(u128::from(GATEWAY_HOST_PART)))
    }

    /// Every host with its /64, by host id.
    pub fn hosts(&self) -> Vec<(String, Ipv6Net)> {
        self.hosts
            .iter()
            .filter_map(|(h, e)| Some((h.clone(), self.config.host_prefix(e.index)?)))
            .collect()
    }

    /// The host and address held by `instance`.
    pub fn instance_address(&self, instance: &str) -> Option<(&str, Ipv6Addr)> {
        self.instances
            .get(instance)
            .map(|e| (e.host.as_str(), e.address))
    }

    /// The instances holding addresses on `host`, with their addresses, in address order.
    pub fn instances_on(&self, host: &str) -> Vec<(String, Ipv6Addr)> {
        self.hosts
            .get(host)
            .map(|e| {
                e.held
                    .values()
                    .filter_map(|i| Some((i.clone(), self.instances.get(i)?.address)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The dedicated IPv4 held by `env`.
    pub fn env_ipv4(&self, env: &str) -> Option<Ipv4Addr> {
        self.env_ipv4.get(env).copied()
    }

    /// Give `host` a /64 (enrolment). Idempotent: a host that has one gets it back, no event.
    pub fn allocate_host_prefix(&mut self, host: &str) -> Result<Outcome<Ipv6Net>, IpamError> {
        non_empty("host", host)?;
        if let Some(prefix) = self.host_prefix(host) {
            return Ok(Outcome {
                value: prefix,
                event: None,
            });
        }
        let index = next_fit(&self.config.host_span(), &self.host_indexes, self.next_host)
            .and_then(|i| u16::try_from(i).ok())
            .ok_or(IpamError::HostPrefixesExhausted {
                max: self.config.max_hosts,
            })?;
        let prefix = self
            .config
            .host_prefix(index)
            .ok_or_else(|| IpamError::Conflict(format!("subnet index {index} out of the /48")))?;
        let event = Allocation::HostPrefix {
            host: host.to_string(),
            index,
            prefix,
        };
        self.apply(&event)?;
        Ok(Outcome {
            value: prefix,
            event: Some(event),
        })
    }

    /// Take back `host`'s /64. Refused while the host still holds instance addresses; a host
    /// without a /64 gives no event.
    pub fn release_host(&mut self, host: &str) -> Result<Option<Allocation>, IpamError> {
        let Some(prefix) = self.host_prefix(host) else {
            return Ok(None);
        };
        let event = Allocation::HostReleased {
            host: host.to_string(),
            prefix,
        };
        self.apply(&event)?;
        Ok(Some(event))
    }

    /// Puts `host`'s instance cursor just past `last`, the address handed out last. Callers that
    /// rebuild the state from what is *held* (not from the whole log) persist that address and
    /// restore it here, so a released address is not handed out again at once. An address
    /// outside the host's /64 (or an unknown host) leaves the cursor alone.
    pub fn resume_instances_after(&mut self, host: &str, last: Ipv6Addr) {
        let Some(prefix) = self.host_prefix(host) else {
            return;
        };
        if let Some(e) = self.hosts.get_mut(host)
            && prefix.contains(&last)
        {
            e.next_instance = cursor_after(u128::from(last) as u64);
        }
    }

    /// Give `instance` an address in `host`'s /64. Idempotent for the same host; an instance
    /// holding an address on another host is refused (release it first).
    pub fn allocate_instance(
        &mut self,
        host: &str,
        instance: &str,
    ) -> Result<Outcome<Ipv6Addr>, IpamError> {
        non_empty("host", host)?;
        non_empty("instance", instance)?;
        if let Some(e) = self.instances.get(instance) {
            if e.host == host {
                return Ok(Outcome {
                    value: e.address,
                    event: None,
                });
            }
            return Err(IpamError::InstanceOnOtherHost {
                instance: instance.to_string(),
                holder: e.host.clone(),
                requested: host.to_string(),
            });
        }
        let (Some(entry), Some(prefix)) = (self.hosts.get(host), self.host_prefix(host)) else {
            return Err(IpamError::HostNotEnrolled {
                host: host.to_string(),
            });
        };
        let part = next_fit(
            &self.config.instance_span(),
            &entry.held,
            entry.next_instance,
        )
        .ok_or_else(|| IpamError::InstanceAddressesExhausted {
            host: host.to_string(),
            max: self.config.max_instances_per_host,
        })?;
        let address = prefix
            .nth(u128::from(part))
            .ok_or_else(|| IpamError::Conflict(format!("host part {part} out of the /64")))?;
        let event = Allocation::InstanceAddress {
            host: host.to_string(),
            instance: instance.to_string(),
            address,
        };
        self.apply(&event)?;
        Ok(Outcome {
            value: address,
            event: Some(event),
        })
    }

    /// Take back `instance`'s address (on delete); an instance without one gives no event.
    pub fn release_instance(&mut self, instance: &str) -> Result<Option<Allocation>, IpamError> {
        let Some(e) = self.instances.get(instance) else {
            return Ok(None);
        };
        let event = Allocation::InstanceReleased {
            host: e.host.clone(),
            instance: instance.to_string(),
            address: e.address,
        };
        self.apply(&event)?;
        Ok(Some(event))
    }

    /// Give `env` a dedicated IPv4 from the pool. Idempotent.
    pub fn allocate_env_ipv4(&mut self, env: &str) -> Result<Outcome<Ipv4Addr>, IpamError> {
        non_empty("env", env)?;
        if let Some(a) = self.env_ipv4(env) {
            return Ok(Outcome {
                value: a,
                event: None,
            });
        }
        let value = next_fit(&self.ipv4_pool.spans(), &self.ipv4_holders, self.next_ipv4)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(IpamError::Ipv4Exhausted {
                size: self.ipv4_pool.size(),
            })?;
        let address = Ipv4Addr::from(value);
        let event = Allocation::EnvIpv4 {
            env: env.to_string(),
            address,
        };
        self.apply(&event)?;
        Ok(Outcome {
            value: address,
            event: Some(event),
        })
    }

    /// Take back `env`'s dedicated IPv4; an env without one gives no event.
    pub fn release_env_ipv4(&mut self, env: &str) -> Result<Option<Allocation>, IpamError> {
        let Some(address) = self.env_ipv4(env) else {
            return Ok(None);
        };
        let event = Allocation::EnvIpv4Released {
            env: env.to_string(),
            address,
        };
        self.apply(&event)?;
        Ok(Some(event))
    }

    /// Replace the IPv4 pool. Refused if an address held by an env would fall out of it; the same
    /// pool gives no event.
    pub fn set_ipv4_pool(&mut self, pool: Ipv4Pool) -> Result<Option<Allocation>, IpamError> {
        if pool == self.ipv4_pool {
            return Ok(None);
        }
        let event = Allocation::Ipv4Pool { pool };
        self.apply(&event)?;
        Ok(Some(event))
    }

    /// Apply an allocation (from this IPAM or from the log). Re-applying what the state already
    /// says is a no-op; an allocation contradicting the state (a value held by someone else, an
    /// address outside its prefix, a release of something held differently) is refused and
    /// changes nothing.
    pub fn apply(&mut self, a: &Allocation) -> Result<(), IpamError> {
        let conflict = |m: String| Err(IpamError::Conflict(m));
        match a {
            Allocation::HostPrefix {
                host,
                index,
                prefix,
            } => {
                non_empty("host", host)?;
                if *index == 0 || *index > self.config.max_hosts {
                    return conflict(format!("host `{host}`: subnet index {index} out of range"));
                }
                if self.config.host_prefix(*index) != Some(*prefix) {
                    return conflict(format!(
                        "host `{host}`: {prefix} is not subnet {index} of {}",
                        self.config.cluster
                    ));
                }
                if let Some(e) = self.hosts.get(host) {
                    return if e.index == *index {
                        Ok(())
                    } else {
                        conflict(format!("host `{host}` already holds subnet {}", e.index))
                    };
                }
                if let Some(other) = self.host_indexes.get(&u64::from(*index)) {
                    return conflict(format!("{prefix} is held by host `{other}`"));
                }
                self.host_indexes.insert(u64::from(*index), host.clone());
                self.hosts.insert(
                    host.clone(),
                    HostEntry {
                        index: *index,
                        next_instance: FIRST_INSTANCE_HOST_PART,
                        held: BTreeMap::new(),
                    },
                );
                self.next_host = cursor_after(u64::from(*index));
                Ok(())
            }
            Allocation::HostReleased { host, prefix } => {
                let Some(e) = self.hosts.get(host) else {
                    return Ok(());
                };
                if self.config.host_prefix(e.index) != Some(*prefix) {
                    return conflict(format!("host `{host}` does not hold {prefix}"));
                }
                if !e.held.is_empty() {
                    return Err(IpamError::HostHasInstances {
                        host: host.clone(),
                        count: e.held.len(),
                    });
                }
                self.host_indexes.remove(&u64::from(e.index));
                self.hosts.remove(host);
                Ok(())
            }
            Allocation::InstanceAddress {
                host,
                instance,
                address,
            } => {
                non_empty("instance", instance)?;
                let Some(prefix) = self.host_prefix(host) else {
                    return Err(IpamError::HostNotEnrolled { host: host.clone() });
                };
                if let Some(e) = self.instances.get(instance) {
                    return if e.host == *host && e.address == *address {
                        Ok(())
                    } else {
                        conflict(format!(
                            "instance `{instance}` already holds {} on host `{}`",
                            e.address, e.host
                        ))
                    };
                }
                let part = host_part(*address);
                let [(lo, hi)] = self.config.instance_span();
                if !prefix.contains(address) || part < lo || part > hi {
                    return conflict(format!(
                        "{address} is not an instance address of host `{host}` ({prefix})"
                    ));
                }
                let Some(entry) = self.hosts.get_mut(host) else {
                    return Err(IpamError::HostNotEnrolled { host: host.clone() });
                };
                if let Some(other) = entry.held.get(&part) {
                    return conflict(format!("{address} is held by instance `{other}`"));
                }
                entry.held.insert(part, instance.clone());
                entry.next_instance = cursor_after(part);
                self.instances.insert(
                    instance.clone(),
                    InstanceEntry {
                        host: host.clone(),
                        address: *address,
                    },
                );
                Ok(())
            }
            Allocation::InstanceReleased {
                host,
                instance,
                address,
            } => {
                let Some(e) = self.instances.get(instance) else {
                    return Ok(());
                };
                if e.host != *host || e.address != *address {
                    return conflict(format!(
                        "instance `{instance}` holds {} on host `{}`, not {address} on `{host}`",
                        e.address, e.host
                    ));
                }
                if let Some(entry) = self.hosts.get_mut(host) {
                    entry.held.remove(&host_part(*address));
                }
                self.instances.remove(instance);
                Ok(())
            }
            Allocation::EnvIpv4 { env, address } => {
                non_empty("env", env)?;
                if let Some(held) = self.env_ipv4.get(env) {
                    return if held == address {
                        Ok(())
                    } else {
                        conflict(format!("env `{env}` already holds {held}"))
                    };
                }
                if !self.ipv4_pool.contains(*address) {
                    return conflict(format!("{address} is not in the IPv4 pool"));
                }
                let key = u64::from(u32::from(*address));
                if let Some(other) = self.ipv4_holders.get(&key) {
                    return conflict(format!("{address} is held by env `{other}`"));
                }
                self.ipv4_holders.insert(key, env.clone());
                self.env_ipv4.insert(env.clone(), *address);
                self.next_ipv4 = cursor_after(key);
                Ok(())
            }
            Allocation::EnvIpv4Released { env, address } => {
                let Some(held) = self.env_ipv4.get(env) else {
                    return Ok(());
                };
                if held != address {
                    return conflict(format!("env `{env}` holds {held}, not {address}"));
                }
                self.ipv4_holders.remove(&u64::from(u32::from(*address)));
                self.env_ipv4.remove(env);
                Ok(())
            }
            Allocation::Ipv4Pool { pool } => {
                let dropped: Vec<Ipv4Addr> = self
                    .env_ipv4
                    .values()
                    .filter(|a| !pool.contains(**a))
                    .copied()
                    .collect();
                if !dropped.is_empty() {
                    return Err(IpamError::PoolDropsHeld { addresses: dropped });
                }
                self.ipv4_pool = pool.clone();
                Ok(())
            }
        }
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allocation::HostPrefix { host, prefix, .. } => write!(f, "host {host} ← {prefix}"),
            Allocation::HostReleased { host, prefix } => write!(f, "host {host} released {prefix}"),
            Allocation::InstanceAddress {
                host,
                instance,
                address,
            } => write!(f, "instance {instance} on {host} ← {address}"),
            Allocation::InstanceReleased {
                instance, address, ..
            } => write!(f, "instance {instance} released {address}"),
            Allocation::EnvIpv4 { env, address } => write!(f, "env {env} ← {address}"),
            Allocation::EnvIpv4Released { env, address } => {
                write!(f, "env {env} released {address}")
            }
            Allocation::Ipv4Pool { pool } => write!(f, "IPv4 pool = {:?}", pool.entries()),
        }
    }
}
