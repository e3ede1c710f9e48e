//! Helpers shared by the edge integration tests: ports, tool checks, processes, echo servers,
//! an in-process edge and the admin client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use scalebox_edge::{Edge, EdgeConfig, EdgeHandle, Table};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A free TCP port on loopback (both families checked).
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", p)).is_ok() {
            return p;
        }
    }
}

/// Fails the test with the Debian package to install when a tool is missing.
pub fn require(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`{tool}` is required by this test: apt-get install -y {package}"
    );
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `f` on a thread of its own inside a fresh network namespace (loopback up) whose
/// `net.ipv4.tcp_fastopen` is `tfo`; the namespace goes away with the thread. Threads and
/// processes started from `f` (a tokio runtime, openssl, curl) inherit it. Needs root.
pub fn in_private_netns(tfo: &str, f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    let tfo = tfo.to_string();
    std::thread::spawn(move || {
        scalebox_testkit::netns::enter_private().map_err(anyhow::Error::msg)?;
        std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", &tfo)
            .context("set net.ipv4.tcp_fastopen in the test namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("test thread panicked"))?
}

/// Waits until something accepts on `addr`.
pub async fn wait_port(addr: SocketAddr) -> Result<()> {
    for _ in 0..300 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listening on {addr} after 15 s")
}

/// A tokio echo server on `addr`; returns its address.
pub async fn echo_server(addr: &str) -> SocketAddr {
    let l = TcpListener::bind(addr).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    a
}

/// Sends `msg` and reads the same number of bytes back.
pub async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .context("echo timed out")??;
    Ok(back)
}

/// Config for a test edge: admin on an ephemeral loopback port, state in `dir`.
pub fn test_config(dir: &Path) -> EdgeConfig {
    EdgeConfig {
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.to_path_buf(),
        reload_on_sighup: false,
        default_ipv6_addr: "::1".parse().unwrap(),
        default_ipv4_addr: "127.0.0.1".parse().unwrap(),
        ..EdgeConfig::default()
    }
}

/// An edge running inside the test process.
pub struct TestEdge {
    pub handle: EdgeHandle,
    pub admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), scalebox_edge::EdgeError>>>,
}

impl TestEdge {
    pub async fn start(cfg: EdgeConfig) -> Result<TestEdge> {
        let edge = Edge::start(cfg).await?;
        let handle = edge.handle();
        let admin = edge.admin_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(edge.run(async move {
            let _ = rx.await;
        }));
        Ok(TestEdge {
            handle,
            admin,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// Triggers shutdown and returns the run task to await.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<Result<(), scalebox_edge::EdgeError>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("shutdown once")
    }
}

/// Parses a table from a JSON value.
pub fn table(v: serde_json::Value) -> Table {
    serde_json::from_value(v).expect("test table JSON")
}

/// GET via curl (a real HTTP client); returns (status, body).
pub fn curl_admin(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        &format!("http://{admin}{path}"),
    ]);
    if let Some(b) = body {
        c.args(["--data-binary", b, "-H", "Content-Type: application/json"]);
    }
    let out = c.output().context("run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').context("curl output")?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// Reads one metric sample (exact series text) from the admin endpoint.
pub fn metric(admin: SocketAddr, series: &str) -> Result<f64> {
    let (code, body) = curl_admin(admin, "GET", "/metrics", None)?;
    assert_eq!(code, 200);
    for line in body.lines() {
        if let Some(v) = line.strip_prefix(series).and_then(|r| r.strip_prefix(' ')) {
            return Ok(v.parse()?);
        }
    }
    bail!("series {series} not found in:\n{body}")
}

/// Generates a self-signed EC certificate for `host` in `dir`; returns (cert, key).
pub fn make_cert(dir: &Path, host: &str) -> Result<(PathBuf, PathBuf)> {
    require("openssl", "openssl");
    let cert = dir.join(format!("{host}.pem"));
    let key = dir.join(format!("{host}.key"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .arg("-subj")
        .arg(format!("/CN={host}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{host}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("openssl req failed for {host}");
    }
    Ok((cert, key))
}

/// Starts `openssl s_server -www` on 127.0.0.1:`port` with the given certificate.
pub async fn s_server(port: u16, cert: &Path, key: &Path) -> Result<Proc> {
    let child = Command::new("openssl")
        .args(["s_server", "-www", "-accept", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn openssl s_server")?;
    let p = Proc(child);
    wait_port(format!("127.0.0.1:{port}").parse()?).await?;
    Ok(p)
}
