//! The archive's Parquet format: the column schema, the writer's properties, rows to record
//! batches and back, part files written with their sha256 computed on the way, and footer reads.
//! Blocking code: callers run it on its own thread.

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
use chrono::{DateTime, Utc};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::SCHEMA_VERSION;
use crate::engine::db::EventRow;
use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;

/// Rows handed from the database to the Parquet writer at a time.
pub(super) const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet row group: large enough for good compression and few footer entries,
/// small enough that the writer's buffered row group stays a few MiB.
const ROW_GROUP_ROWS: usize = 512 * 1024;

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

/// One written part file.
pub(super) struct PartFile {
    pub(super) file: String,
    pub(super) path: PathBuf,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) sha256: String,
    pub(super) min: Option<DateTime<Utc>>,
    pub(super) max: Option<DateTime<Utc>>,
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

pub(super) fn parquet_err(partition: &str, e: impl std::fmt::Display) -> Error {
    Error::runtime(format!("{partition}: Parquet: {e}"))
}

/// Encodes batches from `rx` into part files under `dir` (blocking: runs on its own thread).
pub(super) fn write_parts(
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

/// The row count the Parquet footer declares, checked against its row groups.
pub(super) fn footer_rows(path: &Path) -> std::result::Result<u64, String> {
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

/// Decodes part files into batches for the database (blocking: runs on its own thread).
pub(super) fn read_parts(
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

/// Downloads and bytes per UTC day (`YYYY-MM-DD`) of one file in a part file, counting as the
/// database does (`status < 500`, not 304), for events at or after `since`.
///
/// Reads only what it needs: row groups whose `file_id` statistics exclude the file are
/// skipped; the rest decode the `file_id` column first and the three other columns only for
/// the rows that match. (Rows are in id order, so most row groups span most file ids and the
/// statistics prune little; the row filter does the work.)
pub(super) fn daily_downloads(
    path: &Path,
    file_id: i64,
    since: DateTime<Utc>,
    days: &mut std::collections::BTreeMap<String, (i64, i64)>,
) -> std::result::Result<(), String> {
    use parquet::arrow::arrow_reader::{ArrowPredicateFn, RowFilter};
    use parquet::arrow::ProjectionMask;
    use parquet::file::statistics::Statistics;

    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let columns = builder.parquet_schema().columns();
    let index = |name: &str| {
        columns
            .iter()
            .position(|c| c.name() == name)
            .ok_or_else(|| format!("no column {name:?}"))
    };
    let (id_col, at_col, bytes_col, status_col) = (
        index("file_id")?,
        index("occurred_at")?,
        index("bytes")?,
        index("status")?,
    );
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, g)| match g.column(id_col).statistics() {
            Some(Statistics::Int64(s)) => {
                s.min_opt().is_none_or(|min| *min <= file_id)
                    && s.max_opt().is_none_or(|max| *max >= file_id)
            }
            _ => true,
        })
        .map(|(i, _)| i)
        .collect();
    let schema = builder.parquet_schema();
    let predicate = ArrowPredicateFn::new(
        ProjectionMask::leaves(schema, [id_col]),
        move |batch: RecordBatch| {
            let ids = batch
                .column(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| {
                    arrow_schema::ArrowError::SchemaError("file_id is not int64".into())
                })?;
            Ok(BooleanArray::from_iter(
                ids.values().iter().map(|v| Some(*v == file_id)),
            ))
        },
    );
    let projection = ProjectionMask::leaves(schema, [id_col, at_col, bytes_col, status_col]);
    let reader = builder
        .with_row_groups(groups)
        .with_projection(projection)
        .with_row_filter(RowFilter::new(vec![Box::new(predicate)]))
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| e.to_string())?;
    let since = since.timestamp_micros();
    for batch in reader {
        let batch = batch.map_err(|e| e.to_string())?;
        let bad = |c: &str| format!("column {c:?} is missing or has the wrong type");
        let at = batch
            .column_by_name("occurred_at")
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .ok_or_else(|| bad("occurred_at"))?;
        let bytes = batch
            .column_by_name("bytes")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| bad("bytes"))?;
        let status = batch
            .column_by_name("status")
            .and_then(|c| c.as_primitive_opt::<Int16Type>())
            .ok_or_else(|| bad("status"))?;
        for i in 0..batch.num_rows() {
            let (t, st) = (at.value(i), status.value(i));
            if t < since || st >= 500 || st == 304 {
                continue;
            }
            let day = DateTime::<Utc>::from_timestamp_micros(t)
                .ok_or_else(|| bad("occurred_at"))?
                .format("%Y-%m-%d")
                .to_string();
            let d = days.entry(day).or_default();
            d.0 += 1;
            d.1 += bytes.value(i);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    use super::super::WorkDir;

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

    #[test]
    fn one_files_days_are_read_with_the_databases_rules() {
        let day = |d: u32, h: u32| {
            Utc.with_ymd_and_hms(2026, 3, d, h, 0, 0)
                .single()
                .expect("date")
        };
        let row = |id: i64, at, file_id: i64, status: i16| EventRow {
            id,
            occurred_at: at,
            file_id,
            cache_hit: true,
            bytes: 100,
            duration_ms: 1,
            status,
        };
        let rows = vec![
            row(1, day(1, 1), 7, 200),
            row(2, day(1, 2), 7, 206),
            row(3, day(1, 3), 8, 200), // another file
            row(4, day(2, 1), 7, 503), // an error: not a download
            row(5, day(2, 2), 7, 304), // a revalidation: not a download
            row(6, day(3, 23), 7, 200),
            row(7, day(5, 0), 9, 200),
        ];
        let dir = WorkDir::create("unit-days").expect("dir");
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(rows).expect("send");
        drop(tx);
        let parts = write_parts(rx, &dir.path, "unit", 3, &Progress::none()).expect("write");
        let mut days = std::collections::BTreeMap::new();
        for p in &parts {
            daily_downloads(&p.path, 7, day(1, 2), &mut days).expect("read");
        }
        let got: Vec<_> = days.into_iter().collect();
        assert_eq!(
            got,
            vec![
                ("2026-03-01".to_string(), (1, 100)),
                ("2026-03-03".to_string(), (1, 100))
            ]
        );
    }
}
