//! Connection pool over `tokio-postgres` (TCP or Unix socket, from a libpq-style URL or
//! `key=value` string).

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::StoreError;

/// A pool of connections to the control plane database.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
}

impl Db {
    /// Connects to `url` (e.g. `postgres://user@host/db` or `host=/run/pg user=x dbname=y`) and
    /// checks that the server answers.
    pub async fn connect(url: &str, max_size: usize) -> Result<Db, StoreError> {
        let cfg = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Pool(format!("invalid database url: {e}")))?;
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(max_size)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let db = Db { pool };
        db.client().await?.simple_query("SELECT 1").await?;
        Ok(db)
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}
