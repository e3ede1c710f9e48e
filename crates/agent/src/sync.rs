//! Converging this host on the control plane: long-poll the host's desired instances by
//! generation and ensure/delete them through the [`Manager`]; report every instance's state
//! (which is also the host's heartbeat) within 200 ms of a change, at least every five seconds
//! otherwise. While the control plane is unreachable nothing is started or
//! stopped: instances keep running as they are.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use scalebox_types::api::{AgentApi, AgentDesired, AgentReport, ReportedInstance};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::control_link::{ControlClient, LinkError};
use crate::manager::{EnsureOutcome, Manager};
use crate::spec::{ImageSource, InstanceSpec};
use crate::state::{InstanceRecord, InstanceState};

/// Seconds the control plane may hold a desired-state poll.
const POLL_WAIT_S: u64 = 25;
/// How often instance states are compared with the last report (a change is reported at once;
/// the comparison is in memory, so this is cheap).
const REPORT_POLL: Duration = Duration::from_millis(200);
/// Longest silence between reports (the heartbeat).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Runs both loops until `shutdown` becomes true. `api` is this agent's local API, reported so
/// the control plane can stream instance logs from it.
pub async fn run(
    manager: Arc<Manager>,
    client: ControlClient,
    health_host: IpAddr,
    api: AgentApi,
    uploads: std::path::PathBuf,
    overlay: Option<Arc<crate::overlay::Overlay>>,
    shutdown: watch::Receiver<bool>,
) {
    let desired = tokio::spawn(desired_loop(
        manager.clone(),
        client.clone(),
        uploads,
        shutdown.clone(),
    ));
    let report = tokio::spawn(report_loop(
        manager,
        client,
        health_host,
        api,
        overlay,
        shutdown,
    ));
    let _ = desired.await;
    let _ = report.await;
}

/// Sleeps `d` unless shutdown comes first; false on shutdown.
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.wait_for(|v| *v) => false,
    }
}

async fn call<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LinkError> + Send + 'static,
) -> Result<T, LinkError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(LinkError {
            status: 0,
            message: e.to_string(),
        })
    })
}

async fn desired_loop(
    manager: Arc<Manager>,
    client: ControlClient,
    uploads: std::path::PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut generation = 0i64;
    let deleting: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let c = client.clone();
        let path = format!("/v1/agent/desired?after={generation}&wait={POLL_WAIT_S}");
        let got = tokio::select! {
            r = call(move || c.get(&path)) => r,
            _ = shutdown.wait_for(|v| *v) => return,
        };
        let desired = got.and_then(|v| {
            serde_json::from_value::<AgentDesired>(v).map_err(|e| LinkError {
                status: 0,
                message: format!(
                    "the control plane sent desired state this agent cannot read: {e}"
                ),
            })
        });
        let desired = match desired {
            Ok(d) => {
                if failing {
                    info!("control plane reachable again");
                    failing = false;
                }
                d
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "cannot get desired state; instances keep running as they are; retrying");
                    failing = true;
                }
                if !pause(Duration::from_secs(2), &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        if desired.generation != generation {
            info!(
                generation = desired.generation,
                instances = desired.instances.len(),
                "desired state"
            );
        }
        generation = desired.generation;
        apply(&manager, &client, &uploads, desired, &deleting).await;
    }
}

/// Ensures every desired instance and deletes every other one.
async fn apply(
    manager: &Arc<Manager>,
    client: &ControlClient,
    uploads: &std::path::Path,
    desired: AgentDesired,
    deleting: &Arc<Mutex<HashSet<String>>>,
) {
    let mut want = HashSet::new();
    for inst in desired.instances {
        want.insert(inst.id.clone());
        let mut spec: InstanceSpec = match serde_json::from_value(inst.spec) {
            Ok(s) => s,
            Err(e) => {
                warn!(id = %inst.id, error = %e, "desired instance spec is invalid; skipped");
                continue;
            }
        };
        if let ImageSource::Upload { digest } = &spec.image {
            match fetch_upload(client, uploads, digest).await {
                Ok(path) => {
                    spec.image = ImageSource::Archive {
                        path: path.display().to_string(),
                    }
                }
                Err(e) => {
                    warn!(id = %inst.id, error = %e, "cannot fetch the uploaded image; retrying on the next pass");
                    continue;
                }
            }
        }
        match manager.ensure(&inst.id, spec).await {
            Ok((EnsureOutcome::Unchanged, _)) => {}
            Ok((outcome, _)) => info!(id = %inst.id, ?outcome, "instance ensured"),
            Err(e) => warn!(id = %inst.id, error = %e, "cannot ensure instance"),
        }
    }
    for rec in manager.list().await {
        if want.contains(&rec.id) {
            continue;
        }
        if !deleting.lock().expect("lock").insert(rec.id.clone()) {
            continue;
        }
        let (m, d, id) = (manager.clone(), deleting.clone(), rec.id.clone());
        tokio::spawn(async move {
            info!(id = %id, "instance no longer desired; stopping");
            if let Err(e) = m.delete(&id).await {
                warn!(id = %id, error = %e, "cannot delete instance");
            }
            d.lock().expect("lock").remove(&id);
        });
    }
}

