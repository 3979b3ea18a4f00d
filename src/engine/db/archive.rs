//! The SQL of partition archiving: which months hold events, streaming a month's events out,
//! dropping an archived month together with its `archived_partitions` record, and loading
//! archived rows back.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::QueryBuilder;
use tokio::sync::mpsc;

use super::{month_bounds, on_pool, partition_name, ts, Backend, Db, Month, Pool};
use crate::engine::error::{Error, Result};

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
    /// On-disk size of the partition (PostgreSQL); SQLite keeps no per-month size.
    pub bytes: Option<i64>,
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
    pub async fn live_months(&self) -> Result<Vec<LiveMonth>> {
        match &self.pool {
            Pool::Postgres(p) => {
                let parts: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT c.relname::text, pg_total_relation_size(c.oid) \
                     FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                     WHERE i.inhparent = 'download_events'::regclass",
                )
                .fetch_all(p)
                .await
                .map_err(|e| self.err(e))?;
                let mut out = Vec::new();
                for (name, bytes) in parts {
                    // Only names that parse are counted; the SQL is rebuilt from the parsed
                    // month so no catalog text is ever spliced in.
                    let Some(month) = Month::from_partition_name(&name) else {
                        continue;
                    };
                    let rows = self.month_rows(month).await?;
                    if rows > 0 {
                        out.push(LiveMonth {
                            month,
                            rows,
                            bytes: Some(bytes),
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
                            bytes: None,
                        })
                    })
                    .collect())
            }
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
    /// sent. One statement, so the rows are one consistent snapshot; the channel's bound keeps
    /// memory to a few batches whatever the month's size.
    pub async fn export_month(
        &self,
        month: Month,
        batch_rows: usize,
        tx: mpsc::Sender<Vec<EventRow>>,
    ) -> Result<u64> {
        let (start, end) = month_bounds(month);
        // PostgreSQL prunes to the one partition and scans it in storage order; SQLite walks
        // the occurred_at index.
        let sql = match self.backend() {
            Backend::Postgres => {
                format!("SELECT {EVENT_COLUMNS} FROM download_events WHERE occurred_at >= $1 AND occurred_at < $2")
            }
            Backend::Sqlite => format!(
                "SELECT {EVENT_COLUMNS} FROM download_events WHERE occurred_at >= $1 AND occurred_at < $2 \
                 ORDER BY occurred_at, id"
            ),
        };
        let batch_rows = batch_rows.max(1);
        let r: Result<u64, sqlx::Error> = on_pool!(self, |p| {
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
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_rows));
                    if tx.send(full).await.is_err() {
                        // The writer stopped; its error is what the caller reports.
                        return Ok(sent);
                    }
                }
            }
            if !batch.is_empty() {
                sent += batch.len() as u64;
                let _ = tx.send(batch).await;
            }
            Ok(sent)
        });
        r.map_err(|e| self.err(e))
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
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    match self.pg_drop_month(p, &name, expected_rows, record).await {
                        Ok(None) => break,
                        Ok(Some(found)) => return Err(mismatch(found)),
                        // Writers held the parent past the lock timeout (or a writer to this
                        // very month deadlocked with us): nothing changed; wait and retry.
                        Err(e) if lock_contention(&e) && attempt < DROP_ATTEMPTS => {
                            tracing::info!(
                                "{name}: the events table is busy ({e}); drop attempt {attempt} of {DROP_ATTEMPTS}"
                            );
                            tokio::time::sleep(DROP_BACKOFF * attempt).await;
                        }
                        Err(e) if lock_contention(&e) => {
                            return Err(Error::runtime(format!(
                                "{name}: writers kept download_events busy through {DROP_ATTEMPTS} attempts; \
                                 nothing dropped (rerun the archive)"
                            )))
                        }
                        Err(e) => return Err(self.err(e)),
                    }
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
        self.ensure_partitions(month, month).await?;
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

/// How long a DDL step of the drop waits for a lock before it gives up and retries, and how
/// often it tries: writers (`serve`'s event flushes) wait at most this long behind it.
const DROP_LOCK_TIMEOUT: &str = "2s";
const DROP_ATTEMPTS: u32 = 8;
const DROP_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// A lock timeout (55P03) or a deadlock (40P01): the transaction changed nothing.
fn lock_contention(e: &sqlx::Error) -> bool {
    matches!(
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        Some("55P03") | Some("40P01")
    )
}

impl Db {
    /// One attempt at dropping an archived month's partition on PostgreSQL, in one
    /// transaction: the count runs under a lock on that partition only (writers of the
    /// current month, in other partitions, go on), then the parent is locked just for the
    /// catalog-only DETACH and DROP. Every lock waits at most `DROP_LOCK_TIMEOUT`.
    /// `Ok(Some(n))`: the partition holds `n` rows, not the archived count; nothing dropped.
    async fn pg_drop_month(
        &self,
        p: &sqlx::PgPool,
        name: &str,
        expected_rows: u64,
        record: &ArchiveRecord,
    ) -> std::result::Result<Option<u64>, sqlx::Error> {
        let mut tx = p.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        // The name is built from integers. SHARE keeps rows from arriving in this month
        // between the count and the drop, and lets reads go on.
        sqlx::query(&format!("LOCK TABLE {name} IN SHARE MODE"))
            .execute(&mut *tx)
            .await?;
        let found: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {name}"))
            .fetch_one(&mut *tx)
            .await?;
        if found as u64 != expected_rows {
            return Ok(Some(found as u64));
        }
        sqlx::query(&format!(
            "ALTER TABLE download_events DETACH PARTITION {name}"
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DROP TABLE {name}"))
            .execute(&mut *tx)
            .await?;
        upsert_record!(record).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(None)
    }
}
