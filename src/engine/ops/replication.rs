//! `replication`: how far the backup is behind the main bucket for writes through the S3
//! front, from the outbox itself (not from a counter that can stall): what is pending (count,
//! bytes), the age of the oldest task not yet done (the lag), the drain rate over the last
//! minute and an ETA, and the tasks that failed with their reasons. `retry` puts tasks back in
//! the queue; `resync` queues what a drift check found missing or different in the backup.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::db::{BacklogCounts, TaskRow};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::ops::drift;
use crate::engine::Ctx;

/// The window the drain rate is measured over.
pub const DRAIN_WINDOW_S: i64 = 60;
/// Failed or failing tasks listed in the report.
const TROUBLED_LIMIT: i64 = 50;

#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    pub generated_at: DateTime<Utc>,
    /// Tasks waiting or being copied.
    pub pending: i64,
    pub pending_bytes: i64,
    /// Of those, being copied now.
    pub running: i64,
    /// Writes the front began and has not recorded yet (requests in flight; an intent left by
    /// a process that died is reconciled with main once the process is gone from the fleet).
    pub in_flight: i64,
    /// Tasks that used up their attempts (they wait for `replication retry`).
    pub failed: i64,
    /// When the oldest task not yet done was recorded, and its age in seconds: the lag.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub lag_s: f64,
    /// Tasks finished per second over the last minute, counted from the first of them (so a
    /// drain that resumed a few seconds ago is not averaged with the stall before it); 0 when
    /// tasks are pending and none finished in the last `STALL_S` seconds.
    pub drain_per_s: f64,
    /// Seconds until the backlog drains at that rate (`null` when nothing drains).
    pub eta_s: Option<f64>,
    /// Failed tasks, then pending ones that failed before, the latest first (at most 50).
    pub troubled: Vec<TaskRow>,
}

/// Anything failed is something to look at (exit 3).
impl Report for ReplicationStatus {
    fn found_problems(&self) -> bool {
        self.failed > 0
    }
}

impl std::fmt::Display for ReplicationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pending ({} bytes, {} copying), {} failed; lag {:.1}s, draining {:.1}/s",
            self.pending,
            self.pending_bytes,
            self.running,
            self.failed,
            self.lag_s,
            self.drain_per_s
        )?;
        if let Some(eta) = self.eta_s {
            write!(f, ", ETA {eta:.0}s")?;
        }
        Ok(())
    }
}

pub async fn status(ctx: &Ctx, now: DateTime<Utc>) -> Result<ReplicationStatus> {
    let b = ctx
        .db
        .replication_backlog(now, now - chrono::Duration::seconds(DRAIN_WINDOW_S))
        .await?;
    let troubled = ctx.db.troubled_tasks(TROUBLED_LIMIT).await?;
    let lag_s = b
        .oldest_pending_at
        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    let drain_per_s = drain_rate(&b, now);
    Ok(ReplicationStatus {
        generated_at: now,
        pending: b.pending,
        pending_bytes: b.pending_bytes,
        running: b.running,
        in_flight: b.in_flight,
        failed: b.failed,
        oldest_pending_at: b.oldest_pending_at,
        lag_s,
        drain_per_s,
        eta_s: (b.pending == 0)
            .then_some(0.0)
            .or((drain_per_s > 0.0).then(|| b.pending as f64 / drain_per_s)),
        troubled,
    })
}

/// Pending tasks and none finished for this long: the backlog is not draining (the backup
/// is down, or every task fails), whatever finished before.
pub const STALL_S: i64 = 10;
/// The shortest span a rate is taken over, so that a few tasks that just finished do not
/// promise thousands a second.
const MIN_SPAN_S: f64 = 5.0;

/// Tasks finished per second: those of the drain window over the time since the first of
/// them finished (at least `MIN_SPAN_S`), or 0 when tasks wait and none finished lately.
fn drain_rate(b: &BacklogCounts, now: DateTime<Utc>) -> f64 {
    let (Some(first), Some(last)) = (b.first_drained_at, b.last_drained_at) else {
        return 0.0;
    };
    if b.pending > 0 && (now - last).num_seconds() >= STALL_S {
        return 0.0;
    }
    let span = ((now - first).num_milliseconds() as f64 / 1000.0).max(MIN_SPAN_S);
    b.drained as f64 / span
}

/// Which tasks `retry` puts back.
#[derive(Debug, Clone)]
pub enum RetrySelector {
    Failed,
    Ids(Vec<i64>),
}

#[derive(Debug, Clone)]
pub struct RetryParams {
    pub select: RetrySelector,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryReport {
    pub dry_run: bool,
    /// The tasks put back (or that would be).
    pub requeued: usize,
    pub tasks: Vec<TaskRow>,
    /// Ids asked for that are not open or failed tasks.
    pub unknown_ids: Vec<i64>,
}

impl Report for RetryReport {
    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

impl std::fmt::Display for RetryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would requeue"
        } else {
            "requeued"
        };
        let s = if self.requeued == 1 { "" } else { "s" };
        write!(f, "{verb} {} task{s}", self.requeued)
    }
}

/// Puts failed tasks (or the given ones) back in the queue, due now, attempts reset.
pub async fn retry(ctx: &Ctx, params: RetryParams, progress: &Progress) -> Result<RetryReport> {
    let p = serde_json::json!({
        "ids": match &params.select { RetrySelector::Ids(ids) => Some(ids), RetrySelector::Failed => None },
        "dry_run": params.dry_run,
    });
    audited(ctx, "replication-retry", &p, false, progress, || {
        retry_tasks(ctx, &params)
    })
    .await
}

