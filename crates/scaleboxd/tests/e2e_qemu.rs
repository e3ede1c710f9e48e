//! The example app (`examples/shop`, built by its script into an OCI archive) on `scaleboxd up`
//! with real guests (QEMU; TCG on this machine), inside a network namespace this test creates.
//! Exec in an instance through the API and with the real `sb exec`, on a terminal (`-t`) and
//! off one (stdout and stderr passed through unchanged, exit code = the command's, 128+N when
//! signal N killed it, 124 after `--timeout`, 1 when it cannot start; with `--json` the result
//! object and still the command's exit code). With real clients through
//! the edge: TLS passthrough by SNI to the web process (the app serves its own certificate), a
//! raw TCP route, PROXY v2 on a route; a failing release command leaves the old release serving;
//! a rollout under a client loop fails no request; rollback; scale 1→3→1; a secrets update
//! restarts the instances and the new file is visible; `kill -9` of `up` (agent included)
//! mid-rollout converges with no duplicate or orphan VM; the edge keeps serving while the
//! control plane is down.

mod common;

use common::sb::{fails, ok, sb_binary, text};
use common::{Netns, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use scalebox_testkit::http::request;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "shop.example.test";
const API: &str = "127.0.0.1:17443";
const TLS_PORT: u16 = 18443;
const HTTP_PORT: u16 = 18080;
const PROXY_PORT: u16 = 17000;
/// The edge's admin listener (`/metrics`), inside the test's namespace.
const EDGE_ADMIN: &str = "127.0.0.1:17090";

struct World {
    ns: String,
    dir: PathBuf,
    init: PathBuf,
    db_url: String,
    token: String,
    image: PathBuf,
    digest: String,
    cert: PathBuf,
}

impl World {
    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap()
    }

    fn scaleboxd(&self, args: &[&str], log: &str) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_scaleboxd")])
            .args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("SCALEBOX_INIT_BIN", &self.init)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(self.log(log))
            .spawn()
            .unwrap();
        Proc(child)
    }

    fn up(&self) -> Proc {
        let d = self.dir.display();
        self.scaleboxd(
            &[
                "up",
                "--config",
                &format!("{d}/control.toml"),
                "--agent-config",
                &format!("{d}/agent.toml"),
                "--edge-config",
                &format!("{d}/edge.toml"),
            ],
            "up",
        )
    }

    fn in_ns(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .unwrap()
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for name in ["up", "edge"] {
            let t =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            out.push_str(&format!(
                "--- {name}.log\n{}\n",
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        out
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.token);
        let b = body.map(|b| b.to_string());
        let mut h = vec![("Authorization", auth.as_str())];
        if b.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        let r = request(
            API.parse().unwrap(),
            method,
            path,
            &h,
            b.as_deref().map(str::as_bytes),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_tail()));
        (r.status, r.json())
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        v
    }

    async fn wait_api(&self) {
        for _ in 0..600 {
            if let Ok(r) = request(API.parse().unwrap(), "GET", "/v1/health", &[], None).await
                && r.status == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the API did not come up\n{}", self.log_tail());
    }

    async fn status(&self) -> Value {
        self.ok(
            "GET",
            "/v1/orgs/default/apps/shop/envs/prod/status",
            None,
            200,
        )
        .await
    }

    async fn wait_status(&self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < Duration::from_secs(secs) {
            last = self.status().await;
            if pred(&last) {
                eprintln!("[e2e] {what}: after {:.1} s", start.elapsed().as_secs_f64());
                return last;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "timed out waiting for {what}; last status: {last:#}\n{}",
            self.log_tail()
        );
    }

    async fn release(&self, manifest: &str) -> i64 {
        self.ok(
            "POST",
            "/v1/orgs/default/apps/shop/releases",
            Some(json!({
                "image_ref": format!("oci-archive:{}", self.image.display()),
                "image_digest": self.digest,
                "manifest": manifest,
            })),
            201,
        )
        .await["number"]
            .as_i64()
            .unwrap()
    }

    async fn deploy(&self, release: i64) {
        self.ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/deploy",
            Some(json!({"release": release})),
            202,
        )
        .await;
    }
}

/// GET `/cgi-bin/info` through the edge's raw TCP route.
async fn info_raw() -> Result<String, String> {
    let r = request(
        format!("[::1]:{HTTP_PORT}").parse().unwrap(),
        "GET",
        "/cgi-bin/info",
        &[],
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    if r.status == 200 {
        Ok(r.text())
    } else {
        Err(format!("{}: {}", r.status, r.text()))
    }
}

async fn info() -> Option<String> {
    info_raw().await.ok()
}

async fn wait_info(w: &World, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut last = Err(String::new());
    for _ in 0..200 {
        last = info_raw().await;
        if let Ok(b) = &last
            && pred(b)
        {
            return b.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "the edge never served {what}; last answer: {last:?}\nstatus: {:#}\n{}",
        w.status().await,
        w.log_tail()
    );
}

fn ready(s: &Value, process: &str, n: u64, release: i64) -> bool {
    s["serving_release"] == release
        && s["processes"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["name"] == process && p["ready"] == n && p["running"] == n && p["desired"] == n
            })
        })
}

