//! `archive run`: which months are eligible, the confirmation, and the order of effects for
//! each month (export, upload and verify, then drop).

use chrono::Utc;
use serde::Serialize;

use super::DEFAULT_ROWS_PER_PART;
use super::{export_and_upload, label, last_eligible_month, parse_partition, UploadedArchive};
use crate::engine::db::{partition_name, Month};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::Ctx;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveRunParams {
    /// Archive months that ended more than this many months ago (default: policy).
    pub older_than_months: Option<u32>,
    /// Archive only this partition (`download_events_yYYYYmMM`).
    pub partition: Option<String>,
    pub dry_run: bool,
    /// The operator confirmed (`--yes`, or the TUI's confirmation).
    pub yes: bool,
    /// Rows per part file (default `DEFAULT_ROWS_PER_PART`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_part: Option<u64>,
}

/// What happened to one month in `archive run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Archived,
    WouldArchive,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunEntry {
    pub partition: String,
    pub year: i32,
    pub month: u32,
    pub rows: u64,
    /// `rows` is PostgreSQL's catalog estimate (the plan); after archiving it is the count.
    pub rows_estimated: bool,
    /// Database size before (dry run), Parquet bytes after.
    pub bytes: Option<u64>,
    pub parts: usize,
    pub object: Option<String>,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `archive run`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRunReport {
    pub dry_run: bool,
    pub older_than_months: u32,
    /// The newest month old enough, `YYYY-MM`.
    pub last_eligible_month: String,
    pub archived: usize,
    pub rows: u64,
    pub bytes: u64,
    pub partitions: Vec<RunEntry>,
}

impl Report for ArchiveRunReport {
    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// The one-line summary the TUI's job list and the data plane's workers show.
impl std::fmt::Display for ArchiveRunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "archived {} partition(s), {} rows, {}",
            self.archived,
            self.rows,
            humansize::format_size(self.bytes, humansize::BINARY)
        )
    }
}

