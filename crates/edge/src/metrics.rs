//! Counters per route and per listener, rendered in the Prometheus text exposition format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

/// Error kinds counted per route or listener.
pub const ERROR_KINDS: [&str; 7] = [
    "hello_malformed",
    "hello_oversized",
    "hello_truncated",
    "hello_timeout",
    "no_route",
    "backend_connect",
    "relay",
];

fn kind_index(kind: &str) -> usize {
    ERROR_KINDS
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(ERROR_KINDS.len() - 1)
}

/// Counters of one route; kept across table swaps so totals never go back.
#[derive(Default)]
pub struct RouteMetrics {
    pub active: AtomicI64,
    pub total: AtomicU64,
    /// Client → backend bytes.
    pub bytes_in: AtomicU64,
    /// Backend → client bytes.
    pub bytes_out: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    selections: Mutex<HashMap<SocketAddr, u64>>,
}

impl RouteMetrics {
    pub fn error(&self, kind: &str) {
        self.errors[kind_index(kind)].fetch_add(1, Relaxed);
    }
    pub fn selected(&self, backend: SocketAddr) {
        if let Ok(mut m) = self.selections.lock() {
            *m.entry(backend).or_default() += 1;
        }
    }
}

/// Errors seen on a listener before a route was chosen.
#[derive(Default)]
pub struct ListenerMetrics {
    errors: [AtomicU64; ERROR_KINDS.len()],
    pub accepted: AtomicU64,
}

impl ListenerMetrics {
    pub fn error(&self, kind: &str) {
        self.errors[kind_index(kind)].fetch_add(1, Relaxed);
    }
}

/// (name, type, help, getter) of one per-route series.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&RouteMetrics) -> i128,
);

/// Registry of all metrics of one edge.
#[derive(Default)]
pub struct Metrics {
    routes: RwLock<BTreeMap<String, Arc<RouteMetrics>>>,
    listeners: RwLock<BTreeMap<SocketAddr, Arc<ListenerMetrics>>>,
    pub generation: AtomicU64,
    pub applies: AtomicU64,
    pub bind_errors: AtomicU64,
    /// Backend connections whose first bytes went out in the SYN (TCP Fast Open).
    pub fast_open: AtomicU64,
}

impl Metrics {
    pub fn route(&self, id: &str) -> Arc<RouteMetrics> {
        if let Some(m) = self.routes.read().ok().and_then(|r| r.get(id).cloned()) {
            return m;
        }
        let mut w = self.routes.write().unwrap_or_else(|p| p.into_inner());
        w.entry(id.to_string()).or_default().clone()
    }

    pub fn listener(&self, addr: SocketAddr) -> Arc<ListenerMetrics> {
        if let Some(m) = self
            .listeners
            .read()
            .ok()
            .and_then(|r| r.get(&addr).cloned())
        {
            return m;
        }
        let mut w = self.listeners.write().unwrap_or_else(|p| p.into_inner());
        w.entry(addr).or_default().clone()
    }

    /// Renders everything in Prometheus text format.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let series: [Series; 4] = [
            (
                "edge_connections_active",
                "gauge",
                "Client connections being relayed.",
                |m| m.active.load(Relaxed).into(),
            ),
            (
                "edge_connections_total",
                "counter",
                "Client connections routed.",
                |m| m.total.load(Relaxed).into(),
            ),
            (
                "edge_bytes_in_total",
                "counter",
                "Bytes from clients to backends.",
                |m| m.bytes_in.load(Relaxed).into(),
            ),
            (
                "edge_bytes_out_total",
                "counter",
                "Bytes from backends to clients.",
                |m| m.bytes_out.load(Relaxed).into(),
            ),
        ];
        for (name, ty, help, get) in series {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for (id, m) in routes.iter() {
                let _ = writeln!(o, "{name}{{route=\"{id}\"}} {}", get(m));
            }
        }
        let _ = writeln!(
            o,
            "# HELP edge_errors_total Errors by route and kind.\n# TYPE edge_errors_total counter"
        );
        for (id, m) in routes.iter() {
            for (i, k) in ERROR_KINDS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "edge_errors_total{{route=\"{id}\",kind=\"{k}\"}} {}",
                    m.errors[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP edge_backend_selections_total Connections sent to each backend.\n# TYPE edge_backend_selections_total counter"
        );
        for (id, m) in routes.iter() {
            let sel = m.selections.lock().unwrap_or_else(|p| p.into_inner());
            let sorted: BTreeMap<_, _> = sel.iter().collect();
            for (b, n) in sorted {
                let _ = writeln!(
                    o,
                    "edge_backend_selections_total{{route=\"{id}\",backend=\"{b}\"}} {n}"
                );
            }
        }
        drop(routes);
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            o,
            "# HELP edge_listener_errors_total Errors before a route was chosen.\n# TYPE edge_listener_errors_total counter"
        );
        for (a, m) in listeners.iter() {
            for (i, k) in ERROR_KINDS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "edge_listener_errors_total{{listener=\"{a}\",kind=\"{k}\"}} {}",
                    m.errors[i].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP edge_listener_accepted_total Connections accepted.\n# TYPE edge_listener_accepted_total counter"
        );
        for (a, m) in listeners.iter() {
            let _ = writeln!(
                o,
                "edge_listener_accepted_total{{listener=\"{a}\"}} {}",
                m.accepted.load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP edge_table_generation Generation of the applied table.\n# TYPE edge_table_generation gauge\nedge_table_generation {}",
            self.generation.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP edge_table_applies_total Tables applied.\n# TYPE edge_table_applies_total counter\nedge_table_applies_total {}",
            self.applies.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP edge_listener_bind_errors_total Listener bind failures.\n# TYPE edge_listener_bind_errors_total counter\nedge_listener_bind_errors_total {}",
            self.bind_errors.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP edge_backend_fast_open_total Backend connections that carried their first bytes in the SYN (TCP Fast Open).\n# TYPE edge_backend_fast_open_total counter\nedge_backend_fast_open_total {}",
            self.fast_open.load(Relaxed)
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::default();
        let r = m.route("web");
        r.total.fetch_add(2, Relaxed);
        r.error("backend_connect");
        r.selected("[::1]:80".parse().unwrap());
        m.listener("[::]:443".parse().unwrap())
            .error("hello_timeout");
        m.fast_open.fetch_add(3, Relaxed);
        let s = m.render();
        assert!(s.contains("edge_connections_total{route=\"web\"} 2"), "{s}");
        assert!(s.contains("edge_errors_total{route=\"web\",kind=\"backend_connect\"} 1"));
        assert!(s.contains("edge_backend_selections_total{route=\"web\",backend=\"[::1]:80\"} 1"));
        assert!(s.contains(
            "edge_listener_errors_total{listener=\"[::]:443\",kind=\"hello_timeout\"} 1"
        ));
        assert!(s.contains("\nedge_backend_fast_open_total 3\n"), "{s}");
    }
}
