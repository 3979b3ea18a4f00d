//! The operations the TUI can start, what each would do (a dry-run preview for the
//! confirmation dialog), the equivalent headless command, and the calls into the engine.
//! This file is the one place that maps a TUI request onto an engine operation.

use crate::engine::error::Result;
use crate::engine::jobs::Progress;
use crate::engine::ops::{archive, drift, prefetch, purge, remirror, replication, validate};
use crate::engine::Ctx;
use crate::headless::bytes;
use crate::headless::purge::impact_lines;

pub use super::purge_command::PurgeRequest;

/// An operation the operator asked for, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRequest {
    /// Staleness check of every file against origin and mirror.
    Validate,
    /// Fetch one file again from the origin.
    Remirror { id: i64, key: String },
    /// Fetch every stale file again.
    RemirrorStale,
    /// Delete objects (stale, unused, over a byte budget, or by key) and soft-delete their
    /// rows.
    Purge(PurgeRequest),
    /// Compare main, backup and inventory.
    DriftCheck,
    /// Copy what the backup lacks and fix the inventory.
    DriftRepair,
    /// Export old partitions to Parquet and drop them.
    ArchiveRun,
    /// Read an archive back and check its checksums and row counts.
    ArchiveVerify { partition: String },
    /// Load an archived month back into the database.
    ArchiveRestore { partition: String },
    /// Mirror these catalog entries now ("mirror now" in the Catalog view); `label` names
    /// them in the confirmation (the key of the one selected).
    PrefetchIds { ids: Vec<i64>, label: String },
    /// Mirror every catalog entry without a fresh copy.
    PrefetchUnmirrored,
    /// Mirror the `n` most downloaded files of the last `window_days` days that lack a
    /// fresh copy.
    PrefetchTop { n: i64, window_days: i64 },
    /// Put these replication tasks back in the queue, due now with their attempts reset;
    /// `label` names them in the confirmation (the selected task's id and path).
    ReplicationRetry { ids: Vec<i64>, label: String },
    /// Put every failed replication task back in the queue.
    ReplicationRetryFailed,
}

