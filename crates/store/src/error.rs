//! The store's error type.

/// Errors from the store. `Conflict` is the optimistic-concurrency / uniqueness failure that
/// the API maps to 409.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool error: {0}")]
    Pool(String),
    #[error("migration refused: {0}")]
    Migration(String),
    #[error("event decode error: event #{seq} ({event_type} v{version}): {message}")]
    Decode {
        seq: i64,
        event_type: String,
        version: i32,
        message: String,
    },
    #[error("postgres cluster: {0}")]
    Cluster(String),
}

impl StoreError {
    /// Maps a unique-constraint violation to `Conflict` with the given message; other errors pass.
    pub fn unique_as_conflict(self, message: impl FnOnce(&str) -> String) -> StoreError {
        if let StoreError::Db(e) = &self
            && let Some(db) = e.as_db_error()
            && db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
        {
            return StoreError::Conflict(message(db.constraint().unwrap_or("")));
        }
        self
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

/// The server's message when there is one (`tokio_postgres::Error`'s own text is only "db error").
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({}): {}", d.severity(), d.code().code(), d.message()),
        None => e.to_string(),
    }
}
