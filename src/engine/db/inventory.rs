//! `backup_inventory`: what the database believes the main and backup buckets hold.

use sqlx::QueryBuilder;

use super::{on_pool, ts, Db};
use crate::engine::error::Result;
use crate::engine::model::InventoryRow;

impl Db {
    /// Inserts or replaces inventory rows by path.
    pub async fn upsert_inventory(&self, rows: &[InventoryRow]) -> Result<()> {
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            for chunk in rows.chunks(1000) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO backup_inventory (path, size, etag, content_type, is_backed_up, last_modified, \
                     deleted, updated_at) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.path)
                        .push_bind(r.size)
                        .push_bind(&r.etag)
                        .push_bind(&r.content_type)
                        .push_bind(r.is_backed_up)
                        .push_bind(r.last_modified.map(ts))
                        .push_bind(r.deleted)
                        .push_bind(ts(r.updated_at));
                });
                qb.push(
                    " ON CONFLICT (path) DO UPDATE SET size = excluded.size, etag = excluded.etag, \
                     content_type = excluded.content_type, is_backed_up = excluded.is_backed_up, \
                     last_modified = excluded.last_modified, deleted = excluded.deleted, \
                     updated_at = excluded.updated_at",
                );
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await
        });
        r.map_err(|e| self.err(e))
    }

    /// Live inventory rows whose path is `>= after` in byte order, a page at a time.
    pub async fn inventory_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<InventoryRow>> {
        let r = on_pool!(self, |p| {
            sqlx::query_as::<_, InventoryRow>(
            "SELECT path, size, etag, content_type, is_backed_up, last_modified, deleted, updated_at \
             FROM backup_inventory WHERE NOT deleted AND ($1 IS NULL OR path > $1) ORDER BY path LIMIT $2"
        )
        .bind(after)
        .bind(limit)
        .fetch_all(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }
}
