//! Repair for `drift`: takes each disagreeing key from the merge's bounded queue as soon as it
//! is classified, copies what the backup lacks or holds differently from main, deletes extras
//! when asked, and writes inventory rows that describe the buckets afterwards, a batch at a
//! time. Memory is bounded by the queue, the copies in flight and one batch of rows, never by
//! the number of differences.
//!
//! Objects first, rows second: a crash in between leaves rows that a rerun corrects, never rows
//! that lie about a copy that did not happen.

use chrono::Utc;
use futures::future;
use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;

use super::{DriftItem, DriftParams, PairStatus, RepairFailure, RepairReport, REPAIR_ROWS};
use crate::engine::db::Db;
use crate::engine::error::Result;
use crate::engine::jobs::Progress;
use crate::engine::model::InventoryRow;
use crate::engine::s3::{CopyOutcome, S3Bucket};

/// What the repair did for one key.
#[derive(Default)]
struct KeyOutcome {
    copied_bytes: Option<u64>,
    deleted: bool,
    kept_extra: bool,
    skipped: bool,
    main_changed: bool,
    failure: Option<RepairFailure>,
    /// The inventory row that describes the buckets now, when it differs from the stored one.
    row: Option<InventoryRow>,
    soft_delete: bool,
}

/// Repairs the keys the merge sends until it closes the queue, `concurrency` keys at a time.
/// On cancel it takes no new key, finishes the ones under way and writes their rows.
pub(super) async fn repair(
    db: &Db,
    main: &S3Bucket,
    backup: &S3Bucket,
    params: &DriftParams,
    queue: mpsc::Receiver<DriftItem>,
    progress: &Progress,
) -> RepairReport {
    let mut report = RepairReport {
        dry_run: params.dry_run,
        server_side_copy: main.same_endpoint(backup),
        ..Default::default()
    };
    let keys = stream::unfold(queue, |mut q| async move { q.recv().await.map(|i| (i, q)) })
        .take_while(|_| future::ready(!progress.is_cancelled()))
        .map(|item| repair_key(main, backup, params, item))
        .buffer_unordered(params.concurrency.max(1));
    futures::pin_mut!(keys);
    let mut rows: Vec<InventoryRow> = Vec::new();
    let mut soft_deleted = 0u64;
    while let Some(k) = keys.next().await {
        if let Some(bytes) = k.copied_bytes {
            report.copied += 1;
            report.copied_bytes += bytes;
        }
        report.deleted += k.deleted as u64;
        report.kept_extra += k.kept_extra as u64;
        report.skipped += k.skipped as u64;
        report.main_changed += k.main_changed as u64;
        report.failures.extend(k.failure);
        if let Some(row) = k.row {
            soft_deleted += k.soft_delete as u64;
            rows.push(row);
        }
        if rows.len() >= REPAIR_ROWS {
            write_rows(db, params, &mut rows, &mut soft_deleted, &mut report).await;
        }
    }
    write_rows(db, params, &mut rows, &mut soft_deleted, &mut report).await;
    report
}

/// Writes a batch of inventory rows (not in a dry run) and counts them.
async fn write_rows(
    db: &Db,
    params: &DriftParams,
    rows: &mut Vec<InventoryRow>,
    soft_deleted: &mut u64,
    report: &mut RepairReport,
) {
    if rows.is_empty() {
        return;
    }
    let written = if params.dry_run {
        Ok(())
    } else {
        db.upsert_inventory(rows).await
    };
    match written {
        Ok(()) => {
            report.inventory_soft_deleted += *soft_deleted;
            report.inventory_written += rows.len() as u64 - *soft_deleted;
        }
        Err(e) => report.failures.push(RepairFailure {
            key: rows.first().map(|r| r.path.clone()).unwrap_or_default(),
            action: "inventory".into(),
            error: format!("{} rows: {e}", rows.len()),
        }),
    }
    rows.clear();
    *soft_deleted = 0;
}

