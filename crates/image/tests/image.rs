//! OCI images to ext4, checked with e2fsprogs' debugfs (no mounting): layer semantics, refusal of
//! unsafe layers and corrupt blobs (nothing cached), archive sources, build-once under
//! concurrency, copy-on-write clones.

use std::path::{Path, PathBuf};
use std::process::Command;

use scalebox_image::build::{layer_from_dir, write_oci_archive, write_oci_layout};
use scalebox_image::{ImageCache, ImageConfig, ImageError, ImageSource, clone_file};

/// A gzip'd tar built entry by entry with raw names (so tests can write hostile paths).
struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> Self {
        RawTar(tar::Builder::new(Vec::new()))
    }
    fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
        mode: u32,
        uid: u64,
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        let n = name.as_bytes();
        h.as_gnu_mut().unwrap().name[..n.len()].copy_from_slice(n);
        if let Some(l) = link {
            h.as_gnu_mut().unwrap().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(uid);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(self, name: &str, data: &str) -> Self {
        self.entry(
            name,
            tar::EntryType::Regular,
            None,
            data.as_bytes(),
            0o644,
            0,
        )
    }
    fn gz(self) -> Vec<u8> {
        let raw = self.0.into_inner().unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &raw).unwrap();
        e.finish().unwrap()
    }
}

fn debugfs(img: &Path, cmd: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-R", cmd])
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn layout(dir: &Path, layers: &[Vec<u8>]) -> ImageSource {
    let cfg = ImageConfig {
        entrypoint: vec!["/bin/app".into()],
        env: vec!["A=1".into()],
        user: Some("1000".into()),
        ..Default::default()
    };
    write_oci_layout(&dir.join("layout"), layers, &cfg, "v1").unwrap();
    ImageSource::OciLayout {
        dir: dir.join("layout"),
        reference: Some("v1".into()),
    }
}

fn cached(cache_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "ext4"))
        .collect()
}

#[test]
fn layers_whiteouts_links_modes_owners() {
    let t = tempfile::tempdir().unwrap();
    let base = RawTar::new()
        .entry("etc/", tar::EntryType::Directory, None, b"", 0o755, 0)
        .file("etc/keep", "keep")
        .file("etc/gone", "gone")
        .entry("opaque/", tar::EntryType::Directory, None, b"", 0o755, 0)
        .file("opaque/old", "old")
        .entry(
            "bin/app",
            tar::EntryType::Regular,
            None,
            b"#!/bin/sh\n",
            0o4755,
            0,
        )
        .entry(
            "home/u/secret",
            tar::EntryType::Regular,
            None,
            b"s",
            0o600,
            1000,
        )
        .gz();
    let top = RawTar::new()
        .entry("etc/.wh.gone", tar::EntryType::Regular, None, b"", 0o644, 0)
        .entry(
            "opaque/.wh..wh..opq",
            tar::EntryType::Regular,
            None,
            b"",
            0o644,
            0,
        )
        .file("opaque/new", "new")
        .entry(
            "bin/link",
            tar::EntryType::Symlink,
            Some("app"),
            b"",
            0o777,
            0,
        )
        .entry(
            "bin/hard",
            tar::EntryType::Link,
            Some("bin/app"),
            b"",
            0o755,
            0,
        )
        .entry(
            "bin/abs",
            tar::EntryType::Symlink,
            Some("/bin/app"),
            b"",
            0o777,
            0,
        )
        .gz();
    let src = layout(t.path(), &[base, top]);
    let cache = ImageCache::open(&t.path().join("cache")).unwrap();
    let r = cache.rootfs(&src).unwrap();
    assert!(!r.cache_hit);
    assert_eq!(r.config.entrypoint, ["/bin/app"]);
    assert_eq!(r.config.user.as_deref(), Some("1000"));
    let ls = debugfs(&r.ext4, "ls -l /etc");
    assert!(ls.contains("keep") && !ls.contains("gone"), "{ls}");
    let ls = debugfs(&r.ext4, "ls -l /opaque");
    assert!(
        ls.contains("new") && !ls.contains("old"),
        "opaque dir hides lower entries: {ls}"
    );
    let st = debugfs(&r.ext4, "stat /bin/app");
    assert!(st.contains("Mode:  04755"), "setuid mode kept: {st}");
    assert!(st.contains("Links: 2"), "hardlink shares the inode: {st}");
    let st = debugfs(&r.ext4, "stat /home/u/secret");
    assert!(
        st.contains("User:  1000") && st.contains("Mode:  0600"),
        "{st}"
    );
    assert!(debugfs(&r.ext4, "stat /bin/link").contains("Fast link dest: \"app\""));
    assert!(debugfs(&r.ext4, "stat /bin/abs").contains("Fast link dest: \"/bin/app\""));
    // Second request: cache hit, same file.
    let again = cache.rootfs(&src).unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.ext4, r.ext4);
}

