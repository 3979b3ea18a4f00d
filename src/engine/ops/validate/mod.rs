//! `validate`: asks the origin (HEAD: size, ETag) and the mirror bucket (exists, size: a HEAD
//! per file, or with `--all` the bucket's listing merged with the rows in byte order) about
//! each mirrored file, marks stale and missing files so `remirror --all-stale` restores them,
//! and stamps `last_validated_at`. Rows are paged from the database and checked with bounded
//! concurrency, so memory does not grow with the number of files.
//!
//! A file the origin or the mirror cannot answer for is that file's error; only a page of rows
//! or of the listing that keeps failing stops the run. `--all` records a checkpoint with each
//! batch it writes, and `--resume` continues a stopped `--all` from it.
//!
//! The parts: `walk` (which rows, in which order, with what the listing says), `check` (one
//! file's verdict) and `record` (the tally and the batched writes with the checkpoint).

mod check;
mod record;
mod walk;

use chrono::{TimeDelta, Utc};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::engine::db::{Db, FileScope, LifecycleRow, ValidateCheckpoint, ValidateCounts};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited_with_id, Progress, Report};
use crate::engine::origin::Origin;
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

pub use check::classify;
pub(crate) use walk::paged_rows;

/// Per-file items kept in the report; counts stay exact beyond it.
pub const MAX_ITEMS: usize = 10_000;
/// More concurrent requests than this only queue inside the HTTP clients.
pub const MAX_CONCURRENCY: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct ValidateParams {
    /// Every live file, not only the recently downloaded ones.
    pub all: bool,
    /// Only these files (mirrored file ids).
    pub ids: Vec<i64>,
    /// The recent window in days (default `policy.validate_recent_days`).
    pub recent_days: Option<u32>,
    /// Files checked at once.
    pub concurrency: usize,
    /// Continue the stopped `--all` run of the mirror bucket from its checkpoint (implies `all`).
    pub resume: bool,
}

impl Default for ValidateParams {
    fn default() -> Self {
        ValidateParams {
            all: false,
            ids: Vec::new(),
            recent_days: None,
            concurrency: 32,
            resume: false,
        }
    }
}

/// What validation concluded about one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidateStatus {
    Fresh,
    /// The origin's size or ETag differs from what was mirrored, or the object's size from the row.
    Stale,
    /// The mirror bucket has no object for the row.
    Missing,
    /// The origin did not answer usefully (down, 404, 5xx, timeout): nothing was marked.
    OriginError,
    /// The mirror bucket did not answer the object's HEAD (after the client's retries):
    /// nothing was marked.
    MirrorError,
}

impl ValidateStatus {
    /// The check itself failed: the file is neither fresh nor stale as far as this run knows.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            ValidateStatus::OriginError | ValidateStatus::MirrorError
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidateItem {
    pub id: i64,
    pub key: String,
    pub status: ValidateStatus,
    /// Why the file is not fresh (for an error, the error).
    pub reason: Option<String>,
    /// What failed, for `origin_error` and `mirror_error`; `None` otherwise.
    pub error: Option<String>,
}

/// Where a resumed run took over.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ResumedFrom {
    /// The `operations` row of the run that stopped.
    pub operation_id: i64,
    /// The last key it had recorded; `None` when it stopped before its first batch.
    pub after_key: Option<String>,
    /// Files it had checked (included in this report's counts).
    pub checked: u64,
}

impl From<&ValidateCheckpoint> for ResumedFrom {
    fn from(c: &ValidateCheckpoint) -> Self {
        ResumedFrom {
            operation_id: c.operation_id,
            after_key: c.after_key.clone(),
            checked: c.counts.checked,
        }
    }
}

impl std::fmt::Display for ResumedFrom {
    /// The line `validate --resume` prints on stderr before it starts.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.after_key {
            Some(key) => write!(f, "resuming validate --all from key {key:?}")?,
            None => write!(f, "resuming validate --all from the first key")?,
        }
        write!(
            f,
            ", {} files already checked (operation {})",
            self.checked, self.operation_id
        )
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ValidateReport {
    /// Which files were checked: "all", "ids" or "downloaded in the last N days".
    pub scope: String,
    pub checked: u64,
    pub fresh: u64,
    /// Files found stale now (including ones already marked stale before).
    pub stale: u64,
    /// Files that were not marked stale before and are now (stale or missing).
    pub newly_stale: u64,
    pub missing_in_mirror: u64,
    pub origin_errors: u64,
    /// Files whose mirror object could not be asked about.
    pub mirror_errors: u64,
    /// Files whose check failed (`origin_errors + mirror_errors`); the run went on.
    pub errors: u64,
    /// False in read-only mode: results were reported but not written to the rows.
    pub recorded: bool,
    /// Set when this run continued a stopped `--all` run (`--resume`): the counts cover both,
    /// `items` only the files this run checked.
    pub resumed_from: Option<ResumedFrom>,
    /// Files that were not fresh (and every file when checking `--ids`), up to `MAX_ITEMS`.
    pub items: Vec<ValidateItem>,
    /// Items left out of `items` to keep the report bounded.
    pub items_omitted: u64,
}

