//! Bidirectional byte relay between a client and a backend socket.
//!
//! Both directions are one hand-written future that registers readiness interest in the sockets
//! themselves; reads go into the worker thread's buffer and are written on at once, so an idle
//! connection holds no relay buffer (one is allocated only while the other side is not taking
//! bytes). A direction that has moved more than a threshold switches to `splice(2)`
//! through a pipe (Linux), keeping payload bytes in the kernel. Both paths count bytes as they
//! move. End of stream in one direction becomes `shutdown(SHUT_WR)` on the other socket
//! (half-close); the relay ends when both directions have finished or either fails.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;

/// Tuning of the relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    pub buffer_bytes: usize,
    /// Switch a direction to splice after this many bytes (`u64::MAX`: never).
    pub splice_after: u64,
}

/// Relays until both directions reach end of stream; the caller then closes both sockets (the
/// last end of stream is not propagated with `shutdown(2)`: closing sends it). `up` counts
/// client→backend bytes, `down` backend→client bytes. (A plain function returning the future: an `async fn` wrapper would
/// store its arguments next to it.)
pub fn relay<'a>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    up: &'a AtomicU64,
    down: &'a AtomicU64,
    cfg: RelayConfig,
) -> impl Future<Output = io::Result<()>> + Send + 'a {
    Relay {
        socks: [client, backend],
        counts: [up, down],
        cfg,
        dirs: [Dir::default(), Dir::default()],
    }
}

fn shutdown_write(s: &TcpStream) {
    // SAFETY: shutdown(2) on a socket fd we borrow; it does not close or invalidate the fd.
    unsafe {
        libc::shutdown(s.as_raw_fd(), libc::SHUT_WR);
    }
}

