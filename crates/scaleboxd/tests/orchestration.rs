//! `scaleboxd up` (control plane, agent, edge in one process) with the dev/test process backend,
//! against a real Postgres: deploys converge, the edge routes to ready instances, a failing
//! release command leaves the old release serving, scale up/down, secrets updates roll the
//! instances, rollback, stop/start, and an agent restart converges without duplicates.
//!
//! The process backend runs instances as local processes (no VM), so this test checks the
//! orchestration logic quickly; `orchestration_qemu.rs` checks the same flows with microVMs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use scalebox_testkit::http::request;
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Up {
    child: Child,
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Env {
    dir: tempfile::TempDir,
    api: std::net::SocketAddr,
    db_url: String,
    token: String,
    edge_port: u16,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Instances of the process backend are plain processes started from this directory.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.dir.path())
            .status();
    }
}

impl Env {
    fn start(&self) -> Up {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join(format!(
            "up-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        )))
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_scaleboxd"))
            .args(["up", "--backend", "process", "--config"])
            .arg(d.join("control.toml"))
            .arg("--agent-config")
            .arg(d.join("agent.toml"))
            .arg("--edge-config")
            .arg(d.join("edge.toml"))
            .env("DATABASE_URL", &self.db_url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Up { child }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.token);
        let b = body.map(|b| b.to_string());
        let mut headers = vec![("Authorization", auth.as_str())];
        if b.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let r = request(
            self.api,
            method,
            path,
            &headers,
            b.as_deref().map(str::as_bytes),
        )
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\nlog tail:\n{}", self.log_tail()));
        (r.status, r.json())
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        v
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

    /// Waits until the status satisfies `pred`, printing the last status on timeout.
    async fn wait_status(&self, what: &str, secs: u64, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..secs * 5 {
            last = self.status().await;
            if pred(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "timed out waiting for {what}; last status: {last:#}\nlog tail:\n{}",
            self.log_tail()
        );
    }

    /// The last lines of the `scaleboxd up` logs of this test.
    fn log_tail(&self) -> String {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("up-"))
            .map(|e| e.path())
            .collect();
        files.sort();
        let logs: String = files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n");
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// GET / through the edge's TCP route.
    async fn via_edge(&self) -> Option<String> {
        let addr = format!("[::1]:{}", self.edge_port).parse().unwrap();
        let r = request(addr, "GET", "/", &[], None).await.ok()?;
        (r.status == 200).then(|| r.text())
    }

    async fn release(&self, manifest: &str) -> i64 {
        let img = self.dir.path().join("image.bin");
        let digest = format!("sha256:{}", hex_sha256(&std::fs::read(&img).unwrap()));
        let v = self
            .ok(
                "POST",
                "/v1/orgs/default/apps/shop/releases",
                Some(json!({
                    "image_ref": format!("archive:{}", img.display()),
                    "image_digest": digest,
                    "manifest": manifest,
                })),
                201,
            )
            .await;
        v["number"].as_i64().unwrap()
    }
}

fn hex_sha256(b: &[u8]) -> String {
    use std::fmt::Write;
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    let mut s = String::new();
    write!(
        s,
        "{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
    .unwrap();
    s
}

const SERVER: &str = r#"
import os, socket, sys, http.server, socketserver
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("release=%s greeting=%s instance=%s\n" % (os.environ.get("SCALEBOX_RELEASE"),
                os.environ.get("GREETING", ""), os.environ.get("SCALEBOX_INSTANCE"))).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
print("serving", flush=True)
S(("127.0.0.1", port), H).serve_forever()
"#;

fn manifest(server: &std::path::Path, port: u16, release_cmd: &str) -> String {
    format!(
        r#"
schema_version = 1
[secrets]
as_env = true
[release]
command = ["sh", "-c", "{release_cmd}"]
timeout_s = 60
[processes.web]
command = ["python3", "{server}", "{port}"]
ports = [{port}]
stop_grace_s = 2
[processes.web.health]
kind = "http"
path = "/"
interval_s = 1
timeout_s = 1
grace_s = 0
[processes.worker]
command = ["sh", "-c", "echo working; sleep 3600"]
stop_grace_s = 1
"#,
        server = server.display()
    )
}

fn ready(s: &Value, process: &str, n: u64, release: i64) -> bool {
    s["serving_release"] == release
        && s["processes"].as_array().unwrap().iter().any(|p| {
            p["name"] == process && p["ready"] == n && p["running"] == n && p["desired"] == n
        })
}

fn live_ids(s: &Value) -> Vec<String> {
    s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["desired"] == "run" && i["kind"] == "service")
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_scale_secrets_rollback_and_agent_restart() {
    let tdb = scalebox_testkit::test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api_port = free_port();
    let (agent_port, edge_admin, edge_port, web_port) =
        (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        d.join("control.toml"),
        format!(
            "listen = \"127.0.0.1:{api_port}\"\ndata_dir = \"{}\"\nhost_lost_after_s = 30\n",
            d.join("data").display()
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
            "admin_addr = \"127.0.0.1:{edge_admin}\"\nstate_dir = \"{}\"\ndefault_ipv6_addr = \"::1\"\ndefault_ipv4_addr = \"127.0.0.1\"\n",
            d.join("edge").display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("image.bin"), b"opaque image for the process backend").unwrap();
    let server = d.join("server.py");
    std::fs::write(&server, SERVER).unwrap();

    let mut env = Env {
        dir,
        api: format!("127.0.0.1:{api_port}").parse().unwrap(),
        db_url: tdb.url.clone(),
        token: String::new(),
        edge_port,
    };
    let mut up = Some(env.start());
    let token_path = env.dir.path().join("data/admin-token");
    for _ in 0..300 {
        if let Ok(t) = std::fs::read_to_string(&token_path)
            && let Ok(r) = request(env.api, "GET", "/v1/health", &[], None).await
            && r.status == 200
        {
            env.token = t.trim().to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!env.token.is_empty(), "scaleboxd up came up");

    // The machine registered itself as a host.
    let hosts = env.ok("GET", "/v1/hosts", None, 200).await;
    assert_eq!(hosts["items"].as_array().unwrap().len(), 1, "{hosts}");

    env.ok(
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "shop"})),
        201,
    )
    .await;
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs",
        Some(json!({"name": "prod"})),
        201,
    )
    .await;
    env.ok(
        "PATCH",
        "/v1/orgs/default/apps/shop/envs/prod/secrets",
        Some(json!({"set": {"GREETING": "hello"}})),
        201,
    )
    .await;
    env.ok(
        "POST",
        "/v1/orgs/default/routes",
        Some(
            json!({"app": "shop", "env": "prod", "kind": "tcp", "listener_port": edge_port,
                    "process_type": "web", "backend_port": web_port}),
        ),
        201,
    )
    .await;

    // Deploying before any release is a clear conflict.
    let (s, v) = env
        .call(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/deploy",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 409, "{v}");

    // Release 1: release command succeeds, web and worker become ready, the edge routes.
    let r1 = env
        .release(&manifest(&server, web_port, "echo migrated"))
        .await;
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({})),
        202,
    )
    .await;
    let s = env
        .wait_status("release 1 serving", 60, |s| {
            ready(s, "web", 1, r1) && ready(s, "worker", 1, r1)
        })
        .await;
    assert_eq!(s["converged"], true, "{s:#}");
    let mut body = None;
    for _ in 0..50 {
        body = env.via_edge().await;
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = body.expect("the edge routes to the ready web instance");
    assert!(body.contains("release=1 greeting=hello"), "{body}");

    // Logs of the environment, streamed from the agent through the control plane.
    let mut logs = String::new();
    for _ in 0..50 {
        let auth = format!("Bearer {}", env.token);
        let r = request(
            env.api,
            "GET",
            "/v1/orgs/default/apps/shop/envs/prod/logs?process=worker",
            &[("Authorization", &auth)],
            None,
        )
        .await
        .unwrap();
        logs = r.text();
        if logs.contains("working") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first: Value = serde_json::from_str(logs.lines().next().unwrap_or("{}")).unwrap();
    assert_eq!(first["process"], "worker", "{logs}");
    assert!(
        first["instance"].as_str().unwrap().starts_with("worker-"),
        "{logs}"
    );
    assert_eq!(first["line"], "working", "{logs}");
    let (st, v) = env
        .call(
            "GET",
            "/v1/orgs/default/apps/shop/envs/prod/logs?process=nope",
            None,
        )
        .await;
    assert_eq!(st, 404, "{v}");

    // The dev process backend cannot run commands inside instances: a clear refusal, 422 (what
    // the host offers, not a server fault).
    let (st, v) = env
        .call(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/exec",
            Some(json!({"process": "worker", "argv": ["true"]})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["code"], "exec_unsupported", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot run commands"),
        "{v}"
    );

    // Release 2 whose release command fails: nothing is replaced, release 1 keeps serving.
    let r2 = env
        .release(&manifest(&server, web_port, "echo boom >&2; exit 3"))
        .await;
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({})),
        202,
    )
    .await;
    let s = env
        .wait_status("the failed release command reported", 60, |s| {
            s["deployment"]["state"] == "failed"
        })
        .await;
    let reason = s["deployment"]["reason"].as_str().unwrap();
    assert!(reason.contains("release command failed"), "{reason}");
    assert!(reason.contains("exit code 3"), "{reason}");
    assert!(
        reason.contains("boom"),
        "last output is in the reason: {reason}"
    );
    assert_eq!(s["serving_release"], r1);
    assert!(ready(&s, "web", 1, r1), "{s:#}");
    assert!(env.via_edge().await.unwrap().contains("release=1"));
    assert_eq!(s["release"], r2);

    // Release 3 rolls out; the instances are replaced, and the edge serves release 3.
    let before = live_ids(&env.status().await);
    let r3 = env
        .release(&manifest(&server, web_port, "echo migrated again"))
        .await;
    let (st, v) = env
        .call(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/deploy",
            Some(json!({"max_surge": 0, "max_unavailable": 0})),
        )
        .await;
    assert_eq!(st, 400, "a rollout that can never progress is refused: {v}");
    // This one replaces in place (no surge, one instance unavailable at a time).
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({"max_surge": 0, "max_unavailable": 1})),
        202,
    )
    .await;
    let s = env
        .wait_status("release 3 serving", 60, |s| {
            ready(s, "web", 1, r3) && ready(s, "worker", 1, r3) && s["converged"] == true
        })
        .await;
    let after = live_ids(&s);
    assert!(
        after.iter().all(|i| !before.contains(i)),
        "{before:?} {after:?}"
    );

    // Scale web 1 → 3 → 1.
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(json!({"scales": {"web": 3}})),
        202,
    )
    .await;
    env.wait_status("3 web instances", 60, |s| ready(s, "web", 3, r3))
        .await;
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(json!({"scales": {"web": 1}})),
        202,
    )
    .await;
    env.wait_status("1 web instance", 60, |s| {
        ready(s, "web", 1, r3) && s["converged"] == true
    })
    .await;
    let (s, v) = env
        .call(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/scale",
            Some(json!({"scales": {"nope": 1}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // A secrets update restarts the instances with the new value.
    let before = live_ids(&env.status().await);
    env.ok(
        "PATCH",
        "/v1/orgs/default/apps/shop/envs/prod/secrets",
        Some(json!({"set": {"GREETING": "bonjour"}})),
        201,
    )
    .await;
    let s = env
        .wait_status("secrets rollout", 60, |s| {
            s["deployment"]["cause"] == "secrets"
                && s["deployment"]["state"] == "succeeded"
                && ready(s, "web", 1, r3)
        })
        .await;
    assert!(live_ids(&s).iter().all(|i| !before.contains(i)));
    let mut greeted = false;
    for _ in 0..50 {
        if env
            .via_edge()
            .await
            .is_some_and(|b| b.contains("greeting=bonjour"))
        {
            greeted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(greeted, "the edge serves an instance with the new secret");

    // Another secrets version right after: it rolls again too.
    env.ok(
        "PATCH",
        "/v1/orgs/default/apps/shop/envs/prod/secrets",
        Some(json!({"set": {"GREETING": "salut"}})),
        201,
    )
    .await;
    env.wait_status("a second secrets rollout in a row", 60, |s| {
        s["deployment"]["cause"] == "secrets"
            && s["deployment"]["secrets_version"] == 3
            && s["deployment"]["state"] == "succeeded"
    })
    .await;

    // Rollback to release 1 (no rebuild).
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({"release": r1})),
        202,
    )
    .await;
    env.wait_status("rolled back to release 1", 60, |s| {
        ready(s, "web", 1, r1) && s["converged"] == true
    })
    .await;

    // Scale, then a secrets update again after the rollback.
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(json!({"scales": {"web": 2}})),
        202,
    )
    .await;
    env.wait_status("2 web instances", 60, |s| ready(s, "web", 2, r1))
        .await;
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(json!({"scales": {"web": 1}})),
        202,
    )
    .await;
    env.wait_status("1 web instance", 60, |s| {
        ready(s, "web", 1, r1) && s["converged"] == true
    })
    .await;
    env.ok(
        "PATCH",
        "/v1/orgs/default/apps/shop/envs/prod/secrets",
        Some(json!({"set": {"GREETING": "hallo"}})),
        201,
    )
    .await;
    env.wait_status("second secrets rollout", 60, |s| {
        s["deployment"]["cause"] == "secrets"
            && s["deployment"]["state"] == "succeeded"
            && s["deployment"]["secrets_version"] == 4
            && ready(s, "web", 1, r1)
    })
    .await;

    // Kill the whole `up` process (agent included) and start it again: same instances, no
    // duplicates, converged.
    let before = live_ids(&env.status().await);
    let mut u = up.take().unwrap();
    u.child.kill().unwrap();
    u.child.wait().unwrap();
    std::mem::forget(u);
    up = Some(env.start());
    for _ in 0..300 {
        if let Ok(r) = request(env.api, "GET", "/v1/health", &[], None).await
            && r.status == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = env
        .wait_status("converged after restart", 60, |s| {
            ready(s, "web", 1, r1) && s["converged"] == true
        })
        .await;
    let mut a = live_ids(&s);
    let mut b = before.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same instances are adopted, none duplicated");

    // Stop: nothing runs; start: it comes back.
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/stop",
        None,
        202,
    )
    .await;
    env.wait_status("stopped", 60, |s| {
        live_ids(s).is_empty() && s["converged"] == true
    })
    .await;
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/start",
        None,
        202,
    )
    .await;
    env.wait_status("started", 60, |s| {
        ready(s, "web", 1, r1) && s["converged"] == true
    })
    .await;

    let deps = env
        .ok(
            "GET",
            "/v1/orgs/default/apps/shop/envs/prod/deployments",
            None,
            200,
        )
        .await;
    assert!(deps["items"].as_array().unwrap().len() >= 5, "{deps}");
    env.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/stop",
        None,
        202,
    )
    .await;
    env.wait_status("stopped at the end", 60, |s| live_ids(s).is_empty())
        .await;
    drop(up);
}
