//! `archive health`: the archive's retrieval path, timed. Reads a known archived month back
//! from S3 as a retrieval would (manifest, every part, their checksums and Parquet footers),
//! checks the row count against the recorded one, and fails above a time threshold.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::verify::{archive_bucket_for, verify_objects};
use super::{parse_partition, s3_url, WorkDir};
use crate::engine::db::partition_name;
use crate::engine::error::{Error, Result};
use crate::engine::jobs::Report;
use crate::engine::Ctx;

#[derive(Debug, Clone, Default)]
pub struct HealthParams {
    /// The month to read back (default: the newest archived one).
    pub partition: Option<String>,
    /// Slower than this is unhealthy (default `policy.archive_health_threshold`).
    pub threshold: Option<Duration>,
}

/// `archive health`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveHealthReport {
    pub partition: String,
    pub object: String,
    /// Read back within the threshold, and it matched its record.
    pub healthy: bool,
    /// How long the read-back took.
    pub seconds: f64,
    pub threshold_seconds: f64,
    /// Rows the Parquet footers declare, and the count recorded when the month was archived.
    pub rows: u64,
    pub expected_rows: u64,
    pub parts: usize,
    pub bytes: u64,
    pub problems: Vec<String>,
}

impl Report for ArchiveHealthReport {
    fn found_problems(&self) -> bool {
        !self.healthy
    }
}

/// Times the read-back of one archived month. Not audited: it changes nothing and runs from
/// monitoring as often as the operator likes. An unreachable bucket is an error (exit 1); a
/// slow or mismatching read-back is a finding (exit 3).
pub async fn health(ctx: &Ctx, params: HealthParams) -> Result<ArchiveHealthReport> {
    let record = match &params.partition {
        Some(p) => {
            let name = partition_name(parse_partition(p)?);
            ctx.db.archive_record(&name).await?.ok_or_else(|| {
                Error::NotFound(format!("{name} has no archive (see `archive list`)"))
            })?
        }
        None => ctx
            .db
            .archive_records()
            .await?
            .into_iter()
            .rfind(|r| r.state == "archived")
            .ok_or_else(|| {
                Error::NotFound(
                    "no archived month to read back yet (`archive run` archives old months)".into(),
                )
            })?,
    };
    let threshold = params
        .threshold
        .unwrap_or(ctx.config.policy.archive_health_threshold.0);
    let bucket = archive_bucket_for(ctx, &record).await?;
    let work = WorkDir::create(&record.partition)?;
    let started = Instant::now();
    let check = verify_objects(
        bucket,
        &record.partition,
        &record.object_key,
        &record.sha256,
        record.row_count.max(0) as u64,
        &work.path,
    )
    .await?;
    let elapsed = started.elapsed();
    let mut problems = check.problems;
    if elapsed > threshold {
        problems.push(format!(
            "the read-back took {:.2} s, over the threshold of {} s",
            elapsed.as_secs_f64(),
            threshold.as_secs_f64()
        ));
    }
    Ok(ArchiveHealthReport {
        partition: record.partition.clone(),
        object: s3_url(bucket, &record.object_key),
        healthy: problems.is_empty(),
        seconds: elapsed.as_secs_f64(),
        threshold_seconds: threshold.as_secs_f64(),
        rows: check.rows,
        expected_rows: check.expected_rows,
        parts: check.parts.len(),
        bytes: check.parts.iter().filter_map(|p| p.bytes).sum(),
        problems,
    })
}
