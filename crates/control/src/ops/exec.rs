//! Running a command inside one instance of an environment (`sb exec web -- ls /`): the control
//! plane authorises the caller (deployers and admins of the org), picks the instance, and asks
//! that instance's host agent to run it through init's control channel. The command line is
//! not logged (it may hold secrets); who ran something in which instance is.

use std::time::Duration;

use scalebox_types::api;
use tokio_postgres::GenericClient;

use super::{EnvPath, env_id};
use crate::ApiError;
use crate::auth::Principal;

pub async fn run(
    c: &impl GenericClient,
    p: &Principal,
    at: EnvPath<'_>,
    body: api::ExecRequest,
) -> Result<api::ExecResult, ApiError> {
    p.org(at.org)?;
    p.can_write()?;
    if body.argv.is_empty() || body.argv.len() > 1024 {
        return Err(ApiError::bad_request(
            "argv must hold the command and its arguments (1-1024 items), e.g. [\"ls\", \"/\"]",
        ));
    }
    let timeout = body.timeout_s.unwrap_or(60);
    if !(1..=3600).contains(&timeout) {
        return Err(ApiError::bad_request(
            "timeout_s must be between 1 and 3600",
        ));
    }
    let (id, url, token) = target(c, p, at, body.process.clone(), body.instance.clone()).await?;
    tracing::info!(actor = %p.actor, instance = %id, "exec");
    let req = serde_json::json!({"argv": body.argv, "timeout_s": timeout});
    let path = format!("{}/v1/instances/{id}/exec", url.trim_end_matches('/'));
    let (status, v) = super::agent_http::call(
        "POST",
        path,
        token,
        Some(req),
        Duration::from_secs(timeout + 15),
        "the instance's host agent is unreachable",
    )
    .await?;
    if status == 409 {
        return Err(ApiError::conflict(format!(
            "instance {id} is not running: {}",
            v["error"].as_str().unwrap_or("")
        )));
    }
    if status != 200 {
        tracing::warn!(instance = %id, status, "exec refused by the host agent");
        if status == 422 {
            return Err(unsupported(&id, v["error"].as_str().unwrap_or("")));
        }
        return Err(ApiError::new(
            axum::http::StatusCode::BAD_GATEWAY,
            "agent_error",
            format!(
                "the host agent answered {status}: {}",
                v["error"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(api::ExecResult {
        instance: id,
        stdout: v["stdout"].as_str().unwrap_or("").to_owned(),
        stderr: v["stderr"].as_str().unwrap_or("").to_owned(),
        exit_code: v["exit_code"].as_i64().map(|c| c as i32),
        signal: v["signal"].as_i64().map(|c| c as i32),
        error: v["error"].as_str().map(str::to_owned),
        timed_out: v["timed_out"].as_bool().unwrap_or(false),
        truncated: v["truncated"].as_bool().unwrap_or(false),
    })
}

/// The instance a command (or an interactive session) runs in, and its host agent: (instance,
/// agent URL, agent token). Deployers and admins only; the given instance, else the first
/// ready instance of the process type (default `web`).
pub async fn target(
    c: &impl GenericClient,
    p: &Principal,
    at: EnvPath<'_>,
    process: Option<String>,
    instance: Option<String>,
) -> Result<(String, String, String), ApiError> {
    let org = p.org(at.org)?;
    p.can_write()?;
    let (_, env, _) = env_id(c, org, at.app, at.env).await?;
    let process = process.unwrap_or_else(|| "web".into());
    let row = c
        .query_opt(
            "SELECT i.id, s.api_url, s.api_token FROM instances i
             LEFT JOIN host_status s ON s.host_id = i.host_id
             WHERE i.env_id = $1 AND i.org_id = $2 AND i.desired = 'run'
               AND (($3::text IS NOT NULL AND i.id = $3) OR ($3::text IS NULL AND i.process_type = $4))
             ORDER BY (i.state = 'ready') DESC, i.seq LIMIT 1",
            &[&env, &org, &instance, &process],
        )
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "a running {} instance in environment {:?} (see `sb ps`)",
                instance.as_deref().unwrap_or(&process),
                at.env
            ))
        })?;
    match (
        row.get::<_, Option<String>>(1),
        row.get::<_, Option<String>>(2),
    ) {
        (Some(u), Some(t)) => Ok((row.get(0), u, t)),
        _ => Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the instance's host has not reported its agent API yet; retry in a few seconds",
        )),
    }
}

/// Opens the agent side of an interactive session: connects to the agent's API, asks for the
/// upgrade, and returns the connection once the agent answered `101`.
pub async fn connect_agent(
    url: &str,
    token: &str,
    instance: &str,
) -> Result<tokio::net::TcpStream, ApiError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bad = |m: String| {
        tracing::warn!(instance, error = %m, "interactive exec: host agent");
        ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "agent_error", m)
    };
    let hostport = url
        .strip_prefix("http://")
        .ok_or_else(|| bad(format!("agent API {url:?} is not plain http")))?
        .trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .map_err(|e| bad(format!("the instance's host agent is unreachable: {e}")))?;
    let req = format!(
        "GET /v1/instances/{instance}/attach HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: {}\r\n\r\n",
        scalebox_types::exec_frames::PROTOCOL
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| bad(e.to_string()))?;
    // Read the response head byte by byte so nothing after it is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || s.read(&mut b).await.map_err(|e| bad(e.to_string()))? == 0 {
            return Err(bad("the host agent closed the connection".into()));
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    match status {
        "101" => Ok(s),
        "409" => Err(ApiError::conflict(format!(
            "instance {instance} is not running"
        ))),
        "422" => Err(unsupported(instance, "")),
        other => Err(bad(format!(
            "the host agent answered {other} to the exec upgrade"
        ))),
    }
}

/// The agent's 422: the host's backend cannot run commands inside instances (e.g. the process
/// backend). Not a server fault: the caller asked for something this host does not offer.
fn unsupported(instance: &str, why: &str) -> ApiError {
    let why = if why.is_empty() {
        "its backend cannot run commands inside instances"
    } else {
        why
    };
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "exec_unsupported",
        format!("instance {instance}'s host cannot run commands: {why}"),
    )
}
