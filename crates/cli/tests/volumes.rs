//! The real `sb` binary against a stand-in of the control plane's volume snapshot, backup and
//! restore endpoints (`/v1/orgs/{org}/volumes/{volume}/…`, as in docs/openapi.json): snapshots,
//! backups followed with `--wait` to success, failure and timeout, restores, no retries of the
//! non-idempotent calls.

#![allow(clippy::result_large_err)] // axum handlers answer errors as Responses

mod common;

use common::{fails, ok, stderr};

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

const TOKEN: &str = "sbx_voltoken_0123456789abcdef";
const TOTAL: u64 = 300;

#[derive(Default)]
struct Api {
    snapshots: Vec<Value>,
    /// Backups in creation order.
    backups: BTreeMap<String, Value>,
    /// Every POST: (path, body).
    posts: Vec<(String, Value)>,
}

type S = Arc<Mutex<Api>>;

fn check(h: &HeaderMap, org: &str) -> Result<(), Response> {
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return Err(err(StatusCode::UNAUTHORIZED, "unauthorized"));
    }
    if org != "acme" {
        return Err(err(StatusCode::NOT_FOUND, "org not found"));
    }
    Ok(())
}

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

fn snapshot(api: &mut Api, vol: &str) -> Value {
    let s = json!({"id": format!("snap-{}", api.snapshots.len() + 1), "volume": vol, "host": "h1",
        "size_bytes": 1048576, "created_at": "2025-01-01T00:00:00Z"});
    api.snapshots.push(s.clone());
    s
}

/// One poll's worth of progress: `data` succeeds at the end, `flaky` fails two thirds in,
/// `stuck` never moves.
fn advance(b: &mut Value) {
    if b["state"] != "running" || b["volume"] == "stuck" {
        return;
    }
    let done = b["bytes_done"].as_u64().unwrap() + 100;
    b["bytes_done"] = json!(done);
    if b["volume"] == "flaky" && done >= 200 {
        b["state"] = json!("failed");
        b["error"] = json!("checksum mismatch at chunk 2\nsecond line");
        b["finished_at"] = json!("2025-01-01T00:01:00Z");
    } else if done >= TOTAL {
        b["state"] = json!("succeeded");
        b["size_bytes"] = json!(TOTAL);
        b["image_sha256"] = json!("ab".repeat(32));
        b["finished_at"] = json!("2025-01-01T00:01:00Z");
    }
}

fn router(state: S) -> Router {
    Router::new()
        .route(
            "/v1/orgs/{org}/volumes/{vol}/snapshots",
            get(|State(s): State<S>, h: HeaderMap, UrlPath((org, vol)): UrlPath<(String, String)>| async move {
                check(&h, &org)?;
                let items: Vec<Value> = s.lock().unwrap().snapshots.iter().filter(|x| x["volume"] == vol.as_str()).cloned().collect();
                Ok::<_, Response>(Json(json!({ "items": items })))
            })
            .post(|State(s): State<S>, h: HeaderMap, UrlPath((org, vol)): UrlPath<(String, String)>| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                api.posts.push((format!("{vol}/snapshots"), Value::Null));
                if vol == "busy" {
                    return Err(err(StatusCode::SERVICE_UNAVAILABLE, "agent busy"));
                }
                if vol == "nope" {
                    return Err(err(StatusCode::NOT_FOUND, "volume not found"));
                }
                Ok::<_, Response>((StatusCode::CREATED, Json(snapshot(&mut api, &vol))))
            }),
        )
        .route(
            "/v1/orgs/{org}/volumes/{vol}/snapshots/{id}",
            delete(|State(s): State<S>, h: HeaderMap, UrlPath((org, vol, id)): UrlPath<(String, String, String)>| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                let before = api.snapshots.len();
                api.snapshots.retain(|x| !(x["volume"] == vol.as_str() && x["id"] == id.as_str()));
                if api.snapshots.len() == before {
                    return Err(err(StatusCode::NOT_FOUND, "snapshot not found"));
                }
                Ok::<_, Response>(StatusCode::NO_CONTENT)
            }),
        )
        .route(
            "/v1/orgs/{org}/volumes/{vol}/backups",
            get(|State(s): State<S>, h: HeaderMap, UrlPath((org, vol)): UrlPath<(String, String)>| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                let mut items = Vec::new();
                for b in api.backups.values_mut().filter(|b| b["volume"] == vol.as_str()) {
                    advance(b);
                    items.push(b.clone());
                }
                Ok::<_, Response>(Json(json!({ "items": items })))
            })
            .post(|State(s): State<S>, h: HeaderMap, UrlPath((org, vol)): UrlPath<(String, String)>, Json(body): Json<Value>| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                api.posts.push((format!("{vol}/backups"), body.clone()));
                let snap = match body["snapshot"].as_str() {
                    Some(id) => id.to_owned(),
                    None => snapshot(&mut api, &vol)["id"].as_str().unwrap().to_owned(),
                };
                let id = format!("bk-{}", api.backups.len() + 1);
                let b = json!({"id": id, "volume": vol, "snapshot": snap, "state": "running",
                    "bytes_done": 0, "bytes_total": TOTAL, "size_bytes": null, "image_sha256": null,
                    "error": null, "created_at": "2025-01-01T00:00:00Z", "finished_at": null});
                api.backups.insert(id, b.clone());
                Ok::<_, Response>((StatusCode::ACCEPTED, Json(b)))
            }),
        )
        .route(
            "/v1/orgs/{org}/volumes/{vol}/restore",
            post(|State(s): State<S>, h: HeaderMap, UrlPath((org, vol)): UrlPath<(String, String)>, Json(body): Json<Value>| async move {
                check(&h, &org)?;
                s.lock().unwrap().posts.push((format!("{vol}/restore"), body.clone()));
                if vol == "alive" {
                    return Err(err(StatusCode::CONFLICT, "volume \"alive\" is on host \"h1\", which is alive: restore replaces the disk of a volume whose host was lost"));
                }
                if vol == "corrupt" {
                    return Err(err(StatusCode::UNPROCESSABLE_ENTITY, "restore failed: checksum mismatch"));
                }
                let backup = if body["backup"] == "latest" { json!("bk-1") } else { body["backup"].clone() };
                let host = body.get("host").cloned().unwrap_or(json!("h2"));
                Ok::<_, Response>(Json(json!({"volume": vol, "backup": backup, "host": host,
                    "size_bytes": 1073741824u64, "image_sha256": "cd".repeat(32)})))
            }),
        )
        .with_state(state)
}

