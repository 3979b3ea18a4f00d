//! `archive`: months of download events to Parquet on S3 and back, against real SQLite and
//! PostgreSQL and real S3 servers (s3s-fs in process, Garage out of process), with the archive
//! read by an independent reader (pyarrow).

mod common;

use std::process::Command;

use chrono::{DateTime, TimeDelta, Utc};
use mirrorctl::config::Config;
use mirrorctl::engine::db::{month_bounds, EventRow, Month};
use mirrorctl::engine::error::Error;
use mirrorctl::engine::jobs::{Progress, Report};
use mirrorctl::engine::model::NewDownloadEvent;
use mirrorctl::engine::ops::archive::{self, ArchiveRunParams, PartitionState, RunStatus};
use mirrorctl::engine::ops::stats;
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;

use common::{S3Server, TestDb};

const OLD: [Month; 2] = [
    Month {
        year: 2024,
        month: 1,
    },
    Month {
        year: 2024,
        month: 2,
    },
];

/// Deterministic events spread over the month: hits and misses, some 5xx, sizes and durations
/// that vary, so every column carries real information.
fn events_for(m: Month, n: usize) -> Vec<NewDownloadEvent> {
    let (start, end) = month_bounds(m);
    let span = (end - start).num_seconds() - 1;
    (0..n)
        .map(|i| {
            let i = i as i64;
            NewDownloadEvent {
                occurred_at: start + TimeDelta::seconds((i * 7919) % span),
                file_id: 1 + (i * 31) % 97,
                cache_hit: i % 4 != 0,
                bytes: 1000 + (i * 104_729) % 5_000_000,
                duration_ms: ((i * 13) % 2000) as i32,
                status: if i % 53 == 0 { 503 } else { 200 },
            }
        })
        .collect()
}

async fn seed(t: &TestDb, months: &[Month], per_month: usize) {
    for &m in months {
        t.db.record_downloads(&events_for(m, per_month))
            .await
            .expect("record downloads");
    }
}

/// The month's rows as the database holds them, read with plain SQL (not the archive code).
async fn db_rows(t: &TestDb, m: Month) -> Vec<EventRow> {
    use sqlx::Connection;
    let (start, end) = month_bounds(m);
    let sql = "SELECT id, occurred_at, file_id, cache_hit, bytes, duration_ms, status FROM download_events \
               WHERE occurred_at >= $1 AND occurred_at < $2 ORDER BY id";
    if t.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&t.url)
            .await
            .expect("sqlite");
        sqlx::query_as(sql)
            .bind(start)
            .bind(end)
            .fetch_all(&mut c)
            .await
            .expect("rows")
    } else {
        let mut c = sqlx::PgConnection::connect(&t.url).await.expect("postgres");
        sqlx::query_as(sql)
            .bind(start)
            .bind(end)
            .fetch_all(&mut c)
            .await
            .expect("rows")
    }
}

async fn setup(t: &TestDb, s3: &S3Server) -> (Ctx, S3Bucket, Config) {
    let (cfg, bucket) = s3.new_bucket("arch").await;
    let config = common::config(&t.url, cfg);
    (common::ctx(t, config.clone()), bucket, config)
}

fn run_params(yes: bool) -> ArchiveRunParams {
    ArchiveRunParams {
        yes,
        ..Default::default()
    }
}

fn key(m: Month, file: &str) -> String {
    format!(
        "archive/download_events/year={:04}/month={:02}/{file}",
        m.year, m.month
    )
}

/// Reads a Parquet file with pyarrow and prints its schema and rows as JSON.
const PYARROW_DUMP: &str = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
md = pq.ParquetFile(sys.argv[1]).metadata
rows = []
for r in t.to_pylist():
    r["occurred_at"] = int(r["occurred_at"].timestamp() * 1_000_000)
    rows.append(r)
print(json.dumps({
    "schema": {f.name: str(f.type) for f in t.schema},
    "num_rows": md.num_rows,
    "compression": md.row_group(0).column(0).compression,
    "encodings": {md.schema.column(i).name: list(md.row_group(0).column(i).encodings)
                  for i in range(md.num_columns)},
    "rows": rows,
}))
"#;

async fn pyarrow_read(bucket: &S3Bucket, key: &str) -> serde_json::Value {
    use tokio::io::AsyncReadExt;
    let mut obj = bucket
        .get(key, None)
        .await
        .expect("get")
        .expect("object exists");
    let mut buf = Vec::new();
    obj.body.read_to_end(&mut buf).await.expect("read object");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("part.parquet");
    std::fs::write(&path, &buf).expect("write");
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYARROW_DUMP)
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow could not read the archive (scripts/test.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pyarrow JSON")
}

fn assert_matches_db(py: &serde_json::Value, rows: &[EventRow]) {
    let schema = &py["schema"];
    assert_eq!(schema["id"], "int64");
    assert_eq!(schema["occurred_at"], "timestamp[us, tz=UTC]");
    assert_eq!(schema["file_id"], "int64");
    assert_eq!(schema["cache_hit"], "bool");
    assert_eq!(schema["bytes"], "int64");
    assert_eq!(schema["duration_ms"], "int32");
    assert_eq!(schema["status"], "int16");
    assert_eq!(py["compression"], "ZSTD");
    // The layout the archive documents: pyarrow decodes each of these encodings.
    let encodings = |col: &str| py["encodings"][col].to_string();
    assert!(
        encodings("id").contains("DELTA_BINARY_PACKED"),
        "{}",
        py["encodings"]
    );
    assert!(
        encodings("occurred_at").contains("DELTA_BINARY_PACKED"),
        "{}",
        py["encodings"]
    );
    assert!(
        encodings("file_id").contains("DELTA_BINARY_PACKED"),
        "{}",
        py["encodings"]
    );
    assert!(
        encodings("bytes").contains("DELTA_BINARY_PACKED"),
        "{}",
        py["encodings"]
    );
    assert_eq!(py["num_rows"].as_u64(), Some(rows.len() as u64));
    let mut got: Vec<(i64, i64, i64, bool, i64, i64, i64)> = py["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["id"].as_i64().expect("id"),
                r["occurred_at"].as_i64().expect("occurred_at"),
                r["file_id"].as_i64().expect("file_id"),
                r["cache_hit"].as_bool().expect("cache_hit"),
                r["bytes"].as_i64().expect("bytes"),
                r["duration_ms"].as_i64().expect("duration_ms"),
                r["status"].as_i64().expect("status"),
            )
        })
        .collect();
    got.sort();
    let want: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.id,
                r.occurred_at.timestamp_micros(),
                r.file_id,
                r.cache_hit,
                r.bytes,
                i64::from(r.duration_ms),
                i64::from(r.status),
            )
        })
        .collect();
    assert_eq!(got, want, "pyarrow's rows differ from the database's");
}

