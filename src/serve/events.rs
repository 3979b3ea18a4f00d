//! Download events, written in batches so the database is never on a request's path: handlers
//! hand events to a bounded channel; one task writes them (events, hourly rollup, per-file
//! counters, in one transaction per batch) at least every `serve.event_flush`. The writer
//! sleeps between flushes rather than waiting on the channel, so recording a download wakes no
//! thread; it is woken early only once a batch's worth of events is queued.
//!
//! Nothing is lost silently: an event that finds the queue full is counted
//! (`mirrorctl_download_events_dropped`) and logged (at most every 10 s, with the count). While
//! the database fails, the writer keeps collecting (up to `MAX_PENDING` events) and retries
//! with a growing pause (0.5 s doubling to 30 s) instead of spinning. On shutdown the server
//! stops the writer only after the last download ended, and the writer keeps retrying for
//! `SHUTDOWN_RETRY` before it gives up on what it holds (logged with the count).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::engine::db::Db;
use crate::engine::model::NewDownloadEvent;

/// Events waiting for the writer; beyond this, new events are dropped and counted.
const QUEUE: usize = 65_536;
/// Events written in one transaction at most.
const BATCH: usize = 20_000;
/// Events kept for a retry while the database is failing.
const MAX_PENDING: usize = 200_000;
/// Pauses between retries while the database fails.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// On shutdown, how long a failing database is retried before the held events are given up.
const SHUTDOWN_RETRY: Duration = Duration::from_secs(10);
/// Drops are logged at most this often.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<NewDownloadEvent>,
    /// Wakes the writer before its flush is due: a batch is queued.
    batch_queued: Arc<Notify>,
    metrics: Metrics,
    /// Events the writer holds (taken from the queue, not written yet).
    held: Arc<AtomicI64>,
    /// Drops not logged yet, and when the last log line was (ms since `epoch`).
    unlogged_drops: Arc<AtomicU64>,
    last_drop_log: Arc<AtomicU64>,
    epoch: Instant,
}

impl Recorder {
    /// Starts the writer. On `stop` it writes what is queued and ends.
    pub fn start(
        db: Db,
        flush: Duration,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> (Recorder, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let held = Arc::new(AtomicI64::new(0));
        let batch_queued = Arc::new(Notify::new());
        let task = tokio::spawn(writer(
            db,
            rx,
            batch_queued.clone(),
            flush,
            metrics.clone(),
            held.clone(),
            stop,
        ));
        let r = Recorder {
            tx,
            batch_queued,
            metrics,
            held,
            unlogged_drops: Arc::new(AtomicU64::new(0)),
            last_drop_log: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        };
        (r, task)
    }

    /// Queues one event; never waits.
    pub fn record(&self, e: NewDownloadEvent) {
        if self.tx.try_send(e).is_err() {
            self.metrics.events_dropped.inc();
            self.dropped();
        } else if self.tx.max_capacity() - self.tx.capacity() >= BATCH {
            self.batch_queued.notify_one();
        }
    }

    /// Events queued or held by the writer, not written yet.
    pub fn queue_depth(&self) -> i64 {
        let queued = (self.tx.max_capacity() - self.tx.capacity()) as i64;
        queued + self.held.load(Ordering::Relaxed)
    }

    fn dropped(&self) {
        self.unlogged_drops.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_drop_log.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_drop_log
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n = self.unlogged_drops.swap(0, Ordering::Relaxed);
            tracing::warn!(
                "{n} download events dropped: the event queue ({QUEUE}) is full (the database is too slow or away)"
            );
        }
    }
}

async fn writer(
    db: Db,
    mut rx: mpsc::Receiver<NewDownloadEvent>,
    batch_queued: Arc<Notify>,
    flush: Duration,
    metrics: Metrics,
    held: Arc<AtomicI64>,
    stop: CancellationToken,
) {
    let mut pending: Vec<NewDownloadEvent> = Vec::new();
    let mut backoff: Option<Duration> = None;
    let mut stopping = false;
    let mut give_up_at: Option<Instant> = None;
    loop {
        if !stopping {
            let deadline = Instant::now() + backoff.unwrap_or(flush);
            // Collect until the flush interval (or the retry pause) passed or a batch is full.
            stopping = loop {
                if backoff.is_none() && pending.len() >= BATCH {
                    break false;
                }
                let due = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break true,
                    _ = tokio::time::sleep_until(deadline) => true,
                    _ = batch_queued.notified() => false,
                };
                // Take what is queued, never waiting on the channel (that would wake this
                // task, and its thread, for every event).
                let room = MAX_PENDING.saturating_sub(pending.len()).min(BATCH);
                let mut closed = false;
                for _ in 0..room {
                    match rx.try_recv() {
                        Ok(e) => pending.push(e),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                held.store(pending.len() as i64, Ordering::Relaxed);
                if closed {
                    break true;
                }
                if due {
                    break false;
                }
            };
            if stopping {
                rx.close();
                while let Ok(e) = rx.try_recv() {
                    pending.push(e);
                }
                held.store(pending.len() as i64, Ordering::Relaxed);
                give_up_at = Some(Instant::now() + SHUTDOWN_RETRY);
            }
        } else if let Some(pause) = backoff {
            tokio::time::sleep(pause).await;
        }
        while !pending.is_empty() {
            let n = pending.len().min(BATCH);
            match db.record_downloads(&pending[..n]).await {
                Ok(()) => {
                    metrics.events_written.inc_by(n as u64);
                    pending.drain(..n);
                    held.store(pending.len() as i64, Ordering::Relaxed);
                    backoff = None;
                }
                Err(e) => {
                    let pause = backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                    tracing::warn!(
                        "download events not written yet ({} held, retrying in {pause:?}): {e}",
                        pending.len()
                    );
                    backoff = Some(pause);
                    break;
                }
            }
        }
        if stopping {
            let over = give_up_at.is_some_and(|t| Instant::now() >= t);
            if pending.is_empty() || over {
                if !pending.is_empty() {
                    metrics.events_dropped.inc_by(pending.len() as u64);
                    tracing::error!(
                        "shutdown: {} download events could not be written (database unavailable)",
                        pending.len()
                    );
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch's worth of queued events is written long before the flush is due: the writer,
    /// asleep until then, is woken by the queue (on a real SQLite database).
    #[tokio::test]
    async fn a_full_batch_is_written_before_the_flush_is_due() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&url, 2, Duration::from_secs(5))
            .await
            .expect("db");
        db.migrate().await.expect("migrate");
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let (r, task) =
            Recorder::start(db, Duration::from_secs(3600), metrics.clone(), stop.clone());
        let event = NewDownloadEvent {
            occurred_at: chrono::Utc::now(),
            file_id: 0,
            cache_hit: true,
            bytes: 1,
            duration_ms: 1,
            status: 200,
        };
        for _ in 0..BATCH {
            r.record(event.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while metrics.events_written.get() < BATCH as u64 {
            assert!(
                Instant::now() < deadline,
                "{} of {BATCH} events written after 30 s (the flush is due in an hour)",
                metrics.events_written.get()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.expect("writer");
    }
}
