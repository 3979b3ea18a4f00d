//! The SQL of partition archiving: which months hold events, streaming a month's events out,
//! dropping an archived month together with its `archived_partitions` record, and loading
//! archived rows back.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::QueryBuilder;
use tokio::sync::mpsc;

use super::{month_bounds, on_pool, partition_name, ts, Db, Month, Pool};
use crate::engine::error::{Error, Result};

/// Runs `$attempt` (an expression yielding `Result<T, sqlx::Error>`, evaluated anew each time)
/// until it goes through, retrying with a growing pause while it fails on a lock timeout or a
/// deadlock, which change nothing. A macro rather than a function taking a closure: the
/// attempts borrow the pool and the record, and a closure returning such futures is not `Send`
/// for every lifetime, which `serve`'s spawned workers need.
macro_rules! with_lock_retries {
    ($db:expr, $name:expr, $step:expr, $attempt:expr) => {{
        let mut n = 0u32;
        loop {
            n += 1;
            match $attempt {
                Ok(v) => break Ok(v),
                Err(e) if lock_contention(&e) && n < DDL_ATTEMPTS => {
                    tracing::info!(
                        "{}: the events table is busy ({e}); {} attempt {n} of {DDL_ATTEMPTS}",
                        $name,
                        $step
                    );
                    tokio::time::sleep(DDL_BACKOFF * n).await;
                }
                Err(e) if lock_contention(&e) => {
                    break Err(Error::runtime(format!(
                        "{}: writers kept download_events busy through {DDL_ATTEMPTS} {} attempts; \
                         nothing lost (rerun the archive)",
                        $name, $step
                    )))
                }
                Err(e) => break Err($db.err(e)),
            }
        }
    }};
}

/// One download event as it is archived and restored.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub occurred_at: DateTime<Utc>,
    pub file_id: i64,
    pub cache_hit: bool,
    pub bytes: i64,
    pub duration_ms: i32,
    pub status: i16,
}

/// A month that has events in the database.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveMonth {
    pub month: Month,
    pub rows: i64,
    /// `rows` is the catalog's estimate, not a count.
    pub rows_estimated: bool,
    /// On-disk size of the partition (PostgreSQL); SQLite keeps no per-month size.
    pub bytes: Option<i64>,
    /// The month's table is detached from `download_events` (PostgreSQL): an archive run
    /// detached it and has not dropped it yet. Its rows are still there, under its own name.
    pub detached: bool,
}

/// A month's table as the PostgreSQL catalog describes it.
struct MonthTable {
    month: Month,
    /// The planner's row estimate; -1 (PostgreSQL 14+) or 0 when never analyzed.
    reltuples: f64,
    heap_bytes: i64,
    total_bytes: i64,
    detached: bool,
}

/// One row of `archived_partitions`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct ArchiveRecord {
    pub partition: String,
    pub year: i32,
    pub month: i32,
    pub row_count: i64,
    pub bytes: i64,
    pub sha256: String,
    pub bucket: String,
    pub object_key: String,
    pub archived_at: DateTime<Utc>,
    pub schema_version: i32,
    pub state: String,
}

/// Rows per multi-row INSERT on SQLite: 7 parameters each stays below its variable limit.
const SQLITE_INSERT_CHUNK: usize = 2000;

const EVENT_COLUMNS: &str = "id, occurred_at, file_id, cache_hit, bytes, duration_ms, status";

/// The upsert of an `archived_partitions` row, as a query either backend executes.
macro_rules! upsert_record {
    ($r:expr) => {
        sqlx::query(
            "INSERT INTO archived_partitions (partition, year, month, row_count, bytes, sha256, bucket, object_key, \
                                              archived_at, schema_version, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (partition) DO UPDATE SET year = excluded.year, month = excluded.month, \
                 row_count = excluded.row_count, bytes = excluded.bytes, sha256 = excluded.sha256, \
                 bucket = excluded.bucket, object_key = excluded.object_key, archived_at = excluded.archived_at, \
                 schema_version = excluded.schema_version, state = excluded.state",
        )
        .bind(&$r.partition)
        .bind($r.year)
        .bind($r.month)
        .bind($r.row_count)
        .bind($r.bytes)
        .bind(&$r.sha256)
        .bind(&$r.bucket)
        .bind(&$r.object_key)
        .bind(ts($r.archived_at))
        .bind($r.schema_version)
        .bind(&$r.state)
    };
}

