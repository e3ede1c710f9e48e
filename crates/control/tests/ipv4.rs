//! The dedicated-IPv4 add-on against real Postgres: `POST`/`DELETE .../envs/{env}/ipv4`
//! allocate and release one address per env from the configured pool (idempotent, next-fit,
//! exhaustion and no pool are clear 409s), deleting an env releases its address, a shrunk pool
//! never takes a held address away (nor hands out one a route listens on), the views rebuild
//! from the events, other orgs see nothing, and the edge binds the env's IPv4 routes on its
//! address.

mod common;

use common::Api;
use scalebox_control::{Control, ControlConfig, router};
use scalebox_overlay::Ipv4Pool;
use scalebox_store::rebuild;
use serde_json::{Value, json};

const ENVS: &str = "/v1/orgs/default/apps/web/envs";

async fn with_pool(entries: &[&str]) -> Api {
    let pool = Ipv4Pool::parse(entries).unwrap();
    Api::start_with(move |c| c.ipv4_pool = pool).await
}

/// App `web` with environments `names` in the default org.
async fn envs(api: &Api, names: &[&str]) {
    api.ok(
        &api.admin,
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "web"})),
        201,
    )
    .await;
    for n in names {
        api.ok(&api.admin, "POST", ENVS, Some(json!({"name": n})), 201)
            .await;
    }
}

/// Enables `env`'s IPv4 expecting `status`; its address.
async fn enable(api: &Api, env: &str, status: u16) -> String {
    let v = api
        .ok(
            &api.admin,
            "POST",
            &format!("{ENVS}/{env}/ipv4"),
            None,
            status,
        )
        .await;
    v["address"].as_str().unwrap().to_owned()
}

async fn env_ipv4(api: &Api, env: &str) -> Value {
    api.ok(&api.admin, "GET", &format!("{ENVS}/{env}"), None, 200)
        .await["ipv4"]
        .clone()
}

/// Types of the events of the env's stream, in order.
async fn env_events(api: &Api, env_id: &str) -> Vec<String> {
    let v = api
        .ok(
            &api.admin,
            "GET",
            &format!("/v1/orgs/default/events?stream=env:{env_id}"),
            None,
            200,
        )
        .await;
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn one_address_per_env_from_the_pool_until_it_runs_out() {
    let api = with_pool(&["192.0.2.10-192.0.2.11"]).await;
    envs(&api, &["prod", "staging", "dev"]).await;
    assert_eq!(env_ipv4(&api, "prod").await, Value::Null);

    let prod = enable(&api, "prod", 201).await;
    assert_eq!(prod, "192.0.2.10");
    // Enabling again gives the same address, appending nothing.
    let before = api.event_count().await;
    assert_eq!(enable(&api, "prod", 200).await, prod);
    assert_eq!(api.event_count().await, before);
    assert_eq!(env_ipv4(&api, "prod").await, json!(prod));
    let listed = api.ok(&api.admin, "GET", ENVS, None, 200).await;
    let by_name: Vec<(String, Value)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["ipv4"].clone()))
        .collect();
    assert!(
        by_name.contains(&("prod".into(), json!(prod))),
        "{by_name:?}"
    );

    // A second env gets a different one.
    assert_eq!(enable(&api, "staging", 201).await, "192.0.2.11");
    // The pool of 2 is exhausted: the third env gets a clear 409, and nothing is appended.
    let before = api.event_count().await;
    let r = api
        .call(&api.admin, "POST", &format!("{ENVS}/dev/ipv4"), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "conflict");
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("exhausted")
            && msg.contains("add addresses to the pool or release an environment's IPv4"),
        "{msg}"
    );
    assert_eq!(api.event_count().await, before);
    assert_eq!(env_ipv4(&api, "dev").await, Value::Null);

    // The allocation is in the audit log, with who did it.
    let ev = api
        .ok(
            &api.admin,
            "GET",
            "/v1/orgs/default/events?type=EnvIpv4Allocated",
            None,
            200,
        )
        .await;
    let ev = ev["events"].as_array().unwrap();
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0]["actor"], "token:admin");
    assert_eq!(ev[0]["payload"]["address"], "192.0.2.10");

    // Readers cannot change it; an Idempotency-Key replays the first reply.
    let reader = api
        .ok(
            &api.admin,
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "ro", "role": "reader"})),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = api
        .call(&reader, "DELETE", &format!("{ENVS}/prod/ipv4"), None)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let key = [("Idempotency-Key", "ipv4-dev-1")];
    let path = format!("{ENVS}/staging/ipv4");
    let first = api.call_h(&api.admin, "DELETE", &path, &key, None).await;
    assert_eq!(first.status, 204);
    let again = api.call_h(&api.admin, "DELETE", &path, &key, None).await;
    assert_eq!(again.status, 204);
    assert_eq!(env_ipv4(&api, "staging").await, Value::Null);
}

