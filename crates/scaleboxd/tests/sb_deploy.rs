//! The real `sb` binary against `scaleboxd up --backend process` (real Postgres, instances as
//! local processes): deploy waits for the outcome, status and why, scale, a failing release
//! command exits 7 with the reason, a wait that times out exits 7, rollback, stop/start, the
//! deployments list, hosts list/drain/undrain (human and `--json`), join tokens, and the `--json` forms; `sb exec`
//! refused by this backend (no guests) after one request, never retried, and `sb status` (the
//! VM sandbox summary) refused on a server without VM sandboxes. `sb exec` and `sb status`
//! against real guests are in e2e_qemu and e2e_vms.
//!
//! `sb` belongs to another package, so cargo does not build it for this test: it is looked up
//! next to `scaleboxd` in the target directory. `cargo test --workspace` builds both; with
//! `cargo test -p scaleboxd`, build it first (`cargo build -p scalebox-cli`).

mod common;

use common::sb::{Sb, fails, json, ok, sb_binary, text};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `scaleboxd up` and the instances its process backend started, stopped when dropped.
struct Cluster {
    up: Child,
    /// This test's private directory: the working directory of every instance process.
    root: PathBuf,
    log: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.up.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(self.up.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.up.kill();
        let _ = self.up.wait();
        // Instances outlive the agent by design, and a stopped instance's workload can outlive
        // its supervisor (the process backend signals the workload's shell only). They all run
        // in a directory under `root`, unique to this test: end those processes, by pid.
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(&root))
            {
                // SAFETY: signalling a process this test's agent started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn log_tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `sb` against `scaleboxd up`, with that server's log for failure messages.
struct Up {
    sb: Sb,
    /// `scaleboxd up`'s log, shown when a wait times out.
    log: PathBuf,
}

impl std::ops::Deref for Up {
    type Target = Sb;
    fn deref(&self) -> &Sb {
        &self.sb
    }
}

impl Up {
    fn status(&self) -> Value {
        json(&self.run(&["--json", "ps"]))
    }

    /// Polls `sb --json ps` until `pred` holds.
    fn wait_status(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {s:#}\nlog tail:\n{}",
                log_tail(&self.log)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

const SERVER: &str = r#"
import socket, sys, http.server, socketserver
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
S(("127.0.0.1", port), H).serve_forever()
"#;

fn manifest(server: &Path, port: u16, release_cmd: &str) -> String {
    format!(
        r#"schema_version = 1
[release]
command = ["sh", "-c", "{release_cmd}"]
timeout_s = 60
[processes.web]
command = ["python3", "{server}", "{port}"]
ports = [{port}]
stop_grace_s = 1
[processes.web.health]
kind = "http"
path = "/"
interval_s = 1
timeout_s = 1
grace_s = 0
[processes.worker]
command = ["sh", "-c", "echo worker-started; sleep 3600"]
stop_grace_s = 1
"#,
        server = server.display()
    )
}

/// `process` has `n` desired, ready and running instances and `release` serves.
fn ready(s: &Value, process: &str, n: u64, release: i64) -> bool {
    s["serving_release"] == release
        && s["processes"].as_array().unwrap().iter().any(|p| {
            p["name"] == process && p["desired"] == n && p["ready"] == n && p["running"] == n
        })
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
fn sb_deploys_and_runs_an_environment() {
    let bin = sb_binary();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tdb = rt.block_on(scalebox_testkit::test_db());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (api_port, agent_port, edge_admin, web_port) =
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
    // A real OCI archive (sb uploads it; the control plane checks its digest), whose content
    // the process backend does not use.
    let root = d.join("image-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hello"), b"hi").unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let digest = scalebox_image::build::write_oci_layout(
        &d.join("image-layout"),
        &[layer],
        &scalebox_image::ImageConfig::default(),
        "latest",
    )
    .unwrap();
    let image = d.join("image.tar");
    scalebox_image::build::write_oci_archive(&d.join("image-layout"), &image).unwrap();
    let server = d.join("server.py");
    std::fs::write(&server, SERVER).unwrap();
    let cfg = d.join("sb");
    std::fs::create_dir_all(&cfg).unwrap();

    let up = Command::new(env!("CARGO_BIN_EXE_scaleboxd"))
        .args(["up", "--backend", "process", "--config"])
        .arg(d.join("control.toml"))
        .arg("--agent-config")
        .arg(d.join("agent.toml"))
        .arg("--edge-config")
        .arg(d.join("edge.toml"))
        .env("DATABASE_URL", &tdb.url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let cluster = Cluster {
        up,
        root: d.to_path_buf(),
        log: d.join("up.log"),
    };
    let mut sb = Up {
        sb: Sb {
            bin,
            url: format!("http://127.0.0.1:{api_port}"),
            token: String::new(),
            cfg,
        },
        log: d.join("up.log"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(t) = std::fs::read_to_string(d.join("data/admin-token")) {
            sb.sb.token = t.trim().to_owned();
            if sb.run(&["whoami"]).status.success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "scaleboxd up did not come up:\n{}",
            log_tail(&cluster.log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sb.run(&["deploy", "--help"]).status.success(),
        "{} is stale: rebuild it (`cargo build -p scalebox-cli`)",
        sb.bin.display()
    );

    // The machine registered itself as a host.
    let hosts = json(&sb.run(&["--json", "hosts", "list"]));
    let host = hosts["items"][0]["name"].as_str().unwrap().to_owned();
    let list = ok(&sb.run(&["hosts", "list"]));
    assert!(list.starts_with("NAME") && list.contains(&host), "{list}");

    ok(&sb.run(&["apps", "create", "shop"]));
    ok(&sb.run(&["envs", "create", "prod"]));
    let release = |cmd: &str, n: i64| {
        let m = d.join(format!("scalebox-{n}.toml"));
        std::fs::write(&m, manifest(&server, web_port, cmd)).unwrap();
        let image_ref = format!("archive:{}", image.display());
        let m = m.to_str().unwrap();
        let args = [
            "--json",
            "releases",
            "create",
            "--image",
            &image_ref,
            "--digest",
            &digest,
            "--manifest",
            m,
        ];
        assert_eq!(json(&sb.run(&args))["number"], n);
    };

    // Nothing to deploy or roll back yet: clear conflicts.
    assert!(fails(&sb.run(&["deploy"]), 4).contains("no release yet"));
    assert!(fails(&sb.run(&["rollback"]), 4).contains("nothing has served"));
    assert!(ok(&sb.run(&["why"])).contains("nothing deployed yet"));

    // Release 1: deploy waits until it serves.
    release("echo migrated", 1);
    let o = sb.run(&["deploy"]);
    assert!(
        ok(&o).contains("deployment succeeded: release 1 serving"),
        "{}",
        text(&o.stdout)
    );
    let progress = text(&o.stderr);
    assert!(
        progress.starts_with("Deploying release 1 to shop/prod (deployment "),
        "{progress}"
    );
    assert!(
        !progress.contains('\r'),
        "no in-place updates off a terminal"
    );
    sb.wait_status("release 1 converged", |s| s["converged"] == true);
    // Logs: the worker's output as lines, and as NDJSON records with `--json`.
    let mut logs = String::new();
    for _ in 0..50 {
        logs = ok(&sb.run(&["logs", "worker"]));
        if logs.contains("worker-started") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(logs.contains("worker-started"), "sb logs worker:\n{logs}");
    let nd = ok(&sb.run(&["--json", "logs", "worker"]));
    let rec: Value = serde_json::from_str(
        nd.lines()
            .find(|l| l.contains("worker-started"))
            .unwrap_or_else(|| panic!("no record in:\n{nd}")),
    )
    .unwrap();
    assert!(rec.is_object(), "{rec}");
    // The process backend runs no guests, so no commands inside instances: `sb exec` exits 4
    // (422 from the control plane, not a server error) with the agent's reason, after asking
    // once (exec is not deduplicated: a retry would run the command again; the control plane
    // logs each refusal).
    let err = fails(&sb.run(&["exec", "worker", "--", "true"]), 4);
    assert!(
        err.contains("this backend cannot run commands inside instances"),
        "{err}"
    );
    let asked = std::fs::read_to_string(&sb.log)
        .unwrap()
        .matches("exec refused by the host agent")
        .count();
    assert_eq!(asked, 1, "sb exec was sent {asked} times");
    // `sb status` summarises the server's VM sandboxes, which `up --backend process` does not
    // run: a clear not-found.
    let err = fails(&sb.run(&["status"]), 3);
    assert!(err.contains("VM sandboxes are not enabled"), "{err}");
    let st = ok(&sb.run(&["ps"]));
    for want in [
        "1 promoted, 1 serving",
        "running, converged",
        ": succeeded",
        "PROCESS",
        "INSTANCE",
        "worker",
        &host,
    ] {
        assert!(st.contains(want), "{want:?} in:\n{st}");
    }
    assert_eq!(ok(&sb.run(&["why"])), "converged: nothing to explain\n");
    let why = json(&sb.run(&["--json", "why"]));
    assert_eq!(
        (
            why["converged"].as_bool(),
            why["reasons"].as_array().map(Vec::len)
        ),
        (Some(true), Some(0))
    );

    // Scale: bad pairs are usage errors, unknown process types are refused by the server.
    assert!(fails(&sb.run(&["scale", "web"]), 2).contains("PROCESS=COUNT"));
    assert!(fails(&sb.run(&["scale", "web=two"]), 2).contains("whole number"));
    assert!(fails(&sb.run(&["scale", "nope=1"]), 1).contains("not in the deployed release"));
    let v = json(&sb.run(&["--json", "scale", "web=2"]));
    assert_eq!(v["scales"]["web"], 2);
    sb.wait_status("2 web instances", |s| ready(s, "web", 2, 1));

    // Release 2's release command fails: exit 7 with the reason; release 1 keeps serving.
    release("echo boom >&2; exit 3", 2);
    let err = fails(&sb.run(&["deploy"]), 7);
    assert!(
        err.contains("deployment of release 2 failed: release command failed")
            && err.contains("exit code 3"),
        "{err}"
    );
    let why = ok(&sb.run(&["why"]));
    assert!(why.contains("release command failed"), "{why}");
    assert!(ok(&sb.run(&["ps"])).contains("2 promoted, 1 serving"));
    // --no-wait returns at once.
    let started = json(&sb.run(&["--json", "deploy", "--release", "2", "--no-wait"]));
    assert_eq!(started["release"], 2);
    let id = started["deployment"].as_str().unwrap().to_owned();
    sb.wait_status("the second deployment of release 2 failed", |s| {
        s["deployment"]["id"] == id.as_str() && s["deployment"]["state"] == "failed"
    });

    // Release 3: a wait that times out exits 7; the deployment goes on server-side.
    release("echo migrated again", 3);
    let err = fails(&sb.run(&["deploy", "--timeout", "0"]), 7);
    assert!(
        err.contains("gave up waiting")
            && err.contains("goes on server-side")
            && err.contains("sb ps"),
        "{err}"
    );
    sb.wait_status("release 3 serving", |s| {
        ready(s, "web", 2, 3) && s["converged"] == true
    });
    // Rollback goes to the newest older release that served (1; 2 failed).
    let o = sb.run(&["rollback"]);
    assert!(ok(&o).contains("release 1 serving"), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).starts_with("Rolling back shop/prod from release 3 to release 1"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        fails(&sb.run(&["rollback"]), 4).contains("no release older than the serving release 1")
    );
    // With --json, the final status.
    let s = json(&sb.run(&["--json", "rollback", "v3", "--max-surge", "2"]));
    assert_eq!(
        (
            s["serving_release"].as_i64(),
            s["deployment"]["state"].as_str()
        ),
        (Some(3), Some("succeeded"))
    );
    sb.wait_status("rolled forward to 3", |s| {
        ready(s, "web", 2, 3) && s["converged"] == true
    });

    let deps = json(&sb.run(&["--json", "deployments"]));
    let states: Vec<(i64, &str)> = deps["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["release"].as_i64().unwrap(), d["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            (3, "succeeded"),
            (1, "succeeded"),
            (3, "succeeded"),
            (2, "failed"),
            (2, "failed"),
            (1, "succeeded")
        ]
    );
    let table = ok(&sb.run(&["deployments"]));
    assert!(
        table.starts_with("ID") && table.contains("release command failed"),
        "{table}"
    );
    assert!(
        !table.contains("boom"),
        "reasons are cut to their first line:\n{table}"
    );

    // Stop and start.
    assert!(ok(&sb.run(&["stop"])).contains("Stopping every instance of shop/prod"));
    sb.wait_status("stopped", |s| live(s) == 0 && s["converged"] == true);
    assert!(ok(&sb.run(&["ps"])).contains("stopped (`sb start` runs it again), converged"));
    assert_eq!(json(&sb.run(&["--json", "start"]))["stopped"], false);
    sb.wait_status("started", |s| {
        ready(s, "web", 2, 3) && ready(s, "worker", 1, 3)
    });
    ok(&sb.run(&["stop"]));
    sb.wait_status("stopped at the end", |s| live(s) == 0);

    // Hosts: drain and undrain (operator admin), human and --json (the host); unknown hosts
    // are not found.
    let h = json(&sb.run(&["--json", "hosts", "drain", &host]));
    assert_eq!(
        (h["name"].as_str(), h["draining"].as_bool()),
        (Some(host.as_str()), Some(true)),
        "{h}"
    );
    assert_eq!(
        ok(&sb.run(&["hosts", "undrain", &host])).trim(),
        format!("Host {host} takes instances again.")
    );
    assert_eq!(
        ok(&sb.run(&["hosts", "drain", &host])).trim(),
        format!(
            "Draining host {host}: its instances move to other hosts and it takes no new ones (undo with `sb hosts undrain {host}`)."
        )
    );
    let list = ok(&sb.run(&["hosts", "list"]));
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().take(2).eq([host.as_str(), "draining"])),
        "{list}"
    );
    let h = json(&sb.run(&["--json", "hosts", "undrain", &host]));
    assert_eq!(
        (h["name"].as_str(), h["draining"].as_bool()),
        (Some(host.as_str()), Some(false)),
        "{h}"
    );
    assert!(fails(&sb.run(&["hosts", "drain", "nope"]), 3).contains("nope"));

    // Join tokens.
    let t = json(&sb.run(&["--json", "tokens", "create", "joiner", "--role", "join"]));
    assert_eq!(t["role"], "join");
    fails(&sb.run(&["tokens", "create", "x", "--role", "agent"]), 2);
    drop(cluster);
}
