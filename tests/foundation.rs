//! The foundation against real components: config errors through the binary, the database
//! story on SQLite and PostgreSQL, the S3 layer on s3s-fs and Garage, the HTTP origin, and the
//! demo's headless commands.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use common::{S3Server, TestDb};
use mirrorctl::engine::db::{partition_name, Backend, Month};
use mirrorctl::engine::jobs::{audited, Progress, Report};
use mirrorctl::engine::model::{
    FileQuery, FileSort, NewDownloadEvent, NewMirroredFile, NewOriginFile,
};
use mirrorctl::engine::ops::{files, history, stats};
use tokio::io::AsyncReadExt;

fn run(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(common::binary());
    cmd.args(args)
        .env_remove("MIRRORCTL_CONFIG")
        .env_remove("MIRRORCTL_DATABASE_URL");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_2_with_one_line_naming_the_key() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/invalid_configs");
    let cases = [
        ("unknown_key.toml", "max_conections"),
        ("wrong_type.toml", "database.max_connections"),
        ("bad_db_url.toml", "database.url"),
        ("bad_endpoint.toml", "buckets.mirror.endpoint"),
        ("bad_size.toml", "origin.max_file_size"),
        ("bad_duration.toml", "tui.refresh"),
        ("broken_toml.toml", "line 1"),
        ("half_credentials.toml", "buckets.mirror"),
        ("admin_without_token.toml", "serve.admin_token"),
        ("short_admin_token.toml", "serve.admin_token"),
        ("pull_through_without_base.toml", "serve.pull_through"),
        ("bad_allow_prefix.toml", "origin.allow_prefixes"),
        ("s3_listen_without_clients.toml", "s3_front.clients"),
        ("s3_listen_without_backup.toml", "buckets.backup"),
        (
            "s3_client_foreign_bucket.toml",
            "s3_front.clients[0].buckets",
        ),
        (
            "s3_client_short_secret.toml",
            "s3_front.clients[0].secret_access_key",
        ),
        ("alerts_rate_not_fraction.toml", "alerts.hit_rate_below"),
        (
            "alerts_warn_after_critical.toml",
            "alerts.warn_error_rate_above",
        ),
        (
            "alerts_cost_without_price.toml",
            "costs.storage_per_gb_month",
        ),
        ("alerts_bad_duration.toml", "alerts.validation_older_than"),
        ("costs_negative_price.toml", "costs.storage_per_gb_month"),
    ];
    for (file, needle) in cases {
        let path = format!("{dir}/{file}");
        let (code, _, err) = run(&["--config", &path, "--headless", "stats"], &[]);
        assert_eq!(code, 2, "{file}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{file}: not one line: {err}");
        assert!(err.contains(needle), "{file}: {err}");
        assert!(
            err.contains(file),
            "{file}: error does not name the file: {err}"
        );
        assert!(
            !err.contains("AKIAEXAMPLE"),
            "{file}: secret printed: {err}"
        );
    }
}

