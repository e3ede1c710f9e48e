//! Tenancy and authorization over every endpoint of the OpenAPI document: a token of org A gets
//! 404 (never 403, never data) for every resource of org B; a reader cannot mutate; no token is
//! 401; host management is for the operator org only.

mod common;

use common::{Api, MANIFEST};
use serde_json::{Value, json};

struct OrgB {
    name: String,
    admin: String,
    route_id: String,
    token_id: String,
}

async fn populate(api: &Api) -> OrgB {
    let name = "bravo".to_string();
    let admin = api.new_org(&name).await;
    let o = |p: &str| format!("/v1/orgs/{name}{p}");
    api.ok(
        &admin,
        "POST",
        &o("/projects"),
        Some(json!({"name": "proj"})),
        201,
    )
    .await;
    api.ok(
        &admin,
        "POST",
        &o("/apps"),
        Some(json!({"name": "app", "project": "proj"})),
        201,
    )
    .await;
    api.ok(
        &admin,
        "POST",
        &o("/apps/app/envs"),
        Some(json!({"name": "prod"})),
        201,
    )
    .await;
    api.ok(
        &admin,
        "POST",
        &o("/apps/app/releases"),
        Some(release_body()),
        201,
    )
    .await;
    api.ok(
        &admin,
        "PATCH",
        &o("/apps/app/envs/prod/secrets"),
        Some(json!({"set": {"K": "v"}})),
        201,
    )
    .await;
    api.ok(
        &admin,
        "POST",
        &o("/volumes"),
        Some(json!({"name": "vol", "size_gb": 1})),
        201,
    )
    .await;
    let route = api
        .ok(&admin, "POST", &o("/routes"), Some(route_body()), 201)
        .await;
    let token = api
        .ok(
            &admin,
            "POST",
            &o("/tokens"),
            Some(json!({"name": "ci", "role": "reader"})),
            201,
        )
        .await;
    OrgB {
        name,
        admin,
        route_id: route["id"].as_str().unwrap().into(),
        token_id: token["id"].as_str().unwrap().into(),
    }
}

fn release_body() -> Value {
    json!({"image_ref": "x/y:1", "image_digest": format!("sha256:{}", "a".repeat(64)), "manifest": MANIFEST})
}

fn route_body() -> Value {
    json!({"app": "app", "env": "prod", "kind": "tls", "hostname": "bravo.example.com", "process_type": "web", "backend_port": 8080})
}

/// A valid body for each mutating endpoint, so that only authorization can refuse it.
fn body_for(method: &str, path: &str) -> Option<Value> {
    Some(match (method, path) {
        ("POST", "/v1/orgs/{org}/tokens") => json!({"name": "t2", "role": "reader"}),
        ("POST", "/v1/orgs/{org}/projects") => json!({"name": "p2"}),
        ("POST", "/v1/orgs/{org}/apps") => json!({"name": "a2"}),
        ("PATCH", "/v1/orgs/{org}/apps/{app}") => json!({"description": "x"}),
        ("POST", "/v1/orgs/{org}/apps/{app}/envs") => json!({"name": "e2"}),
        ("PATCH", "/v1/orgs/{org}/apps/{app}/envs/{env}/secrets") => json!({"set": {"B": "w"}}),
        ("POST", "/v1/orgs/{org}/apps/{app}/releases") => release_body(),
        ("POST", "/v1/orgs/{org}/routes") => {
            json!({"app": "app", "env": "prod", "kind": "tcp", "process_type": "web", "backend_port": 6379})
        }
        ("POST", "/v1/orgs/{org}/volumes") => json!({"name": "v2", "size_gb": 1}),
        ("POST", "/v1/orgs/{org}/apps/{app}/envs/{env}/scale") => json!({"scales": {"web": 2}}),
        ("POST", "/v1/orgs/{org}/apps/{app}/envs/{env}/exec") => json!({"argv": ["true"]}),
        _ => return None,
    })
}

/// Every (method, path template) under `/v1/orgs/{org}` in the OpenAPI document.
fn org_endpoints() -> Vec<(String, String)> {
    let doc = scalebox_control::api::openapi::document();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/orgs/{org}") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase(), path.clone()));
        }
    }
    assert!(
        out.len() >= 30,
        "expected the whole org surface, got {}",
        out.len()
    );
    out
}

