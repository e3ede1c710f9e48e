//! Releases: immutable (image digest + manifest hash + normalised manifest), numbered per app.
//! The manifest is validated strictly; its process types are recorded with the release.

use scalebox_store::Event;
use scalebox_store::events::{ProcessTypeSpec, ReleaseCreated};
use scalebox_types::api;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use super::{app_id, append, ts};
use crate::auth::Principal;
use crate::command::{Idempotency, Reply};
use crate::{ApiError, Control};

const COLS: &str = "r.id, a.name, r.number, r.image_ref, r.image_digest, r.manifest_hash, r.manifest, r.created_at";
const FROM: &str = "v_releases r JOIN v_apps a ON a.id = r.app_id";

async fn release(c: &impl GenericClient, r: &Row) -> Result<api::Release, ApiError> {
    let id: Uuid = r.get(0);
    let pts = c
        .query(
            "SELECT name, spec FROM v_process_types WHERE release_id = $1 ORDER BY name",
            &[&id],
        )
        .await?;
    Ok(api::Release {
        id: id.to_string(),
        app: r.get(1),
        number: r.get(2),
        image_ref: r.get(3),
        image_digest: r.get(4),
        manifest_hash: r.get(5),
        manifest: r.get(6),
        process_types: pts
            .iter()
            .map(|p| api::ProcessType {
                name: p.get(0),
                spec: p.get(1),
            })
            .collect(),
        created_at: ts(r.get(7)),
    })
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    app: &str,
) -> Result<Vec<api::Release>, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let (app_id, _) = app_id(c, org, app).await?;
    let rows = c
        .query(&format!("SELECT {COLS} FROM {FROM} WHERE r.org_id = $1 AND r.app_id = $2 ORDER BY r.number DESC"), &[&org, &app_id])
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(release(c, r).await?);
    }
    Ok(out)
}

/// A release by number (`3` or `v3`) or id.
pub async fn get(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    app: &str,
    which: &str,
) -> Result<api::Release, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let (app_id, _) = app_id(c, org, app).await?;
    let not_found = || ApiError::not_found(format!("release {which:?} of app {app:?}"));
    let row = if let Ok(n) = which.trim_start_matches('v').parse::<i64>() {
        c.query_opt(
            &format!(
                "SELECT {COLS} FROM {FROM} WHERE r.org_id = $1 AND r.app_id = $2 AND r.number = $3"
            ),
            &[&org, &app_id, &n],
        )
        .await?
    } else {
        let id = Uuid::parse_str(which).map_err(|_| not_found())?;
        c.query_opt(
            &format!(
                "SELECT {COLS} FROM {FROM} WHERE r.org_id = $1 AND r.app_id = $2 AND r.id = $3"
            ),
            &[&org, &app_id, &id],
        )
        .await?
    };
    release(c, &row.ok_or_else(not_found)?).await
}

/// Where an image may come from: an upload of this org (`upload:<digest>`, the release's
/// digest), a registry, or (operator org only) a path on the hosts.
fn check_image_ref(
    ctl: &Control,
    p: &Principal,
    org: Uuid,
    image_ref: &str,
    digest: &str,
) -> Result<(), ApiError> {
    if let Some(d) = image_ref.strip_prefix("upload:") {
        if d != digest {
            return Err(ApiError::bad_request(format!(
                "image_ref {image_ref:?} names another image than image_digest {digest:?}"
            )));
        }
        if !super::images::exists(ctl, org, d)? {
            return Err(ApiError::bad_request(format!(
                "image {d} was not uploaded to this org; upload it first (`sb deploy --image oci-archive:PATH` does)"
            )));
        }
        return Ok(());
    }
    let host_path = ["oci-archive:", "docker-archive:", "archive:", "oci:"]
        .iter()
        .any(|p| image_ref.starts_with(p));
    if host_path && !p.operator {
        return Err(ApiError::bad_request(format!(
            "image_ref {image_ref:?} is a path on the hosts, which only the operator org may use; \
             upload the archive instead (`sb deploy --image oci-archive:PATH` uploads it)"
        )));
    }
    Ok(())
}

pub async fn create(
    ctl: &Control,
    p: &Principal,
    idem: &Idempotency,
    org: &str,
    app: &str,
    body: api::CreateRelease,
) -> Result<Reply, ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    if !valid_digest(&body.image_digest) {
        return Err(ApiError::bad_request(format!(
            "image_digest {:?} is not a content digest; expected `sha256:` followed by 64 lowercase hex digits",
            body.image_digest.chars().take(100).collect::<String>()
        )));
    }
    if body.image_ref.trim().is_empty() || body.image_ref.len() > 500 {
        return Err(ApiError::bad_request(
            "image_ref must be a non-empty image reference of at most 500 characters",
        ));
    }
    check_image_ref(ctl, p, org, &body.image_ref, &body.image_digest)?;
    let manifest = scalebox_manifest::parse(&body.manifest).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_manifest",
            format!("invalid manifest: {e}"),
        )
    })?;
    let normalized: serde_json::Value =
        serde_json::from_str(&manifest.normalized_json()).map_err(|_| ApiError::internal())?;
    let hash = manifest.content_hash();
    let process_types: Vec<ProcessTypeSpec> = normalized
        .get("processes")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| ProcessTypeSpec {
                    name: k.clone(),
                    spec: v.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let (p, app) = (p.clone(), app.to_owned());
    ctl.command(org, idem, move |tx| {
        Box::pin(async move {
            let (app_id, _) = app_id(tx, org, &app).await?;
            // Serialise release numbering per app.
            let row = tx
                .query_one(
                    "SELECT release_count FROM v_apps WHERE id = $1 FOR UPDATE",
                    &[&app_id],
                )
                .await?;
            let number: i64 = row.get::<_, i64>(0) + 1;
            let id = Uuid::new_v4();
            append(
                tx,
                &p,
                format!("release:{id}"),
                0,
                None,
                &[Event::ReleaseCreated(ReleaseCreated {
                    release_id: id,
                    org_id: org,
                    app_id,
                    number,
                    image_ref: body.image_ref,
                    image_digest: body.image_digest,
                    manifest_hash: hash,
                    manifest: normalized,
                    process_types,
                })],
            )
            .await?;
            let row = tx
                .query_one(
                    &format!("SELECT {COLS} FROM {FROM} WHERE r.id = $1"),
                    &[&id],
                )
                .await?;
            Ok(Reply::created(&release(tx, &row).await?))
        })
    })
    .await
}
