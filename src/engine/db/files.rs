//! Origin and mirrored files: the per-file table, one file in full, and inserts.

use sqlx::QueryBuilder;

use super::key_filter::{key_column, key_match, push_filter, KeyMatch};
use super::{on_pool, ts, Backend, Db};
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

/// A column of a sort order, and how a cursor row binds its value.
#[derive(Clone, Copy)]
enum Col {
    Downloads,
    Size,
    BytesServed,
    LastDownloaded,
    Stale,
    Name,
    Id,
}

/// The columns of each sort, all in one direction (descending ones read their index
/// backwards), so a row comparison bounds a page; ties go by id.
fn sort_columns(sort: FileSort) -> (&'static [Col], bool) {
    use Col::*;
    match sort {
        FileSort::Downloads => (&[Downloads, Id], true),
        FileSort::Size => (&[Size, Id], true),
        FileSort::LastDownloaded => (&[LastDownloaded, Id], true),
        FileSort::Name => (&[Name, Id], false),
        FileSort::Id => (&[Id], false),
        FileSort::BytesServed => (&[BytesServed, Id], true),
        FileSort::Stale => (&[Stale, Downloads, Id], true),
    }
}

/// The expression of a column, as its index (migration 0012) has it.
fn expr(c: Col, backend: Backend) -> &'static str {
    match (c, backend) {
        (Col::Downloads, _) => "download_count",
        (Col::Size, _) => "size",
        (Col::BytesServed, _) => "bytes_served",
        (Col::LastDownloaded, Backend::Postgres) => {
            "coalesce(last_downloaded_at, '-infinity'::timestamptz)"
        }
        (Col::LastDownloaded, Backend::Sqlite) => "coalesce(last_downloaded_at, '')",
        (Col::Stale, _) => "is_stale",
        (Col::Name, _) => key_column(backend),
        (Col::Id, _) => "id",
    }
}

/// A bound cursor value, wrapped as its column's expression is.
fn push_value<'a, DB>(qb: &mut QueryBuilder<'a, DB>, c: Col, r: &'a FileRow, backend: Backend)
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    Option<chrono::DateTime<chrono::Utc>>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match c {
        Col::Downloads => qb.push_bind(r.downloads),
        Col::Size => qb.push_bind(r.size),
        Col::BytesServed => qb.push_bind(r.bytes_served),
        Col::LastDownloaded => {
            qb.push("coalesce(").push_bind(r.last_downloaded_at);
            qb.push(match backend {
                Backend::Postgres => ", '-infinity'::timestamptz)",
                Backend::Sqlite => ", '')",
            })
        }
        Col::Stale => qb.push_bind(r.is_stale),
        Col::Name => qb.push_bind(r.key.as_str()),
        Col::Id => qb.push_bind(r.id),
    };
}

impl Db {
    async fn key_match(&self, q: &FileQuery) -> Result<Option<KeyMatch>> {
        match q.filter.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => Ok(Some(key_match(f, self.key_index().await?))),
            None => Ok(None),
        }
    }

    /// One page of live mirrored files, sorted, filtered and paged by keyset in the database.
    pub async fn list_files(&self, q: &FileQuery) -> Result<Vec<FileRow>> {
        let m = self.key_match(q).await?;
        let backend = self.backend();
        let (cols, desc) = sort_columns(q.sort);
        // Reading from the end walks the order backwards; the rows are turned round below.
        let backwards = desc != q.from_end;
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new("SELECT ");
            qb.push(FILE_COLUMNS);
            qb.push(" FROM mirrored_files WHERE deleted_at IS NULL");
            if q.stale_only {
                qb.push(" AND is_stale");
            }
            if let Some(m) = &m {
                push_filter(&mut qb, m, backend);
            }
            if let Some(after) = q.after.as_ref().filter(|_| !q.from_end) {
                qb.push(" AND (");
                let mut sep = qb.separated(", ");
                for c in cols {
                    sep.push(expr(*c, backend));
                }
                qb.push(if desc { ") < (" } else { ") > (" });
                for (i, c) in cols.iter().enumerate() {
                    if i > 0 {
                        qb.push(", ");
                    }
                    push_value(&mut qb, *c, after, backend);
                }
                qb.push(")");
            }
            qb.push(" ORDER BY ");
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    qb.push(", ");
                }
                qb.push(expr(*c, backend))
                    .push(if backwards { " DESC" } else { " ASC" });
            }
            qb.push(" LIMIT ").push_bind(q.limit.max(0));
            if q.offset > 0 {
                qb.push(" OFFSET ").push_bind(q.offset);
            }
            qb.build_query_as::<FileRow>().fetch_all(p).await
        });
        let mut rows = r.map_err(|e| self.err(e))?;
        if q.from_end {
            rows.reverse();
        }
        Ok(rows)
    }

    /// How many live files match the same filter as `list_files` (for a table's scroll bar).
    pub async fn count_files(&self, q: &FileQuery) -> Result<i64> {
        let m = self.key_match(q).await?;
        if m.is_none() {
            let t = self.storage_totals().await?;
            return Ok(if q.stale_only { t.stale } else { t.objects });
        }
        let backend = self.backend();
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            let mut qb =
                QueryBuilder::new("SELECT count(*) FROM mirrored_files WHERE deleted_at IS NULL");
            if q.stale_only {
                qb.push(" AND is_stale");
            }
            if let Some(m) = &m {
                push_filter(&mut qb, m, backend);
            }
            qb.build_query_scalar().fetch_one(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// The row of the per-file table for one file id (a keyset cursor for `files --after`).
    pub async fn file_row(&self, id: i64) -> Result<Option<FileRow>> {
        let r = on_pool!(self, |p| sqlx::query_as::<_, FileRow>(&format!(
            "SELECT {FILE_COLUMNS} FROM mirrored_files WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(p)
        .await);
        r.map_err(|e| self.err(e))
    }

    /// A mirrored file by id, or by key (the live copy) in any bucket, with its origin row.
    pub async fn get_file(&self, id_or_key: &str) -> Result<Option<FileDetail>> {
        self.get_file_in(None, id_or_key).await
    }

    /// A mirrored file by id, or by key (the live copy) in `bucket` (any bucket when `None`),
    /// with its origin row.
    pub async fn get_file_in(
        &self,
        bucket: Option<&str>,
        id_or_key: &str,
    ) -> Result<Option<FileDetail>> {
        match id_or_key.trim().parse::<i64>() {
            Ok(id) => self.get_file_by_id(id).await,
            Err(_) => self.get_file_by_key_in(bucket, id_or_key).await,
        }
    }

    /// The mirrored file with this object key in any bucket (see `get_file_by_key_in`).
    pub async fn get_file_by_key(&self, key: &str) -> Result<Option<FileDetail>> {
        self.get_file_by_key_in(None, key).await
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

    /// The mirrored file with this object key in `bucket` (any bucket when `None`): the live
    /// copy first, then the newest purged row. An index lookup (key, id).
    pub async fn get_file_by_key_in(
        &self,
        bucket: Option<&str>,
        key: &str,
    ) -> Result<Option<FileDetail>> {
        let r = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new(DETAIL_SQL);
            qb.push(" WHERE m.key = ").push_bind(key);
            if let Some(b) = bucket {
                qb.push(" AND m.bucket = ").push_bind(b);
            }
            qb.push(" ORDER BY m.deleted_at IS NOT NULL, m.id DESC LIMIT 1");
            qb.build_query_as::<FileDetail>().fetch_optional(p).await
        });
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
