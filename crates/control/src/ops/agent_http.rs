//! One request from the control plane to a host agent's API (blocking `ureq` on a blocking
//! task): bearer auth, JSON in and out, the agent's status kept for the caller to map.

use std::time::Duration;

use serde_json::Value;

use crate::ApiError;

/// One request to a host agent's API: (status, JSON body).
pub async fn call(
    method: &'static str,
    url: String,
    token: String,
    body: Option<Value>,
    timeout: Duration,
    unreachable: &'static str,
) -> Result<(u16, Value), ApiError> {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(timeout))
            .build()
            .into();
        let auth = format!("Bearer {token}");
        let r = match body {
            Some(b) => agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            None if method == "DELETE" => agent.delete(&url).header("Authorization", &auth).call(),
            None => agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = r.map_err(|e| {
            tracing::warn!(error = %e, "{unreachable}");
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "agent_unreachable",
                unreachable,
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    })
    .await
    .map_err(|_| ApiError::internal())?
}