fn converged_on(s: &Value, release: i64, web: u64) -> bool {
    s["converged"] == true && ready(s, "web", web, release) && ready(s, "worker", 1, release)
}

fn live(s: &Value) -> usize {
    s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["desired"] == "run")
        .count()
}

#[test]
fn example_app_on_scaleboxd_up() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let init = scalebox_vmm::initramfs::build_static_init(&ws).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tdb = rt.block_on(scalebox_testkit::test_db());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();

    // The example app, built by its own script.
    let image = d.join("shop.tar");
    let out = Command::new(ws.join("examples/shop/build.sh"))
        .arg(&image)
        .arg(HOST)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let manifest = std::fs::read_to_string(ws.join("examples/shop/scalebox.toml")).unwrap();
    assert!(
        failing_of(&manifest) != manifest,
        "the example manifest sets APP_NAME"
    );

    std::fs::write(
        d.join("control.toml"),
        format!(
            "listen = \"{API}\"\ndata_dir = \"{}/data\"\n[vms]\nenabled = false\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "listen = \"127.0.0.1:17070\"\ndata_dir = \"{}/agent\"\n",
            d.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("edge.toml"),
        format!(
            "admin_addr = \"{EDGE_ADMIN}\"\nstate_dir = \"{}/edge\"\ndefault_ipv6_addr = \"::1\"\ndefault_ipv4_addr = \"127.0.0.1\"\n",
            d.display()
        ),
    )
    .unwrap();

    // The guest kernel comes from Debian's archive: fetch it here, outside the namespace.
    scalebox_vmm::kernel::ensure_kernel(&d.join("agent")).expect("fetch the guest kernel");

    let ns = Netns::create(
        format!("sbe2e{}", std::process::id()),
        vec![d.join("agent/vms")],
    );
    let mut w = World {
        ns: ns.name.clone(),
        dir: d.clone(),
        init,
        db_url: tdb.url.clone(),
        token: String::new(),
        image,
        digest,
        cert: d.join("shop.tar.cert.pem"),
    };

    // Everything below talks to addresses inside the namespace: run it on a thread that entered it.
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(&mut w));
    });
    drop(ns);
    drop(tdb);
}

