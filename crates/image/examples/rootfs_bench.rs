//! Root filesystem build benchmark (run by `bench/rootfs/run`, not a test): a ~100 MB image as an
//! OCI archive built cold (empty cache) and warm (cached), against a baseline of plain `tar -x`
//! of the same layer plus `mkfs.ext4 -d` of the same tree, in the same run.
//!
//! Usage: rootfs_bench <work-dir> [megabytes]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use scalebox_image::build::{layer_from_dir, write_oci_archive, write_oci_layout};
use scalebox_image::{ImageCache, ImageConfig, ImageSource};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let work = Path::new(
        a.get(1)
            .expect("usage: rootfs_bench <work-dir> [megabytes]"),
    );
    let mb: usize = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("data")).unwrap();
    // Incompressible-ish content: 1 MiB files of pseudo-random bytes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..mb {
        let mut buf = vec![0u8; 1 << 20];
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        std::fs::write(tree.join(format!("data/f{i:04}")), buf).unwrap();
    }
    let layer = layer_from_dir(&tree).unwrap();
    write_oci_layout(
        &work.join("layout"),
        std::slice::from_ref(&layer),
        &ImageConfig::default(),
        "bench",
    )
    .unwrap();
    let archive = work.join("image.tar");
    write_oci_archive(&work.join("layout"), &archive).unwrap();
    let src = ImageSource::Archive { path: archive };

    let cache = ImageCache::open(&work.join("cache")).unwrap();
    let t = Instant::now();
    let cold = cache.rootfs(&src).unwrap();
    let cold_s = t.elapsed().as_secs_f64();
    assert!(!cold.cache_hit);
    let t = Instant::now();
    let warm = cache.rootfs(&src).unwrap();
    let warm_s = t.elapsed().as_secs_f64();
    assert!(warm.cache_hit);

    // Baseline: tar -x of the same layer + mkfs.ext4 -d of the same tree, same size rule.
    let base = work.join("baseline");
    std::fs::create_dir_all(base.join("tree")).unwrap();
    std::fs::write(base.join("layer.tar.gz"), &layer).unwrap();
    let t = Instant::now();
    let ok = Command::new("tar")
        .args(["-xzf"])
        .arg(base.join("layer.tar.gz"))
        .arg("-C")
        .arg(base.join("tree"))
        .status()
        .unwrap();
    assert!(ok.success());
    let size = format!("{}M", (mb as u64 * 13 / 10) + 32 + 1);
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(base.join("tree"))
        .arg(base.join("out.ext4"))
        .arg(&size)
        .status()
        .unwrap();
    assert!(ok.success());
    let base_s = t.elapsed().as_secs_f64();

    println!("image {mb} MB ({} MB ext4)", cold.size_bytes >> 20);
    println!("scalebox cold build (verify + unpack + mkfs + cache) {cold_s:.2} s");
    println!("scalebox warm (cached)                              {warm_s:.2} s");
    println!("baseline tar -x + mkfs.ext4 -d                      {base_s:.2} s");
    println!(
        "ratio cold/baseline {:.2}  warm/cold {:.3}",
        cold_s / base_s,
        warm_s / cold_s
    );
}
