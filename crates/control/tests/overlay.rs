//! The control plane's side of the WireGuard overlay (docs/overlay.md): agents report their end
//! (`overlay` in `POST /v1/agent/report`), read their peers (`GET /v1/agent/overlay`), operators
//! see it in `GET /v1/hosts`, and an edge stops routing to hosts its own host cannot reach.

mod common;

use common::Api;
use serde_json::{Value, json};

/// A registered host: id, agent token, /64.
struct Host {
    id: String,
    token: String,
    prefix: String,
}

async fn host(api: &Api, name: &str) -> Host {
    let h = api
        .ok(
            &api.admin,
            "POST",
            "/v1/hosts",
            Some(json!({"name": name, "address": "10.0.0.1", "cpus": 4, "memory_mb": 8192})),
            201,
        )
        .await;
    Host {
        id: h["host"]["id"].as_str().unwrap().into(),
        token: h["agent_token"].as_str().unwrap().into(),
        prefix: h["host"]["ipv6_prefix"].as_str().unwrap().into(),
    }
}

/// A distinct valid WireGuard public key per seed.
fn key(seed: u8) -> String {
    scalebox_overlay::keys::generate([seed; 32]).1.to_base64()
}

fn peer(host: &str, reachable: bool) -> Value {
    json!({"host": host, "reachable": reachable, "last_handshake_secs": 3, "rx_bytes": 10, "tx_bytes": 20})
}

/// Posts a report with no instances and the given overlay (`None`: no overlay field).
async fn report(
    api: &Api,
    token: &str,
    overlay: Option<Value>,
) -> scalebox_testkit::http::Response {
    let mut body = json!({"instances": []});
    if let Some(o) = overlay {
        body["overlay"] = o;
    }
    api.call(token, "POST", "/v1/agent/report", Some(body))
        .await
}

async fn report_ok(api: &Api, token: &str, overlay: Value) {
    let r = report(api, token, Some(overlay)).await;
    assert_eq!(r.status, 204, "{}", r.text());
}

async fn peer_names(api: &Api, h: &Host) -> Vec<String> {
    let o = api
        .ok(&h.token, "GET", "/v1/agent/overlay", None, 200)
        .await;
    o["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn overlay_report_is_stored_and_shown_in_hosts() {
    let api = Api::start().await;
    let a = host(&api, "alpha").await;
    let b = host(&api, "bravo").await;
    let c = host(&api, "charlie").await;
    let got = api
        .ok(&api.admin, "GET", "/v1/hosts/alpha", None, 200)
        .await;
    assert_eq!(got["overlay"], Value::Null, "nothing reported yet");
    let r = report(&api, &a.token, None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = api
        .ok(&api.admin, "GET", "/v1/hosts/alpha", None, 200)
        .await;
    assert_eq!(got["overlay"], Value::Null, "a heartbeat without overlay");

    let gone = uuid::Uuid::new_v4().to_string();
    report_ok(
        &api,
        &a.token,
        json!({"public_key": key(1), "endpoint": "[2001:db8:0::1]:51820",
               "peers": [peer(&b.id, true), peer(&c.id.to_uppercase(), false), peer(&gone, false)]}),
    )
    .await;
    let got = api
        .ok(&api.admin, "GET", "/v1/hosts/alpha", None, 200)
        .await;
    let o = &got["overlay"];
    assert_eq!(o["public_key"], key(1));
    assert_eq!(
        o["endpoint"], "[2001:db8::1]:51820",
        "stored in canonical form"
    );
    let mut want = vec!["charlie".to_string(), gone.clone()];
    want.sort();
    assert_eq!(
        o["unreachable"],
        json!(want),
        "by name; an unknown id as itself"
    );
    assert_eq!(o["peers"].as_array().unwrap().len(), 3);
    assert_eq!(
        o["peers"][1]["host"], c.id,
        "peer ids are stored normalised"
    );
    assert_eq!(o["peers"][0], peer(&b.id, true));

    // A heartbeat without the field keeps what was reported; the list shows it too.
    let r = report(&api, &a.token, None).await;
    assert_eq!(r.status, 204);
    let list = &api.ok(&api.admin, "GET", "/v1/hosts", None, 200).await["items"];
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "bravo", "charlie"]);
    assert_eq!(list[0]["overlay"]["public_key"], key(1));
    assert_eq!(list[1]["overlay"], Value::Null);

    // Once every peer is reachable again nothing is listed as unreachable.
    report_ok(
        &api,
        &a.token,
        json!({"public_key": key(1), "endpoint": "192.0.2.1:51820",
               "peers": [peer(&b.id, true), peer(&c.id, true)]}),
    )
    .await;
    let got = api
        .ok(&api.admin, "GET", "/v1/hosts/alpha", None, 200)
        .await;
    assert_eq!(got["overlay"]["unreachable"], json!([]));
    assert_eq!(got["overlay"]["endpoint"], "192.0.2.1:51820");
}

