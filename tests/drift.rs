//! `drift` against real servers: s3s-fs in process and Garage out of process, with the
//! inventory on SQLite and PostgreSQL. Seeds drift of every kind with awkward keys, checks the
//! counts and the `--combined` marks, repairs, and checks again; runs the binary for the
//! config and bucket errors; and, when rclone is installed, diffs against `rclone check`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use common::proxy::FaultProxy;
use common::{S3Server, TestDb};
use mirrorctl::config::{BucketConfig, ByteSize};
use mirrorctl::engine::jobs::{Progress, Report};
use mirrorctl::engine::model::InventoryRow;
use mirrorctl::engine::ops::drift::{self, DriftParams, DriftReport, InventoryStatus, PairStatus};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;

/// 1,024 bytes, in path segments short enough for a server that stores keys as file names.
fn long_key() -> String {
    let mut k = String::from("long/");
    while k.len() < 1020 {
        k.push_str(&"s".repeat(199));
        k.push('/');
    }
    k.truncate(1020);
    k.push_str(".bin");
    assert_eq!(k.len(), 1024);
    k
}

/// Keys that are the same on both sides: spaces, unicode, `../`, a 1,024-byte key, and keys
/// whose byte order differs from a locale's (`B` < `a`, `a-b` < `ab`, `f` < `é`, `Z` < `_`).
/// s3s-fs stores keys as file paths: it fails (500) on a 1,024-byte key and stores
/// `dots/../up.txt` as `up.txt`, so only the other server gets those two.
fn same_keys(server: &str) -> Vec<String> {
    let mut keys: Vec<String> = [
        "plain/a.txt",
        "space key/file name.txt",
        "unicode/é-ü-日本語.txt",
        "unicode/emoji-🦀.txt",
        "sort/B",
        "sort/a",
        "sort/a-b",
        "sort/ab",
        "sort/f",
        "sort/é",
        "sort/Z",
        "sort/_",
        "sort/~tilde",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if server != "s3s-fs" {
        keys.push(long_key());
        keys.push("dots/../up.txt".into());
    }
    keys
}

fn body(key: &str, salt: &str) -> Bytes {
    Bytes::from(format!("{salt}:{key}:").repeat(7))
}

/// What the seeded buckets and inventory should produce.
struct Seeded {
    main: S3Bucket,
    backup: S3Bucket,
    main_cfg: BucketConfig,
    backup_cfg: BucketConfig,
    /// Expected main-vs-backup status per key.
    pairs: BTreeMap<String, PairStatus>,
    /// Expected inventory status per key.
    inventory: BTreeMap<String, InventoryStatus>,
}

/// Seeds drift of every kind between two new buckets and the inventory.
async fn seed(s3: &S3Server, db: &TestDb, multipart: bool) -> Seeded {
    let (mut main_cfg, _) = s3.new_bucket("drift-main").await;
    // A small threshold so that a 6 MiB object goes up in two parts on main.
    main_cfg.multipart_threshold = ByteSize(5 * 1024 * 1024);
    main_cfg.part_size = ByteSize(5 * 1024 * 1024);
    let main = S3Bucket::connect(&main_cfg).await.expect("connect main");
    let (backup_cfg, backup) = s3.new_bucket("drift-backup").await;
    let mut pairs = BTreeMap::new();
    let mut inventory = BTreeMap::new();
    let mut rows = Vec::new();
    let row = |key: &str, size: usize, etag: Option<String>, backed_up: bool| InventoryRow {
        path: key.to_string(),
        size: size as i64,
        etag,
        content_type: Some("application/octet-stream".into()),
        is_backed_up: backed_up,
        last_modified: Some(Utc::now()),
        deleted: false,
        updated_at: Utc::now(),
    };

    for key in same_keys(s3.name) {
        let b = body(&key, "v1");
        let put = main
            .put_bytes(&key, b.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("{}: put {key:?}: {e}", s3.name));
        backup
            .put_bytes(&key, b.clone(), None)
            .await
            .expect("put backup");
        pairs.insert(key.clone(), PairStatus::Same);
        rows.push(row(&key, b.len(), put.etag, true));
    }
    // Only in main.
    let key = "drift/missing in backup.txt";
    let b = body(key, "v1");
    let put = main.put_bytes(key, b.clone(), None).await.expect("put");
    pairs.insert(key.into(), PairStatus::MissingInBackup);
    rows.push(row(key, b.len(), put.etag, false));
    // Only in backup, and no inventory row.
    let key = "drift/extra-in-backup.txt";
    backup
        .put_bytes(key, body(key, "old"), None)
        .await
        .expect("put");
    pairs.insert(key.into(), PairStatus::ExtraInBackup);
    inventory.insert(key.into(), InventoryStatus::InventoryMissing);
    // Different size.
    let key = "drift/size.txt";
    let b = body(key, "v1");
    let put = main.put_bytes(key, b.clone(), None).await.expect("put");
    backup
        .put_bytes(key, body(key, "v1-longer"), None)
        .await
        .expect("put");
    pairs.insert(key.into(), PairStatus::Differ);
    rows.push(row(key, b.len(), put.etag, true));
    // Same size, different bytes.
    let key = "drift/content.txt";
    let b = body(key, "v1");
    let put = main.put_bytes(key, b.clone(), None).await.expect("put");
    backup
        .put_bytes(key, body(key, "v2"), None)
        .await
        .expect("put");
    pairs.insert(key.into(), PairStatus::Differ);
    rows.push(row(key, b.len(), put.etag, true));
    // Same everywhere but no inventory row.
    let key = "drift/no-row.txt";
    let b = body(key, "v1");
    main.put_bytes(key, b.clone(), None).await.expect("put");
    backup.put_bytes(key, b, None).await.expect("put");
    pairs.insert(key.into(), PairStatus::Same);
    inventory.insert(key.into(), InventoryStatus::InventoryMissing);
    // Same in both buckets, the row has the wrong size.
    let key = "drift/wrong-size-row.txt";
    let b = body(key, "v1");
    let put = main.put_bytes(key, b.clone(), None).await.expect("put");
    backup.put_bytes(key, b.clone(), None).await.expect("put");
    pairs.insert(key.into(), PairStatus::Same);
    inventory.insert(key.into(), InventoryStatus::InventoryDiffer);
    rows.push(row(key, b.len() + 100, put.etag, true));
    // A live row for an object neither bucket has.
    let key = "drift/ghost.txt";
    inventory.insert(key.into(), InventoryStatus::InventoryOrphaned);
    rows.push(row(key, 10, None, true));
    // A soft-deleted row for an object neither bucket has: not orphaned.
    let mut gone = row("drift/deleted-row.txt", 10, None, true);
    gone.deleted = true;
    rows.push(gone);
    // Same bytes, multipart on main and single-part on backup: the ETags cannot be compared.
    if multipart {
        let key = "drift/multipart.bin";
        let data: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let put = main
            .put_stream(key, std::io::Cursor::new(data.clone()), None)
            .await
            .expect("put multipart");
        assert!(put.parts > 1, "{}: expected a multipart upload", s3.name);
        backup
            .put_bytes(key, Bytes::from(data.clone()), None)
            .await
            .expect("put");
        pairs.insert(key.into(), PairStatus::Unverifiable);
        rows.push(row(key, data.len(), put.etag, true));
    }
    db.db.upsert_inventory(&rows).await.expect("inventory");
    Seeded {
        main,
        backup,
        main_cfg,
        backup_cfg,
        pairs,
        inventory,
    }
}

fn ctx_for(db: &TestDb, s: &Seeded) -> Ctx {
    let mut config = common::config(&db.url, s.main_cfg.clone());
    config.buckets.backup = Some(s.backup_cfg.clone());
    common::ctx(db, config)
}

type Lines = Arc<Mutex<Vec<(char, String)>>>;

async fn check(ctx: &Ctx, params: DriftParams) -> (DriftReport, Vec<(char, String)>) {
    let lines: Lines = Arc::default();
    let sink = lines.clone();
    let params = DriftParams {
        on_line: Some(Arc::new(move |mark, key: &str| {
            sink.lock().expect("lines").push((mark, key.to_string()));
        })),
        ..params
    };
    let r = drift::run(ctx, params, &Progress::none())
        .await
        .expect("drift");
    let mut lines = std::mem::take(&mut *lines.lock().expect("lines"));
    lines.sort_by(|a, b| a.1.cmp(&b.1));
    (r, lines)
}

fn assert_matches_seed(label: &str, r: &DriftReport, lines: &[(char, String)], s: &Seeded) {
    let count = |st: PairStatus| s.pairs.values().filter(|v| **v == st).count() as u64;
    let inv = |st: InventoryStatus| s.inventory.values().filter(|v| **v == st).count() as u64;
    let sum = &r.summary;
    assert_eq!(sum.same, count(PairStatus::Same), "{label}: same: {sum:?}");
    assert_eq!(
        sum.missing_in_backup,
        count(PairStatus::MissingInBackup),
        "{label}: {sum:?}"
    );
    assert_eq!(
        sum.extra_in_backup,
        count(PairStatus::ExtraInBackup),
        "{label}: {sum:?}"
    );
    assert_eq!(sum.differ, count(PairStatus::Differ), "{label}: {sum:?}");
    assert_eq!(
        sum.unverifiable,
        count(PairStatus::Unverifiable),
        "{label}: {sum:?}"
    );
    assert_eq!(sum.errors, 0, "{label}: {:?}", r.items);
    assert_eq!(
        sum.inventory_missing,
        inv(InventoryStatus::InventoryMissing),
        "{label}: {sum:?}"
    );
    assert_eq!(
        sum.inventory_orphaned,
        inv(InventoryStatus::InventoryOrphaned),
        "{label}: {sum:?}"
    );
    assert_eq!(
        sum.inventory_differ,
        inv(InventoryStatus::InventoryDiffer),
        "{label}: {:?}",
        r.items
    );
    // Every key in the buckets gets exactly one line, with the right mark.
    let want: Vec<(char, String)> = s
        .pairs
        .iter()
        .map(|(k, st)| (st.mark(), k.clone()))
        .collect();
    assert_eq!(lines, want.as_slice(), "{label}: --combined lines");
    // Items are the disagreeing keys, in byte order, with the right statuses.
    let mut keys: Vec<&str> = r.items.iter().map(|i| i.key.as_str()).collect();
    let sorted = {
        let mut k = keys.clone();
        k.sort();
        k
    };
    assert_eq!(keys, sorted, "{label}: items not in byte order");
    for item in &r.items {
        if let Some(st) = item.status {
            assert_eq!(Some(&st), s.pairs.get(&item.key), "{label}: {item:?}");
        }
        assert_eq!(
            item.inventory_status.as_ref(),
            s.inventory.get(&item.key),
            "{label}: {item:?}"
        );
    }
    keys.dedup();
    assert_eq!(keys.len(), r.items.len(), "{label}: one item per key");
    assert!(r.found_problems(), "{label}: drift must exit 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_every_kind_of_drift_and_repair_makes_it_clean() {
    for s3 in S3Server::all().await {
        for db in TestDb::all().await {
            let label = format!("{} / {:?}", s3.name, db.db.backend());
            let seeded = seed(&s3, &db, true).await;
            let ctx = ctx_for(&db, &seeded);

            // One range and many ranges give the same answer; so does a run that keeps no
            // items (`--combined`), which reads only the inventory columns it compares.
            for concurrency in [1, 8] {
                for keep_items in [true, false] {
                    let (r, lines) = check(
                        &ctx,
                        DriftParams {
                            concurrency,
                            // Split even these small buckets, so the range merge is exercised.
                            split_above_pages: 0,
                            keep_items,
                            ..Default::default()
                        },
                    )
                    .await;
                    let label = format!("{label} -j{concurrency} keep_items={keep_items}");
                    assert_matches_seed(&label, &r, &lines, &seeded);
                    assert_eq!(r.items.is_empty(), !keep_items, "{label}");
                }
            }
            // --checksum hashes the multipart pair: same bytes, so same.
            let (r, _) = check(
                &ctx,
                DriftParams {
                    checksum: true,
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(r.summary.unverifiable, 0, "{label}: {:?}", r.items);
            assert_eq!(
                r.summary.same,
                seeded
                    .pairs
                    .values()
                    .filter(|v| **v != PairStatus::MissingInBackup
                        && **v != PairStatus::ExtraInBackup
                        && **v != PairStatus::Differ)
                    .count() as u64,
                "{label}"
            );

            // A dry run changes nothing.
            let params = DriftParams {
                repair: true,
                dry_run: true,
                checksum: true,
                ..Default::default()
            };
            let (r, _) = check(&ctx, params).await;
            let rep = r.repair.as_ref().expect("repair report");
            assert!(rep.dry_run);
            assert_eq!(rep.copied, 3, "{label}: {rep:?}");
            assert_eq!(rep.kept_extra, 1, "{label}: {rep:?}");
            let (again, _) = check(&ctx, DriftParams::default()).await;
            assert_eq!(
                again.summary.missing_in_backup, 1,
                "{label}: dry run changed something"
            );

            // Read-only refuses a repair.
            let ro = Ctx::new(ctx.config.clone(), ctx.db.clone(), true);
            let refused = drift::run(
                &ro,
                DriftParams {
                    repair: true,
                    ..Default::default()
                },
                &Progress::none(),
            )
            .await;
            assert!(
                matches!(refused, Err(mirrorctl::engine::error::Error::Refused(_))),
                "{label}: {:?}",
                refused.err()
            );

            // Repair without --delete-extra: everything but the extra object is fixed.
            let (r, _) = check(
                &ctx,
                DriftParams {
                    repair: true,
                    checksum: true,
                    ..Default::default()
                },
            )
            .await;
            let rep = r.repair.as_ref().expect("repair report");
            assert!(rep.failures.is_empty(), "{label}: {rep:?}");
            assert!(rep.server_side_copy, "{label}: same endpoint");
            assert_eq!(rep.copied, 3, "{label}: {rep:?}");
            assert_eq!(rep.inventory_soft_deleted, 1, "{label}: {rep:?}");
            let (r, _) = check(
                &ctx,
                DriftParams {
                    checksum: true,
                    ..Default::default()
                },
            )
            .await;
            let s = &r.summary;
            assert_eq!(
                (s.missing_in_backup, s.differ, s.extra_in_backup),
                (0, 0, 1),
                "{label}: {:?}",
                r.items
            );
            assert_eq!(
                (
                    s.inventory_missing,
                    s.inventory_orphaned,
                    s.inventory_differ
                ),
                (0, 0, 0),
                "{label}: {:?}",
                r.items
            );

            // With --delete-extra, the re-check is clean.
            let (r, _) = check(
                &ctx,
                DriftParams {
                    repair: true,
                    delete_extra: true,
                    checksum: true,
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(r.repair.as_ref().map(|r| r.deleted), Some(1), "{label}");
            let (r, lines) = check(
                &ctx,
                DriftParams {
                    checksum: true,
                    ..Default::default()
                },
            )
            .await;
            assert!(
                !r.summary.has_drift(),
                "{label}: not clean after repair: {:?}",
                r.items
            );
            assert!(!r.found_problems(), "{label}");
            assert!(lines.iter().all(|(m, _)| *m == '='), "{label}: {lines:?}");
            assert!(seeded
                .backup
                .head("drift/extra-in-backup.txt")
                .await
                .expect("head")
                .is_none());
            assert!(seeded
                .main
                .head("drift/missing in backup.txt")
                .await
                .expect("head")
                .is_some());

            // The audit log has a row per run.
            let ops = ctx.db.list_operations(50).await.expect("history");
            assert!(
                ops.iter().filter(|o| o.kind == "drift").count() >= 7,
                "{label}"
            );
        }
    }
}

/// Enough keys that the planner splits the key space; every split must give the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_ranges_agree_with_one_range_on_a_larger_bucket() {
    for s3 in S3Server::all().await {
        let db = TestDb::sqlite().await;
        let (main_cfg, main) = s3.new_bucket("drift-many-main").await;
        let (backup_cfg, backup) = s3.new_bucket("drift-many-backup").await;
        let keys: Vec<String> = (0..1300u32)
            .map(|i| match i % 4 {
                0 => format!("mods/{}/{i}/file.zip", i % 37),
                1 => format!("Mods/{i:05}"),
                2 => format!("é/{i}"),
                _ => format!("{:x}/{i}", i * 7919 % 4096),
            })
            .collect();
        let puts = futures::stream::iter(keys.iter().enumerate().map(|(n, k)| {
            let (main, backup) = (&main, &backup);
            async move {
                if n % 50 != 1 {
                    main.put_bytes(k, Bytes::from(k.clone()), None).await?;
                }
                if n % 50 != 2 {
                    let salt = if n % 50 == 3 { "changed" } else { "" };
                    backup
                        .put_bytes(k, Bytes::from(format!("{k}{salt}")), None)
                        .await?;
                }
                Ok::<_, mirrorctl::engine::error::Error>(())
            }
        }));
        use futures::StreamExt;
        let results: Vec<_> = puts.buffer_unordered(32).collect().await;
        for r in results {
            r.expect("put");
        }
        let mut config = common::config(&db.url, main_cfg);
        config.buckets.backup = Some(backup_cfg);
        let ctx = common::ctx(&db, config);
        let (one, one_lines) = check(
            &ctx,
            DriftParams {
                concurrency: 1,
                ..Default::default()
            },
        )
        .await;
        let (many, many_lines) = check(&ctx, split_eight()).await;
        assert_eq!(one.ranges, 1);
        // Without items (what `--combined` asks for) the counts and lines are the same.
        let (lean, lean_lines) = check(
            &ctx,
            DriftParams {
                keep_items: false,
                ..Default::default()
            },
        )
        .await;
        assert!(lean.items.is_empty(), "{}", s3.name);
        assert!(!one.items.is_empty(), "{}", s3.name);
        assert_eq!(
            serde_json::to_value(&lean.summary).expect("json"),
            serde_json::to_value(&one.summary).expect("json"),
            "{}",
            s3.name
        );
        assert_eq!(lean_lines, one_lines, "{}", s3.name);
        assert!(
            many.ranges > 4,
            "{}: the planner did not split ({} ranges)",
            s3.name,
            many.ranges
        );
        assert_eq!(one_lines, many_lines, "{}", s3.name);
        assert_eq!(one_lines.len(), keys.len(), "{}", s3.name);
        // The first page of each side, listed to decide on the split, serves the ranges it
        // covers; the ranges past it are listed: the same answer, with items or without.
        for keep_items in [true, false] {
            let (headed, headed_lines) = check(
                &ctx,
                DriftParams {
                    concurrency: 8,
                    split_above_pages: 1,
                    keep_items,
                    ..Default::default()
                },
            )
            .await;
            assert!(
                headed.ranges > 4,
                "{}: the planner did not split ({} ranges)",
                s3.name,
                headed.ranges
            );
            assert_eq!(
                headed_lines, one_lines,
                "{} keep_items={keep_items}",
                s3.name
            );
            assert_eq!(
                (headed.main_objects, headed.backup_objects),
                (one.main_objects, one.backup_objects),
                "{}",
                s3.name
            );
        }
        let s = &many.summary;
        assert_eq!(
            (s.missing_in_backup, s.extra_in_backup, s.differ),
            (26, 26, 26),
            "{}: {s:?}",
            s3.name
        );
        assert_eq!(s.same, keys.len() as u64 - 78, "{}", s3.name);
        // A prefix narrows both listings and the inventory.
        let (_, p_lines) = check(
            &ctx,
            DriftParams {
                prefix: "é/".into(),
                concurrency: 4,
                ..Default::default()
            },
        )
        .await;
        let want: Vec<_> = one_lines
            .iter()
            .filter(|l| l.1.starts_with("é/"))
            .cloned()
            .collect();
        assert_eq!(p_lines, want, "{}", s3.name);

        // Throttling and cut-off responses in the middle of the listings: retried, and the
        // result is unchanged.
        let proxy = FaultProxy::start(&s3.endpoint).await;
        let mirror = ctx.config.buckets.mirror.as_ref().expect("mirror bucket");
        let mut config = common::config(&db.url, via(&proxy, mirror));
        config.buckets.backup = ctx.config.buckets.backup.as_ref().map(|b| via(&proxy, b));
        let flaky = common::ctx(&db, config);
        let faults = proxy.faults.clone();
        let injector = tokio::spawn(async move {
            // After the planning requests, one fault every few requests: throttled pages and
            // pages cut off mid-body, in every range.
            let mut seen = 0;
            loop {
                let n = faults.requests.load(Ordering::SeqCst);
                if n >= 12 && n >= seen + 5 {
                    seen = n;
                    if n % 2 == 0 {
                        faults.throttle_next.store(1, Ordering::SeqCst);
                    } else {
                        faults.reset_next.store(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        });
        let (flaky_report, flaky_lines) = check(&flaky, split_eight()).await;
        injector.abort();
        let injected = proxy.faults.injected.load(Ordering::SeqCst);
        assert!(
            injected >= 3,
            "{}: only {injected} faults were injected",
            s3.name
        );
        assert_eq!(flaky_report.summary.errors, 0, "{}", s3.name);
        assert_eq!(
            flaky_lines, one_lines,
            "{}: after {injected} faults",
            s3.name
        );
    }
}

/// Eight workers, splitting however small the buckets.
fn split_eight() -> DriftParams {
    DriftParams {
        concurrency: 8,
        split_above_pages: 0,
        ..Default::default()
    }
}

/// The same bucket, reached through the fault proxy.
fn via(proxy: &FaultProxy, b: &BucketConfig) -> BucketConfig {
    let mut b = b.clone();
    b.endpoint = Some(proxy.endpoint.clone());
    b
}

// --- through the binary ---------------------------------------------------------------------------

fn write_config(
    dir: &std::path::Path,
    db_url: &str,
    s3: &S3Server,
    main: &str,
    backup: Option<&str>,
) -> std::path::PathBuf {
    let mut text = format!("[database]\nurl = \"{db_url}\"\n\n");
    text += &s3.bucket_toml("mirror", main);
    if let Some(b) = backup {
        text += &s3.bucket_toml("backup", b);
    }
    common::write_config_file(dir, &text)
}

fn mirrorctl(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = common::command(config)
        .arg("--headless")
        .args(args)
        .output()
        .expect("run mirrorctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_exit_codes_and_errors() {
    let s3 = S3Server::s3s().await;
    let db = TestDb::sqlite().await;
    let seeded = seed(&s3, &db, false).await;
    let dir = tempfile::tempdir().expect("temp dir");

    // No backup configured: exit 2, naming the section to set.
    let cfg = write_config(dir.path(), &db.url, &s3, seeded.main.name(), None);
    let (code, _, err) = mirrorctl(&cfg, &["drift"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[buckets.backup]"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A backup bucket that does not exist: exit 1, naming it.
    let cfg = write_config(
        dir.path(),
        &db.url,
        &s3,
        seeded.main.name(),
        Some("no-such-bucket-drift"),
    );
    let (code, _, err) = mirrorctl(&cfg, &["drift"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no-such-bucket-drift"), "{err}");

    let cfg = write_config(
        dir.path(),
        &db.url,
        &s3,
        seeded.main.name(),
        Some(seeded.backup.name()),
    );
    // A backup bucket the credentials do not open (a wrong secret): exit 1, naming it.
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let at = text.rfind(&s3.secret).expect("the backup's secret");
    let wrong = dir.path().join("wrong-secret.toml");
    std::fs::write(&wrong, format!("{}wrong-{}", &text[..at], &text[at..])).expect("write config");
    let (code, _, err) = mirrorctl(&wrong, &["drift"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(seeded.backup.name()), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Drift found: exit 3; JSON has the contract's summary keys.
    let (code, out, err) = mirrorctl(&cfg, &["drift", "-o", "json"]);
    assert_eq!(code, 3, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    for k in [
        "same",
        "missing_in_backup",
        "extra_in_backup",
        "differ",
        "unverifiable",
        "inventory_missing",
        "inventory_orphaned",
        "errors",
    ] {
        assert!(v["summary"][k].is_u64(), "summary.{k}: {out}");
    }
    assert_eq!(v["summary"]["missing_in_backup"], 1);
    // --combined: one line per key on stdout, rclone's marks.
    let (code, out, _) = mirrorctl(&cfg, &["drift", "--combined"]);
    assert_eq!(code, 3);
    assert!(
        out.lines().any(|l| l == "+ drift/missing in backup.txt"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "- drift/extra-in-backup.txt"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "* drift/size.txt"), "{out}");
    assert!(
        out.lines().any(|l| l == "= space key/file name.txt"),
        "{out}"
    );
    assert_eq!(out.lines().count(), seeded.pairs.len(), "{out}");
    // Repair needs --yes headless, and is refused read-only.
    let (code, _, err) = mirrorctl(&cfg, &["drift", "--repair"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--yes"), "{err}");
    let (code, _, err) = mirrorctl(&cfg, &["--read-only", "drift", "--repair", "--yes"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("read-only"), "{err}");
    let (code, out, err) = mirrorctl(&cfg, &["drift", "--repair", "--dry-run"]);
    assert_eq!(code, 3, "{err}");
    assert!(out.contains("would"), "{out}");
    // Repair, then the re-check is clean: exit 0.
    let (code, _, err) = mirrorctl(&cfg, &["drift", "--repair", "--delete-extra", "--yes"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = mirrorctl(&cfg, &["drift"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// The same difference set as `rclone check --combined` on plain keys (rclone re-encodes
/// control characters and cleans `..`, so it is no reference for the awkward ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_differences_as_rclone_check() {
    if Command::new("rclone").arg("version").output().is_err() {
        assert!(!common::servers_required(), "rclone is not installed");
        eprintln!("rclone not installed: skipping");
        return;
    }
    for s3 in S3Server::all().await {
        let db = TestDb::sqlite().await;
        let (main_cfg, main) = s3.new_bucket("drift-rc-main").await;
        let (backup_cfg, backup) = s3.new_bucket("drift-rc-backup").await;
        for i in 0..60u32 {
            let k = format!("dir{}/sub{}/file-{i}.txt", i % 3, i % 5);
            if i % 10 != 1 {
                main.put_bytes(&k, Bytes::from(k.clone()), None)
                    .await
                    .expect("put");
            }
            if i % 10 != 2 {
                let salt = match i % 10 {
                    3 => "+longer",
                    4 => "X",
                    _ => "",
                };
                let b = if salt == "X" {
                    k.replace("file", "fiLe")
                } else {
                    format!("{k}{salt}")
                };
                backup
                    .put_bytes(&k, Bytes::from(b), None)
                    .await
                    .expect("put");
            }
        }
        let mut config = common::config(&db.url, main_cfg);
        config.buckets.backup = Some(backup_cfg);
        let ctx = common::ctx(&db, config);
        let (_, ours) = check(&ctx, DriftParams::default()).await;
        let ours: Vec<String> = ours.into_iter().map(|(m, k)| format!("{m} {k}")).collect();

        let out = Command::new("env")
            .args(["-u", "AWS_CA_BUNDLE", "rclone", "check", "--combined", "-"])
            .arg(format!("x:{}", main.name()))
            .arg(format!("x:{}", backup.name()))
            .env("RCLONE_CONFIG_X_TYPE", "s3")
            .env("RCLONE_CONFIG_X_PROVIDER", "Other")
            .env("RCLONE_CONFIG_X_ENDPOINT", &s3.endpoint)
            .env("RCLONE_CONFIG_X_ACCESS_KEY_ID", &s3.key)
            .env("RCLONE_CONFIG_X_SECRET_ACCESS_KEY", &s3.secret)
            .env("RCLONE_CONFIG_X_REGION", "us-east-1")
            .env("RCLONE_CONFIG_X_FORCE_PATH_STYLE", "true")
            .output()
            .expect("run rclone");
        let mut theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        theirs.sort_by(|a, b| a[2..].cmp(&b[2..]));
        assert_eq!(
            ours,
            theirs,
            "{}: rclone stderr: {}",
            s3.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// --- the archive prefix, races with main, pending replication, part layout, Ctrl-C ----------------

/// With the default config the archive is the mirror bucket under `archive/`, and the mirror
/// bucket is main: the archive's Parquet files are not main's objects and are not compared.
/// An archive in a bucket of its own excludes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_prefix_in_the_main_bucket_is_not_compared() {
    for s3 in S3Server::all().await {
        let db = TestDb::sqlite().await;
        let (main_cfg, main) = s3.new_bucket("drift-arch-main").await;
        let (backup_cfg, backup) = s3.new_bucket("drift-arch-backup").await;
        let parquet = "archive/download_events/year=2026/month=01/part-00000.parquet";
        let manifest = "archive/download_events/year=2026/month=01/_manifest.json";
        for k in [parquet, manifest] {
            main.put_bytes(k, Bytes::from_static(b"PAR1"), None)
                .await
                .expect("put");
        }
        // Keys that only share the first letters of the prefix are compared.
        for k in ["archived.txt", "plain/a.txt"] {
            main.put_bytes(k, Bytes::from(k), None).await.expect("put");
            backup
                .put_bytes(k, Bytes::from(k), None)
                .await
                .expect("put");
        }
        main.put_bytes("archive-not/x", Bytes::from_static(b"x"), None)
            .await
            .expect("put");

        let mut config = common::config(&db.url, main_cfg.clone());
        config.buckets.backup = Some(backup_cfg.clone());
        let ctx = common::ctx(&db, config.clone());
        let (r, lines) = check(
            &ctx,
            DriftParams {
                keep_items: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            r.excluded_prefix.as_deref(),
            Some("archive/"),
            "{}",
            s3.name
        );
        assert_eq!(
            lines,
            vec![
                ('+', "archive-not/x".to_string()),
                ('=', "archived.txt".to_string()),
                ('=', "plain/a.txt".to_string()),
            ],
            "{}",
            s3.name
        );
        assert_eq!(r.summary.missing_in_backup, 1, "{}: {:?}", s3.name, r.items);
        assert_eq!(r.main_objects, 3, "{}", s3.name);

        // Asked for explicitly, the archive is compared.
        let (r, lines) = check(
            &ctx,
            DriftParams {
                prefix: "archive/".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(r.excluded_prefix, None, "{}", s3.name);
        assert_eq!(lines.len(), 2, "{}: {lines:?}", s3.name);

        // An archive bucket of its own: `archive/` in main is main's own data.
        let (archive_cfg, _) = s3.new_bucket("drift-arch-own").await;
        let mut own = config.clone();
        let mut archive_cfg = archive_cfg;
        archive_cfg.prefix = "archive/".into();
        own.buckets.archive = Some(archive_cfg);
        let (r, _) = check(&common::ctx(&db, own), DriftParams::default()).await;
        assert_eq!(r.excluded_prefix, None, "{}", s3.name);
        assert_eq!(r.summary.missing_in_backup, 3, "{}", s3.name);
    }
}

/// Puts `body` at `key` from a synchronous callback (the `--combined` sink), on a thread and
/// runtime of its own with a client of its own, so a test can change a bucket between the
/// classification of a key and its repair.
fn put_now(cfg: &BucketConfig, key: &str, body: &'static [u8]) {
    let (cfg, key) = (cfg.clone(), key.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let bucket = S3Bucket::connect(&cfg).await.expect("connect");
            bucket
                .put_bytes(&key, Bytes::from_static(body), None)
                .await
                .expect("put");
        });
    })
    .join()
    .expect("put thread");
}

/// Main changes between the listing and the repair: an extra object main now has is not
/// deleted (`--delete-extra` re-checks main), and a copy whose source was replaced is not made
/// (it is pinned to the listed ETag). Both are counted `main_changed` and leave exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_rechecks_main_before_deleting_or_copying() {
    for s3 in S3Server::all().await {
        let db = TestDb::sqlite().await;
        let (main_cfg, main) = s3.new_bucket("drift-race-main").await;
        let (backup_cfg, backup) = s3.new_bucket("drift-race-backup").await;
        backup
            .put_bytes("race/extra-now-in-main", Bytes::from_static(b"old"), None)
            .await
            .expect("put");
        backup
            .put_bytes("race/really-extra", Bytes::from_static(b"old"), None)
            .await
            .expect("put");
        main.put_bytes(
            "race/missing-then-replaced",
            Bytes::from_static(b"v1"),
            None,
        )
        .await
        .expect("put");
        main.put_bytes("race/missing", Bytes::from_static(b"v1"), None)
            .await
            .expect("put");
        let mut config = common::config(&db.url, main_cfg.clone());
        config.buckets.backup = Some(backup_cfg);
        let ctx = common::ctx(&db, config);

        let racer = main_cfg.clone();
        let params = DriftParams {
            repair: true,
            delete_extra: true,
            keep_items: false,
            on_line: Some(Arc::new(move |_mark, key: &str| {
                // Classified, not yet repaired: main changes now.
                let body: &'static [u8] = match key {
                    "race/extra-now-in-main" => b"new",
                    "race/missing-then-replaced" => b"v2-longer",
                    _ => return,
                };
                put_now(&racer, key, body);
            })),
            ..Default::default()
        };
        let r = drift::run(&ctx, params, &Progress::none())
            .await
            .expect("drift");
        let rep = r.repair.as_ref().expect("repair report");
        assert!(rep.failures.is_empty(), "{}: {rep:?}", s3.name);
        assert_eq!(rep.main_changed, 2, "{}: {rep:?}", s3.name);
        assert_eq!((rep.deleted, rep.copied), (1, 1), "{}: {rep:?}", s3.name);
        assert!(r.found_problems(), "{}: main changed: not clean", s3.name);
        let got = backup
            .get("race/extra-now-in-main", None)
            .await
            .expect("get");
        assert!(got.is_some(), "{}: deleted what main now has", s3.name);
        assert!(
            backup
                .head("race/missing-then-replaced")
                .await
                .expect("head")
                .is_none(),
            "{}: copied a source that changed since the listing",
            s3.name
        );
        assert!(backup
            .head("race/really-extra")
            .await
            .expect("head")
            .is_none());
        assert!(backup.head("race/missing").await.expect("head").is_some());
    }
}

/// Adds a replication task for `path` in `state` straight into the database, as the S3 front
/// does (this branch has no writer of its own for the outbox).
async fn add_task(db: &TestDb, path: &str, state: &str) {
    use mirrorctl::engine::db::Backend;
    match db.db.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.expect("sqlite");
            sqlx::query(
                "INSERT INTO replication_tasks (path, op, version, state, created_at, next_attempt_at) \
                 VALUES ($1, 'put', 1, $2, datetime('now'), datetime('now'))",
            )
            .bind(path)
            .bind(state)
            .execute(&pool)
            .await
            .expect("insert task");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.expect("postgres");
            sqlx::query(
                "INSERT INTO replication_tasks (path, op, version, state, created_at, next_attempt_at) \
                 VALUES ($1, 'put', 1, $2, now(), now())",
            )
            .bind(path)
            .bind(state)
            .execute(&pool)
            .await
            .expect("insert task");
            pool.close().await;
        }
    }
}

/// A key whose replication is still open (`pending` or `running`) is `pending`: not drift, not
/// repaired, `!` under `--combined`; a `done` or `failed` task does not hide drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_replication_is_pending_not_drift() {
    let s3 = S3Server::s3s().await;
    for db in TestDb::all().await {
        let label = format!("{:?}", db.db.backend());
        let (main_cfg, main) = s3.new_bucket("drift-pend-main").await;
        let (backup_cfg, backup) = s3.new_bucket("drift-pend-backup").await;
        for k in ["p/new", "p/running", "p/failed", "p/done", "p/zz-same"] {
            main.put_bytes(k, Bytes::from(k), None).await.expect("put");
        }
        // Overwritten on main, the old version still in the backup.
        backup
            .put_bytes("p/running", Bytes::from_static(b"old version"), None)
            .await
            .expect("put");
        backup
            .put_bytes("p/zz-same", Bytes::from("p/zz-same"), None)
            .await
            .expect("put");
        add_task(&db, "p/new", "pending").await;
        add_task(&db, "p/new", "done").await;
        add_task(&db, "p/running", "running").await;
        add_task(&db, "p/failed", "failed").await;
        add_task(&db, "p/done", "done").await;
        add_task(&db, "q/elsewhere", "pending").await;
        let rows: Vec<InventoryRow> = ["p/new", "p/running", "p/failed", "p/done", "p/zz-same"]
            .iter()
            .map(|k| InventoryRow {
                path: k.to_string(),
                size: k.len() as i64,
                etag: None,
                content_type: None,
                is_backed_up: *k == "p/zz-same",
                last_modified: None,
                deleted: false,
                updated_at: Utc::now(),
            })
            .collect();
        db.db.upsert_inventory(&rows).await.expect("inventory");
        let mut config = common::config(&db.url, main_cfg);
        config.buckets.backup = Some(backup_cfg);
        let ctx = common::ctx(&db, config);

        for params in [DriftParams::default(), split_eight()] {
            let (r, lines) = check(&ctx, params).await;
            let s = &r.summary;
            assert_eq!(s.pending, 2, "{label}: {s:?}");
            assert_eq!(
                (s.missing_in_backup, s.differ, s.same),
                (2, 0, 1),
                "{label}: {s:?}"
            );
            assert_eq!(
                (s.inventory_missing, s.inventory_differ),
                (0, 0),
                "{label}: {:?}",
                r.items
            );
            assert_eq!(
                lines,
                vec![
                    ('+', "p/done".to_string()),
                    ('+', "p/failed".to_string()),
                    ('!', "p/new".to_string()),
                    ('!', "p/running".to_string()),
                    ('=', "p/zz-same".to_string()),
                ],
                "{label}"
            );
            let pending: Vec<&str> = r
                .items
                .iter()
                .filter(|i| i.status == Some(PairStatus::Pending))
                .map(|i| i.key.as_str())
                .collect();
            assert_eq!(pending, ["p/new", "p/running"], "{label}");
            let json = serde_json::to_value(&r).expect("json");
            assert_eq!(json["summary"]["pending"], 2, "{label}");
        }
        // Repair leaves the pending keys to replication.
        let (r, _) = check(
            &ctx,
            DriftParams {
                repair: true,
                ..Default::default()
            },
        )
        .await;
        let rep = r.repair.as_ref().expect("repair");
        assert_eq!(rep.copied, 2, "{label}: {rep:?}");
        assert!(
            backup.head("p/new").await.expect("head").is_none(),
            "{label}"
        );
        let old = backup.head("p/running").await.expect("head").expect("kept");
        assert_eq!(old.size, 11, "{label}: the running copy was overwritten");
        // Only pending keys left: no drift, exit 0.
        let (r, _) = check(&ctx, DriftParams::default()).await;
        assert_eq!(r.summary.pending, 2, "{label}");
        assert!(!r.summary.has_drift(), "{label}: {:?}", r.items);
        assert!(!r.found_problems(), "{label}");
    }
}

/// The same Garage bucket reached as `localhost` instead of `127.0.0.1`: another endpoint as
/// far as mirrorctl knows, so copies to it are streamed through this process.
fn other_endpoint(cfg: &BucketConfig) -> BucketConfig {
    let mut c = cfg.clone();
    c.endpoint = c.endpoint.map(|e| e.replace("127.0.0.1", "localhost"));
    assert_ne!(c.endpoint, cfg.endpoint, "expected a 127.0.0.1 endpoint");
    c
}

/// A repair across endpoints keeps each object's identity: a multipart object is uploaded with
/// the same parts (so its `-N` ETag is main's), a single-part one in one PUT whatever its size,
/// so the next check without `--checksum` finds every pair `same`. `copy_object_from` reports a
/// changed or missing source as such, streamed or server-side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_across_endpoints_keeps_etags_so_the_next_check_is_same() {
    use mirrorctl::engine::s3::CopyOutcome;
    let Some(s3) = S3Server::garage() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let (mut main_cfg, _) = s3.new_bucket("drift-layout-main").await;
    main_cfg.multipart_threshold = ByteSize(5 * 1024 * 1024);
    main_cfg.part_size = ByteSize(5 * 1024 * 1024);
    let main = S3Bucket::connect(&main_cfg).await.expect("connect");
    let (backup_cfg, _) = s3.new_bucket("drift-layout-backup").await;
    let mut backup_cfg = other_endpoint(&backup_cfg);
    // Below the single-part object's size: a plain streamed upload would split it in parts.
    backup_cfg.multipart_threshold = ByteSize(5 * 1024 * 1024);
    backup_cfg.part_size = ByteSize(8 * 1024 * 1024);
    let backup = S3Bucket::connect(&backup_cfg).await.expect("connect");
    assert!(!backup.same_endpoint(&main));

    let data =
        |n: usize, salt: u8| -> Vec<u8> { (0..n).map(|i| ((i % 253) as u8) ^ salt).collect() };
    let mp = main
        .put_stream(
            "mp/three-parts.bin",
            std::io::Cursor::new(data(12 * 1024 * 1024, 1)),
            Some("application/x-test"),
        )
        .await
        .expect("put multipart");
    assert_eq!(mp.parts, 3);
    main.put_bytes(
        "sp/single-12MiB.bin",
        Bytes::from(data(12 * 1024 * 1024, 2)),
        None,
    )
    .await
    .expect("put");
    main.put_bytes("sp/small.txt", Bytes::from_static(b"small"), None)
        .await
        .expect("put");
    main.put_bytes("sp/empty", Bytes::new(), None)
        .await
        .expect("put");

    let mut config = common::config(&db.url, main_cfg.clone());
    config.buckets.backup = Some(backup_cfg.clone());
    let ctx = common::ctx(&db, config);
    let (r, _) = check(&ctx, DriftParams::default()).await;
    assert_eq!(r.summary.missing_in_backup, 4, "{:?}", r.items);
    let (r, _) = check(
        &ctx,
        DriftParams {
            repair: true,
            keep_items: false,
            ..Default::default()
        },
    )
    .await;
    let rep = r.repair.as_ref().expect("repair");
    assert!(!rep.server_side_copy);
    assert!(rep.failures.is_empty(), "{rep:?}");
    assert_eq!(rep.copied, 4, "{rep:?}");
    let (r, lines) = check(&ctx, DriftParams::default()).await;
    assert!(!r.summary.has_drift(), "{:?}", r.items);
    assert_eq!(r.summary.same, 4, "{lines:?}");
    for k in ["mp/three-parts.bin", "sp/single-12MiB.bin", "sp/empty"] {
        let m = main.head(k).await.expect("head").expect("main");
        let b = backup.head(k).await.expect("head").expect("backup");
        assert_eq!((m.etag, m.size), (b.etag, b.size), "{k}");
    }
    let b = backup
        .head("mp/three-parts.bin")
        .await
        .expect("head")
        .expect("backup");
    assert_eq!(b.content_type.as_deref(), Some("application/x-test"));

    // A source that changed or is gone: nothing written, and said so.
    let (same_cfg, same_ep) = s3.new_bucket("drift-layout-same").await;
    assert!(same_ep.same_endpoint(&main), "{same_cfg:?}");
    for dst in [&backup, &same_ep] {
        let wrong = "0123456789abcdef0123456789abcdef";
        let out = dst
            .copy_object_from(&main, "sp/small.txt", "changed", Some(wrong))
            .await
            .expect("copy");
        assert_eq!(out, CopyOutcome::SourceChanged, "{dst:?}");
        assert!(
            dst.head("changed").await.expect("head").is_none(),
            "{dst:?}"
        );
        let out = dst
            .copy_object_from(&main, "no/such/key", "gone", None)
            .await
            .expect("copy");
        assert_eq!(out, CopyOutcome::SourceMissing, "{dst:?}");
        let out = dst
            .copy_object_from(&main, "mp/three-parts.bin", "copy.bin", mp.etag.as_deref())
            .await
            .expect("copy");
        assert!(
            matches!(&out, CopyOutcome::Copied { etag, .. } if *etag == mp.etag),
            "{dst:?}: {out:?}"
        );
    }
    // The copy above taught `same_ep` that Garage honours the condition: a changed source is
    // now refused by Garage itself (no HEAD first), and still nothing is written.
    assert_eq!(same_ep.honours_copy_conditions(), Some(true));
    let out = same_ep
        .copy_object_from(
            &main,
            "sp/small.txt",
            "changed-later",
            Some("0123456789abcdef"),
        )
        .await
        .expect("copy");
    assert_eq!(out, CopyOutcome::SourceChanged);
    assert!(same_ep.head("changed-later").await.expect("head").is_none());
}

/// On s3s-fs too, a conditional server-side copy writes only the wanted version, before and after
/// the first matching copy found out that the endpoint honours `x-amz-copy-source-if-match`
/// (s3s-fs 0.14 does: the second round's refusal comes from the server, with no HEAD first).
#[tokio::test]
async fn a_conditional_copy_writes_only_the_wanted_version_and_learns_the_server_honours_it() {
    use mirrorctl::engine::s3::CopyOutcome;
    let s3 = S3Server::s3s().await;
    let (_, main) = s3.new_bucket("cond-main").await;
    let (_, backup) = s3.new_bucket("cond-backup").await;
    assert!(backup.same_endpoint(&main));
    assert_eq!(backup.honours_copy_conditions(), None);
    let put = main
        .put_bytes("k", Bytes::from_static(b"version one"), None)
        .await
        .expect("put");
    let wanted = put.etag.clone().expect("etag");
    for round in 0..2 {
        let out = backup
            .copy_object_from(&main, "k", "changed", Some("0123456789abcdef"))
            .await
            .expect("copy");
        assert_eq!(out, CopyOutcome::SourceChanged, "round {round}");
        assert!(backup.head("changed").await.expect("head").is_none());
        let out = backup
            .copy_object_from(&main, "k", "k", Some(&wanted))
            .await
            .expect("copy");
        assert!(
            matches!(out, CopyOutcome::Copied { .. }),
            "round {round}: {out:?}"
        );
        let got = backup.head("k").await.expect("head").expect("copied");
        assert_eq!(got.etag.as_deref(), Some(wanted.as_str()), "round {round}");
        // The first matching copy found out, so the second round's refusal came from s3s-fs.
        assert_eq!(
            backup.honours_copy_conditions(),
            Some(true),
            "round {round}"
        );
    }
}

/// A loopback TCP proxy to `upstream` (`http://host:port`) that holds every chunk of the
/// responses for `delay`: a slow server. Counts the connections it accepted.
async fn slow_proxy(
    upstream: &str,
    delay: std::time::Duration,
) -> (String, Arc<std::sync::atomic::AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 8192];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            tokio::time::sleep(delay).await;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), connections)
}

/// Ctrl-C in the middle of a check (here, on a slow server) ends the process within a second:
/// exit 1, "cancelled" on stderr, and the audit row says `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_running_check_within_a_second() {
    let s3 = S3Server::s3s().await;
    let db = TestDb::sqlite().await;
    let (main_cfg, main) = s3.new_bucket("drift-sigint-main").await;
    let (backup_cfg, _) = s3.new_bucket("drift-sigint-backup").await;
    let puts = futures::stream::iter((0..1500u32).map(|i| {
        let main = &main;
        async move {
            main.put_bytes(&format!("k/{i:05}"), Bytes::from_static(b"x"), None)
                .await
        }
    }));
    use futures::StreamExt;
    for r in puts.buffer_unordered(32).collect::<Vec<_>>().await {
        r.expect("put");
    }
    let (endpoint, connections) =
        slow_proxy(&s3.endpoint, std::time::Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let bucket = |section: &str, name: &str| {
        format!(
            "[buckets.{section}]\nbucket = \"{name}\"\nendpoint = \"{endpoint}\"\npath_style = true\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\n",
            s3.key, s3.secret
        )
    };
    let text = format!(
        "[database]\nurl = \"{}\"\n\n{}{}",
        db.url,
        bucket("mirror", &main_cfg.bucket),
        bucket("backup", &backup_cfg.bucket)
    );
    let cfg = common::write_config_file(dir.path(), &text);
    let mut child = common::command(&cfg)
        .args(["--headless", "drift", "--combined"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mirrorctl");
    // Under way: it has reached the (slow) server.
    let waited = std::time::Instant::now();
    while connections.load(Ordering::SeqCst) == 0 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(20),
            "mirrorctl never reached the server"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        child.try_wait().expect("wait").is_none(),
        "finished too soon"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let sent = std::time::Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if sent.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running 10 s after SIGINT");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let took = sent.elapsed();
    let mut err = String::new();
    use std::io::Read as _;
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        took < std::time::Duration::from_secs(1),
        "exited {took:?} after SIGINT: {err}"
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    let ops = db.db.list_operations(10).await.expect("history");
    let last = ops.iter().find(|o| o.kind == "drift").expect("a drift row");
    assert_eq!(last.status, "cancelled", "{err}");
}

/// Migration 0015 stores SQLite's inventory in path order (a WITHOUT ROWID table) and keeps its
/// rows, also when it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_inventory_is_stored_by_path_and_kept_across_migration_0015() {
    let db = TestDb::sqlite().await;
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
    let rows: Vec<InventoryRow> = ["b/2", "a/1", "é/3"]
        .iter()
        .enumerate()
        .map(|(i, p)| InventoryRow {
            path: p.to_string(),
            size: i as i64 + 10,
            etag: Some(format!("etag-{i}")),
            content_type: Some("application/zip".into()),
            is_backed_up: i % 2 == 0,
            last_modified: Some(now),
            deleted: false,
            updated_at: now,
        })
        .collect();
    db.db.upsert_inventory(&rows).await.expect("rows");
    let pool = sqlx::sqlite::SqlitePool::connect(&db.url)
        .await
        .expect("pool");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 15")
        .execute(&pool)
        .await
        .expect("forget 0015");
    db.db.migrate().await.expect("0015 again");
    let sql: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'backup_inventory'")
            .fetch_one(&pool)
            .await
            .expect("schema");
    assert!(sql.contains("WITHOUT ROWID"), "{sql}");
    let read = db
        .db
        .inventory_range("", None, None, 10)
        .await
        .expect("read");
    let mut want = rows.clone();
    want.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(
        serde_json::to_value(&read).expect("json"),
        serde_json::to_value(&want).expect("json")
    );
    let facts = db
        .db
        .inventory_facts_range("", Some("a/1"), None, 10)
        .await
        .expect("facts");
    let paths: Vec<(&str, i64, bool)> = facts
        .iter()
        .map(|f| (f.path.as_str(), f.size, f.is_backed_up))
        .collect();
    assert_eq!(paths, vec![("b/2", 10, true), ("é/3", 12, true)]);
}
