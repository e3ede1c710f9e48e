//! Projects: optional grouping of apps within an org.

use scalebox_store::Event;
use scalebox_store::events::ProjectCreated;
use scalebox_types::api;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{append, check_name, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

const COLS: &str = "id, name, version, created_at";

fn project(r: &Row) -> api::Project {
    api::Project {
        id: r.get::<_, Uuid>(0).to_string(),
        name: r.get(1),
        version: r.get(2),
        created_at: ts(r.get(3)),
    }
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
) -> Result<Vec<api::Project>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let rows = c
        .query(
            &format!("SELECT {COLS} FROM v_projects WHERE org_id = $1 ORDER BY name"),
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(project).collect())
}

pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    name: &str,
) -> Result<api::Project, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM v_projects WHERE org_id = $1 AND name = $2"),
            &[&org, &name],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("project {name:?}")))?;
    Ok(project(&row))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    body: api::CreateProject,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    check_name("project name", &body.name)?;
    let p = p.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let id = Uuid::new_v4();
            append(
                tx,
                &p,
                format!("project:{id}"),
                0,
                None,
                &[Event::ProjectCreated(ProjectCreated {
                    project_id: id,
                    org_id: org,
                    name: body.name,
                })],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {COLS} FROM v_projects WHERE id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Reply::created(&project(&row)))
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
                    "SELECT id, version, (SELECT count(*) FROM v_apps a WHERE a.project_id = v_projects.id)
                     FROM v_projects WHERE org_id = $1 AND name = $2 FOR UPDATE",
                    &[&org, &name],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("project {name:?}")))?;
            let (id, apps): (Uuid, i64) = (row.get(0), row.get(2));
            if apps > 0 {
                return Err(ApiError::conflict(format!(
                    "project {name:?} still groups {apps} apps; move or delete them first"
                )));
            }
            remove(tx, &p, "project", id, row.get(1), Event::ProjectDeleted).await
        })
    })
    .await
}