/// Archive → the rows are gone, the objects are where Athena/DuckDB expect them, pyarrow reads
/// the same rows, verify passes, stats say which months are archived → restore brings every
/// row back exactly.
async fn round_trip(t: TestDb, s3: &S3Server) {
    let (ctx, bucket, _) = setup(&t, s3).await;
    seed(&t, &OLD, 700).await;
    let current = Month::of(Utc::now());
    t.db.record_downloads(&events_for(current, 5)[..1])
        .await
        .expect("current month");
    let before: Vec<Vec<EventRow>> =
        futures::future::join_all(OLD.iter().map(|&m| db_rows(&t, m))).await;
    assert_eq!(before[0].len(), 700);

    // Dry run: the plan, and nothing touched.
    let dry = archive::run(
        &ctx,
        ArchiveRunParams {
            dry_run: true,
            ..Default::default()
        },
        &Progress::none(),
    )
    .await
    .expect("dry run");
    assert_eq!(dry.partitions.len(), 2, "{dry:?}");
    assert!(dry
        .partitions
        .iter()
        .all(|p| p.status == RunStatus::WouldArchive));
    assert_eq!(dry.rows, 1400);
    assert_eq!(db_rows(&t, OLD[0]).await.len(), 700);
    assert!(bucket
        .head(&key(OLD[0], "part-00000.parquet"))
        .await
        .expect("head")
        .is_none());

    // Without --yes: refused, nothing touched.
    let refused = archive::run(&ctx, run_params(false), &Progress::none()).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");

    let r = archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("archive run");
    assert_eq!(r.archived, 2, "{r:?}");
    assert_eq!(r.rows, 1400);
    for &m in &OLD {
        assert!(db_rows(&t, m).await.is_empty(), "{m:?} still has rows");
        assert!(
            !t.db.month_exists(m).await.expect("exists"),
            "{m:?} still exists"
        );
        assert!(bucket
            .head(&key(m, "part-00000.parquet"))
            .await
            .expect("head")
            .is_some());
        assert!(bucket
            .head(&key(m, "_manifest.json"))
            .await
            .expect("head")
            .is_some());
    }
    assert_eq!(
        db_rows(&t, current).await.len(),
        1,
        "the current month is never archived"
    );

    // The manifest says what the issue promises.
    let manifest = {
        use tokio::io::AsyncReadExt;
        let mut o = bucket
            .get(&key(OLD[0], "_manifest.json"), None)
            .await
            .expect("get")
            .expect("manifest");
        let mut buf = Vec::new();
        o.body.read_to_end(&mut buf).await.expect("read");
        serde_json::from_slice::<serde_json::Value>(&buf).expect("manifest JSON")
    };
    assert_eq!(manifest["partition"], "download_events_y2024m01");
    assert_eq!(manifest["rows"], 700);
    assert_eq!(manifest["schema_version"], 1);
    assert_eq!(manifest["parts"][0]["file"], "part-00000.parquet");
    assert_eq!(
        manifest["parts"][0]["sha256"].as_str().map(str::len),
        Some(64)
    );
    let min = before[0].iter().map(|r| r.occurred_at).min().expect("min");
    assert_eq!(
        manifest["min_occurred_at"]
            .as_str()
            .and_then(|s| s.parse::<DateTime<Utc>>().ok()),
        Some(min)
    );
    assert!(manifest["created_at"].is_string());

    // An independent reader sees the same rows, typed.
    let py = pyarrow_read(&bucket, &key(OLD[0], "part-00000.parquet")).await;
    assert_matches_db(&py, &before[0]);

    let list = archive::list(&ctx, false).await.expect("list");
    let states: Vec<(String, PartitionState, i64)> = list
        .partitions
        .iter()
        .map(|p| (p.partition.clone(), p.state, p.rows))
        .collect();
    assert!(
        states.contains(&(
            "download_events_y2024m01".into(),
            PartitionState::Archived,
            700
        )),
        "{states:?}"
    );
    assert!(states.contains(&(
        mirrorctl::engine::db::partition_name(current),
        PartitionState::Live,
        1
    )));
    let json = serde_json::to_value(&list).expect("json");
    assert!(json.is_array());
    for field in [
        "partition",
        "year",
        "month",
        "rows",
        "bytes",
        "state",
        "object",
    ] {
        assert!(json[0].get(field).is_some(), "list JSON lacks {field}");
    }

    let v = archive::verify(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("verify");
    assert!(v.ok && !v.found_problems(), "{v:?}");
    assert_eq!(v.rows, 700);

    let s = stats::run(
        &ctx,
        stats::StatsParams {
            window: stats::Window::All,
            series: false,
        },
    )
    .await
    .expect("stats");
    assert_eq!(
        s.archived_months,
        vec!["2024-01".to_string(), "2024-02".to_string()]
    );
    assert_eq!(
        s.requests, 1401,
        "the rollup keeps counting archived months"
    );

    let back = archive::restore(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("restore");
    assert_eq!(back.rows, 700);
    assert_eq!(db_rows(&t, OLD[0]).await, before[0], "restored rows differ");
    let again = archive::restore(&ctx, "download_events_y2024m01", &Progress::none()).await;
    assert!(matches!(again, Err(Error::Refused(_))), "{again:?}");
    let list = archive::list(&ctx, false).await.expect("list");
    let m1 = list
        .partitions
        .iter()
        .find(|p| p.partition == "download_events_y2024m01")
        .expect("m1");
    assert_eq!((m1.state, m1.rows), (PartitionState::Restored, 700));

    // A restored month can be archived again.
    let r = archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("archive again");
    assert_eq!((r.archived, r.rows), (1, 700), "{r:?}");
    assert!(db_rows(&t, OLD[0]).await.is_empty());
}

#[tokio::test]
async fn round_trip_sqlite() {
    for s3 in S3Server::all().await {
        round_trip(TestDb::sqlite().await, &s3).await;
    }
}

#[tokio::test]
async fn round_trip_postgres() {
    for s3 in S3Server::all().await {
        let Some(t) = TestDb::postgres().await else {
            return;
        };
        round_trip(t, &s3).await;
    }
}

/// Verify re-reads the objects: a part replaced with other bytes, or gone, is a mismatch.
async fn tampering(t: TestDb, s3: &S3Server) {
    let (ctx, bucket, _) = setup(&t, s3).await;
    seed(&t, &OLD[..1], 300).await;
    archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("archive");
    let part = key(OLD[0], "part-00000.parquet");
    // Another valid Parquet file with fewer rows: the checksum and the row count both differ.
    let other = {
        let t2 = TestDb::sqlite().await;
        let (ctx2, bucket2, _) = setup(&t2, s3).await;
        seed(&t2, &OLD[..1], 10).await;
        archive::run(&ctx2, run_params(true), &Progress::none())
            .await
            .expect("archive other");
        use tokio::io::AsyncReadExt;
        let mut o = bucket2.get(&part, None).await.expect("get").expect("part");
        let mut buf = Vec::new();
        o.body.read_to_end(&mut buf).await.expect("read");
        buf
    };
    bucket
        .put_bytes(&part, other.into(), None)
        .await
        .expect("overwrite");
    let v = archive::verify(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("verify");
    assert!(v.found_problems(), "{v:?}");
    assert_eq!(v.parts[0].footer_rows, Some(10));
    assert!(!v.parts[0].ok);

    bucket.delete(&part).await.expect("delete");
    let v = archive::verify(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("verify");
    assert!(
        v.found_problems() && v.problems.iter().any(|p| p.contains("missing")),
        "{v:?}"
    );
    // Restore refuses to load a damaged archive.
    let r = archive::restore(&ctx, "download_events_y2024m01", &Progress::none()).await;
    assert!(r.is_err(), "{r:?}");
    assert!(db_rows(&t, OLD[0]).await.is_empty());
}

#[tokio::test]
async fn verify_detects_tampering() {
    for s3 in S3Server::all().await {
        tampering(TestDb::sqlite().await, &s3).await;
        if let Some(t) = TestDb::postgres().await {
            tampering(t, &s3).await;
        }
    }
}

/// A crash after the upload and before the drop leaves the month in the database and objects
/// on S3; the rerun archives it completely, and parts from the interrupted run that the new
/// layout does not have are removed.
async fn crash_then_rerun(t: TestDb, s3: &S3Server) {
    let (ctx, bucket, _) = setup(&t, s3).await;
    seed(&t, &OLD[..1], 500).await;
    let before = db_rows(&t, OLD[0]).await;
    let up = archive::export_and_upload(&ctx, OLD[0], 200, &Progress::none())
        .await
        .expect("upload")
        .expect("rows");
    assert_eq!(up.manifest.parts.len(), 3);
    assert_eq!(
        db_rows(&t, OLD[0]).await.len(),
        500,
        "nothing dropped before the drop step"
    );
    assert!(t
        .db
        .archive_record("download_events_y2024m01")
        .await
        .expect("record")
        .is_none());
    assert!(bucket
        .head(&key(OLD[0], "part-00002.parquet"))
        .await
        .expect("head")
        .is_some());

    // Late events arriving between export and drop must not be lost: the drop refuses.
    let late = NewDownloadEvent {
        occurred_at: month_bounds(OLD[0]).0 + TimeDelta::days(3),
        file_id: 5,
        cache_hit: true,
        bytes: 10,
        duration_ms: 1,
        status: 200,
    };
    t.db.record_downloads(&[late]).await.expect("late event");
    let r = t.db.drop_archived_month(OLD[0], up.rows, &up.record).await;
    assert!(r.is_err(), "drop with a different row count must refuse");
    assert_eq!(db_rows(&t, OLD[0]).await.len(), 501);

    let r = archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("rerun");
    assert_eq!((r.archived, r.rows), (1, 501), "{r:?}");
    assert!(db_rows(&t, OLD[0]).await.is_empty());
    assert!(bucket
        .head(&key(OLD[0], "part-00001.parquet"))
        .await
        .expect("head")
        .is_none());
    assert!(bucket
        .head(&key(OLD[0], "part-00002.parquet"))
        .await
        .expect("head")
        .is_none());
    let v = archive::verify(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("verify");
    assert!(v.ok, "{v:?}");
    archive::restore(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("restore");
    let after = db_rows(&t, OLD[0]).await;
    assert_eq!(after.len(), 501);
    assert!(before.iter().all(|r| after.contains(r)));
}

#[tokio::test]
async fn crash_between_upload_and_drop_completes_on_rerun() {
    let s3 = S3Server::s3s().await;
    crash_then_rerun(TestDb::sqlite().await, &s3).await;
    if let Some(t) = TestDb::postgres().await {
        crash_then_rerun(t, &s3).await;
    }
}

/// Rows that arrive for a month after it was archived are neither archived over the archive
/// nor silently merged by a restore.
async fn late_rows(t: TestDb, s3: &S3Server) {
    let (ctx, _bucket, _) = setup(&t, s3).await;
    seed(&t, &OLD[..1], 50).await;
    archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("archive");
    t.db.record_downloads(&events_for(OLD[0], 1))
        .await
        .expect("late row");
    let r = archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("run");
    assert_eq!(r.archived, 0);
    assert_eq!(r.partitions[0].status, RunStatus::Skipped, "{r:?}");
    let r = archive::restore(&ctx, "download_events_y2024m01", &Progress::none()).await;
    match r {
        Err(Error::Refused(msg)) => assert!(msg.contains("duplicate"), "{msg}"),
        other => panic!("restore over live rows must be refused: {other:?}"),
    }
}

#[tokio::test]
async fn late_rows_are_never_lost() {
    let s3 = S3Server::s3s().await;
    late_rows(TestDb::sqlite().await, &s3).await;
    if let Some(t) = TestDb::postgres().await {
        late_rows(t, &s3).await;
    }
}

#[tokio::test]
async fn bad_partitions_are_refused() {
    let s3 = S3Server::s3s().await;
    let t = TestDb::sqlite().await;
    let (ctx, _bucket, _) = setup(&t, &s3).await;
    let named = |p: &str| ArchiveRunParams {
        partition: Some(p.into()),
        yes: true,
        ..Default::default()
    };
    let r = archive::run(
        &ctx,
        named("download_events; DROP TABLE operations"),
        &Progress::none(),
    )
    .await;
    assert!(matches!(r, Err(Error::Usage(_))), "{r:?}");
    let current = mirrorctl::engine::db::partition_name(Month::of(Utc::now()));
    let r = archive::run(&ctx, named(&current), &Progress::none()).await;
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
    let r = archive::run(&ctx, named("download_events_y2019m05"), &Progress::none()).await;
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
    let r = archive::verify(&ctx, "download_events_y2019m05", &Progress::none()).await;
    assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");
    let r = archive::restore(&ctx, "nope", &Progress::none()).await;
    assert!(matches!(r, Err(Error::Usage(_))), "{r:?}");
}

/// The eligibility rule at a month boundary: with N = 0 the previous month is eligible and the
/// current one is not, whatever the day.
#[tokio::test]
async fn eligibility_by_age() {
    let s3 = S3Server::s3s().await;
    let t = TestDb::sqlite().await;
    let (ctx, _bucket, _) = setup(&t, &s3).await;
    let current = Month::of(Utc::now());
    seed(&t, &[current.prev().prev(), current.prev(), current], 3).await;
    let plan = |n| ArchiveRunParams {
        older_than_months: Some(n),
        dry_run: true,
        ..Default::default()
    };
    let r = archive::run(&ctx, plan(0), &Progress::none())
        .await
        .expect("plan");
    assert_eq!(r.partitions.len(), 2, "{r:?}");
    let r = archive::run(&ctx, plan(1), &Progress::none())
        .await
        .expect("plan");
    assert_eq!(r.partitions.len(), 1, "{r:?}");
    let named = ArchiveRunParams {
        partition: Some(mirrorctl::engine::db::partition_name(current.prev())),
        older_than_months: Some(1),
        dry_run: true,
        ..Default::default()
    };
    let r = archive::run(&ctx, named, &Progress::none()).await;
    assert!(matches!(r, Err(Error::Refused(_))), "{r:?}");
}

// --- through the binary, as an operator or cron would run it ------------------------------------

fn write_config(
    dir: &std::path::Path,
    db_url: &str,
    s3: &S3Server,
    bucket: &str,
) -> std::path::PathBuf {
    let text = format!(
        "[database]\nurl = \"{db_url}\"\n\n{}",
        s3.bucket_toml("mirror", bucket)
    );
    common::write_config_file(dir, &text)
}

fn mirrorctl(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::command(config)
        .arg("--headless")
        .args(args)
        .output()
        .expect("run mirrorctl")
}

// Multi-threaded: the in-process S3 server must keep serving while the test waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exit_codes() {
    let s3 = S3Server::s3s().await;
    let t = TestDb::sqlite().await;
    let (_, bucket, _) = setup(&t, &s3).await;
    seed(&t, &OLD[..1], 40).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &t.url, &s3, bucket.name());
    let code = |o: &std::process::Output| o.status.code();

    let o = mirrorctl(&config, &["archive", "run"]);
    assert_eq!(
        code(&o),
        Some(2),
        "missing --yes: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));
    let o = mirrorctl(&config, &["--read-only", "archive", "run", "--yes"]);
    assert_eq!(
        code(&o),
        Some(2),
        "read-only: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("read-only"));
    let o = mirrorctl(
        &config,
        &["archive", "run", "--partition", "events'; --", "--yes"],
    );
    assert_eq!(
        code(&o),
        Some(2),
        "bad name: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        db_rows(&t, OLD[0]).await.len(),
        40,
        "refusals touch nothing"
    );

    let o = mirrorctl(&config, &["archive", "run", "--dry-run", "-o", "json"]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["partitions"][0]["status"], "would_archive");

    let o = mirrorctl(&config, &["archive", "run", "--yes"]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let o = mirrorctl(&config, &["archive", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v[0]["state"], "archived");
    assert_eq!(v[0]["rows"], 40);
    let o = mirrorctl(&config, &["archive", "verify", "download_events_y2024m01"]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stdout));

    bucket
        .put_bytes(
            &key(OLD[0], "part-00000.parquet"),
            bytes::Bytes::from_static(b"not parquet"),
            None,
        )
        .await
        .expect("tamper");
    let o = mirrorctl(
        &config,
        &[
            "archive",
            "verify",
            "download_events_y2024m01",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&o), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], false);

    let o = mirrorctl(&config, &["archive", "restore", "download_events_y2024m01"]);
    assert_eq!(
        code(&o),
        Some(1),
        "damaged archive: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = mirrorctl(&config, &["history", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(
        v.as_array()
            .map(|a| a.iter().filter(|op| op["kind"] == "archive").count())
            .unwrap_or(0)
            >= 3
            || v["operations"]
                .as_array()
                .map(|a| a.iter().filter(|op| op["kind"] == "archive").count())
                .unwrap_or(0)
                >= 3,
        "archive runs are audited: {v}"
    );
}

/// The drop of an archived month waits for busy writers through a short lock timeout and
/// retries, and a writer of the current month is never held up for long behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_retries_past_busy_writers_and_never_blocks_them_long() {
    use std::time::{Duration, Instant};
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let s3 = S3Server::s3s().await;
    let (ctx, _bucket, _) = setup(&t, &s3).await;
    seed(&t, &OLD[..1], 300).await;
    let now_event = NewDownloadEvent {
        occurred_at: Utc::now(),
        file_id: 5,
        cache_hit: true,
        bytes: 10,
        duration_ms: 1,
        status: 200,
    };
    // The current month's partition exists before the race starts.
    t.db.record_downloads(std::slice::from_ref(&now_event))
        .await
        .expect("current event");
    let up = archive::export_and_upload(&ctx, OLD[0], 1000, &Progress::none())
        .await
        .expect("upload")
        .expect("rows");

    // A writer in the middle of a flush holds the parent table for 3 s.
    let pool = sqlx::PgPool::connect(&t.url).await.expect("connect");
    let mut writer = pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE download_events IN ROW EXCLUSIVE MODE")
        .execute(&mut *writer)
        .await
        .expect("writer lock");
    let started = Instant::now();
    let (db, rows, record) = (t.db.clone(), up.rows, up.record.clone());
    let drop = tokio::spawn(async move { db.drop_archived_month(OLD[0], rows, &record).await });

    // Another writer records an event of the current month meanwhile: it gets through within
    // about one lock timeout, not after the whole wait of the drop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    t.db.record_downloads(std::slice::from_ref(&now_event))
        .await
        .expect("a write during the drop");
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_millis(2_800),
        "a writer waited {waited:?} behind the drop"
    );
    assert!(
        !drop.is_finished(),
        "the drop cannot be done while the writer holds the table"
    );

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    // Past one lock timeout (2 s) the drop has neither failed nor finished: it retries.
    assert!(
        !drop.is_finished(),
        "the drop gave up (or went through) while the writer held the table"
    );
    writer.commit().await.expect("writer commit");
    drop.await
        .expect("join")
        .expect("the drop goes through once the writer is done");
    assert!(db_rows(&t, OLD[0]).await.is_empty());
    assert!(t
        .db
        .archive_record("download_events_y2024m01")
        .await
        .expect("record")
        .is_some());
}

// --- PostgreSQL at scale: detach first, estimated counts, read-back, health --------------------

/// Where the PostgreSQL catalog says a month's table stands: (is a table, still a child of
/// download_events, detach pending).
async fn pg_table_state(t: &TestDb, m: Month) -> (bool, bool, bool) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&t.url).await.expect("postgres");
    let row: Option<(bool, Option<String>)> = sqlx::query_as(
        "SELECT i.inhrelid IS NOT NULL, to_jsonb(i) ->> 'inhdetachpending' \
         FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid WHERE c.relname = $1",
    )
    .bind(mirrorctl::engine::db::partition_name(m))
    .fetch_optional(&mut c)
    .await
    .expect("catalog");
    match row {
        None => (false, false, false),
        Some((child, pending)) => (true, child, pending.as_deref() == Some("true")),
    }
}

/// A mirrored file whose downloads `file X` shows; returns its id.
async fn one_file(t: &TestDb) -> i64 {
    use mirrorctl::engine::model::{NewMirroredFile, NewOriginFile};
    let now = Utc::now();
    let origin =
        t.db.insert_origin_files(&[NewOriginFile {
            source: "http".into(),
            remote_id: "7".into(),
            file_name: "a.zip".into(),
            url: "http://origin/a.zip".into(),
            size: Some(100),
            etag: Some("e1".into()),
            updated_at: now,
        }])
        .await
        .expect("origin");
    t.db.insert_mirrored_files(&[NewMirroredFile {
        origin_file_id: origin[0],
        bucket: "m".into(),
        key: "mods/a.zip".into(),
        size: 100,
        sha256: None,
        etag: None,
        mirrored_at: now,
        is_stale: false,
        stale_reason: None,
    }])
    .await
    .expect("mirrored")[0]
}

/// `events_for`, but for files other than `one_file`'s.
async fn seed_noise(t: &TestDb, months: &[Month], per_month: usize) {
    for &m in months {
        let mut events = events_for(m, per_month);
        for e in &mut events {
            e.file_id += 1000;
        }
        t.db.record_downloads(&events)
            .await
            .expect("record downloads");
    }
}

/// `n` downloads of `file_id` on day `day` (1-based) of month `m`, plus one 503 that never counts.
fn downloads_on(m: Month, day: i64, file_id: i64, n: usize) -> Vec<NewDownloadEvent> {
    let at = month_bounds(m).0 + TimeDelta::days(day - 1) + TimeDelta::hours(5);
    let mut v: Vec<NewDownloadEvent> = (0..n)
        .map(|i| NewDownloadEvent {
            occurred_at: at + TimeDelta::seconds(i as i64),
            file_id,
            cache_hit: true,
            bytes: 1000,
            duration_ms: 3,
            status: 200,
        })
        .collect();
    v.push(NewDownloadEvent {
        status: 503,
        ..v[0].clone()
    });
    v
}

fn days_of(report: &mirrorctl::engine::ops::files::FileReport) -> Vec<(String, i64, bool)> {
    report
        .downloads_per_day
        .iter()
        .map(|d| (d.day.clone(), d.downloads, d.from_archive))
        .collect()
}

/// PostgreSQL 14+: the run detaches the month concurrently first. A crash after the detach
/// (and after the upload) leaves a detached table with every row; readers still see them under
/// its name, writers of the current month go on, and the rerun finishes: the table is dropped,
/// the record written, nothing lost.
#[tokio::test]
async fn detach_concurrently_then_crash_then_rerun_completes() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let s3 = S3Server::s3s().await;
    let (ctx, _bucket, _) = setup(&t, &s3).await;
    assert!(t.db.detach_concurrently_supported().await.expect("version"));
    let file = one_file(&t).await;
    seed_noise(&t, &OLD[..1], 400).await;
    t.db.record_downloads(&downloads_on(OLD[0], 10, file, 6))
        .await
        .expect("file's downloads");
    let before = db_rows(&t, OLD[0]).await;
    assert_eq!(before.len(), 407);
    let show = |since_days: u64| {
        let ctx = &ctx;
        async move {
            mirrorctl::engine::ops::files::show(
                ctx,
                &mirrorctl::engine::ops::files::FileParams {
                    id_or_key: file.to_string(),
                    live: false,
                    since: std::time::Duration::from_secs(since_days * 86_400),
                },
            )
            .await
            .expect("file")
        }
    };
    let jan10 = ("2024-01-10".to_string(), 6, false);
    let since_2024 = (Utc::now() - month_bounds(OLD[0]).0).num_days() as u64 + 1;
    assert_eq!(days_of(&show(since_2024).await), vec![jan10.clone()]);

    // Step 1 of a run, then the process dies.
    assert!(t.db.detach_month(OLD[0]).await.expect("detach"));
    assert_eq!(pg_table_state(&t, OLD[0]).await, (true, false, false));
    assert!(
        db_rows(&t, OLD[0]).await.is_empty(),
        "download_events no longer reaches the detached month"
    );
    // Readers still see the month, under the detached table's name.
    assert_eq!(days_of(&show(since_2024).await), vec![jan10.clone()]);
    let list = archive::list(&ctx, true).await.expect("list");
    let m = &list.partitions[0];
    assert_eq!(
        (m.state, m.rows),
        (PartitionState::Archiving, 407),
        "{list:?}"
    );
    // Writers of the current month are not affected; a write into the detached month is
    // refused (never silently lost), and retried by the data plane until the run finished.
    t.db.record_downloads(&events_for(Month::of(Utc::now()), 2)[..1])
        .await
        .expect("a current write while detached");
    let late = t.db.record_downloads(&events_for(OLD[0], 1)).await;
    assert!(matches!(late, Err(Error::Refused(_))), "{late:?}");
    // A second crash, after the upload this time.
    archive::export_and_upload(&ctx, OLD[0], 1000, &Progress::none())
        .await
        .expect("upload")
        .expect("rows");
    // Detaching again is harmless: it is done already.
    assert!(t.db.detach_month(OLD[0]).await.expect("detach again"));

    // The rerun finishes, whatever --older-than-months says now.
    let r = archive::run(
        &ctx,
        ArchiveRunParams {
            yes: true,
            older_than_months: Some(600),
            ..Default::default()
        },
        &Progress::none(),
    )
    .await
    .expect("rerun");
    assert_eq!((r.archived, r.rows), (1, 407), "{r:?}");
    assert_eq!(pg_table_state(&t, OLD[0]).await, (false, false, false));
    let rec =
        t.db.archive_record("download_events_y2024m01")
            .await
            .expect("record")
            .expect("archived");
    assert_eq!((rec.state.as_str(), rec.row_count), ("archived", 407));
    // The archive answers for the month now.
    assert_eq!(
        days_of(&show(since_2024).await),
        vec![("2024-01-10".to_string(), 6, true)]
    );
    archive::restore(&ctx, "download_events_y2024m01", &Progress::none())
        .await
        .expect("restore");
    assert_eq!(db_rows(&t, OLD[0]).await, before, "every row came back");
}

/// A detach interrupted in its second phase (it waits for transactions that saw the partition,
/// under the lock timeout) leaves the partition "detach pending"; the next run finalizes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_detach_is_finalized_by_the_next_run() {
    use sqlx::{Connection, Executor};
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let s3 = S3Server::s3s().await;
    let (ctx, _bucket, _) = setup(&t, &s3).await;
    seed(&t, &OLD[..1], 300).await;
    let name = mirrorctl::engine::db::partition_name(OLD[0]);

    // A reader holds a snapshot that saw the partition.
    let mut reader = sqlx::PgConnection::connect(&t.url).await.expect("reader");
    reader
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .expect("begin");
    reader
        .execute("SELECT count(*) FROM download_events")
        .await
        .expect("read");
    let mut ddl = sqlx::PgConnection::connect(&t.url).await.expect("ddl");
    ddl.execute("SET lock_timeout = '300ms'")
        .await
        .expect("timeout");
    let r = ddl
        .execute(
            format!("ALTER TABLE download_events DETACH PARTITION {name} CONCURRENTLY").as_str(),
        )
        .await;
    assert!(
        r.is_err(),
        "the detach cannot finish while the reader's snapshot lives"
    );
    assert_eq!(
        pg_table_state(&t, OLD[0]).await,
        (true, true, true),
        "left pending"
    );
    reader.execute("COMMIT").await.expect("commit");

    let list = archive::list(&ctx, false).await.expect("list");
    assert_eq!(list.partitions[0].state, PartitionState::Archiving);
    let r = archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("run");
    assert_eq!((r.archived, r.rows), (1, 300), "{r:?}");
    assert_eq!(pg_table_state(&t, OLD[0]).await, (false, false, false));
    let v = archive::verify(&ctx, &name, &Progress::none())
        .await
        .expect("verify");
    assert!(v.ok, "{v:?}");
}

