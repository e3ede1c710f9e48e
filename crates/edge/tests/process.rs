//! The edge as a real process: SIGHUP reload from the table file, restart with the control
//! plane (and table file) absent serving from the persisted table, corrupt persisted table.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use serde_json::json;
use tokio::net::TcpStream;

fn spawn_edge(cfg: &Path, log: &Path) -> Result<Proc> {
    let log = std::fs::File::create(log)?;
    let child = Command::new(env!("CARGO_BIN_EXE_scalebox-edge"))
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn scalebox-edge")?;
    Ok(Proc(child))
}

async fn echo_ok(port: u16) -> Result<()> {
    let mut s = TcpStream::connect(("::1", port))
        .await
        .with_context(|| format!("connect to edge port {port}"))?;
    anyhow::ensure!(
        roundtrip(&mut s, b"hello edge").await? == b"hello edge",
        "bad echo"
    );
    Ok(())
}

async fn wait_for(mut f: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn stop(mut p: Proc) {
    // SAFETY: sending SIGTERM to a child we spawned.
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    let _ = p.0.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_restart_from_persisted_table_and_corrupt_file() -> Result<()> {
    require("curl", "curl");
    let dir = tempfile::tempdir()?;
    let echo = echo_server("127.0.0.1:0").await;
    let (p1, p2, admin_port) = (free_port(), free_port(), free_port());
    let admin = format!("127.0.0.1:{admin_port}").parse()?;
    let state = dir.path().join("state");
    let table_file = dir.path().join("routes.json");
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "admin_addr = \"{admin}\"\nstate_dir = \"{}\"\ntable_file = \"{}\"\ndefault_ipv6_addr = \"::1\"\ndefault_ipv4_addr = \"127.0.0.1\"\n",
            state.display(),
            table_file.display()
        ),
    )?;
    let route = |id: &str, port: u16| json!({"id": id, "kind": "tcp", "port": port, "backends": [echo.to_string()]});
    std::fs::write(
        &table_file,
        json!({"generation": 1, "routes": [route("one", p1)]}).to_string(),
    )?;

    let edge = spawn_edge(&cfg, &dir.path().join("log1"))?;
    wait_port(admin).await?;
    echo_ok(p1).await?;

    // SIGHUP re-reads the table file.
    std::fs::write(
        &table_file,
        json!({"generation": 2, "routes": [route("one", p1), route("two", p2)]}).to_string(),
    )?;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGHUP) };
    assert!(
        wait_for(async || echo_ok(p2).await.is_ok()).await,
        "route two not served after SIGHUP"
    );
    assert_eq!(metric(admin, "edge_table_generation")?, 2.0);
    // A broken table file on SIGHUP keeps the current table.
    std::fs::write(&table_file, "{not json")?;
    unsafe { libc::kill(edge.0.id() as i32, libc::SIGHUP) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo_ok(p2).await?;
    stop(edge);

    // Restart with no table source at all: the persisted table is served.
    std::fs::remove_file(&table_file)?;
    let edge = spawn_edge(&cfg, &dir.path().join("log2"))?;
    wait_port(admin).await?;
    echo_ok(p1).await?;
    echo_ok(p2).await?;
    assert_eq!(metric(admin, "edge_table_generation")?, 2.0);
    stop(edge);

    // A corrupt persisted table: logged, the edge starts empty and stays healthy.
    std::fs::write(state.join("table.json"), b"\x00garbage")?;
    let edge = spawn_edge(&cfg, &dir.path().join("log3"))?;
    wait_port(admin).await?;
    let (code, _) = curl_admin(admin, "GET", "/healthz", None)?;
    assert_eq!(code, 200);
    assert!(
        TcpStream::connect(("::1", p1)).await.is_err(),
        "empty table must not listen"
    );
    let log = std::fs::read_to_string(dir.path().join("log3"))?;
    assert!(
        log.contains("persisted routing table is unreadable"),
        "log:\n{log}"
    );
    // A new table over the admin endpoint repairs it.
    let t = json!({"generation": 5, "routes": [route("one", p1)]}).to_string();
    let (code, body) = curl_admin(admin, "PUT", "/table", Some(&t))?;
    assert_eq!(code, 200, "{body}");
    echo_ok(p1).await?;
    stop(edge);
    Ok(())
}
