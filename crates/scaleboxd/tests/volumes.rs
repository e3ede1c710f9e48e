//! Volume snapshots, backups and restore after a host loss, on a real cluster (`scaleboxd
//! control` + two agents, process backend, a shared local-directory backup target standing in
//! for object storage): the disk of a volume mounted by `db` holds data; a snapshot copies it
//! byte for byte; a backup of it succeeds with the snapshot's checksum; restore is refused while
//! the volume's host is alive; when that host's agent dies, `restore` with the latest backup makes
//! the disk on the other host byte-identical, and `db` runs there.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::{Cluster, sha256_file};
use serde_json::{Value, json};

fn debugfs(img: &Path, req: &str) -> String {
    let o = Command::new("debugfs")
        .args(["-w", "-R", req])
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn db_host(c: &Cluster) -> Option<(String, bool)> {
    let s = c.status().await;
    s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["desired"] == "run" && i["process_type"] == "db")
        .map(|i| {
            (
                i["host"].as_str().unwrap_or("").to_owned(),
                i["ready"] == true,
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_snapshot_backup_and_restore_after_host_loss() {
    let tdb = scalebox_testkit::test_db().await;
    let (c, _control) = Cluster::start(&tdb.url, "host_lost_after_s = 8\n").await;
    let d = c.dir.path().to_owned();
    let backups = d.join("backups");
    let backup_cfg = format!(
        "[backup]\ntarget = {{ type = \"local\", dir = \"{}\" }}\n",
        backups.display()
    );
    let join = c.join_token().await;
    let mut agents = [
        Some(c.agent("host-a", &join, &backup_cfg)),
        Some(c.agent("host-b", &join, &backup_cfg)),
    ];
    c.wait_hosts(2).await;

    c.create_shop_env().await;
    c.ok(
        "POST",
        "/v1/orgs/default/volumes",
        Some(json!({"name": "data", "size_gb": 1, "app": "shop", "env": "prod"})),
        201,
    )
    .await;
    // Snapshots need a disk: it is made where an instance first mounts the volume.
    let (s, v) = c
        .call("POST", "/v1/orgs/default/volumes/data/snapshots", None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no disk yet"), "{v}");

    let manifest = "schema_version = 1\n[processes.db]\ncommand = [\"sh\", \"-c\", \"sleep 3600\"]\nstop_grace_s = 1\n[[processes.db.volumes]]\nname = \"data\"\npath = \"/data\"\n";
    c.release(manifest).await;
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({})),
        202,
    )
    .await;
    let mut first = None;
    for _ in 0..300 {
        if let Some((h, true)) = db_host(&c).await {
            first = Some(h);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.expect("db runs");
    // A new release replaces db stop-then-start: never two live instances on one volume.
    let manifest2 = format!("{manifest}[env]\nROUND = \"2\"\n");
    let r2 = c.release(&manifest2).await;
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({"release": r2["number"]})),
        202,
    )
    .await;
    let mut max_live = 0;
    let mut replaced = false;
    for _ in 0..600 {
        let s = c.status().await;
        let db: Vec<&Value> = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["process_type"] == "db")
            .collect();
        let live = db
            .iter()
            .filter(|i| !["exited", "failed", "lost"].contains(&i["state"].as_str().unwrap_or("")))
            .count();
        max_live = max_live.max(live);
        if s["converged"] == true && s["serving_release"] == r2["number"] {
            replaced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replaced, "release 2 did not converge");
    assert_eq!(
        max_live, 1,
        "two db instances were alive at once on one volume"
    );
    let first = db_host(&c).await.expect("db runs").0;
    let other = if first == "host-a" {
        "host-b"
    } else {
        "host-a"
    };
    let org: Value = c.ok("GET", "/v1/orgs/default", None, 200).await;
    let disk_name = format!("{}-data", org["id"].as_str().unwrap().replace('-', ""));
    let disk: PathBuf = d.join(&first).join(format!("volumes/{disk_name}.ext4"));
    assert!(disk.is_file(), "the volume's disk is on {first}");
    // 1 GiB as declared (sparse).
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 30);
    // The workload's data (written into the ext4 filesystem of the disk).
    let payload = d.join("payload");
    let bytes: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&payload, &bytes).unwrap();
    debugfs(&disk, &format!("write {} payload.bin", payload.display()));
    assert!(debugfs(&disk, "ls -l /").contains("payload.bin"));

    // Snapshot: a byte-exact copy on the volume's host.
    let snap = c
        .ok("POST", "/v1/orgs/default/volumes/data/snapshots", None, 201)
        .await;
    let snap_id = snap["id"].as_str().unwrap().to_owned();
    assert_eq!(snap["host"], first.as_str());
    let snap_file = d
        .join(&first)
        .join(format!("volume-snapshots/{disk_name}/{snap_id}.ext4"));
    let snap_sum = sha256_file(&snap_file);
    assert_eq!(snap_sum, sha256_file(&disk), "snapshot is byte-exact");
    let l = c
        .ok("GET", "/v1/orgs/default/volumes/data/snapshots", None, 200)
        .await;
    assert_eq!(l["items"].as_array().unwrap().len(), 1);

    // Backup of that snapshot, in the background.
    let b = c
        .ok(
            "POST",
            "/v1/orgs/default/volumes/data/backups",
            Some(json!({"snapshot": snap_id})),
            202,
        )
        .await;
    let bid = b["id"].as_str().unwrap().to_owned();
    let mut done = Value::Null;
    for _ in 0..300 {
        let l = c
            .ok("GET", "/v1/orgs/default/volumes/data/backups", None, 200)
            .await;
        let me = l["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == bid.as_str())
            .cloned()
            .unwrap();
        if me["state"] != "running" {
            done = me;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["image_sha256"], snap_sum.as_str(), "{done}");
    assert_eq!(done["size_bytes"], 1u64 << 30);
    assert!(backups.join(format!("backups/{bid}.json")).is_file());

    // A snapshot restores into a new volume, on the snapshot's host.
    let r = c
        .ok(
            "POST",
            "/v1/orgs/default/volumes/data/restore",
            Some(json!({"snapshot": snap_id, "into": "copy1"})),
            200,
        )
        .await;
    assert_eq!(r["host"], first.as_str(), "{r}");
    let org_simple = org["id"].as_str().unwrap().replace('-', "");
    let copy1 = d
        .join(&first)
        .join(format!("volumes/{org_simple}-copy1.ext4"));
    assert_eq!(
        sha256_file(&copy1),
        snap_sum,
        "snapshot restored byte-exact"
    );
    c.ok("GET", "/v1/orgs/default/volumes/copy1", None, 200)
        .await;
    let (s, v) = c
        .call(
            "POST",
            "/v1/orgs/default/volumes/data/restore",
            Some(json!({"snapshot": snap_id, "backup": "latest", "into": "copy9"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        c.call("GET", "/v1/orgs/default/volumes/copy9", None)
            .await
            .0,
        404,
        "nothing left"
    );

    // The volume's host is alive: restoring over it is refused.
    let (s, v) = c
        .call(
            "POST",
            "/v1/orgs/default/volumes/data/restore",
            Some(json!({"backup": "latest"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");

    // The host dies. Restore the latest backup: the disk is made on the other host.
    let idx = if first == "host-a" { 0 } else { 1 };
    drop(agents[idx].take());
    // Agents report at least every 5 s; after host_lost_after_s of silence the host is lost.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let r = c
        .ok(
            "POST",
            "/v1/orgs/default/volumes/data/restore",
            Some(json!({"backup": "latest"})),
            200,
        )
        .await;
    assert_eq!(r["host"], other, "{r}");
    assert_eq!(r["backup"], bid.as_str());
    let restored = d.join(other).join(format!("volumes/{disk_name}.ext4"));
    assert_eq!(
        sha256_file(&restored),
        snap_sum,
        "restored byte-exact on {other}"
    );
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!(
            "dump payload.bin {}",
            d.join("payload.out").display()
        ))
        .arg(&restored)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(std::fs::read(d.join("payload.out")).unwrap(), bytes);
    // A backup also restores into a new volume on any live host.
    let r = c
        .ok(
            "POST",
            "/v1/orgs/default/volumes/data/restore",
            Some(json!({"backup": bid, "into": "copy2"})),
            200,
        )
        .await;
    assert_eq!(r["host"], other, "{r}");
    let copy2 = d
        .join(other)
        .join(format!("volumes/{org_simple}-copy2.ext4"));
    assert_eq!(
        sha256_file(&copy2),
        snap_sum,
        "backup restored byte-exact into a new volume"
    );
    // db now runs on the host holding the volume.
    let mut moved = false;
    for _ in 0..300 {
        if db_host(&c).await == Some((other.to_owned(), true)) {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(moved, "db did not move to {other}: {:?}", db_host(&c).await);
    let v = c
        .ok("GET", "/v1/orgs/default/volumes/data", None, 200)
        .await;
    let _ = v;
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/stop",
        None,
        202,
    )
    .await;
}