#[test]
fn missing_explicit_config_is_an_error() {
    let (code, _, err) = run(
        &[
            "--config",
            "/nonexistent/mirrorctl.toml",
            "--headless",
            "stats",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/mirrorctl.toml"), "{err}");
    let (code, _, err) = run(
        &["--headless", "stats"],
        &[("MIRRORCTL_CONFIG", "/nonexistent/env.toml")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/env.toml"), "{err}");
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let env = [
        ("MIRRORCTL_DATABASE_URL", url.as_str()),
        ("HOME", "/nonexistent"),
    ];
    let (code, _, err) = run(&["--headless", "stats", "--window", "3w"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("3w"), "{err}");
    let (code, _, err) = run(&["--headless", "files", "--sort", "colour"], &env);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["--headless", "file", "999999"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("999999"), "{err}");
    let (code, _, err) = run(&["--headless"], &env);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn completions_and_man_pages_need_no_config_and_cover_every_command() {
    // No config, no database: a packager runs these at build time.
    let env = [("HOME", "/nonexistent")];
    let (code, script, err) = run(&["completions", "bash"], &env);
    assert_eq!(code, 0, "{err}");
    // bash loads the script and completes a command name from its prefix.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{script}\nCOMP_WORDS=(mirrorctl repl); COMP_CWORD=1; _mirrorctl mirrorctl repl mirrorctl; echo \"${{COMPREPLY[@]}}\""
        ))
        .output()
        .expect("run bash");
    let completed = String::from_utf8_lossy(&out.stdout);
    assert!(completed.contains("replication"), "{completed:?}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let (code, script, err) = run(&["completions", shell], &env);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(script.contains("validate"), "{shell}");
    }
    let (code, _, err) = run(&["completions", "tcsh"], &env);
    assert_eq!(code, 2, "{err}");

    let (code, page, err) = run(&["man"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(page.contains(".TH mirrorctl 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("man1");
    let (code, _, err) = run(&["man", "--dir", target.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    for page in [
        "mirrorctl.1",
        "mirrorctl-purge.1",
        "mirrorctl-archive-run.1",
    ] {
        let text = std::fs::read_to_string(target.join(page)).expect(page);
        assert!(text.starts_with(".ie"), "{page}: {text}");
    }
    let (code, _, err) = run(&["man", "--dir", "/proc/no/such/dir"], &env);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn unreachable_database_exits_1_naming_it_without_hanging() {
    let t = Instant::now();
    let (code, _, err) = run(
        &["--headless", "stats"],
        &[
            (
                "MIRRORCTL_DATABASE_URL",
                "postgres://mirror:hunter2@127.0.0.1:1/mirror",
            ),
            ("HOME", "/nonexistent"),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!err.contains("hunter2"), "password printed: {err}");
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t.elapsed()
    );
}

/// Seeds two files and a few downloads, then checks every read the dashboards make.
async fn database_story(t: &TestDb) {
    let db = &t.db;
    let now = Utc::now();
    let origin = db
        .insert_origin_files(&[
            NewOriginFile {
                source: "http".into(),
                remote_id: "1".into(),
                file_name: "a.zip".into(),
                url: "http://origin/a.zip".into(),
                size: Some(100),
                etag: Some("e1".into()),
                updated_at: now,
            },
            NewOriginFile {
                source: "http".into(),
                remote_id: "2".into(),
                file_name: "b_%.zip".into(),
                url: "http://origin/b.zip".into(),
                size: Some(5000),
                etag: Some("e2".into()),
                updated_at: now,
            },
        ])
        .await
        .unwrap();
    let ids = db
        .insert_mirrored_files(&[
            NewMirroredFile {
                origin_file_id: origin[0],
                bucket: "m".into(),
                key: "mods/a.zip".into(),
                size: 100,
                sha256: None,
                etag: Some("x".into()),
                mirrored_at: now - TimeDelta::days(60),
                is_stale: false,
                stale_reason: None,
            },
            NewMirroredFile {
                origin_file_id: origin[1],
                bucket: "m".into(),
                key: "mods/b_%.zip".into(),
                size: 5000,
                sha256: None,
                etag: None,
                mirrored_at: now - TimeDelta::days(60),
                is_stale: true,
                stale_reason: Some("origin size changed".into()),
            },
        ])
        .await
        .unwrap();
    let storage = db.storage_totals().await.unwrap();
    assert_eq!(
        (storage.objects, storage.bytes, storage.stale),
        (2, 5100, 1)
    );

    // Events two months ago (another partition in PostgreSQL), yesterday and an hour ago.
    let ev = |at, file_id, cache_hit, bytes, status| NewDownloadEvent {
        occurred_at: at,
        file_id,
        cache_hit,
        bytes,
        duration_ms: 10,
        status,
    };
    let old = now - TimeDelta::days(45);
    db.record_downloads(&[
        ev(old, ids[0], false, 100, 200),
        ev(now - TimeDelta::hours(30), ids[0], true, 100, 200),
        ev(now - TimeDelta::hours(1), ids[0], true, 100, 200),
        ev(now - TimeDelta::hours(1), ids[1], false, 5000, 200),
        ev(now - TimeDelta::hours(1), ids[1], false, 0, 502),
    ])
    .await
    .unwrap();
    db.record_downloads(&[ev(now - TimeDelta::minutes(5), ids[0], true, 100, 200)])
        .await
        .unwrap();

    let ctx = common::ctx(t, mirrorctl::config::Config::default());
    let day = stats::run(
        &ctx,
        stats::StatsParams {
            window: stats::Window::Day,
            series: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (day.hits, day.misses, day.errors, day.requests),
        (2, 1, 1, 4)
    );
    assert_eq!(day.bandwidth_saved_bytes, 200);
    assert_eq!(day.bytes_served, 5200);
    assert!((day.hit_rate.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert!((day.error_rate.unwrap() - 0.25).abs() < 1e-9);
    assert_eq!(
        (day.storage_objects, day.storage_bytes, day.stale_files),
        (2, 5100, 1)
    );
    assert_eq!(
        day.series
            .iter()
            .map(|p| p.hits + p.misses + p.errors)
            .sum::<i64>(),
        4
    );
    let all = stats::run(
        &ctx,
        stats::StatsParams {
            window: stats::Window::All,
            series: true,
        },
    )
    .await
    .unwrap();
    assert_eq!((all.hits, all.misses, all.errors), (3, 2, 1));
    assert_eq!(all.series.iter().map(|p| p.hits).sum::<i64>(), 3);

    // The write path kept the per-file counters; errors do not count as downloads.
    let q = FileQuery {
        sort: FileSort::Downloads,
        limit: 10,
        ..Default::default()
    };
    let page = files::list(&ctx, &q).await.unwrap().files;
    assert_eq!(
        page.iter().map(|f| (f.id, f.downloads)).collect::<Vec<_>>(),
        vec![(ids[0], 4), (ids[1], 1)]
    );
    assert_eq!(page[0].bytes_served, 400);
    assert!(page[0].last_downloaded_at.unwrap() > now - TimeDelta::minutes(6));
    let by_size = files::list(
        &ctx,
        &FileQuery {
            sort: FileSort::Size,
            limit: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(by_size.files[0].id, ids[1]);
    let stale = files::list(
        &ctx,
        &FileQuery {
            stale_only: true,
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(stale.files.len(), 1);
    // LIKE wildcards in a filter are literal.
    let filtered = files::list(
        &ctx,
        &FileQuery {
            filter: Some("B_%".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        filtered.files.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
    let none = files::list(
        &ctx,
        &FileQuery {
            filter: Some("_".into()),
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(none.files.len(), 1, "only b_%.zip has an underscore");
    assert_eq!(
        db.count_files(&FileQuery {
            stale_only: true,
            ..Default::default()
        })
        .await
        .unwrap(),
        1
    );

    // One file by id and by key, with downloads per day; an unknown id is NotFound (exit 2).
    let f = files::show(
        &ctx,
        &files::FileParams {
            id_or_key: ids[0].to_string(),
            since: std::time::Duration::from_secs(60 * 86_400),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(f.file.key, "mods/a.zip");
    assert_eq!(
        f.downloads_per_day.iter().map(|d| d.downloads).sum::<i64>(),
        4
    );
    let g = files::show(
        &ctx,
        &files::FileParams {
            id_or_key: "mods/b_%.zip".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(g.file.id, ids[1]);
    assert_eq!(g.origin.size, Some(5000));
    let err = files::show(
        &ctx,
        &files::FileParams {
            id_or_key: "424242".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);

    // Partitions exist for every month written to (PostgreSQL).
    if db.backend() == Backend::Postgres {
        let url = t.url.clone();
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for m in [Month::of(old), Month::of(now)] {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class WHERE relname = $1")
                .bind(partition_name(m))
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(n, 1, "partition {} missing", partition_name(m));
        }
    }

    // Audited operations land in history; the lock makes a second mutation busy.
    #[derive(serde::Serialize)]
    struct Done {
        n: u32,
    }
    impl Report for Done {}
    let guard = db.acquire_lock("purge", "alice@host").await.unwrap();
    let busy = audited(
        &ctx,
        "remirror",
        &serde_json::json!({}),
        true,
        &Progress::none(),
        || async { Ok(Done { n: 1 }) },
    )
    .await
    .err()
    .expect("second mutation must be refused");
    assert!(
        busy.to_string()
            .starts_with("busy: purge started by alice@host at "),
        "{busy}"
    );
    guard.release().await.unwrap();
    audited(
        &ctx,
        "remirror",
        &serde_json::json!({"ids": [1]}),
        true,
        &Progress::none(),
        || async { Ok(Done { n: 7 }) },
    )
    .await
    .unwrap();
    let h = history::run(&ctx, 10).await.unwrap();
    assert_eq!(h.operations.len(), 1);
    assert_eq!(h.operations[0].kind, "remirror");
    assert_eq!(h.operations[0].status, "ok");
    assert_eq!(h.operations[0].summary.as_ref().unwrap()["n"], 7);
    assert_eq!(h.operations[0].params["ids"][0], 1);

    // Soft delete and size changes keep the counters right.
    sqlx_update(
        t,
        "UPDATE mirrored_files SET deleted_at = $2 WHERE id = $1",
        ids[1],
    )
    .await;
    let storage = db.storage_totals().await.unwrap();
    assert_eq!((storage.objects, storage.bytes, storage.stale), (1, 100, 0));
}

/// Runs one UPDATE binding `id` and the current time.
async fn sqlx_update(t: &TestDb, sql: &str, id: i64) {
    match t.db.backend() {
        Backend::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&t.url).await.unwrap();
            sqlx::query(sql)
                .bind(id)
                .bind(Utc::now())
                .execute(&mut c)
                .await
                .unwrap();
        }
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&t.url).await.unwrap();
            sqlx::query(sql)
                .bind(id)
                .bind(Utc::now())
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn database_story_sqlite() {
    database_story(&TestDb::sqlite().await).await;
}

#[tokio::test]
async fn database_story_postgres() {
    if let Some(t) = TestDb::postgres().await {
        database_story(&t).await;
    }
}

#[tokio::test]
async fn sqlite_url_to_missing_file_is_created_and_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/m.db");
    let url = format!("sqlite://{}", path.display());
    let (code, out, err) = run(
        &["--headless", "stats", "-o", "json"],
        &[("MIRRORCTL_DATABASE_URL", &url), ("HOME", "/nonexistent")],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["requests"], 0);
    assert!(path.exists());
}

async fn s3_layer(server: &S3Server) {
    let (mut cfg, b) = server.new_bucket("layer").await;
    let n = server.name;
    // put / head / get / range
    b.put_bytes(
        "dir/a b+ü.txt",
        Bytes::from_static(b"hello world"),
        Some("text/plain"),
    )
    .await
    .unwrap();
    let h = b.head("dir/a b+ü.txt").await.unwrap().expect("exists");
    assert_eq!(h.size, 11, "{n}");
    assert_eq!(
        h.etag.as_deref(),
        Some("5eb63bbbe01eeed093cb22bb8f5acdc3"),
        "{n}"
    );
    assert!(b.head("nope").await.unwrap().is_none(), "{n}");
    let mut g = b
        .get("dir/a b+ü.txt", Some((6, Some(10))))
        .await
        .unwrap()
        .unwrap();
    let mut s = String::new();
    g.body.read_to_string(&mut s).await.unwrap();
    assert_eq!(s, "world", "{n}");
    assert_eq!(g.meta.size, 11, "{n}");
    assert!(b.get("nope", None).await.unwrap().is_none(), "{n}");

    // listing pages stream in byte order
    for k in ["k/3", "k/1", "k/5", "k/2", "k/4"] {
        b.put_bytes(k, Bytes::from(k.as_bytes().to_vec()), None)
            .await
            .unwrap();
    }
    use futures::TryStreamExt;
    let pages: Vec<Vec<_>> = b
        .list_pages("k/".into(), None, 2)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 3, "{n}");
    let keys: Vec<String> = pages.into_iter().flatten().map(|o| o.key).collect();
    assert_eq!(keys, ["k/1", "k/2", "k/3", "k/4", "k/5"], "{n}");
    let after: Vec<Vec<_>> = b
        .list_pages("k/".into(), Some("k/3".into()), 100)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(after.concat().len(), 2, "{n}");

    // multipart above the threshold: 5 MiB parts, 12 MiB body → 3 parts
    cfg.multipart_threshold = mirrorctl::config::ByteSize(6 * 1024 * 1024);
    cfg.part_size = mirrorctl::config::ByteSize(5 * 1024 * 1024);
    let big_bucket = mirrorctl::engine::s3::S3Bucket::connect(&cfg)
        .await
        .unwrap();
    let body: Vec<u8> = (0..12 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let put = big_bucket
        .put_stream("big.bin", &body[..], None)
        .await
        .unwrap();
    assert_eq!((put.parts, put.bytes), (3, body.len() as u64), "{n}");
    let h = b.head("big.bin").await.unwrap().unwrap();
    assert_eq!(h.size, body.len() as u64, "{n}");
    assert!(h.etag.unwrap().ends_with("-3"), "{n}");
    let mut got = Vec::new();
    b.get("big.bin", None)
        .await
        .unwrap()
        .unwrap()
        .body
        .read_to_end(&mut got)
        .await
        .unwrap();
    assert!(got == body, "{n}: multipart round trip differs");
    // a small stream goes up in one request
    assert_eq!(
        big_bucket
            .put_stream("small.bin", &b"tiny"[..], None)
            .await
            .unwrap()
            .parts,
        1,
        "{n}"
    );

    // server-side copy between buckets on one endpoint
    let (_, other) = server.new_bucket("copy").await;
    assert!(other.same_endpoint(&b));
    other
        .copy_from(&b, "dir/a b+ü.txt", "copied/a b+ü.txt")
        .await
        .unwrap();
    assert_eq!(
        other.head("copied/a b+ü.txt").await.unwrap().unwrap().size,
        11,
        "{n}"
    );

    // batch delete: 1,500 keys in two requests
    let keys: Vec<String> = (0..1500).map(|i| format!("del/{i:05}")).collect();
    futures::stream::iter(keys.clone())
        .map(|k| {
            let b = b.clone();
            async move { b.put_bytes(&k, Bytes::from_static(b"x"), None).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let rep = b.delete_batch(&keys).await.unwrap();
    assert_eq!((rep.deleted.len(), rep.failed.len()), (1500, 0), "{n}");
    let left: Vec<Vec<_>> = b
        .list_pages("del/".into(), None, 1000)
        .try_collect()
        .await
        .unwrap();
    assert!(left.concat().is_empty(), "{n}");

    // presigned GET works without credentials
    let url = b
        .presign_get("dir/a b+ü.txt", Duration::from_secs(60))
        .await
        .unwrap();
    let text = reqwest_get(&url).await;
    assert_eq!(text, "hello world", "{n}");

    // errors name bucket and endpoint
    let missing =
        mirrorctl::engine::s3::S3Bucket::connect(&server.bucket_config("no-such-bucket-xyz"))
            .await
            .unwrap();
    let err = missing.check().await.unwrap_err().to_string();
    assert!(
        err.contains("no-such-bucket-xyz") && err.contains(&server.endpoint),
        "{n}: {err}"
    );
}

use futures::StreamExt;

async fn reqwest_get(url: &str) -> String {
    // The origin layer's client is reqwest; use it directly for a plain GET.
    let origin = mirrorctl::engine::origin::HttpOrigin::new(&Default::default()).unwrap();
    let mut body = origin
        .get(url)
        .await
        .unwrap()
        .expect("presigned GET found")
        .body;
    let mut s = String::new();
    body.read_to_string(&mut s).await.unwrap();
    s
}

#[tokio::test]
async fn s3_layer_s3s_fs() {
    s3_layer(&S3Server::s3s().await).await;
}

#[tokio::test]
async fn s3_layer_garage() {
    if let Some(g) = S3Server::garage() {
        s3_layer(&g).await;
        // Garage lists pending multipart uploads: a failed multipart upload leaves none.
        let (mut cfg, _) = g.new_bucket("abort").await;
        cfg.multipart_threshold = mirrorctl::config::ByteSize(6 * 1024 * 1024);
        cfg.part_size = mirrorctl::config::ByteSize(5 * 1024 * 1024);
        let b = mirrorctl::engine::s3::S3Bucket::connect(&cfg)
            .await
            .unwrap();
        let failing = FailAfter {
            left: 11 * 1024 * 1024,
        };
        let err = b
            .put_stream("partial.bin", failing, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("partial.bin"), "{err}");
        assert!(b.head("partial.bin").await.unwrap().is_none());
        assert!(b.pending_uploads().await.unwrap().is_empty());
    }
}

/// A source that yields zeros and then fails, like an origin connection that drops.
struct FailAfter {
    left: usize,
}

impl tokio::io::AsyncRead for FailAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.left == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("connection reset")));
        }
        let n = self.left.min(buf.remaining()).min(64 * 1024);
        buf.put_slice(&vec![0u8; n]);
        self.left -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn unreachable_s3_endpoint_fails_fast_naming_it() {
    let mut cfg =
        mirrorctl::config::BucketConfig::with_static_keys("b", "http://127.0.0.1:1", "k", "s");
    cfg.timeout = mirrorctl::config::HumanDuration(Duration::from_secs(2));
    let b = mirrorctl::engine::s3::S3Bucket::connect(&cfg)
        .await
        .unwrap();
    let t = Instant::now();
    let err = b.head("x").await.unwrap_err().to_string();
    assert!(
        err.contains("http://127.0.0.1:1") && err.contains("bucket b"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[tokio::test]
async fn http_origin_head_get_limits() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mods")).unwrap();
    std::fs::write(dir.path().join("mods/a.zip"), vec![7u8; 3000]).unwrap();
    let (addr, _task) = mirrorctl::demo::start_origin(dir.path(), 0).await.unwrap();
    let mut cfg = mirrorctl::config::OriginConfig {
        base_url: Some(format!("http://{addr}/")),
        ..Default::default()
    };
    let origin = mirrorctl::engine::origin::HttpOrigin::new(&cfg).unwrap();
    let m = origin.head("mods/a.zip").await.unwrap().unwrap();
    assert_eq!(m.size, Some(3000));
    assert!(m.etag.is_some() && m.last_modified.is_some());
    let mut body = origin
        .get(&format!("http://{addr}/mods/a.zip"))
        .await
        .unwrap()
        .unwrap()
        .body;
    let mut v = Vec::new();
    body.read_to_end(&mut v).await.unwrap();
    assert_eq!(v.len(), 3000);
    assert!(origin.head("mods/none.zip").await.unwrap().is_none());
    // Over max_file_size: refused with the limit named.
    cfg.max_file_size = mirrorctl::config::ByteSize(1000);
    let small = mirrorctl::engine::origin::HttpOrigin::new(&cfg).unwrap();
    let err = small.head("mods/a.zip").await.unwrap_err().to_string();
    assert!(err.contains("max_file_size"), "{err}");
    // Unreachable: an error naming the URL, after bounded retries.
    cfg.retries = 1;
    cfg.base_url = Some("http://127.0.0.1:1/".into());
    let down = mirrorctl::engine::origin::HttpOrigin::new(&cfg).unwrap();
    let err = down.head("mods/a.zip").await.unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn demo_headless_commands() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("MIRRORCTL_DEMO_DIR", dir.path().to_str().unwrap())];
    let (code, out, err) = run(&["--demo", "--headless", "stats", "-o", "json"], &env);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stats JSON");
    for k in [
        "window",
        "requests",
        "hits",
        "misses",
        "hit_rate",
        "bytes_served",
        "bandwidth_saved_bytes",
        "storage_objects",
        "storage_bytes",
        "stale_files",
        "errors",
        "error_rate",
    ] {
        assert!(v.get(k).is_some(), "stats JSON lacks {k}: {out}");
    }
    assert!(v["requests"].as_i64().unwrap() > 100, "{out}");
    let rate = v["hit_rate"].as_f64().unwrap();
    assert!((0.5..1.0).contains(&rate), "{out}");
    assert!(v["stale_files"].as_i64().unwrap() >= 5);

    let (code, out, err) = run(
        &[
            "--demo",
            "--headless",
            "stats",
            "--window",
            "all",
            "-o",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(all["requests"].as_i64().unwrap() >= 200_000, "{out}");

    let (code, out, err) = run(
        &[
            "--demo",
            "--headless",
            "files",
            "--limit",
            "5",
            "-o",
            "json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let files: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(files.len(), 5);
    for k in [
        "id",
        "key",
        "size",
        "downloads",
        "bytes_served",
        "last_downloaded_at",
        "is_stale",
    ] {
        assert!(files[0].get(k).is_some(), "files JSON lacks {k}");
    }
    let d: Vec<i64> = files
        .iter()
        .map(|f| f["downloads"].as_i64().unwrap())
        .collect();
    assert!(
        d.windows(2).all(|w| w[0] >= w[1]),
        "not sorted by downloads: {d:?}"
    );

    let key = files[0]["key"].as_str().unwrap().to_string();
    let (code, out, err) = run(
        &["--demo", "--headless", "file", &key, "--live", "-o", "json"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let f: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "origin_file_id",
        "sha256",
        "etag",
        "mirrored_at",
        "last_validated_at",
        "stale_reason",
        "origin",
    ] {
        assert!(f.get(k).is_some(), "file JSON lacks {k}");
    }
    assert_eq!(f["mirror_object"]["exists"], true, "{out}");
    assert_eq!(f["origin"]["live"]["status"], "found", "{out}");

    let (code, _, err) = run(&["--demo", "--headless", "file", "no/such/key.zip"], &env);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no/such/key.zip"), "{err}");

    let (code, out, err) = run(&["--demo", "--headless", "stats", "-o", "prometheus"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mirrorctl_hit_rate{window=\"24h\"}"), "{out}");

    let (code, out, err) = run(
        &["--demo", "--headless", "presign", &key, "--expires", "10m"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("http://127.0.0.1:") && out.contains("X-Amz-Signature"),
        "{out}"
    );

    let (code, out, err) = run(&["--demo", "--headless", "history", "-o", "json"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        serde_json::from_str::<Vec<serde_json::Value>>(&out).is_ok(),
        "{out}"
    );
}

#[tokio::test]
async fn s3_origin_head_and_get() {
    for server in S3Server::all().await {
        let (cfg, b) = server.new_bucket("origin").await;
        b.put_bytes("mods/1/a.zip", Bytes::from_static(b"origin bytes"), None)
            .await
            .unwrap();
        let origin = mirrorctl::engine::origin::Origin::S3(
            mirrorctl::engine::s3::S3Bucket::connect(&cfg)
                .await
                .unwrap(),
        );
        let m = origin.head("mods/1/a.zip").await.unwrap().expect("found");
        assert_eq!(m.size, Some(12), "{}", server.name);
        let full = format!("s3://{}/mods/1/a.zip", cfg.bucket);
        let mut body = origin.get(&full).await.unwrap().expect("found").body;
        let mut s = String::new();
        body.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "origin bytes", "{}", server.name);
        assert!(
            origin.head("mods/1/none.zip").await.unwrap().is_none(),
            "{}",
            server.name
        );
    }
}

#[test]
fn an_empty_demo_dir_variable_is_unset_not_the_current_directory() {
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let (code, out, err) = run(
        &["demo", "env"],
        &[
            ("MIRRORCTL_DEMO_DIR", ""),
            ("HOME", home_str),
            ("XDG_DATA_HOME", ""),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("demo directory: "))
        .expect("demo directory line")
        .trim();
    assert!(
        dir.starts_with(home_str) && dir.ends_with("demo"),
        "the data dir's demo, not the current directory: {dir:?}"
    );
}
