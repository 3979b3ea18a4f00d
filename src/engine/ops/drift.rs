//! `drift`: where the main bucket, the backup bucket and `backup_inventory` disagree, and the
//! repair that brings backup and inventory in line with main.
//!
//! The key space under the prefix is cut into ranges (planned by probing the main bucket's
//! key tree), and each range is merged on its own: both listings and the inventory are read
//! page by page in UTF-8 byte order and walked together, so memory is bounded by
//! pages × concurrency whatever the bucket size. Only the keys that disagree are kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::engine::db::Db;
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::model::InventoryRow;
use crate::engine::s3::{ObjectInfo, S3Bucket};
use crate::engine::Ctx;

/// Keys per listing request: the S3 maximum, so a range costs as few round trips as possible.
const PAGE: i32 = 1000;
/// Inventory rows per query.
const INVENTORY_PAGE: i64 = 1000;
/// Pages a listing may fetch ahead of the merge. Bounds memory; 1 keeps a request in flight
/// while the merge consumes the previous page.
const READ_AHEAD: usize = 1;
/// Default of `DriftParams::split_above_pages`.
const SPLIT_ABOVE_PAGES: usize = 5;
/// Key ranges listed at once unless `-j` says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Upper bound on the one-key listings the planner spends finding range boundaries.
const MAX_PROBES: usize = 600;
/// Attempts per listing page on top of the SDK's own retries: a throttled or flaky server in
/// the middle of a long listing should not throw away the whole run.
const LIST_ATTEMPTS: u32 = 4;
/// The largest Unicode scalar: appended to a prefix, it sorts after every key under it that
/// does not itself contain this character.
const MAX_CHAR: char = '\u{10FFFF}';

/// Receives one `--combined` line: the mark (`=`, `+`, `-`, `*`, `!`) and the key.
pub type LineSink = Arc<dyn Fn(char, &str) + Send + Sync>;

/// What to compare and whether to repair.
#[derive(Clone, Serialize)]
pub struct DriftParams {
    /// Only keys under this prefix (relative to the buckets' configured prefixes).
    pub prefix: String,
    /// Key ranges listed at once.
    pub concurrency: usize,
    /// A side with at most this many pages of keys is listed as one range: planning a split
    /// costs list requests, which some servers answer by walking the whole bucket.
    pub split_above_pages: usize,
    /// Stream and hash both bodies of pairs that size, ETag and checksums cannot decide.
    pub checksum: bool,
    /// Copy missing and different objects main → backup and fix the inventory.
    pub repair: bool,
    /// With `repair`: also delete objects that only the backup has.
    pub delete_extra: bool,
    /// With `repair`: report the plan, change nothing.
    pub dry_run: bool,
    /// Called for every compared key, in rclone's `--combined` form.
    #[serde(skip)]
    pub on_line: Option<LineSink>,
    /// Keep the disagreeing keys in the report's `items`. A caller that only wants the
    /// `--combined` lines and the counts turns it off, so memory does not grow with the
    /// number of differences. A repair keeps them whatever this says: they are its plan.
    pub keep_items: bool,
}

impl Default for DriftParams {
    fn default() -> Self {
        DriftParams {
            prefix: String::new(),
            concurrency: DEFAULT_CONCURRENCY,
            split_above_pages: SPLIT_ABOVE_PAGES,
            checksum: false,
            repair: false,
            delete_extra: false,
            dry_run: false,
            keep_items: true,
            on_line: None,
        }
    }
}

/// How a key's main and backup copies compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PairStatus {
    Same,
    MissingInBackup,
    ExtraInBackup,
    Differ,
    /// Same size, but nothing comparable says whether the bytes are equal.
    Unverifiable,
    /// A request about this key failed.
    Error,
}

impl PairStatus {
    /// The mark rclone's `--combined` output uses. rclone has no "unverifiable": it prints
    /// such pairs as `=`, which would claim they are the same, so they get `!` like a
    /// pair whose hash could not be read.
    pub fn mark(self) -> char {
        match self {
            PairStatus::Same => '=',
            PairStatus::MissingInBackup => '+',
            PairStatus::ExtraInBackup => '-',
            PairStatus::Differ => '*',
            PairStatus::Unverifiable | PairStatus::Error => '!',
        }
    }
}

/// How a key's objects compare with its inventory row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryStatus {
    /// An object with no live row.
    InventoryMissing,
    /// A live row with no object in either bucket.
    InventoryOrphaned,
    /// A live row whose size, ETag or `is_backed_up` disagrees with the buckets.
    InventoryDiffer,
}

/// One side of a key, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectSide {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

impl From<&ObjectInfo> for ObjectSide {
    fn from(o: &ObjectInfo) -> Self {
        ObjectSide {
            size: o.size,
            etag: o.etag.clone(),
            last_modified: o.last_modified,
        }
    }
}

/// A key where something disagrees.
#[derive(Debug, Clone, Serialize)]
pub struct DriftItem {
    pub key: String,
    /// Main vs backup; `null` when the key is in neither bucket (an orphaned inventory row).
    pub status: Option<PairStatus>,
    /// Buckets vs inventory; `null` when the inventory agrees.
    pub inventory_status: Option<InventoryStatus>,
    /// Why, in words: "size 10 vs 12", "multipart ETags with 3 and 1 parts".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub main: Option<ObjectSide>,
    pub backup: Option<ObjectSide>,
    pub inventory: Option<InventoryRow>,
}

