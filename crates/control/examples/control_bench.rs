//! Control-plane benchmark driver (run by `bench/control-plane/run`, not a test).
//!
//! 1. Event append throughput with projections: W concurrent writers, one command-sized
//!    transaction each (append + project + commit), against a baseline of bare single-row
//!    inserts into an unindexed table with the same connections and durability.
//! 2. API latency at C concurrent keep-alive clients: a mixed read/write workload against
//!    `/v1/health` (no database) as the baseline.
//!
//! Usage: control_bench <database-url> <api-addr> <admin-token> [writers] [events] [clients] [seconds]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use scalebox_store::events::ProjectCreated;
use scalebox_store::{Db, Event, log};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        anyhow::bail!(
            "usage: control_bench <database-url> <api-addr> <admin-token> [writers] [events] [clients] [seconds]"
        );
    }
    let (url, addr, token) = (&a[1], a[2].parse::<SocketAddr>()?, a[3].clone());
    let arg = |i: usize, d: u64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (writers, events, clients, secs) = (arg(4, 32), arg(5, 20000), arg(6, 200), arg(7, 10));

    let db = Db::connect(url, writers as usize + 2).await?;
    let c = db.client().await?;
    let org: Uuid = c
        .query_one("SELECT id FROM v_orgs LIMIT 1", &[])
        .await?
        .get(0);
    let fsync: String = c.query_one("SHOW fsync", &[]).await?.get(0);
    let sync: String = c.query_one("SHOW synchronous_commit", &[]).await?.get(0);
    println!(
        "postgres_fsync {fsync} synchronous_commit {sync} writers {writers} events {events} clients {clients} seconds {secs}"
    );
    drop(c);

    let ev_rate = append_bench(&db, org, writers, events).await?;
    let raw_rate = raw_insert_bench(&db, writers, events).await?;
    println!("append_with_projection_events_per_s {ev_rate:.0}");
    println!("baseline_raw_insert_rows_per_s {raw_rate:.0}");
    println!("append_vs_raw_ratio {:.2}", ev_rate / raw_rate);

    let rate = arg(8, 5);
    let health = load(addr, &token, clients, secs, Mix::Health, None).await?;
    let mixed = load(addr, &token, clients, secs, Mix::Api, None).await?;
    let paced = load(addr, &token, clients, secs, Mix::Api, Some(rate)).await?;
    println!(
        "# closed loop: every client sends its next request as soon as the previous answers (saturation)"
    );
    println!(
        "# paced: every client sends {rate} req/s ({} req/s offered); latency counted from the scheduled send time",
        rate * clients
    );
    for (name, s) in [
        ("health", &health),
        ("api_mixed", &mixed),
        ("api_paced", &paced),
    ] {
        println!(
            "{name}_requests {} {name}_errors {} {name}_rps {:.0} {name}_p50_ms {:.2} {name}_p99_ms {:.2}",
            s.n,
            s.errors,
            s.n as f64 / secs as f64,
            s.p50,
            s.p99
        );
    }
    println!(
        "api_closed_p99_vs_health_p99_ratio {:.2}",
        mixed.p99 / health.p99.max(0.001)
    );
    println!(
        "api_paced_p99_vs_health_p99_ratio {:.2}",
        paced.p99 / health.p99.max(0.001)
    );
    Ok(())
}

async fn append_bench(db: &Db, org: Uuid, writers: u64, events: u64) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (db, next) = (db.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = db.client().await?;
            while next.fetch_add(1, Ordering::Relaxed) < events {
                let tx = c.transaction().await?;
                let id = Uuid::new_v4();
                let e = Event::ProjectCreated(ProjectCreated {
                    project_id: id,
                    org_id: org,
                    name: format!("b{}", id.simple()),
                });
                log::append(&tx, "bench", Some(org), &format!("project:{id}"), 0, &[e]).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

async fn raw_insert_bench(db: &Db, writers: u64, rows: u64) -> anyhow::Result<f64> {
    db.client()
        .await?
        .batch_execute("CREATE TABLE IF NOT EXISTS bench_raw (id BIGSERIAL, payload JSONB)")
        .await?;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (db, next) = (db.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let c = db.client().await?;
            let payload = serde_json::json!({"name": "x"});
            while next.fetch_add(1, Ordering::Relaxed) < rows {
                c.execute("INSERT INTO bench_raw (payload) VALUES ($1)", &[&payload])
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(rows as f64 / start.elapsed().as_secs_f64())
}

#[derive(Clone, Copy)]
enum Mix {
    Health,
    /// 80% reads (get app, list envs), 20% writes (create app).
    Api,
}

struct Stats {
    n: usize,
    errors: usize,
    p50: f64,
    p99: f64,
}

async fn load(
    addr: SocketAddr,
    token: &str,
    clients: u64,
    secs: u64,
    mix: Mix,
    rate: Option<u64>,
) -> anyhow::Result<Stats> {
    if let Mix::Api = mix {
        let mut s = Conn::open(addr).await?;
        if s.req("GET", "/v1/orgs/default/apps/benchapp", token, None)
            .await?
            == 404
        {
            s.req(
                "POST",
                "/v1/orgs/default/apps",
                token,
                Some(r#"{"name":"benchapp"}"#),
            )
            .await?;
        }
        s.req(
            "POST",
            "/v1/orgs/default/apps/benchapp/envs",
            token,
            Some(r#"{"name":"prod"}"#),
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let (mut lat, mut errors, mut i) = (Vec::new(), 0usize, 0u64);
            let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r as f64));
            // Spread paced clients' first sends over one interval.
            let mut next = Instant::now()
                + interval
                    .map(|d| d.mul_f64(c as f64 / clients as f64))
                    .unwrap_or_default();
            while Instant::now() < deadline {
                i += 1;
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let t0 = if interval.is_some() {
                    next
                } else {
                    Instant::now()
                };
                if let Some(d) = interval {
                    next += d;
                }
                let status = match mix {
                    Mix::Health => conn.req("GET", "/v1/health", &token, None).await?,
                    Mix::Api => match i % 5 {
                        0 => {
                            let body = format!(r#"{{"name":"b-{}-{c}-{i}"}}"#, rate.unwrap_or(0));
                            conn.req("POST", "/v1/orgs/default/apps", &token, Some(&body))
                                .await?
                        }
                        1 | 3 => {
                            conn.req("GET", "/v1/orgs/default/apps/benchapp/envs", &token, None)
                                .await?
                        }
                        _ => {
                            conn.req("GET", "/v1/orgs/default/apps/benchapp", &token, None)
                                .await?
                        }
                    },
                };
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                if status >= 400 {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(Stats {
        n: all.len(),
        errors,
        p50: q(0.50),
        p99: q(0.99),
    })
}

/// A keep-alive HTTP/1.1 connection (responses carry Content-Length).
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn(BufReader::new(s)))
    }

    async fn req(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> anyhow::Result<u16> {
        let b = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        );
        self.0.get_mut().write_all(head.as_bytes()).await?;
        let mut line = String::new();
        self.0.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.0.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.0.read_exact(&mut buf).await?;
        Ok(status)
    }
}
