//! `prefetch`: mirror catalog entries before anyone asks (pre-warming). Picks entries whose
//! key has no fresh copy in the mirror bucket — all of them, the ones named, or those of the
//! N most downloaded files of a window — within a byte budget, and stores each through the
//! same `remirror::store` path as a miss: streamed, hashed, length-checked, the row written
//! only after S3 confirmed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;

use super::remirror::{fetch_and_store, transfers, StoreTarget, MAX_CONCURRENCY, MAX_ITEMS};
use crate::engine::db::{Db, PrefetchRow};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::origin::Origin;
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

const PAGE: i64 = 1000;

/// Which entries to prefetch.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchSelection {
    /// Every live entry without a fresh copy.
    Unmirrored,
    /// The N most downloaded files of the last `window_days` days.
    Top { n: i64, window_days: i64 },
    /// These catalog ids.
    Ids(Vec<i64>),
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefetchParams {
    pub selection: PrefetchSelection,
    pub concurrency: usize,
    /// Stop selecting once the catalog sizes of the chosen entries would pass this.
    pub max_bytes: Option<u64>,
    pub dry_run: bool,
    /// The confirmation (a stale copy is replaced): required headless unless `dry_run`.
    pub yes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchStatus {
    Stored,
    Failed,
    /// Dry run: would be stored.
    Planned,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrefetchItem {
    pub catalog_id: i64,
    pub key: String,
    pub status: PrefetchStatus,
    /// Bytes stored (in a dry run: the catalog's size, if known).
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PrefetchReport {
    /// Entries chosen to fetch.
    pub candidates: u64,
    pub stored: u64,
    pub failed: u64,
    /// Bytes stored (dry run: the known catalog sizes of the candidates).
    pub bytes: u64,
    /// Entries named or ranked that already have a fresh copy.
    pub already_mirrored: u64,
    /// Entries left out by `--max-bytes`.
    pub over_budget: u64,
    pub dry_run: bool,
    pub items: Vec<PrefetchItem>,
    pub items_omitted: u64,
}

impl Report for PrefetchReport {
    fn failures(&self) -> u64 {
        self.failed
    }

    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

impl std::fmt::Display for PrefetchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = humansize::format_size(self.bytes, humansize::BINARY);
        if self.dry_run {
            write!(
                f,
                "dry run: would prefetch {} files ({bytes} known), {} already mirrored, {} over budget",
                self.candidates, self.already_mirrored, self.over_budget
            )
        } else {
            write!(
                f,
                "prefetched {} of {} files ({bytes}), {} failed, {} already mirrored, {} over budget",
                self.stored, self.candidates, self.failed, self.already_mirrored, self.over_budget
            )
        }
    }
}

/// Prefetches the selected catalog entries into the mirror bucket.
pub async fn run(ctx: &Ctx, p: PrefetchParams, progress: &Progress) -> Result<PrefetchReport> {
    if p.concurrency == 0 || p.concurrency > MAX_CONCURRENCY {
        return Err(Error::Usage(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    match &p.selection {
        PrefetchSelection::Top { n, window_days } if *n <= 0 || *window_days <= 0 => {
            return Err(Error::Usage(
                "--top N and --window need positive values".into(),
            ))
        }
        PrefetchSelection::Ids(ids) if ids.is_empty() => {
            return Err(Error::Usage("--ids needs at least one catalog id".into()))
        }
        _ => {}
    }
    let mirror = ctx.mirror().await?;
    // Named entries must all exist before anything is fetched.
    let named = match &p.selection {
        PrefetchSelection::Ids(ids) => {
            let rows = ctx.db.prefetch_ids(mirror.name(), ids).await?;
            let found: std::collections::HashSet<i64> = rows.iter().map(|r| r.catalog_id).collect();
            let unknown: Vec<String> = ids
                .iter()
                .filter(|id| !found.contains(id))
                .map(|id| id.to_string())
                .collect();
            if !unknown.is_empty() {
                return Err(Error::NotFound(format!(
                    "no live catalog entry with id {} (see `mirrorctl catalog list`)",
                    unknown.join(", ")
                )));
            }
            Some(rows)
        }
        PrefetchSelection::Top { n, window_days } => {
            let since = Utc::now() - TimeDelta::days(*window_days);
            Some(ctx.db.prefetch_top(mirror.name(), since, *n).await?)
        }
        PrefetchSelection::Unmirrored => None,
    };
    if !p.dry_run {
        ctx.check_writable("prefetch")?;
        if !p.yes {
            return Err(Error::Refused(
                "prefetch fetches from the origin and writes the mirror bucket (replacing stale copies): pass --yes to go ahead (or --dry-run to preview)"
                    .into(),
            ));
        }
    }
    let origin = ctx.origin().await?;
    audited(ctx, "prefetch", &p, !p.dry_run, progress, || {
        prefetch_all(&ctx.db, origin, mirror, &p, named, progress)
    })
    .await
}

/// Every live entry without a fresh copy, read a page ahead by a task of its own, so the
/// transfers never wait for the next page's queries.
fn unmirrored_rows(db: Db, bucket: String) -> BoxStream<'static, Result<PrefetchRow>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<PrefetchRow>>(PAGE as usize);
    tokio::spawn(async move {
        let mut after = 0i64;
        loop {
            let (rows, next) = match db.prefetch_page(&bucket, after, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            for row in rows {
                if tx.send(Ok(row)).await.is_err() {
                    return;
                }
            }
            match next {
                Some(id) => after = id,
                None => return,
            }
        }
    });
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }).boxed()
}

async fn prefetch_all(
    db: &Db,
    origin: &Origin,
    mirror: &S3Bucket,
    p: &PrefetchParams,
    named: Option<Vec<PrefetchRow>>,
    progress: &Progress,
) -> Result<PrefetchReport> {
    let mut report = PrefetchReport {
        dry_run: p.dry_run,
        ..Default::default()
    };
    let (rows, total) = match named {
        Some(rows) => {
            let total = rows.iter().filter(|r| !r.fresh).count() as u64;
            (stream::iter(rows.into_iter().map(Ok)).boxed(), total)
        }
        None => (
            unmirrored_rows(db.clone(), mirror.name().to_string()),
            db.prefetch_count(mirror.name()).await? as u64,
        ),
    };
    // The budget is planned on the catalog's sizes, so a dry run shows exactly what a run
    // would fetch; entries of unknown size count as 0.
    let tally = Arc::new(Tally::default());
    let selected = rows.try_filter_map({
        let (tally, budget) = (tally.clone(), p.max_bytes);
        let mut planned = 0u64;
        move |r| {
            let keep = if r.fresh {
                tally.already.fetch_add(1, Ordering::Relaxed);
                None
            } else {
                let size = r.size.unwrap_or(0).max(0) as u64;
                if budget.is_some_and(|max| planned + size > max) {
                    tally.over_budget.fetch_add(1, Ordering::Relaxed);
                    None
                } else {
                    planned += size;
                    tally.chosen.fetch_add(1, Ordering::Relaxed);
                    Some(r)
                }
            };
            futures::future::ready(Ok(keep))
        }
    });
    progress.update(
        0,
        Some(total),
        if p.dry_run { "planning" } else { "prefetching" },
    );
    futures::pin_mut!(selected);
    if p.dry_run {
        while let Some(row) = selected.try_next().await? {
            let bytes = row.size.unwrap_or(0).max(0) as u64;
            report.bytes += bytes;
            push_item(
                &mut report,
                PrefetchItem {
                    catalog_id: row.catalog_id,
                    key: row.key,
                    status: PrefetchStatus::Planned,
                    bytes,
                    error: None,
                },
            );
        }
    } else {
        let done = transfers(
            selected,
            (db, origin, mirror),
            p.concurrency,
            progress,
            |db, origin, mirror, row| async move { prefetch_one(&db, &origin, &mirror, row).await },
        );
        futures::pin_mut!(done);
        let mut n = 0;
        while let Some(item) = done.try_next().await? {
            n += 1;
            match item.status {
                PrefetchStatus::Stored => {
                    report.stored += 1;
                    report.bytes += item.bytes;
                }
                _ => report.failed += 1,
            }
            push_item(&mut report, item);
            progress.update(n, Some(total), format!("prefetched {n} of {total} files"));
        }
    }
    report.candidates = tally.chosen.load(Ordering::Relaxed);
    report.already_mirrored = tally.already.load(Ordering::Relaxed);
    report.over_budget = tally.over_budget.load(Ordering::Relaxed);
    progress.check()?;
    Ok(report)
}

/// What the selection left out and kept, counted as the rows go by.
#[derive(Default)]
struct Tally {
    chosen: AtomicU64,
    already: AtomicU64,
    over_budget: AtomicU64,
}

fn push_item(report: &mut PrefetchReport, item: PrefetchItem) {
    if report.items.len() < MAX_ITEMS {
        report.items.push(item);
    } else {
        report.items_omitted += 1;
    }
}

async fn prefetch_one(
    db: &Db,
    origin: &Origin,
    mirror: &S3Bucket,
    row: PrefetchRow,
) -> Result<PrefetchItem> {
    let target = StoreTarget {
        id: row.mirrored_id,
        version: None,
        origin_file_id: row.catalog_id,
        key: row.key.clone(),
    };
    let stored = fetch_and_store(db, origin, mirror, &row.url, &target).await?;
    Ok(match stored {
        Ok((bytes, _, _)) => PrefetchItem {
            catalog_id: row.catalog_id,
            key: row.key,
            status: PrefetchStatus::Stored,
            bytes,
            error: None,
        },
        Err(why) => PrefetchItem {
            catalog_id: row.catalog_id,
            key: row.key,
            status: PrefetchStatus::Failed,
            bytes: 0,
            error: Some(why),
        },
    })
}