/// The counts of a drift run. Every compared key is counted in exactly one of `same`,
/// `missing_in_backup`, `extra_in_backup`, `differ`, `unverifiable` and `errors`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DriftSummary {
    pub same: u64,
    pub missing_in_backup: u64,
    pub extra_in_backup: u64,
    pub differ: u64,
    pub unverifiable: u64,
    pub inventory_missing: u64,
    pub inventory_orphaned: u64,
    pub inventory_differ: u64,
    pub errors: u64,
}

impl DriftSummary {
    /// Whether anything disagrees (or could not be checked).
    pub fn has_drift(&self) -> bool {
        self.missing_in_backup
            + self.extra_in_backup
            + self.differ
            + self.unverifiable
            + self.inventory_missing
            + self.inventory_orphaned
            + self.inventory_differ
            + self.errors
            > 0
    }
}

/// One bucket as the report names it.
#[derive(Debug, Clone, Serialize)]
pub struct BucketName {
    pub bucket: String,
    pub endpoint: String,
}

/// What a repair did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Objects copied main → backup (missing or different).
    pub copied: u64,
    pub copied_bytes: u64,
    /// Whether copies were server-side (same endpoint) or streamed through this process.
    pub server_side_copy: bool,
    /// Extra backup objects deleted (only with `delete_extra`).
    pub deleted: u64,
    /// Extra backup objects left alone (no `delete_extra`).
    pub kept_extra: u64,
    /// Pairs not touched because they could not be verified or failed to compare.
    pub skipped: u64,
    /// Inventory rows inserted or updated to match the buckets.
    pub inventory_written: u64,
    /// Inventory rows soft-deleted because no bucket holds the object.
    pub inventory_soft_deleted: u64,
    pub failures: Vec<RepairFailure>,
}

/// A repair action that failed.
#[derive(Debug, Clone, Serialize)]
pub struct RepairFailure {
    pub key: String,
    pub action: String,
    pub error: String,
}

/// The result of a drift run.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub main: BucketName,
    pub backup: BucketName,
    pub prefix: String,
    pub checksum: bool,
    pub summary: DriftSummary,
    /// Objects listed in main, objects listed in backup, live inventory rows read.
    pub main_objects: u64,
    pub backup_objects: u64,
    pub inventory_rows: u64,
    /// Key ranges the listing was split into.
    pub ranges: usize,
    pub elapsed_seconds: f64,
    /// Every key that disagrees, in byte order.
    pub items: Vec<DriftItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

impl Report for DriftReport {
    /// Without a repair any drift is a problem. After a repair, only what is still wrong is:
    /// failures, pairs that could not be verified or compared, extra objects kept.
    fn found_problems(&self) -> bool {
        match &self.repair {
            Some(r) if !r.dry_run => !r.failures.is_empty() || r.skipped > 0 || r.kept_extra > 0,
            _ => self.summary.has_drift(),
        }
    }

    /// Repair actions that failed: the run completed, but not everything was fixed.
    fn failures(&self) -> u64 {
        self.repair.as_ref().map_or(0, |r| r.failures.len() as u64)
    }
}

/// Compares main, backup and inventory; with `repair`, fixes backup and inventory.
pub async fn run(ctx: &Ctx, params: DriftParams, progress: &Progress) -> Result<DriftReport> {
    if params.delete_extra && !params.repair {
        return Err(Error::Usage(
            "--delete-extra only applies with --repair".into(),
        ));
    }
    if params.concurrency == 0 {
        return Err(Error::Usage("--concurrency must be at least 1".into()));
    }
    let mutating = params.repair && !params.dry_run;
    if mutating {
        ctx.check_writable("drift --repair")?;
    }
    // Config errors (no backup bucket) surface before anything is written.
    let main = ctx.main().await?.clone();
    let backup = ctx.backup().await?.clone();
    audited(ctx, "drift", &params, mutating, progress, || async {
        let mut report = compare(&ctx.db, &main, &backup, &params, progress).await?;
        if params.repair {
            report.repair =
                Some(repair(&ctx.db, &main, &backup, &params, &report.items, progress).await);
        }
        Ok(report)
    })
    .await
}

/// Counters the range workers share; read by the progress ticker.
#[derive(Default)]
struct Counters {
    main_listed: AtomicU64,
    backup_listed: AtomicU64,
    inventory_read: AtomicU64,
    same: AtomicU64,
    missing_in_backup: AtomicU64,
    extra_in_backup: AtomicU64,
    differ: AtomicU64,
    unverifiable: AtomicU64,
    errors: AtomicU64,
    inventory_missing: AtomicU64,
    inventory_orphaned: AtomicU64,
    inventory_differ: AtomicU64,
}

impl Counters {
    fn summary(&self) -> DriftSummary {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DriftSummary {
            same: g(&self.same),
            missing_in_backup: g(&self.missing_in_backup),
            extra_in_backup: g(&self.extra_in_backup),
            differ: g(&self.differ),
            unverifiable: g(&self.unverifiable),
            inventory_missing: g(&self.inventory_missing),
            inventory_orphaned: g(&self.inventory_orphaned),
            inventory_differ: g(&self.inventory_differ),
            errors: g(&self.errors),
        }
    }

    fn differences(&self) -> u64 {
        let s = self.summary();
        s.missing_in_backup
            + s.extra_in_backup
            + s.differ
            + s.unverifiable
            + s.errors
            + s.inventory_missing
            + s.inventory_orphaned
            + s.inventory_differ
    }
}

/// A slice of the key space: keys `k` with `after < k <= upto` (`None` = unbounded).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRange {
    after: Option<String>,
    upto: Option<String>,
}