const MARK_RESTORED: &str =
    "UPDATE archived_partitions SET state = 'restored' WHERE partition = $1";

impl Db {
    /// Every month with events, oldest first, with its row count (and size on PostgreSQL).
    ///
    /// PostgreSQL: the count is the planner's estimate (`pg_class.reltuples`, kept by
    /// autovacuum's ANALYZE) unless `exact`, so that listing months never scans 100M rows. A
    /// partition with pages but no estimate (never analyzed, or analyzed while empty) is counted
    /// exactly. Months whose table is detached (an archive run under way or interrupted) are
    /// listed too, marked `detached`. SQLite has no such estimate: it always counts, grouping
    /// the one events table by month (its datasets are small).
    pub async fn live_months(&self, exact: bool) -> Result<Vec<LiveMonth>> {
        match &self.pool {
            Pool::Postgres(p) => {
                let tables = self.pg_month_tables(p).await?;
                let mut out = Vec::new();
                for t in tables {
                    let (rows, estimated) = if !exact && t.reltuples > 0.0 {
                        (t.reltuples.round() as i64, true)
                    } else if !exact && t.heap_bytes == 0 {
                        (0, false)
                    } else {
                        (self.table_rows(t.month).await?, false)
                    };
                    if rows > 0 || t.detached {
                        out.push(LiveMonth {
                            month: t.month,
                            rows,
                            rows_estimated: estimated,
                            bytes: Some(t.total_bytes),
                            detached: t.detached,
                        });
                    }
                }
                out.sort_by_key(|m| m.month);
                Ok(out)
            }
            Pool::Sqlite(p) => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT substr(occurred_at, 1, 7) AS ym, count(*) FROM download_events GROUP BY ym ORDER BY ym",
                )
                .fetch_all(p)
                .await
                .map_err(|e| self.err(e))?;
                Ok(rows
                    .into_iter()
                    .filter_map(|(ym, rows)| {
                        let (y, m) = ym.split_once('-')?;
                        Some(LiveMonth {
                            month: Month {
                                year: y.parse().ok()?,
                                month: m.parse().ok()?,
                            },
                            rows,
                            rows_estimated: false,
                            bytes: None,
                            detached: false,
                        })
                    })
                    .collect())
            }
        }
    }

    /// The tables of months on PostgreSQL: the partitions of `download_events` and the month
    /// tables detached from it, with the catalog's figures. Only names that parse as a month
    /// are kept; SQL about them is rebuilt from the parsed month, never from catalog text.
    async fn pg_month_tables(&self, p: &sqlx::PgPool) -> Result<Vec<MonthTable>> {
        // `inhdetachpending` exists from PostgreSQL 14 on; read through to_jsonb so that one
        // statement serves every version.
        let rows: Vec<(String, f64, i64, i64, bool, bool)> = sqlx::query_as(
            "SELECT c.relname::text, c.reltuples::float8, pg_relation_size(c.oid), \
                    pg_total_relation_size(c.oid), i.inhrelid IS NOT NULL, \
                    coalesce((to_jsonb(i) ->> 'inhdetachpending')::boolean, false) \
             FROM pg_class c \
             LEFT JOIN pg_inherits i ON i.inhrelid = c.oid AND i.inhparent = 'download_events'::regclass \
             WHERE c.relkind = 'r' \
               AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = 'download_events'::regclass) \
               AND c.relname LIKE 'download\\_events\\_y%' \
               AND (i.inhrelid IS NOT NULL OR NOT c.relispartition)",
        )
        .fetch_all(p)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(name, reltuples, heap_bytes, total_bytes, attached, pending)| {
                    Some(MonthTable {
                        month: Month::from_partition_name(&name)?,
                        reltuples,
                        heap_bytes,
                        total_bytes,
                        detached: !attached || pending,
                    })
                },
            )
            .collect())
    }

    /// Exact row count of the month's own table (PostgreSQL: the partition or the detached
    /// table by name, so a detached month is counted too; SQLite: the month's rows).
    async fn table_rows(&self, month: Month) -> Result<i64> {
        match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_scalar(&format!("SELECT count(*) FROM {}", partition_name(month)))
                    .fetch_one(p)
                    .await
                    .map_err(|e| self.err(e))
            }
            Pool::Sqlite(_) => self.month_rows(month).await,
        }
    }

    /// Months whose table is detached from `download_events` (or its detach is pending) and
    /// not dropped yet: an archive run under way, or interrupted. Their rows are readable only
    /// through the table's own name. Always empty on SQLite.
    pub async fn detached_months(&self) -> Result<Vec<Month>> {
        match &self.pool {
            Pool::Postgres(p) => Ok(self
                .pg_month_tables(p)
                .await?
                .into_iter()
                .filter(|t| t.detached)
                .map(|t| t.month)
                .collect()),
            Pool::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Events of one month still in the database.
    pub async fn month_rows(&self, month: Month) -> Result<i64> {
        let (start, end) = month_bounds(month);
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| sqlx::query_scalar(
            "SELECT count(*) FROM download_events WHERE occurred_at >= $1 AND occurred_at < $2"
        )
        .bind(start)
        .bind(end)
        .fetch_one(p)
        .await);
        r.map_err(|e| self.err(e))
    }

    /// Whether the month's partition exists (PostgreSQL), or the month has rows (SQLite).
    pub async fn month_exists(&self, month: Month) -> Result<bool> {
        match &self.pool {
            Pool::Postgres(p) => {
                let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                    .bind(partition_name(month))
                    .fetch_one(p)
                    .await
                    .map_err(|e| self.err(e))?;
                Ok(found.is_some())
            }
            Pool::Sqlite(_) => Ok(self.month_rows(month).await? > 0),
        }
    }

    /// Streams the month's events to `tx` in batches of `batch_rows`, returning how many were
    /// sent; the channel's bound keeps memory to a few batches whatever the month's size.
    ///
    /// PostgreSQL reads the month's own table (attached or detached) by keyset on `id`, one
    /// short statement per batch, so no snapshot is held for the minutes a big month takes
    /// (which would hold back vacuum on the whole database). Rows that arrive meanwhile get
    /// higher ids and are exported too, or caught by the drop's count. SQLite reads the month
    /// in one statement: its datasets are small, and a keyset over the one events table would
    /// rescan the month's index range per batch.
    pub async fn export_month(
        &self,
        month: Month,
        batch_rows: usize,
        tx: mpsc::Sender<Vec<EventRow>>,
    ) -> Result<u64> {
        let batch_rows = batch_rows.max(1);
        match &self.pool {
            Pool::Postgres(p) => {
                // The name is built from integers.
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM {} WHERE id > $1 ORDER BY id LIMIT $2",
                    partition_name(month)
                );
                let mut last = i64::MIN;
                let mut sent = 0u64;
                loop {
                    let batch: Vec<EventRow> = sqlx::query_as(&sql)
                        .bind(last)
                        .bind(batch_rows as i64)
                        .fetch_all(p)
                        .await
                        .map_err(|e| self.err(e))?;
                    let Some(end) = batch.last().map(|r| r.id) else {
                        break;
                    };
                    last = end;
                    let full = batch.len() == batch_rows;
                    sent += batch.len() as u64;
                    if tx.send(batch).await.is_err() {
                        // The writer stopped; its error is what the caller reports.
                        break;
                    }
                    if !full {
                        break;
                    }
                }
                Ok(sent)
            }
            Pool::Sqlite(p) => {
                let (start, end) = month_bounds(month);
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM download_events WHERE occurred_at >= $1 AND occurred_at < $2 \
                     ORDER BY occurred_at, id"
                );
                let r: Result<u64, sqlx::Error> = async {
                    let mut rows = sqlx::query_as::<_, EventRow>(&sql)
                        .bind(start)
                        .bind(end)
                        .fetch(p);
                    let mut batch = Vec::with_capacity(batch_rows);
                    let mut sent = 0u64;
                    while let Some(row) = rows.try_next().await? {
                        batch.push(row);
                        if batch.len() == batch_rows {
                            sent += batch.len() as u64;
                            let full =
                                std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
                            if tx.send(full).await.is_err() {
                                return Ok(sent);
                            }
                        }
                    }
                    if !batch.is_empty() {
                        sent += batch.len() as u64;
                        let _ = tx.send(batch).await;
                    }
                    Ok(sent)
                }
                .await;
                r.map_err(|e| self.err(e))
            }
        }
    }

    /// Drops the month's events and records the verified archive, atomically. Refuses (and
    /// changes nothing) when the month no longer holds exactly `expected_rows` rows, e.g. late
    /// events arrived after the export: a rerun exports them too.
    pub async fn drop_archived_month(
        &self,
        month: Month,
        expected_rows: u64,
        record: &ArchiveRecord,
    ) -> Result<()> {
        let (start, end) = month_bounds(month);
        let mismatch = |found: u64| {
            Error::runtime(format!(
                "{}: {found} rows now, {expected_rows} archived; nothing dropped (rerun to archive again)",
                partition_name(month)
            ))
        };
        match &self.pool {
            Pool::Postgres(p) => {
                let name = partition_name(month);
                let detached = self
                    .pg_month_tables(p)
                    .await?
                    .iter()
                    .any(|t| t.month == month && t.detached);
                // Nobody writes into a detached table; the count still guards against anyone
                // who did by its name.
                let found = with_lock_retries!(
                    self,
                    name,
                    "drop",
                    self.pg_drop_counted(p, &name, !detached, expected_rows, record)
                        .await
                )?;
                if let Some(found) = found {
                    return Err(mismatch(found));
                }
            }
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await.map_err(|e| self.err(e))?;
                let deleted = sqlx::query(
                    "DELETE FROM download_events WHERE occurred_at >= $1 AND occurred_at < $2",
                )
                .bind(start)
                .bind(end)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .rows_affected();
                if deleted != expected_rows {
                    // Dropping `tx` rolls the delete back.
                    return Err(mismatch(deleted));
                }
                upsert_record!(record)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                tx.commit().await.map_err(|e| self.err(e))?;
            }
        }
        if let Ok(mut known) = self.known_months.lock() {
            known.remove(&month);
        }
        Ok(())
    }

    /// Loads archived rows from `rx` back into the month and marks the record `restored`, in one
    /// transaction: a failure part-way leaves the month as it was. Refuses when the month
    /// already holds rows.
    pub async fn restore_month(
        &self,
        month: Month,
        mut rx: mpsc::Receiver<Vec<EventRow>>,
    ) -> Result<u64> {
        let name = partition_name(month);
        let (start, end) = month_bounds(month);
        // PostgreSQL: the partition was dropped with the archive.
        if !self.ensure_partitions(month, month).await?.is_empty() {
            return Err(Error::Refused(format!(
                "{name} is detached by an archive run that has not finished; run `archive run` first"
            )));
        }
        let live = self.month_rows(month).await?;
        if live > 0 {
            return Err(Error::Refused(format!(
                "{name} holds {live} rows in the database; restoring would duplicate them"
            )));
        }
        let mut inserted = 0u64;
        match &self.pool {
            Pool::Postgres(p) => {
                let mut tx = p.begin().await.map_err(|e| self.err(e))?;
                while let Some(batch) = rx.recv().await {
                    check_in_month(&batch, start, end, &name)?;
                    // One statement per batch: arrays bind as seven parameters whatever the size.
                    sqlx::query(
                        "INSERT INTO download_events (id, occurred_at, file_id, cache_hit, bytes, duration_ms, status) \
                         SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::bigint[], $4::boolean[], \
                                              $5::bigint[], $6::integer[], $7::smallint[])",
                    )
                    .bind(batch.iter().map(|r| r.id).collect::<Vec<_>>())
                    .bind(batch.iter().map(|r| r.occurred_at).collect::<Vec<_>>())
                    .bind(batch.iter().map(|r| r.file_id).collect::<Vec<_>>())
                    .bind(batch.iter().map(|r| r.cache_hit).collect::<Vec<_>>())
                    .bind(batch.iter().map(|r| r.bytes).collect::<Vec<_>>())
                    .bind(batch.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
                    .bind(batch.iter().map(|r| r.status).collect::<Vec<_>>())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                    inserted += batch.len() as u64;
                }
                sqlx::query(MARK_RESTORED)
                    .bind(&name)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                tx.commit().await.map_err(|e| self.err(e))?;
            }
            Pool::Sqlite(p) => {
                let mut tx = p.begin().await.map_err(|e| self.err(e))?;
                while let Some(batch) = rx.recv().await {
                    check_in_month(&batch, start, end, &name)?;
                    for chunk in batch.chunks(SQLITE_INSERT_CHUNK) {
                        let mut qb = QueryBuilder::new(format!(
                            "INSERT INTO download_events ({EVENT_COLUMNS}) "
                        ));
                        qb.push_values(chunk, |mut b, r| {
                            b.push_bind(r.id)
                                .push_bind(r.occurred_at)
                                .push_bind(r.file_id)
                                .push_bind(r.cache_hit)
                                .push_bind(r.bytes)
                                .push_bind(r.duration_ms)
                                .push_bind(r.status);
                        });
                        qb.build()
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| self.err(e))?;
                    }
                    inserted += batch.len() as u64;
                }
                sqlx::query(MARK_RESTORED)
                    .bind(&name)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
                tx.commit().await.map_err(|e| self.err(e))?;
            }
        }
        Ok(inserted)
    }

    /// Every `archived_partitions` row, oldest month first.
    pub async fn archive_records(&self) -> Result<Vec<ArchiveRecord>> {
        let r = on_pool!(self, |p| {
            sqlx::query_as::<_, ArchiveRecord>(
            "SELECT partition, year, month, row_count, bytes, sha256, bucket, object_key, archived_at, \
                    schema_version, state FROM archived_partitions ORDER BY year, month"
        )
        .fetch_all(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// The record of one partition, if it was ever archived.
    pub async fn archive_record(&self, partition: &str) -> Result<Option<ArchiveRecord>> {
        let r = on_pool!(self, |p| {
            sqlx::query_as::<_, ArchiveRecord>(
            "SELECT partition, year, month, row_count, bytes, sha256, bucket, object_key, archived_at, \
                    schema_version, state FROM archived_partitions WHERE partition = $1"
        )
        .bind(partition)
        .fetch_optional(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// Months whose events are archived (not restored), oldest first.
    pub async fn archived_months(&self) -> Result<Vec<Month>> {
        let rows: Result<Vec<(i32, i32)>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT year, month FROM archived_partitions WHERE state = 'archived' ORDER BY year, month"
        )
        .fetch_all(p)
        .await
        });
        Ok(rows
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|(_, m)| (1..=12).contains(m))
            .map(|(year, month)| Month {
                year,
                month: month as u32,
            })
            .collect())
    }
}

/// Restored rows must belong to the month they are restored into, or the partition insert
/// would fail (PostgreSQL) or silently land elsewhere (SQLite).
fn check_in_month(
    batch: &[EventRow],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    name: &str,
) -> Result<()> {
    match batch
        .iter()
        .find(|r| r.occurred_at < start || r.occurred_at >= end)
    {
        Some(r) => Err(Error::runtime(format!(
            "archive of {name} holds event {} at {}, outside the month; nothing restored",
            r.id, r.occurred_at
        ))),
        None => Ok(()),
    }
}

/// How long a DDL step of the archive (detach, drop) waits for a lock before it gives up and
/// retries, and how often it tries: writers (`serve`'s event flushes) wait at most this long
/// behind it.
const DDL_LOCK_TIMEOUT: &str = "2s";
const DDL_ATTEMPTS: u32 = 8;
const DDL_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);
/// The first PostgreSQL release with `DETACH PARTITION … CONCURRENTLY` (14.0).
const PG_DETACH_CONCURRENTLY: i32 = 140_000;

/// A transaction whose every lock waits at most `DDL_LOCK_TIMEOUT`.
async fn ddl_transaction(
    p: &sqlx::PgPool,
) -> std::result::Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = p.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// A lock timeout (55P03) or a deadlock (40P01): the transaction changed nothing.
fn lock_contention(e: &sqlx::Error) -> bool {
    matches!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("55P03") | Some("40P01")
    )
}

impl Db {
    /// One attempt at dropping an archived month's table together with writing its record, in
    /// one transaction. Still `attached`: the count runs under a SHARE lock on that partition
    /// only (writers of the current month, in other partitions, go on; reads too), then the
    /// parent is locked just for the catalog-only DETACH. Detached: only that table is locked.
    /// Every lock waits at most `DDL_LOCK_TIMEOUT`. `Ok(Some(n))`: the table holds `n` rows,
    /// not the archived count; nothing dropped.
    async fn pg_drop_counted(
        &self,
        p: &sqlx::PgPool,
        name: &str,
        attached: bool,
        expected_rows: u64,
        record: &ArchiveRecord,
    ) -> std::result::Result<Option<u64>, sqlx::Error> {
        let mut tx = ddl_transaction(p).await?;
        // The name is built from integers.
        let mode = if attached {
            "SHARE"
        } else {
            "ACCESS EXCLUSIVE"
        };
        sqlx::query(&format!("LOCK TABLE {name} IN {mode} MODE"))
            .execute(&mut *tx)
            .await?;
        let found: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}"))
            .fetch_one(&mut *tx)
            .await?;
        if found as u64 != expected_rows {
            return Ok(Some(found as u64));
        }
        if attached {
            sqlx::query(&format!(
                "ALTER TABLE download_events DETACH PARTITION {name}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(&format!("DROP TABLE {name}"))
            .execute(&mut *tx)
            .await?;
        upsert_record!(record).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(None)
    }
}

impl Db {
    /// Whether the server can detach a partition without blocking writers (PostgreSQL 14+).
    pub async fn detach_concurrently_supported(&self) -> Result<bool> {
        match &self.pool {
            Pool::Postgres(p) => {
                let v: i32 =
                    sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                        .fetch_one(p)
                        .await
                        .map_err(|e| self.err(e))?;
                Ok(v >= PG_DETACH_CONCURRENTLY)
            }
            Pool::Sqlite(_) => Ok(false),
        }
    }

    /// Detaches the month's partition from `download_events` with `DETACH PARTITION …
    /// CONCURRENTLY` (PostgreSQL 14+), so that writers of other months never wait behind a
    /// lock on the parent; finishes a detach an earlier run left pending (`FINALIZE`). After it,
    /// the month's rows stay in the detached table, readable by its name, and no write can
    /// reach them. `false` when the backend cannot (SQLite, PostgreSQL < 14): then the drop
    /// detaches in its own transaction.
    pub async fn detach_month(&self, month: Month) -> Result<bool> {
        let Pool::Postgres(p) = &self.pool else {
            return Ok(false);
        };
        if !self.detach_concurrently_supported().await? {
            return Ok(false);
        }
        let name = partition_name(month);
        let mut busy = 0u32;
        // Each round reads where the detach stands and takes the next step: detach, finalize
        // (when the detach's second phase, which waits for transactions that saw the
        // partition, timed out and left it pending), done. Bounded, whatever the catalog says.
        for _ in 0..DDL_ATTEMPTS + 3 {
            let Some(table) = self
                .pg_month_tables(p)
                .await?
                .into_iter()
                .find(|t| t.month == month)
            else {
                return Err(Error::NotFound(format!("partition {name}")));
            };
            let pending = table.detached && self.pg_still_child(p, &name).await?;
            if table.detached && !pending {
                break;
            }
            // The name is built from integers.
            let ddl = if pending {
                format!("ALTER TABLE download_events DETACH PARTITION {name} FINALIZE")
            } else {
                format!("ALTER TABLE download_events DETACH PARTITION {name} CONCURRENTLY")
            };
            match self.pg_run_ddl(p, &ddl).await {
                Ok(()) => {}
                Err(e) if lock_contention(&e) && busy + 1 < DDL_ATTEMPTS => {
                    busy += 1;
                    tracing::info!(
                        "{name}: the events table is busy ({e}); detach attempt {busy} of {DDL_ATTEMPTS}"
                    );
                    tokio::time::sleep(DDL_BACKOFF * busy).await;
                }
                Err(e) if lock_contention(&e) => {
                    return Err(Error::runtime(format!(
                        "{name}: transactions kept download_events busy through {DDL_ATTEMPTS} detach attempts; \
                         nothing lost (rerun the archive: it finishes the detach)"
                    )))
                }
                Err(e) => return Err(self.err(e)),
            }
        }
        if let Ok(mut known) = self.known_months.lock() {
            known.remove(&month);
        }
        if self.detached_months().await?.contains(&month) {
            Ok(true)
        } else {
            Err(Error::runtime(format!(
                "{name}: the detach did not complete; rerun the archive"
            )))
        }
    }

    /// Whether the table is still a child of `download_events` (a detach pending).
    async fn pg_still_child(&self, p: &sqlx::PgPool, name: &str) -> Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass($1))",
        )
        .bind(name)
        .fetch_one(p)
        .await
        .map_err(|e| self.err(e))
    }

    /// One statement outside any transaction (`DETACH … CONCURRENTLY` refuses to run in one),
    /// on a connection of its own with the lock timeout set for the session; the connection
    /// is closed afterwards so the setting never leaks into the pool.
    async fn pg_run_ddl(
        &self,
        p: &sqlx::PgPool,
        ddl: &str,
    ) -> std::result::Result<(), sqlx::Error> {
        use sqlx::Executor;
        let mut conn = p.acquire().await?;
        conn.close_on_drop();
        // A bare string runs over the simple protocol, as one statement of its own.
        let timeout = format!("SET lock_timeout = '{DDL_LOCK_TIMEOUT}'");
        conn.execute(timeout.as_str()).await?;
        conn.execute(ddl).await?;
        Ok(())
    }

    /// One attempt at dropping a detached table if it is empty; the rows it holds.
    async fn pg_drop_if_empty(
        &self,
        p: &sqlx::PgPool,
        name: &str,
    ) -> std::result::Result<i64, sqlx::Error> {
        let mut tx = ddl_transaction(p).await?;
        let found: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}"))
            .fetch_one(&mut *tx)
            .await?;
        if found == 0 {
            sqlx::query(&format!("DROP TABLE {name}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(found)
    }

    /// Drops a detached month's table that holds no rows (an interrupted run of a month
    /// emptied meanwhile), so the month can be written again.
    pub async fn drop_empty_detached(&self, month: Month) -> Result<()> {
        let Pool::Postgres(p) = &self.pool else {
            return Ok(());
        };
        let name = partition_name(month);
        let found = with_lock_retries!(self, name, "drop", self.pg_drop_if_empty(p, &name).await)?;
        if found != 0 {
            return Err(Error::runtime(format!(
                "{name}: the detached table holds {found} rows now; nothing dropped (rerun the archive)"
            )));
        }
        Ok(())
    }
}
