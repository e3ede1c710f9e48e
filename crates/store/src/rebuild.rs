//! Rebuilding views from the event log, and dumping them for comparison.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{Db, StoreError, log, projection};

/// Empties every view and replays the whole log in sequence order, in one transaction: readers
/// see the old views until the rebuilt ones commit. Appends wait while it runs. Returns the
/// number of events replayed.
pub async fn rebuild_views(db: &Db) -> Result<u64, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("LOCK TABLE events IN SHARE MODE").await?;
    tx.batch_execute(&format!("TRUNCATE {}", projection::VIEW_TABLES.join(", ")))
        .await?;
    let mut after = 0;
    let mut n = 0u64;
    loop {
        let batch = log::read_batch(&*tx, after, 2000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for env in &batch {
            projection::apply(&tx, env).await?;
            n += 1;
        }
    }
    tx.commit().await?;
    Ok(n)
}

/// Every view's rows as JSON, in a deterministic order (for comparing live and rebuilt views).
pub async fn dump_views(db: &Db) -> Result<BTreeMap<String, Value>, StoreError> {
    let client = db.client().await?;
    let mut out = BTreeMap::new();
    for t in projection::VIEW_TABLES {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(json_agg(t ORDER BY t::text), '[]'::json)::jsonb FROM {t} t"
                ),
                &[],
            )
            .await?;
        out.insert((*t).to_owned(), row.get(0));
    }
    Ok(out)
}
