//! Uploaded images: `sb deploy --image oci-archive:PATH` (or `oci:DIR`, packed) sends the archive
//! here (`PUT /v1/orgs/{org}/images/{digest}`); it is stored per org under
//! `<data_dir>/images/<org>/<hex>.tar` once its content proves to be that digest (every blob
//! verified), and releases name it `upload:<digest>`. An upload may come in pieces and resume
//! after an interruption from what the server already has ([`super::image_upload`]): `HEAD`
//! tells the offset, a `PUT` with `Content-Range` continues there. Agents download an image
//! (`GET /v1/agent/images/{digest}`) only while an instance on their host uses it.
//! Local host paths (`oci-archive:/…`, `oci:/…`) in releases are for the operator org only: a
//! tenant must not make an agent read files of the host.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::SystemTime;

use axum::body::Body;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::image_upload;

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

/// What the server has of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// Uploaded and verified.
    Stored,
    /// `offset` bytes of an archive of `total` received so far.
    Partial {
        offset: u64,
        total: u64,
    },
    Missing,
}

/// `HEAD /v1/orgs/{org}/images/{digest}`: stored (200), or not (404, with the offset of a partial
/// upload to resume from).
pub async fn head(ctl: &Control, p: &Principal, org: &str, digest: &str) -> Result<Head, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let hex = digest_hex(digest)?.to_owned();
    if path_of(ctl, org, &hex).is_file() {
        return Ok(Head::Stored);
    }
    let dir = image_upload::root(&ctl.config.data_dir).join(org.simple().to_string());
    let partial = blocking(move || image_upload::find(&dir, &hex, SystemTime::now(), false))
        .await?
        .map_err(io)?;
    Ok(match partial {
        Some(p) => Head::Partial {
            offset: p.len,
            total: p.total,
        },
        None => Head::Missing,
    })
}

/// What a `PUT` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// The image is stored (`created`: by this request), `size` bytes.
    Stored { created: bool, size: u64 },
    /// The piece was kept; the upload goes on from `offset` of `total`.
    Partial { offset: u64, total: u64 },
}

/// A refused `PUT`; `offset`, when known, is where the upload can go on from (the
/// `Upload-Offset` header).
#[derive(Debug)]
pub struct PutError {
    pub error: ApiError,
    pub offset: Option<u64>,
}

impl From<ApiError> for PutError {
    fn from(error: ApiError) -> Self {
        PutError {
            error,
            offset: None,
        }
    }
}

fn io(e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "storing an uploaded image");
    ApiError::internal()
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal())
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the image archive is larger than this server's image_upload_limit ({limit} bytes)"
        ),
    )
}

/// `PUT /v1/orgs/{org}/images/{digest}`: writes the piece of the archive streamed in `body`
/// (`content_range`, else the whole archive of `content_length` bytes), and once the archive is
/// complete stores it after checking its content is `digest`.
pub async fn put(
    ctl: &Control,
    p: &Principal,
    org: &str,
    digest: &str,
    content_range: Option<&str>,
    content_length: Option<u64>,
    body: Body,
) -> Result<Put, PutError> {
    let org = p.org(org)?;
    p.can_write()?;
    let hex = digest_hex(digest)?.to_owned();
    let dst = path_of(ctl, org, &hex);
    if let Ok(m) = std::fs::metadata(&dst)
        && m.is_file()
    {
        return Ok(Put::Stored {
            created: false,
            size: m.len(),
        });
    }
    let piece =
        image_upload::piece(content_range, content_length).map_err(ApiError::bad_request)?;
    let limit = ctl.config.image_upload_limit;
    if piece.total.is_some_and(|t| t > limit) {
        return Err(too_large(limit).into());
    }
    let root = image_upload::root(&ctl.config.data_dir);
    let upload = Upload {
        dir: root.join(org.simple().to_string()),
        root,
        hex,
        digest: digest.to_owned(),
        dst,
        piece,
        limit,
        org,
    };
    // A task of its own: dropping the request (the client went away) must not stop it halfway.
    tokio::spawn(upload.run(body))
        .await
        .map_err(|_| ApiError::internal())?
}

/// One `PUT`'s work, once it is allowed.
struct Upload {
    root: PathBuf,
    /// The org's partial uploads.
    dir: PathBuf,
    hex: String,
    digest: String,
    dst: PathBuf,
    piece: image_upload::Piece,
    limit: u64,
    org: Uuid,
}

