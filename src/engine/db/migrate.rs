//! Schema migrations: the files under `migrations/`, applied in order and recorded in
//! `_sqlx_migrations` as sqlx records them. mirrorctl runs them itself (not `Migrator::run`) to
//! say what it will do (`migrate --dry-run`), time each step, and run a `-- no-transaction`
//! file (PostgreSQL's `CREATE INDEX CONCURRENTLY`, which no transaction may hold) one statement
//! at a time, dropping an invalid index an interrupted concurrent build left behind first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::migrate::{Migrate, Migration, Migrator};
use sqlx::Executor;

use super::{Db, Month, Pool};
use crate::engine::error::{Error, Result};

static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The optional index behind substring `--filter` on PostgreSQL (needs the pg_trgm extension).
pub(super) const TRIGRAM_INDEX: &str = "mirrored_files_key_trgm";

/// One step of `migrate`: a migration file, or the optional trigram index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStep {
    /// The migration's version (0 for the optional trigram index).
    pub version: i64,
    pub description: String,
    /// Run outside a transaction, one statement at a time (concurrent index builds).
    pub concurrently: bool,
    pub statements: usize,
    /// How long it took; absent in a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// What happened to an optional step that could not run (e.g. no pg_trgm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What `migrate` did, or with `dry_run` what it would do.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrateReport {
    pub applied: u64,
    pub total: u64,
    pub dry_run: bool,
    pub steps: Vec<MigrationStep>,
}

/// The statements of a `-- no-transaction` file: one per line ending in ";", comments dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in sql.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("--") {
            continue;
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(line);
        if line.ends_with(';') {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// The index a `CREATE INDEX CONCURRENTLY [IF NOT EXISTS] name …` statement builds.
fn concurrent_index_name(stmt: &str) -> Option<String> {
    let words: Vec<&str> = stmt.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let at = upper.iter().position(|w| w == "CONCURRENTLY")?;
    if upper.get(..at)? != ["CREATE", "INDEX"] && upper.get(..at)? != ["CREATE", "UNIQUE", "INDEX"]
    {
        return None;
    }
    let mut i = at + 1;
    if upper.get(i..i + 3) == Some(&["IF".into(), "NOT".into(), "EXISTS".into()]) {
        i += 3;
    }
    words.get(i).map(|w| w.trim_matches('"').to_string())
}

fn step(m: &Migration) -> MigrationStep {
    MigrationStep {
        version: m.version,
        description: m.description.to_string(),
        concurrently: m.no_tx,
        statements: if m.no_tx { statements(&m.sql).len() } else { 1 },
        seconds: None,
        note: None,
    }
}

impl Db {
    /// Applies pending migrations and creates the event partitions the next writes need.
    pub async fn migrate(&self) -> Result<MigrateReport> {
        self.migrate_with(false).await
    }

    /// `migrate`, or with `dry_run` the steps it would take, without changing anything.
    pub async fn migrate_with(&self, dry_run: bool) -> Result<MigrateReport> {
        let fail = |e: String| Error::Database {
            target: self.target().to_string(),
            message: format!("migration failed: {e}"),
        };
        let mut report = match &self.pool {
            Pool::Postgres(p) => {
                let mut c = p.acquire().await.map_err(|e| self.err(e))?;
                run(&mut *c, &POSTGRES, dry_run).await.map_err(fail)?
            }
            Pool::Sqlite(p) => {
                let mut c = p.acquire().await.map_err(|e| self.err(e))?;
                run(&mut *c, &SQLITE, dry_run).await.map_err(fail)?
            }
        };
        if let Pool::Postgres(p) = &self.pool {
            if let Some(s) = trigram_index(p, dry_run).await.map_err(|e| self.err(e))? {
                report.steps.push(s);
            }
        }
        if !dry_run {
            // The months around now, except one already archived (with `--older-than-months
            // 0`): an empty partition would only stand in the way. Detached months are left
            // alone.
            let now = Month::of(Utc::now());
            let archived = self.archived_months().await?;
            let mut m = now.prev();
            while m <= now.next().next() {
                if !archived.contains(&m) {
                    self.ensure_partitions(m, m).await?;
                }
                m = m.next();
            }
        }
        Ok(report)
    }
}

/// How a connection runs a `-- no-transaction` migration.
trait RunNoTx: Migrate + Send {
    fn run_no_tx<'a>(
        &'a mut self,
        m: &'a Migration,
    ) -> futures::future::BoxFuture<'a, std::result::Result<(), String>>;
}

