//! Appending to and reading from the event log. Appends apply the projections in the same
//! transaction, so views never lag the log.

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use crate::{Event, EventEnvelope, StoreError, projection};

/// Current version of `stream` (0 when it has no events).
pub async fn stream_version(tx: &Transaction<'_>, stream: &str) -> Result<i64, StoreError> {
    let row = tx
        .query_one(
            "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream = $1",
            &[&stream],
        )
        .await?;
    Ok(row.get(0))
}

/// Appends `events` to `stream`, which must currently be at `expected_version`, and applies
/// them to the views. A concurrent writer that got there first makes this fail with
/// [`StoreError::Conflict`]; the caller's transaction must then be rolled back.
pub async fn append(
    tx: &Transaction<'_>,
    actor: &str,
    org_id: Option<Uuid>,
    stream: &str,
    expected_version: i64,
    events: &[Event],
) -> Result<Vec<EventEnvelope>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let version = expected_version + 1 + i as i64;
        let (event_type, schema_version, payload) = event.encode();
        let row = tx
            .query_one(
                "INSERT INTO events (stream, stream_version, event_type, schema_version, payload, actor, org_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq, occurred_at",
                &[&stream, &version, &event_type, &schema_version, &payload, &actor, &org_id],
            )
            .await
            .map_err(|e| {
                StoreError::from(e).unique_as_conflict(|_| {
                    format!(
                        "{stream} was changed concurrently (expected version {expected_version}); reload and retry"
                    )
                })
            })?;
        let env = EventEnvelope {
            seq: row.get(0),
            stream: stream.to_owned(),
            stream_version: version,
            actor: actor.to_owned(),
            org_id,
            occurred_at: row.get(1),
            event: event.clone(),
        };
        projection::apply(tx, &env).await?;
        out.push(env);
    }
    Ok(out)
}

/// One event as shown by the audit endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRow {
    pub seq: i64,
    pub stream: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub actor: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

/// Filter for [`list_for_org`].
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub after: i64,
    pub limit: i64,
    pub stream: Option<String>,
    pub event_type: Option<String>,
}

/// Events of one org, in sequence order, after `filter.after`.
pub async fn list_for_org(
    client: &impl GenericClient,
    org_id: Uuid,
    filter: &AuditFilter,
) -> Result<Vec<AuditRow>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, stream, stream_version, event_type, schema_version, payload, actor, occurred_at
             FROM events
             WHERE org_id = $1 AND seq > $2
               AND ($3::text IS NULL OR stream = $3)
               AND ($4::text IS NULL OR event_type = $4)
             ORDER BY seq LIMIT $5",
            &[&org_id, &filter.after, &filter.stream, &filter.event_type, &filter.limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| AuditRow {
            seq: r.get(0),
            stream: r.get(1),
            stream_version: r.get(2),
            event_type: r.get(3),
            schema_version: r.get(4),
            payload: r.get(5),
            actor: r.get(6),
            occurred_at: r.get(7),
        })
        .collect())
}

/// Reads raw events with `seq > after` (all orgs), decoded and upcast, for replay.
pub async fn read_batch(
    client: &impl GenericClient,
    after: i64,
    limit: i64,
) -> Result<Vec<EventEnvelope>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, stream, stream_version, event_type, schema_version, payload, actor, org_id, occurred_at
             FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(0);
            let t: String = r.get(3);
            Ok(EventEnvelope {
                seq,
                stream: r.get(1),
                stream_version: r.get(2),
                event: Event::decode(seq, &t, r.get(4), r.get(5))?,
                actor: r.get(6),
                org_id: r.get(7),
                occurred_at: r.get(8),
            })
        })
        .collect()
}
