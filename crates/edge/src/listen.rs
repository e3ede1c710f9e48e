//! Listener set derived from the table: binds new (address, port) pairs, unbinds ones no route
//! needs any more. Unbinding stops accepting only; live connections are not touched.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::state::{ConnGuard, Shared};

/// Creates a non-blocking listening socket; IPv6 sockets are IPv6-only so that IPv4 is served
/// only where a route asks for it.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    // SO_REUSEPORT lets a specific address (an env's dedicated IPv4) be bound on a port the
    // shared wildcard listener (`0.0.0.0:443`) also uses; Linux then hands each connection to
    // the most specific listener.
    s.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: one setsockopt per listener
    // instead of one per connection.
    s.set_tcp_nodelay(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(s.into())
}

/// The accept loops currently running, by listener address.
#[derive(Default)]
pub struct Listeners {
    running: HashMap<SocketAddr, JoinHandle<()>>,
}

impl Listeners {
    /// Makes the running set equal to `wanted`. Bind failures are logged and counted; the
    /// listener is retried on the next apply.
    pub fn reconcile(&mut self, wanted: &BTreeSet<SocketAddr>, shared: &Arc<Shared>) {
        self.running.retain(|addr, task| {
            let keep = wanted.contains(addr);
            if !keep {
                task.abort();
                tracing::info!(%addr, "listener removed; live connections continue");
            }
            keep
        });
        for &addr in wanted {
            if self.running.contains_key(&addr) {
                continue;
            }
            match bind(addr, shared.config.backlog) {
                Ok(l) => {
                    tracing::info!(%addr, "listening");
                    self.running
                        .insert(addr, tokio::spawn(accept_loop(l, addr, shared.clone())));
                }
                Err(e) => {
                    shared.metrics.bind_errors.fetch_add(1, Relaxed);
                    tracing::error!(%addr, error = %e, "cannot bind listener; will retry on next table apply");
                }
            }
        }
    }

    /// Stops all accept loops.
    pub fn stop_all(&mut self) {
        for (_, t) in self.running.drain() {
            t.abort();
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.running.keys().copied().collect()
    }
}

async fn accept_loop(l: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    let lm = shared.metrics.listener(addr);
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                lm.accepted.fetch_add(1, Relaxed);
                let guard = ConnGuard::new(shared.clone());
                let sh = shared.clone();
                tokio::spawn(async move {
                    let _g = guard;
                    crate::conn::handle(s, peer, addr, sh).await;
                });
            }
            Err(e) => {
                // Typically EMFILE/ENFILE: back off instead of spinning.
                tracing::warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The per-connection `set_nodelay` was dropped because accepted sockets inherit
    /// TCP_NODELAY from the listener; this fails if that ever stops being true.
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = super::bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        assert!(s.nodelay().unwrap());
    }
}
