//! The QEMU `microvm` driver: command line (pure, unit-tested), daemonised start with a pidfile
//! so a restarted agent can find the VM again, accelerator detection (KVM when a probe boot
//! works, else TCG), pause/resume over QMP, stop and kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::VmmError;

/// How guests are accelerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Instance id; also names the QEMU process (`-name`).
    pub id: String,
    /// Runtime directory of this VM: pidfile, sockets, console log.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    /// Extra disks (volumes), attached after the root disk (`/dev/vdb`, ...).
    pub disks: Vec<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// TAP device to attach as `eth0`, with its MAC.
    pub tap: Option<(String, String)>,
    /// Run the VMM inside this network namespace.
    pub netns: Option<String>,
    pub accel: Accel,
}

/// The host's TSC frequency in kHz (from /proc/cpuinfo), passed to TCG guests as
/// `tsc_early_khz`: under TCG the guest's PIT-based TSC calibration fails now and then on a busy
/// host, and the kernel then stalls at boot.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find_map(|l| {
        l.strip_prefix("cpu MHz")?
            .split(':')
            .nth(1)?
            .trim()
            .parse()
            .ok()
    })?;
    Some((mhz * 1000.0) as u64)
}

/// The kernel command line for `accel`.
pub fn kernel_cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut c = String::from("console=ttyS0 quiet panic=-1 reboot=t");
    if let (Accel::Tcg, Some(k)) = (accel, tsc_khz) {
        // Skip every timing calibration that can misfire under emulation: the TSC, the delay
        // loop (loops per jiffy at HZ=250) and the IO-APIC timer check.
        c.push_str(&format!(" tsc_early_khz={k} lpj={} no_timer_check", k * 4));
    }
    c
}

impl VmSpec {
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
}

/// The `qemu-system-x86_64` arguments for `spec` (without the binary).
pub fn command_line(spec: &VmSpec) -> Vec<String> {
    let accel = match spec.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("scalebox-{}", spec.id),
        "-M".into(),
        format!("microvm,accel={accel},acpi=on"),
        "-cpu".into(),
        if spec.accel == Accel::Kvm {
            "host".into()
        } else {
            "max".into()
        },
        "-smp".into(),
        spec.vcpus.to_string(),
        "-m".into(),
        format!("{}M", spec.memory_mib),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initramfs.display().to_string(),
        "-append".into(),
        kernel_cmdline(spec.accel, host_tsc_khz()),
        "-serial".into(),
        format!("file:{}", spec.console_log().display()),
        "-drive".into(),
        format!(
            "id=root,file={},format=raw,if=none,cache=unsafe",
            spec.rootfs.display()
        ),
        "-device".into(),
        "virtio-blk-device,drive=root".into(),
    ];
    for (i, d) in spec.disks.iter().enumerate() {
        a.push("-drive".into());
        a.push(format!(
            "id=disk{i},file={},format=raw,if=none",
            d.display()
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive=disk{i}"));
    }
    if let Some((tap, mac)) = &spec.tap {
        a.push("-netdev".into());
        a.push(format!("tap,id=net0,ifname={tap},script=no,downscript=no"));
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=net0,mac={mac}"));
    }
    a.extend([
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,id=ctl,path={},server=on,wait=off",
            spec.control_socket().display()
        ),
        "-device".into(),
        "virtserialport,chardev=ctl,name=scalebox.0".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", spec.qmp_socket().display()),
        "-pidfile".into(),
        spec.pidfile().display().to_string(),
        "-daemonize".into(),
    ]);
    a
}

