//! Integration tests of the edge running in-process against real clients and servers on
//! loopback: openssl s_server/s_client, curl, python3 (independent PROXY v2 decoder), TCP echo.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::*;
use scalebox_edge::hello::build_client_hello;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn s_client(port: u16, sni: &str) -> Result<String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("[::1]:{port}"),
            "-servername",
            sni,
        ])
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn curl_tls(port: u16, host: &str, ip: &str, cacert: &std::path::Path) -> Result<(bool, String)> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(cacert)
        .args([
            "--resolve",
            &format!("{host}:{port}:{ip}"),
            &format!("https://{host}:{port}/"),
        ])
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sni_passthrough_two_backends_openssl_and_curl() -> Result<()> {
    require("curl", "curl");
    let dir = tempfile::tempdir()?;
    let (ca, ka) = make_cert(dir.path(), "a.test")?;
    let (cb, kb) = make_cert(dir.path(), "b.test")?;
    let (pa, pb, p) = (free_port(), free_port(), free_port());
    let _sa = s_server(pa, &ca, &ka).await?;
    let _sb = s_server(pb, &cb, &kb).await?;
    let edge = TestEdge::start(test_config(dir.path())).await?;
    edge.handle
        .apply(table(json!({"generation": 1, "routes": [
            {"id": "a", "kind": "tls", "port": p, "ipv4": true, "hostname": "a.test", "backends": [format!("127.0.0.1:{pa}")]},
            {"id": "b", "kind": "tls", "port": p, "ipv4": true, "hostname": "B.Test", "backends": [format!("127.0.0.1:{pb}")]},
        ]})))
        .await?;
    wait_port(format!("[::1]:{p}").parse()?).await?;

    let out = s_client(p, "a.test")?;
    assert!(
        out.contains("CN=a.test") || out.contains("CN = a.test"),
        "s_client a.test got:\n{out}"
    );
    assert!(!out.contains("b.test"), "{out}");
    let out = s_client(p, "b.test")?;
    assert!(
        out.contains("CN=b.test") || out.contains("CN = b.test"),
        "s_client b.test got:\n{out}"
    );

    // curl verifies the chain against each backend's own certificate: success proves that the
    // edge passed the handshake through to the right backend, over IPv6 and IPv4.
    for ip in ["[::1]", "127.0.0.1"] {
        let (ok, text) = curl_tls(p, "a.test", ip, &ca)?;
        assert!(
            ok && text.contains("s_server"),
            "curl a.test via {ip}: {text}"
        );
        let (ok, text) = curl_tls(p, "b.test", ip, &cb)?;
        assert!(
            ok && text.contains("s_server"),
            "curl b.test via {ip}: {text}"
        );
        let (ok, _) = curl_tls(p, "b.test", ip, &ca)?;
        assert!(!ok, "b.test must not present a.test's certificate");
    }
    assert!(metric(edge.admin, "edge_connections_total{route=\"a\"}")? >= 3.0);
    assert!(metric(edge.admin, "edge_bytes_out_total{route=\"b\"}")? > 500.0);
    assert_eq!(
        metric(
            edge.admin,
            &format!("edge_backend_selections_total{{route=\"b\",backend=\"127.0.0.1:{pb}\"}}")
        )? as u64,
        5
    );
    Ok(())
}

