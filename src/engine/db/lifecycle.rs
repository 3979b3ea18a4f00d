//! Queries of the cache lifecycle (validate, remirror, purge): keyset-paged scans of live
//! mirrored files, the marks validation leaves, the row update after a remirror, and the
//! candidate plans and soft deletes of a purge.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::QueryBuilder;

use super::key_scope::{push_key_scope, KeyScope};
use super::validate_checkpoint::{ValidateCheckpoint, UPSERT_CHECKPOINT};
use super::{on_pool, ts, Backend, Db};
use crate::engine::error::Result;

/// The columns of a live mirrored file that the lifecycle operations compare and act on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LifecycleRow {
    pub id: i64,
    pub key: String,
    pub size: i64,
    pub is_stale: bool,
    pub stale_reason: Option<String>,
    pub origin_file_id: i64,
    pub origin_url: String,
    pub origin_size: Option<i64>,
    pub origin_etag: Option<String>,
}

const LIFECYCLE_COLUMNS: &str =
    "SELECT m.id, m.key, m.size, m.is_stale, m.stale_reason, m.origin_file_id, \
     o.url AS origin_url, o.size AS origin_size, o.etag AS origin_etag \
     FROM mirrored_files m JOIN origin_files o ON o.id = m.origin_file_id";

/// The bucket condition of a keyset page (`m.id > $after ORDER BY m.id LIMIT n`). Without
/// statistics SQLite answers `m.bucket = ?` from the partial (bucket, key) index, which visits
/// every live row of the bucket and sorts them by id for each page: quadratic over a scan
/// (100 pages of 100,000 rows took most of a `validate --all`). The unary `+` keeps that index
/// out, so SQLite walks the rowid from `$after` and stops after the page. PostgreSQL already
/// chooses the primary key scan.
fn live_in_bucket(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => " WHERE m.deleted_at IS NULL AND m.bucket = ",
        Backend::Sqlite => " WHERE m.deleted_at IS NULL AND +m.bucket = ",
    }
}

/// Which live files a scan visits.
#[derive(Debug, Clone)]
pub enum FileScope {
    All,
    /// Downloaded at or after this time (validation's default "recent" scope).
    DownloadedSince(DateTime<Utc>),
    Ids(Vec<i64>),
    Stale,
}

fn push_scope<'a, DB: sqlx::Database>(qb: &mut QueryBuilder<'a, DB>, scope: &'a FileScope)
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match scope {
        FileScope::All => {}
        FileScope::DownloadedSince(t) => {
            qb.push(" AND m.last_downloaded_at >= ").push_bind(ts(*t));
        }
        FileScope::Ids(ids) => {
            if ids.is_empty() {
                qb.push(" AND 1 = 0");
            } else {
                qb.push(" AND m.id IN (");
                let mut sep = qb.separated(", ");
                for id in ids {
                    sep.push_bind(*id);
                }
                qb.push(")");
            }
        }
        FileScope::Stale => {
            qb.push(" AND m.is_stale");
        }
    }
}

/// How a purge picks its candidates: a condition on use or staleness, within a key scope.
#[derive(Debug, Clone)]
pub struct PurgeSelector {
    pub by: PurgeBy,
    pub keys: KeyScope,
}

/// The condition on use or staleness of a purge.
#[derive(Debug, Clone)]
pub enum PurgeBy {
    /// Every live file in the key scope.
    All,
    Stale,
    /// `coalesce(last_downloaded_at, mirrored_at)` at or before this time.
    UsedBefore(DateTime<Utc>),
    /// Least recently used first, up to and including this (last use, id) position; the walk
    /// that found it counted the `files` and `bytes` up to it.
    LruThrough {
        last_used_at: DateTime<Utc>,
        id: i64,
        files: i64,
        bytes: i64,
    },
}

const LAST_USED: &str = "coalesce(m.last_downloaded_at, m.mirrored_at)";

