//! The Firecracker backend: [`VmBackend`] over `scalebox_vmm::firecracker` (KVM only). Each VM
//! lives in `<data_dir>/vms/<key>/` (console and Firecracker logs, the API and vsock sockets, and
//! `firecracker.json`, the record a restarted agent re-adopts it from); through the jailer its
//! files and sockets are in the jail (`<chroot base>/firecracker/<id>/root`) instead. The
//! control channel is the guest's vsock port 1024, reached through Firecracker's hybrid vsock
//! socket. Everything past the start (events, signals, exec, sync, cgroup, usage) is shared with
//! the QEMU backend (`crate::guest_link`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use scalebox_vmm::channel::{Channel, ChannelReader, ChannelWriter};
use scalebox_vmm::firecracker::launch::{self, FcVm, Launcher};
use scalebox_vmm::qemu::Accel;
use scalebox_vmm::{initramfs, kernel};
use tokio::sync::mpsc;

use crate::backend::*;
use crate::guest_link::{BOOT_TIMEOUT, Guests, apply_cgroup, err, remove_cgroup};

pub struct FirecrackerBackend {
    vms: PathBuf,
    volumes: crate::volumes::VolumeStore,
    /// The uncompressed `vmlinux` (Firecracker does not boot a bzImage).
    kernel: PathBuf,
    initramfs: PathBuf,
    launcher: Launcher,
    guests: Guests,
}

impl FirecrackerBackend {
    /// Fetches the kernel if needed and builds the initramfs.
    pub async fn new(
        data_dir: &Path,
        init_binary: Option<PathBuf>,
        launcher: Launcher,
    ) -> Result<FirecrackerBackend, BackendError> {
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
        let vms = data_dir.join("vms");
        std::fs::create_dir_all(&vms)
            .map_err(|e| BackendError::new("setup", format!("create {}: {e}", vms.display())))?;
        Ok(FirecrackerBackend {
            vms,
            volumes: crate::volumes::VolumeStore::new(data_dir),
            kernel: k.vmlinux,
            initramfs: initrd,
            launcher,
            guests: Guests::default(),
        })
    }

    pub fn launcher(&self) -> &Launcher {
        &self.launcher
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.vms.join(key)
    }

    /// Drives an open channel; the run ends once Firecracker is gone (its jail is then removed).
    fn drive(&self, vm: FcVm, reader: ChannelReader, writer: ChannelWriter) -> VmRun {
        let handle = VmHandle {
            backend: "firecracker".into(),
            key: vm.key.clone(),
            pid: vm.pid as u32,
            detail: serde_json::json!({
                "dir": vm.dir.display().to_string(),
                "jail": vm.jail.as_ref().map(|j| j.display().to_string()),
            }),
        };
        let ended = Box::pin(async move {
            vm.wait_exit(Duration::from_secs(30)).await;
            vm.remove_jail();
        });
        self.guests.drive(handle, reader, writer, ended)
    }

    /// Firecracker `--id` → VM key, from the records in the run directories.
    fn keys_by_id(&self) -> HashMap<String, String> {
        std::fs::read_dir(&self.vms)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let text = std::fs::read(e.path().join(launch::RECORD)).ok()?;
                let vm: FcVm = serde_json::from_slice(&text).ok()?;
                Some((vm.id, vm.key))
            })
            .collect()
    }
}

/// What the console said last, for boot failures.
fn console_tail(dir: &Path) -> String {
    launch::tail(&dir.join("console.log"), 5)
}

