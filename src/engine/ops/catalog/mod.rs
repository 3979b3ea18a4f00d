//! The catalog (`origin_files`): what the mirror may serve. `import` reads JSON Lines or CSV,
//! `sync` reads the same records from the origin itself (an S3 origin's listing, or an HTTP
//! origin's JSON Lines manifest at `origin.catalog_url`), and the admin API upserts entries.
//! All of them stage the entries in batches and merge them in one transaction (`db::catalog`):
//! memory does not grow with the file, and a bad file or a refused prune changes nothing.

mod list;
pub mod parse;
mod sync;

use std::io::Read;

use chrono::Utc;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::engine::db::{CatalogEntry, CatalogMerge, MergeOptions, MergeOutcome};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::Ctx;
pub use list::{list, show, CatalogList, CatalogListParams};
pub use parse::{Defaults, Format, LineError};
pub use sync::sync;

/// Lines read and staged at once.
pub const BATCH: usize = 5_000;
/// Line errors kept in a report; the count stays exact beyond it.
pub const MAX_ERRORS: usize = 100;

/// Where an import reads from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportInput {
    /// A file, or `-` for standard input.
    Path(String),
    /// The admin API's request body.
    Api,
    /// The origin itself (`catalog sync`): its listing or manifest.
    Origin(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportParams {
    pub input: ImportInput,
    /// From the file name when not given (`-` and the API read JSON Lines).
    pub format: Option<Format>,
    /// Soft-delete entries of the imported sources that the input does not list.
    pub prune: bool,
    /// Reject the whole import at the first malformed line.
    pub strict: bool,
    /// Report what would change, changing nothing.
    pub dry_run: bool,
    /// Allow pruning up to N entries (default policy.max_delete).
    pub max_delete: Option<u64>,
    /// The confirmation a prune needs headless.
    pub yes: bool,
}

impl Default for ImportParams {
    fn default() -> Self {
        ImportParams {
            input: ImportInput::Path("-".into()),
            format: None,
            prune: false,
            strict: false,
            dry_run: false,
            max_delete: None,
            yes: false,
        }
    }
}

/// What an import (or a sync) did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ImportReport {
    /// The file, `-`, the API, or the origin a sync read.
    pub input: String,
    pub lines: u64,
    /// Entries (distinct), added, changed, unchanged, marked stale (`origin_changed`) and pruned.
    #[serde(flatten)]
    pub merge: CatalogMerge,
    /// Lines replaced by a later line for the same `(source, remote_id)`.
    pub duplicates: u64,
    /// Malformed lines skipped.
    pub skipped: u64,
    /// The first skipped lines with the reason.
    pub errors: Vec<LineError>,
    pub dry_run: bool,
}

impl Report for ImportReport {
    fn found_problems(&self) -> bool {
        self.skipped > 0
    }

    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{} added, {} changed, {} unchanged, {} marked stale, {} pruned, {} duplicates, {} skipped",
            if self.dry_run { "dry run: " } else { "" },
            self.merge.added,
            self.merge.changed,
            self.merge.unchanged,
            self.merge.marked_stale,
            self.merge.pruned,
            self.duplicates,
            self.skipped
        )
    }
}

/// A batch of entries (or the fatal error that ends the input) sent to the stager.
pub(crate) type BatchResult = std::result::Result<parse::Batch, String>;

/// `catalog import FILE|-`: reads, checks and merges a catalog file.
pub async fn import(ctx: &Ctx, p: ImportParams, progress: &Progress) -> Result<ImportReport> {
    let ImportInput::Path(path) = &p.input else {
        return Err(Error::Usage("import reads a file or -".into()));
    };
    let format = match (p.format, path.as_str()) {
        (Some(f), _) => f,
        (None, "-") => Format::Jsonl,
        (None, path) => Format::from_path(path).ok_or_else(|| {
            Error::Usage(format!(
                "{path}: cannot tell the format from the name: pass --format jsonl or --format csv"
            ))
        })?,
    };
    let input: Box<dyn Read + Send> = if path == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(path)
                .map_err(|e| Error::Usage(format!("cannot open {path}: {e}")))?,
        )
    };
    check_guards(ctx, &p)?;
    let label = if path == "-" {
        "standard input".to_string()
    } else {
        path.clone()
    };
    let defaults = defaults_for(ctx)?;
    audited(ctx, "catalog-import", &p, !p.dry_run, progress, || async {
        let rx = read_in_thread(input, format, defaults, label.clone());
        stage_and_merge(ctx, rx, &p, label, progress).await
    })
    .await
}

/// The admin API's `POST /catalog` (JSON Lines) and `PUT /catalog/{source}/{remote_id}`:
/// entries merged like an import, never pruning, without the mutation lock (a merge is one
/// transaction), with an audit row.
pub async fn import_api(
    ctx: &Ctx,
    input: Box<dyn Read + Send>,
    defaults: Defaults,
    strict: bool,
) -> Result<ImportReport> {
    let p = ImportParams {
        input: ImportInput::Api,
        format: Some(Format::Jsonl),
        strict,
        ..Default::default()
    };
    let progress = Progress::none();
    audited(ctx, "catalog-import", &p, false, &progress, || async {
        let rx = read_in_thread(input, Format::Jsonl, defaults, "request body".into());
        stage_and_merge(ctx, rx, &p, "api".into(), &progress).await
    })
    .await
}

