//! Registry pulls stream: a layer of tens of MiB pulled from a real registry (Debian's
//! `docker-registry`, started by the test on loopback) goes to a file while it is hashed, never
//! into memory, whether the root filesystem cache pulls it (as the agent does) or
//! `registry::pull` does; a layer the registry serves corrupted is refused and leaves no file
//! behind. Peak memory is measured as in `streaming_memory.rs` — one test in its own binary, so
//! nothing else runs in the process meanwhile.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use common::{BIG, big_layer, debugfs_stat, peak_growth_mib};
use scalebox_image::oci::{BlobSource, resolve};
use scalebox_image::{ImageCache, ImageError, ImageSource, registry};
use scalebox_testkit::registry::start_registry;
use serde_json::json;

/// Every entry under `dir` (relative paths, sorted).
fn listing(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn is_digest_mismatch<T: std::fmt::Debug>(r: Result<T, ImageError>) -> bool {
    matches!(r, Err(ImageError::Digest { .. }))
}

#[test]
fn registry_layers_are_streamed_to_disk_and_verified() {
    let t = tempfile::tempdir().unwrap();
    let reg = start_registry(t.path());
    let layer_file = t.path().join("layer.tar");
    let layer = big_layer(&layer_file);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }))
    .unwrap();
    let digest = reg.push_image(
        "team/big",
        "v1",
        &config,
        &[("application/vnd.oci.image.layer.v1.tar", &layer_file)],
    );
    let layer_len = std::fs::metadata(&layer_file).unwrap().len();
    std::fs::remove_file(&layer_file).unwrap();
    let reference = format!("127.0.0.1:{}/team/big:v1", reg.port);
    let src = ImageSource::Registry {
        reference: reference.clone(),
        insecure_http: true,
    };
    let limit = (BIG >> 20) as f64 / 4.0;

    // As the agent builds a root filesystem: pulled into the build's staging directory.
    let cache_dir = t.path().join("cache");
    let cache = ImageCache::open(&cache_dir).unwrap();
    let (r, grew) = peak_growth_mib(|| cache.rootfs(&src));
    let r = r.unwrap();
    eprintln!(
        "build a rootfs from a registry image with a {} MiB layer: peak +{grew:.1} MiB",
        BIG >> 20
    );
    assert!(
        grew < limit,
        "pulling held {grew:.1} MiB (limit {limit} MiB)"
    );
    assert_eq!(r.digest, digest);
    assert!(!r.cache_hit);
    let stat = debugfs_stat(&r.ext4, "/big.bin");
    assert!(stat.contains(&format!("Size: {BIG}")), "{stat}");
    let hex = &digest[7..];
    assert_eq!(
        listing(&cache_dir),
        [
            format!("{hex}.ext4"),
            format!("{hex}.json"),
            format!("{hex}.lock")
        ],
        "no download or staging directory is left"
    );

    // Into a directory of the caller's: the layer is a file there, of its full length.
    let pulled = t.path().join("pulled");
    std::fs::create_dir(&pulled).unwrap();
    let (r, grew) = peak_growth_mib(|| registry::pull(&reference, true, &pulled));
    let r = r.unwrap();
    eprintln!("registry::pull of the same image: peak +{grew:.1} MiB");
    assert!(
        grew < limit,
        "pulling held {grew:.1} MiB (limit {limit} MiB)"
    );
    assert_eq!(r.digest, digest);
    assert_eq!(
        r.layers[0].source,
        BlobSource::File {
            path: pulled.join(&layer[7..]),
            offset: 0,
            len: layer_len
        }
    );
    r.layers[0].source.verify(&layer).unwrap();
    drop(r);

    // The registry serves the layer corrupted (one byte flipped in its storage).
    let stored = reg.blob_file(&layer);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&stored)
        .unwrap();
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(layer_len / 2)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(layer_len / 2)).unwrap();
    f.write_all(&[byte[0] ^ 0x55]).unwrap();
    drop(f);

    // registry::pull: refused, no file (partial or whole) left in the directory.
    let bad = t.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let e = registry::pull(&reference, true, &bad);
    assert!(is_digest_mismatch(e), "a corrupt layer was accepted");
    assert!(listing(&bad).is_empty(), "left behind: {:?}", listing(&bad));

    // The cache: refused, nothing cached and no staging left; an image already cached is
    // still served (its layers are not downloaded again).
    let fresh_dir = t.path().join("fresh");
    let fresh = ImageCache::open(&fresh_dir).unwrap();
    match fresh.rootfs(&src) {
        Err(e @ ImageError::Digest { .. }) => {
            assert!(e.to_string().contains("digest mismatch"), "{e}")
        }
        other => panic!("a corrupt layer was accepted: {other:?}"),
    }
    assert_eq!(
        listing(&fresh_dir),
        [format!("{hex}.lock")],
        "only the build lock is left"
    );
    assert!(cache.rootfs(&src).unwrap().cache_hit);

    // oci::resolve downloads to the temporary directory: refused there too, nothing left.
    let r = resolve(&src);
    assert!(is_digest_mismatch(r), "a corrupt layer was accepted");
    let ours = format!("scalebox-pull-{}-", std::process::id());
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&ours))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
