//! API behaviour against real Postgres: resources, strict bodies, idempotency, optimistic
//! concurrency, secrets confidentiality, routes and the audit log.

mod common;

use common::{Api, MANIFEST};
use serde_json::json;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

#[tokio::test]
async fn resources_lifecycle() {
    let api = Api::start().await;
    let t = &api.admin;
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/projects",
        Some(json!({"name": "shop"})),
        201,
    )
    .await;
    let app = api
        .ok(
            t,
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": "api", "project": "shop"})),
            201,
        )
        .await;
    assert_eq!(app["project"], "shop");
    assert_eq!(app["version"], 1);
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/apps/api/envs",
        Some(json!({"name": "prod"})),
        201,
    )
    .await;
    let envs = api
        .ok(t, "GET", "/v1/orgs/default/apps/api/envs", None, 200)
        .await;
    assert_eq!(envs["items"][0]["name"], "prod");

    // Releases: numbered, immutable, process types from the manifest.
    let body = json!({"image_ref": "reg/api:1", "image_digest": digest('a'), "manifest": MANIFEST});
    let r1 = api
        .ok(
            t,
            "POST",
            "/v1/orgs/default/apps/api/releases",
            Some(body),
            201,
        )
        .await;
    assert_eq!(r1["number"], 1);
    assert!(r1["manifest_hash"].as_str().unwrap().starts_with("sha256:"));
    let names: Vec<&str> = r1["process_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "worker"]);
    let body = json!({"image_ref": "reg/api:2", "image_digest": digest('b'), "manifest": MANIFEST});
    let r2 = api
        .ok(
            t,
            "POST",
            "/v1/orgs/default/apps/api/releases",
            Some(body),
            201,
        )
        .await;
    assert_eq!(r2["number"], 2);
    assert_eq!(
        r2["manifest_hash"], r1["manifest_hash"],
        "same manifest, same hash"
    );
    let got = api
        .ok(t, "GET", "/v1/orgs/default/apps/api/releases/v1", None, 200)
        .await;
    assert_eq!(got["image_digest"], digest('a'));
    let list = api
        .ok(t, "GET", "/v1/orgs/default/apps/api/releases", None, 200)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Update with optimistic concurrency.
    let app = api
        .ok(
            t,
            "PATCH",
            "/v1/orgs/default/apps/api",
            Some(json!({"description": "the API", "project": null})),
            200,
        )
        .await;
    assert_eq!(app["project"], serde_json::Value::Null);
    assert_eq!(app["version"], 2);

    // Deleting in the wrong order is refused with a reason; the right order works.
    let r = api
        .call(t, "DELETE", "/v1/orgs/default/apps/api", None)
        .await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("environments"));
    api.ok(
        t,
        "DELETE",
        "/v1/orgs/default/apps/api/envs/prod",
        None,
        204,
    )
    .await;
    api.ok(t, "DELETE", "/v1/orgs/default/apps/api", None, 204)
        .await;
    api.ok(t, "DELETE", "/v1/orgs/default/projects/shop", None, 204)
        .await;
    let r = api.call(t, "GET", "/v1/orgs/default/apps/api", None).await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn bad_input_gets_clear_4xx_and_writes_nothing() {
    let api = Api::start_with(|c| c.body_limit = 4096).await;
    let t = &api.admin;
    let before = api.event_count().await;
    let cases: Vec<(&str, &str, Option<serde_json::Value>, u16, &str)> = vec![
        (
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": "x", "colour": "red"})),
            400,
            "colour",
        ),
        (
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": 5})),
            400,
            "name",
        ),
        (
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({})),
            400,
            "missing field `name`",
        ),
        (
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": "Bad_Name"})),
            400,
            "a-z",
        ),
        (
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "x", "role": "god"})),
            400,
            "role",
        ),
        (
            "POST",
            "/v1/orgs/default/volumes",
            Some(json!({"name": "v", "size_gb": 0})),
            400,
            "size_gb",
        ),
        (
            "POST",
            "/v1/orgs/default/apps/nope/envs",
            Some(json!({"name": "e"})),
            404,
            "app \"nope\"",
        ),
        ("GET", "/v1/orgs/default/events?limit=0", None, 400, "limit"),
        ("GET", "/v1/orgs/default/events?after=x", None, 400, "after"),
        ("GET", "/v1/nope", None, 404, "not found"),
    ];
    for (m, p, b, status, needle) in cases {
        let r = api.call(t, m, p, b).await;
        assert_eq!(r.status, status, "{m} {p}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            msg.contains(needle),
            "{m} {p}: {msg:?} should mention {needle:?}"
        );
        assert!(r.json()["code"].is_string());
    }
    // Malformed JSON, wrong content type, oversized body.
    let auth = format!("Bearer {t}");
    let h = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = scalebox_testkit::http::request(
        api.addr,
        "POST",
        "/v1/orgs/default/apps",
        &h,
        Some(b"{\"name\": "),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{}",
        r.text()
    );
    let h2 = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "text/plain"),
    ];
    let r = scalebox_testkit::http::request(
        api.addr,
        "POST",
        "/v1/orgs/default/apps",
        &h2,
        Some(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(10_000));
    let r = scalebox_testkit::http::request(
        api.addr,
        "POST",
        "/v1/orgs/default/apps",
        &h,
        Some(big.as_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "body_too_large");
    // A bad manifest names line and column.
    let body = json!({"image_ref": "a", "image_digest": digest('c'), "manifest": "schema_version = 1\n[processes.web]\nprots = [1]\n"});
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "m"})),
        201,
    )
    .await;
    let r = api
        .call(t, "POST", "/v1/orgs/default/apps/m/releases", Some(body))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "invalid_manifest");
    assert!(
        r.json()["error"].as_str().unwrap().contains("3:"),
        "line 3: {}",
        r.text()
    );
    let body = json!({"image_ref": "a", "image_digest": "latest", "manifest": MANIFEST});
    let r = api
        .call(t, "POST", "/v1/orgs/default/apps/m/releases", Some(body))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("sha256:"));
    assert_eq!(
        api.event_count().await,
        before + 1,
        "only the app `m` was created"
    );
}

