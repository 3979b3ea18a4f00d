//! The cache lifecycle (validate, remirror, purge) against real servers over real sockets:
//! s3s-fs in-process and Garage out of process, SQLite and PostgreSQL, and a real HTTP origin
//! over a temporary directory. Faults a real server will not produce on demand (a body cut
//! short of its Content-Length) come from a small loopback server that misbehaves on purpose.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::proxy::FaultProxy;
use common::{S3Server, TestDb};
use mirrorctl::config::{BucketConfig, ByteSize, Config};
use mirrorctl::engine::error::Error;
use mirrorctl::engine::jobs::{Progress, Report};
use mirrorctl::engine::model::{NewDownloadEvent, NewMirroredFile, NewOriginFile};
use mirrorctl::engine::ops::purge::{self, PurgeParams, PurgeTarget};
use mirrorctl::engine::ops::remirror::{self, RemirrorParams, RemirrorStatus};
use mirrorctl::engine::ops::validate::{self, ValidateParams, ValidateStatus};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

/// Deterministic content of file `i` at `version`.
fn content(i: usize, version: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|n| {
            (n as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8)
                .wrapping_add(version)
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// A mirror in a known state: `n` files at a real HTTP origin, each uploaded to a fresh
/// bucket and recorded in the database. Even files were downloaded yesterday; odd ones never
/// (mirrored 10 days ago).
struct Mirror {
    origin_root: PathBuf,
    origin_url: String,
    bucket_cfg: BucketConfig,
    bucket: S3Bucket,
    db: TestDb,
    ids: Vec<i64>,
    keys: Vec<String>,
    _origin_dir: tempfile::TempDir,
    _origin_task: tokio::task::JoinHandle<()>,
}

impl Mirror {
    async fn new(
        server: &S3Server,
        db: TestDb,
        sizes: &[usize],
        bucket_cfg: impl Fn(&mut BucketConfig),
    ) -> Mirror {
        let dir = tempfile::tempdir().expect("temp dir");
        let origin_root = dir.path().join("origin");
        let (addr, task) = mirrorctl::demo::start_origin(&origin_root, 0)
            .await
            .expect("origin");
        let origin_url = format!("http://{addr}/");
        let (mut cfg, _) = server.new_bucket("lc").await;
        bucket_cfg(&mut cfg);
        let bucket = S3Bucket::connect(&cfg).await.expect("connect");
        let mut m = Mirror {
            origin_root,
            origin_url,
            bucket_cfg: cfg,
            bucket,
            db,
            ids: Vec::new(),
            keys: Vec::new(),
            _origin_dir: dir,
            _origin_task: task,
        };
        let ctx = m.ctx(false);
        let origin = ctx.origin().await.expect("origin client");
        let mut origin_rows = Vec::new();
        let mut bodies = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let key = format!("mods/{i}/file-{i}.bin");
            let data = content(i, 0, size);
            m.write_origin(&key, &data);
            let head = origin
                .head(&key)
                .await
                .expect("origin head")
                .expect("origin has the file");
            origin_rows.push(NewOriginFile {
                source: "http".into(),
                remote_id: format!("r{i}"),
                file_name: format!("file-{i}.bin"),
                url: key.clone(),
                size: Some(size as i64),
                etag: head.etag,
                updated_at: Utc::now() - TimeDelta::days(20),
            });
            m.keys.push(key);
            bodies.push(data);
        }
        let origin_ids =
            m.db.db
                .insert_origin_files(&origin_rows)
                .await
                .expect("origin rows");
        let mut rows = Vec::new();
        for (i, data) in bodies.into_iter().enumerate() {
            let put = m
                .bucket
                .put_stream(&m.keys[i], &data[..], Some("application/octet-stream"))
                .await
                .expect("upload");
            rows.push(NewMirroredFile {
                origin_file_id: origin_ids[i],
                bucket: m.bucket.name().to_string(),
                key: m.keys[i].clone(),
                size: data.len() as i64,
                sha256: Some(sha256(&data)),
                etag: put.etag,
                mirrored_at: Utc::now() - TimeDelta::days(10),
                is_stale: false,
                stale_reason: None,
            });
        }
        m.ids =
            m.db.db
                .insert_mirrored_files(&rows)
                .await
                .expect("mirrored rows");
        let yesterday = Utc::now() - TimeDelta::days(1);
        let events: Vec<NewDownloadEvent> = m
            .ids
            .iter()
            .step_by(2)
            .map(|&file_id| NewDownloadEvent {
                occurred_at: yesterday,
                file_id,
                cache_hit: true,
                bytes: 1,
                duration_ms: 1,
                status: 200,
            })
            .collect();
        m.db.db.record_downloads(&events).await.expect("downloads");
        m
    }

    fn config(&self) -> Config {
        let mut c = common::config(&self.db.url, self.bucket_cfg.clone());
        c.origin.base_url = Some(self.origin_url.clone());
        c.origin.retries = 0;
        c.origin.timeout = mirrorctl::config::HumanDuration(Duration::from_secs(5));
        c.origin.max_file_size = ByteSize(1 << 30);
        c
    }

    fn ctx(&self, read_only: bool) -> Ctx {
        Ctx::new(self.config(), self.db.db.clone(), read_only)
    }

    fn write_origin(&self, key: &str, data: &[u8]) {
        let p = self.origin_root.join(key);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write origin file");
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let mut o = self.bucket.get(key, None).await.expect("get")?;
        let mut v = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut o.body, &mut v)
            .await
            .expect("read body");
        Some(v)
    }

    async fn file(&self, i: usize) -> mirrorctl::engine::model::FileDetail {
        self.db
            .db
            .get_file(&self.ids[i].to_string())
            .await
            .expect("db")
            .expect("row")
    }
}