pub(super) fn push_selector<'a, DB: sqlx::Database>(
    qb: &mut QueryBuilder<'a, DB>,
    backend: Backend,
    sel: &'a PurgeSelector,
) where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    DateTime<Utc>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match &sel.by {
        PurgeBy::All => {}
        PurgeBy::Stale => {
            qb.push(" AND m.is_stale");
        }
        PurgeBy::UsedBefore(t) => {
            qb.push(" AND ")
                .push(LAST_USED)
                .push(" <= ")
                .push_bind(ts(*t));
        }
        PurgeBy::LruThrough {
            last_used_at, id, ..
        } => {
            // One row comparison: a range of the (bucket, last use, id) index. The boundary
            // is a value read from the rows, bound as it is (rows written by other programs
            // may carry sub-second times).
            qb.push(" AND (")
                .push(LAST_USED)
                .push(", m.id) <= (")
                .push_bind(*last_used_at)
                .push(", ")
                .push_bind(*id)
                .push(")");
        }
    }
    push_key_scope(qb, backend, &sel.keys);
}

/// One purge candidate.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PurgeRow {
    pub id: i64,
    pub key: String,
    pub size: i64,
}

/// What a purge would delete: how many, how many bytes, and the first keys in LRU order.
#[derive(Debug, Clone, Default)]
pub struct PurgePlan {
    pub candidates: i64,
    pub bytes: i64,
    pub first_keys: Vec<String>,
}

