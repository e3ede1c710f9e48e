//! Instance logs of an environment, streamed through the control plane from the host agents'
//! local APIs (`GET /v1/instances/{id}/logs` there). Each line is the agent's NDJSON record with
//! the instance and process type added. Readers of the org only; instances of other orgs and
//! envs are not found.

use std::io::BufRead;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio_postgres::GenericClient;

use super::{EnvPath, env_id};
use crate::ApiError;
use crate::auth::Principal;

/// What to stream.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Only this process type (e.g. `web`; `release` for release command runs).
    pub process: Option<String>,
    /// Only this instance.
    pub instance: Option<String>,
    /// Keep streaming new lines (default false: recent lines, then the end).
    #[serde(default)]
    pub follow: bool,
    /// How much recent output to start with, in bytes per instance (default 16384).
    pub tail_bytes: Option<u64>,
}

struct Source {
    id: String,
    process: String,
    url: String,
    token: String,
}

/// Streams the logs of the environment's instances (or one of them).
pub async fn stream(
    c: &impl GenericClient,
    p: &Principal,
    at: EnvPath<'_>,
    q: LogsQuery,
) -> Result<Response, ApiError> {
    let org = p.org(at.org)?;
    p.can_read()?;
    let (_, env, _) = env_id(c, org, at.app, at.env).await?;
    let rows = c
        .query(
            "SELECT i.id, i.process_type, s.api_url, s.api_token FROM instances i
             LEFT JOIN host_status s ON s.host_id = i.host_id
             WHERE i.env_id = $1 AND i.org_id = $2
               AND ($3::text IS NULL OR i.process_type = $3)
               AND ($4::text IS NULL OR i.id = $4)
             ORDER BY i.process_type, i.seq",
            &[&env, &org, &q.process, &q.instance],
        )
        .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(match (&q.instance, &q.process) {
            (Some(i), _) => format!("instance {i:?} in environment {:?}", at.env),
            (None, Some(pt)) => format!(
                "instances of process type {pt:?} in environment {:?} (see `sb ps`)",
                at.env
            ),
            (None, None) => format!("instances in environment {:?}", at.env),
        }));
    }
    let mut sources = Vec::new();
    for r in &rows {
        let (Some(url), Some(token)) = (r.get::<_, Option<String>>(2), r.get(3)) else {
            continue;
        };
        sources.push(Source {
            id: r.get(0),
            process: r.get(1),
            url,
            token,
        });
    }
    if sources.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the hosts of these instances have not reported their agent API yet; retry in a few seconds",
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let tail = q.tail_bytes.unwrap_or(16 * 1024).min(16 << 20);
    for s in sources {
        let tx = tx.clone();
        let follow = q.follow;
        tokio::task::spawn_blocking(move || pump(s, follow, tail, tx));
    }
    drop(tx);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

/// Reads one instance's log stream from its agent and forwards tagged lines until the agent
/// ends it or the client goes away.
fn pump(s: Source, follow: bool, tail: u64, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(5)))
        .build()
        .into();
    let url = format!(
        "{}/v1/instances/{}/logs?follow={follow}&tail_bytes={tail}",
        s.url.trim_end_matches('/'),
        s.id
    );
    let line = |v: Value| {
        let mut b = serde_json::to_vec(&v).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    let resp = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {}", s.token))
        .call();
    let mut resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let msg = format!(
                "the host agent answered {} for this instance's logs",
                r.status()
            );
            let _ = tx.blocking_send(line(serde_json::json!({"instance": s.id, "error": msg})));
            return;
        }
        Err(e) => {
            tracing::warn!(instance = %s.id, error = %e, "cannot reach the host agent for logs");
            let _ = tx.blocking_send(line(serde_json::json!({
                "instance": s.id, "error": "the host agent is unreachable"
            })));
            return;
        }
    };
    let reader = std::io::BufReader::new(resp.body_mut().as_reader());
    for l in reader.lines() {
        let Ok(l) = l else { break };
        let Ok(mut v) = serde_json::from_str::<Value>(&l) else {
            continue;
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("instance".into(), Value::String(s.id.clone()));
            o.insert("process".into(), Value::String(s.process.clone()));
        }
        if tx.blocking_send(line(v)).is_err() {
            break;
        }
    }
}
