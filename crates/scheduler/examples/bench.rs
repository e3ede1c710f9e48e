//! Scheduler benchmark: places 10,000 instances on 1,000 hosts with `scalebox_scheduler::plan` and
//! with a naive first-fit baseline on the same input, then re-plans the converged cluster after a
//! small change. Prints times, the ratio and placement quality. Run via `bench/scheduler/run`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use scalebox_scheduler::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

/// 1,000 hosts (8-16 GiB, 8-32 vCPUs, two zones, 3% cordoned, 2% draining) and groups whose
/// scales add up to `instances` (1-10 replicas, 128-2048 MB, 0.25-2 vCPUs; 1% with a local volume
/// on a given host, 5% pinned to a zone). About 70% of the cluster's memory ends up used.
fn scenario(n_hosts: usize, instances: u32, seed: u64, host_mem: &[u64]) -> Snapshot {
    let mut rng = Rng(seed);
    let hosts: Vec<Host> = (0..n_hosts)
        .map(|i| {
            let state = match rng.next() % 100 {
                0..=2 => HostState::Cordoned,
                3..=4 => HostState::Draining,
                _ => HostState::Schedulable,
            };
            Host {
                id: format!("host-{i:04}"),
                memory_mb: rng.pick(host_mem),
                cpus: rng.pick(&[8, 16, 32]),
                labels: BTreeMap::from([("zone".to_owned(), format!("z{}", i % 2))]),
                volumes: BTreeSet::new(),
                state,
            }
        })
        .collect();
    let mut hosts = hosts;
    let mut groups = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < instances {
        let scale = (1 + rng.next() % 10).min(u64::from(instances - total)) as u32;
        let mut g = Group {
            key: GroupKey {
                env: format!("env-{}", i / 4),
                process: format!("p{}", i % 4),
            },
            scale,
            resources: Resources {
                memory_mb: rng.pick(&[128, 256, 512, 1024, 2048]),
                cpu_millis: rng.pick(&[250, 500, 1000, 2000]),
            },
            volume: None,
            required_labels: BTreeMap::new(),
        };
        match rng.next() % 100 {
            0 => {
                g.scale = 1;
                let name = format!("vol-{i}");
                let h = (rng.next() % n_hosts as u64) as usize;
                hosts[h].volumes.insert(name.clone());
                g.volume = Some(VolumeNeed {
                    name,
                    create_if_absent: false,
                });
            }
            1..=5 => {
                g.required_labels
                    .insert("zone".into(), format!("z{}", rng.next() % 2));
            }
            _ => {}
        }
        total += g.scale;
        groups.push(g);
        i += 1;
    }
    Snapshot {
        hosts,
        groups,
        placements: Vec::new(),
    }
}

/// Baseline: every instance, group by group in input order, on the first host (by id) that is
/// schedulable, matches labels and volume, and has the memory and CPU left.
fn first_fit(s: &Snapshot, cfg: &Config) -> Plan {
    let mut hosts: Vec<&Host> = s.hosts.iter().collect();
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    let mut used: Vec<(u64, u64)> = vec![(0, 0); hosts.len()];
    let mut plan = Plan::default();
    for g in &s.groups {
        let mut left = g.scale;
        for _ in 0..g.scale {
            let found = hosts.iter().enumerate().position(|(i, h)| {
                h.state == HostState::Schedulable
                    && g.required_labels
                        .iter()
                        .all(|(k, v)| h.labels.get(k) == Some(v))
                    && g.volume
                        .as_ref()
                        .is_none_or(|v| h.volumes.contains(&v.name))
                    && used[i].0 + g.resources.memory_mb <= h.memory_mb
                    && used[i].1 + g.resources.cpu_millis
                        <= (f64::from(h.cpus) * 1000.0 * cfg.cpu_oversubscription) as u64
            });
            let Some(i) = found else { break };
            used[i].0 += g.resources.memory_mb;
            used[i].1 += g.resources.cpu_millis;
            left -= 1;
            plan.place.push(NewPlacement {
                group: g.key.clone(),
                host: hosts[i].id.clone(),
                resources: g.resources,
                replaces: None,
                creates_volume: None,
            });
        }
        if left > 0 {
            plan.unplaced.push(Unplaced {
                group: g.key.clone(),
                count: left,
                reason: "no fit".into(),
            });
        }
    }
    plan
}

