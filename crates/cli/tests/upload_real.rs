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

    /// `sb releases create --image IMAGE`, which must create release `v` pinned to `digest`.
    fn create_release(&self, image: &str, v: u32, digest: &str) -> Output {
        let o = self.sb(&["releases", "create", "--image", image]);
        let out = ok(&o);
        assert!(
            out.contains(&format!("Created release v{v} of shop ({digest})")),
            "{out}"
        );
        o
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
    // xorshift64: does not compress.
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed as u64;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(root.join("srv/data.bin"), data).unwrap();
    let layer = scalebox_image::build::layer_from_dir(&root).unwrap();
    let cfg = scalebox_image::ImageConfig {
        cmd: vec!["/srv".into()],
        ..Default::default()
    };
    scalebox_image::build::write_oci_layout(dir, &[layer], &cfg, "latest").unwrap()
}

/// The digest the server's stored archive at `path` resolves to (what it will run).
fn kept_digest(path: &Path) -> String {
    scalebox_image::oci::resolve(&scalebox_image::ImageSource::Archive {
        path: path.to_path_buf(),
    })
    .unwrap()
    .digest
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
        let o = e.create_release(&image, 1, &digest);
        let err = stderr(&o);
        assert!(err.contains("(OCI layout, 3 blobs, "), "{err}");
        assert!(err.contains(&format!("Uploaded {digest}")), "{err}");
        let r = json(&e.sb(&["--json", "releases", "get", "1"]));
        assert_eq!(r["image_ref"], format!("upload:{digest}"));
        assert_eq!(r["image_digest"], digest.as_str());
        let stored = e.stored();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(
            kept_digest(&stored[0]),
            digest,
            "the stored archive is the image"
        );

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

/// A layout at `dir` whose `index.json` lists a linux/arm64 and a linux/amd64 image directly (no
/// nested index, no tags), as `skopeo copy --all` writes one; (amd64, arm64) manifest digests.
fn multi_platform_layout(dir: &Path, seed: u32) -> (String, String) {
    let amd64 = layout(dir, seed, 100_000);
    let arm64 = layout(dir, seed + 1, 100_000);
    let desc = |d: &str, arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": std::fs::metadata(blob(dir, d)).unwrap().len(),
            "platform": {"os": "linux", "architecture": arch}})
    };
    let index = serde_json::json!({"schemaVersion": 2,
        "manifests": [desc(&arm64, "arm64"), desc(&amd64, "amd64")]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    (amd64, arm64)
}

/// An image listing several platforms, named without a tag, is its linux/amd64 image: sb pins
/// and uploads under that manifest's digest, which is the digest the server verifies the upload
/// against and the image it keeps, for a layout (packed) and for an archive (sent as it is).
#[tokio::test(flavor = "multi_thread")]
async fn several_platforms_without_a_tag_upload_the_linux_amd64_image() {
    let e = std::sync::Arc::new(start(|_| {}).await);
    let t = e.clone();
    tokio::task::spawn_blocking(move || {
        let e = t;
        ok(&e.sb(&["apps", "create", "shop"]));
        let lay = e.work.join("multi");
        let (amd64, arm64) = multi_platform_layout(&lay, 10);
        let o = e.create_release(&format!("oci:{}", lay.display()), 1, &amd64);
        assert!(
            stderr(&o).contains(&format!("Uploaded {amd64}")),
            "{}",
            stderr(&o)
        );
        let stored = e.stored();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert_eq!(
            kept_digest(&stored[0]),
            amd64,
            "the server kept the linux/amd64 image"
        );

        // An OCI archive of such a layout, sent as it is: the server makes the same choice.
        let lay2 = e.work.join("multi2");
        let (amd64, _) = multi_platform_layout(&lay2, 20);
        let tar = e.work.join("multi2.tar");
        scalebox_image::build::write_oci_archive(&lay2, &tar).unwrap();
        let o = e.create_release(&format!("oci-archive:{}", tar.display()), 2, &amd64);
        assert!(
            stderr(&o).contains(&format!("Uploaded {amd64}")),
            "{}",
            stderr(&o)
        );
        let r = json(&e.sb(&["--json", "releases", "get", "2"]));
        assert_eq!(r["image_ref"], format!("upload:{amd64}"));
        assert_eq!(e.stored().len(), 2);

        // --digest still names another platform's image, which the server refuses to run.
        let o = e.sb(&[
            "releases",
            "create",
            "--image",
            &format!("oci:{}", lay.display()),
            "--digest",
            &arm64,
        ]);
        let err = fails(&o, 1);
        assert!(err.contains("has no linux/amd64 image"), "{err}");
        assert_eq!(e.stored().len(), 2, "nothing kept");

        // The same two images under one tagged multi-platform index (as `docker buildx
        // --output type=oci` writes it): the release pins the index, and only the linux/amd64
        // image goes up; the server verifies and keeps it.
        let lay3 = e.work.join("multi3");
        let (amd64, arm64) = multi_platform_layout(&lay3, 30);
        let inner = std::fs::read(lay3.join("index.json")).unwrap();
        let index = scalebox_image::oci::sha256(&inner);
        std::fs::write(blob(&lay3, &index), &inner).unwrap();
        let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index,
            "size": inner.len(), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
        std::fs::write(lay3.join("index.json"), top.to_string()).unwrap();
        e.create_release(&format!("oci:{}:latest", lay3.display()), 3, &index);
        let stored = e.stored();
        assert_eq!(stored.len(), 3, "{stored:?}");
        let kept = stored
            .iter()
            .find(|p| {
                p.to_string_lossy()
                    .contains(index.trim_start_matches("sha256:"))
            })
            .unwrap_or_else(|| panic!("{index} not among {stored:?}"));
        assert_eq!(kept_digest(kept), index);
        let list = std::process::Command::new("tar")
            .arg("-tf")
            .arg(kept)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&list.stdout).to_string();
        let hex_of = |d: &str| d.trim_start_matches("sha256:").to_owned();
        assert!(list.contains(&hex_of(&amd64)), "{list}");
        assert!(!list.contains(&hex_of(&arm64)), "arm64 stayed home: {list}");
    })
    .await
    .unwrap();
}

