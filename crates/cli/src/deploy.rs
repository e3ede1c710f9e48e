//! Running an environment: deploy and rollback (followed to their outcome, exit 7 when they do
//! not succeed), scale, stop/start, status, why, and the deployments list.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::account::Ctx;
use crate::args::{DeployArgs, RollbackArgs, WaitArgs};
use crate::error::{CliError, Result, exit};
use crate::output::{self, Out};
use crate::watch::{self, Phase, Watch};

/// Instance states after which an instance no longer runs.
const TERMINAL: &[&str] = &["exited", "failed", "lost"];

pub fn deploy(ctx: &Ctx, a: DeployArgs, out: Out) -> Result<()> {
    let status = ctx.client()?.get(&status_path(ctx)?)?;
    let release = match &a.image {
        Some(image) => {
            let v = crate::release::create_release(ctx, image, a.digest.clone(), &a.manifest, out)?;
            if !out.json {
                eprintln!(
                    "Created release v{} of {} ({}).",
                    v["number"],
                    ctx.app()?,
                    v["image_digest"].as_str().unwrap_or_default()
                );
            }
            v["number"].as_i64()
        }
        None => a.release,
    };
    start_and_follow(ctx, &status, release, &a.wait, None, out)
}

pub fn rollback(ctx: &Ctx, a: RollbackArgs, out: Out) -> Result<()> {
    let c = ctx.client()?;
    let status = c.get(&status_path(ctx)?)?;
    let target = format!("{}/{}", ctx.app()?, ctx.env()?);
    let serving = status["serving_release"].as_i64();
    let release = match (a.release, serving) {
        (Some(n), _) => n,
        (None, None) => {
            return Err(CliError::new(
                exit::CONFLICT,
                format!(
                    "nothing has served in {target} yet, so there is nothing to roll back to; deploy a release with `sb deploy`"
                ),
            ));
        }
        (None, Some(s)) => {
            let deps = c.get(&format!("{}/deployments", ctx.env_path()?))?;
            let items = deps["items"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            rollback_target(items, s).ok_or_else(|| {
                CliError::new(
                    exit::CONFLICT,
                    format!(
                        "no release older than the serving release {s} has served in {target}; name one with `sb rollback N` (see `sb releases list`)"
                    ),
                )
            })?
        }
    };
    let intro = match serving {
        Some(s) => format!("Rolling back {target} from release {s} to release {release}"),
        None => format!("Rolling back {target} to release {release}"),
    };
    start_and_follow(ctx, &status, Some(release), &a.wait, Some(intro), out)
}

/// The release `sb rollback` goes back to: that of the newest succeeded deployment whose release
/// is older than the one serving (`deployments` newest first).
fn rollback_target(deployments: &[Value], serving: i64) -> Option<i64> {
    deployments
        .iter()
        .filter(|d| d["state"] == "succeeded")
        .filter_map(|d| d["release"].as_i64())
        .find(|r| *r < serving)
}

/// Starts a deployment of `release` (the newest when `None`) and, unless `--no-wait`, follows it
/// to its outcome. `status` is the environment's status from before.
fn start_and_follow(
    ctx: &Ctx,
    status: &Value,
    release: Option<i64>,
    wait: &WaitArgs,
    intro: Option<String>,
    out: Out,
) -> Result<()> {
    let c = ctx.client()?;
    let target = format!("{}/{}", ctx.app()?, ctx.env()?);
    let mut body = json!({});
    if let Some(n) = release {
        body["release"] = json!(n);
    }
    if let Some(u) = wait.max_unavailable {
        body["max_unavailable"] = json!(u);
    }
    if let Some(s) = wait.max_surge {
        body["max_surge"] = json!(s);
    }
    let started = c.mutate("POST", &format!("{}/deploy", ctx.env_path()?), Some(&body))?;
    let id = started["deployment"].as_str().unwrap_or("?").to_owned();
    let number = started["release"].as_i64().unwrap_or_default();
    if wait.no_wait {
        out.done(
            &format!(
                "Deployment {id} of release {number} to {target} started; follow it with `sb ps`."
            ),
            &started,
        );
        return Ok(());
    }
    if !out.json {
        let intro = intro.unwrap_or_else(|| format!("Deploying release {number} to {target}"));
        eprintln!("{intro} (deployment {id})");
    }
    let before = status["deployment"]["id"].as_str().map(str::to_owned);
    let mut w = Watch::new(id.clone(), number, before);
    let timeout = Duration::from_secs(wait.timeout);
    let o = watch::follow(c, &status_path(ctx)?, &mut w, timeout, out.json)?;
    if out.json {
        output::json(&o.status);
    }
    if o.timed_out {
        return Err(CliError::new(
            exit::DEPLOY,
            format!(
                "gave up waiting after {}s (last seen: {}); deployment {id} of release {number} goes on server-side: follow it with `sb ps` and `sb why`",
                wait.timeout,
                o.phase.describe(number)
            ),
        ));
    }
    match o.phase {
        Phase::Succeeded => {
            if !out.json {
                let mut msg = o.phase.describe(number);
                if o.status["stopped"] == true {
                    msg.push_str(&format!(
                        " (but {target} is stopped: `sb start` runs its instances)"
                    ));
                }
                println!("{msg}");
            }
            Ok(())
        }
        Phase::Superseded(_) => Err(CliError::new(
            exit::DEPLOY,
            format!(
                "{}; follow the newer one with `sb ps`",
                o.phase.describe(number)
            ),
        )),
        _ => Err(CliError::new(exit::DEPLOY, o.phase.describe(number))),
    }
}

fn status_path(ctx: &Ctx) -> Result<String> {
    Ok(format!("{}/status", ctx.env_path()?))
}

/// `PROCESS=COUNT` arguments.
fn parse_scales(pairs: &[String]) -> Result<BTreeMap<String, u32>> {
    let mut scales = BTreeMap::new();
    for p in pairs {
        let (name, count) = p.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "expected PROCESS=COUNT (e.g. web=3), got {:?}",
                p.chars().take(40).collect::<String>()
            ))
        })?;
        if name.is_empty() {
            return Err(CliError::usage(format!(
                "missing the process type in {p:?}; write PROCESS=COUNT, e.g. web=3"
            )));
        }
        let n: u32 = count.parse().map_err(|_| {
            CliError::usage(format!(
                "the count of {name} must be a whole number (0 or more), got {count:?}"
            ))
        })?;
        if scales.insert(name.to_owned(), n).is_some() {
            return Err(CliError::usage(format!(
                "{name} is given twice; give each process type once"
            )));
        }
    }
    Ok(scales)
}

