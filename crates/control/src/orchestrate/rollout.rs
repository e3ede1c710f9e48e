//! Rollout decisions for one process type of one environment (pure, no I/O): which instances
//! to stop and how many new ones to create so that the group converges on `scale` up-to-date,
//! ready instances, never with fewer than `scale - max_unavailable` ready (as far as it had
//! them) and never with more than `scale + max_surge` instances.

/// An instance of the group as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inst {
    pub id: String,
    /// Runs the target (release, secrets version) on a host that keeps its instances.
    pub up_to_date: bool,
    pub ready: bool,
    /// Ended (exited, failed) or its host is lost: it will never become ready again.
    pub dead: bool,
    /// Creation order: larger is newer.
    pub seq: i64,
}

/// Why an instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It ended or its host is gone; a replacement is created.
    Dead,
    /// More up-to-date instances than the scale.
    ScaleDown,
    /// Outdated and not serving: nothing is lost by stopping it now.
    OutdatedNotReady,
    /// Outdated; enough up-to-date instances are ready to take over.
    Replaced,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Dead => "ended; replaced",
            StopReason::ScaleDown => "scaled down",
            StopReason::OutdatedNotReady => "outdated and not ready",
            StopReason::Replaced => "replaced by a ready instance of the new release",
        }
    }
}

/// The step to take now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupPlan {
    /// New up-to-date instances to create.
    pub create: u32,
    pub stop: Vec<(String, StopReason)>,
    /// `scale` up-to-date instances are ready and nothing else runs.
    pub converged: bool,
}

