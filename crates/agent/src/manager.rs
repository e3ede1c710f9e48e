//! The instance manager: the table of instance handles, idempotent ensure by (id, generation),
//! stop/delete/list, and start-up reconciliation (load state, re-adopt live VMs, mark dead ones,
//! remove orphan VMM processes, TAPs and rootfs clones; each logged with `[reconcile]`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;
use tracing::{error, info, warn};

use crate::actor::{self, Deps, InstanceHandle, Start};
use crate::backend::Adopted;
use crate::logring::LogRing;
use crate::metrics::InstanceSample;
use crate::spec::{InstanceSpec, validate_instance_id};
use crate::state::{EnsureDecision, InstanceRecord, InstanceState, decide_ensure, now_rfc3339};

/// Errors of manager operations, mapped to HTTP by the API.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("instance {0:?} not found")]
    NotFound(String),
    #[error(
        "instance {id:?} is at generation {current}; generation {requested} is older and was refused (send a generation >= {current})"
    )]
    Stale {
        id: String,
        current: u64,
        requested: u64,
    },
    #[error("{0}")]
    Invalid(String),
    /// The instance exists but is not in a state that allows the operation.
    #[error("{0}")]
    NotRunning(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Output and outcome of a command run inside an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the command could not run.
    pub error: Option<String>,
    /// The command did not end within the timeout (it may still be running).
    pub timed_out: bool,
    /// Output beyond [`EXEC_OUTPUT_MAX`] per stream was dropped.
    pub truncated: bool,
}

/// A backend's exec refusal: unsupported (422) or the VM is gone (409).
fn exec_error(e: crate::backend::BackendError) -> ManagerError {
    if e.kind == crate::backend::EXEC_UNSUPPORTED {
        ManagerError::Invalid(e.to_string())
    } else {
        ManagerError::NotRunning(e.to_string())
    }
}

/// Largest output kept per stream of an exec.
pub const EXEC_OUTPUT_MAX: usize = 1 << 20;

/// What ensure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsureOutcome {
    Created,
    Unchanged,
    Replaced,
}

/// Log ring sizing.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    pub segment_bytes: u64,
    pub max_bytes: u64,
}

/// The instance table.
pub struct Manager {
    deps: Arc<Deps>,
    logs_dir: PathBuf,
    limits: LogLimits,
    table: AsyncMutex<BTreeMap<String, InstanceHandle>>,
}

impl Manager {
    fn ring(&self, id: &str) -> Result<Arc<Mutex<LogRing>>, ManagerError> {
        open_ring(&self.logs_dir, id, self.limits)
    }

    /// The VM of instance `id` if it runs (exec needs a running instance).
    pub async fn running_vm(&self, id: &str) -> Result<crate::backend::VmHandle, ManagerError> {
        let rec = self.handle(id).await?.record();
        match (rec.state, rec.vm) {
            (InstanceState::Running | InstanceState::Ready, Some(vm)) => Ok(vm),
            (state, _) => Err(ManagerError::NotRunning(format!(
                "instance {id:?} is {}; exec needs a running instance",
                state.as_str()
            ))),
        }
    }

    /// The VM to run `argv` in: the argv is checked, then the instance must run.
    async fn exec_vm(
        &self,
        id: &str,
        argv: &[String],
    ) -> Result<crate::backend::VmHandle, ManagerError> {
        if argv.is_empty() || argv.len() > 1024 || argv.iter().any(|a| a.contains('\0')) {
            return Err(ManagerError::Invalid(
                "argv must hold 1-1024 arguments without NUL bytes".into(),
            ));
        }
        self.running_vm(id).await
    }

    /// Runs `argv` inside instance `id` (it must be running) and collects its output until it
    /// ends or `timeout` passes.
    pub async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<ExecResult, ManagerError> {
        let vm = self.exec_vm(id, &argv).await?;
        let mut rx = self
            .deps
            .backend
            .exec(&vm, argv)
            .await
            .map_err(exec_error)?;
        let mut r = ExecResult::default();
        let collect = async {
            while let Some(ev) = rx.recv().await {
                match ev {
                    crate::backend::ExecEvent::Output { stream, data } => {
                        let out = match stream {
                            crate::backend::LogStream::Stdout => &mut r.stdout,
                            crate::backend::LogStream::Stderr => &mut r.stderr,
                        };
                        if out.len() + data.len() > EXEC_OUTPUT_MAX {
                            r.truncated = true;
                        } else {
                            out.push_str(&String::from_utf8_lossy(&data));
                        }
                    }
                    crate::backend::ExecEvent::Exit {
                        code,
                        signal,
                        error,
                    } => {
                        r.exit_code = code;
                        r.signal = signal;
                        r.error = error;
                        return true;
                    }
                }
            }
            false
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(true) => {}
            Ok(false) => r.error = Some("the VM ended before the command finished".into()),
            Err(_) => r.timed_out = true,
        }
        info!(id, exit_code = ?r.exit_code, timed_out = r.timed_out, "exec");
        Ok(r)
    }

