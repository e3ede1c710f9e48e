//! The VM runtime of this host: create (allocate → clone → TAP → boot the template's own init →
//! SSH proxy and mosh forward), delete (idempotent teardown), snapshot (sync, pause, copy,
//! resume, scrub keys), templates, `/info`, `/caddy/check`, and recovery after a restart
//! (re-adopt or reboot tracked VMs, remove orphans, each logged with a `[reconcile]` prefix).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scalebox_init::proto::{AuthorizedKeys, BootConfig, GuestMsg, HostMsg, Net};
use scalebox_store::Db;
use scalebox_vmm::channel::Channel;
use scalebox_vmm::qemu::{self, Accel, VmSpec};
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
use crate::{names, net, proxy};

/// The user whose SSH keys are managed.
const VM_USER: &str = "user";
const VM_USER_HOME: &str = "/home/user";

/// Guest kernel, initramfs and accelerator, prepared once.
#[derive(Debug, Clone)]
struct Vmm {
    kernel: PathBuf,
    initramfs: PathBuf,
    accel: Accel,
}

/// The VM surface of this host. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SandboxConfig,
    dir: PathBuf,
    runtime_dir: PathBuf,
    db: Db,
    host_ip: IpAddr,
    vmm: tokio::sync::OnceCell<std::result::Result<Vmm, String>>,
    alloc: tokio::sync::Mutex<()>,
    busy: Mutex<HashSet<String>>,
    proxies: Mutex<HashMap<String, JoinHandle<()>>>,
    cpu: Mutex<(u64, u64)>,
    gateway: Mutex<Option<Arc<Gateway>>>,
    /// Serialises gateway refreshes so an older route set never lands after a newer one.
    gateway_apply: tokio::sync::Mutex<()>,
}