/// Decides and does one key's repair.
async fn repair_key(
    main: &S3Bucket,
    backup: &S3Bucket,
    params: &DriftParams,
    item: DriftItem,
) -> KeyOutcome {
    let mut out = KeyOutcome::default();
    let main_key = format!("{}{}", main.prefix(), item.key);
    let backup_key = format!("{}{}", backup.prefix(), item.key);
    let mut backup_has = item.backup.is_some();
    match item.status {
        Some(PairStatus::Unverifiable | PairStatus::Error) => {
            out.skipped = true;
            return out;
        }
        // Not sent by the merge; left to the replication worker in any case.
        Some(PairStatus::Pending) => return out,
        Some(PairStatus::MissingInBackup | PairStatus::Differ) => {
            let size = item.main.as_ref().map_or(0, |m| m.size);
            if params.dry_run {
                out.copied_bytes = Some(size);
                backup_has = true;
            } else {
                // Pinned to the listed ETag: a main object replaced since the listing is the
                // next check's business, not copied under the old one's row.
                let etag = match listed_etag(main, &main_key, &item).await {
                    Ok(Some(etag)) => etag,
                    Ok(None) => {
                        out.main_changed = true;
                        return out;
                    }
                    Err(e) => {
                        out.failure = Some(RepairFailure {
                            key: item.key.clone(),
                            action: "copy".into(),
                            error: e.to_string(),
                        });
                        return out;
                    }
                };
                match backup
                    .copy_object_from(main, &main_key, &backup_key, etag.as_deref())
                    .await
                {
                    Ok(CopyOutcome::Copied { .. }) => {
                        out.copied_bytes = Some(size);
                        backup_has = true;
                    }
                    Ok(CopyOutcome::SourceChanged | CopyOutcome::SourceMissing) => {
                        out.main_changed = true;
                        return out;
                    }
                    Err(e) => {
                        out.failure = Some(RepairFailure {
                            key: item.key.clone(),
                            action: "copy".into(),
                            error: e.to_string(),
                        })
                    }
                }
            }
        }
        Some(PairStatus::ExtraInBackup) if params.delete_extra => {
            // Main may have the key by now (written since the listing): then the backup's
            // object is not extra, and deleting it would lose the only copy of an old version
            // the backup was keeping until replication catches up.
            match main_has(main, &main_key).await {
                Ok(true) => {
                    out.main_changed = true;
                    return out;
                }
                Ok(false) if params.dry_run => {
                    out.deleted = true;
                    backup_has = false;
                }
                Ok(false) => match backup.delete(&backup_key).await {
                    Ok(()) => {
                        out.deleted = true;
                        backup_has = false;
                    }
                    Err(e) => {
                        out.failure = Some(RepairFailure {
                            key: item.key.clone(),
                            action: "delete".into(),
                            error: e.to_string(),
                        })
                    }
                },
                Err(e) => {
                    out.failure = Some(RepairFailure {
                        key: item.key.clone(),
                        action: "delete".into(),
                        error: format!("re-checking main: {e}"),
                    });
                    return out;
                }
            }
        }
        Some(PairStatus::ExtraInBackup) => out.kept_extra = true,
        Some(PairStatus::Same) | None => {}
    }
    let (row, soft_delete) = inventory_row(&item, backup_has);
    out.row = row;
    out.soft_delete = soft_delete;
    out
}

/// The ETag to pin a copy to: the listed one; for a server that lists no ETags, the one HEAD
/// gives while size and Last-Modified are still the listed ones. `Ok(None)`: main changed.
async fn listed_etag(
    main: &S3Bucket,
    main_key: &str,
    item: &DriftItem,
) -> Result<Option<Option<String>>> {
    let Some(listed) = &item.main else {
        return Ok(Some(None));
    };
    if listed.etag.is_some() {
        return Ok(Some(listed.etag.clone()));
    }
    Ok(match main.head(main_key).await? {
        // HEAD's Last-Modified is an HTTP date: whole seconds, where listings have more.
        Some(h)
            if h.size == listed.size
                && h.last_modified.map(|t| t.timestamp())
                    == listed.last_modified.map(|t| t.timestamp()) =>
        {
            Some(h.etag)
        }
        _ => None,
    })
}

async fn main_has(main: &S3Bucket, key: &str) -> Result<bool> {
    Ok(main.head(key).await?.is_some())
}

/// The row that describes the key after the repair, if the stored one does not already; and
/// whether that row is a soft delete (no bucket holds the object).
fn inventory_row(item: &DriftItem, backup_has: bool) -> (Option<InventoryRow>, bool) {
    let now = Utc::now();
    let object = item.main.as_ref().or(if backup_has {
        item.backup.as_ref()
    } else {
        None
    });
    match object {
        None => match &item.inventory {
            Some(row) => (
                Some(InventoryRow {
                    deleted: true,
                    updated_at: now,
                    ..row.clone()
                }),
                true,
            ),
            None => (None, false),
        },
        Some(o) => {
            let row = InventoryRow {
                path: item.key.clone(),
                size: o.size as i64,
                etag: o.etag.clone(),
                content_type: item.inventory.as_ref().and_then(|r| r.content_type.clone()),
                is_backed_up: backup_has,
                last_modified: o.last_modified,
                deleted: false,
                updated_at: now,
            };
            let unchanged = item.inventory.as_ref().is_some_and(|r| {
                r.size == row.size
                    && r.etag.as_deref().map(|e| e.trim_matches('"')) == row.etag.as_deref()
                    && r.is_backed_up == row.is_backed_up
            });
            ((!unchanged).then_some(row), false)
        }
    }
}
