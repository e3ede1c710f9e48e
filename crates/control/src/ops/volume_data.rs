//! Volume snapshots, backups and restores (docs/backups.md). The control plane records them and
//! drives the agent of the host holding the volume's disk through its API: a snapshot is a
//! synchronous disk copy there (the guest using it is synced and paused), a backup a background
//! job uploading the snapshot to the backup target, and a restore a job on another host making
//! the volume's disk from a backup — after which the volume (and the instances mounting it)
//! lives on that host.

use std::time::Duration;

use scalebox_types::api;
use serde_json::{Value, json};
use tokio_postgres::Row;
use uuid::Uuid;

use super::{agent_http, ts};
use crate::auth::Principal;
use crate::{ApiError, Control};

/// A volume of the caller's org and the host holding its disk.
struct VolRef {
    id: Uuid,
    org: Uuid,
    name: String,
    /// The disk's name on hosts: `<org simple id>-<name>`.
    disk: String,
    host: Option<HostRef>,
}

struct HostRef {
    id: Uuid,
    name: String,
    api: Option<(String, String)>,
    alive: bool,
}

const UNREACHABLE: &str = "the volume's host agent is unreachable";

fn short_id(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..16])
}

async fn volume(ctl: &Control, p: &Principal, org: &str, name: &str) -> Result<VolRef, ApiError> {
    let org = p.org(org)?;
    let c = ctl.db.client().await?;
    let id: Uuid = c
        .query_opt(
            "SELECT id FROM v_volumes WHERE org_id = $1 AND name = $2",
            &[&org, &name],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("volume {name:?}")))?
        .get(0);
    let disk = format!("{}-{name}", org.simple());
    let lost_after = ctl.config.host_lost_after_s as f64;
    let host = c
        .query_opt(
            "SELECT vp.host_id, h.name, s.api_url, s.api_token,
                    COALESCE(extract(epoch FROM now() - s.last_seen)::float8 < $2, false)
             FROM volume_placements vp JOIN v_hosts h ON h.id = vp.host_id
             LEFT JOIN host_status s ON s.host_id = vp.host_id
             WHERE vp.volume = $1",
            &[&disk, &lost_after],
        )
        .await?
        .map(|r| host_ref(&r));
    Ok(VolRef {
        id,
        org,
        name: name.to_owned(),
        disk,
        host,
    })
}

fn host_ref(r: &Row) -> HostRef {
    HostRef {
        id: r.get(0),
        name: r.get(1),
        api: match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
            (Some(u), Some(t)) => Some((u, t)),
            _ => None,
        },
        alive: r.get(4),
    }
}

fn agent_of(v: &VolRef) -> Result<(&HostRef, String, String), ApiError> {
    let h = v.host.as_ref().ok_or_else(|| {
        ApiError::conflict(format!(
            "volume {:?} has no disk yet: it is made on a host when an instance first mounts it",
            v.name
        ))
    })?;
    let (u, t) = h.api.clone().ok_or_else(|| unavailable(&h.name))?;
    if !h.alive {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "host_lost",
            format!(
                "host {:?} holding volume {:?} is not reporting; restore the volume from a backup onto another host (`sb volumes restore`)",
                h.name, v.name
            ),
        ));
    }
    Ok((h, u, t))
}

fn unavailable(host: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("host {host:?} has not reported its agent API yet; retry in a few seconds"),
    )
}

/// The agent's error as the caller's: its status class and message (agent messages name
/// volumes, snapshots and ids, never secrets).
fn agent_error(status: u16, v: &Value) -> ApiError {
    let msg = v["error"]
        .as_str()
        .unwrap_or("the host agent failed")
        .to_owned();
    match status {
        400 => ApiError::bad_request(msg),
        404 => ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", msg),
        409 => ApiError::conflict(msg),
        _ => ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "agent_error", msg),
    }
}

fn snapshot_row(r: &Row, volume: &str) -> api::VolumeSnapshot {
    api::VolumeSnapshot {
        id: r.get(0),
        volume: volume.to_owned(),
        host: r.get(1),
        size_bytes: r.get(2),
        created_at: ts(r.get(3)),
    }
}

