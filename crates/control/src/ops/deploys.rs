//! Deploying an environment: promote a release (deploy and rollback), scale process types,
//! stop/start, and the status view (desired vs actual, and why they differ). Commands append
//! events; the reconcilers (`orchestrate`) do the rest.

use std::collections::BTreeMap;

use scalebox_store::Event;
use scalebox_store::events::{EnvDeployed, EnvRunStateSet, EnvScaled};
use scalebox_types::api;
use serde_json::Value;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{EnvPath, append, env_id, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::orchestrate::reconcile::TERMINAL;
use crate::{ApiError, Control};

/// Largest instance count of one process type.
pub const MAX_SCALE: u32 = 100;

fn deployment(r: &Row) -> api::Deployment {
    api::Deployment {
        id: r.get::<_, Uuid>(0).to_string(),
        release: r.get(1),
        secrets_version: r.get(2),
        state: r.get(3),
        reason: r.get(4),
        cause: r.get(5),
        created_at: ts(r.get(6)),
        updated_at: ts(r.get(7)),
    }
}

const DEP_COLS: &str =
    "d.id, r.number, d.secrets_version, d.state, d.reason, d.cause, d.created_at, d.updated_at";

/// Promotes a release to the environment (the newest release when none is named).
pub async fn deploy(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    at: EnvPath<'_>,
    body: api::Deploy,
) -> Result<Reply, ApiError> {
    let EnvPath { org, app, env } = at;
    let org = p.org(org)?;
    p.can_write()?;
    let deadline_s = body.deadline_s.unwrap_or(600);
    if !(10..=86_400).contains(&deadline_s) {
        return Err(ApiError::bad_request(
            "deadline_s must be between 10 and 86400 seconds",
        ));
    }
    let max_surge = body.max_surge.unwrap_or(1);
    let max_unavailable = body.max_unavailable.unwrap_or(0);
    if max_surge > MAX_SCALE || max_unavailable > MAX_SCALE {
        return Err(ApiError::bad_request(format!(
            "max_surge and max_unavailable must be between 0 and {MAX_SCALE}"
        )));
    }
    if max_surge == 0 && max_unavailable == 0 {
        return Err(ApiError::bad_request(
            "max_surge and max_unavailable cannot both be 0: the rollout could never replace an instance",
        ));
    }
    let (p, app, env) = (p.clone(), app.to_owned(), env.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (app_id, env_id, version) = env_id(tx, org, &app, &env).await?;
            let release = match body.release {
                Some(n) => tx
                    .query_opt(
                        "SELECT id, number FROM v_releases WHERE app_id = $1 AND number = $2",
                        &[&app_id, &n],
                    )
                    .await?
                    .ok_or_else(|| {
                        ApiError::not_found(format!("release {n} of app {app:?} (see `sb releases list`)"))
                    })?,
                None => tx
                    .query_opt(
                        "SELECT id, number FROM v_releases WHERE app_id = $1 ORDER BY number DESC LIMIT 1",
                        &[&app_id],
                    )
                    .await?
                    .ok_or_else(|| {
                        ApiError::conflict(format!(
                            "app {app:?} has no release yet; create one first (`sb releases create`)"
                        ))
                    })?,
            };
            let deployment_id = Uuid::new_v4();
            append(
                tx,
                &p,
                format!("env:{env_id}"),
                version,
                None,
                &[Event::EnvDeployed(EnvDeployed {
                    env_id,
                    release_id: release.get(0),
                    deployment_id,
                    deadline_s,
                    max_surge,
                    max_unavailable,
                })],
            )
            .await?;
            Ok(Reply::json(
                axum::http::StatusCode::ACCEPTED,
                &serde_json::json!({
                    "deployment": deployment_id.to_string(),
                    "release": release.get::<_, i64>(1),
                    "state": "pending",
                }),
            ))
        })
    })
    .await
}

