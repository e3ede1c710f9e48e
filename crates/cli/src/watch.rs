//! Following a deployment to its outcome (`sb deploy`, `sb rollback`): the environment's status
//! is polled every second. [`Watch::observe`] turns one status into a [`Phase`] (pure);
//! [`follow`] polls and prints one stderr line per phase change (on a terminal the current line
//! also shows the elapsed seconds, rewritten in place; elsewhere nothing is repeated).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::Client;
use crate::error::{Result, exit};

/// Where a deployment is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Accepted; the control plane has not started it yet.
    Queued,
    Pending,
    ReleaseCommand,
    /// Replacing instances: per process type, ready instances of the new release.
    Rolling(Vec<Progress>),
    Succeeded,
    /// The deployment's reason.
    Failed(String),
    /// A newer deployment replaced it before it finished (its id and release, when known).
    Superseded(Option<(String, i64)>),
    /// A state this `sb` does not know (a newer server).
    Other(String),
}

/// Rollout progress of one process type.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub name: String,
    /// Ready instances of the release being deployed.
    pub ready: u64,
    /// Desired instance count, when the status knows the process type.
    pub desired: Option<u64>,
    /// The release's instances that are not ready yet, counted by the state their host
    /// reported (`pending`, `preparing`, `booting`, `running`, `failed`, ...), in lifecycle
    /// order: where each instance of the rollout is.
    pub starting: Vec<(String, u64)>,
}

/// Lifecycle order of the states an agent reports (unknown states sort last).
const STATE_ORDER: &[&str] = &[
    "pending",
    "preparing",
    "booting",
    "running",
    "stopping",
    "exited",
    "failed",
];

/// How a not-yet-ready instance's state reads in the rollout line.
fn state_words(state: &str) -> &str {
    match state {
        "pending" => "waiting for its host",
        "preparing" => "building root filesystem",
        "booting" => "booting",
        "running" => "waiting for health check",
        other => other,
    }
}

impl Phase {
    /// True once the deployment has an outcome.
    pub fn done(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed(_) | Phase::Superseded(_)
        )
    }

    /// One line for humans about a deployment of `release`.
    pub fn describe(&self, release: i64) -> String {
        match self {
            Phase::Queued => "deployment queued".into(),
            Phase::Pending => "deployment pending".into(),
            Phase::ReleaseCommand => "release command running".into(),
            Phase::Rolling(groups) if groups.is_empty() => "rolling".into(),
            Phase::Rolling(groups) => {
                let parts: Vec<String> = groups
                    .iter()
                    .map(|g| {
                        let mut t = match g.desired {
                            Some(d) => format!("{} {}/{d} ready", g.name, g.ready),
                            None => format!("{} {} ready", g.name, g.ready),
                        };
                        if !g.starting.is_empty() {
                            let s: Vec<String> = g
                                .starting
                                .iter()
                                .map(|(state, n)| format!("{n} {}", state_words(state)))
                                .collect();
                            t.push_str(&format!(" ({})", s.join(", ")));
                        }
                        t
                    })
                    .collect();
                format!("rolling: {}", parts.join(", "))
            }
            Phase::Succeeded => format!("deployment succeeded: release {release} serving"),
            Phase::Failed(reason) => format!("deployment of release {release} failed: {reason}"),
            Phase::Superseded(Some((id, r))) => format!(
                "deployment of release {release} was superseded by deployment {id} (release {r}) before it finished"
            ),
            Phase::Superseded(None) => format!(
                "deployment of release {release} was superseded by a newer one before it finished"
            ),
            Phase::Other(state) => format!("deployment {state}"),
        }
    }
}

/// Polls after which a different deployment than ours (and than the one before ours) means ours
/// was replaced before the control plane started it.
const GRACE_POLLS: u32 = 10;

/// What is known about one deployment across polls.
pub struct Watch {
    pub id: String,
    pub release: i64,
    /// The environment's latest deployment before ours was requested.
    before: Option<String>,
    /// Ours has been the latest deployment at least once.
    seen: bool,
    /// Consecutive polls showing another new deployment while ours was never seen.
    elsewhere: u32,
}

