//! `purge` by key (`--prefix`, `--match`) and the price of every purge, against real servers:
//! s3s-fs in-process and Garage out of process, SQLite and PostgreSQL. The expected keys and
//! figures are worked out here from the seeded files and events, not by the engine's queries.

mod common;

use std::collections::BTreeSet;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::{S3Server, TestDb};
use mirrorctl::config::{BucketConfig, Config};
use mirrorctl::engine::error::Error;
use mirrorctl::engine::jobs::Progress;
use mirrorctl::engine::model::{NewDownloadEvent, NewMirroredFile, NewOriginFile};
use mirrorctl::engine::ops::purge::{self, PurgeParams, PurgeReport, PurgeTarget};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;

/// Keys that a naive LIKE or an unescaped pattern would get wrong.
const KEYS: &[&str] = &[
    "mods/100%/a.zip",
    "mods/100x/a.zip",
    "mods/a_b.zip",
    "mods/axb.zip",
    "mods/with space/ü.zip",
    "mods/with space/u.zip",
    "mods/deep/er/file.zip",
    "maps/ö-Ω/x.tmp",
    "maps/back\\slash.tmp",
    "maps/star*name.bin",
    "maps/[1].bin",
    "Mods/upper.zip",
    "top.ZIP",
];

/// Days ago a download can have happened: the price window is 30 days.
const DAYS_AGO: [i64; 6] = [2, 7, 15, 25, 45, 70];
const WINDOW_DAYS: u32 = 30;

/// Which seeded keys a case expects.
type KeyTest = dyn Fn(&str) -> bool;

#[derive(Debug, Clone)]
struct Event {
    file: usize,
    at: DateTime<Utc>,
    hit: bool,
    status: i16,
    bytes: i64,
}

struct Fixture {
    bucket_cfg: BucketConfig,
    bucket: S3Bucket,
    db: TestDb,
    ids: Vec<i64>,
    sizes: Vec<i64>,
    stale: Vec<bool>,
    mirrored_at: DateTime<Utc>,
    events: Vec<Event>,
}

impl Fixture {
    async fn new(server: &S3Server, db: TestDb) -> Fixture {
        let (cfg, bucket) = server.new_bucket("pg").await;
        let base = mirrorctl::engine::db::ts(Utc::now());
        let mirrored_at = base - TimeDelta::days(90);
        let origin: Vec<NewOriginFile> = KEYS
            .iter()
            .enumerate()
            .map(|(i, k)| NewOriginFile {
                source: "http".into(),
                remote_id: format!("r{i}"),
                file_name: k.to_string(),
                url: k.to_string(),
                size: None,
                etag: None,
                updated_at: mirrored_at,
            })
            .collect();
        let origin_ids = db.db.insert_origin_files(&origin).await.expect("origin");
        let sizes: Vec<i64> = (0..KEYS.len()).map(|i| 100 * (i as i64 + 1)).collect();
        let stale: Vec<bool> = (0..KEYS.len()).map(|i| i % 4 == 1).collect();
        let mut rows = Vec::new();
        for (i, key) in KEYS.iter().enumerate() {
            let body = vec![b'x'; sizes[i] as usize];
            let put = bucket
                .put_stream(key, &body[..], None)
                .await
                .expect("upload");
            rows.push(NewMirroredFile {
                origin_file_id: origin_ids[i],
                bucket: bucket.name().to_string(),
                key: key.to_string(),
                size: sizes[i],
                sha256: None,
                etag: put.etag,
                mirrored_at,
                is_stale: stale[i],
                stale_reason: stale[i].then(|| "origin changed".to_string()),
            });
        }
        let ids = db.db.insert_mirrored_files(&rows).await.expect("rows");
        // Every file but the last has downloads: hits and misses, some errors and 304s,
        // inside and outside the 30-day window.
        let mut events = Vec::new();
        for i in 0..KEYS.len() - 1 {
            for j in 0..(i % 5 + 2) {
                let status = if (i * 7 + j) % 11 == 0 {
                    503
                } else if (i + j) % 13 == 0 {
                    304
                } else {
                    200
                };
                events.push(Event {
                    file: i,
                    at: base - TimeDelta::days(DAYS_AGO[(i + j) % DAYS_AGO.len()]),
                    hit: (i + j) % 3 != 0,
                    status,
                    bytes: sizes[i] - j as i64,
                });
            }
        }
        let new: Vec<NewDownloadEvent> = events
            .iter()
            .map(|e| NewDownloadEvent {
                occurred_at: e.at,
                file_id: ids[e.file],
                cache_hit: e.hit,
                bytes: e.bytes,
                duration_ms: 1,
                status: e.status,
            })
            .collect();
        db.db.record_downloads(&new).await.expect("downloads");
        Fixture {
            bucket_cfg: cfg,
            bucket,
            db,
            ids,
            sizes,
            stale,
            mirrored_at,
            events,
        }
    }

