//! The real `sb` binary resolving a registry tag on the client: Debian's `docker-registry`
//! started on a free loopback port with a temporary storage directory, a small image pushed to
//! it through the registry HTTP API, then `sb deploy --image 127.0.0.1:PORT/team/app:v1` against
//! a stand-in control plane: the release names the tag pinned to the manifest digest, and
//! `image_digest` is that digest. A missing tag exits 3 (not found) and says so. (The same
//! against the real control plane: crates/scaleboxd/tests/sb_errors.rs.)

#![allow(clippy::result_large_err)] // axum handlers answer errors as Responses

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use scalebox_testkit::registry::start_registry;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

const MANIFEST: &str =
    "schema_version = 1\n\n[processes.web]\ncommand = [\"/srv\"]\nports = [8080]\n";

#[derive(Default)]
struct Api {
    releases: Vec<Value>,
    deploys: Vec<Value>,
}

type S = Arc<Mutex<Api>>;

/// A stand-in control plane: releases, status and deploy of acme/shop/prod (no auth checks:
/// the upload tests cover the client's).
fn control_plane() -> (String, S) {
    let state: S = Arc::default();
    let app = Router::new()
        .route(
            "/v1/orgs/acme/apps/shop/releases",
            post(|State(s): State<S>, Json(body): Json<Value>| async move {
                let mut api = s.lock().unwrap();
                api.releases.push(body.clone());
                let n = api.releases.len();
                (
                    StatusCode::CREATED,
                    Json(json!({"number": n, "id": format!("r{n}"),
                        "image_ref": body["image_ref"], "image_digest": body["image_digest"]})),
                )
            }),
        )
        .route(
            "/v1/orgs/acme/apps/shop/envs/prod/status",
            get(|| async {
                Json(json!({"app": "shop", "env": "prod", "deployment": null, "instances": []}))
            }),
        )
        .route(
            "/v1/orgs/acme/apps/shop/envs/prod/deploy",
            post(|State(s): State<S>, Json(body): Json<Value>| async move {
                s.lock().unwrap().deploys.push(body.clone());
                (
                    StatusCode::ACCEPTED,
                    Json(
                        json!({"deployment": "d1", "release": body["release"], "state": "pending"}),
                    ),
                )
            }),
        )
        .with_state(state.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        rt.block_on(async move { axum::serve(listener, app).await.unwrap() })
    });
    (url, state)
}

fn sb(url: &str, work: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
    c.args(["--org", "acme", "--app", "shop", "--env", "prod"])
        .args(args)
        .current_dir(work)
        .env("SCALEBOX_CONFIG_DIR", work.join("cfg"))
        .env("SCALEBOX_URL", url)
        .env("SCALEBOX_TOKEN", "sbx_test_0123456789abcdef");
    for v in [
        "SCALEBOX_JSON",
        "SCALEBOX_HOST",
        "SCALEBOX_ORG",
        "SCALEBOX_APP",
        "SCALEBOX_ENV",
        "SCALEBOX_REGISTRY_USER",
        "SCALEBOX_REGISTRY_PASSWORD",
        "SCALEBOX_INSECURE_REGISTRY",
    ] {
        c.env_remove(v);
    }
    c.stdin(Stdio::null()).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn deploy_resolves_a_tag_in_a_real_registry() {
    let t = tempfile::tempdir().unwrap();
    let reg = start_registry(t.path());
    let d1 = reg.push_small_image("team/app", "v1");
    let d2 = reg.push_small_image("team/app", "v2");
    assert_ne!(d1, d2);
    let work = t.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("scalebox.toml"), MANIFEST).unwrap();
    let (url, state) = control_plane();
    let image = format!("127.0.0.1:{}/team/app:v1", reg.port);

    let o = sb(&url, &work, &["deploy", "--image", &image, "--no-wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(&format!("Resolved {image} → {d1}")),
        "{}",
        text(&o)
    );
    {
        let api = state.lock().unwrap();
        assert_eq!(api.releases.len(), 1);
        assert_eq!(api.releases[0]["image_ref"], format!("{image}@{d1}"));
        assert_eq!(api.releases[0]["image_digest"], d1);
        assert_eq!(api.deploys.len(), 1);
        assert_eq!(api.deploys[0]["release"], 1);
    }

    // `releases create --json`: another tag, no "Resolved" line, JSON on stdout.
    let image2 = format!("127.0.0.1:{}/team/app:v2", reg.port);
    let o = sb(
        &url,
        &work,
        &["--json", "releases", "create", "--image", &image2],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("Resolved"),
        "{}",
        text(&o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["image_digest"], d2);
    assert_eq!(v["image_ref"], format!("{image2}@{d2}"));

    // A pinned reference is not looked up; a --digest that contradicts it is a usage error.
    let o = sb(
        &url,
        &work,
        &[
            "releases",
            "create",
            "--image",
            &format!("{image}@{d1}"),
            "--digest",
            &d2,
        ],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("contradicts"),
        "{}",
        text(&o)
    );

    // A missing tag: not found (3), nothing created.
    let missing = format!("127.0.0.1:{}/team/app:v9", reg.port);
    let o = sb(&url, &work, &["deploy", "--image", &missing, "--no-wait"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains(r#"tag "v9" not found"#), "{}", text(&o));
    // So is a repository the registry does not have.
    let o = sb(
        &url,
        &work,
        &[
            "deploy",
            "--image",
            &format!("127.0.0.1:{}/team/nothing:v1", reg.port),
            "--no-wait",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        text(&o)
    );
    let api = state.lock().unwrap();
    assert_eq!(api.releases.len(), 2, "no release for the failures");
    assert_eq!(api.deploys.len(), 1);
    drop(reg);
}