/// Writes all of `buf` to `to`, waiting for writability as needed.
pub async fn write_all(to: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match to.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what `s` has now into `buf`, like `try_read`, with one difference: a short read (less
/// than `buf`) also clears the socket's cached readiness, because the kernel queue was empty at
/// that moment (epoll is edge-triggered: later bytes raise a new event). The next wait then
/// costs no `recv` that would only say "would block". The clearing goes through `try_io`, which
/// keeps readiness that a newer event set meanwhile.
pub fn read_now(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let fd = s.as_raw_fd();
    let r = s.try_io(tokio::io::Interest::READABLE, || {
        // SAFETY: recv into a buffer we own, on a socket fd we borrow.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n > 0 && n < buf.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (r, _) => r,
    }
}

thread_local! {
    /// The copy buffer of this worker thread: reads land here and are written on at once, so a
    /// connection holds a buffer of its own only while the other side cannot take the bytes.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads handled per direction in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 32;

type SpliceFut<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// One direction of the relay. While idle it is just this enum tag and a counter: the readiness
/// wait is registered in the socket itself (`poll_read_ready`), not in a future of ours.
#[derive(Default)]
enum State<'a> {
    #[default]
    Idle,
    /// Bytes read but not yet taken by the other side.
    Writing(Box<(Vec<u8>, usize)>),
    /// A long flow, moved through a pipe with splice(2) (boxed: only long flows pay for it).
    Splice(SpliceFut<'a>),
    Done,
}

#[derive(Default)]
struct Dir<'a> {
    moved: u64,
    state: State<'a>,
}

/// Both directions as one hand-written future (a few dozen bytes instead of two pump futures).
struct Relay<'a> {
    socks: [&'a TcpStream; 2],
    counts: [&'a AtomicU64; 2],
    cfg: RelayConfig,
    dirs: [Dir<'a>; 2],
}

/// What one read-and-forward step did.
enum Step {
    Eof,
    Moved(usize),
    Partial { written: usize, rest: Vec<u8> },
    NotReady,
}

fn read_and_forward(from: &TcpStream, to: &TcpStream, size: usize) -> io::Result<Step> {
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < size {
            b.resize(size, 0);
        }
        let n = match read_now(from, &mut b[..size]) {
            Ok(0) => return Ok(Step::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::NotReady),
            Err(e) => return Err(e),
        };
        let mut at = 0;
        while at < n {
            match to.try_write(&b[at..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => at += m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Step::Partial {
                        written: at,
                        rest: b[at..n].to_vec(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Step::Moved(n))
    })
}

impl<'a> Relay<'a> {
    /// Drives direction `i` (0: client→backend); `Ready(Ok)` once it reached end of stream.
    fn poll_dir(&mut self, i: usize, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (from, to, count) = (self.socks[i], self.socks[1 - i], self.counts[i]);
        let cfg = self.cfg;
        // When the other direction has ended, this end of stream ends the relay: the sockets
        // are closed right after, which sends the FIN, so no shutdown(2) is needed.
        let other_done = matches!(self.dirs[1 - i].state, State::Done);
        let dir = &mut self.dirs[i];
        for _ in 0..READS_PER_POLL {
            match &mut dir.state {
                State::Done => return Poll::Ready(Ok(())),
                State::Splice(f) => {
                    let r = ready!(f.as_mut().poll(cx));
                    dir.state = State::Done;
                    return Poll::Ready(r);
                }
                State::Writing(p) => {
                    let (buf, at) = &mut **p;
                    match to.try_write(&buf[*at..]) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(m) => {
                            *at += m;
                            count.fetch_add(m as u64, Relaxed);
                            dir.moved += m as u64;
                            if *at == buf.len() {
                                dir.state = State::Idle;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(to.poll_write_ready(cx))?;
                        }
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                State::Idle => {
                    if dir.moved >= cfg.splice_after {
                        dir.state = State::Splice(Box::pin(splice_pump(from, to, count)));
                        continue;
                    }
                    // Ask the readiness the runtime already knows first: a socket with no event
                    // yet (the backend, just connected) costs no read that would block.
                    ready!(from.poll_read_ready(cx))?;
                    match read_and_forward(from, to, cfg.buffer_bytes)? {
                        Step::Eof => {
                            if !other_done {
                                shutdown_write(to);
                            }
                            dir.state = State::Done;
                            return Poll::Ready(Ok(()));
                        }
                        Step::Moved(n) => {
                            count.fetch_add(n as u64, Relaxed);
                            dir.moved += n as u64;
                        }
                        Step::Partial { written, rest } => {
                            count.fetch_add(written as u64, Relaxed);
                            dir.moved += written as u64;
                            dir.state = State::Writing(Box::new((rest, 0)));
                        }
                        Step::NotReady => ready!(from.poll_read_ready(cx))?,
                    }
                }
            }
        }
        // Busy direction: let other connections run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Future for Relay<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut done = 0;
        for i in 0..2 {
            match this.poll_dir(i, cx) {
                Poll::Ready(Ok(())) => done += 1,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if done == 2 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// A non-blocking pipe used as the splice intermediary.
struct Pipe {
    r: libc::c_int,
    w: libc::c_int,
}

const PIPE_BYTES: usize = 1 << 16;

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: fds is a valid 2-element array for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Pipe {
            r: fds[0],
            w: fds[1],
        })
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both fds were created by pipe2 and are owned only by this struct.
        unsafe {
            libc::close(self.r);
            libc::close(self.w);
        }
    }
}

fn splice(from: libc::c_int, to: libc::c_int, len: usize) -> io::Result<usize> {
    // SAFETY: plain fds and null offsets (both ends are a socket or a pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn splice_pump(from: &TcpStream, to: &TcpStream, count: &AtomicU64) -> io::Result<()> {
    let pipe = Pipe::new()?;
    let (ffd, tfd) = (from.as_raw_fd(), to.as_raw_fd());
    loop {
        from.readable().await?;
        let n = match from.try_io(tokio::io::Interest::READABLE, || {
            splice(ffd, pipe.w, PIPE_BYTES)
        }) {
            Ok(0) => {
                shutdown_write(to);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match to.try_io(tokio::io::Interest::WRITABLE, || splice(pipe.r, tfd, left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
        count.fetch_add(n as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    async fn roundtrip(splice_after: u64) {
        // client <-> (a_srv | relay | b_cli) <-> backend
        let (mut client, a_srv) = pair().await;
        let (b_cli, mut backend) = pair().await;
        let up = AtomicU64::new(0);
        let down = AtomicU64::new(0);
        let cfg = RelayConfig {
            buffer_bytes: 4096,
            splice_after,
        };
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            backend.read_to_end(&mut got).await.unwrap();
            backend.write_all(&got).await.unwrap();
            backend.shutdown().await.unwrap();
            got.len()
        });
        let cl = tokio::spawn(async move {
            client.write_all(&d2).await.unwrap();
            client.shutdown().await.unwrap(); // half-close: we still read the echo
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        relay(&a_srv, &b_cli, &up, &down, cfg).await.unwrap();
        // The relay's contract: its caller closes both sockets when it ends.
        drop((a_srv, b_cli));
        assert_eq!(echo.await.unwrap(), data.len());
        assert_eq!(cl.await.unwrap(), data);
        assert_eq!(up.load(Relaxed), data.len() as u64);
        assert_eq!(down.load(Relaxed), data.len() as u64);
    }

    #[tokio::test]
    async fn copy_path_half_close_and_counts() {
        roundtrip(u64::MAX).await;
    }

    #[tokio::test]
    async fn splice_path_half_close_and_counts() {
        roundtrip(10_000).await;
    }
}
