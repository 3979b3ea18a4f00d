//! Every read path stays on an index on PostgreSQL: each query shape (the Files view in every
//! sort from either end and after a cursor, key filters, key lookups, a file's downloads per
//! day, stats over every window, the purge plans) runs through the engine against a database
//! where sequential scans are switched off (`enable_seqscan = off` makes the planner take any
//! index path there is, so a sequential scan means there is none), and fails if the server
//! counted a sequential scan of `mirrored_files` or of a `download_events` partition, or if a
//! shape read a tenth of the events (a month walked through an index where a few files'
//! events were wanted).

mod common;

use std::time::Duration;

use common::{S3Server, TestDb};
use mirrorctl::engine::db::{Db, Month};
use mirrorctl::engine::jobs::Progress;
use mirrorctl::engine::model::{FileQuery, FileSort};
use mirrorctl::engine::ops::{files, purge, stats};
use mirrorctl::engine::Ctx;
use sqlx::Connection;

/// Sequential scans of the big tables so far, once the sessions that ran the shape are gone
/// (a backend flushes its statistics as it exits).
async fn seq_scans(admin: &mut sqlx::PgConnection) -> Counters {
    for _ in 0..200 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'mirrorctl'",
        )
        .fetch_one(&mut *admin)
        .await
        .expect("sessions");
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *admin)
        .await
        .expect("clear snapshot");
    let (scans, events_read): (i64, i64) = sqlx::query_as(
        "SELECT CAST(coalesce(sum(seq_scan), 0) AS BIGINT), \
         CAST(coalesce(sum(seq_tup_read + coalesce(idx_tup_fetch, 0)) \
           FILTER (WHERE relname LIKE 'download\\_events\\_%'), 0) AS BIGINT) \
         FROM pg_stat_user_tables \
         WHERE relname = 'mirrored_files' OR relname LIKE 'download\\_events\\_%'",
    )
    .fetch_one(&mut *admin)
    .await
    .expect("seq scans");
    Counters { scans, events_read }
}

/// Sequential scans of the big tables, and rows of events read (by any scan), so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    scans: i64,
    events_read: i64,
}

/// Of the 200,000 events, a read path reads the few it needs (a file's, a purge's
/// candidates'): reading a tenth of them means it walked a month of events.
const EVENTS_READ_LIMIT: i64 = 20_000;

/// Why a shape failed: a sequential scan, or most of the events read through an index.
fn verdict(before: Counters, after: Counters) -> Option<String> {
    if after.scans != before.scans {
        return Some(format!("{} sequential scans", after.scans - before.scans));
    }
    let read = after.events_read - before.events_read;
    (read > EVENTS_READ_LIMIT).then(|| format!("{read} events read"))
}

/// Fills the database server-side: 20,000 files (every 50th stale, every 40th purged) and
/// 200,000 events over the last 40 days, with rollups; then ANALYZE and no sequential scans
/// for new sessions.
async fn fill(admin: &mut sqlx::PgConnection, bucket: &str) {
    let sql = r#"
INSERT INTO origin_files (source, remote_id, file_name, url, size, etag, updated_at)
SELECT 'http', g::text, 'file-' || g || '.zip', 'mods/' || (g / 3) || '/' || g || '/File-' || g || '.zip',
       1024 + g % 65536, md5(g::text), now() - interval '60 days'
FROM generate_series(1, 20000) g;
INSERT INTO mirrored_files (origin_file_id, bucket, key, size, etag, mirrored_at, is_stale, stale_reason,
                            download_count, bytes_served, last_downloaded_at, deleted_at)
SELECT id, '{bucket}', url, size, etag, now() - ((id % 50) || ' days')::interval, id % 50 = 0,
       CASE WHEN id % 50 = 0 THEN 'origin size changed' END, (id * 7919) % 1000, (id * 7919) % 1000 * 4096,
       CASE WHEN id % 9 = 0 THEN NULL ELSE now() - ((id % 40) || ' days')::interval END,
       CASE WHEN id % 40 = 0 THEN now() END
FROM origin_files;
INSERT INTO download_events (occurred_at, file_id, cache_hit, bytes, duration_ms, status)
SELECT now() - (g % 40) * interval '1 day' - (g % 86400) * interval '1 second', 1 + g % 20000, g % 10 <> 0,
       4096, 10, CASE WHEN g % 500 = 0 THEN 502 ELSE 200 END
FROM generate_series(1, 200000) g;
INSERT INTO download_stats_hourly (hour, hits, misses, errors, bytes_hit, bytes_miss)
SELECT date_trunc('hour', occurred_at, 'UTC'), count(*) FILTER (WHERE cache_hit), count(*) FILTER (WHERE NOT cache_hit),
       0, 0, 0
FROM download_events GROUP BY 1;
ANALYZE;
"#
    .replace("{bucket}", bucket);
    sqlx::raw_sql(&sql)
        .execute(&mut *admin)
        .await
        .expect("fill");
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *admin)
        .await
        .expect("name");
    sqlx::raw_sql(&format!("ALTER DATABASE {db} SET enable_seqscan = off"))
        .execute(&mut *admin)
        .await
        .expect("enable_seqscan");
}

