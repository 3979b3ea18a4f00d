//! Domain types shared by the engine's operations, the database layer and the renderers.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One mirrored file as the per-file table shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct FileRow {
    pub id: i64,
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub downloads: i64,
    pub bytes_served: i64,
    pub last_downloaded_at: Option<DateTime<Utc>>,
    pub is_stale: bool,
}

/// One mirrored file in full, with the origin's view of it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FileDetail {
    pub id: i64,
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub downloads: i64,
    pub bytes_served: i64,
    pub last_downloaded_at: Option<DateTime<Utc>>,
    pub is_stale: bool,
    pub origin_file_id: i64,
    pub sha256: Option<String>,
    pub etag: Option<String>,
    pub mirrored_at: DateTime<Utc>,
    pub last_validated_at: Option<DateTime<Utc>>,
    pub stale_reason: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub origin_source: String,
    pub origin_remote_id: String,
    pub origin_file_name: String,
    pub origin_url: String,
    pub origin_size: Option<i64>,
    pub origin_etag: Option<String>,
    pub origin_updated_at: DateTime<Utc>,
    /// Bumped by every state change (stale mark, purge, new copy), not by counters: a copy is
    /// recorded only over the version it started from.
    #[serde(skip)]
    pub version: i64,
    /// The strong ETag clients are sent for this content, hit or miss (unquoted).
    #[serde(skip)]
    pub content_etag: Option<String>,
}

/// What the origin says a file is.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OriginFile {
    pub id: i64,
    pub source: String,
    pub remote_id: String,
    pub file_name: String,
    pub url: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A download to record (the write path of `serve`, and the demo generator).
#[derive(Debug, Clone)]
pub struct NewDownloadEvent {
    pub occurred_at: DateTime<Utc>,
    pub file_id: i64,
    pub cache_hit: bool,
    pub bytes: i64,
    pub duration_ms: i32,
    pub status: i16,
}

/// Downloads of one file on one day.
#[derive(Debug, Clone, Serialize)]
pub struct DailyDownloads {
    pub day: String,
    pub downloads: i64,
    pub bytes: i64,
    /// Counted (at least in part) from the month's Parquet archive on S3: the month was
    /// archived and its events are no longer in the database.
    pub from_archive: bool,
}

/// One row of the `operations` audit log.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: i64,
    pub kind: String,
    #[sqlx(json)]
    pub params: serde_json::Value,
    pub operator: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    #[sqlx(json(nullable))]
    pub summary: Option<serde_json::Value>,
}

/// Totals over a window of download events, from the hourly rollup.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct DownloadTotals {
    pub hits: i64,
    pub misses: i64,
    pub errors: i64,
    pub bytes_hit: i64,
    pub bytes_miss: i64,
    /// Conditional requests answered 304: revalidations, not downloads.
    pub revalidations: i64,
}

/// Live storage totals, from the trigger-kept counters.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct StorageTotals {
    pub objects: i64,
    pub bytes: i64,
    pub stale: i64,
}

/// One bucket of the hits/misses time series.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SeriesPoint {
    pub at: DateTime<Utc>,
    pub hits: i64,
    pub misses: i64,
    pub errors: i64,
}

/// Sort orders of the per-file table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileSort {
    #[default]
    Downloads,
    Size,
    LastDownloaded,
    Name,
    Id,
    BytesServed,
    /// Stale files first.
    Stale,
}

/// A page request for the per-file table. Pages by keyset: `after` (a row of the previous
/// page) starts the page after that row in the sort order, so a page costs the same anywhere in
/// the table and rows do not shift between pages while counters change; `from_end` reads the
/// last page backwards, as fast as the first. `offset` skips rows from wherever the page
/// starts (it walks the rows it skips: keep it small).
#[derive(Debug, Clone, Default)]
pub struct FileQuery {
    pub sort: FileSort,
    pub stale_only: bool,
    pub filter: Option<String>,
    pub limit: i64,
    pub offset: i64,
    pub after: Option<FileRow>,
    pub from_end: bool,
}

/// A mirrored file to insert (demo, scale data, and the data plane's first mirror).
#[derive(Debug, Clone)]
pub struct NewMirroredFile {
    pub origin_file_id: i64,
    pub bucket: String,
    pub key: String,
    pub size: i64,
    pub sha256: Option<String>,
    pub etag: Option<String>,
    pub mirrored_at: DateTime<Utc>,
    pub is_stale: bool,
    pub stale_reason: Option<String>,
}

/// A new origin file row.
#[derive(Debug, Clone)]
pub struct NewOriginFile {
    pub source: String,
    pub remote_id: String,
    pub file_name: String,
    pub url: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// The columns of a `backup_inventory` row that `drift` compares with the buckets: all a
/// merge that builds no report item reads (no text dates to parse, no content type).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InventoryFacts {
    pub path: String,
    pub size: i64,
    pub etag: Option<String>,
    pub is_backed_up: bool,
}

/// One row of `backup_inventory`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InventoryRow {
    pub path: String,
    pub size: i64,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub is_backed_up: bool,
    pub last_modified: Option<DateTime<Utc>>,
    pub deleted: bool,
    pub updated_at: DateTime<Utc>,
}