impl ValidateReport {
    /// The counts, as a checkpoint keeps them.
    pub fn counts(&self) -> ValidateCounts {
        ValidateCounts {
            checked: self.checked,
            fresh: self.fresh,
            stale: self.stale,
            newly_stale: self.newly_stale,
            missing_in_mirror: self.missing_in_mirror,
            origin_errors: self.origin_errors,
            mirror_errors: self.mirror_errors,
        }
    }

    /// Starts counting from what a checkpoint kept.
    fn count_from(&mut self, c: &ValidateCounts) {
        self.checked = c.checked;
        self.fresh = c.fresh;
        self.stale = c.stale;
        self.newly_stale = c.newly_stale;
        self.missing_in_mirror = c.missing_in_mirror;
        self.origin_errors = c.origin_errors;
        self.mirror_errors = c.mirror_errors;
        self.errors = c.origin_errors + c.mirror_errors;
    }
}

/// The one-line summary the TUI's job list and the data plane's workers show.
impl std::fmt::Display for ValidateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "checked {}: {} fresh, {} stale ({} newly), {} missing, {} origin errors",
            self.checked,
            self.fresh,
            self.stale,
            self.newly_stale,
            self.missing_in_mirror,
            self.origin_errors
        )?;
        if self.mirror_errors > 0 {
            write!(f, ", {} mirror errors", self.mirror_errors)?;
        }
        Ok(())
    }
}

impl Report for ValidateReport {
    /// Newly stale or missing files, or files the origin or the mirror could not vouch for:
    /// not all fresh.
    fn found_problems(&self) -> bool {
        self.newly_stale > 0 || self.missing_in_mirror > 0 || self.errors > 0
    }
}

/// The checkpoint `validate --resume` would continue from, for the mirror bucket. Refused in
/// read-only mode (a resumed run records its results); a usage error when there is none.
pub async fn resume_point(ctx: &Ctx) -> Result<ResumedFrom> {
    if ctx.read_only {
        return Err(Error::Refused(
            "read-only mode: `validate --resume` continues a run that records its results \
             (`validate --all` checks without writing)"
                .into(),
        ));
    }
    let mirror = ctx.mirror().await?;
    let checkpoint = load_checkpoint(&ctx.db, mirror.name()).await?;
    Ok(ResumedFrom::from(&checkpoint))
}

async fn load_checkpoint(db: &Db, bucket: &str) -> Result<ValidateCheckpoint> {
    db.validate_checkpoint(bucket).await?.ok_or_else(|| {
        Error::Usage(format!(
            "--resume: nothing to resume: no stopped `validate --all` of bucket {bucket} left a \
             checkpoint (a completed run clears it); run `validate --all`"
        ))
    })
}