/// Decides the next step for a group that should run `scale` instances, allowing `max_surge`
/// extra instances and `max_unavailable` missing ready ones while replacing (when both are 0,
/// a surge of 1 is used so a rollout can always progress).
pub fn plan_group(
    scale: u32,
    max_surge: u32,
    max_unavailable: u32,
    instances: &[Inst],
) -> GroupPlan {
    let scale = scale as usize;
    let unavailable = max_unavailable as usize;
    let surge = if max_surge == 0 && max_unavailable == 0 {
        1
    } else {
        max_surge as usize
    };
    let mut stop = Vec::new();
    let (dead, live): (Vec<&Inst>, Vec<&Inst>) = instances.iter().partition(|i| i.dead);
    stop.extend(dead.iter().map(|i| (i.id.clone(), StopReason::Dead)));

    let (mut fresh, old): (Vec<&Inst>, Vec<&Inst>) = live.into_iter().partition(|i| i.up_to_date);
    if fresh.len() > scale {
        // Keep ready ones and older ones; stop the rest.
        fresh.sort_by(|a, b| b.ready.cmp(&a.ready).then(a.seq.cmp(&b.seq)));
        for i in fresh.split_off(scale) {
            stop.push((i.id.clone(), StopReason::ScaleDown));
        }
    }
    let (mut old_ready, old_waiting): (Vec<&Inst>, Vec<&Inst>) =
        old.into_iter().partition(|i| i.ready);
    stop.extend(
        old_waiting
            .iter()
            .map(|i| (i.id.clone(), StopReason::OutdatedNotReady)),
    );
    let fresh_ready = fresh.iter().filter(|i| i.ready).count();
    let keep_old = scale
        .saturating_sub(unavailable)
        .saturating_sub(fresh_ready)
        .min(old_ready.len());
    // Newest outdated instances are kept longest (oldest go first).
    old_ready.sort_by_key(|i| std::cmp::Reverse(i.seq));
    for i in old_ready.split_off(keep_old) {
        stop.push((i.id.clone(), StopReason::Replaced));
    }
    let need = scale - fresh.len();
    let room = (scale + surge).saturating_sub(fresh.len() + keep_old);
    let create = need.min(room) as u32;
    let converged = stop.is_empty()
        && create == 0
        && keep_old == 0
        && fresh_ready == scale
        && fresh.len() == scale;
    GroupPlan {
        create,
        stop,
        converged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str, up_to_date: bool, ready: bool, dead: bool, seq: i64) -> Inst {
        Inst {
            id: id.into(),
            up_to_date,
            ready,
            dead,
            seq,
        }
    }

    fn ids(p: &GroupPlan) -> Vec<&str> {
        p.stop.iter().map(|(i, _)| i.as_str()).collect()
    }

    #[test]
    fn fresh_group_creates_scale_instances() {
        let p = plan_group(3, 1, 0, &[]);
        assert_eq!((p.create, p.stop.len(), p.converged), (3, 0, false));
    }

    #[test]
    fn converged_group_does_nothing() {
        let is = [
            inst("a", true, true, false, 1),
            inst("b", true, true, false, 2),
        ];
        assert_eq!(
            plan_group(2, 1, 0, &is),
            GroupPlan {
                create: 0,
                stop: vec![],
                converged: true
            }
        );
    }

    #[test]
    fn rolling_replacement_never_drops_ready_capacity() {
        // Simulate a rollout of 3 instances step by step; new instances become ready one tick
        // after creation. Ready capacity must never fall below 3.
        let mut is: Vec<Inst> = (0..3)
            .map(|n| inst(&format!("old{n}"), false, true, false, n))
            .collect();
        let mut seq = 10;
        for _tick in 0..20 {
            // Instances created last tick become ready now.
            for i in is.iter_mut().filter(|i| i.up_to_date) {
                i.ready = true;
            }
            let p = plan_group(3, 1, 0, &is);
            if p.converged {
                break;
            }
            let stopped: Vec<String> = p.stop.iter().map(|(i, _)| i.clone()).collect();
            is.retain(|i| !stopped.contains(&i.id));
            assert!(is.iter().filter(|i| i.ready).count() >= 3, "{is:?}");
            assert!(is.len() <= 4, "surge exceeded: {is:?}");
            for _ in 0..p.create {
                seq += 1;
                is.push(inst(&format!("new{seq}"), true, false, false, seq));
            }
        }
        assert!(plan_group(3, 1, 0, &is).converged, "{is:?}");
        assert!(is.iter().all(|i| i.up_to_date));
    }

    #[test]
    fn max_unavailable_replaces_in_place_within_its_budget() {
        // surge 0, unavailable 1: one old instance goes at a time, total never above scale,
        // ready never below scale - 1.
        let mut is: Vec<Inst> = (0..3)
            .map(|n| inst(&format!("old{n}"), false, true, false, n))
            .collect();
        let mut seq = 10;
        for _ in 0..20 {
            for i in is.iter_mut().filter(|i| i.up_to_date) {
                i.ready = true;
            }
            let p = plan_group(3, 0, 1, &is);
            if p.converged {
                break;
            }
            let stopped: Vec<String> = p.stop.iter().map(|(i, _)| i.clone()).collect();
            is.retain(|i| !stopped.contains(&i.id));
            assert!(is.iter().filter(|i| i.ready).count() >= 2, "{is:?}");
            for _ in 0..p.create {
                seq += 1;
                is.push(inst(&format!("new{seq}"), true, false, false, seq));
            }
            assert!(is.len() <= 3, "no surge: {is:?}");
        }
        assert!(plan_group(3, 0, 1, &is).converged, "{is:?}");
        // A bigger budget replaces more at once.
        let is: Vec<Inst> = (0..4)
            .map(|n| inst(&format!("o{n}"), false, true, false, n))
            .collect();
        let p = plan_group(4, 0, 2, &is);
        assert_eq!((p.create, p.stop.len()), (2, 2));
    }

    #[test]
    fn outdated_instances_stay_until_new_ones_are_ready() {
        let is = [
            inst("old", false, true, false, 1),
            inst("new", true, false, false, 2),
        ];
        let p = plan_group(1, 1, 0, &is);
        assert_eq!((p.create, ids(&p)), (0, vec![]));
        let is = [
            inst("old", false, true, false, 1),
            inst("new", true, true, false, 2),
        ];
        let p = plan_group(1, 1, 0, &is);
        assert_eq!(ids(&p), vec!["old"]);
        assert_eq!(p.stop[0].1, StopReason::Replaced);
    }

    #[test]
    fn dead_instances_are_replaced() {
        let is = [
            inst("a", true, false, true, 1),
            inst("b", true, true, false, 2),
        ];
        let p = plan_group(2, 1, 0, &is);
        assert_eq!((p.create, ids(&p)), (1, vec!["a"]));
    }

    #[test]
    fn scale_down_stops_not_ready_then_newest() {
        let is = [
            inst("a", true, true, false, 1),
            inst("b", true, true, false, 2),
            inst("c", true, false, false, 3),
        ];
        assert_eq!(ids(&plan_group(2, 1, 0, &is)), vec!["c"]);
        let is = [
            inst("a", true, true, false, 1),
            inst("b", true, true, false, 2),
            inst("c", true, true, false, 3),
        ];
        assert_eq!(ids(&plan_group(1, 1, 0, &is)), vec!["b", "c"]);
    }

    #[test]
    fn scale_zero_stops_everything() {
        let is = [
            inst("a", true, true, false, 1),
            inst("b", false, true, false, 2),
        ];
        let p = plan_group(0, 1, 0, &is);
        let mut s = ids(&p);
        s.sort();
        assert_eq!((p.create, s), (0, vec!["a", "b"]));
        assert!(!p.converged);
        assert!(plan_group(0, 1, 0, &[]).converged);
    }

    #[test]
    fn outdated_not_ready_instances_stop_at_once() {
        let is = [inst("crashy", false, false, false, 1)];
        let p = plan_group(1, 1, 0, &is);
        assert_eq!((p.create, ids(&p)), (1, vec!["crashy"]));
    }
}
