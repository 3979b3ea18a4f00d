//! `validate`: asks the origin (HEAD: size, ETag) and the mirror bucket (exists, size: a HEAD
//! per file, or with `--all` the bucket's listing merged with the rows in byte order) about
//! each mirrored file, marks stale and missing files so `remirror --all-stale` restores them,
//! and stamps `last_validated_at`. Rows are paged from the database and checked with bounded
//! concurrency, so memory does not grow with the number of files.

use std::collections::VecDeque;

use chrono::{TimeDelta, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::engine::db::{Db, FileScope, LifecycleRow, StaleMark};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::origin::{Origin, OriginMeta};
use crate::engine::s3::{ObjectInfo, ObjectMeta, S3Bucket};
use crate::engine::Ctx;

/// Rows read from the database per query.
const PAGE: i64 = 1000;
/// Keys per listing request when `--all` lists the mirror bucket instead of HEADing each object.
const LIST_PAGE: i32 = 1000;
/// Database pages and listing pages fetched ahead of the merge.
const PAGES_AHEAD: usize = 2;
/// Results written to the database per transaction.
const WRITE_BATCH: usize = 500;
/// Per-file items kept in the report; counts stay exact beyond it.
pub const MAX_ITEMS: usize = 10_000;
/// More concurrent requests than this only queue inside the HTTP clients.
pub const MAX_CONCURRENCY: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct ValidateParams {
    /// Every live file, not only the recently downloaded ones.
    pub all: bool,
    /// Only these files (mirrored file ids).
    pub ids: Vec<i64>,
    /// The recent window in days (default `policy.validate_recent_days`).
    pub recent_days: Option<u32>,
    /// Files checked at once.
    pub concurrency: usize,
}

impl Default for ValidateParams {
    fn default() -> Self {
        ValidateParams {
            all: false,
            ids: Vec::new(),
            recent_days: None,
            concurrency: 32,
        }
    }
}

/// What validation concluded about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidateStatus {
    Fresh,
    /// The origin's size or ETag differs from what was mirrored, or the object's size from the row.
    Stale,
    /// The mirror bucket has no object for the row.
    Missing,
    /// The origin did not answer usefully (down, 404, 5xx, timeout): nothing was marked.
    OriginError,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidateItem {
    pub id: i64,
    pub key: String,
    pub status: ValidateStatus,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ValidateReport {
    /// Which files were checked: "all", "ids" or "downloaded in the last N days".
    pub scope: String,
    pub checked: u64,
    pub fresh: u64,
    /// Files found stale now (including ones already marked stale before).
    pub stale: u64,
    /// Files that were not marked stale before and are now (stale or missing).
    pub newly_stale: u64,
    pub missing_in_mirror: u64,
    pub origin_errors: u64,
    /// False in read-only mode: results were reported but not written to the rows.
    pub recorded: bool,
    /// Files that were not fresh (and every file when checking `--ids`), up to `MAX_ITEMS`.
    pub items: Vec<ValidateItem>,
    /// Items left out of `items` to keep the report bounded.
    pub items_omitted: u64,
}

/// The one-line summary the TUI's job list and the data plane's workers show.
impl std::fmt::Display for ValidateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checked {}: {} fresh, {} stale ({} newly), {} missing, {} origin errors",
            self.checked,
            self.fresh,
            self.stale,
            self.newly_stale,
            self.missing_in_mirror,
            self.origin_errors
        )
    }
}

impl Report for ValidateReport {
    /// Newly stale or missing files, or files the origin could not vouch for: not all fresh.
    fn found_problems(&self) -> bool {
        self.newly_stale > 0 || self.missing_in_mirror > 0 || self.origin_errors > 0
    }
}

