//! `archive`: old months of `download_events` to Parquet on S3 in a Hive layout
//! (`download_events/year=YYYY/month=MM/part-NNNNN.parquet` plus `_manifest.json`), read back
//! and verified before the month is dropped, and restorable.
//!
//! Order of effects, so that a crash anywhere leaves either the month intact in the database or
//! a verified archive plus its `archived_partitions` record: export to a local temp file →
//! upload → download again and check sha256 and the footer's row count → drop the month and
//! write the record in one transaction. A rerun after a crash before the drop simply redoes the
//! export and overwrites the objects.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int16Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{
    ArrayRef, BooleanArray, Int16Array, Int32Array, Int64Array, RecordBatch,
    TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::engine::db::{partition_name, ArchiveRecord, EventRow, Month};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

/// Version of the archived column layout, recorded in the manifest, the Parquet metadata and
/// `archived_partitions.schema_version`.
pub const SCHEMA_VERSION: i32 = 1;
/// Rows handed from the database to the Parquet writer at a time.
const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group: large enough for good compression and few footer entries,
/// small enough that the writer's buffered row group stays a few MiB.
const ROW_GROUP_ROWS: usize = 512 * 1024;
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
    /// Rows on S3 only.
    Archived,
    /// Archived once, loaded back into the database.
    Restored,
}

/// One month in `archive list`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionEntry {
    pub partition: String,
    pub year: i32,
    pub month: u32,
    /// Rows in the database, or in the archive when archived.
    pub rows: i64,
    /// Size in the database (PostgreSQL), or of the Parquet parts when archived.
    pub bytes: Option<i64>,
    pub state: PartitionState,
    /// `s3://bucket/key` of the archive's manifest, when there is one.
    pub object: Option<String>,
    /// Rows in the database now (differs from `rows` when late events arrived after archiving).
    pub live_rows: i64,
}

/// `archive list`: every month with rows or an archive, oldest first. Serialises as an array.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ArchiveListReport {
    pub partitions: Vec<PartitionEntry>,
}

impl Report for ArchiveListReport {}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveRunParams {
    /// Archive months that ended more than this many months ago (default: policy).
    pub older_than_months: Option<u32>,
    /// Archive only this partition (`download_events_yYYYYmMM`).
    pub partition: Option<String>,
    pub dry_run: bool,
    /// The operator confirmed (`--yes`, or the TUI's confirmation).
    pub yes: bool,
    /// Rows per part file (default `DEFAULT_ROWS_PER_PART`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_per_part: Option<u64>,
}

/// What happened to one month in `archive run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Archived,
    WouldArchive,
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunEntry {
    pub partition: String,
    pub year: i32,
    pub month: u32,
    pub rows: u64,
    /// Database size before (dry run), Parquet bytes after.
    pub bytes: Option<u64>,
    pub parts: usize,
    pub object: Option<String>,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `archive run`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRunReport {
    pub dry_run: bool,
    pub older_than_months: u32,
    /// The newest month old enough, `YYYY-MM`.
    pub last_eligible_month: String,
    pub archived: usize,
    pub rows: u64,
    pub bytes: u64,
    pub partitions: Vec<RunEntry>,
}

impl Report for ArchiveRunReport {
    fn is_dry_run(&self) -> bool {
        self.dry_run
    }
}

/// The one-line summary the TUI's job list and the data plane's workers show.
impl std::fmt::Display for ArchiveRunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "archived {} partition(s), {} rows, {}",
            self.archived,
            self.rows,
            humansize::format_size(self.bytes, humansize::BINARY)
        )
    }
}

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

/// `archive restore`.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRestoreReport {
    pub partition: String,
    pub rows: u64,
    pub object: String,
    pub state: PartitionState,
}

impl Report for ArchiveRestoreReport {}

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

/// A month uploaded and verified but not yet dropped (the state a crash before the drop leaves).
#[derive(Debug, Clone)]
pub struct UploadedArchive {
    pub month: Month,
    pub rows: u64,
    pub manifest: Manifest,
    pub record: ArchiveRecord,
}

