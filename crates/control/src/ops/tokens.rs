//! API tokens of an org (admin only). The token value is returned once, at creation.

use scalebox_store::Event;
use scalebox_store::events::TokenCreated;
use scalebox_types::api::{self, Role};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{check_name, parse_id, remove, ts};
use crate::auth::{Principal, generate_token, hash_token, token_prefix};
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

/// Appends the creation of a new token (for `org_id`, optionally bound to a host) and returns
/// its id and value; the value exists only in the caller's reply.
pub async fn append_token(
    tx: &tokio_postgres::Transaction<'_>,
    actor: &str,
    org_id: Uuid,
    name: &str,
    role: Role,
    host_id: Option<Uuid>,
) -> Result<(Uuid, String), ApiError> {
    let value = generate_token()?;
    let token_id = Uuid::new_v4();
    scalebox_store::log::append(
        tx,
        actor,
        Some(org_id),
        &format!("token:{token_id}"),
        0,
        &[Event::TokenCreated(TokenCreated {
            token_id,
            org_id,
            name: name.to_owned(),
            role: role.as_str().into(),
            hash: hash_token(&value),
            prefix: token_prefix(&value),
            host_id,
        })],
    )
    .await?;
    Ok((token_id, value))
}

fn token(r: &Row) -> api::Token {
    api::Token {
        id: r.get::<_, Uuid>(0).to_string(),
        name: r.get(1),
        role: Role::parse(r.get(2)).unwrap_or(Role::Reader),
        prefix: r.get(3),
        created_at: ts(r.get(4)),
    }
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
) -> Result<Vec<api::Token>, ApiError> {
    let org = p.org(org)?;
    p.must_admin()?;
    let rows = c
        .query(
            "SELECT id, name, role, prefix, created_at FROM v_tokens WHERE org_id = $1 AND host_id IS NULL ORDER BY created_at, id",
            &[&org],
        )
        .await?;
    Ok(rows.iter().map(token).collect())
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    body: api::CreateToken,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.must_admin()?;
    check_name("token name", &body.name)?;
    if body.role == Role::Join && !p.operator {
        return Err(ApiError::bad_request(
            "join tokens (for adding hosts) can only be created in the operator org",
        ));
    }
    if body.role == Role::Agent {
        return Err(ApiError::bad_request(
            "agent tokens are issued when a host is registered (POST /v1/hosts); choose admin, deployer or reader",
        ));
    }
    let p = p.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (token_id, value) =
                append_token(tx, &p.actor, org, &body.name, body.role, None).await?;
            let row = tx
                .query_one(
                    "SELECT id, name, role, prefix, created_at FROM v_tokens WHERE id = $1",
                    &[&token_id],
                )
                .await?;
            Ok(Reply::created(&api::TokenCreated {
                info: token(&row),
                token: value,
            }))
        })
    })
    .await
}

pub async fn revoke(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    id: &str,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.must_admin()?;
    let id = parse_id("token", id)?;
    let p = p.clone();
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let row = tx
                .query_opt(
                    "SELECT version FROM v_tokens WHERE id = $1 AND org_id = $2 AND host_id IS NULL FOR UPDATE",
                    &[&id, &org],
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("token {id}")))?;
            remove(tx, &p, "token", id, row.get(0), Event::TokenRevoked).await
        })
    })
    .await
}

/// Creates a token for org `org` straight in the database (the `scaleboxd control token create`
/// admin command, for when no admin token is at hand). Returns the token.
pub async fn create_direct(
    ctl: &Control,
    org: &str,
    role: &str,
    name: &str,
) -> Result<String, ApiError> {
    check_name("token name", name)?;
    let role = match Role::parse(role) {
        Some(r @ (Role::Admin | Role::Deployer | Role::Reader | Role::Join)) => r,
        _ => {
            return Err(ApiError::bad_request(format!(
                "role {role:?} is not one of admin, deployer, reader, join"
            )));
        }
    };
    let mut client = ctl.db.client().await?;
    let tx = client.transaction().await?;
    let row = tx
        .query_opt("SELECT id, operator FROM v_orgs WHERE name = $1", &[&org])
        .await?
        .ok_or_else(|| ApiError::not_found(format!("org {org:?}")))?;
    let org_id: Uuid = row.get(0);
    if role == Role::Join && !row.get::<_, bool>(1) {
        return Err(ApiError::bad_request(
            "join tokens belong to the operator org",
        ));
    }
    let (_, value) = append_token(&tx, "system:cli", org_id, name, role, None).await?;
    tx.commit().await?;
    Ok(value)
}
