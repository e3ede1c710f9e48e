//! Views are projections of the log: rebuilding them from the events alone gives exactly the
//! live views, after a long random command sequence (env IPv4s included); old event versions
//! replay via upcasting; migrations refuse a dirty or foreign schema.

mod common;

use common::{Api, MANIFEST};
use scalebox_store::{migrate, rebuild};
use serde_json::json;

/// Small deterministic PRNG so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[tokio::test]
async fn rebuilt_views_equal_live_views_after_random_commands() {
    // A small IPv4 pool, so that enabling the add-on also runs out and releases.
    let pool = scalebox_overlay::Ipv4Pool::parse(&["192.0.2.1-192.0.2.3"]).unwrap();
    let api = Api::start_with(move |c| c.ipv4_pool = pool).await;
    let t = api.admin.clone();
    let other = api.new_org("other").await;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..500 {
        let (tok, org) = if rng.pick(4) == 0 {
            (&other, "other")
        } else {
            (&t, "default")
        };
        let app = format!("app{}", rng.pick(3));
        let env = format!("env{}", rng.pick(2));
        let o = format!("/v1/orgs/{org}");
        let (m, p, b) = match rng.pick(15) {
            0 => ("POST", format!("{o}/apps"), Some(json!({"name": app}))),
            1 => (
                "PATCH",
                format!("{o}/apps/{app}"),
                Some(json!({"description": format!("d{i}")})),
            ),
            2 => ("DELETE", format!("{o}/apps/{app}"), None),
            3 | 4 => (
                "POST",
                format!("{o}/apps/{app}/envs"),
                Some(json!({"name": env})),
            ),
            5 => ("DELETE", format!("{o}/apps/{app}/envs/{env}"), None),
            6 => (
                "POST",
                format!("{o}/apps/{app}/releases"),
                Some(
                    json!({"image_ref": "r/x:1", "image_digest": format!("sha256:{:064x}", rng.next()), "manifest": MANIFEST}),
                ),
            ),
            7 => (
                "PATCH",
                format!("{o}/apps/{app}/envs/{env}/secrets"),
                Some(
                    json!({"set": {format!("K{}", rng.pick(5)): format!("v{i}")}, "unset": [format!("K{}", rng.pick(5) + 5)]}),
                ),
            ),
            8 => (
                "POST",
                format!("{o}/routes"),
                Some(
                    json!({"app": app, "env": env, "kind": "tls", "hostname": format!("h{}.example.com", rng.pick(6)),
                            "process_type": "web", "backend_port": 8080}),
                ),
            ),
            9 => (
                "POST",
                format!("{o}/routes"),
                Some(
                    json!({"app": app, "env": env, "kind": "tcp", "process_type": "db", "backend_port": 5432}),
                ),
            ),
            10 => (
                "POST",
                format!("{o}/projects"),
                Some(json!({"name": format!("p{}", rng.pick(3))})),
            ),
            11 => (
                "POST",
                format!("{o}/volumes"),
                Some(json!({"name": format!("v{}", rng.pick(3)), "size_gb": 1 + rng.pick(10)})),
            ),
            12 => ("POST", format!("{o}/apps/{app}/envs/{env}/ipv4"), None),
            13 => ("DELETE", format!("{o}/apps/{app}/envs/{env}/ipv4"), None),
            _ => {
                // Delete a random route of this org, if any.
                let list = api.ok(tok, "GET", &format!("{o}/routes"), None, 200).await;
                match list["items"].as_array().and_then(|a| a.first()) {
                    Some(r) => (
                        "DELETE",
                        format!("{o}/routes/{}", r["id"].as_str().unwrap()),
                        None,
                    ),
                    None => ("DELETE", format!("{o}/volumes/v{}", rng.pick(3)), None),
                }
            }
        };
        let r = api.call(tok, m, &p, b).await;
        assert!(r.status < 500, "{m} {p}: {}", r.text());
        if r.status < 300 {
            ok += 1
        } else {
            refused += 1
        }
    }
    assert!(
        ok > 150 && refused > 20,
        "a meaningful mix: {ok} ok, {refused} refused"
    );
    let live = rebuild::dump_views(&api.tdb.db).await.unwrap();
    let n = rebuild::rebuild_views(&api.tdb.db).await.unwrap();
    assert_eq!(n as i64, api.event_count().await);
    let rebuilt = rebuild::dump_views(&api.tdb.db).await.unwrap();
    for (table, rows) in &live {
        assert_eq!(rows, &rebuilt[table], "view {table} differs after rebuild");
    }
    assert!(
        live["v_routes"].as_array().unwrap().len()
            + live["v_secret_versions"].as_array().unwrap().len()
            > 0
    );
    // The IPv4 add-on was exercised: addresses were handed out (the cursor moved) and released.
    assert_eq!(live["v_ipv4_cursor"].as_array().unwrap().len(), 1);
    let released: i64 = api
        .tdb
        .db
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'EnvIpv4Released'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(released > 0, "some env IPv4s were released");
    // The API still works on the rebuilt views.
    api.ok(&t, "GET", "/v1/orgs/default/apps", None, 200).await;
}

#[tokio::test]
async fn old_event_versions_replay_through_upcasting() {
    let api = Api::start().await;
    let c = api.tdb.db.client().await.unwrap();
    let org: uuid::Uuid = c
        .query_one("SELECT id FROM v_orgs", &[])
        .await
        .unwrap()
        .get(0);
    let app = uuid::Uuid::new_v4();
    // An AppCreated event as schema v1 wrote it: no project, no description.
    c.execute(
        "INSERT INTO events (stream, stream_version, event_type, schema_version, payload, actor, org_id)
         VALUES ($1, 1, 'AppCreated', 1, $2, 'legacy', $3)",
        &[&format!("app:{app}"), &json!({"app_id": app, "org_id": org, "name": "legacy"}), &org],
    )
    .await
    .unwrap();
    rebuild::rebuild_views(&api.tdb.db).await.unwrap();
    let got = api
        .ok(&api.admin, "GET", "/v1/orgs/default/apps/legacy", None, 200)
        .await;
    assert_eq!(
        (got["description"].as_str(), got["project"].is_null()),
        (Some(""), true)
    );
    // The stored event is untouched (history is never rewritten).
    let v: i32 = c
        .query_one(
            "SELECT schema_version FROM events WHERE stream = $1",
            &[&format!("app:{app}")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
}

#[tokio::test]
async fn migrations_refuse_dirty_modified_or_newer_schemas() {
    let api = Api::start().await;
    let c = api.tdb.db.client().await.unwrap();
    // Applying again is a no-op.
    assert!(migrate::migrate(&api.tdb.db).await.unwrap().is_empty());
    c.execute(
        "UPDATE schema_migrations SET dirty = true WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let e = migrate::migrate(&api.tdb.db).await.unwrap_err().to_string();
    assert!(e.contains("dirty") && e.contains("dirty = false"), "{e}");
    c.execute(
        "UPDATE schema_migrations SET dirty = false, checksum = 'x' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let e = migrate::migrate(&api.tdb.db).await.unwrap_err().to_string();
    assert!(e.contains("checksum"), "{e}");
    c.execute(
        "UPDATE schema_migrations SET checksum = $1 WHERE version = 1",
        &[&checksum_of_first()],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'f')",
        &[],
    )
    .await
    .unwrap();
    let e = migrate::migrate(&api.tdb.db).await.unwrap_err().to_string();
    assert!(e.contains("upgrade scaleboxd"), "{e}");
}

fn checksum_of_first() -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(migrate::MIGRATIONS[0].2.as_bytes()))
}
