//! What `doctor` reads from the database: the schema's migration state against the
//! migrations this binary carries, and who holds the mutation lock.

use chrono::{DateTime, Utc};

use super::{on_pool, Db, Pool};
use crate::engine::error::Result;

/// The schema against the migrations this binary knows.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SchemaStatus {
    /// Migrations this binary carries.
    pub known: u64,
    /// Migrations recorded as applied.
    pub applied: u64,
    /// Known migrations not applied yet, as "0010_replication".
    pub pending: Vec<String>,
    /// Applied versions this binary does not know (a newer mirrorctl migrated the database).
    pub unknown: Vec<i64>,
    /// Whether the migrations table exists at all (a database never migrated has none).
    pub migrated: bool,
}

// lock status: the `operation_lock` row as doctor reads it, until `Db::lock_status()` replaces
// this.
/// Who holds the mutation lock, by its row.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LockRow {
    pub kind: String,
    pub operator: String,
    /// `host:pid` of the holding process.
    pub holder: String,
    pub started_at: DateTime<Utc>,
}

/// The lock row and whether its holder still holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LockState {
    pub row: LockRow,
    /// `Some(false)`: the holder is gone (a PostgreSQL advisory lock no session holds, or a
    /// SQLite holder process that no longer exists on this host); `None`: cannot tell (a
    /// process on another host).
    pub alive: Option<bool>,
}

/// The advisory lock key of `oplog` ("mirrorct"), split as `pg_locks` shows it.
const ADVISORY_KEY: i64 = 0x6d69_7272_6f72_6374;

impl Db {
    /// The file a `sqlite:` URL names when it does not exist (connecting would create it).
    pub fn sqlite_file_missing(url: &str) -> Option<std::path::PathBuf> {
        use std::str::FromStr;
        if !url.starts_with("sqlite:") {
            return None;
        }
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
        let file = opts.get_filename();
        // `sqlite::memory:` and friends have no file to miss.
        if file.as_os_str().is_empty() || file.to_string_lossy().contains(":memory:") {
            return None;
        }
        (!file.exists()).then(|| file.to_path_buf())
    }

    /// The migration state: which known migrations are applied, pending or unknown.
    pub async fn schema_status(&self) -> Result<SchemaStatus> {
        let migrator = match &self.pool {
            Pool::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
            Pool::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
        };
        let table_sql = match &self.pool {
            Pool::Postgres(_) => "SELECT count(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()",
            Pool::Sqlite(_) => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        };
        let tables: i64 = on_pool!(self, |p| sqlx::query_scalar(table_sql).fetch_one(p).await)
            .map_err(|e| self.err(e))?;
        let applied: Vec<i64> = if tables > 0 {
            on_pool!(self, |p| sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version"
            )
            .fetch_all(p)
            .await)
            .map_err(|e| self.err(e))?
        } else {
            Vec::new()
        };
        let known: Vec<(i64, String)> = migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        Ok(SchemaStatus {
            known: known.len() as u64,
            applied: applied.len() as u64,
            pending: known
                .iter()
                .filter(|(v, _)| !applied.contains(v))
                .map(|(v, d)| format!("{v:04}_{}", d.replace(' ', "_")))
                .collect(),
            unknown: applied
                .iter()
                .filter(|v| !known.iter().any(|(k, _)| k == *v))
                .copied()
                .collect(),
            migrated: tables > 0,
        })
    }

    // lock status: a small read of the lock row for doctor; `Db::lock_status()` replaces it.
    /// The mutation lock's row, if any, and whether its holder is still there.
    pub async fn doctor_lock_state(&self) -> Result<Option<LockState>> {
        const ROW: &str =
            "SELECT kind, operator, holder, started_at FROM operation_lock WHERE name = 'mutation'";
        match &self.pool {
            Pool::Postgres(p) => {
                let row: Option<LockRow> = sqlx::query_as(ROW)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| self.err(e))?;
                let Some(row) = row else { return Ok(None) };
                // The row outlives a crashed holder; the advisory lock does not.
                let held: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                     AND classid::text::bigint = $1 AND objid::text::bigint = $2 AND objsubid = 1 \
                     AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                )
                .bind(ADVISORY_KEY >> 32)
                .bind(ADVISORY_KEY & 0xffff_ffff)
                .fetch_one(p)
                .await
                .map_err(|e| self.err(e))?;
                Ok(Some(LockState {
                    row,
                    alive: Some(held > 0),
                }))
            }
            Pool::Sqlite(p) => {
                let row: Option<LockRow> = sqlx::query_as(ROW)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| self.err(e))?;
                Ok(row.map(|row| {
                    let alive = holder_alive(&row.holder);
                    LockState { row, alive }
                }))
            }
        }
    }
}

// lock status: the same test `oplog` uses to take over a crashed holder's row.
/// Whether the `host:pid` holder runs; `None` when it is on another host.
fn holder_alive(holder: &str) -> Option<bool> {
    let my_host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let (host, pid) = holder.rsplit_once(':')?;
    if host != my_host {
        return None;
    }
    Some(std::path::Path::new(&format!("/proc/{pid}")).exists())
}