/// Checks the files in scope against the origin and the mirror bucket and records the results.
/// In read-only mode it reports without writing (and without taking the mutation lock).
pub async fn run(ctx: &Ctx, p: ValidateParams, progress: &Progress) -> Result<ValidateReport> {
    if p.concurrency == 0 || p.concurrency > MAX_CONCURRENCY {
        return Err(Error::Usage(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    if p.all && !p.ids.is_empty() {
        return Err(Error::Usage(
            "--all and --ids cannot be used together".into(),
        ));
    }
    if p.recent_days == Some(0) {
        return Err(Error::Usage("--recent-days must be at least 1".into()));
    }
    let mirror = ctx.mirror().await?;
    if !p.ids.is_empty() {
        let unknown = ctx.db.unknown_ids(mirror.name(), &p.ids).await?;
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NotFound(format!(
                "no live mirrored file in bucket {} with id {list}",
                mirror.name()
            )));
        }
    }
    let origin = ctx.origin().await?;
    let record = !ctx.read_only;
    audited(ctx, "validate", &p, record, progress, || {
        check_all(
            &ctx.db,
            ctx.config.policy.validate_recent_days,
            origin,
            mirror,
            &p,
            record,
            progress,
        )
    })
    .await
}

async fn check_all(
    db: &Db,
    default_days: u32,
    origin: &Origin,
    mirror: &S3Bucket,
    p: &ValidateParams,
    record: bool,
    progress: &Progress,
) -> Result<ValidateReport> {
    let (scope, label) = if !p.ids.is_empty() {
        let mut ids = p.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        (FileScope::Ids(ids), "ids".to_string())
    } else if p.all {
        (FileScope::All, "all".to_string())
    } else {
        let days = p.recent_days.unwrap_or(default_days).max(1);
        (
            FileScope::DownloadedSince(Utc::now() - TimeDelta::days(i64::from(days))),
            format!("downloaded in the last {days} days"),
        )
    };
    let keep_fresh_items = matches!(scope, FileScope::Ids(_));
    let total = db.count_scope(mirror.name(), &scope).await?;
    let mut report = ValidateReport {
        scope: label,
        recorded: record,
        ..Default::default()
    };
    progress.update(0, Some(total as u64), "validating");

    // The pipeline owns clones of its handles (cheap: shared clients) so its futures are
    // `Send + 'static` and the whole operation can run on a spawned task.
    let (origin, mirror) = (origin.clone(), mirror.clone());
    // `--all` visits every live file, so the bucket's listing (1,000 sizes per request) answers
    // for the mirror side; a narrower scope HEADs only the objects it needs.
    let rows: BoxStream<'static, Result<(LifecycleRow, Listed)>> =
        if matches!(scope, FileScope::All) {
            rows_with_listing(db.clone(), mirror.clone()).boxed()
        } else {
            paged_rows(db.clone(), mirror.name().to_string(), scope)
                .map_ok(|row| (row, Listed::Unread))
                .boxed()
        };
    let results = rows
        .map_ok(move |(row, listed)| {
            let (origin, mirror) = (origin.clone(), mirror.clone());
            // Each check is its own task, so building, signing and parsing the requests runs
            // on every worker thread rather than all on the thread that polls this stream.
            let check = tokio::spawn(async move { check_one(&origin, &mirror, row, listed).await });
            async move {
                check
                    .await
                    .map_err(|e| Error::runtime(format!("a validation check stopped: {e}")))?
            }
        })
        .try_buffer_unordered(p.concurrency)
        .chunks(WRITE_BATCH);
    futures::pin_mut!(results);
    // The previous batch's write runs while the next batch is checked; at most one is pending,
    // and it is awaited before the next one starts and before returning, so a stop (error or
    // cancel) never leaves results unrecorded behind a report that counts them.
    let mut writing: Option<tokio::task::JoinHandle<Result<()>>> = None;
    let outcome = check_batches(
        db,
        &mut results,
        &mut report,
        keep_fresh_items,
        record,
        total,
        progress,
        &mut writing,
    )
    .await;
    let written = match writing.take() {
        Some(w) => w
            .await
            .map_err(|e| Error::runtime(format!("recording validation results stopped: {e}")))
            .and_then(|r| r),
        None => Ok(()),
    };
    outcome?;
    written?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn check_batches<S>(
    db: &Db,
    results: &mut S,
    report: &mut ValidateReport,
    keep_fresh_items: bool,
    record: bool,
    total: i64,
    progress: &Progress,
    writing: &mut Option<tokio::task::JoinHandle<Result<()>>>,
) -> Result<()>
where
    S: futures::Stream<Item = Vec<Result<(LifecycleRow, ValidateStatus, Option<String>)>>> + Unpin,
{
    while let Some(batch) = results.next().await {
        let mut fresh = Vec::new();
        let mut cleared = Vec::new();
        let mut stale = Vec::new();
        for r in batch {
            let (row, status, reason) = r?;
            report.checked += 1;
            match status {
                ValidateStatus::Fresh => {
                    report.fresh += 1;
                    if row.is_stale {
                        cleared.push(row.id);
                    } else {
                        fresh.push(row.id);
                    }
                }
                ValidateStatus::Stale | ValidateStatus::Missing => {
                    if status == ValidateStatus::Stale {
                        report.stale += 1;
                    } else {
                        report.missing_in_mirror += 1;
                    }
                    if !row.is_stale {
                        report.newly_stale += 1;
                    }
                    stale.push(StaleMark {
                        id: row.id,
                        reason: reason.clone().unwrap_or_else(|| "stale".into()),
                    });
                }
                ValidateStatus::OriginError => report.origin_errors += 1,
            }
            if status != ValidateStatus::Fresh || keep_fresh_items {
                if report.items.len() < MAX_ITEMS {
                    report.items.push(ValidateItem {
                        id: row.id,
                        key: row.key,
                        status,
                        reason,
                    });
                } else {
                    report.items_omitted += 1;
                }
            }
        }
        if let Some(previous) = writing.take() {
            previous.await.map_err(|e| {
                Error::runtime(format!("recording validation results stopped: {e}"))
            })??;
        }
        if record {
            let db = db.clone();
            *writing = Some(tokio::spawn(async move {
                db.record_validation(&fresh, &cleared, &stale, Utc::now())
                    .await
            }));
        }
        progress.update(report.checked, Some(total as u64), "validating");
        // Stop between batches; the caller waits for the last batch's write.
        progress.check()?;
    }
    Ok(())
}

/// The rows in scope, one page at a time, by id (rows changed behind the scan do not shift pages).
pub(crate) fn paged_rows(
    db: Db,
    bucket: String,
    scope: FileScope,
) -> impl futures::Stream<Item = Result<LifecycleRow>> + Send + 'static {
    stream::try_unfold(Some(0i64), move |after| {
        let (db, bucket, scope) = (db.clone(), bucket.clone(), scope.clone());
        async move {
            let Some(after) = after else {
                return Ok::<_, Error>(None);
            };
            let page = db.lifecycle_page(&bucket, &scope, after, PAGE).await?;
            if page.is_empty() {
                return Ok(None);
            }
            let next = match page.last() {
                Some(last) if page.len() as i64 == PAGE => Some(last.id),
                _ => None,
            };
            Ok(Some((stream::iter(page.into_iter().map(Ok)), next)))
        }
    })
    .try_flatten()
}

/// What the mirror bucket's listing said about a row's object.
#[derive(Debug)]
enum Listed {
    /// The listing was not read (a narrower scope): HEAD the object.
    Unread,
    /// Listed with this size.
    Found(ObjectInfo),
    /// The listing went past the key without it: the object does not exist.
    Absent,
}

/// The live files of the mirror bucket in byte order, each with what the bucket's listing says
/// of its object: a merge of two ordered streams, each fetched a few pages ahead, so memory
/// stays a few pages whatever the bucket's size. Either side out of byte order is an error,
/// never a file wrongly called missing.
fn rows_with_listing(
    db: Db,
    mirror: S3Bucket,
) -> impl futures::Stream<Item = Result<(LifecycleRow, Listed)>> + Send + 'static {
    let rows = ahead(rows_by_key(db, mirror.name().to_string()));
    let objects = ahead(mirror.list_pages(String::new(), None, LIST_PAGE));
    struct Merge {
        rows: BoxStream<'static, Result<Vec<LifecycleRow>>>,
        objects: BoxStream<'static, Result<Vec<ObjectInfo>>>,
        listed: VecDeque<ObjectInfo>,
        listing_done: bool,
        last_row_key: Option<String>,
        last_object_key: Option<String>,
    }
    let start = Merge {
        rows,
        objects,
        listed: VecDeque::new(),
        listing_done: false,
        last_row_key: None,
        last_object_key: None,
    };
    let bucket = mirror.name().to_string();
    stream::try_unfold(start, move |mut m| {
        let bucket = bucket.clone();
        async move {
            let Some(page) = m.rows.next().await.transpose()? else {
                return Ok(None);
            };
            let mut out = Vec::with_capacity(page.len());
            for row in page {
                if m.last_row_key.as_deref() >= Some(row.key.as_str()) {
                    return Err(Error::runtime(format!(
                        "validate: the database returned key {:?} out of byte order; nothing more checked",
                        row.key
                    )));
                }
                m.last_row_key = Some(row.key.clone());
                // Drop listed objects before this key (objects without a live row).
                loop {
                    match m.listed.front() {
                        Some(o) if o.key < row.key => {
                            m.listed.pop_front();
                        }
                        Some(_) => break,
                        None if m.listing_done => break,
                        None => match m.objects.next().await.transpose()? {
                            Some(objects) => {
                                for o in objects {
                                    if m.last_object_key.as_deref() >= Some(o.key.as_str()) {
                                        return Err(Error::runtime(format!(
                                            "bucket {bucket}: listing returned key {:?} out of byte order; nothing more checked",
                                            o.key
                                        )));
                                    }
                                    m.last_object_key = Some(o.key.clone());
                                    m.listed.push_back(o);
                                }
                            }
                            None => m.listing_done = true,
                        },
                    }
                }
                let listed = match m.listed.front() {
                    Some(o) if o.key == row.key => m
                        .listed
                        .pop_front()
                        .map_or(Listed::Absent, Listed::Found),
                    _ => Listed::Absent,
                };
                out.push(Ok((row, listed)));
            }
            Ok(Some((stream::iter(out), m)))
        }
    })
    .try_flatten()
}

