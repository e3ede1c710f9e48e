//! One client connection: read the ClientHello (TLS routes), pick the route and a backend,
//! send the optional PROXY v2 header plus the bytes already read, then relay.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::EdgeConfig;
use crate::hello::{HelloError, Parsed, parse_client_hello};
use crate::metrics::RouteMetrics;
use crate::relay::{RelayConfig, relay, write_all};
use crate::state::{Active, Relaying, RelayingGuard, Shared};

/// Why a connection was closed before relaying.
#[derive(Debug)]
enum HelloFail {
    Parse(HelloError),
    Truncated(usize),
    Timeout(usize),
    Io(io::Error),
}

impl std::fmt::Display for HelloFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloFail::Parse(e) => write!(f, "{e}"),
            HelloFail::Truncated(n) => write!(
                f,
                "client closed after {n} bytes of an incomplete ClientHello"
            ),
            HelloFail::Timeout(n) => {
                write!(f, "ClientHello incomplete after {n} bytes at the timeout")
            }
            HelloFail::Io(e) => write!(f, "read error during ClientHello: {e}"),
        }
    }
}

impl HelloFail {
    fn kind(&self) -> &'static str {
        match self {
            HelloFail::Parse(e) => e.kind(),
            HelloFail::Truncated(_) | HelloFail::Io(_) => "hello_truncated",
            HelloFail::Timeout(_) => "hello_timeout",
        }
    }
}

/// Reads until a complete ClientHello is buffered.
async fn read_hello(
    s: &TcpStream,
    cap: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<String>, HelloFail> {
    loop {
        // Try first: the hello usually arrives with the connection, saving a readiness round trip.
        // (The stack chunk must not live across the await: it would grow every connection task.)
        let got = {
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(cap - buf.len());
            match crate::relay::read_now(s, &mut chunk[..want]) {
                Ok(0) => return Err(HelloFail::Truncated(buf.len())),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(e) => return Err(HelloFail::Io(e)),
            }
        };
        if !got {
            s.readable().await.map_err(HelloFail::Io)?;
            continue;
        }
        match parse_client_hello(buf, cap).map_err(HelloFail::Parse)? {
            Parsed::NeedMore => {}
            Parsed::Complete { sni } => return Ok(sni),
        }
    }
}

/// Decrements the active gauge when the connection ends.
struct ActiveGuard(Arc<RouteMetrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// A connection routed to a backend, with the initial bytes already sent: what the relay phase
/// keeps (the setup phase's larger state is freed by then).
struct Established {
    /// First: it must unregister the sockets before they close.
    _relaying: RelayingGuard,
    client: TcpStream,
    backend: TcpStream,
    rm: Arc<RouteMetrics>,
    _guard: ActiveGuard,
}

/// Handles one accepted connection on the listener bound to `listener`.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    shared: Arc<Shared>,
) {
    // Boxed: the setup phase (ClientHello read, connect with timeouts) needs more state than the
    // relay, and a task's size is that of its largest phase for as long as it lives.
    let Some(c) = Box::pin(establish(client, peer, listener, &shared)).await else {
        return;
    };
    let cfg = &shared.config;
    let rcfg = RelayConfig {
        buffer_bytes: cfg.relay_buffer_bytes,
        splice_after: cfg.splice_after_bytes,
    };
    // Ends at end of stream both ways, or when the drain deadline shuts the sockets down.
    if let Err(e) = relay(&c.client, &c.backend, &c.rm.bytes_in, &c.rm.bytes_out, rcfg).await {
        if !matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            c.rm.error("relay");
        }
        tracing::debug!(error = %e, "relay ended with error");
    }
}