#[tokio::test]
async fn released_addresses_wait_and_deleted_envs_release_theirs() {
    let api = with_pool(&["192.0.2.1-192.0.2.3"]).await;
    envs(&api, &["a", "b", "c", "d", "e"]).await;
    assert_eq!(enable(&api, "a", 201).await, "192.0.2.1");
    // Disabling releases it (an event); disabling again is a 204 that appends nothing.
    api.ok(&api.admin, "DELETE", &format!("{ENVS}/a/ipv4"), None, 204)
        .await;
    assert_eq!(env_ipv4(&api, "a").await, Value::Null);
    let before = api.event_count().await;
    api.ok(&api.admin, "DELETE", &format!("{ENVS}/a/ipv4"), None, 204)
        .await;
    assert_eq!(api.event_count().await, before);
    // Next-fit: .1 is free but not handed out again while .2 and .3 never were.
    assert_eq!(enable(&api, "b", 201).await, "192.0.2.2");
    assert_eq!(enable(&api, "a", 201).await, "192.0.2.3");

    // Deleting env b releases .2 with an event of its own, before the deletion.
    let b = api
        .ok(&api.admin, "GET", &format!("{ENVS}/b"), None, 200)
        .await;
    let b_id = b["id"].as_str().unwrap().to_owned();
    api.ok(&api.admin, "DELETE", &format!("{ENVS}/b"), None, 204)
        .await;
    assert_eq!(
        env_events(&api, &b_id).await,
        [
            "EnvCreated",
            "EnvIpv4Allocated",
            "EnvIpv4Released",
            "EnvDeleted"
        ]
    );
    // The cursor comes round: .1 (released first), then .2, then the pool is full.
    assert_eq!(enable(&api, "c", 201).await, "192.0.2.1");
    assert_eq!(enable(&api, "d", 201).await, "192.0.2.2");
    let r = api
        .call(&api.admin, "POST", &format!("{ENVS}/e/ipv4"), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.text());

    // Rebuilding the views from the log gives the same addresses and cursor.
    let live = rebuild::dump_views(&api.tdb.db).await.unwrap();
    rebuild::rebuild_views(&api.tdb.db).await.unwrap();
    let rebuilt = rebuild::dump_views(&api.tdb.db).await.unwrap();
    assert_eq!(live["v_envs"], rebuilt["v_envs"]);
    assert_eq!(live["v_ipv4_cursor"], rebuilt["v_ipv4_cursor"]);
    assert_eq!(rebuilt["v_ipv4_cursor"][0]["last_address"], "192.0.2.2");
    assert_eq!(env_ipv4(&api, "a").await, "192.0.2.3");
    // And allocation carries on from the rebuilt cursor.
    api.ok(&api.admin, "DELETE", &format!("{ENVS}/c/ipv4"), None, 204)
        .await;
    assert_eq!(enable(&api, "e", 201).await, "192.0.2.1");
}

#[tokio::test]
async fn without_a_pool_the_add_on_says_so() {
    let api = Api::start().await;
    envs(&api, &["prod"]).await;
    let before = api.event_count().await;
    let r = api
        .call(&api.admin, "POST", &format!("{ENVS}/prod/ipv4"), None)
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("no IPv4 pool"), "{}", r.text());
    assert!(r.text().contains("ipv4_pool"), "{}", r.text());
    api.ok(
        &api.admin,
        "DELETE",
        &format!("{ENVS}/prod/ipv4"),
        None,
        204,
    )
    .await;
    let r = api
        .call(&api.admin, "POST", &format!("{ENVS}/nope/ipv4"), None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(api.event_count().await, before);
}

