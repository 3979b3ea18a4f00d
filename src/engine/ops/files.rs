//! `files` (the per-file table) and `file` (one file in full, with downloads per day).

use chrono::{TimeDelta, Utc};
use serde::Serialize;

use crate::engine::error::{Error, Result};
use crate::engine::jobs::Report;
use crate::engine::model::{DailyDownloads, FileDetail, FileQuery, FileRow};
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

#[derive(Debug, Clone, Default)]
pub struct FileParams {
    pub id_or_key: String,
    /// Ask the origin and the mirror bucket what they hold now.
    pub live: bool,
    pub days: i64,
}

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
    let days = if p.days > 0 { p.days } else { 30 };
    let downloads_per_day = ctx
        .db
        .downloads_per_day(file.id, Utc::now() - TimeDelta::days(days))
        .await?;
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
    })
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