/// Live files of `bucket` a page at a time, in byte order of their keys.
fn rows_by_key(
    db: Db,
    bucket: String,
) -> impl futures::Stream<Item = Result<Vec<LifecycleRow>>> + Send + 'static {
    stream::try_unfold(Some(None::<String>), move |after| {
        let (db, bucket) = (db.clone(), bucket.clone());
        async move {
            let Some(after) = after else {
                return Ok::<_, Error>(None);
            };
            let page = db
                .lifecycle_page_by_key(&bucket, after.as_deref(), PAGE)
                .await?;
            if page.is_empty() {
                return Ok(None);
            }
            let next = match page.last() {
                Some(last) if page.len() as i64 == PAGE => Some(Some(last.key.clone())),
                _ => None,
            };
            Ok(Some((page, next)))
        }
    })
}

/// Runs `pages` on its own task, `PAGES_AHEAD` pages ahead of the consumer, so a database
/// query or a listing request overlaps the checks instead of pausing them. The task stops when
/// the consumer is dropped.
fn ahead<T: Send + 'static>(
    pages: impl futures::Stream<Item = Result<T>> + Send + 'static,
) -> BoxStream<'static, Result<T>> {
    let (tx, rx) = tokio::sync::mpsc::channel(PAGES_AHEAD);
    tokio::spawn(async move {
        futures::pin_mut!(pages);
        while let Some(page) = pages.next().await {
            let failed = page.is_err();
            if tx.send(page).await.is_err() || failed {
                break;
            }
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (p, rx)) }).boxed()
}

