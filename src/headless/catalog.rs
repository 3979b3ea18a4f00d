//! Tables of the catalog commands and of prefetch.

use std::fmt::Write as _;

use super::{bytes, count, table, time};
use crate::engine::db::CatalogRow;
use crate::engine::ops::catalog::{CatalogList, ImportReport};
use crate::engine::ops::prefetch::{PrefetchReport, PrefetchStatus};

pub fn import_table(r: &ImportReport) -> String {
    let mut out = String::new();
    if r.dry_run {
        out.push_str("dry run: nothing was changed\n");
    }
    let _ = writeln!(out, "{:<13} {}", "input", r.input);
    for (k, v) in [
        ("lines", r.lines),
        ("entries", r.merge.entries),
        ("added", r.merge.added),
        ("changed", r.merge.changed),
        ("unchanged", r.merge.unchanged),
        ("marked stale", r.merge.marked_stale),
        ("pruned", r.merge.pruned),
        ("duplicates", r.duplicates),
        ("skipped", r.skipped),
    ] {
        let _ = writeln!(out, "{k:<13} {:>9}", count(v as i64));
    }
    let m = &r.merge;
    if m.pruned > 0 {
        let _ = writeln!(
            out,
            "\npruned (first {}): {}{}",
            m.pruned_sample.len(),
            m.pruned_sample.join(", "),
            if m.pruned_mirrored > 0 {
                format!(
                    "\n{} pruned entries still have a copy in the mirror bucket",
                    count(m.pruned_mirrored as i64)
                )
            } else {
                String::new()
            }
        );
    }
    if !r.errors.is_empty() {
        let _ = writeln!(out, "\nskipped lines (first {}):", r.errors.len());
        for e in &r.errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}

fn entry_row(e: &CatalogRow) -> Vec<String> {
    let state = match (e.mirrored_id, e.mirrored_stale) {
        (Some(id), Some(true)) => format!("stale (file {id})"),
        (Some(id), _) => format!("mirrored (file {id})"),
        (None, _) => "not mirrored".into(),
    };
    vec![
        e.id.to_string(),
        format!("{}/{}", e.source, e.remote_id),
        e.key.clone().unwrap_or_else(|| "-".into()),
        e.size.map(bytes).unwrap_or_else(|| "-".into()),
        state,
    ]
}

pub fn list_table(r: &CatalogList) -> String {
    let mut out = format!(
        "{} entries, {} without a fresh mirrored copy\n\n",
        count(r.total),
        count(r.unmirrored)
    );
    let rows: Vec<Vec<String>> = r.entries.iter().map(entry_row).collect();
    out.push_str(&table(
        &["ID", "SOURCE/REMOTE_ID", "KEY", "SIZE", "MIRROR"],
        &[true, false, false, true, false],
        &rows,
    ));
    out
}

pub fn show_table(e: &CatalogRow) -> String {
    let row = entry_row(e);
    let deleted = e.deleted_at.map(|t| time(Some(t)));
    let mut out = String::new();
    for (k, v) in [
        ("id", e.id.to_string()),
        ("source/remote_id", row[1].clone()),
        ("file name", e.file_name.clone()),
        ("url", e.url.clone()),
        ("key", row[2].clone()),
        ("size", row[3].clone()),
        ("etag", e.etag.clone().unwrap_or_else(|| "-".into())),
        ("updated", time(Some(e.updated_at))),
        ("pruned", deleted.unwrap_or_else(|| "no".into())),
        ("mirror", row[4].clone()),
    ] {
        let _ = writeln!(out, "{k:<17} {v}");
    }
    out
}

pub fn prefetch_table(r: &PrefetchReport) -> String {
    let mut out = format!("{r}\n");
    if !r.items.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .items
            .iter()
            .map(|i| {
                let status = match i.status {
                    PrefetchStatus::Stored => "stored",
                    PrefetchStatus::Failed => "failed",
                    PrefetchStatus::Planned => "planned",
                };
                vec![
                    i.catalog_id.to_string(),
                    i.key.clone(),
                    status.into(),
                    bytes(i.bytes as i64),
                    i.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["CATALOG ID", "KEY", "STATUS", "SIZE", "ERROR"],
            &[true, false, false, true, false],
            &rows,
        ));
        if r.items_omitted > 0 {
            let _ = writeln!(out, "… and {} more", count(r.items_omitted as i64));
        }
    }
    out
}
