//! Inventory reads for `drift`: live `backup_inventory` rows in UTF-8 byte order, one key
//! range at a time, so they merge with S3 listings (which are always in byte order); and the
//! paths with replication still open, read the same way.

use super::{on_pool, Db, Pool};
use crate::engine::error::Result;
use crate::engine::model::{InventoryFacts, InventoryRow};

const COLUMNS: &str =
    "path, size, etag, content_type, is_backed_up, last_modified, deleted, updated_at";
/// The columns `InventoryFacts` holds.
const COMPARED_COLUMNS: &str = "path, size, etag, is_backed_up";

/// The `WHERE` condition on `path` for one page of a key range, in byte order, and the lower
/// bound to bind as `$1` (the upper bound, when there is one, is `$2`). Only one lower bound,
/// chosen here rather than with `OR` in SQL, so that the planner can start the index scan at
/// it whatever the parameters are. PostgreSQL compares text by the database's collation unless
/// told otherwise; "C" is byte order (indexed by migrations 0004 and 0010). SQLite's default
/// BINARY already is. Also returns the `COLLATE` clause for the `ORDER BY`.
fn range_condition<'a>(
    pool: &Pool,
    prefix: &'a str,
    after: Option<&'a str>,
    upto: Option<&str>,
) -> (String, &'static str, &'a str) {
    let collate = match pool {
        Pool::Postgres(_) => " COLLATE \"C\"",
        Pool::Sqlite(_) => "",
    };
    let (lower_op, lower) = match after {
        Some(a) if a >= prefix => (">", a),
        _ => (">=", prefix),
    };
    let upper = if upto.is_some() {
        format!(" AND path{collate} <= $2")
    } else {
        String::new()
    };
    (
        format!("path{collate} {lower_op} $1{upper}"),
        collate,
        lower,
    )
}

impl Db {
    /// Up to `limit` live rows with `path >= prefix`, `path > after` and `path <= upto`, in
    /// byte order. Rows past the prefix are returned too: the caller stops at the first one
    /// that does not start with it (a prefix is one contiguous block in byte order).
    pub async fn inventory_range(
        &self,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: i64,
    ) -> Result<Vec<InventoryRow>> {
        self.inventory_range_page(COLUMNS, prefix, after, upto, limit)
            .await
    }

    /// `inventory_range` with only the columns `drift` compares.
    pub async fn inventory_facts_range(
        &self,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: i64,
    ) -> Result<Vec<InventoryFacts>> {
        self.inventory_range_page(COMPARED_COLUMNS, prefix, after, upto, limit)
            .await
    }

    async fn inventory_range_page<T>(
        &self,
        columns: &str,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: i64,
    ) -> Result<Vec<T>>
    where
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
    {
        let (condition, collate, lower) = range_condition(&self.pool, prefix, after, upto);
        let sql = format!(
            "SELECT {columns} FROM backup_inventory WHERE NOT deleted AND {condition} \
             ORDER BY path{collate} LIMIT {limit}",
            limit = limit.max(1)
        );
        let r = on_pool!(self, |p| {
            let mut q = sqlx::query_as::<_, T>(&sql).bind(lower);
            if let Some(u) = upto {
                q = q.bind(u);
            }
            q.fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// Up to `limit` distinct paths with a replication task still open (`pending` or
    /// `running`), with `path >= prefix`, `path > after` and `path <= upto`, in byte order:
    /// one page of a key range, merged with the listings like the inventory rows. Paths past
    /// the prefix are returned too (the caller stops at the first one).
    pub async fn replication_open_range(
        &self,
        prefix: &str,
        after: Option<&str>,
        upto: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>> {
        let (condition, collate, lower) = range_condition(&self.pool, prefix, after, upto);
        // The state list is a subset of the partial index `replication_tasks_open_path`'s, so
        // both databases walk that index in path order.
        let sql = format!(
            "SELECT DISTINCT path{collate} AS path FROM replication_tasks \
             WHERE state IN ('pending', 'running') AND {condition} \
             ORDER BY path{collate} LIMIT {limit}",
            limit = limit.max(1)
        );
        let r = on_pool!(self, |p| {
            let mut q = sqlx::query_scalar::<_, String>(&sql).bind(lower);
            if let Some(u) = upto {
                q = q.bind(u);
            }
            q.fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }
}
