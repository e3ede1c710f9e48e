//! Running a command: one transaction that validates, appends events (which update the views)
//! and records the idempotency result, so a command either fully happens or not at all, and a
//! retry with the same `Idempotency-Key` returns the first result without appending anything.

use std::pin::Pin;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::{ApiError, Control};

/// A command's result: status and JSON body (no body for 204).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    pub fn json(status: StatusCode, body: &impl Serialize) -> Reply {
        Reply {
            status,
            body: serde_json::to_value(body).expect("api types serialize"),
        }
    }
    pub fn created(body: &impl Serialize) -> Reply {
        Self::json(StatusCode::CREATED, body)
    }
    pub fn ok(body: &impl Serialize) -> Reply {
        Self::json(StatusCode::OK, body)
    }
    pub fn no_content() -> Reply {
        Reply {
            status: StatusCode::NO_CONTENT,
            body: Value::Null,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NO_CONTENT {
            self.status.into_response()
        } else {
            (self.status, axum::Json(self.body)).into_response()
        }
    }
}

/// What identifies a command for idempotency: the caller's key and a fingerprint of the request.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: Option<String>,
    pub fingerprint: String,
}

pub type TxFuture<'a> = Pin<Box<dyn Future<Output = Result<Reply, ApiError>> + Send + 'a>>;

async fn lookup(
    tx: &Transaction<'_>,
    org: Uuid,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Reply>, ApiError> {
    let row = tx
        .query_opt(
            "SELECT fingerprint, status, response FROM idempotency WHERE org_id = $1 AND key = $2",
            &[&org, &key],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let stored: String = row.get(0);
    if stored != fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request; use a new key for a new request",
        ));
    }
    let status: i32 = row.get(1);
    Ok(Some(Reply {
        status: StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
        body: row.get(2),
    }))
}

impl Control {
    /// Runs `f` in a transaction for org `org`, honouring idempotency.
    pub async fn command<F>(&self, org: Uuid, idem: &Idempotency, f: F) -> Result<Reply, ApiError>
    where
        F: for<'a> FnOnce(&'a Transaction<'a>) -> TxFuture<'a>,
    {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        if let Some(key) = &idem.key
            && let Some(r) = lookup(&tx, org, key, &idem.fingerprint).await?
        {
            return Ok(r);
        }
        let reply = match f(&tx).await {
            Ok(r) => r,
            Err(e) if e.status == StatusCode::CONFLICT && idem.key.is_some() => {
                // A concurrent first attempt with the same key may have caused the conflict.
                drop(tx);
                let tx = client.transaction().await?;
                let key = idem.key.as_deref().unwrap_or_default();
                return match lookup(&tx, org, key, &idem.fingerprint).await? {
                    Some(r) => Ok(r),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        if let Some(key) = &idem.key {
            let saved = tx
                .execute(
                    "INSERT INTO idempotency (org_id, key, fingerprint, status, response) VALUES ($1,$2,$3,$4,$5)
                     ON CONFLICT DO NOTHING",
                    &[&org, key, &idem.fingerprint, &(reply.status.as_u16() as i32), &reply.body],
                )
                .await?;
            if saved == 0 {
                // A concurrent retry with the same key committed first: drop our work, return theirs.
                drop(tx);
                let tx = client.transaction().await?;
                return lookup(&tx, org, key, &idem.fingerprint)
                    .await?
                    .ok_or_else(ApiError::internal);
            }
        }
        tx.commit().await?;
        self.poke();
        Ok(reply)
    }
}