/// Takes a snapshot of the volume now.
pub async fn snapshot_create(
    ctl: &Control,
    p: &Principal,
    org: &str,
    name: &str,
) -> Result<api::VolumeSnapshot, ApiError> {
    p.can_write()?;
    let v = volume(ctl, p, org, name).await?;
    let (h, url, token) = agent_of(&v)?;
    let id = short_id("snap");
    let (st, body) = agent_http::call(
        "POST",
        format!("{url}/v1/volumes/{}/snapshots", v.disk),
        token,
        Some(json!({ "id": id })),
        Duration::from_secs(600),
        UNREACHABLE,
    )
    .await?;
    if st != 201 {
        return Err(agent_error(st, &body));
    }
    let size = body["size_bytes"].as_i64().unwrap_or(0);
    let c = ctl.db.client().await?;
    let r = c
        .query_one(
            "INSERT INTO volume_snapshots (id, org_id, volume_id, host_id, size_bytes) VALUES ($1,$2,$3,$4,$5)
             RETURNING id, (SELECT name FROM v_hosts WHERE id = $4), size_bytes, created_at",
            &[&id, &v.org, &v.id, &h.id, &size],
        )
        .await?;
    tracing::info!(volume = %v.name, snapshot = %id, "volume snapshot taken");
    Ok(snapshot_row(&r, &v.name))
}

pub async fn snapshot_list(
    ctl: &Control,
    p: &Principal,
    org: &str,
    name: &str,
) -> Result<Vec<api::VolumeSnapshot>, ApiError> {
    p.can_read()?;
    let v = volume(ctl, p, org, name).await?;
    let c = ctl.db.client().await?;
    let rows = c
        .query(
            "SELECT s.id, h.name, s.size_bytes, s.created_at FROM volume_snapshots s
             LEFT JOIN v_hosts h ON h.id = s.host_id
             WHERE s.org_id = $1 AND s.volume_id = $2 ORDER BY s.created_at, s.id",
            &[&v.org, &v.id],
        )
        .await?;
    Ok(rows.iter().map(|r| snapshot_row(r, &v.name)).collect())
}

