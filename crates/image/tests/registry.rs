//! Pulling from a real registry: Debian's `docker-registry` started by the test on loopback, an
//! image pushed to it through the registry HTTP API by the test, then pulled into the cache;
//! a tampered blob in the registry's storage is refused.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use scalebox_testkit::registry::start_registry;

use scalebox_image::build::write_oci_layout;
use scalebox_image::{ImageCache, ImageConfig, ImageError, ImageSource};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Pushes the image in `layout` (one manifest) as `name:tag`.
fn push(port: u16, layout: &Path, name: &str, tag: &str) {
    let a = agent();
    let base = format!("http://127.0.0.1:{port}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| {
        std::fs::read(
            layout
                .join("blobs/sha256")
                .join(d.trim_start_matches("sha256:")),
        )
        .unwrap()
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(mdigest)).unwrap();
    let mut digests = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    for l in manifest["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in digests {
        let r = a
            .post(&format!("{base}/v2/{name}/blobs/uploads/"))
            .send(&[][..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let loc = r
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{base}{loc}")
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = a
            .put(&format!("{loc}{sep}digest={d}"))
            .header("Content-Type", "application/octet-stream")
            .send(&blob(&d)[..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "blob {d}");
    }
    let r = a
        .put(&format!("{base}/v2/{name}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send(&blob(mdigest)[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "manifest");
}

#[test]
fn pulls_from_a_real_registry_and_refuses_tampered_blobs() {
    let t = tempfile::tempdir().unwrap();
    let reg = start_registry(t.path());
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("srv")).unwrap();
    std::fs::write(tree.join("srv/hello.txt"), "pulled").unwrap();
    let layer = scalebox_image::build::layer_from_dir(&tree).unwrap();
    let cfg = ImageConfig {
        cmd: vec!["/srv/app".into()],
        working_dir: Some("/srv".into()),
        ..Default::default()
    };
    write_oci_layout(&t.path().join("layout"), &[layer], &cfg, "v1").unwrap();
    push(reg.port, &t.path().join("layout"), "team/app", "v1");

    let cache = ImageCache::open(&t.path().join("cache")).unwrap();
    let src = ImageSource::Registry {
        reference: format!("127.0.0.1:{}/team/app:v1", reg.port),
        insecure_http: true,
    };
    let r = cache.rootfs(&src).unwrap();
    assert_eq!(r.config.cmd, ["/srv/app"]);
    assert_eq!(r.config.working_dir.as_deref(), Some("/srv"));
    let out = Command::new("debugfs")
        .args(["-R", "cat /srv/hello.txt"])
        .arg(&r.ext4)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pulled");
    assert!(cache.rootfs(&src).unwrap().cache_hit);

    // Tamper with the layer as stored by the registry: the pull is refused, nothing cached.
    let mut layer_file = None;
    for e in walk(&t.path().join("storage")) {
        if e.ends_with("data") {
            let mut head = [0u8; 2];
            if std::fs::File::open(&e)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head == [0x1f, 0x8b]
            {
                layer_file = Some(e);
            }
        }
    }
    let lf = layer_file.expect("the registry stored the layer blob");
    let mut b = std::fs::read(&lf).unwrap();
    let n = b.len();
    b[n - 12] ^= 0x55;
    std::fs::write(&lf, b).unwrap();
    let fresh = ImageCache::open(&t.path().join("cache2")).unwrap();
    match fresh.rootfs(&src) {
        Err(e @ ImageError::Digest { .. }) => assert!(e.to_string().contains("digest mismatch")),
        other => panic!("tampered blob accepted: {other:?}"),
    }
    assert!(
        std::fs::read_dir(t.path().join("cache2"))
            .unwrap()
            .flatten()
            .all(|e| !e.path().to_string_lossy().ends_with(".ext4"))
    );
    // A bad reference is a clear error.
    let e = fresh
        .rootfs(&ImageSource::Registry {
            reference: "127.0.0.1:1/Bad_Name:latest".into(),
            insecure_http: true,
        })
        .unwrap_err();
    assert!(e.to_string().contains("invalid repository name"), "{e}");
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
