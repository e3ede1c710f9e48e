//! VM lifecycle on this host: create (allocate → clone → TAP → boot the template's own init →
//! SSH proxy and mosh forward) and delete (idempotent teardown).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use scalebox_init::proto::{AuthorizedKeys, BootConfig, GuestMsg, HostMsg, Net};
use scalebox_vmm::channel::Channel;
use scalebox_vmm::qemu::{self, VmSpec};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db::{self, VmRow};
use crate::disk;
use crate::error::{Kind, Result, SandboxError};
use crate::model::*;
use crate::service::{Sandbox, VM_USER, Vmm};
use crate::{names, net, proxy};

impl Sandbox {
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
    pub(crate) async fn boot(
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
    pub(crate) fn attach_access(
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
    pub(crate) async fn teardown(&self, row: &VmRow) {
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
}

/// Connects to the guest, sends `boot` when it waits, and returns once it says `booted`.
pub async fn handshake(spec: &VmSpec, config: BootConfig) -> std::result::Result<(), String> {
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

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