#[tokio::test]
async fn agent_overlay_lists_the_other_reported_hosts() {
    let api = Api::start().await;
    let a = host(&api, "alpha").await;
    let b = host(&api, "bravo").await;
    let c = host(&api, "charlie").await;
    let o = api
        .ok(&a.token, "GET", "/v1/agent/overlay", None, 200)
        .await;
    assert_eq!(o["host"], a.id);
    assert_eq!(o["prefix"], a.prefix);
    let cluster = o["cluster_prefix"].as_str().unwrap();
    assert!(cluster.ends_with("::/48"), "{cluster}");
    assert!(
        a.prefix.starts_with(cluster.trim_end_matches("::/48")),
        "{} in {cluster}",
        a.prefix
    );
    assert_eq!(o["peers"], json!([]), "nobody reported a key yet");

    for (h, seed, ep) in [
        (&a, 1, "192.0.2.1:51820"),
        (&c, 3, "192.0.2.3:51820"),
        (&b, 2, "192.0.2.2:51820"),
    ] {
        report_ok(
            &api,
            &h.token,
            json!({"public_key": key(seed), "endpoint": ep}),
        )
        .await;
    }
    let o = api
        .ok(&a.token, "GET", "/v1/agent/overlay", None, 200)
        .await;
    assert_eq!(
        o["peers"],
        json!([
            {"host": b.id, "name": "bravo", "public_key": key(2), "endpoint": "192.0.2.2:51820", "allowed_ips": [b.prefix]},
            {"host": c.id, "name": "charlie", "public_key": key(3), "endpoint": "192.0.2.3:51820", "allowed_ips": [c.prefix]},
        ]),
        "every other host, by name, never itself"
    );
    assert_eq!(peer_names(&api, &b).await, ["alpha", "charlie"]);

    // A removed host leaves every peer list (its status row is never read again).
    api.ok(&api.admin, "DELETE", "/v1/hosts/bravo", None, 204)
        .await;
    assert_eq!(peer_names(&api, &a).await, ["charlie"]);
    assert_eq!(peer_names(&api, &c).await, ["alpha"]);
    let r = api.call(&b.token, "GET", "/v1/agent/overlay", None).await;
    assert_eq!(r.status, 401, "its credential is revoked: {}", r.text());
    // A new host may then use the removed host's key (a machine joining again).
    let d = host(&api, "delta").await;
    report_ok(
        &api,
        &d.token,
        json!({"public_key": key(2), "endpoint": "192.0.2.2:51820"}),
    )
    .await;
    assert_eq!(peer_names(&api, &a).await, ["charlie", "delta"]);

    // Only agent tokens.
    let reader = api
        .ok(
            &api.admin,
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "r", "role": "reader"})),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in [&api.admin, &reader] {
        let r = api.call(t, "GET", "/v1/agent/overlay", None).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["code"], "forbidden");
    }
}

