//! Bearer tokens: generation, hashing (only SHA-256 hashes are stored), and resolving a request's
//! token to the principal it acts as. Every org-scoped lookup goes through [`Principal::org`],
//! which answers 404 for any org but the token's own.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use scalebox_types::api::Role;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::random_bytes;
use crate::{ApiError, Control};

/// A new random token (`sbx_` + 64 hex characters).
pub fn generate_token() -> Result<String, ApiError> {
    let bytes = random_bytes::<32>().map_err(|e| {
        tracing::error!(error = %e, "rng");
        ApiError::internal()
    })?;
    Ok(format!("sbx_{}", hex::encode(bytes)))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The shown-to-humans part of a token.
pub fn token_prefix(token: &str) -> String {
    token.chars().take(12).collect()
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: Uuid,
    pub org_id: Uuid,
    pub org_name: String,
    pub operator: bool,
    pub role: Role,
    pub host_id: Option<Uuid>,
    /// Recorded as the actor of events: `token:<name>`.
    pub actor: String,
}

impl Principal {
    /// The token's org if `name` is it; 404 otherwise (other orgs do not exist for this caller).
    pub fn org(&self, name: &str) -> Result<Uuid, ApiError> {
        if name == self.org_name {
            Ok(self.org_id)
        } else {
            Err(ApiError::not_found(format!("org {name:?}")))
        }
    }

    /// Requires a role allowed to change resources (admin or deployer).
    pub fn can_write(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Deployer => Ok(()),
            _ => Err(ApiError::forbidden(format!(
                "this token has role {}; changing resources needs a deployer or admin token",
                self.role.as_str()
            ))),
        }
    }

    /// Requires an admin token.
    pub fn must_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this token has role {}; this needs an admin token",
                self.role.as_str()
            )))
        }
    }

    /// Requires an admin of the operator org (host management).
    pub fn must_operator(&self) -> Result<(), ApiError> {
        if self.operator && self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "managing hosts needs an admin token of the operator org",
            ))
        }
    }

    /// Requires a host agent credential.
    pub fn must_agent(&self) -> Result<Uuid, ApiError> {
        match (self.role, self.host_id) {
            (Role::Agent, Some(h)) => Ok(h),
            _ => Err(ApiError::forbidden("this endpoint is for host agents")),
        }
    }

    /// Any role but `agent` and `join` may read org resources.
    pub fn can_read(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Agent => Err(ApiError::forbidden(
                "agent tokens cannot read org resources",
            )),
            Role::Join => Err(ApiError::forbidden(
                "join tokens only join hosts (POST /v1/agent/join)",
            )),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<Control> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Control) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "missing Authorization header; send `Authorization: Bearer <token>`",
                )
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("malformed Authorization header; expected `Bearer <token>`")
            })?;
        let client = state.db.client().await?;
        let row = client
            .query_opt(
                "SELECT t.id, t.org_id, o.name, o.operator, t.role, t.name, t.host_id
                 FROM v_tokens t JOIN v_orgs o ON o.id = t.org_id WHERE t.hash = $1",
                &[&hash_token(token)],
            )
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))?;
        let role: String = row.get(4);
        let name: String = row.get(5);
        Ok(Principal {
            token_id: row.get(0),
            org_id: row.get(1),
            org_name: row.get(2),
            operator: row.get(3),
            role: Role::parse(&role).ok_or_else(ApiError::internal)?,
            host_id: row.get(6),
            actor: format!("token:{name}"),
        })
    }
}