impl OpRequest {
    /// The short name shown in the jobs list and the audit log.
    pub fn kind(&self) -> &'static str {
        match self {
            OpRequest::Validate => "validate",
            OpRequest::Remirror { .. } | OpRequest::RemirrorStale => "remirror",
            OpRequest::Purge(_) => "purge",
            OpRequest::DriftCheck | OpRequest::DriftRepair => "drift",
            OpRequest::ArchiveRun
            | OpRequest::ArchiveVerify { .. }
            | OpRequest::ArchiveRestore { .. } => "archive",
            OpRequest::PrefetchIds { .. }
            | OpRequest::PrefetchUnmirrored
            | OpRequest::PrefetchTop { .. } => "prefetch",
            OpRequest::ReplicationRetry { .. } | OpRequest::ReplicationRetryFailed => "retry",
        }
    }

    /// One line saying what will happen.
    pub fn title(&self) -> String {
        match self {
            OpRequest::Validate => "validate every mirrored file against origin and mirror".into(),
            OpRequest::Remirror { key, .. } => format!("remirror {key} from the origin"),
            OpRequest::RemirrorStale => "remirror every stale file from the origin".into(),
            OpRequest::Purge(r) => r.title(),
            OpRequest::DriftCheck => "check drift between main, backup and inventory".into(),
            OpRequest::DriftRepair => "repair drift: copy missing objects to the backup".into(),
            OpRequest::ArchiveRun => "archive old download partitions to Parquet".into(),
            OpRequest::ArchiveVerify { partition } => format!("verify the archive of {partition}"),
            OpRequest::ArchiveRestore { partition } => {
                format!("restore {partition} from its archive")
            }
            OpRequest::PrefetchIds { label, .. } => format!("mirror {label} now from the origin"),
            OpRequest::PrefetchUnmirrored => {
                "prefetch every catalog entry without a fresh mirrored copy".into()
            }
            OpRequest::PrefetchTop { n, window_days } => format!(
                "prefetch the {n} most downloaded files of the last {window_days} days that lack a fresh copy"
            ),
            OpRequest::ReplicationRetry { label, .. } => {
                format!("retry the replication of {label} to the backup")
            }
            OpRequest::ReplicationRetryFailed => {
                "retry every failed replication task to the backup".into()
            }
        }
    }

    /// What the confirmation's count counts.
    pub fn unit(&self) -> &'static str {
        match self {
            OpRequest::DriftCheck | OpRequest::DriftRepair => "objects",
            OpRequest::ArchiveRun
            | OpRequest::ArchiveVerify { .. }
            | OpRequest::ArchiveRestore { .. } => "rows",
            OpRequest::ReplicationRetry { .. } | OpRequest::ReplicationRetryFailed => "tasks",
            _ => "files",
        }
    }

    /// Whether it changes buckets or the database (then it is refused in read-only mode and
    /// needs a confirmation).
    pub fn mutating(&self) -> bool {
        !matches!(
            self,
            OpRequest::Validate | OpRequest::DriftCheck | OpRequest::ArchiveVerify { .. }
        )
    }

    /// The command that does the same from a script.
    pub fn headless_command(&self) -> String {
        let args = match self {
            OpRequest::Validate => "validate --all".to_string(),
            OpRequest::Remirror { id, .. } => format!("remirror {id}"),
            OpRequest::RemirrorStale => "remirror --all-stale".into(),
            OpRequest::Purge(r) => r.headless_args(),
            OpRequest::DriftCheck => "drift".into(),
            OpRequest::DriftRepair => "drift --repair --yes".into(),
            OpRequest::ArchiveRun => "archive run --yes".into(),
            OpRequest::ArchiveVerify { partition } => format!("archive verify {partition}"),
            OpRequest::ArchiveRestore { partition } => format!("archive restore {partition}"),
            OpRequest::PrefetchIds { ids, .. } => {
                let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                format!("prefetch --ids {} --yes", ids.join(","))
            }
            OpRequest::PrefetchUnmirrored => "prefetch --unmirrored --yes".into(),
            OpRequest::PrefetchTop { n, window_days } => {
                format!("prefetch --top {n} --window {window_days}d --yes")
            }
            OpRequest::ReplicationRetry { ids, .. } => {
                let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                format!("replication retry --ids {}", ids.join(","))
            }
            OpRequest::ReplicationRetryFailed => "replication retry --failed".into(),
        };
        format!("mirrorctl --headless {args}")
    }
}

/// What an operation would do, from a dry run: the confirmation dialog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// Lines such as "12 objects, 3.4 MiB".
    pub lines: Vec<String>,
    pub count: Option<u64>,
    pub bytes: Option<u64>,
    /// What it costs, e.g. a purge's replayed downloads and hit rate (warning colour).
    pub price: Vec<String>,
}

