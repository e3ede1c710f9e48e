//! Admin listener: a minimal HTTP/1.1 server (one request per connection) for `GET /metrics`,
//! `GET /healthz`, `GET /table` and `PUT /table`.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::EdgeHandle;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 8 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub content_length: usize,
    /// Bytes after the head already read.
    pub body_start: usize,
}

/// Parses a request head from `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= MAX_HEAD {
            Err("request head too large")
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let mut rl = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(ver)) = (rl.next(), rl.next(), rl.next()) else {
        return Err("malformed request line");
    };
    if !ver.starts_with("HTTP/1.") {
        return Err("only HTTP/1.x is supported");
    }
    let mut content_length = 0;
    for h in lines {
        let Some((k, v)) = h.split_once(':') else {
            return Err("malformed header line");
        };
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.trim().parse().map_err(|_| "bad Content-Length")?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding is not supported; send Content-Length");
        }
    }
    if content_length > MAX_BODY {
        return Err("body larger than 8 MiB");
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    Ok(Some(Head {
        method: method.to_string(),
        path,
        content_length,
        body_start: end + 4,
    }))
}

/// Serves admin requests until the task is aborted.
pub async fn serve(l: TcpListener, edge: EdgeHandle) {
    loop {
        let Ok((s, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT * 3, one(s, edge)).await;
        });
    }
}

async fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.shutdown().await
}

async fn one(mut s: TcpStream, edge: EdgeHandle) -> io::Result<()> {
    let mut buf = Vec::new();
    let head = loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => {
                return respond(
                    &mut s,
                    "400 Bad Request",
                    "text/plain",
                    format!("{e}\n").as_bytes(),
                )
                .await;
            }
        }
    };
    let mut body = buf.split_off(head.body_start.min(buf.len()));
    while body.len() < head.content_length {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await??;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(head.content_length);
    let text = "text/plain; charset=utf-8";
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/healthz") => respond(&mut s, "200 OK", text, b"ok\n").await,
        ("GET", "/metrics") => {
            let m = edge.shared.metrics.render();
            respond(
                &mut s,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                m.as_bytes(),
            )
            .await
        }
        ("GET", "/table") => {
            let t = serde_json::to_vec_pretty(&edge.table()).unwrap_or_default();
            respond(&mut s, "200 OK", "application/json", &t).await
        }
        ("PUT", "/table") => {
            let res = match crate::table::parse(&body) {
                Ok(t) => edge.apply(t).await,
                Err(e) => Err(e.into()),
            };
            match res {
                Ok(()) => {
                    let g = edge.table().generation;
                    respond(
                        &mut s,
                        "200 OK",
                        "application/json",
                        format!("{{\"generation\":{g}}}\n").as_bytes(),
                    )
                    .await
                }
                Err(e @ crate::EdgeError::StaleGeneration { .. }) => {
                    respond(&mut s, "409 Conflict", text, format!("{e}\n").as_bytes()).await
                }
                Err(e) => {
                    respond(&mut s, "400 Bad Request", text, format!("{e}\n").as_bytes()).await
                }
            }
        }
        (_, "/healthz" | "/metrics" | "/table") => {
            respond(
                &mut s,
                "405 Method Not Allowed",
                text,
                b"method not allowed\n",
            )
            .await
        }
        _ => {
            respond(
                &mut s,
                "404 Not Found",
                text,
                b"not found: try /metrics, /healthz, /table\n",
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"), Ok(None));
        let h = parse_head(b"PUT /table?x=1 HTTP/1.1\r\nContent-Length: 12\r\n\r\n{}")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.content_length),
            ("PUT", "/table", 12)
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; MAX_HEAD]).is_err());
    }
}
