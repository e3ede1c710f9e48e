//! `scaleboxd update` (also installed as `scalebox-update`): replace the `scaleboxd` binary from
//! a release artifact, restart the running daemon in place, health-check it and roll back
//! automatically; and the daemon's side of that ([`Running`]): the pidfile, the recorded
//! command line, and the re-exec on SIGUSR2.
//!
//! The restart keeps the pid: `scaleboxd up` shuts everything down as for Ctrl-C, then
//! `execve`s the binary *path* it was started from (now the new binary) with the same argv and
//! environment. `/health`'s `started_at` tells the new process image from the old one.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

/// `<data_dir>/scaleboxd.pid`: the pid of the running `scaleboxd up`.
pub const PIDFILE: &str = "scaleboxd.pid";
/// `<data_dir>/scaleboxd.argv.json`: how the running `scaleboxd up` was started.
pub const ARGV_FILE: &str = "scaleboxd.argv.json";
/// `<data_dir>/scaleboxd.log`: output of a daemon `update` had to start itself.
pub const LOG_FILE: &str = "scaleboxd.log";
const DEFAULT_BINARY: &str = "/usr/local/bin/scaleboxd";

// ---------------------------------------------------------------------------------------------
// The daemon side.

/// The running `scaleboxd up`: owns the pidfile (removed on drop, unless re-exec'd) and the
/// SIGUSR2 handler.
pub struct Running {
    pidfile: PathBuf,
    binary: PathBuf,
    argv: Vec<OsString>,
    restart: tokio::signal::unix::Signal,
    keep_pidfile: bool,
}

impl Running {
    /// Installs the SIGUSR2 handler, then records this process: the pidfile and the argv file
    /// (argv, the absolute binary path resolved now, before anything can replace it, the
    /// working directory and the environment; mode 0600).
    pub fn start(data_dir: &Path) -> anyhow::Result<Running> {
        use tokio::signal::unix::{SignalKind, signal};
        let restart =
            signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?;
        let binary = std::env::current_exe().context("resolving this binary's path")?;
        let argv: Vec<OsString> = std::env::args_os().collect();
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let lossy = |s: &std::ffi::OsStr| s.to_string_lossy().into_owned();
        let record = json!({
            "binary": lossy(binary.as_os_str()),
            "argv": argv.iter().map(|a| lossy(a)).collect::<Vec<_>>(),
            "cwd": std::env::current_dir().ok().map(|d| lossy(d.as_os_str())),
            "env": std::env::vars_os()
                .map(|(k, v)| (lossy(&k), Value::String(lossy(&v))))
                .collect::<serde_json::Map<_, _>>(),
            "pid": std::process::id(),
        });
        write_atomic(
            &data_dir.join(ARGV_FILE),
            serde_json::to_string_pretty(&record)?.as_bytes(),
            0o600,
        )?;
        let pidfile = data_dir.join(PIDFILE);
        write_atomic(
            &pidfile,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )?;
        Ok(Running {
            pidfile,
            binary,
            argv,
            restart,
            keep_pidfile: false,
        })
    }

    /// Resolves when SIGUSR2 (restart) arrives.
    pub async fn restart_requested(&mut self) {
        self.restart.recv().await;
        tracing::info!("SIGUSR2: restarting from {}", self.binary.display());
    }