    fn config(&self) -> Config {
        common::config(&self.db.url, self.bucket_cfg.clone())
    }

    fn ctx(&self) -> Ctx {
        common::ctx(&self.db, self.config())
    }

    /// The start of the price window as the engine documents it: the start of the hour
    /// 30 days ago.
    fn since() -> DateTime<Utc> {
        let start = Utc::now() - TimeDelta::days(i64::from(WINDOW_DAYS));
        start.duration_trunc(TimeDelta::hours(1)).expect("trunc")
    }

    fn counted(e: &Event) -> bool {
        e.status < 500 && e.status != 304 && e.at >= Self::since()
    }

    /// (downloads, bytes, files) of the window's hits of these files.
    fn expected_price(&self, files: &BTreeSet<usize>) -> (u64, u64, u64) {
        let hits: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| files.contains(&e.file) && e.hit && Self::counted(e))
            .collect();
        let distinct: BTreeSet<usize> = hits.iter().map(|e| e.file).collect();
        (
            hits.len() as u64,
            hits.iter().map(|e| e.bytes as u64).sum(),
            distinct.len() as u64,
        )
    }

    /// (hits, misses) of every file in the window.
    fn window_totals(&self) -> (u64, u64) {
        let c = self.events.iter().filter(|e| Self::counted(e));
        let (h, m): (Vec<&Event>, Vec<&Event>) = c.partition(|e| e.hit);
        (h.len() as u64, m.len() as u64)
    }

    /// When each file was last used: its last download that was not an error or a 304, else
    /// when it was mirrored.
    fn last_used(&self, i: usize) -> DateTime<Utc> {
        self.events
            .iter()
            .filter(|e| e.file == i && e.status < 500 && e.status != 304)
            .map(|e| e.at)
            .max()
            .unwrap_or(self.mirrored_at)
    }

    fn files_where(&self, f: impl Fn(usize, &str) -> bool) -> BTreeSet<usize> {
        (0..KEYS.len()).filter(|&i| f(i, KEYS[i])).collect()
    }

    fn keys(files: &BTreeSet<usize>) -> BTreeSet<String> {
        files.iter().map(|&i| KEYS[i].to_string()).collect()
    }

    async fn live_rows(&self) -> i64 {
        self.db.db.storage_totals().await.expect("totals").objects
    }
}

fn params(target: PurgeTarget, prefix: Option<&str>, pattern: Option<&str>) -> PurgeParams {
    PurgeParams {
        target,
        prefix: prefix.map(str::to_string),
        pattern: pattern.map(str::to_string),
        impact_days: WINDOW_DAYS,
        dry_run: true,
        max_delete: None,
        yes: false,
    }
}