#[test]
fn unsafe_layers_are_refused_and_nothing_is_cached() {
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "contains `..`",
            vec![RawTar::new().file("../evil", "x").gz()],
        ),
        (
            "absolute path",
            vec![RawTar::new().file("/etc/evil", "x").gz()],
        ),
        (
            "climbs out",
            vec![
                RawTar::new()
                    .entry(
                        "a/up",
                        tar::EntryType::Symlink,
                        Some("../../../etc/passwd"),
                        b"",
                        0o777,
                        0,
                    )
                    .gz(),
            ],
        ),
        (
            "outside the image root",
            vec![
                RawTar::new()
                    .entry(
                        "h",
                        tar::EntryType::Link,
                        Some("../../etc/shadow"),
                        b"",
                        0o644,
                        0,
                    )
                    .gz(),
            ],
        ),
        (
            "through the symlink",
            vec![
                RawTar::new()
                    .entry("lib", tar::EntryType::Symlink, Some("/etc"), b"", 0o777, 0)
                    .gz(),
                RawTar::new().file("lib/passwd", "pwned").gz(),
            ],
        ),
    ];
    for (why, layers) in cases {
        let t = tempfile::tempdir().unwrap();
        let src = layout(t.path(), &layers);
        let cache = ImageCache::open(&t.path().join("cache")).unwrap();
        match cache.rootfs(&src) {
            Err(e @ ImageError::Unsafe { .. }) => {
                assert!(e.to_string().contains(why), "{why}: {e}")
            }
            other => panic!("{why}: expected refusal, got {other:?}"),
        }
        assert!(
            cached(&t.path().join("cache")).is_empty(),
            "{why}: nothing cached"
        );
        assert!(!Path::new("/etc/evil").exists());
    }
}

#[test]
fn corrupt_blob_is_refused_and_not_cached() {
    let t = tempfile::tempdir().unwrap();
    let src = layout(t.path(), &[RawTar::new().file("f", "data").gz()]);
    // Flip a byte in the layer blob.
    let blobs = t.path().join("layout/blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    let mut b = std::fs::read(&layer).unwrap();
    let n = b.len();
    b[n - 10] ^= 0xff;
    std::fs::write(&layer, b).unwrap();
    let cache = ImageCache::open(&t.path().join("cache")).unwrap();
    let e = cache.rootfs(&src).unwrap_err();
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    assert!(e.to_string().contains("digest mismatch"));
    assert!(cached(&t.path().join("cache")).is_empty());
}

#[test]
fn archive_source_concurrent_builds_and_clones() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/hello"), "hi").unwrap();
    let layer = layer_from_dir(&tree).unwrap();
    let digest = write_oci_layout(
        &t.path().join("layout"),
        &[layer],
        &ImageConfig::default(),
        "latest",
    )
    .unwrap();
    let archive = t.path().join("image.tar");
    write_oci_archive(&t.path().join("layout"), &archive).unwrap();
    let src = ImageSource::Archive { path: archive };
    let cache_dir = t.path().join("cache");
    // A crash leftover of this image's build is removed by the next build.
    let leftover = cache_dir.join(format!(
        ".build-{}-999-0",
        digest.trim_start_matches("sha256:")
    ));
    std::fs::create_dir_all(leftover.join("tree")).unwrap();
    let hits: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (src, cache_dir) = (src.clone(), cache_dir.clone());
                s.spawn(move || {
                    ImageCache::open(&cache_dir)
                        .unwrap()
                        .rootfs(&src)
                        .unwrap()
                        .cache_hit
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        hits.iter().filter(|h| !**h).count(),
        1,
        "built exactly once: {hits:?}"
    );
    let r = ImageCache::open(&cache_dir).unwrap().rootfs(&src).unwrap();
    assert!(r.cache_hit);
    assert!(debugfs(&r.ext4, "cat /bin/hello").contains("hi"));
    // A rewritten archive (new content, new mtime) is not mistaken for the cached one.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(tree.join("bin/hello"), "changed").unwrap();
    let layer2 = layer_from_dir(&tree).unwrap();
    let _ = std::fs::remove_dir_all(t.path().join("layout"));
    write_oci_layout(
        &t.path().join("layout"),
        &[layer2],
        &ImageConfig::default(),
        "latest",
    )
    .unwrap();
    let ImageSource::Archive { path } = &src else {
        unreachable!()
    };
    write_oci_archive(&t.path().join("layout"), path).unwrap();
    let r2 = ImageCache::open(&cache_dir).unwrap().rootfs(&src).unwrap();
    assert!(!r2.cache_hit, "new content is built");
    assert!(debugfs(&r2.ext4, "cat /bin/hello").contains("changed"));
    let clone = t.path().join("instance.ext4");
    clone_file(&r.ext4, &clone).unwrap();
    assert_eq!(
        std::fs::read(&clone).unwrap(),
        std::fs::read(&r.ext4).unwrap()
    );
}
