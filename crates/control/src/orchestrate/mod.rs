//! Orchestration: the reconcilers that turn desired state (deploys, scales, secrets versions,
//! host drains) into instances placed on hosts, and the feeds host agents and edges pull.
//!
//! - [`rollout`]: pure per-process-type rollout decisions.
//! - [`spec`]: pure agent-spec building from a release's manifest.
//! - [`feed`]: generations of the long-polled feeds.
//! - [`reconcile`]: one reconciliation pass (database I/O), run periodically and on change.

pub mod feed;
pub mod reconcile;
pub mod rollout;
pub mod spec;

use std::time::Duration;

use crate::Control;

/// How often the reconcilers run when nothing pokes them.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Runs the reconcilers until `shutdown` resolves: every [`PERIOD`] and whenever state changes.
pub async fn run(ctl: Control, shutdown: impl Future<Output = ()> + Send) {
    let mut changes = ctl.changes.subscribe();
    tokio::pin!(shutdown);
    loop {
        match reconcile::pass(&ctl).await {
            Ok(status) if status.changed => ctl.poke(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.message, "reconcile pass failed; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