/// The local copy of an uploaded image, downloaded from the control plane on first use.
async fn fetch_upload(
    client: &ControlClient,
    uploads: &std::path::Path,
    digest: &str,
) -> Result<std::path::PathBuf, LinkError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| LinkError {
            status: 0,
            message: format!("invalid image digest {digest:?}"),
        })?;
    let path = uploads.join(format!("{hex}.tar"));
    if path.is_file() {
        return Ok(path);
    }
    let (c, p, d) = (client.clone(), path.clone(), digest.to_owned());
    let n = call(move || c.download(&format!("/v1/agent/images/{d}"), &p)).await?;
    info!(
        digest,
        bytes = n,
        "uploaded image fetched from the control plane"
    );
    Ok(path)
}

/// The last lines of an instance's output.
async fn tail(manager: &Manager, id: &str, lines: usize) -> Vec<String> {
    let Ok(h) = manager.handle(id).await else {
        return vec![];
    };
    let ring = h.logs.clone();
    tokio::task::spawn_blocking(move || {
        let r = ring.lock().unwrap_or_else(|p| p.into_inner());
        let from = r.end().saturating_sub(8192);
        r.read(from, 16384)
            .map(|res| {
                let n = res.entries.len();
                res.entries
                    .into_iter()
                    .skip(n.saturating_sub(lines))
                    .map(|e| e.line)
                    .collect()
            })
            .unwrap_or_default()
    })
    .await
    .unwrap_or_default()
}

fn reported(r: &InstanceRecord, health_host: IpAddr, last_logs: Vec<String>) -> ReportedInstance {
    let live = matches!(r.state, InstanceState::Running | InstanceState::Ready);
    ReportedInstance {
        id: r.id.clone(),
        state: r.state.as_str().to_owned(),
        reason: r.reason.clone(),
        ready: r.state == InstanceState::Ready,
        address: live.then(|| r.guest_addr.unwrap_or(health_host).to_string()),
        exit_code: r.exit.as_ref().and_then(|e| e.code),
        signal: r.exit.as_ref().and_then(|e| e.signal),
        oom: r.exit.as_ref().is_some_and(|e| e.oom),
        health_error: r
            .health
            .as_ref()
            .filter(|h| !h.passing)
            .and_then(|h| h.last_error.clone()),
        last_logs,
    }
}

async fn report_loop(
    manager: Arc<Manager>,
    client: ControlClient,
    health_host: IpAddr,
    api: AgentApi,
    overlay: Option<Arc<crate::overlay::Overlay>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last: Option<LastReport> = None;
    let mut logs: HashMap<String, Vec<String>> = HashMap::new();
    let mut failing = false;
    loop {
        let records = manager.list().await;
        logs.retain(|id, _| records.iter().any(|r| &r.id == id));
        let mut instances = Vec::with_capacity(records.len());
        for r in &records {
            let ended = matches!(r.state, InstanceState::Exited | InstanceState::Failed);
            let l = if ended {
                match logs.get(&r.id) {
                    Some(l) => l.clone(),
                    None => {
                        let l = tail(&manager, &r.id, 20).await;
                        logs.insert(r.id.clone(), l.clone());
                        l
                    }
                }
            } else {
                vec![]
            };
            instances.push(reported(r, health_host, l));
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        let overlay_report = overlay.as_ref().map(|o| o.report());
        // Peer reachability changes are reported at once (the edge's routing depends on them).
        let reach: Vec<(String, bool)> = overlay_report
            .iter()
            .flat_map(|o| o.peers.iter().map(|p| (p.host.clone(), p.reachable)))
            .collect();
        let due = match &last {
            None => true,
            Some((prev, prev_reach, at)) => {
                !same(prev, &instances) || *prev_reach != reach || at.elapsed() >= HEARTBEAT
            }
        };
        if due {
            let c = client.clone();
            let body = serde_json::to_value(AgentReport {
                instances: instances.clone(),
                agent_api: Some(api.clone()),
                overlay: overlay_report,
            })
            .expect("serializes");
            match call(move || c.post("/v1/agent/report", &body)).await {
                Ok(_) => {
                    failing = false;
                    last = Some((instances, reach, Instant::now()));
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot report instances; retrying");
                        failing = true;
                    }
                }
            }
        }
        if !pause(REPORT_POLL, &mut shutdown).await {
            return;
        }
    }
}

/// What was last reported: instances, overlay peers' reachability, and when.
type LastReport = (Vec<ReportedInstance>, Vec<(String, bool)>, Instant);

fn same(a: &[ReportedInstance], b: &[ReportedInstance]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.id == y.id
                && x.state == y.state
                && x.ready == y.ready
                && x.address == y.address
                && x.reason == y.reason
                && x.health_error == y.health_error
        })
}