    /// Replaces this process with the binary at the recorded path (same pid, argv and
    /// environment). Returns only when that fails.
    pub fn reexec(mut self) -> anyhow::Error {
        self.keep_pidfile = true;
        let mut cmd = Command::new(&self.binary);
        if let Some((arg0, rest)) = self.argv.split_first() {
            cmd.arg0(arg0).args(rest);
        }
        let e = cmd.exec();
        self.keep_pidfile = false;
        anyhow::anyhow!("restarting: cannot execute {}: {e}", self.binary.display())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.keep_pidfile {
            return;
        }
        // Only our own: a newer daemon may have written its pid there.
        if read_pid(&self.pidfile) == Some(std::process::id() as i32) {
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }
}

/// Writes `path` through a temporary file in the same directory, fsynced, then renamed.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = sibling(path, ".tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn read_pid(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The `update` command.

#[derive(Args)]
pub struct UpdateArgs {
    /// The new `scaleboxd`: a file, or an http(s) URL.
    #[arg(long)]
    artifact: String,
    /// The binary to replace (default: the one the running daemon was started from, as
    /// recorded in `<data_dir>/scaleboxd.argv.json`, else /usr/local/bin/scaleboxd).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Data directory of the daemon (its pidfile and argv file live there).
    #[arg(long, env = "SCALEBOX_DATA_DIR", default_value = "/var/lib/scalebox")]
    data_dir: PathBuf,
    /// The daemon's health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:7443/health")]
    health_url: String,
    /// Seconds to wait for the restarted daemon to answer `/health`.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// How the running daemon was started (`scaleboxd.argv.json`).
struct Recorded {
    binary: PathBuf,
    argv: Vec<String>,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl Recorded {
    fn load(data_dir: &Path) -> Option<Recorded> {
        let text = std::fs::read_to_string(data_dir.join(ARGV_FILE)).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        let argv: Vec<String> = v["argv"]
            .as_array()?
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        if argv.is_empty() {
            return None;
        }
        Some(Recorded {
            binary: PathBuf::from(v["binary"].as_str()?),
            argv,
            cwd: v["cwd"].as_str().map(PathBuf::from),
            env: v["env"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

fn step(msg: impl std::fmt::Display) {
    println!("==> {msg}");
}

pub async fn run(a: UpdateArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || update(a))
        .await
        .context("the update task failed")?
}

fn update(a: UpdateArgs) -> anyhow::Result<()> {
    let recorded = Recorded::load(&a.data_dir);
    let binary = match (&a.binary, &recorded) {
        (Some(b), _) => b.clone(),
        (None, Some(r)) => r.binary.clone(),
        (None, None) => PathBuf::from(DEFAULT_BINARY),
    };
    // A symlink is followed: the daemon re-execs the file it was started from.
    let binary = match std::fs::canonicalize(&binary) {
        Ok(b) => b,
        Err(_) => std::path::absolute(&binary)
            .with_context(|| format!("resolving {}", binary.display()))?,
    };
    let timeout = Duration::from_secs(a.timeout);
    step(format!("updating {}", binary.display()));
    let pidfile = a.data_dir.join(PIDFILE);
    let daemon = running_daemon(&pidfile, &binary, recorded.as_ref());
    if let (Some(pid), Some(r)) = (daemon, &recorded)
        && r.binary != binary
    {
        bail!(
            "the running scaleboxd (pid {pid}) was started from {}, not {}: its restart would not run the new binary; pass --binary {}",
            r.binary.display(),
            binary.display(),
            r.binary.display()
        );
    }

    // 1. Fetch to `<binary>.new` and check that it runs.
    let new = sibling(&binary, ".new");
    let n = fetch(&a.artifact, &new).inspect_err(|_| {
        let _ = std::fs::remove_file(&new);
    })?;
    step(format!(
        "fetched {} ({n} bytes) to {}",
        a.artifact,
        new.display()
    ));
    let version = match check_version(&new) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&new);
            bail!(
                "refusing to install {}: {e:#}; nothing was replaced (is the artifact a scaleboxd binary for this machine?)",
                a.artifact
            );
        }
    };
    step(format!("the new binary runs: {version}"));

    // 2. Keep the current binary as `.prev`, then swap the new one in atomically.
    let prev = sibling(&binary, ".prev");
    let have_prev = if binary.exists() {
        replace_with_copy(&binary, &prev)
            .with_context(|| format!("keeping the current binary as {}", prev.display()))?;
        step(format!("kept the current binary as {}", prev.display()));
        true
    } else {
        step(format!(
            "{} does not exist yet: installing without a previous version",
            binary.display()
        ));
        false
    };
    std::fs::rename(&new, &binary)
        .with_context(|| format!("renaming {} over {}", new.display(), binary.display()))?;
    sync_dir(&binary);
    step(format!("installed {version} as {}", binary.display()));

    // 3. Restart the running daemon, if any, and health-check it.
    match daemon {
        None => step(format!(
            "no running scaleboxd found (pidfile {}): the new binary runs on its next start",
            pidfile.display()
        )),
        Some(pid) => {
            let before = health(&a.health_url).ok();
            if before.is_none() {
                step(format!(
                    "warning: {} does not answer before the restart",
                    a.health_url
                ));
            }
            step(format!(
                "restarting scaleboxd (pid {pid}, SIGUSR2) and waiting up to {} s for {}",
                a.timeout, a.health_url
            ));
            let result = signal(pid, libc::SIGUSR2)
                .and_then(|()| wait_healthy(&a.health_url, before.as_deref(), Some(pid), timeout));
            match result {
                Ok(started_at) => step(format!(
                    "scaleboxd is healthy again (pid {pid}, started_at {started_at})"
                )),
                Err(why) => {
                    step(format!("the restart failed: {why:#}"));
                    return Err(rollback(
                        &a,
                        &binary,
                        have_prev.then_some(prev.as_path()),
                        pid,
                        before.as_deref(),
                        recorded.as_ref(),
                        why,
                    ));
                }
            }
        }
    }

    // 4. Templates built by an older recipe than the new binary's.
    rebuild_templates(&binary, &a.data_dir);
    step(format!("update to {version} complete"));
    Ok(())
}

/// Restores `.prev`, brings the daemon back on it, and says what happened (always an error).
fn rollback(
    a: &UpdateArgs,
    binary: &Path,
    prev: Option<&Path>,
    pid: i32,
    before: Option<&str>,
    recorded: Option<&Recorded>,
    why: anyhow::Error,
) -> anyhow::Error {
    let Some(prev) = prev else {
        return anyhow::anyhow!(
            "update failed ({why:#}) and there is no previous binary to roll back to; install a working scaleboxd at {} and start it",
            binary.display()
        );
    };
    if let Err(e) = replace_with_copy(prev, binary) {
        return anyhow::anyhow!(
            "update failed ({why:#}) and restoring {} over {} failed too: {e:#}; copy it back by hand and restart scaleboxd",
            prev.display(),
            binary.display()
        );
    }
    step(format!(
        "rolled back: restored {} over {}",
        prev.display(),
        binary.display()
    ));
    let log = a.data_dir.join(LOG_FILE);
    let timeout = Duration::from_secs(a.timeout);
    let healthy = |started_at: String| {
        anyhow::anyhow!(
            "update failed ({why:#}); rolled back to the previous binary, and scaleboxd is healthy again (started_at {started_at})"
        )
    };
    let unhealthy = |e: anyhow::Error| {
        anyhow::anyhow!(
            "update failed ({why:#}); rolled back to the previous binary, but the daemon is not healthy: {e:#}; see {} and the daemon's own log",
            log.display()
        )
    };
    // Still running (the new binary, hung or unhealthy): it restarts on the restored binary.
    if alive(pid) {
        step(format!(
            "restarting scaleboxd (pid {pid}) on the previous binary"
        ));
        if let Err(e) = signal(pid, libc::SIGUSR2) {
            return unhealthy(e);
        }
        match wait_healthy(&a.health_url, before, Some(pid), timeout) {
            Ok(started_at) => return healthy(started_at),
            Err(e) if alive(pid) => return unhealthy(e),
            Err(_) => step(format!("scaleboxd (pid {pid}) exited")),
        }
    }
    // Gone: start it again, detached, the way it was started.
    let Some(r) = recorded else {
        return anyhow::anyhow!(
            "update failed ({why:#}); rolled back the binary, but the daemon is gone and {} is missing: start `{} up` yourself",
            a.data_dir.join(ARGV_FILE).display(),
            binary.display()
        );
    };
    let child = match start_detached(binary, r, &log) {
        Ok(child) => child,
        Err(e) => {
            return anyhow::anyhow!(
                "update failed ({why:#}); rolled back the binary, but starting the daemon failed: {e:#}; start it with: {}",
                r.argv.join(" ")
            );
        }
    };
    step(format!(
        "the daemon had exited: started it again (pid {child}), output in {}",
        log.display()
    ));
    match wait_healthy(&a.health_url, before, Some(child), timeout) {
        Ok(started_at) => healthy(started_at),
        Err(e) => unhealthy(e),
    }
}

/// Copies (or downloads) the artifact into `dest`, mode 0755, fsynced. Returns its size.
fn fetch(artifact: &str, dest: &Path) -> anyhow::Result<u64> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(dest)
        .with_context(|| format!("creating {}", dest.display()))?;
    let n = if artifact.starts_with("http://") || artifact.starts_with("https://") {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(Duration::from_secs(30 * 60)))
            .build()
            .into();
        let resp = agent
            .get(artifact)
            .call()
            .with_context(|| format!("downloading {artifact}"))?;
        std::io::copy(&mut resp.into_body().into_reader(), &mut out)
            .with_context(|| format!("downloading {artifact} to {}", dest.display()))?
    } else {
        let mut src = std::fs::File::open(artifact)
            .with_context(|| format!("opening the artifact {artifact}"))?;
        std::io::copy(&mut src, &mut out)
            .with_context(|| format!("copying {artifact} to {}", dest.display()))?
    };
    if n == 0 {
        bail!("the artifact {artifact} is empty");
    }
    out.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    out.sync_all()
        .with_context(|| format!("syncing {}", dest.display()))?;
    Ok(n)
}

/// Runs `bin --version` (10 s at most); its first output line on success.
fn check_version(bin: &Path) -> anyhow::Result<String> {
    let mut child = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{} --version` did not finish in 10 s", bin.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let first = out.lines().next().unwrap_or("").trim().to_owned();
    if !status.success() {
        bail!(
            "`{} --version` failed ({status}): {}",
            bin.display(),
            err.trim()
        );
    }
    if first.is_empty() {
        bail!("`{} --version` printed nothing", bin.display());
    }
    Ok(first)
}

/// Makes `dest` a copy of `src` atomically (a hard link when possible, else a copy), fsynced.
fn replace_with_copy(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let tmp = sibling(dest, ".tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
        std::fs::File::open(&tmp)?.sync_all()?;
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    sync_dir(dest);
    Ok(())
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// The pid in the pidfile when it is a live scaleboxd: its executable is `binary` (or the
/// recorded binary; maybe shown as deleted once replaced), or its command line is the
/// recorded one.
fn running_daemon(pidfile: &Path, binary: &Path, recorded: Option<&Recorded>) -> Option<i32> {
    let pid = read_pid(pidfile)?;
    if pid <= 0 || !alive(pid) {
        return None;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc.join("exe")).ok().map(|p| {
        let s = p.to_string_lossy();
        PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(&s))
    });
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut expected = vec![canon(binary), binary.to_path_buf()];
    if let Some(r) = recorded {
        expected.push(r.binary.clone());
    }
    if exe.is_some_and(|e| expected.contains(&e)) {
        return Some(pid);
    }
    let cmdline: Vec<String> = std::fs::read(proc.join("cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    recorded
        .is_some_and(|r| !cmdline.is_empty() && cmdline == r.argv)
        .then_some(pid)
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
    {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: i32) -> anyhow::Result<()> {
    // SAFETY: signalling the daemon named by its pidfile (checked to be scaleboxd).
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// `started_at` of an ok `/health` answer.
fn health(url: &str) -> anyhow::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let body = agent.get(url).call()?.body_mut().read_to_string()?;
    let v: Value = serde_json::from_str(&body).context("the health answer is not JSON")?;
    if v["status"] != "ok" {
        bail!("health status is {}", v["status"]);
    }
    Ok(v["started_at"].as_str().unwrap_or_default().to_owned())
}

/// Waits until `/health` is ok with a `started_at` other than `before`; fails early when the
/// watched process is gone.
fn wait_healthy(
    url: &str,
    before: Option<&str>,
    pid: Option<i32>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    // A daemon without `started_at` (older than this command): a gap in answers marks the
    // restart instead.
    let mut seen_down = false;
    loop {
        let last = match health(url) {
            Ok(s) if Some(s.as_str()) != before || (s.is_empty() && seen_down) => return Ok(s),
            Ok(_) => "still the old process".to_owned(),
            Err(e) => {
                seen_down = true;
                format!("{e:#}")
            }
        };
        if let Some(pid) = pid
            && !alive(pid)
        {
            bail!("the daemon (pid {pid}) exited; last health check: {last}");
        }
        if Instant::now() > deadline {
            bail!(
                "{url} did not answer ok within {} s (last: {last})",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Starts `binary` with the recorded argv, working directory and environment in a new session,
/// output appended to `log`. Returns its pid.
fn start_detached(binary: &Path, r: &Recorded, log: &Path) -> anyhow::Result<i32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = Command::new(binary);
    cmd.arg0(&r.argv[0])
        .args(&r.argv[1..])
        .env_clear()
        .envs(r.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    if let Some(cwd) = &r.cwd {
        cmd.current_dir(cwd);
    }
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(child.id() as i32)
}

/// Runs `<binary> rebuild-template --if-outdated` when a template is installed (a missing one is
/// built by the daemon itself on start); reports, never fails the update.
fn rebuild_templates(binary: &Path, data_dir: &Path) {
    use scalebox_sandbox::template_build::{DEBIAN_BASE, installed_version};
    let dir = data_dir.join("sandbox/templates");
    if installed_version(&dir, DEBIAN_BASE).is_none() {
        step(format!(
            "templates: {DEBIAN_BASE} is not installed in {}, nothing to rebuild",
            dir.display()
        ));
        return;
    }
    step(format!(
        "templates: {} rebuild-template --if-outdated --data-dir {}",
        binary.display(),
        data_dir.display()
    ));
    let status = Command::new(binary)
        .args(["rebuild-template", "--if-outdated", "--data-dir"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => step("templates are current"),
        Ok(s) => eprintln!(
            "scaleboxd update: warning: rebuilding templates failed ({s}); the update itself succeeded. Retry with `{} rebuild-template --if-outdated --data-dir {}`",
            binary.display(),
            data_dir.display()
        ),
        Err(e) => eprintln!(
            "scaleboxd update: warning: cannot run {} rebuild-template: {e}; the update itself succeeded",
            binary.display()
        ),
    }
}
