//! Property tests of the scheduler: memory never over its cap, CPU within the oversubscription,
//! constraints respected, every placeable instance placed, counts add up, convergence then
//! stability, determinism under input shuffling, and even spread when capacity is ample.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use scalebox_scheduler::*;

const VOLS: [&str; 3] = ["v1", "v2", "v3"];

fn host_strategy() -> impl Strategy<Value = Host> {
    (
        prop_oneof![Just(512u64), Just(1024), Just(2048), Just(4096)],
        1u32..4,
        prop_oneof![6 => Just(HostState::Schedulable), 1 => Just(HostState::Cordoned), 1 => Just(HostState::Draining)],
        proptest::option::weighted(0.3, prop_oneof![Just("a"), Just("b")]),
        proptest::sample::subsequence(VOLS[..2].to_vec(), 0..=1),
    )
        .prop_map(|(memory_mb, cpus, state, zone, vols)| Host {
            id: String::new(),
            memory_mb,
            cpus,
            labels: zone.map(|z| ("zone".to_owned(), z.to_owned())).into_iter().collect(),
            volumes: vols.into_iter().map(str::to_owned).collect(),
            state,
        })
}

fn group_strategy() -> impl Strategy<Value = Group> {
    (
        0u32..7,
        prop_oneof![Just(64u64), Just(128), Just(256), Just(512), Just(1024)],
        prop_oneof![Just(0u64), Just(250), Just(1000), Just(2000)],
        proptest::option::weighted(0.2, (0usize..3, any::<bool>())),
        proptest::option::weighted(0.15, prop_oneof![Just("a"), Just("b")]),
    )
        .prop_map(|(scale, memory_mb, cpu_millis, vol, zone)| Group {
            key: GroupKey {
                env: "e".into(),
                process: String::new(),
            },
            scale: if vol.is_some() { scale.min(1) } else { scale },
            resources: Resources {
                memory_mb,
                cpu_millis,
            },
            volume: vol.map(|(i, create)| VolumeNeed {
                name: VOLS[i].to_owned(),
                create_if_absent: create,
            }),
            required_labels: zone
                .map(|z| ("zone".to_owned(), z.to_owned()))
                .into_iter()
                .collect(),
        })
}

/// A snapshot with existing placements on random (possibly unknown) hosts of random (possibly
/// undesired) groups; volume names appear on at most one host.
fn snapshot_strategy() -> impl Strategy<Value = Snapshot> {
    (
        proptest::collection::vec(host_strategy(), 0..8),
        proptest::collection::vec(group_strategy(), 1..5),
        proptest::collection::vec((0usize..9, 0usize..6, 0u64..100), 0..16),
    )
        .prop_map(|(mut hosts, mut groups, raw)| {
            let mut seen = BTreeSet::new();
            for (i, h) in hosts.iter_mut().enumerate() {
                h.id = format!("h{i}");
                h.volumes.retain(|v| seen.insert(v.clone()));
            }
            // like the manifest: a volume belongs to one process type
            let mut used = BTreeSet::new();
            for (i, g) in groups.iter_mut().enumerate() {
                g.key.process = format!("p{i}");
                if g.volume
                    .as_ref()
                    .is_some_and(|v| !used.insert(v.name.clone()))
                {
                    g.volume = None;
                }
            }
            let placements = raw
                .into_iter()
                .enumerate()
                .map(|(n, (h, g, seq))| {
                    let key = groups.get(g).map(|g| g.key.clone()).unwrap_or(GroupKey {
                        env: "e".into(),
                        process: "old".into(),
                    });
                    let resources = groups.get(g).map(|g| g.resources).unwrap_or(Resources {
                        memory_mb: 128,
                        cpu_millis: 500,
                    });
                    Placement {
                        instance: format!("i{n:02}"),
                        group: key,
                        host: hosts.get(h).map(|h| h.id.clone()).unwrap_or("gone".into()),
                        resources,
                        seq,
                    }
                })
                .collect();
            Snapshot {
                hosts,
                groups,
                placements,
            }
        })
}

/// The snapshot after the plan ran: removals gone, new instances added, created volumes recorded.
fn apply(s: &Snapshot, p: &Plan, round: usize) -> Snapshot {
    let removed: BTreeSet<&str> = p.remove.iter().map(|r| r.instance.as_str()).collect();
    let mut next = s.clone();
    next.placements
        .retain(|x| !removed.contains(x.instance.as_str()));
    let max_seq = s.placements.iter().map(|x| x.seq).max().unwrap_or(0);
    for (n, np) in p.place.iter().enumerate() {
        next.placements.push(Placement {
            instance: format!("n{round}-{n:03}"),
            group: np.group.clone(),
            host: np.host.clone(),
            resources: np.resources,
            seq: max_seq + 1 + n as u64,
        });
        if let Some(v) = &np.creates_volume {
            let h = next.hosts.iter_mut().find(|h| h.id == np.host).unwrap();
            h.volumes.insert(v.clone());
        }
    }
    next
}

