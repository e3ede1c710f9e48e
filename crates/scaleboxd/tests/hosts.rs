//! Several hosts: `scaleboxd control` plus two `scaleboxd agent --join` processes (dev/test
//! process backend) against a real Postgres. Hosts join with a join token, replicas spread over
//! both, a drained host is emptied with its instances replaced elsewhere, and a host whose agent
//! dies is declared lost and its instances are replaced on the other one.

mod common;

use std::time::Duration;

use common::cluster::Cluster;

use scalebox_testkit::http::request;
use serde_json::{Value, json};

trait Placement {
    async fn placement(&self) -> (Value, Vec<(String, String, bool)>);
    async fn wait_placement(
        &self,
        what: &str,
        pred: impl Fn(&[(String, String, bool)]) -> bool,
    ) -> Vec<(String, String, bool)>;
}

impl Placement for Cluster {
    /// Web instances meant to run, by host name.
    async fn placement(&self) -> (Value, Vec<(String, String, bool)>) {
        let s = self.status().await;
        let p = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["desired"] == "run" && i["process_type"] == "web")
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_owned(),
                    i["host"].as_str().unwrap().to_owned(),
                    i["ready"] == true,
                )
            })
            .collect();
        (s, p)
    }

    async fn wait_placement(
        &self,
        what: &str,
        pred: impl Fn(&[(String, String, bool)]) -> bool,
    ) -> Vec<(String, String, bool)> {
        let mut last = Value::Null;
        for _ in 0..300 {
            let (s, p) = self.placement().await;
            if pred(&p) && s["converged"] == true {
                return p;
            }
            last = s;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("timed out waiting for {what}: {last:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_join_spread_drain_and_loss() {
    let tdb = scalebox_testkit::test_db().await;
    let (c, _control) = Cluster::start(&tdb.url, "host_lost_after_s = 3\n").await;

    // A join token only joins: it cannot read anything.
    let join = c
        .ok(
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "join", "role": "join"})),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = request(
        c.api,
        "GET",
        "/v1/orgs/default/apps",
        &[("Authorization", &format!("Bearer {join}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    let _a = c.agent("host-a", &join, "");
    let mut b = Some(c.agent("host-b", &join, ""));
    for _ in 0..100 {
        let h = c.ok("GET", "/v1/hosts", None, 200).await;
        if h["items"].as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = c.ok("GET", "/v1/hosts", None, 200).await;
    assert_eq!(h["items"].as_array().unwrap().len(), 2, "{h}");
    // IPAM: each host got its own /64 of the cluster's one ULA /48.
    let prefixes: Vec<String> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["ipv6_prefix"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(prefixes[0], prefixes[1], "{h}");
    for p in &prefixes {
        assert!(p.starts_with("fd") && p.ends_with("/64"), "{p}");
    }
    let cluster = |p: &str| p.split(':').take(3).collect::<Vec<_>>().join(":");
    assert_eq!(
        cluster(&prefixes[0]),
        cluster(&prefixes[1]),
        "one cluster /48"
    );
    for n in ["host-a", "host-b"] {
        let cred: Value = serde_json::from_slice(
            &std::fs::read(c.dir.path().join(n).join("control.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cred["host"], n);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.dir.path().join(n).join("control.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the credential is private");
    }

    c.create_shop_env().await;
    let manifest = "schema_version = 1\n[processes.web]\ncommand = [\"sh\", \"-c\", \"sleep 3600\"]\nscale = 2\nstop_grace_s = 1\n[processes.db]\ncommand = [\"sh\", \"-c\", \"sleep 3600\"]\nstop_grace_s = 1\n[[processes.db.volumes]]\nname = \"data\"\npath = \"/data\"\n";
    c.release(manifest).await;
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/deploy",
        Some(json!({})),
        202,
    )
    .await;

    // Two replicas spread over the two hosts.
    let p = c
        .wait_placement("2 ready replicas", |p| {
            p.len() == 2 && p.iter().all(|i| i.2)
        })
        .await;
    assert_ne!(p[0].1, p[1].1, "replicas spread over hosts: {p:?}");

    // The db instance's volume pins it: stopped and started again, it comes back to the
    // host holding its volume.
    let db_host = |s: &Value| -> Option<String> {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["desired"] == "run" && i["process_type"] == "db" && i["ready"] == true)
            .map(|i| i["host"].as_str().unwrap().to_owned())
    };
    let first = db_host(&c.placement().await.0).expect("db runs");
    // IPAM: every instance holds its own address in its host's /64; a re-placed instance gets a
    // new one (released addresses are not handed out again soon).
    let prefixes: std::collections::HashMap<String, String> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_owned(),
                x["ipv6_prefix"]
                    .as_str()
                    .unwrap()
                    .trim_end_matches("::/64")
                    .to_owned(),
            )
        })
        .collect();
    let addresses = |s: &Value| -> Vec<String> {
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["desired"] == "run")
            .map(|i| {
                let a = i["ipv6_address"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no ipv6_address: {i}"));
                let host = i["host"].as_str().unwrap();
                assert!(
                    a.starts_with(&format!("{}:", prefixes[host])),
                    "{a} is in {host}'s /64"
                );
                a.to_owned()
            })
            .collect()
    };
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let before = addresses(&c.placement().await.0);
    assert_eq!(before.len(), 3, "web x2 and db: {before:?}");
    seen.extend(before);
    assert_eq!(seen.len(), 3, "distinct addresses");
    for _ in 0..2 {
        c.ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/stop",
            None,
            202,
        )
        .await;
        c.wait_placement("stopped", |p| p.is_empty()).await;
        c.ok(
            "POST",
            "/v1/orgs/default/apps/shop/envs/prod/start",
            None,
            202,
        )
        .await;
        c.wait_placement("started", |p| p.len() == 2 && p.iter().all(|i| i.2))
            .await;
        assert_eq!(
            db_host(&c.placement().await.0).as_deref(),
            Some(first.as_str())
        );
        for a in addresses(&c.placement().await.0) {
            assert!(
                seen.insert(a.clone()),
                "address {a} handed out again at once"
            );
        }
    }
    // The drain and loss below move instances around; the db would rightly stay put.
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/scale",
        Some(json!({"scales": {"db": 0}})),
        202,
    )
    .await;

    // Draining host-a moves its replica to host-b; undrain takes new instances again.
    c.ok("POST", "/v1/hosts/host-a/drain", None, 200).await;
    let h = c.ok("GET", "/v1/hosts/host-a", None, 200).await;
    assert_eq!(h["draining"], true);
    c.wait_placement("host-a drained", |p| {
        p.len() == 2 && p.iter().all(|i| i.1 == "host-b" && i.2)
    })
    .await;
    c.ok("POST", "/v1/hosts/host-a/undrain", None, 200).await;

    // host-b's agent dies: after host_lost_after_s its instances are replaced on host-a.
    drop(b.take());
    let p = c
        .wait_placement("replaced on host-a", |p| {
            p.len() == 2 && p.iter().all(|i| i.1 == "host-a" && i.2)
        })
        .await;
    let (s, _) = c.placement().await;
    assert!(
        s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["host"] == "host-a" || i["state"] == "lost"),
        "{s:#}"
    );
    assert_eq!(p.len(), 2);

    // A join token cannot register a name that exists.
    let r = request(
        c.api,
        "POST",
        "/v1/agent/join",
        &[
            ("Authorization", &format!("Bearer {join}")),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"name":"host-a","address":"127.0.0.1","cpus":2,"memory_mb":1024}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    c.ok(
        "POST",
        "/v1/orgs/default/apps/shop/envs/prod/stop",
        None,
        202,
    )
    .await;
    c.wait_placement("stopped", |p| p.is_empty()).await;
}