pub fn scale(ctx: &Ctx, pairs: &[String], out: Out) -> Result<()> {
    let scales = parse_scales(pairs)?;
    let v = ctx.client()?.mutate(
        "POST",
        &format!("{}/scale", ctx.env_path()?),
        Some(&json!({ "scales": scales })),
    )?;
    let list: Vec<String> = scales.iter().map(|(n, c)| format!("{n}={c}")).collect();
    out.done(
        &format!(
            "Scaling {}/{}: {}; follow it with `sb ps`.",
            ctx.app()?,
            ctx.env()?,
            list.join(", ")
        ),
        &v,
    );
    Ok(())
}

/// `sb stop` (`stop` true) and `sb start`.
pub fn run_state(ctx: &Ctx, stop: bool, out: Out) -> Result<()> {
    let verb = if stop { "stop" } else { "start" };
    let v = ctx
        .client()?
        .mutate("POST", &format!("{}/{verb}", ctx.env_path()?), None)?;
    let target = format!("{}/{}", ctx.app()?, ctx.env()?);
    let msg = if stop {
        format!("Stopping every instance of {target}; `sb start` runs them again.")
    } else {
        format!("Starting {target}; follow it with `sb ps`.")
    };
    out.done(&msg, &v);
    Ok(())
}

pub fn status(ctx: &Ctx, out: Out) -> Result<()> {
    let s = ctx.client()?.get(&status_path(ctx)?)?;
    if out.json {
        output::json(&s);
        return Ok(());
    }
    let lines = summary(&s);
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &lines {
        println!("{k:<w$}  {v}");
    }
    let processes = s["processes"].as_array().cloned().unwrap_or_default();
    println!();
    if processes.is_empty() {
        println!("(no process types: nothing deployed yet)");
    } else {
        output::table(
            &processes,
            &[
                ("PROCESS", "name"),
                ("DESIRED", "desired"),
                ("READY", "ready"),
                ("RUNNING", "running"),
            ],
        );
    }
    let instances = instance_rows(&s);
    println!();
    if instances.is_empty() {
        println!("(no instances)");
    } else {
        output::table(
            &instances,
            &[
                ("INSTANCE", "id"),
                ("PROCESS", "process"),
                ("RELEASE", "release"),
                ("STATE", "state"),
                ("READY", "ready"),
                ("HOST", "host"),
                ("ADDRESS", "address"),
            ],
        );
    }
    Ok(())
}