/// Sets instance counts of process types of the environment's current release.
pub async fn scale(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    at: EnvPath<'_>,
    body: api::Scale,
) -> Result<Reply, ApiError> {
    let EnvPath { org, app, env } = at;
    let org = p.org(org)?;
    p.can_write()?;
    if body.scales.is_empty() {
        return Err(ApiError::bad_request(
            "scales is empty; give process type counts, e.g. {\"scales\": {\"web\": 3}}",
        ));
    }
    if let Some((n, c)) = body.scales.iter().find(|(_, c)| **c > MAX_SCALE) {
        return Err(ApiError::bad_request(format!(
            "scale {c} for {n:?} is above the maximum of {MAX_SCALE}"
        )));
    }
    let (p, app, env) = (p.clone(), app.to_owned(), env.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (_, env_id, version) = env_id(tx, org, &app, &env).await?;
            let known: Vec<String> = tx
                .query(
                    "SELECT t.name FROM v_envs e JOIN v_process_types t ON t.release_id = e.release_id WHERE e.id = $1",
                    &[&env_id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if known.is_empty() {
                return Err(ApiError::conflict(format!(
                    "environment {env:?} has no deployed release yet; deploy first, then scale"
                )));
            }
            if let Some(n) = body.scales.keys().find(|n| !known.contains(n)) {
                return Err(ApiError::bad_request(format!(
                    "process type {n:?} is not in the deployed release; it has: {}",
                    known.join(", ")
                )));
            }
            append(
                tx,
                &p,
                format!("env:{env_id}"),
                version,
                None,
                &[Event::EnvScaled(EnvScaled {
                    env_id,
                    scales: body.scales.clone(),
                })],
            )
            .await?;
            Ok(Reply::json(
                axum::http::StatusCode::ACCEPTED,
                &serde_json::json!({ "scales": body.scales }),
            ))
        })
    })
    .await
}

/// Stops every instance of the environment (`stopped = true`) or starts them again.
pub async fn set_stopped(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    at: EnvPath<'_>,
    stopped: bool,
) -> Result<Reply, ApiError> {
    let EnvPath { org, app, env } = at;
    let org = p.org(org)?;
    p.can_write()?;
    let (p, app, env) = (p.clone(), app.to_owned(), env.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (_, env_id, version) = env_id(tx, org, &app, &env).await?;
            append(
                tx,
                &p,
                format!("env:{env_id}"),
                version,
                None,
                &[Event::EnvRunStateSet(EnvRunStateSet { env_id, stopped })],
            )
            .await?;
            Ok(Reply::json(
                axum::http::StatusCode::ACCEPTED,
                &serde_json::json!({ "stopped": stopped }),
            ))
        })
    })
    .await
}

/// Deployments of the environment, newest first.
pub async fn deployments(
    c: &impl GenericClient,
    p: &Principal,
    at: EnvPath<'_>,
) -> Result<Vec<api::Deployment>, ApiError> {
    let org = p.org(at.org)?;
    p.can_read()?;
    let (_, env_id, _) = env_id(c, org, at.app, at.env).await?;
    let rows = c
        .query(
            &format!(
                "SELECT {DEP_COLS} FROM deployments d JOIN v_releases r ON r.id = d.release_id
                 WHERE d.env_id = $1 AND d.org_id = $2 ORDER BY d.seq DESC LIMIT 100"
            ),
            &[&env_id, &org],
        )
        .await?;
    Ok(rows.iter().map(deployment).collect())
}

