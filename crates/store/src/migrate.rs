//! Embedded schema migrations, applied at start under a Postgres advisory lock so that several
//! control planes starting at once apply each migration exactly once.

use sha2::{Digest, Sha256};

use crate::{Db, StoreError};

/// (version, name, SQL). Append only: an applied migration must never change.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (
        2,
        "orchestration",
        include_str!("../migrations/0002_orchestration.sql"),
    ),
    (
        3,
        "agent_api",
        include_str!("../migrations/0003_agent_api.sql"),
    ),
    (
        4,
        "max_unavailable",
        include_str!("../migrations/0004_max_unavailable.sql"),
    ),
    (
        5,
        "volume_placements",
        include_str!("../migrations/0005_volume_placements.sql"),
    ),
    (6, "sandbox", include_str!("../migrations/0006_sandbox.sql")),
    (
        7,
        "volume_data",
        include_str!("../migrations/0007_volume_data.sql"),
    ),
    (8, "ipam", include_str!("../migrations/0008_ipam.sql")),
    (9, "overlay", include_str!("../migrations/0009_overlay.sql")),
    (
        10,
        "env_ipv4",
        include_str!("../migrations/0010_env_ipv4.sql"),
    ),
    (
        11,
        "instance_addresses",
        include_str!("../migrations/0011_instance_addresses.sql"),
    ),
];

const LOCK_KEY: i64 = 0x5ca1_eb0c_0001;

fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies pending migrations. Refuses (and changes nothing) when the database has a migration
/// marked dirty, one whose SQL differs from this binary's, or one newer than this binary knows.
pub async fn migrate(db: &Db) -> Result<Vec<i64>, StoreError> {
    let mut client = db.client().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = migrate_locked(&mut client).await;
    // Unlock even on failure; a failure to unlock only matters if the connection lives on.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(client: &mut deadpool_postgres::Object) -> Result<Vec<i64>, StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    BIGINT PRIMARY KEY,
                name       TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                dirty      BOOLEAN NOT NULL DEFAULT false,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let rows = client
        .query(
            "SELECT version, name, checksum, dirty FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    let known_max = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    for r in &rows {
        let (version, name, sum, dirty): (i64, String, String, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if dirty {
            return Err(StoreError::Migration(format!(
                "migration {version} ({name}) is marked dirty: a previous attempt failed part-way. \
                 Inspect the database, repair it by hand, then run \
                 `UPDATE schema_migrations SET dirty = false WHERE version = {version}` and start again"
            )));
        }
        if version > known_max {
            return Err(StoreError::Migration(format!(
                "the database is at schema version {version} but this scaleboxd only knows up to {known_max}; \
                 upgrade scaleboxd (downgrades are not supported)"
            )));
        }
        let embedded = MIGRATIONS.iter().find(|m| m.0 == version);
        match embedded {
            Some((_, _, sql)) if checksum(sql) != sum => {
                return Err(StoreError::Migration(format!(
                    "migration {version} ({name}) applied to this database differs from the one built into this \
                     scaleboxd (checksum mismatch); refusing to start on a schema of unknown shape"
                )));
            }
            None => {
                return Err(StoreError::Migration(format!(
                    "the database has migration {version} ({name}) that this scaleboxd does not know"
                )));
            }
            _ => {}
        }
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if rows.iter().any(|r| r.get::<_, i64>(0) == *version) {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Migration(format!("migration {version} ({name}) failed: {e}"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &checksum(sql)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied schema migration");
        applied.push(*version);
    }
    Ok(applied)
}