/// What every range worker reads from.
struct Scan {
    db: Db,
    main: S3Bucket,
    backup: S3Bucket,
    params: DriftParams,
    counters: Counters,
    items: Mutex<Vec<DriftItem>>,
}

async fn compare(
    db: &Db,
    main: &S3Bucket,
    backup: &S3Bucket,
    params: &DriftParams,
    progress: &Progress,
) -> Result<DriftReport> {
    let started = Instant::now();
    progress.update(0, None, "planning key ranges");
    // Ranges beyond the worker count let a fast worker take over the slack of a dense range;
    // but each range also lists up to a page past its end, so not many more.
    let target = params.concurrency.saturating_mul(2).max(1);
    // Planning costs requests; a prefix that fits in one page per side does not need it.
    let mut boundaries = Vec::new();
    // Below a few pages per side one sequential range is faster than any split.
    if params.concurrency > 1
        && (more_than_pages(main, &params.prefix, params.split_above_pages).await?
            || more_than_pages(backup, &params.prefix, params.split_above_pages).await?)
    {
        boundaries = plan_boundaries(main, &params.prefix, target, params.concurrency).await?;
    }
    if boundaries.is_empty()
        && params.concurrency > 1
        && more_than_pages(backup, &params.prefix, params.split_above_pages).await?
    {
        // An empty or flat main bucket says nothing about the backup's key space.
        boundaries = plan_boundaries(backup, &params.prefix, target, params.concurrency).await?;
    }
    let ranges = ranges_from(boundaries);
    let n_ranges = ranges.len();
    tracing::debug!(
        "drift: {n_ranges} key ranges planned in {} ms",
        started.elapsed().as_millis()
    );
    let scan = Arc::new(Scan {
        db: db.clone(),
        main: main.clone(),
        backup: backup.clone(),
        params: params.clone(),
        counters: Counters::default(),
        items: Mutex::new(Vec::new()),
    });

    let ticker = {
        let scan = scan.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let c = &scan.counters;
                let m = c.main_listed.load(Ordering::Relaxed);
                let b = c.backup_listed.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                progress.update(
                    m + b,
                    None,
                    format!(
                        "listed main {m}, backup {b} ({:.0} objects/s), {} differences so far",
                        (m + b) as f64 / secs,
                        c.differences()
                    ),
                );
            }
        })
    };

    let results: Vec<Result<()>> = stream::iter(ranges)
        .map(|range| {
            let scan = scan.clone();
            let progress = progress.clone();
            async move {
                progress.check()?;
                scan_range(&scan, range).await
            }
        })
        .buffer_unordered(params.concurrency)
        .collect()
        .await;
    ticker.abort();
    for r in results {
        r?;
    }

    let c = &scan.counters;
    let mut items = std::mem::take(
        &mut *scan
            .items
            .lock()
            .map_err(|_| Error::runtime("drift: a range worker panicked"))?,
    );
    items.sort_by(|a, b| a.key.cmp(&b.key));
    let summary = c.summary();
    progress.update(
        c.main_listed.load(Ordering::Relaxed) + c.backup_listed.load(Ordering::Relaxed),
        None,
        format!("compared: {} differences", items.len()),
    );
    Ok(DriftReport {
        main: BucketName {
            bucket: main.name().to_string(),
            endpoint: main.endpoint().to_string(),
        },
        backup: BucketName {
            bucket: backup.name().to_string(),
            endpoint: backup.endpoint().to_string(),
        },
        prefix: params.prefix.clone(),
        checksum: params.checksum,
        summary,
        main_objects: c.main_listed.load(Ordering::Relaxed),
        backup_objects: c.backup_listed.load(Ordering::Relaxed),
        inventory_rows: c.inventory_read.load(Ordering::Relaxed),
        ranges: n_ranges,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        items,
        repair: None,
    })
}

/// Turns sorted boundary keys into ranges that together cover the whole key space once.
fn ranges_from(mut boundaries: Vec<String>) -> Vec<KeyRange> {
    boundaries.sort();
    boundaries.dedup();
    let mut ranges = Vec::with_capacity(boundaries.len() + 1);
    let mut after = None;
    for b in boundaries {
        ranges.push(KeyRange {
            after: after.clone(),
            upto: Some(b.clone()),
        });
        after = Some(b);
    }
    ranges.push(KeyRange { after, upto: None });
    ranges
}

/// Finds up to about `target` boundary keys that split the bucket's keys under `prefix` into
/// ranges of similar size, without listing the bucket: it walks the key tree one character
/// at a time, finding each prefix's children with one-key listings that skip from child to
/// child (`start_after = prefix + child + MAX_CHAR`). Any boundaries are correct, only the
/// balance depends on them, so it stops at the probe budget.
async fn plan_boundaries(
    bucket: &S3Bucket,
    prefix: &str,
    target: usize,
    concurrency: usize,
) -> Result<Vec<String>> {
    let Some(first) = first_key(bucket, prefix, None).await? else {
        return Ok(Vec::new());
    };
    let mut leaves = vec![Leaf {
        prefix: prefix.to_string(),
        first,
        terminal: false,
    }];
    let mut probes = 1usize;
    // Deeper than this, keys that share a long prefix are better served by one range.
    for _depth in 0..64 {
        let open = leaves.iter().filter(|l| !l.terminal).count();
        if leaves.len() >= target || open == 0 || probes + open > MAX_PROBES {
            break;
        }
        let expanded: Vec<Result<(Vec<Leaf>, usize)>> = stream::iter(leaves)
            .map(|leaf| async move {
                if leaf.terminal {
                    Ok((vec![leaf], 0))
                } else {
                    children(bucket, leaf).await
                }
            })
            .buffered(concurrency.max(1))
            .collect()
            .await;
        leaves = Vec::new();
        for r in expanded {
            let (kids, cost) = r?;
            probes += cost;
            leaves.extend(kids);
        }
    }
    // The first leaf starts at the beginning; every other leaf's first key starts a range.
    let starts: Vec<String> = leaves.into_iter().skip(1).map(|l| l.first).collect();
    Ok(evenly(starts, target.saturating_sub(1)))
}