/// A TCP proxy to the control plane that forwards at most `budget` bytes from clients to the
/// server (all connections together) and counts them. Past the budget it either cuts every
/// connection and refuses new ones (the network went away), or (`stall`) swallows what the
/// client sends without passing it on, until the client goes away.
struct Proxy {
    url: String,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn proxy(server: &str, budget: u64, stall: bool) -> Proxy {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::Ordering::SeqCst;

    let target: std::net::SocketAddr = server.trim_start_matches("http://").parse().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let f = forwarded.clone();
    std::thread::spawn(move || {
        for client in l.incoming() {
            let Ok(mut client) = client else { return };
            if !stall && f.load(SeqCst) >= budget {
                continue; // dropped: refused
            }
            let mut server = TcpStream::connect(target).unwrap();
            let (mut s2, mut c2) = (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Both);
            });
            let f = f.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let room = budget.saturating_sub(f.load(SeqCst)) as usize;
                    let k = n.min(room);
                    if k > 0 && server.write_all(&buf[..k]).is_err() {
                        break;
                    }
                    f.fetch_add(k as u64, SeqCst);
                    if k < n || f.load(SeqCst) >= budget {
                        if stall {
                            while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
                        }
                        break;
                    }
                }
                let _ = server.shutdown(Shutdown::Both);
                let _ = client.shutdown(Shutdown::Both);
            });
        }
    });
    Proxy { url, forwarded }
}