struct Env {
    url: String,
    cfg: tempfile::TempDir,
    state: S,
}

fn start() -> Env {
    let state: S = Arc::default();
    let url = common::serve(router(state.clone()));
    Env {
        url,
        cfg: tempfile::tempdir().unwrap(),
        state,
    }
}

impl Env {
    fn sb(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.arg("--org")
            .arg("acme")
            .args(args)
            .env("SCALEBOX_CONFIG_DIR", self.cfg.path())
            .env("SCALEBOX_URL", &self.url)
            .env("SCALEBOX_TOKEN", TOKEN);
        for v in [
            "SCALEBOX_JSON",
            "SCALEBOX_HOST",
            "SCALEBOX_ORG",
            "SCALEBOX_APP",
            "SCALEBOX_ENV",
        ] {
            c.env_remove(v);
        }
        c.stdin(Stdio::null()).output().unwrap()
    }

    fn posts(&self, path: &str) -> Vec<Value> {
        let api = self.state.lock().unwrap();
        api.posts
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

#[test]
fn snapshots_list_take_delete() {
    let e = start();
    assert_eq!(
        ok(&e.sb(&["volumes", "snapshots", "data"])).trim(),
        "(none)"
    );
    let o = e.sb(&["volumes", "snapshot", "data"]);
    assert_eq!(
        ok(&o).trim(),
        "Took snapshot snap-1 of volume data on host h1 (1.0 MiB)."
    );
    assert!(stderr(&o).contains("paused"), "{}", stderr(&o));
    let o = e.sb(&["--json", "volumes", "snapshot", "data"]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["id"], "snap-2");
    assert!(stderr(&o).is_empty(), "no progress with --json");

    let table = ok(&e.sb(&["volumes", "snapshots", "data"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("SIZE"));
    assert!(lines[1].starts_with("snap-1") && lines[1].contains("1.0 MiB"));
    let v: Value =
        serde_json::from_str(&ok(&e.sb(&["--json", "volumes", "snapshots", "data"]))).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);

    assert_eq!(
        ok(&e.sb(&["volumes", "snapshot-delete", "data", "snap-1"])).trim(),
        "Deleted snapshot snap-1 of volume data."
    );
    let v: Value = serde_json::from_str(&ok(&e.sb(&[
        "--json",
        "volumes",
        "snapshot-delete",
        "data",
        "snap-2",
    ])))
    .unwrap();
    assert_eq!(v, json!({"deleted": "snap-2"}));
    fails(&e.sb(&["volumes", "snapshot-delete", "data", "snap-1"]), 3);

    // Not deduplicated server-side: a 503 is not retried.
    let err = fails(&e.sb(&["volumes", "snapshot", "busy"]), 6);
    assert!(err.contains("agent busy"), "{err}");
    assert_eq!(e.posts("busy/snapshots").len(), 1);
    fails(&e.sb(&["volumes", "snapshot", "nope"]), 3);
}

#[test]
fn backup_without_wait_and_the_list() {
    let e = start();
    let out = ok(&e.sb(&["volumes", "backup", "data", "--snapshot", "snap-9"]));
    assert!(
        out.contains("backup bk-1 of snapshot snap-9") && out.contains("sb volumes backups data"),
        "{out}"
    );
    assert_eq!(e.posts("data/backups"), [json!({"snapshot": "snap-9"})]);
    let v: Value =
        serde_json::from_str(&ok(&e.sb(&["--json", "volumes", "backup", "data"]))).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["state"].as_str()),
        (Some("bk-2"), Some("running"))
    );
    assert_eq!(e.posts("data/backups")[1], json!({}));

    // Each list advances the stand-in's backups by 100 bytes.
    let table = ok(&e.sb(&["volumes", "backups", "data"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("PROGRESS") && lines[0].contains("ERROR"),
        "{table}"
    );
    assert!(
        lines[1].contains("running") && lines[1].contains("100 B/300 B (33%)"),
        "{table}"
    );
    let v: Value =
        serde_json::from_str(&ok(&e.sb(&["--json", "volumes", "backups", "data"]))).unwrap();
    assert_eq!(v["items"][0]["bytes_done"], 200);
}

#[test]
fn backup_wait_succeeds() {
    let e = start();
    let o = e.sb(&["volumes", "backup", "data", "--wait", "--timeout", "30"]);
    let out = ok(&o);
    assert_eq!(
        out.trim(),
        format!(
            "Backup bk-1 of volume data succeeded: 300 B, sha256 {}.",
            "ab".repeat(32)
        )
    );
    let err = stderr(&o);
    assert!(
        err.contains("Backing up volume data (backup bk-1 of snapshot snap-1)")
            && err.contains("backup bk-1: 0 B/300 B (0%)")
            && err.contains("backup bk-1: 200 B/300 B (66%)"),
        "{err}"
    );
    // Sent once.
    assert_eq!(e.posts("data/backups").len(), 1);

    // --json: only the final backup object on stdout, no progress.
    let o = e.sb(&["--json", "volumes", "backup", "data", "--wait"]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["state"].as_str()),
        (Some("bk-2"), Some("succeeded"))
    );
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn backup_wait_fails_and_times_out() {
    let e = start();
    let err = fails(&e.sb(&["volumes", "backup", "flaky", "--wait"]), 7);
    assert!(
        err.contains("error: backup bk-1 of volume flaky failed: checksum mismatch at chunk 2"),
        "{err}"
    );
    let o = e.sb(&["--json", "volumes", "backup", "flaky", "--wait"]);
    let err: Value = serde_json::from_str(fails(&o, 7).trim()).unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("checksum mismatch"),
        "{err}"
    );
    let last: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(last["state"], "failed");
    // The table shows the error's first line.
    let table = ok(&e.sb(&["volumes", "backups", "flaky"]));
    assert!(
        table.contains("failed")
            && table.contains("checksum mismatch at chunk 2")
            && !table.contains("second line"),
        "{table}"
    );

    let err = fails(
        &e.sb(&["volumes", "backup", "stuck", "--wait", "--timeout", "1"]),
        7,
    );
    assert!(
        err.contains("gave up waiting after 1s")
            && err.contains("0 B/300 B (0%)")
            && err.contains("sb volumes backups stuck"),
        "{err}"
    );
    // --timeout without --wait is a usage error; nothing is sent.
    fails(&e.sb(&["volumes", "backup", "data", "--timeout", "5"]), 2);
    assert!(e.posts("data/backups").is_empty());
}

#[test]
fn restore_latest_or_given_backup() {
    let e = start();
    let o = e.sb(&["volumes", "restore", "data"]);
    assert_eq!(
        ok(&o).trim(),
        format!(
            "Restored volume data onto host h2 from backup bk-1 (1.0 GiB, sha256 {}).",
            "cd".repeat(32)
        )
    );
    assert!(
        stderr(&o).contains("Restoring volume data from backup latest (this can take a while)"),
        "{}",
        stderr(&o)
    );
    let v: Value = serde_json::from_str(&ok(&e.sb(&[
        "--json", "volumes", "restore", "data", "--backup", "bk-7", "--host", "h3",
    ])))
    .unwrap();
    assert_eq!(
        (v["backup"].as_str(), v["host"].as_str()),
        (Some("bk-7"), Some("h3"))
    );
    assert_eq!(
        e.posts("data/restore"),
        [
            json!({"backup": "latest"}),
            json!({"backup": "bk-7", "host": "h3"})
        ]
    );

    let err = fails(&e.sb(&["volumes", "restore", "alive"]), 4);
    assert!(err.contains("which is alive"), "{err}");
    let err = fails(&e.sb(&["volumes", "restore", "corrupt"]), 4);
    assert!(err.contains("checksum mismatch"), "{err}");
    // Not retried.
    assert_eq!(e.posts("alive/restore").len(), 1);
}
