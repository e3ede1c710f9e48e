//! The real `sb` volume commands against a real cluster (`scaleboxd control` on real Postgres +
//! one `scaleboxd agent`, process backend, a local-directory backup target): `sb volumes
//! snapshot` (human and `--json`), `snapshots` (table and `--json`), `backup --wait` (human and `--json`; a `--timeout`
//! that passes exits 7), `backups`, `restore --snapshot ID --into NEW` and `--backup latest
//! --into NEW` (byte-exact), `snapshot-delete`, and the exit code of each error class: a volume
//! with no disk yet, a restore over a live host or into a taken name (4, conflict), an unknown
//! volume or snapshot (3, with the `--json` error shape), a new volume name the server refuses
//! (1), and bad flags (2, before any request).
//!
//! `sb` belongs to another package, so cargo does not build it for this test: it is looked up
//! next to `scaleboxd` in the target directory. `cargo test --workspace` builds both; with
//! `cargo test -p scaleboxd`, build it first (`cargo build -p scalebox-cli`).

mod common;

use std::time::Duration;

use common::cluster::{Cluster, sha256_file};
use common::sb::{fails, ok, sb_binary, text};
use serde_json::{Value, json};

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sb_volume_snapshots_backups_and_restores_on_a_real_cluster() {
    let bin = sb_binary();
    let tdb = scalebox_testkit::test_db().await;
    let (c, _control) = Cluster::start(&tdb.url, "").await;
    let d = c.dir.path().to_owned();
    let backups = d.join("backups");
    let join = c.join_token().await;
    let _agent = c.agent(
        "host-a",
        &join,
        &format!(
            "[backup]\ntarget = {{ type = \"local\", dir = \"{}\" }}\n",
            backups.display()
        ),
    );
    c.wait_hosts(1).await;
    c.create_shop_env().await;
    let sb = c.sb(bin);

    // A volume attached to shop/prod; no disk until an instance mounts it: conflict (4).
    let out = ok(&sb.run(&["volumes", "create", "data", "--size-gb", "1"]));
    assert_eq!(out.trim(), "Created volume data (1 GB).");
    let err = fails(&sb.run(&["volumes", "snapshot", "data"]), 4);
    assert!(err.contains("no disk yet"), "{err}");

    let manifest = "schema_version = 1\n[processes.db]\ncommand = [\"sh\", \"-c\", \"sleep 3600\"]\nstop_grace_s = 1\n[[processes.db.volumes]]\nname = \"data\"\npath = \"/data\"\n";
    c.release(manifest).await;
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({})),
        202,
    )
    .await;
    let org: Value = c.ok("GET", "/v1/orgs/default", None, 200).await;
    let org_simple = org["id"].as_str().unwrap().replace('-', "");
    let disk = d.join(format!("host-a/volumes/{org_simple}-data.ext4"));
    for _ in 0..300 {
        if disk.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(disk.is_file(), "db mounted the volume on host-a");

    // snapshot (human), snapshots (table, --json).
    let o = sb.run(&["volumes", "snapshot", "data"]);
    let out = ok(&o);
    assert!(
        text(&o.stderr).contains("Taking a snapshot of volume data"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        out.starts_with("Took snapshot ")
            && out
                .trim_end()
                .ends_with("of volume data on host host-a (1.0 GiB)."),
        "{out}"
    );
    let snaps = items(&sb.json(&["volumes", "snapshots", "data"]));
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let s1 = snaps[0]["id"].as_str().unwrap().to_owned();
    assert!(out.contains(&s1), "{out}");
    assert_eq!(snaps[0]["host"], "host-a");
    assert_eq!(snaps[0]["size_bytes"], 1u64 << 30);
    let table = ok(&sb.run(&["volumes", "snapshots", "data"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["ID", "HOST", "SIZE", "CREATED"], "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[..4], [s1.as_str(), "host-a", "1.0", "GiB"], "{table}");
    let s1_sum = sha256_file(&d.join(format!(
        "host-a/volume-snapshots/{org_simple}-data/{s1}.ext4"
    )));

    // backup --snapshot --wait (human): the outcome on stdout, progress on stderr.
    let o = sb.run(&["volumes", "backup", "data", "--snapshot", &s1, "--wait"]);
    let out = ok(&o);
    let err = text(&o.stderr);
    assert!(err.contains("Backing up volume data (backup "), "{err}");
    assert!(err.contains(&format!("of snapshot {s1})")), "{err}");
    assert!(
        out.starts_with("Backup ")
            && out.trim_end().ends_with(&format!(
                "of volume data succeeded: 1.0 GiB, sha256 {s1_sum}."
            )),
        "{out}"
    );

    // backup of a new snapshot, --wait --json: only the backup object, nothing on stderr.
    let o = sb.run(&["--json", "volumes", "backup", "data", "--wait"]);
    let b2: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(text(&o.stderr), "", "nothing on stderr with --json");
    assert_eq!(b2["state"], "succeeded", "{b2}");
    assert_eq!(b2["volume"], "data");
    let s2 = b2["snapshot"].as_str().unwrap().to_owned();
    assert_ne!(s2, s1);
    assert_eq!(b2["image_sha256"].as_str().unwrap().len(), 64, "{b2}");

    // A wait that gives up: exit 7, the backup goes on server-side.
    let o = sb.run(&[
        "volumes",
        "backup",
        "data",
        "--snapshot",
        &s1,
        "--wait",
        "--timeout",
        "0",
    ]);
    let err = fails(&o, 7);
    assert!(
        err.contains("gave up waiting after 0s") && err.contains("sb volumes backups data"),
        "{err}"
    );
    let mut list = Vec::new();
    for _ in 0..300 {
        list = items(&sb.json(&["volumes", "backups", "data"]));
        if list.len() == 3 && list.iter().all(|b| b["state"] != "running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|b| b["state"] == "succeeded"), "{list:?}");
    let table = ok(&sb.run(&["volumes", "backups", "data"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("SNAPSHOT") && lines[0].contains("STATE"),
        "{table}"
    );
    for l in &lines[1..] {
        assert!(l.contains("succeeded") && l.contains("(100%)"), "{table}");
    }
    // The newest succeeded backup is the last one, of s1.
    let latest_sum = s1_sum.clone();

    // restore --snapshot ID --into NEW (human): a byte-exact copy on the snapshot's host.
    let o = sb.run(&[
        "volumes",
        "restore",
        "data",
        "--snapshot",
        &s1,
        "--into",
        "copy1",
    ]);
    let out = ok(&o);
    assert!(
        text(&o.stderr).contains("Restoring volume data from snapshot"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        out.trim(),
        format!("Restored volume copy1 on host host-a from snapshot {s1} (1.0 GiB).")
    );
    let copy1 = d.join(format!("host-a/volumes/{org_simple}-copy1.ext4"));
    // (Byte-exactness of restores is tests/volumes.rs's; one is checked below.)
    assert_eq!(std::fs::metadata(&copy1).unwrap().len(), 1 << 30);

    // restore --backup latest --into NEW (--json).
    let r = sb.json(&[
        "volumes", "restore", "data", "--backup", "latest", "--into", "copy2",
    ]);
    assert_eq!(r["host"], "host-a", "{r}");
    assert_eq!(r["image_sha256"], latest_sum.as_str(), "{r}");
    let copy2 = d.join(format!("host-a/volumes/{org_simple}-copy2.ext4"));
    assert_eq!(
        sha256_file(&copy2),
        latest_sum,
        "backup restored byte-exact"
    );
    let vols = items(&sb.json(&["volumes", "list"]));
    for v in ["data", "copy1", "copy2"] {
        assert!(vols.iter().any(|x| x["name"] == v), "{v} in {vols:?}");
    }

    // Error classes. Conflict (4): restoring over a volume whose host is alive.
    let err = fails(
        &sb.run(&["volumes", "restore", "data", "--backup", "latest"]),
        4,
    );
    assert!(err.contains("which is alive"), "{err}");
    // Not found (3): an unknown volume, an unknown snapshot; --json gives the error object.
    let err = fails(&sb.run(&["volumes", "snapshots", "nosuch"]), 3);
    assert!(
        err.starts_with("error: ") && err.contains("nosuch"),
        "{err}"
    );
    let o = sb.run(&["--json", "volumes", "backups", "nosuch"]);
    let e: Value = serde_json::from_str(fails(&o, 3).trim()).unwrap();
    assert_eq!(
        (e["status"].clone(), e["code"].clone()),
        (json!(404), json!("not_found")),
        "{e}"
    );
    let err = fails(
        &sb.run(&["volumes", "snapshot-delete", "data", "snap-nosuch"]),
        3,
    );
    assert!(err.contains("snap-nosuch"), "{err}");
    fails(
        &sb.run(&["volumes", "backup", "data", "--snapshot", "snap-nosuch"]),
        3,
    );
    fails(&sb.run(&["volumes", "snapshot", "nosuch"]), 3);
    // Refused as invalid (1): a new volume's name the server does not take; conflict (4): a
    // name already taken. Nothing is made either way.
    let err = fails(
        &sb.run(&[
            "volumes",
            "restore",
            "data",
            "--snapshot",
            &s1,
            "--into",
            "Bad Name",
        ]),
        1,
    );
    assert!(err.contains("Bad Name"), "{err}");
    fails(
        &sb.run(&[
            "volumes",
            "restore",
            "data",
            "--snapshot",
            &s1,
            "--into",
            "copy1",
        ]),
        4,
    );
    assert_eq!(items(&sb.json(&["volumes", "list"])).len(), 3);
    // Usage (2): bad flags, caught before any request.
    for args in [
        &["volumes", "restore", "data", "--snapshot", &s1][..],
        &[
            "volumes",
            "restore",
            "data",
            "--backup",
            "latest",
            "--snapshot",
            &s1,
            "--into",
            "x",
        ],
        &["volumes", "backup", "data", "--timeout", "5"],
        &["volumes", "snapshot-delete", "data"],
        &["volumes", "snapshots"],
        &["volumes", "snapshot", "data", "--bogus"],
    ] {
        let err = fails(&sb.run(args), 2);
        assert!(!err.is_empty(), "{args:?}");
    }

    // snapshot-delete (human, then --json).
    let out = ok(&sb.run(&["volumes", "snapshot-delete", "data", &s1]));
    assert_eq!(out.trim(), format!("Deleted snapshot {s1} of volume data."));
    let left = items(&sb.json(&["volumes", "snapshots", "data"]));
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["id"], s2.as_str());
    assert_eq!(
        sb.json(&["volumes", "snapshot-delete", "data", &s2]),
        json!({"deleted": s2})
    );
    assert_eq!(
        ok(&sb.run(&["volumes", "snapshots", "data"])).trim(),
        "(none)"
    );
    // The backups outlive their snapshots.
    assert_eq!(items(&sb.json(&["volumes", "backups", "data"])).len(), 3);

    // snapshot --json: only the snapshot object, nothing on stderr.
    let o = sb.run(&["--json", "volumes", "snapshot", "data"]);
    let s3: Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(text(&o.stderr), "", "nothing on stderr with --json");
    assert_eq!(
        (
            s3["volume"].as_str(),
            s3["host"].as_str(),
            s3["size_bytes"].as_u64()
        ),
        (Some("data"), Some("host-a"), Some(1u64 << 30)),
        "{s3}"
    );
    let s3 = s3["id"].as_str().unwrap().to_owned();
    let listed = items(&sb.json(&["volumes", "snapshots", "data"]));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], s3.as_str());
    ok(&sb.run(&["volumes", "snapshot-delete", "data", &s3]));

    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/stop",
        None,
        202,
    )
    .await;
}