/// PostgreSQL: `archive list` and the run's plan use the catalog's estimate (marked), which
/// goes stale until ANALYZE; `--exact` counts. SQLite always counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counts_are_estimated_unless_exact() {
    use sqlx::{Connection, Executor};
    let s3 = S3Server::s3s().await;
    for t in TestDb::all().await {
        let postgres = !t.url.starts_with("sqlite:");
        let (ctx, bucket, _) = setup(&t, &s3).await;
        seed(&t, &OLD, 500).await;
        if postgres {
            let mut c = sqlx::PgConnection::connect(&t.url).await.expect("pg");
            c.execute("ANALYZE download_events_y2024m01")
                .await
                .expect("analyze");
        }
        // 50 more rows: under autovacuum's analyze threshold (50 + 10 %), so the estimate
        // stays at what ANALYZE saw.
        t.db.record_downloads(&events_for(OLD[0], 50))
            .await
            .expect("more rows");
        let rows = |l: &archive::ArchiveListReport, i: usize| {
            (l.partitions[i].rows, l.partitions[i].rows_estimated)
        };
        let estimated = archive::list(&ctx, false).await.expect("list");
        let exact = archive::list(&ctx, true).await.expect("list --exact");
        assert_eq!(rows(&exact, 0), (550, false));
        assert_eq!(rows(&exact, 1), (500, false));
        if postgres {
            assert_eq!(rows(&estimated, 0), (500, true), "the catalog's estimate");
            // February was never analyzed by us: counted, unless autovacuum got there first.
            assert_eq!(rows(&estimated, 1).0, 500);
        } else {
            assert_eq!(rows(&estimated, 0), (550, false), "SQLite counts");
        }
        let json = serde_json::to_value(&estimated).expect("json");
        assert_eq!(json[0]["rows_estimated"], postgres);

        let plan = archive::run(
            &ctx,
            ArchiveRunParams {
                dry_run: true,
                ..Default::default()
            },
            &Progress::none(),
        )
        .await
        .expect("plan");
        assert_eq!(plan.partitions[0].rows_estimated, postgres);
        let done = archive::run(&ctx, run_params(true), &Progress::none())
            .await
            .expect("run");
        assert_eq!(
            (done.partitions[0].rows, done.partitions[0].rows_estimated),
            (550, false),
            "the export counts what it archives"
        );
        let after = archive::list(&ctx, false).await.expect("list");
        assert_eq!(
            rows(&after, 0),
            (550, false),
            "archived: the recorded count"
        );

        // Through the binary: --exact is accepted, JSON marks the estimate.
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write_config(dir.path(), &t.url, &s3, bucket.name());
        let o = mirrorctl(&config, &["archive", "list", "--exact", "-o", "json"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(
            (v[0]["rows"].as_i64(), v[0]["rows_estimated"].as_bool()),
            (Some(550), Some(false))
        );
    }
}

/// `file X --since` covers archived months: their days are read from the Parquet archive
/// (marked), once downloaded from a local cache; other days from the database. Bad --since
/// values are refused with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_downloads_include_archived_months() {
    let s3 = S3Server::s3s().await;
    for t in TestDb::all().await {
        let (ctx, bucket, _) = setup(&t, &s3).await;
        let file = one_file(&t).await;
        let other = file + 1;
        let recent = Month::of(Utc::now() - TimeDelta::days(1));
        for (m, day, f, n) in [
            (OLD[0], 3, file, 4),
            (OLD[0], 20, file, 2),
            (OLD[0], 20, other, 9),
            (OLD[1], 1, file, 1),
        ] {
            t.db.record_downloads(&downloads_on(m, day, f, n))
                .await
                .expect("events");
        }
        seed_noise(&t, &OLD, 300).await;
        let yesterday = Utc::now() - TimeDelta::days(1);
        t.db.record_downloads(&[NewDownloadEvent {
            occurred_at: yesterday,
            file_id: file,
            cache_hit: false,
            bytes: 5,
            duration_ms: 1,
            status: 200,
        }])
        .await
        .expect("recent");
        let r = archive::run(
            &ctx,
            ArchiveRunParams {
                yes: true,
                partition: Some("download_events_y2024m01".into()),
                ..Default::default()
            },
            &Progress::none(),
        )
        .await
        .expect("archive January");
        assert_eq!(r.archived, 1);
        assert!(
            db_rows(&t, OLD[0]).await.is_empty(),
            "January left the database"
        );
        assert_eq!(Month::of(yesterday), recent);

        let dir = tempfile::tempdir().expect("temp dir");
        let cache = tempfile::tempdir().expect("cache dir");
        let config = write_config(dir.path(), &t.url, &s3, bucket.name());
        let since = format!("{}d", (Utc::now() - month_bounds(OLD[0]).0).num_days() + 1);
        let file_json = || {
            let o = common::command(&config)
                .env("MIRRORCTL_CACHE_DIR", cache.path())
                .args([
                    "--headless",
                    "file",
                    &file.to_string(),
                    "--since",
                    &since,
                    "-o",
                    "json",
                ])
                .output()
                .expect("run");
            assert_eq!(
                o.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
            v["downloads_per_day"]
                .as_array()
                .expect("days")
                .iter()
                .map(|d| {
                    (
                        d["day"].as_str().expect("day").to_string(),
                        d["downloads"].as_i64().expect("downloads"),
                        d["from_archive"].as_bool().expect("from_archive"),
                    )
                })
                .collect::<Vec<_>>()
        };
        let want = vec![
            ("2024-01-03".to_string(), 4, true),
            ("2024-01-20".to_string(), 2, true),
            ("2024-02-01".to_string(), 1, false),
            (yesterday.format("%Y-%m-%d").to_string(), 1, false),
        ];
        assert_eq!(file_json(), want, "{}", t.url);

        // The parts are cached: with the archive gone from S3 the answer is the same.
        let part = key(OLD[0], "part-00000.parquet");
        let saved = {
            use tokio::io::AsyncReadExt;
            let mut o = bucket.get(&part, None).await.expect("get").expect("part");
            let mut buf = Vec::new();
            o.body.read_to_end(&mut buf).await.expect("read");
            buf
        };
        bucket.delete(&part).await.expect("delete");
        assert_eq!(file_json(), want, "served from the local cache");

        // Without the cache and without the archive: the days are missing and a note says so.
        let empty_cache = tempfile::tempdir().expect("cache dir");
        let o = common::command(&config)
            .env("MIRRORCTL_CACHE_DIR", empty_cache.path())
            .args(["--headless", "file", &file.to_string(), "--since", &since])
            .output()
            .expect("run");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(
            out.contains("download_events_y2024m01") && out.contains("missing"),
            "{out}"
        );
        assert!(!out.contains("2024-01-03"), "{out}");
        bucket
            .put_bytes(&part, saved.into(), None)
            .await
            .expect("put back");
        // A cached part removed by hand: the month is fetched again.
        let mut removed = 0;
        for e in std::fs::read_dir(cache.path()).expect("cache").flatten() {
            removed +=
                usize::from(std::fs::remove_file(e.path().join("part-00000.parquet")).is_ok());
        }
        assert_eq!(removed, 1, "one cached month");
        assert_eq!(file_json(), want, "fetched again");

        // The table marks archive days.
        let o = common::command(&config)
            .env("MIRRORCTL_CACHE_DIR", cache.path())
            .args(["--headless", "file", &file.to_string(), "--since", &since])
            .output()
            .expect("run");
        let out = String::from_utf8_lossy(&o.stdout);
        let jan3 = out
            .lines()
            .find(|l| l.contains("2024-01-03"))
            .unwrap_or_default();
        let feb1 = out
            .lines()
            .find(|l| l.contains("2024-02-01"))
            .unwrap_or_default();
        assert!(
            jan3.contains("archive") && !feb1.contains("archive"),
            "{out}"
        );

        // The default window (30 days) does not reach January: no archive is read.
        let o = common::command(&config)
            .env("MIRRORCTL_CACHE_DIR", empty_cache.path())
            .args(["--headless", "file", &file.to_string(), "-o", "json"])
            .output()
            .expect("run");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v["downloads_per_day"].as_array().map(Vec::len), Some(1));
        assert!(v.get("archive_unavailable").is_none(), "{v}");

        for bad in ["0s", "banana", "3x", "999999y"] {
            let o = mirrorctl(&config, &["file", &file.to_string(), "--since", bad]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "--since {bad}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(err.contains("--since"), "{err}");
        }
    }
}

/// `archive health`: the newest archived month read back within the threshold (0), too slow
/// for a threshold of 0 (3, also from the config key), damaged (3), unreachable (1), nothing
/// archived yet (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_health_times_the_read_back() {
    let s3 = S3Server::s3s().await;
    let t = TestDb::sqlite().await;
    let (ctx, bucket, _) = setup(&t, &s3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &t.url, &s3, bucket.name());
    let code = |o: &std::process::Output| o.status.code();

    let o = mirrorctl(&config, &["archive", "health"]);
    assert_eq!(
        code(&o),
        Some(2),
        "nothing archived: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    seed(&t, &OLD, 200).await;
    archive::run(&ctx, run_params(true), &Progress::none())
        .await
        .expect("archive");
    let o = mirrorctl(&config, &["archive", "health", "-o", "json"]);
    assert_eq!(code(&o), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v["partition"], "download_events_y2024m02",
        "the newest archived month"
    );
    assert_eq!(
        (
            v["healthy"].as_bool(),
            v["rows"].as_u64(),
            v["expected_rows"].as_u64()
        ),
        (Some(true), Some(200), Some(200))
    );
    assert_eq!(v["threshold_seconds"].as_f64(), Some(30.0));
    assert!(v["seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");

    let o = mirrorctl(&config, &["archive", "health", "--threshold", "0s"]);
    assert_eq!(code(&o), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).contains("threshold"));

    // The config key, accepted by the parser, sets the default threshold.
    let strict = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(&config).expect("config")
        + "\n[policy]\narchive_health_threshold = \"0s\"\n";
    let strict_config = common::write_config_file(strict.path(), &text);
    let o = mirrorctl(&strict_config, &["archive", "health"]);
    assert_eq!(code(&o), Some(3), "{}", String::from_utf8_lossy(&o.stderr));

    // A damaged archive is a finding too; the other month still reads back.
    bucket
        .delete(&key(OLD[0], "part-00000.parquet"))
        .await
        .expect("delete");
    let o = mirrorctl(
        &config,
        &[
            "archive",
            "health",
            "--partition",
            "download_events_y2024m01",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&o), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v["problems"].to_string().contains("missing"), "{v}");
    let o = mirrorctl(
        &config,
        &[
            "archive",
            "health",
            "--partition",
            "download_events_y2019m01",
        ],
    );
    assert_eq!(code(&o), Some(2));
    let o = mirrorctl(&config, &["archive", "health", "--threshold", "soon"]);
    assert_eq!(code(&o), Some(2));

    // The bucket unreachable: a runtime failure.
    let down = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace(&s3.endpoint, "http://127.0.0.1:9");
    let down_config = common::write_config_file(down.path(), &text);
    let o = mirrorctl(&down_config, &["archive", "health"]);
    assert_eq!(code(&o), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The whole run on PostgreSQL 14+ while a writer of the current month sits in an open
/// transaction: the detach neither makes other writers wait (each write goes through at once)
/// nor waits for that writer (it never touched the archived month's partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_never_holds_writers_up() {
    use std::time::{Duration, Instant};
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let s3 = S3Server::s3s().await;
    let (ctx, _bucket, _) = setup(&t, &s3).await;
    seed(&t, &OLD[..1], 300).await;
    let now_events = || events_for(Month::of(Utc::now()), 3);
    t.db.record_downloads(&now_events()).await.expect("current");

    // A flush of the current month in the middle of its transaction, for 3 s.
    let pool = sqlx::PgPool::connect(&t.url).await.expect("connect");
    let mut writer = pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO download_events (occurred_at, file_id, cache_hit, bytes, duration_ms, status) \
                 VALUES (now(), 1, true, 1, 1, 200)")
        .execute(&mut *writer)
        .await
        .expect("writer insert");
    let started = Instant::now();
    let run = {
        let ctx = common::ctx(&t, ctx.config.clone());
        tokio::spawn(async move { archive::run(&ctx, run_params(true), &Progress::none()).await })
    };
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t0 = Instant::now();
        t.db.record_downloads(&now_events())
            .await
            .expect("a write during the run");
        let waited = t0.elapsed();
        assert!(
            waited < Duration::from_millis(500),
            "a writer waited {waited:?}"
        );
    }
    let r = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run does not wait for the open transaction")
        .expect("join")
        .expect("run");
    assert!(started.elapsed() < Duration::from_secs(30));
    writer.commit().await.expect("writer commit");
    assert_eq!((r.archived, r.rows), (1, 300), "{r:?}");
    assert_eq!(pg_table_state(&t, OLD[0]).await, (false, false, false));
    let current = db_rows(&t, Month::of(Utc::now())).await.len();
    assert_eq!(current, 3 + 1 + 4 * 3, "every current write is there");
}