/// A dry run of `op`: counts and bytes for the confirmation dialog.
pub async fn preview(ctx: &Ctx, op: &OpRequest) -> Result<Preview> {
    let none = Progress::none();
    match op {
        OpRequest::Validate => {
            let s = ctx.db.storage_totals().await?;
            Ok(Preview {
                lines: vec![
                    "Asks the origin and the mirror bucket about every live file and marks the"
                        .into(),
                    "ones that changed as stale. Objects are not touched.".into(),
                ],
                count: Some(s.objects.max(0) as u64),
                bytes: Some(s.bytes.max(0) as u64),
                price: Vec::new(),
            })
        }
        OpRequest::Remirror { .. } | OpRequest::RemirrorStale => {
            let r = remirror::run(ctx, remirror_params(op, true), &none).await?;
            let mut lines = vec![
                "Fetches each file from the origin and replaces the mirrored object.".to_string(),
            ];
            lines.extend(r.items.iter().take(3).map(|i| format!("  {}", i.key)));
            Ok(Preview {
                lines,
                count: Some(r.candidates),
                bytes: Some(r.bytes),
                price: Vec::new(),
            })
        }
        OpRequest::Purge(req) => {
            let r = purge::run(ctx, purge_params(req, true), &none).await?;
            Ok(purge_preview(&r))
        }
        OpRequest::DriftCheck => Ok(Preview {
            lines: vec![
                "Lists the main and backup buckets and compares them with the inventory.".into(),
                "Changes nothing.".into(),
            ],
            count: None,
            bytes: None,
            price: Vec::new(),
        }),
        OpRequest::DriftRepair => {
            let r = drift::run(ctx, drift_params(true, true), &none).await?;
            let copy = r
                .repair
                .as_ref()
                .map(|x| (x.copied, x.copied_bytes))
                .unwrap_or((0, 0));
            Ok(Preview {
                lines: vec![
                    format!(
                        "Drift now: {} missing in backup, {} differ, {} only in backup.",
                        r.summary.missing_in_backup, r.summary.differ, r.summary.extra_in_backup
                    ),
                    "Copies missing and different objects main → backup and fixes the inventory."
                        .into(),
                ],
                count: Some(copy.0),
                bytes: Some(copy.1),
                price: Vec::new(),
            })
        }
        OpRequest::ArchiveRun => {
            let r = archive::run(ctx, archive_params(true), &none).await?;
            // A dry run archives nothing: the eligible months are its partitions.
            let months = r.partitions.len();
            let mut lines = vec![format!(
                "Exports {months} month(s) up to {} ({} rows) to Parquet, reads them back,",
                r.last_eligible_month, r.rows
            )];
            lines.push("and drops the rows only when the checksums and row counts match.".into());
            Ok(Preview {
                lines,
                count: None,
                // SQLite keeps no size per month: say nothing rather than "0 B".
                bytes: (r.bytes > 0).then_some(r.bytes),
                price: Vec::new(),
            })
        }
        OpRequest::ArchiveVerify { partition } => Ok(Preview {
            lines: vec![
                format!("Downloads the Parquet parts of {partition} and its manifest,"),
                "checks every part's SHA-256 and the row counts. Changes nothing.".into(),
            ],
            count: None,
            bytes: None,
            price: Vec::new(),
        }),
        OpRequest::ArchiveRestore { partition } => {
            let list = archive::list(ctx, false).await?;
            let entry = list.partitions.iter().find(|p| &p.partition == partition);
            Ok(Preview {
                lines: vec![
                    format!("Loads the archived rows of {partition} back into the database"),
                    "and marks the archive restored; the archive stays on S3.".into(),
                ],
                count: entry.map(|e| e.rows.max(0) as u64),
                bytes: entry.and_then(|e| e.bytes).map(|b| b.max(0) as u64),
                price: Vec::new(),
            })
        }
        OpRequest::PrefetchIds { .. }
        | OpRequest::PrefetchUnmirrored
        | OpRequest::PrefetchTop { .. } => {
            let r = prefetch::run(ctx, prefetch_params(op, true), &none).await?;
            let mut lines = vec![
                "Fetches each entry from the origin and stores it in the mirror bucket as a"
                    .to_string(),
                "download miss would; a stale copy is replaced.".into(),
            ];
            if r.already_mirrored > 0 {
                lines.push(format!(
                    "{} already have a fresh copy and are left alone.",
                    r.already_mirrored
                ));
            }
            lines.extend(r.items.iter().take(3).map(|i| format!("  {}", i.key)));
            Ok(Preview {
                lines,
                count: Some(r.candidates),
                // The catalog's sizes: entries of unknown size count as 0.
                bytes: Some(r.bytes),
                price: Vec::new(),
            })
        }
        OpRequest::ReplicationRetry { .. } | OpRequest::ReplicationRetryFailed => {
            let r = replication::retry(ctx, retry_params(op, true), &none).await?;
            let mut lines = vec![
                "Puts the tasks back in the queue, due now with their attempts reset;".to_string(),
                "serve's replication workers then copy each key to the backup.".into(),
            ];
            lines.extend(r.tasks.iter().take(3).map(|t| {
                let why = t.last_error.as_deref().unwrap_or("no error recorded");
                format!("  {} {}: {why}", t.id, t.path)
            }));
            if !r.unknown_ids.is_empty() {
                let ids: Vec<String> = r.unknown_ids.iter().map(i64::to_string).collect();
                lines.push(format!(
                    "Not open or failed (done already?): {}",
                    ids.join(", ")
                ));
            }
            Ok(Preview {
                lines,
                count: Some(r.requeued as u64),
                bytes: Some(r.tasks.iter().map(|t| t.size.max(0) as u64).sum()),
                price: Vec::new(),
            })
        }
    }
}

