//! Host side of a guest vsock port through a "hybrid vsock" Unix socket, as Firecracker (and
//! rust-vmm's `vhost-device-vsock`) expose it: connect to the device's `uds_path`, write
//! `CONNECT <port>\n`, read `OK <host port>\n`; from then on the stream is the guest's port.
//! Until the guest listens on the port the VMM closes the connection without an answer, so the
//! connector retries until its deadline.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::VmmError;

/// The guest port `scalebox-init` listens on for the control channel.
pub const CONTROL_PORT: u32 = 1024;

/// Longest handshake answer we accept (`OK 4294967295\n` is 14 bytes).
const MAX_REPLY: usize = 64;

/// The handshake request for `port`.
pub fn connect_request(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Parses the VMM's answer line (without or with its `\n`): the host-side port on `OK <n>`,
/// else what was said.
pub fn parse_reply(line: &str) -> Result<u32, String> {
    let l = line.trim_end_matches(['\n', '\r']);
    match l.split_once(' ') {
        Some(("OK", n)) => n
            .trim()
            .parse()
            .map_err(|_| format!("malformed answer {l:?}")),
        _ => Err(format!("answer {l:?} instead of OK")),
    }
}

/// One attempt: the answer line, read byte by byte so nothing after it is consumed (the bytes
/// after `\n` already belong to the guest's stream).
async fn handshake(s: &mut UnixStream, port: u32) -> Result<u32, String> {
    s.write_all(connect_request(port).as_bytes())
        .await
        .map_err(|e| format!("write CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s
            .read(&mut b)
            .await
            .map_err(|e| format!("read answer: {e}"))?;
        if n == 0 {
            return Err(if line.is_empty() {
                "closed without an answer (is the guest listening on the port?)".into()
            } else {
                format!(
                    "closed after a partial answer {:?}",
                    String::from_utf8_lossy(&line)
                )
            });
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            return parse_reply(&String::from_utf8_lossy(&line));
        }
        if line.len() > MAX_REPLY {
            return Err(format!(
                "over-long answer {:?}",
                String::from_utf8_lossy(&line)
            ));
        }
    }
}

/// Connects to guest port `port` through the hybrid vsock socket `uds`, retrying (the socket
/// may not exist yet, the guest may not listen yet) until `timeout`. The error names the
/// socket, the port and the last thing that went wrong.
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VmmError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = async {
            let mut s = UnixStream::connect(uds)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            handshake(&mut s, port).await.map(|_| s)
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let last = match tokio::time::timeout(left.max(Duration::from_millis(100)), attempt).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e,
            Err(_) => "no answer".into(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(VmmError::Channel(format!(
                "vsock port {port} through {}: not connected within {timeout:?}: {last}",
                uds.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    //! Against a local stand-in for the VMM's socket that speaks the handshake.

    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    #[test]
    fn replies() {
        assert_eq!(connect_request(1024), "CONNECT 1024\n");
        assert_eq!(parse_reply("OK 1073741824\n"), Ok(1073741824));
        assert_eq!(parse_reply("OK 5"), Ok(5));
        assert!(parse_reply("NOK\n").unwrap_err().contains("\"NOK\""));
        assert!(parse_reply("OK x\n").unwrap_err().contains("malformed"));
        assert!(parse_reply("").is_err());
    }

    /// A stand-in VMM: refuses (closes without answering) the first `refuse` connections, then
    /// answers `answer` and echoes what follows, upper-cased, to show the stream is handed over
    /// intact (including bytes sent right behind the answer).
    fn stand_in(path: &Path, refuse: usize, answer: &'static str) -> tokio::task::JoinHandle<()> {
        let l = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (s, _) = l.accept().await.unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).await.is_err() {
                    continue;
                }
                assert_eq!(line, "CONNECT 1024\n");
                n += 1;
                if n <= refuse {
                    continue; // dropped: the guest is "not listening yet"
                }
                let mut s = r.into_inner();
                // The client may hang up at any point (a wrong answer ends its attempt).
                let _ = s.write_all(format!("{answer}hello\n").as_bytes()).await;
                let mut buf = [0u8; 64];
                if let Ok(k) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..k].to_ascii_uppercase()).await;
                }
            }
        })
    }

    #[tokio::test]
    async fn retries_until_the_guest_listens_then_hands_over_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let t = stand_in(&uds, 2, "OK 1073741824\n");
        let s = connect(&uds, CONTROL_PORT, Duration::from_secs(5))
            .await
            .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(
            line, "hello\n",
            "bytes after the answer belong to the guest"
        );
        r.get_mut().write_all(b"ping\n").await.unwrap();
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PING\n");
        t.abort();
    }

    #[tokio::test]
    async fn a_wrong_answer_or_a_missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let t = stand_in(&uds, 0, "ERR no such port\n");
        let e = connect(&uds, CONTROL_PORT, Duration::from_millis(600))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("port 1024") && e.contains("v.sock") && e.contains("ERR no such port"),
            "{e}"
        );
        t.abort();
        let e = connect(&dir.path().join("none.sock"), 7, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.sock") && e.contains("connect:"), "{e}");
    }
}
