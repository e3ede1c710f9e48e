//! Volume records (the agent-side storage lands with the volumes issue).

use scalebox_store::Event;
use scalebox_store::events::VolumeCreated;
use scalebox_types::api;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{app_id, append, check_name, env_id, remove, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

const COLS: &str = "v.id, v.name, v.size_gb, a.name, e.name, h.name, v.version, v.created_at";
const FROM: &str = "v_volumes v LEFT JOIN v_apps a ON a.id = v.app_id LEFT JOIN v_envs e ON e.id = v.env_id \
                    LEFT JOIN v_hosts h ON h.id = v.host_id";

fn volume(r: &Row) -> api::Volume {
    api::Volume {
        id: r.get::<_, Uuid>(0).to_string(),
        name: r.get(1),
        size_gb: r.get(2),
        app: r.get(3),
        env: r.get(4),
        host: r.get(5),
        version: r.get(6),
        created_at: ts(r.get(7)),
    }
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
) -> Result<Vec<api::Volume>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let rows = c
        .query(
            &format!("SELECT {COLS} FROM {FROM} WHERE v.org_id = $1 ORDER BY v.name"),
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(volume).collect())
}

pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    name: &str,
) -> Result<api::Volume, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let row = c
        .query_opt(
            &format!("SELECT {COLS} FROM {FROM} WHERE v.org_id = $1 AND v.name = $2"),
            &[&org, &name],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("volume {name:?}")))?;
    Ok(volume(&row))
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    body: api::CreateVolume,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    check_name("volume name", &body.name)?;
    if !(1..=16384).contains(&body.size_gb) {
        return Err(ApiError::bad_request(format!(
            "size_gb {} is out of range; expected 1-16384",
            body.size_gb
        )));
    }
    if body.env.is_some() && body.app.is_none() {
        return Err(ApiError::bad_request(
            "env needs app: give both to attach the volume to an environment",
        ));
    }
    let p = p.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (app_id, env_id) = match (&body.app, &body.env) {
                (Some(a), Some(e)) => {
                    let (a, e, _) = env_id(tx, org, a, e).await?;
                    (Some(a), Some(e))
                }
                (Some(a), None) => (Some(app_id(tx, org, a).await?.0), None),
                _ => (None, None),
            };
            let id = Uuid::new_v4();
            append(
                tx,
                &p,
                format!("volume:{id}"),
                0,
                None,
                &[Event::VolumeCreated(VolumeCreated {
                    volume_id: id,
                    org_id: org,
                    name: body.name,
                    size_gb: body.size_gb,
                    app_id,
                    env_id,
                    host_id: None,
                })],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {COLS} FROM {FROM} WHERE v.id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Reply::created(&volume(&row)))
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
                    "SELECT id, version FROM v_volumes WHERE org_id = $1 AND name = $2 FOR UPDATE",
                    &[&org, &name],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("volume {name:?}")))?;
            let id: Uuid = row.get(0);
            remove(tx, &p, "volume", id, row.get(1), Event::VolumeDeleted).await
        })
    })
    .await
}