/// The confirmation of a purge from its dry run: what goes, and its price.
pub fn purge_preview(r: &purge::PurgeReport) -> Preview {
    let mut lines = vec![
        format!("Selects the files {}.", r.selection),
        "Deletes their objects from the mirror bucket, then soft-deletes their rows.".into(),
    ];
    if r.candidates == 0 {
        lines.push("No live file is selected: nothing to purge.".into());
    }
    lines.extend(r.first_keys.iter().take(3).map(|k| format!("  {k}")));
    Preview {
        lines,
        count: Some(r.candidates),
        bytes: Some(r.bytes),
        price: r.impact.as_ref().map(impact_lines).unwrap_or_default(),
    }
}

/// What a finished job hands back: its one-line result, and for drift the keys it found.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub line: String,
    pub drift_items: Option<Vec<drift::DriftItem>>,
}

impl From<String> for JobOutcome {
    fn from(line: String) -> Self {
        JobOutcome {
            line,
            drift_items: None,
        }
    }
}

/// Runs `op`, reporting through `progress`; returns the one-line result for the jobs list.
pub async fn run(ctx: &Ctx, op: &OpRequest, progress: &Progress) -> Result<JobOutcome> {
    run_op(ctx, op, progress).await
}

async fn run_op(ctx: &Ctx, op: &OpRequest, progress: &Progress) -> Result<JobOutcome> {
    match op {
        OpRequest::Validate => {
            let p = validate::ValidateParams {
                all: true,
                ..Default::default()
            };
            let r = validate::run(ctx, p, progress).await?;
            Ok(JobOutcome::from(r.to_string()))
        }
        OpRequest::Remirror { .. } | OpRequest::RemirrorStale => {
            let r = remirror::run(ctx, remirror_params(op, false), progress).await?;
            Ok(JobOutcome::from(format!(
                "remirrored {} of {} ({}), {} failed",
                r.remirrored,
                r.candidates,
                bytes(r.bytes as i64),
                r.failed
            )))
        }
        OpRequest::Purge(req) => {
            let r = purge::run(ctx, purge_params(req, false), progress).await?;
            Ok(JobOutcome::from(r.to_string()))
        }
        OpRequest::DriftCheck | OpRequest::DriftRepair => {
            let repair = *op == OpRequest::DriftRepair;
            let r = drift::run(ctx, drift_params(repair, false), progress).await?;
            let s = &r.summary;
            let mut line = format!(
                "same {}, missing in backup {}, extra in backup {}, differ {}, unverifiable {}, inventory missing {}, orphaned {}, errors {}",
                s.same,
                s.missing_in_backup,
                s.extra_in_backup,
                s.differ,
                s.unverifiable,
                s.inventory_missing,
                s.inventory_orphaned,
                s.errors
            );
            if let Some(x) = &r.repair {
                line.push_str(&format!(
                    "; copied {} ({})",
                    x.copied,
                    bytes(x.copied_bytes as i64)
                ));
            }
            Ok(JobOutcome {
                line,
                drift_items: Some(r.items),
            })
        }
        OpRequest::ArchiveRun => {
            let r = archive::run(ctx, archive_params(false), progress).await?;
            Ok(JobOutcome::from(r.to_string()))
        }
        OpRequest::ArchiveVerify { partition } => {
            let r = archive::verify(ctx, partition, progress).await?;
            let mut line = format!(
                "{}: {} — {} of {} rows, {} part(s)",
                r.partition,
                if r.ok { "verified" } else { "MISMATCH" },
                r.rows,
                r.expected_rows,
                r.parts.len()
            );
            for p in &r.problems {
                line.push_str("; ");
                line.push_str(p);
            }
            Ok(JobOutcome::from(line))
        }
        OpRequest::ArchiveRestore { partition } => {
            let r = archive::restore(ctx, partition, progress).await?;
            Ok(JobOutcome::from(format!(
                "restored {}: {} rows from {}",
                r.partition, r.rows, r.object
            )))
        }
        OpRequest::PrefetchIds { .. }
        | OpRequest::PrefetchUnmirrored
        | OpRequest::PrefetchTop { .. } => {
            let r = prefetch::run(ctx, prefetch_params(op, false), progress).await?;
            Ok(JobOutcome::from(r.to_string()))
        }
        OpRequest::ReplicationRetry { .. } | OpRequest::ReplicationRetryFailed => {
            let r = replication::retry(ctx, retry_params(op, false), progress).await?;
            Ok(JobOutcome::from(r.to_string()))
        }
    }
}

