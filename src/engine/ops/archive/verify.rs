//! `archive verify`: the manifest against the record's checksum, every part downloaded again
//! with its sha256 and its footer's row count checked.

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::footer_rows;
use super::{parse_partition, s3_url, Manifest, WorkDir, MANIFEST_NAME};
use crate::engine::db::{partition_name, ArchiveRecord};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

/// One part file as checked by `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct PartCheck {
    pub key: String,
    pub expected_sha256: String,
    pub sha256: Option<String>,
    pub expected_rows: u64,
    pub footer_rows: Option<u64>,
    pub bytes: Option<u64>,
    pub ok: bool,
}

/// `archive verify`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveVerifyReport {
    pub partition: String,
    pub object: String,
    pub expected_rows: u64,
    pub rows: u64,
    pub ok: bool,
    pub parts: Vec<PartCheck>,
    pub problems: Vec<String>,
}

impl Report for ArchiveVerifyReport {
    fn found_problems(&self) -> bool {
        !self.ok
    }
}

/// Re-reads an archive: the manifest against the record's checksum, every part's sha256 and
/// the row counts in the Parquet footers. Mismatches are problems (exit 3), not errors.
pub async fn verify(
    ctx: &Ctx,
    partition: &str,
    progress: &Progress,
) -> Result<ArchiveVerifyReport> {
    let m = parse_partition(partition)?;
    let name = partition_name(m);
    let record =
        ctx.db.archive_record(&name).await?.ok_or_else(|| {
            Error::NotFound(format!("{name} has no archive (see `archive list`)"))
        })?;
    let params = serde_json::json!({ "action": "verify", "partition": name });
    audited(ctx, "archive", &params, false, progress, || async {
        let bucket = archive_bucket_for(ctx, &record).await?;
        let work = WorkDir::create(&name)?;
        verify_objects(
            bucket,
            &name,
            &record.object_key,
            &record.sha256,
            record.row_count.max(0) as u64,
            &work.path,
        )
        .await
    })
    .await
}

/// The archive bucket, checked to be the one the record names.
pub(super) async fn archive_bucket_for<'a>(
    ctx: &'a Ctx,
    record: &ArchiveRecord,
) -> Result<&'a S3Bucket> {
    let bucket = ctx.archive().await?;
    if bucket.name() != record.bucket {
        return Err(Error::Usage(format!(
            "{} was archived to bucket {}, but the archive bucket configured now is {}",
            record.partition,
            record.bucket,
            bucket.name()
        )));
    }
    Ok(bucket)
}

pub(super) async fn verify_objects(
    bucket: &S3Bucket,
    partition: &str,
    manifest_key: &str,
    manifest_sha: &str,
    expected_rows: u64,
    work: &Path,
) -> Result<ArchiveVerifyReport> {
    let mut report = ArchiveVerifyReport {
        partition: partition.to_string(),
        object: s3_url(bucket, manifest_key),
        expected_rows,
        rows: 0,
        ok: false,
        parts: Vec::new(),
        problems: Vec::new(),
    };
    let manifest = match load_manifest(bucket, manifest_key, manifest_sha).await? {
        Ok(m) => m,
        Err(problem) => {
            report.problems.push(problem);
            return Ok(report);
        }
    };
    let dir = manifest_key
        .strip_suffix(MANIFEST_NAME)
        .unwrap_or(manifest_key);
    for p in &manifest.parts {
        let key = format!("{dir}{}", p.file);
        let mut check = PartCheck {
            key: key.clone(),
            expected_sha256: p.sha256.clone(),
            sha256: None,
            expected_rows: p.rows,
            footer_rows: None,
            bytes: None,
            ok: false,
        };
        let local = work.join(format!("verify-{}", p.file));
        match download(bucket, &key, &local).await? {
            None => report.problems.push(format!("{key}: missing")),
            Some((sha, bytes)) => {
                check.sha256 = Some(sha.clone());
                check.bytes = Some(bytes);
                if sha != p.sha256 {
                    report
                        .problems
                        .push(format!("{key}: sha256 {sha}, manifest says {}", p.sha256));
                }
                match footer_rows(&local) {
                    Ok(rows) => {
                        check.footer_rows = Some(rows);
                        report.rows += rows;
                        if rows != p.rows {
                            report.problems.push(format!(
                                "{key}: footer has {rows} rows, manifest says {}",
                                p.rows
                            ));
                        }
                    }
                    Err(e) => report
                        .problems
                        .push(format!("{key}: not a readable Parquet file: {e}")),
                }
                check.ok = sha == p.sha256 && check.footer_rows == Some(p.rows);
            }
        }
        let _ = tokio::fs::remove_file(&local).await;
        report.parts.push(check);
    }
    if manifest.rows != expected_rows {
        report.problems.push(format!(
            "manifest has {} rows, the record says {expected_rows}",
            manifest.rows
        ));
    }
    if report.rows != expected_rows && report.parts.iter().all(|p| p.footer_rows.is_some()) {
        report.problems.push(format!(
            "the parts hold {} rows, {expected_rows} expected",
            report.rows
        ));
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// The manifest, or a problem description when it is missing, altered or unreadable.
pub(super) async fn load_manifest(
    bucket: &S3Bucket,
    key: &str,
    expected_sha: &str,
) -> Result<std::result::Result<Manifest, String>> {
    let Some(mut obj) = bucket.get(key, None).await? else {
        return Ok(Err(format!("{key}: missing")));
    };
    let mut buf = Vec::new();
    obj.body
        .read_to_end(&mut buf)
        .await
        .map_err(|e| Error::runtime(format!("reading {}: {e}", s3_url(bucket, key))))?;
    let sha = hex::encode(Sha256::digest(&buf));
    if sha != expected_sha {
        return Ok(Err(format!(
            "{key}: sha256 {sha}, the record says {expected_sha}"
        )));
    }
    Ok(serde_json::from_slice::<Manifest>(&buf)
        .map_err(|e| format!("{key}: unreadable manifest: {e}")))
}

/// Streams an object to `path`, hashing as it goes: `(sha256, bytes)`, or `None` if missing.
pub(super) async fn download(
    bucket: &S3Bucket,
    key: &str,
    path: &Path,
) -> Result<Option<(String, u64)>> {
    let Some(mut obj) = bucket.get(key, None).await? else {
        return Ok(None);
    };
    let io = |e: std::io::Error| {
        Error::runtime(format!(
            "downloading {} to {}: {e}",
            s3_url(bucket, key),
            path.display()
        ))
    };
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = obj.body.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await.map_err(io)?;
        total += n as u64;
    }
    file.flush().await.map_err(io)?;
    Ok(Some((hex::encode(hasher.finalize()), total)))
}