impl RunNoTx for sqlx::PgConnection {
    fn run_no_tx<'a>(
        &'a mut self,
        m: &'a Migration,
    ) -> futures::future::BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move {
            let err = |e: sqlx::Error| format!("{} {}: {e}", m.version, m.description);
            for stmt in statements(&m.sql) {
                if let Some(name) = concurrent_index_name(&stmt) {
                    drop_invalid_index(self, &name).await.map_err(err)?;
                }
                self.execute(sqlx::raw_sql(&stmt)).await.map_err(err)?;
            }
            sqlx::query(
                "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                 VALUES ($1, $2, TRUE, $3, -1)",
            )
            .bind(m.version)
            .bind(&*m.description)
            .bind(&*m.checksum)
            .execute(&mut *self)
            .await
            .map_err(err)?;
            Ok(())
        })
    }
}

impl RunNoTx for sqlx::SqliteConnection {
    fn run_no_tx<'a>(
        &'a mut self,
        m: &'a Migration,
    ) -> futures::future::BoxFuture<'a, std::result::Result<(), String>> {
        Box::pin(async move { self.apply(m).await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}

/// Whether the index `name` of this schema is valid; `None` when there is none.
pub(super) async fn index_valid<'e>(
    e: impl sqlx::PgExecutor<'e>,
    name: &str,
) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
    )
    .bind(name)
    .fetch_optional(e)
    .await
}

/// Drops `name` if it is an invalid index (an interrupted `CREATE INDEX CONCURRENTLY`), so the
/// build's `IF NOT EXISTS` does not keep the broken one.
async fn drop_invalid_index(c: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<()> {
    if index_valid(&mut *c, name).await? == Some(false) {
        tracing::warn!(
            index = name,
            "dropping an invalid index left by an interrupted build"
        );
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        c.execute(sqlx::raw_sql(&format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {quoted}"
        )))
        .await?;
    }
    Ok(())
}

async fn run<C: RunNoTx>(
    c: &mut C,
    migrator: &Migrator,
    dry_run: bool,
) -> std::result::Result<MigrateReport, String> {
    let e = |e: sqlx::migrate::MigrateError| e.to_string();
    if !dry_run {
        // Two processes migrating at once take turns (an advisory lock on PostgreSQL).
        c.lock().await.map_err(e)?;
    }
    let r = run_locked(c, migrator, dry_run).await;
    if !dry_run {
        c.unlock().await.map_err(e)?;
    }
    r
}

