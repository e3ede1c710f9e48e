//! Parser tests: the full example, every error class with its position, normalisation and hashing.

use super::*;

mod semantic;
mod syntax;

pub(crate) const FULL: &str = r#"schema_version = 1

[resources]
cpu = 1.0
memory_mb = 256

[env]
LOG_LEVEL = "info"

[secrets]
path = "/run/secrets/scalebox.env"
as_env = false

[release]
command = ["./migrate", "up"]
timeout_s = 300

[processes.web]
command = ["./api", "serve"]
ports = [8080]
scale = 2
resources = { cpu = 2, memory_mb = 512 }
stop_grace_s = 30
[processes.web.health]
kind = "http"
port = 8080
path = "/healthz"
interval_s = 5
timeout_s = 2
grace_s = 10

[processes.redis]
ports = [6379]
[processes.redis.health]
kind = "tcp"
[[processes.redis.volumes]]
name = "redis-data"
path = "/data"

[[routes]]
process = "web"
hostname = "api.example.com"
kind = "tls"
port = 443
backend_port = 8080
proxy_protocol = "v2"
ipv4 = false

[[routes]]
process = "redis"
kind = "tcp"
backend_port = 6379
"#;

pub(crate) fn err(text: &str) -> ManifestErrors {
    match parse(text) {
        Ok(m) => panic!("expected an error, parsed {m:?}"),
        Err(e) => e,
    }
}

/// Asserts exactly one error at (line, column) whose message contains every needle.
pub(crate) fn one_err(text: &str, line: usize, column: usize, needles: &[&str]) {
    let e = err(text);
    assert_eq!(e.errors().len(), 1, "{e}");
    let got = &e.errors()[0];
    assert_eq!((got.line, got.column), (line, column), "{e}");
    for n in needles {
        assert!(got.message.contains(n), "{n:?} not in {e}");
    }
}

pub(crate) const HEAD: &str = "schema_version = 1\n";

#[test]
fn full_example_parses_with_defaults_filled() {
    let m = parse(FULL).unwrap();
    assert_eq!(m.schema_version, 1);
    assert_eq!(m.env["LOG_LEVEL"], "info");
    assert_eq!(m.secrets.path, "/run/secrets/scalebox.env");
    assert!(!m.secrets.as_env);
    let rel = m.release.as_ref().unwrap();
    assert_eq!(rel.command, ["./migrate", "up"]);
    assert_eq!(rel.timeout_s, 300);
    assert_eq!(
        rel.resources,
        Resources {
            cpu: 1.0,
            memory_mb: 256
        }
    );

    let web = m.process("web").unwrap();
    assert_eq!(
        web.command.as_deref(),
        Some(&["./api".to_owned(), "serve".to_owned()][..])
    );
    assert_eq!(web.ports, [8080]);
    assert_eq!(web.scale, 2);
    assert_eq!(web.stop_grace_s, 30);
    assert_eq!(
        web.resources,
        Resources {
            cpu: 2.0,
            memory_mb: 512
        }
    );
    let h = web.health.as_ref().unwrap();
    assert_eq!(
        *h,
        HealthCheck {
            kind: HealthKind::Http,
            port: 8080,
            path: Some("/healthz".into()),
            interval_s: 5,
            timeout_s: 2,
            grace_s: 10,
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    );

    let redis = m.process("redis").unwrap();
    assert_eq!(redis.command, None);
    assert_eq!(redis.scale, 1);
    assert_eq!(redis.stop_grace_s, 10);
    assert_eq!(
        redis.resources,
        Resources {
            cpu: 1.0,
            memory_mb: 256
        }
    );
    let rh = redis.health.as_ref().unwrap();
    assert_eq!(
        (rh.kind, rh.port, rh.path.as_deref()),
        (HealthKind::Tcp, 6379, None)
    );
    assert_eq!(redis.volume_names().collect::<Vec<_>>(), ["redis-data"]);
    assert_eq!(redis.volumes[0].path, "/data");

    let names: Vec<&str> = m.process_types().map(|(n, _)| n).collect();
    assert_eq!(names, ["redis", "web"]);
    assert_eq!(m.routes.len(), 2);
    let tls = m.routes_for("web").next().unwrap();
    assert_eq!(
        *tls,
        Route {
            process: "web".into(),
            kind: RouteKind::Tls,
            hostname: Some("api.example.com".into()),
            port: Some(443),
            backend_port: 8080,
            proxy_protocol: ProxyProtocol::V2,
            ipv4: false,
        }
    );
    let tcp = m.routes_for("redis").next().unwrap();
    assert_eq!(
        (tcp.kind, tcp.port, tcp.proxy_protocol),
        (RouteKind::Tcp, None, ProxyProtocol::Off)
    );
}

#[test]
fn minimal_manifest_gets_every_default() {
    let m = parse("schema_version = 1\n[processes.worker]\n").unwrap();
    assert_eq!(
        m.normalized_json(),
        r#"{"env":{},"processes":{"worker":{"command":null,"health":null,"ports":[],"resources":{"cpu":1.0,"memory_mb":256},"scale":1,"stop_grace_s":10,"volumes":[]}},"release":null,"routes":[],"schema_version":1,"secrets":{"as_env":false,"path":"/run/secrets/scalebox.env"}}"#
    );
}

#[test]
fn top_level_resources_are_defaults_and_overrides_are_per_field() {
    let m = parse(&format!(
        "{HEAD}[resources]\ncpu = 0.5\nmemory_mb = 128\n[release]\ncommand = [\"m\"]\n\
         [processes.a]\n[processes.b]\nresources = {{ memory_mb = 1024 }}\n"
    ))
    .unwrap();
    assert_eq!(
        m.process("a").unwrap().resources,
        Resources {
            cpu: 0.5,
            memory_mb: 128
        }
    );
    assert_eq!(
        m.process("b").unwrap().resources,
        Resources {
            cpu: 0.5,
            memory_mb: 1024
        }
    );
    assert_eq!(
        m.release.unwrap().resources,
        Resources {
            cpu: 0.5,
            memory_mb: 128
        }
    );
}

// ---- normalisation and hashing ----

#[test]
fn normalized_json_round_trips_through_serde() {
    let m = parse(FULL).unwrap();
    let back: Manifest = serde_json::from_str(&m.normalized_json()).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.content_hash(), m.content_hash());
}

