//! Archives and layouts as sources: what is refused and how (a blob that does not match its
//! digest, a missing blob, bad JSON, oversized metadata, bad gzip), legacy `docker save`
//! archives, a layer listed twice, and multi-platform images (an index.json naming an image
//! index with several platforms): the linux/amd64 image runs, known by the index's digest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::header;
use scalebox_image::oci::{resolve, sha256};
use scalebox_image::{ImageCache, ImageError, ImageSource};
use serde_json::{Value, json};

/// A gzip'd layer holding `name` with `content`.
fn layer(name: &str, content: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut header(content.len() as u64), name, content.as_bytes())
        .unwrap();
    let raw = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, &raw).unwrap();
    e.finish().unwrap()
}

/// A layout being written: blobs by content.
struct Layout(PathBuf);

impl Layout {
    fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout(dir.to_owned())
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.0.join("blobs/sha256").join(&digest[7..])
    }

    /// Stores `data`; its descriptor.
    fn put(&self, media_type: &str, data: &[u8]) -> Value {
        let d = sha256(data);
        std::fs::write(self.blob_path(&d), data).unwrap();
        json!({"mediaType": media_type, "digest": d, "size": data.len()})
    }

    fn json(&self, media_type: &str, v: Value) -> Value {
        self.put(media_type, &serde_json::to_vec(&v).unwrap())
    }

    /// An image manifest with these layers and `Cmd` `cmd`; its descriptor.
    fn image(&self, layers: &[&[u8]], cmd: &str) -> Value {
        let cfg = self.json(
            "application/vnd.oci.image.config.v1+json",
            json!({"config": {"Cmd": [cmd]}, "rootfs": {"type": "layers", "diff_ids": []}}),
        );
        let ls: Vec<Value> = layers
            .iter()
            .map(|l| self.put("application/vnd.oci.image.layer.v1.tar+gzip", l))
            .collect();
        self.json(
            "application/vnd.oci.image.manifest.v1+json",
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "config": cfg, "layers": ls}),
        )
    }

    fn index(&self, manifests: Vec<Value>) {
        std::fs::write(
            self.0.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
        )
        .unwrap();
    }

    fn archive(&self, out: &Path) -> ImageSource {
        scalebox_image::build::write_oci_archive(&self.0, out).unwrap();
        ImageSource::Archive {
            path: out.to_owned(),
        }
    }
}

fn with_platform(mut d: Value, os: &str, arch: &str, variant: Option<&str>) -> Value {
    d["platform"] = json!({"os": os, "architecture": arch});
    if let Some(v) = variant {
        d["platform"]["variant"] = json!(v);
    }
    d
}

fn err(src: &ImageSource) -> ImageError {
    match resolve(src) {
        Ok(r) => panic!("resolved {}", r.digest),
        Err(e) => e,
    }
}

fn debugfs_cat(img: &Path, file: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn multi_platform_index_runs_its_linux_amd64_image() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("layout"));
    let amd = l.image(&[&layer("arch", "amd64")], "/amd64");
    let arm = l.image(&[&layer("arch", "arm64")], "/arm64");
    let attestation = l.json(
        "application/vnd.oci.image.manifest.v1+json",
        json!({"schemaVersion": 2, "layers": []}),
    );
    let mut attestation = with_platform(attestation, "unknown", "unknown", None);
    attestation["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    // As buildx and `docker save` write them: index.json names an index of platforms.
    let nested = l.json(
        "application/vnd.oci.image.index.v1+json",
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [with_platform(arm.clone(), "linux", "arm64", Some("v8")),
                             with_platform(amd.clone(), "linux", "amd64", Some("v2")),
                             attestation]}),
    );
    let mut top = nested.clone();
    top["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
    l.index(vec![top]);
    let index_digest = nested["digest"].as_str().unwrap().to_owned();

    let archive = l.archive(&t.path().join("multi.tar"));
    for src in [
        archive.clone(),
        ImageSource::OciLayout {
            dir: l.0.clone(),
            reference: None,
        },
        ImageSource::OciLayout {
            dir: l.0.clone(),
            reference: Some("latest".into()),
        },
    ] {
        let r = resolve(&src).unwrap();
        assert_eq!(
            r.digest, index_digest,
            "known by the digest index.json names"
        );
        assert_eq!(r.config.cmd, ["/amd64"]);
        assert_eq!(r.layers.len(), 1);
        assert_eq!(r.layers[0].digest, sha256(&layer("arch", "amd64")));
    }
    let cache = ImageCache::open(&t.path().join("cache")).unwrap();
    let built = cache.rootfs(&archive).unwrap();
    assert_eq!(built.digest, index_digest);
    assert_eq!(debugfs_cat(&built.ext4, "/arch"), "amd64");

    // Without linux/amd64: refused, naming the platforms there are.
    let arm_only = l.json(
        "application/vnd.oci.image.index.v1+json",
        json!({"schemaVersion": 2, "manifests": [
            with_platform(arm.clone(), "linux", "arm64", Some("v8")),
            with_platform(arm, "linux", "arm", Some("v7"))]}),
    );
    l.index(vec![arm_only]);
    let e = err(&l.archive(&t.path().join("arm.tar")));
    assert!(matches!(e, ImageError::Platform(_)), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("has no linux/amd64 image")
            && e.contains("(it has linux/arm64/v8, linux/arm/v7)"),
        "{e}"
    );

    // One manifest, no platform said: that one.
    l.index(vec![amd.clone()]);
    let r = resolve(&l.archive(&t.path().join("single.tar"))).unwrap();
    assert_eq!(r.digest, amd["digest"].as_str().unwrap());
    assert_eq!(r.config.cmd, ["/amd64"]);
}

