//! Desired-state feeds (one per host, one for the edge's routing table): each read hashes the
//! content, and the feed's generation increases exactly when the hash changes, so a reader can
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
    let row = c
        .query_one(
            "INSERT INTO feeds (name, hash, generation) VALUES ($1, $2, 1)
             ON CONFLICT (name) DO UPDATE SET
               generation = feeds.generation + (CASE WHEN feeds.hash = EXCLUDED.hash THEN 0 ELSE 1 END),
               hash = EXCLUDED.hash
             RETURNING generation",
            &[&name, &h],
        )
        .await?;
    Ok(row.get(0))
}