#[tokio::test]
async fn a_shrunk_pool_never_takes_a_held_address_away() {
    let api = with_pool(&["192.0.2.1-192.0.2.2"]).await;
    envs(&api, &["a", "b", "c", "d"]).await;
    assert_eq!(enable(&api, "a", 201).await, "192.0.2.1");
    assert_eq!(enable(&api, "b", 201).await, "192.0.2.2");
    // A route listens on .3, outside the pool (allowed).
    api.ok(
        &api.admin,
        "POST",
        "/v1/orgs/default/routes",
        Some(
            json!({"app": "web", "env": "d", "kind": "tcp", "address": "192.0.2.3",
                    "process_type": "web", "backend_port": 8080}),
        ),
        201,
    )
    .await;
    // The operator drops .1 and adds .3 and .4; a second control plane on the same database
    // runs with that pool.
    let dir = tempfile::tempdir().unwrap();
    let cfg = ControlConfig {
        data_dir: dir.path().to_path_buf(),
        ipv4_pool: Ipv4Pool::parse(&["192.0.2.2-192.0.2.4"]).unwrap(),
        ..ControlConfig::default()
    };
    let ctl = Control::open(cfg, &api.tdb.url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(ctl)).await.unwrap() });
    let call = |method: &'static str, path: String| {
        let auth = format!("Bearer {}", api.admin);
        async move {
            scalebox_testkit::http::request(addr, method, &path, &[("Authorization", &auth)], None)
                .await
                .unwrap()
        }
    };
    // a keeps .1; .2 stays b's and the route keeps .3, so c gets .4; then the pool is full.
    let r = call("POST", format!("{ENVS}/a/ipv4")).await;
    assert_eq!(
        (r.status, r.json()["address"].clone()),
        (200, json!("192.0.2.1"))
    );
    let r = call("POST", format!("{ENVS}/c/ipv4")).await;
    assert_eq!(
        (r.status, r.json()["address"].clone()),
        (201, json!("192.0.2.4"))
    );
    let r = call("POST", format!("{ENVS}/d/ipv4")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    // Once a releases .1, it is outside the pool: not handed out again.
    assert_eq!(call("DELETE", format!("{ENVS}/a/ipv4")).await.status, 204);
    let r = call("POST", format!("{ENVS}/d/ipv4")).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("exhausted"), "{}", r.text());
}

#[tokio::test]
async fn other_orgs_cannot_enable_see_or_disable() {
    let api = with_pool(&["192.0.2.1-192.0.2.9"]).await;
    let bravo = api.new_org("bravo").await;
    let b_envs = "/v1/orgs/bravo/apps/web/envs";
    api.ok(
        &bravo,
        "POST",
        "/v1/orgs/bravo/apps",
        Some(json!({"name": "web"})),
        201,
    )
    .await;
    api.ok(&bravo, "POST", b_envs, Some(json!({"name": "prod"})), 201)
        .await;
    let v = api
        .ok(&bravo, "POST", &format!("{b_envs}/prod/ipv4"), None, 201)
        .await;
    let address = v["address"].as_str().unwrap().to_owned();
    let before = api.event_count().await;
    for (method, path) in [
        ("POST", format!("{b_envs}/prod/ipv4")),
        ("DELETE", format!("{b_envs}/prod/ipv4")),
        ("GET", format!("{b_envs}/prod")),
        ("POST", format!("{ENVS}/prod/ipv4")),
        ("DELETE", format!("{ENVS}/prod/ipv4")),
    ] {
        let r = api.call(&api.admin, method, &path, None).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert!(!r.text().contains(&address), "{}", r.text());
    }
    assert_eq!(api.event_count().await, before);
    let got = api
        .ok(&bravo, "GET", &format!("{b_envs}/prod"), None, 200)
        .await;
    assert_eq!(got["ipv4"], json!(address));
}

