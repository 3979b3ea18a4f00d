//! Every read path stays on an index on PostgreSQL: each query shape (the Files view in every
//! sort from either end and after a cursor, key filters, key lookups, a file's downloads per
//! day, stats over every window, the purge plans) runs through the engine against a database
//! where sequential scans are switched off (`enable_seqscan = off` makes the planner take any
//! index path there is, so a sequential scan means there is none), and fails if the server
//! counted a sequential scan of `mirrored_files` or of a `download_events` partition.

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
async fn seq_scans(admin: &mut sqlx::PgConnection) -> i64 {
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
    sqlx::query_scalar(
        "SELECT CAST(coalesce(sum(seq_scan), 0) AS BIGINT) FROM pg_stat_user_tables \
         WHERE relname = 'mirrored_files' OR relname LIKE 'download\\_events\\_%'",
    )
    .fetch_one(&mut *admin)
    .await
    .expect("seq scans")
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
                if seq_scans(&mut admin).await != before {
                    failures.push(name);
                }
            }
        }
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
                days: 30,
            },
        )
        .await;
        ctx.db.get_file_by_key(key).await.expect("any bucket");
        ctx.db.close().await;
        let name = check(format!("file {key}"));
        if seq_scans(&mut admin).await != before {
            failures.push(name);
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
        if seq_scans(&mut admin).await != before {
            failures.push(name);
        }
    }

    let targets = [
        purge::PurgeTarget::MaxBytes(10_000_000),
        purge::PurgeTarget::UnusedDays(30),
        purge::PurgeTarget::Stale,
    ];
    for target in targets {
        for prefix in [None, Some("mods/1")] {
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
            if seq_scans(&mut admin).await != before {
                failures.push(name);
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
        if seq_scans(&mut admin).await > before {
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
        "sequential scans in {} of {checked} shapes:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
