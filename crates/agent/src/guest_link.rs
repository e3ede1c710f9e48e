//! What the microVM backends (`qemu_backend`, `firecracker_backend`) share once a guest's
//! control channel is open: the run configuration for `scalebox-init`, the pump that turns guest
//! messages into [`VmEvent`]s, signals, `exec` (plain and tty) and `sync`, the VMM's cgroup and
//! its CPU/memory use. The backends differ only in how they start, find and stop the VMM.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalebox_init::proto::{GuestMsg, HostMsg, Mount, Net, RunConfig};
use scalebox_vmm::channel::{ChannelReader, ChannelWriter};
use tokio::sync::mpsc;

use crate::backend::*;

/// Memory the VMM process may use beyond the guest's RAM before the cgroup limit hits.
pub const VMM_OVERHEAD_MB: u64 = 160;
/// How long a guest may take from VMM start to init's `hello`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of a volume disk whose spec names none (sparse: it takes only what is written).
pub const VOLUME_SIZE: u64 = 1 << 30;

pub fn err(kind: &str) -> impl Fn(scalebox_vmm::VmmError) -> BackendError + '_ {
    move |e| BackendError::new(kind, e.to_string())
}

/// The control channels of the VMs one backend drives.
#[derive(Default)]
pub struct Guests {
    /// Per running VM: messages for its control channel writer.
    signals: Arc<Mutex<HashMap<String, mpsc::Sender<HostMsg>>>>,
    /// Per running exec (by exec id): where its output goes.
    execs: Arc<Mutex<HashMap<String, mpsc::Sender<ExecEvent>>>>,
    /// Per VM key: who waits for the guest's `synced`.
    syncs: Arc<Mutex<HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>>>,
}

