//! `archive`: old months of `download_events` to Parquet on S3 in a Hive layout
//! (`download_events/year=YYYY/month=MM/part-NNNNN.parquet` plus `_manifest.json`), read back
//! and verified before the month is dropped, and restorable.
//!
//! Order of effects, so that a crash anywhere leaves either the month intact in the database or
//! a verified archive plus its `archived_partitions` record: export to a local temp file →
//! upload → download again and check sha256 and the footer's row count → drop the month and
//! write the record in one transaction. A rerun after a crash before the drop simply redoes the
//! export and overwrites the objects.
//!
//! On PostgreSQL 14+ the month is detached first (`DETACH PARTITION … CONCURRENTLY`), so the
//! export runs on a table no writer reaches and writers of other months never queue behind the
//! archive; the drop then removes the detached table. Readers see a detached month's rows
//! under its own name until the drop, and the archive's after it (`read_back`).
//!
//! One concern per file: `list`, `run` (planning and the order of effects), `export` (database
//! → Parquet → S3), `codec` (the Parquet format itself), `verify`, `restore`, `health` (the
//! timed read-back) and `read_back` (a file's days from archived months, with a local cache).

mod codec;
mod export;
mod health;
mod list;
pub mod read_back;
mod restore;
mod run;
mod verify;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::db::Month;
use crate::engine::error::{Error, Result};
use crate::engine::s3::S3Bucket;

pub use codec::arrow_schema;
pub use export::{export_and_upload, UploadedArchive};
pub use health::{health, ArchiveHealthReport, HealthParams};
pub use list::{list, ArchiveListReport, PartitionEntry};
pub use restore::{restore, ArchiveRestoreReport};
pub use run::{run, ArchiveRunParams, ArchiveRunReport, RunEntry, RunStatus};
pub use verify::{verify, ArchiveVerifyReport, PartCheck};

/// Version of the archived column layout, recorded in the manifest, the Parquet metadata and
/// `archived_partitions.schema_version`.
pub const SCHEMA_VERSION: i32 = 1;
/// Rows per part file before a month is split into more parts.
pub const DEFAULT_ROWS_PER_PART: u64 = 20_000_000;
/// Batches queued between the database reader and the Parquet writer.
const QUEUE_BATCHES: usize = 2;
const PARQUET_CONTENT_TYPE: &str = "application/vnd.apache.parquet";
const MANIFEST_NAME: &str = "_manifest.json";

/// Where a month lives and in which state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Rows in the database, never archived.
    Live,
    /// Detached from `download_events` by an archive run that has not dropped it yet (under
    /// way, or interrupted: the next run finishes it). Its rows are still in the database.
    Archiving,
    /// Rows on S3 only.
    Archived,
    /// Archived once, loaded back into the database.
    Restored,
}

/// `_manifest.json`, beside the parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub table: String,
    pub partition: String,
    pub year: i32,
    pub month: u32,
    pub schema_version: i32,
    pub format: String,
    pub compression: String,
    pub rows: u64,
    pub bytes: u64,
    pub min_occurred_at: Option<DateTime<Utc>>,
    pub max_occurred_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub columns: Vec<ManifestColumn>,
    pub parts: Vec<ManifestPart>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestPart {
    /// File name relative to the manifest.
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Parses and checks a partition name; bad names never reach SQL.
pub fn parse_partition(name: &str) -> Result<Month> {
    Month::from_partition_name(name.trim()).ok_or_else(|| {
        Error::Usage(format!(
            "bad partition name {name:?}: expected download_events_yYYYYmMM (e.g. download_events_y2026m07)"
        ))
    })
}

/// `<prefix>download_events/year=YYYY/month=MM/`.
fn month_dir(bucket: &S3Bucket, m: Month) -> String {
    let mut prefix = bucket.prefix().to_string();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    format!(
        "{prefix}download_events/year={:04}/month={:02}/",
        m.year, m.month
    )
}

fn s3_url(bucket: &S3Bucket, key: &str) -> String {
    format!("s3://{}/{key}", bucket.name())
}

/// The month `k` months before `m`.
fn months_before(m: Month, k: u32) -> Month {
    let idx = i64::from(m.year) * 12 + i64::from(m.month) - 1 - i64::from(k);
    Month {
        year: idx.div_euclid(12) as i32,
        month: (idx.rem_euclid(12) + 1) as u32,
    }
}

/// The newest month that ended more than `n` months before `now`: on 2026-11-22 with n = 3,
/// July 2026. The current month is never eligible.
pub fn last_eligible_month(now: DateTime<Utc>, n: u32) -> Month {
    months_before(Month::of(now), n.saturating_add(1))
}

fn label(m: Month) -> String {
    format!("{:04}-{:02}", m.year, m.month)
}

/// A private temp directory for one month's files, removed when dropped.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(partition: &str) -> Result<WorkDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "mirrorctl-{partition}-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::runtime(format!("creating {}: {e}", path.display())))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn eligibility_follows_the_issue_example() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 22, 12, 0, 0)
            .single()
            .expect("date");
        assert_eq!(
            last_eligible_month(now, 3),
            Month {
                year: 2026,
                month: 7
            }
        );
        assert_eq!(
            last_eligible_month(now, 0),
            Month {
                year: 2026,
                month: 10
            }
        );
        assert_eq!(
            last_eligible_month(now, 11),
            Month {
                year: 2025,
                month: 11
            }
        );
        let jan = Utc
            .with_ymd_and_hms(2027, 1, 5, 0, 0, 0)
            .single()
            .expect("date");
        assert_eq!(
            last_eligible_month(jan, 3),
            Month {
                year: 2026,
                month: 9
            }
        );
        // Absurd values select nothing rather than overflow.
        assert!(last_eligible_month(now, u32::MAX) < Month { year: 0, month: 1 });
    }

    #[test]
    fn partition_names_are_validated() {
        assert!(parse_partition("download_events_y2026m07").is_ok());
        for bad in [
            "download_events_y2026m13",
            "download_events; DROP TABLE x",
            "",
            "download_events_y26m7",
        ] {
            assert!(
                matches!(parse_partition(bad), Err(Error::Usage(_))),
                "{bad}"
            );
        }
    }
}