/// At most `n` of `items`, evenly spaced: the last level of the key tree can multiply the
/// leaves by up to `MAX_CHILDREN`, and every range costs its own first requests.
fn evenly<T>(items: Vec<T>, n: usize) -> Vec<T> {
    if items.len() <= n {
        return items;
    }
    let len = items.len();
    items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) * n / len != i * n / len)
        .map(|(_, item)| item)
        .collect()
}

/// A node of the planner's key tree: every key under `prefix` is `>= first`.
struct Leaf {
    prefix: String,
    first: String,
    /// The leaf holds just the key equal to its prefix: nothing to split.
    terminal: bool,
}

/// Most children a prefix is split into per level; wide alphabets split over levels instead.
const MAX_CHILDREN: usize = 64;

/// The children of a leaf (each one character longer) and the probes spent finding them.
async fn children(bucket: &S3Bucket, leaf: Leaf) -> Result<(Vec<Leaf>, usize)> {
    let prefix = leaf.prefix;
    let mut out: Vec<Leaf> = Vec::new();
    let mut probes = 0;
    let mut next = Some(leaf.first);
    while let Some(key) = next.take() {
        if out.len() >= MAX_CHILDREN {
            // The rest of this prefix joins the last child's range.
            break;
        }
        probes += 1;
        let Some(c) = key.get(prefix.len()..).and_then(|rest| rest.chars().next()) else {
            // The key is the prefix itself: it is a leaf of its own; look past it.
            next = first_key(bucket, &prefix, Some(&key)).await?;
            out.push(Leaf {
                prefix: prefix.clone(),
                first: key,
                terminal: true,
            });
            continue;
        };
        let child = format!("{prefix}{c}");
        if out.last().is_some_and(|l| l.prefix == child) {
            // Keys containing MAX_CHAR defeat the skip; the rest stays in this child's range.
            break;
        }
        next = first_key(bucket, &prefix, Some(&format!("{child}{MAX_CHAR}"))).await?;
        out.push(Leaf {
            prefix: child,
            first: key,
            terminal: false,
        });
    }
    Ok((out, probes))
}

/// Whether `prefix` holds more than `pages` pages of keys: a few sequential list requests.
async fn more_than_pages(bucket: &S3Bucket, prefix: &str, pages: usize) -> Result<bool> {
    let full_prefix = format!("{}{prefix}", bucket.prefix());
    let mut token: Option<String> = None;
    for _ in 0..pages {
        let page = list_with_retry(bucket, &full_prefix, None, token.as_deref(), PAGE).await?;
        match page.1 {
            Some(next) => token = Some(next),
            None => return Ok(false),
        }
    }
    Ok(true)
}

/// The first key under `prefix` after `after` (relative keys).
async fn first_key(bucket: &S3Bucket, prefix: &str, after: Option<&str>) -> Result<Option<String>> {
    let base = bucket.prefix();
    let full_prefix = format!("{base}{prefix}");
    let full_after = after.map(|a| format!("{base}{a}"));
    let page = list_with_retry(bucket, &full_prefix, full_after.as_deref(), None, 1).await?;
    Ok(page.0.into_iter().next().map(|o| strip(base, o.key)))
}

fn strip(base: &str, key: String) -> String {
    match key.strip_prefix(base) {
        Some(rest) if !base.is_empty() => rest.to_string(),
        _ => key,
    }
}

/// One listing page with retries; returns the objects and the continuation token.
async fn list_with_retry(
    bucket: &S3Bucket,
    prefix: &str,
    after: Option<&str>,
    token: Option<&str>,
    max_keys: i32,
) -> Result<(Vec<ObjectInfo>, Option<String>)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match bucket.list_page(prefix, after, token, max_keys).await {
            Ok(p) => return Ok((p.objects, p.next_token)),
            Err(e) if attempt < LIST_ATTEMPTS && is_transient(&e) => {
                tracing::warn!("drift: retrying a listing page: {e}");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors worth another try: not a missing bucket, not bad credentials.
fn is_transient(e: &Error) -> bool {
    match e {
        Error::S3 { message, .. } => {
            !(message.contains("does not exist")
                || message.contains("access denied")
                || message.contains("credentials rejected"))
        }
        _ => false,
    }
}

/// Lists one bucket's keys in `range` on a task of its own, a page ahead of the merge.
fn spawn_listing(
    bucket: S3Bucket,
    prefix: String,
    range: KeyRange,
    counter: Arc<Scan>,
    is_main: bool,
) -> mpsc::Receiver<Result<Vec<ObjectInfo>>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let base = bucket.prefix().to_string();
        let full_prefix = format!("{base}{prefix}");
        let mut after = range.after.as_ref().map(|a| format!("{base}{a}"));
        let mut token: Option<String> = None;
        loop {
            let page = list_with_retry(
                &bucket,
                &full_prefix,
                after.as_deref(),
                token.as_deref(),
                PAGE,
            )
            .await;
            let (objects, next) = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut past_end = false;
            let mut keep = Vec::with_capacity(objects.len());
            for mut o in objects {
                o.key = strip(&base, o.key);
                if range.upto.as_ref().is_some_and(|u| o.key > *u) {
                    past_end = true;
                    break;
                }
                keep.push(o);
            }
            let c = if is_main {
                &counter.counters.main_listed
            } else {
                &counter.counters.backup_listed
            };
            c.fetch_add(keep.len() as u64, Ordering::Relaxed);
            if tx.send(Ok(keep)).await.is_err() || past_end {
                return;
            }
            match next {
                Some(t) => {
                    token = Some(t);
                    after = None;
                }
                None => return,
            }
        }
    });
    rx
}

