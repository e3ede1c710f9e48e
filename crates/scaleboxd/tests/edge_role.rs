//! `scaleboxd edge` runs the edge: its admin listener answers `/healthz` and `/metrics`, and it
//! stops cleanly on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use scalebox_testkit::http::request;

#[tokio::test]
async fn edge_role_serves_admin_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "admin_addr = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scaleboxd"))
        .args(["edge", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut healthy = false;
    for _ in 0..100 {
        if let Ok(r) = request(addr, "GET", "/healthz", &[], None).await
            && r.status == 200
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "edge admin listener answered /healthz");
    let m = request(addr, "GET", "/metrics", &[], None).await.unwrap();
    assert_eq!(m.status, 200);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("scaleboxd edge did not stop on SIGTERM")
    });
    assert!(status.success(), "{status}");
}