/// Checks the files in scope against the origin and the mirror bucket and records the results.
/// In read-only mode it reports without writing (and without taking the mutation lock).
pub async fn run(ctx: &Ctx, mut p: ValidateParams, progress: &Progress) -> Result<ValidateReport> {
    if p.concurrency == 0 || p.concurrency > MAX_CONCURRENCY {
        return Err(Error::Usage(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    if p.all && !p.ids.is_empty() {
        return Err(Error::Usage(
            "--all and --ids cannot be used together".into(),
        ));
    }
    if p.recent_days == Some(0) {
        return Err(Error::Usage("--recent-days must be at least 1".into()));
    }
    if p.resume {
        if !p.ids.is_empty() || p.recent_days.is_some() {
            return Err(Error::Usage(
                "--resume continues a `validate --all` run: it takes no --ids or --recent-days"
                    .into(),
            ));
        }
        p.all = true;
        // Checked again under the lock; this answers "nothing to resume" before taking it.
        resume_point(ctx).await?;
    }
    let mirror = ctx.mirror().await?;
    if !p.ids.is_empty() {
        let unknown = ctx.db.unknown_ids(mirror.name(), &p.ids).await?;
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::NotFound(format!(
                "no live mirrored file in bucket {} with id {list}",
                mirror.name()
            )));
        }
    }
    let origin = ctx.origin().await?;
    let record = !ctx.read_only;
    audited_with_id(ctx, "validate", &p, record, progress, |operation_id| {
        check_all(
            &ctx.db,
            ctx.config.policy.validate_recent_days,
            origin,
            mirror,
            &p,
            record.then_some(operation_id),
            progress,
        )
    })
    .await
}

/// The run itself; `recording` is the run's operation id when results are written.
async fn check_all(
    db: &Db,
    default_days: u32,
    origin: &Origin,
    mirror: &S3Bucket,
    p: &ValidateParams,
    recording: Option<i64>,
    progress: &Progress,
) -> Result<ValidateReport> {
    let (scope, label) = if !p.ids.is_empty() {
        let mut ids = p.ids.clone();
        ids.sort_unstable();
        ids.dedup();
        (FileScope::Ids(ids), "ids".to_string())
    } else if p.all {
        (FileScope::All, "all".to_string())
    } else {
        let days = p.recent_days.unwrap_or(default_days).max(1);
        (
            FileScope::DownloadedSince(Utc::now() - TimeDelta::days(i64::from(days))),
            format!("downloaded in the last {days} days"),
        )
    };
    let walks_all = matches!(scope, FileScope::All);
    let mut report = ValidateReport {
        scope: label,
        recorded: recording.is_some(),
        ..Default::default()
    };
    // A recorded `--all` keeps a checkpoint: it starts where the stopped run left off (under
    // the lock now, so it is the one no other run is moving) or at the first key.
    let checkpoint = match recording.filter(|_| walks_all) {
        Some(operation_id) => {
            let start = if p.resume {
                let stopped = load_checkpoint(db, mirror.name()).await?;
                report.count_from(&stopped.counts);
                report.resumed_from = Some(ResumedFrom::from(&stopped));
                stopped.after_key
            } else {
                None
            };
            let c = ValidateCheckpoint {
                bucket: mirror.name().to_string(),
                operation_id,
                after_key: start,
                counts: report.counts(),
            };
            db.save_validate_checkpoint(&c, Utc::now()).await?;
            Some(c)
        }
        None => None,
    };
    let total = db.count_scope(mirror.name(), &scope).await?;
    progress.update(report.checked, Some(total as u64), "validating");

    // The pipeline owns clones of its handles (cheap: shared clients) so its futures are
    // `Send + 'static` and the whole operation can run on a spawned task.
    let (origin, mirror_c) = (origin.clone(), mirror.clone());
    // `--all` visits every live file, so the bucket's listing (1,000 sizes per request) answers
    // for the mirror side; a narrower scope HEADs only the objects it needs.
    let rows: BoxStream<'static, Result<(LifecycleRow, walk::Listed)>> = if walks_all {
        let after = checkpoint.as_ref().and_then(|c| c.after_key.clone());
        walk::rows_with_listing(db.clone(), mirror.clone(), after).boxed()
    } else {
        walk::paged_rows(db.clone(), mirror.name().to_string(), scope)
            .map_ok(|row| (row, walk::Listed::Unread))
            .boxed()
    };
    let checks = rows.map_ok(move |(row, listed)| {
        let (origin, mirror) = (origin.clone(), mirror_c.clone());
        // Each check is its own task, so building, signing and parsing the requests runs
        // on every worker thread rather than all on the thread that polls this stream.
        let check =
            tokio::spawn(async move { check::check_one(&origin, &mirror, row, listed).await });
        async move {
            check
                .await
                .map_err(|e| Error::runtime(format!("a validation check stopped: {e}")))?
        }
    });
    // A checkpoint names the last key of a written batch, so results must come in key order
    // then; otherwise whichever answer comes first is taken.
    let results: BoxStream<'static, Result<check::Checked>> = if checkpoint.is_some() {
        checks.try_buffered(p.concurrency).boxed()
    } else {
        checks.try_buffer_unordered(p.concurrency).boxed()
    };
    let mut batches = results.chunks(record::WRITE_BATCH);
    let recorder = record::Recorder {
        db: db.clone(),
        record: recording.is_some(),
        keep_fresh_items: !p.ids.is_empty(),
        checkpoint: checkpoint.clone(),
        total: total as u64,
    };
    recorder.run(&mut batches, &mut report, progress).await?;
    if let Some(c) = &checkpoint {
        // The walk is complete: nothing is left to resume.
        db.clear_validate_checkpoint(&c.bucket).await?;
    }
    Ok(report)
}
