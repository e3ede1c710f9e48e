//! **Dev/test backend**: runs each "VM" as a local child process (`sh -c <command>`) instead of
//! a microVM. No isolation at all — it exists so the agent core (actors, stop/grace/kill, logs,
//! health, persistence, restart re-adoption, orphan cleanup) can be exercised for real without
//! a hypervisor. Production uses the `scalebox-vmm` backend.
//!
//! Each VM is a small `sh` supervisor in its own process group, marked in its argv with the
//! agent's data dir and the VM key so a restarted agent can find it in `/proc`. The supervisor
//! forwards SIGTERM/SIGINT to the workload and writes the workload's exit status to a file.
//! Output goes to files in the VM's run dir, tailed by the agent (so the workload survives an
//! agent crash). Exit statuses above 128 are reported as signals (shell convention), so a
//! program that itself exits with 129..=192 is reported as killed by a signal.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::backend::{
    Adopted, BackendError, BoxFut, ExitStatus, LiveVm, LogStream, Usage, VmBackend, VmEvent,
    VmHandle, VmRun, VmSpec,
};

const MARK: &str = "scalebox-procvm";
const SUPERVISOR: &str = r#"cmd=$SB_CMD; unset SB_CMD
c=
trap '[ -n "$c" ] && kill -TERM "$c" 2>/dev/null' TERM
trap '[ -n "$c" ] && kill -INT "$c" 2>/dev/null' INT
sh -c "$cmd" &
c=$!
while :; do wait "$c"; rc=$?; kill -0 "$c" 2>/dev/null || break; done
echo "$rc" > "$3.tmp" && mv "$3.tmp" "$3"
# The workload is gone: whatever it left behind in this process group goes too.
trap '' TERM INT; kill -TERM 0 2>/dev/null
"#;
const POLL: Duration = Duration::from_millis(100);

/// The dev/test process backend.
pub struct ProcessBackend {
    run_root: PathBuf,
    marker: String,
}

impl ProcessBackend {
    /// VM run dirs live in `<data_dir>/vms/<key>`.
    pub fn new(data_dir: &Path) -> Result<ProcessBackend, BackendError> {
        let run_root = data_dir.join("vms");
        fs::create_dir_all(&run_root)
            .map_err(|e| BackendError::new("setup", format!("create {run_root:?}: {e}")))?;
        let marker = fs::canonicalize(data_dir)
            .unwrap_or_else(|_| data_dir.to_owned())
            .to_string_lossy()
            .into_owned();
        Ok(ProcessBackend { run_root, marker })
    }

    fn run_dir(&self, key: &str) -> PathBuf {
        self.run_root.join(key)
    }

    /// Whether `pid` is this agent's supervisor for `key`.
    fn is_ours(&self, pid: u32, key: &str) -> bool {
        read_cmdline(pid)
            .is_some_and(|a| a.len() >= 6 && a[3] == MARK && a[4] == self.marker && a[5] == key)
    }

    fn start_sync(&self, spec: &VmSpec) -> Result<tokio::process::Child, BackendError> {
        let err = |k: &str, m: String| BackendError::new(k, m);
        let dir = self.run_dir(&spec.key);
        fs::create_dir_all(&dir).map_err(|e| err("spawn", format!("create {dir:?}: {e}")))?;
        for f in ["status", "offsets", "secrets.json"] {
            let _ = fs::remove_file(dir.join(f));
        }
        let cmd = match &spec.command {
            Some(c) => c.clone(),
            None => {
                let argv: Vec<&String> = spec
                    .image_config
                    .entrypoint
                    .iter()
                    .chain(&spec.image_config.cmd)
                    .collect();
                if argv.is_empty() {
                    return Err(err(
                        "config",
                        "the image has no entrypoint or cmd and the spec has no command; set \"command\"".into(),
                    ));
                }
                argv.iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        let secrets = dir.join("secrets.json");
        let body = serde_json::to_vec(&spec.secrets.0).map_err(|e| err("spawn", e.to_string()))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&secrets)
            .map_err(|e| err("spawn", format!("write secrets file: {e}")))?;
        std::io::Write::write_all(&mut f, &body)
            .map_err(|e| err("spawn", format!("write secrets file: {e}")))?;
        let out = |name: &str| {
            fs::File::create(dir.join(name))
                .map(Stdio::from)
                .map_err(|e| err("spawn", format!("create {name}: {e}")))
        };
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for k in ["PATH", "HOME", "LANG"] {
            if let Ok(v) = std::env::var(k) {
                env.insert(k.into(), v);
            }
        }
        for kv in &spec.image_config.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.insert(k.into(), v.into());
            }
        }
        env.extend(spec.env.clone());
        env.insert("SCALEBOX_INSTANCE_ID".into(), spec.instance_id.clone());
        env.insert(
            "SCALEBOX_SECRETS_FILE".into(),
            secrets.to_string_lossy().into(),
        );
        let workdir = spec
            .image_config
            .workdir
            .as_deref()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| dir.clone());
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c")
            .arg(SUPERVISOR)
            .arg(MARK)
            .arg(&self.marker)
            .arg(&spec.key)
            .arg(dir.join("status"))
            .env_clear()
            .envs(&env)
            .env("SB_CMD", &cmd)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(out("stdout")?)
            .stderr(out("stderr")?)
            .process_group(0);
        c.spawn()
            .map_err(|e| err("spawn", format!("spawn sh (Debian package dash): {e}")))
    }
}

