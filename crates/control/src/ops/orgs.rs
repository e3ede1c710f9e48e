//! Orgs (tenants). A token sees only its own org; an admin can create a new org and receives its
//! first admin token.

use scalebox_store::events::OrgCreated;
use scalebox_store::{Event, log};
use scalebox_types::api::{self, Role};
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

use super::{check_name, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

fn org(r: &Row) -> api::Org {
    api::Org {
        id: r.get::<_, Uuid>(0).to_string(),
        name: r.get(1),
        operator: r.get(2),
        version: r.get(3),
        created_at: ts(r.get(4)),
    }
}

const COLS: &str = "id, name, operator, version, created_at";

pub async fn list(c: &impl GenericClient, p: &Principal) -> Result<Vec<api::Org>, ApiError> {
    p.can_read()?;
    let rows = c
        .query(
            &format!("SELECT {COLS} FROM v_orgs WHERE id = $1"),
            &[&p.org_id],
        )
        .await?;
    Ok(rows.iter().map(org).collect())
}

pub async fn get(c: &impl GenericClient, p: &Principal, name: &str) -> Result<api::Org, ApiError> {
    p.can_read()?;
    let id = p.org(name)?;
    let row = c
        .query_opt(&format!("SELECT {COLS} FROM v_orgs WHERE id = $1"), &[&id])
        .await?
        .ok_or_else(|| ApiError::not_found(format!("org {name:?}")))?;
    Ok(org(&row))
}

/// Appends the events creating an org and its first admin token; returns the token.
pub async fn create_with_admin(
    tx: &Transaction<'_>,
    actor: &str,
    name: &str,
    operator: bool,
) -> Result<(Uuid, String), ApiError> {
    let org_id = Uuid::new_v4();
    log::append(
        tx,
        actor,
        Some(org_id),
        &format!("org:{org_id}"),
        0,
        &[Event::OrgCreated(OrgCreated {
            org_id,
            name: name.to_owned(),
            operator,
        })],
    )
    .await?;
    let (_, token) =
        super::tokens::append_token(tx, actor, org_id, "admin", Role::Admin, None).await?;
    Ok((org_id, token))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    body: api::CreateOrg,
) -> Result<Reply, ApiError> {
    p.must_admin()?;
    check_name("org name", &body.name)?;
    let actor = p.actor.clone();
    ctl.command(p.org_id, idem, move |tx| {
        Box::pin(async move {
            let (id, token) = create_with_admin(tx, &actor, &body.name, false).await?;
            let row = tx
                .query_one(&format!("SELECT {COLS} FROM v_orgs WHERE id = $1"), &[&id])
                .await?;
            Ok(Reply::created(&api::OrgCreated {
                org: org(&row),
                admin_token: token,
            }))
        })
    })
    .await
}

pub async fn delete(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    name: &str,
) -> Result<Reply, ApiError> {
    let id = p.org(name)?;
    p.must_admin()?;
    if p.operator {
        return Err(ApiError::forbidden("the operator org cannot be deleted"));
    }
    let p = p.clone();
    ctl.command(id, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM v_apps WHERE org_id = $1) + (SELECT count(*) FROM v_projects WHERE org_id = $1)
                          + (SELECT count(*) FROM v_volumes WHERE org_id = $1), (SELECT version FROM v_orgs WHERE id = $1 FOR UPDATE)",
                    &[&id],
                )
                .await?;
            let n: i64 = row.get(0);
            if n > 0 {
                return Err(ApiError::conflict(format!(
                    "org still has {n} apps, projects or volumes; delete them first"
                )));
            }
            remove(tx, &p, "org", id, row.get(1), Event::OrgDeleted).await
        })
    })
    .await
}