/// Reads the inventory rows in `range` on a task of its own, a page ahead of the merge.
fn spawn_inventory(scan: Arc<Scan>, range: KeyRange) -> mpsc::Receiver<Result<Vec<InventoryRow>>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let prefix = scan.params.prefix.clone();
        let mut after = range.after.clone();
        loop {
            let page = scan
                .db
                .inventory_range(
                    &prefix,
                    after.as_deref(),
                    range.upto.as_deref(),
                    INVENTORY_PAGE,
                )
                .await;
            let rows = match page {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = rows.len() as i64 == INVENTORY_PAGE;
            after = rows.last().map(|r| r.path.clone());
            let mut past_prefix = false;
            let keep: Vec<InventoryRow> = rows
                .into_iter()
                .take_while(|r| {
                    past_prefix = !r.path.starts_with(&prefix);
                    !past_prefix
                })
                .collect();
            scan.counters
                .inventory_read
                .fetch_add(keep.len() as u64, Ordering::Relaxed);
            if tx.send(Ok(keep)).await.is_err() || past_prefix || !full {
                return;
            }
        }
    });
    rx
}

/// A page-buffered reader over a listing task.
struct Cursor<T> {
    rx: mpsc::Receiver<Result<Vec<T>>>,
    buf: std::vec::IntoIter<T>,
}

impl<T> Cursor<T> {
    fn new(rx: mpsc::Receiver<Result<Vec<T>>>) -> Self {
        Cursor {
            rx,
            buf: Vec::new().into_iter(),
        }
    }

    async fn next(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(x) = self.buf.next() {
                return Ok(Some(x));
            }
            match self.rx.recv().await {
                Some(Ok(page)) => self.buf = page.into_iter(),
                Some(Err(e)) => return Err(e),
                None => return Ok(None),
            }
        }
    }
}

/// Merges main, backup and inventory over one range, in byte order.
async fn scan_range(scan: &Arc<Scan>, range: KeyRange) -> Result<()> {
    let prefix = scan.params.prefix.clone();
    let mut mc = Cursor::new(spawn_listing(
        scan.main.clone(),
        prefix.clone(),
        range.clone(),
        scan.clone(),
        true,
    ));
    let mut bc = Cursor::new(spawn_listing(
        scan.backup.clone(),
        prefix,
        range.clone(),
        scan.clone(),
        false,
    ));
    let mut ic = Cursor::new(spawn_inventory(scan.clone(), range));
    let mut m = mc.next().await?;
    let mut b = bc.next().await?;
    let mut i = ic.next().await?;
    // Rust orders `str` by bytes, which for UTF-8 is S3's listing order.
    while let Some(key) = [
        m.as_ref().map(|o| o.key.as_str()),
        b.as_ref().map(|o| o.key.as_str()),
        i.as_ref().map(|r| r.path.as_str()),
    ]
    .into_iter()
    .flatten()
    .min()
    .map(str::to_string)
    {
        let mo = if m.as_ref().is_some_and(|o| o.key == key) {
            std::mem::replace(&mut m, mc.next().await?)
        } else {
            None
        };
        let bo = if b.as_ref().is_some_and(|o| o.key == key) {
            std::mem::replace(&mut b, bc.next().await?)
        } else {
            None
        };
        let io = if i.as_ref().is_some_and(|r| r.path == key) {
            std::mem::replace(&mut i, ic.next().await?)
        } else {
            None
        };
        classify(scan, key, mo, bo, io).await;
    }
    Ok(())
}