#[test]
fn broken_archives_are_refused_with_the_reason() {
    let t = tempfile::tempdir().unwrap();
    let l = Layout::new(&t.path().join("layout"));
    let data = layer("f", "data");
    // The same layer twice (as images with repeated empty layers have): both are read.
    let m = l.image(&[&data, &data], "/app");
    l.index(vec![m.clone()]);
    let r = resolve(&l.archive(&t.path().join("ok.tar"))).unwrap();
    assert_eq!(r.layers.len(), 2);
    assert_eq!(r.layers[0], r.layers[1]);

    // A layer that is not what its digest says: a digest mismatch, also when building.
    let lp = l.blob_path(&sha256(&data));
    let mut bad = data.clone();
    let n = bad.len();
    bad[n - 10] ^= 0xff;
    std::fs::write(&lp, &bad).unwrap();
    let src = l.archive(&t.path().join("corrupt.tar"));
    let e = err(&src);
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    let cache_dir = t.path().join("cache");
    let e = ImageCache::open(&cache_dir)
        .unwrap()
        .rootfs(&src)
        .unwrap_err();
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    assert!(
        std::fs::read_dir(&cache_dir)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".ext4")),
        "nothing cached"
    );

    // A missing layer blob.
    std::fs::remove_file(&lp).unwrap();
    let e = err(&l.archive(&t.path().join("missing.tar"))).to_string();
    assert!(
        e.contains(&format!("blob {} is missing from the image", sha256(&data))),
        "{e}"
    );

    // A layer whose gzip is broken but whose digest is right (so built that way): said so.
    let mut truncated = data.clone();
    truncated.truncate(data.len() - 12);
    let m = l.image(&[&truncated], "/app");
    l.index(vec![m]);
    let e = ImageCache::open(&cache_dir)
        .unwrap()
        .rootfs(&l.archive(&t.path().join("badgz.tar")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad gzip data"), "{e}");

    // A manifest that is not JSON; an index.json that is not JSON.
    let junk = l.put("application/vnd.oci.image.manifest.v1+json", b"{not json");
    l.index(vec![junk]);
    let e = err(&l.archive(&t.path().join("junk.tar"))).to_string();
    assert!(e.contains("manifest is not valid JSON"), "{e}");
    std::fs::write(l.0.join("index.json"), b"[").unwrap();
    let e = err(&l.archive(&t.path().join("junkindex.tar"))).to_string();
    assert!(e.contains("index.json is not valid JSON"), "{e}");

    // Metadata of more than 4 MiB is not read.
    let mut huge =
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [m_desc(&l)]})).unwrap();
    huge.resize(huge.len() + (5 << 20), b' ');
    std::fs::write(l.0.join("index.json"), &huge).unwrap();
    let e = err(&l.archive(&t.path().join("huge.tar"))).to_string();
    assert!(
        e.contains("index.json is") && e.contains("limited to 4 MiB"),
        "{e}"
    );

    // Neither kind of archive.
    let e = err(&ImageSource::Archive {
        path: {
            let p = t.path().join("plain.tar");
            let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
            b.append_path_with_name(l.0.join("oci-layout"), "oci-layout")
                .unwrap();
            b.finish().unwrap();
            p
        },
    })
    .to_string();
    assert!(e.contains("is neither an OCI archive"), "{e}");
}

fn m_desc(l: &Layout) -> Value {
    l.image(&[&layer("g", "g")], "/g")
}

/// A legacy `docker save` archive: `manifest.json`, `<id>/layer.tar` checked against the
/// config's diff IDs, entries named `./…` as some tools write them.
#[test]
fn docker_save_archives() {
    let t = tempfile::tempdir().unwrap();
    let raw = {
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(5), "hello", &b"saved"[..])
            .unwrap();
        b.into_inner().unwrap()
    };
    let cfg = serde_json::to_vec(&json!({"config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&raw)]}}))
    .unwrap();
    let write = |name: &str, layer: &[u8], manifest: Value| -> ImageSource {
        let p = t.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        let files: [(&str, &[u8]); 3] = [
            ("./manifest.json", &serde_json::to_vec(&manifest).unwrap()),
            ("./abc.json", &cfg),
            ("./abc/layer.tar", layer),
        ];
        for (n, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, n, data).unwrap();
        }
        b.finish().unwrap();
        ImageSource::Archive { path: p }
    };
    let manifest = json!([{"Config": "abc.json", "Layers": ["abc/layer.tar"]}]);
    let src = write("saved.tar", &raw, manifest.clone());
    let r = resolve(&src).unwrap();
    assert_eq!(r.digest, sha256(&cfg));
    assert_eq!(r.config.cmd, ["/hello"]);
    let built = ImageCache::open(&t.path().join("cache"))
        .unwrap()
        .rootfs(&src)
        .unwrap();
    assert_eq!(debugfs_cat(&built.ext4, "/hello"), "saved");

    let mut tampered = raw.clone();
    tampered[600] ^= 1;
    let e = err(&write("tampered.tar", &tampered, manifest));
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    let e = err(&write(
        "missing.tar",
        &raw,
        json!([{"Config": "abc.json", "Layers": ["def/layer.tar"]}]),
    ))
    .to_string();
    assert!(e.contains("layer def/layer.tar is missing"), "{e}");
}