/// The archive's columns: typed, non-null, in table order.
pub fn arrow_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("file_id", DataType::Int64, false),
        Field::new("cache_hit", DataType::Boolean, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("duration_ms", DataType::Int32, false),
        Field::new("status", DataType::Int16, false),
    ]))
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

// ---------------------------------------------------------------------------------------------
// list

/// Every month with rows in the database or an archive record.
pub async fn list(ctx: &Ctx) -> Result<ArchiveListReport> {
    let live = ctx.db.live_months().await?;
    let records = ctx.db.archive_records().await?;
    let mut by_month: std::collections::BTreeMap<Month, PartitionEntry> =
        std::collections::BTreeMap::new();
    for l in &live {
        by_month.insert(
            l.month,
            PartitionEntry {
                partition: partition_name(l.month),
                year: l.month.year,
                month: l.month.month,
                rows: l.rows,
                bytes: l.bytes,
                state: PartitionState::Live,
                object: None,
                live_rows: l.rows,
            },
        );
    }
    for r in records {
        let Some(m) = Month::from_partition_name(&r.partition) else {
            continue;
        };
        let live_rows = by_month.get(&m).map(|e| e.live_rows).unwrap_or(0);
        let object = Some(format!("s3://{}/{}", r.bucket, r.object_key));
        let entry = by_month.entry(m).or_insert_with(|| PartitionEntry {
            partition: r.partition.clone(),
            year: m.year,
            month: m.month,
            rows: 0,
            bytes: None,
            state: PartitionState::Live,
            object: None,
            live_rows: 0,
        });
        entry.object = object;
        if r.state == "restored" {
            entry.state = PartitionState::Restored;
        } else {
            entry.state = PartitionState::Archived;
            entry.rows = r.row_count;
            entry.bytes = Some(r.bytes);
        }
        entry.live_rows = live_rows;
    }
    Ok(ArchiveListReport {
        partitions: by_month.into_values().collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// run

/// Archives every eligible month (or the one named): export, upload, verify, then drop.
pub async fn run(
    ctx: &Ctx,
    params: ArchiveRunParams,
    progress: &Progress,
) -> Result<ArchiveRunReport> {
    let now = Utc::now();
    let current = Month::of(now);
    let named = params
        .partition
        .as_deref()
        .map(parse_partition)
        .transpose()?;
    if !params.dry_run {
        ctx.check_writable("archive run")?;
    }
    let n = params
        .older_than_months
        .unwrap_or(ctx.config.policy.archive_after_months);
    let last = last_eligible_month(now, n);
    let mut plan: Vec<RunEntry> = Vec::new();
    let entry =
        |m: Month, rows: u64, bytes: Option<u64>, status, reason: Option<String>| RunEntry {
            partition: partition_name(m),
            year: m.year,
            month: m.month,
            rows,
            bytes,
            parts: 0,
            object: None,
            status,
            reason,
        };
    let live = ctx.db.live_months().await?;
    let records = ctx.db.archive_records().await?;
    let archived_state = |m: Month| {
        records
            .iter()
            .find(|r| r.partition == partition_name(m))
            .map(|r| r.state.clone())
    };
    match named {
        Some(m) => {
            if m >= current {
                return Err(Error::Refused(format!(
                    "{} is the current month or later: only months that have ended can be archived",
                    partition_name(m)
                )));
            }
            if params.older_than_months.is_some() && m > last {
                return Err(Error::Refused(format!(
                    "{} ended less than {n} months ago (the newest eligible month is {})",
                    partition_name(m),
                    label(last)
                )));
            }
            let rows = live.iter().find(|l| l.month == m);
            match (rows, archived_state(m).as_deref()) {
                (None, Some("archived")) => plan.push(entry(
                    m,
                    0,
                    None,
                    RunStatus::Skipped,
                    Some("already archived".into()),
                )),
                (None, _) if ctx.db.month_exists(m).await? => plan.push(entry(
                    m,
                    0,
                    None,
                    RunStatus::Skipped,
                    Some("no rows".into()),
                )),
                (None, _) => {
                    return Err(Error::NotFound(format!("partition {}", partition_name(m))))
                }
                (Some(l), Some("archived")) => plan.push(entry(
                    m,
                    l.rows as u64,
                    None,
                    RunStatus::Skipped,
                    Some(late_rows_reason(l.rows)),
                )),
                (Some(l), _) => plan.push(entry(
                    m,
                    l.rows as u64,
                    l.bytes.map(|b| b as u64),
                    RunStatus::WouldArchive,
                    None,
                )),
            }
        }
        None => {
            for l in live.iter().filter(|l| l.month <= last) {
                if archived_state(l.month).as_deref() == Some("archived") {
                    plan.push(entry(
                        l.month,
                        l.rows as u64,
                        None,
                        RunStatus::Skipped,
                        Some(late_rows_reason(l.rows)),
                    ));
                } else {
                    plan.push(entry(
                        l.month,
                        l.rows as u64,
                        l.bytes.map(|b| b as u64),
                        RunStatus::WouldArchive,
                        None,
                    ));
                }
            }
        }
    }
    let todo: Vec<Month> = plan
        .iter()
        .filter(|e| e.status == RunStatus::WouldArchive)
        .map(|e| Month {
            year: e.year,
            month: e.month,
        })
        .collect();
    let todo_rows: u64 = plan
        .iter()
        .filter(|e| e.status == RunStatus::WouldArchive)
        .map(|e| e.rows)
        .sum();
    if !params.dry_run && !params.yes && !todo.is_empty() {
        return Err(Error::Refused(format!(
            "archive run would export and drop {} partition(s) ({} rows): pass --yes to go ahead, or --dry-run to preview",
            todo.len(),
            todo_rows
        )));
    }
    let mut report = ArchiveRunReport {
        dry_run: params.dry_run,
        older_than_months: n,
        last_eligible_month: label(last),
        archived: 0,
        rows: 0,
        bytes: 0,
        partitions: plan,
    };
    if params.dry_run {
        report.rows = todo_rows;
        return audited(ctx, "archive", &params, false, progress, || async move {
            Ok(report)
        })
        .await;
    }
    let rows_per_part = params.rows_per_part.unwrap_or(DEFAULT_ROWS_PER_PART).max(1);
    audited(ctx, "archive", &params, true, progress, || async move {
        for m in todo {
            progress.check()?;
            let done = archive_month(ctx, m, rows_per_part, progress).await?;
            let e = report
                .partitions
                .iter_mut()
                .find(|e| e.partition == partition_name(m))
                .ok_or_else(|| Error::runtime("archive plan lost a month"))?;
            match done {
                Some(up) => {
                    e.status = RunStatus::Archived;
                    e.rows = up.rows;
                    e.bytes = Some(up.manifest.bytes);
                    e.parts = up.manifest.parts.len();
                    e.object = Some(format!(
                        "s3://{}/{}",
                        up.record.bucket, up.record.object_key
                    ));
                    report.archived += 1;
                    report.rows += up.rows;
                    report.bytes += up.manifest.bytes;
                }
                None => {
                    e.status = RunStatus::Skipped;
                    e.rows = 0;
                    e.reason = Some("no rows left to archive".into());
                }
            }
        }
        Ok(report)
    })
    .await
}

fn late_rows_reason(rows: i64) -> String {
    format!(
        "already archived, and {rows} rows arrived since: restore it first, then archive again \
         (archiving now would replace the archive with the late rows only)"
    )
}

/// Archives one month completely; `None` when it had no rows.
async fn archive_month(
    ctx: &Ctx,
    m: Month,
    rows_per_part: u64,
    progress: &Progress,
) -> Result<Option<UploadedArchive>> {
    let Some(up) = export_and_upload(ctx, m, rows_per_part, progress).await? else {
        return Ok(None);
    };
    progress.update(
        up.rows,
        Some(up.rows),
        format!("{}: dropping from the database", up.record.partition),
    );
    ctx.db.drop_archived_month(m, up.rows, &up.record).await?;
    Ok(Some(up))
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

    // Export: the database streams batches into a bounded queue; a blocking thread encodes them.
    let (tx, rx) = mpsc::channel::<Vec<EventRow>>(QUEUE_BATCHES);
    let writer = {
        let path = work.path.clone();
        let name = name.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || write_parts(rx, &path, &name, rows_per_part, &progress))
    };
    let exported = ctx.db.export_month(m, BATCH_ROWS, tx).await;
    let parts = writer
        .await
        .map_err(|e| Error::runtime(format!("{name}: Parquet writer stopped: {e}")))??;
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

/// One written part file.
struct PartFile {
    file: String,
    path: PathBuf,
    rows: u64,
    bytes: u64,
    sha256: String,
    min: Option<DateTime<Utc>>,
    max: Option<DateTime<Utc>>,
}

/// Counts and hashes what the Parquet writer writes, so the file is never read twice.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// zstd level of the Parquet pages. Level 9 made the scale dataset's July only 1.7 % smaller
/// with dictionary/PLAIN `file_id` and `bytes` (17.23 MB vs 17.53 MB, scripts/bench-archive.sh)
/// and 0.2 % with the current layout (scripts/archive-encodings.py), not worth its extra CPU.
const ZSTD_LEVEL: i32 = 3;

type PartWriter = ArrowWriter<HashingWriter<BufWriter<std::fs::File>>>;

fn writer_properties(partition: &str) -> Result<WriterProperties> {
    let level =
        ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| Error::runtime(format!("zstd level: {e}")))?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Ids and timestamps rise almost monotonically: deltas pack them far smaller than a
        // dictionary would (they are nearly all distinct).
        .set_column_dictionary_enabled(ColumnPath::from("id"), false)
        .set_column_encoding(ColumnPath::from("id"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from("occurred_at"), false)
        .set_column_encoding(
            ColumnPath::from("occurred_at"),
            Encoding::DELTA_BINARY_PACKED,
        )
        // File ids and byte counts are skewed towards small values but far from sorted, and
        // file ids have too many distinct values for a dictionary (it overflows to PLAIN).
        // Delta packing bit-packs their differences in small blocks; zstd does the rest.
        // BYTE_STREAM_SPLIT came out smaller still (46.9 % of pg_dump vs 49.1 % for the
        // pyarrow model in scripts/archive-encodings.py) but for integers it needs Parquet
        // format 2.11 readers, which DuckDB, Trino and Athena releases in use do not all
        // have; DELTA_BINARY_PACKED every Parquet reader decodes.
        .set_column_dictionary_enabled(ColumnPath::from("file_id"), false)
        .set_column_encoding(ColumnPath::from("file_id"), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled(ColumnPath::from("bytes"), false)
        .set_column_encoding(ColumnPath::from("bytes"), Encoding::DELTA_BINARY_PACKED)
        .set_key_value_metadata(Some(vec![
            KeyValue::new("mirrorctl.partition".into(), partition.to_string()),
            KeyValue::new(
                "mirrorctl.schema_version".into(),
                SCHEMA_VERSION.to_string(),
            ),
        ]))
        .build())
}

fn parquet_err(partition: &str, e: impl std::fmt::Display) -> Error {
    Error::runtime(format!("{partition}: Parquet: {e}"))
}

/// Encodes batches from `rx` into part files under `dir` (blocking: runs on its own thread).
fn write_parts(
    mut rx: mpsc::Receiver<Vec<EventRow>>,
    dir: &Path,
    partition: &str,
    rows_per_part: u64,
    progress: &Progress,
) -> Result<Vec<PartFile>> {
    let schema = arrow_schema();
    let props = writer_properties(partition)?;
    let mut parts: Vec<PartFile> = Vec::new();
    let mut current: Option<(PartWriter, PartFile)> = None;
    let mut total = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        if progress.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let mut rest: &[EventRow] = &batch;
        while !rest.is_empty() {
            if current.is_none() {
                let file = format!("part-{:05}.parquet", parts.len());
                let path = dir.join(&file);
                let f = std::fs::File::create(&path).map_err(|e| {
                    Error::runtime(format!("{partition}: creating {}: {e}", path.display()))
                })?;
                let w = HashingWriter {
                    inner: BufWriter::with_capacity(1 << 20, f),
                    hasher: Sha256::new(),
                    bytes: 0,
                };
                let writer = ArrowWriter::try_new(w, schema.clone(), Some(props.clone()))
                    .map_err(|e| parquet_err(partition, e))?;
                let part = PartFile {
                    file,
                    path,
                    rows: 0,
                    bytes: 0,
                    sha256: String::new(),
                    min: None,
                    max: None,
                };
                current = Some((writer, part));
            }
            let Some((writer, part)) = current.as_mut() else {
                break;
            };
            let room = (rows_per_part - part.rows) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            writer
                .write(&to_record_batch(&schema, now)?)
                .map_err(|e| parquet_err(partition, e))?;
            for r in now {
                part.min = Some(part.min.map_or(r.occurred_at, |m| m.min(r.occurred_at)));
                part.max = Some(part.max.map_or(r.occurred_at, |m| m.max(r.occurred_at)));
            }
            part.rows += now.len() as u64;
            total += now.len() as u64;
            rest = later;
            if part.rows >= rows_per_part {
                if let Some((writer, part)) = current.take() {
                    parts.push(finish_part(partition, writer, part)?);
                }
            }
        }
        progress.update(total, None, format!("{partition}: exported {total} rows"));
    }
    if let Some((writer, part)) = current.take() {
        parts.push(finish_part(partition, writer, part)?);
    }
    Ok(parts)
}

fn finish_part(partition: &str, writer: PartWriter, mut part: PartFile) -> Result<PartFile> {
    let mut w = writer.into_inner().map_err(|e| parquet_err(partition, e))?;
    w.flush().map_err(|e| {
        Error::runtime(format!("{partition}: writing {}: {e}", part.path.display()))
    })?;
    part.bytes = w.bytes;
    part.sha256 = hex::encode(w.hasher.finalize());
    let file = w.inner.into_inner().map_err(|e| {
        Error::runtime(format!("{partition}: writing {}: {e}", part.path.display()))
    })?;
    file.sync_all().map_err(|e| {
        Error::runtime(format!("{partition}: writing {}: {e}", part.path.display()))
    })?;
    Ok(part)
}

fn to_record_batch(schema: &SchemaRef, rows: &[EventRow]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                rows.iter().map(|r| r.occurred_at.timestamp_micros()),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.file_id))),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.cache_hit).collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.bytes))),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|r| r.duration_ms),
        )),
        Arc::new(Int16Array::from_iter_values(rows.iter().map(|r| r.status))),
    ];
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::runtime(format!("building a batch: {e}")))
}