/// The edge table of the host of `token`, routes by id.
async fn edge_routes(api: &Api, token: &str) -> std::collections::HashMap<String, Value> {
    let t = api
        .ok(token, "GET", "/v1/edge/table?wait=0", None, 200)
        .await;
    t["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

async fn route(api: &Api, body: Value) -> String {
    api.ok(
        &api.admin,
        "POST",
        "/v1/orgs/default/routes",
        Some(body),
        201,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_edge_binds_the_envs_ipv4_routes_on_its_address() {
    let api = with_pool(&["192.0.2.10-192.0.2.11"]).await;
    envs(&api, &["prod", "staging"]).await;
    let address = enable(&api, "prod", 201).await;
    let tls_v4 = route(
        &api,
        json!({"app": "web", "env": "prod", "kind": "tls", "hostname": "web.example.com",
                "process_type": "web", "backend_port": 8080, "ipv4_required": true}),
    )
    .await;
    let tcp_v6 = route(
        &api,
        json!({"app": "web", "env": "prod", "kind": "tcp", "process_type": "web", "backend_port": 8080}),
    )
    .await;
    let shared_v4 = route(
        &api,
        json!({"app": "web", "env": "staging", "kind": "tls", "hostname": "staging.example.com",
                "process_type": "web", "backend_port": 8080, "ipv4_required": true}),
    )
    .await;
    // No route names a pool address explicitly, not even the env holding it (the route would
    // outlive the hold): the add-on binds it.
    for (env, a) in [
        ("staging", address.as_str()),
        ("staging", "192.0.2.11"),
        ("prod", address.as_str()),
    ] {
        let r = api
            .call(
                &api.admin,
                "POST",
                "/v1/orgs/default/routes",
                Some(
                    json!({"app": "web", "env": env, "kind": "tcp", "address": a,
                            "process_type": "web", "backend_port": 8080}),
                ),
            )
            .await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert!(r.text().contains("sb envs ipv4 enable"), "{}", r.text());
    }

    // A host whose agent reports prod's web instance ready on its overlay address.
    let h = api
        .ok(
            &api.admin,
            "POST",
            "/v1/hosts",
            Some(json!({"name": "alpha", "address": "10.0.0.1", "cpus": 4, "memory_mb": 8192})),
            201,
        )
        .await;
    let (host_id, token) = (
        h["host"]["id"]
            .as_str()
            .unwrap()
            .parse::<uuid::Uuid>()
            .unwrap(),
        h["agent_token"].as_str().unwrap().to_owned(),
    );
    let db = api.tdb.db.client().await.unwrap();
    db.execute(
        "INSERT INTO instances (id, org_id, env_id, deployment_id, process_type, kind, release_id,
                                secrets_version, host_id, memory_mb, cpu_millis, spec, secrets_as_env, desired)
         SELECT 'web-1', org_id, id, gen_random_uuid(), 'web', 'service', gen_random_uuid(), 0, $1, 256, 1000, '{}'::jsonb, false, 'run'
         FROM v_envs WHERE name = 'prod'",
        &[&host_id],
    )
    .await
    .unwrap();
    let r = api
        .call(
            &token,
            "POST",
            "/v1/agent/report",
            Some(json!({"instances": [{"id": "web-1", "state": "ready", "ready": true, "address": "fd00::1"}]})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let t = edge_routes(&api, &token).await;
    // Enters on the dedicated IPv4, forwarded over IPv6 inside.
    assert_eq!(t[&tls_v4]["ipv4"], true);
    assert_eq!(t[&tls_v4]["listen_v4"], json!(address));
    assert_eq!(t[&tls_v4]["backends"], json!(["[fd00::1]:8080"]));
    // A route not asking for IPv4 is not bound on it.
    assert_eq!(t[&tcp_v6]["ipv4"], false);
    assert!(t[&tcp_v6].get("listen_v4").is_none(), "{}", t[&tcp_v6]);
    // An env without an address: the edge's shared IPv4 (no listen_v4).
    assert_eq!(t[&shared_v4]["ipv4"], true);
    assert!(
        t[&shared_v4].get("listen_v4").is_none(),
        "{}",
        t[&shared_v4]
    );

    // Releasing moves the route back to the shared IPv4 address.
    api.ok(
        &api.admin,
        "DELETE",
        &format!("{ENVS}/prod/ipv4"),
        None,
        204,
    )
    .await;
    let t = edge_routes(&api, &token).await;
    assert_eq!(t[&tls_v4]["ipv4"], true);
    assert!(t[&tls_v4].get("listen_v4").is_none(), "{}", t[&tls_v4]);
}
