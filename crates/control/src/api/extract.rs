//! Request extraction with the API's error shape: strict JSON bodies (unknown fields, wrong
//! types and malformed JSON are 400s naming the field), the body size limit (413), and the
//! idempotency key and fingerprint of a command.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::command::Idempotency;
use crate::{ApiError, Control};

/// A command request: the parsed body plus its idempotency identity. An empty body parses as `{}`.
pub struct Cmd<T> {
    pub body: T,
    pub idem: Idempotency,
    pub if_match: Option<i64>,
}

/// Body of commands that take none (deletes).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Parses a JSON body strictly, naming the offending field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if inner.is_syntax() || inner.is_eof() {
            format!("request body is not valid JSON: {inner}")
        } else if path == "." {
            format!("invalid request body: {inner}")
        } else {
            format!("invalid request body: field `{path}`: {inner}")
        };
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", msg)
    })
}

fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_matches('"'))
        .and_then(|s| s.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request("If-Match must be a resource version number, e.g. `If-Match: 3`")
        })
}

impl<T: DeserializeOwned> FromRequest<Control> for Cmd<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Control) -> Result<Self, ApiError> {
        let headers = req.headers().clone();
        let method = req.method().clone();
        let uri = req.uri().path().to_owned();
        let key = match headers.get("idempotency-key") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .filter(|s| !s.is_empty() && s.len() <= 200)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "Idempotency-Key must be 1-200 visible ASCII characters",
                        )
                    })?
                    .to_owned(),
            ),
        };
        let if_match = if_match(&headers)?;
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!(
                        "request body is larger than the {} byte limit",
                        state.config.body_limit
                    ),
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {e}"))
            }
        })?;
        if !bytes.is_empty()
            && let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE)
            && !ct.to_str().unwrap_or("").starts_with("application/json")
        {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be JSON (Content-Type: application/json)",
            ));
        }
        let body = parse_json(&bytes)?;
        let mut h = Sha256::new();
        h.update(method.as_str());
        h.update([0]);
        h.update(&uri);
        h.update([0]);
        h.update(&bytes);
        Ok(Cmd {
            body,
            idem: Idempotency {
                key,
                fingerprint: hex::encode(h.finalize()),
            },
            if_match,
        })
    }
}
