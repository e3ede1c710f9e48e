//! Volume routes of the agent API (docs/agent.md, "Volumes"): snapshots of a volume disk (the
//! guest using it is synced and paused for the copy), restores of a snapshot or a backup into a
//! new volume, backups of a snapshot to the configured target, and the jobs that run them.
//!
//! `POST /v1/volumes/{name}/snapshots {"id"}` → 201 snapshot · `GET /v1/volumes/{name}/snapshots`
//! · `DELETE /v1/volumes/{name}/snapshots/{id}` · `POST /v1/volumes/{name}/snapshots/{id}/backup
//! {"backup_id","job_id"}` → 202 job · `POST /v1/volumes/{name}/restore {"from_volume","snapshot"}`
//! → 201, or `{"backup_id","job_id"}` → 202 job · `GET /v1/volume-jobs/{id}` · `GET /v1/backups`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::{ApiError, ApiState};
use crate::backend::BackendError;
use crate::volume_jobs::{JobError, JobKind};

fn body<T>(b: Result<Json<T>, JsonRejection>, expected: &str) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("{}; expected {expected}", e.body_text()),
        )
    })
}

fn volume_error(e: BackendError) -> ApiError {
    use crate::volumes::{CONFLICT, INVALID, NOT_FOUND};
    let status = match e.kind.as_str() {
        NOT_FOUND => StatusCode::NOT_FOUND,
        CONFLICT => StatusCode::CONFLICT,
        INVALID => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, "volume", e.message)
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let (s, c) = match &e {
            JobError::NoTarget => (StatusCode::CONFLICT, "no_backup_target"),
            JobError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            JobError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            JobError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(s, c, e.to_string())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(volume_error)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    id: String,
}

pub async fn snapshot(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    b: Result<Json<SnapshotBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b, "{\"id\": \"<snapshot id>\"}")?;
    crate::volumes::check_name("snapshot id", &b.id).map_err(volume_error)?;
    st.volumes.disk_path(&name).map_err(volume_error)?;
    // A guest using the volume flushes and pauses for the copy, then resumes.
    let user = st.manager.quiesce_volume_user(&name).await?;
    let store = st.volumes.clone();
    let (n, id) = (name.clone(), b.id.clone());
    let r = blocking(move || store.take_snapshot(&n, &id)).await;
    if let Some(vm) = &user {
        st.manager.resume_vm(vm).await;
    }
    let info = r?;
    tracing::info!(volume = %name, snapshot = %info.id, how = %info.how, quiesced = user.is_some(), "volume snapshot taken");
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn snapshots(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let store = st.volumes.clone();
    let v = blocking(move || store.list_snapshots(&name)).await?;
    Ok(Json(v).into_response())
}

pub async fn delete_snapshot(
    State(st): State<Arc<ApiState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = st.volumes.clone();
    if blocking(move || store.delete_snapshot(&name, &id)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "snapshot not found",
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupBody {
    backup_id: String,
    job_id: String,
}

pub async fn backup(
    State(st): State<Arc<ApiState>>,
    Path((name, id)): Path<(String, String)>,
    b: Result<Json<BackupBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = body(b, "{\"backup_id\": \"...\", \"job_id\": \"...\"}")?;
    let job = st.jobs.start(
        &b.job_id,
        &b.backup_id,
        JobKind::Backup {
            volume: name,
            snapshot: id,
        },
    )?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    #[serde(default)]
    from_volume: Option<String>,
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default)]
    backup_id: Option<String>,
    #[serde(default)]
    job_id: Option<String>,
}

pub async fn restore(
    State(st): State<Arc<ApiState>>,
    Path(name): Path<String>,
    b: Result<Json<RestoreBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let expected = "{\"from_volume\": \"...\", \"snapshot\": \"...\"} or {\"backup_id\": \"...\", \"job_id\": \"...\"}";
    let b = body(b, expected)?;
    match b {
        RestoreBody {
            from_volume: Some(from),
            snapshot: Some(snap),
            backup_id: None,
            job_id: None,
        } => {
            let store = st.volumes.clone();
            let n = name.clone();
            let path = blocking(move || store.restore_snapshot(&from, &snap, &n)).await?;
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            Ok((
                StatusCode::CREATED,
                Json(serde_json::json!({"volume": name, "size_bytes": size})),
            )
                .into_response())
        }
        RestoreBody {
            from_volume: None,
            snapshot: None,
            backup_id: Some(backup),
            job_id: Some(job),
        } => {
            let j = st
                .jobs
                .start(&job, &backup, JobKind::Restore { volume: name })?;
            Ok((StatusCode::ACCEPTED, Json(j)).into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("expected {expected}"),
        )),
    }
}

pub async fn job(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.jobs
        .get(&id)
        .map(|j| Json(j).into_response())
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "job not found"))
}

pub async fn backups(State(st): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let jobs = st.jobs.clone();
    let list = tokio::task::spawn_blocking(move || jobs.list_backups())
        .await
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })??;
    Ok(Json(list).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volumes::VolumeStore;

    /// Statuses come from the store's error kinds, not from its wording.
    #[test]
    fn store_errors_map_to_statuses() {
        let d = tempfile::tempdir().unwrap();
        let s = VolumeStore::new(d.path());
        let status = |e: BackendError| volume_error(e).into_response().status();
        assert_eq!(
            status(s.disk_path("../x").unwrap_err()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(s.take_snapshot("v", "s").unwrap_err()),
            StatusCode::NOT_FOUND
        );
        s.ensure_disk("v", 8 << 20).unwrap();
        s.take_snapshot("v", "s").unwrap();
        assert_eq!(
            status(s.take_snapshot("v", "s").unwrap_err()),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(s.restore_snapshot("v", "nope", "w").unwrap_err()),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(s.restore_snapshot("v", "s", "v").unwrap_err()),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(BackendError::new("volume", "disk full")),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
