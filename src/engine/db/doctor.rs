//! What `doctor` reads from the database: the schema's migration state against the
//! migrations this binary carries (the lock holder comes from `Db::lock_status`).

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
}
