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
    /// bounded: the database joins the candidates' ids to the events and returns three
    /// numbers. `occurred_at >= since` lets PostgreSQL skip the older monthly partitions and
    /// both databases use the (file_id, occurred_at) index per candidate.
    pub async fn purge_impact(
        &self,
        bucket: &str,
        sel: &PurgeSelector,
        since: DateTime<Utc>,
    ) -> Result<PurgeImpactRow> {
        let hit = match self.backend() {
            Backend::Postgres => "e.cache_hit",
            Backend::Sqlite => "e.cache_hit <> 0",
        };
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(format!(
                "SELECT count(*) AS downloads, CAST(coalesce(sum(e.bytes), 0) AS BIGINT) AS bytes, \
                 count(DISTINCT e.file_id) AS files FROM download_events e \
                 WHERE {hit} AND e.status < 500 AND e.status <> 304 AND e.occurred_at >= "
            ));
            qb.push_bind(ts(since));
            qb.push(
                " AND e.file_id IN (SELECT m.id FROM mirrored_files m \
                 WHERE m.deleted_at IS NULL AND m.bucket = ",
            );
            qb.push_bind(bucket);
            push_selector(&mut qb, self.backend(), sel);
            qb.push(")");
            qb.build_query_as::<PurgeImpactRow>().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }
}
