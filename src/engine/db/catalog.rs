//! The catalog (`origin_files`): staging an import on one connection, merging it in one
//! transaction (added, changed, marked stale, pruned), single upserts, listing and lookups.
//!
//! An import is written to a temporary table first, batch by batch, so memory does not grow
//! with the file; the real tables change only in the merge's one transaction, so a file that
//! turns out bad half-way (or a refused prune, or a dry run) leaves the database as it was.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::{on_pool, ts, BeginWrite, Db, Pool};
use crate::engine::error::Result;

/// One catalog entry, validated: what the origin says a file is and where its copy goes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CatalogEntry {
    pub source: String,
    pub remote_id: String,
    pub url: String,
    pub file_name: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The object key of the mirrored copy.
    pub key: String,
}

/// One row of the catalog with the state of its mirrored copy.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct CatalogRow {
    pub id: i64,
    pub source: String,
    pub remote_id: String,
    pub file_name: String,
    pub url: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub key: Option<String>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The live mirrored copy, if any.
    pub mirrored_id: Option<i64>,
    pub mirrored_stale: Option<bool>,
}

/// What a merge did (or, in a dry run or a refusal, would do).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CatalogMerge {
    /// Distinct entries staged.
    pub entries: u64,
    pub added: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub marked_stale: u64,
    pub pruned: u64,
    /// Pruned entries whose mirrored copy stays in the bucket (purge removes those).
    pub pruned_mirrored: u64,
    /// The first pruned entries, `source/remote_id`, for the preview.
    pub pruned_sample: Vec<String>,
}

/// How a staged import is merged.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Soft-delete entries of the imported sources that the import does not list.
    pub prune: bool,
    /// Refuse (roll back) a prune of more entries than this.
    pub max_prune: u64,
    /// Roll back at the end: report only.
    pub dry_run: bool,
    pub at: DateTime<Utc>,
}

/// The outcome of a merge: applied, rolled back as asked (dry run), or refused over the cap.
#[derive(Debug)]
pub enum MergeOutcome {
    Applied(CatalogMerge),
    DryRun(CatalogMerge),
    OverPruneCap(CatalogMerge),
}

/// A transaction that will write: SQLite's must take the write lock at `BEGIN` (a deferred one
/// that reads first fails with "database is locked" when another writer got there between).
enum StageConn {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

/// An import being staged on its own connection.
pub struct CatalogStage {
    db: Db,
    conn: StageConn,
}

macro_rules! on_conn {
    ($stage:expr, |$c:ident| $body:expr) => {
        match &mut $stage.conn {
            StageConn::Postgres($c) => async { $body }.await,
            StageConn::Sqlite($c) => async { $body }.await,
        }
    };
}

const STAGE_COLUMNS: &str = "source, remote_id, url, file_name, size, etag, updated_at, key, line";

/// An entry of the stage `s` differs from the catalog row `o` it matches (an absent size or
/// ETag keeps the stored one).
fn changed_cond(o: &str) -> String {
    format!(
        "({o}.deleted_at IS NOT NULL OR {o}.url <> s.url OR {o}.file_name <> s.file_name \
         OR {o}.key IS DISTINCT FROM s.key \
         OR (s.size IS NOT NULL AND {o}.size IS DISTINCT FROM s.size) \
         OR (s.etag IS NOT NULL AND {o}.etag IS DISTINCT FROM s.etag))"
    )
}

const MATCH: &str = "s.source = o.source AND s.remote_id = o.remote_id";

/// Live entries of the imported sources that the import does not list.
const PRUNABLE: &str = "o.deleted_at IS NULL \
     AND o.source IN (SELECT DISTINCT source FROM catalog_stage) \
     AND NOT EXISTS (SELECT 1 FROM catalog_stage s WHERE s.source = o.source AND s.remote_id = o.remote_id)";

/// An entry with the live copy under its key in the bucket bound next.
const ROW_SQL: &str = "SELECT o.id, o.source, o.remote_id, o.file_name, o.url, o.size, o.etag, \
     o.key, o.updated_at, o.deleted_at, m.id AS mirrored_id, m.is_stale AS mirrored_stale \
     FROM origin_files o LEFT JOIN mirrored_files m \
     ON m.key = o.key AND m.deleted_at IS NULL AND m.bucket = ";

impl Db {
    /// Opens a stage for an import: a temporary table on a connection of its own.
    pub async fn catalog_stage(&self) -> Result<CatalogStage> {
        // The connection is closed, not pooled, when the stage is dropped: an import that fails
        // half-way leaves no temporary table behind on a pooled connection.
        let conn = match &self.pool {
            Pool::Postgres(p) => {
                let mut c = p.acquire().await.map_err(|e| self.err(e))?;
                c.close_on_drop();
                StageConn::Postgres(c)
            }
            Pool::Sqlite(p) => {
                let mut c = p.acquire().await.map_err(|e| self.err(e))?;
                c.close_on_drop();
                StageConn::Sqlite(c)
            }
        };
        let mut stage = CatalogStage {
            db: self.clone(),
            conn,
        };
        let r: Result<(), sqlx::Error> = on_conn!(stage, |c| {
            sqlx::query("DROP TABLE IF EXISTS catalog_stage")
                .execute(&mut **c)
                .await?;
            Ok(())
        });
        r.map_err(|e| self.err(e))?;
        let create = match stage.conn {
            StageConn::Postgres(_) => {
                "CREATE TEMP TABLE catalog_stage (source TEXT NOT NULL, remote_id TEXT NOT NULL, \
                 url TEXT NOT NULL, file_name TEXT NOT NULL, size BIGINT, etag TEXT, \
                 updated_at TIMESTAMPTZ, key TEXT NOT NULL, line BIGINT NOT NULL, \
                 PRIMARY KEY (source, remote_id))"
            }
            StageConn::Sqlite(_) => {
                "CREATE TEMP TABLE catalog_stage (source TEXT NOT NULL, remote_id TEXT NOT NULL, \
                 url TEXT NOT NULL, file_name TEXT NOT NULL, size INTEGER, etag TEXT, \
                 updated_at TEXT, key TEXT NOT NULL, line INTEGER NOT NULL, \
                 PRIMARY KEY (source, remote_id))"
            }
        };
        let r: Result<(), sqlx::Error> = on_conn!(stage, |c| {
            sqlx::query(create).execute(&mut **c).await?;
            Ok(())
        });
        r.map_err(|e| self.err(e))?;
        Ok(stage)
    }

