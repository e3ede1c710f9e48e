//! Scalebox edge: an L4 ingress proxy.
//!
//! TLS routes are SNI passthrough (the ClientHello is read, never terminated), raw TCP routes
//! are routed by listener. An optional PROXY v2 header carries the client address upstream.
//! The routing table is swapped atomically, persisted on every apply and loaded at start.
//!
//! Entry points: [`run`] (what `scaleboxd edge` calls), or [`Edge::start`] + [`Edge::handle`] +
//! [`Edge::run`] when the caller needs to apply tables at runtime.

pub mod admin;
pub mod backend;
pub mod config;
mod conn;
pub mod hello;
mod host;
mod listen;
pub mod metrics;
pub mod proxy_v2;
pub mod relay;
mod state;
pub mod table;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};

use thiserror::Error;

pub use config::EdgeConfig;
pub use table::{Route, RouteKind, Table, TableError};

use state::{Active, Shared};
use table::{Compiled, ListenDefaults};

/// Errors of the edge library.
#[derive(Debug, Error)]
pub enum EdgeError {
    #[error("edge config {path}: {problem}")]
    Config { path: PathBuf, problem: String },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(
        "table generation {offered} is older than the applied generation {current}; send a newer table"
    )]
    StaleGeneration { current: u64, offered: u64 },
    #[error("cannot bind {what} on {addr}: {source} (is another process using it?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("edge task failed: {0}")]
    Task(String),
}

/// A cheap, cloneable handle to a running edge.
#[derive(Clone)]
pub struct EdgeHandle {
    shared: Arc<Shared>,
    listeners: Arc<tokio::sync::Mutex<listen::Listeners>>,
}

impl EdgeHandle {
    /// Validates, persists and atomically applies `table`, then binds/unbinds listeners to match.
    /// Live connections keep the route they were given. A generation lower than the current one
    /// is refused; an equal one is re-applied (idempotent).
    pub async fn apply(&self, table: Table) -> Result<(), EdgeError> {
        let mut listeners = self.listeners.lock().await;
        let current = self.shared.active().compiled.table.generation;
        if table.generation < current {
            return Err(EdgeError::StaleGeneration {
                current,
                offered: table.generation,
            });
        }
        let compiled = Compiled::new(table, self.defaults())?;
        let path = self.shared.config.persisted_table_path();
        let copy = compiled.table.clone();
        tokio::task::spawn_blocking(move || table::persist(&copy, &path))
            .await
            .map_err(|e| EdgeError::Task(e.to_string()))??;
        self.install(compiled, &mut listeners);
        Ok(())
    }

    /// Re-reads the configured `table_file` and applies it (what SIGHUP does).
    pub async fn reload_from_file(&self) -> Result<(), EdgeError> {
        let Some(path) = self.shared.config.table_file.clone() else {
            return Err(EdgeError::Config {
                path: PathBuf::from("<edge config>"),
                problem: "reload requested but table_file is not set".into(),
            });
        };
        let t = tokio::task::spawn_blocking(move || {
            table::load(&path)?.ok_or_else(|| TableError::Io {
                op: "read",
                path: path.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            })
        })
        .await
        .map_err(|e| EdgeError::Task(e.to_string()))??;
        self.apply(t).await
    }

    /// The table in force.
    pub fn table(&self) -> Table {
        self.shared.active().compiled.table.clone()
    }

    /// Addresses of the listeners currently accepting.
    pub async fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.lock().await.addrs()
    }

    /// Client connections currently open.
    pub fn live_connections(&self) -> usize {
        self.shared.conns.load(SeqCst)
    }

    fn defaults(&self) -> ListenDefaults {
        let c = &self.shared.config;
        ListenDefaults {
            v6: c.default_ipv6_addr,
            v4: c.default_ipv4_addr,
        }
    }

    fn install(&self, compiled: Compiled, listeners: &mut listen::Listeners) {
        let wanted: BTreeSet<SocketAddr> = compiled.listeners.keys().copied().collect();
        let generation = compiled.table.generation;
        let routes = compiled.table.routes.len();
        self.shared
            .swap(Arc::new(Active::new(compiled, &self.shared.metrics)));
        self.shared.metrics.generation.store(generation, Relaxed);
        self.shared.metrics.applies.fetch_add(1, Relaxed);
        listeners.reconcile(&wanted, &self.shared);
        tracing::info!(
            generation,
            routes,
            listeners = wanted.len(),
            "routing table applied"
        );
    }
}