enum Waiter {
    Child(tokio::process::Child),
    Adopted { pid: u32 },
}

impl VmBackend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    fn start(&self, spec: VmSpec) -> BoxFut<'_, Result<VmRun, BackendError>> {
        Box::pin(async move {
            // Volume disks are made here too (snapshots and backups work on them), though a
            // host process cannot mount them: this backend is for development and tests.
            if let Some(data) = self.run_root.parent() {
                let store = crate::volumes::VolumeStore::new(data);
                for v in &spec.volumes {
                    let size = v.size_gb.map_or(1 << 30, |g| u64::from(g) << 30);
                    let (store, name) = (store.clone(), v.name.clone());
                    tokio::task::spawn_blocking(move || store.ensure_disk(&name, size))
                        .await
                        .map_err(|e| BackendError::new("volume", e.to_string()))??;
                }
            }
            let child = self.start_sync(&spec)?;
            let pid = child
                .id()
                .ok_or_else(|| BackendError::new("spawn", "child exited before it had a pid"))?;
            let handle = VmHandle {
                backend: "process".into(),
                key: spec.key.clone(),
                pid,
                detail: serde_json::json!({ "run_dir": self.run_dir(&spec.key) }),
            };
            let (tx, rx) = mpsc::channel(1024);
            let _ = tx.send(VmEvent::Started).await;
            tokio::spawn(watch(self.run_dir(&spec.key), Waiter::Child(child), tx));
            Ok(VmRun { handle, events: rx })
        })
    }

    fn adopt(&self, handle: VmHandle) -> BoxFut<'_, Result<Adopted, BackendError>> {
        Box::pin(async move {
            let dir = self.run_dir(&handle.key);
            if !self.is_ours(handle.pid, &handle.key) {
                let st = read_status(&dir);
                let _ = fs::remove_dir_all(&dir);
                return Ok(Adopted::Ended(st));
            }
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(watch(dir, Waiter::Adopted { pid: handle.pid }, tx));
            Ok(Adopted::Running(VmRun { handle, events: rx }))
        })
    }

    fn signal(&self, handle: &VmHandle, signal: i32) -> BoxFut<'_, Result<(), BackendError>> {
        let (pid, key) = (handle.pid, handle.key.clone());
        Box::pin(async move {
            if !self.is_ours(pid, &key) {
                return Err(BackendError::new(
                    "signal",
                    format!("VM {key} is not running"),
                ));
            }
            send(pid as i32, signal).map_err(|e| BackendError::new("signal", e))
        })
    }

    fn kill(&self, handle: &VmHandle) -> BoxFut<'_, Result<(), BackendError>> {
        let (pid, key) = (handle.pid, handle.key.clone());
        Box::pin(async move {
            if self.is_ours(pid, &key) {
                send(-(pid as i32), libc::SIGKILL).map_err(|e| BackendError::new("kill", e))?;
            }
            Ok(())
        })
    }

    fn list_live(&self) -> BoxFut<'_, Result<Vec<LiveVm>, BackendError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let rd = fs::read_dir("/proc").map_err(|e| BackendError::new("list", e.to_string()))?;
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(a) = read_cmdline(pid)
                    && a.len() >= 6
                    && a[3] == MARK
                    && a[4] == self.marker
                {
                    out.push(LiveVm {
                        key: a[5].clone(),
                        pid,
                    });
                }
            }
            Ok(out)
        })
    }

    fn kill_orphan(&self, vm: &LiveVm) -> BoxFut<'_, Result<(), BackendError>> {
        let vm = vm.clone();
        Box::pin(async move {
            if self.is_ours(vm.pid, &vm.key) {
                send(-(vm.pid as i32), libc::SIGKILL).map_err(|e| BackendError::new("kill", e))?;
            }
            let _ = fs::remove_dir_all(self.run_dir(&vm.key));
            Ok(())
        })
    }

    fn usage(&self, handle: &VmHandle) -> Option<Usage> {
        group_usage(handle.pid)
    }
}