    /// Registers one entry the origin just served (pull-through) and returns its id: inserted,
    /// or updated when it exists (a new key has no mirrored copy to mark stale).
    pub async fn catalog_register(&self, e: &CatalogEntry, at: DateTime<Utc>) -> Result<i64> {
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_scalar(
                "INSERT INTO origin_files (source, remote_id, file_name, url, size, etag, updated_at, key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (source, remote_id) DO UPDATE SET \
                 file_name = excluded.file_name, url = excluded.url, size = excluded.size, \
                 etag = excluded.etag, updated_at = excluded.updated_at, key = excluded.key, \
                 deleted_at = NULL RETURNING id",
            )
            .bind(&e.source)
            .bind(&e.remote_id)
            .bind(&e.file_name)
            .bind(&e.url)
            .bind(e.size)
            .bind(&e.etag)
            .bind(ts(e.updated_at.unwrap_or(at)))
            .bind(&e.key)
            .fetch_one(p)
            .await
        });
        r.map_err(|e| self.err(e))
    }

    /// A page of the catalog by id; `unmirrored` keeps entries without a fresh live copy.
    pub async fn catalog_page(
        &self,
        bucket: &str,
        after_id: i64,
        limit: i64,
        unmirrored: bool,
        filter: Option<&str>,
    ) -> Result<Vec<CatalogRow>> {
        let pattern = filter
            .filter(|f| !f.is_empty())
            .map(super::key_filter::contains_pattern);
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(ROW_SQL);
            qb.push_bind(bucket.to_string());
            qb.push(" WHERE o.deleted_at IS NULL AND o.id > ")
                .push_bind(after_id);
            if unmirrored {
                qb.push(" AND (m.id IS NULL OR m.is_stale)");
            }
            if let Some(pat) = &pattern {
                qb.push(" AND lower(coalesce(o.key, o.url)) LIKE ")
                    .push_bind(pat.clone())
                    .push(" ESCAPE '\\'");
            }
            qb.push(" ORDER BY o.id LIMIT ").push_bind(limit);
            qb.build_query_as::<CatalogRow>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// Live catalog entries, and how many of them have no fresh live copy.
    pub async fn catalog_counts(&self, bucket: &str) -> Result<(i64, i64)> {
        let r: Result<(i64, i64), sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE m.id IS NULL OR m.is_stale) \
                 FROM origin_files o LEFT JOIN mirrored_files m \
                 ON m.key = o.key AND m.deleted_at IS NULL AND m.bucket = $1 \
                 WHERE o.deleted_at IS NULL",
            )
            .bind(bucket)
            .fetch_one(p)
            .await
        });
        r.map_err(|e| self.err(e))
    }

    /// One catalog entry by id, or by `source/remote_id`.
    pub async fn catalog_get(&self, bucket: &str, id_or_name: &str) -> Result<Option<CatalogRow>> {
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(ROW_SQL);
            qb.push_bind(bucket.to_string());
            match id_or_name.trim().parse::<i64>() {
                Ok(id) => {
                    qb.push(" WHERE o.id = ").push_bind(id);
                }
                Err(_) => {
                    let (source, remote_id) =
                        id_or_name.split_once('/').unwrap_or(("http", id_or_name));
                    qb.push(" WHERE o.source = ")
                        .push_bind(source.to_string())
                        .push(" AND o.remote_id = ")
                        .push_bind(remote_id.to_string());
                }
            }
            qb.push(" LIMIT 1");
            qb.build_query_as::<CatalogRow>().fetch_optional(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// The live catalog entry whose copy lives under `key` (the lowest id if several do).
    pub async fn catalog_by_key(&self, bucket: &str, key: &str) -> Result<Option<CatalogRow>> {
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(ROW_SQL);
            qb.push_bind(bucket.to_string());
            qb.push(" WHERE o.deleted_at IS NULL AND o.key = ")
                .push_bind(key.to_string())
                .push(" ORDER BY o.id LIMIT 1");
            qb.build_query_as::<CatalogRow>().fetch_optional(p).await
        });
        r.map_err(|e| self.err(e))
    }
}