    /// Starts `argv` on a pseudo-terminal inside instance `id` (it must be running).
    pub async fn exec_tty(
        &self,
        id: &str,
        argv: Vec<String>,
        rows: u16,
        cols: u16,
    ) -> Result<crate::backend::ExecSession, ManagerError> {
        let vm = self.exec_vm(id, &argv).await?;
        info!(id, "interactive exec");
        self.deps
            .backend
            .exec_tty(&vm, argv, rows.max(1), cols.max(1))
            .await
            .map_err(exec_error)
    }

    /// Ensures `id` runs `spec` (idempotent by generation).
    pub async fn ensure(
        &self,
        id: &str,
        spec: InstanceSpec,
    ) -> Result<(EnsureOutcome, InstanceRecord), ManagerError> {
        validate_instance_id(id).map_err(|e| ManagerError::Invalid(e.0))?;
        spec.validate().map_err(|e| ManagerError::Invalid(e.0))?;
        let mut t = self.table.lock().await;
        let current = t.get(id).map(|h| h.record().spec.generation);
        let (outcome, predecessor, logs) = match decide_ensure(current, spec.generation) {
            EnsureDecision::Unchanged => {
                return Ok((EnsureOutcome::Unchanged, t[id].record()));
            }
            EnsureDecision::Stale { current } => {
                return Err(ManagerError::Stale {
                    id: id.into(),
                    current,
                    requested: spec.generation,
                });
            }
            EnsureDecision::Create => (EnsureOutcome::Created, None, self.ring(id)?),
            EnsureDecision::Replace => {
                let old = t[id].clone();
                let logs = old.logs.clone();
                (EnsureOutcome::Replaced, Some(old), logs)
            }
        };
        let rec = InstanceRecord::new(id.into(), spec, now_rfc3339());
        let store = self.deps.store.clone();
        let r2 = rec.clone();
        tokio::task::spawn_blocking(move || store.put(&r2))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(|e| ManagerError::Internal(format!("persist state: {e}")))?;
        info!(id, generation = rec.spec.generation, ?outcome, "ensure");
        let h = actor::spawn(
            rec.clone(),
            self.deps.clone(),
            logs,
            Start::Fresh { predecessor },
        );
        t.insert(id.into(), h);
        Ok((outcome, rec))
    }

