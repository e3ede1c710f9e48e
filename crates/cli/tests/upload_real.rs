//! The real `sb` binary uploading images to a real control plane (real Postgres, in this
//! process): an `oci:DIR` layout is packed into an OCI archive, uploaded, verified by the server
//! and pinned by its manifest digest; directories that are not complete layouts are refused
//! before anything is sent; a layout whose blob does not match its digest is refused by the
//! server and nothing is kept.

mod common;

use common::{fails, json, ok, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use scalebox_control::{Control, ControlConfig, bootstrap, router};

const MANIFEST: &str =
    "schema_version = 1\n\n[processes.web]\ncommand = [\"/srv\"]\nports = [8080]\n";

/// A control plane on a fresh database, and what `sb` needs to reach it.
struct Env {
    url: String,
    token: String,
    data: PathBuf,
    cfg: PathBuf,
    work: PathBuf,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start(f: impl FnOnce(&mut ControlConfig)) -> Env {
    let tdb = scalebox_testkit::test_db().await;
    let (data, cfg, work) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut config = ControlConfig {
        data_dir: data.path().to_path_buf(),
        ..ControlConfig::default()
    };
    f(&mut config);
    let ctl = Control::open(config, &tdb.url).await.unwrap();
    let token = bootstrap(&ctl).await.unwrap().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _keep = tdb;
        axum::serve(listener, router(ctl)).await.unwrap()
    });
    std::fs::write(work.path().join("scalebox.toml"), MANIFEST).unwrap();
    Env {
        url,
        token,
        data: data.path().to_path_buf(),
        cfg: cfg.path().to_path_buf(),
        work: work.path().to_path_buf(),
        _dirs: vec![data, cfg, work],
    }
}

impl Env {
    /// Runs `sb` for app `shop` against `url` (stdin, stdout, stderr not terminals).
    fn sb_at(&self, url: &str, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.args(["--app", "shop"])
            .args(args)
            .current_dir(&self.work)
            .env("SCALEBOX_CONFIG_DIR", &self.cfg)
            .env("SCALEBOX_URL", url)
            .env("SCALEBOX_TOKEN", &self.token);
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

    fn sb(&self, args: &[&str]) -> Output {
        self.sb_at(&self.url, args)
    }

    /// The images the control plane keeps (`data_dir/images/<org>/<hex>.tar`).
    fn stored(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for org in std::fs::read_dir(self.data.join("images"))
            .into_iter()
            .flatten()
        {
            let org = org.unwrap().path();
            if org.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            for f in std::fs::read_dir(&org).unwrap() {
                out.push(f.unwrap().path());
            }
        }
        out
    }
}

/// A real OCI layout at `dir` (one layer holding `size` pseudo-random bytes, seeded, so it
/// hardly compresses), tagged `latest`; its manifest digest.
fn layout(dir: &Path, seed: u32, size: usize) -> String {
    let root = dir.with_extension("root");
    std::fs::create_dir_all(root.join("srv")).unwrap();
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("srv/data.bin"), data).unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let cfg = scalebox_image::ImageConfig {
        cmd: vec!["/srv".into()],
        ..Default::default()
    };
    scalebox_image::build::write_oci_layout(dir, &[layer], &cfg, "latest").unwrap()
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_layouts_are_packed_uploaded_and_verified() {
    let e = start(|_| {}).await;
    let work = e.work.clone();
    let lay = work.join("layout");
    let digest = layout(&lay, 1, 300_000);
    let e = std::sync::Arc::new(e);
    let t = e.clone();
    tokio::task::spawn_blocking(move || {
        let e = t;
        ok(&e.sb(&["apps", "create", "shop"]));
        ok(&e.sb(&["envs", "create", "prod"]));
        // Packed, uploaded, verified by the server; the release pins the manifest digest.
        let image = format!("oci:{}", lay.display());
        let o = e.sb(&["releases", "create", "--image", &image]);
        let out = ok(&o);
        assert!(
            out.contains(&format!("Created release v1 of shop ({digest})")),
            "{out}"
        );
        let err = stderr(&o);
        assert!(err.contains("(OCI layout, 3 blobs, "), "{err}");
        assert!(err.contains(&format!("Uploaded {digest}")), "{err}");
        let r = json(&e.sb(&["--json", "releases", "get", "1"]));
        assert_eq!(r["image_ref"], format!("upload:{digest}"));
        assert_eq!(r["image_digest"], digest.as_str());
        let stored = e.stored();
        assert_eq!(stored.len(), 1, "{stored:?}");
        let resolved = scalebox_image::oci::resolve(&scalebox_image::ImageSource::Archive {
            path: stored[0].clone(),
        })
        .unwrap();
        assert_eq!(resolved.digest, digest, "the stored archive is the image");

        // Named by tag, the same image: the org has it, nothing is sent.
        let o = e.sb(&[
            "deploy",
            "--env",
            "prod",
            "--no-wait",
            "--image",
            &format!("{image}:latest"),
        ]);
        assert!(stderr(&o).contains("already uploaded"), "{}", stderr(&o));

        // Not layouts: refused before anything is sent (exit 1), nothing created.
        let empty = work.join("empty");
        std::fs::create_dir(&empty).unwrap();
        let o = e.sb(&[
            "releases",
            "create",
            "--image",
            &format!("oci:{}", empty.display()),
            "--digest",
            &digest,
        ]);
        let err = fails(&o, 1);
        assert!(
            err.contains("is not an OCI image layout: no readable oci-layout"),
            "{err}"
        );
        let o = e.sb(&[
            "releases",
            "create",
            "--image",
            &format!("oci:{}", empty.display()),
        ]);
        let err = fails(&o, 1);
        assert!(err.contains("index.json"), "{err}");
        let o = e.sb(&["releases", "create", "--image", &format!("{image}:v9")]);
        let err = fails(&o, 1);
        assert!(err.contains("\"v9\""), "{err}");

        // A second image with a blob missing, then with a blob that is not its digest.
        let lay2 = work.join("layout2");
        let d2 = layout(&lay2, 2, 200_000);
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(&lay2, &d2)).unwrap()).unwrap();
        let layer = blob(&lay2, m["layers"][0]["digest"].as_str().unwrap());
        let saved = std::fs::read(&layer).unwrap();
        std::fs::remove_file(&layer).unwrap();
        let image2 = format!("oci:{}", lay2.display());
        let err = fails(&e.sb(&["releases", "create", "--image", &image2]), 1);
        assert!(
            err.contains("(layer) is missing from blobs/sha256/"),
            "{err}"
        );
        let mut bad = saved.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        std::fs::write(&layer, &bad).unwrap();
        let err = fails(&e.sb(&["releases", "create", "--image", &image2]), 1);
        assert!(err.contains("uploading the image failed"), "{err}");
        assert!(err.contains("does not match its digest"), "{err}");
        assert_eq!(e.stored().len(), 1, "nothing kept of the bad upload");
        let list = json(&e.sb(&["--json", "releases", "list"]));
        assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    })
    .await
    .unwrap();
}
