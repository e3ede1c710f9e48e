//! Secret bundles per (org, app, env) with immutable versions. Values are encrypted at rest
//! (`secret_material`), never put in events, logs or error messages, and only returned to host
//! agents fetching a version for an instance.

use std::collections::BTreeMap;

use scalebox_store::Event;
use scalebox_store::events::SecretsVersionCreated;
use scalebox_types::api;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{EnvPath, append, env_id, parse_id, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

/// Secret names are environment-variable names.
pub fn check_secret_name(n: &str) -> Result<(), ApiError> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "secret name {:?} is invalid: use letters, digits and '_' (not starting with a digit), at most 128 characters",
            n.chars().take(140).collect::<String>()
        )))
    }
}

fn aad(org: Uuid, env: Uuid, version: i64) -> String {
    format!("{org}/{env}/{version}")
}

async fn current_names(
    c: &impl GenericClient,
    env: Uuid,
    version: i64,
) -> Result<Vec<String>, ApiError> {
    if version == 0 {
        return Ok(Vec::new());
    }
    let row = c
        .query_one(
            "SELECT names FROM v_secret_versions WHERE env_id = $1 AND version = $2",
            &[&env, &version],
        )
        .await?;
    Ok(serde_json::from_value(row.get(0)).unwrap_or_default())
}

pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    app: &str,
    env: &str,
) -> Result<api::Secrets, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let (_, env_id, _) = env_id(c, org, app, env).await?;
    let v: i64 = c
        .query_one(
            "SELECT secrets_version FROM v_envs WHERE id = $1",
            &[&env_id],
        )
        .await?
        .get(0);
    Ok(api::Secrets {
        app: app.into(),
        env: env.into(),
        version: v,
        names: current_names(c, env_id, v).await?,
    })
}

pub async fn versions(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    app: &str,
    env: &str,
) -> Result<Vec<api::SecretsVersion>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let (_, env_id, _) = env_id(c, org, app, env).await?;
    let rows = c
        .query(
            "SELECT version, names, actor, created_at FROM v_secret_versions WHERE env_id = $1 ORDER BY version DESC",
            &[&env_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| api::SecretsVersion {
            version: r.get(0),
            names: serde_json::from_value(r.get(1)).unwrap_or_default(),
            actor: r.get(2),
            created_at: ts(r.get(3)),
        })
        .collect())
}

pub(crate) async fn material(
    ctl: &Control,
    c: &impl GenericClient,
    org: Uuid,
    env: Uuid,
    version: i64,
) -> Result<BTreeMap<String, String>, ApiError> {
    if version == 0 {
        return Ok(BTreeMap::new());
    }
    let row = c
        .query_opt(
            "SELECT m.nonce, m.ciphertext FROM v_secret_versions v JOIN secret_material m ON m.id = v.material_id
             WHERE v.env_id = $1 AND v.version = $2 AND m.org_id = $3",
            &[&env, &version, &org],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("secrets version {version}")))?;
    ctl.secrets_key
        .open(&aad(org, env, version), row.get(0), row.get(1))
        .map_err(|e| {
            tracing::error!(error = %e, env = %env, version, "cannot decrypt secrets");
            ApiError::internal()
        })
}

pub async fn update(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    at: EnvPath<'_>,
    body: api::UpdateSecrets,
    if_match: Option<i64>,
) -> Result<Reply, ApiError> {
    let EnvPath { org, app, env } = at;
    let org = p.org(org)?;
    p.can_write()?;
    for n in body.set.keys().chain(body.unset.iter()) {
        check_secret_name(n)?;
    }
    if let Some(n) = body
        .set
        .iter()
        .find(|(_, v)| v.contains('\0'))
        .map(|(n, _)| n)
    {
        return Err(ApiError::bad_request(format!(
            "secret {n}: values cannot contain NUL bytes"
        )));
    }
    if let Some(n) = body.unset.iter().find(|n| body.set.contains_key(*n)) {
        return Err(ApiError::bad_request(format!(
            "secret {n} is both set and unset in one request"
        )));
    }
    let expected = body.expected_version.or(if_match);
    let (p, app, env, ctl2) = (p.clone(), app.to_owned(), env.to_owned(), ctl.clone());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (_, env_id, _) = env_id(tx, org, &app, &env).await?;
            let row = tx.query_one("SELECT secrets_version, version FROM v_envs WHERE id = $1 FOR UPDATE", &[&env_id]).await?;
            let (current, env_version): (i64, i64) = (row.get(0), row.get(1));
            if let Some(e) = expected
                && e != current
            {
                return Err(ApiError::conflict(format!(
                    "stale secrets version: you sent {e} but the current version is {current}; reload and retry"
                )));
            }
            let mut values = material(&ctl2, tx, org, env_id, current).await?;
            let before = values.clone();
            for n in &body.unset {
                values.remove(n);
            }
            values.extend(body.set);
            if values == before && current > 0 {
                let names = values.keys().cloned().collect();
                return Ok(Reply::ok(&api::Secrets { app, env, version: current, names }));
            }
            let version = current + 1;
            let (nonce, ct) = ctl2.secrets_key.seal(&aad(org, env_id, version), &values).map_err(|_| ApiError::internal())?;
            let material_id = Uuid::new_v4();
            tx.execute(
                "INSERT INTO secret_material (id, org_id, nonce, ciphertext) VALUES ($1, $2, $3, $4)",
                &[&material_id, &org, &nonce, &ct],
            )
            .await?;
            let names: Vec<String> = values.keys().cloned().collect();
            append(
                tx,
                &p,
                format!("env:{env_id}"),
                env_version,
                None,
                &[Event::SecretsVersionCreated(SecretsVersionCreated {
                    org_id: org,
                    env_id,
                    version,
                    names: names.clone(),
                    material_id,
                })],
            )
            .await?;
            Ok(Reply::created(&api::Secrets { app, env, version, names }))
        })
    })
    .await
}

/// Secret values of `version` of env `env_id`, for a host agent.
pub async fn material_for_agent(
    ctl: &Control,
    c: &impl GenericClient,
    p: &Principal,
    env_id: &str,
    version: i64,
) -> Result<api::SecretsMaterial, ApiError> {
    let host = p.must_agent()?;
    let env = parse_id("environment", env_id)?;
    // A host reads the secrets of environments it runs instances of, nothing else.
    let org: Uuid = c
        .query_opt(
            "SELECT e.org_id FROM v_envs e WHERE e.id = $1
               AND EXISTS (SELECT 1 FROM instances i WHERE i.env_id = e.id AND i.host_id = $2)",
            &[&env, &host],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("environment {env_id}")))?
        .get(0);
    let values = material(ctl, c, org, env, version).await?;
    tracing::info!(env = %env, version, actor = %p.actor, "secrets version fetched by agent");
    Ok(api::SecretsMaterial { version, values })
}
