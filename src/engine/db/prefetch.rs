//! Queries of `prefetch`: catalog entries whose key has no fresh live copy in the mirror
//! bucket, by id, by the ids asked for, or by downloads in a window.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::{on_pool, ts, Db};
use crate::engine::error::Result;

/// A catalog entry to prefetch, with the live copy under its key (stale) if there is one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PrefetchRow {
    pub catalog_id: i64,
    pub key: String,
    pub url: String,
    pub size: Option<i64>,
    /// The live mirrored row under the key, if any.
    pub mirrored_id: Option<i64>,
    /// Whether that copy is fresh (then there is nothing to do).
    pub fresh: bool,
}

/// The catalog entry `o` with its live copy `m` in the bucket bound next.
const FROM: &str = "SELECT o.id AS catalog_id, o.key, o.url, o.size, m.id AS mirrored_id, \
     (m.id IS NOT NULL AND NOT m.is_stale) AS fresh \
     FROM origin_files o LEFT JOIN mirrored_files m \
     ON m.key = o.key AND m.deleted_at IS NULL AND m.bucket = ";

const NOT_FRESH: &str = " AND (m.id IS NULL OR m.is_stale)";

impl Db {
    /// The next `limit` live entries by id after `after_id` with the copies under their keys:
    /// those without a fresh copy, and the last id read (`None` at the end).
    ///
    /// Two queries, not one join: while a prefetch fills `mirrored_files` from empty, the
    /// planner still believes it empty and joined each page against every row already
    /// mirrored (10 pages of 10,000 files: 1.9 ms rising to 284 ms; BENCHMARKS.md, Catalog).
    /// A page of ids, then its keys looked up in the live (bucket, key) index, stays flat.
    pub async fn prefetch_page(
        &self,
        bucket: &str,
        after_id: i64,
        limit: i64,
    ) -> Result<(Vec<PrefetchRow>, Option<i64>)> {
        #[derive(sqlx::FromRow)]
        struct Entry {
            id: i64,
            key: String,
            url: String,
            size: Option<i64>,
        }
        let entries: Result<Vec<Entry>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_as(
                "SELECT id, key, url, size FROM origin_files \
                 WHERE deleted_at IS NULL AND key IS NOT NULL AND id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after_id)
            .bind(limit)
            .fetch_all(p)
            .await
        });
        let entries = entries.map_err(|e| self.err(e))?;
        let last = match entries.last() {
            Some(e) if entries.len() as i64 == limit => Some(e.id),
            _ => None,
        };
        let mut copies: std::collections::HashMap<String, (i64, bool)> =
            std::collections::HashMap::with_capacity(entries.len());
        for chunk in entries.chunks(500) {
            let found: Result<Vec<(String, i64, bool)>, sqlx::Error> = on_pool!(self, |p| {
                let mut qb = QueryBuilder::new(
                    "SELECT key, id, is_stale FROM mirrored_files WHERE deleted_at IS NULL AND bucket = ",
                );
                qb.push_bind(bucket.to_string()).push(" AND key IN (");
                let mut sep = qb.separated(", ");
                for e in chunk {
                    sep.push_bind(e.key.clone());
                }
                qb.push(")");
                qb.build_query_as().persistent(false).fetch_all(p).await
            });
            for (key, id, stale) in found.map_err(|e| self.err(e))? {
                copies.insert(key, (id, stale));
            }
        }
        let rows = entries
            .into_iter()
            .filter_map(|e| {
                let copy = copies.get(&e.key).copied();
                let fresh = copy.is_some_and(|(_, stale)| !stale);
                (!fresh).then(|| PrefetchRow {
                    catalog_id: e.id,
                    key: e.key,
                    url: e.url,
                    size: e.size,
                    mirrored_id: copy.map(|(id, _)| id),
                    fresh,
                })
            })
            .collect();
        Ok((rows, last))
    }

    /// How many live entries have no fresh copy in `bucket`.
    pub async fn prefetch_count(&self, bucket: &str) -> Result<i64> {
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(
                "SELECT count(*) FROM origin_files o LEFT JOIN mirrored_files m \
                 ON m.key = o.key AND m.deleted_at IS NULL AND m.bucket = ",
            );
            qb.push_bind(bucket.to_string());
            qb.push(" WHERE o.deleted_at IS NULL AND o.key IS NOT NULL");
            qb.push(NOT_FRESH);
            qb.build_query_scalar().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// The entries with these catalog ids (live or not, fresh or not), by id.
    pub async fn prefetch_ids(&self, bucket: &str, ids: &[i64]) -> Result<Vec<PrefetchRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let r = on_pool!(self, |p| {
                let mut qb = QueryBuilder::new(FROM);
                qb.push_bind(bucket.to_string());
                qb.push(" WHERE o.deleted_at IS NULL AND o.key IS NOT NULL AND o.id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") ORDER BY o.id");
                qb.build_query_as::<PrefetchRow>().fetch_all(p).await
            });
            out.extend(r.map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// The `n` live entries downloaded most since `since` (successful downloads of any of
    /// their copies), fresh or not, most downloaded first.
    pub async fn prefetch_top(
        &self,
        bucket: &str,
        since: DateTime<Utc>,
        n: i64,
    ) -> Result<Vec<PrefetchRow>> {
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(
                "SELECT o.id AS catalog_id, o.key, o.url, o.size, m.id AS mirrored_id, \
                 (m.id IS NOT NULL AND NOT m.is_stale) AS fresh \
                 FROM (SELECT f.origin_file_id AS oid, count(*) AS n FROM download_events e \
                 JOIN mirrored_files f ON f.id = e.file_id WHERE e.status < 500 AND e.status <> 304 AND e.occurred_at >= ",
            );
            qb.push_bind(ts(since));
            qb.push(
                " GROUP BY f.origin_file_id) d JOIN origin_files o ON o.id = d.oid \
                 LEFT JOIN mirrored_files m ON m.key = o.key AND m.deleted_at IS NULL AND m.bucket = ",
            );
            qb.push_bind(bucket.to_string());
            qb.push(
                " WHERE o.deleted_at IS NULL AND o.key IS NOT NULL ORDER BY d.n DESC, o.id LIMIT ",
            );
            qb.push_bind(n);
            qb.build_query_as::<PrefetchRow>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }
}
