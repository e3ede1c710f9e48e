//! Unit tests of the scheduler rules, one scenario each.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

pub(crate) fn host(id: &str, memory_mb: u64, cpus: u32) -> Host {
    Host {
        id: id.into(),
        memory_mb,
        cpus,
        labels: BTreeMap::new(),
        volumes: BTreeSet::new(),
        state: HostState::Schedulable,
    }
}

fn key(p: &str) -> GroupKey {
    GroupKey {
        env: "prod".into(),
        process: p.into(),
    }
}

fn group(p: &str, scale: u32, memory_mb: u64, cpu_millis: u64) -> Group {
    Group {
        key: key(p),
        scale,
        resources: Resources {
            memory_mb,
            cpu_millis,
        },
        volume: None,
        required_labels: BTreeMap::new(),
    }
}

fn placed(instance: &str, g: &Group, host: &str, seq: u64) -> Placement {
    Placement {
        instance: instance.into(),
        group: g.key.clone(),
        host: host.into(),
        resources: g.resources,
        seq,
    }
}

fn run(hosts: Vec<Host>, groups: Vec<Group>, placements: Vec<Placement>) -> Plan {
    plan(
        &Snapshot {
            hosts,
            groups,
            placements,
        },
        &Config::default(),
    )
}

fn hosts_of(p: &Plan) -> Vec<&str> {
    p.place.iter().map(|n| n.host.as_str()).collect()
}

fn removed(p: &Plan) -> Vec<(&str, RemovalReason)> {
    p.remove
        .iter()
        .map(|r| (r.instance.as_str(), r.reason))
        .collect()
}

#[test]
fn spreads_replicas_evenly_on_an_empty_cluster() {
    let p = run(
        vec![host("a", 4096, 4), host("b", 4096, 4), host("c", 4096, 4)],
        vec![group("web", 6, 256, 1000)],
        vec![],
    );
    assert_eq!(hosts_of(&p), ["a", "a", "b", "b", "c", "c"]);
    assert!(p.unplaced.is_empty() && p.remove.is_empty());
}

#[test]
fn prefers_fewest_replicas_then_most_free_memory() {
    let web = group("web", 2, 256, 100);
    // "a" has the most free memory but already runs a replica.
    let p = run(
        vec![host("a", 8192, 4), host("b", 1024, 4), host("c", 2048, 4)],
        vec![web.clone()],
        vec![placed("i1", &web, "a", 1)],
    );
    assert_eq!(hosts_of(&p), ["c"]);
}

#[test]
fn memory_is_a_hard_cap_with_a_reason() {
    let p = run(
        vec![
            host("host-1", 200, 8),
            host("host-2", 100, 8),
            host("host-3", 300, 8),
        ],
        vec![group("web", 1, 512, 100)],
        vec![],
    );
    assert!(p.place.is_empty());
    assert_eq!(
        p.unplaced,
        [Unplaced {
            group: key("web"),
            count: 1,
            reason: "no host with 512 MB free memory; largest free is 300 MB on host-3".into()
        }]
    );
}

#[test]
fn partial_placement_reports_the_remainder() {
    let p = run(
        vec![host("a", 1000, 8)],
        vec![group("web", 5, 300, 100)],
        vec![],
    );
    assert_eq!(p.place.len(), 3);
    assert_eq!(p.unplaced[0].count, 2);
    assert!(
        p.unplaced[0].reason.contains("largest free is 100 MB on a"),
        "{:?}",
        p.unplaced
    );
}

#[test]
fn cpu_is_oversubscribed_up_to_the_ratio() {
    let snap = Snapshot {
        hosts: vec![host("a", 65536, 2)],
        groups: vec![group("w", 10, 64, 1000)],
        placements: vec![],
    };
    let p = plan(&snap, &Config::default());
    assert_eq!(p.place.len(), 8);
    assert_eq!(
        p.unplaced[0].reason,
        "no host with 64 MB free memory has 1 vCPUs free (CPU oversubscribed 4x); most free is 0 vCPUs on a"
    );
    let strict = plan(
        &snap,
        &Config {
            cpu_oversubscription: 1.0,
        },
    );
    assert_eq!(strict.place.len(), 2);
    let p = plan(
        &snap,
        &Config {
            cpu_oversubscription: 1.5,
        },
    );
    assert_eq!(p.place.len(), 3);
}