#[test]
fn to_toml_round_trips_through_parse() {
    let m = parse(FULL).unwrap();
    let again = parse(&m.to_toml()).unwrap_or_else(|e| panic!("{e}\n{}", m.to_toml()));
    assert_eq!(again, m);
}

#[test]
fn normalized_json_rejects_unknown_fields() {
    let m = parse(FULL).unwrap();
    let json = m.normalized_json().replacen('{', "{\"extra\":1,", 1);
    assert!(serde_json::from_str::<Manifest>(&json).is_err());
}

#[test]
fn hash_ignores_order_formatting_comments_and_explicit_defaults() {
    let a = parse(FULL).unwrap();
    let reordered = r#"
# routes first, processes in another order, defaults spelled out or omitted
[[routes]]
backend_port = 6379
kind = "tcp"
process = "redis"

[[routes]]
ipv4 = false
proxy_protocol = "v2"
backend_port = 8080
port = 443
kind = "tls"
hostname = "api.example.com"
process = "web"

[processes.redis]
scale = 1
ports = [6379]
volumes = [{ path = "/data", name = "redis-data" }]
health = { kind = "tcp", port = 6379, interval_s = 5 }

[processes.web.health]
grace_s = 10
path = "/healthz"
kind = "http"
unhealthy_threshold = 3

[processes.web]
stop_grace_s = 30
resources = { memory_mb = 512, cpu = 2.0 }
scale = 2
ports = [8080]
command = ["./api", "serve"]

[release]
command = ["./migrate", "up"]

[env]
LOG_LEVEL = "info"

schema_version = 1
"#;
    // `schema_version` after a table belongs to that table in TOML; put it at the top instead.
    let reordered = format!(
        "schema_version = 1\n{}",
        reordered.replace("\nschema_version = 1\n", "\n")
    );
    let b = parse(&reordered).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b);
    assert_eq!(a.content_hash(), b.content_hash());
    assert!(a.content_hash().starts_with("sha256:"));
    assert_eq!(a.content_hash().len(), "sha256:".len() + 64);
}

#[test]
fn meaningful_changes_change_the_hash() {
    let base = parse(FULL).unwrap().content_hash();
    for (from, to) in [
        ("scale = 2", "scale = 3"),
        ("LOG_LEVEL = \"info\"", "LOG_LEVEL = \"debug\""),
        ("as_env = false", "as_env = true"),
        (
            "command = [\"./migrate\", \"up\"]",
            "command = [\"./migrate\", \"down\"]",
        ),
        (
            "command = [\"./api\", \"serve\"]",
            "command = [\"./api\", \"serve\", \"-v\"]",
        ),
        ("memory_mb = 256", "memory_mb = 300"),
        ("cpu = 2,", "cpu = 2.5,"),
        ("path = \"/healthz\"", "path = \"/ready\""),
        ("stop_grace_s = 30", "stop_grace_s = 31"),
        ("proxy_protocol = \"v2\"", "proxy_protocol = \"off\""),
        (
            "hostname = \"api.example.com\"",
            "hostname = \"api2.example.com\"",
        ),
        ("path = \"/data\"", "path = \"/var/data\""),
        ("timeout_s = 300", "timeout_s = 301"),
    ] {
        assert!(FULL.contains(from), "{from}");
        let changed = parse(&FULL.replacen(from, to, 1)).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert_ne!(changed.content_hash(), base, "{from} -> {to}");
    }
}

#[test]
fn integer_and_float_cpu_hash_the_same() {
    let a = parse(&format!("{HEAD}[processes.w]\nresources = {{ cpu = 2 }}\n")).unwrap();
    let b = parse(&format!(
        "{HEAD}[processes.w]\nresources = {{ cpu = 2.0 }}\n"
    ))
    .unwrap();
    assert_eq!(a.content_hash(), b.content_hash());
}

#[test]
fn every_toml_example_in_the_docs_parses() {
    let doc = include_str!("../../../../docs/manifest.md");
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .collect();
    assert_eq!(blocks.len(), 2);
    for b in &blocks {
        parse(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
    let full = parse(blocks[0]).unwrap();
    assert_eq!(
        full.process("redis").unwrap().health.as_ref().unwrap().port,
        6379
    );
    let minimal = parse(blocks[1]).unwrap();
    assert!(doc.contains(&minimal.normalized_json()));
}