#[tokio::test]
async fn idempotent_retries_return_the_first_result() {
    let api = Api::start().await;
    let t = &api.admin;
    let h = [("Idempotency-Key", "create-api-1")];
    let body = json!({"name": "api"});
    let first = api
        .call_h(t, "POST", "/v1/orgs/default/apps", &h, Some(body.clone()))
        .await;
    assert_eq!(first.status, 201);
    let n = api.event_count().await;
    for _ in 0..3 {
        let again = api
            .call_h(t, "POST", "/v1/orgs/default/apps", &h, Some(body.clone()))
            .await;
        assert_eq!(again.status, 201);
        assert_eq!(again.json(), first.json(), "same result, same id");
    }
    assert_eq!(api.event_count().await, n, "retries append nothing");
    // Without a key the same request is a conflict.
    let r = api
        .call(t, "POST", "/v1/orgs/default/apps", Some(body))
        .await;
    assert_eq!(r.status, 409);
    // The same key with a different request is refused.
    let r = api
        .call_h(
            t,
            "POST",
            "/v1/orgs/default/apps",
            &h,
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // Concurrent retries with one key: one effect.
    let h = [("Idempotency-Key", "k2")];
    let futs = (0..8).map(|_| {
        api.call_h(
            t,
            "POST",
            "/v1/orgs/default/projects",
            &h,
            Some(json!({"name": "p"})),
        )
    });
    let rs = futures_util::future::join_all(futs).await;
    let ids: std::collections::HashSet<String> = rs
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(api.event_count().await, n + 1);
}

#[tokio::test]
async fn optimistic_concurrency_one_winner_rest_409() {
    let api = Api::start().await;
    let t = &api.admin;
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "api"})),
        201,
    )
    .await;
    // A stale expected version is refused and writes nothing.
    let n = api.event_count().await;
    let r = api
        .call_h(
            t,
            "PATCH",
            "/v1/orgs/default/apps/api",
            &[("If-Match", "7")],
            Some(json!({"description": "x"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(api.event_count().await, n);

    // N parallel updates based on the same version: exactly one wins.
    let futs = (0..12).map(|i| {
        api.call(
            t,
            "PATCH",
            "/v1/orgs/default/apps/api",
            Some(json!({"description": format!("d{i}"), "expected_version": 1})),
        )
    });
    let rs = futures_util::future::join_all(futs).await;
    let wins: Vec<_> = rs.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        wins.len(),
        1,
        "{:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(rs.iter().all(|r| r.status == 200 || r.status == 409));
    let app = api
        .ok(t, "GET", "/v1/orgs/default/apps/api", None, 200)
        .await;
    assert_eq!(app["version"], 2);
    assert_eq!(
        app["description"],
        wins[0].json()["description"],
        "view matches the winner"
    );
    assert_eq!(api.event_count().await, n + 1);

    // N parallel creates of one name: exactly one wins.
    let futs = (0..12).map(|_| {
        api.call(
            t,
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": "race"})),
        )
    });
    let rs = futures_util::future::join_all(futs).await;
    assert_eq!(rs.iter().filter(|r| r.status == 201).count(), 1);
    assert_eq!(rs.iter().filter(|r| r.status == 409).count(), 11);

    // Parallel secret updates on one base version: one new version.
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/apps/api/envs",
        Some(json!({"name": "prod"})),
        201,
    )
    .await;
    let futs = (0..8).map(|i| {
        api.call(
            t,
            "PATCH",
            "/v1/orgs/default/apps/api/envs/prod/secrets",
            Some(json!({"set": {"K": format!("{i}")}, "expected_version": 0})),
        )
    });
    let rs = futures_util::future::join_all(futs).await;
    assert_eq!(rs.iter().filter(|r| r.status == 201).count(), 1);
    let s = api
        .ok(
            t,
            "GET",
            "/v1/orgs/default/apps/api/envs/prod/secrets",
            None,
            200,
        )
        .await;
    assert_eq!(s["version"], 1);
}

#[tokio::test]
async fn secrets_never_leak_values() {
    let api = Api::start().await;
    let t = &api.admin;
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/apps",
        Some(json!({"name": "api"})),
        201,
    )
    .await;
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/apps/api/envs",
        Some(json!({"name": "prod"})),
        201,
    )
    .await;
    let p = "/v1/orgs/default/apps/api/envs/prod/secrets";
    let v1 = api
        .ok(
            t,
            "PATCH",
            p,
            Some(json!({"set": {"DB_PASSWORD": "hunter2-very-secret", "API_KEY": "k-123-secret"}})),
            201,
        )
        .await;
    assert_eq!(
        v1,
        json!({"app": "api", "env": "prod", "version": 1, "names": ["API_KEY", "DB_PASSWORD"]})
    );
    let v2 = api
        .ok(
            t,
            "PATCH",
            p,
            Some(json!({"unset": ["API_KEY"], "set": {"NEW": "n-secret"}})),
            201,
        )
        .await;
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["names"], json!(["DB_PASSWORD", "NEW"]));
    // Setting the same values again changes nothing.
    let same = api
        .ok(
            t,
            "PATCH",
            p,
            Some(json!({"set": {"NEW": "n-secret"}})),
            200,
        )
        .await;
    assert_eq!(same["version"], 2);
    let versions = api.ok(t, "GET", &format!("{p}/versions"), None, 200).await;
    assert_eq!(versions["items"].as_array().unwrap().len(), 2);
    let r = api
        .call(t, "PATCH", p, Some(json!({"set": {"1BAD": "x"}})))
        .await;
    assert_eq!(r.status, 400);
    // Nothing readable anywhere: events, views, audit API, raw tables.
    let c = api.tdb.db.client().await.unwrap();
    let dump: String = c
        .query_one(
            "SELECT (SELECT string_agg(payload::text, ' ') FROM events) || (SELECT string_agg(names::text, ' ') FROM v_secret_versions)
                    || (SELECT string_agg(encode(ciphertext, 'escape'), ' ') FROM secret_material)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for secret in ["hunter2-very-secret", "k-123-secret", "n-secret"] {
        assert!(!dump.contains(secret), "{secret} found at rest");
    }
    let audit = api
        .call(t, "GET", "/v1/orgs/default/events?limit=500", None)
        .await
        .text();
    assert!(!audit.contains("hunter2") && audit.contains("SecretsVersionCreated"));
}