#[test]
fn volume_instances_go_to_the_volume_host() {
    let mut redis = group("redis", 1, 512, 1000);
    redis.volume = Some(VolumeNeed {
        name: "redis-data".into(),
        create_if_absent: false,
    });
    let mut b = host("b", 1024, 2);
    b.volumes.insert("redis-data".into());
    let p = run(
        vec![host("a", 65536, 64), b.clone()],
        vec![redis.clone()],
        vec![],
    );
    assert_eq!(hosts_of(&p), ["b"]);
    assert_eq!(p.place[0].creates_volume, None);

    // volume host full: stays unplaced even though "a" has room
    b.memory_mb = 300;
    let p = run(
        vec![host("a", 65536, 64), b.clone()],
        vec![redis.clone()],
        vec![],
    );
    assert!(p.place.is_empty());
    assert_eq!(
        p.unplaced[0].reason,
        "no host with 512 MB free memory; largest free is 300 MB on b"
    );

    // volume host draining
    b.memory_mb = 1024;
    b.state = HostState::Draining;
    let p = run(vec![host("a", 65536, 64), b], vec![redis.clone()], vec![]);
    assert_eq!(
        p.unplaced[0].reason,
        "volume `redis-data` is only on host b (draining), which cannot take new instances"
    );

    // volume nowhere
    let p = run(vec![host("a", 65536, 64)], vec![redis.clone()], vec![]);
    assert!(
        p.unplaced[0]
            .reason
            .contains("volume `redis-data` is not on any live host")
    );
}

#[test]
fn a_new_volume_is_created_where_its_first_instance_lands() {
    let mut redis = group("redis", 2, 512, 1000);
    redis.volume = Some(VolumeNeed {
        name: "v".into(),
        create_if_absent: true,
    });
    let p = run(
        vec![host("a", 1024, 2), host("b", 4096, 2)],
        vec![redis],
        vec![],
    );
    // both instances follow the volume to "b" (most free memory)
    assert_eq!(hosts_of(&p), ["b", "b"]);
    assert_eq!(p.place[0].creates_volume.as_deref(), Some("v"));
    assert_eq!(p.place[1].creates_volume, None);
}

#[test]
fn converged_snapshot_moves_nothing() {
    let web = group("web", 2, 256, 500);
    let p = run(
        vec![host("a", 4096, 4), host("b", 4096, 4), host("c", 65536, 64)],
        vec![web.clone()],
        vec![placed("i1", &web, "a", 1), placed("i2", &web, "a", 2)],
    );
    // even though "a" holds both replicas and "c" is much bigger: stable beats spread
    assert!(p.is_noop(), "{p:?}");
    assert_eq!(p, Plan::default());
}

#[test]
fn scale_down_removes_from_the_most_crowded_host_newest_first() {
    let web = group("web", 2, 256, 100);
    let p = run(
        vec![host("a", 4096, 4), host("b", 4096, 4)],
        vec![web.clone()],
        vec![
            placed("i1", &web, "a", 1),
            placed("i2", &web, "a", 5),
            placed("i3", &web, "a", 3),
            placed("i4", &web, "b", 9),
        ],
    );
    assert_eq!(
        removed(&p),
        [
            ("i2", RemovalReason::ScaleDown),
            ("i3", RemovalReason::ScaleDown)
        ]
    );
    assert!(p.place.is_empty());
}

