//! Load generator and backend for `bench/edge/run` (not a test). Subcommands:
//!   backend ECHO_PP_PORT SINK_PP_PORT ECHO_PORT   servers (PROXY v2 stripped on *_PP ports)
//!   conns ADDR SNI N CONCURRENCY                  N full connections: hello out, echo back
//!   bulk ADDR BYTES STREAMS                       upload BYTES in total to a sink
//!   idle ADDR SNI N                               hold N established connections until stdin closes
//!   latency ADDR N CONNS                          64-byte ping-pong; prints p50/p99 in µs
//! Runs on a current-thread runtime so that it stays on the CPU it is pinned to.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use scalebox_edge::hello::build_client_hello;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type R<T> = Result<T, Box<dyn std::error::Error>>;

async fn strip_proxy(s: &mut TcpStream) -> R<()> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await?;
    if &h[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
        return Err("missing PROXY v2 header".into());
    }
    let n = u16::from_be_bytes([h[14], h[15]]) as usize;
    let mut rest = vec![0u8; n];
    s.read_exact(&mut rest).await?;
    Ok(())
}

async fn serve(port: u16, pp: bool, sink: bool) -> R<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            if pp && strip_proxy(&mut s).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 65536];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !sink && s.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = s.shutdown().await;
        });
    }
}

async fn one_conn(addr: SocketAddr, hello: &[u8]) -> R<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(hello).await?;
    let mut back = vec![0u8; hello.len()];
    s.read_exact(&mut back).await?;
    Ok(s)
}

async fn conns(addr: SocketAddr, sni: String, n: usize, conc: usize) -> R<()> {
    let hello = std::rc::Rc::new(build_client_hello(Some(&sni), 300, 16384));
    let t = Instant::now();
    let local = tokio::task::LocalSet::new();
    let per = n / conc;
    local
        .run_until(async {
            let mut hs = Vec::new();
            for _ in 0..conc {
                let h = hello.clone();
                hs.push(tokio::task::spawn_local(async move {
                    for _ in 0..per {
                        let s = one_conn(addr, &h).await.map_err(|e| e.to_string())?;
                        drop(s);
                    }
                    Ok::<_, String>(())
                }));
            }
            for h in hs {
                h.await.map_err(|e| e.to_string())??;
            }
            Ok::<_, String>(())
        })
        .await?;
    println!(
        "conns {} elapsed_s {:.3}",
        per * conc,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn bulk(addr: SocketAddr, bytes: u64, streams: u64) -> R<()> {
    let t = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..streams {
        hs.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            let buf = vec![7u8; 256 * 1024];
            let mut left = bytes / streams;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            s.shutdown().await?;
            let mut x = [0u8; 1];
            let _ = s.read(&mut x).await; // wait for the sink to close
            Ok::<_, std::io::Error>(())
        }));
    }
    for h in hs {
        h.await??;
    }
    println!("bytes {bytes} elapsed_s {:.3}", t.elapsed().as_secs_f64());
    Ok(())
}

async fn idle(addr: SocketAddr, sni: String, n: usize) -> R<()> {
    let hello = build_client_hello(Some(&sni), 300, 16384);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(one_conn(addr, &hello).await?);
    }
    println!("ready {}", held.len());
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut b = [0u8; 1];
        let _ = std::io::stdin().read(&mut b);
    })
    .await;
    drop(held);
    Ok(())
}

async fn latency(addr: SocketAddr, n: usize, conns: usize) -> R<()> {
    let mut all = Vec::new();
    let mut hs = Vec::new();
    for _ in 0..conns {
        hs.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let msg = [5u8; 64];
            let mut back = [0u8; 64];
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                s.write_all(&msg).await?;
                s.read_exact(&mut back).await?;
                v.push(t.elapsed());
            }
            Ok::<_, std::io::Error>(v)
        }));
    }
    for h in hs {
        all.extend(h.await??);
    }
    all.sort();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    println!("p50_us {:.1} p99_us {:.1}", p(0.50), p(0.99));
    Ok(())
}

fn arg<T: std::str::FromStr>(a: &[String], i: usize) -> T {
    a.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("bad or missing argument {i}; see the header of examples/edge_loadgen.rs");
        std::process::exit(2)
    })
}

fn main() -> R<()> {
    let a: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match a.get(1).map(String::as_str) {
            Some("backend") => {
                let (p1, p2, p3): (u16, u16, u16) = (arg(&a, 2), arg(&a, 3), arg(&a, 4));
                tokio::try_join!(
                    serve(p1, true, false),
                    serve(p2, true, true),
                    serve(p3, false, false)
                )?;
                Ok(())
            }
            Some("conns") => conns(arg(&a, 2), arg(&a, 3), arg(&a, 4), arg(&a, 5)).await,
            Some("bulk") => bulk(arg(&a, 2), arg(&a, 3), arg(&a, 4)).await,
            Some("idle") => idle(arg(&a, 2), arg(&a, 3), arg(&a, 4)).await,
            Some("latency") => {
                tokio::time::timeout(
                    Duration::from_secs(120),
                    latency(arg(&a, 2), arg(&a, 3), arg(&a, 4)),
                )
                .await?
            }
            _ => Err("usage: see the header of examples/edge_loadgen.rs".into()),
        }
    })
}
