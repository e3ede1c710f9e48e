//! Environments of an app (`prod`, `staging`): each has its own secrets, routes and releases,
//! and may hold a dedicated public IPv4 (`ops::ipv4`), released when it is deleted.

use scalebox_store::Event;
use scalebox_store::events::EnvCreated;
use scalebox_types::api;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{app_id, append, check_name, env_id, ipv4, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

const COLS: &str = "e.id, a.name, e.name, e.secrets_version, e.version, e.created_at, e.ipv4";
const FROM: &str = "v_envs e JOIN v_apps a ON a.id = e.app_id";

fn env(r: &Row) -> api::Env {
    api::Env {
        id: r.get::<_, Uuid>(0).to_string(),
        app: r.get(1),
        name: r.get(2),
        secrets_version: r.get(3),
        ipv4: r.get(6),
        version: r.get(4),
        created_at: ts(r.get(5)),
    }
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    app: &str,
) -> Result<Vec<api::Env>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let (app_id, _) = app_id(c, org, app).await?;
    let rows = c
        .query(
            &format!(
                "SELECT {COLS} FROM {FROM} WHERE e.org_id = $1 AND e.app_id = $2 ORDER BY e.name"
            ),
            &[&org, &app_id],
        )
        .await?;
    Ok(rows.iter().map(env).collect())
}

pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    app: &str,
    name: &str,
) -> Result<api::Env, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let (_, id, _) = env_id(c, org, app, name).await?;
    let row = c
        .query_one(
            &format!("SELECT {COLS} FROM {FROM} WHERE e.id = $1"),
            &[&id],
        )
        .await?;
    Ok(env(&row))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    app: &str,
    body: api::CreateEnv,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    check_name("environment name", &body.name)?;
    let (p, app) = (p.clone(), app.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (app_id, _) = app_id(tx, org, &app).await?;
            let id = Uuid::new_v4();
            append(
                tx,
                &p,
                format!("env:{id}"),
                0,
                None,
                &[Event::EnvCreated(EnvCreated {
                    env_id: id,
                    org_id: org,
                    app_id,
                    name: body.name,
                })],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {COLS} FROM {FROM} WHERE e.id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Reply::created(&env(&row)))
        })
    })
    .await
}

pub async fn delete(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    app: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    let (p, app, name) = (p.clone(), app.to_owned(), name.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (_, id, _) = env_id(tx, org, &app, &name).await?;
            let row = tx
                .query_one(
                    "SELECT version, (SELECT count(*) FROM v_routes r WHERE r.env_id = $1)
                          + (SELECT count(*) FROM v_volumes v WHERE v.env_id = $1), ipv4
                     FROM v_envs WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?;
            let n: i64 = row.get(1);
            if n > 0 {
                return Err(ApiError::conflict(format!(
                    "environment {name:?} still has {n} routes or volumes; delete them first"
                )));
            }
            // Its dedicated IPv4 goes back to the pool first (an event of its own).
            let version = ipv4::release(tx, &p, id, row.get(2), row.get(0)).await?;
            remove(tx, &p, "env", id, version, Event::EnvDeleted).await
        })
    })
    .await
}
