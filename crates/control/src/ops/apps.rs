//! Apps: named services of an org, optionally grouped in a project.

use scalebox_store::Event;
use scalebox_store::events::{AppCreated, AppUpdated};
use scalebox_types::api;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{append, check_name, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

const COLS: &str = "a.id, a.name, p.name, a.description, a.release_count, a.version, a.created_at";
const FROM: &str = "v_apps a LEFT JOIN v_projects p ON p.id = a.project_id";

fn app(r: &Row) -> api::App {
    api::App {
        id: r.get::<_, Uuid>(0).to_string(),
        name: r.get(1),
        project: r.get(2),
        description: r.get(3),
        release_count: r.get(4),
        version: r.get(5),
        created_at: ts(r.get(6)),
    }
}

async fn project_id(
    c: &impl GenericClient,
    org: Uuid,
    name: Option<&str>,
) -> Result<Option<Uuid>, ApiError> {
    let Some(name) = name else { return Ok(None) };
    let row = c
        .query_opt(
            "SELECT id FROM v_projects WHERE org_id = $1 AND name = $2",
            &[&org, &name],
        )
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(format!("project {name:?} does not exist; create it first"))
        })?;
    Ok(Some(row.get(0)))
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
) -> Result<Vec<api::App>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let rows = c
        .query(
            &format!("SELECT {COLS} FROM {FROM} WHERE a.org_id = $1 ORDER BY a.name"),
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(app).collect())
}

pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    name: &str,
) -> Result<api::App, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM {FROM} WHERE a.org_id = $1 AND a.name = $2"),
            &[&org, &name],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("app {name:?}")))?;
    Ok(app(&row))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    body: api::CreateApp,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    check_name("app name", &body.name)?;
    let p = p.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let project_id = project_id(tx, org, body.project.as_deref()).await?;
            let id = Uuid::new_v4();
            append(
                tx,
                &p,
                format!("app:{id}"),
                0,
                None,
                &[Event::AppCreated(AppCreated {
                    app_id: id,
                    org_id: org,
                    name: body.name,
                    project_id,
                    description: body.description.unwrap_or_default(),
                })],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {COLS} FROM {FROM} WHERE a.id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Reply::created(&app(&row)))
        })
    })
    .await
}

pub async fn update(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    name: &str,
    body: api::UpdateApp,
    if_match: Option<i64>,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    let (p, name) = (p.clone(), name.to_owned());
    let expected = body.expected_version.or(if_match);
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_opt(
                    "SELECT id, version, project_id, description FROM v_apps WHERE org_id = $1 AND name = $2",
                    &[&org, &name],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("app {name:?}")))?;
            let id: Uuid = row.get(0);
            let project_id = match &body.project {
                Some(p) => project_id(tx, org, p.as_deref()).await?,
                None => row.get(2),
            };
            let description = body.description.unwrap_or_else(|| row.get(3));
            append(
                tx,
                &p,
                format!("app:{id}"),
                row.get(1),
                expected,
                &[Event::AppUpdated(AppUpdated { app_id: id, project_id, description })],
            )
            .await?;
            let row = tx.query_one(&format!("SELECT {COLS} FROM {FROM} WHERE a.id = $1"), &[&id]).await?;
            Ok(Reply::ok(&app(&row)))
        })
    })
    .await
}

pub async fn delete(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    name: &str,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    let (p, name) = (p.clone(), name.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_opt(
                    "SELECT id, version, (SELECT count(*) FROM v_envs e WHERE e.app_id = v_apps.id)
                     FROM v_apps WHERE org_id = $1 AND name = $2 FOR UPDATE",
                    &[&org, &name],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("app {name:?}")))?;
            let (id, envs): (Uuid, i64) = (row.get(0), row.get(2));
            if envs > 0 {
                return Err(ApiError::conflict(format!(
                    "app {name:?} still has {envs} environments; delete them first"
                )));
            }
            remove(tx, &p, "app", id, row.get(1), Event::AppDeleted).await
        })
    })
    .await
}
