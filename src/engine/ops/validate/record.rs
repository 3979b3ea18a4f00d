//! Tallies checked files into the report and writes the results a batch at a time: one
//! statement stamps every file whose result did not change, changed files get their marks, and
//! an `--all` walk's checkpoint moves to the batch's last key in the same transaction.

use chrono::Utc;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::check::Checked;
use super::{ValidateItem, ValidateReport, ValidateStatus, MAX_ITEMS};
use crate::engine::db::{Db, LifecycleRow, StaleMark, ValidateCheckpoint};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;

/// Results written to the database per transaction (and per checkpoint).
pub(super) const WRITE_BATCH: usize = 500;

/// How a run records its results.
pub(super) struct Recorder {
    pub db: Db,
    /// False in read-only mode: tally only.
    pub record: bool,
    /// List fresh files among the items too (`--ids`).
    pub keep_fresh_items: bool,
    /// An `--all` walk's checkpoint (bucket and operation), moved with each batch; batches
    /// then arrive in key order.
    pub checkpoint: Option<ValidateCheckpoint>,
    pub total: u64,
}

/// One batch's writes, split by what changed.
#[derive(Default)]
struct BatchWrites {
    /// Same result as recorded: only `last_validated_at`.
    stamped: Vec<i64>,
    /// Fresh now, marked stale before.
    cleared: Vec<i64>,
    /// Stale or missing now, and not marked so (or for another reason) before.
    marked: Vec<StaleMark>,
}

impl BatchWrites {
    fn add(&mut self, row: &LifecycleRow, status: ValidateStatus, reason: Option<&str>) {
        match status {
            ValidateStatus::Fresh if row.is_stale => self.cleared.push(row.id),
            ValidateStatus::Fresh => self.stamped.push(row.id),
            ValidateStatus::Stale | ValidateStatus::Missing => {
                let reason = reason.unwrap_or("stale");
                if row.is_stale && row.stale_reason.as_deref() == Some(reason) {
                    self.stamped.push(row.id);
                } else {
                    self.marked.push(StaleMark {
                        id: row.id,
                        reason: reason.to_string(),
                    });
                }
            }
            // Nothing is known about the file: its row keeps what it said.
            ValidateStatus::OriginError | ValidateStatus::MirrorError => {}
        }
    }
}

impl Recorder {
    /// Tallies and writes every batch of `batches`. The previous batch's write runs while the
    /// next batch is checked; at most one is pending, and it is awaited before the next one
    /// starts and before returning, so a stop (error or cancel) never leaves results unrecorded
    /// behind a report that counts them, and checkpoints are written in order.
    pub(super) async fn run<S>(
        &self,
        batches: &mut S,
        report: &mut ValidateReport,
        progress: &Progress,
    ) -> Result<()>
    where
        S: futures::Stream<Item = Vec<Result<Checked>>> + Unpin,
    {
        let mut writing: Option<JoinHandle<Result<()>>> = None;
        let outcome = self
            .each_batch(batches, report, progress, &mut writing)
            .await;
        let written = match writing.take() {
            Some(w) => joined(w.await),
            None => Ok(()),
        };
        outcome?;
        written
    }

    async fn each_batch<S>(
        &self,
        batches: &mut S,
        report: &mut ValidateReport,
        progress: &Progress,
        writing: &mut Option<JoinHandle<Result<()>>>,
    ) -> Result<()>
    where
        S: futures::Stream<Item = Vec<Result<Checked>>> + Unpin,
    {
        while let Some(batch) = batches.next().await {
            let mut writes = BatchWrites::default();
            let mut last_key = None;
            for r in batch {
                let (row, status, reason) = r?;
                tally(report, &row, status);
                writes.add(&row, status, reason.as_deref());
                last_key = Some(row.key.clone());
                if status != ValidateStatus::Fresh || self.keep_fresh_items {
                    if report.items.len() < MAX_ITEMS {
                        report.items.push(ValidateItem {
                            id: row.id,
                            key: row.key,
                            status,
                            error: reason.clone().filter(|_| status.is_error()),
                            reason,
                        });
                    } else {
                        report.items_omitted += 1;
                    }
                }
            }
            if let Some(previous) = writing.take() {
                joined(previous.await)?;
            }
            if self.record {
                let checkpoint = self.checkpoint.as_ref().map(|c| ValidateCheckpoint {
                    after_key: last_key.or_else(|| c.after_key.clone()),
                    counts: report.counts(),
                    ..c.clone()
                });
                let db = self.db.clone();
                *writing = Some(tokio::spawn(async move {
                    db.record_validation_batch(
                        &writes.stamped,
                        &writes.cleared,
                        &writes.marked,
                        checkpoint.as_ref(),
                        Utc::now(),
                    )
                    .await
                }));
            }
            progress.update(report.checked, Some(self.total), "validating");
            // Stop between batches; the caller waits for the last batch's write.
            progress.check()?;
        }
        Ok(())
    }
}

fn joined(r: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    r.map_err(|e| Error::runtime(format!("recording validation results stopped: {e}")))?
}

/// Counts one checked file into the report.
fn tally(report: &mut ValidateReport, row: &LifecycleRow, status: ValidateStatus) {
    report.checked += 1;
    match status {
        ValidateStatus::Fresh => report.fresh += 1,
        ValidateStatus::Stale | ValidateStatus::Missing => {
            if status == ValidateStatus::Stale {
                report.stale += 1;
            } else {
                report.missing_in_mirror += 1;
            }
            if !row.is_stale {
                report.newly_stale += 1;
            }
        }
        ValidateStatus::OriginError => {
            report.origin_errors += 1;
            report.errors += 1;
        }
        ValidateStatus::MirrorError => {
            report.mirror_errors += 1;
            report.errors += 1;
        }
    }
}
