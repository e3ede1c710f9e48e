//! Test harness shared by integration tests: a real private Postgres cluster (one per test run,
//! shared by every test process through a lock file) and a fresh, migrated database per test;
//! `wait_for` for polling conditions; a thread-private network namespace (`netns`).

pub mod http;
pub mod netns;
pub mod registry;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use scalebox_store::pgcluster::PgCluster;
use scalebox_store::{Db, migrate};

/// Directory of this run's test cluster: `$SCALEBOX_TEST_PG_DIR`, else `/tmp/scalebox-testpg`.
/// (`scripts/test` sets a fresh one per run and stops the cluster at the end.)
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("SCALEBOX_TEST_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/scalebox-testpg"))
}

/// The run's cluster, started on first use (other test processes wait on the lock and reuse it).
pub fn cluster() -> PgCluster {
    let dir = cluster_dir();
    std::fs::create_dir_all(&dir).expect("create test cluster dir");
    let mut c = PgCluster::new(dir.join("data"), dir.join("run"));
    c.settings = vec![
        ("fsync".into(), "off".into()),
        ("synchronous_commit".into(), "off".into()),
        ("full_page_writes".into(), "off".into()),
        ("max_connections".into(), "400".into()),
    ];
    let lock = std::fs::File::create(dir.join("lock")).expect("create lock file");
    // SAFETY: flock on a valid open fd.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock failed");
    c.start()
        .unwrap_or_else(|e| panic!("cannot start the test Postgres cluster: {e}"));
    drop(lock);
    c
}

/// A fresh database, migrated to the current schema.
pub struct TestDb {
    pub db: Db,
    pub url: String,
    pub name: String,
}

/// Creates a new empty database on the run's cluster and migrates it.
pub async fn test_db() -> TestDb {
    let cluster = tokio::task::spawn_blocking(cluster)
        .await
        .expect("cluster task");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&cluster.url("postgres"), 1)
        .await
        .expect("connect to test cluster");
    admin
        .client()
        .await
        .expect("client")
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let url = cluster.url(&name);
    let db = Db::connect(&url, 16)
        .await
        .expect("connect to test database");
    migrate::migrate(&db).await.expect("migrate test database");
    TestDb { db, url, name }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
