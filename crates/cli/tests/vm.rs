//! The real `sb` binary against a stand-in of the VM API (root-level `/info`, `/templates`,
//! `/vms`, as in the wire contract): status, vm and template verbs, the managed key, waiting for
//! SSH, connect (with stand-in `ssh`/`mosh` that print their argv), JSON errors, login.

#![allow(clippy::result_large_err)] // axum handlers answer errors as Responses

mod common;

use common::{fails, json, ok};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

const TOKEN: &str = "sbx_vmtoken_0123456789abcdef";

#[derive(Default)]
struct Api {
    vms: BTreeMap<String, Value>,
    ssh_port: u16,
    created: Vec<Value>,
}

type S = Arc<Mutex<Api>>;

fn authed(h: &HeaderMap) -> Result<(), Response> {
    if h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}")) {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized"})),
        )
            .into_response())
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "VM not found"})),
    )
        .into_response()
}

fn find(api: &Api, x: &str) -> Option<Value> {
    api.vms
        .values()
        .find(|v| v["id"] == x || v["name"] == x)
        .cloned()
}

fn router(state: S) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/info",
            get(|| async {
                Json(json!({"host_ip": "127.0.0.1", "api_domain": "api.example.com",
                    "vm_domain": null, "templates_count": 1, "vms_count": 0,
                    "storage": {"total_gb": 100.0, "used_gb": 12.5, "free_gb": 87.5},
                    "memory": {"total_gb": 32.0, "free_gb": 30.0}, "cpu_percent": 3.25}))
            }),
        )
        .route(
            "/templates",
            get(|h: HeaderMap| async move {
                authed(&h)?;
                Ok::<_, Response>(Json(json!({"templates": [
                    {"name": "debian-base", "size_bytes": 1610612736u64, "created_at": "2025-01-01T00:00:00Z"}
                ]})))
            }),
        )
        .route(
            "/templates/{name}",
            axum::routing::delete(|h: HeaderMap, UrlPath(name): UrlPath<String>| async move {
                authed(&h)?;
                if name == "debian-base" {
                    return Err((StatusCode::FORBIDDEN, Json(json!({"error": "template is protected"}))).into_response());
                }
                Ok::<_, Response>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/vms",
            get(|State(s): State<S>, h: HeaderMap| async move {
                authed(&h)?;
                let vms: Vec<Value> = s.lock().unwrap().vms.values().cloned().collect();
                Ok::<_, Response>(Json(json!({ "vms": vms })))
            })
            .post(|State(s): State<S>, h: HeaderMap, Json(b): Json<Value>| async move {
                authed(&h)?;
                if b["template"] != "debian-base" {
                    return Err((StatusCode::NOT_FOUND, Json(json!({"error": "template not found"}))).into_response());
                }
                let mut api = s.lock().unwrap();
                api.created.push(b.clone());
                let n = api.vms.len();
                let name = b["name"].as_str().map_or(format!("quickly-happy-otter{n}"), str::to_owned);
                let vm = json!({"id": format!("vm-00000000000{n}"), "name": name, "template": "debian-base",
                    "ip": "127.0.0.1", "ssh_port": api.ssh_port,
                    "ssh": format!("ssh -p {} user@127.0.0.1", api.ssh_port), "url": null,
                    "status": "running", "created_at": "2025-01-01T00:00:00Z"});
                api.vms.insert(vm["id"].as_str().unwrap().to_owned(), vm.clone());
                Ok::<_, Response>((StatusCode::CREATED, Json(vm)))
            }),
        )
        .route(
            "/vms/{x}",
            get(|State(s): State<S>, h: HeaderMap, UrlPath(x): UrlPath<String>| async move {
                authed(&h)?;
                find(&s.lock().unwrap(), &x).map(Json).ok_or_else(not_found)
            })
            .delete(|State(s): State<S>, h: HeaderMap, UrlPath(x): UrlPath<String>| async move {
                authed(&h)?;
                let mut api = s.lock().unwrap();
                let vm = find(&api, &x).ok_or_else(not_found)?;
                api.vms.remove(vm["id"].as_str().unwrap());
                Ok::<_, Response>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/vms/{x}/snapshot",
            post(|State(s): State<S>, h: HeaderMap, UrlPath(x): UrlPath<String>, Json(b): Json<Value>| async move {
                authed(&h)?;
                let vm = find(&s.lock().unwrap(), &x).ok_or_else(not_found)?;
                Ok::<_, Response>((StatusCode::CREATED, Json(json!({"template": b["template_name"],
                    "source_vm": vm["id"], "size_bytes": 1024, "created_at": "2025-01-01T00:00:00Z"}))))
            }),
        )
        .with_state(state)
}

struct Env {
    url: String,
    cfg: tempfile::TempDir,
    bin: tempfile::TempDir,
    state: S,
}

/// A stand-in for `program` that prints its argv, one word a line.
fn fake(dir: &Path, program: &str) {
    let p = dir.join(program);
    std::fs::write(
        &p,
        format!("#!/bin/sh\necho {program}\nfor a in \"$@\"; do echo \"$a\"; done\n"),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&p, perm).unwrap();
}

fn start() -> Env {
    let state: S = Arc::default();
    // An "sshd" that sends its banner.
    let ssh = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    state.lock().unwrap().ssh_port = ssh.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in ssh.incoming() {
            let _ = c.unwrap().write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
        }
    });
    let url = common::serve(router(state.clone()));
    let bin = tempfile::tempdir().unwrap();
    fake(bin.path(), "ssh");
    fake(bin.path(), "mosh");
    Env {
        url,
        cfg: tempfile::tempdir().unwrap(),
        bin,
        state,
    }
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.args(args)
            .env("SCALEBOX_CONFIG_DIR", self.cfg.path())
            .env("SCALEBOX_URL", &self.url)
            .env("SCALEBOX_TOKEN", TOKEN)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.bin.path().display()),
            )
            .env_remove("SCALEBOX_JSON")
            .env_remove("SCALEBOX_HOST")
            .stdin(Stdio::null());
        c
    }
    fn sb(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn vm_lifecycle_against_the_contract() {
    let e = start();
    // sb status: /info, plus "status": 200 in JSON.
    let st = json(&e.sb(&["--json", "status"]));
    assert_eq!(
        (st["status"].as_i64(), st["vms_count"].as_i64()),
        (Some(200), Some(0))
    );
    let human = ok(&e.sb(&["status"]));
    assert!(
        human.contains("12.5 GB used of 100.0 GB") && human.contains("3.2%"),
        "{human}"
    );
    let st = json(
        &e.cmd(&["status"])
            .env("SCALEBOX_JSON", "true")
            .output()
            .unwrap(),
    );
    assert_eq!(st["status"], 200);

    assert!(ok(&e.sb(&["template", "list"])).contains("1.5 GiB"));
    assert_eq!(
        json(&e.sb(&["--json", "template", "list"]))["templates"][0]["name"],
        "debian-base"
    );
    assert!(fails(&e.sb(&["template", "delete", "debian-base"]), 5).contains("protected"));
    assert!(fails(&e.sb(&["template", "delete", "a/b"]), 2).contains("invalid template name"));
    ok(&e.sb(&["template", "delete", "old"]));

    // Create with the managed key: generated on first need.
    let key = e.cfg.path().join("id_ed25519");
    assert!(!key.exists());
    let vm = json(&e.sb(&[
        "--json",
        "vm",
        "create",
        "-t",
        "debian-base",
        "-m",
        "1024",
        "-d",
        "5",
    ]));
    assert!(key.exists() && e.cfg.path().join("id_ed25519.pub").exists());
    let public = std::fs::read_to_string(e.cfg.path().join("id_ed25519.pub")).unwrap();
    let body = e.state.lock().unwrap().created[0].clone();
    assert_eq!(body["ssh_public_key"], public.trim());
    assert_eq!(
        (
            body["mem_size_mib"].as_u64(),
            body["disk_size_gib"].as_u64()
        ),
        (Some(1024), Some(5))
    );
    assert!(body.get("vcpu_count").is_none());
    let name = vm["name"].as_str().unwrap().to_owned();
    let id = vm["id"].as_str().unwrap().to_owned();

    // Bad key input is a usage error; nothing is created.
    assert!(
        fails(
            &e.sb(&[
                "vm",
                "create",
                "-t",
                "debian-base",
                "-k",
                "@/nonexistent.pub"
            ]),
            2
        )
        .contains("cannot read the key file")
    );
    assert!(
        fails(
            &e.sb(&["vm", "create", "-t", "debian-base", "-k", "garbage"]),
            2
        )
        .contains("not an OpenSSH public key")
    );
    assert!(fails(&e.sb(&["vm", "snapshot", &name]), 2).contains("--name"));
    fails(&e.sb(&["vm", "frobnicate"]), 2);
    assert_eq!(e.state.lock().unwrap().created.len(), 1);

    // A literal key is passed through.
    ok(&e.sb(&[
        "vm",
        "create",
        "-t",
        "debian-base",
        "--name",
        "two",
        "--vcpus",
        "2",
        "-k",
        public.trim(),
    ]));
    assert_eq!(e.state.lock().unwrap().created[1]["vcpu_count"], 2);

    let list = ok(&e.sb(&["vm", "list"]));
    assert!(
        list.contains(&name) && list.contains("two") && list.starts_with("ID"),
        "{list}"
    );
    assert_eq!(
        json(&e.sb(&["--json", "vm", "get", &id]))["name"],
        name.as_str()
    );
    assert!(ok(&e.sb(&["vm", "get", &name])).contains(&id));

    // Not found: exit 3, JSON error with the HTTP status.
    let err: Value =
        serde_json::from_str(fails(&e.sb(&["--json", "vm", "get", "nope"]), 3).trim()).unwrap();
    assert_eq!(
        (err["error"].as_str(), err["status"].as_i64()),
        (Some("VM not found"), Some(404))
    );
    // Usage errors are JSON too with --json.
    let err: Value =
        serde_json::from_str(fails(&e.sb(&["--json", "vm", "nope"]), 2).trim()).unwrap();
    assert_eq!(err["status"], 0);

    let w = ok(&e.sb(&["vm", "wait", &name, "--ssh", "--timeout", "5"]));
    assert!(w.contains("answers SSH"), "{w}");
    let snap = json(&e.sb(&["--json", "vm", "snapshot", &name, "-n", "mine"]));
    assert_eq!(
        (snap["template"].as_str(), snap["source_vm"].as_str()),
        (Some("mine"), Some(id.as_str()))
    );

    // connect: mosh by default (UDP port = SSH port), ssh with --ssh; exec'd with the managed key,
    // the host key kept in sb's known_hosts under the VM's id (after the user's options).
    let port = vm["ssh_port"].as_u64().unwrap().to_string();
    let k = key.display().to_string();
    let alias = format!("HostKeyAlias={id}");
    let known = format!(
        "UserKnownHostsFile={}",
        e.cfg.path().join("known_hosts").display()
    );
    let out = ok(&e.sb(&["connect", &name, "--", "uptime"]));
    let ssh_opt = format!("--ssh=ssh -p {port} -i {k} -o IdentitiesOnly=yes -o {alias} -o {known}");
    assert_eq!(
        lines(&out),
        [
            "mosh",
            ssh_opt.as_str(),
            "-p",
            port.as_str(),
            "user@127.0.0.1",
            "--",
            "uptime"
        ]
    );
    let out = ok(&e.sb(&[
        "connect", &id, "--ssh", "-l", "root", "-o", "A=b", "--", "ls", "-la",
    ]));
    assert_eq!(
        lines(&out),
        [
            "ssh",
            "-p",
            port.as_str(),
            "-i",
            k.as_str(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "A=b",
            "-o",
            alias.as_str(),
            "-o",
            known.as_str(),
            "root@127.0.0.1",
            "ls",
            "-la"
        ]
    );
    // No mosh installed: say so, suggest --ssh.
    let only_ssh = tempfile::tempdir().unwrap();
    fake(only_ssh.path(), "ssh");
    let o = e
        .cmd(&["connect", &name])
        .env("PATH", only_ssh.path())
        .output()
        .unwrap();
    let err = fails(&o, 1);
    assert!(
        err.contains("mosh is not installed") && err.contains("--ssh"),
        "{err}"
    );
    assert!(
        fails(&e.sb(&["connect", &name, "-i", "/nonexistent"]), 2).contains("no such key file")
    );

    // run: create, wait for SSH, connect.
    let out = ok(&e.sb(&["run", "--ssh", "--name", "three", "--", "true"]));
    assert_eq!(lines(&out).last(), Some(&"true"));
    assert_eq!(
        e.state.lock().unwrap().created[2]["template"],
        "debian-base"
    );

    ok(&e.sb(&["vm", "delete", &name]));
    fails(&e.sb(&["vm", "delete", &name]), 3);

    // Auth and reachability errors.
    let o = e
        .cmd(&["--json", "vm", "list"])
        .env("SCALEBOX_TOKEN", "wrong")
        .output()
        .unwrap();
    let err: Value = serde_json::from_str(fails(&o, 5).trim()).unwrap();
    assert_eq!(err["status"], 401);
    let o = e
        .cmd(&["--json", "status"])
        .env("SCALEBOX_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let err: Value = serde_json::from_str(fails(&o, 6).trim()).unwrap();
    assert_eq!(err["status"], 0);
}

#[test]
fn wait_times_out_clearly() {
    let e = start();
    // Nothing answers SSH on the VM's port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    e.state.lock().unwrap().ssh_port = port;
    ok(&e.sb(&["vm", "create", "-t", "debian-base", "--name", "slow"]));
    let err = fails(&e.sb(&["vm", "wait", "slow", "--ssh", "--timeout", "1"]), 7);
    assert!(
        err.contains("timed out after 1s") && err.contains("sb vm wait slow --ssh"),
        "{err}"
    );
}

#[test]
fn login_checks_host_and_token() {
    let e = start();
    let login = |token: &str| {
        let mut c = e.cmd(&["login", "--host", &e.url, "--token-stdin"]);
        c.env_remove("SCALEBOX_URL")
            .env_remove("SCALEBOX_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(token.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    fails(&login("wrong\n"), 5);
    assert!(!e.cfg.path().join("config").exists());
    assert!(ok(&login(&format!("{TOKEN}\n"))).contains("Logged in"));
    let shown = ok(&e
        .cmd(&["config", "show"])
        .env_remove("SCALEBOX_URL")
        .env_remove("SCALEBOX_TOKEN")
        .output()
        .unwrap());
    assert!(
        shown.contains(&e.url) && shown.contains("config file") && !shown.contains(TOKEN),
        "{shown}"
    );
    let o = e
        .cmd(&["template", "list"])
        .env_remove("SCALEBOX_URL")
        .env_remove("SCALEBOX_TOKEN")
        .output()
        .unwrap();
    assert!(ok(&o).contains("debian-base"));
}