/// The server's offset for a partial upload of `digest` once it stops moving (the server
/// finishes writing what it received after the connection is gone).
fn settled_offset(url: &str, token: &str, digest: &str) -> Option<u64> {
    let head = || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let r = agent
            .head(&format!("{url}/v1/orgs/default/images/{digest}"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        r.headers()
            .get("upload-offset")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    let mut last = head();
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = head();
        if now == last && now.is_some() {
            return now;
        }
        last = now;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_upload_resumes_where_the_server_stopped() {
    use std::sync::atomic::Ordering::SeqCst;

    let e = std::sync::Arc::new(start(|_| {}).await);
    let t = e.clone();
    tokio::task::spawn_blocking(move || {
        let e = t;
        ok(&e.sb(&["apps", "create", "shop"]));
        let lay = e.work.join("big");
        let digest = layout(&lay, 3, 6 << 20);
        let image = format!("oci:{}", lay.display());
        let mib = 1u64 << 20;

        // 1. The network goes away after 1.5 MiB: exit 6, saying how to resume.
        let p = proxy(&e.url, 3 * mib / 2, false);
        let o = e.sb_at(&p.url, &["releases", "create", "--image", &image]);
        let err = fails(&o, 6);
        assert!(err.contains("Uploading "), "{err}");
        assert!(
            err.contains("run the same command again to resume"),
            "{err}"
        );
        let first = settled_offset(&e.url, &e.token, &digest).expect("a partial upload");
        assert!(first > mib && first <= 3 * mib / 2, "{first}");

        // 2. Re-run: it resumes there; Ctrl-C part-way leaves the server consistent and says
        //    how to resume (exit 130).
        let p = proxy(&e.url, mib, true);
        let mut c = Command::new(env!("CARGO_BIN_EXE_sb"));
        c.args(["--app", "shop", "releases", "create", "--image", &image])
            .current_dir(&e.work)
            .env("SCALEBOX_CONFIG_DIR", &e.cfg)
            .env("SCALEBOX_URL", &p.url)
            .env("SCALEBOX_TOKEN", &e.token)
            .env_remove("SCALEBOX_JSON")
            .env_remove("SCALEBOX_ORG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = c.spawn().unwrap();
        for _ in 0..200 {
            if p.forwarded.load(SeqCst) >= mib {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(p.forwarded.load(SeqCst), mib, "the second run sent its first MiB");
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let o = child.wait_with_output().unwrap();
        let err = fails(&o, 130);
        assert!(
            err.contains(&format!(
                "Resuming the upload of {} (OCI layout",
                lay.display()
            )),
            "{err}"
        );
        assert!(
            err.contains("upload interrupted: the server keeps what it received for a day: run the same command again to resume"),
            "{err}"
        );
        let second = settled_offset(&e.url, &e.token, &digest).expect("a partial upload");
        assert!(
            second > first + mib - 4096 && second <= first + mib,
            "{first} → {second}"
        );

        // 3. Re-run: only the rest is sent, the server verifies the whole and keeps it.
        let p = proxy(&e.url, u64::MAX, false);
        let o = e.sb_at(&p.url, &["releases", "create", "--image", &image]);
        let out = ok(&o);
        assert!(out.contains("Created release v1"), "{out}");
        let err = stderr(&o);
        assert!(err.contains("Resuming the upload"), "{err}");
        assert!(err.contains(&format!("Uploaded {digest}")), "{err}");
        let total = std::fs::metadata(&e.stored()[0]).unwrap().len();
        let sent = p.forwarded.load(SeqCst);
        assert!(
            sent >= total - second && sent < total - second + 4096,
            "sent {sent} bytes for the remaining {} of {total}",
            total - second
        );
        assert!(total > 6 * mib, "{total}");
        let r = json(&e.sb(&["--json", "releases", "get", "1"]));
        assert_eq!(r["image_ref"], format!("upload:{digest}"));
        let partial = e.data.join("images/.partial");
        let left: Vec<_> = std::fs::read_dir(&partial)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    })
    .await
    .unwrap();
}
