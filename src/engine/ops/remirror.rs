//! `remirror`: fetches files from the origin again and streams them into the mirror bucket,
//! hashing (SHA-256) and counting bytes on the way, then points the rows at the new objects.
//! The old object stays readable until the new one is complete: a single PUT or a completed
//! multipart upload replaces it atomically, and a failed upload is aborted, so nothing partial
//! is ever visible. Rows change only after S3 confirmed the upload.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use chrono::Utc;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::engine::db::{Db, FileScope, LifecycleRow, Remirrored};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::origin::{Origin, OriginMeta};
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

/// Per-file items kept in the report; counts stay exact beyond it.
pub const MAX_ITEMS: usize = 10_000;
pub const MAX_CONCURRENCY: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct RemirrorParams {
    /// Mirrored file ids or object keys.
    pub targets: Vec<String>,
    /// Every live file marked stale (validation marks missing objects stale too).
    pub all_stale: bool,
    /// Say what would be remirrored, touching nothing.
    pub dry_run: bool,
    /// The confirmation: replacing objects is refused without it (headless `--yes`).
    pub yes: bool,
    /// Files transferred at once.
    pub concurrency: usize,
}

impl Default for RemirrorParams {
    fn default() -> Self {
        RemirrorParams {
            targets: Vec::new(),
            all_stale: false,
            dry_run: false,
            yes: false,
            concurrency: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RemirrorStatus {
    Remirrored,
    Failed,
    /// Dry run: would be remirrored.
    Planned,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemirrorItem {
    pub id: i64,
    pub key: String,
    pub status: RemirrorStatus,
    /// Bytes uploaded (the recorded size in a dry run).
    pub bytes: u64,
    pub sha256: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RemirrorReport {
    pub candidates: u64,
    pub remirrored: u64,
    /// Bytes uploaded (in a dry run: the recorded size of the candidates).
    pub bytes: u64,
    pub failed: u64,
    pub dry_run: bool,
    pub items: Vec<RemirrorItem>,
    pub items_omitted: u64,
}

impl Report for RemirrorReport {
    fn failures(&self) -> u64 {
        self.failed
    }

    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// Remirrors the named files or every stale file.
pub async fn run(ctx: &Ctx, p: RemirrorParams, progress: &Progress) -> Result<RemirrorReport> {
    if p.targets.is_empty() && !p.all_stale {
        return Err(Error::Usage(
            "name the files to remirror (ID or KEY), or pass --all-stale".into(),
        ));
    }
    if !p.targets.is_empty() && p.all_stale {
        return Err(Error::Usage("give files or --all-stale, not both".into()));
    }
    if p.concurrency == 0 || p.concurrency > MAX_CONCURRENCY {
        return Err(Error::Usage(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    let mirror = ctx.mirror().await?;
    // Every named file must exist before anything is touched.
    let mut named = Vec::with_capacity(p.targets.len());
    for t in &p.targets {
        named.push(resolve(ctx, mirror, t).await?);
    }
    named.sort_by_key(|r| r.id);
    named.dedup_by_key(|r| r.id);
    if !p.dry_run {
        ctx.check_writable("remirror")?;
        if !p.yes {
            return Err(Error::Refused(
                "remirror replaces objects in the mirror bucket: pass --yes to go ahead (or --dry-run to preview)"
                    .into(),
            ));
        }
    }
    let origin = ctx.origin().await?;
    audited(ctx, "remirror", &p, !p.dry_run, progress, || {
        remirror_all(&ctx.db, origin, mirror, &p, named, progress)
    })
    .await
}

/// A live row of the mirror bucket by id or key; unknown ones are a usage error (exit 2).
async fn resolve(ctx: &Ctx, mirror: &S3Bucket, target: &str) -> Result<LifecycleRow> {
    let f = ctx
        .db
        .get_file_in(Some(mirror.name()), target)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no mirrored file with id or key {target:?}")))?;
    if f.deleted_at.is_some() {
        return Err(Error::NotFound(format!(
            "mirrored file {target:?} (id {}) was purged",
            f.id
        )));
    }
    if f.bucket != mirror.name() {
        return Err(Error::Usage(format!(
            "mirrored file {target:?} is in bucket {}, not the configured mirror bucket {}",
            f.bucket,
            mirror.name()
        )));
    }
    Ok(LifecycleRow {
        id: f.id,
        key: f.key,
        size: f.size,
        is_stale: f.is_stale,
        stale_reason: f.stale_reason,
        origin_file_id: f.origin_file_id,
        origin_url: f.origin_url,
        origin_size: f.origin_size,
        origin_etag: f.origin_etag,
    })
}

async fn remirror_all(
    db: &Db,
    origin: &Origin,
    mirror: &S3Bucket,
    p: &RemirrorParams,
    named: Vec<LifecycleRow>,
    progress: &Progress,
) -> Result<RemirrorReport> {
    let total = if p.all_stale {
        db.count_scope(mirror.name(), &FileScope::Stale).await? as u64
    } else {
        named.len() as u64
    };
    let rows: BoxStream<'static, Result<LifecycleRow>> = if p.all_stale {
        super::validate::paged_rows(db.clone(), mirror.name().to_string(), FileScope::Stale).boxed()
    } else {
        stream::iter(named.into_iter().map(Ok)).boxed()
    };
    let mut report = RemirrorReport {
        candidates: total,
        dry_run: p.dry_run,
        ..Default::default()
    };
    progress.update(
        0,
        Some(total),
        if p.dry_run { "planning" } else { "remirroring" },
    );
    if p.dry_run {
        futures::pin_mut!(rows);
        while let Some(row) = rows.try_next().await? {
            let bytes = row.size.max(0) as u64;
            report.bytes += bytes;
            push_item(
                &mut report,
                RemirrorItem {
                    id: row.id,
                    key: row.key,
                    status: RemirrorStatus::Planned,
                    bytes,
                    sha256: None,
                    error: None,
                },
            );
        }
        return Ok(report);
    }
    let done = transfers(
        rows,
        (db, origin, mirror),
        p.concurrency,
        progress,
        |db, origin, mirror, row| async move { remirror_one(&db, &origin, &mirror, row).await },
    );
    futures::pin_mut!(done);
    let mut n = 0;
    while let Some(item) = done.try_next().await? {
        n += 1;
        match item.status {
            RemirrorStatus::Remirrored => {
                report.remirrored += 1;
                report.bytes += item.bytes;
            }
            _ => report.failed += 1,
        }
        push_item(&mut report, item);
        progress.update(n, Some(total), "remirroring");
    }
    progress.check()?;
    Ok(report)
}

/// `one(db, origin, mirror, row)` for each row, `concurrency` at a time, in completion order;
/// once `progress` is cancelled no new row is taken and the transfers under way finish. Shared
/// by remirror and prefetch.
pub(crate) fn transfers<R, I, F, Fut>(
    rows: impl futures::Stream<Item = Result<R>>,
    (db, origin, mirror): (&Db, &Origin, &S3Bucket),
    concurrency: usize,
    progress: &Progress,
    one: F,
) -> impl futures::Stream<Item = Result<I>>
where
    F: Fn(Db, Origin, S3Bucket, R) -> Fut,
    Fut: std::future::Future<Output = Result<I>>,
{
    // Owned handles keep the futures `Send + 'static` (the TUI spawns operations).
    let (db, origin, mirror) = (db.clone(), origin.clone(), mirror.clone());
    rows.take_until(progress.token().cancelled_owned())
        .map_ok(move |row| one(db.clone(), origin.clone(), mirror.clone(), row))
        .try_buffer_unordered(concurrency)
}

fn push_item(report: &mut RemirrorReport, item: RemirrorItem) {
    if report.items.len() < MAX_ITEMS {
        report.items.push(item);
    } else {
        report.items_omitted += 1;
    }
}

/// One file: origin → mirror, then the row. Origin and upload failures are this file's
/// `failed` item; a database failure fails the run.
async fn remirror_one(
    db: &Db,
    origin: &Origin,
    mirror: &S3Bucket,
    row: LifecycleRow,
) -> Result<RemirrorItem> {
    let target = StoreTarget {
        id: Some(row.id),
        version: None,
        origin_file_id: row.origin_file_id,
        key: row.key.clone(),
    };
    let stored = fetch_and_store(db, origin, mirror, &row.origin_url, &target).await?;
    let mut item = RemirrorItem {
        id: row.id,
        key: row.key,
        status: RemirrorStatus::Failed,
        bytes: 0,
        sha256: None,
        error: None,
    };
    match stored {
        Ok((bytes, sha256, _)) => {
            item.status = RemirrorStatus::Remirrored;
            item.bytes = bytes;
            item.sha256 = Some(sha256);
        }
        Err(why) => item.error = Some(why),
    }
    Ok(item)
}

/// GETs `url` from the origin and `store`s it: `Ok(Err(why))` when the origin or the upload
/// failed for this file, `Err` only when the database failed (which fails the whole run).
pub async fn fetch_and_store(
    db: &Db,
    origin: &Origin,
    mirror: &S3Bucket,
    url: &str,
    target: &StoreTarget,
) -> Result<std::result::Result<(u64, String, i64), String>> {
    let body = match origin.get(url).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Err("gone at the origin (404)".into())),
        Err(e) => return Ok(Err(e.to_string())),
    };
    match store(db, mirror, target, body.body, body.meta).await {
        Ok(stored) => Ok(Ok(stored)),
        Err(e @ Error::Database { .. }) => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Which mirrored file a body is stored for.
#[derive(Debug, Clone)]
pub struct StoreTarget {
    /// The mirrored row; `None` for a catalog entry's first copy (its row is inserted once
    /// S3 confirmed the object).
    pub id: Option<i64>,
    /// The row's version when the copy started: the copy is recorded only if it is unchanged
    /// (a purge or a newer copy meanwhile wins); `None` records it regardless.
    pub version: Option<i64>,
    pub origin_file_id: i64,
    pub key: String,
}

/// The ETag clients are sent for a content: the origin's, when it gave a strong one (so a
/// miss, which streams before the copy is hashed, sends the same one as later hits), else one
/// made of the content's SHA-256.
pub fn content_etag(origin_etag: Option<&str>, sha256: &str) -> String {
    match origin_etag.map(str::trim) {
        Some(e) if !e.is_empty() && !e.starts_with("W/") => e.trim_matches('"').to_string(),
        _ => format!("sha256-{}", &sha256[..sha256.len().min(32)]),
    }
}

/// Streams an origin body into the mirror under the file's key, hashing it and checking its
/// length against the origin's Content-Length, then — only once S3 confirmed the upload —
/// records the new copy (size, sha256, etag, fresh, live) and what the origin said. Returns the
/// bytes stored, their SHA-256 and the mirrored row's id. A failed or short body aborts the upload: the old object
/// stays and nothing partial appears. Used by `remirror` and by the data plane's misses.
pub async fn store<R: AsyncRead + Unpin + Send>(
    db: &Db,
    mirror: &S3Bucket,
    target: &StoreTarget,
    body: R,
    meta: OriginMeta,
) -> Result<(u64, String, i64)> {
    let mut reader = VerifyingReader::new(body, meta.size);
    let put = mirror
        .put_stream_sized(
            &target.key,
            &mut reader,
            meta.content_type.as_deref(),
            meta.size,
        )
        .await?;
    let (bytes, sha256) = reader.finish();
    if put.bytes != bytes {
        // Cannot happen unless the upload path dropped data; never record such an object.
        return Err(Error::runtime(format!(
            "uploaded {} bytes but read {bytes} from the origin",
            put.bytes
        )));
    }
    let now = Utc::now();
    let recorded = db
        .record_remirror(&Remirrored {
            id: target.id,
            expect_version: target.version,
            content_etag: Some(content_etag(meta.etag.as_deref(), &sha256)),
            bucket: mirror.name().to_string(),
            key: target.key.clone(),
            origin_file_id: target.origin_file_id,
            size: bytes as i64,
            sha256: sha256.clone(),
            etag: put.etag,
            origin_size: Some(bytes as i64),
            origin_etag: meta.etag,
            origin_updated_at: meta.last_modified.unwrap_or(now),
            at: now,
        })
        .await?;
    let Some(id) = recorded else {
        // Purged (or re-mirrored) while this copy was made: the row is not revived, and an
        // object no live row points at is not left behind.
        if !db.has_live_key(mirror.name(), &target.key).await? {
            mirror.delete(&target.key).await?;
        }
        return Err(Error::runtime(format!(
            "{}: the file changed while it was copied (purged or copied again): this copy was not recorded",
            target.key
        )));
    };
    Ok((bytes, sha256, id))
}

/// Passes an origin body through, hashing and counting it, and fails the read (so the upload
/// is aborted before it completes) when the body is shorter or longer than Content-Length.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    expected: Option<u64>,
}

impl<R> VerifyingReader<R> {
    pub fn new(inner: R, expected: Option<u64>) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
            expected,
        }
    }

    /// Bytes read and their SHA-256 (hex).
    pub fn finish(self) -> (u64, String) {
        (self.count, hex::encode(self.hasher.finalize()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for VerifyingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if new.is_empty() {
            return match this.expected {
                Some(expected) if this.count != expected => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "origin sent {} bytes, Content-Length said {expected}",
                        this.count
                    ),
                ))),
                _ => Poll::Ready(Ok(())),
            };
        }
        let n = new.len() as u64;
        if let Some(expected) = this.expected {
            if this.count + n > expected {
                // An error read must hand over no bytes.
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("origin sent more than the {expected} bytes of its Content-Length"),
                )));
            }
        }
        this.count += n;
        this.hasher.update(new);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn counts_hashes_and_checks_length() {
        let mut r = VerifyingReader::new(&b"hello"[..], Some(5));
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.expect("read");
        let (n, sha) = r.finish();
        assert_eq!(n, 5);
        assert_eq!(
            sha,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );

        let mut short = VerifyingReader::new(&b"hell"[..], Some(5));
        let err = short
            .read_to_end(&mut Vec::new())
            .await
            .expect_err("short body");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut long = VerifyingReader::new(&b"hello!"[..], Some(5));
        assert!(long.read_to_end(&mut Vec::new()).await.is_err());
    }
}
