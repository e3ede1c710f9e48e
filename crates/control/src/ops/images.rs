//! Uploaded images: `sb deploy --image oci-archive:PATH` sends the archive here
//! (`PUT /v1/orgs/{org}/images/{digest}`); it is stored per org under
//! `<data_dir>/images/<org>/<hex>.tar` once its content proves to be that digest (every blob
//! verified), and releases name it `upload:<digest>`. Agents download it
//! (`GET /v1/agent/images/{digest}`) only while an instance on their host uses it.
//! Local host paths (`oci-archive:/…`, `oci:/…`) in releases are for the operator org only: a
//! tenant must not make an agent read files of the host.

use std::path::PathBuf;

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::auth::Principal;
use crate::{ApiError, Control};

/// `sha256:<64 hex>` → the hex part, else a 400.
pub fn digest_hex(digest: &str) -> Result<&str, ApiError> {
    digest
        .strip_prefix("sha256:")
        .filter(|_| super::releases::valid_digest(digest))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{:?} is not an image digest; expected sha256: followed by 64 lowercase hex digits",
                digest.chars().take(80).collect::<String>()
            ))
        })
}

fn path_of(ctl: &Control, org: Uuid, hex: &str) -> PathBuf {
    ctl.config
        .data_dir
        .join("images")
        .join(org.simple().to_string())
        .join(format!("{hex}.tar"))
}

/// Whether the org has uploaded `digest`.
pub fn exists(ctl: &Control, org: Uuid, digest: &str) -> Result<bool, ApiError> {
    Ok(path_of(ctl, org, digest_hex(digest)?).is_file())
}

/// `HEAD /v1/orgs/{org}/images/{digest}`: 200 when uploaded, else 404.
pub async fn head(ctl: &Control, p: &Principal, org: &str, digest: &str) -> Result<(), ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    if exists(ctl, org, digest)? {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("image {digest}")))
    }
}

/// `PUT /v1/orgs/{org}/images/{digest}`: stores the archive streamed in `body` after checking
/// its content is `digest`. Returns (created, size).
pub async fn put(
    ctl: &Control,
    p: &Principal,
    org: &str,
    digest: &str,
    body: Body,
) -> Result<(bool, u64), ApiError> {
    let org = p.org(org)?;
    p.can_write()?;
    let hex = digest_hex(digest)?.to_owned();
    let dst = path_of(ctl, org, &hex);
    if dst.is_file() {
        let size = std::fs::metadata(&dst).map(|m| m.len()).unwrap_or(0);
        return Ok((false, size));
    }
    let dir = dst.parent().expect("images dir").to_owned();
    let io = |e: std::io::Error| {
        tracing::error!(error = %e, "storing an uploaded image");
        ApiError::internal()
    };
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    let tmp = dir.join(format!(".{hex}.{}", Uuid::new_v4().simple()));
    let limit = ctl.config.image_upload_limit;
    let written = async {
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut stream = body.into_data_stream();
        let mut n: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(format!("the upload was interrupted: {e}; run the command again"))
            })?;
            n += chunk.len() as u64;
            if n > limit {
                return Err(ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("the image archive is larger than this server's image_upload_limit ({limit} bytes)"),
                ));
            }
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.sync_all().await.map_err(io)?;
        Ok::<u64, ApiError>(n)
    }
    .await;
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    // Every blob is verified while resolving; the digest must be the claimed one.
    let t2 = tmp.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        scalebox_image::oci::resolve(&scalebox_image::ImageSource::Archive { path: t2 })
            .map(|r| r.digest)
    })
    .await
    .map_err(|_| ApiError::internal())?;
    let check = match resolved {
        Ok(d) if d == digest => Ok(()),
        Ok(d) => Err(ApiError::bad_request(format!(
            "the archive holds image {d}, not {digest}"
        ))),
        Err(e) => {
            // The error names server paths: log it, tell the user what is wrong.
            tracing::info!(%org, digest, error = %e, "refused image upload");
            Err(ApiError::bad_request(
                "the upload is not a readable OCI or docker-save image archive (or it is truncated, or a blob does not match its digest)",
            ))
        }
    };
    if let Err(e) = check {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, &dst).await.map_err(io)?;
    tracing::info!(%org, digest, bytes = n, "image uploaded");
    Ok((true, n))
}

/// The file an agent may download: some instance on its host uses `upload:<digest>`.
pub async fn for_agent(ctl: &Control, p: &Principal, digest: &str) -> Result<PathBuf, ApiError> {
    let host = p.must_agent()?;
    let hex = digest_hex(digest)?.to_owned();
    let c = ctl.db.client().await?;
    let org: Uuid = c
        .query_opt(
            "SELECT i.org_id FROM instances i JOIN v_releases r ON r.id = i.release_id
             WHERE i.host_id = $1 AND r.image_ref = $2 LIMIT 1",
            &[&host, &format!("upload:{digest}")],
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("image {digest} for this host")))?
        .get(0);
    let path = path_of(ctl, org, &hex);
    if !path.is_file() {
        return Err(ApiError::not_found(format!("image {digest}")));
    }
    Ok(path)
}
