//! Shared helpers for the agent integration tests: curl against the agent API, polling, and
//! tool checks that fail loudly naming the Debian package.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Fails the test if `tool` is missing.
pub fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` not found: install the Debian package `{package}`"
    );
}

/// Runs curl against `addr`; returns (status, body).
pub fn curl(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "30", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    c.arg(format!("http://{addr}{path}"));
    let out = c.output().expect("run curl (Debian package curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn api(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (s, b) = curl(addr, method, path, body, Some(TOKEN));
    let v = serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b));
    (s, v)
}

/// Polls `f` until it returns Some, or panics after `secs` with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `<data_dir>/api-addr` and returns it.
pub fn api_addr(data_dir: &Path, not: Option<&str>) -> String {
    wait_for(60, "agent API address", || {
        let a = std::fs::read_to_string(data_dir.join("api-addr")).ok()?;
        if Some(a.as_str()) == not {
            return None;
        }
        let ok = std::net::TcpStream::connect(a.trim()).is_ok();
        ok.then_some(a)
    })
}

/// Waits until instance `id` reaches `state`; returns its record.
pub fn wait_state(addr: &str, id: &str, state: &str, secs: u64) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let (s, v) = api(addr, "GET", &format!("/v1/instances/{id}"), None);
        if s == 200 && v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < end,
            "instance {id} did not reach {state} in {secs}s; last: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// PIDs whose argv holds the process-backend marker for `data_dir` and `key`.
pub fn vm_pids(data_dir: &Path, key: &str) -> Vec<u32> {
    let marker = std::fs::canonicalize(data_dir)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(b) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let a: Vec<String> = b
            .split(|&c| c == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if a.len() >= 6
            && a[3] == "scalebox-procvm"
            && a[4] == marker
            && a[5] == key
            && pid_alive(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Writes an agent config for a test data dir (random port).
pub fn write_config(data_dir: &Path) -> std::path::PathBuf {
    let p = data_dir.join("agent.toml");
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\ntoken = \"{TOKEN}\"\nlog_segment_bytes = 4096\nlog_max_bytes = 65536\n",
            data_dir.display()
        ),
    )
    .unwrap();
    p
}

/// A file to use as the image (the dev rootfs provider caches it by digest).
pub fn image_file(dir: &Path) -> String {
    let p = dir.join("image.tar");
    std::fs::write(
        &p,
        b"not really a tar, the dev provider treats it as opaque",
    )
    .unwrap();
    p.to_string_lossy().into_owned()
}

/// A running `scalebox-agent-dev` subprocess. Dropping it kills the agent and every process
/// the process backend started for its data dir.
pub struct Agent {
    pub child: Option<std::process::Child>,
    pub data_dir: std::path::PathBuf,
    pub addr: String,
    pub log: std::path::PathBuf,
}

impl Agent {
    pub fn start(data_dir: &Path) -> Agent {
        let cfg = write_config(data_dir);
        let prev = std::fs::read_to_string(data_dir.join("api-addr")).ok();
        let _ = std::fs::remove_file(data_dir.join("api-addr"));
        let n = std::fs::read_dir(data_dir).map(|d| d.count()).unwrap_or(0);
        let log = data_dir.join(format!("agent-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_scalebox-agent-dev"))
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn scalebox-agent-dev");
        let addr = api_addr(data_dir, None);
        let _ = prev;
        Agent {
            child: Some(child),
            data_dir: data_dir.to_owned(),
            addr,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the agent (instances keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs the agent and waits (instances keep running).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        kill_all_vms(&self.data_dir);
    }
}

/// Kills every process-backend process group of `data_dir`.
pub fn kill_all_vms(data_dir: &Path) {
    let Ok(marker) = std::fs::canonicalize(data_dir) else {
        return;
    };
    let marker = marker.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(b) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let a: Vec<String> = b
            .split(|&c| c == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        if a.len() >= 6 && a[3] == "scalebox-procvm" && a[4] == marker {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

/// JSON body of an ensure request.
pub fn spec(generation: u64, image: &str, command: &str, extra: &str) -> String {
    let cmd = serde_json::to_string(command).unwrap();
    let img = serde_json::to_string(image).unwrap();
    format!(
        r#"{{"generation":{generation},"image":{{"kind":"archive","path":{img}}},"command":{cmd}{extra}}}"#
    )
}
