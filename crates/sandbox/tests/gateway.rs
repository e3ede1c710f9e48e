//! The HTTPS gateway with the real Caddy (`/usr/bin/caddy`) and the real `curl`: on-demand
//! certificates from Caddy's internal CA, validated by a local ask endpoint; never the internet.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use scalebox_sandbox::gateway::{Gateway, GatewayConfig, GatewayError, GatewaySite, Issuer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Request line → (status, body).
type Answer = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// A tiny HTTP/1.1 server: `answer(request line)` → (status, body); one request per connection.
async fn serve(listener: tokio::net::TcpListener, answer: Answer) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.lines().next().unwrap_or("").to_owned();
            let (status, body) = answer(&line);
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

struct Servers {
    vm1: SocketAddr,
    vm2: SocketAddr,
    ask: SocketAddr,
    asked_bad: Arc<AtomicUsize>,
}

/// Two "VM port 8080" servers and the ask endpoint, on a runtime in its own thread.
fn start_servers() -> Servers {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let asked_bad = Arc::new(AtomicUsize::new(0));
            tx.send(Servers {
                vm1: l1.local_addr().unwrap(),
                vm2: l2.local_addr().unwrap(),
                ask: la.local_addr().unwrap(),
                asked_bad: asked_bad.clone(),
            })
            .unwrap();
            let vm1 = serve(l1, Arc::new(|_| (200, "hello from vm one\n".into())));
            let vm2 = serve(l2, Arc::new(|_| (200, "hello from vm two\n".into())));
            let ask = serve(
                la,
                Arc::new(move |line: &str| {
                    // GET /caddy/check?domain=D HTTP/1.1
                    let domain = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|t| t.split_once("domain="))
                        .map(|(_, d)| d.split('&').next().unwrap_or("").to_owned())
                        .unwrap_or_default();
                    if domain == "good-vm.vms.test" {
                        (200, "ok".into())
                    } else {
                        if domain == "bad-vm.vms.test" {
                            asked_bad.fetch_add(1, Ordering::SeqCst);
                        }
                        (404, "not found".into())
                    }
                }),
            );
            tokio::join!(vm1, vm2, ask);
        });
    });
    rx.recv_timeout(WAIT).expect("test servers started")
}