async fn scenario(w: &mut World) {
    let mut up = w.up();
    w.wait_api().await;
    w.token = std::fs::read_to_string(w.dir.join("data/admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    w.ok(
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "shop"})),
        201,
    )
    .await;
    w.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs",
        Some(json!({"name": "prod"})),
        201,
    )
    .await;
    w.ok(
        "PATCH",
        "/v1/orgs/default/apps/shop/envs/prod/secrets",
        Some(json!({"set": {"GREETING": "hello"}})),
        201,
    )
    .await;
    for (kind, host, port, backend, pp) in [
        ("tls", Some(HOST), TLS_PORT, 8443, false),
        ("tcp", None, HTTP_PORT, 8080, false),
        ("tcp", None, PROXY_PORT, 7000, true),
    ] {
        w.ok(
            "POST",
            "/v1/orgs/default/routes",
            Some(
                json!({"app": "shop", "env": "prod", "kind": kind, "hostname": host,
                        "listener_port": port, "process_type": "web", "backend_port": backend,
                        "proxy_protocol_v2": pp}),
            ),
            201,
        )
        .await;
    }

    // Release 1: the release command runs, then web and worker become ready (the first boot
    // also fetches the guest kernel).
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/scalebox.toml"),
    )
    .unwrap();
    let r1 = w.release(&manifest).await;
    w.deploy(r1).await;
    w.wait_status("release 1 ready", 600, |s| converged_on(s, r1, 1))
        .await;
    let body = wait_info(w, "release 1", |b| b.contains("release=1")).await;
    assert!(
        body.contains("GREETING=hello"),
        "the secrets file is mounted: {body}"
    );

    // Exec inside the web instance, through the control plane and init's control channel.
    let r = w
        .ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/exec",
            Some(json!({"process": "web", "argv": ["cat", "/tmp/info"]})),
            200,
        )
        .await;
    assert!(r["stdout"].as_str().unwrap().contains("release=1"), "{r}");
    assert_eq!(r["exit_code"], 0, "{r}");
    let r = w
        .ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/exec",
            Some(json!({"process": "worker", "argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})),
            200,
        )
        .await;
    assert_eq!(
        (
            r["stdout"].as_str(),
            r["stderr"].as_str(),
            r["exit_code"].as_i64()
        ),
        (Some("out\n"), Some("err\n"), Some(3)),
        "{r}"
    );
    assert!(r["instance"].as_str().unwrap().starts_with("worker-"));
    let r = w
        .ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/exec",
            Some(json!({"argv": ["/no/such/program"]})),
            200,
        )
        .await;
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("/no/such/program")),
        "{r}"
    );

    // An interactive (tty) session through the control plane's upgrade endpoint.
    let (out, exit) = tty_session(w, &["sh"], &[b"stty size; echo tty-$((6*7)); exit 5\n"]).await;
    assert!(
        out.contains("40 100"),
        "the resize reached the terminal: {out:?}"
    );
    assert!(out.contains("tty-42"), "{out:?}");
    assert_eq!(exit.code, Some(5), "{out:?} {exit:?}");
    // The same with the real CLI on a real terminal (`script` gives it one).
    let sb = sb_binary();
    {
        let o = Command::new("ip")
            .args(["netns", "exec", &w.ns, "script", "-qec"])
            .arg(format!(
                "stty rows 33 cols 77; {} --app shop --env prod exec -t web -- sh -c 'stty size; exit 3'",
                sb.display()
            ))
            .arg("/dev/null")
            .env("SCALEBOX_URL", format!("http://{API}"))
            .env("SCALEBOX_TOKEN", &w.token)
            .env("HOME", &w.dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("33 77"),
            "sb exec -t sees the terminal size: {text:?} {o:?}"
        );
        assert_eq!(
            o.status.code(),
            Some(3),
            "exit code of the command: {text:?}"
        );
    }
    // And without a terminal (stdin, stdout and stderr are not one): the command's stdout and
    // stderr come out on sb's, unchanged (nothing added, not even a newline), and sb exits with
    // the command's exit code, 128+N when signal N killed it, 124 when it outran `--timeout`,
    // 1 (with the reason) when it could not start.
    {
        let cfg = w.dir.join("sbconfig");
        std::fs::create_dir_all(&cfg).unwrap();
        let sb_exec = |args: &[&str]| {
            Command::new(&sb)
                .args(["--app", "shop", "--env", "prod", "exec"])
                .args(args)
                .env("SCALEBOX_URL", format!("http://{API}"))
                .env("SCALEBOX_TOKEN", &w.token)
                .env("SCALEBOX_CONFIG_DIR", &cfg)
                .env_remove("SCALEBOX_JSON")
                .env_remove("SCALEBOX_ORG")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let o = sb_exec(&["web", "--", "cat", "/tmp/info"]);
        assert!(
            ok(&o).contains("release=1") && o.stderr.is_empty(),
            "{}",
            text(&o.stderr)
        );
        // scalebox-init turned TCP Fast Open on for every listener (the edge's SYNs carry data).
        let o = sb_exec(&["web", "--", "cat", "/proc/sys/net/ipv4/tcp_fastopen"]);
        assert_eq!(ok(&o).trim(), "1027", "{}", text(&o.stderr));
        // --json: the API's result object on stdout, nothing on stderr, and still the
        // command's exit code.
        let sb_exec_json = |args: &[&str]| {
            Command::new(&sb)
                .args(["--json", "--app", "shop", "--env", "prod", "exec"])
                .args(args)
                .env("SCALEBOX_URL", format!("http://{API}"))
                .env("SCALEBOX_TOKEN", &w.token)
                .env("SCALEBOX_CONFIG_DIR", &cfg)
                .env_remove("SCALEBOX_JSON")
                .env_remove("SCALEBOX_ORG")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let o = sb_exec_json(&["web", "--", "cat", "/tmp/info"]);
        let r: Value = serde_json::from_str(&ok(&o)).unwrap();
        assert!(
            r["stdout"]
                .as_str()
                .is_some_and(|s| s.contains("release=1"))
                && r["stderr"] == ""
                && r["exit_code"] == 0
                && r["instance"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("web-"))
                && o.stderr.is_empty(),
            "{r} {}",
            text(&o.stderr)
        );
        let o = sb_exec_json(&["worker", "--", "sh", "-c", "echo -n out; exit 3"]);
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (
                o.status.code(),
                r["stdout"].as_str(),
                r["exit_code"].as_i64()
            ),
            (Some(3), Some("out"), Some(3)),
            "{r} {}",
            text(&o.stderr)
        );
        let o = sb_exec(&[
            "worker",
            "--",
            "sh",
            "-c",
            "echo -n out; echo -n err >&2; exit 3",
        ]);
        assert_eq!(
            (o.status.code(), text(&o.stdout), text(&o.stderr)),
            (Some(3), "out".to_owned(), "err".to_owned())
        );
        let o = sb_exec(&["worker", "--", "sh", "-c", "echo doomed; kill -9 $$"]);
        assert_eq!(
            (o.status.code(), text(&o.stdout)),
            (Some(128 + 9), "doomed\n".to_owned()),
            "{}",
            text(&o.stderr)
        );
        let err = fails(
            &sb_exec(&["--timeout", "1", "worker", "--", "sleep", "5"]),
            124,
        );
        assert!(err.contains("did not finish within 1 s"), "{err}");
        // Many times: init once raced std's `spawn` to reap such a command's child, which then
        // hung the exec and crashed init (and the instance) now and then.
        for _ in 0..20 {
            let err = fails(&sb_exec(&["worker", "--", "/no/such/program"]), 1);
            assert!(
                err.contains("did not run") && err.contains("/no/such/program"),
                "{err}"
            );
        }
    }

    // Logs of the worker, streamed from its host agent through the control plane.
    let auth = format!("Bearer {}", w.token);
    let mut logs = String::new();
    for _ in 0..60 {
        logs = request(
            API.parse().unwrap(),
            "GET",
            "/v1/orgs/default/apps/shop/envs/prod/logs?process=worker",
            &[("Authorization", &auth)],
            None,
        )
        .await
        .unwrap()
        .text();
        if logs.contains("worker: tick") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(logs.contains("worker: tick"), "{logs}");

    // TLS passthrough by SNI: the client sees the app's own certificate and it verifies.
    let o = w.in_ns(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        &w.cert.display().to_string(),
        "--resolve",
        &format!("{HOST}:{TLS_PORT}:[::1]"),
        &format!("https://{HOST}:{TLS_PORT}/"),
    ]);
    assert!(
        o.status.success(),
        "curl over TLS: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains("s_server"), "openssl s_server's page: {page}");
    // An unknown SNI name is not routed.
    let o = w.in_ns(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-k",
        "--resolve",
        &format!("other.example.test:{TLS_PORT}:[::1]"),
        &format!("https://other.example.test:{TLS_PORT}/"),
    ]);
    assert!(!o.status.success(), "no route for another name");

    // PROXY v2: the echo service returns the header the edge prepended, then our bytes.
    let mut s = tokio::net::TcpStream::connect(format!("[::1]:{PROXY_PORT}"))
        .await
        .unwrap();
    s.write_all(b"ping\n").await.unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.ends_with(b"ping\n") && Instant::now() < deadline {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    assert!(
        got.starts_with(b"\r\n\r\n\0\r\nQUIT\n"),
        "PROXY v2 signature first: {got:?}"
    );
    assert_eq!(got[12], 0x21, "v2, PROXY command");
    assert_eq!(got[13], 0x21, "TCP over IPv6");
    assert!(got.ends_with(b"ping\n"));
    drop(s);
    // That connection's PROXY v2 header rode in the SYN: the TLS connection before it fetched
    // the guest's TCP Fast Open cookie, and scalebox-init turned Fast Open on for every listener.
    let o = w.in_ns(&["curl", "-sS", &format!("http://{EDGE_ADMIN}/metrics")]);
    let metrics = String::from_utf8_lossy(&o.stdout);
    let fast_open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edge_backend_fast_open_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(fast_open >= 1.0, "edge metrics:\n{metrics}");

    // Release 2's release command fails: nothing is replaced, release 1 keeps serving.
    let r2 = w.release(&failing_of(&manifest)).await;
    w.deploy(r2).await;
    let s = w
        .wait_status("release 2 failed", 300, |s| {
            s["deployment"]["state"] == "failed"
        })
        .await;
    let reason = s["deployment"]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("exit code 1"), "{reason}");
    assert!(
        reason.contains("failing on purpose"),
        "last output in the reason: {reason}"
    );
    assert!(converged_on_serving(&s, r1), "{s:#}");
    assert!(info().await.unwrap().contains("release=1"));

    // Release 3 rolls out while a client loop sends requests through the edge: none fails.
    let r3 = w
        .release(&manifest.replace("APP_NAME = \"shop\"", "APP_NAME = \"shop-v3\""))
        .await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let client = tokio::spawn(async move {
        let (mut ok, mut failed, mut saw) = (0u32, Vec::new(), std::collections::BTreeSet::new());
        while !*stop_rx.borrow() {
            match info().await {
                Some(b) => {
                    ok += 1;
                    if let Some(r) = b.split_whitespace().find(|t| t.starts_with("release=")) {
                        saw.insert(r.to_owned());
                    }
                }
                None => failed.push(Instant::now()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ok, failed, saw)
    });
    w.deploy(r3).await;
    w.wait_status("release 3 rolled out", 600, |s| converged_on(s, r3, 1))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send(true).unwrap();
    let (ok, failed, saw) = client.await.unwrap();
    eprintln!(
        "[e2e] rollout client loop: {ok} ok, {} failed, saw {saw:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed during the rollout",
        failed.len()
    );
    assert!(
        saw.contains("release=1") && saw.contains("release=3"),
        "{saw:?}"
    );

    // Rollback to release 1: no rebuild, its release command already ran for this env.
    w.deploy(r1).await;
    w.wait_status("rolled back to 1", 600, |s| converged_on(s, r1, 1))
        .await;
    wait_info(w, "release 1 after rollback", |b| b.contains("release=1")).await;

    // Scale web 1 → 3 → 1.
    let scale = |n: u64| json!({"scales": {"web": n}});
    w.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(scale(3)),
        202,
    )
    .await;
    w.wait_status("3 web instances", 600, |s| converged_on(s, r1, 3))
        .await;
    w.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(scale(1)),
        202,
    )
    .await;
    let s = w
        .wait_status("1 web instance", 300, |s| converged_on(s, r1, 1))
        .await;
    assert_eq!(live(&s), 2);

    // A secrets update restarts the instances with the new file.
    w.ok(
        "PATCH",
        "/v1/orgs/default/apps/shop/envs/prod/secrets",
        Some(json!({"set": {"GREETING": "bonjour"}})),
        201,
    )
    .await;
    w.wait_status("secrets rollout", 600, |s| {
        s["deployment"]["cause"] == "secrets" && converged_on(s, r1, 1)
    })
    .await;
    wait_info(w, "the new secret", |b| b.contains("GREETING=bonjour")).await;

    // kill -9 of `up` (control plane, agent and edge) in the middle of a rollout: the next
    // start converges, with exactly one VM per desired instance. The rollout is started with
    // `sb deploy --image` (release 4: the digest is read from the archive).
    let sb = sb_binary();
    let r3 = {
        let o = Command::new("ip")
            .args(["netns", "exec", &w.ns])
            .arg(&sb)
            .args([
                "--app",
                "shop",
                "--env",
                "prod",
                "--json",
                "deploy",
                "--no-wait",
                "--image",
            ])
            .arg(format!("oci-archive:{}", w.image.display()))
            .arg("--manifest")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop/scalebox.toml"))
            .env("SCALEBOX_URL", format!("http://{API}"))
            .env("SCALEBOX_TOKEN", &w.token)
            .env("HOME", &w.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "sb deploy --image: {o:?}");
        let releases = w
            .ok("GET", "/v1/orgs/default/apps/shop/releases", None, 200)
            .await;
        let newest = releases["items"]
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|r| r["number"].as_i64())
            .unwrap()
            .clone();
        assert_eq!(newest["image_digest"], w.digest.as_str(), "{newest}");
        newest["number"].as_i64().unwrap()
    };
    w.wait_status("the rollout started", 300, |s| {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["release"] == r3 && i["desired"] == "run")
    })
    .await;
    up.kill9();
    up = w.up();
    w.wait_api().await;
    let s = w
        .wait_status("converged after kill -9", 600, |s| converged_on(s, r3, 1))
        .await;
    // Instances replaced before the kill stop within their grace period; then exactly the
    // desired VMs remain.
    let mut vms = Vec::new();
    for _ in 0..60 {
        vms = scalebox_vmm::qemu::list_running_in(&w.dir.join("agent/vms"));
        if vms.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s2 = w.status().await;
    assert_eq!(live(&s2), 2, "{s2:#}");
    let mut want: Vec<String> = s2["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["desired"] == "run")
        .map(|i| format!("{}-g1", i["id"].as_str().unwrap()))
        .collect();
    let mut have: Vec<String> = vms.iter().map(|(k, _)| k.clone()).collect();
    want.sort();
    have.sort();
    assert_eq!(
        have, want,
        "one VM per desired instance, no duplicate or orphan; {s:#}"
    );

    // The edge keeps serving while the control plane is down: stop `up` (VMs keep running),
    // start only the edge, with its persisted table and no control plane to talk to.
    up.term();
    let edge = w.scaleboxd(
        &[
            "edge",
            "--config",
            &format!("{}/edge.toml", w.dir.display()),
            "--control-credential",
            &format!("{}/agent/control.json", w.dir.display()),
        ],
        "edge",
    );
    let body = wait_info(w, "the last release with no control plane", |b| {
        b.contains(&format!("release={r3} "))
    })
    .await;
    assert!(body.contains("GREETING=bonjour"), "{body}");
    edge.term();

    // Clean up through the platform: stop the env and wait for its VMs to go.
    let up = w.up();
    w.wait_api().await;
    w.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/stop",
        None,
        202,
    )
    .await;
    w.wait_status("stopped", 300, |s| live(s) == 0).await;
    for _ in 0..100 {
        if scalebox_vmm::qemu::list_running_in(&w.dir.join("agent/vms")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(scalebox_vmm::qemu::list_running_in(&w.dir.join("agent/vms")).is_empty());
    up.term();
}

/// Runs `argv` on a terminal in the web instance through `GET …/attach` (upgrade), resizing it
/// to 40×100 first and typing `input`; returns the output and how it ended.
async fn tty_session(
    w: &World,
    argv: &[&str],
    input: &[&[u8]],
) -> (String, scalebox_types::exec_frames::Exit) {
    use scalebox_types::exec_frames::{Decoder, Frame, Start, encode};
    let mut s = tokio::net::TcpStream::connect(API).await.unwrap();
    let req = format!(
        "GET /v1/orgs/default/apps/shop/envs/prod/attach?process=web HTTP/1.1\r\nHost: {API}\r\nAuthorization: Bearer {}\r\nConnection: Upgrade\r\nUpgrade: scalebox-exec\r\n\r\n",
        w.token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut msg = encode(&Frame::Start(Start {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        rows: 24,
        cols: 80,
    }));
    msg.extend(encode(&Frame::Resize {
        rows: 40,
        cols: 100,
    }));
    s.write_all(&msg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in input {
        s.write_all(&encode(&Frame::Stdin(i.to_vec())))
            .await
            .unwrap();
    }
    let mut dec = Decoder::default();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let exit = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            while let Some(f) = dec.next_frame().unwrap() {
                match f {
                    Frame::Output(d) => out.extend(d),
                    Frame::Exit(e) => return e,
                    _ => {}
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "session closed early: {}",
                String::from_utf8_lossy(&out)
            );
            dec.push(&buf[..n]);
        }
    })
    .await
    .expect("the session ends");
    (String::from_utf8_lossy(&out).into_owned(), exit)
}

fn failing_of(manifest: &str) -> String {
    manifest.replace(
        "APP_NAME = \"shop\"",
        "APP_NAME = \"shop\"\nMIGRATE_EXIT = \"1\"",
    )
}

fn converged_on_serving(s: &Value, release: i64) -> bool {
    ready(s, "web", 1, release) && ready(s, "worker", 1, release)
}