impl VmBackend for FirecrackerBackend {
    fn name(&self) -> &'static str {
        "firecracker"
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
                Accel::Kvm,
            )
            .await?;
            let vm = launch::start(&vspec, &self.launcher)
                .await
                .map_err(err("spawn"))?;
            apply_cgroup(
                &spec.key,
                vm.pid as u32,
                spec.resources.memory_mb as u64,
                spec.resources.cpu,
            );
            let boot = async {
                // The guest listens once init is up: connecting is the boot wait.
                let mut chan = Channel::connect_vsock(&vm.vsock, BOOT_TIMEOUT).await?;
                chan.wait_hello(Duration::from_secs(30)).await?;
                chan.run(Guests::run_config(&spec)).await?;
                chan.split()
            };
            match boot.await {
                Ok((r, w)) => Ok(self.drive(vm, r, w)),
                Err(e) => {
                    vm.kill();
                    vm.wait_exit(Duration::from_secs(10)).await;
                    vm.remove_jail();
                    remove_cgroup(&spec.key);
                    Err(BackendError::new(
                        "boot",
                        format!("{e}; console: {}", console_tail(&dir)),
                    ))
                }
            }
        })
    }

    fn adopt(&self, handle: VmHandle) -> BoxFut<'_, Result<Adopted, BackendError>> {
        Box::pin(async move {
            let Some(vm) = launch::find_running(&self.dir(&handle.key)) else {
                return Ok(Adopted::Ended(None));
            };
            let mut chan = Channel::connect_vsock(&vm.vsock, Duration::from_secs(10))
                .await
                .map_err(err("adopt"))?;
            match crate::guest_link::reattach(&mut chan).await? {
                crate::guest_link::Reattach::Running => {
                    let (r, w) = chan.split().map_err(err("adopt"))?;
                    Ok(Adopted::Running(self.drive(vm, r, w)))
                }
                crate::guest_link::Reattach::Ended(exit) => {
                    vm.kill();
                    vm.remove_jail();
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

    fn exec_tty(
        &self,
        handle: &VmHandle,
        argv: Vec<String>,
        rows: u16,
        cols: u16,
    ) -> BoxFut<'_, Result<ExecSession, BackendError>> {
        self.guests.exec_tty(handle, argv, rows, cols)
    }

    fn quiesce(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let sync = self.guests.sync(handle);
        let dir = self.dir(&handle.key);
        Box::pin(async move {
            sync.await?;
            let vm = launch::find_running(&dir)
                .ok_or_else(|| BackendError::new("volume", "the VM is not running"))?;
            vm.set_paused(true).await.map_err(err("volume"))
        })
    }

    fn resume(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let dir = self.dir(&handle.key);
        Box::pin(async move {
            let vm = launch::find_running(&dir)
                .ok_or_else(|| BackendError::new("volume", "the VM is not running"))?;
            vm.set_paused(false).await.map_err(err("volume"))
        })
    }

    fn kill(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let dir = self.dir(&handle.key);
        Box::pin(async move {
            if let Some(vm) = launch::find_running(&dir) {
                vm.kill();
            }
            Ok(())
        })
    }

    fn list_live(&self) -> BoxFut<'_, Result<Vec<LiveVm>, BackendError>> {
        Box::pin(async move {
            let mut roots = vec![self.vms.as_path()];
            if let Some(j) = &self.launcher.jailer {
                roots.push(j.chroot_base.as_path());
            }
            let keys = self.keys_by_id();
            Ok(launch::list_running_under(&roots)
                .into_iter()
                .map(|(id, pid)| LiveVm {
                    // A VM whose run directory is gone keeps its Firecracker id as its key.
                    key: keys.get(&id).cloned().unwrap_or(id),
                    pid: pid as u32,
                })
                .collect())
        })
    }

    fn kill_orphan(&self, live: &LiveVm) -> BoxFut<'_, Result<(), BackendError>> {
        let (key, pid) = (live.key.clone(), live.pid);
        Box::pin(async move {
            let dir = self.dir(&key);
            let recorded = std::fs::read(dir.join(launch::RECORD))
                .ok()
                .and_then(|t| serde_json::from_slice::<FcVm>(&t).ok());
            let id = recorded
                .as_ref()
                .map(|v| v.id.clone())
                .unwrap_or_else(|| launch::vm_id(&key));
            let vm = FcVm {
                key: key.clone(),
                id: id.clone(),
                pid: pid as i32,
                dir: dir.clone(),
                api: PathBuf::new(),
                vsock: PathBuf::new(),
                jail: recorded.and_then(|v| v.jail).or_else(|| {
                    let j = self.launcher.jailer.as_ref()?;
                    scalebox_vmm::firecracker::jail::chroot_dir(
                        &j.chroot_base,
                        &self.launcher.firecracker,
                        &id,
                    )
                    .parent()
                    .map(Path::to_path_buf)
                }),
            };
            vm.kill();
            vm.wait_exit(Duration::from_secs(10)).await;
            vm.remove_jail();
            remove_cgroup(&key);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        })
    }

    fn usage(&self, handle: &VmHandle) -> Option<Usage> {
        crate::guest_link::usage(handle)
    }
}