async fn run_locked<C: RunNoTx>(
    c: &mut C,
    migrator: &Migrator,
    dry_run: bool,
) -> std::result::Result<MigrateReport, String> {
    let e = |e: sqlx::migrate::MigrateError| e.to_string();
    if !dry_run {
        c.ensure_migrations_table().await.map_err(e)?;
        if let Some(v) = c.dirty_version().await.map_err(e)? {
            return Err(format!(
                "migration {v} failed half-way before; fix the schema by hand and delete its row \
                 from _sqlx_migrations"
            ));
        }
    }
    let applied: HashMap<i64, Vec<u8>> = match c.list_applied_migrations().await {
        Ok(v) => v
            .into_iter()
            .map(|m| (m.version, m.checksum.into_owned()))
            .collect(),
        // A dry run creates nothing, not even the migrations table: none means none applied.
        Err(_) if dry_run => HashMap::new(),
        Err(err) => return Err(e(err)),
    };
    let mut steps = Vec::new();
    let mut total = 0;
    for m in migrator.iter() {
        if m.migration_type.is_down_migration() {
            continue;
        }
        total += 1;
        if let Some(sum) = applied.get(&m.version) {
            if sum.as_slice() != &*m.checksum {
                return Err(format!(
                    "migration {} ({}) differs from the one applied to this database",
                    m.version, m.description
                ));
            }
            continue;
        }
        let mut s = step(m);
        if !dry_run {
            let t = Instant::now();
            if m.no_tx {
                c.run_no_tx(m).await?;
            } else {
                c.apply(m).await.map_err(e)?;
            }
            s.seconds = Some(secs(t.elapsed()));
            tracing::info!(
                version = m.version,
                seconds = s.seconds,
                "migration applied"
            );
        }
        steps.push(s);
    }
    Ok(MigrateReport {
        applied: if dry_run { 0 } else { steps.len() as u64 },
        total,
        dry_run,
        steps,
    })
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The trigram index for substring key filters, when pg_trgm is (or can be) installed and the
/// index is missing; `None` when there is nothing to do.
async fn trigram_index(p: &sqlx::PgPool, dry_run: bool) -> sqlx::Result<Option<MigrationStep>> {
    if index_valid(p, TRIGRAM_INDEX).await? == Some(true) {
        return Ok(None);
    }
    let mut s = MigrationStep {
        version: 0,
        description: "optional: trigram index for substring key filters (pg_trgm)".into(),
        concurrently: true,
        statements: 2,
        seconds: None,
        note: None,
    };
    let available: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm')",
    )
    .fetch_one(p)
    .await?;
    if !available {
        s.note = Some("pg_trgm is not available: --filter matches a key prefix".into());
        return Ok(Some(s));
    }
    if dry_run {
        return Ok(Some(s));
    }
    let t = Instant::now();
    let mut c = p.acquire().await?;
    if let Err(e) = c
        .execute(sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        .await
    {
        s.note = Some(format!(
            "cannot create extension pg_trgm ({}): --filter matches a key prefix",
            super::describe(&e)
        ));
        return Ok(Some(s));
    }
    drop_invalid_index(&mut c, TRIGRAM_INDEX).await?;
    c.execute(sqlx::raw_sql(&format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {TRIGRAM_INDEX} ON mirrored_files \
         USING gin (lower(key) gin_trgm_ops) WHERE deleted_at IS NULL"
    )))
    .await?;
    s.seconds = Some(secs(t.elapsed()));
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_transaction_files_split_into_statements() {
        let sql = "-- no-transaction\n-- a comment; with a semicolon\nCREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x)\n  WHERE y IS NULL;\nDROP INDEX CONCURRENTLY IF EXISTS b;\n";
        assert_eq!(
            statements(sql),
            vec![
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x) WHERE y IS NULL;",
                "DROP INDEX CONCURRENTLY IF EXISTS b;"
            ]
        );
    }

    #[test]
    fn concurrent_builds_are_named() {
        assert_eq!(
            concurrent_index_name("CREATE INDEX CONCURRENTLY IF NOT EXISTS a ON t (x);"),
            Some("a".into())
        );
        assert_eq!(
            concurrent_index_name("create unique index concurrently \"b\" on t (x);"),
            Some("b".into())
        );
        assert_eq!(concurrent_index_name("DROP INDEX CONCURRENTLY a;"), None);
        assert_eq!(concurrent_index_name("CREATE INDEX a ON t (x);"), None);
    }

    #[test]
    fn every_postgres_no_transaction_file_splits_cleanly() {
        for m in POSTGRES.iter().filter(|m| m.no_tx) {
            for s in statements(&m.sql) {
                assert!(s.ends_with(';'), "{}: {s}", m.version);
                assert_eq!(s.matches(';').count(), 1, "{}: {s}", m.version);
            }
        }
    }
}