#[tokio::test]
async fn routes_hostnames_are_unique_across_orgs_and_tcp_ports_allocated() {
    let api = Api::start_with(|c| c.tcp_port_range = (30000, 30001)).await;
    let t = &api.admin;
    for (tok, org) in [
        (t.clone(), "default"),
        (api.new_org("other").await, "other"),
    ] {
        api.ok(
            &tok,
            "POST",
            &format!("/v1/orgs/{org}/apps"),
            Some(json!({"name": "api"})),
            201,
        )
        .await;
        for env in ["prod", "staging"] {
            api.ok(
                &tok,
                "POST",
                &format!("/v1/orgs/{org}/apps/api/envs"),
                Some(json!({"name": env})),
                201,
            )
            .await;
        }
    }
    let other = api
        .ok(t, "POST", "/v1/orgs", Some(json!({"name": "third"})), 201)
        .await;
    let _ = other;
    let route = |env: &str, host: &str, port: Option<i32>| {
        json!({"app": "api", "env": env, "kind": "tls", "hostname": host, "listener_port": port, "process_type": "web",
               "backend_port": 8443, "proxy_protocol_v2": true})
    };
    let r = api
        .ok(
            t,
            "POST",
            "/v1/orgs/default/routes",
            Some(route("prod", "API.Example.com", None)),
            201,
        )
        .await;
    assert_eq!(
        (
            r["hostname"].as_str(),
            r["listener_port"].as_i64(),
            r["proxy_protocol_v2"].as_bool()
        ),
        (Some("api.example.com"), Some(443), Some(true))
    );
    // Same hostname, other port, same env: fine. Other env of the same org: conflict.
    api.ok(
        t,
        "POST",
        "/v1/orgs/default/routes",
        Some(route("prod", "api.example.com", Some(8443))),
        201,
    )
    .await;
    let c = api
        .call(
            t,
            "POST",
            "/v1/orgs/default/routes",
            Some(route("staging", "api.example.com", Some(9443))),
        )
        .await;
    assert_eq!(c.status, 409, "{}", c.text());
    // Another org cannot take it either.
    let other_token = api.call(t, "GET", "/v1/orgs", None).await;
    assert_eq!(other_token.status, 200);
    let tok = api.ctl.clone();
    let other_admin = scalebox_control::ops::tokens::create_direct(&tok, "other", "admin", "t")
        .await
        .unwrap();
    let c = api
        .call(
            &other_admin,
            "POST",
            "/v1/orgs/other/routes",
            Some(route("prod", "api.example.com", Some(7443))),
        )
        .await;
    assert_eq!(c.status, 409);
    assert!(
        c.json()["error"]
            .as_str()
            .unwrap()
            .contains("another environment")
    );
    let r = api.call(&other_admin, "POST", "/v1/orgs/other/routes", Some(json!({"app": "api", "env": "prod", "kind": "tls", "process_type": "web", "backend_port": 1}))).await;
    assert_eq!(r.status, 400, "tls without hostname");
    let r = api
        .call(
            &other_admin,
            "POST",
            "/v1/orgs/other/routes",
            Some(route("prod", "not a host", None)),
        )
        .await;
    assert_eq!(r.status, 400);
    // Raw TCP ports come from the range until it is exhausted.
    let tcp = json!({"app": "api", "env": "prod", "kind": "tcp", "process_type": "redis", "backend_port": 6379});
    let a = api
        .ok(t, "POST", "/v1/orgs/default/routes", Some(tcp.clone()), 201)
        .await;
    let b = api
        .ok(
            &other_admin,
            "POST",
            "/v1/orgs/other/routes",
            Some(tcp.clone()),
            201,
        )
        .await;
    assert_eq!(
        (a["listener_port"].as_i64(), b["listener_port"].as_i64()),
        (Some(30000), Some(30001))
    );
    let r = api
        .call(t, "POST", "/v1/orgs/default/routes", Some(tcp.clone()))
        .await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("30000-30001"));
    // Deleting frees the port and the hostname.
    api.ok(
        t,
        "DELETE",
        &format!("/v1/orgs/default/routes/{}", a["id"].as_str().unwrap()),
        None,
        204,
    )
    .await;
    let again = api
        .ok(t, "POST", "/v1/orgs/default/routes", Some(tcp), 201)
        .await;
    assert_eq!(again["listener_port"], 30000);
    let list = api.ok(t, "GET", "/v1/orgs/default/routes", None, 200).await;
    for r in list["items"].as_array().unwrap() {
        api.ok(
            t,
            "DELETE",
            &format!("/v1/orgs/default/routes/{}", r["id"].as_str().unwrap()),
            None,
            204,
        )
        .await;
    }
    api.ok(
        &other_admin,
        "POST",
        "/v1/orgs/other/routes",
        Some(route("prod", "api.example.com", None)),
        201,
    )
    .await;
}

