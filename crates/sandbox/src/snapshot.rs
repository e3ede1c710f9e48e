//! Snapshot a running VM into a new template: sync the guest, pause, copy the disk, resume, then
//! scrub the copy (journal replayed, the user's authorized keys removed) and install it.

use std::path::Path;
use std::time::Duration;

use scalebox_init::proto::{GuestMsg, HostMsg};
use scalebox_vmm::channel::Channel;
use scalebox_vmm::qemu;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db;
use crate::disk;
use crate::error::{Kind, Result, SandboxError};
use crate::model::*;
use crate::service::{Sandbox, VM_USER_HOME, rfc3339};

impl Sandbox {
    pub async fn snapshot(
        &self,
        org: Uuid,
        id_or_name: &str,
        body: SnapshotVm,
    ) -> Result<SnapshotView> {
        let name = body
            .template_name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| SandboxError::bad("template_name is required"))?;
        validate_template_name(&name).map_err(SandboxError::bad)?;
        let row = self.find(org, id_or_name).await?;
        let final_path = self.templates_dir().join(format!("{name}.ext4"));
        if final_path.exists() {
            return Err(SandboxError::new(
                Kind::Conflict,
                format!("template {name:?} already exists; choose another name or delete it first"),
            ));
        }
        let _busy = self.busy(&row.id)?;
        let dir = self.vm_dir(&row.id);
        let h = qemu::find_running(&row.id, &dir).ok_or_else(|| {
            SandboxError::new(Kind::Conflict, format!("VM {} is not running", row.name))
        })?;
        let started = std::time::Instant::now();
        // Flush the guest's page cache first: what was written before the snapshot is in it.
        if let Err(e) = guest_sync(&dir.join("ctl.sock")).await {
            tracing::warn!(vm = %row.id, "guest sync before snapshot failed ({e}); the copy is crash-consistent only");
        }
        let tmp = self.templates_dir().join(format!(".snap-{name}.ext4"));
        h.set_paused(true)
            .await
            .map_err(|e| SandboxError::internal("pausing the VM", e))?;
        let (src, t2) = (dir.join("rootfs.ext4"), tmp.clone());
        let copied =
            tokio::task::spawn_blocking(move || scalebox_image::clone_file(&src, &t2)).await;
        if let Err(e) = h.set_paused(false).await {
            tracing::error!(vm = %row.id, "resuming the VM after a snapshot failed: {e}");
        }
        let paused_ms = started.elapsed().as_millis() as u64;
        let cleanup = |e: SandboxError| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        copied
            .map_err(|e| SandboxError::internal("copying the VM disk", e))
            .and_then(|r| r.map_err(|e| SandboxError::internal("copying the VM disk", e)))
            .map_err(cleanup)?;
        let t3 = tmp.clone();
        tokio::task::spawn_blocking(move || disk::scrub_snapshot(&t3, VM_USER_HOME))
            .await
            .map_err(|e| SandboxError::internal("cleaning the snapshot", e))
            .and_then(|r| r.map_err(|e| SandboxError::internal("cleaning the snapshot", e)))
            .map_err(cleanup)?;
        // hard_link refuses to replace: a template created meanwhile is never overwritten.
        std::fs::hard_link(&tmp, &final_path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                SandboxError::new(Kind::Conflict, format!("template {name:?} already exists"))
            } else {
                SandboxError::internal("installing the template", e)
            }
        })?;
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = db::insert_template(&self.inner.db, &name, org, &row.id).await {
            let _ = std::fs::remove_file(&final_path);
            return Err(e.into());
        }
        let size = std::fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
        tracing::info!(vm = %row.id, template = %name, paused_ms, ms = started.elapsed().as_millis() as u64, "snapshot taken");
        Ok(SnapshotView {
            template: name,
            source_vm: row.id,
            size_bytes: size,
            created_at: rfc3339(OffsetDateTime::now_utc()),
        })
    }
}

/// Asks the guest helper to flush its filesystems.
async fn guest_sync(socket: &Path) -> std::result::Result<(), String> {
    let go = async {
        let mut ch = Channel::connect(socket, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        ch.send(&HostMsg::Sync).await.map_err(|e| e.to_string())?;
        loop {
            match ch.next().await.map_err(|e| e.to_string())? {
                Some(GuestMsg::Synced) => return Ok(()),
                Some(_) => {}
                None => return Err("channel closed".to_string()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), go)
        .await
        .map_err(|_| "no answer within 30 s".to_string())?
}