pub async fn snapshot_delete(
    ctl: &Control,
    p: &Principal,
    org: &str,
    name: &str,
    id: &str,
) -> Result<(), ApiError> {
    p.can_write()?;
    let v = volume(ctl, p, org, name).await?;
    let c = ctl.db.client().await?;
    let host: Uuid = c
        .query_opt(
            "SELECT host_id FROM volume_snapshots WHERE org_id = $1 AND volume_id = $2 AND id = $3",
            &[&v.org, &v.id, &id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("snapshot {id:?}")))?
        .get(0);
    if v.host.as_ref().is_some_and(|h| h.id == host) {
        let (_, url, token) = agent_of(&v)?;
        let (st, body) = agent_http::call(
            "DELETE",
            format!("{url}/v1/volumes/{}/snapshots/{id}", v.disk),
            token,
            None,
            Duration::from_secs(60),
            UNREACHABLE,
        )
        .await?;
        if st != 204 && st != 404 {
            return Err(agent_error(st, &body));
        }
    }
    c.execute("DELETE FROM volume_snapshots WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

const BACKUP_COLS: &str = "id, snapshot_id, state, bytes_done, bytes_total, size_bytes, image_sha256, error, created_at, finished_at";

fn backup_row(r: &Row, volume: &str) -> api::VolumeBackup {
    api::VolumeBackup {
        id: r.get(0),
        volume: volume.to_owned(),
        snapshot: r.get(1),
        state: r.get(2),
        bytes_done: r.get(3),
        bytes_total: r.get(4),
        size_bytes: r.get(5),
        image_sha256: r.get(6),
        error: r.get(7),
        created_at: ts(r.get(8)),
        finished_at: r.get::<_, Option<time::OffsetDateTime>>(9).map(ts),
    }
}

/// Starts a backup of a snapshot (a new one when none is named); it runs in the background.
pub async fn backup_create(
    ctl: &Control,
    p: &Principal,
    org: &str,
    name: &str,
    body: &[u8],
) -> Result<api::VolumeBackup, ApiError> {
    p.can_write()?;
    // Who may do this and on what is checked before what the body says.
    let v = volume(ctl, p, org, name).await?;
    let body: api::CreateVolumeBackup = crate::api::extract::parse_json(body)?;
    let snapshot = match body.snapshot {
        Some(s) => s,
        None => snapshot_create(ctl, p, org, name).await?.id,
    };
    let (h, url, token) = agent_of(&v)?;
    let c = ctl.db.client().await?;
    let on_host = c
        .query_opt(
            "SELECT 1 FROM volume_snapshots WHERE org_id = $1 AND volume_id = $2 AND id = $3 AND host_id = $4",
            &[&v.org, &v.id, &snapshot, &h.id],
        )
        .await?
        .is_some();
    if !on_host {
        return Err(ApiError::not_found(format!(
            "snapshot {snapshot:?} of volume {name:?} on its current host"
        )));
    }
    let id = short_id("bk");
    c.execute(
        "INSERT INTO volume_backups (id, org_id, volume_id, snapshot_id, host_id, state) VALUES ($1,$2,$3,$4,$5,'running')",
        &[&id, &v.org, &v.id, &snapshot, &h.id],
    )
    .await?;
    let (st, resp) = agent_http::call(
        "POST",
        format!("{url}/v1/volumes/{}/snapshots/{snapshot}/backup", v.disk),
        token,
        Some(json!({ "backup_id": id, "job_id": id })),
        Duration::from_secs(60),
        UNREACHABLE,
    )
    .await?;
    if st != 202 {
        let e = agent_error(st, &resp);
        c.execute(
            "UPDATE volume_backups SET state = 'failed', error = $2, finished_at = now() WHERE id = $1",
            &[&id, &e.message],
        )
        .await?;
        return Err(e);
    }
    let r = c
        .query_one(
            &format!("SELECT {BACKUP_COLS} FROM volume_backups WHERE id = $1"),
            &[&id],
        )
        .await?;
    Ok(backup_row(&r, &v.name))
}

/// The volume's backups, newest last; running ones are refreshed from their host's agent.
pub async fn backup_list(
    ctl: &Control,
    p: &Principal,
    org: &str,
    name: &str,
) -> Result<Vec<api::VolumeBackup>, ApiError> {
    p.can_read()?;
    let v = volume(ctl, p, org, name).await?;
    refresh_backups(ctl, &v).await?;
    let c = ctl.db.client().await?;
    let rows = c
        .query(
            &format!(
                "SELECT {BACKUP_COLS} FROM volume_backups WHERE org_id = $1 AND volume_id = $2 ORDER BY created_at, id"
            ),
            &[&v.org, &v.id],
        )
        .await?;
    Ok(rows.iter().map(|r| backup_row(r, &v.name)).collect())
}

/// Updates the volume's running backups from their hosts' agents (unreachable ones stay
/// `running` until the next look).
async fn refresh_backups(ctl: &Control, v: &VolRef) -> Result<(), ApiError> {
    let c = ctl.db.client().await?;
    let running = c
        .query(
            "SELECT b.id, s.api_url, s.api_token FROM volume_backups b
             LEFT JOIN host_status s ON s.host_id = b.host_id
             WHERE b.org_id = $1 AND b.volume_id = $2 AND b.state = 'running'",
            &[&v.org, &v.id],
        )
        .await?;
    for r in running {
        let (id, url, token): (String, Option<String>, Option<String>) =
            (r.get(0), r.get(1), r.get(2));
        let (Some(url), Some(token)) = (url, token) else {
            continue;
        };
        let Ok((200, j)) = agent_http::call(
            "GET",
            format!("{url}/v1/volume-jobs/{id}"),
            token,
            None,
            Duration::from_secs(10),
            UNREACHABLE,
        )
        .await
        else {
            continue;
        };
        let state = j["state"].as_str().unwrap_or("running").to_owned();
        c.execute(
            "UPDATE volume_backups SET state = $2, bytes_done = $3, bytes_total = $4, size_bytes = $5,
                    image_sha256 = $6, error = $7,
                    finished_at = CASE WHEN $2 = 'running' THEN NULL ELSE now() END
             WHERE id = $1 AND state = 'running'",
            &[
                &id,
                &state,
                &j["bytes_done"].as_i64().unwrap_or(0),
                &j["bytes_total"].as_i64().unwrap_or(0),
                &j["size_bytes"].as_i64(),
                &j["image_sha256"].as_str(),
                &j["error"].as_str(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Makes the volume's disk anew on another host from a backup (its host was lost), then moves
/// the volume there: instances mounting it are placed on that host from now on.
pub async fn restore(
    ctl: &Control,
    p: &Principal,
    org: &str,
    name: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    p.can_write()?;
    let v = volume(ctl, p, org, name).await?;
    let body: api::RestoreVolume = crate::api::extract::parse_json(body)?;
    // Refresh backup states first (a backup that just finished counts as `latest`).
    refresh_backups(ctl, &v).await?;
    if let Some(into) = body.into.clone() {
        return restore_into(ctl, p, org, &v, body, &into).await;
    }
    let Some(backup) = body.backup.clone() else {
        return Err(ApiError::bad_request(
            "give `backup` (an id or `latest`); a snapshot restores only into a new volume (`into`)",
        ));
    };
    if let Some(h) = v.host.as_ref().filter(|h| h.alive) {
        return Err(ApiError::conflict(format!(
            "volume {name:?} is on host {:?}, which is alive: restore replaces the disk of a volume whose host was lost (restore into a new volume, or drain the host first)",
            h.name
        )));
    }
    let c = ctl.db.client().await?;
    let backup = succeeded_backup(&c, &v, &backup).await?;
    let target = pick_host(ctl, &c, body.host.as_deref(), v.host.as_ref().map(|h| h.id)).await?;
    let result = run_restore_job(&target, &v.disk, &backup).await?;
    c.execute(
        "INSERT INTO volume_placements (volume, host_id) VALUES ($1, $2)
         ON CONFLICT (volume) DO UPDATE SET host_id = $2",
        &[&v.disk, &target.id],
    )
    .await?;
    ctl.poke();
    tracing::info!(volume = %v.name, backup = %backup, host = %target.name, "volume restored onto another host");
    Ok(json!({
        "volume": v.name,
        "backup": backup,
        "host": target.name,
        "size_bytes": result["size_bytes"],
        "image_sha256": result["image_sha256"],
    }))
}

/// The id of a succeeded backup of `v` (`latest`: the newest).
async fn succeeded_backup(
    c: &tokio_postgres::Client,
    v: &VolRef,
    want: &str,
) -> Result<String, ApiError> {
    Ok(if want == "latest" {
        c.query_opt(
            "SELECT id FROM volume_backups WHERE org_id = $1 AND volume_id = $2 AND state = 'succeeded'
             ORDER BY finished_at DESC, id DESC LIMIT 1",
            &[&v.org, &v.id],
        )
        .await?
        .ok_or_else(|| ApiError::conflict(format!("volume {:?} has no succeeded backup", v.name)))?
        .get(0)
    } else {
        let st: String = c
            .query_opt(
                "SELECT state FROM volume_backups WHERE org_id = $1 AND volume_id = $2 AND id = $3",
                &[&v.org, &v.id, &want],
            )
            .await?
            .ok_or_else(|| ApiError::not_found(format!("backup {want:?}")))?
            .get(0);
        if st != "succeeded" {
            return Err(ApiError::conflict(format!(
                "backup {want:?} is {st}; only a succeeded backup can be restored"
            )));
        }
        want.to_owned()
    })
}

/// A live, non-draining host: `name` if given, never `except`.
async fn pick_host(
    ctl: &Control,
    c: &tokio_postgres::Client,
    name: Option<&str>,
    except: Option<Uuid>,
) -> Result<HostRef, ApiError> {
    let lost_after = ctl.config.host_lost_after_s as f64;
    c.query_opt(
        "SELECT h.id, h.name, s.api_url, s.api_token,
                COALESCE(extract(epoch FROM now() - s.last_seen)::float8 < $1, false)
         FROM v_hosts h JOIN host_status s ON s.host_id = h.id
         WHERE extract(epoch FROM now() - s.last_seen)::float8 < $1 AND NOT h.draining
           AND ($2::text IS NULL OR h.name = $2) AND ($3::uuid IS NULL OR h.id <> $3)
         ORDER BY h.name LIMIT 1",
        &[&lost_after, &name, &except],
    )
    .await?
    .map(|r| host_ref(&r))
    .ok_or_else(|| match name {
        Some(h) => ApiError::conflict(format!(
            "host {h:?} is not a live, non-draining host (other than the volume's)"
        )),
        None => ApiError::conflict("no live host to restore the volume on"),
    })
}

/// Runs a restore job of `backup` into disk `disk` on `target` and waits for it.
async fn run_restore_job(target: &HostRef, disk: &str, backup: &str) -> Result<Value, ApiError> {
    let (url, token) = target
        .api
        .clone()
        .ok_or_else(|| unavailable(&target.name))?;
    let job = short_id("rs");
    let (st, resp) = agent_http::call(
        "POST",
        format!("{url}/v1/volumes/{disk}/restore"),
        token.clone(),
        Some(json!({ "backup_id": backup, "job_id": job })),
        Duration::from_secs(60),
        UNREACHABLE,
    )
    .await?;
    if st != 202 {
        return Err(agent_error(st, &resp));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (st, j) = agent_http::call(
            "GET",
            format!("{url}/v1/volume-jobs/{job}"),
            token.clone(),
            None,
            Duration::from_secs(10),
            UNREACHABLE,
        )
        .await?;
        match (st, j["state"].as_str()) {
            (200, Some("succeeded")) => return Ok(j),
            (200, Some("failed")) => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "restore_failed",
                    format!(
                        "restoring backup {backup:?} failed: {}",
                        j["error"].as_str().unwrap_or("unknown error")
                    ),
                ));
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(ApiError::new(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "restore job {job} did not finish within an hour; it keeps running on host {:?}",
                        target.name
                    ),
                ));
            }
            _ => {}
        }
    }
}

/// Restores a backup or a snapshot of `v` into the new volume `into` (same size, attached to
/// nothing): its disk is made on a live host (a snapshot's copy on the snapshot's host).
async fn restore_into(
    ctl: &Control,
    p: &Principal,
    org: &str,
    v: &VolRef,
    body: api::RestoreVolume,
    into: &str,
) -> Result<Value, ApiError> {
    let c = ctl.db.client().await?;
    let size: i32 = c
        .query_one("SELECT size_gb FROM v_volumes WHERE id = $1", &[&v.id])
        .await?
        .get(0);
    // The new volume's record first: its name is checked and reserved.
    let idem = crate::command::Idempotency {
        key: None,
        fingerprint: String::new(),
    };
    let created = super::volumes::create(
        ctl,
        p,
        &idem,
        org,
        api::CreateVolume {
            name: into.to_owned(),
            size_gb: size,
            app: None,
            env: None,
        },
    )
    .await?;
    let new_disk = format!("{}-{into}", v.org.simple());
    let made: Result<(HostRef, Value), ApiError> = async {
        match (&body.snapshot, &body.backup) {
            (Some(snap), None) => {
                let (h, url, token) = agent_of(v)?;
                let host = HostRef {
                    id: h.id,
                    name: h.name.clone(),
                    api: h.api.clone(),
                    alive: h.alive,
                };
                let (st, r) = agent_http::call(
                    "POST",
                    format!("{url}/v1/volumes/{new_disk}/restore"),
                    token,
                    Some(json!({ "from_volume": v.disk, "snapshot": snap })),
                    Duration::from_secs(3600),
                    UNREACHABLE,
                )
                .await?;
                if st != 201 {
                    return Err(agent_error(st, &r));
                }
                Ok((host, json!({ "snapshot": snap, "size_bytes": r["size_bytes"] })))
            }
            (None, Some(b)) => {
                let backup = succeeded_backup(&c, v, b).await?;
                let target = pick_host(ctl, &c, body.host.as_deref(), None).await?;
                let r = run_restore_job(&target, &new_disk, &backup).await?;
                Ok((
                    target,
                    json!({ "backup": backup, "size_bytes": r["size_bytes"], "image_sha256": r["image_sha256"] }),
                ))
            }
            _ => Err(ApiError::bad_request(
                "give exactly one of `backup` (an id or `latest`) and `snapshot`",
            )),
        }
    }
    .await;
    let (host, mut out) = match made {
        Ok(x) => x,
        Err(e) => {
            // Undo the reservation: the new volume never got a disk.
            let _ = super::volumes::delete(ctl, p, &idem, org, into).await;
            return Err(e);
        }
    };
    c.execute(
        "INSERT INTO volume_placements (volume, host_id) VALUES ($1, $2)
         ON CONFLICT (volume) DO UPDATE SET host_id = $2",
        &[&new_disk, &host.id],
    )
    .await?;
    tracing::info!(volume = %v.name, into, host = %host.name, "volume restored into a new volume");
    out["volume"] = Value::String(into.to_owned());
    out["host"] = Value::String(host.name);
    out["created"] = created.body;
    Ok(out)
}