fn host_by_id<'a>(s: &'a Snapshot, id: &str) -> Option<&'a Host> {
    s.hosts.iter().find(|h| h.id == id)
}

/// Whether `h` may run `g` at all (ignoring capacity), given volumes after the plan.
fn eligible(s: &Snapshot, p: &Plan, g: &Group, h: &Host) -> bool {
    if h.state != HostState::Schedulable
        || !g
            .required_labels
            .iter()
            .all(|(k, v)| h.labels.get(k) == Some(v))
    {
        return false;
    }
    match &g.volume {
        None => true,
        Some(v) => {
            let created = p
                .place
                .iter()
                .find(|n| n.creates_volume.as_deref() == Some(&v.name));
            if let Some(c) = created {
                return c.host == h.id;
            }
            let anywhere = s.hosts.iter().any(|x| x.volumes.contains(&v.name));
            if anywhere {
                h.volumes.contains(&v.name)
            } else {
                v.create_if_absent
            }
        }
    }
}

fn check_invariants(s: &Snapshot, p: &Plan, cfg: &Config) -> Result<(), TestCaseError> {
    let removed: BTreeSet<&str> = p.remove.iter().map(|r| r.instance.as_str()).collect();
    // memory / cpu per host: everything still running during the plan + new
    let mut mem_all: HashMap<&str, u64> = HashMap::new();
    let mut mem_after: HashMap<&str, u64> = HashMap::new();
    let mut cpu_all: HashMap<&str, u64> = HashMap::new();
    for x in &s.placements {
        *mem_all.entry(&x.host).or_default() += x.resources.memory_mb;
        *cpu_all.entry(&x.host).or_default() += x.resources.cpu_millis;
        if !removed.contains(x.instance.as_str()) {
            *mem_after.entry(&x.host).or_default() += x.resources.memory_mb;
        }
    }
    let mut new_on: HashMap<&str, (u64, u64)> = HashMap::new();
    for n in &p.place {
        let e = new_on.entry(&n.host).or_default();
        e.0 += n.resources.memory_mb;
        e.1 += n.resources.cpu_millis;
        let h = host_by_id(s, &n.host);
        prop_assert!(h.is_some(), "placed on unknown host {}", n.host);
        let g = s.groups.iter().find(|g| g.key == n.group).unwrap();
        prop_assert!(
            eligible(s, p, g, h.unwrap()),
            "{:?} not eligible for {}",
            n,
            g.key
        );
    }
    for h in &s.hosts {
        let id = h.id.as_str();
        let (nm, nc) = new_on.get(id).copied().unwrap_or_default();
        if nm > 0 || nc > 0 {
            prop_assert!(
                mem_all.get(id).copied().unwrap_or(0) + nm <= h.memory_mb,
                "memory over on {id}"
            );
            let cap = (f64::from(h.cpus) * 1000.0 * cfg.cpu_oversubscription) as u64;
            // (instances asking for no CPU fit even on a host already over its CPU)
            prop_assert!(
                nc == 0 || cpu_all.get(id).copied().unwrap_or(0) + nc <= cap,
                "cpu over on {id}"
            );
        }
        // after the plan, no host over its memory unless it started over and is shedding
        let after = mem_after.get(id).copied().unwrap_or(0) + nm;
        prop_assert!(
            after <= h.memory_mb,
            "host {id} at {after} MB of {} after the plan",
            h.memory_mb
        );
    }
    // counts add up per group
    for g in &s.groups {
        let after = apply(s, p, 999);
        let healthy = after
            .placements
            .iter()
            .filter(|x| x.group == g.key)
            .filter(|x| {
                let h = host_by_id(&after, &x.host).unwrap();
                h.state != HostState::Draining
                    || g.volume
                        .as_ref()
                        .is_some_and(|v| h.volumes.contains(&v.name))
            })
            .count() as u32;
        let unplaced = p
            .unplaced
            .iter()
            .find(|u| u.group == g.key)
            .map_or(0, |u| u.count);
        prop_assert_eq!(healthy + unplaced, g.scale, "group {} plan {:?}", g.key, p);
        // maximality: if something is unplaced, no eligible host has room for one more
        if unplaced > 0 {
            for h in &s.hosts {
                if !eligible(s, p, g, h) {
                    continue;
                }
                let (nm, nc) = new_on.get(h.id.as_str()).copied().unwrap_or_default();
                let free_mem = h
                    .memory_mb
                    .saturating_sub(mem_all.get(h.id.as_str()).copied().unwrap_or(0) + nm);
                let cap = (f64::from(h.cpus) * 1000.0 * cfg.cpu_oversubscription) as u64;
                let free_cpu =
                    cap.saturating_sub(cpu_all.get(h.id.as_str()).copied().unwrap_or(0) + nc);
                let evicted_here = p
                    .remove
                    .iter()
                    .any(|r| r.host == h.id && r.reason == RemovalReason::HostOverCommitted);
                prop_assert!(
                    evicted_here
                        || free_mem < g.resources.memory_mb
                        || free_cpu < g.resources.cpu_millis,
                    "group {} left {} unplaced but host {} has {} MB / {} mCPU free",
                    g.key,
                    unplaced,
                    h.id,
                    free_mem,
                    free_cpu
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_respect_capacity_constraints_and_counts(s in snapshot_strategy(), ratio in prop_oneof![Just(1.0), Just(4.0)]) {
        let cfg = Config { cpu_oversubscription: ratio };
        let p = plan(&s, &cfg);
        check_invariants(&s, &p, &cfg)?;
    }

    #[test]
    fn converges_then_moves_nothing(s in snapshot_strategy()) {
        let cfg = Config::default();
        let mut cur = s;
        let mut rounds = 0;
        loop {
            let p = plan(&cur, &cfg);
            check_invariants(&cur, &p, &cfg)?;
            if p.is_noop() {
                // stable: planning the converged snapshot again gives the same empty plan
                prop_assert_eq!(plan(&cur, &cfg), p);
                break;
            }
            rounds += 1;
            prop_assert!(rounds <= 4, "not converged after 4 rounds: {:?}", p);
            cur = apply(&cur, &p, rounds);
        }
    }

    #[test]
    fn fast_path_gives_the_same_plan_as_the_heap(s in snapshot_strategy(), ratio in prop_oneof![Just(1.0), Just(4.0)]) {
        let cfg = Config { cpu_oversubscription: ratio };
        prop_assert_eq!(plan(&s, &cfg), plan_reference(&s, &cfg));
    }

    #[test]
    fn deterministic_under_input_shuffling(s in snapshot_strategy(), seed in any::<u64>()) {
        let mut shuffled = s.clone();
        let mut x = seed | 1;
        let mut next = || { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x };
        for i in (1..shuffled.hosts.len()).rev() { let j = (next() % (i as u64 + 1)) as usize; shuffled.hosts.swap(i, j); }
        for i in (1..shuffled.groups.len()).rev() { let j = (next() % (i as u64 + 1)) as usize; shuffled.groups.swap(i, j); }
        for i in (1..shuffled.placements.len()).rev() { let j = (next() % (i as u64 + 1)) as usize; shuffled.placements.swap(i, j); }
        let cfg = Config::default();
        prop_assert_eq!(plan(&s, &cfg), plan(&shuffled, &cfg));
    }

    #[test]
    fn spreads_evenly_when_capacity_is_ample(n_hosts in 1usize..12, scales in proptest::collection::vec(0u32..40, 1..5)) {
        let hosts: Vec<Host> = (0..n_hosts).map(|i| Host {
            id: format!("h{i:02}"),
            memory_mb: 1 << 20,
            cpus: 1024,
            labels: BTreeMap::new(),
            volumes: BTreeSet::new(),
            state: HostState::Schedulable,
        }).collect();
        let groups: Vec<Group> = scales.iter().enumerate().map(|(i, &scale)| Group {
            key: GroupKey { env: "e".into(), process: format!("p{i}") },
            scale,
            resources: Resources { memory_mb: 256, cpu_millis: 500 },
            volume: None,
            required_labels: BTreeMap::new(),
        }).collect();
        let p = plan(&Snapshot { hosts: hosts.clone(), groups: groups.clone(), placements: vec![] }, &Config::default());
        prop_assert!(p.unplaced.is_empty());
        for g in &groups {
            let mut per_host: HashMap<&str, u32> = hosts.iter().map(|h| (h.id.as_str(), 0)).collect();
            for n in p.place.iter().filter(|n| n.group == g.key) {
                *per_host.get_mut(n.host.as_str()).unwrap() += 1;
            }
            let max = per_host.values().max().copied().unwrap_or(0);
            let min = per_host.values().min().copied().unwrap_or(0);
            prop_assert!(max - min <= 1, "group {} spread {:?}", g.key, per_host);
            prop_assert_eq!(per_host.values().sum::<u32>(), g.scale);
        }
    }
}