async fn retry_tasks(ctx: &Ctx, params: &RetryParams) -> Result<RetryReport> {
    if !params.dry_run {
        ctx.check_writable("replication retry")?;
    }
    let ids = match &params.select {
        RetrySelector::Failed => None,
        RetrySelector::Ids(ids) if ids.is_empty() => {
            return Err(Error::Usage(
                "replication retry: give --failed or --ids".into(),
            ))
        }
        RetrySelector::Ids(ids) => Some(ids.as_slice()),
    };
    let tasks = ctx.db.retry_tasks(ids, params.dry_run, Utc::now()).await?;
    let unknown_ids: Vec<i64> = ids
        .unwrap_or_default()
        .iter()
        .copied()
        .filter(|id| !tasks.iter().any(|t| t.id == *id))
        .collect();
    if !unknown_ids.is_empty() && tasks.is_empty() {
        return Err(Error::NotFound(format!(
            "no open or failed replication task with id {}",
            unknown_ids
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(RetryReport {
        dry_run: params.dry_run,
        requeued: tasks.len(),
        tasks,
        unknown_ids,
    })
}

#[derive(Debug, Clone, Default)]
pub struct ResyncParams {
    pub dry_run: bool,
    pub yes: bool,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResyncReport {
    pub dry_run: bool,
    /// Keys the drift check found missing in (or different from) the backup.
    pub found: usize,
    /// Tasks queued for them.
    pub queued: u64,
    /// A sample of the keys, at most 20.
    pub sample: Vec<String>,
}

impl Report for ResyncReport {
    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

impl std::fmt::Display for ResyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dry_run {
            write!(f, "{} keys to resync (dry run: nothing queued)", self.found)
        } else {
            write!(
                f,
                "{} keys found, {} replication tasks queued",
                self.found, self.queued
            )
        }
    }
}

/// Runs a drift check and queues a replication task for every key missing in the backup or
/// differing from main (the workers then copy them as the inventory, or main, has them).
pub async fn resync(ctx: &Ctx, params: ResyncParams, progress: &Progress) -> Result<ResyncReport> {
    let p = serde_json::json!({ "dry_run": params.dry_run, "concurrency": params.concurrency });
    audited(ctx, "replication-resync", &p, false, progress, || {
        queue_resync(ctx, &params, progress)
    })
    .await
}

async fn queue_resync(
    ctx: &Ctx,
    params: &ResyncParams,
    progress: &Progress,
) -> Result<ResyncReport> {
    if !params.dry_run {
        ctx.check_writable("replication resync")?;
        if !params.yes {
            return Err(Error::Refused(
                "replication resync queues copies to the backup: add --yes (or --dry-run to preview)"
                    .into(),
            ));
        }
    }
    let mut dp = drift::DriftParams::default();
    if let Some(c) = params.concurrency {
        dp.concurrency = c;
    }
    let report = drift::run(ctx, dp, progress).await?;
    let keys: Vec<String> = report
        .items
        .iter()
        .filter(|i| {
            matches!(
                i.status,
                Some(drift::PairStatus::MissingInBackup | drift::PairStatus::Differ)
            )
        })
        .map(|i| i.key.clone())
        .collect();
    let queued = if params.dry_run || keys.is_empty() {
        0
    } else {
        ctx.db.queue_replication(&keys, Utc::now()).await?
    };
    Ok(ResyncReport {
        dry_run: params.dry_run,
        found: keys.len(),
        queued,
        sample: keys.iter().take(20).cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn backlog(pending: i64, drained: i64, first_ago: i64, last_ago: i64) -> BacklogCounts {
        let now = Utc::now();
        BacklogCounts {
            pending,
            pending_bytes: 0,
            running: 0,
            failed: 0,
            oldest_pending_at: None,
            drained,
            first_drained_at: (drained > 0).then(|| now - TimeDelta::seconds(first_ago)),
            last_drained_at: (drained > 0).then(|| now - TimeDelta::seconds(last_ago)),
            in_flight: 0,
        }
    }

    #[test]
    fn the_drain_rate_is_zero_while_stalled_and_counts_from_a_resumed_drain() {
        let now = Utc::now();
        // Draining steadily for the whole minute: 600 in 60 s.
        let r = drain_rate(&backlog(100, 600, 60, 0), now);
        assert!((r - 10.0).abs() < 0.1, "{r}");
        // The backup went down 30 s ago: what finished before says nothing about now.
        assert_eq!(drain_rate(&backlog(454, 500, 59, 30), now), 0.0);
        // Back 20 s ago: 3,000 tasks since are 150 a second, not 50.
        let r = drain_rate(&backlog(12_000, 3_000, 20, 0), now);
        assert!((r - 150.0).abs() < 1.0, "{r}");
        // A few that just finished are taken over 5 s at least.
        let r = drain_rate(&backlog(100, 10, 0, 0), now);
        assert!((r - 2.0).abs() < 0.1, "{r}");
        // Nothing pending: the last minute's rate, stalled or not.
        let r = drain_rate(&backlog(0, 60, 60, 30), now);
        assert!((r - 1.0).abs() < 0.1, "{r}");
        assert_eq!(drain_rate(&backlog(5, 0, 0, 0), now), 0.0);
    }
}
