//! The merge of `drift`: runs the planned key ranges on parallel workers, walks each range's
//! main listing, backup listing and inventory rows together in byte order, and hands every
//! key to the classification. Only the keys that disagree are kept (when asked), or queued
//! for the repair.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::classify::classify;
use super::listing::{spawn_inventory, spawn_listing, spawn_pending, Cursor};
use super::plan::{list_head, plan_boundaries, ranges_from, KeyRange, ListingHead};
use super::{BucketName, DriftItem, DriftParams, DriftReport, DriftSummary};
use crate::engine::db::Db;
use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;
use crate::engine::s3::S3Bucket;

/// Counters the range workers share; read by the progress ticker.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) main_listed: AtomicU64,
    pub(super) backup_listed: AtomicU64,
    pub(super) inventory_read: AtomicU64,
    pub(super) same: AtomicU64,
    pub(super) missing_in_backup: AtomicU64,
    pub(super) extra_in_backup: AtomicU64,
    pub(super) differ: AtomicU64,
    pub(super) unverifiable: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) pending: AtomicU64,
    pub(super) inventory_missing: AtomicU64,
    pub(super) inventory_orphaned: AtomicU64,
    pub(super) inventory_differ: AtomicU64,
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
            pending: g(&self.pending),
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

/// What every range worker reads from.
pub(super) struct Scan {
    pub(super) db: Db,
    pub(super) main: S3Bucket,
    pub(super) backup: S3Bucket,
    pub(super) params: DriftParams,
    pub(super) counters: Counters,
    pub(super) items: Mutex<Vec<DriftItem>>,
    /// Keys under this prefix (relative) are the archive's: not compared.
    pub(super) exclude: Option<String>,
}

impl Scan {
    /// Whether a (relative) key is the archive's, not main's.
    pub(super) fn excluded(&self, key: &str) -> bool {
        self.exclude.as_deref().is_some_and(|x| key.starts_with(x))
    }
}

/// Aborts the progress ticker however the scan ends, cancellation included.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plans the ranges, merges them `concurrency` at a time and counts every key. With `repair`,
/// every disagreeing key is sent to it as soon as it is classified; the sender is dropped when
/// the merge ends (or is dropped, on cancel), which tells the repair that nothing more comes.
pub(super) async fn compare(
    db: &Db,
    main: &S3Bucket,
    backup: &S3Bucket,
    exclude: Option<String>,
    params: &DriftParams,
    progress: &Progress,
    repair: Option<mpsc::Sender<DriftItem>>,
) -> Result<DriftReport> {
    let started = Instant::now();
    progress.update(0, None, "planning key ranges");
    // Ranges beyond the worker count let a fast worker take over the slack of a dense range;
    // but each range also lists up to a page past its end, so not many more.
    let target = params.concurrency.saturating_mul(2).max(1);
    // Planning costs requests; a prefix that fits in a few pages per side does not need it.
    // Both sides' first pages are listed at once to find out, and kept for the ranges they
    // cover, so the check costs no listing of its own.
    let mut boundaries = Vec::new();
    let (main_head, backup_head) = if params.concurrency > 1 {
        let pages = params.split_above_pages;
        let (m, b) = tokio::try_join!(
            list_head(main, &params.prefix, pages),
            list_head(backup, &params.prefix, pages)
        )?;
        (Some(Arc::new(m)), Some(Arc::new(b)))
    } else {
        (None, None)
    };
    let big = |head: &Option<Arc<ListingHead>>| head.as_ref().is_some_and(|h| !h.complete);
    // Below a few pages per side one sequential range is faster than any split.
    if big(&main_head) || big(&backup_head) {
        boundaries = plan_boundaries(main, &params.prefix, target, params.concurrency).await?;
    }
    if boundaries.is_empty() && big(&backup_head) {
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
        exclude: exclude.clone(),
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
    let ticker = AbortOnDrop(ticker);

    let heads = Heads {
        main: main_head,
        backup: backup_head,
    };
    stream::iter(ranges)
        .map(|range| {
            let scan = scan.clone();
            let progress = progress.clone();
            let repair = repair.clone();
            let heads = heads.clone();
            async move {
                progress.check()?;
                scan_range(&scan, range, heads, repair.as_ref()).await
            }
        })
        .buffer_unordered(params.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    drop(heads);
    drop(repair);
    drop(ticker);

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
        format!("compared: {} differences", c.differences()),
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
        excluded_prefix: exclude,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        items,
        repair: None,
    })
}

/// The first pages of each side, listed while planning.
#[derive(Clone)]
struct Heads {
    main: Option<Arc<ListingHead>>,
    backup: Option<Arc<ListingHead>>,
}

/// Merges main, backup, inventory and the paths with open replication over one range, in byte
/// order.
async fn scan_range(
    scan: &Arc<Scan>,
    range: KeyRange,
    heads: Heads,
    repair: Option<&mpsc::Sender<DriftItem>>,
) -> Result<()> {
    let prefix = scan.params.prefix.clone();
    let mut mc = Cursor::new(spawn_listing(
        scan.main.clone(),
        prefix.clone(),
        range.clone(),
        heads.main,
        scan.clone(),
        true,
    ));
    let mut bc = Cursor::new(spawn_listing(
        scan.backup.clone(),
        prefix,
        range.clone(),
        heads.backup,
        scan.clone(),
        false,
    ));
    let mut ic = Cursor::new(spawn_inventory(scan.clone(), range.clone()));
    let mut pc = Cursor::new(spawn_pending(scan.clone(), range));
    let mut m = mc.next().await?;
    let mut b = bc.next().await?;
    let mut i = ic.next().await?;
    let mut p = pc.next().await?;
    // Rust orders `str` by bytes, which for UTF-8 is S3's listing order.
    while let Some(key) = [
        m.as_ref().map(|o| o.key.as_str()),
        b.as_ref().map(|o| o.key.as_str()),
        i.as_ref().map(|r| r.path()),
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
        let io = if i.as_ref().is_some_and(|r| r.path() == key) {
            std::mem::replace(&mut i, ic.next().await?)
        } else {
            None
        };
        // Open replication is rare: its cursor only moves up to the current key.
        while p.as_ref().is_some_and(|path| *path < key) {
            p = pc.next().await?;
        }
        let pending = p.as_ref().is_some_and(|path| *path == key);
        classify(scan, key, mo, bo, io, pending, repair).await;
    }
    Ok(())
}
