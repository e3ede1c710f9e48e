//! Images are read as streams: verifying an archive, or building a root filesystem from it, with
//! a layer of tens of MiB must not hold that layer in memory. Measured as the growth of this
//! process's peak resident set (`VmHWM`, reset through `/proc/self/clear_refs`) — one test in
//! its own binary, so nothing else runs in the process meanwhile.

mod common;

use std::io::Write;
use std::path::Path;

use common::{BIG, big_layer, debugfs_stat, header, peak_growth_mib};
use scalebox_image::oci::resolve;
use scalebox_image::{ImageCache, ImageSource};
use serde_json::json;
use sha2::{Digest, Sha256};

fn put(dir: &Path, data: &[u8]) -> (String, usize) {
    let d = format!("sha256:{}", hex::encode(Sha256::digest(data)));
    std::fs::write(dir.join("blobs/sha256").join(&d[7..]), data).unwrap();
    (d, data.len())
}

/// An OCI layout at `dir` whose one layer is `big_layer`; returns the manifest digest.
fn layout(dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let tmp = dir.join("layer.tmp");
    let layer = big_layer(&tmp);
    let size = std::fs::metadata(&tmp).unwrap().len();
    std::fs::rename(&tmp, dir.join("blobs/sha256").join(&layer[7..])).unwrap();
    let cfg = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    }))
    .unwrap();
    let (cd, cs) = put(dir, &cfg);
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": size}],
    }))
    .unwrap();
    let (md, ms) = put(dir, &m);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// A legacy `docker save` archive of the same layer: `manifest.json`, a config, `layer.tar`.
fn docker_save(layout_dir: &Path, layer: &str, out: &Path) {
    let cfg = serde_json::to_vec(&json!({
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": [layer]},
    }))
    .unwrap();
    let manifest =
        serde_json::to_vec(&json!([{"Config": "cfg.json", "Layers": ["abc/layer.tar"]}])).unwrap();
    let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out).unwrap()));
    for (name, data) in [("manifest.json", &manifest), ("cfg.json", &cfg)] {
        let mut h = header(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.append_path_with_name(
        layout_dir.join("blobs/sha256").join(&layer[7..]),
        "abc/layer.tar",
    )
    .unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

#[test]
fn verifying_and_building_stream_layers() {
    let t = tempfile::tempdir().unwrap();
    let lay = t.path().join("layout");
    let digest = layout(&lay);
    let archive = t.path().join("image.tar");
    scalebox_image::build::write_oci_archive(&lay, &archive).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lay.join("blobs/sha256").join(&digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_owned();
    let saved = t.path().join("saved.tar");
    docker_save(&lay, &layer, &saved);
    let limit = (BIG >> 20) as f64 / 4.0;

    let (r, grew) = peak_growth_mib(|| {
        resolve(&ImageSource::Archive {
            path: archive.clone(),
        })
    });
    let r = r.unwrap();
    assert_eq!(r.digest, digest);
    eprintln!(
        "verify OCI archive with a {} MiB layer: peak +{grew:.1} MiB",
        BIG >> 20
    );
    assert!(
        grew < limit,
        "verifying held {grew:.1} MiB (limit {limit} MiB)"
    );
    drop(r);

    let (r, grew) = peak_growth_mib(|| {
        resolve(&ImageSource::Archive {
            path: saved.clone(),
        })
    });
    r.unwrap();
    eprintln!("verify docker-save archive: peak +{grew:.1} MiB");
    assert!(
        grew < limit,
        "verifying held {grew:.1} MiB (limit {limit} MiB)"
    );

    let (r, grew) = peak_growth_mib(|| {
        resolve(&ImageSource::OciLayout {
            dir: lay.clone(),
            reference: None,
        })
    });
    r.unwrap();
    eprintln!("verify OCI layout directory: peak +{grew:.1} MiB");
    assert!(
        grew < limit,
        "verifying held {grew:.1} MiB (limit {limit} MiB)"
    );

    let cache = ImageCache::open(&t.path().join("cache")).unwrap();
    let (r, grew) = peak_growth_mib(|| cache.rootfs(&ImageSource::Archive { path: archive }));
    let r = r.unwrap();
    eprintln!("build a rootfs from the OCI archive: peak +{grew:.1} MiB");
    assert!(!r.cache_hit);
    assert!(
        grew < limit,
        "building held {grew:.1} MiB (limit {limit} MiB)"
    );
    let stat = debugfs_stat(&r.ext4, "/big.bin");
    assert!(stat.contains(&format!("Size: {BIG}")), "{stat}");
}