impl Watch {
    pub fn new(id: String, release: i64, before: Option<String>) -> Watch {
        Watch {
            id,
            release,
            before,
            seen: false,
            elsewhere: 0,
        }
    }

    /// The phase of our deployment according to an environment status (`EnvStatus`).
    pub fn observe(&mut self, status: &Value) -> Phase {
        let d = &status["deployment"];
        let latest = d["id"].as_str();
        if latest == Some(self.id.as_str()) {
            self.seen = true;
            self.elsewhere = 0;
            return match d["state"].as_str().unwrap_or_default() {
                "pending" => Phase::Pending,
                "release_command" => Phase::ReleaseCommand,
                "rolling" => Phase::Rolling(progress(
                    status,
                    self.release,
                    d["secrets_version"].as_i64(),
                )),
                "succeeded" => Phase::Succeeded,
                "failed" => Phase::Failed(
                    d["reason"]
                        .as_str()
                        .filter(|r| !r.is_empty())
                        .unwrap_or("no reason given (see `sb why`)")
                        .to_owned(),
                ),
                "superseded" => Phase::Superseded(None),
                other => Phase::Other(other.to_owned()),
            };
        }
        let Some(other) = latest.filter(|o| Some(*o) != self.before.as_deref()) else {
            return Phase::Queued;
        };
        if !self.seen {
            self.elsewhere += 1;
            if self.elsewhere < GRACE_POLLS {
                return Phase::Queued;
            }
        }
        Phase::Superseded(Some((other.to_owned(), d["release"].as_i64().unwrap_or(0))))
    }
}

/// Per process type: ready service instances of `release` (and the deployment's secrets version)
/// against the desired count.
fn progress(status: &Value, release: i64, secrets: Option<i64>) -> Vec<Progress> {
    let instances: &[Value] = status["instances"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let ours = |i: &&Value| {
        i["kind"] == "service"
            && i["desired"] == "run"
            && i["release"] == release
            && (secrets.is_none() || i["secrets_version"].as_i64() == secrets)
    };
    let ready = |name: &str| {
        instances
            .iter()
            .filter(ours)
            .filter(|i| i["process_type"] == name && i["ready"] == true)
            .count() as u64
    };
    let starting = |name: &str| {
        let mut by_state: Vec<(String, u64)> = Vec::new();
        for i in instances.iter().filter(ours) {
            if i["process_type"] != name || i["ready"] == true {
                continue;
            }
            let state = i["state"].as_str().unwrap_or("pending");
            match by_state.iter_mut().find(|(s, _)| s == state) {
                Some((_, n)) => *n += 1,
                None => by_state.push((state.to_owned(), 1)),
            }
        }
        let rank = |s: &str| {
            STATE_ORDER
                .iter()
                .position(|o| *o == s)
                .unwrap_or(usize::MAX)
        };
        by_state.sort_by_key(|(s, _)| rank(s));
        by_state
    };
    let mut out: Vec<Progress> = status["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            Some(Progress {
                name: name.to_owned(),
                ready: ready(name),
                desired: p["desired"].as_u64(),
                starting: starting(name),
            })
        })
        .collect();
    // Process types new in this release are not in `processes` yet.
    for i in instances.iter().filter(ours) {
        if let Some(name) = i["process_type"].as_str()
            && !out.iter().any(|p| p.name == name)
        {
            out.push(Progress {
                name: name.to_owned(),
                ready: ready(name),
                desired: None,
                starting: starting(name),
            });
        }
    }
    out
}

/// How long [`follow`] keeps polling an API that does not answer (or answers 5xx) before it
/// gives up with the server error (exit 6).
const OUTAGE_GRACE: Duration = Duration::from_secs(30);

/// How [`follow`] ended.
pub struct Outcome {
    pub phase: Phase,
    /// The last status polled.
    pub status: Value,
    /// `timeout` passed before the deployment ended.
    pub timed_out: bool,
}