impl CatalogStage {
    /// Stages one batch, `(line, entry)` in file order; a later line for the same
    /// `(source, remote_id)` replaces an earlier one (the caller dedupes within a batch).
    pub async fn insert(&mut self, batch: &[(u64, CatalogEntry)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let upsert = " ON CONFLICT (source, remote_id) DO UPDATE SET url = excluded.url, \
             file_name = excluded.file_name, size = excluded.size, etag = excluded.etag, \
             updated_at = excluded.updated_at, key = excluded.key, line = excluded.line";
        let r: Result<(), sqlx::Error> = match &mut self.conn {
            StageConn::Postgres(c) => {
                // One statement of arrays per batch: far fewer binds and round trips than VALUES.
                let col = |f: fn(&CatalogEntry) -> String| -> Vec<String> {
                    batch.iter().map(|(_, e)| f(e)).collect()
                };
                let sql = format!(
                    "INSERT INTO catalog_stage ({STAGE_COLUMNS}) SELECT * FROM UNNEST(\
                     $1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
                     $7::timestamptz[], $8::text[], $9::int8[]){upsert}"
                );
                sqlx::query(&sql)
                    .bind(col(|e| e.source.clone()))
                    .bind(col(|e| e.remote_id.clone()))
                    .bind(col(|e| e.url.clone()))
                    .bind(col(|e| e.file_name.clone()))
                    .bind(batch.iter().map(|(_, e)| e.size).collect::<Vec<_>>())
                    .bind(
                        batch
                            .iter()
                            .map(|(_, e)| e.etag.clone())
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        batch
                            .iter()
                            .map(|(_, e)| e.updated_at.map(ts))
                            .collect::<Vec<_>>(),
                    )
                    .bind(col(|e| e.key.clone()))
                    .bind(batch.iter().map(|(l, _)| *l as i64).collect::<Vec<_>>())
                    .persistent(false)
                    .execute(&mut **c)
                    .await
                    .map(|_| ())
            }
            StageConn::Sqlite(c) => {
                let mut res = Ok(());
                // 9 binds a row: 1,000 rows stay under SQLite's 32,766 variables.
                for chunk in batch.chunks(1000) {
                    let mut qb = QueryBuilder::<Sqlite>::new(format!(
                        "INSERT INTO catalog_stage ({STAGE_COLUMNS}) "
                    ));
                    qb.push_values(chunk, |mut b, (line, e)| {
                        b.push_bind(e.source.clone())
                            .push_bind(e.remote_id.clone())
                            .push_bind(e.url.clone())
                            .push_bind(e.file_name.clone())
                            .push_bind(e.size)
                            .push_bind(e.etag.clone())
                            .push_bind(e.updated_at.map(ts))
                            .push_bind(e.key.clone())
                            .push_bind(*line as i64);
                    });
                    qb.push(upsert);
                    if let Err(e) = qb.build().persistent(false).execute(&mut **c).await {
                        res = Err(e);
                        break;
                    }
                }
                res
            }
        };
        r.map_err(|e| db.err(e))
    }