impl Guests {
    /// What init runs: the command, environment, identity, network, secrets and volumes.
    pub fn run_config(spec: &VmSpec) -> RunConfig {
        let argv = match &spec.command {
            Some(c) => vec!["/bin/sh".into(), "-c".into(), c.clone()],
            None => spec
                .image_config
                .entrypoint
                .iter()
                .chain(&spec.image_config.cmd)
                .cloned()
                .collect(),
        };
        let mut env = spec.image_config.env.clone();
        env.extend(spec.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut net = match spec.net.as_ref().map(|n| n.guest_addr) {
            // Instance subnets are /64 (IPv6) or /24 (IPv4) with the host side at .1 / ::1.
            Some(IpAddr::V6(a)) => {
                let mut gw = a.segments();
                gw[4..].copy_from_slice(&[0, 0, 0, 1]);
                Net {
                    ipv6: Some(format!("{a}/64")),
                    ipv6_gateway: Some(std::net::Ipv6Addr::from(gw).to_string()),
                    ..Net::default()
                }
            }
            Some(IpAddr::V4(a)) => {
                let o = a.octets();
                Net {
                    ipv4: Some(format!("{a}/24")),
                    ipv4_gateway: Some(format!("{}.{}.{}.1", o[0], o[1], o[2])),
                    ..Net::default()
                }
            }
            None => Net::default(),
        };
        if let Some((ip, len)) = spec.net.as_ref().and_then(|n| n.ipv4) {
            let o = ip.octets();
            net.ipv4 = Some(format!("{ip}/{len}"));
            net.ipv4_gateway = Some(format!("{}.{}.0.1", o[0], o[1]));
        }
        let mounts = spec
            .volumes
            .iter()
            .enumerate()
            .map(|(i, v)| Mount {
                device: format!("/dev/vd{}", (b'b' + i as u8) as char),
                path: v.mount_path.clone(),
                read_only: false,
            })
            .collect();
        RunConfig {
            argv,
            env,
            user: spec.image_config.user.clone(),
            workdir: spec.image_config.workdir.clone(),
            hostname: Some(spec.instance_id.clone()),
            net,
            secrets: spec.secrets.0.clone(),
            secrets_path: spec.secrets_path.clone(),
            mounts,
            ..RunConfig::default()
        }
    }

    /// Sends `exec` to the VM's init and registers where its output goes: (exec id, the VM's
    /// message sender, the output receiver).
    #[allow(clippy::type_complexity)]
    pub fn start_exec(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
        tty: Option<(u16, u16)>,
    ) -> impl Future<
        Output = Result<(String, mpsc::Sender<HostMsg>, mpsc::Receiver<ExecEvent>), BackendError>,
    > + Send
    + 'static {
        let tx = self
            .signals
            .lock()
            .expect("signals lock")
            .get(&handle.key)
            .cloned();
        let execs = self.execs.clone();
        async move {
            let tx = tx.ok_or_else(|| BackendError::new("exec", "the VM is not running"))?;
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| BackendError::new("exec", e.to_string()))?;
            let id = hex::encode(b);
            let (etx, erx) = mpsc::channel(256);
            execs.lock().expect("execs lock").insert(id.clone(), etx);
            let (rows, cols) = tty.unwrap_or((0, 0));
            let msg = HostMsg::Exec {
                id: id.clone(),
                argv,
                tty: tty.is_some(),
                rows,
                cols,
            };
            if tx.send(msg).await.is_err() {
                execs.lock().expect("execs lock").remove(&id);
                return Err(BackendError::new("exec", "the VM is not running"));
            }
            Ok((id, tx, erx))
        }
    }

    /// Reads guest messages into agent events until the VM ends. `ended` resolves once the VMM
    /// process is gone (after the channel closed) and does the backend's own cleanup; the run's
    /// handle is `handle`.
    pub fn drive(
        &self,
        handle: VmHandle,
        mut reader: ChannelReader,
        mut writer: ChannelWriter,
        ended: BoxFut<'static, ()>,
    ) -> VmRun {
        let key = handle.key.clone();
        let (tx, rx) = mpsc::channel(256);
        let (sig_tx, mut sig_rx) = mpsc::channel::<HostMsg>(8);
        self.signals
            .lock()
            .expect("signals lock")
            .insert(key.clone(), sig_tx);
        tokio::spawn(async move {
            while let Some(m) = sig_rx.recv().await {
                let _ = writer.send(&m).await;
            }
        });
        let signals = self.signals.clone();
        let execs = self.execs.clone();
        let syncs = self.syncs.clone();
        let k2 = key.clone();
        tokio::spawn(async move {
            let mut status = None;
            loop {
                match reader.next().await {
                    Ok(Some(GuestMsg::Started { .. })) => {
                        let _ = tx.send(VmEvent::Started).await;
                    }
                    Ok(Some(GuestMsg::Log { stream, data })) => {
                        let stream = if stream == "stderr" {
                            LogStream::Stderr
                        } else {
                            LogStream::Stdout
                        };
                        let _ = tx
                            .send(VmEvent::Log {
                                stream,
                                bytes: data.into_bytes(),
                            })
                            .await;
                    }
                    Ok(Some(GuestMsg::Exit { status: s })) => {
                        status = Some(ExitStatus {
                            code: s.code,
                            signal: s.signal,
                            oom: s.oom,
                        });
                    }
                    Ok(Some(GuestMsg::ExecOutput {
                        id,
                        stream,
                        data,
                        data_hex,
                    })) => {
                        let t = execs.lock().expect("execs lock").get(&id).cloned();
                        if let Some(t) = t {
                            let stream = if stream == "stderr" {
                                LogStream::Stderr
                            } else {
                                LogStream::Stdout
                            };
                            let data = match data_hex {
                                Some(h) => hex::decode(h).unwrap_or_default(),
                                None => data.into_bytes(),
                            };
                            let _ = t.send(ExecEvent::Output { stream, data }).await;
                        }
                    }
                    Ok(Some(GuestMsg::ExecExit {
                        id,
                        code,
                        signal,
                        error,
                    })) => {
                        let t = execs.lock().expect("execs lock").remove(&id);
                        if let Some(t) = t {
                            let _ = t
                                .send(ExecEvent::Exit {
                                    code,
                                    signal,
                                    error,
                                })
                                .await;
                        }
                    }
                    Ok(Some(GuestMsg::Synced)) => {
                        let waiters = syncs.lock().expect("syncs lock").remove(&k2);
                        for w in waiters.into_iter().flatten() {
                            let _ = w.send(());
                        }
                    }
                    Ok(Some(GuestMsg::Error { message })) => {
                        let _ = tx
                            .send(VmEvent::Log {
                                stream: LogStream::Stderr,
                                bytes: format!("scalebox-init: {message}\n").into_bytes(),
                            })
                            .await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            // The channel closes when the VM powers off (or is killed): wait for the VMM to go.
            ended.await;
            remove_cgroup(&k2);
            signals.lock().expect("signals lock").remove(&k2);
            let st = status.unwrap_or(ExitStatus {
                code: None,
                signal: Some(libc::SIGKILL),
                oom: false,
            });
            let _ = tx.send(VmEvent::Exited(st)).await;
        });
        VmRun { handle, events: rx }
    }

    /// Sends a signal to the workload through init.
    pub fn signal(
        &self,
        handle: &VmHandle,
        signal: i32,
    ) -> BoxFut<'static, Result<(), BackendError>> {
        let tx = self.sender(&handle.key);
        Box::pin(async move {
            let tx = tx.ok_or_else(|| BackendError::new("signal", "the VM is not running"))?;
            tx.send(HostMsg::Signal { signal })
                .await
                .map_err(|_| BackendError::new("signal", "the VM is not running"))
        })
    }

    fn sender(&self, key: &str) -> Option<mpsc::Sender<HostMsg>> {
        self.signals.lock().expect("signals lock").get(key).cloned()
    }

    /// Runs a command next to the workload.
    pub fn exec(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
    ) -> BoxFut<'static, Result<mpsc::Receiver<ExecEvent>, BackendError>> {
        let started = self.start_exec(handle, argv, None);
        Box::pin(async move { Ok(started.await?.2) })
    }

    /// Runs a command on a pseudo-terminal; input and resizes go to init.
    pub fn exec_tty(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
        rows: u16,
        cols: u16,
    ) -> BoxFut<'static, Result<ExecSession, BackendError>> {
        let started = self.start_exec(handle, argv, Some((rows, cols)));
        Box::pin(async move {
            let (id, tx, erx) = started.await?;
            let (ctx, mut crx) = mpsc::channel::<ExecControl>(64);
            tokio::spawn(async move {
                while let Some(c) = crx.recv().await {
                    let m = match c {
                        ExecControl::Input(d) => HostMsg::ExecInput {
                            id: id.clone(),
                            data_hex: hex::encode(d),
                        },
                        ExecControl::Resize { rows, cols } => HostMsg::ExecResize {
                            id: id.clone(),
                            rows,
                            cols,
                        },
                    };
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            });
            Ok(ExecSession {
                events: erx,
                control: ctx,
            })
        })
    }

    /// Asks init to flush the guest's filesystems and waits for its `synced` (up to 30 s: an
    /// old init that does not know `sync` never answers; the copy is then only
    /// crash-consistent, which we accept).
    pub fn sync(&self, handle: &VmHandle) -> BoxFut<'static, Result<(), BackendError>> {
        let key = handle.key.clone();
        let tx = self.sender(&key);
        let syncs = self.syncs.clone();
        Box::pin(async move {
            let tx = tx.ok_or_else(|| BackendError::new("volume", "the VM is not running"))?;
            let (wtx, wrx) = tokio::sync::oneshot::channel();
            syncs
                .lock()
                .expect("syncs lock")
                .entry(key.clone())
                .or_default()
                .push(wtx);
            tx.send(HostMsg::Sync)
                .await
                .map_err(|_| BackendError::new("volume", "the VM is not running"))?;
            if tokio::time::timeout(Duration::from_secs(30), wrx)
                .await
                .is_err()
            {
                tracing::warn!(vm = %key, "the guest did not confirm sync within 30 s");
            }
            Ok(())
        })
    }
}