impl Upload {
    async fn run(self, body: Body) -> Result<Put, PutError> {
        let now = SystemTime::now();
        let root = self.root.clone();
        let swept = blocking(move || image_upload::sweep(&root, now)).await?;
        if swept > 0 {
            tracing::info!(swept, "removed partial image uploads untouched for a day");
        }
        let Some(_lock) =
            image_upload::lock(self.dir.join(&self.hex), image_upload::LOCK_WAIT).await
        else {
            let (dir, hex) = (self.dir.clone(), self.hex.clone());
            let offset = blocking(move || image_upload::find(&dir, &hex, now, false))
                .await?
                .map_err(io)?
                .map_or(0, |p| p.len);
            return Err(PutError {
                error: ApiError::conflict(
                    "another upload of this image is in progress; try again when it has finished",
                ),
                offset: Some(offset),
            });
        };
        if let Ok(m) = std::fs::metadata(&self.dst)
            && m.is_file()
        {
            return Ok(Put::Stored {
                created: false,
                size: m.len(),
            });
        }
        let (dir, hex) = (self.dir.clone(), self.hex.clone());
        let partial = blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            image_upload::find(&dir, &hex, now, true)
        })
        .await?
        .map_err(io)?;
        let start = self.piece.start;
        let write = image_upload::decide(
            partial.as_ref().map(|p| (p.len, p.total)),
            start,
            self.piece.total,
        )
        .map_err(|offset| PutError {
            error: ApiError::conflict(format!(
                "this upload is at byte {offset}, not {start}: send the rest from there \
                 (Content-Range: bytes {offset}-…; ask with HEAD)"
            )),
            offset: Some(offset),
        })?;
        let path = match (write, &partial) {
            (image_upload::Write::Append, Some(p)) => p.path.clone(),
            _ => {
                if let Some(p) = &partial {
                    let _ = tokio::fs::remove_file(&p.path).await;
                }
                match self.piece.total {
                    Some(t) => image_upload::path(&self.dir, &self.hex, t),
                    // No length: not resumable; a temporary file, gone on any failure.
                    None => self
                        .dir
                        .join(format!(".{}.{}.tmp", self.hex, Uuid::new_v4().simple())),
                }
            }
        };
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(write == image_upload::Write::Append)
            .truncate(write == image_upload::Write::Fresh)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(io)?;
        let (n, received) = self.receive(&mut f, body).await;
        f.flush().await.map_err(io)?;
        let len = start + n;
        if let Err(e) = received {
            match self.piece.total {
                Some(_) if e.status != axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    tracing::info!(org = %self.org, digest = self.digest, offset = len, "image upload interrupted; kept for resuming");
                    return Err(PutError {
                        error: e,
                        offset: Some(len),
                    });
                }
                _ => {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(e.into());
                }
            }
        }
        if let Some(total) = self.piece.total
            && len < total
        {
            return Ok(Put::Partial { offset: len, total });
        }
        f.sync_all().await.map_err(io)?;
        drop(f);
        if let Err(e) = self.verify(&path).await {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e.into());
        }
        let parent = self.dst.parent().expect("images dir").to_owned();
        tokio::fs::create_dir_all(&parent).await.map_err(io)?;
        tokio::fs::rename(&path, &self.dst).await.map_err(io)?;
        tracing::info!(org = %self.org, digest = self.digest, bytes = len, "image uploaded");
        Ok(Put::Stored {
            created: true,
            size: len,
        })
    }

    /// Appends the body to `f`: how many bytes, and whether it ended as it should (not cut
    /// off, not longer than announced, not over the limit).
    async fn receive(&self, f: &mut tokio::fs::File, body: Body) -> (u64, Result<(), ApiError>) {
        let max = match self.piece.end {
            Some(end) => end - self.piece.start,
            None => self.limit,
        };
        let mut stream = body.into_data_stream();
        let mut n: u64 = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    return (
                        n,
                        Err(ApiError::bad_request(format!(
                            "the upload was interrupted after {} bytes: {e}; run the command again to resume",
                            self.piece.start + n
                        ))),
                    );
                }
            };
            if n + chunk.len() as u64 > max {
                let e = if self.piece.end.is_none() {
                    too_large(self.limit)
                } else {
                    ApiError::bad_request(
                        "the body is longer than its Content-Range or Content-Length says",
                    )
                };
                return (n, Err(e));
            }
            if let Err(e) = f.write_all(&chunk).await {
                return (n, Err(io(e)));
            }
            n += chunk.len() as u64;
        }
        (n, Ok(()))
    }

    /// Every blob is verified while resolving; the digest must be the claimed one.
    async fn verify(&self, path: &std::path::Path) -> Result<(), ApiError> {
        let p = path.to_owned();
        let resolved = blocking(move || {
            scalebox_image::oci::resolve(&scalebox_image::ImageSource::Archive { path: p })
                .map(|r| r.digest)
        })
        .await?;
        match resolved {
            Ok(d) if d == self.digest => Ok(()),
            Ok(d) => Err(ApiError::bad_request(format!(
                "the archive holds image {d}, not {}; nothing was kept",
                self.digest
            ))),
            Err(e @ scalebox_image::ImageError::Platform(_)) => Err(ApiError::bad_request(
                format!("the archive holds no image to run: {e}; nothing was kept"),
            )),
            Err(e) => {
                // The error names server paths: log it, tell the user what is wrong.
                tracing::info!(org = %self.org, digest = self.digest, error = %e, "refused image upload");
                Err(ApiError::bad_request(
                    "the upload is not a readable OCI or docker-save image archive (or it is truncated, or a blob does not match its digest); nothing was kept",
                ))
            }
        }
    }
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
