//! Resource commands over the `/v1` API: orgs, projects, apps, environments, tokens, routes,
//! volumes, hosts and the audit log. Each says what changed; `--json` prints the API's objects.

use serde_json::{Value, json};

use crate::account::Ctx;
use crate::args::*;
use crate::client::at;
use crate::error::Result;
use crate::output::Out;

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

pub fn orgs(ctx: &Ctx, a: OrgsArgs, out: Out) -> Result<()> {
    let c = ctx.client()?;
    match a.command {
        OrgsCommand::List => {
            let v = c.get("/v1/orgs")?;
            out.list(
                &v,
                &items(&v),
                &[
                    ("NAME", "name"),
                    ("OPERATOR", "operator"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        OrgsCommand::Create { name } => {
            let v = c.mutate("POST", "/v1/orgs", Some(&json!({"name": name})))?;
            out.done(
                &format!(
                    "Created org {name}. Its admin token (shown once, store it now):\n\n    {}\n",
                    v["admin_token"].as_str().unwrap_or("?")
                ),
                &v,
            );
        }
        OrgsCommand::Get { name } => {
            let name = match name {
                Some(n) => n,
                None => ctx.org()?,
            };
            let v = c.get(&at("/v1/orgs", "org name", &name)?)?;
            out.object(
                &v,
                &[
                    ("name", "name"),
                    ("id", "id"),
                    ("operator", "operator"),
                    ("created", "created_at"),
                ],
            );
        }
        OrgsCommand::Delete { name } => {
            c.mutate("DELETE", &at("/v1/orgs", "org name", &name)?, None)?;
            out.done(&format!("Deleted org {name}."), &json!({"deleted": name}));
        }
    }
    Ok(())
}

pub fn projects(ctx: &Ctx, a: NamedArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/projects", ctx.org_path()?));
    match a.command {
        NamedCommand::List => {
            let v = c.get(&base)?;
            out.list(
                &v,
                &items(&v),
                &[("NAME", "name"), ("CREATED", "created_at")],
            );
        }
        NamedCommand::Create { name } => {
            let v = c.mutate("POST", &base, Some(&json!({"name": name})))?;
            out.done(&format!("Created project {name}."), &v);
        }
        NamedCommand::Get { name } => {
            let v = c.get(&at(&base, "project name", &name)?)?;
            out.object(
                &v,
                &[("name", "name"), ("id", "id"), ("created", "created_at")],
            );
        }
        NamedCommand::Delete { name } => {
            c.mutate("DELETE", &at(&base, "project name", &name)?, None)?;
            out.done(
                &format!("Deleted project {name}."),
                &json!({"deleted": name}),
            );
        }
    }
    Ok(())
}

pub fn apps(ctx: &Ctx, a: AppsArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/apps", ctx.org_path()?));
    let fields = [
        ("name", "name"),
        ("id", "id"),
        ("project", "project"),
        ("description", "description"),
        ("releases", "release_count"),
        ("version", "version"),
        ("created", "created_at"),
    ];
    match a.command {
        AppsCommand::List => {
            let v = c.get(&base)?;
            out.list(
                &v,
                &items(&v),
                &[
                    ("NAME", "name"),
                    ("PROJECT", "project"),
                    ("RELEASES", "release_count"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        AppsCommand::Create {
            name,
            project,
            description,
        } => {
            let v = c.mutate(
                "POST",
                &base,
                Some(&json!({"name": name, "project": project, "description": description})),
            )?;
            out.done(&format!("Created app {name}."), &v);
        }
        AppsCommand::Get { name } => {
            let name = match name {
                Some(n) => n,
                None => ctx.app()?,
            };
            out.object(&c.get(&at(&base, "app name", &name)?)?, &fields);
        }
        AppsCommand::Delete { name } => {
            c.mutate("DELETE", &at(&base, "app name", &name)?, None)?;
            out.done(&format!("Deleted app {name}."), &json!({"deleted": name}));
        }
    }
    Ok(())
}

pub fn envs(ctx: &Ctx, a: EnvsArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/envs", ctx.app_path()?));
    match a.command {
        EnvsCommand::List => {
            let v = c.get(&base)?;
            out.list(
                &v,
                &items(&v),
                &[
                    ("NAME", "name"),
                    ("SECRETS", "secrets_version"),
                    ("IPV4", "ipv4"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        EnvsCommand::Create { name } => {
            let v = c.mutate("POST", &base, Some(&json!({"name": name})))?;
            out.done(
                &format!("Created environment {name} of app {}.", ctx.app()?),
                &v,
            );
        }
        EnvsCommand::Get { name } => {
            let v = c.get(&at(&base, "environment name", &name)?)?;
            out.object(
                &v,
                &[
                    ("name", "name"),
                    ("app", "app"),
                    ("id", "id"),
                    ("secrets version", "secrets_version"),
                    ("ipv4", "ipv4"),
                    ("created", "created_at"),
                ],
            );
        }
        EnvsCommand::Delete { name } => {
            c.mutate("DELETE", &at(&base, "environment name", &name)?, None)?;
            out.done(
                &format!("Deleted environment {name}."),
                &json!({"deleted": name}),
            );
        }
        EnvsCommand::Ipv4(a) => {
            let (env, path) = (ctx.env()?, format!("{}/ipv4", ctx.env_path()?));
            match a.command {
                Ipv4Command::Enable => {
                    let v = c.mutate("POST", &path, None)?;
                    out.done(
                        &format!(
                            "Environment {env} has the dedicated IPv4 {}: the edge serves its --ipv4 routes on it.",
                            v["address"].as_str().unwrap_or("?")
                        ),
                        &v,
                    );
                }
                Ipv4Command::Disable => {
                    c.mutate("DELETE", &path, None)?;
                    out.done(
                        &format!(
                            "Environment {env} has no dedicated IPv4: its --ipv4 routes are served on the edge's shared IPv4 address."
                        ),
                        &json!({"env": env, "address": null}),
                    );
                }
            }
        }
    }
    Ok(())
}

pub fn tokens(ctx: &Ctx, a: TokensArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/tokens", ctx.org_path()?));
    match a.command {
        TokensCommand::List => {
            let v = c.get(&base)?;
            out.list(
                &v,
                &items(&v),
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("ROLE", "role"),
                    ("PREFIX", "prefix"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        TokensCommand::Create { name, role } => {
            let v = c.mutate("POST", &base, Some(&json!({"name": name, "role": role})))?;
            out.done(
                &format!(
                    "Created {role} token {name} (shown once, store it now):\n\n    {}\n",
                    v["token"].as_str().unwrap_or("?")
                ),
                &v,
            );
        }
        TokensCommand::Revoke { id } => {
            c.mutate("DELETE", &at(&base, "token id", &id)?, None)?;
            out.done(&format!("Revoked token {id}."), &json!({"revoked": id}));
        }
    }
    Ok(())
}

pub fn routes(ctx: &Ctx, a: RoutesArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/routes", ctx.org_path()?));
    match a.command {
        RoutesCommand::List => {
            let v = c.get(&base)?;
            out.list(
                &v,
                &items(&v),
                &[
                    ("ID", "id"),
                    ("KIND", "kind"),
                    ("HOSTNAME", "hostname"),
                    ("LISTEN", "listener_port"),
                    ("APP", "app"),
                    ("ENV", "env"),
                    ("PROCESS", "process_type"),
                    ("PORT", "backend_port"),
                    ("PROXY-V2", "proxy_protocol_v2"),
                ],
            );
        }
        RoutesCommand::Create {
            hostname,
            tcp,
            process,
            port,
            listen,
            proxy_protocol,
            ipv4,
        } => {
            if hostname.is_none() && !tcp {
                return Err(crate::error::CliError::usage(
                    "give --hostname HOST for a TLS route or --tcp for a raw TCP route",
                ));
            }
            let body = json!({
                "app": ctx.app()?, "env": ctx.env()?, "kind": if tcp { "tcp" } else { "tls" },
                "hostname": hostname, "listener_port": listen, "process_type": process, "backend_port": port,
                "proxy_protocol_v2": proxy_protocol.is_some(), "ipv4_required": ipv4,
            });
            let v = c.mutate("POST", &base, Some(&body))?;
            let what = match v["hostname"].as_str() {
                Some(h) => format!("{h}:{}", v["listener_port"]),
                None => format!("port {}", v["listener_port"]),
            };
            out.done(
                &format!(
                    "Created route {}: {what} → {}/{} port {}.",
                    v["id"].as_str().unwrap_or("?"),
                    v["env"].as_str().unwrap_or("?"),
                    process,
                    port
                ),
                &v,
            );
        }
        RoutesCommand::Delete { id } => {
            c.mutate("DELETE", &at(&base, "route id", &id)?, None)?;
            out.done(&format!("Deleted route {id}."), &json!({"deleted": id}));
        }
    }
    Ok(())
}

pub fn volumes(ctx: &Ctx, a: VolumesArgs, out: Out) -> Result<()> {
    let (c, base) = (ctx.client()?, format!("{}/volumes", ctx.org_path()?));
    match a.command {
        VolumesCommand::List => {
            let v = c.get(&base)?;
            out.list(
                &v,
                &items(&v),
                &[
                    ("NAME", "name"),
                    ("SIZE-GB", "size_gb"),
                    ("APP", "app"),
                    ("ENV", "env"),
                    ("HOST", "host"),
                ],
            );
        }
        VolumesCommand::Create { name, size_gb } => {
            let body = json!({"name": name, "size_gb": size_gb, "app": ctx.context.app, "env": ctx.context.env});
            let v = c.mutate("POST", &base, Some(&body))?;
            out.done(&format!("Created volume {name} ({size_gb} GB)."), &v);
        }
        VolumesCommand::Get { name } => {
            let v = c.get(&at(&base, "volume name", &name)?)?;
            out.object(
                &v,
                &[
                    ("name", "name"),
                    ("id", "id"),
                    ("size (GB)", "size_gb"),
                    ("app", "app"),
                    ("env", "env"),
                    ("host", "host"),
                ],
            );
        }
        VolumesCommand::Delete { name } => {
            c.mutate("DELETE", &at(&base, "volume name", &name)?, None)?;
            out.done(
                &format!("Deleted volume {name}."),
                &json!({"deleted": name}),
            );
        }
        data => crate::volume_data::run(c, &base, data, out)?,
    }
    Ok(())
}

/// A host's overlay in one word or phrase: `-` before its agent reported one, `ok (N peers)`, or
/// `degraded: cannot reach a, b` (a partial partition: an edge there does not route to those
/// hosts' instances).
fn overlay_state(o: &Value) -> String {
    if o.is_null() {
        return "-".into();
    }
    let unreachable: Vec<&str> = o["unreachable"]
        .as_array()
        .map(|u| u.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if unreachable.is_empty() {
        let n = o["peers"].as_array().map_or(0, Vec::len);
        format!("ok ({n} peers)")
    } else {
        format!("degraded: cannot reach {}", unreachable.join(", "))
    }
}

pub fn hosts(ctx: &Ctx, a: HostsArgs, out: Out) -> Result<()> {
    let c = ctx.client()?;
    match a.command {
        HostsCommand::List => {
            let v = c.get("/v1/hosts")?;
            let rows: Vec<Value> = items(&v)
                .into_iter()
                .map(|mut h| {
                    h["labels"] = json!(labels(&h["labels"]));
                    h["state"] = json!(if h["draining"] == true {
                        "draining"
                    } else {
                        "active"
                    });
                    h["overlay_state"] = json!(overlay_state(&h["overlay"]));
                    h
                })
                .collect();
            out.list(
                &v,
                &rows,
                &[
                    ("NAME", "name"),
                    ("STATE", "state"),
                    ("ADDRESS", "address"),
                    ("IPV6-PREFIX", "ipv6_prefix"),
                    ("OVERLAY", "overlay_state"),
                    ("CPUS", "cpus"),
                    ("MEMORY-MB", "memory_mb"),
                    ("LABELS", "labels"),
                    ("CREATED", "created_at"),
                ],
            );
        }
        HostsCommand::Drain { name } => {
            let v = c.mutate(
                "POST",
                &format!("{}/drain", at("/v1/hosts", "host name", &name)?),
                None,
            )?;
            out.done(
                &format!(
                    "Draining host {name}: its instances move to other hosts and it takes no new ones (undo with `sb hosts undrain {name}`)."
                ),
                &v,
            );
        }
        HostsCommand::Undrain { name } => {
            let v = c.mutate(
                "POST",
                &format!("{}/undrain", at("/v1/hosts", "host name", &name)?),
                None,
            )?;
            out.done(&format!("Host {name} takes instances again."), &v);
        }
    }
    Ok(())
}

/// Host labels as `k=v,k=v` (`-` when there are none).
fn labels(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    if pairs.is_empty() {
        "-".into()
    } else {
        pairs.join(",")
    }
}

pub fn events(ctx: &Ctx, a: EventsArgs, out: Out) -> Result<()> {
    let mut q = format!("limit={}", a.limit);
    if let Some(x) = a.after {
        q.push_str(&format!("&after={x}"));
    }
    if let Some(t) = &a.event_type {
        q.push_str(&format!("&type={}", encode(t)));
    }
    if let Some(s) = &a.stream {
        q.push_str(&format!("&stream={}", encode(s)));
    }
    let v = ctx
        .client()?
        .get(&format!("{}/events?{q}", ctx.org_path()?))?;
    let rows = v["events"].as_array().cloned().unwrap_or_default();
    out.list(
        &v,
        &rows,
        &[
            ("SEQ", "seq"),
            ("TIME", "occurred_at"),
            ("ACTOR", "actor"),
            ("TYPE", "type"),
            ("STREAM", "stream"),
        ],
    );
    if !out.json
        && let Some(n) = v["next_after"].as_i64()
    {
        // The same query, from where this page ends (the user's words quoted for the shell).
        let q = crate::vm::shell_quote;
        let mut more = String::from("sb events");
        if let Some(t) = &a.event_type {
            more.push_str(&format!(" --type {}", q(t)));
        }
        if let Some(s) = &a.stream {
            more.push_str(&format!(" --stream {}", q(s)));
        }
        if a.limit != EventsArgs::DEFAULT_LIMIT {
            more.push_str(&format!(" --limit {}", a.limit));
        }
        println!("(more: {more} --after {n})");
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