/// What a guest found running after an agent restart says about itself.
pub enum Reattach {
    /// Its workload runs: keep driving it over this channel.
    Running,
    /// Its workload ended (with this status), or it never got its configuration: nothing to
    /// resume; the caller stops the VM.
    Ended(Option<ExitStatus>),
}

/// Reads the hello of a re-attached guest.
pub async fn reattach(chan: &mut scalebox_vmm::channel::Channel) -> Result<Reattach, BackendError> {
    match chan
        .wait_hello(Duration::from_secs(10))
        .await
        .map_err(err("adopt"))?
    {
        GuestMsg::Hello { state, exit, .. } if state == "exited" => {
            Ok(Reattach::Ended(exit.map(|s| ExitStatus {
                code: s.code,
                signal: s.signal,
                oom: s.oom,
            })))
        }
        GuestMsg::Hello { state, .. } if state == "running" => Ok(Reattach::Running),
        _ => Ok(Reattach::Ended(None)),
    }
}

/// The VMM-level description of `spec`'s VM in `dir` (both backends boot from it): the guest
/// kernel and initramfs, the root disk and volume disks, vCPUs, memory and the TAP.
pub async fn vm_spec(
    spec: &VmSpec,
    dir: &Path,
    kernel: &Path,
    initramfs: &Path,
    volumes: &crate::volumes::VolumeStore,
    accel: scalebox_vmm::qemu::Accel,
) -> Result<scalebox_vmm::qemu::VmSpec, BackendError> {
    Ok(scalebox_vmm::qemu::VmSpec {
        id: spec.key.clone(),
        dir: dir.to_owned(),
        kernel: kernel.to_owned(),
        initramfs: initramfs.to_owned(),
        rootfs: spec.rootfs.clone(),
        disks: volume_disks(volumes, spec).await?,
        vcpus: spec.resources.cpu.max(1),
        memory_mib: spec.resources.memory_mb,
        tap: spec.net.as_ref().map(|n| {
            (
                n.tap.clone(),
                n.mac.clone().unwrap_or_else(|| mac_for(&spec.key)),
            )
        }),
        netns: None,
        accel,
    })
}