    /// Handle of an instance.
    pub async fn handle(&self, id: &str) -> Result<InstanceHandle, ManagerError> {
        self.table
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| ManagerError::NotFound(id.into()))
    }

    /// Begins stopping; returns the record at that point.
    pub async fn stop(&self, id: &str) -> Result<InstanceRecord, ManagerError> {
        let h = self.handle(id).await?;
        h.stop().await;
        let mut w = h.watch();
        // Give the runner a moment to publish `stopping` so the answer reflects the request.
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            w.wait_for(|r| r.stop_requested || r.state.is_terminal()),
        )
        .await;
        Ok(h.record())
    }

    /// Stops (waiting for exit), then forgets the instance and deletes its logs.
    pub async fn delete(&self, id: &str) -> Result<(), ManagerError> {
        let h = self.handle(id).await?;
        h.stop().await;
        h.wait_terminal().await;
        let mut t = self.table.lock().await;
        t.remove(id);
        let store = self.deps.store.clone();
        let id2 = id.to_string();
        tokio::task::spawn_blocking(move || store.remove(&id2))
            .await
            .map_err(|e| ManagerError::Internal(e.to_string()))?
            .map_err(|e| ManagerError::Internal(format!("persist state: {e}")))?;
        let _ = tokio::fs::remove_dir_all(self.logs_dir.join(id)).await;
        info!(id, "deleted");
        Ok(())
    }

    /// Quiesces (sync + pause) the running guest that mounts volume `volume`, if any, and
    /// returns its VM to resume afterwards.
    pub async fn quiesce_volume_user(
        &self,
        volume: &str,
    ) -> Result<Option<crate::backend::VmHandle>, ManagerError> {
        let user = self.list().await.into_iter().find_map(|r| {
            let mounts = r.spec.volumes.iter().any(|v| v.name == volume);
            match (mounts, r.state, r.vm) {
                (true, InstanceState::Running | InstanceState::Ready, Some(vm)) => Some(vm),
                _ => None,
            }
        });
        if let Some(vm) = &user {
            self.deps
                .backend
                .quiesce(vm)
                .await
                .map_err(|e| ManagerError::Internal(format!("quiesce the guest: {e}")))?;
        }
        Ok(user)
    }

    /// Resumes a VM paused by [`Manager::quiesce_volume_user`].
    pub async fn resume_vm(&self, vm: &crate::backend::VmHandle) {
        if let Err(e) = self.deps.backend.resume(vm).await {
            tracing::error!(vm = %vm.key, "resuming the guest after a volume snapshot failed: {e}");
        }
    }

    /// All records.
    pub async fn list(&self) -> Vec<InstanceRecord> {
        self.table
            .lock()
            .await
            .values()
            .map(|h| h.record())
            .collect()
    }

    /// Per-instance samples for `/metrics`.
    pub async fn samples(&self) -> Vec<InstanceSample> {
        let recs = self.list().await;
        recs.into_iter()
            .map(|r| InstanceSample {
                usage: match (&r.vm, r.state.is_terminal()) {
                    (Some(h), false) => self.deps.backend.usage(h),
                    _ => None,
                },
                id: r.id,
                state: r.state,
            })
            .collect()
    }

    /// Ends every runner, leaving VMs running (for a restart).
    pub async fn detach_all(&self) {
        for h in self.table.lock().await.values() {
            h.detach().await;
        }
    }

    /// Loads state and reconciles it with the host. See the module docs.
    pub async fn start(
        deps: Arc<Deps>,
        logs_dir: &Path,
        limits: LogLimits,
        loaded: Vec<InstanceRecord>,
    ) -> Manager {
        let m = Manager {
            deps: deps.clone(),
            logs_dir: logs_dir.to_owned(),
            limits,
            table: AsyncMutex::new(BTreeMap::new()),
        };
        let mut restart = Vec::new();
        let mut tracked_vms = BTreeSet::new();
        let mut table = BTreeMap::new();
        for mut rec in loaded {
            let logs = match m.ring(&rec.id) {
                Ok(l) => l,
                Err(e) => {
                    error!(id = rec.id, %e, "[reconcile] cannot open log ring; instance skipped");
                    continue;
                }
            };
            if rec.state.is_terminal() {
                table.insert(rec.id.clone(), InstanceHandle::finished(rec, logs));
                continue;
            }
            let Some(vm) = rec.vm.clone() else {
                info!(
                    id = rec.id,
                    state = rec.state.as_str(),
                    "[reconcile] instance was interrupted before its VM started; starting it again"
                );
                restart.push((rec, logs));
                continue;
            };
            match deps.backend.adopt(vm.clone()).await {
                Ok(Adopted::Running(run)) => {
                    info!(
                        id = rec.id,
                        key = vm.key,
                        pid = vm.pid,
                        "[reconcile] re-adopted running VM"
                    );
                    tracked_vms.insert((vm.key.clone(), vm.pid));
                    let h = actor::spawn(rec.clone(), deps.clone(), logs, Start::Adopt(run));
                    table.insert(rec.id.clone(), h);
                }
                Ok(Adopted::Ended(st)) => {
                    let desc = st
                        .map(|s| s.describe())
                        .unwrap_or_else(|| "status unknown".into());
                    info!(
                        id = rec.id,
                        key = vm.key,
                        "[reconcile] VM ended while the agent was down ({desc}); marking it"
                    );
                    rec.exit = st;
                    let to = if rec.stop_requested || st.is_some_and(|s| s.success()) {
                        InstanceState::Exited
                    } else {
                        InstanceState::Failed
                    };
                    let _ = rec.transition(
                        to,
                        format!("VM ended while the agent was down: {desc}"),
                        now_rfc3339(),
                    );
                    cleanup_record(&deps, &mut rec).await;
                    let _ = deps.store.put(&rec);
                    table.insert(rec.id.clone(), InstanceHandle::finished(rec, logs));
                }
                Err(e) => {
                    warn!(id = rec.id, %e, "[reconcile] could not re-adopt VM; marking failed");
                    deps.metrics.vmm_failure("adopt");
                    let _ = rec.transition(
                        InstanceState::Failed,
                        format!("could not re-adopt VM after agent restart: {e}"),
                        now_rfc3339(),
                    );
                    let _ = deps.backend.kill(&vm).await;
                    cleanup_record(&deps, &mut rec).await;
                    let _ = deps.store.put(&rec);
                    table.insert(rec.id.clone(), InstanceHandle::finished(rec, logs));
                }
            }
        }
        remove_orphans(&deps, &tracked_vms, &table).await;
        for (rec, logs) in restart {
            let fresh = InstanceRecord::new(rec.id.clone(), rec.spec.clone(), now_rfc3339());
            let _ = deps.store.put(&fresh);
            let h = actor::spawn(
                fresh,
                deps.clone(),
                logs,
                Start::Fresh { predecessor: None },
            );
            table.insert(rec.id.clone(), h);
        }
        *m.table.lock().await = table;
        m
    }
}