/// Reads the ClientHello (TLS listeners), routes, connects a backend and sends the PROXY v2
/// header and the bytes read so far; `None` when the connection was closed instead.
async fn establish(
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    shared: &Arc<Shared>,
) -> Option<Established> {
    let cfg = &shared.config;
    let lm = shared.metrics.listener(listener);
    // TCP_NODELAY is inherited from the listener (`listen::bind`).
    let is_tcp = shared
        .active()
        .listener_routes(listener)
        .is_some_and(|l| l.tcp.is_some());
    let mut first = Vec::new();
    let sni = if is_tcp {
        None
    } else {
        let t = EdgeConfig::ms(cfg.hello_timeout_ms);
        match timeout(t, read_hello(&client, cfg.hello_max_bytes, &mut first)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                lm.error(e.kind());
                tracing::info!(%peer, %listener, kind = e.kind(), reason = %e, "closing connection: bad ClientHello");
                return None;
            }
            Err(_) => {
                let e = HelloFail::Timeout(first.len());
                lm.error(e.kind());
                tracing::info!(%peer, %listener, kind = e.kind(), reason = %e, "closing connection: ClientHello not complete within {t:?}");
                return None;
            }
        }
    };
    // Route with the table current now; the connection keeps this route until it ends.
    let active = shared.active();
    let Some(idx) = route_index(&active, listener, is_tcp, sni.as_deref()) else {
        lm.error("no_route");
        tracing::info!(%peer, %listener, sni = ?sni, "closing connection: no route (unknown SNI, or no SNI on a listener with several hostnames)");
        return None;
    };
    let route = &active.compiled.table.routes[idx];
    let rm = active.metrics[idx].clone();
    rm.total.fetch_add(1, Relaxed);
    rm.active.fetch_add(1, Relaxed);
    let guard = ActiveGuard(rm.clone());

    let mut head = Vec::new();
    if route.proxy_protocol_v2 {
        // The listener's own address unless it is a wildcard (saves a getsockname).
        let dst = if listener.ip().is_unspecified() {
            client.local_addr().unwrap_or(listener)
        } else {
            listener
        };
        head.extend_from_slice(&crate::proxy_v2::encode(peer, dst));
    }
    head.extend_from_slice(&first);
    // The head (PROXY v2 header, ClientHello) is safe to replay, so it may ride in the SYN.
    let early: &[u8] = if cfg.backend_fast_open { &head } else { &[] };
    let start = active.rr[idx].fetch_add(1, Relaxed);
    let mut backend = None;
    for b in shared.down.order(&route.backends, start) {
        match connect(b, EdgeConfig::ms(cfg.connect_timeout_ms), early).await {
            Ok((s, sent)) => {
                shared.down.mark_up(b);
                rm.selected(b);
                if sent > 0 {
                    shared.metrics.fast_open.fetch_add(1, Relaxed);
                }
                backend = Some((s, sent));
                break;
            }
            Err(e) => {
                rm.error("backend_connect");
                shared
                    .down
                    .mark_down(b, EdgeConfig::ms(cfg.backend_down_ms));
                tracing::warn!(route = %route.id, backend = %b, why = %e, "backend unreachable; marked down, trying the next");
            }
        }
    }
    let Some((backend, sent)) = backend else {
        tracing::warn!(route = %route.id, %peer, "closing connection: no backend reachable");
        return None;
    };
    if let Err(e) = write_all(&backend, &head[sent..]).await {
        rm.error("relay");
        tracing::info!(route = %route.id, error = %e, "backend write failed");
        return None;
    }
    rm.bytes_in.fetch_add(first.len() as u64, Relaxed);
    use std::os::fd::AsRawFd;
    Some(Established {
        _relaying: Relaying::register(shared, [client.as_raw_fd(), backend.as_raw_fd()]),
        client,
        backend,
        rm,
        _guard: guard,
    })
}