/// The `key  value` lines heading `sb ps`.
fn summary(s: &Value) -> Vec<(&'static str, String)> {
    let rel = |k: &str| s[k].as_i64().map_or("none".to_owned(), |n| n.to_string());
    let run = if s["stopped"] == true {
        "stopped (`sb start` runs it again)"
    } else {
        "running"
    };
    let converged = if s["converged"] == true {
        "converged"
    } else {
        "not converged (see `sb why`)"
    };
    let mut lines = vec![
        (
            "environment",
            format!(
                "{}/{}",
                s["app"].as_str().unwrap_or("?"),
                s["env"].as_str().unwrap_or("?")
            ),
        ),
        (
            "release",
            format!(
                "{} promoted, {} serving",
                rel("release"),
                rel("serving_release")
            ),
        ),
        ("state", format!("{run}, {converged}")),
    ];
    let d = &s["deployment"];
    if d.is_object() {
        let mut line = format!(
            "{} of release {}: {}",
            d["id"].as_str().unwrap_or("?"),
            d["release"],
            d["state"].as_str().unwrap_or("?")
        );
        if d["cause"] == "secrets" {
            line.push_str(" (secrets update)");
        }
        lines.push(("deployment", line));
        let reason = d["reason"].as_str().unwrap_or_default();
        if !reason.is_empty() && d["state"] != "succeeded" {
            lines.push(("reason", short(reason, 120)));
        }
    } else {
        lines.push(("deployment", "none yet (`sb deploy`)".into()));
    }
    lines
}

/// Instances that run or are still stopping, as table rows.
fn instance_rows(s: &Value) -> Vec<Value> {
    s["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| {
            i["desired"] == "run" || !TERMINAL.contains(&i["state"].as_str().unwrap_or_default())
        })
        .map(|i| {
            let mut state = i["state"].as_str().unwrap_or("?").to_owned();
            if i["desired"] == "stop" {
                state.push_str(" (stopping)");
            }
            json!({
                "id": i["id"],
                "process": i["process_type"],
                "release": i["release"],
                "state": state,
                "ready": if i["ready"] == true { "yes" } else { "no" },
                "host": i["host"],
                "address": i["address"],
            })
        })
        .collect()
}

/// At most `max` characters of the first line of `s`, marked when cut.
fn short(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > max || line.len() < s.len() {
        let cut: String = line.chars().take(max).collect();
        format!("{} …", cut.trim_end())
    } else {
        line.to_owned()
    }
}

pub fn why(ctx: &Ctx, out: Out) -> Result<()> {
    let s = ctx.client()?.get(&status_path(ctx)?)?;
    let reasons: Vec<&str> = s["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if out.json {
        output::json(&json!({"converged": s["converged"], "reasons": reasons}));
    } else if reasons.is_empty() {
        println!("converged: nothing to explain");
    } else {
        for r in reasons {
            println!("- {}", r.replace('\n', "\n  "));
        }
    }
    Ok(())
}