#[tokio::test]
async fn every_read_path_is_on_an_index_on_postgres() {
    let Some(t) = TestDb::postgres().await else {
        return;
    };
    let s3 = S3Server::s3s().await;
    let (mirror, _) = s3.new_bucket("plans").await;
    let now = Month::of(chrono::Utc::now());
    t.db.ensure_partitions(now.prev().prev(), now.next())
        .await
        .expect("partitions");
    let mut admin = sqlx::PgConnection::connect(&t.url).await.expect("admin");
    fill(&mut admin, &mirror.bucket).await;
    t.db.close().await;
    let config = common::config(&t.url, mirror);

    // One shape per run: a fresh one-connection session, closed before counting.
    let mut checked = 0;
    let mut check = |name: String| {
        checked += 1;
        name
    };
    let url = t.url.clone();
    let session = || async {
        let db = Db::connect(&url, 1, Duration::from_secs(5))
            .await
            .expect("connect");
        Ctx::new(config.clone(), db, false)
    };
    let sorts = [
        FileSort::Downloads,
        FileSort::Size,
        FileSort::LastDownloaded,
        FileSort::Name,
        FileSort::Id,
        FileSort::BytesServed,
        FileSort::Stale,
    ];
    let filters = [None, Some("file-1234"), Some("^mods/12/"), Some("^")];
    let mut failures = Vec::new();
    for sort in sorts {
        for filter in filters {
            for stale_only in [false, true] {
                // The first page, a page after a row of it, and the last page.
                let base = FileQuery {
                    sort,
                    stale_only,
                    filter: filter.map(str::to_string),
                    limit: 50,
                    ..FileQuery::default()
                };
                let before = seq_scans(&mut admin).await;
                let ctx = session().await;
                let first = files::list(&ctx, &base).await.expect("first page").files;
                let next = FileQuery {
                    after: first.last().cloned(),
                    ..base.clone()
                };
                files::list(&ctx, &next).await.expect("next page");
                let last = FileQuery {
                    from_end: true,
                    ..base.clone()
                };
                files::list(&ctx, &last).await.expect("last page");
                ctx.db.count_files(&base).await.expect("count");
                ctx.db.close().await;
                let name = check(format!(
                    "files --sort {sort:?} --filter {filter:?} stale_only={stale_only}"
                ));
                if let Some(why) = verdict(before, seq_scans(&mut admin).await) {
                    failures.push(format!("{name}: {why}"));
                }
            }
        }
    }

    // Substring filters give the rows a plain substring test gives, whichever of their words
    // drive the trigram index (a rare number with common words, common words alone, only rare
    // words, punctuation and case).
    let trigram: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'mirrored_files_key_trgm')",
    )
    .fetch_one(&mut admin)
    .await
    .expect("trigram index");
    assert!(
        trigram,
        "migrate built no trigram index: substring filters are untested"
    );
    for filter in [
        "file-1234",
        "FILE-12345.ZIP",
        "/1234/file",
        "mods/4",
        "12345",
        "zip",
        "le-2.z",
        "4/File-1",
    ] {
        let ctx = session().await;
        let got: Vec<i64> = files::list(
            &ctx,
            &FileQuery {
                filter: Some(filter.into()),
                limit: 200,
                ..FileQuery::default()
            },
        )
        .await
        .expect("filter")
        .files
        .iter()
        .map(|f| f.id)
        .collect();
        ctx.db.close().await;
        let want: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM mirrored_files WHERE deleted_at IS NULL \
             AND strpos(lower(key), lower($1)) > 0 ORDER BY download_count DESC, id DESC LIMIT 200",
        )
        .bind(filter)
        .fetch_all(&mut admin)
        .await
        .expect("substring");
        assert!(!want.is_empty(), "{filter} matches nothing");
        assert_eq!(got, want, "--filter {filter}");
    }

    // Key lookups (live, purged, unknown; in the mirror bucket and in any), a file's detail.
    for key in [
        "mods/333/1000/File-1000.zip",
        "mods/13/40/File-40.zip",
        "mods/none/x.zip",
        "77",
    ] {
        let before = seq_scans(&mut admin).await;
        let ctx = session().await;
        let _ = files::show(
            &ctx,
            &files::FileParams {
                id_or_key: key.into(),
                live: false,
                since: std::time::Duration::from_secs(30 * 86_400),
            },
        )
        .await;
        ctx.db.get_file_by_key(key).await.expect("any bucket");
        ctx.db.close().await;
        let name = check(format!("file {key}"));
        if let Some(why) = verdict(before, seq_scans(&mut admin).await) {
            failures.push(format!("{name}: {why}"));
        }
    }

    for window in stats::Window::ALL {
        let before = seq_scans(&mut admin).await;
        let ctx = session().await;
        for series in [false, true] {
            stats::run(&ctx, stats::StatsParams { window, series })
                .await
                .expect("stats");
        }
        ctx.db.close().await;
        let name = check(format!("stats --window {window:?}"));
        if let Some(why) = verdict(before, seq_scans(&mut admin).await) {
            failures.push(format!("{name}: {why}"));
        }
    }

    // Each max-bytes frees ~5 MB (a few hundred files); the price replays the candidates'
    // last 30 days of events.
    // (Read on index paths too: the admin session's own statistics reach the counters late.)
    let all: i64 = sqlx::query_scalar("SELECT bytes FROM mirror_counters")
        .fetch_one(&mut admin)
        .await
        .expect("live");
    let under: i64 = sqlx::query_scalar(
        "SELECT CAST(sum(size) AS BIGINT) FROM mirrored_files WHERE deleted_at IS NULL \
         AND (key COLLATE \"C\") >= 'mods/1' AND (key COLLATE \"C\") < 'mods/2'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("live under mods/1");
    let plans = [
        (purge::PurgeTarget::MaxBytes(all as u64 - 5_000_000), None),
        (
            purge::PurgeTarget::MaxBytes(under as u64 - 5_000_000),
            Some("mods/1"),
        ),
        (purge::PurgeTarget::UnusedDays(30), None),
        (purge::PurgeTarget::UnusedDays(30), Some("mods/1")),
        (purge::PurgeTarget::Stale, None),
        (purge::PurgeTarget::Stale, Some("mods/1")),
    ];
    for (target, prefix) in plans {
        {
            let before = seq_scans(&mut admin).await;
            let ctx = session().await;
            let p = purge::PurgeParams {
                target,
                prefix: prefix.map(str::to_string),
                pattern: None,
                impact_days: 30,
                dry_run: true,
                max_delete: None,
                yes: false,
            };
            let r = purge::run(&ctx, p, &Progress::none())
                .await
                .expect("purge dry run");
            assert!(r.candidates > 0, "{target:?} {prefix:?} selects nothing");
            ctx.db.close().await;
            let name = check(format!("purge {target:?} --prefix {prefix:?} --dry-run"));
            if let Some(why) = verdict(before, seq_scans(&mut admin).await) {
                failures.push(format!("{name}: {why}"));
            }
        }
    }

    // The check itself can fail: a query with no index path is counted.
    let before = seq_scans(&mut admin).await;
    {
        let mut c = sqlx::PgConnection::connect(&t.url).await.expect("connect");
        sqlx::query("SELECT count(*) FROM mirrored_files WHERE etag LIKE '%a%'")
            .execute(&mut c)
            .await
            .expect("unindexed query");
        c.close().await.expect("close");
    }
    let mut counted = false;
    for _ in 0..100 {
        if seq_scans(&mut admin).await.scans > before.scans {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        counted,
        "an unindexed query was not counted as a sequential scan"
    );

    assert!(checked > 60, "only {checked} shapes ran");
    assert!(
        failures.is_empty(),
        "read paths off their index in {} of {checked} shapes:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn migrate(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(common::binary())
        .args(["--headless", "migrate"])
        .args(args)
        .env_remove("MIRRORCTL_CONFIG")
        .env("MIRRORCTL_DATABASE_URL", url)
        .output()
        .expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn tables(c: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
        .fetch_one(c)
        .await
        .expect("tables")
}

/// Whether the rebuilt size index is there, valid and the migration's own (not unique).
async fn valid(c: &mut sqlx::PgConnection) -> bool {
    sqlx::query_scalar(
        "SELECT i.indisvalid AND NOT i.indisunique FROM pg_index i \
         JOIN pg_class x ON x.oid = i.indexrelid WHERE x.relname = 'mirrored_files_page_size'",
    )
    .fetch_one(c)
    .await
    .expect("index")
}

#[tokio::test]
async fn migrate_dry_run_changes_nothing_and_a_broken_concurrent_build_is_redone() {
    let Some(url) = common::empty_postgres().await else {
        return;
    };
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");

    // A dry run lists every step, with the concurrent one marked, and creates nothing.
    let (code, out, err) = migrate(&url, &["--dry-run", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(plan["dry_run"], true);
    let steps = plan["steps"].as_array().expect("steps");
    let keyset = steps
        .iter()
        .find(|s| s["version"] == 12)
        .expect("0012 pending");
    assert_eq!(keyset["concurrently"], true);
    assert!(keyset.get("seconds").is_none());
    assert_eq!(tables(&mut c).await, 0, "a dry run created tables");

    // The real run times each step.
    let (code, out, err) = migrate(&url, &["-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let done: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(done["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .all(|s| s["seconds"].is_number() || s["note"].is_string()));

    // An interrupted concurrent build leaves an invalid index; the next run drops and redoes it.
    sqlx::raw_sql(
        "DROP INDEX mirrored_files_page_size; DELETE FROM _sqlx_migrations WHERE version = 12;
         INSERT INTO origin_files (remote_id, file_name, url) VALUES ('1', 'a', 'a'), ('2', 'b', 'b');
         INSERT INTO mirrored_files (origin_file_id, bucket, key, size, mirrored_at)
           SELECT id, 'm', url, 7, now() FROM origin_files;",
    )
    .execute(&mut c)
    .await
    .expect("setup");
    let failed = sqlx::raw_sql(
        "CREATE UNIQUE INDEX CONCURRENTLY mirrored_files_page_size ON mirrored_files (size)",
    )
    .execute(&mut c)
    .await;
    assert!(failed.is_err(), "the duplicate sizes should fail the build");
    assert!(
        !valid(&mut c).await,
        "the failed build left no invalid index"
    );
    let (code, out, err) = migrate(&url, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("concurrently"), "{out}");
    assert!(valid(&mut c).await, "the index was not rebuilt");
    let (code, out, _) = migrate(&url, &["--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("up to date"), "{out}");
}
