//! Per-instance actor: an [`InstanceHandle`] (cheap to clone, used by the manager and the API)
//! and a runner task that owns the [`InstanceRecord`] and drives it through
//! `pending → preparing → booting → running → ready → stopping → exited/failed` from backend
//! events, stop commands, health-check results and timers. Every transition is logged in the
//! instance's `tracing` span, persisted, and published on a watch channel.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{Instrument, info, warn};

use crate::backend::{
    BackendError, LogStream, Network, RootfsProvider, VmBackend, VmEvent, VmRun, VmSpec,
};
use crate::health::{self, Change, Tracker};
use crate::logring::{LineSplitter, LogRing};
use crate::metrics::Metrics;
use crate::persist::Store;
use crate::state::{HealthStatus, InstanceRecord, InstanceState, now_rfc3339};

/// How long to wait for the VM to report its exit after a kill.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Everything a runner needs, shared by all instances.
pub struct Deps {
    pub backend: Arc<dyn VmBackend>,
    pub rootfs: Arc<dyn RootfsProvider>,
    pub network: Option<Arc<dyn Network>>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// Address health checks use when the instance has no network attachment.
    pub health_host: IpAddr,
}

/// The VM key of an instance generation.
pub fn vm_key(id: &str, generation: u64) -> String {
    format!("{id}-g{generation}")
}

enum Cmd {
    Stop,
    Detach,
}

/// How a runner begins.
pub enum Start {
    /// Boot from scratch, after stopping `predecessor` (an older generation) if any.
    Fresh { predecessor: Option<InstanceHandle> },
    /// Continue with a VM re-adopted after an agent restart.
    Adopt(VmRun),
}

/// Handle to one instance's runner.
#[derive(Clone)]
pub struct InstanceHandle {
    tx: mpsc::Sender<Cmd>,
    status: watch::Receiver<InstanceRecord>,
    pub logs: Arc<Mutex<LogRing>>,
}

impl InstanceHandle {
    /// Current record.
    pub fn record(&self) -> InstanceRecord {
        self.status.borrow().clone()
    }

    /// Asks the runner to stop the workload (SIGTERM, grace, kill). Returns immediately.
    pub async fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop).await;
    }

    /// Leaves the VM running and ends the runner (agent shutdown).
    pub async fn detach(&self) {
        let _ = self.tx.send(Cmd::Detach).await;
    }

    /// Waits until the instance is exited or failed (or the runner detached).
    pub async fn wait_terminal(&self) -> InstanceRecord {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|r| r.state.is_terminal()).await;
        rx.borrow().clone()
    }

    /// Subscribes to record changes.
    pub fn watch(&self) -> watch::Receiver<InstanceRecord> {
        self.status.clone()
    }

    /// A handle for a record that has no runner (already terminal at load).
    pub fn finished(rec: InstanceRecord, logs: Arc<Mutex<LogRing>>) -> InstanceHandle {
        let (tx, _) = mpsc::channel(1);
        let (_stx, status) = watch::channel(rec);
        InstanceHandle { tx, status, logs }
    }
}

/// Spawns a runner for `rec`.
pub fn spawn(
    rec: InstanceRecord,
    deps: Arc<Deps>,
    logs: Arc<Mutex<LogRing>>,
    start: Start,
) -> InstanceHandle {
    let (tx, rx) = mpsc::channel(16);
    let (status_tx, status) = watch::channel(rec.clone());
    let span = tracing::info_span!("instance", id = %rec.id, generation = rec.spec.generation);
    let runner = Runner {
        rec,
        deps,
        status_tx,
        logs: logs.clone(),
        rx,
        split: [LineSplitter::default(), LineSplitter::default()],
        stop_deadline: None,
        killed: false,
    };
    tokio::spawn(runner.run(start).instrument(span));
    InstanceHandle { tx, status, logs }
}

struct Runner {
    rec: InstanceRecord,
    deps: Arc<Deps>,
    status_tx: watch::Sender<InstanceRecord>,
    logs: Arc<Mutex<LogRing>>,
    rx: mpsc::Receiver<Cmd>,
    split: [LineSplitter; 2],
    stop_deadline: Option<Instant>,
    killed: bool,
}

