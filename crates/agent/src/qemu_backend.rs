//! The microVM backend: [`VmBackend`] over `scalebox-vmm` (QEMU `microvm`, KVM when it can boot
//! guests, else TCG). Each VM lives in `<data_dir>/vms/<key>/` (pidfile, control socket, QMP
//! socket, console log), so a restarted agent re-adopts it from the handle; its QEMU process is
//! put in a cgroup (`scalebox/<key>`, v2 or v1: `crate::cgroup`) with a hard memory limit and a CPU weight.
//! Everything past the start (events, signals, exec, sync, usage) is `crate::guest_link`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use scalebox_vmm::channel::{Channel, ChannelReader, ChannelWriter};
use scalebox_vmm::qemu::{self, Accel};
use scalebox_vmm::{initramfs, kernel};
use tokio::sync::mpsc;

use crate::backend::*;
pub use crate::guest_link::mac_for;
use crate::guest_link::{BOOT_TIMEOUT, Guests, apply_cgroup, err, remove_cgroup};

pub struct QemuBackend {
    vms: PathBuf,
    /// Volume disks (`<name>.ext4`), created on first use and kept across instances.
    volumes: crate::volumes::VolumeStore,
    kernel: PathBuf,
    initramfs: PathBuf,
    accel: Accel,
    guests: Guests,
}

impl QemuBackend {
    /// Fetches the kernel if needed, builds the initramfs and picks the accelerator.
    pub async fn new(
        data_dir: &Path,
        init_binary: Option<PathBuf>,
        force: Option<Accel>,
    ) -> Result<QemuBackend, BackendError> {
        let dd = data_dir.to_owned();
        let k = tokio::task::spawn_blocking(move || kernel::ensure_kernel(&dd))
            .await
            .map_err(|e| BackendError::new("setup", e.to_string()))?
            .map_err(err("kernel"))?;
        let init = match init_binary {
            Some(p) => p,
            None => initramfs::find_init().map_err(err("setup"))?,
        };
        let initrd =
            initramfs::build(&k, &init, &data_dir.join("initramfs")).map_err(err("setup"))?;
        let accel = match force {
            Some(a) => a,
            None => qemu::detect_accel(&k.vmlinuz, &data_dir.join("accel.json")).await,
        };
        let vms = data_dir.join("vms");
        std::fs::create_dir_all(&vms)
            .map_err(|e| BackendError::new("setup", format!("create {}: {e}", vms.display())))?;
        Ok(QemuBackend {
            vms,
            volumes: crate::volumes::VolumeStore::new(data_dir),
            kernel: k.vmlinuz,
            initramfs: initrd,
            accel,
            guests: Guests::default(),
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.vms.join(key)
    }

    /// Drives an open channel (see `Guests::drive`); the run ends once QEMU is gone.
    fn drive(&self, key: String, pid: u32, reader: ChannelReader, writer: ChannelWriter) -> VmRun {
        let h = qemu::VmHandle {
            id: key.clone(),
            pid: pid as i32,
            dir: self.dir(&key),
        };
        let handle = VmHandle {
            backend: "qemu".into(),
            key,
            pid,
            detail: serde_json::json!({"dir": self.dir("").display().to_string()}),
        };
        let ended = Box::pin(async move {
            h.wait_exit(Duration::from_secs(30)).await;
        });
        self.guests.drive(handle, reader, writer, ended)
    }
}

impl VmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn start(&self, spec: VmSpec) -> BoxFut<'_, Result<VmRun, BackendError>> {
        Box::pin(async move {
            let dir = self.dir(&spec.key);
            let _ = std::fs::remove_dir_all(&dir);
            let vspec = crate::guest_link::vm_spec(
                &spec,
                &dir,
                &self.kernel,
                &self.initramfs,
                &self.volumes,
                self.accel,
            )
            .await?;
            let vm = qemu::start(&vspec).await.map_err(err("spawn"))?;
            apply_cgroup(
                &spec.key,
                vm.pid as u32,
                spec.resources.memory_mb as u64,
                spec.resources.cpu,
            );
            let boot = async {
                let mut chan =
                    Channel::connect(&vm.control_socket(), Duration::from_secs(10)).await?;
                chan.wait_hello(BOOT_TIMEOUT).await?;
                chan.run(Guests::run_config(&spec)).await?;
                chan.split()
            };
            match boot.await {
                Ok((r, w)) => Ok(self.drive(spec.key.clone(), vm.pid as u32, r, w)),
                Err(e) => {
                    vm.kill();
                    let console =
                        std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
                    let tail: Vec<&str> = console.lines().rev().take(5).collect();
                    Err(BackendError::new(
                        "boot",
                        format!(
                            "{e}; console: {}",
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        ),
                    ))
                }
            }
        })
    }