/// Turns a record batch read from an archive back into rows; errors name what was wrong.
fn from_record_batch(partition: &str, b: &RecordBatch) -> Result<Vec<EventRow>> {
    let bad = |col: &str| {
        Error::runtime(format!(
            "{partition}: archive column {col:?} is missing or has the wrong type"
        ))
    };
    let col = |name: &str| {
        b.column_by_name(name)
            .filter(|c| c.null_count() == 0)
            .ok_or_else(|| bad(name))
    };
    let id = col("id")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| bad("id"))?;
    let at = col("occurred_at")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| bad("occurred_at"))?;
    let file_id = col("file_id")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| bad("file_id"))?;
    let hit = col("cache_hit")?
        .as_boolean_opt()
        .ok_or_else(|| bad("cache_hit"))?;
    let bytes = col("bytes")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| bad("bytes"))?;
    let dur = col("duration_ms")?
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| bad("duration_ms"))?;
    let status = col("status")?
        .as_primitive_opt::<Int16Type>()
        .ok_or_else(|| bad("status"))?;
    (0..b.num_rows())
        .map(|i| {
            Ok(EventRow {
                id: id.value(i),
                occurred_at: DateTime::<Utc>::from_timestamp_micros(at.value(i))
                    .ok_or_else(|| bad("occurred_at"))?,
                file_id: file_id.value(i),
                cache_hit: hit.value(i),
                bytes: bytes.value(i),
                duration_ms: dur.value(i),
                status: status.value(i),
            })
        })
        .collect()
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

