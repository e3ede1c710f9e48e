//! Lower-bound experiment for `bench/edge/run` (run by default; `FLOOR=0` skips it), not a
//! product path: the least work an SNI-routing proxy with PROXY v2 can do per connection,
//! written straight on epoll. One thread, no runtime, no timers, no metrics, no table, one
//! backend, and no handling of a full send buffer or a slow connect (it blocks in `poll(2)`
//! instead): everything the edge has and this lacks is overhead above this floor, and
//! everything this still costs is the kernel's share that any user-space proxy pays on the same
//! TCP flow.
//!
//! Per connection: `accept4`, `recv` (the ClientHello, parsed for its SNI), `socket`,
//! `setsockopt(TCP_NODELAY)`, `sendto(MSG_FASTOPEN)` (PROXY v2 header + hello in the SYN when the
//! backend takes TCP Fast Open; else `connect` then `send`), two
//! `epoll_ctl(ADD)` (edge-triggered; `close` removes them), then per direction `recv`/`send`,
//! `recv` = 0 → `shutdown(SHUT_WR)` on the other side, and `close` of both when both ended.
//!
//! With `--bookkeeping` it also does, per connection, the cheap things a production proxy has
//! to do on the same path (what a raw-epoll data path for the edge would cost): look the SNI up
//! in a table behind a lock, count per-route metrics (connections, active, bytes, backend
//! selections), order backends through the edge's `DownList` and mark the chosen one up, learn
//! whether the handshake completed (`getpeername`), register both sockets for the drain
//! deadline (a locked slot list), and read the clock once per event loop turn for timeouts.
//!
//! Usage: edge_floor LISTEN_PORT BACKEND_PORT [--bookkeeping] (both on 127.0.0.1).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use scalebox_edge::backend::DownList;
use scalebox_edge::hello::{Parsed, parse_client_hello};
use scalebox_edge::metrics::RouteMetrics;

const BUF: usize = 16 * 1024;

#[derive(Default, Clone)]
struct Slot {
    peer: Option<i32>,
    /// Client address (PROXY v2 source), while the hello is being read.
    from: Option<SocketAddr>,
    hello: Vec<u8>,
    eof: bool,
    /// `--bookkeeping`: the route's metrics and the drain registry slot (client side only).
    route: Option<(Arc<RouteMetrics>, usize)>,
}

/// Relaying sockets by slot, and the free slots.
type Slots = (Vec<Option<[i32; 2]>>, Vec<usize>);

/// What `--bookkeeping` maintains, as the edge does.
struct Books {
    table: RwLock<Arc<HashMap<String, usize>>>,
    routes: Vec<Arc<RouteMetrics>>,
    backends: Vec<SocketAddr>,
    rr: AtomicUsize,
    down: DownList,
    /// Sockets of relaying connections, for the drain deadline.
    relaying: Mutex<Slots>,
}

impl Books {
    fn new(backend: SocketAddr) -> Books {
        let mut t = HashMap::new();
        t.insert("a.bench".to_owned(), 0);
        t.insert("b.bench".to_owned(), 1);
        Books {
            table: RwLock::new(Arc::new(t)),
            routes: vec![Arc::default(), Arc::default()],
            backends: vec![backend],
            rr: AtomicUsize::new(0),
            down: DownList::default(),
            relaying: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    fn register(&self, fds: [i32; 2]) -> usize {
        let mut r = self.relaying.lock().unwrap();
        match r.1.pop() {
            Some(i) => {
                r.0[i] = Some(fds);
                i
            }
            None => {
                r.0.push(Some(fds));
                r.0.len() - 1
            }
        }
    }

    fn unregister(&self, slot: usize) {
        let mut r = self.relaying.lock().unwrap();
        r.0[slot] = None;
        r.1.push(slot);
    }
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(rc)
}

fn sockaddr(port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as libc::sa_family_t;
    a.sin_port = port.to_be();
    a.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    a
}

fn set_int(fd: i32, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt").map(drop)
}

/// Sends all of `buf`, waiting in poll(2) when the socket is not writable (never on loopback
/// at the bench's sizes).
fn send_all(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: send from a live slice on an fd we own.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            buf = &buf[n as usize..];
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock {
            return Err(e);
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut p, 1, -1) };
    }
    Ok(())
}

