//! The routing table: JSON schema, validation, listener derivation, lookup and persistence.
//!
//! A [`Table`] is immutable once validated; the edge swaps whole tables atomically. Persistence
//! writes a temp file, fsyncs it, renames it over the old one and fsyncs the directory.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Route protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// TLS passthrough routed by SNI.
    Tls,
    /// Raw TCP routed by listener address.
    Tcp,
}

/// One route as it appears in the table JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique id (used as the metrics label).
    pub id: String,
    pub kind: RouteKind,
    /// Listener port.
    pub port: u16,
    /// IPv6 listen address; defaults to the config's `default_ipv6_addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_v6: Option<IpAddr>,
    /// Also listen on IPv4 (the dedicated IPv4 add-on).
    #[serde(default)]
    pub ipv4: bool,
    /// IPv4 listen address when `ipv4` is set; defaults to the config's `default_ipv4_addr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_v4: Option<IpAddr>,
    /// SNI host name (TLS routes only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Ready backends, `addr:port` / `[v6]:port`.
    pub backends: Vec<SocketAddr>,
    /// Prepend a PROXY v2 header upstream.
    #[serde(default)]
    pub proxy_protocol_v2: bool,
}

/// The whole table as applied by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Monotonic version; an apply with a lower generation is refused.
    pub generation: u64,
    pub routes: Vec<Route>,
}