/// Polls `status_path` every second until the deployment ends or `timeout` passes, printing
/// progress on stderr unless `quiet`.
pub fn follow(
    c: &Client,
    status_path: &str,
    watch: &mut Watch,
    timeout: Duration,
    quiet: bool,
) -> Result<Outcome> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut line = Line {
        quiet,
        tty: std::io::stderr().is_terminal(),
        start,
        last: None,
    };
    // Ctrl-C stops following only: the deployment is the server's business from here.
    let hint = format!(
        "interrupted: deployment {} of release {} goes on server-side; follow it with `sb ps` and `sb why`",
        watch.id, watch.release
    );
    let _interrupt = crate::interrupt::OnInterrupt::install(if quiet {
        format!("{}\n", serde_json::json!({"error": hint, "status": 0}))
    } else {
        format!("{}{hint}\n", if line.tty { "\n" } else { "" })
    });
    // When the API became unreachable (or answered 5xx): following goes on through an outage
    // (a control-plane restart) of up to OUTAGE_GRACE before giving up.
    let mut lost: Option<Instant> = None;
    loop {
        let status = match c.get(status_path) {
            Ok(s) => {
                if lost.take().is_some() {
                    line.show("contact with the API restored".into());
                }
                s
            }
            Err(mut e) if e.exit == exit::SERVER => {
                let now = Instant::now();
                let since = *lost.get_or_insert_with(|| {
                    line.show(format!(
                        "lost contact with the API ({}); retrying",
                        e.message
                    ));
                    now
                });
                if now.duration_since(since) >= OUTAGE_GRACE || now >= deadline {
                    line.finish();
                    e.message.push_str(
                        "; the deployment goes on server-side: follow it with `sb ps` when the API is back",
                    );
                    return Err(e);
                }
                std::thread::sleep((deadline - now).min(Duration::from_secs(1)));
                continue;
            }
            Err(e) => {
                line.finish();
                return Err(e);
            }
        };
        let phase = watch.observe(&status);
        let now = Instant::now();
        if phase.done() || now >= deadline {
            line.finish();
            return Ok(Outcome {
                timed_out: !phase.done(),
                phase,
                status,
            });
        }
        line.show(phase.describe(watch.release));
        std::thread::sleep((deadline - now).min(Duration::from_secs(1)));
    }
}

/// The progress line on stderr.
struct Line {
    quiet: bool,
    tty: bool,
    start: Instant,
    last: Option<String>,
}

impl Line {
    fn show(&mut self, text: String) {
        if self.quiet {
            return;
        }
        let mut e = std::io::stderr().lock();
        let changed = self.last.as_ref() != Some(&text);
        if self.tty {
            // The current phase's line is rewritten with the elapsed time; a new phase gets a
            // new line.
            if changed && self.last.is_some() {
                let _ = writeln!(e);
            }
            let _ = write!(e, "\r\x1b[2K{text} ({}s)", self.start.elapsed().as_secs());
            let _ = e.flush();
        } else if changed {
            let _ = writeln!(e, "{text}");
        }
        self.last = Some(text);
    }