    fn adopt(&self, handle: VmHandle) -> BoxFut<'_, Result<Adopted, BackendError>> {
        Box::pin(async move {
            let dir = self.dir(&handle.key);
            let Some(vm) = qemu::find_running(&handle.key, &dir) else {
                return Ok(Adopted::Ended(None));
            };
            let mut chan = Channel::connect(&vm.control_socket(), Duration::from_secs(5))
                .await
                .map_err(err("adopt"))?;
            match crate::guest_link::reattach(&mut chan).await? {
                crate::guest_link::Reattach::Running => {
                    let (r, w) = chan.split().map_err(err("adopt"))?;
                    Ok(Adopted::Running(self.drive(
                        handle.key.clone(),
                        vm.pid as u32,
                        r,
                        w,
                    )))
                }
                crate::guest_link::Reattach::Ended(exit) => {
                    vm.kill();
                    Ok(Adopted::Ended(exit))
                }
            }
        })
    }

    fn signal(&self, handle: &VmHandle, signal: i32) -> BoxFut<'_, Result<(), BackendError>> {
        self.guests.signal(handle, signal)
    }

    fn exec(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
    ) -> BoxFut<'_, Result<mpsc::Receiver<ExecEvent>, BackendError>> {
        self.guests.exec(handle, argv)
    }

    fn quiesce(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let sync = self.guests.sync(handle);
        let qmp = self.dir(&handle.key).join("qmp.sock");
        Box::pin(async move {
            sync.await?;
            qemu::qmp(&qmp, "stop").await.map_err(err("volume"))
        })
    }

    fn resume(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let qmp = self.dir(&handle.key).join("qmp.sock");
        Box::pin(async move { qemu::qmp(&qmp, "cont").await.map_err(err("volume")) })
    }

    fn exec_tty(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
        rows: u16,
        cols: u16,
    ) -> BoxFut<'_, Result<ExecSession, BackendError>> {
        self.guests.exec_tty(handle, argv, rows, cols)
    }

    fn kill(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let dir = self.dir(&handle.key);
        let key = handle.key.clone();
        Box::pin(async move {
            if let Some(vm) = qemu::find_running(&key, &dir) {
                vm.kill();
            }
            Ok(())
        })
    }

    fn list_live(&self) -> BoxFut<'_, Result<Vec<LiveVm>, BackendError>> {
        Box::pin(async move {
            Ok(qemu::list_running_in(&self.vms)
                .into_iter()
                .map(|(key, pid)| LiveVm {
                    key,
                    pid: pid as u32,
                })
                .collect())
        })
    }

    fn kill_orphan(&self, vm: &LiveVm) -> BoxFut<'_, Result<(), BackendError>> {
        let (key, pid) = (vm.key.clone(), vm.pid);
        Box::pin(async move {
            let h = qemu::VmHandle {
                id: key.clone(),
                pid: pid as i32,
                dir: self.dir(&key),
            };
            h.kill();
            h.wait_exit(Duration::from_secs(10)).await;
            remove_cgroup(&key);
            let _ = std::fs::remove_dir_all(self.dir(&key));
            Ok(())
        })
    }

    fn usage(&self, handle: &VmHandle) -> Option<Usage> {
        crate::guest_link::usage(handle)
    }
}