/// `--prune` guards and read-only mode, checked before anything is read.
fn check_guards(ctx: &Ctx, p: &ImportParams) -> Result<()> {
    if p.dry_run {
        return Ok(());
    }
    ctx.check_writable("catalog import")?;
    if p.prune && !p.yes {
        return Err(Error::Refused(
            "--prune soft-deletes catalog entries the input does not list: pass --yes to go ahead (or --dry-run to preview)"
                .into(),
        ));
    }
    Ok(())
}

/// What entries fall back to: `origin.base_url` (relative URLs and keys).
pub fn defaults_for(ctx: &Ctx) -> Result<Defaults> {
    let base_url = match &ctx.config.origin.base_url {
        Some(b) => Some(
            crate::engine::keys::base_url(b)
                .map_err(|e| Error::Usage(format!("origin.base_url: {e}")))?,
        ),
        None => None,
    };
    Ok(Defaults { base_url })
}

/// Parses `input` on a blocking thread, sending batches (two in flight at most).
fn read_in_thread(
    input: Box<dyn Read + Send>,
    format: Format,
    defaults: Defaults,
    label: String,
) -> mpsc::Receiver<BatchResult> {
    let (tx, rx) = mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut reader = match parse::CatalogReader::new(input, format, defaults) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(format!("{label}: {e}")));
                return;
            }
        };
        loop {
            let batch = reader
                .next_batch(BATCH)
                .map_err(|e| format!("{label}: {e}"));
            let end = batch.as_ref().map_or(true, |b| b.end);
            if tx.blocking_send(batch).is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Stages every batch, then merges; a fatal input error (or, with `strict`, a malformed
/// line) ends the import before the merge, so nothing is written.
pub(crate) async fn stage_and_merge(
    ctx: &Ctx,
    mut rx: mpsc::Receiver<BatchResult>,
    p: &ImportParams,
    label: String,
    progress: &Progress,
) -> Result<ImportReport> {
    let mut report = ImportReport {
        input: label,
        dry_run: p.dry_run,
        ..Default::default()
    };
    let mut stage = ctx.db.catalog_stage().await?;
    let mut staged_entries = 0u64;
    progress.update(0, None, "reading the catalog");
    while let Some(batch) = rx.recv().await {
        let batch = batch.map_err(Error::Usage)?;
        report.lines += batch.lines;
        report.duplicates += batch.duplicates;
        report.skipped += batch.bad.len() as u64;
        if p.strict {
            if let Some(first) = batch.bad.first() {
                return Err(Error::Usage(format!(
                    "{}: {first} (--strict: nothing was imported)",
                    report.input
                )));
            }
        }
        for e in batch.bad {
            if report.errors.len() < MAX_ERRORS {
                report.errors.push(e);
            }
        }
        staged_entries += batch.entries.len() as u64;
        stage.insert(&batch.entries).await?;
        progress.update(report.lines, None, format!("read {} lines", report.lines));
        if progress.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if batch.end {
            break;
        }
    }
    progress.update(report.lines, Some(report.lines), "merging");
    let max_prune = p.max_delete.unwrap_or(ctx.config.policy.max_delete);
    let opts = MergeOptions {
        prune: p.prune,
        max_prune,
        dry_run: p.dry_run,
        at: Utc::now(),
    };
    let merge = match stage.merge(&opts).await? {
        MergeOutcome::Applied(m) | MergeOutcome::DryRun(m) => m,
        MergeOutcome::OverPruneCap(m) => {
            return Err(Error::Refused(format!(
                "--prune would soft-delete {} catalog entries, over the limit of {max_prune} \
                 (policy.max_delete): pass --max-delete {} to allow it; nothing was changed",
                m.pruned, m.pruned
            )))
        }
    };
    // Lines for an entry already staged by an earlier batch were replaced there.
    report.duplicates += staged_entries.saturating_sub(merge.entries);
    report.merge = merge;
    Ok(report)
}

/// One entry from the admin API's `PUT /catalog/{source}/{remote_id}` body.
pub async fn upsert_one(
    ctx: &Ctx,
    source: &str,
    remote_id: &str,
    mut body: serde_json::Map<String, serde_json::Value>,
) -> Result<ImportReport> {
    body.insert("source".into(), source.into());
    body.insert("remote_id".into(), remote_id.into());
    let line = serde_json::Value::Object(body).to_string() + "\n";
    let defaults = defaults_for(ctx)?;
    import_api(
        ctx,
        Box::new(std::io::Cursor::new(line.into_bytes())),
        defaults,
        true,
    )
    .await
}

/// An entry made of a listed S3 object (an S3 origin's `catalog sync`).
pub(crate) fn entry_of_object(o: &crate::engine::s3::ObjectInfo) -> Option<CatalogEntry> {
    crate::engine::keys::check_key(&o.key).ok()?;
    Some(CatalogEntry {
        source: "s3".into(),
        remote_id: o.key.clone(),
        url: o.key.clone(),
        file_name: crate::engine::keys::last_segment(&o.key),
        size: Some(o.size as i64),
        etag: o.etag.clone(),
        updated_at: o.last_modified,
        key: o.key.clone(),
    })
}
