//! Listing for `drift`: each bucket's keys, the inventory's rows and the paths with open
//! replication in one key range, read page by page on tasks of their own a page ahead of the
//! merge, with retries for the transient failures of a long listing. Keys under the excluded
//! (archive) prefix are dropped here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::merge::Scan;
use super::plan::{KeyRange, ListingHead};
use super::{strip, INVENTORY_PAGE, LIST_ATTEMPTS, PAGE, READ_AHEAD};
use crate::engine::error::{Error, Result};
use crate::engine::model::{InventoryFacts, InventoryRow};
use crate::engine::s3::{ObjectInfo, S3Bucket};

/// One listing page with retries; returns the objects and the continuation token.
pub(super) async fn list_with_retry(
    bucket: &S3Bucket,
    prefix: &str,
    after: Option<&str>,
    token: Option<&str>,
    max_keys: i32,
) -> Result<(Vec<ObjectInfo>, Option<String>)> {
    let page = with_retry("a listing page", || {
        bucket.list_page(prefix, after, token, max_keys)
    })
    .await?;
    Ok((page.objects, page.next_token))
}

/// `request` again after a transient failure (throttling, a connection cut off), up to
/// `LIST_ATTEMPTS` times with a growing pause.
pub(super) async fn with_retry<T, F, Fut>(what: &str, mut request: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match request().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < LIST_ATTEMPTS && is_transient(&e) => {
                tracing::warn!("drift: retrying {what}: {e}");
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

/// Lists one bucket's keys in `range` on a task of its own, a page ahead of the merge. The
/// part of the range that `head` (the side's first pages, listed while planning) covers comes
/// from it; the listing goes on after it only when the range ends past it.
pub(super) fn spawn_listing(
    bucket: S3Bucket,
    prefix: String,
    range: KeyRange,
    head: Option<Arc<ListingHead>>,
    counter: Arc<Scan>,
    is_main: bool,
) -> mpsc::Receiver<Result<Vec<ObjectInfo>>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let c = if is_main {
            &counter.counters.main_listed
        } else {
            &counter.counters.backup_listed
        };
        let base = bucket.prefix().to_string();
        let full_prefix = format!("{base}{prefix}");
        let mut after = range.after.clone();
        if let Some(head) = head {
            let (objects, ends_within) = head.within(&range);
            for page in objects.chunks(PAGE as usize) {
                let keep: Vec<ObjectInfo> = page
                    .iter()
                    .filter(|o| !counter.excluded(&o.key))
                    .cloned()
                    .collect();
                c.fetch_add(keep.len() as u64, Ordering::Relaxed);
                if tx.send(Ok(keep)).await.is_err() {
                    return;
                }
            }
            if ends_within || head.complete {
                return;
            }
            // The range goes on past the head: list from whichever is later.
            if let Some(last) = head.last_key() {
                if after.as_deref().is_none_or(|a| a < last) {
                    after = Some(last.to_string());
                }
            }
        }
        let mut after = after.map(|a| format!("{base}{a}"));
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
                if !counter.excluded(&o.key) {
                    keep.push(o);
                }
            }
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

/// An inventory row as the merge reads it: the whole row when a disagreeing key may become a
/// report item or a repair (they carry it), else only the columns classification compares.
pub(super) enum InventoryEntry {
    Compared(InventoryFacts),
    Full(InventoryRow),
}

impl InventoryEntry {
    pub(super) fn path(&self) -> &str {
        match self {
            InventoryEntry::Compared(f) => &f.path,
            InventoryEntry::Full(r) => &r.path,
        }
    }

    pub(super) fn size(&self) -> i64 {
        match self {
            InventoryEntry::Compared(f) => f.size,
            InventoryEntry::Full(r) => r.size,
        }
    }

    pub(super) fn etag(&self) -> Option<&str> {
        match self {
            InventoryEntry::Compared(f) => f.etag.as_deref(),
            InventoryEntry::Full(r) => r.etag.as_deref(),
        }
    }

    pub(super) fn is_backed_up(&self) -> bool {
        match self {
            InventoryEntry::Compared(f) => f.is_backed_up,
            InventoryEntry::Full(r) => r.is_backed_up,
        }
    }

    /// The whole row, when it was read.
    pub(super) fn into_row(self) -> Option<InventoryRow> {
        match self {
            InventoryEntry::Compared(_) => None,
            InventoryEntry::Full(r) => Some(r),
        }
    }
}

/// Reads the inventory rows in `range` on a task of its own, a page ahead of the merge: whole
/// rows when the scan keeps items or repairs, else only the compared columns.
pub(super) fn spawn_inventory(
    scan: Arc<Scan>,
    range: KeyRange,
) -> mpsc::Receiver<Result<Vec<InventoryEntry>>> {
    let whole_rows = scan.params.keep_items || scan.params.repair;
    spawn_db_pages(
        scan,
        range,
        move |scan, prefix, after, upto| async move {
            let (after, upto) = (after.as_deref(), upto.as_deref());
            if whole_rows {
                let rows = scan
                    .db
                    .inventory_range(&prefix, after, upto, INVENTORY_PAGE)
                    .await?;
                Ok(rows.into_iter().map(InventoryEntry::Full).collect())
            } else {
                let rows = scan
                    .db
                    .inventory_facts_range(&prefix, after, upto, INVENTORY_PAGE)
                    .await?;
                Ok(rows.into_iter().map(InventoryEntry::Compared).collect())
            }
        },
        InventoryEntry::path,
        true,
    )
}

/// Reads the paths with open replication in `range` on a task of its own, like the inventory.
pub(super) fn spawn_pending(
    scan: Arc<Scan>,
    range: KeyRange,
) -> mpsc::Receiver<Result<Vec<String>>> {
    spawn_db_pages(
        scan,
        range,
        |scan, prefix, after, upto| async move {
            scan.db
                .replication_open_range(&prefix, after.as_deref(), upto.as_deref(), INVENTORY_PAGE)
                .await
        },
        |p: &String| p.as_str(),
        false,
    )
}

/// Database rows of `range` under the scan's prefix, `INVENTORY_PAGE` at a time in byte
/// order, read by `read(scan, prefix, after, upto)` on a task of its own a page ahead of the
/// merge; rows under an excluded prefix are dropped, and with `count_inventory` the rows kept
/// are counted as inventory read.
fn spawn_db_pages<T, R, Fut>(
    scan: Arc<Scan>,
    range: KeyRange,
    read: R,
    path: fn(&T) -> &str,
    count_inventory: bool,
) -> mpsc::Receiver<Result<Vec<T>>>
where
    T: Send + 'static,
    R: Fn(Arc<Scan>, String, Option<String>, Option<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<T>>> + Send,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let prefix = scan.params.prefix.clone();
        let mut after = range.after.clone();
        loop {
            let page = read(
                scan.clone(),
                prefix.clone(),
                after.clone(),
                range.upto.clone(),
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
            after = rows.last().map(|r| path(r).to_string());
            let mut past_prefix = false;
            let keep: Vec<T> = rows
                .into_iter()
                .take_while(|r| {
                    past_prefix = !path(r).starts_with(&prefix);
                    !past_prefix
                })
                .filter(|r| !scan.excluded(path(r)))
                .collect();
            if count_inventory {
                scan.counters
                    .inventory_read
                    .fetch_add(keep.len() as u64, Ordering::Relaxed);
            }
            if tx.send(Ok(keep)).await.is_err() || past_prefix || !full {
                return;
            }
        }
    });
    rx
}

/// A page-buffered reader over a listing task.
pub(super) struct Cursor<T> {
    rx: mpsc::Receiver<Result<Vec<T>>>,
    buf: std::vec::IntoIter<T>,
}

impl<T> Cursor<T> {
    pub(super) fn new(rx: mpsc::Receiver<Result<Vec<T>>>) -> Self {
        Cursor {
            rx,
            buf: Vec::new().into_iter(),
        }
    }

    pub(super) async fn next(&mut self) -> Result<Option<T>> {
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