#[tokio::test]
async fn bad_overlay_reports_get_clear_400s_and_change_nothing() {
    // Room for a report with more peers than allowed.
    let api = Api::start_with(|c| c.body_limit = 4 << 20).await;
    let a = host(&api, "alpha").await;
    let b = host(&api, "bravo").await;
    let long = "Z".repeat(3000);
    let cases = [
        (
            json!({"public_key": "not-a-key", "endpoint": "192.0.2.1:51820"}),
            "overlay.public_key",
        ),
        (
            json!({"public_key": long, "endpoint": "192.0.2.1:51820"}),
            "overlay.public_key",
        ),
        (
            json!({"public_key": key(1), "endpoint": "192.0.2.1"}),
            "overlay.endpoint",
        ),
        (
            json!({"public_key": key(1), "endpoint": long}),
            "overlay.endpoint",
        ),
        (
            json!({"public_key": key(1), "endpoint": "192.0.2.1:51820", "peers": [peer(&long, true)]}),
            "overlay.peers[0].host",
        ),
        (
            json!({"public_key": key(1), "endpoint": "192.0.2.1:51820", "peers": [peer(&b.id, true), peer(&b.id, false)]}),
            "more than once",
        ),
    ];
    for (overlay, says) in cases {
        let r = report(&api, &a.token, Some(overlay.clone())).await;
        assert_eq!(r.status, 400, "{overlay}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(says), "{says}: {msg}");
        assert!(
            !msg.contains(&"Z".repeat(65)),
            "echoes at most 64 characters of input: {msg}"
        );
    }
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| peer(&uuid::Uuid::new_v4().to_string(), true))
        .collect();
    let r = api
        .call(
            &a.token,
            "POST",
            "/v1/agent/report",
            Some(json!({"instances": [], "overlay": {"public_key": key(1), "endpoint": "192.0.2.1:51820", "peers": too_many}})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("at most 10000"), "{}", r.text());
    // Unknown fields are refused by the body parser, naming the field.
    let r = report(
        &api,
        &a.token,
        Some(json!({"public_key": key(1), "endpoint": "192.0.2.1:51820", "colour": "red"})),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let got = api
        .ok(&api.admin, "GET", "/v1/hosts/alpha", None, 200)
        .await;
    assert_eq!(got["overlay"], Value::Null, "nothing was stored");

    // Two hosts cannot share a key: every agent's mesh plan would refuse the peer list.
    report_ok(
        &api,
        &a.token,
        json!({"public_key": key(1), "endpoint": "192.0.2.1:51820"}),
    )
    .await;
    let r = report(
        &api,
        &b.token,
        Some(json!({"public_key": key(1), "endpoint": "192.0.2.2:51820"})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("alpha"), "{}", r.text());
    assert_eq!(peer_names(&api, &a).await, Vec::<String>::new());

    // Only agents report.
    let r = api
        .call(
            &api.admin,
            "POST",
            "/v1/agent/report",
            Some(json!({"instances": [], "overlay": {"public_key": key(9), "endpoint": "192.0.2.9:51820"}})),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

/// Backends of the edge table's only route, for the edge on the host of `token`; and the
/// table's generation.
async fn backends(api: &Api, token: &str) -> (i64, Vec<String>) {
    let t = api
        .ok(token, "GET", "/v1/edge/table?wait=0", None, 200)
        .await;
    let b = t["routes"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_owned())
        .collect();
    (t["generation"].as_i64().unwrap(), b)
}

#[tokio::test]
async fn edge_drops_backends_on_hosts_its_host_cannot_reach() {
    let api = Api::start().await;
    let t = api.admin.clone();
    api.ok(
        &t,
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "web"})),
        201,
    )
    .await;
    let env = api
        .ok(
            &t,
            "POST",
            "/v1/orgs/default/apps/web/envs",
            Some(json!({"name": "prod"})),
            201,
        )
        .await;
    api.ok(
        &t,
        "POST",
        "/v1/orgs/default/routes",
        Some(
            json!({"app": "web", "env": "prod", "kind": "tls", "hostname": "web.example.com",
                    "process_type": "web", "backend_port": 8080}),
        ),
        201,
    )
    .await;
    let a = host(&api, "alpha").await;
    let b = host(&api, "bravo").await;
    let c = host(&api, "charlie").await;
    // The single edge feed of earlier versions was at 41: per-host feeds continue above it.
    let db = api.tdb.db.client().await.unwrap();
    db.execute(
        "INSERT INTO feeds (name, hash, generation) VALUES ('edge', 'old', 41)",
        &[],
    )
    .await
    .unwrap();
    // One instance of the route's process on each host (placed as the reconciler would), then
    // reported ready with its address by its host's agent.
    let env_id: uuid::Uuid = env["id"].as_str().unwrap().parse().unwrap();
    for (h, n) in [(&a, 1), (&b, 2), (&c, 3)] {
        let host_id: uuid::Uuid = h.id.parse().unwrap();
        db.execute(
            "INSERT INTO instances (id, org_id, env_id, deployment_id, process_type, kind, release_id,
                                    secrets_version, host_id, memory_mb, cpu_millis, spec, secrets_as_env, desired)
             SELECT $3, org_id, id, gen_random_uuid(), 'web', 'service', gen_random_uuid(), 0, $2, 256, 1000, '{}'::jsonb, false, 'run'
             FROM v_envs WHERE id = $1",
            &[&env_id, &host_id, &format!("web-{n}")],
        )
        .await
        .unwrap();
        let r = api
            .call(
                &h.token,
                "POST",
                "/v1/agent/report",
                Some(
                    json!({"instances": [{"id": format!("web-{n}"), "state": "ready", "ready": true,
                                           "address": format!("fd00::{n}")}]}),
                ),
            )
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    // Org isolation data: alpha's org has instances on all three hosts; every address is listed.
    let o = api
        .ok(&a.token, "GET", "/v1/agent/overlay", None, 200)
        .await;
    assert_eq!(o["isolation"].as_array().unwrap().len(), 1, "{o}");
    assert_eq!(
        o["isolation"][0]["addresses"],
        json!(["fd00::1", "fd00::2", "fd00::3"]),
        "{o}"
    );
    let all = ["[fd00::1]:8080", "[fd00::2]:8080", "[fd00::3]:8080"];
    let (g0, got) = backends(&api, &a.token).await;
    assert_eq!(got, all);
    assert_eq!(g0, 42, "continues above the old single feed");

    // Alpha loses charlie (and, oddly, reports itself): charlie's instance leaves alpha's table
    // only; its own instance stays, and so does bravo's.
    let overlay = |c_reachable: bool| {
        json!({"instances": [{"id": "web-1", "state": "ready", "ready": true, "address": "fd00::1"}],
               "overlay": {"public_key": key(1), "endpoint": "192.0.2.1:51820",
                           "peers": [peer(&a.id, false), peer(&b.id, true), peer(&c.id, c_reachable)]}})
    };
    // A long poll of alpha's edge answers with the new table.
    let waiting = {
        let (addr, token) = (api.addr, format!("Bearer {}", a.token));
        tokio::spawn(async move {
            let path = format!("/v1/edge/table?after={g0}&wait=30");
            let r = scalebox_testkit::http::request(
                addr,
                "GET",
                &path,
                &[("Authorization", &token)],
                None,
            )
            .await
            .unwrap();
            (std::time::Instant::now(), r.json())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = std::time::Instant::now();
    api.ok(
        &a.token,
        "POST",
        "/v1/agent/report",
        Some(overlay(false)),
        204,
    )
    .await;
    let (answered, table) = waiting.await.unwrap();
    assert!(
        answered.duration_since(sent) < std::time::Duration::from_secs(5),
        "the long poll answers once the table changed"
    );
    assert!(table["generation"].as_i64().unwrap() > g0);
    assert_eq!(
        table["routes"][0]["backends"],
        json!(["[fd00::1]:8080", "[fd00::2]:8080"])
    );
    let (g1, got) = backends(&api, &a.token).await;
    assert_eq!(got, ["[fd00::1]:8080", "[fd00::2]:8080"]);
    assert!(g1 > g0);
    assert_eq!(
        backends(&api, &b.token).await.1,
        all,
        "other hosts' edges are not affected"
    );
    assert_eq!(backends(&api, &c.token).await.1, all);
    let shown = api
        .ok(&api.admin, "GET", "/v1/hosts/alpha", None, 200)
        .await;
    assert_eq!(shown["overlay"]["unreachable"], json!(["alpha", "charlie"]));

    // The same report again changes nothing: same generation.
    api.ok(
        &a.token,
        "POST",
        "/v1/agent/report",
        Some(overlay(false)),
        204,
    )
    .await;
    assert_eq!(backends(&api, &a.token).await.0, g1);

    // Charlie is reachable again: its instance comes back.
    api.ok(
        &a.token,
        "POST",
        "/v1/agent/report",
        Some(overlay(true)),
        204,
    )
    .await;
    let (g2, got) = backends(&api, &a.token).await;
    assert_eq!(got, all);
    assert!(g2 > g1, "generations only go up: {g1} then {g2}");
}
