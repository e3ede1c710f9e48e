//! A private PostgreSQL cluster under Scalebox's data directory: `initdb` on first start,
//! `pg_ctl` start/stop on a Unix socket (no TCP listener), run as an unprivileged system user
//! when we are root (Postgres refuses to run as root). Used by `scaleboxd` when no
//! `database_url` is configured, and by the test harness.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::StoreError;

/// The database role every private cluster is initialised with.
pub const SUPERUSER: &str = "scalebox";

/// How to run a private cluster.
#[derive(Debug, Clone)]
pub struct PgCluster {
    /// The cluster's data directory (created by `initdb`).
    pub data_dir: PathBuf,
    /// Directory holding the Unix socket (keep the path short: sockets are limited to 107 bytes).
    pub socket_dir: PathBuf,
    /// OS user that owns and runs the cluster when we are root.
    pub os_user: String,
    /// Extra `-c name=value` server settings (tests turn fsync off; production keeps defaults).
    pub settings: Vec<(String, String)>,
}

/// Finds the directory with `initdb`/`pg_ctl`: `$SCALEBOX_PG_BIN`, the newest
/// `/usr/lib/postgresql/*/bin`, or `$PATH`.
pub fn bin_dir() -> Result<PathBuf, StoreError> {
    if let Ok(d) = std::env::var("SCALEBOX_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        if Path::new(dir).join("initdb").exists() {
            return Ok(PathBuf::from(dir));
        }
    }
    Err(StoreError::Cluster(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package \
         `postgresql` or set SCALEBOX_PG_BIN, or configure database_url to use an external server"
            .into(),
    ))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of `user`, creating it as a system user (no login, no home) when missing.
fn ensure_os_user(user: &str) -> Result<(u32, u32), StoreError> {
    if let Some(ids) = lookup_user(user) {
        return Ok(ids);
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .arg(user)
        .status()
        .map_err(|e| {
            StoreError::Cluster(format!("cannot run useradd to create user {user}: {e}"))
        })?;
    // A concurrent creator may have won the race; look again either way.
    lookup_user(user).ok_or_else(|| {
        StoreError::Cluster(format!(
            "could not create system user {user} (useradd exited with {status})"
        ))
    })
}

fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let c = CString::new(user).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage valid until the next call; we
    // copy the two integers out immediately.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and points to a valid passwd struct.
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

/// Postgres runs as another user: every ancestor of `dir` must let it through.
fn check_traversable(dir: &Path, uid: u32, user: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    for a in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        if m.uid() != uid && m.mode() & 0o001 == 0 {
            return Err(StoreError::Cluster(format!(
                "the private Postgres runs as user {user}, which cannot enter {} (mode {:o}); \
                 run `chmod o+x {}` or choose a data directory under a traversable path",
                a.display(),
                m.mode() & 0o777,
                a.display()
            )));
        }
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), StoreError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| StoreError::Cluster(format!("cannot chown {}: {e}", path.display())))
}

impl PgCluster {
    /// A cluster with production settings (fsync on).
    pub fn new(data_dir: PathBuf, socket_dir: PathBuf) -> Self {
        PgCluster {
            data_dir,
            socket_dir,
            os_user: "scalebox-pg".into(),
            settings: Vec::new(),
        }
    }

    /// Connection string for database `dbname` over the Unix socket.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host={} port=5432 user={SUPERUSER} dbname={dbname}",
            self.socket_dir.display()
        )
    }

    fn command(&self, program: &str, ids: Option<(u32, u32)>) -> Result<Command, StoreError> {
        let mut cmd = Command::new(bin_dir()?.join(program));
        cmd.stdin(Stdio::null()).env("LC_ALL", "C");
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        Ok(cmd)
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<(), StoreError> {
        let out = cmd
            .output()
            .map_err(|e| StoreError::Cluster(format!("cannot run {what}: {e}")))?;
        if !out.status.success() {
            return Err(StoreError::Cluster(format!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn ids(&self) -> Result<Option<(u32, u32)>, StoreError> {
        if is_root() {
            ensure_os_user(&self.os_user).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Initialises the cluster if its data directory has none yet, then starts it (a cluster
    /// already running is left alone). Returns once it accepts connections.
    pub fn start(&self) -> Result<(), StoreError> {
        let ids = self.ids()?;
        for d in [&self.data_dir, &self.socket_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| StoreError::Cluster(format!("cannot create {}: {e}", d.display())))?;
            if let Some((uid, gid)) = ids {
                chown(d, uid, gid)?;
                check_traversable(d, uid, &self.os_user)?;
            }
        }
        std::fs::set_permissions(
            &self.data_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(|e| {
            StoreError::Cluster(format!("cannot chmod {}: {e}", self.data_dir.display()))
        })?;
        if !self.data_dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %self.data_dir.display(), "initialising private postgres cluster");
            let mut cmd = self.command("initdb", ids)?;
            cmd.arg("-D").arg(&self.data_dir).args([
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "-U",
                SUPERUSER,
            ]);
            self.run(cmd, "initdb")?;
        }
        if self.is_running()? {
            return Ok(());
        }
        let mut opts = format!(
            "-k {} -c listen_addresses='' -p 5432",
            self.socket_dir.display()
        );
        for (k, v) in &self.settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let mut cmd = self.command("pg_ctl", ids)?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.data_dir.join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"]);
        self.run(cmd, "pg_ctl start").map_err(|e| {
            let log = std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            StoreError::Cluster(format!(
                "{e}; server log tail: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        })
    }

    /// Whether a postmaster is running for this data directory.
    pub fn is_running(&self) -> Result<bool, StoreError> {
        let ids = self.ids()?;
        let mut cmd = self.command("pg_ctl", ids)?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = cmd
            .status()
            .map_err(|e| StoreError::Cluster(format!("cannot run pg_ctl: {e}")))?;
        Ok(status.success())
    }

    /// Stops the cluster cleanly (fast shutdown: running transactions are rolled back, the
    /// checkpoint completes). Stopping a stopped cluster is fine.
    pub fn stop(&self) -> Result<(), StoreError> {
        if !self.data_dir.join("PG_VERSION").exists() || !self.is_running()? {
            return Ok(());
        }
        let ids = self.ids()?;
        let mut cmd = self.command("pg_ctl", ids)?;
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        self.run(cmd, "pg_ctl stop")
    }
}
