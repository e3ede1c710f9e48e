//! Recovery after a restart: half-created VMs and orphans (VMM processes, TAPs, forwarding rules,
//! files) are removed, running VMs re-adopted, VMs whose VMM is gone booted again; each action
//! is logged with a `[reconcile]` prefix.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use scalebox_vmm::qemu;

use crate::db;
use crate::error::{Result, SandboxError};
use crate::service::Sandbox;
use crate::{net, proxy};

impl Sandbox {
    /// After a restart: removes half-created VMs and orphans, re-adopts running VMs, boots
    /// again those whose VMM is gone (in the background).
    pub(crate) async fn recover(&self) -> Result<()> {
        let rows = db::all_vms(&self.inner.db).await?;
        let vms_root = self.inner.dir.join("vms");
        let ids: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        for (id, pid) in qemu::list_running_in(&vms_root) {
            if !ids.contains(id.as_str()) {
                tracing::info!("[reconcile] killing orphan VMM {id} (pid {pid})");
                // SAFETY: plain kill of a QEMU process whose runtime dir is ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let taps: HashSet<&str> = rows.iter().map(|r| r.tap.as_str()).collect();
        for t in net::list_taps() {
            if !taps.contains(t.as_str()) {
                tracing::info!("[reconcile] deleting orphan TAP {t}");
                if let Err(e) = net::delete_tap(&t) {
                    tracing::warn!("[reconcile] {e}");
                }
            }
        }
        for v in net::forwarded_vms() {
            if !ids.contains(v.as_str()) {
                tracing::info!("[reconcile] removing orphan forwarding rules of {v}");
                let _ = net::unforward(&v);
            }
        }
        for e in std::fs::read_dir(&vms_root).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !ids.contains(n.as_str()) {
                tracing::info!(
                    "[reconcile] removing orphan VM files {}",
                    e.path().display()
                );
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for row in rows {
            if row.state != "running" {
                tracing::info!(
                    "[reconcile] removing VM {} ({}): its creation was interrupted",
                    row.id,
                    row.name
                );
                self.teardown(&row).await;
                db::delete_vm(&self.inner.db, &row.id).await?;
                continue;
            }
            let dir = self.vm_dir(&row.id);
            let addr = SocketAddr::new(self.inner.cfg.proxy_listen, row.ssh_port);
            let ip: Ipv4Addr = row.ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
            if let Some(h) = qemu::find_running(&row.id, &dir) {
                tracing::info!(
                    "[reconcile] re-adopting running VM {} ({}), VMM pid {}",
                    row.id,
                    row.name,
                    h.pid
                );
                match proxy::bind(addr).await {
                    Ok(l) => {
                        if let Err(e) = self.attach_access(&row, ip, l) {
                            tracing::error!("[reconcile] VM {}: {e}", row.id);
                        }
                    }
                    Err(e) => tracing::error!(
                        "[reconcile] VM {}: SSH port {} is taken: {e}",
                        row.id,
                        row.ssh_port
                    ),
                }
            } else if dir.join("rootfs.ext4").is_file() {
                tracing::info!(
                    "[reconcile] booting VM {} ({}) again: its VMM was gone",
                    row.id,
                    row.name
                );
                let s = self.clone();
                tokio::spawn(async move {
                    let r = async {
                        let vmm = s.vmm().await?;
                        let l = proxy::bind(addr)
                            .await
                            .map_err(|e| SandboxError::internal("binding the SSH port", e))?;
                        s.boot(&row, &vmm, None, l).await
                    }
                    .await;
                    match r {
                        Ok(()) => tracing::info!("[reconcile] VM {} is running again", row.id),
                        Err(e) => tracing::error!(
                            "[reconcile] VM {} could not be booted again: {e}",
                            row.id
                        ),
                    }
                    s.changed();
                });
            } else {
                tracing::info!(
                    "[reconcile] removing VM {} ({}): its disk is gone",
                    row.id,
                    row.name
                );
                self.teardown(&row).await;
                db::delete_vm(&self.inner.db, &row.id).await?;
            }
        }
        Ok(())
    }
}