    /// Ends the in-place line on a terminal.
    fn finish(&mut self) {
        if self.tty && !self.quiet && self.last.take().is_some() {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn status(dep: Value, instances: Value) -> Value {
        json!({
            "deployment": dep,
            "processes": [
                {"name": "web", "desired": 3, "ready": 0, "running": 3},
                {"name": "worker", "desired": 1, "ready": 1, "running": 1}
            ],
            "instances": instances,
        })
    }

    fn inst(process: &str, release: i64, ready: bool) -> Value {
        let state = if ready { "ready" } else { "booting" };
        json!({"process_type": process, "kind": "service", "desired": "run", "release": release,
               "secrets_version": 0, "ready": ready, "state": state})
    }

    #[test]
    fn phases_of_our_deployment() {
        let mut w = Watch::new("d2".into(), 4, Some("d1".into()));
        let old = json!({"id": "d1", "release": 3, "state": "succeeded"});
        assert_eq!(w.observe(&status(old, json!([]))), Phase::Queued);
        let dep = |state: &str| {
            json!({"id": "d2", "release": 4, "secrets_version": 0, "state": state,
                   "reason": if state == "failed" { "release command failed: exit code 3" } else { "" }})
        };
        assert_eq!(
            w.observe(&status(dep("pending"), json!([]))),
            Phase::Pending
        );
        let p = w.observe(&status(dep("release_command"), json!([])));
        assert_eq!(p.describe(4), "release command running");
        let instances = json!([
            inst("web", 4, true),
            inst("web", 4, false),
            inst("web", 3, true),
            inst("worker", 3, true),
            {"process_type": "release", "kind": "release", "desired": "stop", "release": 4,
             "secrets_version": 0, "ready": false}
        ]);
        let p = w.observe(&status(dep("rolling"), instances));
        assert_eq!(
            p.describe(4),
            "rolling: web 1/3 ready (1 booting), worker 0/1 ready"
        );
        assert!(!p.done());
        let p = w.observe(&status(dep("succeeded"), json!([])));
        assert!(p.done());
        assert_eq!(p.describe(4), "deployment succeeded: release 4 serving");
        let p = w.observe(&status(dep("failed"), json!([])));
        assert_eq!(
            p.describe(4),
            "deployment of release 4 failed: release command failed: exit code 3"
        );
    }

    #[test]
    fn new_process_types_show_without_a_desired_count() {
        let mut w = Watch::new("d2".into(), 4, None);
        let dep = json!({"id": "d2", "release": 4, "secrets_version": 0, "state": "rolling"});
        let p = w.observe(&status(dep, json!([inst("cron", 4, true)])));
        assert_eq!(
            p.describe(4),
            "rolling: web 0/3 ready, worker 0/1 ready, cron 1 ready"
        );
    }

    #[test]
    fn rollout_line_says_where_each_instance_is() {
        let mut w = Watch::new("d2".into(), 4, None);
        let dep = json!({"id": "d2", "release": 4, "secrets_version": 0, "state": "rolling"});
        let at = |state: &str| {
            json!({"process_type": "web", "kind": "service", "desired": "run", "release": 4,
                   "secrets_version": 0, "ready": false, "state": state})
        };
        let instances = json!([
            at("running"),
            at("preparing"),
            at("pending"),
            at("preparing"),
            inst("web", 4, true),
            // The old release's instances and stopped ones do not count.
            {"process_type": "web", "kind": "service", "desired": "run", "release": 3,
             "secrets_version": 0, "ready": false, "state": "booting"},
            {"process_type": "web", "kind": "service", "desired": "stop", "release": 4,
             "secrets_version": 0, "ready": false, "state": "stopping"},
        ]);
        let p = w.observe(&status(dep, instances));
        assert_eq!(
            p.describe(4),
            "rolling: web 1/3 ready (1 waiting for its host, 2 building root filesystem, \
             1 waiting for health check), worker 0/1 ready"
        );
    }

    #[test]
    fn superseded_once_seen_or_after_a_grace() {
        let newer = json!({"id": "d3", "release": 5, "state": "pending"});
        let mut w = Watch::new("d2".into(), 4, Some("d1".into()));
        let ours = json!({"id": "d2", "release": 4, "state": "pending"});
        w.observe(&status(ours, json!([])));
        let p = w.observe(&status(newer.clone(), json!([])));
        assert_eq!(p, Phase::Superseded(Some(("d3".into(), 5))));
        assert!(p.done());

        // Never seen: another new deployment may be one created just before ours.
        let mut w = Watch::new("d2".into(), 4, Some("d1".into()));
        for _ in 1..GRACE_POLLS {
            assert_eq!(w.observe(&status(newer.clone(), json!([]))), Phase::Queued);
        }
        assert!(w.observe(&status(newer, json!([]))).done());

        // The deployment from before ours never counts.
        let mut w = Watch::new("d2".into(), 4, Some("d1".into()));
        let old = json!({"id": "d1", "release": 3, "state": "succeeded"});
        for _ in 0..GRACE_POLLS * 2 {
            assert_eq!(w.observe(&status(old.clone(), json!([]))), Phase::Queued);
        }
    }
}