/// `args` (a [`command_line`]) with the control channel moved from the virtio-serial port to a
/// vhost-user vsock device served on `vhost_socket` by an external backend such as rust-vmm's
/// `vhost-device-vsock`, which exposes the guest's vsock ports through a hybrid vsock socket
/// exactly as Firecracker does ([`crate::vsock`]). vhost-user needs the guest RAM shared, so it
/// comes from a memfd. This runs the Firecracker control-channel path under QEMU (TCG too) on
/// hosts without Firecracker or `/dev/vhost-vsock`; `scalebox-init` picks vsock by itself when
/// the VM has a vsock device and no console device.
pub fn with_vhost_user_vsock(args: &[String], vhost_socket: &Path, memory_mib: u32) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(args.len() + 6);
    let mut i = 0;
    while i < args.len() {
        let (a, next) = (&args[i], args.get(i + 1).map(String::as_str).unwrap_or(""));
        let serial = (a == "-device"
            && (next == "virtio-serial-device" || next.starts_with("virtserialport,")))
            || (a == "-chardev" && next.starts_with("socket,id=ctl,"));
        if serial {
            i += 2;
            continue;
        }
        if a == "-M" && next.starts_with("microvm,") {
            out.extend([a.clone(), format!("{next},memory-backend=mem")]);
            i += 2;
            continue;
        }
        out.push(a.clone());
        i += 1;
    }
    out.extend([
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        "-chardev".into(),
        format!("socket,id=vsk,path={}", vhost_socket.display()),
        "-device".into(),
        "vhost-user-vsock-device,chardev=vsk".into(),
    ]);
    out
}

/// A running VM.
#[derive(Debug, Clone)]
pub struct VmHandle {
    pub id: String,
    pub pid: i32,
    pub dir: PathBuf,
}

impl VmHandle {
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("ctl.sock")
    }

    /// Whether the VMM process is still alive (and is ours: its command line names the id).
    pub fn alive(&self) -> bool {
        process_matches(self.pid, &self.id)
    }

    /// Kills the VMM (the guest gets no chance to clean up).
    pub fn kill(&self) {
        if self.alive() {
            // SAFETY: plain kill of a pid we verified is our VMM.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }

    /// Waits until the VMM process is gone.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.alive() {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Pauses or resumes the vCPUs through QMP.
    pub async fn set_paused(&self, paused: bool) -> Result<(), VmmError> {
        qmp(
            &self.dir.join("qmp.sock"),
            if paused { "stop" } else { "cont" },
        )
        .await
    }
}

fn process_matches(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("qemu-system") && c.contains(&format!("scalebox-{id}\0"))
        })
        .unwrap_or(false)
}

/// Re-adopts a VM started earlier in `dir` (after an agent restart): `Some` if its VMM still runs.
pub fn find_running(id: &str, dir: &Path) -> Option<VmHandle> {
    let pid: i32 = std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    process_matches(pid, id).then(|| VmHandle {
        id: id.to_owned(),
        pid,
        dir: dir.to_owned(),
    })
}

/// Running Scalebox QEMU processes whose runtime directory is under `root` (one agent's VMs):
/// (instance id, pid), for orphan detection.
pub fn list_running_in(root: &Path) -> Vec<(String, i32)> {
    list_running_filtered(Some(root))
}

/// Every running Scalebox QEMU process on the host: (instance id, pid).
pub fn list_running() -> Vec<(String, i32)> {
    list_running_filtered(None)
}

fn list_running_filtered(root: Option<&Path>) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = c
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.contains("qemu-system")) {
            continue;
        }
        if let Some(root) = root {
            let pidfile = args
                .iter()
                .position(|a| a == "-pidfile")
                .and_then(|i| args.get(i + 1));
            if !pidfile.is_some_and(|p| Path::new(p).starts_with(root)) {
                continue;
            }
        }
        if let Some(i) = args.iter().position(|a| a == "-name")
            && let Some(id) = args.get(i + 1).and_then(|n| n.strip_prefix("scalebox-"))
        {
            out.push((id.to_owned(), pid));
        }
    }
    out
}

