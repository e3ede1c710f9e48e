//! Health checks from the host: TCP connect, or a minimal HTTP/1.1 GET written over a tokio
//! `TcpStream` (2xx/3xx passes). Also the pure threshold logic deciding pass/fail from
//! consecutive results.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::spec::{HealthCheck, HealthKind};

/// Most bytes read looking for the HTTP status line.
const MAX_STATUS_LINE: usize = 8192;

/// Parses the status code out of an HTTP/1.x status line (`HTTP/1.1 200 OK`).
pub fn parse_status_line(buf: &[u8]) -> Result<u16, String> {
    let end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .or_else(|| buf.iter().position(|&b| b == b'\n'))
        .ok_or_else(|| "response has no complete status line".to_string())?;
    let line = std::str::from_utf8(&buf[..end])
        .map_err(|_| "status line is not valid UTF-8".to_string())?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!(
            "not an HTTP/1.x response: {:?}",
            line.chars().take(60).collect::<String>()
        ));
    }
    let code = parts.next().unwrap_or("");
    if code.len() != 3 {
        return Err(format!("bad status code {code:?}"));
    }
    code.parse::<u16>()
        .map_err(|_| format!("bad status code {code:?}"))
}

/// Runs one probe against `host`. `Ok(())` is a pass; `Err` says why it failed.
pub async fn probe(check: &HealthCheck, host: IpAddr) -> Result<(), String> {
    let addr = SocketAddr::new(host, check.port);
    let timeout = Duration::from_secs(check.timeout_s.into());
    match tokio::time::timeout(timeout, probe_inner(check, addr)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}s", check.timeout_s)),
    }
}

async fn probe_inner(check: &HealthCheck, addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if check.kind == HealthKind::Tcp {
        return Ok(());
    }
    let path = check.path.as_deref().unwrap_or("/");
    let host = match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: scalebox-agent-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send request: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(2).any(|w| w == b"\r\n") || buf.contains(&b'\n') {
            break;
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("status line longer than 8 KiB".into());
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = parse_status_line(&buf)?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("GET {path} returned HTTP {code}"))
    }
}

/// Consecutive-result thresholds. Pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    pub passing: bool,
    pub ok_streak: u32,
    pub fail_streak: u32,
}

/// What a new result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    BecameHealthy,
    BecameUnhealthy,
}

impl Tracker {
    /// Records a result; `in_grace` failures are not counted.
    pub fn record(&mut self, check: &HealthCheck, ok: bool, in_grace: bool) -> Change {
        if ok {
            self.fail_streak = 0;
            self.ok_streak = self.ok_streak.saturating_add(1);
            if !self.passing && self.ok_streak >= check.healthy_threshold {
                self.passing = true;
                return Change::BecameHealthy;
            }
        } else if !in_grace {
            self.ok_streak = 0;
            self.fail_streak = self.fail_streak.saturating_add(1);
            if self.passing && self.fail_streak >= check.unhealthy_threshold {
                self.passing = false;
                return Change::BecameUnhealthy;
            }
        }
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: HealthKind, port: u16, path: Option<&str>) -> HealthCheck {
        HealthCheck {
            kind,
            port,
            path: path.map(str::to_string),
            interval_s: 1,
            timeout_s: 1,
            grace_s: 0,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 302\r\nLocation: x"), Ok(302));
        assert_eq!(parse_status_line(b"HTTP/1.1 404 Not Found\n"), Ok(404));
        for bad in [
            &b"HTTP/1.1 200 OK"[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 abc OK\r\n",
            b"\xff\xfe\r\n",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn thresholds_and_grace() {
        let c = check(HealthKind::Tcp, 1, None);
        let mut t = Tracker::default();
        assert_eq!(t.record(&c, true, false), Change::None);
        assert_eq!(t.record(&c, true, false), Change::BecameHealthy);
        assert_eq!(t.record(&c, false, false), Change::None);
        assert_eq!(t.record(&c, true, false), Change::None);
        assert_eq!(t.record(&c, false, false), Change::None);
        assert_eq!(t.record(&c, false, false), Change::BecameUnhealthy);
        let mut g = Tracker::default();
        g.record(&c, false, true);
        assert_eq!(g.fail_streak, 0);
    }

    async fn serve_once(response: &'static [u8]) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let n = s.read(&mut b).await.unwrap();
            assert!(b[..n].starts_with(b"GET /hz HTTP/1.1\r\n"));
            s.write_all(response).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn http_probe_pass_and_fail() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        let p = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        probe(&check(HealthKind::Http, p, Some("/hz")), lo)
            .await
            .unwrap();
        let p = serve_once(b"HTTP/1.1 503 Unavailable\r\n\r\n").await;
        let e = probe(&check(HealthKind::Http, p, Some("/hz")), lo)
            .await
            .unwrap_err();
        assert!(e.contains("503"), "{e}");
        // Closed port: connect refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap().port();
        drop(l);
        let e = probe(&check(HealthKind::Tcp, closed, None), lo)
            .await
            .unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