/// `curl` for `https://{host}:{port}/` resolved to 127.0.0.1, trusting `root`:
/// Ok(body) or Err(exit code + stderr).
fn curl(host: &str, port: u16, root: &Path) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--noproxy", "*", "--max-time", "10"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(root)
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Retries `curl` until it returns `want` (the first on-demand issuance takes a moment).
fn wait_for_body(host: &str, port: u16, root: &Path, want: &str, log: &Path) {
    let deadline = Instant::now() + WAIT;
    let mut last;
    loop {
        last = curl(host, port, root);
        if last.as_deref() == Ok(want) {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "https://{host}:{port}/ did not answer {want:?} within {}s; last: {last:?}\ncaddy log:\n{}",
                WAIT.as_secs(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} within {}s",
            WAIT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pid_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

fn gateway_config(data: &Path, https_port: u16) -> GatewayConfig {
    GatewayConfig {
        enabled: true,
        https_listen: format!("127.0.0.1:{https_port}"),
        http_listen: String::new(),
        admin: format!("127.0.0.1:{}", free_port()),
        data_dir: data.to_path_buf(),
        issuer: Issuer::Internal,
        caddy_binary: "caddy".into(),
    }
}

#[test]
fn caddy_serves_vms_with_on_demand_certificates() {
    let servers = start_servers();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gateway");
    let https_port = free_port();
    let config = gateway_config(&data, https_port);
    let site = GatewaySite {
        api_domain: None,
        api_upstream: servers.vm2,
        ask_url: format!("http://{}/caddy/check", servers.ask),
        vm_domain: Some("vms.test".into()),
    };
    let routes = vec![
        ("good-vm".to_string(), servers.vm1),
        // routed, but the ask endpoint refuses it: no certificate, so no TLS
        ("bad-vm".to_string(), servers.vm1),
    ];

    let gw = Gateway::start(config.clone(), site.clone(), &[]).expect("start caddy");
    let pid = gw.pid().expect("running");
    assert!(!gw.adopted());
    assert_eq!(
        std::fs::read_to_string(Gateway::pidfile_path(&config))
            .unwrap()
            .trim(),
        pid.to_string()
    );
    assert!(
        gw.apply(&routes).expect("apply routes"),
        "first apply loads"
    );
    assert!(
        !gw.apply(&routes).expect("apply again"),
        "unchanged routes are not reloaded"
    );

    let root = gw.internal_root_ca();
    let log = Gateway::log_path(&config);
    wait_until("caddy's internal CA root exists", || root.is_file());
    wait_for_body(
        "good-vm.vms.test",
        https_port,
        &root,
        "hello from vm one\n",
        &log,
    );

    // The ask endpoint refuses bad-vm: the handshake fails (no certificate) although it has a route.
    let refused = curl("bad-vm.vms.test", https_port, &root);
    assert!(refused.is_err(), "bad-vm must not be served: {refused:?}");
    assert!(
        servers.asked_bad.load(Ordering::SeqCst) > 0,
        "caddy asked about bad-vm"
    );
    // A name nobody routes is refused the same way.
    assert!(curl("nobody.vms.test", https_port, &root).is_err());

    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log_text.contains("installing root certificate"),
        "caddy must not touch the host's trust stores:\n{log_text}"
    );

    // A second route set takes effect without restarting Caddy.
    let routes2 = vec![("good-vm".to_string(), servers.vm2)];
    assert!(gw.apply(&routes2).expect("apply second routes"));
    wait_for_body(
        "good-vm.vms.test",
        https_port,
        &root,
        "hello from vm two\n",
        &log,
    );
    assert_eq!(gw.pid(), Some(pid), "same caddy process");
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Gateway::config_path(&config)).unwrap()).unwrap();
    assert_eq!(
        on_disk["apps"]["http"]["servers"]["scalebox_gateway"]["routes"][0]["handle"][0]["upstreams"]
            [0]["dial"],
        servers.vm2.to_string(),
        "the config file follows the applied config"
    );

    // A new gateway over the same data dir adopts the running Caddy (as after a daemon crash).
    std::mem::forget(gw);
    let gw = Gateway::start(config.clone(), site.clone(), &routes).expect("adopt caddy");
    assert!(gw.adopted(), "adopted the previous caddy");
    assert_eq!(gw.pid(), Some(pid));
    wait_for_body(
        "good-vm.vms.test",
        https_port,
        &root,
        "hello from vm one\n",
        &log,
    );

    gw.stop();
    assert_eq!(gw.pid(), None);
    wait_until("caddy exited after stop", || pid_gone(pid));
    assert!(!Gateway::pidfile_path(&config).exists(), "pidfile removed");
    assert!(
        curl("good-vm.vms.test", https_port, &root).is_err(),
        "nothing listens after stop"
    );
    assert!(matches!(
        gw.apply(&routes2),
        Err(GatewayError::NotRunning { .. })
    ));
    drop(gw);

    // Dropping a gateway stops its Caddy too.
    let gw = Gateway::start(config.clone(), site, &routes).expect("restart caddy");
    assert!(!gw.adopted());
    let pid = gw.pid().unwrap();
    drop(gw);
    wait_until("caddy exited after drop", || pid_gone(pid));
}

