//! The real `sb` binary uploading a local OCI archive to a stand-in of the control plane's image
//! endpoints (`HEAD`/`PUT /v1/orgs/{org}/images/sha256:…`): the bytes received are the file's,
//! the release names `upload:sha256:…`, an image the org already has is not sent again, and a
//! PUT answered 503 is sent again from where the server is (here, a server that keeps nothing:
//! from the start). Resuming against the real control plane is in `upload_real.rs`.

#![allow(clippy::result_large_err)] // axum handlers answer errors as Responses

mod common;

use common::{ok, stderr};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

const TOKEN: &str = "sbx_uptoken_0123456789abcdef";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const MANIFEST: &str =
    "schema_version = 1\n\n[processes.web]\ncommand = [\"/srv\"]\nports = [8080]\n";

#[derive(Default)]
struct Api {
    /// Digests the org has.
    images: Vec<String>,
    heads: usize,
    /// Every PUT: (digest, content-type, content-length header, body).
    puts: Vec<(String, String, String, Bytes)>,
    /// PUTs to answer 503 (after reading the body) before accepting one.
    fail_puts: usize,
    /// Release bodies.
    releases: Vec<Value>,
    deploys: Vec<Value>,
}

type S = Arc<Mutex<Api>>;

fn check(h: &HeaderMap, org: &str) -> Result<(), Response> {
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized"})),
        )
            .into_response());
    }
    if org != "acme" {
        return Err((
            StatusCode::NOT_FOUND,
            Json(json!({"error": "org not found"})),
        )
            .into_response());
    }
    Ok(())
}

fn router(state: S) -> Router {
    Router::new()
        .route(
            "/v1/orgs/{org}/images/{digest}",
            put(|State(s): State<S>, h: HeaderMap, UrlPath((org, digest)): UrlPath<(String, String)>, body: Bytes| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                api.puts.push((digest.clone(), header("content-type"), header("content-length"), body.clone()));
                if api.fail_puts > 0 {
                    api.fail_puts -= 1;
                    return Err((StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "try again"}))).into_response());
                }
                let existed = api.images.contains(&digest);
                if !existed {
                    api.images.push(digest.clone());
                }
                let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
                Ok::<_, Response>((status, Json(json!({"image_ref": format!("upload:{digest}"), "digest": digest, "size_bytes": body.len()}))))
            })
            .head(|State(s): State<S>, h: HeaderMap, UrlPath((org, digest)): UrlPath<(String, String)>| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                api.heads += 1;
                Ok::<_, Response>(if api.images.contains(&digest) { StatusCode::OK } else { StatusCode::NOT_FOUND })
            }),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/releases",
            post(|State(s): State<S>, h: HeaderMap, UrlPath((org, _app)): UrlPath<(String, String)>, Json(body): Json<Value>| async move {
                check(&h, &org)?;
                let mut api = s.lock().unwrap();
                api.releases.push(body.clone());
                let n = api.releases.len();
                Ok::<_, Response>((StatusCode::CREATED, Json(json!({"number": n, "id": format!("r{n}"),
                    "image_ref": body["image_ref"], "image_digest": body["image_digest"]}))))
            }),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/status",
            get(|h: HeaderMap, UrlPath((org, _a, _e)): UrlPath<(String, String, String)>| async move {
                check(&h, &org)?;
                Ok::<_, Response>(Json(json!({"app": "shop", "env": "prod", "deployment": null, "instances": []})))
            }),
        )
        .route(
            "/v1/orgs/{org}/apps/{app}/envs/{env}/deploy",
            post(|State(s): State<S>, h: HeaderMap, UrlPath((org, _a, _e)): UrlPath<(String, String, String)>, Json(body): Json<Value>| async move {
                check(&h, &org)?;
                s.lock().unwrap().deploys.push(body.clone());
                Ok::<_, Response>((StatusCode::ACCEPTED, Json(json!({"deployment": "d1", "release": body["release"], "state": "pending"}))))
            }),
        )
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

struct Env {
    url: String,
    cfg: tempfile::TempDir,
    work: tempfile::TempDir,
    state: S,
}

fn start() -> Env {
    let state: S = Arc::default();
    let url = common::serve(router(state.clone()));
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("scalebox.toml"), MANIFEST).unwrap();
    Env {
        url,
        cfg: tempfile::tempdir().unwrap(),
        work,
        state,
    }
}

