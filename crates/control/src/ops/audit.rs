//! The audit log of an org: its events, paginated by sequence, filterable by stream and type.

use scalebox_store::log::{self, AuditFilter};
use scalebox_types::api;
use tokio_postgres::GenericClient;

use super::ts;
use crate::ApiError;
use crate::auth::Principal;

pub const MAX_PAGE: i64 = 500;

pub async fn list(
    c: &impl GenericClient,
    p: &Principal,
    org: &str,
    after: Option<i64>,
    limit: Option<i64>,
    stream: Option<String>,
    event_type: Option<String>,
) -> Result<api::EventPage, ApiError> {
    let org = p.org(org)?;
    p.can_read()?;
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit {limit} is out of range; expected 1-{MAX_PAGE}"
        )));
    }
    let filter = AuditFilter {
        after: after.unwrap_or(0).max(0),
        limit,
        stream,
        event_type,
    };
    let rows = log::list_for_org(c, org, &filter).await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let events = rows
        .into_iter()
        .map(|r| {
            let mut payload = r.payload;
            // Token hashes are not secrets, but nobody needs them in an audit view.
            if let Some(m) = payload.as_object_mut() {
                m.remove("hash");
            }
            api::AuditEvent {
                seq: r.seq,
                stream: r.stream,
                stream_version: r.stream_version,
                event_type: r.event_type,
                schema_version: r.schema_version,
                payload,
                actor: r.actor,
                occurred_at: ts(r.occurred_at),
            }
        })
        .collect();
    Ok(api::EventPage { events, next_after })
}