fn send(pid: i32, sig: i32) -> Result<(), String> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

fn read_cmdline(pid: u32) -> Option<Vec<String>> {
    let b = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        b.split(|&c| c == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn read_status(dir: &Path) -> Option<ExitStatus> {
    let s = fs::read_to_string(dir.join("status")).ok()?;
    let rc: i32 = s.trim().parse().ok()?;
    Some(decode_rc(rc))
}

/// Shell convention: 128+N means killed by signal N.
fn decode_rc(rc: i32) -> ExitStatus {
    if (129..=192).contains(&rc) {
        ExitStatus {
            code: None,
            signal: Some(rc - 128),
            oom: false,
        }
    } else {
        ExitStatus {
            code: Some(rc),
            signal: None,
            oom: false,
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Reads new output from the run dir's files and sends it; persists offsets so a re-adopting
/// agent resumes where the last one stopped.
fn drain(dir: &Path, offs: &mut [u64; 2]) -> Vec<VmEvent> {
    let mut ev = Vec::new();
    for (i, (name, stream)) in [("stdout", LogStream::Stdout), ("stderr", LogStream::Stderr)]
        .into_iter()
        .enumerate()
    {
        let Ok(mut f) = fs::File::open(dir.join(name)) else {
            continue;
        };
        use std::io::{Read, Seek, SeekFrom};
        if f.seek(SeekFrom::Start(offs[i])).is_err() {
            continue;
        }
        let mut buf = Vec::new();
        if f.take(1 << 20).read_to_end(&mut buf).is_ok() && !buf.is_empty() {
            offs[i] += buf.len() as u64;
            ev.push(VmEvent::Log { stream, bytes: buf });
        }
    }
    if !ev.is_empty() {
        let _ = fs::write(dir.join("offsets"), format!("{} {}", offs[0], offs[1]));
    }
    ev
}

async fn watch(dir: PathBuf, mut waiter: Waiter, tx: mpsc::Sender<VmEvent>) {
    let mut offs = [0u64; 2];
    if let Ok(s) = fs::read_to_string(dir.join("offsets")) {
        let v: Vec<u64> = s
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() == 2 {
            offs = [v[0], v[1]];
        }
    }
    let fallback = loop {
        for e in drain(&dir, &mut offs) {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        match &mut waiter {
            Waiter::Child(c) => match c.try_wait() {
                Ok(Some(st)) => {
                    use std::os::unix::process::ExitStatusExt;
                    break Some(ExitStatus {
                        code: st.code(),
                        signal: st.signal(),
                        oom: false,
                    });
                }
                Ok(None) => {}
                Err(_) => break None,
            },
            Waiter::Adopted { pid } => {
                if !alive(*pid) {
                    break None;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    };
    // Let the workload's last writes land, then report.
    for e in drain(&dir, &mut offs) {
        let _ = tx.send(e).await;
    }
    let status = read_status(&dir).or(fallback).unwrap_or(ExitStatus {
        code: None,
        signal: None,
        oom: false,
    });
    // The run dir holds the secrets file and raw output: gone with the VM.
    let _ = fs::remove_dir_all(&dir);
    let _ = tx.send(VmEvent::Exited(status)).await;
}

fn group_usage(pgid: u32) -> Option<Usage> {
    if !alive(pgid) {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let (tck, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as u64,
        )
    };
    let mut u = Usage::default();
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = s.rsplit_once(')') else {
            continue;
        };
        // Fields after the comm: state(3) ppid(4) pgrp(5) ... utime(14) stime(15) ... rss(24).
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 22 || f[2].parse::<u32>().ok() != Some(pgid) {
            continue;
        }
        let num = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        u.cpu_seconds += (num(11) + num(12)) as f64 / tck;
        u.memory_bytes += num(21) * page;
    }
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rc_decoding_and_quoting() {
        assert_eq!(decode_rc(3).code, Some(3));
        assert_eq!(decode_rc(143).signal, Some(15));
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
