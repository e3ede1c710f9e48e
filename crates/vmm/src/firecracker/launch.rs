//! Starting a Firecracker VM: `firecracker --id <id> --api-sock <run dir>/firecracker.sock` (or
//! the same through the jailer, see [`super::jail`]) in its own session with stdout (guest
//! serial console and Firecracker's log) in `console.log` and stderr in `firecracker.log`; wait
//! for the API socket; send the configuration requests and InstanceStart; record the VM in
//! `<run dir>/firecracker.json` so a restarted agent finds it again. Pure pieces (ids, argv,
//! process matching) are separate functions with unit tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::jail::{self, Jailer};
use super::{ApiRequest, api_socket, call, vsock_socket};
use crate::VmmError;
use crate::qemu::VmSpec;

/// How long Firecracker gets to create its API socket.
pub const API_SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// Which binaries start VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    pub firecracker: PathBuf,
    /// Run Firecracker through the jailer (chroot, dropped privileges).
    pub jailer: Option<Jailer>,
}

/// `name` on `PATH` (an executable file), like a shell would find it.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Firecracker's and the jailer's `--id` for a VM key: the key itself when it fits their rules
/// (ASCII letters, digits and `-`, at most 64; we keep it under 48 so jail paths stay short),
/// else `sb-` and a hash of it.
pub fn vm_id(key: &str) -> String {
    if !key.is_empty()
        && key.len() <= 48
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        key.to_string()
    } else {
        format!("sb-{}", &hex::encode(Sha256::digest(key.as_bytes()))[..24])
    }
}

/// Firecracker's own arguments when started without the jailer.
pub fn firecracker_args(id: &str, api_sock: &Path) -> Vec<String> {
    vec![
        "--id".into(),
        id.into(),
        "--api-sock".into(),
        api_sock.display().to_string(),
    ]
}

/// Whether a process command line (NUL-split) is Firecracker running VM `id`: its program name
/// contains `firecracker` and it has `--id <id>` or `--id=<id>` (the jailer's form).
pub fn cmdline_matches(args: &[String], id: &str) -> bool {
    let prog = args.first().map(|a| {
        Path::new(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    prog.is_some_and(|p| p.contains("firecracker")) && cmdline_id(args).as_deref() == Some(id)
}

/// The `--id` of a Firecracker command line.
pub fn cmdline_id(args: &[String]) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix("--id=") {
            return Some(v.to_string());
        }
        (a == "--id").then(|| args.get(i + 1).cloned()).flatten()
    })
}

fn proc_cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A started Firecracker VM, as recorded in `<run dir>/firecracker.json`. Paths are host paths
/// (inside the jail's root when jailed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FcVm {
    /// The VM key (`VmSpec::id`).
    pub key: String,
    /// Firecracker's `--id`.
    pub id: String,
    pub pid: i32,
    /// Run directory: console and Firecracker logs, this record.
    pub dir: PathBuf,
    pub api: PathBuf,
    /// The hybrid vsock socket (`uds_path`) of the guest's vsock device.
    pub vsock: PathBuf,
    /// The jail (`<chroot base>/firecracker/<id>`) when started through the jailer.
    pub jail: Option<PathBuf>,
}

/// The record's file name in the run directory.
pub const RECORD: &str = "firecracker.json";

impl FcVm {
    /// Whether the VMM still runs (and is this VM's Firecracker).
    pub fn alive(&self) -> bool {
        cmdline_matches(&proc_cmdline(self.pid), &self.id)
    }

