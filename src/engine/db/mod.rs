//! The database layer: the only place with SQL. One `Db` over PostgreSQL or SQLite, with the
//! schema migrations for both kept in lockstep. Queries are written once where the SQL is
//! portable (`on_pool!` compiles the same code for both pools) and per backend where it is not.

mod archive;
mod catalog;
mod changes;
mod doctor;
mod drift;
mod events;
mod files;
mod fleet;
mod inventory;
mod key_filter;
mod key_scope;
mod leases;
mod lifecycle;
mod lock;
mod migrate;
mod oplog;
mod partitions;
mod prefetch;
mod purge_impact;
mod replication;
mod validate_checkpoint;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::pool::PoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use crate::engine::error::{Error, Result};

pub use archive::{ArchiveRecord, EventRow, LiveMonth};
pub use catalog::{
    CatalogEntry, CatalogMerge, CatalogRow, CatalogStage, MergeOptions, MergeOutcome,
};
pub use changes::{Change, Changes};
pub use doctor::SchemaStatus;
pub use fleet::{FleetBeat, FleetRow};
pub use key_scope::{KeyScope, MAX_PATTERN_BYTES};
pub use leases::{LeaseHolder, Leased};
pub use lifecycle::{
    FileScope, LifecycleRow, PurgeBy, PurgePlan, PurgeRow, PurgeSelector, Remirrored, StaleMark,
};
pub use lock::{
    heartbeat_every, holder_id, LockGuard, LockRow, LockSession, LockStatus, DEFAULT_LOCK_LEASE,
};
pub use migrate::{MigrateReport, MigrationStep};
pub use oplog::OperationHeartbeat;
pub use partitions::{month_bounds, partition_name, Month};
pub use prefetch::PrefetchRow;
pub use purge_impact::PurgeImpactRow;
pub use replication::{
    BacklogCounts, ClaimedTask, FrontWrite, InventoryState, TaskEnd, TaskRow, WrittenObject,
};
pub use validate_checkpoint::{ValidateCheckpoint, ValidateCounts};

/// Runs the same block against whichever pool this `Db` holds.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.pool {
            $crate::engine::db::Pool::Postgres($pool) => async { $body }.await,
            $crate::engine::db::Pool::Sqlite($pool) => async { $body }.await,
        }
    };
}
pub(crate) use on_pool;

/// Like `on_pool!`, but on PostgreSQL through `Db::relaxed`, whose sessions do not wait for
/// the WAL flush at commit: for writes whose loss in a database crash costs only a redo.
macro_rules! on_relaxed_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match &$db.relaxed {
            Some($pool) => async { $body }.await,
            None => $crate::engine::db::on_pool!($db, |$pool| $body),
        }
    };
}
pub(crate) use on_relaxed_pool;

#[derive(Clone)]
pub(crate) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Which SQL dialect a `Db` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A write transaction: on SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so a
/// transaction that reads before it writes cannot fail with "database is locked" half-way.
pub(crate) trait BeginWrite: sqlx::Connection {
    fn begin_write(
        &mut self,
    ) -> futures::future::BoxFuture<'_, Result<sqlx::Transaction<'_, Self::Database>, sqlx::Error>>;
}

impl BeginWrite for sqlx::PgConnection {
    fn begin_write(
        &mut self,
    ) -> futures::future::BoxFuture<'_, Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error>>
    {
        sqlx::Connection::begin(self)
    }
}

impl BeginWrite for sqlx::SqliteConnection {
    fn begin_write(
        &mut self,
    ) -> futures::future::BoxFuture<'_, Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error>>
    {
        sqlx::Connection::begin_with(self, "BEGIN IMMEDIATE")
    }
}

/// A connection pool to the mirror database.
#[derive(Clone)]
pub struct Db {
    pub(crate) pool: Pool,
    /// On PostgreSQL always (`None` on SQLite): sessions with `synchronous_commit = off` (a
    /// quarter of `max_connections`, taken from it; opened on first use), for the S3 front's
    /// write intents and the replication workers' claims and task ends. Losing one of those in
    /// a database crash costs a redo (a reconciliation or an idempotent copy), never an
    /// acknowledged write; the record that acknowledges a write goes through `pool`.
    pub(crate) relaxed: Option<PgPool>,
    /// The URL with any password removed, for messages.
    target: String,
    /// Months whose event partition is known to exist, so writes skip the DDL.
    known_months: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<Month>>>,
    /// How long the mutation lock and a running operation's row stay claimed without renewal.
    lock_lease: Duration,
    /// What the database offers a key filter (looked up once).
    key_index: std::sync::Arc<std::sync::OnceLock<key_filter::KeyIndex>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({})", self.target)
    }
}