/// Decides one key and records it.
async fn classify(
    scan: &Scan,
    key: String,
    mo: Option<ObjectInfo>,
    bo: Option<ObjectInfo>,
    io: Option<InventoryRow>,
) {
    let c = &scan.counters;
    let (status, mut detail) = match (&mo, &bo) {
        (Some(m), Some(b)) => compare_pair(scan, &key, m, b).await,
        (Some(_), None) => (Some(PairStatus::MissingInBackup), None),
        (None, Some(_)) => (Some(PairStatus::ExtraInBackup), None),
        (None, None) => (None, None),
    };
    if let Some(s) = status {
        let counter = match s {
            PairStatus::Same => &c.same,
            PairStatus::MissingInBackup => &c.missing_in_backup,
            PairStatus::ExtraInBackup => &c.extra_in_backup,
            PairStatus::Differ => &c.differ,
            PairStatus::Unverifiable => &c.unverifiable,
            PairStatus::Error => &c.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(sink) = &scan.params.on_line {
            sink(s.mark(), &key);
        }
    }
    // The inventory describes the primary copy; the backup stands in when main lacks it.
    let object = mo.as_ref().or(bo.as_ref());
    let inventory_status = match (object, &io) {
        (Some(_), None) => Some(InventoryStatus::InventoryMissing),
        (None, Some(_)) => Some(InventoryStatus::InventoryOrphaned),
        (Some(o), Some(row)) => {
            let why = inventory_disagreement(o, row, bo.is_some());
            if let Some(w) = why {
                detail = Some(match detail {
                    Some(d) => format!("{d}; inventory {w}"),
                    None => format!("inventory {w}"),
                });
                Some(InventoryStatus::InventoryDiffer)
            } else {
                None
            }
        }
        (None, None) => None,
    };
    if let Some(s) = inventory_status {
        match s {
            InventoryStatus::InventoryMissing => &c.inventory_missing,
            InventoryStatus::InventoryOrphaned => &c.inventory_orphaned,
            InventoryStatus::InventoryDiffer => &c.inventory_differ,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
    let disagrees = status.is_some_and(|s| s != PairStatus::Same) || inventory_status.is_some();
    if disagrees && (scan.params.keep_items || scan.params.repair) {
        let item = DriftItem {
            key,
            status,
            inventory_status,
            detail,
            main: mo.as_ref().map(ObjectSide::from),
            backup: bo.as_ref().map(ObjectSide::from),
            inventory: io,
        };
        if let Ok(mut items) = scan.items.lock() {
            items.push(item);
        }
    }
}

/// Why an inventory row disagrees with the object it describes, if it does.
fn inventory_disagreement(o: &ObjectInfo, row: &InventoryRow, in_backup: bool) -> Option<String> {
    let mut why = Vec::new();
    if row.size < 0 || row.size as u64 != o.size {
        why.push(format!("size {} vs object {}", row.size, o.size));
    }
    if let (Some(re), Some(oe)) = (row.etag.as_deref(), o.etag.as_deref()) {
        if re.trim_matches('"') != oe {
            why.push(format!("etag {re} vs object {oe}"));
        }
    }
    if row.is_backed_up != in_backup {
        why.push(format!(
            "is_backed_up {} but the backup {}",
            row.is_backed_up,
            if in_backup { "has it" } else { "does not" }
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// How an ETag was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EtagKind {
    /// A single-part upload: the MD5 of the body.
    Md5,
    /// A multipart upload of this many parts: the MD5 of the part MD5s, then "-N".
    Multipart(u32),
}

fn etag_kind(etag: &str) -> Option<EtagKind> {
    match etag.rsplit_once('-') {
        Some((hash, n)) if hash.len() == 32 => n.parse().ok().map(EtagKind::Multipart),
        Some(_) => None,
        None if etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(EtagKind::Md5)
        }
        None => None,
    }
}

/// What size and ETag alone say of a pair present on both sides; `None` when they cannot tell.
fn compare_listed(
    m: &ObjectInfo,
    b: &ObjectInfo,
) -> std::result::Result<(PairStatus, Option<String>), String> {
    if m.size != b.size {
        return Ok((
            PairStatus::Differ,
            Some(format!("size {} vs {}", m.size, b.size)),
        ));
    }
    let (Some(me), Some(be)) = (m.etag.as_deref(), b.etag.as_deref()) else {
        return Err("no ETag on one side".into());
    };
    match (etag_kind(me), etag_kind(be)) {
        (Some(EtagKind::Md5), Some(EtagKind::Md5)) => Ok(etag_verdict(me, be)),
        (Some(EtagKind::Multipart(x)), Some(EtagKind::Multipart(y))) if x == y => {
            Ok(etag_verdict(me, be))
        }
        (Some(EtagKind::Multipart(x)), Some(EtagKind::Multipart(y))) => {
            Err(format!("multipart ETags with {x} and {y} parts"))
        }
        (Some(EtagKind::Multipart(x)), Some(EtagKind::Md5)) => {
            Err(format!("multipart ETag ({x} parts) vs single-part"))
        }
        (Some(EtagKind::Md5), Some(EtagKind::Multipart(y))) => {
            Err(format!("single-part ETag vs multipart ({y} parts)"))
        }
        // Opaque ETags (e.g. SSE-KMS) are not content hashes: equal or not, they prove nothing.
        _ => Err("ETags are not MD5s".into()),
    }
}

fn etag_verdict(me: &str, be: &str) -> (PairStatus, Option<String>) {
    if me == be {
        (PairStatus::Same, None)
    } else {
        (PairStatus::Differ, Some(format!("etag {me} vs {be}")))
    }
}

/// Compares a pair: size and listed ETags; then what HEAD says (ETags, for servers that leave
/// them out of listings, and full-object checksums); then, with `--checksum`, the bodies.
/// Never calls a pair the same without evidence.
async fn compare_pair(
    scan: &Scan,
    key: &str,
    m: &ObjectInfo,
    b: &ObjectInfo,
) -> (Option<PairStatus>, Option<String>) {
    let why = match compare_listed(m, b) {
        Ok((s, d)) => return (Some(s), d),
        Err(why) => why,
    };
    let main_key = format!("{}{key}", scan.main.prefix());
    let backup_key = format!("{}{key}", scan.backup.prefix());
    let heads = tokio::try_join!(
        scan.main.head_with_checksum(&main_key),
        scan.backup.head_with_checksum(&backup_key)
    );
    let why = match heads {
        Ok((Some(mh), Some(bh))) => {
            if let (Some(ms), Some(bs)) = (&mh.checksum, &bh.checksum) {
                if ms.split(':').next() == bs.split(':').next() {
                    return if ms == bs {
                        (Some(PairStatus::Same), None)
                    } else {
                        (
                            Some(PairStatus::Differ),
                            Some(format!("checksum {ms} vs {bs}")),
                        )
                    };
                }
            }
            let as_listed = |o: &ObjectInfo, etag: Option<String>| ObjectInfo {
                key: o.key.clone(),
                size: o.size,
                etag: etag.or_else(|| o.etag.clone()),
                last_modified: o.last_modified,
            };
            match compare_listed(&as_listed(m, mh.etag), &as_listed(b, bh.etag)) {
                Ok((s, d)) => return (Some(s), d),
                Err(why) => why,
            }
        }
        // Deleted or replaced between the listing and now: report what the listing saw.
        Ok(_) => why,
        Err(e) => return (Some(PairStatus::Error), Some(e.to_string())),
    };
    if !scan.params.checksum {
        return (
            Some(PairStatus::Unverifiable),
            Some(format!("{why}; --checksum hashes both bodies")),
        );
    }
    match tokio::try_join!(
        hash_body(&scan.main, &main_key),
        hash_body(&scan.backup, &backup_key)
    ) {
        Ok((mh, bh)) if mh == bh => (Some(PairStatus::Same), None),
        Ok((mh, bh)) => (
            Some(PairStatus::Differ),
            Some(format!("sha256 {mh} vs {bh}")),
        ),
        Err(e) => (Some(PairStatus::Error), Some(e.to_string())),
    }
}

/// SHA-256 of an object's body, streamed in 256 KiB reads.
async fn hash_body(bucket: &S3Bucket, key: &str) -> Result<String> {
    let Some(mut obj) = bucket.get(key, None).await? else {
        return Err(Error::S3 {
            bucket: bucket.name().to_string(),
            endpoint: bucket.endpoint().to_string(),
            message: format!("get {key:?}: disappeared while comparing"),
        });
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = obj.body.read(&mut buf).await.map_err(|e| Error::S3 {
            bucket: bucket.name().to_string(),
            endpoint: bucket.endpoint().to_string(),
            message: format!("get {key:?}: {e}"),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What repair decided for one key.
struct KeyPlan<'a> {
    item: &'a DriftItem,
    copy: bool,
    delete: bool,
}

/// Copies missing and different objects to the backup, deletes extras when asked, then
/// writes inventory rows that match what the buckets hold afterwards. Objects first, rows
/// second: a crash in between leaves rows that a rerun corrects, never rows that lie about
/// a copy that did not happen.
async fn repair(
    db: &Db,
    main: &S3Bucket,
    backup: &S3Bucket,
    params: &DriftParams,
    items: &[DriftItem],
    progress: &Progress,
) -> RepairReport {
    let server_side = main.same_endpoint(backup);
    let mut report = RepairReport {
        dry_run: params.dry_run,
        server_side_copy: server_side,
        ..Default::default()
    };
    let plans: Vec<KeyPlan> = items
        .iter()
        .map(|item| KeyPlan {
            item,
            copy: matches!(
                item.status,
                Some(PairStatus::MissingInBackup | PairStatus::Differ)
            ),
            delete: params.delete_extra && item.status == Some(PairStatus::ExtraInBackup),
        })
        .collect();
    report.skipped = items
        .iter()
        .filter(|i| matches!(i.status, Some(PairStatus::Unverifiable | PairStatus::Error)))
        .count() as u64;
    report.kept_extra = items
        .iter()
        .filter(|i| i.status == Some(PairStatus::ExtraInBackup) && !params.delete_extra)
        .count() as u64;

    // Copies, `concurrency` at a time.
    let to_copy: Vec<&DriftItem> = plans.iter().filter(|p| p.copy).map(|p| p.item).collect();
    let total = to_copy.len() as u64;
    let mut copied_ok = std::collections::HashSet::new();
    if params.dry_run {
        report.copied = total;
        report.copied_bytes = to_copy
            .iter()
            .filter_map(|i| i.main.as_ref())
            .map(|m| m.size)
            .sum();
        copied_ok.extend(to_copy.iter().map(|i| i.key.as_str()));
    } else {
        let results: Vec<(&DriftItem, Result<()>)> = stream::iter(to_copy)
            .map(|item| async move { (item, copy_one(main, backup, &item.key, server_side).await) })
            .buffer_unordered(params.concurrency.max(1))
            .collect()
            .await;
        for (item, r) in results {
            match r {
                Ok(()) => {
                    report.copied += 1;
                    report.copied_bytes += item.main.as_ref().map(|m| m.size).unwrap_or(0);
                    copied_ok.insert(item.key.as_str());
                }
                Err(e) => report.failures.push(RepairFailure {
                    key: item.key.clone(),
                    action: "copy".into(),
                    error: e.to_string(),
                }),
            }
            progress.update(report.copied, Some(total), "copying main → backup");
        }
    }

    // Deletes of extra backup objects.
    let to_delete: Vec<String> = plans
        .iter()
        .filter(|p| p.delete)
        .map(|p| format!("{}{}", backup.prefix(), p.item.key))
        .collect();
    let mut deleted_ok = std::collections::HashSet::new();
    if params.dry_run {
        report.deleted = to_delete.len() as u64;
        deleted_ok.extend(
            plans
                .iter()
                .filter(|p| p.delete)
                .map(|p| p.item.key.clone()),
        );
    } else if !to_delete.is_empty() {
        match backup.delete_batch(&to_delete).await {
            Ok(d) => {
                report.deleted = d.deleted.len() as u64;
                let base = backup.prefix();
                deleted_ok.extend(d.deleted.into_iter().map(|k| strip(base, k)));
                for (k, e) in d.failed {
                    report.failures.push(RepairFailure {
                        key: strip(base, k),
                        action: "delete".into(),
                        error: e,
                    });
                }
            }
            Err(e) => report.failures.push(RepairFailure {
                key: String::new(),
                action: "delete".into(),
                error: e.to_string(),
            }),
        }
    }

    // Inventory rows that describe the buckets after the changes above.
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut soft_deleted = 0u64;
    for p in &plans {
        let item = p.item;
        if matches!(
            item.status,
            Some(PairStatus::Unverifiable | PairStatus::Error)
        ) {
            continue;
        }
        let backup_has = if copied_ok.contains(item.key.as_str()) {
            true
        } else if deleted_ok.contains(&item.key) {
            false
        } else {
            item.backup.is_some()
        };
        let object = item.main.as_ref().or(if backup_has {
            item.backup.as_ref()
        } else {
            None
        });
        let want = match object {
            None => item.inventory.as_ref().map(|row| {
                soft_deleted += 1;
                InventoryRow {
                    deleted: true,
                    updated_at: now,
                    ..row.clone()
                }
            }),
            Some(o) => {
                let row = InventoryRow {
                    path: item.key.clone(),
                    size: o.size as i64,
                    etag: o.etag.clone(),
                    content_type: item.inventory.as_ref().and_then(|r| r.content_type.clone()),
                    is_backed_up: backup_has,
                    last_modified: o.last_modified,
                    deleted: false,
                    updated_at: now,
                };
                let unchanged = item.inventory.as_ref().is_some_and(|r| {
                    r.size == row.size
                        && r.etag.as_deref().map(|e| e.trim_matches('"')) == row.etag.as_deref()
                        && r.is_backed_up == row.is_backed_up
                });
                (!unchanged).then_some(row)
            }
        };
        rows.extend(want);
    }
    report.inventory_soft_deleted = soft_deleted;
    report.inventory_written = rows.len() as u64 - soft_deleted;
    if !params.dry_run && !rows.is_empty() {
        if let Err(e) = db.upsert_inventory(&rows).await {
            report.failures.push(RepairFailure {
                key: String::new(),
                action: "inventory".into(),
                error: e.to_string(),
            });
            report.inventory_written = 0;
            report.inventory_soft_deleted = 0;
        }
    }
    report
}

/// Copies one object main → backup: server-side on a shared endpoint, else streamed through
/// this process (memory bounded by the upload's part size).
async fn copy_one(main: &S3Bucket, backup: &S3Bucket, key: &str, server_side: bool) -> Result<()> {
    let src = format!("{}{key}", main.prefix());
    let dst = format!("{}{key}", backup.prefix());
    if server_side {
        return backup.copy_from(main, &src, &dst).await;
    }
    let Some(obj) = main.get(&src, None).await? else {
        return Err(Error::S3 {
            bucket: main.name().to_string(),
            endpoint: main.endpoint().to_string(),
            message: format!("get {src:?}: disappeared before the copy"),
        });
    };
    let content_type = obj.meta.content_type.clone();
    backup
        .put_stream(&dst, obj.body, content_type.as_deref())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size,
            etag: Some(etag.into()),
            last_modified: None,
        }
    }

    const A: &str = "0cc175b9c0f1b6a831c399e269772661";
    const B: &str = "92eb5ffee6ae2fec3ad71c777531578f";

    #[test]
    fn etags_decide_only_like_for_like() {
        assert_eq!(
            compare_listed(&obj("k", 1, A), &obj("k", 1, A)).map(|r| r.0),
            Ok(PairStatus::Same)
        );
        assert_eq!(
            compare_listed(&obj("k", 1, A), &obj("k", 1, B)).map(|r| r.0),
            Ok(PairStatus::Differ)
        );
        assert_eq!(
            compare_listed(&obj("k", 1, A), &obj("k", 2, A)).map(|r| r.0),
            Ok(PairStatus::Differ)
        );
        let a3 = format!("{A}-3");
        let b3 = format!("{B}-3");
        let a2 = format!("{A}-2");
        assert_eq!(
            compare_listed(&obj("k", 9, &a3), &obj("k", 9, &b3)).map(|r| r.0),
            Ok(PairStatus::Differ)
        );
        assert!(compare_listed(&obj("k", 9, &a3), &obj("k", 9, &a2)).is_err());
        assert!(compare_listed(&obj("k", 9, &a3), &obj("k", 9, A)).is_err());
        assert!(compare_listed(&obj("k", 9, "opaque"), &obj("k", 9, "opaque")).is_err());
    }

    #[test]
    fn evenly_keeps_at_most_n_spread_out() {
        let v: Vec<usize> = (0..97).collect();
        let kept = evenly(v.clone(), 15);
        assert_eq!(kept.len(), 15);
        assert!(kept
            .windows(2)
            .all(|w| w[1] - w[0] >= 6 && w[1] - w[0] <= 7));
        assert_eq!(evenly(v.clone(), 200), v);
        assert!(evenly(v, 0).is_empty());
    }

    #[test]
    fn ranges_cover_everything_once() {
        let r = ranges_from(vec!["m".into(), "c".into(), "m".into()]);
        assert_eq!(
            r,
            vec![
                KeyRange {
                    after: None,
                    upto: Some("c".into())
                },
                KeyRange {
                    after: Some("c".into()),
                    upto: Some("m".into())
                },
                KeyRange {
                    after: Some("m".into()),
                    upto: None
                },
            ]
        );
        assert_eq!(
            ranges_from(Vec::new()),
            vec![KeyRange {
                after: None,
                upto: None
            }]
        );
    }
}