#[test]
fn scale_down_prefers_cordoned_hosts() {
    let web = group("web", 1, 256, 100);
    let mut b = host("b", 4096, 4);
    b.state = HostState::Cordoned;
    let p = run(
        vec![host("a", 4096, 4), b],
        vec![web.clone()],
        vec![placed("i1", &web, "a", 9), placed("i2", &web, "b", 1)],
    );
    assert_eq!(removed(&p), [("i2", RemovalReason::ScaleDown)]);
}

#[test]
fn scale_to_zero_and_undesired_groups_are_removed() {
    let web = group("web", 0, 256, 100);
    let old = group("old", 1, 256, 100);
    let p = run(
        vec![host("a", 4096, 4)],
        vec![web.clone()],
        vec![placed("i1", &web, "a", 1), placed("i2", &old, "a", 2)],
    );
    assert_eq!(
        removed(&p),
        [
            ("i1", RemovalReason::ScaleDown),
            ("i2", RemovalReason::NotDesired)
        ]
    );
}

#[test]
fn draining_host_instances_move_with_a_replaces_link() {
    let web = group("web", 2, 256, 100);
    let mut a = host("a", 4096, 4);
    a.state = HostState::Draining;
    let p = run(
        vec![a, host("b", 4096, 4), host("c", 4096, 4)],
        vec![web.clone()],
        vec![placed("i1", &web, "a", 1), placed("i2", &web, "b", 2)],
    );
    assert_eq!(hosts_of(&p), ["c"]);
    assert_eq!(p.place[0].replaces.as_deref(), Some("i1"));
    assert_eq!(removed(&p), [("i1", RemovalReason::HostDraining)]);
}

#[test]
fn draining_without_room_elsewhere_keeps_the_instance_and_says_why() {
    let web = group("web", 1, 256, 100);
    let mut a = host("a", 4096, 4);
    a.state = HostState::Draining;
    let p = run(
        vec![a, host("b", 100, 4)],
        vec![web.clone()],
        vec![placed("i1", &web, "a", 1)],
    );
    assert!(p.is_noop(), "{p:?}");
    assert_eq!(p.blocked.len(), 1);
    assert!(
        p.blocked[0]
            .reason
            .contains("no replacement could be placed: no host with 256 MB")
    );
    assert_eq!(p.unplaced[0].count, 1);
}

#[test]
fn draining_host_keeps_volume_bound_instances() {
    let mut redis = group("redis", 1, 256, 100);
    redis.volume = Some(VolumeNeed {
        name: "d".into(),
        create_if_absent: false,
    });
    let mut a = host("a", 4096, 4);
    a.state = HostState::Draining;
    a.volumes.insert("d".into());
    let p = run(
        vec![a, host("b", 4096, 4)],
        vec![redis.clone()],
        vec![placed("r1", &redis, "a", 1)],
    );
    assert!(p.is_noop(), "{p:?}");
    assert!(p.unplaced.is_empty());
    assert!(
        p.blocked[0].reason.contains("uses volume `d`"),
        "{:?}",
        p.blocked
    );
}

#[test]
fn instances_on_lost_hosts_are_replaced() {
    let web = group("web", 2, 256, 100);
    let p = run(
        vec![host("b", 4096, 4), host("c", 4096, 4)],
        vec![web.clone()],
        vec![placed("i1", &web, "gone", 1), placed("i2", &web, "b", 2)],
    );
    assert_eq!(removed(&p), [("i1", RemovalReason::HostGone)]);
    assert_eq!(hosts_of(&p), ["c"]);
    assert_eq!(p.place[0].replaces.as_deref(), Some("i1"));
}

#[test]
fn host_memory_shrink_evicts_newest_until_it_fits() {
    let web = group("web", 3, 400, 100);
    let p = run(
        vec![host("a", 1000, 4), host("b", 4096, 4)],
        vec![web.clone()],
        vec![
            placed("i1", &web, "a", 1),
            placed("i2", &web, "a", 3),
            placed("i3", &web, "a", 2),
        ],
    );
    assert_eq!(removed(&p), [("i2", RemovalReason::HostOverCommitted)]);
    assert_eq!(hosts_of(&p), ["b"]);
    assert_eq!(p.place[0].replaces.as_deref(), Some("i2"));
}

