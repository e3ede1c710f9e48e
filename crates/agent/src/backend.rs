//! The three traits the agent core drives, implemented by the real crates (`scalebox-vmm`,
//! `scalebox-image`, `scalebox-hostnet`) and by the dev/test process backend in this crate.
//! Kept minimal and object-safe (`Arc<dyn ...>`), returning boxed futures.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::spec::{ImageSource, Resources, Secrets, VolumeSpec};

/// A boxed, sendable future (keeps the traits object-safe).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Any backend failure. `kind` is a short stable label used for the `vmm_failures` metric
/// (e.g. `spawn`, `boot_timeout`, `signal`, `adopt`); `message` must not contain secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct BackendError {
    pub kind: String,
    pub message: String,
}

impl BackendError {
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        BackendError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

/// Persisted reference to a running VM, enough for the backend to find it again after an
/// agent restart. `detail` is backend-specific (API socket path, cgroup, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmHandle {
    /// Backend name that created it (`process`, `qemu`, `firecracker`).
    pub backend: String,
    /// Unique key of this VM: `<instance id>-g<generation>`.
    pub key: String,
    /// PID of the VMM (or supervisor) process.
    pub pid: u32,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// How a workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom
    }
    pub fn describe(&self) -> String {
        let mut s = match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "exit status unknown".into(),
        };
        if self.oom {
            s.push_str(" (out of memory)");
        }
        s
    }
}

/// Workload output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Something that happened to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The workload entrypoint started.
    Started,
    /// Output bytes (may hold several lines or part of one).
    Log { stream: LogStream, bytes: Vec<u8> },
    /// The workload (and the VM) ended. Last event of a run.
    Exited(ExitStatus),
}

/// A started (or re-adopted) VM: its handle and its event stream.
pub struct VmRun {
    pub handle: VmHandle,
    pub events: mpsc::Receiver<VmEvent>,
}

/// Result of trying to re-adopt a VM after an agent restart.
pub enum Adopted {
    Running(VmRun),
    /// It ended while the agent was down; status if the backend still knows it.
    Ended(Option<ExitStatus>),
}

/// Run configuration from the image's OCI config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

/// Network attachment of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAttachment {
    pub tap: String,
    /// Address the host reaches the guest on (health checks); e.g. its IPv6 address.
    pub guest_addr: std::net::IpAddr,
    pub mac: Option<String>,
    /// IPv4 address for egress (NAT through the host), with its prefix length.
    #[serde(default)]
    pub ipv4: Option<(std::net::Ipv4Addr, u8)>,
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub key: String,
    pub instance_id: String,
    pub generation: u64,
    pub rootfs: PathBuf,
    pub image_config: OciRunConfig,
    /// Process command override (shell string), replaces entrypoint+cmd when set.
    pub command: Option<String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub net: Option<NetAttachment>,
    pub secrets: Secrets,
    /// Where the secrets file appears in the guest (init's default when unset).
    pub secrets_path: Option<String>,
    pub volumes: Vec<VolumeSpec>,
}

/// A VMM process found on the host (for orphan detection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveVm {
    pub key: String,
    pub pid: u32,
}

/// CPU and memory use of a VM, read from the host (`/proc/<pid>/stat`, cgroup `memory.current`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// `BackendError::kind` of a backend that cannot run commands inside instances.
pub const EXEC_UNSUPPORTED: &str = "exec_unsupported";

/// What an `exec` inside a VM produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Output {
        stream: LogStream,
        data: Vec<u8>,
    },
    /// The command ended (`code` or `signal`), or could not start (`error`).
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
        error: Option<String>,
    },
}

/// Input to an interactive (tty) exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecControl {
    Input(Vec<u8>),
    Resize { rows: u16, cols: u16 },
}

/// An interactive exec: its output and exit, and where its input and resizes go.
pub struct ExecSession {
    pub events: mpsc::Receiver<ExecEvent>,
    pub control: mpsc::Sender<ExecControl>,
}

