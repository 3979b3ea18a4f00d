//! Download events, written in batches so the database is never on a request's path: handlers
//! hand events to a bounded channel; one task writes them (events, hourly rollup, per-file
//! counters, in one transaction per batch) at least every `serve.event_flush`.

use std::time::Duration;

use tokio::sync::mpsc;
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

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<NewDownloadEvent>,
    metrics: Metrics,
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
        let task = tokio::spawn(writer(db, rx, flush, metrics.clone(), stop));
        (Recorder { tx, metrics }, task)
    }

    /// Queues one event; never waits.
    pub fn record(&self, e: NewDownloadEvent) {
        if self.tx.try_send(e).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
}

async fn writer(
    db: Db,
    mut rx: mpsc::Receiver<NewDownloadEvent>,
    flush: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut pending: Vec<NewDownloadEvent> = Vec::new();
    loop {
        let deadline = Instant::now() + flush;
        // Collect until the flush interval passed or a batch is full.
        let stopping = loop {
            if pending.len() >= BATCH {
                break false;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break true,
                _ = tokio::time::sleep_until(deadline) => break false,
                n = rx.recv_many(&mut pending, BATCH) => if n == 0 { break true },
            }
        };
        if stopping {
            rx.close();
            while let Ok(e) = rx.try_recv() {
                pending.push(e);
            }
        }
        while !pending.is_empty() {
            let n = pending.len().min(BATCH);
            match db.record_downloads(&pending[..n]).await {
                Ok(()) => {
                    metrics.events_written.inc_by(n as u64);
                    pending.drain(..n);
                }
                Err(e) => {
                    tracing::warn!(
                        "download events not written yet ({} queued): {e}",
                        pending.len()
                    );
                    if pending.len() > MAX_PENDING {
                        let over = pending.len() - MAX_PENDING;
                        pending.drain(..over);
                        metrics.events_dropped.inc_by(over as u64);
                    }
                    break;
                }
            }
        }
        if stopping {
            if !pending.is_empty() {
                tracing::warn!(
                    "shutdown: {} download events could not be written",
                    pending.len()
                );
            }
            return;
        }
    }
}