/// The QEMU binary.
pub fn qemu_binary() -> Result<PathBuf, VmmError> {
    for p in [
        "/usr/bin/qemu-system-x86_64",
        "/usr/local/bin/qemu-system-x86_64",
    ] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(VmmError::Vmm(
        "qemu-system-x86_64 not found: install the Debian package qemu-system-x86".into(),
    ))
}

/// Starts the VM (daemonised) and returns once its pidfile exists.
pub async fn start(spec: &VmSpec) -> Result<VmHandle, VmmError> {
    start_with_args(spec, command_line(spec)).await
}

/// [`start`] with a command line derived from [`command_line`] (e.g. by
/// [`with_vhost_user_vsock`]); it must keep `-daemonize` and the pidfile.
pub async fn start_with_args(spec: &VmSpec, args: Vec<String>) -> Result<VmHandle, VmmError> {
    std::fs::create_dir_all(&spec.dir)
        .map_err(VmmError::io(format!("create {}", spec.dir.display())))?;
    for f in [spec.pidfile(), spec.control_socket(), spec.qmp_socket()] {
        let _ = std::fs::remove_file(f);
    }
    let qemu = qemu_binary()?;
    let mut cmd = match &spec.netns {
        Some(ns) => {
            let mut c = tokio::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&qemu);
            c
        }
        None => tokio::process::Command::new(&qemu),
    };
    cmd.args(args).stdin(std::process::Stdio::null());
    let out = cmd
        .output()
        .await
        .map_err(VmmError::io("run qemu-system-x86_64"))?;
    if !out.status.success() {
        return Err(VmmError::Vmm(format!(
            "qemu failed to start ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let pid: i32 = std::fs::read_to_string(spec.pidfile())
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| VmmError::Vmm("qemu started but wrote no pidfile".into()))?;
    Ok(VmHandle {
        id: spec.id.clone(),
        pid,
        dir: spec.dir.clone(),
    })
}

/// Runs one QMP command (after the capabilities handshake).
pub async fn qmp(socket: &Path, command: &str) -> Result<(), VmmError> {
    let s = UnixStream::connect(socket)
        .await
        .map_err(VmmError::io(format!("connect {}", socket.display())))?;
    let (r, mut w) = s.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut next = async || -> Result<serde_json::Value, VmmError> {
        let l = lines
            .next_line()
            .await
            .map_err(VmmError::io("read qmp"))?
            .ok_or_else(|| VmmError::Vmm("qmp closed".into()))?;
        serde_json::from_str(&l).map_err(|e| VmmError::Vmm(format!("qmp: {e}")))
    };
    next().await?; // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await
        .map_err(VmmError::io("write qmp"))?;
    next().await?;
    w.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
        .await
        .map_err(VmmError::io("write qmp"))?;
    loop {
        let v = next().await?;
        if v.get("return").is_some() {
            return Ok(());
        }
        if let Some(e) = v.get("error") {
            return Err(VmmError::Vmm(format!("qmp {command}: {e}")));
        }
    }
}

/// Chooses the accelerator: `Kvm` when `/dev/kvm` exists and a probe boot of `kernel` under
/// KVM reaches the kernel's first messages and exits cleanly, else `Tcg`. The result is cached
/// in `cache` (keyed by kernel path) because the probe costs a boot.
pub async fn detect_accel(kernel: &Path, cache: &Path) -> Accel {
    let key = kernel.display().to_string();
    if let Ok(text) = std::fs::read_to_string(cache)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && v["kernel"] == key.as_str()
        && let Ok(a) = serde_json::from_value::<Accel>(v["accel"].clone())
    {
        return a;
    }
    let (accel, why) = probe_kvm(kernel).await;
    match accel {
        Accel::Kvm => tracing::info!("guests use KVM acceleration"),
        Accel::Tcg => {
            tracing::warn!(reason = %why, "KVM cannot boot guests here; guests run under QEMU TCG (software emulation, slower)")
        }
    }
    let _ = std::fs::write(
        cache,
        serde_json::json!({"kernel": key, "accel": accel, "reason": why}).to_string(),
    );
    accel
}

async fn probe_kvm(kernel: &Path) -> (Accel, String) {
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "/dev/kvm does not exist".into());
    }
    let Ok(qemu) = qemu_binary() else {
        return (Accel::Tcg, "no qemu".into());
    };
    let dir = std::env::temp_dir().join(format!("scalebox-kvm-probe-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join("console.log");
    // No initramfs: the kernel boots, fails to mount a root and panics; panic=-1 + -no-reboot
    // make QEMU exit. A nested PVM backend fails before that with an emulation error instead.
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-M",
        "microvm,accel=kvm",
        "-cpu",
        "host",
        "-m",
        "128M",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .args(["-append", "console=ttyS0 panic=-1"])
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .kill_on_drop(true);
    let res = tokio::time::timeout(Duration::from_secs(20), cmd.output()).await;
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(Ok(o)) if o.status.success() && console.contains("Kernel panic") => {
            (Accel::Kvm, "probe boot reached the kernel".into())
        }
        Ok(Ok(o)) => (
            Accel::Tcg,
            format!(
                "probe boot failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("no output")
            ),
        ),
        Ok(Err(e)) => (Accel::Tcg, format!("probe could not run: {e}")),
        Err(_) => (Accel::Tcg, "probe boot timed out".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            id: "i-1".into(),
            dir: "/run/sb/i-1".into(),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            rootfs: "/r.ext4".into(),
            disks: vec!["/v.ext4".into()],
            vcpus: 2,
            memory_mib: 256,
            tap: Some(("sbtap1".into(), "02:00:00:00:00:01".into())),
            netns: None,
            accel: Accel::Tcg,
        }
    }

    #[test]
    fn command_line_has_every_device() {
        let a = command_line(&spec()).join(" ");
        for want in [
            "-name scalebox-i-1",
            "microvm,accel=tcg",
            "-m 256M",
            "-smp 2",
            "file=/r.ext4",
            "file=/v.ext4",
            "ifname=sbtap1",
            "mac=02:00:00:00:00:01",
            "path=/run/sb/i-1/ctl.sock,server=on,wait=off",
            "name=scalebox.0",
            "-pidfile /run/sb/i-1/qemu.pid",
            "-daemonize",
        ] {
            assert!(a.contains(want), "missing {want:?} in {a}");
        }
        let mut s = spec();
        s.accel = Accel::Kvm;
        assert!(command_line(&s).join(" ").contains("accel=kvm"));
        assert!(!kernel_cmdline(Accel::Kvm, Some(2_000_000)).contains("tsc_early_khz"));
        assert!(
            kernel_cmdline(Accel::Tcg, Some(2_000_000))
                .ends_with("tsc_early_khz=2000000 lpj=8000000 no_timer_check")
        );
    }

    #[test]
    fn vhost_user_vsock_replaces_the_serial_channel() {
        let a = with_vhost_user_vsock(&command_line(&spec()), Path::new("/run/v.sock"), 256);
        let j = a.join(" ");
        for gone in ["virtio-serial-device", "virtserialport", "id=ctl,"] {
            assert!(!j.contains(gone), "{gone} still in {j}");
        }
        for want in [
            "microvm,accel=tcg,acpi=on,memory-backend=mem",
            "-object memory-backend-memfd,id=mem,size=256M,share=on",
            "-chardev socket,id=vsk,path=/run/v.sock",
            "-device vhost-user-vsock-device,chardev=vsk",
            "-pidfile /run/sb/i-1/qemu.pid",
            "-daemonize",
            "-qmp unix:/run/sb/i-1/qmp.sock",
        ] {
            assert!(j.contains(want), "missing {want:?} in {j}");
        }
        assert_eq!(
            a.len(),
            command_line(&spec()).len() - 6 + 6,
            "three pairs out, three pairs in"
        );
    }
}