/// Starts and controls VMs.
pub trait VmBackend: Send + Sync + 'static {
    /// Short name stored in handles (`qemu`, `firecracker`, `process`).
    fn name(&self) -> &'static str;
    /// Boots a VM. Events arrive on the returned channel; the channel ends after `Exited`.
    fn start(&self, spec: VmSpec) -> BoxFut<'_, Result<VmRun, BackendError>>;
    /// Re-attaches to a VM from a persisted handle without starting anything new.
    fn adopt(&self, handle: VmHandle) -> BoxFut<'_, Result<Adopted, BackendError>>;
    /// Sends a signal (e.g. `libc::SIGTERM`) to the workload (through init for real VMs).
    fn signal(&self, handle: &VmHandle, signal: i32) -> BoxFut<'_, Result<(), BackendError>>;
    /// Kills the VM outright. The run's event stream then reports `Exited`.
    fn kill(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>>;
    /// VMM processes of this agent (its data dir) alive on the host.
    fn list_live(&self) -> BoxFut<'_, Result<Vec<LiveVm>, BackendError>>;
    /// Kills a VMM process found by `list_live` that no instance tracks.
    fn kill_orphan(&self, vm: &LiveVm) -> BoxFut<'_, Result<(), BackendError>>;
    /// Current CPU/memory use, `None` if the VM is gone.
    fn usage(&self, handle: &VmHandle) -> Option<Usage>;
    /// Runs `argv` inside the VM next to the workload; output then one `Exit` arrive on the
    /// returned channel.
    fn exec(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
    ) -> BoxFut<'_, Result<mpsc::Receiver<ExecEvent>, BackendError>> {
        let _ = (handle, argv);
        Box::pin(async {
            Err(BackendError::new(
                EXEC_UNSUPPORTED,
                "this backend cannot run commands inside instances",
            ))
        })
    }
    /// Flushes the guest's filesystems and pauses its vCPUs, so its disks can be copied
    /// consistently (volume snapshots). Backends without guests have nothing to do.
    fn quiesce(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let _ = handle;
        Box::pin(async { Ok(()) })
    }
    /// Resumes a VM paused by [`VmBackend::quiesce`].
    fn resume(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let _ = handle;
        Box::pin(async { Ok(()) })
    }
    /// Runs `argv` inside the VM on a pseudo-terminal of `rows`×`cols` (interactive).
    fn exec_tty(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
        rows: u16,
        cols: u16,
    ) -> BoxFut<'_, Result<ExecSession, BackendError>> {
        let _ = (handle, argv, rows, cols);
        Box::pin(async {
            Err(BackendError::new(
                EXEC_UNSUPPORTED,
                "this backend cannot run commands inside instances",
            ))
        })
    }
}

/// A prepared image: a read-only cached ext4 and the run config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedImage {
    pub digest: String,
    pub ext4: PathBuf,
    pub config: OciRunConfig,
    /// True when it came from the cache.
    pub cache_hit: bool,
    /// Build time when it was not cached.
    pub build_time: Option<Duration>,
}

/// Turns image sources into ext4 root filesystems.
pub trait RootfsProvider: Send + Sync + 'static {
    /// Pulls/unpacks/builds (or finds in cache) the image's ext4.
    fn prepare(&self, source: &ImageSource) -> BoxFut<'_, Result<PreparedImage, BackendError>>;
    /// Makes the per-instance copy-on-write clone named by `key`; returns its path.
    fn clone_for(
        &self,
        image: &PreparedImage,
        key: &str,
    ) -> BoxFut<'_, Result<PathBuf, BackendError>>;
    /// Removes a per-instance clone (missing is fine).
    fn remove_instance(&self, path: &Path) -> BoxFut<'_, Result<(), BackendError>>;
    /// All per-instance clones on disk (for orphan cleanup).
    fn list_instances(&self) -> BoxFut<'_, Result<Vec<PathBuf>, BackendError>>;
}

/// Host networking for instances.
pub trait Network: Send + Sync + 'static {
    /// Creates (idempotently) the TAP and address for `key`; `ipv6` is the address IPAM
    /// allocated, if any (else one is derived from `key`).
    fn ensure(
        &self,
        key: &str,
        ipv6: Option<std::net::Ipv6Addr>,
    ) -> BoxFut<'_, Result<NetAttachment, BackendError>>;
    /// Removes the TAP (missing is fine).
    fn remove(&self, tap: &str) -> BoxFut<'_, Result<(), BackendError>>;
    /// TAPs this agent created that exist on the host.
    fn list_taps(&self) -> BoxFut<'_, Result<Vec<String>, BackendError>>;
}