// ---------------------------------------------------------------------------------------------
// verify

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
async fn archive_bucket_for<'a>(ctx: &'a Ctx, record: &ArchiveRecord) -> Result<&'a S3Bucket> {
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

async fn verify_objects(
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
async fn load_manifest(
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
async fn download(bucket: &S3Bucket, key: &str, path: &Path) -> Result<Option<(String, u64)>> {
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

/// The row count the Parquet footer declares, checked against its row groups.
fn footer_rows(path: &Path) -> std::result::Result<u64, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&file)
        .map_err(|e| e.to_string())?;
    let declared = meta.file_metadata().num_rows();
    let groups: i64 = meta.row_groups().iter().map(|g| g.num_rows()).sum();
    if declared != groups || declared < 0 {
        return Err(format!(
            "footer declares {declared} rows but its row groups hold {groups}"
        ));
    }
    Ok(declared as u64)
}

// ---------------------------------------------------------------------------------------------
// restore

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

/// Decodes part files into batches for the database (blocking: runs on its own thread).
fn read_parts(
    files: &[PathBuf],
    partition: &str,
    tx: mpsc::Sender<Vec<EventRow>>,
    total: u64,
    progress: &Progress,
) -> Result<u64> {
    let mut read = 0u64;
    for path in files {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::runtime(format!("{partition}: reading {}: {e}", path.display())))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| parquet_err(partition, e))?
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| parquet_err(partition, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| parquet_err(partition, e))?;
            let rows = from_record_batch(partition, &batch)?;
            read += rows.len() as u64;
            if tx.blocking_send(rows).is_err() {
                // The database side failed; its error is the one reported.
                return Ok(read);
            }
            progress.update(
                read,
                Some(total),
                format!("{partition}: restored {read} rows"),
            );
        }
    }
    Ok(read)
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

    #[test]
    fn batches_round_trip_through_parquet() {
        let rows: Vec<EventRow> = (0..1000)
            .map(|i| EventRow {
                id: i,
                occurred_at: Utc
                    .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
                    .single()
                    .expect("date")
                    + chrono::TimeDelta::seconds(i * 37),
                file_id: i % 17,
                cache_hit: i % 3 != 0,
                bytes: i * 1000,
                duration_ms: (i % 500) as i32,
                status: if i % 50 == 0 { 503 } else { 200 },
            })
            .collect();
        let dir = WorkDir::create("unit").expect("dir");
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(rows[..600].to_vec()).expect("send");
        tx.try_send(rows[600..].to_vec()).expect("send");
        drop(tx);
        let parts = write_parts(rx, &dir.path, "unit", 400, &Progress::none()).expect("write");
        assert_eq!(
            parts.iter().map(|p| p.rows).collect::<Vec<_>>(),
            vec![400, 400, 200]
        );
        for p in &parts {
            assert_eq!(footer_rows(&p.path).expect("footer"), p.rows);
        }
        let (tx, mut rx) = mpsc::channel(100);
        let files: Vec<PathBuf> = parts.iter().map(|p| p.path.clone()).collect();
        let read = read_parts(&files, "unit", tx, 1000, &Progress::none()).expect("read");
        assert_eq!(read, 1000);
        let mut back = Vec::new();
        while let Ok(b) = rx.try_recv() {
            back.extend(b);
        }
        assert_eq!(back, rows);
    }
}