impl Runner {
    /// Writes the record to disk, then publishes it (a published state is a persisted one).
    async fn persist(&mut self) {
        let store = self.deps.store.clone();
        let rec = self.rec.clone();
        match tokio::task::spawn_blocking(move || store.put(&rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not persist agent state"),
            Err(e) => warn!(error = %e, "persist task failed"),
        }
        self.status_tx.send_replace(self.rec.clone());
    }

    async fn set(&mut self, to: InstanceState, reason: impl Into<String>) {
        let reason = reason.into();
        let from = self.rec.state;
        match self.rec.transition(to, reason.clone(), now_rfc3339()) {
            Ok(()) => info!(from = from.as_str(), to = to.as_str(), %reason, "transition"),
            Err(e) => {
                warn!(%e, %reason, "ignored transition");
                return;
            }
        }
        self.persist().await;
    }

    async fn fail(&mut self, what: &str, e: BackendError) {
        self.deps.metrics.vmm_failure(&e.kind);
        self.set(InstanceState::Failed, format!("{what}: {e}"))
            .await;
        self.cleanup().await;
    }

    /// Removes the TAP and the rootfs clone (before the terminal transition, so a terminal
    /// record never points at resources).
    async fn cleanup(&mut self) {
        if let (Some(net), Some(tap)) = (&self.deps.network, self.rec.tap.clone())
            && let Err(e) = net.remove(&tap).await
        {
            warn!(%e, tap, "could not remove TAP");
        }
        if let Some(p) = self.rec.rootfs.clone()
            && let Err(e) = self.deps.rootfs.remove_instance(p.as_ref()).await
        {
            warn!(%e, "could not remove rootfs clone");
        }
        self.rec.tap = None;
        self.rec.rootfs = None;
    }

    /// A stop arrived before a VM existed.
    fn stop_pending(&mut self) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            if matches!(c, Cmd::Stop) {
                self.rec.stop_requested = true;
            }
        }
        self.rec.stop_requested
    }

    async fn stopped_before_boot(&mut self) {
        self.set(InstanceState::Stopping, "stop requested before boot")
            .await;
        self.cleanup().await;
        self.set(InstanceState::Exited, "stopped before the workload started")
            .await;
    }

    async fn run(mut self, start: Start) {
        let run = match start {
            Start::Adopt(run) => {
                if self.rec.state == InstanceState::Booting {
                    self.set(InstanceState::Running, "re-adopted after agent restart")
                        .await;
                    if self.rec.spec.health.is_none() {
                        self.set(InstanceState::Ready, "running (no health check)")
                            .await;
                    }
                }
                if self.rec.stop_requested || self.rec.state == InstanceState::Stopping {
                    self.begin_stop().await;
                }
                run
            }
            Start::Fresh { predecessor } => {
                if let Some(p) = predecessor {
                    p.stop().await;
                    let old = p.wait_terminal().await;
                    info!(
                        old_generation = old.spec.generation,
                        "previous generation stopped"
                    );
                }
                match self.boot().await {
                    Some(run) => run,
                    None => return,
                }
            }
        };
        self.supervise(run).await;
    }

    async fn boot(&mut self) -> Option<VmRun> {
        if self.stop_pending() {
            self.stopped_before_boot().await;
            return None;
        }
        self.set(InstanceState::Preparing, "preparing root filesystem")
            .await;
        let key = vm_key(&self.rec.id, self.rec.spec.generation);
        let image = match self.deps.rootfs.prepare(&self.rec.spec.image).await {
            Ok(i) => i,
            Err(e) => {
                self.fail("image", e).await;
                return None;
            }
        };
        if let Some(want) = self.rec.spec.image_digest.clone()
            && !digest_matches(&self.rec.spec.image, &want, &image.digest)
        {
            self.fail(
                "image",
                BackendError::new(
                    "image",
                    format!(
                        "image digest mismatch: the release pins {want} but the image source holds {}; create a release with the right digest",
                        image.digest
                    ),
                ),
            )
            .await;
            return None;
        }
        self.deps.metrics.image_cache(image.cache_hit);
        if let Some(t) = image.build_time {
            self.deps.metrics.observe_rootfs_build(t.as_secs_f64());
        }
        match self.deps.rootfs.clone_for(&image, &key).await {
            Ok(p) => self.rec.rootfs = Some(p.to_string_lossy().into_owned()),
            Err(e) => {
                self.fail("rootfs clone", e).await;
                return None;
            }
        }
        self.persist().await;
        let mut net = None;
        if let Some(n) = self.deps.network.clone() {
            match n.ensure(&key, self.rec.spec.ipv6_address).await {
                Ok(a) => {
                    self.rec.tap = Some(a.tap.clone());
                    self.rec.guest_addr = Some(a.guest_addr);
                    net = Some(a);
                    self.persist().await;
                }
                Err(e) => {
                    self.fail("network", e).await;
                    return None;
                }
            }
        }
        if self.stop_pending() {
            self.stopped_before_boot().await;
            return None;
        }
        self.set(InstanceState::Booting, "starting VM").await;
        let spec = &self.rec.spec;
        let vm = VmSpec {
            key,
            instance_id: self.rec.id.clone(),
            generation: spec.generation,
            rootfs: PathBuf::from(self.rec.rootfs.clone().unwrap_or_default()),
            image_config: image.config.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            resources: spec.resources.clone(),
            net,
            secrets: spec.secrets.clone(),
            secrets_path: spec.secrets_path.clone(),
            volumes: spec.volumes.clone(),
        };
        match self.deps.backend.start(vm).await {
            Ok(run) => {
                self.rec.vm = Some(run.handle.clone());
                self.persist().await;
                Some(run)
            }
            Err(e) => {
                self.fail("boot", e).await;
                None
            }
        }
    }

    async fn begin_stop(&mut self) {
        if self.stop_deadline.is_some() || self.rec.state.is_terminal() {
            return;
        }
        self.rec.stop_requested = true;
        if self.rec.state != InstanceState::Stopping {
            let g = self.rec.spec.stop_grace_s;
            self.set(
                InstanceState::Stopping,
                format!("stop requested: SIGTERM, {g}s grace"),
            )
            .await;
        }
        self.stop_deadline =
            Some(Instant::now() + Duration::from_secs(self.rec.spec.stop_grace_s.into()));
        if let Some(h) = self.rec.vm.clone()
            && let Err(e) = self.deps.backend.signal(&h, libc::SIGTERM).await
        {
            warn!(%e, "SIGTERM failed; killing now");
            self.stop_deadline = Some(Instant::now());
        }
    }

    fn append_log(&mut self, stream: LogStream, bytes: &[u8]) {
        let i = stream as usize;
        let lines = self.split[i].push(bytes);
        self.write_lines(stream, lines);
    }

    fn write_lines(&self, stream: LogStream, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let ts = now_rfc3339();
        let mut ring = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        for l in lines {
            if let Err(e) = ring.append(stream, &ts, &l) {
                warn!(%e, "could not write log ring");
                return;
            }
        }
    }

    async fn supervise(mut self, mut run: VmRun) {
        let boot_started = Instant::now();
        let check = self.rec.spec.health.clone();
        let mut tracker = Tracker {
            passing: self.rec.state == InstanceState::Ready,
            ..Tracker::default()
        };
        let mut running_since = Instant::now();
        let (htx, mut hrx) = mpsc::channel::<Result<(), String>>(1);
        let mut next_probe: Option<Instant> = None;
        let mut probing = false;
        if self.rec.state == InstanceState::Running || self.rec.state == InstanceState::Ready {
            next_probe = Some(Instant::now());
        }
        let host = self.rec.guest_addr.unwrap_or(self.deps.health_host);
        loop {
            let kill_at = self.stop_deadline;
            let far = Instant::now() + Duration::from_secs(86400);
            let probe_at = if probing || check.is_none() {
                None
            } else {
                next_probe
            };
            tokio::select! {
                ev = run.events.recv() => match ev {
                    Some(VmEvent::Started) => {
                        if self.rec.state == InstanceState::Booting {
                            self.deps.metrics.observe_boot(boot_started.elapsed().as_secs_f64());
                            self.set(InstanceState::Running, "workload started").await;
                            running_since = Instant::now();
                            if check.is_none() {
                                self.set(InstanceState::Ready, "running (no health check)").await;
                            } else {
                                next_probe = Some(Instant::now());
                            }
                        }
                    }
                    Some(VmEvent::Log { stream, bytes }) => self.append_log(stream, &bytes),
                    Some(VmEvent::Exited(st)) => {
                        self.finish(Some(st)).await;
                        return;
                    }
                    None => {
                        self.finish(None).await;
                        return;
                    }
                },
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Stop) => self.begin_stop().await,
                    Some(Cmd::Detach) | None => {
                        info!("detached; VM keeps running");
                        return;
                    }
                },
                _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                    if self.killed {
                        warn!("VM did not report exit after kill");
                        self.deps.metrics.vmm_failure("kill_timeout");
                        self.finish(None).await;
                        return;
                    }
                    info!("grace period over; killing VM");
                    self.killed = true;
                    if let Some(h) = self.rec.vm.clone()
                        && let Err(e) = self.deps.backend.kill(&h).await
                    {
                        warn!(%e, "kill failed");
                        self.deps.metrics.vmm_failure(&e.kind);
                    }
                    self.stop_deadline = Some(Instant::now() + KILL_WAIT);
                },
                _ = tokio::time::sleep_until(probe_at.unwrap_or(far)), if probe_at.is_some() => {
                    if let Some(c) = check.clone() {
                        probing = true;
                        let tx = htx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(health::probe(&c, host).await).await;
                        });
                    }
                },
                Some(res) = hrx.recv() => {
                    probing = false;
                    let Some(c) = check.as_ref() else { continue };
                    next_probe = Some(Instant::now() + Duration::from_secs(c.interval_s.into()));
                    if !matches!(self.rec.state, InstanceState::Running | InstanceState::Ready) {
                        continue;
                    }
                    let in_grace = running_since.elapsed() < Duration::from_secs(c.grace_s.into());
                    let change = tracker.record(c, res.is_ok(), in_grace);
                    if res.is_err() && !in_grace {
                        self.deps.metrics.health_failure();
                    }
                    let prev_err = self.rec.health.as_ref().and_then(|h| h.last_error.clone());
                    self.rec.health = Some(HealthStatus {
                        passing: tracker.passing,
                        consecutive_ok: tracker.ok_streak,
                        consecutive_fail: tracker.fail_streak,
                        last_error: res.as_ref().err().cloned().or(prev_err),
                        last_check_at: Some(now_rfc3339()),
                    });
                    match change {
                        Change::BecameHealthy => {
                            self.set(InstanceState::Ready, "health check passing").await;
                        }
                        Change::BecameUnhealthy => {
                            let why = res.err().unwrap_or_default();
                            self.set(InstanceState::Running, format!("health check failing: {why}")).await;
                        }
                        // Publish the health detail without a transition (no fsync per probe).
                        Change::None => { self.status_tx.send_replace(self.rec.clone()); }
                    }
                }
            }
        }
    }

    async fn finish(&mut self, st: Option<crate::backend::ExitStatus>) {
        for (i, stream) in [LogStream::Stdout, LogStream::Stderr]
            .into_iter()
            .enumerate()
        {
            if let Some(l) = self.split[i].flush() {
                self.write_lines(stream, vec![l]);
            }
        }
        self.rec.exit = st;
        self.cleanup().await;
        let desc = st
            .map(|s| s.describe())
            .unwrap_or_else(|| "VM ended without an exit status".into());
        if self.rec.stop_requested {
            let how = if self.killed {
                "killed after grace period"
            } else {
                "stopped"
            };
            self.set(InstanceState::Exited, format!("{how}: {desc}"))
                .await;
        } else if st.is_some_and(|s| s.success()) {
            self.set(InstanceState::Exited, format!("workload exited: {desc}"))
                .await;
        } else {
            self.set(InstanceState::Failed, format!("workload exited: {desc}"))
                .await;
        }
    }
}

/// Whether the prepared image is the one the release pins. A registry reference pinned to the
/// wanted digest was pulled (and verified) by that digest; it may name an index whose
/// platform image has a digest of its own.
fn digest_matches(source: &crate::spec::ImageSource, want: &str, got: &str) -> bool {
    let pinned = matches!(source,
        crate::spec::ImageSource::Registry { reference } if reference.ends_with(&format!("@{want}")));
    want == got || pinned
}

#[cfg(test)]
mod digest_tests {
    use super::*;
    use crate::spec::ImageSource;

    #[test]
    fn an_index_pulled_by_its_pinned_digest_matches() {
        let (index, platform) = ("sha256:aaaa", "sha256:bbbb");
        let pinned = ImageSource::Registry {
            reference: format!("reg.example/app:1@{index}"),
        };
        assert!(digest_matches(&pinned, index, platform));
        assert!(digest_matches(&pinned, index, index));
        let tagged = ImageSource::Registry {
            reference: "reg.example/app:1".into(),
        };
        assert!(!digest_matches(&tagged, index, platform));
        let archive = ImageSource::Archive {
            path: "/x.tar".into(),
        };
        assert!(!digest_matches(&archive, index, platform));
        assert!(digest_matches(&archive, index, index));
    }
}
