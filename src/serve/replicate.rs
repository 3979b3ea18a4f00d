//! Replication workers: copy main -> backup what the S3 front recorded. Every replica runs
//! them; tasks are claimed in the database, one path at a time across the fleet, so two
//! workers never copy the same key at once and a later version is never overwritten by an
//! earlier one. A task copies the path's state as the inventory has it *now* (only if main
//! still holds that version: the copy is conditional on its ETag), so a stale task can only
//! ever write the newest state. Failures retry with exponential backoff and jitter; a task
//! that used up `s3_front.max_attempts` stays `failed`, with its last error, until
//! `mirrorctl replication retry`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::engine::db::{ClaimedTask, Db, TaskEnd, WrittenObject};
use crate::engine::s3::{CopyOutcome, S3Bucket};
use crate::engine::Ctx;

/// How long a claim lasts without renewal: a crashed worker's paths are free again after it.
const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Claims in flight are renewed this often.
const RENEW_EVERY: Duration = Duration::from_secs(20);
/// With nothing to do, the queue is looked at this often (a write in this process wakes the
/// worker at once; one made through another replica waits at most this long).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// After this many failed attempts in a row (of any tasks), the worker copies one task at a
/// time until one succeeds: a backup that is down sees one request per replica, not one per
/// task in the backlog.
const PROBE_AFTER_FAILURES: u32 = 5;
/// While probing, at most one task is claimed this often.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Done tasks are kept this long for the drain rate and lag figures.
const KEEP_DONE: Duration = Duration::from_secs(24 * 3600);

struct Worker {
    /// Failed attempts in a row, across tasks (0 after any success).
    failures_in_a_row: std::sync::atomic::AtomicU32,
    db: Db,
    main: S3Bucket,
    backup: S3Bucket,
    id: String,
    max_attempts: u32,
    metrics: Metrics,
}

/// Starts the workers of this process (`s3_front.replication_workers` copies at once), or
/// nothing without a backup bucket or with 0 workers.
pub async fn spawn(
    ctx: Arc<Ctx>,
    instance: String,
    wake: Arc<Notify>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> Option<JoinHandle<()>> {
    let n = ctx.config.s3_front.replication_workers;
    if n == 0 || ctx.config.buckets.backup.is_none() || ctx.read_only {
        return None;
    }
    let (main, backup) = match (ctx.main().await, ctx.backup().await) {
        (Ok(m), Ok(b)) => (m.clone(), b.clone()),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("replication workers not started: {e}");
            return None;
        }
    };
    let w = Arc::new(Worker {
        failures_in_a_row: Default::default(),
        db: ctx.db.clone(),
        main,
        backup,
        id: instance,
        max_attempts: ctx.config.s3_front.max_attempts,
        metrics,
    });
    Some(tokio::spawn(run(w, n, wake, cancel)))
}

async fn run(w: Arc<Worker>, n: usize, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut running: JoinSet<i64> = JoinSet::new();
    let mut held: Vec<i64> = Vec::new();
    let mut renew = tokio::time::interval(RENEW_EVERY);
    let mut prune = tokio::time::interval(Duration::from_secs(3600));
    let mut db_warned = false;
    let mut next_probe = tokio::time::Instant::now();
    loop {
        let probing = w.failures_in_a_row.load(Ordering::Relaxed) >= PROBE_AFTER_FAILURES;
        // Claims come in batches (a quarter of the workers at least, unless none is busy):
        // each claim is a transaction under the fleet-wide claim lock.
        let batch = (n / 4).max(1);
        let free = match probing {
            false if running.is_empty() || n - running.len() >= batch => n - running.len(),
            false => 0,
            true if tokio::time::Instant::now() < next_probe => 0,
            true => {
                next_probe = tokio::time::Instant::now() + PROBE_EVERY;
                1usize.saturating_sub(running.len())
            }
        };
        let mut claimed = Vec::new();
        if free > 0 && !cancel.is_cancelled() {
            let now = Utc::now();
            let until = now + chrono::Duration::from_std(CLAIM_TTL).unwrap_or_default();
            let gone = now
                - chrono::Duration::from_std(crate::engine::ops::fleet::GONE_AFTER)
                    .unwrap_or_default();
            match w.db.claim_replication(&w.id, free, now, until, gone).await {
                Ok(c) => {
                    db_warned = false;
                    claimed = c;
                }
                Err(e) if !db_warned => {
                    tracing::warn!("replication: claiming tasks: {e}");
                    db_warned = true;
                }
                Err(_) => {}
            }
        }
        for task in claimed {
            held.push(task.id);
            let w = w.clone();
            running.spawn(async move {
                let id = task.id;
                w.process(task).await;
                id
            });
        }
        if cancel.is_cancelled() && running.is_empty() {
            return;
        }
        let full = running.len() + batch > n || (probing && !running.is_empty());
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(id) = done {
                    held.retain(|h| *h != id);
                }
            }
            _ = wake.notified(), if !full => {}
            _ = tokio::time::sleep(IDLE_POLL), if !full => {}
            _ = renew.tick() => {
                let until = Utc::now() + chrono::Duration::from_std(CLAIM_TTL).unwrap_or_default();
                if let Err(e) = w.db.renew_claims(&w.id, &held, until).await {
                    tracing::warn!("replication: renewing claims: {e}");
                }
            }
            _ = prune.tick() => {
                let before = Utc::now() - chrono::Duration::from_std(KEEP_DONE).unwrap_or_default();
                if let Err(e) = w.db.prune_done_tasks(before).await {
                    tracing::warn!("replication: pruning done tasks: {e}");
                }
            }
            _ = cancel.cancelled(), if !cancel.is_cancelled() => {}
        }
    }
}

