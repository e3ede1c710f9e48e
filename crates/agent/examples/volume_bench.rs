//! Helper of `bench/volumes/run` (not part of the product):
//!   volume_bench <dir> <size_mib>
//! makes a volume disk of `size_mib` under `<dir>` filled with random data, then times a snapshot
//! (`VolumeStore::take_snapshot`), a backup of it to a local-directory target, and a restore of
//! that backup into a new volume; prints one line of `key=value` pairs.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use scalebox_agent::volumes::VolumeStore;
use scalebox_backup::{BackupOptions, Config, Repository};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 3 {
        eprintln!("usage: volume_bench <dir> <size_mib>");
        std::process::exit(2);
    }
    let dir = Path::new(&a[1]);
    let mib: u64 = a[2].parse().expect("size in MiB");
    let store = VolumeStore::new(dir);
    let disk = store.disk_path("bench").unwrap();
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    {
        let mut f = std::fs::File::create(&disk).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..mib {
            getrandom::fill(&mut buf).unwrap();
            buf[0] = i as u8;
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
    }
    let t = Instant::now();
    let snap = store.take_snapshot("bench", "s1").unwrap();
    let snap_ms = t.elapsed().as_secs_f64() * 1000.0;
    let cfg: Config = toml::from_str(&format!(
        "target = {{ type = \"local\", dir = \"{}\" }}",
        dir.join("target").display()
    ))
    .unwrap();
    let repo = Repository::open(&cfg).unwrap();
    let t = Instant::now();
    repo.backup(
        &store.snapshot_path("bench", "s1").unwrap(),
        &BackupOptions::new("b1", "bench", "s1"),
        &mut |_| {},
    )
    .unwrap();
    let backup_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    repo.restore("b1", &store.disk_path("restored").unwrap(), &mut |_| {})
        .unwrap();
    let restore_s = t.elapsed().as_secs_f64();
    println!(
        "size_mib={mib} snapshot_ms={snap_ms:.1} snapshot_how={} backup_mib_s={:.0} restore_mib_s={:.0}",
        snap.how,
        mib as f64 / backup_s,
        mib as f64 / restore_s
    );
}