fn retry_params(op: &OpRequest, dry_run: bool) -> replication::RetryParams {
    let select = match op {
        OpRequest::ReplicationRetry { ids, .. } => replication::RetrySelector::Ids(ids.clone()),
        _ => replication::RetrySelector::Failed,
    };
    replication::RetryParams { select, dry_run }
}

fn remirror_params(op: &OpRequest, dry_run: bool) -> remirror::RemirrorParams {
    let (targets, all_stale) = match op {
        OpRequest::Remirror { id, .. } => (vec![id.to_string()], false),
        _ => (Vec::new(), true),
    };
    remirror::RemirrorParams {
        targets,
        all_stale,
        dry_run,
        // The TUI's confirmation is the operator's yes.
        yes: !dry_run,
        ..Default::default()
    }
}

fn purge_params(req: &PurgeRequest, dry_run: bool) -> purge::PurgeParams {
    purge::PurgeParams {
        target: req.target,
        prefix: req.prefix.clone(),
        pattern: req.pattern.clone(),
        impact_days: purge::DEFAULT_IMPACT_DAYS,
        dry_run,
        max_delete: req.max_delete,
        // The TUI's confirmation is the operator's yes.
        yes: !dry_run,
    }
}

fn drift_params(repair: bool, dry_run: bool) -> drift::DriftParams {
    drift::DriftParams {
        repair,
        dry_run,
        ..Default::default()
    }
}

fn prefetch_params(op: &OpRequest, dry_run: bool) -> prefetch::PrefetchParams {
    let selection = match op {
        OpRequest::PrefetchIds { ids, .. } => prefetch::PrefetchSelection::Ids(ids.clone()),
        OpRequest::PrefetchTop { n, window_days } => prefetch::PrefetchSelection::Top {
            n: *n,
            window_days: *window_days,
        },
        _ => prefetch::PrefetchSelection::Unmirrored,
    };
    prefetch::PrefetchParams {
        selection,
        // As the headless command's default.
        concurrency: drift::DEFAULT_CONCURRENCY,
        max_bytes: None,
        dry_run,
        yes: !dry_run,
    }
}

fn archive_params(dry_run: bool) -> archive::ArchiveRunParams {
    archive::ArchiveRunParams {
        dry_run,
        yes: !dry_run,
        ..Default::default()
    }
}
