//! Origin and mirrored files: the per-file table, one file in full, and inserts.

use sqlx::QueryBuilder;

use super::{on_pool, ts, Db};
use crate::engine::error::Result;
use crate::engine::model::{
    FileDetail, FileQuery, FileRow, FileSort, NewMirroredFile, NewOriginFile, OriginFile,
};

const FILE_COLUMNS: &str = "id, bucket, key, size, download_count AS downloads, bytes_served, \
                            last_downloaded_at, is_stale";

const DETAIL_SQL: &str =
    "SELECT m.id, m.bucket, m.key, m.size, m.download_count AS downloads, m.bytes_served, \
       m.last_downloaded_at, m.is_stale, m.origin_file_id, m.sha256, m.etag, m.mirrored_at, \
       m.last_validated_at, m.stale_reason, m.deleted_at, o.source AS origin_source, \
       o.remote_id AS origin_remote_id, o.file_name AS origin_file_name, o.url AS origin_url, \
       o.size AS origin_size, o.etag AS origin_etag, o.updated_at AS origin_updated_at, \
       m.version, m.content_etag \
       FROM mirrored_files m JOIN origin_files o ON o.id = m.origin_file_id";

fn order_by(sort: FileSort) -> &'static str {
    match sort {
        FileSort::Downloads => " ORDER BY download_count DESC, id",
        FileSort::Size => " ORDER BY size DESC, id",
        FileSort::LastDownloaded => " ORDER BY last_downloaded_at DESC NULLS LAST, id",
        FileSort::Name => " ORDER BY key, id",
        FileSort::Id => " ORDER BY id",
        FileSort::BytesServed => " ORDER BY bytes_served DESC, id",
        FileSort::Stale => " ORDER BY is_stale DESC, download_count DESC, id",
    }
}

