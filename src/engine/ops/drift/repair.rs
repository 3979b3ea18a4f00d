//! Repair for `drift`: copies what the backup lacks or holds differently from main, deletes
//! extras when asked, and writes inventory rows that describe the buckets afterwards.

use std::collections::HashSet;

use chrono::Utc;
use futures::stream::{self, StreamExt};

use super::{strip, DriftItem, DriftParams, PairStatus, RepairFailure, RepairReport};
use crate::engine::db::Db;
use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;
use crate::engine::model::InventoryRow;
use crate::engine::s3::S3Bucket;

/// What repair decided for one key.
struct KeyPlan<'a> {
    item: &'a DriftItem,
    copy: bool,
    delete: bool,
}

/// Copies missing and different objects to the backup, deletes extras when asked, then
/// writes inventory rows that match what the buckets hold afterwards. Objects first, rows
/// second: a crash in between leaves rows that a rerun corrects, never rows that lie about
/// a copy that did not happen.
pub(super) async fn repair(
    db: &Db,
    main: &S3Bucket,
    backup: &S3Bucket,
    params: &DriftParams,
    items: &[DriftItem],
    progress: &Progress,
) -> RepairReport {
    let server_side = main.same_endpoint(backup);
    let mut report = RepairReport {
        dry_run: params.dry_run,
        server_side_copy: server_side,
        ..Default::default()
    };
    let plans: Vec<KeyPlan> = items
        .iter()
        .map(|item| KeyPlan {
            item,
            copy: matches!(
                item.status,
                Some(PairStatus::MissingInBackup | PairStatus::Differ)
            ),
            delete: params.delete_extra && item.status == Some(PairStatus::ExtraInBackup),
        })
        .collect();
    report.skipped = items
        .iter()
        .filter(|i| matches!(i.status, Some(PairStatus::Unverifiable | PairStatus::Error)))
        .count() as u64;
    report.kept_extra = items
        .iter()
        .filter(|i| i.status == Some(PairStatus::ExtraInBackup) && !params.delete_extra)
        .count() as u64;

    // Copies, `concurrency` at a time.
    let to_copy: Vec<&DriftItem> = plans.iter().filter(|p| p.copy).map(|p| p.item).collect();
    let total = to_copy.len() as u64;
    let mut copied_ok = HashSet::new();
    if params.dry_run {
        report.copied = total;
        report.copied_bytes = to_copy
            .iter()
            .filter_map(|i| i.main.as_ref())
            .map(|m| m.size)
            .sum();
        copied_ok.extend(to_copy.iter().map(|i| i.key.as_str()));
    } else {
        let results: Vec<(&DriftItem, Result<()>)> = stream::iter(to_copy)
            .map(|item| async move { (item, copy_one(main, backup, &item.key, server_side).await) })
            .buffer_unordered(params.concurrency.max(1))
            .collect()
            .await;
        for (item, r) in results {
            match r {
                Ok(()) => {
                    report.copied += 1;
                    report.copied_bytes += item.main.as_ref().map(|m| m.size).unwrap_or(0);
                    copied_ok.insert(item.key.as_str());
                }
                Err(e) => report.failures.push(RepairFailure {
                    key: item.key.clone(),
                    action: "copy".into(),
                    error: e.to_string(),
                }),
            }
            progress.update(report.copied, Some(total), "copying main → backup");
        }
    }

    // Deletes of extra backup objects.
    let to_delete: Vec<String> = plans
        .iter()
        .filter(|p| p.delete)
        .map(|p| format!("{}{}", backup.prefix(), p.item.key))
        .collect();
    let mut deleted_ok = HashSet::new();
    if params.dry_run {
        report.deleted = to_delete.len() as u64;
        deleted_ok.extend(
            plans
                .iter()
                .filter(|p| p.delete)
                .map(|p| p.item.key.clone()),
        );
    } else if !to_delete.is_empty() {
        match backup.delete_batch(&to_delete).await {
            Ok(d) => {
                report.deleted = d.deleted.len() as u64;
                let base = backup.prefix();
                deleted_ok.extend(d.deleted.into_iter().map(|k| strip(base, k)));
                for (k, e) in d.failed {
                    report.failures.push(RepairFailure {
                        key: strip(base, k),
                        action: "delete".into(),
                        error: e,
                    });
                }
            }
            Err(e) => report.failures.push(RepairFailure {
                key: String::new(),
                action: "delete".into(),
                error: e.to_string(),
            }),
        }
    }

    // Inventory rows that describe the buckets after the changes above.
    let now = Utc::now();
    let mut rows = Vec::new();
    let mut soft_deleted = 0u64;
    for p in &plans {
        let item = p.item;
        if matches!(
            item.status,
            Some(PairStatus::Unverifiable | PairStatus::Error)
        ) {
            continue;
        }
        let backup_has = if copied_ok.contains(item.key.as_str()) {
            true
        } else if deleted_ok.contains(&item.key) {
            false
        } else {
            item.backup.is_some()
        };
        let object = item.main.as_ref().or(if backup_has {
            item.backup.as_ref()
        } else {
            None
        });
        let want = match object {
            None => item.inventory.as_ref().map(|row| {
                soft_deleted += 1;
                InventoryRow {
                    deleted: true,
                    updated_at: now,
                    ..row.clone()
                }
            }),
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
                (!unchanged).then_some(row)
            }
        };
        rows.extend(want);
    }
    report.inventory_soft_deleted = soft_deleted;
    report.inventory_written = rows.len() as u64 - soft_deleted;
    if !params.dry_run && !rows.is_empty() {
        if let Err(e) = db.upsert_inventory(&rows).await {
            report.failures.push(RepairFailure {
                key: String::new(),
                action: "inventory".into(),
                error: e.to_string(),
            });
            report.inventory_written = 0;
            report.inventory_soft_deleted = 0;
        }
    }
    report
}

/// Copies one object main → backup: server-side on a shared endpoint, else streamed through
/// this process (memory bounded by the upload's part size).
async fn copy_one(main: &S3Bucket, backup: &S3Bucket, key: &str, server_side: bool) -> Result<()> {
    let src = format!("{}{key}", main.prefix());
    let dst = format!("{}{key}", backup.prefix());
    if server_side {
        return backup.copy_from(main, &src, &dst).await;
    }
    let Some(obj) = main.get(&src, None).await? else {
        return Err(Error::S3 {
            bucket: main.name().to_string(),
            endpoint: main.endpoint().to_string(),
            message: format!("get {src:?}: disappeared before the copy"),
        });
    };
    let content_type = obj.meta.content_type.clone();
    backup
        .put_stream(&dst, obj.body, content_type.as_deref())
        .await?;
    Ok(())
}
