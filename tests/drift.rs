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

            // One range and many ranges give the same answer.
            for concurrency in [1, 8] {
                let (r, lines) = check(
                    &ctx,
                    DriftParams {
                        concurrency,
                        // Split even these small buckets, so the range merge is exercised.
                        split_above_pages: 0,
                        ..Default::default()
                    },
                )
                .await;
                assert_matches_seed(&format!("{label} -j{concurrency}"), &r, &lines, &seeded);
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