/// The volume disks of `spec` (created on first use), in the order the guest sees them
/// (`/dev/vdb`, ...).
pub async fn volume_disks(
    store: &crate::volumes::VolumeStore,
    spec: &VmSpec,
) -> Result<Vec<std::path::PathBuf>, BackendError> {
    let (store, vols) = (
        store.clone(),
        spec.volumes
            .iter()
            .map(|v| {
                let size = v.size_gb.map_or(VOLUME_SIZE, |g| u64::from(g) << 30);
                (v.name.clone(), size)
            })
            .collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        vols.iter()
            .map(|(n, size)| store.ensure_disk(n, *size))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| BackendError::new("volume", e.to_string()))?
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Puts the VMM into its cgroup (`crate::cgroup`: v2, else v1) with a hard memory cap of the
/// guest's RAM plus the VMM's own overhead and the CPU weight of its vCPUs; logged when the host
/// cannot cap it.
pub fn apply_cgroup(key: &str, pid: u32, memory_mb: u64, cpu: u32) {
    let limit = (memory_mb + VMM_OVERHEAD_MB) << 20;
    match crate::cgroup::apply(Path::new(CGROUP_ROOT), key, pid, limit, cpu) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            key,
            "no cgroup memory controller on this host: the VMM's memory is capped only by the VM size"
        ),
        Err(e) => {
            tracing::warn!(error = %e, key, "could not put the VMM in a memory-limited cgroup")
        }
    }
}

pub fn remove_cgroup(key: &str) {
    crate::cgroup::remove(Path::new(CGROUP_ROOT), key);
}

/// CPU time and memory of the VMM process (memory from its cgroup, else its RSS).
pub fn usage(handle: &VmHandle) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", handle.pid)).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tck;
    let mem = crate::cgroup::memory_current(Path::new(CGROUP_ROOT), &handle.key).or_else(|| {
        let s = std::fs::read_to_string(format!("/proc/{}/status", handle.pid)).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    })?;
    Some(Usage {
        cpu_seconds: cpu,
        memory_bytes: mem,
    })
}

/// A locally administered MAC derived from the VM key.
pub fn mac_for(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(key.as_bytes());
    format!("02:5c:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}
