//! Builds the host agent's instance spec (docs/agent.md) for one instance of a release (pure).
//! The release's manifest says how to run the image; the control plane adds identity variables
//! and the secrets of the deployment's secrets version.

use std::collections::BTreeMap;

use scalebox_manifest::{HealthKind, Manifest};
use serde_json::{Value, json};

/// What the instance runs: a process type, or the release command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    Process(&'a str),
    ReleaseCommand,
}

/// Identity of the instance, exported to the workload as `SCALEBOX_*` variables.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub app: &'a str,
    pub env: &'a str,
    pub release: i64,
    pub instance: &'a str,
}

/// The image part of an agent spec from a release's image reference:
/// `oci-archive:<path>`, `docker-archive:<path>` or `archive:<path>` (a tar on the host),
/// `oci:<dir>[:<tag>]` (an OCI layout directory on the host), or a registry reference (pinned to
/// the release digest).
pub fn image_source(image_ref: &str, digest: &str) -> Value {
    if let Some(d) = image_ref.strip_prefix("upload:") {
        return json!({"kind": "upload", "digest": d});
    }
    for p in ["oci-archive:", "docker-archive:", "archive:"] {
        if let Some(path) = image_ref.strip_prefix(p) {
            return json!({"kind": "archive", "path": path});
        }
    }
    if let Some(rest) = image_ref.strip_prefix("oci:") {
        return match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') && !tag.is_empty() => {
                json!({"kind": "oci_layout", "path": dir, "tag": tag})
            }
            _ => json!({"kind": "oci_layout", "path": rest}),
        };
    }
    let reference = if image_ref.contains('@') {
        image_ref.to_owned()
    } else {
        format!("{image_ref}@{digest}")
    };
    json!({"kind": "registry", "reference": reference})
}

/// Quotes argv for `sh -c` (the agent runs a command override through a shell).
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The agent spec of one instance. `None` if `role` names a process type the manifest lacks or
/// the release has no release command.
pub fn agent_spec(
    manifest: &Manifest,
    role: Role<'_>,
    image_ref: &str,
    image_digest: &str,
    id: &Identity<'_>,
    secrets: &BTreeMap<String, String>,
) -> Option<Value> {
    let mut env: BTreeMap<String, String> = manifest.env.clone();
    if manifest.secrets.as_env {
        env.extend(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let (process_name, command, resources, ports, health, volumes, grace) = match role {
        Role::Process(name) => {
            let p = manifest.process(name)?;
            (
                name,
                p.command.as_deref().map(shell_join),
                p.resources,
                p.ports.clone(),
                p.health.as_ref(),
                p.volumes
                    .iter()
                    .map(|v| json!({"name": v.name, "mount_path": v.path}))
                    .collect::<Vec<_>>(),
                p.stop_grace_s,
            )
        }
        Role::ReleaseCommand => {
            let r = manifest.release.as_ref()?;
            (
                "release",
                Some(shell_join(&r.command)),
                r.resources,
                vec![],
                None,
                vec![],
                10,
            )
        }
    };
    for (k, v) in [
        ("SCALEBOX_APP", id.app.to_owned()),
        ("SCALEBOX_ENV", id.env.to_owned()),
        ("SCALEBOX_PROCESS", process_name.to_owned()),
        ("SCALEBOX_RELEASE", id.release.to_string()),
        ("SCALEBOX_INSTANCE", id.instance.to_owned()),
    ] {
        env.insert(k.into(), v);
    }
    let health = health.map(|h| {
        json!({
            "kind": match h.kind { HealthKind::Http => "http", HealthKind::Tcp => "tcp" },
            "port": h.port,
            "path": h.path,
            "interval_s": h.interval_s,
            "timeout_s": h.timeout_s,
            "grace_s": h.grace_s,
            "healthy_threshold": h.healthy_threshold,
            "unhealthy_threshold": h.unhealthy_threshold,
        })
    });
    Some(json!({
        "generation": 1,
        "image": image_source(image_ref, image_digest),
        "image_digest": image_digest,
        "command": command,
        "env": env,
        "resources": {
            "cpu": resources.cpu.ceil().max(1.0) as u32,
            "memory_mb": resources.memory_mb,
        },
        "ports": ports.iter().map(|p| json!({"port": p, "protocol": "tcp"})).collect::<Vec<_>>(),
        "health": health,
        "secrets": secrets,
        "secrets_path": manifest.secrets.path,
        "volumes": volumes,
        "stop_grace_s": grace,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
schema_version = 1
[env]
LOG = "info"
[secrets]
as_env = true
[release]
command = ["./migrate", "up"]
[processes.web]
command = ["sh", "-c", "echo 'hi there' && httpd -f"]
ports = [8080]
health = { kind = "http", path = "/healthz" }
[processes.worker]
"#;

    fn manifest() -> Manifest {
        scalebox_manifest::parse(MANIFEST).expect("valid")
    }

    #[test]
    fn image_sources() {
        let d = "sha256:ab";
        assert_eq!(
            image_source("oci-archive:/x/app.tar", d),
            json!({"kind": "archive", "path": "/x/app.tar"})
        );
        assert_eq!(
            image_source("oci:/x/layout:v1", d),
            json!({"kind": "oci_layout", "path": "/x/layout", "tag": "v1"})
        );
        assert_eq!(
            image_source("oci:/x/layout", d),
            json!({"kind": "oci_layout", "path": "/x/layout"})
        );
        assert_eq!(
            image_source("127.0.0.1:5000/app:1", d),
            json!({"kind": "registry", "reference": "127.0.0.1:5000/app:1@sha256:ab"})
        );
    }

    #[test]
    fn shell_join_quotes_what_needs_it() {
        let argv: Vec<String> = ["sh", "-c", "echo 'a b'", ""].map(String::from).into();
        assert_eq!(shell_join(&argv), r#"sh -c 'echo '\''a b'\''' ''"#);
    }

    #[test]
    fn web_spec_has_identity_secrets_and_health() {
        let secrets = BTreeMap::from([("DB".to_owned(), "pw".to_owned())]);
        let id = Identity {
            app: "api",
            env: "prod",
            release: 3,
            instance: "web-1",
        };
        let s = agent_spec(
            &manifest(),
            Role::Process("web"),
            "oci-archive:/a.tar",
            "sha256:00",
            &id,
            &secrets,
        )
        .unwrap();
        assert_eq!(s["env"]["SCALEBOX_RELEASE"], "3");
        assert_eq!(s["env"]["DB"], "pw", "as_env exports secrets");
        assert_eq!(s["env"]["LOG"], "info");
        assert_eq!(s["secrets"]["DB"], "pw");
        assert_eq!(s["health"]["path"], "/healthz");
        assert_eq!(s["health"]["port"], 8080);
        assert_eq!(s["ports"][0]["port"], 8080);
        assert_eq!(s["command"], r#"sh -c 'echo '\''hi there'\'' && httpd -f'"#);
        let w = agent_spec(
            &manifest(),
            Role::Process("worker"),
            "oci-archive:/a.tar",
            "sha256:00",
            &id,
            &secrets,
        )
        .unwrap();
        assert_eq!(w["command"], Value::Null, "image default command");
        let r = agent_spec(
            &manifest(),
            Role::ReleaseCommand,
            "oci-archive:/a.tar",
            "sha256:00",
            &id,
            &secrets,
        )
        .unwrap();
        assert_eq!(r["command"], "./migrate up");
        assert!(agent_spec(&manifest(), Role::Process("nope"), "x", "y", &id, &secrets).is_none());
    }
}
