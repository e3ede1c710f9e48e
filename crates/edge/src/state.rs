//! Shared state of a running edge: config, the atomically swapped active table, metrics,
//! backend down-list and connection tracking.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

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
    /// The sockets of relaying connections, shut down when the drain deadline passes.
    pub relaying: Relaying,
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
            relaying: Relaying::default(),
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

/// The two sockets of every relaying connection, so the drain deadline can end them all with
/// `shutdown(2)` (their relays then see end of stream) without each connection holding a
/// future that waits for the signal: an idle connection stays small.
#[derive(Default)]
pub struct Relaying {
    inner: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    fds: Vec<Option<[RawFd; 2]>>,
    free: Vec<usize>,
    killed: bool,
}

fn shutdown_both(fds: [RawFd; 2]) {
    for fd in fds {
        // SAFETY: shutdown(2) on a socket that stays open while it is registered (the entry is
        // removed, under the same lock, before the socket is closed).
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// A registered connection; unregisters on drop (declare it before the sockets it names).
pub struct RelayingGuard {
    shared: Arc<Shared>,
    slot: usize,
}

impl Relaying {
    /// Registers a connection's sockets; after the deadline they are shut down at once.
    pub fn register(shared: &Arc<Shared>, fds: [RawFd; 2]) -> RelayingGuard {
        let mut s = shared
            .relaying
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if s.killed {
            shutdown_both(fds);
        }
        let slot = match s.free.pop() {
            Some(i) => {
                s.fds[i] = Some(fds);
                i
            }
            None => {
                s.fds.push(Some(fds));
                s.fds.len() - 1
            }
        };
        RelayingGuard {
            shared: shared.clone(),
            slot,
        }
    }

    /// The drain deadline: shuts down every registered connection (and any registered later).
    pub fn kill_all(&self) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.killed = true;
        for fds in s.fds.iter().flatten() {
            shutdown_both(*fds);
        }
    }
}

impl Drop for RelayingGuard {
    fn drop(&mut self) {
        let mut s = self
            .shared
            .relaying
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        s.fds[self.slot] = None;
        s.free.push(self.slot);
    }
}