impl Env {
    fn sb(&self, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.arg("--org")
            .arg("acme")
            .arg("--app")
            .arg("shop")
            .arg("--env")
            .arg("prod")
            .args(args)
            .current_dir(self.work.path())
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
}

/// An OCI archive made by tar(1): a ~3 MiB blob, `oci-layout`, and `index.json` naming DIGEST.
fn archive(dir: &Path) -> std::path::PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{DIGEST}"}}]}}"#),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let blob: Vec<u8> = (0..3 * 1024 * 1024 + 123u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(layout.join("blobs/sha256/aa"), blob).unwrap();
    let tar = dir.join("img.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .args(["blobs", "oci-layout", "index.json"])
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

#[test]
fn archive_is_uploaded_once_then_reused() {
    let e = start();
    let tar = archive(e.work.path());
    let bytes = std::fs::read(&tar).unwrap();
    let image = format!("oci-archive:{}", tar.display());

    // HEAD 404 → PUT of the file → release of upload:sha256:….
    let o = e.sb(&["releases", "create", "--image", &image]);
    let out = ok(&o);
    assert!(out.contains("Created release v1"), "{out}");
    let err = stderr(&o);
    assert!(err.contains("Uploading"), "{err}");
    assert!(err.contains("uploaded 100% 3/3 MiB"), "{err}");
    assert!(err.contains(&format!("Uploaded {DIGEST}")), "{err}");
    {
        let api = e.state.lock().unwrap();
        assert_eq!(api.heads, 1);
        assert_eq!(api.puts.len(), 1);
        let (digest, ctype, clen, body) = &api.puts[0];
        assert_eq!(digest, DIGEST);
        assert_eq!(ctype, "application/x-tar");
        assert_eq!(clen, &bytes.len().to_string());
        assert!(
            body[..] == bytes[..],
            "the bytes received are not the file's"
        );
        assert_eq!(api.releases[0]["image_ref"], format!("upload:{DIGEST}"));
        assert_eq!(api.releases[0]["image_digest"], DIGEST);
        assert_eq!(api.releases[0]["manifest"], MANIFEST);
    }

    // The org has it now: HEAD 200, no PUT; `sb deploy --image` deploys the new release.
    let o = e.sb(&["deploy", "--image", &image, "--no-wait"]);
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("already uploaded"), "{err}");
    {
        let api = e.state.lock().unwrap();
        assert_eq!(api.heads, 2);
        assert_eq!(api.puts.len(), 1, "no second PUT");
        assert_eq!(api.releases[1]["image_ref"], format!("upload:{DIGEST}"));
        assert_eq!(api.deploys[0]["release"], 2);
    }

    // --json: no progress on stderr, the release on stdout.
    e.state.lock().unwrap().images.clear();
    let o = e.sb(&["--json", "releases", "create", "--image", &image]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(v["image_ref"], format!("upload:{DIGEST}"));
    assert_eq!(stderr(&o), "", "nothing on stderr with --json");
    assert_eq!(e.state.lock().unwrap().puts.len(), 2);
}

#[test]
fn a_failed_put_is_sent_again_whole_and_other_references_are_not_uploaded() {
    let e = start();
    let tar = archive(e.work.path());
    let bytes = std::fs::read(&tar).unwrap();
    e.state.lock().unwrap().fail_puts = 1;
    let o = e.sb(&[
        "releases",
        "create",
        "--image",
        &format!("archive:{}", tar.display()),
    ]);
    ok(&o);
    let err = stderr(&o);
    assert!(err.contains("sending it again from the start"), "{err}");
    {
        let api = e.state.lock().unwrap();
        assert_eq!(api.puts.len(), 2);
        for (_, _, _, body) in &api.puts {
            assert!(body[..] == bytes[..], "every attempt sends the whole file");
        }
        assert_eq!(api.releases.len(), 1);
        assert_eq!(api.releases[0]["image_ref"], format!("upload:{DIGEST}"));
    }

    // A registry reference pinned by digest goes as-is, no HEAD, no PUT.
    let pinned = format!("reg.example/app@{DIGEST}");
    ok(&e.sb(&["releases", "create", "--image", &pinned]));
    let api = e.state.lock().unwrap();
    assert_eq!(
        api.heads, 2,
        "before the upload, and after the 503 to ask where to go on"
    );
    assert_eq!(api.puts.len(), 2);
    assert_eq!(api.releases[1]["image_ref"], pinned);
}