/// Archives every eligible month (or the one named): export, upload, verify, then drop.
pub async fn run(
    ctx: &Ctx,
    params: ArchiveRunParams,
    progress: &Progress,
) -> Result<ArchiveRunReport> {
    let now = Utc::now();
    let current = Month::of(now);
    let named = params
        .partition
        .as_deref()
        .map(parse_partition)
        .transpose()?;
    if !params.dry_run {
        ctx.check_writable("archive run")?;
    }
    let n = params
        .older_than_months
        .unwrap_or(ctx.config.policy.archive_after_months);
    let last = last_eligible_month(now, n);
    let mut plan: Vec<RunEntry> = Vec::new();
    let entry =
        |m: Month, rows: u64, bytes: Option<u64>, status, reason: Option<String>| RunEntry {
            partition: partition_name(m),
            year: m.year,
            month: m.month,
            rows,
            rows_estimated: false,
            bytes,
            parts: 0,
            object: None,
            status,
            reason,
        };
    // Catalog estimates: planning (and every tick of `serve`'s archive worker) must not count
    // 100M rows. The export counts what it writes.
    let live = ctx.db.live_months(false).await?;
    let records = ctx.db.archive_records().await?;
    let archived_state = |m: Month| {
        records
            .iter()
            .find(|r| r.partition == partition_name(m))
            .map(|r| r.state.clone())
    };
    match named {
        Some(m) => {
            if m >= current {
                return Err(Error::Refused(format!(
                    "{} is the current month or later: only months that have ended can be archived",
                    partition_name(m)
                )));
            }
            let detached = live.iter().any(|l| l.month == m && l.detached);
            if params.older_than_months.is_some() && m > last && !detached {
                return Err(Error::Refused(format!(
                    "{} ended less than {n} months ago (the newest eligible month is {})",
                    partition_name(m),
                    label(last)
                )));
            }
            let rows = live.iter().find(|l| l.month == m);
            match (rows, archived_state(m).as_deref()) {
                (None, Some("archived")) => plan.push(entry(
                    m,
                    0,
                    None,
                    RunStatus::Skipped,
                    Some("already archived".into()),
                )),
                (None, _) if ctx.db.month_exists(m).await? => plan.push(entry(
                    m,
                    0,
                    None,
                    RunStatus::Skipped,
                    Some("no rows".into()),
                )),
                (None, _) => {
                    return Err(Error::NotFound(format!("partition {}", partition_name(m))))
                }
                (Some(l), Some("archived")) => plan.push(entry(
                    m,
                    l.rows as u64,
                    None,
                    RunStatus::Skipped,
                    Some(late_rows_reason(l.rows)),
                )),
                (Some(l), _) => plan.push(RunEntry {
                    rows_estimated: l.rows_estimated,
                    ..entry(
                        m,
                        l.rows as u64,
                        l.bytes.map(|b| b as u64),
                        RunStatus::WouldArchive,
                        None,
                    )
                }),
            }
        }
        None => {
            // A detached month is an interrupted run's: finished whatever its age now.
            for l in live.iter().filter(|l| l.month <= last || l.detached) {
                if archived_state(l.month).as_deref() == Some("archived") {
                    plan.push(entry(
                        l.month,
                        l.rows as u64,
                        None,
                        RunStatus::Skipped,
                        Some(late_rows_reason(l.rows)),
                    ));
                } else {
                    plan.push(RunEntry {
                        rows_estimated: l.rows_estimated,
                        ..entry(
                            l.month,
                            l.rows as u64,
                            l.bytes.map(|b| b as u64),
                            RunStatus::WouldArchive,
                            None,
                        )
                    });
                }
            }
        }
    }
    let todo: Vec<Month> = plan
        .iter()
        .filter(|e| e.status == RunStatus::WouldArchive)
        .map(|e| Month {
            year: e.year,
            month: e.month,
        })
        .collect();
    let todo_rows: u64 = plan
        .iter()
        .filter(|e| e.status == RunStatus::WouldArchive)
        .map(|e| e.rows)
        .sum();
    if !params.dry_run && !params.yes && !todo.is_empty() {
        return Err(Error::Refused(format!(
            "archive run would export and drop {} partition(s) ({} rows): pass --yes to go ahead, or --dry-run to preview",
            todo.len(),
            todo_rows
        )));
    }
    let mut report = ArchiveRunReport {
        dry_run: params.dry_run,
        older_than_months: n,
        last_eligible_month: label(last),
        archived: 0,
        rows: 0,
        bytes: 0,
        partitions: plan,
    };
    if params.dry_run {
        report.rows = todo_rows;
        return audited(ctx, "archive", &params, false, progress, || async move {
            Ok(report)
        })
        .await;
    }
    let rows_per_part = params.rows_per_part.unwrap_or(DEFAULT_ROWS_PER_PART).max(1);
    audited(ctx, "archive", &params, true, progress, || async move {
        for m in todo {
            progress.check()?;
            let done = archive_month(ctx, m, rows_per_part, progress).await?;
            let e = report
                .partitions
                .iter_mut()
                .find(|e| e.partition == partition_name(m))
                .ok_or_else(|| Error::runtime("archive plan lost a month"))?;
            match done {
                Some(up) => {
                    e.status = RunStatus::Archived;
                    e.rows = up.rows;
                    e.rows_estimated = false;
                    e.bytes = Some(up.manifest.bytes);
                    e.parts = up.manifest.parts.len();
                    e.object = Some(format!(
                        "s3://{}/{}",
                        up.record.bucket, up.record.object_key
                    ));
                    report.archived += 1;
                    report.rows += up.rows;
                    report.bytes += up.manifest.bytes;
                }
                None => {
                    e.status = RunStatus::Skipped;
                    e.rows = 0;
                    e.rows_estimated = false;
                    e.reason = Some("no rows left to archive".into());
                }
            }
        }
        Ok(report)
    })
    .await
}

fn late_rows_reason(rows: i64) -> String {
    format!(
        "already archived, and {rows} rows arrived since: restore it first, then archive again \
         (archiving now would replace the archive with the late rows only)"
    )
}

/// Archives one month completely; `None` when it had no rows.
///
/// PostgreSQL 14+: the partition is first detached with `DETACH … CONCURRENTLY`, so writers
/// of other months never queue behind the archive and no row can arrive in the month while it
/// is exported; readers find its rows under the detached table's name until the drop. A crash
/// at any step leaves the month detached (or its detach pending) with every row in it: the
/// next run finishes the detach and starts the export over. Elsewhere the drop detaches.
async fn archive_month(
    ctx: &Ctx,
    m: Month,
    rows_per_part: u64,
    progress: &Progress,
) -> Result<Option<UploadedArchive>> {
    let name = partition_name(m);
    progress.update(0, None, format!("{name}: detaching from download_events"));
    let detached = ctx.db.detach_month(m).await?;
    let Some(up) = export_and_upload(ctx, m, rows_per_part, progress).await? else {
        if detached {
            ctx.db.drop_empty_detached(m).await?;
        }
        return Ok(None);
    };
    progress.update(
        up.rows,
        Some(up.rows),
        format!("{name}: dropping from the database"),
    );
    ctx.db.drop_archived_month(m, up.rows, &up.record).await?;
    Ok(Some(up))
}