#[test]
fn start_failures_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let site = GatewaySite {
        api_domain: Some("api.test".into()),
        api_upstream: "127.0.0.1:9".parse().unwrap(),
        ask_url: "http://127.0.0.1:9/caddy/check".into(),
        vm_domain: Some("vms.test".into()),
    };

    let mut missing = gateway_config(&tmp.path().join("a"), free_port());
    missing.caddy_binary = "/nonexistent/caddy".into();
    let e = Gateway::start(missing, site.clone(), &[]).unwrap_err();
    assert!(
        e.to_string().contains("install Debian package caddy"),
        "{e}"
    );

    // The HTTPS port is taken: Caddy exits and the error carries its log tail.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let e = Gateway::start(gateway_config(&tmp.path().join("b"), port), site, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, GatewayError::StartFailed { .. }),
        "unexpected error: {msg}"
    );
    assert!(msg.contains("address already in use"), "{msg}");
}

/// A child process killed on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `acme` issuer against a local ACME CA: pebble, validating TLS-ALPN-01 on the gateway's
/// HTTPS port, with names resolved to 127.0.0.1 by pebble-challtestsrv's mock DNS.
#[test]
fn acme_issuer_with_pebble() {
    let servers = start_servers();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cert, key) = (dir.join("pebble.crt"), dir.join("pebble.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=pebble",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");

    let https_port = free_port();
    let (acme_port, mgmt_port, dns_port, chall_mgmt) =
        (free_port(), free_port(), free_port(), free_port());
    let _dns = Killed(
        Command::new("pebble-challtestsrv")
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .arg("-dns01")
            .arg(format!("127.0.0.1:{dns_port}"))
            .arg("-management")
            .arg(format!("127.0.0.1:{chall_mgmt}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run pebble-challtestsrv"),
    );
    let pebble_cfg = dir.join("pebble.json");
    std::fs::write(
        &pebble_cfg,
        serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": 1,
            "tlsPort": https_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }})
        .to_string(),
    )
    .unwrap();
    let pebble_log = dir.join("pebble.log");
    let _pebble = Killed(
        Command::new("pebble")
            .arg("-config")
            .arg(&pebble_cfg)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::fs::File::create(&pebble_log).unwrap())
            .stderr(std::fs::File::create(dir.join("pebble.err")).unwrap())
            .spawn()
            .expect("run pebble"),
    );
    // pebble's issuing root (random per run), from its management interface
    let pebble_root = dir.join("pebble-root.pem");
    wait_until("pebble serves its root", || {
        Command::new("curl")
            .args(["-sS", "--fail", "--noproxy", "*", "--max-time", "5"])
            .arg("--cacert")
            .arg(&cert)
            .arg("-o")
            .arg(&pebble_root)
            .arg(format!("https://127.0.0.1:{mgmt_port}/roots/0"))
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });

    let data = dir.join("gateway");
    let config = GatewayConfig {
        issuer: Issuer::Acme {
            ca_url: format!("https://127.0.0.1:{acme_port}/dir"),
            email: Some("ops@vms.test".into()),
            ca_root_pem_file: Some(cert.clone()),
        },
        ..gateway_config(&data, https_port)
    };
    let site = GatewaySite {
        api_domain: None,
        api_upstream: servers.vm2,
        ask_url: format!("http://{}/caddy/check", servers.ask),
        vm_domain: Some("vms.test".into()),
    };
    let routes = vec![
        ("good-vm".to_string(), servers.vm1),
        ("bad-vm".to_string(), servers.vm1),
    ];
    let gw = Gateway::start(config.clone(), site, &routes).expect("start caddy");
    let log = Gateway::log_path(&config);
    wait_for_body(
        "good-vm.vms.test",
        https_port,
        &pebble_root,
        "hello from vm one\n",
        &log,
    );
    assert!(curl("bad-vm.vms.test", https_port, &pebble_root).is_err());
    gw.stop();
    let plog = std::fs::read_to_string(&pebble_log).unwrap();
    assert!(plog.contains("good-vm.vms.test"), "pebble log:\n{plog}");
    assert!(
        plog.contains("set VALID"),
        "pebble validated the challenge:\n{plog}"
    );
    assert!(
        !plog.contains("bad-vm"),
        "no order for a refused name:\n{plog}"
    );
}