/// The row update after an object was (re-)uploaded from the origin and S3 confirmed it.
#[derive(Debug, Clone)]
pub struct Remirrored {
    /// The mirrored row to update; `None` for a catalog entry's first copy, inserted now.
    pub id: Option<i64>,
    /// Record the copy only if the row still has this version (it was not purged, marked or
    /// re-mirrored meanwhile); `None` records it whatever happened.
    pub expect_version: Option<i64>,
    /// The ETag clients are sent for this content.
    pub content_etag: Option<String>,
    pub bucket: String,
    pub key: String,
    pub origin_file_id: i64,
    pub size: i64,
    pub sha256: String,
    pub etag: Option<String>,
    pub origin_size: Option<i64>,
    pub origin_etag: Option<String>,
    pub origin_updated_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A file validation found stale or missing, with the reason recorded in `stale_reason`.
#[derive(Debug, Clone)]
pub struct StaleMark {
    pub id: i64,
    pub reason: String,
}

impl Db {
    /// How many live files of `bucket` are in `scope`.
    pub async fn count_scope(&self, bucket: &str, scope: &FileScope) -> Result<i64> {
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(
                "SELECT count(*) FROM mirrored_files m WHERE m.deleted_at IS NULL AND m.bucket = ",
            );
            qb.push_bind(bucket);
            push_scope(&mut qb, scope);
            qb.build_query_scalar().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// The next page of live files of `bucket` in `scope` with ids above `after_id`, by id.
    pub async fn lifecycle_page(
        &self,
        bucket: &str,
        scope: &FileScope,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<LifecycleRow>> {
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(LIFECYCLE_COLUMNS);
            qb.push(live_in_bucket(self.backend())).push_bind(bucket);
            qb.push(" AND m.id > ").push_bind(after_id);
            push_scope(&mut qb, scope);
            qb.push(" ORDER BY m.id LIMIT ").push_bind(limit);
            qb.build_query_as::<LifecycleRow>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// The next page of live files of `bucket` with keys after `after_key`, in UTF-8 byte order:
    /// the order of S3 listings, so the two merge.
    pub async fn lifecycle_page_by_key(
        &self,
        bucket: &str,
        after_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<LifecycleRow>> {
        // PostgreSQL compares text by the database's collation unless told otherwise; "C" is
        // byte order, and migration 0005 gives it an index. SQLite's default BINARY already is.
        let key = match self.backend() {
            Backend::Postgres => "m.key COLLATE \"C\"",
            Backend::Sqlite => "m.key",
        };
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(LIFECYCLE_COLUMNS);
            qb.push(" WHERE m.deleted_at IS NULL AND m.bucket = ")
                .push_bind(bucket);
            if let Some(after) = after_key {
                qb.push(format!(" AND {key} > ")).push_bind(after);
            }
            qb.push(format!(" ORDER BY {key} LIMIT ")).push_bind(limit);
            qb.build_query_as::<LifecycleRow>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// Which of `ids` are not live files of `bucket` (for "unknown id" errors).
    pub async fn unknown_ids(&self, bucket: &str, ids: &[i64]) -> Result<Vec<i64>> {
        let mut missing = Vec::new();
        for chunk in ids.chunks(500) {
            let found: Result<Vec<i64>, sqlx::Error> = on_pool!(self, |p| {
                let mut qb = QueryBuilder::new(
                    "SELECT id FROM mirrored_files WHERE deleted_at IS NULL AND bucket = ",
                );
                qb.push_bind(bucket).push(" AND id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                qb.build_query_scalar().fetch_all(p).await
            });
            let found: std::collections::HashSet<i64> =
                found.map_err(|e| self.err(e))?.into_iter().collect();
            missing.extend(chunk.iter().copied().filter(|id| !found.contains(id)));
        }
        Ok(missing)
    }

    /// Records one batch of validation results in one transaction: `stamped` files only get
    /// `last_validated_at` (their result did not change); fresh files that were stale are
    /// cleared; `marked` files get their new stale reason.
    pub async fn record_validation(
        &self,
        stamped: &[i64],
        cleared: &[i64],
        marked: &[StaleMark],
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.record_validation_batch(stamped, cleared, marked, None, at)
            .await
    }

    /// `record_validation`, and in the same transaction the walk's `checkpoint`: a checkpoint
    /// never claims results that are not in the rows. Unchanged rows get one statement per
    /// batch that sets only `last_validated_at`, so triggers on `is_stale` (the storage
    /// counters, the version that replicas watch) fire only for rows whose result changed.
    pub async fn record_validation_batch(
        &self,
        stamped: &[i64],
        cleared: &[i64],
        marked: &[StaleMark],
        checkpoint: Option<&ValidateCheckpoint>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let at = ts(at);
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            // A batch is at most 500 files: one `IN` list each, within SQLite's bind limit.
            for (ids, clear) in [(stamped, false), (cleared, true)] {
                for chunk in ids.chunks(500) {
                    let mut qb =
                        QueryBuilder::new("UPDATE mirrored_files SET last_validated_at = ");
                    qb.push_bind(at);
                    if clear {
                        qb.push(", is_stale = FALSE, stale_reason = NULL");
                    }
                    qb.push(" WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    qb.push(")");
                    qb.build().persistent(false).execute(&mut *tx).await?;
                }
            }
            for m in marked {
                sqlx::query(
                    "UPDATE mirrored_files SET last_validated_at = $1, is_stale = TRUE, \
                     stale_reason = $2 WHERE id = $3",
                )
                .bind(at)
                .bind(&m.reason)
                .bind(m.id)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(c) = checkpoint {
                sqlx::query(UPSERT_CHECKPOINT)
                    .bind(&c.bucket)
                    .bind(c.operation_id)
                    .bind(&c.after_key)
                    .bind(Json(&c.counts))
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        });
        r.map_err(|e| self.err(e))
    }

    /// Points the row at the new object (inserting the row of a first copy) and the origin row
    /// at what the origin served, in one transaction; returns the mirrored row's id, or `None`
    /// when the row changed since `expect_version` (then nothing is written). Called only after
    /// S3 confirmed the upload.
    pub async fn record_remirror(&self, r: &Remirrored) -> Result<Option<i64>> {
        let res: Result<Option<i64>, sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let id = match r.id {
                Some(id) => {
                    let n = sqlx::query(
                        "UPDATE mirrored_files SET size = $1, sha256 = $2, etag = $3, mirrored_at = $4, \
                         last_validated_at = $4, is_stale = FALSE, stale_reason = NULL, deleted_at = NULL, \
                         content_etag = $6 WHERE id = $5 AND ($7 IS NULL OR version = $7)",
                    )
                    .bind(r.size)
                    .bind(&r.sha256)
                    .bind(&r.etag)
                    .bind(ts(r.at))
                    .bind(id)
                    .bind(&r.content_etag)
                    .bind(r.expect_version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 0 {
                        return Ok(None);
                    }
                    id
                }
                // Another process may have stored the same key first: the newer copy wins.
                None => {
                    sqlx::query_scalar(
                        "INSERT INTO mirrored_files (origin_file_id, bucket, key, size, sha256, etag, \
                         mirrored_at, last_validated_at, is_stale, content_etag) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, FALSE, $8) \
                         ON CONFLICT (bucket, key) WHERE deleted_at IS NULL DO UPDATE SET \
                         origin_file_id = excluded.origin_file_id, size = excluded.size, sha256 = excluded.sha256, \
                         etag = excluded.etag, mirrored_at = excluded.mirrored_at, \
                         last_validated_at = excluded.last_validated_at, is_stale = FALSE, stale_reason = NULL, \
                         content_etag = excluded.content_etag \
                         RETURNING id",
                    )
                    .bind(r.origin_file_id)
                    .bind(&r.bucket)
                    .bind(&r.key)
                    .bind(r.size)
                    .bind(&r.sha256)
                    .bind(&r.etag)
                    .bind(ts(r.at))
                    .bind(&r.content_etag)
                    .fetch_one(&mut *tx)
                    .await?
                }
            };
            sqlx::query(
                "UPDATE origin_files SET size = $1, etag = $2, updated_at = $3 WHERE id = $4",
            )
            .bind(r.origin_size)
            .bind(&r.origin_etag)
            .bind(ts(r.origin_updated_at))
            .bind(r.origin_file_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(id))
        });
        res.map_err(|e| self.err(e))
    }

    /// Whether `bucket` has a live row for `key`.
    pub async fn has_live_key(&self, bucket: &str, key: &str) -> Result<bool> {
        let r: Result<Option<i64>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_scalar(
            "SELECT id FROM mirrored_files WHERE bucket = $1 AND key = $2 AND deleted_at IS NULL"
        )
        .bind(bucket)
        .bind(key)
        .fetch_optional(p)
        .await
        });
        r.map(|id| id.is_some()).map_err(|e| self.err(e))
    }

    /// Bytes of the live files of `bucket` in `keys`: the trigger-kept total when the whole
    /// bucket is asked for and it is the only bucket with live files, else a sum over the
    /// bucket's key range.
    pub async fn live_bytes(&self, bucket: &str, keys: &KeyScope) -> Result<i64> {
        if keys.is_all() {
            let (lo, hi): (Option<String>, Option<String>) = on_pool!(self, |p| {
                sqlx::query_as(
                    "SELECT min(bucket), max(bucket) FROM mirrored_files WHERE deleted_at IS NULL",
                )
                .fetch_one(p)
                .await
            })
            .map_err(|e| self.err(e))?;
            match (lo.as_deref(), hi.as_deref()) {
                (None, None) => return Ok(0),
                (Some(l), Some(h)) if l == bucket && h == bucket => {
                    return Ok(self.storage_totals().await?.bytes);
                }
                _ => {}
            }
        }
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(
                "SELECT CAST(coalesce(sum(m.size), 0) AS BIGINT) FROM mirrored_files m \
                 WHERE m.deleted_at IS NULL AND m.bucket = ",
            );
            qb.push_bind(bucket);
            push_key_scope(&mut qb, self.backend(), keys);
            qb.build_query_scalar().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// The last (last use, id) position, in least-recently-used order among the live files of
    /// `bucket` in `keys`, that has to go so that at least `excess` bytes are freed, with the
    /// files and bytes up to it; `None` when nothing has to go. Walks the (bucket, last use,
    /// id) index a page at a time and stops there: the cost grows with what goes, not with the
    /// bucket.
    pub async fn lru_boundary(
        &self,
        bucket: &str,
        keys: &KeyScope,
        excess: i64,
    ) -> Result<Option<PurgeBy>> {
        if excess <= 0 {
            return Ok(None);
        }
        // Small pages first (a typical purge frees a few files' worth), growing for big ones.
        let mut page: i64 = 256;
        let (mut freed, mut files) = (0i64, 0i64);
        let mut after: Option<(DateTime<Utc>, i64)> = None;
        let through = |after: Option<(DateTime<Utc>, i64)>, files, bytes| {
            after.map(|(last_used_at, id)| PurgeBy::LruThrough {
                last_used_at,
                id,
                files,
                bytes,
            })
        };
        loop {
            let r: Result<Vec<(DateTime<Utc>, i64, i64)>, sqlx::Error> = on_pool!(self, |p| {
                let mut qb = QueryBuilder::new(format!(
                    "SELECT {LAST_USED} AS last_used_at, m.id, m.size FROM mirrored_files m \
                     WHERE m.deleted_at IS NULL AND m.bucket = "
                ));
                qb.push_bind(bucket);
                push_key_scope(&mut qb, self.backend(), keys);
                if let Some((t, id)) = after {
                    qb.push(" AND (")
                        .push(LAST_USED)
                        .push(", m.id) > (")
                        .push_bind(t)
                        .push(", ")
                        .push_bind(id)
                        .push(")");
                }
                qb.push(" ORDER BY ")
                    .push(LAST_USED)
                    .push(", m.id LIMIT ")
                    .push_bind(page);
                qb.build_query_as().fetch_all(p).await
            });
            let rows = r.map_err(|e| self.err(e))?;
            let full = rows.len() as i64 == page;
            page = (page * 4).min(16_384);
            for (t, id, size) in rows {
                freed = freed.saturating_add(size);
                files += 1;
                after = Some((t, id));
                if freed >= excess {
                    return Ok(through(after, files, freed));
                }
            }
            if !full {
                // Everything in scope goes and still does not free `excess`.
                return Ok(through(after, files, freed));
            }
        }
    }

    /// Counts and sizes the candidates of a purge, with the first `sample` keys in LRU order.
    pub async fn purge_plan(
        &self,
        bucket: &str,
        sel: &PurgeSelector,
        sample: i64,
    ) -> Result<PurgePlan> {
        let r: Result<PurgePlan, sqlx::Error> = on_pool!(self, |p| {
            // The LRU walk counted its files; a count of them would be planned from an estimate
            // a thousand times too high (a row comparison), in parallel workers that take
            // longer to start than the count takes.
            let (candidates, bytes): (i64, i64) = match sel.by {
                PurgeBy::LruThrough { files, bytes, .. } => (files, bytes),
                _ => {
                    let mut qb = QueryBuilder::new(
                        "SELECT count(*), CAST(coalesce(sum(m.size), 0) AS BIGINT) \
                         FROM mirrored_files m WHERE m.deleted_at IS NULL AND m.bucket = ",
                    );
                    qb.push_bind(bucket);
                    push_selector(&mut qb, self.backend(), sel);
                    qb.build_query_as().fetch_one(p).await?
                }
            };
            let mut qb = QueryBuilder::new(
                "SELECT m.key FROM mirrored_files m WHERE m.deleted_at IS NULL AND m.bucket = ",
            );
            qb.push_bind(bucket);
            push_selector(&mut qb, self.backend(), sel);
            qb.push(" ORDER BY ")
                .push(LAST_USED)
                .push(", m.id LIMIT ")
                .push_bind(sample);
            let first_keys: Vec<String> = qb.build_query_scalar().fetch_all(p).await?;
            Ok(PurgePlan {
                candidates,
                bytes,
                first_keys,
            })
        });
        r.map_err(|e| self.err(e))
    }

    /// The next page of purge candidates with ids above `after_id`, by id.
    pub async fn purge_page(
        &self,
        bucket: &str,
        sel: &PurgeSelector,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<PurgeRow>> {
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new("SELECT m.id, m.key, m.size FROM mirrored_files m");
            qb.push(live_in_bucket(self.backend())).push_bind(bucket);
            qb.push(" AND m.id > ").push_bind(after_id);
            push_selector(&mut qb, self.backend(), sel);
            qb.push(" ORDER BY m.id LIMIT ").push_bind(limit);
            qb.build_query_as::<PurgeRow>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// Soft-deletes rows whose objects are gone; returns how many rows it marked.
    pub async fn soft_delete_files(&self, ids: &[i64], at: DateTime<Utc>) -> Result<u64> {
        let at = ts(at);
        let r: Result<u64, sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut n = 0;
            for chunk in ids.chunks(500) {
                let mut qb = QueryBuilder::new("UPDATE mirrored_files SET deleted_at = ");
                qb.push_bind(at)
                    .push(" WHERE deleted_at IS NULL AND id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                n += qb
                    .build()
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        });
        r.map_err(|e| self.err(e))
    }
}