/// Marks a VM busy for the guard's lifetime (delete and snapshot do not overlap).
struct Busy(Arc<Inner>, String);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.busy.lock() {
            b.remove(&self.1);
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
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
            }),
        };
        sb.recover().await?;
        Ok(sb)
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.cfg
    }

    pub fn templates_dir(&self) -> PathBuf {
        self.inner.dir.join("templates")
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
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
    fn changed(&self) {
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
    async fn vmm(&self) -> Result<Vmm> {
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

    fn busy(&self, id: &str) -> Result<Busy> {
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

    fn view(&self, r: &VmRow) -> VmView {
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

    async fn find(&self, org: Uuid, id_or_name: &str) -> Result<VmRow> {
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
    async fn template(&self, org: Uuid, name: &str) -> Result<(PathBuf, bool)> {
        validate_template_name(name).map_err(SandboxError::bad)?;
        let path = self.templates_dir().join(format!("{name}.ext4"));
        let owner = db::template_owners(&self.inner.db)
            .await?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, o, _)| o);
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

    // ---- create ------------------------------------------------------------------------------

    pub async fn create(&self, org: Uuid, body: CreateVm) -> Result<VmView> {
        let c = &self.inner.cfg;
        let key = validate_ssh_key(&body.ssh_public_key).map_err(SandboxError::bad)?;
        let vcpus = body.vcpu_count.unwrap_or(c.default_vcpus);
        if vcpus == 0 || vcpus > c.max_vcpus {
            return Err(SandboxError::bad(format!(
                "vcpu_count must be between 1 and {}",
                c.max_vcpus
            )));
        }
        let mem = body.mem_size_mib.unwrap_or(c.default_mem_mib);
        if !(128..=c.max_mem_mib).contains(&mem) {
            return Err(SandboxError::bad(format!(
                "mem_size_mib must be between 128 and {}",
                c.max_mem_mib
            )));
        }
        if let Some(n) = &body.name {
            names::validate(n).map_err(SandboxError::bad)?;
        }
        let (tpl, _) = self.template(org, &body.template).await?;
        let tpl_gib = disk::size_gib(&tpl).max(1);
        let disk_gib = body.disk_size_gib.unwrap_or(tpl_gib);
        if disk_gib < tpl_gib || disk_gib > c.max_disk_gib {
            return Err(SandboxError::bad(format!(
                "disk_size_gib must be between {tpl_gib} (the size of template {:?}) and {}",
                body.template, c.max_disk_gib
            )));
        }
        let tpl_bytes = std::fs::metadata(&tpl).map(|m| m.len()).unwrap_or(0);
        if disk::fs_space(&self.inner.dir).1 < tpl_bytes {
            return Err(SandboxError::bad(
                "not enough free disk space on the host for another VM; delete VMs or templates",
            ));
        }
        let vmm = self.vmm().await?;

        let alloc = self.inner.alloc.lock().await;
        let all = db::all_vms(&self.inner.db).await?;
        let used_mem: u64 = all.iter().map(|r| u64::from(r.mem_size_mib)).sum();
        let host_mib = disk::memory().0 >> 20;
        let budget = host_mib.saturating_sub(u64::from(c.reserved_mem_mib));
        if used_mem + u64::from(mem) > budget {
            return Err(SandboxError::bad(format!(
                "not enough memory on the host: {mem} MiB requested, {} MiB left for VMs",
                budget.saturating_sub(used_mem)
            )));
        }
        let taken_names: HashSet<String> = all.iter().map(|r| r.name.clone()).collect();
        let name = match body.name {
            Some(n) if taken_names.contains(&n) => {
                return Err(SandboxError::new(
                    Kind::Conflict,
                    format!("VM name {n:?} is already taken"),
                ));
            }
            Some(n) => n,
            None => {
                let now = OffsetDateTime::now_utc().unix_timestamp() as u64;
                names::generate(
                    &taken_names,
                    || {
                        let mut b = [0u8; 8];
                        let _ = getrandom::fill(&mut b);
                        u64::from_le_bytes(b)
                    },
                    now,
                )
            }
        };
        let taken_ips: HashSet<Ipv4Addr> = all.iter().filter_map(|r| r.ip.parse().ok()).collect();
        let ip = net::allocate_ip(c, &taken_ips).ok_or_else(|| {
            SandboxError::new(Kind::Unavailable, "no free VM address on the bridge subnet")
        })?;
        let taken_ports: HashSet<u16> = all.iter().map(|r| r.ssh_port).collect();
        let mut listener = None;
        for p in net::free_ports(c.port_range, &taken_ports) {
            if let Ok(l) = proxy::bind(SocketAddr::new(c.proxy_listen, p)).await {
                listener = Some((p, l));
                break;
            }
        }
        let (port, listener) = listener.ok_or_else(|| {
            SandboxError::new(
                Kind::Unavailable,
                format!("no free SSH port in {}-{}", c.port_range.0, c.port_range.1),
            )
        })?;
        let mut id = names::new_id();
        while all.iter().any(|r| r.id == id) {
            id = names::new_id();
        }
        let row = VmRow {
            tap: net::tap_name(&id),
            id,
            org_id: org,
            name,
            template: body.template.clone(),
            ip: ip.to_string(),
            ssh_port: port,
            vcpu_count: vcpus,
            mem_size_mib: mem,
            disk_size_gib: disk_gib,
            state: "creating".into(),
            created_at: OffsetDateTime::now_utc(),
        };
        db::insert_vm(&self.inner.db, &row).await?;
        let _busy = self.busy(&row.id)?;
        drop(alloc);

        let started = std::time::Instant::now();
        let r = async {
            let (src, dst, gib) = (tpl.clone(), self.vm_dir(&row.id).join("rootfs.ext4"), disk_gib);
            std::fs::create_dir_all(self.vm_dir(&row.id))
                .map_err(|e| SandboxError::internal("creating the VM directory", e))?;
            let how = tokio::task::spawn_blocking(move || disk::clone_rootfs(&src, &dst, gib))
                .await
                .map_err(|e| SandboxError::internal("cloning the template", e))?
                .map_err(|e| SandboxError::internal("cloning the template", e))?;
            tracing::info!(vm = %row.id, how, ms = started.elapsed().as_millis() as u64, "rootfs cloned");
            self.boot(&row, &vmm, Some(key), listener).await
        }
        .await;
        if let Err(e) = r {
            self.teardown(&row).await;
            let _ = db::delete_vm(&self.inner.db, &row.id).await;
            return Err(e);
        }
        db::set_state(&self.inner.db, &row.id, "running").await?;
        tracing::info!(vm = %row.id, name = %row.name, ms = started.elapsed().as_millis() as u64, "VM created");
        let row = VmRow {
            state: "running".into(),
            ..row
        };
        self.changed();
        Ok(self.view(&row))
    }

    /// Network, VMM, boot through our init into the template's own init, then SSH proxy and
    /// mosh forward. `key`: install this key for `user` (None keeps the disk's keys).
    async fn boot(
        &self,
        row: &VmRow,
        vmm: &Vmm,
        key: Option<String>,
        listener: tokio::net::TcpListener,
    ) -> Result<()> {
        let c = &self.inner.cfg;
        let ip: Ipv4Addr = row
            .ip
            .parse()
            .map_err(|e| SandboxError::internal("reading the VM address", e))?;
        let (cfg2, tap) = (c.clone(), row.tap.clone());
        tokio::task::spawn_blocking(move || {
            net::ensure_bridge(&cfg2)?;
            net::create_tap(&cfg2, &tap)
        })
        .await
        .map_err(|e| SandboxError::internal("setting up the VM network", e))?
        .map_err(|e| SandboxError::internal("setting up the VM network", e))?;
        let spec = VmSpec {
            id: row.id.clone(),
            dir: self.vm_dir(&row.id),
            kernel: vmm.kernel.clone(),
            initramfs: vmm.initramfs.clone(),
            rootfs: self.vm_dir(&row.id).join("rootfs.ext4"),
            disks: vec![],
            vcpus: row.vcpu_count,
            memory_mib: row.mem_size_mib,
            tap: Some((row.tap.clone(), net::mac_for(&row.id))),
            netns: None,
            accel: vmm.accel,
        };
        qemu::start(&spec)
            .await
            .map_err(|e| SandboxError::internal("starting the VMM", e))?;
        let config = BootConfig {
            hostname: row.name.clone(),
            root_device: None,
            net: Net {
                ipv4: Some(format!("{ip}/{}", c.bridge_prefix)),
                ipv4_gateway: Some(c.bridge_address.to_string()),
                nameservers: c.nameservers.clone(),
                ..Net::default()
            },
            authorized_keys: key.map(|k| AuthorizedKeys {
                user: VM_USER.into(),
                keys: vec![k],
            }),
            init: None,
        };
        let timeout = Duration::from_secs(c.boot_timeout_s);
        let booted = tokio::time::timeout(timeout, handshake(&spec, config)).await;
        match booted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let tail = console_tail(&spec.console_log());
                tracing::error!(vm = %row.id, console = %tail, "VM failed to boot: {e}");
                return Err(SandboxError::internal("booting the VM", e));
            }
            Err(_) => {
                let tail = console_tail(&spec.console_log());
                tracing::error!(vm = %row.id, console = %tail, "VM did not boot in time");
                return Err(SandboxError::new(
                    Kind::Internal,
                    format!("the VM did not boot within {} s", c.boot_timeout_s),
                ));
            }
        }
        self.attach_access(row, ip, listener)?;
        Ok(())
    }

    /// SSH proxy task and mosh UDP forward of a running VM.
    fn attach_access(
        &self,
        row: &VmRow,
        ip: Ipv4Addr,
        listener: tokio::net::TcpListener,
    ) -> Result<()> {
        net::forward_udp(&row.id, row.ssh_port, ip)
            .map_err(|e| SandboxError::internal("forwarding the mosh port", e))?;
        let task = proxy::spawn(listener, SocketAddr::new(IpAddr::V4(ip), 22));
        if let Some(old) = self
            .inner
            .proxies
            .lock()
            .expect("proxies lock")
            .insert(row.id.clone(), task)
        {
            old.abort();
        }
        Ok(())
    }

    // ---- delete ------------------------------------------------------------------------------

    pub async fn delete(&self, org: Uuid, id_or_name: &str) -> Result<()> {
        let row = self.find(org, id_or_name).await?;
        let _busy = self.busy(&row.id)?;
        self.teardown(&row).await;
        db::delete_vm(&self.inner.db, &row.id).await?;
        tracing::info!(vm = %row.id, name = %row.name, "VM deleted");
        self.changed();
        Ok(())
    }

    /// Stops the proxy, removes the forward, kills the VMM, deletes the TAP and the VM's files.
    /// Every step tolerates what is already gone.
    async fn teardown(&self, row: &VmRow) {
        if let Some(t) = self
            .inner
            .proxies
            .lock()
            .expect("proxies lock")
            .remove(&row.id)
        {
            t.abort();
        }
        let dir = self.vm_dir(&row.id);
        let (id, tap, dir2) = (row.id.clone(), row.tap.clone(), dir.clone());
        if let Some(h) = qemu::find_running(&id, &dir) {
            h.kill();
            if !h.wait_exit(Duration::from_secs(10)).await {
                tracing::warn!(vm = %id, pid = h.pid, "VMM did not exit after SIGKILL");
            }
        }
        let r = tokio::task::spawn_blocking(move || {
            let mut errs = vec![];
            if let Err(e) = net::unforward(&id) {
                errs.push(e);
            }
            if let Err(e) = net::delete_tap(&tap) {
                errs.push(e);
            }
            if dir2.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir2)
            {
                errs.push(format!("remove {}: {e}", dir2.display()));
            }
            errs
        })
        .await
        .unwrap_or_default();
        for e in r {
            tracing::warn!(vm = %row.id, "teardown: {e}");
        }
    }

    // ---- snapshot ----------------------------------------------------------------------------

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

    // ---- recovery ----------------------------------------------------------------------------

    /// After a restart: removes half-created VMs and orphans, re-adopts running VMs, boots
    /// again those whose VMM is gone (in the background).
    async fn recover(&self) -> Result<()> {
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

/// Connects to the guest, sends `boot` when it waits, and returns once it says `booted`.
async fn handshake(spec: &VmSpec, config: BootConfig) -> std::result::Result<(), String> {
    let mut ch = Channel::connect(&spec.control_socket(), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let hello = ch
        .wait_hello(Duration::from_secs(3600))
        .await
        .map_err(|e| e.to_string())?;
    match hello {
        GuestMsg::Hello { state, .. } if state == "waiting" => {}
        GuestMsg::Hello { state, .. } if state == "booted" => return Ok(()),
        GuestMsg::Hello { state, .. } => return Err(format!("the guest is in state {state:?}")),
        _ => {}
    }
    ch.send(&HostMsg::Boot {
        config: Box::new(config),
    })
    .await
    .map_err(|e| e.to_string())?;
    loop {
        match ch.next().await.map_err(|e| e.to_string())? {
            Some(GuestMsg::Hello { state, .. }) if state == "booted" => return Ok(()),
            Some(GuestMsg::Error { message }) => return Err(message),
            Some(_) => {}
            None => return Err("the VM stopped while booting".into()),
        }
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

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
