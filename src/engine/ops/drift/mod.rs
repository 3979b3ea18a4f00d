//! `drift`: where the main bucket, the backup bucket and `backup_inventory` disagree, and the
//! repair that brings backup and inventory in line with main.
//!
//! The key space under the prefix is cut into ranges (planned by probing the main bucket's
//! key tree, when the first pages of a side, listed to find out, do not hold all of it; the
//! ranges those pages cover are served from them), and each range is merged on its own: both
//! listings and the inventory are read page by page in UTF-8 byte order and walked together,
//! so memory is bounded by pages × concurrency whatever the bucket size. Only the keys that disagree are kept, and
//! only when asked: a repair takes them from a bounded queue while the merge goes on.
//!
//! Keys under the archive's prefix, when the archive lives in the main bucket, are the
//! archive's Parquet files, not main's objects: they are not compared. Keys with replication
//! still open (a `replication_tasks` row `pending` or `running`) are `pending`, not drift.

mod classify;
mod listing;
mod merge;
mod plan;
mod repair;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::model::InventoryRow;
use crate::engine::s3::ObjectInfo;
use crate::engine::Ctx;

/// Keys per listing request: the S3 maximum, so a range costs as few round trips as possible.
pub(super) const PAGE: i32 = 1000;
/// Inventory rows per query.
pub(super) const INVENTORY_PAGE: i64 = 1000;
/// Pages a listing may fetch ahead of the merge. Bounds memory; 1 keeps a request in flight
/// while the merge consumes the previous page.
pub(super) const READ_AHEAD: usize = 1;
/// Default of `DriftParams::split_above_pages`. These first pages of each side are listed
/// before planning and serve the ranges they cover; at 10,000 keys per side on loopback one
/// range per side took 0.16-0.20 s against 0.31-0.38 s split in 8 (BENCHMARKS.md, "drift
/// after issue 16").
const SPLIT_ABOVE_PAGES: usize = 10;
/// Key ranges listed at once unless `-j` says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Upper bound on the one-key listings the planner spends finding range boundaries.
pub(super) const MAX_PROBES: usize = 600;
/// Disagreeing keys the merge may queue ahead of the repair: the merge waits when the repair
/// falls behind, so memory does not grow with the number of differences.
const REPAIR_QUEUE: usize = 256;
/// Inventory rows a repair writes per transaction.
pub(super) const REPAIR_ROWS: usize = 500;
/// Attempts per listing page on top of the SDK's own retries: a throttled or flaky server in
/// the middle of a long listing should not throw away the whole run.
pub(super) const LIST_ATTEMPTS: u32 = 4;
/// The largest Unicode scalar: appended to a prefix, it sorts after every key under it that
/// does not itself contain this character.
pub(super) const MAX_CHAR: char = '\u{10FFFF}';

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
    /// number of differences (a repair does not need them: it repairs while it merges).
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
    /// Replication of this key is still open (a task `pending` or `running`): not compared,
    /// not repaired; the replication worker brings it in line.
    Pending,
}

impl PairStatus {
    /// The mark rclone's `--combined` output uses. rclone has no "unverifiable": it prints
    /// such pairs as `=`, which would claim they are the same, so they get `!` like a
    /// pair whose hash could not be read. A pending key gets `!` too ("not decided"): `+` or
    /// `*` would tell a script to copy what replication is copying already, `=` would claim
    /// an equality nobody checked. The JSON's status tells the three apart.
    pub fn mark(self) -> char {
        match self {
            PairStatus::Same => '=',
            PairStatus::MissingInBackup => '+',
            PairStatus::ExtraInBackup => '-',
            PairStatus::Differ => '*',
            PairStatus::Unverifiable | PairStatus::Error | PairStatus::Pending => '!',
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

/// The counts of a drift run. Every key in either bucket is counted in exactly one of `same`,
/// `missing_in_backup`, `extra_in_backup`, `differ`, `unverifiable`, `pending` and `errors`.
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
    /// Keys with replication still open: not drift (they do not make the exit code 3). A key
    /// only the inventory has counts here too when its replication is open.
    pub pending: u64,
}

impl DriftSummary {
    /// Whether anything disagrees (or could not be checked). Pending keys do not count.
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
    /// Keys left alone because main changed since the listing: a copy whose source no longer
    /// had the listed ETag (or was gone), an extra object main now has (`--delete-extra`
    /// HEADs main before each delete). The next check compares them again.
    pub main_changed: u64,
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
    /// Keys under this prefix were not compared: the archive's Parquet files, when the archive
    /// lives in the main bucket (`buckets.archive` unset, or the same bucket and endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded_prefix: Option<String>,
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
            Some(r) if !r.dry_run => {
                !r.failures.is_empty() || r.skipped > 0 || r.kept_extra > 0 || r.main_changed > 0
            }
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
    let exclude = archive_exclusion(ctx, &main, &params.prefix);
    audited(ctx, "drift", &params, mutating, progress, || async {
        let (queue, fixes) = if params.repair {
            let (tx, rx) = mpsc::channel(REPAIR_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let token = progress.token();
        // The merge stops at once on cancel (dropping its listings and the queue's sender);
        // the repair finishes the copies under way, writes their rows and stops.
        let scan = async {
            let scan = merge::compare(&ctx.db, &main, &backup, exclude, &params, progress, queue);
            tokio::select! {
                biased;
                _ = token.cancelled() => Err(Error::Cancelled),
                r = scan => r,
            }
        };
        let fix = async {
            match fixes {
                Some(rx) => {
                    Some(repair::repair(&ctx.db, &main, &backup, &params, rx, progress).await)
                }
                None => None,
            }
        };
        let (report, repaired) = tokio::join!(scan, fix);
        let mut report = report?;
        progress.check()?;
        report.repair = repaired;
        Ok(report)
    })
    .await
}

/// The archive's key prefix relative to main's, when the archive lives in the main bucket
/// (same bucket on the same endpoint, the default config): its keys are not compared. Not
/// when the archive prefix is empty (it would be every key) or when the caller's `--prefix`
/// is inside it (they asked for the archive).
fn archive_exclusion(
    ctx: &Ctx,
    main: &crate::engine::s3::S3Bucket,
    prefix: &str,
) -> Option<String> {
    let archive = ctx.config.archive_bucket().ok()?;
    if archive.bucket != main.name() || archive.endpoint_label() != main.endpoint() {
        return None;
    }
    let relative = archive.prefix.strip_prefix(main.prefix())?;
    (!relative.is_empty() && !prefix.starts_with(relative)).then(|| relative.to_string())
}

pub(super) fn strip(base: &str, key: String) -> String {
    match key.strip_prefix(base) {
        Some(rest) if !base.is_empty() => rest.to_string(),
        _ => key,
    }
}