/// A LIKE pattern matching `s` anywhere, with LIKE's wildcards in `s` taken literally.
pub(super) fn contains_pattern(s: &str) -> String {
    let mut p = String::with_capacity(s.len() + 2);
    p.push('%');
    for c in s.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Db {
    /// One page of live mirrored files, sorted and filtered in the database.
    pub async fn list_files(&self, q: &FileQuery) -> Result<Vec<FileRow>> {
        let pattern = q
            .filter
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(contains_pattern);
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new("SELECT ");
            qb.push(FILE_COLUMNS);
            qb.push(" FROM mirrored_files WHERE deleted_at IS NULL");
            if q.stale_only {
                qb.push(" AND is_stale");
            }
            if let Some(pat) = &pattern {
                qb.push(" AND lower(key) LIKE ")
                    .push_bind(pat.clone())
                    .push(" ESCAPE '\\'");
            }
            qb.push(order_by(q.sort));
            qb.push(" LIMIT ").push_bind(q.limit.max(0));
            qb.push(" OFFSET ").push_bind(q.offset.max(0));
            qb.build_query_as::<FileRow>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// How many live files match the same filter as `list_files` (for a table's scroll bar).
    pub async fn count_files(&self, q: &FileQuery) -> Result<i64> {
        let pattern = q
            .filter
            .as_deref()
            .filter(|f| !f.is_empty())
            .map(contains_pattern);
        if pattern.is_none() && !q.stale_only {
            return Ok(self.storage_totals().await?.objects);
        }
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            let mut qb =
                QueryBuilder::new("SELECT count(*) FROM mirrored_files WHERE deleted_at IS NULL");
            if q.stale_only {
                qb.push(" AND is_stale");
            }
            if let Some(pat) = &pattern {
                qb.push(" AND lower(key) LIKE ")
                    .push_bind(pat.clone())
                    .push(" ESCAPE '\\'");
            }
            qb.build_query_scalar().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// A mirrored file by id, or by key (the live copy), with its origin row.
    pub async fn get_file(&self, id_or_key: &str) -> Result<Option<FileDetail>> {
        match id_or_key.trim().parse::<i64>() {
            Ok(id) => self.get_file_by_id(id).await,
            Err(_) => self.get_file_by_key(id_or_key).await,
        }
    }

    /// A mirrored file by id, with its origin row.
    pub async fn get_file_by_id(&self, id: i64) -> Result<Option<FileDetail>> {
        let r = on_pool!(self, |p| sqlx::query_as::<_, FileDetail>(&format!(
            "{DETAIL_SQL} WHERE m.id = $1"
        ))
        .bind(id)
        .fetch_optional(p)
        .await);
        r.map_err(|e| self.err(e))
    }

    /// The mirrored file with this object key (the live copy first, then the newest row).
    pub async fn get_file_by_key(&self, key: &str) -> Result<Option<FileDetail>> {
        let r = on_pool!(self, |p| sqlx::query_as::<_, FileDetail>(&format!(
            "{DETAIL_SQL} WHERE m.key = $1 ORDER BY m.deleted_at IS NOT NULL, m.id DESC LIMIT 1"
        ))
        .bind(key)
        .fetch_optional(p)
        .await);
        r.map_err(|e| self.err(e))
    }

    /// Inserts origin files, returning their ids in order.
    pub async fn insert_origin_files(&self, rows: &[NewOriginFile]) -> Result<Vec<i64>> {
        let r: Result<Vec<i64>, sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut ids = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(1000) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO origin_files (source, remote_id, file_name, url, size, etag, updated_at, key) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    // A relative URL is its own key (as for catalog imports and pull-through).
                    let key = (!crate::engine::keys::is_absolute(&r.url)).then(|| {
                        crate::engine::keys::derive_key(&r.source, &r.remote_id, &r.url, None, None)
                    });
                    b.push_bind(&r.source)
                        .push_bind(&r.remote_id)
                        .push_bind(&r.file_name)
                        .push_bind(&r.url)
                        .push_bind(r.size)
                        .push_bind(&r.etag)
                        .push_bind(ts(r.updated_at))
                        .push_bind(key);
                });
                qb.push(" RETURNING id");
                let mut got: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
                ids.append(&mut got);
            }
            tx.commit().await?;
            Ok(ids)
        });
        r.map_err(|e| self.err(e))
    }

    /// Inserts mirrored files, returning their ids in order.
    pub async fn insert_mirrored_files(&self, rows: &[NewMirroredFile]) -> Result<Vec<i64>> {
        let r: Result<Vec<i64>, sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut ids = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(1000) {
                let mut qb = QueryBuilder::new(
                    "INSERT INTO mirrored_files (origin_file_id, bucket, key, size, sha256, etag, mirrored_at, \
                     is_stale, stale_reason) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(r.origin_file_id)
                        .push_bind(&r.bucket)
                        .push_bind(&r.key)
                        .push_bind(r.size)
                        .push_bind(&r.sha256)
                        .push_bind(&r.etag)
                        .push_bind(ts(r.mirrored_at))
                        .push_bind(r.is_stale)
                        .push_bind(&r.stale_reason);
                });
                qb.push(" RETURNING id");
                let mut got: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
                ids.append(&mut got);
            }
            tx.commit().await?;
            Ok(ids)
        });
        r.map_err(|e| self.err(e))
    }

    /// An origin file by id.
    pub async fn get_origin_file(&self, id: i64) -> Result<Option<OriginFile>> {
        let r = on_pool!(self, |p| {
            sqlx::query_as::<_, OriginFile>(
            "SELECT id, source, remote_id, file_name, url, size, etag, updated_at FROM origin_files WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }
}

impl Db {
    /// Live objects, bytes and stale files, from the trigger-kept counters.
    pub async fn storage_totals(&self) -> Result<crate::engine::model::StorageTotals> {
        let r = on_pool!(self, |p| sqlx::query_as::<
            _,
            crate::engine::model::StorageTotals,
        >(
            "SELECT objects, bytes, stale FROM mirror_counters WHERE id = 1"
        )
        .fetch_one(p)
        .await);
        r.map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_literal() {
        assert_eq!(super::contains_pattern("a_b%C"), "%a\\_b\\%c%");
    }
}
