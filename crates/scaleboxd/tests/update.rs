//! `scaleboxd update` against a real `scaleboxd up --backend process --no-vms` (real Postgres)
//! started from a copy of the binary in a temporary bin directory: an update in place (same
//! pid, new `started_at`, `.prev` kept), an artifact that fails `--version` (refused, nothing
//! replaced), an update over HTTP through the `scalebox-update` name, and a binary that passes
//! `--version` but cannot run (restart fails, the previous binary comes back and the daemon is
//! started again, healthy).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Every process of this test: `up` (our child until the rollback case), whatever the pidfile
/// names (the daemon `update` restarted detached), and any process working under `root`.
struct Cleanup {
    up: Option<Child>,
    root: PathBuf,
    pidfile: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // (A reaped child's pid may belong to someone else by now.)
        let mut pids: Vec<i32> = self
            .up
            .iter_mut()
            .filter_map(|c| matches!(c.try_wait(), Ok(None)).then(|| c.id() as i32))
            .collect();
        if let Some(p) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            pids.push(p);
        }
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid != std::process::id() as i32
                && std::fs::read_link(entry.path().join("cwd")).is_ok_and(|c| c.starts_with(&root))
            {
                pids.push(pid);
            }
        }
        for &pid in &pids {
            // SAFETY: signalling processes this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(c) = &mut self.up {
                let _ = c.try_wait();
            }
            if !pids.iter().any(|&p| alive(p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for &pid in &pids {
            if alive(pid) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(c) = &mut self.up {
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// GET `/health`; its JSON when it answers 200.
fn health(port: u16) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

fn wait_health(port: u16, not_started_at: Option<&str>, log: &Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(h) = health(port)
            && h["started_at"].as_str() != not_started_at
        {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "scaleboxd did not answer /health:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn pid_in(pidfile: &Path) -> i32 {
    std::fs::read_to_string(pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Serves `file` at any path on 127.0.0.1 (one thread, one request at a time); returns the port.
fn serve_file(file: PathBuf) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut byte = [0u8; 1];
            while !req.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                req.push(byte[0]);
            }
            let body = std::fs::read(&file).unwrap();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
    });
    port
}

#[test]
fn update_replaces_restarts_and_rolls_back() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tdb = rt.block_on(scalebox_testkit::test_db());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api_port, agent_port, edge_admin) = (free_port(), free_port(), free_port());
    let data = d.join("data");
    std::fs::write(
        d.join("control.toml"),
        format!(
            "listen = \"127.0.0.1:{api_port}\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "listen = \"127.0.0.1:{agent_port}\"\ndata_dir = \"{}\"\nbackend = \"process\"\n",
            d.join("agent").display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("edge.toml"),
        format!(
            "admin_addr = \"127.0.0.1:{edge_admin}\"\nstate_dir = \"{}\"\n",
            d.join("edge").display()
        ),
    )
    .unwrap();
    let built = PathBuf::from(env!("CARGO_BIN_EXE_scaleboxd"));
    let good = std::fs::read(&built).unwrap();
    let bin_dir = d.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("scaleboxd");
    std::fs::copy(&built, &bin).unwrap();
    let artifacts = d.join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let pidfile = data.join("scaleboxd.pid");
    let log = d.join("up.log");

    let up = Command::new(&bin)
        .args(["up", "--backend", "process", "--no-vms", "--config"])
        .arg(d.join("control.toml"))
        .arg("--agent-config")
        .arg(d.join("agent.toml"))
        .arg("--edge-config")
        .arg(d.join("edge.toml"))
        .current_dir(d)
        .env("DATABASE_URL", &tdb.url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let up_pid = up.id() as i32;
    let mut cleanup = Cleanup {
        up: Some(up),
        root: d.to_path_buf(),
        pidfile: pidfile.clone(),
    };
    let h0 = wait_health(api_port, None, &log);
    assert_eq!(h0["status"], "ok", "{h0}");
    assert_eq!(h0["pid"], up_pid, "{h0}");
    let t0 = h0["started_at"].as_str().unwrap().to_owned();
    assert_eq!(pid_in(&pidfile), up_pid);
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("scaleboxd.argv.json")).unwrap())
            .unwrap();
    assert_eq!(
        recorded["binary"],
        std::fs::canonicalize(&bin).unwrap().to_str().unwrap(),
        "{recorded}"
    );
    assert_eq!(recorded["argv"][1], "up", "{recorded}");

    let health_url = format!("http://127.0.0.1:{api_port}/health");
    let update = |program: &Path, artifact: &str, with_binary: bool| -> Output {
        let mut c = Command::new(program);
        if !program.ends_with("scalebox-update") {
            c.arg("update");
        }
        c.args(["--artifact", artifact, "--data-dir"])
            .arg(&data)
            .args(["--health-url", &health_url, "--timeout", "60"])
            .current_dir(d)
            .env_remove("SCALEBOX_DATA_DIR")
            .stdin(Stdio::null());
        if with_binary {
            c.arg("--binary").arg(&bin);
        }
        let o = c.output().unwrap();
        eprintln!("update --artifact {artifact}: {}", show(&o));
        o
    };

    // (a) The same binary as an artifact: replaced, restarted in place, `.prev` kept.
    let artifact = artifacts.join("scaleboxd");
    std::fs::copy(&built, &artifact).unwrap();
    let o = update(&built, artifact.to_str().unwrap(), true);
    assert!(o.status.success(), "{}\nlog:\n{}", show(&o), tail(&log));
    let out = text(&o.stdout);
    assert!(out.contains("healthy again"), "{out}");
    assert!(out.contains("update to scaleboxd"), "{out}");
    assert!(bin_dir.join("scaleboxd.prev").exists());
    assert!(!bin_dir.join("scaleboxd.new").exists());
    let h1 = wait_health(api_port, None, &log);
    let t1 = h1["started_at"].as_str().unwrap().to_owned();
    assert_ne!(t1, t0, "the daemon did not restart");
    assert_eq!(h1["pid"], up_pid, "the restart keeps the pid: {h1}");
    assert_eq!(pid_in(&pidfile), up_pid);
    assert_eq!(std::fs::read(&bin).unwrap(), good);

    // (b) An artifact that fails `--version`: refused, nothing replaced, nothing restarted.
    let bad = artifacts.join("bad");
    script(&bad, "#!/bin/sh\necho 'not a scaleboxd' >&2\nexit 3\n");
    let prev_before = std::fs::metadata(bin_dir.join("scaleboxd.prev"))
        .unwrap()
        .modified()
        .unwrap();
    let o = update(&built, bad.to_str().unwrap(), true);
    assert!(!o.status.success(), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("refusing to install") && err.contains("nothing was replaced"),
        "{}",
        show(&o)
    );
    assert_eq!(std::fs::read(&bin).unwrap(), good);
    assert!(!bin_dir.join("scaleboxd.new").exists());
    assert_eq!(
        std::fs::metadata(bin_dir.join("scaleboxd.prev"))
            .unwrap()
            .modified()
            .unwrap(),
        prev_before
    );
    let h = health(api_port).expect("still healthy");
    assert_eq!(h["started_at"], t1.as_str());

    // (d) Over HTTP, through the `scalebox-update` name, the binary taken from argv.json.
    let port = serve_file(built.clone());
    let link = bin_dir.join("scalebox-update");
    std::os::unix::fs::symlink(&built, &link).unwrap();
    let o = update(&link, &format!("http://127.0.0.1:{port}/scaleboxd"), false);
    assert!(o.status.success(), "{}\nlog:\n{}", show(&o), tail(&log));
    let h2 = wait_health(api_port, Some(&t1), &log);
    let t2 = h2["started_at"].as_str().unwrap().to_owned();
    assert_eq!(h2["pid"], up_pid, "{h2}");
    assert_eq!(std::fs::read(&bin).unwrap(), good);

    // (c) Passes `--version` but cannot run: the restart fails, the update rolls back and
    // starts the daemon again (detached, from the recorded command line).
    let broken = artifacts.join("broken");
    script(
        &broken,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'scaleboxd 9.9.9-broken'; exit 0; fi\necho 'broken build' >&2\nexit 1\n",
    );
    let o = update(&built, broken.to_str().unwrap(), true);
    assert!(!o.status.success(), "{}", show(&o));
    let err = text(&o.stderr);
    assert!(err.contains("rolled back"), "{}", show(&o));
    assert!(
        err.contains("healthy again"),
        "{}\nlog:\n{}",
        show(&o),
        tail(&log)
    );
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        good,
        "the good binary is back"
    );
    // The old `up` exec'd the broken binary, which exited.
    let status = cleanup.up.as_mut().unwrap().wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let h3 = wait_health(api_port, Some(&t2), &data.join("scaleboxd.log"));
    assert_eq!(h3["status"], "ok");
    let new_pid = pid_in(&pidfile);
    assert_ne!(new_pid, up_pid);
    assert_eq!(h3["pid"], new_pid, "{h3}");
    assert!(alive(new_pid));
    drop(cleanup);
    assert!(!alive(new_pid), "the detached daemon was stopped");
}