    /// Kills the VMM (the guest gets no chance to clean up).
    pub fn kill(&self) {
        if self.alive() {
            // SAFETY: plain kill of a pid we verified is this VM's Firecracker.
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

    /// One API request (blocking I/O on a worker thread).
    pub async fn call(&self, r: ApiRequest) -> Result<String, VmmError> {
        let api = self.api.clone();
        tokio::task::spawn_blocking(move || call(&api, &r))
            .await
            .map_err(|e| VmmError::Vmm(format!("API call: {e}")))?
    }

    /// Pauses or resumes the vCPUs (`PATCH /vm`).
    pub async fn set_paused(&self, paused: bool) -> Result<(), VmmError> {
        let r = if paused {
            super::pause_request()
        } else {
            super::resume_request()
        };
        self.call(r).await.map(drop)
    }

    /// Removes the jail directory (after the VM is gone).
    pub fn remove_jail(&self) {
        if let Some(j) = &self.jail {
            let _ = std::fs::remove_dir_all(j);
        }
    }

    fn save(&self) -> Result<(), VmmError> {
        let p = self.dir.join(RECORD);
        let tmp = self.dir.join(format!(".{RECORD}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &p))
            .map_err(VmmError::io(format!("write {}", p.display())))
    }
}

/// The VM recorded in run directory `dir`, if its Firecracker still runs.
pub fn find_running(dir: &Path) -> Option<FcVm> {
    let text = std::fs::read(dir.join(RECORD)).ok()?;
    let vm: FcVm = serde_json::from_slice(&text).ok()?;
    vm.alive().then_some(vm)
}

/// Running Firecracker processes whose API socket (host path, through the process's root when
/// jailed) is under one of `roots`: (`--id`, pid).
pub fn list_running_under(roots: &[&Path]) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let args = proc_cmdline(pid);
        let Some(id) = cmdline_id(&args) else {
            continue;
        };
        if !cmdline_matches(&args, &id) {
            continue;
        }
        let Some(sock) = args
            .iter()
            .position(|a| a == "--api-sock")
            .and_then(|i| args.get(i + 1))
        else {
            continue;
        };
        let root = std::fs::read_link(e.path().join("root")).unwrap_or_else(|_| "/".into());
        let host = root.join(sock.trim_start_matches('/'));
        if roots.iter().any(|r| host.starts_with(r)) {
            out.push((id, pid));
        }
    }
    out
}

/// The last `n` lines of a file, joined with ` | ` (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// What went wrong, with the tail of Firecracker's logs.
fn failure(dir: &Path, what: String) -> VmmError {
    VmmError::Vmm(format!(
        "{what}; firecracker stderr: [{}]; console: [{}]",
        tail(&dir.join("firecracker.log"), 5),
        tail(&dir.join("console.log"), 5)
    ))
}

/// Starts the VM: launches Firecracker (through the jailer when configured), waits for its API
/// socket, configures the VM and starts it. The process runs in its own session and outlives
/// the caller; a thread reaps it while the caller lives.
pub async fn start(spec: &VmSpec, launcher: &Launcher) -> Result<FcVm, VmmError> {
    let dir = spec.dir.clone();
    std::fs::create_dir_all(&dir).map_err(VmmError::io(format!("create {}", dir.display())))?;
    let id = vm_id(&spec.id);
    let (program, args, api, vsock, jail, requests) = match &launcher.jailer {
        None => {
            let api = api_socket(&dir);
            (
                launcher.firecracker.clone(),
                firecracker_args(&id, &api),
                api,
                vsock_socket(&dir),
                None,
                super::boot_requests(spec),
            )
        }
        Some(j) => {
            let root = jail::chroot_dir(&j.chroot_base, &launcher.firecracker, &id);
            let jail_dir = root.parent().map(Path::to_path_buf).unwrap_or(root.clone());
            // A leftover jail of an earlier start of the same VM would make the jailer fail.
            let _ = std::fs::remove_dir_all(&jail_dir);
            jail::stage(spec, &root, j.uid, j.gid)?;
            if let (Some((tap, _)), None) = (&spec.tap, &spec.netns) {
                jail::set_tap_owner(tap, j.uid, j.gid)?;
            }
            (
                j.binary.clone(),
                jail::jailer_args(j, &launcher.firecracker, &id, spec.netns.as_deref()),
                root.join(jail::API_SOCK_IN_JAIL.trim_start_matches('/')),
                root.join("vsock.sock"),
                Some(jail_dir),
                super::boot_requests(&jail::jailed_spec(spec)),
            )
        }
    };
    for f in [&api, &vsock] {
        let _ = std::fs::remove_file(f);
    }
    let open = |name: &str| {
        let p = dir.join(name);
        std::fs::File::create(&p).map_err(VmmError::io(format!("create {}", p.display())))
    };
    let (stdout, stderr) = (open("console.log")?, open("firecracker.log")?);
    let mut cmd = match (&spec.netns, &launcher.jailer) {
        (Some(ns), None) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&program);
            c
        }
        _ => std::process::Command::new(&program),
    };
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe; the VMM gets its own session so it is not hit by
        // signals aimed at the agent's process group and outlives the agent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(VmmError::io(format!(
        "run {} (is Firecracker installed?)",
        program.display()
    )))?;
    let vm = FcVm {
        key: spec.id.clone(),
        id,
        pid: child.id() as i32,
        dir: dir.clone(),
        api: api.clone(),
        vsock,
        jail,
    };
    let give_up = |mut child: std::process::Child, e: VmmError| {
        let _ = child.kill();
        let _ = child.wait();
        vm.remove_jail();
        e
    };
    // Wait for the API socket, or for Firecracker to exit early (bad arguments, no /dev/kvm).
    let deadline = tokio::time::Instant::now() + API_SOCKET_TIMEOUT;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            vm.remove_jail();
            return Err(failure(
                &dir,
                format!(
                    "{} exited before creating its API socket ({st})",
                    program.display()
                ),
            ));
        }
        if std::os::unix::net::UnixStream::connect(&api).is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let e = failure(
                &dir,
                format!(
                    "firecracker did not create its API socket {} within {API_SOCKET_TIMEOUT:?}",
                    api.display()
                ),
            );
            return Err(give_up(child, e));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in requests {
        if let Err(e) = vm.call(r).await {
            let e = failure(&dir, format!("configuring the VM failed: {e}"));
            return Err(give_up(child, e));
        }
    }
    if let Err(e) = vm.save() {
        return Err(give_up(child, e));
    }
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn ids_fit_firecracker_rules() {
        assert_eq!(vm_id("web-1-g3"), "web-1-g3");
        let long = vm_id(&"a".repeat(60));
        let underscore = vm_id("web_1-g3");
        for id in [&long, &underscore] {
            assert!(id.starts_with("sb-") && id.len() == 27, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
        assert_ne!(vm_id("a_b"), vm_id("a-b_"), "distinct keys, distinct ids");
        assert_eq!(vm_id("web_1-g3"), underscore, "stable");
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            firecracker_args("web-1-g1", Path::new("/vms/web-1-g1/firecracker.sock")).join(" "),
            "--id web-1-g1 --api-sock /vms/web-1-g1/firecracker.sock"
        );
        assert!(cmdline_matches(
            &args("/usr/bin/firecracker --id web-1 --api-sock /x"),
            "web-1"
        ));
        // As the jailer execs it.
        assert!(cmdline_matches(
            &args("./firecracker --id=web-1 --start-time-us=1 --api-sock /firecracker.sock"),
            "web-1"
        ));
        assert!(!cmdline_matches(
            &args("/usr/bin/firecracker --id web-2"),
            "web-1"
        ));
        assert!(!cmdline_matches(&args("/bin/sleep --id web-1"), "web-1"));
        assert!(!cmdline_matches(&[], "web-1"));
        assert_eq!(cmdline_id(&args("firecracker --id")), None);
    }

    #[test]
    fn finds_executables_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-binary-scalebox").is_none());
    }

    /// A stand-in "firecracker" (a shell script: the real one needs KVM) that fails at once:
    /// the error says it exited and carries its stderr.
    #[tokio::test]
    async fn early_exit_and_missing_socket_are_reported_with_the_log() {
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("firecracker");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"Error: Kvm(Error opening /dev/kvm)\" >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = VmSpec {
            id: "t-1".into(),
            dir: d.path().join("run"),
            kernel: "/k".into(),
            initramfs: "/i".into(),
            rootfs: "/r".into(),
            disks: vec![],
            vcpus: 1,
            memory_mib: 128,
            tap: None,
            netns: None,
            accel: crate::qemu::Accel::Kvm,
        };
        let l = Launcher {
            firecracker: fake.clone(),
            jailer: None,
        };
        let e = start(&spec, &l).await.unwrap_err().to_string();
        assert!(
            e.contains("exited before creating its API socket") && e.contains("opening /dev/kvm"),
            "{e}"
        );
        std::fs::write(&fake, "#!/bin/sh\necho starting >&2\nexec sleep 30\n").unwrap();
        let t = std::time::Instant::now();
        let e = start(&spec, &l).await.unwrap_err().to_string();
        assert!(
            e.contains("did not create its API socket") && e.contains("starting"),
            "{e}"
        );
        assert!(t.elapsed() < API_SOCKET_TIMEOUT + Duration::from_secs(2));
    }
}