/// What is wrong with a table.
#[derive(Debug, Error)]
pub enum TableError {
    #[error("table JSON is invalid: {0} (see docs/edge.md for the format)")]
    Json(#[from] serde_json::Error),
    #[error("route {id:?}: {problem}")]
    Route { id: String, problem: String },
    #[error("route id {0:?} appears more than once; ids must be unique")]
    DuplicateId(String),
    #[error("listener {addr}: {problem}")]
    Listener { addr: SocketAddr, problem: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Default listen addresses used when a route does not name one.
#[derive(Debug, Clone, Copy)]
pub struct ListenDefaults {
    pub v6: IpAddr,
    pub v4: IpAddr,
}

/// Per-listener routing: either one raw TCP route or TLS routes by host name.
#[derive(Debug, Default)]
pub struct ListenerRoutes {
    /// Index into `Table::routes` of a TCP route.
    pub tcp: Option<usize>,
    /// Host name → index into `Table::routes`.
    pub tls: HashMap<String, usize>,
}

impl ListenerRoutes {
    /// The route for a TLS connection with the given SNI, or the only route when SNI is absent.
    pub fn tls_route(&self, sni: Option<&str>) -> Option<usize> {
        match sni {
            Some(h) => self.tls.get(h).copied(),
            None if self.tls.len() == 1 => self.tls.values().next().copied(),
            None => None,
        }
    }
}

/// A validated table plus its derived listener index.
#[derive(Debug, Default)]
pub struct Compiled {
    pub table: Table,
    pub listeners: BTreeMap<SocketAddr, ListenerRoutes>,
}

impl Compiled {
    /// Validates `table` and derives the listeners it needs.
    pub fn new(mut table: Table, defaults: ListenDefaults) -> Result<Self, TableError> {
        let mut ids = std::collections::HashSet::new();
        let mut listeners: BTreeMap<SocketAddr, ListenerRoutes> = BTreeMap::new();
        for (i, r) in table.routes.iter_mut().enumerate() {
            let bad = |p: &str| TableError::Route {
                id: r.id.clone(),
                problem: p.to_string(),
            };
            if r.id.is_empty()
                || r.id.len() > 128
                || r.id
                    .chars()
                    .any(|c| c.is_control() || c == '"' || c == '\\')
            {
                return Err(bad(
                    "id must be 1-128 printable characters without quotes or backslashes",
                ));
            }
            if !ids.insert(r.id.clone()) {
                return Err(TableError::DuplicateId(r.id.clone()));
            }
            if r.port == 0 {
                return Err(bad("port must be 1-65535"));
            }
            match (r.kind, &mut r.hostname) {
                (RouteKind::Tls, Some(h)) => {
                    let norm = h.trim_end_matches('.').to_ascii_lowercase();
                    let ok = !norm.is_empty()
                        && norm.len() <= 253
                        && norm.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                        });
                    if !ok {
                        return Err(bad("hostname is not a valid DNS name"));
                    }
                    *h = norm;
                }
                (RouteKind::Tls, None) => return Err(bad("tls routes need a hostname")),
                (RouteKind::Tcp, Some(_)) => {
                    return Err(bad("tcp routes are routed by port and take no hostname"));
                }
                (RouteKind::Tcp, None) => {}
            }
            let v6 = r.listen_v6.unwrap_or(defaults.v6);
            if !v6.is_ipv6() {
                return Err(bad("listen_v6 must be an IPv6 address"));
            }
            let mut addrs = vec![SocketAddr::new(v6, r.port)];
            if r.ipv4 {
                let v4 = r.listen_v4.unwrap_or(defaults.v4);
                if !v4.is_ipv4() {
                    return Err(bad("listen_v4 must be an IPv4 address"));
                }
                addrs.push(SocketAddr::new(v4, r.port));
            } else if r.listen_v4.is_some() {
                return Err(bad("listen_v4 is set but ipv4 is false"));
            }
            for addr in addrs {
                let l = listeners.entry(addr).or_default();
                let conflict = |p: String| TableError::Listener { addr, problem: p };
                match r.kind {
                    RouteKind::Tcp => {
                        if l.tcp.is_some() || !l.tls.is_empty() {
                            return Err(conflict(format!(
                                "tcp route {:?} needs the listener to itself",
                                r.id
                            )));
                        }
                        l.tcp = Some(i);
                    }
                    RouteKind::Tls => {
                        if l.tcp.is_some() {
                            return Err(conflict(format!(
                                "tls route {:?} shares it with a tcp route",
                                r.id
                            )));
                        }
                        let h = r.hostname.clone().unwrap_or_default();
                        if l.tls.insert(h.clone(), i).is_some() {
                            return Err(conflict(format!("hostname {h:?} is routed twice")));
                        }
                    }
                }
            }
        }
        Ok(Compiled { table, listeners })
    }
}

/// Parses table JSON (strict: unknown fields are rejected).
pub fn parse(json: &[u8]) -> Result<Table, TableError> {
    Ok(serde_json::from_slice(json)?)
}

/// Writes `table` to `path` atomically and durably.
pub fn persist(table: &Table, path: &Path) -> Result<(), TableError> {
    let io = |op, source| TableError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create directory for", e))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(table)?;
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("create temp file for", e))?;
        f.write_all(&body).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("fsync", e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io("rename temp file onto", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync the directory of", e))?;
    Ok(())
}

/// Loads a persisted table; `Ok(None)` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<Table>, TableError> {
    match std::fs::read(path) {
        Ok(b) => parse(&b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TableError::Io {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ListenDefaults {
        ListenDefaults {
            v6: "::".parse().unwrap(),
            v4: "0.0.0.0".parse().unwrap(),
        }
    }

    fn tls(id: &str, host: &str) -> Route {
        Route {
            id: id.into(),
            kind: RouteKind::Tls,
            port: 443,
            listen_v6: None,
            ipv4: false,
            listen_v4: None,
            hostname: Some(host.into()),
            backends: vec!["[::1]:8443".parse().unwrap()],
            proxy_protocol_v2: false,
        }
    }

    #[test]
    fn derives_listeners_and_routes() {
        let mut b = tls("b", "B.example.");
        b.ipv4 = true;
        let t = Table {
            generation: 1,
            routes: vec![tls("a", "a.example"), b],
        };
        let c = Compiled::new(t, defaults()).unwrap();
        assert_eq!(c.listeners.len(), 2);
        let v6 = &c.listeners[&"[::]:443".parse().unwrap()];
        assert_eq!(v6.tls_route(Some("b.example")), Some(1));
        assert_eq!(v6.tls_route(None), None, "ambiguous without SNI");
        let v4 = &c.listeners[&"0.0.0.0:443".parse().unwrap()];
        assert_eq!(v4.tls_route(None), Some(1), "unambiguous without SNI");
    }

    #[test]
    fn rejects_conflicts() {
        let t = Table {
            generation: 1,
            routes: vec![tls("a", "x.example"), tls("b", "x.example")],
        };
        assert!(matches!(
            Compiled::new(t, defaults()),
            Err(TableError::Listener { .. })
        ));
        let mut tcp = tls("t", "y");
        tcp.kind = RouteKind::Tcp;
        tcp.hostname = None;
        let t = Table {
            generation: 1,
            routes: vec![tls("a", "x.example"), tcp.clone()],
        };
        assert!(Compiled::new(t, defaults()).is_err());
        let t = Table {
            generation: 1,
            routes: vec![tcp.clone(), tcp],
        };
        assert!(matches!(
            Compiled::new(t, defaults()),
            Err(TableError::DuplicateId(_))
        ));
        let t = Table {
            generation: 1,
            routes: vec![tls("a", "bad name")],
        };
        assert!(Compiled::new(t, defaults()).is_err());
    }

    #[test]
    fn strict_json_and_roundtrip_persist() {
        assert!(parse(br#"{"generation":1,"routes":[],"extra":1}"#).is_err());
        let t = parse(
            br#"{"generation":7,"routes":[{"id":"r","kind":"tcp","port":9000,
                "backends":["127.0.0.1:1","[::1]:2"],"proxy_protocol_v2":true}]}"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/table.json");
        persist(&t, &p).unwrap();
        assert_eq!(load(&p).unwrap(), Some(t));
        assert_eq!(load(&dir.path().join("none.json")).unwrap(), None);
        std::fs::write(&p, b"{garbage").unwrap();
        assert!(load(&p).is_err());
    }
}