async fn dry(f: &Fixture, p: PurgeParams) -> PurgeReport {
    let what = format!("{:?} {:?} {:?}", p.target, p.prefix, p.pattern);
    purge::run(&f.ctx(), p, &Progress::none())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Checks a dry run's candidates, bytes and price against the expected files.
async fn check(f: &Fixture, p: PurgeParams, want: &BTreeSet<usize>) -> PurgeReport {
    let what = format!("{:?} {:?} {:?}", p.target, p.prefix, p.pattern);
    let r = dry(f, p).await;
    let got: BTreeSet<String> = r.first_keys.iter().cloned().collect();
    assert_eq!(got, Fixture::keys(want), "{what}");
    assert_eq!(r.candidates, want.len() as u64, "{what}");
    let bytes: i64 = want.iter().map(|&i| f.sizes[i]).sum();
    assert_eq!(r.bytes, bytes as u64, "{what}");
    let i = r.impact.as_ref().expect("a price");
    let (downloads, price_bytes, files) = f.expected_price(want);
    assert_eq!(
        (i.downloads, i.bytes, i.files),
        (downloads, price_bytes, files),
        "{what}"
    );
    assert_eq!(i.days, WINDOW_DAYS);
    let (h, m) = f.window_totals();
    assert_eq!(i.requests, h + m, "{what}");
    let rate = |x: u64| x as f64 / (h + m) as f64;
    assert!(
        (i.hit_rate.expect("rate") - rate(h)).abs() < 1e-12,
        "{what}"
    );
    assert!(
        (i.hit_rate_after.expect("rate after") - rate(h - downloads)).abs() < 1e-12,
        "{what}"
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_and_glob_select_exactly_the_right_keys_and_price_them() {
    let server = S3Server::s3s().await;
    for db in TestDb::all().await {
        let f = Fixture::new(&server, db).await;
        let before = f.live_rows().await;
        let all = PurgeTarget::All;
        let prefix_cases: &[(&str, &KeyTest)] = &[
            ("mods/100%", &|k| k == "mods/100%/a.zip"),
            ("mods/a_", &|k| k == "mods/a_b.zip"),
            ("mods/with space/", &|k| k.starts_with("mods/with space/")),
            ("maps/ö-Ω/", &|k| k == "maps/ö-Ω/x.tmp"),
            ("maps/back\\", &|k| k == "maps/back\\slash.tmp"),
            ("mods/", &|k| k.starts_with("mods/")),
            ("m", &|k| k.starts_with('m')),
            ("nothing/", &|_| false),
        ];
        for (prefix, want) in prefix_cases {
            let want = f.files_where(|_, k| want(k));
            check(&f, params(all, Some(prefix), None), &want).await;
        }
        let glob_cases: &[(&str, &[&str])] = &[
            (
                "*.zip",
                &[
                    "mods/100%/a.zip",
                    "mods/100x/a.zip",
                    "mods/a_b.zip",
                    "mods/axb.zip",
                    "mods/with space/ü.zip",
                    "mods/with space/u.zip",
                    "mods/deep/er/file.zip",
                    "Mods/upper.zip",
                ],
            ),
            ("mods/deep*.zip", &["mods/deep/er/file.zip"]),
            ("*[Zz][Ii][Pp]", &[]),
            ("mods/a?b.zip", &["mods/a_b.zip", "mods/axb.zip"]),
            ("mods/a_b.zip", &["mods/a_b.zip"]),
            ("mods/100%*", &["mods/100%/a.zip"]),
            ("maps/star[*]name.bin", &["maps/star*name.bin"]),
            ("maps/[[]1].bin", &["maps/[1].bin"]),
            ("maps/back\\slash.tmp", &["maps/back\\slash.tmp"]),
            (
                "mods/with space/?.zip",
                &["mods/with space/ü.zip", "mods/with space/u.zip"],
            ),
            ("maps/*[!a-z].bin", &["maps/[1].bin"]),
            ("maps/ö-[Ω]/*", &["maps/ö-Ω/x.tmp"]),
            ("%", &[]),
            ("_*", &[]),
            ("*.ZIP", &["top.ZIP"]),
        ];
        for (pattern, keys) in glob_cases {
            let mut keys: Vec<&str> = keys.to_vec();
            if *pattern == "*[Zz][Ii][Pp]" {
                // Every key ending in zip, whatever the case.
                keys = KEYS
                    .iter()
                    .copied()
                    .filter(|k| k.to_lowercase().ends_with("zip"))
                    .collect();
            }
            let want = f.files_where(|_, k| keys.contains(&k));
            assert_eq!(
                want.len(),
                keys.len(),
                "{pattern}: a key of the case is not seeded"
            );
            check(&f, params(all, None, Some(pattern)), &want).await;
        }
        // Combined: a prefix and a glob, and either with the other selectors.
        let want = f.files_where(|_, k| k.starts_with("mods/") && k.ends_with(".zip"));
        check(&f, params(all, Some("mods/"), Some("*.zip")), &want).await;
        let want = f.files_where(|i, k| k.starts_with("mods/") && f.stale[i]);
        assert!(!want.is_empty());
        check(&f, params(PurgeTarget::Stale, Some("mods/"), None), &want).await;
        let cutoff = Utc::now() - TimeDelta::days(5);
        let want = f.files_where(|i, k| k.ends_with(".zip") && f.last_used(i) <= cutoff);
        assert!(!want.is_empty());
        check(
            &f,
            params(PurgeTarget::UnusedDays(5), None, Some("*.zip")),
            &want,
        )
        .await;
        // Unscoped selectors are priced too.
        let want = f.files_where(|i, _| f.stale[i]);
        check(&f, params(PurgeTarget::Stale, None, None), &want).await;

        // Hostile and bad input: matched literally or refused with a reason, never run.
        let long = "a".repeat(1024);
        check(&f, params(all, Some(&long), None), &BTreeSet::new()).await;
        for (p, m, want) in [
            (Some("a".repeat(1025)), None, "1024 bytes"),
            (None, Some("mods/[abc".to_string()), "not closed"),
            (None, Some(String::new()), "must not be empty"),
            (None, Some("*a".repeat(17)), "'*'"),
            (None, None, "purge needs"),
        ] {
            let e = purge::run(
                &f.ctx(),
                params(all, p.as_deref(), m.as_deref()),
                &Progress::none(),
            )
            .await
            .expect_err("refused");
            assert!(matches!(e, Error::Usage(_)), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }

        // Nothing changed: rows, objects, events.
        assert_eq!(f.live_rows().await, before);
        for k in KEYS {
            assert!(f.bucket.head(k).await.expect("head").is_some(), "{k}");
        }
        let n: i64 =
            f.db.db
                .downloads_per_day(f.ids[0], Utc::now() - TimeDelta::days(365))
                .await
                .expect("per day")
                .iter()
                .map(|d| d.downloads)
                .sum();
        assert!(n > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_shows_the_hit_rate_change_of_its_lru_candidates() {
    let server = S3Server::s3s().await;
    for db in TestDb::all().await {
        let f = Fixture::new(&server, db).await;
        let total: i64 = f.sizes.iter().sum();
        // LRU order worked out here: oldest last use first, then id.
        let mut order: Vec<usize> = (0..KEYS.len()).collect();
        order.sort_by_key(|&i| (f.last_used(i), f.ids[i]));
        for budget in [total - 1, total / 2, 0] {
            let excess = total - budget;
            let (mut freed, mut want) = (0, BTreeSet::new());
            for &i in &order {
                if freed >= excess {
                    break;
                }
                freed += f.sizes[i];
                want.insert(i);
            }
            let r = check(
                &f,
                params(PurgeTarget::MaxBytes(budget as u64), None, None),
                &want,
            )
            .await;
            let i = r.impact.expect("price");
            assert!(i.hit_rate_after <= i.hit_rate, "{i:?}");
        }
        // The files in a scope get their own budget.
        let scoped = f.files_where(|_, k| k.starts_with("maps/"));
        let scoped_total: i64 = scoped.iter().map(|&i| f.sizes[i]).sum();
        let mut order: Vec<usize> = scoped.iter().copied().collect();
        order.sort_by_key(|&i| (f.last_used(i), f.ids[i]));
        let mut want = BTreeSet::new();
        let mut freed = 0;
        for &i in &order {
            if freed >= scoped_total - 1500 {
                break;
            }
            freed += f.sizes[i];
            want.insert(i);
        }
        assert!(!want.is_empty() && want.len() < scoped.len());
        check(
            &f,
            params(PurgeTarget::MaxBytes(1500), Some("maps/"), None),
            &want,
        )
        .await;
        // Already within budget: nothing to purge, no price, hit rate unchanged.
        let r = dry(&f, params(PurgeTarget::MaxBytes(total as u64), None, None)).await;
        assert_eq!(r.candidates, 0);
        let i = r.impact.expect("price");
        assert_eq!((i.downloads, i.bytes), (0, 0));
        assert_eq!(i.hit_rate, i.hit_rate_after);
        // --impact-days 0 skips the replay.
        let r = dry(
            &f,
            PurgeParams {
                impact_days: 0,
                ..params(PurgeTarget::Stale, None, None)
            },
        )
        .await;
        assert!(r.impact.is_none());
    }
}

/// A real purge by glob: only the matched objects go, then their rows; the report and the
/// audit row carry the price and the pattern. s3s-fs with both databases, Garage with SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_glob_deletes_only_the_matched_objects_then_their_rows() {
    let mut runs = Vec::new();
    let s3s = S3Server::s3s().await;
    for db in TestDb::all().await {
        runs.push((Fixture::new(&s3s, db).await, "s3s-fs"));
    }
    if let Some(garage) = S3Server::garage() {
        runs.push((
            Fixture::new(&garage, TestDb::sqlite().await).await,
            "garage",
        ));
    }
    for (f, server) in runs {
        let want = f.files_where(|_, k| k.starts_with("mods/") && k.contains(['%', '_', ' ']));
        let price = f.expected_price(&want);
        let before = f.live_rows().await;
        let p = PurgeParams {
            dry_run: false,
            yes: true,
            ..params(PurgeTarget::All, Some("mods/"), Some("*[%_ ]*"))
        };
        let r = purge::run(&f.ctx(), p, &Progress::none())
            .await
            .expect("purge");
        assert_eq!(r.deleted, want.len() as u64, "{server}: {r:?}");
        assert_eq!(r.failed, 0, "{server}");
        let i = r.impact.as_ref().expect("price");
        assert_eq!((i.downloads, i.bytes, i.files), price, "{server}");
        for (n, k) in KEYS.iter().enumerate() {
            let there = f.bucket.head(k).await.expect("head").is_some();
            assert_eq!(there, !want.contains(&n), "{server}: {k}");
        }
        assert_eq!(f.live_rows().await, before - want.len() as i64, "{server}");
        let history = f.db.db.list_operations(5).await.expect("history");
        let op = history
            .iter()
            .find(|o| o.kind == "purge")
            .expect("audit row");
        let params = op.params.to_string();
        assert!(params.contains("\"match\":\"*[%_ ]*\""), "{params}");
        let summary = op
            .summary
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(summary.contains("\"impact\""), "{summary}");
        // A rerun finds nothing left and says so.
        let again = dry(&f, params_all("mods/", "*[%_ ]*")).await;
        assert_eq!(again.candidates, 0, "{server}");
        assert!(mirrorctl::headless::purge_table(&again).contains("nothing to purge"));
    }
}

fn params_all(prefix: &str, pattern: &str) -> PurgeParams {
    params(PurgeTarget::All, Some(prefix), Some(pattern))
}

/// The binary: the flags, the JSON price, exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prices_a_dry_run_and_refuses_bad_selections() {
    let server = S3Server::s3s().await;
    let f = Fixture::new(&server, TestDb::sqlite().await).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let b = &f.bucket_cfg;
    let text = format!(
        "[database]\nurl = {db:?}\n\n[buckets.mirror]\nbucket = {bucket:?}\nendpoint = {ep:?}\npath_style = true\n\
         access_key_id = {key:?}\nsecret_access_key = {secret:?}\n",
        db = f.db.url,
        bucket = b.bucket,
        ep = b.endpoint.clone().unwrap_or_default(),
        key = b.access_key_id.as_ref().map(|k| k.expose()).unwrap_or_default(),
        secret = b.secret_access_key.as_ref().map(|k| k.expose()).unwrap_or_default(),
    );
    let cfg = common::write_config_file(dir.path(), &text);
    let run = |args: &[&str]| {
        let mut cmd = common::command(&cfg);
        cmd.arg("--headless").args(args);
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
                .expect("run");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (code, out, err) =
        run(&["purge", "--match", "mods/*.zip", "--dry-run", "-o", "json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let want = f.files_where(|_, k| k.starts_with("mods/") && k.ends_with(".zip"));
    let (downloads, bytes, files) = f.expected_price(&want);
    assert_eq!(v["candidates"], want.len(), "{out}");
    assert_eq!(v["impact"]["days"], 30, "{out}");
    assert_eq!(v["impact"]["downloads"], downloads, "{out}");
    assert_eq!(v["impact"]["bytes"], bytes, "{out}");
    assert_eq!(v["impact"]["files"], files, "{out}");
    for k in ["hit_rate", "hit_rate_after", "requests", "since"] {
        assert!(v["impact"].get(k).is_some(), "{k}: {out}");
    }

    let (code, out, err) = run(&[
        "purge",
        "--prefix",
        "mods/",
        "--impact-days",
        "7",
        "--dry-run",
    ])
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("in the last 7 days it would have turned"),
        "{out}"
    );
    assert!(out.contains("hit rate "), "{out}");

    let (code, out, err) = run(&["purge", "--prefix", "nothing/", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to purge"), "{out}");
    let (code, out, err) = run(&["purge", "--prefix", "nothing/", "--yes"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing to purge"), "{out}");

    for args in [
        &["purge", "--match", "a[b", "--dry-run"][..],
        &["purge", "--dry-run"][..],
        &["purge", "--stale", "--unused-days", "3", "--dry-run"][..],
        &["purge", "--prefix", "mods/"][..],
        &["purge", "--unused-days", "5000000", "--dry-run"][..],
    ] {
        let (code, out, err) = run(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.trim().lines().count().min(1), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_eq!(f.live_rows().await, KEYS.len() as i64);
}