    /// Merges the stage into the catalog in one transaction: counts, marks the mirrored copies
    /// of changed entries stale (`origin_changed`: a new size that differs from the copy's, or
    /// a new ETag), updates changed entries, inserts new ones, and prunes when asked. Rolls
    /// back for a dry run and for a prune over `max_prune`.
    pub async fn merge(mut self, o: &MergeOptions) -> Result<MergeOutcome> {
        let db = self.db.clone();
        let at = ts(o.at);
        let r: Result<MergeOutcome, sqlx::Error> = on_conn!(self, |c| {
            let mut tx = c.begin_write().await?;
            let staged: i64 = sqlx::query_scalar("SELECT count(*) FROM catalog_stage")
                .fetch_one(&mut *tx)
                .await?;
            let added: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM catalog_stage s WHERE NOT EXISTS \
                 (SELECT 1 FROM origin_files o WHERE {MATCH})"
            ))
            .fetch_one(&mut *tx)
            .await?;
            let changed: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM catalog_stage s JOIN origin_files o ON {MATCH} WHERE {}",
                changed_cond("o")
            ))
            .fetch_one(&mut *tx)
            .await?;
            let marked_stale = sqlx::query(&format!(
                "UPDATE mirrored_files SET is_stale = TRUE, stale_reason = 'origin_changed' \
                 WHERE deleted_at IS NULL AND NOT is_stale AND EXISTS (SELECT 1 FROM origin_files o \
                 JOIN catalog_stage s ON {MATCH} WHERE o.id = mirrored_files.origin_file_id AND \
                 ((s.size IS NOT NULL AND s.size <> mirrored_files.size) \
                  OR (s.etag IS NOT NULL AND o.etag IS NOT NULL AND s.etag <> o.etag)))"
            ))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed > 0 {
                sqlx::query(&format!(
                    "UPDATE origin_files SET url = s.url, file_name = s.file_name, \
                     size = coalesce(s.size, origin_files.size), \
                     etag = coalesce(s.etag, origin_files.etag), key = s.key, \
                     updated_at = coalesce(s.updated_at, $1), deleted_at = NULL \
                     FROM catalog_stage s WHERE s.source = origin_files.source \
                     AND s.remote_id = origin_files.remote_id AND {}",
                    changed_cond("origin_files")
                ))
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            if added > 0 {
                sqlx::query(&format!(
                    "INSERT INTO origin_files (source, remote_id, file_name, url, size, etag, updated_at, key) \
                     SELECT s.source, s.remote_id, s.file_name, s.url, s.size, s.etag, \
                     coalesce(s.updated_at, $1), s.key FROM catalog_stage s WHERE NOT EXISTS \
                     (SELECT 1 FROM origin_files o WHERE {MATCH}) ORDER BY s.line"
                ))
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            let mut merge = CatalogMerge {
                entries: staged as u64,
                added: added as u64,
                changed: changed as u64,
                unchanged: (staged - added - changed).max(0) as u64,
                marked_stale,
                ..Default::default()
            };
            if o.prune {
                let (pruned, pruned_mirrored): (i64, i64) = sqlx::query_as(&format!(
                    "SELECT count(*), count(*) FILTER (WHERE EXISTS (SELECT 1 FROM mirrored_files m \
                     WHERE m.origin_file_id = o.id AND m.deleted_at IS NULL)) \
                     FROM origin_files o WHERE {PRUNABLE}"
                ))
                .fetch_one(&mut *tx)
                .await?;
                merge.pruned = pruned as u64;
                merge.pruned_mirrored = pruned_mirrored as u64;
                merge.pruned_sample = sqlx::query_scalar(&format!(
                    "SELECT o.source || '/' || o.remote_id FROM origin_files o WHERE {PRUNABLE} \
                     ORDER BY o.id LIMIT 10"
                ))
                .fetch_all(&mut *tx)
                .await?;
                // A dry run previews a prune of any size; only a real one is refused.
                if !o.dry_run && merge.pruned > o.max_prune {
                    tx.rollback().await?;
                    return Ok(MergeOutcome::OverPruneCap(merge));
                }
                if pruned > 0 {
                    sqlx::query(&format!(
                        "UPDATE origin_files SET deleted_at = $1 WHERE id IN \
                         (SELECT o.id FROM origin_files o WHERE {PRUNABLE})"
                    ))
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            if o.dry_run {
                tx.rollback().await?;
                return Ok(MergeOutcome::DryRun(merge));
            }
            tx.commit().await?;
            Ok(MergeOutcome::Applied(merge))
        });
        let out = r.map_err(|e| db.err(e))?;
        let _: Result<(), sqlx::Error> = on_conn!(self, |c| {
            sqlx::query("DROP TABLE IF EXISTS catalog_stage")
                .execute(&mut **c)
                .await?;
            Ok(())
        });
        Ok(out)
    }
}