/// TCP Fast Open to the backend, with the setting scalebox-init gives every guest (0x403: any
/// listener takes data in the SYN): the first connection fetches the cookie, the next ones carry
/// the ClientHello in the SYN, and openssl and curl still get the backend's own certificate.
#[test]
fn tls_passthrough_with_the_client_hello_in_the_syn() -> Result<()> {
    in_private_netns("1027", || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async {
            require("curl", "curl");
            let dir = tempfile::tempdir()?;
            let (ca, ka) = make_cert(dir.path(), "a.test")?;
            let (pa, p) = (free_port(), free_port());
            let _sa = s_server(pa, &ca, &ka).await?;
            let edge = TestEdge::start(test_config(dir.path())).await?;
            edge.handle
                .apply(table(json!({"generation": 1, "routes": [
                    {"id": "a", "kind": "tls", "port": p, "ipv4": true, "hostname": "a.test", "backends": [format!("127.0.0.1:{pa}")]},
                ]})))
                .await?;
            wait_port(format!("[::1]:{p}").parse()?).await?;
            let fast_open = || metric(edge.admin, "edge_backend_fast_open_total");
            for want in [0.0, 1.0] {
                let out = s_client(p, "a.test")?;
                assert!(out.contains("CN=a.test") || out.contains("CN = a.test"), "{out}");
                assert_eq!(fast_open()?, want, "after s_client:\n{out}");
            }
            let (ok, text) = curl_tls(p, "a.test", "127.0.0.1", &ca)?;
            assert!(ok && text.contains("s_server"), "curl: {text}");
            assert_eq!(fast_open()?, 2.0);
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_and_refused_backend_is_skipped() -> Result<()> {
    require("curl", "curl");
    let dir = tempfile::tempdir()?;
    let echo = echo_server("127.0.0.1:0").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let p = free_port();
    let edge = TestEdge::start(test_config(dir.path())).await?;
    edge.handle
        .apply(table(json!({"generation": 3, "routes": [
            {"id": "raw", "kind": "tcp", "port": p, "backends": [dead, echo.to_string()]},
        ]})))
        .await?;
    for i in 0..6 {
        let mut s = TcpStream::connect(("::1", p)).await?;
        let msg = format!("ping {i}").repeat(1000);
        assert_eq!(roundtrip(&mut s, msg.as_bytes()).await?, msg.as_bytes());
    }
    // The dead backend was tried once, then skipped while marked down.
    assert_eq!(
        metric(
            edge.admin,
            "edge_errors_total{route=\"raw\",kind=\"backend_connect\"}"
        )?,
        1.0
    );
    assert_eq!(
        metric(
            edge.admin,
            &format!("edge_backend_selections_total{{route=\"raw\",backend=\"{echo}\"}}")
        )?,
        6.0
    );
    assert_eq!(metric(edge.admin, "edge_table_generation")?, 3.0);
    let (code, body) = curl_admin(edge.admin, "GET", "/healthz", None)?;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    // A stale generation is refused with 409 and a reason; garbage with 400.
    let (code, body) = curl_admin(
        edge.admin,
        "PUT",
        "/table",
        Some(r#"{"generation":2,"routes":[]}"#),
    )?;
    assert_eq!(code, 409, "{body}");
    let (code, body) = curl_admin(
        edge.admin,
        "PUT",
        "/table",
        Some(r#"{"generation":9,"routez":[]}"#),
    )?;
    assert!(code == 400 && body.contains("routez"), "{code} {body}");
    Ok(())
}

const PROXY_DECODER: &str = r#"
import socket, struct, sys, threading, ipaddress
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
def exact(c, n):
    b = b""
    while len(b) < n:
        d = c.recv(n - len(b))
        if not d: raise EOFError
        b += d
    return b
def handle(c):
    try:
        hdr = exact(c, 16)
        if hdr[:12] != b"\r\n\r\n\x00\r\nQUIT\n": c.sendall(b"BAD signature\n"); return
        ver, cmd, fam, ln = hdr[12] >> 4, hdr[12] & 15, hdr[13], struct.unpack("!H", hdr[14:16])[0]
        body = exact(c, ln)
        if fam == 0x11:
            s, d, sp, dp = struct.unpack("!4s4sHH", body[:12]); f = "TCP4"
            s, d = socket.inet_ntop(socket.AF_INET, s), socket.inet_ntop(socket.AF_INET, d)
        elif fam == 0x21:
            s, d, sp, dp = struct.unpack("!16s16sHH", body[:36]); f = "TCP6"
            s, d = socket.inet_ntop(socket.AF_INET6, s), socket.inet_ntop(socket.AF_INET6, d)
        else: c.sendall(b"BAD family\n"); return
        c.sendall(f"v{ver} cmd{cmd} {f} {s} {sp} {d} {dp}\n".encode())
        while True:
            d = c.recv(65536)
            if not d: break
            c.sendall(d)
    except Exception as e:
        pass
    finally: c.close()
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_header_decoded_independently_for_ipv4_and_ipv6_clients() -> Result<()> {
    require("python3", "python3");
    let dir = tempfile::tempdir()?;
    let bp = free_port();
    let py = Proc(
        Command::new("python3")
            .args(["-c", PROXY_DECODER, &bp.to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    wait_port(format!("127.0.0.1:{bp}").parse()?).await?;
    let (p, ptls) = (free_port(), free_port());
    let edge = TestEdge::start(test_config(dir.path())).await?;
    edge.handle
        .apply(table(json!({"generation": 1, "routes": [
            {"id": "pp", "kind": "tcp", "port": p, "ipv4": true, "proxy_protocol_v2": true, "backends": [format!("127.0.0.1:{bp}")]},
            {"id": "ppt", "kind": "tls", "port": ptls, "hostname": "pp.test", "proxy_protocol_v2": true, "backends": [format!("127.0.0.1:{bp}")]},
        ]})))
        .await?;
    for (client_ip, fam) in [("127.0.0.1", "TCP4"), ("::1", "TCP6")] {
        let mut s = TcpStream::connect((client_ip, p)).await?;
        let local = s.local_addr()?;
        s.write_all(b"payload").await?;
        let mut got = vec![0u8; 0];
        let mut buf = [0u8; 256];
        while !got.ends_with(b"payload") {
            let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await??;
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        let want = format!(
            "v2 cmd1 {fam} {client_ip} {} {client_ip} {p}\npayload",
            local.port()
        );
        assert_eq!(text, want);
    }
    // TLS route: header first, then the ClientHello bytes unchanged.
    let mut s = TcpStream::connect(("::1", ptls)).await?;
    let hello = build_client_hello(Some("pp.test"), 0, 16384);
    s.write_all(&hello).await?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\n") {
        s.read_exact(&mut b).await?;
        line.push(b[0]);
    }
    assert!(
        String::from_utf8_lossy(&line).starts_with("v2 cmd1 TCP6 ::1 "),
        "{}",
        String::from_utf8_lossy(&line)
    );
    let mut echoed = vec![0u8; hello.len()];
    s.read_exact(&mut echoed).await?;
    assert_eq!(echoed, hello, "ClientHello bytes must pass unchanged");
    drop(py);
    Ok(())
}

/// Reads until EOF or error; returns the time it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Err(_) => anyhow::bail!("connection not closed within {limit:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(t.elapsed()),
        Ok(Ok(_)) => anyhow::bail!("unexpected data from a rejected connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_hellos_close_only_their_connection() -> Result<()> {
    require("curl", "curl");
    let dir = tempfile::tempdir()?;
    let echo = echo_server("127.0.0.1:0").await;
    let p = free_port();
    let mut cfg = test_config(dir.path());
    cfg.hello_timeout_ms = 1500;
    let edge = TestEdge::start(cfg).await?;
    edge.handle
        .apply(table(json!({"generation": 1, "routes": [
            {"id": "good", "kind": "tls", "port": p, "hostname": "good.test", "backends": [echo.to_string()]},
            {"id": "other", "kind": "tls", "port": p, "hostname": "other.test", "backends": [echo.to_string()]},
        ]})))
        .await?;
    // A good connection, with a large hello split across records and TCP segments.
    let mut good = TcpStream::connect(("::1", p)).await?;
    good.set_nodelay(true)?;
    let hello = build_client_hello(Some("good.test"), 6000, 1000);
    for part in hello.chunks(2500) {
        good.write_all(part).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back = vec![0u8; hello.len()];
    good.read_exact(&mut back).await?;
    assert_eq!(back, hello);

    let keep_alive = tokio::spawn(async move {
        for i in 0..40 {
            let msg = format!("tick {i}");
            assert_eq!(
                roundtrip(&mut good, msg.as_bytes()).await.unwrap(),
                msg.as_bytes()
            );
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    let bad = async |bytes: Vec<u8>, half_close: bool| -> Result<Duration> {
        let mut s = TcpStream::connect(("::1", p)).await?;
        s.write_all(&bytes).await?;
        if half_close {
            s.shutdown().await?;
        }
        closed_within(&mut s, Duration::from_secs(10)).await
    };
    let full = build_client_hello(Some("good.test"), 0, 16384);
    let (malformed, truncated, oversized, slow, unknown, no_sni) = tokio::join!(
        bad(b"GET / HTTP/1.1\r\nHost: good.test\r\n\r\n".to_vec(), false),
        bad(full[..full.len() / 2].to_vec(), true),
        bad(build_client_hello(Some("good.test"), 20000, 16384), false),
        bad(full[..10].to_vec(), false),
        bad(build_client_hello(Some("nobody.test"), 0, 16384), false),
        bad(build_client_hello(None, 0, 16384), false),
    );
    assert!(malformed? < Duration::from_millis(1000));
    assert!(truncated? < Duration::from_millis(1000));
    assert!(oversized? < Duration::from_millis(1000));
    let slow = slow?;
    assert!(
        slow >= Duration::from_millis(1400) && slow < Duration::from_secs(8),
        "slow hello closed after {slow:?}"
    );
    assert!(unknown? < Duration::from_millis(1000));
    assert!(
        no_sni? < Duration::from_millis(1000),
        "no SNI with two hostnames is ambiguous"
    );
    keep_alive.await?;
    let l = format!("[::1]:{p}");
    for (kind, n) in [
        ("hello_malformed", 1.0),
        ("hello_truncated", 1.0),
        ("hello_oversized", 1.0),
        ("hello_timeout", 1.0),
        ("no_route", 2.0),
    ] {
        let series = format!("edge_listener_errors_total{{listener=\"{l}\",kind=\"{kind}\"}}");
        assert_eq!(metric(edge.admin, &series)?, n, "{series}");
    }
    assert_eq!(
        metric(edge.admin, "edge_connections_total{route=\"good\"}")?,
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_drops_no_connection_and_shutdown_drains() -> Result<()> {
    require("curl", "curl");
    let dir = tempfile::tempdir()?;
    let e1 = echo_server("127.0.0.1:0").await;
    let e2 = echo_server("[::1]:0").await;
    let (p, q) = (free_port(), free_port());
    let mut edge = TestEdge::start(test_config(dir.path())).await?;
    let tbl = |g: u64, backends: Vec<String>, extra: bool| {
        let mut routes = vec![
            json!({"id": "main", "kind": "tcp", "port": p, "ipv4": true, "backends": backends}),
        ];
        if extra {
            routes.push(
                json!({"id": "extra", "kind": "tcp", "port": q, "backends": [e1.to_string()]}),
            );
        }
        json!({"generation": g, "routes": routes})
    };
    edge.handle
        .apply(table(tbl(1, vec![e1.to_string()], false)))
        .await?;
    let mut clients = Vec::new();
    for c in 0..16u32 {
        clients.push(tokio::spawn(async move {
            let ip = if c % 2 == 0 { "::1" } else { "127.0.0.1" };
            let mut s = TcpStream::connect((ip, p))
                .await
                .with_context(|| format!("client {c} connect"))?;
            for i in 0..30u32 {
                let msg = format!("client {c} msg {i} ").repeat(50);
                anyhow::ensure!(
                    roundtrip(&mut s, msg.as_bytes()).await? == msg.as_bytes(),
                    "corrupt echo"
                );
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            anyhow::Ok(())
        }));
    }
    let mut newconns = 0;
    for g in 2..=13u64 {
        let backends = match g % 3 {
            0 => vec![e1.to_string()],
            1 => vec![e2.to_string()],
            _ => vec![e1.to_string(), e2.to_string()],
        };
        let t = tbl(g, backends, g % 2 == 0);
        if g % 2 == 0 {
            edge.handle.apply(table(t)).await?;
        } else {
            let (code, body) = curl_admin(edge.admin, "PUT", "/table", Some(&t.to_string()))?;
            anyhow::ensure!(code == 200, "PUT /table: {code} {body}");
        }
        // New connections keep working across each swap.
        let mut s = TcpStream::connect(("::1", p))
            .await
            .with_context(|| format!("fresh connect gen {g}"))?;
        assert_eq!(roundtrip(&mut s, b"fresh").await?, b"fresh");
        newconns += 1;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    for c in clients {
        c.await??;
    }
    assert_eq!(
        metric(edge.admin, "edge_connections_total{route=\"main\"}")?,
        16.0 + newconns as f64
    );
    assert_eq!(
        metric(
            edge.admin,
            "edge_errors_total{route=\"main\",kind=\"relay\"}"
        )?,
        0.0
    );

    // Route removed: its listener closes, a live connection on it continues.
    edge.handle
        .apply(table(tbl(14, vec![e1.to_string()], true)))
        .await?;
    let mut live = TcpStream::connect(("::1", q)).await?;
    assert_eq!(roundtrip(&mut live, b"before").await?, b"before");
    edge.handle
        .apply(table(tbl(15, vec![e1.to_string()], false)))
        .await?;
    assert_eq!(
        roundtrip(&mut live, b"after removal").await?,
        b"after removal"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(("::1", q)).await.is_err(),
        "listener of a removed route must close"
    );

    // Shutdown: stops accepting, drains the live connection, then returns.
    let mut live2 = TcpStream::connect(("::1", p)).await?;
    assert_eq!(roundtrip(&mut live2, b"x").await?, b"x");
    let run = edge.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(("::1", p)).await.is_err(),
        "no accepting after shutdown"
    );
    assert_eq!(roundtrip(&mut live, b"draining").await?, b"draining");
    assert_eq!(roundtrip(&mut live2, b"draining").await?, b"draining");
    assert!(!run.is_finished(), "must wait for live connections");
    drop(live);
    drop(live2);
    tokio::time::timeout(Duration::from_secs(10), run).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_closes_idle_connections() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let e = echo_server("127.0.0.1:0").await;
    let p = free_port();
    let mut cfg = test_config(dir.path());
    cfg.drain_timeout_ms = 500;
    let mut edge = TestEdge::start(cfg).await?;
    edge.handle
        .apply(table(json!({"generation": 1, "routes": [
            {"id": "main", "kind": "tcp", "port": p, "backends": [e.to_string()]},
        ]})))
        .await?;
    wait_port(format!("[::1]:{p}").parse()?).await?;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("::1", p)).await?;
        assert_eq!(roundtrip(&mut s, b"hi").await?, b"hi");
        idle.push(s);
    }
    let t0 = Instant::now();
    let run = edge.shutdown();
    // Past the deadline the edge shuts the idle connections: each client sees end of stream.
    for s in &mut idle {
        let mut b = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .context("the connection was not closed at the drain deadline")?
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "closed only at the deadline"
    );
    tokio::time::timeout(Duration::from_secs(10), run).await???;
    Ok(())
}

/// A backend that answers every connection with `tag` and closes.
async fn tag_server(tag: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(tag).await;
            });
        }
    });
    a
}

/// The tag the route's backend sends to a client presenting `sni` at `addr`; None when closed.
async fn tag_via(addr: &str, sni: &str) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(&build_client_hello(Some(sni), 0, 16384))
        .await
        .ok()?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .ok()?
        .ok()?;
    (!got.is_empty()).then_some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_ipv4_listener_coexists_with_the_shared_wildcard() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (ta, tb) = (
        tag_server(b"backend-a").await,
        tag_server(b"backend-b").await,
    );
    let p = free_port();
    let mut cfg = test_config(dir.path());
    cfg.default_ipv4_addr = "0.0.0.0".parse()?;
    let edge = TestEdge::start(cfg).await?;
    // a: shared IPv4 (the wildcard); b: its env's dedicated IPv4 (127.0.0.2 stands in for it).
    edge.handle
        .apply(table(json!({"generation": 1, "routes": [
            {"id": "a", "kind": "tls", "port": p, "ipv4": true, "hostname": "a.test", "backends": [ta.to_string()]},
            {"id": "b", "kind": "tls", "port": p, "ipv4": true, "listen_v4": "127.0.0.2", "hostname": "b.test", "backends": [tb.to_string()]},
        ]})))
        .await?;
    wait_port(format!("127.0.0.2:{p}").parse()?).await?;
    wait_port(format!("127.0.0.1:{p}").parse()?).await?;
    let a1 = format!("127.0.0.1:{p}");
    let b2 = format!("127.0.0.2:{p}");
    assert_eq!(
        tag_via(&b2, "b.test").await.as_deref(),
        Some(&b"backend-b"[..])
    );
    assert_eq!(
        tag_via(&a1, "a.test").await.as_deref(),
        Some(&b"backend-a"[..])
    );
    // Each listener routes only its own routes: b is not served on the shared address, nor a
    // on b's dedicated one.
    assert_eq!(tag_via(&a1, "b.test").await, None);
    assert_eq!(tag_via(&b2, "a.test").await, None);
    Ok(())
}
