//! The VM sandbox surface at the API root (`reference/scalebox-vm-api.md`): `/health`, `/info`,
//! `/caddy/check` (unauthenticated) and `/templates`, `/vms` (bearer token; a VM belongs to the
//! token's org). Thin handlers over `scalebox_sandbox::Sandbox`; its errors map to the API's.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use scalebox_sandbox::model::{CreateVm, SnapshotVm};
use scalebox_sandbox::{Kind, Sandbox, SandboxError};
use serde::Deserialize;

use super::extract::parse_json;
use crate::auth::Principal;
use crate::{ApiError, Control};

impl From<SandboxError> for ApiError {
    fn from(e: SandboxError) -> Self {
        let (status, code) = match e.kind {
            Kind::BadRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            Kind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Kind::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Kind::Conflict => (StatusCode::CONFLICT, "conflict"),
            Kind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Kind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.message)
    }
}

fn sandbox(c: &Control) -> Result<&Sandbox, ApiError> {
    c.sandbox.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "VM sandboxes are not enabled on this server (set `[vms] enabled = true` in the control plane config)",
        )
    })
}

/// `{"status":"ok","version","started_at","pid"}`: `scaleboxd update` tells a restarted daemon
/// (same pid after its re-exec) from the old one by `started_at`.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": started_at(),
        "pid": std::process::id(),
    }))
}

/// When this process image started serving (RFC 3339, nanoseconds): captured once, on the
/// first call (the first `/health`), so it changes with every start and re-exec.
fn started_at() -> &'static str {
    static STARTED_AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    STARTED_AT.get_or_init(|| {
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    })
}

pub async fn info(State(c): State<Control>) -> Result<Response, ApiError> {
    Ok(Json(sandbox(&c)?.info().await?).into_response())
}

#[derive(Deserialize)]
pub struct CheckQuery {
    #[serde(default)]
    domain: String,
}

/// 200 when `domain` is a live VM's `{name}.{vm_domain}`, else 404 (Caddy's on-demand TLS ask).
pub async fn caddy_check(
    State(c): State<Control>,
    Query(q): Query<CheckQuery>,
) -> Result<StatusCode, ApiError> {
    let ok = match c.sandbox.as_ref() {
        Some(s) => s.check_domain(&q.domain).await?,
        None => false,
    };
    if ok {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::not_found("domain"))
    }
}

pub async fn templates_list(
    State(c): State<Control>,
    p: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.can_read()?;
    let t = sandbox(&c)?.templates(p.org_id).await?;
    Ok(Json(serde_json::json!({ "templates": t })))
}

pub async fn templates_delete(
    State(c): State<Control>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.can_write()?;
    sandbox(&c)?
        .delete_template(p.org_id, p.operator, &name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn vms_list(
    State(c): State<Control>,
    p: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    p.can_read()?;
    let v = sandbox(&c)?.list(p.org_id).await?;
    Ok(Json(serde_json::json!({ "vms": v })))
}

pub async fn vms_get(
    State(c): State<Control>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    p.can_read()?;
    Ok(Json(sandbox(&c)?.get(p.org_id, &id).await?).into_response())
}

pub async fn vms_create(
    State(c): State<Control>,
    p: Principal,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.can_write()?;
    let body: CreateVm = parse_json(&body)?;
    let vm = sandbox(&c)?.create(p.org_id, body).await?;
    Ok((StatusCode::CREATED, Json(vm)).into_response())
}

pub async fn vms_delete(
    State(c): State<Control>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.can_write()?;
    sandbox(&c)?.delete(p.org_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn vms_snapshot(
    State(c): State<Control>,
    p: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    p.can_write()?;
    let body: SnapshotVm = parse_json(&body)?;
    let s = sandbox(&c)?.snapshot(p.org_id, &id, body).await?;
    Ok((StatusCode::CREATED, Json(s)).into_response())
}