fn all() -> ValidateParams {
    ValidateParams {
        all: true,
        ..Default::default()
    }
}

fn purge_params(target: PurgeTarget) -> PurgeParams {
    PurgeParams {
        target,
        dry_run: false,
        max_delete: None,
        yes: true,
        prefix: None,
        pattern: None,
        impact_days: purge::DEFAULT_IMPACT_DAYS,
    }
}

/// `validate --all` reads the mirror side from the bucket's listing, merged with the rows in
/// byte order: objects without a row, interleaved anywhere in that order, are skipped, and a
/// row whose object is not listed is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_all_merges_the_listing_with_the_rows_in_byte_order() {
    let servers = S3Server::all().await;
    for server in &servers {
        for db in TestDb::all().await {
            let label = format!(
                "{} / {}",
                server.name,
                db.url.split(':').next().unwrap_or("")
            );
            let sizes: Vec<usize> = (0..12).map(|i| 500 + i * 11).collect();
            let m = Mirror::new(server, db, &sizes, |_| {}).await;
            // Keys a collation-ordered merge would get wrong ("mods/1/" sorts before
            // "mods/10/" in byte order only), upper case, non-ASCII, and prefixes of row keys.
            for orphan in [
                "A-first.bin",
                "Mods/1/file-1.bin",
                "mods/1/file-1.bi",
                "mods/1/file-1.bin.old",
                "mods/1-0.bin",
                "mods/é/file.bin",
                "zz-last.bin",
            ] {
                m.bucket
                    .put_bytes(orphan, bytes::Bytes::from_static(b"x"), None)
                    .await
                    .expect("orphan upload");
            }
            m.bucket
                .delete_batch(&[m.keys[1].clone(), m.keys[10].clone()])
                .await
                .expect("delete");
            let r = validate::run(&m.ctx(false), all(), &Progress::none())
                .await
                .expect("validate --all");
            assert_eq!(r.checked, 12, "{label}");
            assert_eq!(r.missing_in_mirror, 2, "{label}: {:?}", r.items);
            assert_eq!(r.fresh, 10, "{label}: {:?}", r.items);
            let missing: Vec<&str> = r.items.iter().map(|i| i.key.as_str()).collect();
            assert!(
                missing.contains(&m.keys[1].as_str()) && missing.contains(&m.keys[10].as_str()),
                "{label}: {missing:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_marks_stale_and_missing_and_remirror_restores_them() {
    let servers = S3Server::all().await;
    for server in &servers {
        for db in TestDb::all().await {
            let label = format!(
                "{} / {}",
                server.name,
                db.url.split(':').next().unwrap_or("")
            );
            let sizes: Vec<usize> = (0..20).map(|i| 1000 + i * 37).collect();
            let m = Mirror::new(server, db, &sizes, |_| {}).await;
            let ctx = m.ctx(false);

            // The origin moves on for 0..3 (new size) and 3 (same size, new content);
            // the mirror loses 4 and 5.
            let mut new_content = Vec::new();
            for (i, &size) in sizes.iter().enumerate().take(4) {
                let size = if i < 3 { size + 100 } else { size };
                let data = content(i, 1, size);
                m.write_origin(&m.keys[i], &data);
                new_content.push(data);
            }
            m.bucket.delete_batch(&m.keys[4..6]).await.expect("delete");

            // Default scope: only the files downloaded recently (the even ones).
            let r = validate::run(&ctx, ValidateParams::default(), &Progress::none())
                .await
                .expect("validate");
            assert_eq!(r.checked, 10, "{label}");

            let r = validate::run(&ctx, all(), &Progress::none())
                .await
                .expect("validate --all");
            assert_eq!(r.checked, 20, "{label}");
            assert_eq!(r.missing_in_mirror, 2, "{label}");
            assert_eq!(r.stale, 4, "{label}: {:?}", r.items);
            // 0, 2 and 4 were marked by the default-scope run already.
            assert_eq!(r.newly_stale, 3, "{label}");
            assert_eq!(r.fresh, 14, "{label}");
            assert!(r.found_problems(), "{label}");
            let f3 = m.file(3).await;
            assert!(
                f3.is_stale
                    && f3
                        .stale_reason
                        .as_deref()
                        .is_some_and(|s| s.contains("ETag")),
                "{label}: {f3:?}"
            );
            let f4 = m.file(4).await;
            assert_eq!(f4.stale_reason.as_deref(), Some("missing"), "{label}");
            assert!(m.file(10).await.last_validated_at.is_some(), "{label}");
            assert_eq!(
                m.db.db.storage_totals().await.expect("totals").stale,
                6,
                "{label}"
            );

            // A dry run plans without touching anything.
            let plan = remirror::run(
                &ctx,
                RemirrorParams {
                    all_stale: true,
                    dry_run: true,
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect("dry run");
            assert_eq!((plan.candidates, plan.remirrored), (6, 0), "{label}");
            assert!(m.object(&m.keys[4]).await.is_none(), "{label}");

            let r = remirror::run(
                &ctx,
                RemirrorParams {
                    all_stale: true,
                    yes: true,
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect("remirror");
            assert_eq!((r.remirrored, r.failed), (6, 0), "{label}: {:?}", r.items);
            for (i, data) in new_content.iter().enumerate() {
                assert_eq!(
                    m.object(&m.keys[i]).await.as_deref(),
                    Some(&data[..]),
                    "{label}: object {i}"
                );
                let f = m.file(i).await;
                assert_eq!(f.sha256.as_deref(), Some(sha256(data).as_str()), "{label}");
                assert_eq!(f.size, data.len() as i64, "{label}");
                assert!(!f.is_stale, "{label}");
            }
            assert_eq!(
                m.object(&m.keys[4]).await.as_deref(),
                Some(&content(4, 0, sizes[4])[..]),
                "{label}"
            );

            let r = validate::run(&ctx, all(), &Progress::none())
                .await
                .expect("validate again");
            assert_eq!(
                (r.fresh, r.stale, r.missing_in_mirror),
                (20, 0, 0),
                "{label}: {:?}",
                r.items
            );
            assert!(!r.found_problems(), "{label}");
            assert_eq!(
                m.db.db.storage_totals().await.expect("totals").stale,
                0,
                "{label}"
            );

            // Only the named files, fresh ones listed too; an unknown id is named.
            let r = validate::run(
                &ctx,
                ValidateParams {
                    ids: vec![m.ids[1], m.ids[2]],
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect("validate --ids");
            assert_eq!(r.items.len(), 2, "{label}");
            let err = validate::run(
                &ctx,
                ValidateParams {
                    ids: vec![987_654],
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect_err("unknown id");
            assert_eq!(err.exit_code(), 2, "{label}");
            assert!(err.to_string().contains("987654"), "{label}: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_down_is_a_per_file_error_and_the_run_completes() {
    let server = S3Server::s3s().await;
    let m = Mirror::new(&server, TestDb::sqlite().await, &[100, 200, 300], |_| {}).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut config = m.config();
    config.origin.base_url = Some(format!("http://{closed}/"));
    let ctx = Ctx::new(config, m.db.db.clone(), false);
    let r = validate::run(&ctx, all(), &Progress::none())
        .await
        .expect("validate completes");
    assert_eq!((r.checked, r.origin_errors, r.fresh), (3, 3, 0));
    assert!(r
        .items
        .iter()
        .all(|i| i.status == ValidateStatus::OriginError));
    assert!(r.found_problems());
    // Nothing is marked when the origin could not vouch either way.
    let f = m.file(0).await;
    assert!(!f.is_stale);

    // A file gone at the origin is an origin error too, not a false "fresh".
    std::fs::remove_file(m.origin_root.join(&m.keys[1])).expect("rm");
    let r = validate::run(&m.ctx(false), all(), &Progress::none())
        .await
        .expect("validate");
    assert_eq!((r.fresh, r.origin_errors), (2, 1));

    // Remirror from a dead origin fails per file, exit 1, rows untouched.
    let r = remirror::run(
        &ctx,
        RemirrorParams {
            targets: vec![m.keys[0].clone()],
            yes: true,
            ..Default::default()
        },
        &Progress::none(),
    )
    .await
    .expect("remirror completes");
    assert_eq!((r.remirrored, r.failed), (0, 1));
    assert_eq!(r.failures(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remirror_streams_a_large_file_as_multipart() {
    for server in S3Server::all().await {
        let small_parts = |c: &mut BucketConfig| {
            c.multipart_threshold = ByteSize(5 * 1024 * 1024);
            c.part_size = ByteSize(5 * 1024 * 1024);
        };
        let m = Mirror::new(&server, TestDb::sqlite().await, &[1024], small_parts).await;
        let big = content(0, 7, 17 * 1024 * 1024 + 123);
        m.write_origin(&m.keys[0], &big);
        let r = remirror::run(
            &m.ctx(false),
            RemirrorParams {
                targets: vec![m.ids[0].to_string()],
                yes: true,
                ..Default::default()
            },
            &Progress::none(),
        )
        .await
        .expect("remirror");
        assert_eq!(
            (r.remirrored, r.bytes),
            (1, big.len() as u64),
            "{}: {:?}",
            server.name,
            r.items
        );
        let head = m
            .bucket
            .head(&m.keys[0])
            .await
            .expect("head")
            .expect("object");
        assert_eq!(head.size, big.len() as u64, "{}", server.name);
        assert!(
            head.etag.as_deref().is_some_and(|e| e.ends_with("-4")),
            "{}: {:?}",
            server.name,
            head.etag
        );
        let f = m.file(0).await;
        assert_eq!(
            f.sha256.as_deref(),
            Some(sha256(&big).as_str()),
            "{}",
            server.name
        );
        if server.name == "garage" {
            assert!(m
                .bucket
                .pending_uploads()
                .await
                .expect("list uploads")
                .is_empty());
        }
    }
}

/// An origin that promises `promised` bytes and sends `sent` before closing the connection.
async fn short_origin(promised: usize, sent: usize) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut req).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {promised}\r\nETag: \"cut\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = sent;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if sock.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_leaves_the_old_object_and_no_partial_upload() {
    for server in S3Server::all().await {
        let small_parts = |c: &mut BucketConfig| {
            c.multipart_threshold = ByteSize(5 * 1024 * 1024);
            c.part_size = ByteSize(5 * 1024 * 1024);
        };
        let m = Mirror::new(&server, TestDb::sqlite().await, &[2048, 4096], small_parts).await;
        let before = m
            .bucket
            .head(&m.keys[0])
            .await
            .expect("head")
            .expect("object");
        let f_before = m.file(0).await;
        for (promised, sent) in [
            (16 * 1024 * 1024, 12 * 1024 * 1024),
            (3 * 1024 * 1024, 1024 * 1024),
        ] {
            let (url, task) = short_origin(promised, sent).await;
            let mut config = m.config();
            config.origin.base_url = Some(url);
            let ctx = Ctx::new(config, m.db.db.clone(), false);
            let r = remirror::run(
                &ctx,
                RemirrorParams {
                    targets: vec![m.keys[0].clone()],
                    yes: true,
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect("remirror completes");
            task.abort();
            assert_eq!((r.remirrored, r.failed), (0, 1), "{}", server.name);
            assert_eq!(r.items[0].status, RemirrorStatus::Failed);
            // The old object is still there, whole; the row still describes it.
            let after = m
                .bucket
                .head(&m.keys[0])
                .await
                .expect("head")
                .expect("old object kept");
            assert_eq!(
                (after.size, &after.etag),
                (before.size, &before.etag),
                "{}",
                server.name
            );
            assert_eq!(
                m.object(&m.keys[0]).await.as_deref(),
                Some(&content(0, 0, 2048)[..]),
                "{}",
                server.name
            );
            let f = m.file(0).await;
            assert_eq!(
                (f.sha256, f.size),
                (f_before.sha256.clone(), f_before.size),
                "{}",
                server.name
            );
            if server.name == "garage" {
                assert!(
                    m.bucket
                        .pending_uploads()
                        .await
                        .expect("list uploads")
                        .is_empty(),
                    "a multipart upload was left behind"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_selects_stale_unused_and_lru_and_deletes_objects_then_rows() {
    for server in S3Server::all().await {
        for db in TestDb::all().await {
            let label = format!(
                "{} / {}",
                server.name,
                db.url.split(':').next().unwrap_or("")
            );
            let sizes = vec![1000; 12];
            let m = Mirror::new(&server, db, &sizes, |_| {}).await;
            let ctx = m.ctx(false);
            // 0 and 1 go missing from the origin's point of view: mark them stale via validate.
            for i in 0..2 {
                m.write_origin(&m.keys[i], &content(i, 1, 1500));
            }
            validate::run(&ctx, all(), &Progress::none())
                .await
                .expect("validate");

            let dry = purge::run(
                &ctx,
                PurgeParams {
                    dry_run: true,
                    yes: false,
                    ..purge_params(PurgeTarget::Stale)
                },
                &Progress::none(),
            )
            .await
            .expect("dry run");
            assert_eq!(
                (dry.candidates, dry.bytes, dry.deleted),
                (2, 2000, 0),
                "{label}"
            );
            assert_eq!(dry.first_keys.len(), 2, "{label}");
            assert!(
                m.object(&m.keys[0]).await.is_some(),
                "{label}: dry run deleted"
            );

            let r = purge::run(&ctx, purge_params(PurgeTarget::Stale), &Progress::none())
                .await
                .expect("purge stale");
            assert_eq!(
                (r.candidates, r.deleted, r.bytes_freed, r.failed),
                (2, 2, 2000, 0),
                "{label}"
            );
            assert!(m.object(&m.keys[0]).await.is_none(), "{label}");
            assert!(m.file(0).await.deleted_at.is_some(), "{label}");
            let totals = m.db.db.storage_totals().await.expect("totals");
            assert_eq!((totals.objects, totals.stale), (10, 0), "{label}");

            // Unused for 5 days: the odd files were never downloaded (mirrored 10 days ago).
            let r = purge::run(
                &ctx,
                purge_params(PurgeTarget::UnusedDays(5)),
                &Progress::none(),
            )
            .await
            .expect("purge unused");
            assert_eq!(r.deleted, 5, "{label}"); // 3, 5, 7, 9, 11 (1 is gone already)
            assert!(m.object(&m.keys[3]).await.is_none(), "{label}");
            assert!(m.object(&m.keys[2]).await.is_some(), "{label}");

            // 5 files of 1000 bytes are left; fit them in 2500 bytes: the 3 least recently used go.
            let r = purge::run(
                &ctx,
                purge_params(PurgeTarget::MaxBytes(2500)),
                &Progress::none(),
            )
            .await
            .expect("purge max bytes");
            assert_eq!((r.candidates, r.deleted), (3, 3), "{label}");
            assert_eq!(
                m.db.db.storage_totals().await.expect("totals").bytes,
                2000,
                "{label}"
            );
            let r = purge::run(
                &ctx,
                purge_params(PurgeTarget::MaxBytes(2500)),
                &Progress::none(),
            )
            .await
            .expect("nothing left to purge");
            assert_eq!(r.candidates, 0, "{label}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_refuses_without_yes_over_max_delete_and_read_only() {
    let server = S3Server::s3s().await;
    let m = Mirror::new(&server, TestDb::sqlite().await, &[10; 5], |_| {}).await;
    let ctx = m.ctx(false);
    let refused = |r: Result<purge::PurgeReport, Error>| {
        let e = r.expect_err("refused");
        assert!(matches!(e, Error::Refused(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
        e.to_string()
    };
    let e = refused(
        purge::run(
            &ctx,
            PurgeParams {
                yes: false,
                ..purge_params(PurgeTarget::UnusedDays(5))
            },
            &Progress::none(),
        )
        .await,
    );
    assert!(e.contains("--yes"), "{e}");

    let mut config = m.config();
    config.policy.max_delete = 1;
    let limited = Ctx::new(config, m.db.db.clone(), false);
    let e = refused(
        purge::run(
            &limited,
            purge_params(PurgeTarget::UnusedDays(5)),
            &Progress::none(),
        )
        .await,
    );
    assert!(
        e.contains("--max-delete 2") || e.contains("max_delete"),
        "{e}"
    );
    assert_eq!(m.db.db.storage_totals().await.expect("totals").objects, 5);

    let e = refused(
        purge::run(
            &m.ctx(true),
            purge_params(PurgeTarget::UnusedDays(5)),
            &Progress::none(),
        )
        .await,
    );
    assert!(e.contains("read-only"), "{e}");
    // The preview is allowed in read-only mode: it touches nothing.
    let dry = purge::run(
        &m.ctx(true),
        PurgeParams {
            dry_run: true,
            ..purge_params(PurgeTarget::UnusedDays(5))
        },
        &Progress::none(),
    )
    .await
    .expect("read-only dry run");
    assert_eq!(dry.candidates, 2);

    // --max-delete raises the limit for one run.
    let r = purge::run(
        &limited,
        PurgeParams {
            max_delete: Some(3),
            ..purge_params(PurgeTarget::UnusedDays(5))
        },
        &Progress::none(),
    )
    .await
    .expect("raised limit");
    assert_eq!(r.deleted, 2);

    // Read-only remirror is refused too; validate reports without writing.
    let e = remirror::run(
        &m.ctx(true),
        RemirrorParams {
            targets: vec![m.keys[0].clone()],
            yes: true,
            ..Default::default()
        },
        &Progress::none(),
    )
    .await
    .expect_err("read-only remirror");
    assert_eq!(e.exit_code(), 2);
    let r = validate::run(&m.ctx(true), all(), &Progress::none())
        .await
        .expect("read-only validate");
    assert!(!r.recorded);
    assert!(m.file(0).await.last_validated_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_completes_after_a_crash_between_objects_and_rows() {
    for server in S3Server::all().await {
        for db in TestDb::all().await {
            let m = Mirror::new(&server, db, &[100; 6], |_| {}).await;
            let ctx = m.ctx(false);
            // The state a kill -9 leaves between the batch delete and the row update:
            // some objects gone, every row still live.
            m.bucket
                .delete_batch(&[m.keys[1].clone(), m.keys[3].clone()])
                .await
                .expect("delete");
            let r = purge::run(
                &ctx,
                purge_params(PurgeTarget::UnusedDays(5)),
                &Progress::none(),
            )
            .await
            .expect("rerun");
            assert_eq!((r.deleted, r.failed), (3, 0), "{}", server.name);
            for i in [1, 3, 5] {
                assert!(m.file(i).await.deleted_at.is_some());
                assert!(m.object(&m.keys[i]).await.is_none());
            }

            // Remirror killed after the upload, before the row update: the row is still stale,
            // the object already new. The rerun uploads again and records it.
            m.write_origin(&m.keys[0], &content(0, 2, 300));
            validate::run(&ctx, all(), &Progress::none())
                .await
                .expect("validate");
            m.bucket
                .put_stream(&m.keys[0], &content(0, 2, 300)[..], None)
                .await
                .expect("upload as the killed run did");
            let r = remirror::run(
                &ctx,
                RemirrorParams {
                    all_stale: true,
                    yes: true,
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await
            .expect("rerun remirror");
            assert_eq!(r.remirrored, 1);
            let f = m.file(0).await;
            assert!(!f.is_stale);
            assert_eq!(
                f.sha256.as_deref(),
                Some(sha256(&content(0, 2, 300)).as_str())
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_purge_is_busy() {
    for db in TestDb::all().await {
        let server = S3Server::s3s().await;
        let m = Mirror::new(&server, db, &[10; 3], |_| {}).await;
        let lock =
            m.db.db
                .acquire_lock("purge", "alice@ops1")
                .await
                .expect("first purge holds the lock");
        let e = purge::run(
            &m.ctx(false),
            purge_params(PurgeTarget::UnusedDays(5)),
            &Progress::none(),
        )
        .await
        .expect_err("busy");
        assert_eq!(e.exit_code(), 1);
        let msg = e.to_string();
        assert!(
            msg.starts_with("busy: purge started by alice@ops1 at "),
            "{msg}"
        );
        lock.release().await.expect("release");
        purge::run(
            &m.ctx(false),
            purge_params(PurgeTarget::UnusedDays(5)),
            &Progress::none(),
        )
        .await
        .expect("runs once the lock is free");
    }
}

/// Writes a config file for the binary pointing at this mirror.
fn config_file(m: &Mirror, dir: &Path) -> PathBuf {
    let b = &m.bucket_cfg;
    let text = format!(
        "[database]\nurl = {db:?}\n\n[buckets.mirror]\nbucket = {bucket:?}\nendpoint = {ep:?}\npath_style = true\n\
         access_key_id = {key:?}\nsecret_access_key = {secret:?}\nmultipart_threshold = {threshold}\npart_size = {part}\n\n\
         [origin]\nbase_url = {origin:?}\nretries = 0\n",
        db = m.db.url,
        bucket = b.bucket,
        ep = b.endpoint.clone().unwrap_or_default(),
        key = b.access_key_id.as_ref().map(|k| k.expose()).unwrap_or_default(),
        secret = b.secret_access_key.as_ref().map(|k| k.expose()).unwrap_or_default(),
        threshold = b.multipart_threshold.0,
        part = b.part_size.0,
        origin = m.origin_url,
    );
    common::write_config_file(dir, &text)
}

/// Runs the binary off the runtime (the servers it talks to live in this process).
async fn mirrorctl(config: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = common::command(config);
    cmd.arg("--headless").args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_with_the_documented_codes() {
    let server = S3Server::s3s().await;
    let m = Mirror::new(&server, TestDb::sqlite().await, &[50, 60, 70, 80], |_| {}).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_file(&m, dir.path());

    let (code, out, err) = mirrorctl(&cfg, &["validate", "--all", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    for k in [
        "checked",
        "fresh",
        "stale",
        "newly_stale",
        "missing_in_mirror",
        "origin_errors",
        "items",
    ] {
        assert!(v.get(k).is_some(), "validate JSON lacks {k}: {out}");
    }

    m.bucket.delete(&m.keys[1]).await.expect("delete");
    let (code, out, err) = mirrorctl(&cfg, &["validate", "--all"]).await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("missing"), "{out}");

    let (code, _, err) = mirrorctl(&cfg, &["remirror", "999999", "--yes"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("999999"), "{err}");

    let (code, _, err) = mirrorctl(&cfg, &["remirror", "--all-stale"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, out, err) =
        mirrorctl(&cfg, &["remirror", "--all-stale", "--yes", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["remirrored"], 1, "{out}");
    for k in ["remirrored", "bytes", "failed", "items"] {
        assert!(v.get(k).is_some(), "remirror JSON lacks {k}: {out}");
    }

    let (code, _, err) = mirrorctl(&cfg, &["purge", "--unused-days", "5"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    let (code, _, err) = mirrorctl(
        &cfg,
        &["purge", "--unused-days", "5", "--yes", "--max-delete", "0"],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = mirrorctl(
        &cfg,
        &["--read-only", "purge", "--unused-days", "5", "--yes"],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("read-only"), "{err}");
    let (code, _, err) = mirrorctl(&cfg, &["purge", "--max-bytes", "lots", "--yes"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = mirrorctl(
        &cfg,
        &["purge", "--unused-days", "5", "--dry-run", "-o", "json"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    for k in ["candidates", "deleted", "bytes_freed", "failed", "dry_run"] {
        assert!(v.get(k).is_some(), "purge JSON lacks {k}: {out}");
    }
    assert_eq!(v["candidates"], 1, "{out}");
    let (code, out, err) = mirrorctl(&cfg, &["purge", "--unused-days", "5", "--yes"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 of 1"), "{out}");
    let (code, out, _) = mirrorctl(&cfg, &["history", "-o", "json"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("\"purge\"") && out.contains("\"remirror\"") && out.contains("\"validate\""),
        "{out}"
    );
}

/// The TUI runs operations on spawned tasks: their futures must be `Send + 'static`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_run_on_spawned_tasks() {
    let server = S3Server::s3s().await;
    let m = Mirror::new(&server, TestDb::sqlite().await, &[10, 20], |_| {}).await;
    let ctx = std::sync::Arc::new(m.ctx(false));
    let c = ctx.clone();
    let v = tokio::spawn(async move { validate::run(&c, all(), &Progress::none()).await });
    assert_eq!(v.await.expect("join").expect("validate").fresh, 2);
    let c = ctx.clone();
    let key = m.keys[0].clone();
    let r = tokio::spawn(async move {
        let p = RemirrorParams {
            targets: vec![key],
            yes: true,
            ..Default::default()
        };
        remirror::run(&c, p, &Progress::none()).await
    });
    assert_eq!(r.await.expect("join").expect("remirror").remirrored, 1);
    let c = ctx.clone();
    let p = tokio::spawn(async move {
        purge::run(
            &c,
            purge_params(PurgeTarget::UnusedDays(5)),
            &Progress::none(),
        )
        .await
    });
    assert_eq!(p.await.expect("join").expect("purge").deleted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_and_dropped_connections_are_retried() {
    for server in S3Server::all().await {
        let proxy = FaultProxy::start(&server.endpoint).await;
        let endpoint = proxy.endpoint.clone();
        let m = Mirror::new(&server, TestDb::sqlite().await, &[700; 6], |c| {
            c.endpoint = Some(endpoint.clone())
        })
        .await;
        let ctx = m.ctx(false);
        let f = &proxy.faults;

        // validate: HEADs throttled twice.
        m.write_origin(&m.keys[0], &content(0, 3, 900));
        f.throttle_next.store(2, Ordering::SeqCst);
        let r = validate::run(&ctx, all(), &Progress::none())
            .await
            .expect("validate despite 503 SlowDown");
        assert_eq!((r.checked, r.newly_stale), (6, 1), "{}", server.name);
        assert_eq!(f.injected.load(Ordering::SeqCst), 2);

        // remirror: the upload throttled, then its response cut off.
        f.throttle_next.store(1, Ordering::SeqCst);
        f.reset_next.store(1, Ordering::SeqCst);
        let r = remirror::run(
            &ctx,
            RemirrorParams {
                all_stale: true,
                yes: true,
                ..Default::default()
            },
            &Progress::none(),
        )
        .await
        .expect("remirror");
        assert_eq!(
            (r.remirrored, r.failed),
            (1, 0),
            "{}: {:?}",
            server.name,
            r.items
        );
        assert_eq!(f.injected.load(Ordering::SeqCst), 4);
        assert_eq!(m.object(&m.keys[0]).await, Some(content(0, 3, 900)));

        // purge: the batch delete throttled, then its response cut off, then throttled again.
        f.throttle_next.store(1, Ordering::SeqCst);
        f.reset_next.store(1, Ordering::SeqCst);
        let r = purge::run(
            &ctx,
            purge_params(PurgeTarget::UnusedDays(5)),
            &Progress::none(),
        )
        .await
        .expect("purge");
        assert_eq!(
            (r.deleted, r.failed),
            (3, 0),
            "{}: {:?}",
            server.name,
            r.errors
        );
        assert_eq!(f.injected.load(Ordering::SeqCst), 6);
        for i in [1, 3, 5] {
            assert!(m.object(&m.keys[i]).await.is_none());
            assert!(m.file(i).await.deleted_at.is_some());
        }
        for i in [0, 2, 4] {
            assert!(m.object(&m.keys[i]).await.is_some());
            assert!(m.file(i).await.deleted_at.is_none());
        }
    }
}

/// Runs the binary with `args` while every write through `proxy` is answered 1.5 s after the
/// server processed it, and kills it (SIGKILL) `after_ms` after the first write was processed:
/// the bucket has changed, the binary has not yet heard so.
async fn kill_after_first_write(config: &Path, args: &[&str], proxy: &FaultProxy, after_ms: u64) {
    let f = &proxy.faults;
    f.write_delay_ms.store(1500, Ordering::SeqCst);
    let writes_before = f.writes.load(Ordering::SeqCst);
    let mut child = common::command(config)
        .arg("--headless")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn mirrorctl");
    for _ in 0..300 {
        if f.writes.load(Ordering::SeqCst) > writes_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        f.writes.load(Ordering::SeqCst) > writes_before,
        "{args:?}: no write reached the server"
    );
    tokio::time::sleep(Duration::from_millis(after_ms)).await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    f.write_delay_ms.store(0, Ordering::SeqCst);
}

/// Every live row's object exists; returns how many live rows there are.
async fn live_rows_have_objects(m: &Mirror) -> usize {
    let mut live = 0;
    for i in 0..m.ids.len() {
        if m.file(i).await.deleted_at.is_none() {
            live += 1;
            assert!(
                m.bucket.head(&m.keys[i]).await.expect("head").is_some(),
                "live row {} points at a missing object",
                m.ids[i]
            );
        }
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_purge_and_remirror_then_a_rerun_completes() {
    let server = S3Server::s3s().await;
    let proxy = FaultProxy::start(&server.endpoint).await;
    let endpoint = proxy.endpoint.clone();
    let n = 2_400; // the odd half (1,200) is unused: two batch deletes of 1,000 and 200
    let m = Mirror::new(&server, TestDb::sqlite().await, &vec![64; n], |c| {
        c.endpoint = Some(endpoint.clone());
        c.multipart_threshold = ByteSize(5 * 1024 * 1024);
        c.part_size = ByteSize(5 * 1024 * 1024);
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(&m, dir.path());

    // purge: killed after the server deleted objects, before the answers came back: objects
    // gone, their rows still live.
    let purge = [
        "purge",
        "--unused-days",
        "5",
        "--yes",
        "--max-delete",
        "5000",
    ];
    kill_after_first_write(&config, &purge, &proxy, 200).await;
    let (code, out, err) = mirrorctl(
        &config,
        &[
            "purge",
            "--unused-days",
            "5",
            "--yes",
            "--max-delete",
            "5000",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        v["candidates"].as_u64().is_some_and(|c| c > 0),
        "the kill interrupted the purge, so the rerun had rows left: {v}"
    );
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(
        live_rows_have_objects(&m).await,
        n / 2,
        "the used half stays"
    );
    for i in (1..n).step_by(2) {
        assert!(m.file(i).await.deleted_at.is_some(), "file {i} purged");
    }

    // remirror of a multipart body: killed mid-upload. The old object stays readable and the
    // row unchanged; the rerun completes.
    let old = m.object(&m.keys[0]).await.expect("old object");
    let big = content(0, 9, 12 * 1024 * 1024 + 1);
    m.write_origin(&m.keys[0], &big);
    let id = m.ids[0].to_string();
    kill_after_first_write(&config, &["remirror", &id, "--yes"], &proxy, 0).await;
    assert_eq!(m.object(&m.keys[0]).await, Some(old), "old object intact");
    let row = m.file(0).await;
    assert_eq!(row.size, 64, "row unchanged");
    let (code, _, err) = mirrorctl(&config, &["remirror", &id, "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(m.object(&m.keys[0]).await.expect("new object") == big);
    assert_eq!(
        m.file(0).await.sha256.as_deref(),
        Some(sha256(&big).as_str())
    );
    assert_eq!(live_rows_have_objects(&m).await, n / 2);
}

/// Builds the dataset of `scripts/bench-lifecycle.sh` and `scripts/bench-serve.sh` (run only from
/// there): `MIRRORCTL_BENCH_FILES` small files (`MIRRORCTL_BENCH_FILE_SIZE` bytes each if set) in `MIRRORCTL_BENCH_ORIGIN_DIR` (served by the demo origin), each uploaded to the
/// bucket `MIRRORCTL_BENCH_BUCKET` on `MIRRORCTL_BENCH_ENDPOINT` and recorded in the database at
/// `MIRRORCTL_BENCH_DATABASE_URL`, mirrored 10 days ago and never downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark fixture, run by scripts/bench-lifecycle.sh and scripts/bench-serve.sh"]
async fn bench_fixture() {
    use futures::StreamExt;
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let n: usize = env("MIRRORCTL_BENCH_FILES")
        .parse()
        .expect("MIRRORCTL_BENCH_FILES");
    let root = PathBuf::from(env("MIRRORCTL_BENCH_ORIGIN_DIR"));
    let cfg = BucketConfig::with_static_keys(
        &env("MIRRORCTL_BENCH_BUCKET"),
        &env("MIRRORCTL_BENCH_ENDPOINT"),
        &env("MIRRORCTL_BENCH_KEY"),
        &env("MIRRORCTL_BENCH_SECRET"),
    );
    let bucket = S3Bucket::connect(&cfg).await.expect("connect");
    bucket.ensure_bucket().await.expect("bucket");
    let db = mirrorctl::engine::db::Db::connect(
        &env("MIRRORCTL_BENCH_DATABASE_URL"),
        4,
        Duration::from_secs(10),
    )
    .await
    .expect("db");
    db.migrate().await.expect("migrate");
    // Every file this size when set (else 256..768 bytes).
    let size: Option<usize> = std::env::var("MIRRORCTL_BENCH_FILE_SIZE")
        .ok()
        .map(|s| s.parse().expect("MIRRORCTL_BENCH_FILE_SIZE"));
    // Presigned GET URLs of every object, one per line, when set (for direct-GET baselines).
    let mut presigned = std::env::var("MIRRORCTL_BENCH_PRESIGN_OUT")
        .ok()
        .map(|p| std::fs::File::create(p).expect("presign output"));
    for start in (0..n).step_by(5000) {
        let end = (start + 5000).min(n);
        let mut origin_rows = Vec::new();
        let mut files = Vec::new();
        for i in start..end {
            let key = format!("bench/{:03}/{i}.bin", i % 1000);
            let data = content(i, 0, size.unwrap_or(256 + i % 512));
            let p = root.join(&key);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, &data).expect("write");
            let meta = std::fs::metadata(&p).expect("stat");
            // The demo origin's ETag: "<mtime ns>-<size>" in hex.
            let ns = meta
                .modified()
                .expect("mtime")
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after epoch")
                .as_nanos();
            origin_rows.push(NewOriginFile {
                source: "bench".into(),
                remote_id: i.to_string(),
                file_name: format!("{i}.bin"),
                url: key.clone(),
                size: Some(data.len() as i64),
                etag: Some(format!("{ns:x}-{:x}", data.len())),
                updated_at: Utc::now() - TimeDelta::days(20),
            });
            files.push((key, data));
        }
        let ids = db
            .insert_origin_files(&origin_rows)
            .await
            .expect("origin rows");
        let puts = futures::stream::iter(files.iter().map(|(key, data)| {
            let bucket = bucket.clone();
            let body = bytes::Bytes::from(data.clone());
            let key = key.clone();
            async move { bucket.put_bytes(&key, body, None).await }
        }))
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
        let rows: Vec<NewMirroredFile> = files
            .iter()
            .zip(puts)
            .zip(ids)
            .map(|(((key, data), put), origin_file_id)| NewMirroredFile {
                origin_file_id,
                bucket: cfg.bucket.clone(),
                key: key.clone(),
                size: data.len() as i64,
                sha256: Some(sha256(data)),
                etag: put.expect("upload").etag,
                mirrored_at: Utc::now() - TimeDelta::days(10),
                is_stale: false,
                stale_reason: None,
            })
            .collect();
        db.insert_mirrored_files(&rows).await.expect("rows");
        if let Some(out) = presigned.as_mut() {
            use std::io::Write;
            for (key, _) in &files {
                let url = bucket
                    .presign_get(key, Duration::from_secs(6 * 3600))
                    .await
                    .expect("presign");
                writeln!(out, "{url}").expect("write presigned URL");
            }
        }
        eprintln!("bench fixture: {end}/{n}");
    }
    // A large origin file with a stale row (no object yet), for the remirror benchmark.
    if let Ok(key) = std::env::var("MIRRORCTL_BENCH_BIG_KEY") {
        let ids = db
            .insert_origin_files(&[NewOriginFile {
                source: "bench".into(),
                remote_id: "big".into(),
                file_name: key.clone(),
                url: key.clone(),
                size: None,
                etag: None,
                updated_at: Utc::now(),
            }])
            .await
            .expect("origin row");
        db.insert_mirrored_files(&[NewMirroredFile {
            origin_file_id: ids[0],
            bucket: cfg.bucket.clone(),
            key,
            size: 0,
            sha256: None,
            etag: None,
            mirrored_at: Utc::now(),
            is_stale: true,
            stale_reason: Some("missing".into()),
        }])
        .await
        .expect("big row");
    }
}