/// An edge that has loaded its table and bound its listeners but is not yet waiting for shutdown.
pub struct Edge {
    handle: EdgeHandle,
    admin: tokio::net::TcpListener,
    /// Installed in `start` so a SIGHUP never hits the default (terminating) action once the
    /// admin port is up.
    hup: Option<tokio::signal::unix::Signal>,
}

impl Edge {
    /// Loads the persisted table (a corrupt one is logged and the edge starts empty), applies a
    /// newer `table_file` if configured, binds the table's listeners, then the admin listener.
    pub async fn start(config: EdgeConfig) -> Result<Edge, EdgeError> {
        config.validate().map_err(|problem| EdgeError::Config {
            path: PathBuf::from("<edge config>"),
            problem,
        })?;
        host::check(config.backend_fast_open);
        let admin_addr = config.admin_addr;
        let shared = Arc::new(Shared::new(config));
        let handle = EdgeHandle {
            shared,
            listeners: Default::default(),
        };
        let path = handle.shared.config.persisted_table_path();
        let persisted = match table::load(&path) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "persisted routing table is unreadable; starting with an empty table until a new one is applied");
                None
            }
        };
        if let Some(t) = persisted {
            match Compiled::new(t, handle.defaults()) {
                Ok(c) => {
                    let mut l = handle.listeners.lock().await;
                    handle.install(c, &mut l);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "persisted routing table is invalid; starting empty")
                }
            }
        }
        if let Some(tf) = handle.shared.config.table_file.clone() {
            match table::load(&tf) {
                Ok(Some(t)) if t.generation >= handle.table().generation => {
                    if let Err(e) = handle.apply(t).await {
                        tracing::error!(path = %tf.display(), error = %e, "table_file not applied");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(path = %tf.display(), error = %e, "table_file unreadable")
                }
            }
        }
        // The admin port is bound last: once it accepts connections, the table's listeners are
        // bound too (readiness checks on the admin port mean the routes are served).
        let admin = listen::bind(admin_addr, 128).map_err(|source| EdgeError::Bind {
            what: "admin listener",
            addr: admin_addr,
            source,
        })?;
        let hup = if handle.shared.config.reload_on_sighup {
            let s = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| EdgeError::Task(format!("cannot install SIGHUP handler: {e}")))?;
            Some(s)
        } else {
            None
        };
        Ok(Edge { handle, admin, hup })
    }

    /// A handle for applying tables while [`Edge::run`] is running.
    pub fn handle(&self) -> EdgeHandle {
        self.handle.clone()
    }

    /// The bound admin address (useful with port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.handle.shared.config.admin_addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains live connections up
    /// to `drain_timeout_ms`, closing whatever is left.
    pub async fn run(self, shutdown: impl Future) -> Result<(), EdgeError> {
        let Edge { handle, admin, hup } = self;
        let admin_task = tokio::spawn(admin::serve(admin, handle.clone()));
        let hup_task = if let Some(mut sig) = hup {
            let h = handle.clone();
            Some(tokio::spawn(async move {
                while sig.recv().await.is_some() {
                    match h.reload_from_file().await {
                        Ok(()) => tracing::info!("SIGHUP: table reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: table reload failed; keeping the current table")
                        }
                    }
                }
            }))
        } else {
            None
        };
        shutdown.await;
        tracing::info!(
            live = handle.live_connections(),
            "shutting down: no longer accepting"
        );
        handle.listeners.lock().await.stop_all();
        if let Some(t) = hup_task {
            t.abort();
        }
        let sh = handle.shared.clone();
        let drained = tokio::time::timeout(EdgeConfig::ms(sh.config.drain_timeout_ms), async {
            loop {
                let notified = sh.conns_changed.notified();
                if sh.conns.load(SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                live = sh.conns.load(SeqCst),
                "drain deadline reached; closing remaining connections"
            );
            sh.relaying.kill_all();
            // Give the connection tasks a moment to see their sockets shut and close.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                while sh.conns.load(SeqCst) > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            })
            .await;
        }
        admin_task.abort();
        tracing::info!("edge stopped");
        Ok(())
    }
}

/// Runs the edge with `config` until `shutdown` resolves, then drains (see [`Edge::run`]).
pub async fn run(config: EdgeConfig, shutdown: impl Future) -> Result<(), EdgeError> {
    Edge::start(config).await?.run(shutdown).await
}