struct Quality {
    placed: usize,
    placed_mem_gb: f64,
    unplaced: u32,
    hosts_used: usize,
    worst_group_on_one_host: usize,
    groups_all_on_one_host: usize,
    max_host_mem_pct: f64,
}

/// Checks the memory cap (panics if violated: a benchmark of a wrong answer is worthless) and
/// measures spread.
fn quality(s: &Snapshot, p: &Plan) -> Quality {
    let cap: HashMap<&str, u64> = s
        .hosts
        .iter()
        .map(|h| (h.id.as_str(), h.memory_mb))
        .collect();
    let mut mem: HashMap<&str, u64> = HashMap::new();
    let mut per_group: HashMap<&GroupKey, HashMap<&str, usize>> = HashMap::new();
    for n in &p.place {
        *mem.entry(&n.host).or_default() += n.resources.memory_mb;
        *per_group
            .entry(&n.group)
            .or_default()
            .entry(&n.host)
            .or_default() += 1;
    }
    let mut max_pct: f64 = 0.0;
    for (h, m) in &mem {
        assert!(*m <= cap[h], "memory over cap on {h}");
        max_pct = max_pct.max(*m as f64 * 100.0 / cap[h] as f64);
    }
    let volume_groups: std::collections::HashSet<&GroupKey> = s
        .groups
        .iter()
        .filter(|g| g.volume.is_some())
        .map(|g| &g.key)
        .collect();
    let multi: Vec<&HashMap<&str, usize>> = per_group
        .iter()
        .filter(|(k, hs)| hs.values().sum::<usize>() > 1 && !volume_groups.contains(*k))
        .map(|(_, hs)| hs)
        .collect();
    Quality {
        placed: p.place.len(),
        placed_mem_gb: p.place.iter().map(|n| n.resources.memory_mb).sum::<u64>() as f64 / 1024.0,
        unplaced: p.unplaced.iter().map(|u| u.count).sum(),
        hosts_used: mem.len(),
        worst_group_on_one_host: per_group
            .values()
            .flat_map(|hs| hs.values())
            .copied()
            .max()
            .unwrap_or(0),
        groups_all_on_one_host: multi.iter().filter(|hs| hs.len() == 1).count(),
        max_host_mem_pct: max_pct,
    }
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed());
        last = Some(out);
    }
    times.sort();
    (times[0], times[runs / 2], last.expect("runs > 0"))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let instances: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let runs = 7;
    let cfg = Config::default();
    let s = scenario(hosts, instances, 0x5eed_5ca1_ab1e, &[8192, 12288, 16384]);
    println!(
        "scenario: {} hosts, {} groups, {} instances, {} runs each (min / median)",
        s.hosts.len(),
        s.groups.len(),
        s.groups.iter().map(|g| g.scale).sum::<u32>(),
        runs
    );

    let (sb_min, sb_med, sb_plan) = time(runs, || plan(&s, &cfg));
    let (ref_min, ref_med, ref_plan) = time(runs, || plan_reference(&s, &cfg));
    assert_eq!(
        sb_plan, ref_plan,
        "fast path and heap-only placement must agree"
    );
    let (ff_min, ff_med, ff_plan) = time(runs, || first_fit(&s, &cfg));
    let q_sb = quality(&s, &sb_plan);
    let q_ff = quality(&s, &ff_plan);
    println!("\ncold placement (empty cluster):");
    println!("  {:<22} {:>10} {:>10}", "", "scheduler", "first-fit");
    println!(
        "  {:<22} {:>10} {:>10}",
        "time (min)",
        ms(sb_min),
        ms(ff_min)
    );
    println!(
        "  {:<22} {:>10} {:>10}",
        "time (median)",
        ms(sb_med),
        ms(ff_med)
    );
    println!("  {:<22} {:>10} {:>10}", "placed", q_sb.placed, q_ff.placed);
    println!(
        "  {:<22} {:>6.0} GiB {:>6.0} GiB",
        "placed memory", q_sb.placed_mem_gb, q_ff.placed_mem_gb
    );
    println!(
        "  {:<22} {:>10} {:>10}",
        "unplaced", q_sb.unplaced, q_ff.unplaced
    );
    println!(
        "  {:<22} {:>10} {:>10}",
        "hosts used", q_sb.hosts_used, q_ff.hosts_used
    );
    println!(
        "  {:<22} {:>10} {:>10}",
        "max replicas/host", q_sb.worst_group_on_one_host, q_ff.worst_group_on_one_host
    );
    println!(
        "  {:<22} {:>10} {:>10}",
        "groups on 1 host", q_sb.groups_all_on_one_host, q_ff.groups_all_on_one_host
    );
    println!(
        "  {:<22} {:>9.0}% {:>9.0}%",
        "fullest host memory", q_sb.max_host_mem_pct, q_ff.max_host_mem_pct
    );
    println!(
        "  ratio scheduler/first-fit (median): {:.2}x",
        sb_med.as_secs_f64() / ff_med.as_secs_f64()
    );
    println!(
        "  scheduler without its fast path (same plan): {} / {} ({:.2}x first-fit)",
        ms(ref_min),
        ms(ref_med),
        ref_med.as_secs_f64() / ff_med.as_secs_f64()
    );
    for u in sb_plan.unplaced.iter().take(5) {
        println!("  unplaced {} x{}: {}", u.group, u.count, u.reason);
    }

    // Steady state: apply the plan, then scale 10% of groups up by one and drain 5 hosts.
    let mut converged = s.clone();
    for (n, p) in sb_plan.place.iter().enumerate() {
        converged.placements.push(Placement {
            instance: format!("i{n:05}"),
            group: p.group.clone(),
            host: p.host.clone(),
            resources: p.resources,
            seq: n as u64,
        });
    }
    let (noop_min, noop_med, noop) = time(runs, || plan(&converged, &cfg));
    let mut changed = converged.clone();
    for g in changed.groups.iter_mut().step_by(10) {
        if g.volume.is_none() {
            g.scale += 1;
        }
    }
    let mut drained = 0;
    for h in changed.hosts.iter_mut() {
        if drained < 5 && h.state == HostState::Schedulable && h.volumes.is_empty() {
            h.state = HostState::Draining;
            drained += 1;
        }
    }
    let (ch_min, ch_med, ch) = time(runs, || plan(&changed, &cfg));
    println!(
        "\nre-plan of the converged cluster ({} placements):",
        converged.placements.len()
    );
    println!(
        "  unchanged:  {} / {}  -> {} new, {} removed (must be 0/0)",
        ms(noop_min),
        ms(noop_med),
        noop.place.len(),
        noop.remove.len()
    );
    println!(
        "  +1 replica on 10% of groups, 5 hosts draining: {} / {}  -> {} new, {} removed, {} unplaced",
        ms(ch_min),
        ms(ch_med),
        ch.place.len(),
        ch.remove.len(),
        ch.unplaced.iter().map(|u| u.count).sum::<u32>()
    );
    assert!(
        noop.is_noop(),
        "re-plan of a converged cluster must be a no-op"
    );
    // Tight: every host 6 GiB, so demand exceeds memory and most groups need the heap.
    let tight = scenario(hosts, instances, 0x5eed_5ca1_ab1e, &[6144]);
    let (t_min, t_med, t_plan) = time(runs, || plan(&tight, &cfg));
    let (tf_min, tf_med, tf_plan) = time(runs, || first_fit(&tight, &cfg));
    assert_eq!(
        t_plan,
        plan_reference(&tight, &cfg),
        "fast path and heap must agree"
    );
    let (qt, qtf) = (quality(&tight, &t_plan), quality(&tight, &tf_plan));
    println!(
        "
tight cluster (all hosts 6 GiB, demand > capacity):"
    );
    println!(
        "  scheduler {} / {}: {} placed ({:.0} GiB), {} unplaced; first-fit {} / {}: {} placed ({:.0} GiB), {} unplaced; ratio {:.2}x",
        ms(t_min),
        ms(t_med),
        qt.placed,
        qt.placed_mem_gb,
        qt.unplaced,
        ms(tf_min),
        ms(tf_med),
        qtf.placed,
        qtf.placed_mem_gb,
        qtf.unplaced,
        t_med.as_secs_f64() / tf_med.as_secs_f64()
    );
    if let Some(u) = t_plan
        .unplaced
        .iter()
        .find(|u| u.reason.starts_with("no host with"))
    {
        println!("  e.g. unplaced {} x{}: {}", u.group, u.count, u.reason);
    }

    let target = Duration::from_secs(1);
    println!(
        "\ntarget: cold placement < 1 s: {} ({})",
        if sb_med < target { "met" } else { "MISSED" },
        ms(sb_med)
    );
}