struct Floor {
    books: Option<Books>,
    ep: i32,
    listen: SocketAddr,
    backend: libc::sockaddr_in,
    slots: Vec<Slot>,
    buf: Vec<u8>,
}

impl Floor {
    fn slot(&mut self, fd: i32) -> &mut Slot {
        let i = fd as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, Slot::default());
        }
        &mut self.slots[i]
    }

    fn add(&self, fd: i32) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: a live epoll fd and event.
        check(
            unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            "epoll_ctl",
        )
        .map(drop)
    }

    fn close(&mut self, fd: i32) {
        if let Some((rm, slot)) = self.slot(fd).route.take() {
            rm.active.fetch_sub(1, Relaxed);
            if let Some(b) = &self.books {
                b.unregister(slot);
            }
        }
        *self.slot(fd) = Slot::default();
        // SAFETY: closing an fd we own (this also removes it from the epoll set).
        unsafe { libc::close(fd) };
    }

    /// Reads once: `Some(n)` bytes (0 = end of stream), `None` when nothing was queued.
    fn recv(&mut self, fd: i32) -> io::Result<Option<usize>> {
        // SAFETY: recv into our buffer.
        let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), BUF, 0) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        }
    }

    /// Reads the hello (first try right after accept, before any registration).
    fn hello(&mut self, c: i32, registered: bool) -> io::Result<()> {
        let n = match self.recv(c)? {
            Some(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(n) => n,
            None => return if registered { Ok(()) } else { self.add(c) },
        };
        let mut hello = std::mem::take(&mut self.slot(c).hello);
        hello.extend_from_slice(&self.buf[..n]);
        let sni = match parse_client_hello(&hello, BUF) {
            Ok(Parsed::NeedMore) => {
                self.slot(c).hello = hello;
                return if registered { Ok(()) } else { self.add(c) };
            }
            Ok(Parsed::Complete { sni }) => sni,
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        let listen = self.listen;
        let from = self.slot(c).from.take().unwrap_or(listen);
        let mut head = scalebox_edge::proxy_v2::encode(from, listen);
        head.extend_from_slice(&hello);
        let mut route = None;
        if let Some(b) = &self.books {
            let table = b.table.read().unwrap().clone();
            let idx = sni
                .as_deref()
                .and_then(|h| table.get(h).copied())
                .ok_or_else(|| io::Error::other("no route"))?;
            let rm = b.routes[idx].clone();
            rm.total.fetch_add(1, Relaxed);
            rm.active.fetch_add(1, Relaxed);
            let order = b.down.order(&b.backends, b.rr.fetch_add(1, Relaxed));
            b.down.mark_up(order[0]);
            rm.selected(order[0]);
            rm.bytes_in.fetch_add(head.len() as u64, Relaxed);
            route = Some(rm);
        }
        // SAFETY: plain socket calls on fds we own, with a live sockaddr_in.
        let b = check(
            unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            },
            "socket",
        )?;
        set_int(b, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        // The head in the SYN when the backend takes TCP Fast Open, else after the handshake.
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let to = (&self.backend as *const libc::sockaddr_in).cast();
        let flags = libc::MSG_FASTOPEN | libc::MSG_NOSIGNAL;
        // SAFETY: sendto/connect from live buffers and a live sockaddr_in.
        let mut n = unsafe { libc::sendto(b, head.as_ptr().cast(), head.len(), flags, to, len) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
            n = unsafe { libc::connect(b, to, len) } as isize;
        }
        let sent = if n >= 0 {
            n as usize
        } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINPROGRESS) {
            0
        } else {
            let e = io::Error::last_os_error();
            self.close(b);
            return Err(e);
        };
        if self.books.is_some() {
            // SAFETY: getpeername into a live sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut l = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            unsafe { libc::getpeername(b, (&mut sa as *mut libc::sockaddr_in).cast(), &mut l) };
        }
        if let Err(e) = send_all(b, &head[sent..]) {
            self.close(b);
            return Err(e);
        }
        if let (Some(books), Some(rm)) = (&self.books, route) {
            let slot = books.register([c, b]);
            self.slot(c).route = Some((rm, slot));
        }
        if !registered {
            self.add(c)?;
        }
        self.add(b)?;
        self.slot(c).peer = Some(b);
        self.slot(b).peer = Some(c);
        Ok(())
    }

    /// Moves what `fd` has to its peer; on end of stream half-closes the peer, or closes both
    /// when the peer's direction ended too.
    fn relay(&mut self, fd: i32) {
        let Some(peer) = self.slot(fd).peer else {
            return;
        };
        loop {
            match self.recv(fd) {
                Ok(None) => return,
                Ok(Some(0)) => {
                    self.slot(fd).eof = true;
                    if self.slot(peer).eof {
                        self.close(fd);
                        self.close(peer);
                    } else {
                        // SAFETY: shutdown on an fd we own.
                        unsafe { libc::shutdown(peer, libc::SHUT_WR) };
                    }
                    return;
                }
                Ok(Some(n)) => {
                    if let Some((rm, _)) = &self.slot(fd).route {
                        rm.bytes_in.fetch_add(n as u64, Relaxed);
                    } else if let Some((rm, _)) = &self.slot(peer).route {
                        rm.bytes_out.fetch_add(n as u64, Relaxed);
                    }
                    let data = std::mem::take(&mut self.buf);
                    let r = send_all(peer, &data[..n]);
                    self.buf = data;
                    if r.is_err() {
                        break;
                    }
                    // A short read drained the queue (edge-triggered: new bytes raise a new event).
                    if n < BUF {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        self.close(fd);
        self.close(peer);
    }
}

fn main() -> io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bookkeeping = args.iter().any(|a| a == "--bookkeeping");
    args.retain(|a| a != "--bookkeeping");
    let ports: Result<Vec<u16>, _> = args.iter().map(|a| a.parse()).collect();
    let (lport, bport) = match ports.as_deref() {
        Ok(&[l, b]) => (l, b),
        _ => {
            eprintln!(
                "usage: edge_floor LISTEN_PORT BACKEND_PORT [--bookkeeping] (two ports, 0-65535; got {args:?})"
            );
            std::process::exit(2);
        }
    };
    // SAFETY: plain socket/epoll calls; every pointer passed is to a live local.
    unsafe {
        let l = check(
            libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0),
            "socket",
        )?;
        set_int(l, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        set_int(l, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
        let a = sockaddr(lport);
        check(
            libc::bind(
                l,
                (&a as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            "bind",
        )?;
        check(libc::listen(l, 4096), "listen")?;
        let ep = check(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1")?;
        let backend_addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, bport));
        let mut f = Floor {
            books: bookkeeping.then(|| Books::new(backend_addr)),
            ep,
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, lport)),
            backend: sockaddr(bport),
            slots: Vec::new(),
            buf: vec![0; BUF],
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: l as u64,
        };
        check(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, l, &mut ev),
            "epoll_ctl",
        )?;
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, -1);
            if f.books.is_some() {
                // Where a production loop checks its timeout deadlines.
                std::hint::black_box(std::time::Instant::now());
            }
            for e in evs.iter().take(n.max(0) as usize) {
                let fd = e.u64 as i32;
                if fd == l {
                    loop {
                        let mut sa: libc::sockaddr_in = std::mem::zeroed();
                        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                        let c = libc::accept4(
                            l,
                            (&mut sa as *mut libc::sockaddr_in).cast(),
                            &mut len,
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        );
                        if c < 0 {
                            break;
                        }
                        f.slot(c).from = Some(SocketAddr::V4(SocketAddrV4::new(
                            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
                            u16::from_be(sa.sin_port),
                        )));
                        if f.hello(c, false).is_err() {
                            f.close(c);
                        }
                    }
                } else if f.slot(fd).peer.is_some() {
                    f.relay(fd);
                } else if f.hello(fd, true).is_err() {
                    f.close(fd);
                }
            }
        }
    }
}