impl Worker {
    async fn process(&self, task: ClaimedTask) {
        let end = match self.replicate(&task).await {
            Ok(end) => end,
            Err(e) => TaskEnd::Retry {
                at: Utc::now() + backoff(task.attempts),
                error: e,
                counted: true,
            },
        };
        match &end {
            TaskEnd::Replicated { .. } => {
                self.metrics.replicated.inc();
                self.failures_in_a_row.store(0, Ordering::Relaxed);
            }
            TaskEnd::Retry {
                counted: true,
                error,
                ..
            } => {
                self.metrics.replication_errors.inc();
                self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %task.path, attempt = task.attempts, "replication: {error}");
            }
            TaskEnd::Retry { .. } => {}
        };
        if let Err(e) = self
            .db
            .finish_task(&task, &self.id, &end, self.max_attempts, Utc::now())
            .await
        {
            // The claim expires and another worker redoes the task: copies are idempotent.
            tracing::warn!(path = %task.path, "replication: recording the task's end: {e}");
        }
    }

    /// Makes the inventory row of `path` say what main holds now (HEAD).
    async fn reconcile_with_main(&self, path: &str) -> Result<(), String> {
        let head = self.main.head(path).await.map_err(|e| e.to_string())?;
        let object = head.map(|h| WrittenObject {
            size: h.size as i64,
            etag: h.etag,
            content_type: h.content_type,
            last_modified: h.last_modified,
        });
        self.db
            .reconcile_inventory(path, object.as_ref(), Utc::now())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Makes the backup hold what the inventory says of the task's path now.
    async fn replicate(&self, task: &ClaimedTask) -> Result<TaskEnd, String> {
        let path = &task.path;
        if task.version < 0 {
            // The intent of a write whose outcome nobody recorded (its process died, or main
            // did not answer): the inventory first learns what main really holds.
            self.reconcile_with_main(path).await?;
        }
        let state = self
            .db
            .inventory_state(path)
            .await
            .map_err(|e| e.to_string())?;
        let (version, etag, deleted) = match state {
            Some(s) => (s.version, s.etag, s.deleted),
            // Queued by `replication resync` for a key the inventory does not know: copy
            // whatever main holds (or remove it from the backup if main has none).
            None => (0, None, false),
        };
        if deleted {
            // Two clients racing on a key commit to main and to the inventory in either
            // order: the delete the inventory recorded last may have reached main before a
            // put. Main is the truth; the backup loses the key only if main has none.
            if self
                .main
                .head(path)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return self.main_differs(path, version).await;
            }
            self.backup.delete(path).await.map_err(|e| e.to_string())?;
            return Ok(TaskEnd::Replicated { version });
        }
        let outcome = self
            .backup
            .copy_object_from(&self.main, path, path, etag.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        match outcome {
            CopyOutcome::Copied { .. } => Ok(TaskEnd::Replicated { version }),
            CopyOutcome::SourceMissing if etag.is_none() => {
                self.backup.delete(path).await.map_err(|e| e.to_string())?;
                Ok(TaskEnd::Replicated { version })
            }
            CopyOutcome::SourceChanged | CopyOutcome::SourceMissing => {
                self.main_differs(path, version).await
            }
        }
    }

    /// Main does not hold what the inventory recorded for `version`. A write through the
    /// front in between leaves a newer version (and task) behind it: this one waits its turn.
    /// Otherwise main's last write is not the one the inventory recorded last (two clients
    /// writing one key at once commit in either order), or main was changed past the front:
    /// main is the truth, so the inventory learns what main holds and the next attempt
    /// replicates that.
    async fn main_differs(&self, path: &str, version: i64) -> Result<TaskEnd, String> {
        let now = self
            .db
            .inventory_state(path)
            .await
            .map_err(|e| e.to_string())?;
        if now.is_some_and(|n| n.version != version) {
            return Ok(TaskEnd::Retry {
                at: Utc::now(),
                error: "main changed during the copy; the newer version follows".into(),
                counted: false,
            });
        }
        self.reconcile_with_main(path).await?;
        tracing::info!(path = %path, "replication: the inventory differed from main's object; it now records main's");
        Ok(TaskEnd::Retry {
            at: Utc::now(),
            error: "the inventory differed from main's object; it now records main's".into(),
            counted: false,
        })
    }
}

/// 1 s doubling per failed attempt up to 1 min, each ±50 % at random so that tasks failing
/// together do not retry together. The cap bounds how long a backlog waits once a backup
/// that was down is back.
fn backoff(attempts: i32) -> chrono::Duration {
    let base = 1000u64
        .saturating_mul(1 << attempts.clamp(1, 20).saturating_sub(1))
        .min(60_000);
    let jittered = rand::rng().random_range(base / 2..=base + base / 2);
    chrono::Duration::milliseconds(jittered as i64)
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_a_minute() {
        for (attempt, base) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (6, 32_000),
            (7, 60_000),
            (40, 60_000),
        ] {
            for _ in 0..50 {
                let ms = backoff(attempt).num_milliseconds();
                assert!(
                    (base / 2..=base + base / 2).contains(&ms),
                    "attempt {attempt}: {ms} ms"
                );
            }
        }
    }
}
