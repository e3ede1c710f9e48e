//! The real `scaleboxd control` binary with its private Postgres cluster: first start initialises
//! the cluster and prints a bootstrap token once; SIGTERM stops Postgres cleanly; a restart
//! keeps state and prints no new token; `rebuild-views` and `token create` work on it.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use scalebox_testkit::http::request;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("control.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    cfg
}

async fn wait_up(port: u16) {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..600 {
        if let Ok(r) = request(addr, "GET", "/v1/health", &[], None).await
            && r.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("scaleboxd control did not come up on port {port}");
}

fn sigterm_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill with a valid pid of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("scaleboxd did not exit after SIGTERM");
}

#[tokio::test]
async fn private_postgres_lifecycle_and_admin_commands() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port();
    let cfg = write_config(dir.path(), port);
    let bin = env!("CARGO_BIN_EXE_scaleboxd");
    let data = dir.path().join("data");

    let mut child = Command::new(bin)
        .args(["control", "--config"])
        .arg(&cfg)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_up(port).await;
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.starts_with("sbx_"));
    assert_eq!(
        std::fs::metadata(data.join("admin-token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let auth = format!("Bearer {token}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = request(
        addr,
        "POST",
        "/v1/orgs/default/apps",
        &h,
        Some(br#"{"name":"keep"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        data.join("pg/data/postmaster.pid").exists(),
        "private cluster running"
    );
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "clean exit: {status}");
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(out.contains(&token), "first start prints the token");
    assert!(
        !data.join("pg/data/postmaster.pid").exists(),
        "postgres stopped with scaleboxd"
    );

    // Admin commands on the stopped install (they start and stop the cluster themselves).
    let rb = Command::new(bin)
        .args(["control", "--config"])
        .arg(&cfg)
        .arg("rebuild-views")
        .output()
        .unwrap();
    assert!(
        rb.status.success(),
        "{}",
        String::from_utf8_lossy(&rb.stderr)
    );
    assert!(String::from_utf8_lossy(&rb.stdout).contains("rebuilt views from 3 events"));
    let tc = Command::new(bin)
        .args(["control", "--config"])
        .arg(&cfg)
        .args([
            "token", "create", "--org", "default", "--role", "reader", "--name", "ro",
        ])
        .output()
        .unwrap();
    assert!(
        tc.status.success(),
        "{}",
        String::from_utf8_lossy(&tc.stderr)
    );
    let reader = String::from_utf8_lossy(&tc.stdout).trim().to_owned();
    let bad = Command::new(bin)
        .args(["control", "--config"])
        .arg(&cfg)
        .args(["token", "create", "--org", "nope"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("org \"nope\" not found"));

    // Restart: state intact, no new bootstrap token, the reader token works.
    let mut child = Command::new(bin)
        .args(["control", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_up(port).await;
    let auth = format!("Bearer {reader}");
    let r = request(
        addr,
        "GET",
        "/v1/orgs/default/apps/keep",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(sigterm_and_wait(&mut child).success());
    let out = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(
        !out.contains("sbx_"),
        "no token printed on later starts: {out}"
    );

    // A broken config file is refused with its path and the bad key.
    std::fs::write(&cfg, "listen = 5\n").unwrap();
    let e = Command::new(bin)
        .args(["control", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("control.toml") && err.contains("listen"),
        "{err}"
    );
}
