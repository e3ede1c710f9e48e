//! The local agent HTTP API (axum). Thin handlers: parse → manager → map. Every error uses the
//! one JSON shape `{"error": "...", "code": "..."}`; bodies reject unknown fields and are size
//! limited; every route requires `Authorization: Bearer <token>`.
//!
//! Routes: `PUT /v1/instances/{id}` (ensure), `POST /v1/instances/{id}/stop`,
//! `GET /v1/instances/{id}`, `GET /v1/instances`, `DELETE /v1/instances/{id}`,
//! `GET /v1/instances/{id}/logs?since=<offset>&follow=<bool>` (NDJSON, chunked; resume with
//! `since = last offset + 1`), `GET /metrics` (Prometheus text).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use scalebox_types::error::ErrorBody;
use serde::Deserialize;

use crate::logring::ReadResult;
use crate::manager::{EnsureOutcome, Manager, ManagerError};
use crate::metrics::Metrics;
use crate::spec::InstanceSpec;

/// Shared API state.
pub struct ApiState {
    pub manager: Arc<Manager>,
    pub metrics: Arc<Metrics>,
    /// The host's overlay, whose peers' health is part of `/metrics`.
    pub overlay: Option<Arc<crate::overlay::Overlay>>,
    pub token: String,
    pub volumes: crate::volumes::VolumeStore,
    pub jobs: Arc<crate::volume_jobs::Jobs>,
}

/// An API error: status + body.
pub struct ApiError(StatusCode, ErrorBody);

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, msg: impl Into<String>) -> Self {
        ApiError(
            status,
            ErrorBody {
                error: msg.into(),
                code: code.into(),
            },
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        let (s, c) = match &e {
            ManagerError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ManagerError::Stale { .. } => (StatusCode::CONFLICT, "conflict"),
            ManagerError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec"),
            ManagerError::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            ManagerError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(s, c, e.to_string())
    }
}

/// Builds the router.
pub fn router(state: Arc<ApiState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/instances", get(list))
        .route("/v1/instances/{id}", put(ensure).get(status).delete(delete))
        .route("/v1/instances/{id}/stop", post(stop))
        .route("/v1/instances/{id}/logs", get(logs))
        .route("/v1/instances/{id}/exec", post(exec))
        .route("/v1/instances/{id}/attach", get(attach))
        .route("/metrics", get(metrics))
        .route(
            "/v1/volumes/{name}/snapshots",
            get(crate::api_volumes::snapshots).post(crate::api_volumes::snapshot),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{id}",
            axum::routing::delete(crate::api_volumes::delete_snapshot),
        )
        .route(
            "/v1/volumes/{name}/snapshots/{id}/backup",
            post(crate::api_volumes::backup),
        )
        .route(
            "/v1/volumes/{name}/restore",
            post(crate::api_volumes::restore),
        )
        .route("/v1/volume-jobs/{id}", get(crate::api_volumes::job))
        .route("/v1/backups", get(crate::api_volumes::backups))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route; see docs/agent.md",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route; see docs/agent.md",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| ct_eq(t.trim().as_bytes(), st.token.as_bytes()));
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send `Authorization: Bearer <token>` with the agent's API token",
        )
        .into_response();
    }
    next.run(req).await
}

fn parse_spec(body: Result<Bytes, BytesRejection>) -> Result<InstanceSpec, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is larger than the agent's max_body_bytes",
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
        }
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json messages include the input position, never values of secrets.
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("invalid instance spec at `{path}`: {inner}"),
        )
    })
}

#[derive(serde::Serialize)]
struct EnsureResponse {
    outcome: EnsureOutcome,
    instance: crate::state::InstanceRecord,
}

async fn ensure(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let spec = parse_spec(body)?;
    let (outcome, rec) = st.manager.ensure(&id, spec).await?;
    let code = match outcome {
        EnsureOutcome::Unchanged => StatusCode::OK,
        _ => StatusCode::CREATED,
    };
    Ok((
        code,
        Json(EnsureResponse {
            outcome,
            instance: rec.public(),
        }),
    )
        .into_response())
}

async fn status(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let h = st.manager.handle(&id).await?;
    Ok(Json(h.record().public()).into_response())
}

async fn list(State(st): State<Arc<ApiState>>) -> Response {
    let l: Vec<_> = st.manager.list().await.iter().map(|r| r.public()).collect();
    Json(serde_json::json!({ "instances": l })).into_response()
}

async fn stop(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let r = st.manager.stop(&id).await?;
    Ok((StatusCode::ACCEPTED, Json(r.public())).into_response())
}

