//! The VM runtime of this host: create (allocate → clone → TAP → boot the template's own init →
//! SSH proxy and mosh forward), delete (idempotent teardown), snapshot (sync, pause, copy,
//! resume, scrub keys), templates, `/info`, `/caddy/check`, and recovery after a restart
//! (re-adopt or reboot tracked VMs, remove orphans, each logged with a `[reconcile]` prefix).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalebox_store::Db;
use scalebox_vmm::qemu::{self, Accel};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::config::SandboxConfig;
use crate::db::{self, VmRow};
use crate::disk;
use crate::error::{Kind, Result, SandboxError};
use crate::gateway::{Gateway, GatewayConfig, GatewaySite};
use crate::model::*;

/// The user whose SSH keys are managed.
pub(crate) const VM_USER: &str = "user";
pub(crate) const VM_USER_HOME: &str = "/home/user";

/// Guest kernel, initramfs and accelerator, prepared once.
#[derive(Debug, Clone)]
pub(crate) struct Vmm {
    pub(crate) kernel: PathBuf,
    pub(crate) initramfs: PathBuf,
    pub(crate) accel: Accel,
}

/// The VM surface of this host. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: SandboxConfig,
    pub(crate) dir: PathBuf,
    pub(crate) runtime_dir: PathBuf,
    pub(crate) db: Db,
    pub(crate) host_ip: IpAddr,
    pub(crate) vmm: tokio::sync::OnceCell<std::result::Result<Vmm, String>>,
    pub(crate) alloc: tokio::sync::Mutex<()>,
    pub(crate) busy: Mutex<HashSet<String>>,
    pub(crate) proxies: Mutex<HashMap<String, JoinHandle<()>>>,
    pub(crate) cpu: Mutex<(u64, u64)>,
    pub(crate) gateway: Mutex<Option<Arc<Gateway>>>,
    /// Serialises gateway refreshes so an older route set never lands after a newer one.
    pub(crate) gateway_apply: tokio::sync::Mutex<()>,
    /// Templates being built right now (a create naming one is told to wait, not "not found").
    pub(crate) building: Mutex<HashSet<String>>,
}