fn fill(template: &str, org: &str, b: &OrgB) -> String {
    template
        .replace("{org}", org)
        .replace("{digest}", &format!("sha256:{}", "0".repeat(64)))
        .replace("{app}", "app")
        .replace("{env}", "prod")
        .replace("{project}", "proj")
        .replace("{release}", "1")
        .replace("{volume}", "vol")
        .replace(
            "{id}",
            if template.contains("/tokens/") {
                &b.token_id
            } else {
                &b.route_id
            },
        )
}

#[tokio::test]
async fn other_orgs_resources_are_404_on_every_endpoint() {
    let api = Api::start().await;
    let b = populate(&api).await;
    let before = api.event_count().await;
    for (method, template) in org_endpoints() {
        // Org B's own path with org A's token.
        let path = fill(&template, &b.name, &b);
        let r = api
            .call(&api.admin, &method, &path, body_for(&method, &template))
            .await;
        assert_eq!(
            r.status,
            404,
            "{method} {path} with org A's token: {}",
            r.text()
        );
        if method != "HEAD" {
            assert_eq!(r.json()["code"], "not_found", "{method} {path}");
        }
        assert!(
            !r.text().contains("bravo.example.com"),
            "no data leaks: {}",
            r.text()
        );
        // Org B's resources addressed under org A's own path.
        if ["{app}", "{project}", "{volume}", "{id}"]
            .iter()
            .any(|p| template.contains(p))
        {
            let path = fill(&template, "default", &b);
            let r = api
                .call(&api.admin, &method, &path, body_for(&method, &template))
                .await;
            assert_eq!(
                r.status,
                404,
                "{method} {path} (B's resource under A's org): {}",
                r.text()
            );
        }
    }
    assert_eq!(
        api.event_count().await,
        before,
        "refused requests append nothing"
    );
    // And B's token still sees its data.
    let apps = api
        .ok(&b.admin, "GET", "/v1/orgs/bravo/apps", None, 200)
        .await;
    assert_eq!(apps["items"][0]["name"], "app");
    // A's audit log has none of B's events.
    let ev = api
        .ok(
            &api.admin,
            "GET",
            "/v1/orgs/default/events?limit=500",
            None,
            200,
        )
        .await;
    assert!(!ev.to_string().contains("bravo.example.com"));
}