/// A connection that sat idle in the pool this long is pinged before it is handed out.
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Pool settings for both backends. A connection taken from the pool is not pinged when it
/// was in use moments ago: sqlx's default ping is a round trip per acquisition, which was a
/// fifth of the S3 front's round trips per write. One idle for `PING_AFTER_IDLE` or longer
/// (across a database restart, say) is still checked, and a broken one is replaced.
fn pool_options<DB: sqlx::Database>(max_connections: u32, timeout: Duration) -> PoolOptions<DB> {
    PoolOptions::<DB>::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

impl Db {
    /// Connects (creating a missing SQLite file) within `timeout`; errors name the target.
    pub async fn connect(url: &str, max_connections: u32, timeout: Duration) -> Result<Db> {
        let target = crate::config::redact_url(url);
        let target = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            target
        };
        let db_err = |message: String| Error::Database {
            target: target.clone(),
            message,
        };
        let mut relaxed = None;
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| db_err(format!("bad SQLite URL: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // 1 MiB of page cache per connection instead of SQLite's 2 MiB: the OS caches
                // the file too, and a pool of connections scanning the inventory in parallel
                // would otherwise hold most of a bounded-memory drift run.
                .pragma("cache_size", "-1024")
                // sqlx-sqlite's worker thread hands rows over a channel of this many (50 by
                // default): a page of 1,000 rows then woke the reading task about once per
                // row. A page's worth lets the worker run ahead (drift at 100,000 keys: system
                // time 0.24-0.38 s down to 0.09-0.12 s). A page's rows are collected anyway.
                .row_buffer_size(1024);
            if let Some(parent) = opts.get_filename().parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| db_err(format!("cannot create {}: {e}", parent.display())))?;
                }
            }
            let pool = pool_options::<sqlx::Sqlite>(max_connections, timeout).connect_with(opts);
            let pool = tokio::time::timeout(timeout, pool)
                .await
                .map_err(|_| db_err(format!("no connection within {}s", timeout.as_secs())))?
                .map_err(|e| db_err(describe(&e)))?;
            Pool::Sqlite(pool)
        } else {
            let mut opts =
                PgConnectOptions::from_str(url).map_err(|e| db_err(format!("bad URL: {e}")))?;
            // The application name shows in pg_stat_activity, e.g. next to the session that
            // holds the mutation lock; one set in the URL wins.
            if !url.contains("application_name=") {
                opts = opts.application_name("mirrorctl");
            }
            // Every query here reads a few index pages; a misestimated row count must not
            // buy it JIT compilation (hundreds of ms at 10M rows). One set in the URL wins.
            if !url.contains("jit") {
                opts = opts.options([("jit", "off")]);
            }
            // The pool retries a refused connection until its timeout; an operator should hear
            // "unreachable" at once. So: a pool with a short timeout (the fast path, one
            // connection), and when that fails one direct attempt for the real cause.
            let relaxed_connections = (max_connections / 4).max(1);
            let max_connections = if max_connections > relaxed_connections {
                max_connections - relaxed_connections
            } else {
                max_connections
            };
            relaxed = Some(
                pool_options::<sqlx::Postgres>(relaxed_connections, timeout)
                    .connect_lazy_with(opts.clone().options([("synchronous_commit", "off")])),
            );
            let quick = pool_options::<sqlx::Postgres>(
                max_connections,
                timeout.min(Duration::from_secs(2)),
            )
            .connect_with(opts.clone())
            .await;
            let pool = match quick {
                Ok(pool) => pool,
                Err(_) => {
                    use sqlx::Connection;
                    let first =
                        tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&opts))
                            .await
                            .map_err(|_| {
                                db_err(format!("no connection within {}s", timeout.as_secs()))
                            })?
                            .map_err(|e| db_err(describe(&e)))?;
                    let _ = first.close().await;
                    pool_options::<sqlx::Postgres>(max_connections, timeout)
                        .connect_with(opts)
                        .await
                        .map_err(|e| db_err(describe(&e)))?
                }
            };
            Pool::Postgres(pool)
        };
        Ok(Db {
            pool,
            relaxed,
            target,
            known_months: Default::default(),
            lock_lease: DEFAULT_LOCK_LEASE,
            key_index: Default::default(),
        })
    }

    /// The lease this process gives its lock and running operations (`database.lock_lease`):
    /// renewed every sixth of it, and another process takes over once it ends.
    pub fn with_lock_lease(mut self, lease: Duration) -> Db {
        self.lock_lease = lease;
        self
    }

    pub fn lock_lease(&self) -> Duration {
        self.lock_lease
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// The database URL without secrets.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Wraps a driver error with the database it came from.
    pub(crate) fn err(&self, e: sqlx::Error) -> Error {
        Error::Database {
            target: self.target.clone(),
            message: describe(&e),
        }
    }

    pub async fn applied_migrations(&self) -> Result<u64> {
        let n: Result<i64, sqlx::Error> = on_pool!(self, |p| sqlx::query_scalar(
            "SELECT count(*) FROM _sqlx_migrations WHERE success"
        )
        .fetch_one(p)
        .await);
        n.map(|n| n as u64).map_err(|e| self.err(e))
    }

    /// Fails unless the schema is migrated, with a message that says what to run.
    pub async fn check_schema(&self) -> Result<()> {
        let n = self.applied_migrations().await.unwrap_or(0);
        if n == 0 {
            return Err(Error::Usage(format!(
                "database {} has no mirrorctl schema: run `mirrorctl migrate`",
                self.target
            )));
        }
        Ok(())
    }

    pub async fn close(&self) {
        on_pool!(self, |p| p.close().await)
    }
}

/// A one-line description of a driver error, without the URL.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Io(io) => format!("unreachable: {io}"),
        sqlx::Error::PoolTimedOut => "no connection available (timed out)".into(),
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string().replace('\n', " "),
    }
}

/// Timestamps are stored with whole-second precision so SQLite text sorts chronologically.
pub fn ts(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}