/// Marks a VM busy for the guard's lifetime (delete and snapshot do not overlap).
pub(crate) struct Busy(Arc<Inner>, String);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.busy.lock() {
            b.remove(&self.1);
        }
    }
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// The source address of the default route (no packet is sent), else loopback.
fn detect_host_ip() -> IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    match s {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

impl Sandbox {
    /// Opens the VM surface: directories, then recovery of the VMs this host tracks (orphans
    /// are removed now; VMs whose VMM is gone are booted again in the background).
    pub async fn open(cfg: SandboxConfig, default_dir: &Path, db: Db) -> Result<Sandbox> {
        cfg.validate().map_err(SandboxError::bad)?;
        let dir = cfg.data_dir.clone().unwrap_or_else(|| default_dir.into());
        let runtime_dir = cfg.runtime_dir.clone().unwrap_or_else(|| dir.clone());
        for d in [dir.join("templates"), dir.join("vms"), runtime_dir.clone()] {
            std::fs::create_dir_all(&d).map_err(|e| {
                SandboxError::internal(
                    "creating the sandbox directories",
                    format!("{}: {e}", d.display()),
                )
            })?;
        }
        let host_ip = cfg.host_ip.unwrap_or_else(detect_host_ip);
        let sb = Sandbox {
            inner: Arc::new(Inner {
                cfg,
                dir,
                runtime_dir,
                db,
                host_ip,
                vmm: tokio::sync::OnceCell::new(),
                alloc: tokio::sync::Mutex::new(()),
                busy: Mutex::default(),
                proxies: Mutex::default(),
                cpu: Mutex::new(disk::cpu_times()),
                gateway: Mutex::new(None),
                gateway_apply: tokio::sync::Mutex::new(()),
                building: Mutex::default(),
            }),
        };
        sb.recover().await?;
        Ok(sb)
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.cfg
    }

    /// Marks template `name` as being built (or not any more).
    pub fn set_building(&self, name: &str, building: bool) {
        let mut b = self.inner.building.lock().expect("building lock");
        if building {
            b.insert(name.to_owned());
        } else {
            b.remove(name);
        }
    }

    pub fn templates_dir(&self) -> PathBuf {
        self.inner.dir.join("templates")
    }

    pub(crate) fn vm_dir(&self, id: &str) -> PathBuf {
        self.inner.dir.join("vms").join(id)
    }

    /// Starts the HTTPS gateway (Caddy) when `[vms.gateway] enabled`: VM routes and the API
    /// domain, on-demand TLS asking `api_listen`'s `/caddy/check`.
    pub async fn start_gateway(&self, api_listen: SocketAddr) -> Result<()> {
        let c = &self.inner.cfg;
        if !c.gateway.enabled {
            return Ok(());
        }
        let mut g = c.gateway.clone();
        if g.data_dir == GatewayConfig::default().data_dir {
            g.data_dir = self.inner.dir.join("gateway");
        }
        let api = if api_listen.ip().is_unspecified() {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), api_listen.port())
        } else {
            api_listen
        };
        let site = GatewaySite {
            api_domain: c.api_domain.clone(),
            api_upstream: api,
            ask_url: format!("http://{api}/caddy/check"),
            vm_domain: c.vm_domain.clone(),
        };
        let routes = self.routes().await?;
        let gw = tokio::task::spawn_blocking(move || Gateway::start(g, site, &routes))
            .await
            .map_err(|e| SandboxError::internal("starting the HTTPS gateway", e))?
            .map_err(|e| SandboxError::new(Kind::Unavailable, format!("HTTPS gateway: {e}")))?;
        tracing::info!(pid = ?gw.pid(), "HTTPS gateway (Caddy) running");
        *self.inner.gateway.lock().expect("gateway lock") = Some(Arc::new(gw));
        Ok(())
    }

    /// VMs changed: refresh the gateway's routes in the background.
    pub(crate) fn changed(&self) {
        let Some(gw) = self.inner.gateway.lock().expect("gateway lock").clone() else {
            return;
        };
        let s = self.clone();
        tokio::spawn(async move {
            let _one = s.inner.gateway_apply.lock().await;
            let routes = match s.routes().await {
                Ok(r) => r,
                Err(e) => return tracing::error!("gateway routes: {e}"),
            };
            match tokio::task::spawn_blocking(move || gw.apply(&routes)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("HTTPS gateway update failed: {e}"),
                Err(e) => tracing::error!("HTTPS gateway update failed: {e}"),
            }
        });
    }

    /// Prepares the kernel, initramfs and accelerator (once; later calls share the outcome).
    pub(crate) async fn vmm(&self) -> Result<Vmm> {
        let dir = self.inner.runtime_dir.clone();
        let force = self.inner.cfg.accel.clone();
        let r = self
            .inner
            .vmm
            .get_or_init(|| async move {
                let d2 = dir.clone();
                let k =
                    tokio::task::spawn_blocking(move || scalebox_vmm::kernel::ensure_kernel(&d2))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("guest kernel: {e}"))?;
                let init = scalebox_vmm::initramfs::find_init().map_err(|e| e.to_string())?;
                let initrd = scalebox_vmm::initramfs::build(&k, &init, &dir.join("initramfs"))
                    .map_err(|e| format!("initramfs: {e}"))?;
                let accel = match force.as_deref() {
                    Some("kvm") => Accel::Kvm,
                    Some(_) => Accel::Tcg,
                    None => qemu::detect_accel(&k.vmlinuz, &dir.join("accel.json")).await,
                };
                tracing::info!(?accel, "VM sandboxes: guest kernel and initramfs ready");
                Ok(Vmm {
                    kernel: k.vmlinuz,
                    initramfs: initrd,
                    accel,
                })
            })
            .await;
        r.clone().map_err(|e| {
            tracing::error!(error = %e, "VM runtime unavailable");
            SandboxError::new(
                Kind::Unavailable,
                format!("the VM runtime is not ready: {e}"),
            )
        })
    }

    /// Starts preparing the VM runtime in the background (so the first create is quick).
    pub fn warm_up(&self) {
        let s = self.clone();
        tokio::spawn(async move {
            let _ = s.vmm().await;
        });
    }

    pub(crate) fn busy(&self, id: &str) -> Result<Busy> {
        let mut b = self.inner.busy.lock().expect("busy lock");
        if !b.insert(id.to_owned()) {
            return Err(SandboxError::new(
                Kind::Conflict,
                format!("VM {id} is busy with another operation; try again in a moment"),
            ));
        }
        Ok(Busy(self.inner.clone(), id.to_owned()))
    }

    // ---- views -------------------------------------------------------------------------------

    pub(crate) fn view(&self, r: &VmRow) -> VmView {
        let running =
            r.state == "running" && qemu::find_running(&r.id, &self.vm_dir(&r.id)).is_some();
        let host = self.inner.host_ip.to_string();
        VmView {
            id: r.id.clone(),
            name: r.name.clone(),
            template: r.template.clone(),
            ip: host.clone(),
            ssh_port: r.ssh_port,
            ssh: ssh_command(&host, r.ssh_port),
            url: vm_url(&r.name, self.inner.cfg.vm_domain.as_deref()),
            status: if running { "running" } else { "stopped" }.into(),
            created_at: rfc3339(r.created_at),
            vcpu_count: r.vcpu_count,
            mem_size_mib: r.mem_size_mib,
            disk_size_gib: r.disk_size_gib,
        }
    }

    pub async fn list(&self, org: Uuid) -> Result<Vec<VmView>> {
        Ok(db::org_vms(&self.inner.db, org)
            .await?
            .iter()
            .map(|r| self.view(r))
            .collect())
    }

    pub(crate) async fn find(&self, org: Uuid, id_or_name: &str) -> Result<VmRow> {
        db::find_vm(&self.inner.db, org, id_or_name)
            .await?
            .ok_or_else(|| SandboxError::not_found("VM not found"))
    }

    pub async fn get(&self, org: Uuid, id_or_name: &str) -> Result<VmView> {
        Ok(self.view(&self.find(org, id_or_name).await?))
    }

    /// Live VMs' (name, bridge address) for the HTTPS gateway.
    pub async fn routes(&self) -> Result<Vec<(String, SocketAddr)>> {
        Ok(db::all_vms(&self.inner.db)
            .await?
            .into_iter()
            .filter(|r| r.state == "running")
            .filter_map(|r| Some((r.name, SocketAddr::new(r.ip.parse().ok()?, 8080))))
            .collect())
    }

    /// `/caddy/check`: whether `domain` is `{name}.{vm_domain}` of an existing VM.
    pub async fn check_domain(&self, domain: &str) -> Result<bool> {
        let Some(vd) = self.inner.cfg.vm_domain.as_deref() else {
            return Ok(false);
        };
        let Some(name) = domain
            .to_ascii_lowercase()
            .strip_suffix(&format!(".{}", vd.to_ascii_lowercase()))
            .map(str::to_owned)
        else {
            return Ok(false);
        };
        Ok(db::all_vms(&self.inner.db)
            .await?
            .iter()
            .any(|r| r.name == name))
    }

    /// `/info`.
    pub async fn info(&self) -> Result<Info> {
        let vms = db::all_vms(&self.inner.db).await?;
        let templates = disk::list_templates(&self.templates_dir()).len();
        let (total, free) = disk::fs_space(&self.inner.dir);
        let (mt, ma) = disk::memory();
        let now = disk::cpu_times();
        let before = std::mem::replace(&mut *self.inner.cpu.lock().expect("cpu lock"), now);
        let cpu = if now.1.saturating_sub(before.1) < 10 {
            // Too short since the last sample: measure over a short window.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let later = disk::cpu_times();
            *self.inner.cpu.lock().expect("cpu lock") = later;
            disk::cpu_percent(now, later)
        } else {
            disk::cpu_percent(before, now)
        };
        Ok(Info {
            host_ip: self.inner.host_ip.to_string(),
            api_domain: self.inner.cfg.api_domain.clone(),
            vm_domain: self.inner.cfg.vm_domain.clone(),
            templates_count: templates,
            vms_count: vms.len(),
            storage: Storage {
                total_gb: gb(total),
                used_gb: gb(total.saturating_sub(free)),
                free_gb: gb(free),
            },
            memory: Memory {
                total_gb: gb(mt),
                free_gb: gb(ma),
            },
            cpu_percent: cpu,
        })
    }

    // ---- templates ---------------------------------------------------------------------------

    /// Templates the org can use: shared ones (built on the host) and its own snapshots.
    pub async fn templates(&self, org: Uuid) -> Result<Vec<TemplateView>> {
        let owners = db::template_owners(&self.inner.db).await?;
        let owner: HashMap<&str, (Uuid, OffsetDateTime)> = owners
            .iter()
            .map(|(n, o, t)| (n.as_str(), (*o, *t)))
            .collect();
        Ok(disk::list_templates(&self.templates_dir())
            .into_iter()
            .filter(|t| owner.get(t.name.as_str()).is_none_or(|(o, _)| *o == org))
            .map(|t| TemplateView {
                protected: self.inner.cfg.protected_templates.contains(&t.name),
                created_at: rfc3339(owner.get(t.name.as_str()).map_or(t.modified, |(_, c)| *c)),
                size_bytes: t.size_bytes,
                name: t.name,
            })
            .collect())
    }

    /// The org's view of template `name`: (path, owned by the org (false: shared)).
    pub(crate) async fn template(&self, org: Uuid, name: &str) -> Result<(PathBuf, bool)> {
        validate_template_name(name).map_err(SandboxError::bad)?;
        let path = self.templates_dir().join(format!("{name}.ext4"));
        let owner = db::template_owners(&self.inner.db)
            .await?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, o, _)| o);
        if !path.is_file()
            && self
                .inner
                .building
                .lock()
                .expect("building lock")
                .contains(name)
        {
            return Err(SandboxError::new(
                Kind::Unavailable,
                format!(
                    "template {name:?} is being built (about a minute on first start); try again shortly"
                ),
            ));
        }
        if !path.is_file() || owner.is_some_and(|o| o != org) {
            return Err(SandboxError::not_found(format!(
                "template {name:?} not found"
            )));
        }
        Ok((path, owner.is_some()))
    }

    pub async fn delete_template(&self, org: Uuid, operator: bool, name: &str) -> Result<()> {
        validate_template_name(name).map_err(SandboxError::bad)?;
        if self.inner.cfg.protected_templates.iter().any(|p| p == name) {
            return Err(SandboxError::new(
                Kind::Forbidden,
                format!("template {name:?} is protected and cannot be deleted"),
            ));
        }
        let (path, owned) = self.template(org, name).await?;
        if !owned && !operator {
            return Err(SandboxError::new(
                Kind::Forbidden,
                format!("template {name:?} is shared by every org; only an operator can delete it"),
            ));
        }
        std::fs::remove_file(&path)
            .map_err(|e| SandboxError::internal("deleting the template", e))?;
        let _ = std::fs::remove_file(self.templates_dir().join(format!("{name}.version")));
        db::delete_template(&self.inner.db, name).await?;
        tracing::info!(template = name, "template deleted");
        Ok(())
    }
}
