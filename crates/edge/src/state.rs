//! Shared state of a running edge: config, the atomically swapped active table, metrics,
//! backend down-list and connection tracking.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, RwLock};

use tokio::sync::{Notify, watch};

use crate::backend::DownList;
use crate::config::EdgeConfig;
use crate::metrics::{Metrics, RouteMetrics};
use crate::table::{Compiled, ListenerRoutes};

/// A compiled table plus per-route round-robin cursors and metric handles.
#[derive(Default)]
pub struct Active {
    pub compiled: Compiled,
    pub rr: Vec<AtomicUsize>,
    pub metrics: Vec<Arc<RouteMetrics>>,
}

impl Active {
    pub fn new(compiled: Compiled, metrics: &Metrics) -> Active {
        let n = compiled.table.routes.len();
        let m = compiled
            .table
            .routes
            .iter()
            .map(|r| metrics.route(&r.id))
            .collect();
        Active {
            compiled,
            rr: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            metrics: m,
        }
    }

    pub fn listener_routes(&self, l: SocketAddr) -> Option<&ListenerRoutes> {
        self.compiled.listeners.get(&l)
    }
}

/// State shared by all tasks of one edge.
pub struct Shared {
    pub config: EdgeConfig,
    table: RwLock<Arc<Active>>,
    pub metrics: Metrics,
    pub down: DownList,
    /// Live client connections (accepted, not yet closed).
    pub conns: AtomicUsize,
    pub conns_changed: Notify,
    /// Set to true when the drain deadline passes: live connections close.
    pub kill: watch::Sender<bool>,
}

impl Shared {
    pub fn new(config: EdgeConfig) -> Shared {
        Shared {
            config,
            table: RwLock::new(Arc::new(Active::default())),
            metrics: Metrics::default(),
            down: DownList::default(),
            conns: AtomicUsize::new(0),
            conns_changed: Notify::new(),
            kill: watch::channel(false).0,
        }
    }

    /// The table in force now.
    pub fn active(&self) -> Arc<Active> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new table; connections that already chose a route keep theirs.
    pub fn swap(&self, a: Arc<Active>) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = a;
    }
}

/// Counts a live connection for draining; decrements on drop.
pub struct ConnGuard(pub Arc<Shared>);

impl ConnGuard {
    pub fn new(s: Arc<Shared>) -> ConnGuard {
        s.conns.fetch_add(1, SeqCst);
        ConnGuard(s)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.conns.fetch_sub(1, SeqCst) == 1 {
            self.0.conns_changed.notify_waiters();
        }
    }
}
