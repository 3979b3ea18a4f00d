//! `files` (the per-file table) and `file` (one file in full, with downloads per day).

use std::collections::BTreeMap;

use chrono::{TimeDelta, Utc};
use serde::Serialize;

use crate::engine::error::{Error, Result};
use crate::engine::jobs::Report;
use crate::engine::model::{DailyDownloads, FileDetail, FileQuery, FileRow};
use crate::engine::ops::archive;
use crate::engine::origin::OriginMeta;
use crate::engine::Ctx;

/// A page of the per-file table.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct FilesReport {
    pub files: Vec<FileRow>,
}

impl Report for FilesReport {}

pub async fn list(ctx: &Ctx, q: &FileQuery) -> Result<FilesReport> {
    if q.limit < 0 || q.offset < 0 {
        return Err(Error::Usage(
            "--limit and --offset must not be negative".into(),
        ));
    }
    Ok(FilesReport {
        files: ctx.db.list_files(q).await?,
    })
}

/// The row a `files --after ID` page starts after; an unknown id is a usage error.
pub async fn cursor(ctx: &Ctx, id: i64) -> Result<FileRow> {
    ctx.db
        .file_row(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("--after: no mirrored file with id {id}")))
}

#[derive(Debug, Clone)]
pub struct FileParams {
    pub id_or_key: String,
    /// Ask the origin and the mirror bucket what they hold now.
    pub live: bool,
    /// Downloads per day over this much of the past (`--since`; 30 days by default).
    pub since: std::time::Duration,
}

impl Default for FileParams {
    fn default() -> Self {
        FileParams {
            id_or_key: String::new(),
            live: false,
            since: DEFAULT_SINCE,
        }
    }
}

/// `file`'s window when none is given.
pub const DEFAULT_SINCE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);
/// The longest `--since` accepted: far beyond any archive, short of date arithmetic overflow.
const MAX_SINCE: std::time::Duration = std::time::Duration::from_secs(100 * 366 * 86_400);

/// What the mirror bucket holds for the file now.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorObject {
    pub exists: bool,
    pub size: Option<u64>,
    pub etag: Option<String>,
}

/// One file: its row, its origin row, and (with `live`) what origin and bucket say now.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    #[serde(flatten)]
    pub file: FileDetail,
    pub origin: OriginView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror_object: Option<MirrorObject>,
    pub downloads_per_day: Vec<DailyDownloads>,
    /// Archived months in the window whose archive could not be read, with why: their days
    /// are missing from `downloads_per_day`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub archive_unavailable: Vec<String>,
}

/// The origin as the database recorded it, and as it answers now when asked.
#[derive(Debug, Clone, Serialize)]
pub struct OriginView {
    pub url: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub updated_at: chrono::DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveOrigin>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LiveOrigin {
    Found(OriginMeta),
    Gone,
    Error { message: String },
}

impl Report for FileReport {}

pub async fn show(ctx: &Ctx, p: &FileParams) -> Result<FileReport> {
    let file = ctx
        .db
        .get_file_in(ctx.mirror_bucket_name(), &p.id_or_key)
        .await?
        .ok_or_else(|| {
            Error::NotFound(format!("no mirrored file with id or key {:?}", p.id_or_key))
        })?;
    if p.since.is_zero() || p.since > MAX_SINCE {
        return Err(Error::Usage(format!(
            "--since must be between 1s and 100 years, not {}",
            humantime::format_duration(p.since)
        )));
    }
    let since = Utc::now() - TimeDelta::from_std(p.since).unwrap_or(TimeDelta::days(30));
    let mut per_day: BTreeMap<String, DailyDownloads> = BTreeMap::new();
    for d in ctx.db.downloads_per_day(file.id, since).await? {
        add_day(&mut per_day, d);
    }
    // Months archived to S3: their events are no longer in the database.
    let archived = archive::read_back::downloads_per_day(ctx, file.id, since).await?;
    for d in archived.days {
        add_day(&mut per_day, d);
    }
    let downloads_per_day = per_day.into_values().collect();
    let (live, mirror_object) = if p.live {
        let origin = async {
            match ctx.origin().await?.head(&file.origin_url).await {
                Ok(Some(m)) => Ok::<_, Error>(LiveOrigin::Found(m)),
                Ok(None) => Ok(LiveOrigin::Gone),
                Err(e) => Ok(LiveOrigin::Error {
                    message: e.to_string(),
                }),
            }
        };
        let mirror = async {
            let head = ctx.mirror().await?.head(&file.key).await?;
            Ok::<_, Error>(MirrorObject {
                exists: head.is_some(),
                size: head.as_ref().map(|h| h.size),
                etag: head.and_then(|h| h.etag),
            })
        };
        let (o, m) = tokio::join!(origin, mirror);
        (Some(o?), Some(m?))
    } else {
        (None, None)
    };
    // Catalog URLs may carry credentials or tokens: stored as given, never printed.
    let mut file = file;
    file.origin_url = crate::engine::origin::redact_query(&file.origin_url);
    Ok(FileReport {
        origin: OriginView {
            url: file.origin_url.clone(),
            size: file.origin_size,
            etag: file.origin_etag.clone(),
            updated_at: file.origin_updated_at,
            live,
        },
        file,
        mirror_object,
        downloads_per_day,
        archive_unavailable: archived.unavailable,
    })
}

/// Adds one day's figures, summing with what another source had for the same day (rows that
/// arrived for an archived month after it was archived are in the database, the rest on S3).
fn add_day(per_day: &mut BTreeMap<String, DailyDownloads>, d: DailyDownloads) {
    match per_day.get_mut(&d.day) {
        Some(e) => {
            e.downloads += d.downloads;
            e.bytes += d.bytes;
            e.from_archive |= d.from_archive;
        }
        None => {
            per_day.insert(d.day.clone(), d);
        }
    }
}

/// A presigned download URL.
#[derive(Debug, Clone, Serialize)]
pub struct PresignReport {
    pub id: i64,
    pub key: String,
    pub url: String,
    pub expires_at: chrono::DateTime<Utc>,
}

impl Report for PresignReport {}

/// A time-limited GET URL for a mirrored file (at most 7 days, S3's limit for SigV4).
pub async fn presign(
    ctx: &Ctx,
    id_or_key: &str,
    expires: std::time::Duration,
) -> Result<PresignReport> {
    if expires.is_zero() || expires > std::time::Duration::from_secs(7 * 86_400) {
        return Err(Error::Usage("--expires must be between 1s and 7d".into()));
    }
    let file = ctx
        .db
        .get_file_in(ctx.mirror_bucket_name(), id_or_key)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no mirrored file with id or key {id_or_key:?}")))?;
    let url = ctx.mirror().await?.presign_get(&file.key, expires).await?;
    Ok(PresignReport {
        id: file.id,
        key: file.key,
        url,
        expires_at: Utc::now() + chrono::TimeDelta::from_std(expires).unwrap_or_default(),
    })
}