#[tokio::test]
async fn audit_log_pages_and_filters() {
    let api = Api::start().await;
    let t = &api.admin;
    for i in 0..7 {
        api.ok(
            t,
            "POST",
            "/v1/orgs/default/apps",
            Some(json!({"name": format!("a{i}")})),
            201,
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = api
            .ok(
                t,
                "GET",
                &format!("/v1/orgs/default/events?limit=3&after={after}"),
                None,
                200,
            )
            .await;
        for e in page["events"].as_array().unwrap() {
            seen.push(e["seq"].as_i64().unwrap());
            assert!(e["actor"].as_str().unwrap().starts_with("token:") || e["actor"] == "system");
            assert!(e["payload"].get("hash").is_none());
        }
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen.len(), 9, "org + token + 7 apps");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let apps = api
        .ok(
            t,
            "GET",
            "/v1/orgs/default/events?type=AppCreated",
            None,
            200,
        )
        .await;
    assert_eq!(apps["events"].as_array().unwrap().len(), 7);
    let stream = apps["events"][0]["stream"].as_str().unwrap().to_owned();
    let one = api
        .ok(
            t,
            "GET",
            &format!("/v1/orgs/default/events?stream={stream}"),
            None,
            200,
        )
        .await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    assert_eq!(one["events"][0]["actor"], "token:admin");
}