pub fn deployments(ctx: &Ctx, out: Out) -> Result<()> {
    let v = ctx
        .client()?
        .get(&format!("{}/deployments", ctx.env_path()?))?;
    let rows: Vec<Value> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let mut d = d.clone();
            d["reason"] = json!(short(d["reason"].as_str().unwrap_or_default(), 60));
            d
        })
        .collect();
    out.list(
        &v,
        &rows,
        &[
            ("ID", "id"),
            ("RELEASE", "release"),
            ("STATE", "state"),
            ("CAUSE", "cause"),
            ("CREATED", "created_at"),
            ("REASON", "reason"),
        ],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scales_parse_or_say_what_is_wrong() {
        let m = parse_scales(&args(&["web=3", "worker=0"])).unwrap();
        assert_eq!(m.get("web"), Some(&3));
        assert_eq!(m.get("worker"), Some(&0));
        for (bad, says) in [
            ("web", "PROCESS=COUNT"),
            ("=3", "missing the process type"),
            ("web=x", "whole number"),
            ("web=-1", "whole number"),
        ] {
            let e = parse_scales(&args(&[bad])).unwrap_err();
            assert_eq!(e.exit, exit::USAGE);
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
        let e = parse_scales(&args(&["web=1", "web=2"])).unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
    }

    #[test]
    fn rollback_goes_to_the_newest_older_release_that_served() {
        let deps = [
            json!({"release": 5, "state": "failed"}),
            json!({"release": 4, "state": "succeeded"}),
            json!({"release": 3, "state": "failed"}),
            json!({"release": 2, "state": "succeeded"}),
            json!({"release": 1, "state": "succeeded"}),
        ];
        assert_eq!(rollback_target(&deps, 4), Some(2));
        assert_eq!(rollback_target(&deps, 2), Some(1));
        assert_eq!(rollback_target(&deps, 1), None);
    }

    #[test]
    fn short_reasons() {
        assert_eq!(short("", 10), "");
        assert_eq!(short("exit code 3", 20), "exit code 3");
        assert_eq!(
            short("exit code 3; last output:\n  boom", 40),
            "exit code 3; last output: …"
        );
        assert_eq!(short("release command failed", 7), "release …");
    }

    #[test]
    fn status_summary_and_instances() {
        let s = json!({
            "app": "shop", "env": "prod", "release": 5, "serving_release": 4, "stopped": false,
            "converged": false,
            "deployment": {"id": "d5", "release": 5, "state": "failed", "cause": "deploy",
                           "reason": "release command failed: exit code 3; last output:\n  boom"},
            "instances": [
                {"id": "web-1", "process_type": "web", "release": 4, "state": "running",
                 "ready": true, "desired": "run", "host": "h1", "address": "10.0.0.2"},
                {"id": "web-0", "process_type": "web", "release": 3, "state": "running",
                 "ready": false, "desired": "stop", "host": "h1", "address": null},
                {"id": "web-old", "process_type": "web", "release": 3, "state": "exited",
                 "ready": false, "desired": "stop", "host": "h1", "address": null}
            ]
        });
        let lines = summary(&s);
        let get = |k: &str| lines.iter().find(|(x, _)| *x == k).unwrap().1.clone();
        assert_eq!(get("release"), "5 promoted, 4 serving");
        assert_eq!(get("state"), "running, not converged (see `sb why`)");
        assert_eq!(get("deployment"), "d5 of release 5: failed");
        assert_eq!(
            get("reason"),
            "release command failed: exit code 3; last output: …"
        );
        let rows = instance_rows(&s);
        assert_eq!(rows.len(), 2, "exited instances are left out: {rows:?}");
        assert_eq!(rows[1]["state"], "running (stopping)");
        assert_eq!(rows[0]["ready"], "yes");
    }
}
