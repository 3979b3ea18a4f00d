//! The price of a purge: the downloads of its candidates in a recent window that were served
//! from the mirror (cache hits), replayed from `download_events` in one aggregate query.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::lifecycle::push_selector;
use super::{on_pool, ts, Backend, Db, PurgeSelector};
use crate::engine::error::Result;

/// The cache hits of a purge's candidates since a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct PurgeImpactRow {
    /// Hits (status below 500, not 304) of candidate files.
    pub downloads: i64,
    /// Their bytes.
    pub bytes: i64,
    /// Candidate files with at least one of those hits.
    pub files: i64,
}

impl Db {
    /// Hits of the live files of `bucket` that `sel` picks, since `since`. Memory stays
    /// bounded: the database joins the candidates to their events and returns three numbers.
    /// On PostgreSQL each candidate looks up its own events on the (file_id, occurred_at) index
    /// of the partitions since `since` (a LATERAL subquery the planner may not flatten: its
    /// estimate of a row-comparison selection can be off by a thousand times, and a hash join
    /// then reads a month of events for a few files). The cost grows with the candidates
    /// downloaded since `since`: a file's `last_downloaded_at` is at or after every hit it has
    /// (each recorded download moves it forward in the same transaction), so a candidate last
    /// downloaded before `since` has no hit in the window and is not looked up at all. The
    /// oldest files are what a purge by size takes first, and most of them are such files.
    pub async fn purge_impact(
        &self,
        bucket: &str,
        sel: &PurgeSelector,
        since: DateTime<Utc>,
    ) -> Result<PurgeImpactRow> {
        let backend = self.backend();
        let r = on_pool!(self, |p| {
            let mut qb = match backend {
                Backend::Postgres => {
                    let mut qb = QueryBuilder::new(
                        "SELECT count(*) AS downloads, CAST(coalesce(sum(e.bytes), 0) AS BIGINT) AS bytes, \
                         count(DISTINCT e.file_id) AS files FROM mirrored_files m \
                         CROSS JOIN LATERAL (SELECT e.file_id, e.bytes FROM download_events e \
                         WHERE e.file_id = m.id AND e.cache_hit AND e.status < 500 AND e.status <> 304 \
                         AND e.occurred_at >= ",
                    );
                    qb.push_bind(ts(since));
                    // OFFSET 0 keeps the subquery a subquery: one index lookup per candidate.
                    qb.push(" OFFSET 0) e WHERE m.deleted_at IS NULL AND m.bucket = ");
                    qb
                }
                Backend::Sqlite => {
                    let mut qb = QueryBuilder::new(
                        "SELECT count(*) AS downloads, CAST(coalesce(sum(e.bytes), 0) AS BIGINT) AS bytes, \
                         count(DISTINCT e.file_id) AS files FROM download_events e \
                         WHERE e.cache_hit <> 0 AND e.status < 500 AND e.status <> 304 AND e.occurred_at >= ",
                    );
                    qb.push_bind(ts(since));
                    qb.push(
                        " AND e.file_id IN (SELECT m.id FROM mirrored_files m \
                         WHERE m.deleted_at IS NULL AND m.bucket = ",
                    );
                    qb
                }
            };
            qb.push_bind(bucket);
            qb.push(" AND m.last_downloaded_at >= ")
                .push_bind(ts(since));
            push_selector(&mut qb, backend, sel);
            if backend == Backend::Sqlite {
                qb.push(")");
            }
            qb.build_query_as::<PurgeImpactRow>().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }
}