/// Desired vs actual, per process type and instance, with the reasons it is not converged.
pub async fn status(
    c: &impl GenericClient,
    p: &Principal,
    at: EnvPath<'_>,
) -> Result<api::EnvStatus, ApiError> {
    let org = p.org(at.org)?;
    p.can_read()?;
    let (_, env_id, _) = env_id(c, org, at.app, at.env).await?;
    let env = c
        .query_one(
            "SELECT (SELECT number FROM v_releases WHERE id = e.release_id), e.scales, e.stopped
             FROM v_envs e WHERE e.id = $1",
            &[&env_id],
        )
        .await?;
    let release: Option<i64> = env.get(0);
    let scales: BTreeMap<String, u32> = serde_json::from_value(env.get(1)).unwrap_or_default();
    let stopped: bool = env.get(2);
    let latest = c
        .query_opt(
            &format!(
                "SELECT {DEP_COLS} FROM deployments d JOIN v_releases r ON r.id = d.release_id
                 WHERE d.env_id = $1 AND d.org_id = $2 ORDER BY d.seq DESC LIMIT 1"
            ),
            &[&env_id, &org],
        )
        .await?
        .map(|r| deployment(&r));
    let serving = c
        .query_opt(
            "SELECT r.number, d.release_id, d.secrets_version, r.manifest FROM deployments d
             JOIN v_releases r ON r.id = d.release_id
             WHERE d.env_id = $1 AND d.org_id = $2 AND d.state = 'succeeded' ORDER BY d.seq DESC LIMIT 1",
            &[&env_id, &org],
        )
        .await?;
    let rows = c
        .query(
            "SELECT i.id, i.process_type, i.kind, r.number, i.secrets_version, h.name, i.desired,
                    i.state, i.ready, i.reason, i.address, i.exit_code, i.signal, i.created_at,
                    i.release_id, i.health_error, i.ipv6_address
             FROM instances i JOIN v_releases r ON r.id = i.release_id
             LEFT JOIN v_hosts h ON h.id = i.host_id
             WHERE i.env_id = $1 AND i.org_id = $2 ORDER BY i.process_type, i.seq",
            &[&env_id, &org],
        )
        .await?;
    let instances: Vec<api::InstanceStatus> = rows
        .iter()
        .map(|r| api::InstanceStatus {
            id: r.get(0),
            process_type: r.get(1),
            kind: r.get(2),
            release: r.get(3),
            secrets_version: r.get(4),
            host: r
                .get::<_, Option<String>>(5)
                .unwrap_or_else(|| "(removed)".into()),
            desired: r.get(6),
            state: r.get(7),
            ready: r.get(8),
            reason: r.get(9),
            address: r.get(10),
            ipv6_address: r.get(16),
            exit_code: r.get(11),
            signal: r.get(12),
            created_at: ts(r.get(13)),
        })
        .collect();
    // Desired counts come from the serving release's manifest (or the promoted one).
    let manifest: Option<Value> = match &serving {
        Some(s) => Some(s.get(3)),
        None => c
            .query_opt(
                "SELECT r.manifest FROM v_envs e JOIN v_releases r ON r.id = e.release_id WHERE e.id = $1",
                &[&env_id],
            )
            .await?
            .map(|r| r.get(0)),
    };
    let target_release: Option<Uuid> = serving.as_ref().map(|s| s.get(1));
    let target_secrets: Option<i64> = serving.as_ref().map(|s| s.get(2));
    let mut processes = Vec::new();
    if let Some(procs) = manifest.as_ref().and_then(|m| m["processes"].as_object()) {
        for (name, spec) in procs {
            let desired = if stopped {
                0
            } else {
                scales
                    .get(name)
                    .copied()
                    .unwrap_or_else(|| spec["scale"].as_u64().unwrap_or(1) as u32)
            };
            let mine = rows.iter().filter(|r| {
                r.get::<_, String>(1) == *name
                    && r.get::<_, String>(2) == "service"
                    && r.get::<_, String>(6) == "run"
            });
            let running = mine.clone().count() as u32;
            let ready = mine
                .filter(|r| {
                    r.get::<_, bool>(8)
                        && Some(r.get::<_, Uuid>(14)) == target_release
                        && Some(r.get::<_, i64>(4)) == target_secrets
                })
                .count() as u32;
            processes.push(api::ProcessStatus {
                name: name.clone(),
                desired,
                ready,
                running,
            });
        }
    }
    let mut reasons = Vec::new();
    if let Some(d) = &latest
        && !matches!(d.state.as_str(), "succeeded")
    {
        let mut r = format!("deployment of release {} is {}", d.release, d.state);
        if !d.reason.is_empty() {
            r.push_str(&format!(": {}", d.reason));
        }
        reasons.push(r);
    }
    for pstat in &processes {
        if pstat.ready != pstat.desired || pstat.running != pstat.desired {
            reasons.push(format!(
                "{}: {} of {} ready ({} running)",
                pstat.name, pstat.ready, pstat.desired, pstat.running
            ));
        }
    }
    for r in &rows {
        let state: String = r.get(7);
        let desired: String = r.get(6);
        if desired == "run" && (TERMINAL.contains(&state.as_str()) || !r.get::<_, bool>(8)) {
            let mut s = format!("instance {} is {state}", r.get::<_, String>(0));
            let why: String = r.get(9);
            if !why.is_empty() {
                s.push_str(&format!(": {why}"));
            }
            if let Some(h) = r.get::<_, Option<String>>(15) {
                s.push_str(&format!(" (health check: {h})"));
            }
            reasons.push(s);
        }
    }
    if let Some(st) = c
        .query_opt(
            "SELECT status FROM reconciler_status WHERE reconciler = 'rollout' AND key = $1",
            &[&env_id.to_string()],
        )
        .await?
    {
        let st: Value = st.get(0);
        for n in st["notes"].as_array().into_iter().flatten() {
            if let Some(n) = n.as_str() {
                reasons.push(n.to_owned());
            }
        }
    }
    if release.is_none() {
        reasons.push("nothing deployed yet".into());
    }
    Ok(api::EnvStatus {
        app: at.app.to_owned(),
        env: at.env.to_owned(),
        release,
        serving_release: serving.as_ref().map(|s| s.get(0)),
        stopped,
        converged: reasons.is_empty(),
        reasons,
        deployment: latest,
        processes,
        instances,
    })
}
