//! The real `sb` binary resolving a registry tag on the client: Debian's `docker-registry`
//! started on a free loopback port with a temporary storage directory, a small image pushed to
//! it through the registry HTTP API, then `sb deploy --image 127.0.0.1:PORT/team/app:v1` against
//! a stand-in control plane: the release names the tag pinned to the manifest digest, and
//! `image_digest` is that digest. A missing tag exits 3 (not found) and says so.

#![allow(clippy::result_large_err)] // axum handlers answer errors as Responses

use std::io::Write;
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

/// `sha256:…` of `data`, by sha256sum(1).
fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// Pushes a small image (a config and one layer) as `name:tag`; returns the manifest digest the
/// registry reported, checked against the sha256 of the manifest pushed.
fn push(port: u16, name: &str, tag: &str) -> String {
    let a: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://127.0.0.1:{port}");
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/srv"]},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = format!("not really a layer, but the registry does not look: {tag}").into_bytes();
    let (cd, ld) = (sha256(&config), sha256(&layer));
    for (d, blob) in [(&cd, &config), (&ld, &layer)] {
        let r = a
            .post(&format!("{base}/v2/{name}/blobs/uploads/"))
            .send(&[][..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{base}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = a
            .put(&format!("{loc}{sep}digest={d}"))
            .header("Content-Type", "application/octet-stream")
            .send(&blob[..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "blob {d}");
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": layer.len()}],
    }))
    .unwrap();
    let r = a
        .put(&format!("{base}/v2/{name}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send(&manifest[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "manifest");
    let reported = r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(reported, sha256(&manifest));
    reported
}

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
    let d1 = push(reg.port, "team/app", "v1");
    let d2 = push(reg.port, "team/app", "v2");
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
