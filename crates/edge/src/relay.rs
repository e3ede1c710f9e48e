//! Bidirectional byte relay between a client and a backend socket.
//!
//! Each direction waits for readiness before it allocates a buffer, so an idle connection holds
//! no relay buffers. A direction that has moved more than a threshold switches to `splice(2)`
//! through a pipe (Linux), keeping payload bytes in the kernel. Both paths count bytes as they
//! move. End of stream in one direction becomes `shutdown(SHUT_WR)` on the other socket
//! (half-close); the relay ends when both directions have finished or either fails.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::net::TcpStream;

/// Tuning of the relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    pub buffer_bytes: usize,
    /// Switch a direction to splice after this many bytes (`u64::MAX`: never).
    pub splice_after: u64,
}

/// Relays until both directions reach end of stream. `up` counts client→backend bytes, `down`
/// backend→client bytes.
pub async fn relay(
    client: &TcpStream,
    backend: &TcpStream,
    up: &AtomicU64,
    down: &AtomicU64,
    cfg: RelayConfig,
) -> io::Result<()> {
    tokio::try_join!(
        pump(client, backend, up, cfg),
        pump(backend, client, down, cfg)
    )?;
    Ok(())
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

async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    cfg: RelayConfig,
) -> io::Result<()> {
    let mut moved = 0u64;
    loop {
        if moved >= cfg.splice_after {
            // Boxed so that only long flows pay for the splice state.
            return Box::pin(splice_pump(from, to, count)).await;
        }
        // While idle a direction holds only this readiness wait: the buffer and the write state
        // live in a boxed future that exists only while data moves.
        from.readable().await?;
        if Box::pin(drain(from, to, count, cfg, &mut moved)).await? {
            shutdown_write(to);
            return Ok(());
        }
    }
}

/// Moves what is readable now; returns true at end of stream.
async fn drain(
    from: &TcpStream,
    to: &TcpStream,
    count: &AtomicU64,
    cfg: RelayConfig,
    moved: &mut u64,
) -> io::Result<bool> {
    let mut buf = vec![0u8; cfg.buffer_bytes];
    loop {
        match from.try_read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                write_all(to, &buf[..n]).await?;
                count.fetch_add(n as u64, Relaxed);
                *moved += n as u64;
                if *moved >= cfg.splice_after {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
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
