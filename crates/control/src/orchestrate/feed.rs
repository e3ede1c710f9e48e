//! Desired-state feeds (one per host for its agent, one per host for its edge's routing table):
//! each read hashes the content, and the feed's generation increases exactly when the hash changes, so a reader can
//! long-poll "anything newer than generation G".

use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::ApiError;

/// Hex SHA-256 of `bytes`.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The generation of feed `name` for content with hash `h`, bumping it if the content changed.
pub async fn generation(c: &impl GenericClient, name: &str, h: &str) -> Result<i64, ApiError> {
    // A feed does not exist before it is created: it starts at 1.
    generation_continuing(c, name, name, h).await
}

/// Like [`generation`], but a feed created now starts just above feed `from`'s generation (a feed
/// replacing `from` for the same readers, so theirs never goes back).
pub async fn generation_continuing(
    c: &impl GenericClient,
    name: &str,
    from: &str,
    h: &str,
) -> Result<i64, ApiError> {
    let row = c
        .query_one(
            "INSERT INTO feeds (name, hash, generation)
             VALUES ($1, $2, 1 + coalesce((SELECT generation FROM feeds WHERE name = $3), 0))
             ON CONFLICT (name) DO UPDATE SET
               generation = feeds.generation + (CASE WHEN feeds.hash = EXCLUDED.hash THEN 0 ELSE 1 END),
               hash = EXCLUDED.hash
             RETURNING generation",
            &[&name, &h, &from],
        )
        .await?;
    Ok(row.get(0))
}