fn open_ring(dir: &Path, id: &str, l: LogLimits) -> Result<Arc<Mutex<LogRing>>, ManagerError> {
    LogRing::open(&dir.join(id), l.segment_bytes, l.max_bytes)
        .map(|r| Arc::new(Mutex::new(r)))
        .map_err(|e| ManagerError::Internal(format!("open log ring for {id}: {e}")))
}

async fn cleanup_record(deps: &Deps, rec: &mut InstanceRecord) {
    if let (Some(n), Some(t)) = (&deps.network, rec.tap.take()) {
        let _ = n.remove(&t).await;
    }
    if let Some(p) = rec.rootfs.take() {
        let _ = deps.rootfs.remove_instance(p.as_ref()).await;
    }
}

async fn remove_orphans(
    deps: &Deps,
    tracked_vms: &BTreeSet<(String, u32)>,
    table: &BTreeMap<String, InstanceHandle>,
) {
    match deps.backend.list_live().await {
        Ok(live) => {
            for vm in live {
                if tracked_vms.contains(&(vm.key.clone(), vm.pid)) {
                    continue;
                }
                match deps.backend.kill_orphan(&vm).await {
                    Ok(()) => info!(
                        key = vm.key,
                        pid = vm.pid,
                        "[reconcile] killed orphan VMM process pid {} ({})",
                        vm.pid,
                        vm.key
                    ),
                    Err(e) => {
                        warn!(key = vm.key, pid = vm.pid, %e, "[reconcile] could not kill orphan VMM process")
                    }
                }
            }
        }
        Err(e) => warn!(%e, "[reconcile] cannot list VMM processes"),
    }
    let recs: Vec<InstanceRecord> = table.values().map(|h| h.record()).collect();
    let tracked_rootfs: BTreeSet<PathBuf> = recs
        .iter()
        .filter_map(|r| r.rootfs.as_ref().map(PathBuf::from))
        .collect();
    match deps.rootfs.list_instances().await {
        Ok(files) => {
            for f in files {
                if tracked_rootfs.contains(&f) {
                    continue;
                }
                match deps.rootfs.remove_instance(&f).await {
                    Ok(()) => {
                        info!(path = %f.display(), "[reconcile] removed orphan rootfs {}", f.display())
                    }
                    Err(e) => {
                        warn!(path = %f.display(), %e, "[reconcile] could not remove orphan rootfs")
                    }
                }
            }
        }
        Err(e) => warn!(%e, "[reconcile] cannot list rootfs clones"),
    }
    if let Some(n) = &deps.network {
        let tracked: BTreeSet<&str> = recs.iter().filter_map(|r| r.tap.as_deref()).collect();
        match n.list_taps().await {
            Ok(taps) => {
                for t in taps {
                    if tracked.contains(t.as_str()) {
                        continue;
                    }
                    match n.remove(&t).await {
                        Ok(()) => info!(tap = t, "[reconcile] removed orphan TAP {t}"),
                        Err(e) => warn!(tap = t, %e, "[reconcile] could not remove orphan TAP"),
                    }
                }
            }
            Err(e) => warn!(%e, "[reconcile] cannot list TAPs"),
        }
    }
}