#[tokio::test]
async fn readers_cannot_mutate_and_anonymous_gets_401() {
    let api = Api::start().await;
    let b = populate(&api).await;
    let reader = api
        .ok(
            &b.admin,
            "POST",
            "/v1/orgs/bravo/tokens",
            Some(json!({"name": "ro", "role": "reader"})),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = api.event_count().await;
    for (method, template) in org_endpoints() {
        let path = fill(&template, &b.name, &b);
        if method == "GET" || method == "HEAD" {
            let r = api.call(&reader, &method, &path, None).await;
            let expect = if template.contains("/tokens") || template.ends_with("/attach") {
                403
            } else if template.contains("/images/") || template.ends_with("/logs") {
                // Readers may look, but nothing was uploaded, and nothing runs in this
                // environment: no instances to read.
                404
            } else {
                200
            };
            assert_eq!(r.status, expect, "reader {method} {path}: {}", r.text());
        } else {
            let r = api
                .call(&reader, &method, &path, body_for(&method, &template))
                .await;
            assert_eq!(r.status, 403, "reader {method} {path}: {}", r.text());
            assert_eq!(r.json()["code"], "forbidden");
        }
        let r = scalebox_testkit::http::request(api.addr, &method, &path, &[], None)
            .await
            .unwrap();
        assert_eq!(r.status, 401, "anonymous {method} {path}");
        let r = api.call("sbx_not_a_real_token", &method, &path, None).await;
        assert_eq!(r.status, 401, "bad token {method} {path}");
    }
    assert_eq!(api.event_count().await, before);
}

#[tokio::test]
async fn hosts_are_for_operator_admins_and_agents_fetch_secrets() {
    let api = Api::start().await;
    let b = populate(&api).await;
    let host = json!({"name": "h1", "address": "10.1.2.3", "cpus": 4, "memory_mb": 8192});
    let r = api
        .call(&b.admin, "POST", "/v1/hosts", Some(host.clone()))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = api.call(&b.admin, "GET", "/v1/hosts", None).await;
    assert_eq!(r.status, 403);
    let created = api
        .ok(&api.admin, "POST", "/v1/hosts", Some(host), 201)
        .await;
    let agent = created["agent_token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.ok(&api.admin, "GET", "/v1/hosts/h1", None, 200).await["cpus"],
        4
    );

    // The agent credential reads secret material of environments its host runs instances of,
    // and nothing else.
    let env = api
        .ok(
            &b.admin,
            "GET",
            "/v1/orgs/bravo/apps/app/envs/prod",
            None,
            200,
        )
        .await;
    let env_id = env["id"].as_str().unwrap();
    let r = api
        .call(
            &agent,
            "GET",
            &format!("/v1/agent/secrets/{env_id}/1"),
            None,
        )
        .await;
    assert_eq!(r.status, 404, "no instance of that env on this host yet");
    let host_id: uuid::Uuid = created["host"]["id"].as_str().unwrap().parse().unwrap();
    let env_uuid: uuid::Uuid = env_id.parse().unwrap();
    api.tdb
        .db
        .client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO instances (id, org_id, env_id, deployment_id, process_type, kind, release_id,
                                    secrets_version, host_id, memory_mb, cpu_millis, spec, secrets_as_env, desired)
             SELECT 'web-1', org_id, id, gen_random_uuid(), 'web', 'service', gen_random_uuid(), 1, $2, 256, 1000, '{}'::jsonb, false, 'run'
             FROM v_envs WHERE id = $1",
            &[&env_uuid, &host_id],
        )
        .await
        .unwrap();
    let m = api
        .ok(
            &agent,
            "GET",
            &format!("/v1/agent/secrets/{env_id}/1"),
            None,
            200,
        )
        .await;
    assert_eq!(m["values"]["K"], "v");
    let r = api
        .call(
            &b.admin,
            "GET",
            &format!("/v1/agent/secrets/{env_id}/1"),
            None,
        )
        .await;
    assert_eq!(r.status, 403, "org tokens cannot fetch material");
    let r = api.call(&agent, "GET", "/v1/orgs/default/apps", None).await;
    assert_eq!(r.status, 403, "agent tokens cannot read org resources");
    // Removing the host revokes its credential.
    api.ok(&api.admin, "DELETE", "/v1/hosts/h1", None, 204)
        .await;
    let r = api
        .call(
            &agent,
            "GET",
            &format!("/v1/agent/secrets/{env_id}/1"),
            None,
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn join_tokens_only_join() {
    let api = Api::start().await;
    let b = populate(&api).await;
    let join = api
        .ok(
            &api.admin,
            "POST",
            "/v1/orgs/default/tokens",
            Some(json!({"name": "joiner", "role": "join"})),
            201,
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Join tokens belong to the operator org only.
    let r = api
        .call(
            &b.admin,
            "POST",
            "/v1/orgs/bravo/tokens",
            Some(json!({"name": "j", "role": "join"})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let before = api.event_count().await;
    for (method, template) in org_endpoints() {
        let path = fill(&template, "default", &b);
        let r = api
            .call(&join, &method, &path, body_for(&method, &template))
            .await;
        assert!(
            r.status == 403 || r.status == 404,
            "join token {method} {path}: {} {}",
            r.status,
            r.text()
        );
    }
    for (method, path) in [
        ("GET", "/v1/hosts"),
        ("GET", "/v1/agent/desired?wait=0"),
        ("GET", "/v1/edge/table?wait=0"),
    ] {
        let r = api.call(&join, method, path, None).await;
        assert_eq!(r.status, 403, "join token {method} {path}: {}", r.text());
    }
    assert_eq!(
        api.event_count().await,
        before,
        "refused requests append nothing"
    );
    // It joins a host, whose agent credential then reads its (empty) desired state.
    let created = api
        .ok(
            &join,
            "POST",
            "/v1/agent/join",
            Some(json!({"name": "h9", "address": "127.0.0.1", "cpus": 2, "memory_mb": 2048})),
            201,
        )
        .await;
    let agent = created["agent_token"].as_str().unwrap();
    let d = api
        .ok(agent, "GET", "/v1/agent/desired?wait=0", None, 200)
        .await;
    assert_eq!(d["instances"], json!([]));
    let r = api
        .call(
            agent,
            "POST",
            "/v1/agent/report",
            Some(json!({"instances": [{"id": "x", "state": "exploded"}]})),
        )
        .await;
    assert_eq!(r.status, 400, "unknown states are refused: {}", r.text());
}