async fn delete(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    st.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn metrics(State(st): State<Arc<ApiState>>) -> Response {
    let samples = st.manager.samples().await;
    let mut text = st.metrics.render(&samples);
    if let Some(o) = &st.overlay {
        text.push_str(&o.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /v1/instances/{id}/attach` with `Connection: Upgrade` and `Upgrade: scalebox-exec`: an
/// interactive (tty) exec session speaking `scalebox_types::exec_frames` after the `101`.
async fn attach(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    use scalebox_types::exec_frames::PROTOCOL;
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wants {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "upgrade_required",
            format!("send `Connection: Upgrade` and `Upgrade: {PROTOCOL}`"),
        ));
    }
    // Fail before upgrading when the instance cannot run anything.
    st.manager.running_vm(&id).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let manager = st.manager.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => tty_session(manager, id, hyper_util::rt::TokioIo::new(up)).await,
            Err(e) => tracing::warn!(error = %e, "exec upgrade failed"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(Body::empty())
        .expect("static response"))
}

/// Runs one tty session over an upgraded connection.
async fn tty_session<S>(manager: Arc<Manager>, id: String, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use scalebox_types::exec_frames::{Decoder, Exit, Frame, encode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut dec = Decoder::default();
    let mut buf = vec![0u8; 16 * 1024];
    // The first frame says what to run.
    let start = loop {
        match dec.next_frame() {
            Ok(Some(Frame::Start(s))) => break s,
            Ok(Some(_)) | Err(_) => {
                let e = Exit {
                    error: Some("the first frame must be `start`".into()),
                    ..Exit::default()
                };
                let _ = wr.write_all(&encode(&Frame::Exit(e))).await;
                return;
            }
            Ok(None) => match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dec.push(&buf[..n]),
            },
        }
    };
    let mut session = match manager
        .exec_tty(&id, start.argv, start.rows, start.cols)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            let e = Exit {
                error: Some(e.to_string()),
                ..Exit::default()
            };
            let _ = wr.write_all(&encode(&Frame::Exit(e))).await;
            return;
        }
    };
    let control = session.control.clone();
    // Client → instance.
    let input = tokio::spawn(async move {
        loop {
            loop {
                match dec.next_frame() {
                    Ok(Some(Frame::Stdin(d))) => {
                        let _ = control.send(crate::backend::ExecControl::Input(d)).await;
                    }
                    Ok(Some(Frame::Resize { rows, cols })) => {
                        let _ = control
                            .send(crate::backend::ExecControl::Resize { rows, cols })
                            .await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => dec.push(&buf[..n]),
            }
        }
    });
    // Instance → client.
    while let Some(ev) = session.events.recv().await {
        let f = match ev {
            crate::backend::ExecEvent::Output { data, .. } => Frame::Output(data),
            crate::backend::ExecEvent::Exit {
                code,
                signal,
                error,
            } => Frame::Exit(Exit {
                code,
                signal,
                error,
            }),
        };
        let last = matches!(f, Frame::Exit(_));
        if wr.write_all(&encode(&f)).await.is_err() || last {
            break;
        }
    }
    let _ = wr.shutdown().await;
    input.abort();
}

/// `POST /v1/instances/{id}/exec` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    argv: Vec<String>,
    /// Seconds to wait for the command (1-3600, default 60).
    #[serde(default)]
    timeout_s: Option<u64>,
}

async fn exec(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    body: Result<Json<ExecBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "{}; expected {{\"argv\": [\"cmd\", ...], \"timeout_s\": 60}}",
                e.body_text()
            ),
        )
    })?;
    let t = b.timeout_s.unwrap_or(60).clamp(1, 3600);
    let r = st.manager.exec(&id, b.argv, Duration::from_secs(t)).await?;
    Ok(Json(r).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    follow: bool,
    /// Start about this many bytes before the end instead of at `since` (recent lines).
    #[serde(default)]
    tail_bytes: Option<u64>,
}

const CHUNK: usize = 64 * 1024;

async fn logs(
    State(st): State<Arc<ApiState>>,
    Path(id): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "{}; use ?since=<offset>|tail_bytes=<n>&follow=true|false",
                e.body_text()
            ),
        )
    })?;
    let h = st.manager.handle(&id).await?;
    let ring = h.logs.clone();
    let (ends, since) = {
        let r = ring.lock().unwrap_or_else(|p| p.into_inner());
        let since = match q.tail_bytes {
            Some(t) => r.end().saturating_sub(t).max(r.start()),
            None => q.since,
        };
        (r.subscribe(), since)
    };
    let follow = q.follow;
    let stream = futures_util::stream::unfold(
        (since, ends, h.watch()),
        move |(pos, mut ends, mut status)| {
            let ring = ring.clone();
            async move {
                loop {
                    ends.borrow_and_update();
                    let r2 = ring.clone();
                    let res = tokio::task::spawn_blocking(move || {
                        r2.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .read(pos, CHUNK)
                    })
                    .await;
                    let ReadResult {
                        entries,
                        next,
                        dropped,
                    } = match res {
                        Ok(Ok(r)) => r,
                        _ => return None,
                    };
                    if !entries.is_empty() || dropped > 0 {
                        let mut out = Vec::new();
                        if dropped > 0 {
                            out.extend_from_slice(
                                format!("{{\"dropped_bytes\":{dropped}}}\n").as_bytes(),
                            );
                        }
                        for e in &entries {
                            if let Ok(v) = serde_json::to_vec(e) {
                                out.extend_from_slice(&v);
                                out.push(b'\n');
                            }
                        }
                        let chunk = Ok::<_, std::io::Error>(Bytes::from(out));
                        return Some((chunk, (next, ends, status)));
                    }
                    let terminal = status.borrow_and_update().state.is_terminal();
                    if !follow || terminal {
                        return None;
                    }
                    tokio::select! {
                        _ = ends.changed() => {}
                        _ = status.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        },
    );
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