#[test]
fn memory_freed_by_removals_is_not_reused_in_the_same_plan() {
    let old = group("old", 1, 900, 100);
    let web = group("web", 1, 900, 100);
    let p = run(
        vec![host("a", 1000, 4)],
        vec![web],
        vec![placed("o1", &old, "a", 1)],
    );
    assert_eq!(removed(&p), [("o1", RemovalReason::NotDesired)]);
    assert!(p.place.is_empty());
    assert_eq!(
        p.unplaced[0].reason,
        "no host with 900 MB free memory; largest free is 100 MB on a"
    );
}

#[test]
fn required_labels_are_respected() {
    let mut gpu = group("gpu", 2, 256, 100);
    gpu.required_labels.insert("zone".into(), "b".into());
    let mut b = host("b", 4096, 4);
    b.labels.insert("zone".into(), "b".into());
    let p = run(vec![host("a", 65536, 64), b], vec![gpu.clone()], vec![]);
    assert_eq!(hosts_of(&p), ["b", "b"]);
    let p = run(vec![host("a", 65536, 64)], vec![gpu], vec![]);
    assert_eq!(
        p.unplaced[0].reason,
        "none of the 1 schedulable hosts has labels zone=b"
    );
}

#[test]
fn explains_missing_or_unschedulable_hosts() {
    let p = run(vec![], vec![group("web", 1, 256, 100)], vec![]);
    assert!(p.unplaced[0].reason.starts_with("no hosts are enrolled"));
    let mut a = host("a", 4096, 4);
    a.state = HostState::Draining;
    let mut b = host("b", 4096, 4);
    b.state = HostState::Cordoned;
    let p = run(vec![a, b], vec![group("web", 1, 256, 100)], vec![]);
    assert_eq!(
        p.unplaced[0].reason,
        "no schedulable host (1 draining, 1 cordoned)"
    );
}

#[test]
fn input_order_does_not_matter() {
    let web = group("web", 5, 256, 500);
    let api = group("api", 3, 512, 1000);
    let hosts = vec![host("a", 2048, 2), host("b", 1024, 2), host("c", 4096, 1)];
    let ps = vec![placed("i1", &web, "a", 1), placed("i2", &api, "c", 2)];
    let p1 = run(hosts.clone(), vec![web.clone(), api.clone()], ps.clone());
    let mut hosts_r = hosts;
    hosts_r.reverse();
    let mut ps_r = ps;
    ps_r.reverse();
    let p2 = run(hosts_r, vec![api, web], ps_r);
    assert_eq!(p1, p2);
}

#[test]
fn plan_serialises_to_json() {
    let p = run(
        vec![host("a", 100, 1)],
        vec![group("web", 1, 256, 100)],
        vec![],
    );
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.contains("\"unplaced\":[{\"group\":{\"env\":\"prod\",\"process\":\"web\"}"),
        "{json}"
    );
    let back: Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
}

#[test]
fn resources_from_manifest_vcpus() {
    assert_eq!(
        Resources::from_vcpus(1.5, 512),
        Resources {
            memory_mb: 512,
            cpu_millis: 1500
        }
    );
    assert_eq!(Resources::from_vcpus(0.25, 64).cpu_millis, 250);
    assert_eq!(Resources::from_vcpus(f64::NAN, 64).cpu_millis, 0);
}

#[test]
fn leaving_instances_count_before_evicting_on_a_shrunk_host() {
    let old = group("old", 1, 600, 100);
    let web = group("web", 1, 400, 100);
    let p = run(
        vec![host("a", 800, 4)],
        vec![web.clone()],
        vec![placed("o1", &old, "a", 1), placed("w1", &web, "a", 2)],
    );
    // removing o1 is enough: w1 stays
    assert_eq!(removed(&p), [("o1", RemovalReason::NotDesired)]);
    assert!(p.place.is_empty() && p.unplaced.is_empty());
}