/// HEADs the origin (and the mirror object, unless the listing already answered) and compares
/// both with the row. A mirror that cannot be asked fails the run (every other file would fail
/// the same way); an origin that cannot be asked is that file's `origin_error`.
async fn check_one(
    origin: &Origin,
    mirror: &S3Bucket,
    row: LifecycleRow,
    listed: Listed,
) -> Result<(LifecycleRow, ValidateStatus, Option<String>)> {
    let object = |o: ObjectInfo| ObjectMeta {
        size: o.size,
        etag: o.etag,
        last_modified: o.last_modified,
        content_type: None,
        checksum: None,
    };
    let (o, m) = match listed {
        Listed::Unread => {
            let (o, m) = tokio::join!(origin.head(&row.origin_url), mirror.head(&row.key));
            (o, m?)
        }
        Listed::Found(info) => (origin.head(&row.origin_url).await, Some(object(info))),
        // A missing object is `missing` whatever the origin says: no origin request.
        Listed::Absent => (Ok(None), None),
    };
    let (status, reason) = classify(&row, o, m);
    Ok((row, status, reason))
}

/// The verdict for one file from what the origin and the mirror said.
pub fn classify(
    row: &LifecycleRow,
    origin: Result<Option<OriginMeta>>,
    mirror: Option<ObjectMeta>,
) -> (ValidateStatus, Option<String>) {
    let Some(object) = mirror else {
        return (ValidateStatus::Missing, Some("missing".into()));
    };
    let now = match origin {
        Ok(Some(m)) => m,
        Ok(None) => {
            return (
                ValidateStatus::OriginError,
                Some("gone at the origin (404)".into()),
            )
        }
        Err(e) => return (ValidateStatus::OriginError, Some(e.to_string())),
    };
    if let (Some(now_size), Some(was)) = (now.size, row.origin_size) {
        if i64::try_from(now_size).ok() != Some(was) {
            return (
                ValidateStatus::Stale,
                Some(format!("origin size changed: {was} -> {now_size} bytes")),
            );
        }
    }
    if let (Some(now_etag), Some(was)) = (now.etag.as_deref(), row.origin_etag.as_deref()) {
        if now_etag != was {
            return (
                ValidateStatus::Stale,
                Some(format!("origin ETag changed: {was} -> {now_etag}")),
            );
        }
    }
    if i64::try_from(object.size).ok() != Some(row.size) {
        return (
            ValidateStatus::Stale,
            Some(format!(
                "mirror object is {} bytes, the row says {}",
                object.size, row.size
            )),
        );
    }
    (ValidateStatus::Fresh, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> LifecycleRow {
        LifecycleRow {
            id: 1,
            key: "k".into(),
            size: 10,
            is_stale: false,
            stale_reason: None,
            origin_file_id: 1,
            origin_url: "k".into(),
            origin_size: Some(10),
            origin_etag: Some("e1".into()),
        }
    }

    fn object(size: u64) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            size,
            etag: None,
            last_modified: None,
            content_type: None,
            checksum: None,
        })
    }

    fn origin(size: u64, etag: &str) -> Result<Option<OriginMeta>> {
        Ok(Some(OriginMeta {
            size: Some(size),
            etag: Some(etag.into()),
            last_modified: None,
            content_type: None,
        }))
    }

    #[test]
    fn verdicts() {
        assert_eq!(
            classify(&row(), origin(10, "e1"), object(10)).0,
            ValidateStatus::Fresh
        );
        assert_eq!(
            classify(&row(), origin(11, "e1"), object(10)).0,
            ValidateStatus::Stale
        );
        assert_eq!(
            classify(&row(), origin(10, "e2"), object(10)).0,
            ValidateStatus::Stale
        );
        assert_eq!(
            classify(&row(), origin(10, "e1"), object(9)).0,
            ValidateStatus::Stale
        );
        assert_eq!(
            classify(&row(), origin(10, "e1"), None).0,
            ValidateStatus::Missing
        );
        assert_eq!(
            classify(&row(), Ok(None), object(10)).0,
            ValidateStatus::OriginError
        );
        assert_eq!(
            classify(&row(), Err(Error::runtime("down")), object(10)).0,
            ValidateStatus::OriginError
        );
    }
}