/// Connects to a backend with TCP_NODELAY set, within `limit`, sending `early` in the SYN when
/// the backend supports TCP Fast Open (RFC 7413) and the kernel holds its cookie: returns the
/// stream and how many bytes of `early` went out that way (0 without a cookie, the first time,
/// or when the host has Fast Open client support off; the caller sends the rest). When the
/// handshake completed inside the system call (a local backend), the stream is returned at once:
/// no timer is armed and the task does not wait for a writable event it does not need.
async fn connect(
    addr: SocketAddr,
    limit: std::time::Duration,
    early: &[u8],
) -> io::Result<(TcpStream, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    let to = addr.into();
    let in_progress = |e: &io::Error| e.raw_os_error() == Some(libc::EINPROGRESS);
    // The SYN went out with Fast Open: `Some(bytes of early it carried)`.
    let fast_open = if early.is_empty() {
        None
    } else {
        match s.send_to_with_flags(early, &to, libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL) {
            Ok(n) => Some(n),
            Err(e) if in_progress(&e) => Some(0),
            // net.ipv4.tcp_fastopen has the client bit off: connect the plain way.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => None,
            Err(e) => return Err(e),
        }
    };
    let sent = match fast_open {
        Some(n) => n,
        None => match s.connect(&to) {
            Ok(()) => 0,
            Err(e) if in_progress(&e) => 0,
            Err(e) => return Err(e),
        },
    };
    let done = s.peer_addr().is_ok();
    let stream = TcpStream::from_std(std::net::TcpStream::from(s))?;
    if !done {
        timeout(limit, stream.writable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    Ok((stream, sent))
}

fn route_index(
    active: &Active,
    listener: SocketAddr,
    is_tcp: bool,
    sni: Option<&str>,
) -> Option<usize> {
    let l = active.listener_routes(listener)?;
    if is_tcp { l.tcp } else { l.tls_route(sni) }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// A local backend completes inside connect(2): the stream comes back with TCP_NODELAY; a
    /// refused port is an error; a backend whose accept queue is full (SYNs dropped) times out.
    #[tokio::test]
    async fn connect_succeeds_refuses_and_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (s, sent) = super::connect(l.local_addr().unwrap(), Duration::from_secs(5), &[])
            .await
            .unwrap();
        assert_eq!(sent, 0);
        assert!(s.nodelay().unwrap());
        assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = super::connect(addr, Duration::from_secs(5), b"early")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

        // listen(0) and never accept: once the queue holds a connection, SYNs are dropped.
        let full =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        full.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        full.listen(0).unwrap();
        let addr = full.local_addr().unwrap().as_socket().unwrap();
        let mut held = Vec::new();
        let t0 = Instant::now();
        let e = loop {
            match super::connect(addr, Duration::from_millis(300), b"early").await {
                Ok((s, _)) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 16, "accept queue never filled");
        };
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    /// Connects with `early`, sends what did not ride in the SYN, and returns how much did and
    /// what the backend `l` received.
    async fn fast_open_once(l: &std::net::TcpListener, early: &[u8]) -> (usize, Vec<u8>) {
        use std::io::Read;
        let (s, sent) = super::connect(l.local_addr().unwrap(), Duration::from_secs(5), early)
            .await
            .unwrap();
        crate::relay::write_all(&s, &early[sent..]).await.unwrap();
        drop(s);
        let (mut b, _) = l.accept().unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        (sent, got)
    }

    /// TCP Fast Open against real kernel sockets, in a network namespace private to this test's
    /// thread (so its `net.ipv4.tcp_fastopen` is not the host's). Without server support the
    /// bytes go after a plain handshake; a Fast Open backend hands out a cookie on the first
    /// connection and takes the bytes in the SYN from the second on; with the guest's setting
    /// (0x403, what scalebox-init writes) a listener needs no socket option for that; a head
    /// longer than the SYN can carry is split. The backend receives the same bytes every time.
    #[test]
    fn fast_open_sends_the_head_in_the_syn_when_the_backend_takes_it() {
        std::thread::spawn(|| {
            scalebox_testkit::netns::enter_private().unwrap();
            let sysctl = |v: &str| std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", v).unwrap();
            let listener = |opt: Option<i32>| {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                if let Some(q) = opt {
                    use std::os::fd::AsRawFd;
                    // SAFETY: setsockopt with a live c_int on a listener we own.
                    let rc = unsafe {
                        libc::setsockopt(
                            l.as_raw_fd(),
                            libc::IPPROTO_TCP,
                            libc::TCP_FASTOPEN,
                            (&q as *const i32).cast(),
                            4,
                        )
                    };
                    assert_eq!(rc, 0);
                }
                l
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let early = b"PROXY-header+ClientHello".as_slice();
            rt.block_on(async {
                // Client support only (the kernel default): the server ignores the cookie request.
                sysctl("1");
                let plain = listener(None);
                assert_eq!(fast_open_once(&plain, early).await, (0, early.to_vec()));
                // Server support, listener opted in: cookie first, then data in the SYN.
                sysctl("3");
                let tfo = listener(Some(16));
                assert_eq!(fast_open_once(&tfo, early).await, (0, early.to_vec()));
                assert_eq!(
                    fast_open_once(&tfo, early).await,
                    (early.len(), early.to_vec())
                );
                // The guest's setting: every listener takes it without the socket option.
                sysctl("1027");
                let guest = listener(None);
                assert_eq!(
                    fast_open_once(&guest, early).await,
                    (early.len(), early.to_vec())
                );
                // A head longer than a SYN can carry (1280-byte MTU): part rides in the SYN, the
                // caller sends the rest.
                scalebox_testkit::netns::ip(&["link", "set", "lo", "mtu", "1280"]).unwrap();
                let big: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
                let (sent, got) = fast_open_once(&tfo, &big).await;
                assert!(sent > 0 && sent < big.len(), "{sent} bytes in the SYN");
                assert_eq!(got, big);
                // Client support off: a plain connect, nothing in the SYN.
                sysctl("0");
                assert_eq!(fast_open_once(&tfo, early).await, (0, early.to_vec()));
            });
        })
        .join()
        .unwrap();
    }

    /// Regression guard: the per-connection task is the main per-idle-connection memory cost.
    #[test]
    fn future_sizes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                .await
                .unwrap();
            let (b, _) = l.accept().await.unwrap();
            let c = std::sync::atomic::AtomicU64::new(0);
            let cfg = crate::relay::RelayConfig {
                buffer_bytes: 1024,
                splice_after: 1,
            };
            let f = crate::relay::relay(&a, &b, &c, &c, cfg);
            eprintln!("relay future {} bytes", std::mem::size_of_val(&f));
            drop(f);
            let sh = std::sync::Arc::new(crate::state::Shared::new(Default::default()));
            let h = super::handle(
                a,
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:1".parse().unwrap(),
                sh,
            );
            eprintln!("handle future {} bytes", std::mem::size_of_val(&h));
            assert!(
                std::mem::size_of_val(&h) <= 512,
                "connection future grew past 512 bytes"
            );
        });
    }
}
