//! `archive restore`: an archived month loaded back into the database, every part verified
//! before any row is loaded.

use serde::Serialize;
use tokio::sync::mpsc;

use super::codec::read_parts;
use super::verify::{archive_bucket_for, download, load_manifest};
use super::{parse_partition, s3_url, PartitionState, WorkDir, MANIFEST_NAME, QUEUE_BATCHES};
use crate::engine::db::{partition_name, EventRow};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::Ctx;

/// `archive restore`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRestoreReport {
    pub partition: String,
    pub rows: u64,
    pub object: String,
    pub state: PartitionState,
}

impl Report for ArchiveRestoreReport {}

/// Loads an archived month back into the database (recreating the PostgreSQL partition) and
/// marks the record `restored`. Every part is downloaded and verified before any row is loaded.
pub async fn restore(
    ctx: &Ctx,
    partition: &str,
    progress: &Progress,
) -> Result<ArchiveRestoreReport> {
    let m = parse_partition(partition)?;
    let name = partition_name(m);
    ctx.check_writable("archive restore")?;
    let record =
        ctx.db.archive_record(&name).await?.ok_or_else(|| {
            Error::NotFound(format!("{name} has no archive (see `archive list`)"))
        })?;
    if record.state != "archived" {
        return Err(Error::Refused(format!(
            "{name} is {} already, not archived: its rows are in the database",
            record.state
        )));
    }
    let live = ctx.db.month_rows(m).await?;
    if live > 0 {
        return Err(Error::Refused(format!(
            "{name} holds {live} rows in the database; restoring would duplicate them"
        )));
    }
    let params = serde_json::json!({ "action": "restore", "partition": name });
    audited(ctx, "archive", &params, true, progress, || async {
        let bucket = archive_bucket_for(ctx, &record).await?;
        let work = WorkDir::create(&name)?;
        let manifest = match load_manifest(bucket, &record.object_key, &record.sha256).await? {
            Ok(m) => m,
            Err(problem) => {
                return Err(Error::runtime(format!("{name}: cannot restore: {problem}")))
            }
        };
        let dir = record
            .object_key
            .strip_suffix(MANIFEST_NAME)
            .unwrap_or(&record.object_key)
            .to_string();
        let mut files = Vec::new();
        for p in &manifest.parts {
            progress.check()?;
            let key = format!("{dir}{}", p.file);
            let local = work.path.join(&p.file);
            match download(bucket, &key, &local).await? {
                None => {
                    return Err(Error::runtime(format!(
                        "{name}: cannot restore: {key} is missing"
                    )))
                }
                Some((sha, _)) if sha != p.sha256 => {
                    return Err(Error::runtime(format!(
                        "{name}: cannot restore: {key} has sha256 {sha}, the manifest says {}",
                        p.sha256
                    )))
                }
                Some(_) => files.push(local),
            }
        }
        let (tx, rx) = mpsc::channel::<Vec<EventRow>>(QUEUE_BATCHES);
        let reader = {
            let name = name.clone();
            let progress = progress.clone();
            let total = record.row_count.max(0) as u64;
            tokio::task::spawn_blocking(move || read_parts(&files, &name, tx, total, &progress))
        };
        let restored = ctx.db.restore_month(m, rx).await;
        let read = reader
            .await
            .map_err(|e| Error::runtime(format!("{name}: Parquet reader stopped: {e}")))?;
        // A reader failure closes the channel early; report it rather than the short count.
        let read = read?;
        let restored = restored?;
        if read != restored || restored != record.row_count.max(0) as u64 {
            return Err(Error::runtime(format!(
                "{name}: restored {restored} rows of {read} read, {} archived",
                record.row_count
            )));
        }
        Ok(ArchiveRestoreReport {
            partition: name.clone(),
            rows: restored,
            object: s3_url(bucket, &record.object_key),
            state: PartitionState::Restored,
        })
    })
    .await
}
