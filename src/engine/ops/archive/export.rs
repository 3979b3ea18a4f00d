//! Every step of archiving a month but the drop: the database streams the month into the
//! Parquet writer, the parts and the manifest go to S3 and are read back and verified.

use bytes::Bytes;
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::codec::{arrow_schema, write_parts, BATCH_ROWS};
use super::verify::verify_objects;
use super::{
    month_dir, Manifest, ManifestColumn, ManifestPart, WorkDir, MANIFEST_NAME,
    PARQUET_CONTENT_TYPE, QUEUE_BATCHES, SCHEMA_VERSION,
};
use crate::engine::background;
use crate::engine::db::{partition_name, ArchiveRecord, EventRow, Month};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;
use crate::engine::Ctx;

/// A month uploaded and verified but not yet dropped (the state a crash before the drop leaves).
#[derive(Debug, Clone)]
pub struct UploadedArchive {
    pub month: Month,
    pub rows: u64,
    pub manifest: Manifest,
    pub record: ArchiveRecord,
}

/// Every step of archiving a month but the drop: export to Parquet, upload the parts and the
/// manifest, read them back and verify, and remove parts a previous, larger run left behind.
/// The database is not changed. `None` when the month has no rows.
pub async fn export_and_upload(
    ctx: &Ctx,
    m: Month,
    rows_per_part: u64,
    progress: &Progress,
) -> Result<Option<UploadedArchive>> {
    let bucket = ctx.archive().await?;
    let name = partition_name(m);
    let dir = month_dir(bucket, m);
    let work = WorkDir::create(&name)?;

    // Export: the database streams batches into a bounded queue; a thread of its own encodes
    // them, at idle priority (see `background`), so the encoding takes only the CPU the data
    // plane leaves; the thread ends with the export.
    let (tx, rx) = mpsc::channel::<Vec<EventRow>>(QUEUE_BATCHES);
    let writer = {
        let path = work.path.clone();
        let part_name = name.clone();
        let progress = progress.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("archive-writer".into())
            .spawn(move || {
                background::lower_to_idle();
                let _ = done.send(write_parts(rx, &path, &part_name, rows_per_part, &progress));
            })
            .map_err(|e| Error::runtime(format!("{name}: cannot start the Parquet writer: {e}")))?;
        result
    };
    let exported = ctx.db.export_month(m, BATCH_ROWS, tx).await;
    let parts = writer
        .await
        .map_err(|_| Error::runtime(format!("{name}: Parquet writer stopped")))??;
    let exported = exported?;
    let rows: u64 = parts.iter().map(|p| p.rows).sum();
    if rows != exported {
        return Err(Error::runtime(format!(
            "{name}: exported {exported} rows but wrote {rows}; nothing uploaded"
        )));
    }
    if rows == 0 {
        return Ok(None);
    }

    // Upload parts, then the manifest that names them.
    let mut uploaded = 0u64;
    let total_bytes: u64 = parts.iter().map(|p| p.bytes).sum();
    for p in &parts {
        progress.check()?;
        let file = tokio::fs::File::open(&p.path)
            .await
            .map_err(|e| Error::runtime(format!("{name}: reading {}: {e}", p.path.display())))?;
        bucket
            .put_stream(
                &format!("{dir}{}", p.file),
                file,
                Some(PARQUET_CONTENT_TYPE),
            )
            .await?;
        uploaded += p.bytes;
        progress.update(
            uploaded,
            Some(total_bytes),
            format!("{name}: uploaded {} of {} bytes", uploaded, total_bytes),
        );
    }
    let manifest = Manifest {
        table: "download_events".into(),
        partition: name.clone(),
        year: m.year,
        month: m.month,
        schema_version: SCHEMA_VERSION,
        format: "parquet".into(),
        compression: "zstd".into(),
        rows,
        bytes: total_bytes,
        min_occurred_at: parts.iter().filter_map(|p| p.min).min(),
        max_occurred_at: parts.iter().filter_map(|p| p.max).max(),
        created_at: Utc::now(),
        columns: arrow_schema()
            .fields()
            .iter()
            .map(|f| ManifestColumn {
                name: f.name().clone(),
                kind: f.data_type().to_string(),
            })
            .collect(),
        parts: parts
            .iter()
            .map(|p| ManifestPart {
                file: p.file.clone(),
                rows: p.rows,
                bytes: p.bytes,
                sha256: p.sha256.clone(),
            })
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::runtime(format!("{name}: manifest: {e}")))?;
    let manifest_sha = hex::encode(Sha256::digest(&manifest_bytes));
    let manifest_key = format!("{dir}{MANIFEST_NAME}");
    bucket
        .put_bytes(
            &manifest_key,
            Bytes::from(manifest_bytes),
            Some("application/json"),
        )
        .await?;

    // Read everything back before anything may be dropped.
    progress.update(
        0,
        Some(total_bytes),
        format!("{name}: verifying the uploaded archive"),
    );
    let check = verify_objects(
        bucket,
        &name,
        &manifest_key,
        &manifest_sha,
        rows,
        &work.path,
    )
    .await?;
    if !check.ok {
        return Err(Error::runtime(format!(
            "{name}: the uploaded archive did not verify ({}); nothing dropped",
            check.problems.join("; ")
        )));
    }

    // A previous run that split the month into more parts left files Athena would also read.
    let keep: std::collections::HashSet<String> = parts
        .iter()
        .map(|p| format!("{dir}{}", p.file))
        .chain(std::iter::once(manifest_key.clone()))
        .collect();
    let page = bucket.list_page(&dir, None, None, 1000).await?;
    let stale: Vec<String> = page
        .objects
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !keep.contains(k) && k.ends_with(".parquet"))
        .collect();
    if !stale.is_empty() {
        bucket.delete_batch(&stale).await?;
    }

    let record = ArchiveRecord {
        partition: name.clone(),
        year: m.year,
        month: m.month as i32,
        row_count: rows as i64,
        bytes: total_bytes as i64,
        sha256: manifest_sha,
        bucket: bucket.name().to_string(),
        object_key: manifest_key,
        archived_at: Utc::now(),
        schema_version: SCHEMA_VERSION,
        state: "archived".into(),
    };
    Ok(Some(UploadedArchive {
        month: m,
        rows,
        manifest,
        record,
    }))
}
