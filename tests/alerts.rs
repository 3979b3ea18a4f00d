//! Alerting end to end: the Prometheus rules and the Grafana dashboard in `assets/` use only
//! metric names the tool exports (read from a real `serve` scrape and a real `stats -o
//! prometheus`), promtool accepts the rules and both expositions, and `mirrorctl check` exits
//! 0/1/2 (3 when it cannot run) on SQLite and PostgreSQL with data that breaches and data that
//! does not.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use common::{S3Server, TestDb};
use mirrorctl::engine::jobs::{audited, Progress, Report};
use mirrorctl::engine::model::{NewDownloadEvent, NewMirroredFile, NewOriginFile};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/prometheus/mirrorctl-alerts.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/grafana/mirrorctl.json");

/// promtool, or `None` (then the test is skipped, unless every tool was promised).
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !common::servers_required(),
            "promtool is not installed (scripts/test.sh installs it)"
        );
        eprintln!("promtool not installed (run scripts/test.sh): skipping");
    }
    found.then_some("promtool")
}

/// `promtool check metrics` on an exposition; panics with its output when it objects.
///
/// promtool (2.x) lints with the 0.0.4 text-format parser. serve answers OpenMetrics, where a
/// counter family `x` is announced by `# HELP x` / `# TYPE x counter` and its sample is
/// `x_total`; the 0.0.4 reading then finds `x_total` without help text (the same finding as
/// prometheus-net/prometheus-net#477). Exactly those findings are excused, for families the
/// exposition declares as counters; any other finding fails.
fn promtool_check_metrics(tool: &str, what: &str, text: &str) {
    let counters: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(|family| format!("{family}_total no help text"))
        .collect();
    let mut child = Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !counters.contains(*l))
        .collect();
    assert!(
        findings.is_empty(),
        "promtool check metrics on {what}: {findings:#?}\n{text}"
    );
    // Lint findings alone exit 3; a parse error exits 1, which nothing excuses.
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "promtool check metrics on {what} failed: {said}\n{text}"
    );
}

/// The sample names of an exposition (`name{labels} value` or `name value` lines).
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `mirrorctl_…` name a rules file or dashboard mentions.
fn names_used(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("mirrorctl_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn unknown_names(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.difference(exported).cloned().collect()
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    let Some(tool) = promtool() else { return };
    let out = Command::new(tool)
        .args(["check", "rules", RULES])
        .output()
        .expect("promtool");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
    // The dashboard is JSON whose queries all name a metric.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("dashboard"))
            .expect("json");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            assert!(!names_used(expr).is_empty(), "{expr}");
        }
    }
}

/// A mirrored file with its object in the bucket, served twice from the mirror (hits), and a
/// key the catalog does not know fetched from the origin (a miss): then the scrape of serve's
/// /metrics and `stats -o prometheus` on the same database go through promtool, and every
/// metric the rules and the dashboard name is one of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exported_metrics_pass_promtool_and_name_everything_the_assets_use() {
    let Some(tool) = promtool() else { return };
    let s3 = S3Server::s3s().await;
    let db = TestDb::sqlite().await;
    let (bucket_cfg, bucket) = s3.new_bucket("alerts").await;
    let (origin_url, origin) = common::origin::start_origin().await;
    origin
        .files
        .lock()
        .expect("origin")
        .insert("pkgs/new.bin".into(), Bytes::from(vec![7u8; 3000]));
    let body = vec![1u8; 1000];
    let etag = bucket
        .put_stream("pkgs/a.bin", &body[..], None)
        .await
        .expect("upload")
        .etag;
    let origin_ids = db
        .db
        .insert_origin_files(&[NewOriginFile {
            source: "http".into(),
            remote_id: "a".into(),
            file_name: "a.bin".into(),
            url: "pkgs/a.bin".into(),
            size: Some(1000),
            etag: None,
            updated_at: Utc::now() - TimeDelta::days(3),
        }])
        .await
        .expect("origin row");
    let ids = db
        .db
        .insert_mirrored_files(&[NewMirroredFile {
            origin_file_id: origin_ids[0],
            bucket: bucket.name().to_string(),
            key: "pkgs/a.bin".into(),
            size: 1000,
            sha256: None,
            etag,
            mirrored_at: Utc::now() - TimeDelta::days(2),
            is_stale: false,
            stale_reason: None,
        }])
        .await
        .expect("mirrored row");

    let mut cfg = common::config(&db.url, bucket_cfg.clone());
    cfg.origin.base_url = Some(origin_url.clone());
    cfg.serve.event_flush = mirrorctl::config::HumanDuration(Duration::from_millis(100));
    let ctx = mirrorctl::engine::Ctx::new(cfg, db.db.clone(), false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = mirrorctl::serve::start(Arc::new(ctx), listener)
        .await
        .expect("start serve");
    let base = format!("http://{}", server.addr());
    let http = common::http_client().no_proxy().build().expect("client");
    for url in [
        format!("{base}/download/{}", ids[0]),
        format!("{base}/download/{}", ids[0]),
        format!("{base}/files/pkgs/new.bin"),
    ] {
        let r = http.get(&url).send().await.expect("get");
        assert!(r.status().is_success(), "{url}: {}", r.status());
        r.bytes().await.expect("body");
    }
    // The DB-wide gauges appear once this replica holds the metrics lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        if text.contains("mirrorctl_storage_bytes ")
            && text.contains("mirrorctl_downloads_total{cache=\"miss\"} 1")
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no full scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    server.shutdown();
    server.wait().await.expect("shutdown");
    promtool_check_metrics(tool, "serve /metrics", &scrape);

    // The events serve recorded, as `stats -o prometheus` sees them.
    let dir = tempfile::tempdir().expect("dir");
    let config =
        common::write_config_file(dir.path(), &format!("[database]\nurl = \"{}\"\n", db.url));
    let out = common::command(&config)
        .args(["--headless", "stats", "-o", "prometheus"])
        .output()
        .expect("stats");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        stats.contains("mirrorctl_hits{window=\"24h\"} 2")
            && stats.contains("mirrorctl_misses{window=\"24h\"} 1"),
        "{stats}"
    );
    promtool_check_metrics(tool, "stats -o prometheus", &stats);

    let mut exported = sample_names(&scrape);
    exported.extend(sample_names(&stats));
    for must in [
        "mirrorctl_downloads_total",
        "mirrorctl_request_duration_seconds_count",
        "mirrorctl_storage_bytes",
        "mirrorctl_replication_lag_seconds",
        "mirrorctl_hit_rate",
    ] {
        assert!(exported.contains(must), "{must} not exported: {exported:?}");
    }
    for (file, min) in [(RULES, 10), (DASHBOARD, 15)] {
        let used = names_used(&std::fs::read_to_string(file).expect("read asset"));
        assert!(used.len() >= min, "{file}: only {used:?}");
        assert_eq!(
            unknown_names(&used, &exported),
            Vec::<String>::new(),
            "{file} names metrics the tool does not export"
        );
    }
    // The comparison catches a misspelling.
    let typo = names_used("sum(rate(mirrorctl_downlods_total[5m])) / mirrorctl_storage_bytes");
    assert_eq!(
        unknown_names(&typo, &exported),
        vec!["mirrorctl_downlods_total"]
    );
}

/// Runs `check` with `alerts` (and `costs`) appended to a config on `url`: exit code, stdout.
fn check(dir: &Path, url: &str, extra: &str, args: &[&str]) -> (i32, String) {
    let config = common::write_config_file(dir, &format!("[database]\nurl = \"{url}\"\n\n{extra}"));
    let out = common::command(&config)
        .arg("check")
        .args(args)
        .output()
        .expect("run check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn check_json(dir: &Path, url: &str, extra: &str) -> (i32, serde_json::Value) {
    let (code, out) = check(dir, url, extra, &["-o", "json"]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (code, v)
}

fn find<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} check in {v}"))
}

#[derive(serde::Serialize)]
struct Validated {
    checked: u32,
}
impl Report for Validated {}

const COSTS: &str = "[costs]\ncurrency = \"EUR\"\nstorage_per_gb_month = 10\negress_per_gb = 0.5\nper_1000_requests = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_0_1_2_and_3_on_both_databases() {
    for t in TestDb::all().await {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        let url = t.url.as_str();
        let db = &t.db;
        let now = Utc::now();
        let origin = db
            .insert_origin_files(&[NewOriginFile {
                source: "http".into(),
                remote_id: "big".into(),
                file_name: "big.bin".into(),
                url: "pkgs/big.bin".into(),
                size: Some(2_000_000_000),
                etag: None,
                updated_at: now - TimeDelta::days(3),
            }])
            .await
            .expect("origin");
        let ids = db
            .insert_mirrored_files(&[NewMirroredFile {
                origin_file_id: origin[0],
                bucket: "m".into(),
                key: "pkgs/big.bin".into(),
                size: 2_000_000_000,
                sha256: None,
                etag: None,
                mirrored_at: now - TimeDelta::days(2),
                is_stale: false,
                stale_reason: None,
            }])
            .await
            .expect("mirrored");
        // 90 hits of 10 MB and 10 misses in the last hour: hit rate 90 %, no errors.
        let ev = |cache_hit: bool, status: i16| NewDownloadEvent {
            occurred_at: now - TimeDelta::minutes(30),
            file_id: ids[0],
            cache_hit,
            bytes: 10_000_000,
            duration_ms: 5,
            status,
        };
        let mut events: Vec<_> = (0..90).map(|_| ev(true, 200)).collect();
        events.extend((0..10).map(|_| ev(false, 200)));
        db.record_downloads(&events).await.expect("events");

        // No thresholds: says so, exit 0; costs still estimated (2 GB × 10 = 20 EUR a month;
        // 0.9 GB saved × 0.5 − 90 GETs × 1/1000 = 0.36 EUR).
        let (code, out) = check(d, url, COSTS, &[]);
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with("OK - no thresholds configured"), "{out}");
        assert!(out.contains("storage cost 20.00 EUR per month"), "{out}");
        assert!(out.contains("saved 0.36 EUR in 24h"), "{out}");
        let (code, v) = check_json(d, url, COSTS);
        assert_eq!(code, 0);
        assert_eq!(v["status"], "ok");
        assert_eq!(v["configured"], false);
        assert!((v["costs"]["storage_per_month"].as_f64().unwrap_or(0.0) - 20.0).abs() < 1e-9);
        assert!((v["costs"]["saved"].as_f64().unwrap_or(0.0) - 0.36).abs() < 1e-9);

        let alerts = format!(
            "[alerts]\nhit_rate_below = 0.70\nerror_rate_above = 0.05\nstorage_cost_above = 100\n\
             validation_older_than = \"12h\"\nreplication_lag_above = \"5m\"\n\n{COSTS}"
        );
        // Never validated: critical, and the message says why.
        let (code, out) = check(d, url, &alerts, &[]);
        assert_eq!(code, 2, "{out}");
        assert!(
            out.starts_with("CRITICAL - validate has never finished successfully |"),
            "{out}"
        );
        // A validate run finishes: everything within its thresholds.
        let ctx = common::ctx(&t, mirrorctl::config::Config::default());
        audited(
            &ctx,
            "validate",
            &serde_json::json!({}),
            false,
            &Progress::none(),
            || async { Ok(Validated { checked: 1 }) },
        )
        .await
        .expect("validate row");
        let (code, out) = check(d, url, &alerts, &[]);
        assert_eq!(code, 0, "{out}");
        let first = out.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("OK - hit rate 90.0%, error rate 0.0%, storage cost/month 20.00 EUR"),
            "{out}"
        );
        assert!(
            first.contains(
                "| hit_rate=0.9;;0.7:;0;1 error_rate=0;;0.05;0;1 storage_cost=20;;100;0;"
            ),
            "{out}"
        );
        let (code, v) = check_json(d, url, &alerts);
        assert_eq!(code, 0);
        assert_eq!(v["status"], "ok");
        assert_eq!(find(&v, "replication_lag")["value"], 0.0);
        assert_eq!(v["checks"].as_array().map(Vec::len), Some(5));

        // A warning threshold the hit rate is under: exit 1.
        let warn = alerts.replace(
            "hit_rate_below = 0.70\n",
            "hit_rate_below = 0.70\nwarn_hit_rate_below = 0.95\n",
        );
        let (code, out) = check(d, url, &warn, &[]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.starts_with("WARNING - hit rate 90.0% < 95.0% |"),
            "{out}"
        );
        let (code, v) = check_json(d, url, &warn);
        assert_eq!(code, 1);
        assert_eq!(v["status"], "warning");
        assert_eq!(find(&v, "hit_rate")["status"], "warning");
        assert!((find(&v, "hit_rate")["value"].as_f64().unwrap_or(0.0) - 0.9).abs() < 1e-9);

        // A budget the storage is over: exit 2.
        let over = alerts.replace("storage_cost_above = 100", "storage_cost_above = 15");
        let (code, v) = check_json(d, url, &over);
        assert_eq!(code, 2, "{v}");
        assert_eq!(v["status"], "critical");
        let cost = find(&v, "storage_cost");
        assert_eq!(cost["status"], "critical");
        assert_eq!(cost["critical"], 15.0);
        assert!((cost["value"].as_f64().unwrap_or(0.0) - 20.0).abs() < 1e-9);

        // Failed downloads: 12 of 112 is 10.7 %, over 5 %.
        db.record_downloads(&(0..12).map(|_| ev(false, 502)).collect::<Vec<_>>())
            .await
            .expect("errors");
        let (code, out) = check(d, url, &alerts, &[]);
        assert_eq!(code, 2, "{out}");
        assert!(
            out.starts_with("CRITICAL - error rate 10.7% > 5.0% |"),
            "{out}"
        );
        assert!(out.contains("\nCRITICAL error_rate "), "{out}");
        assert!(out.contains("\nOK       hit_rate "), "{out}");

        // check itself failing is UNKNOWN (3), never 2.
        let (code, out) = check(d, url, &alerts, &["--window", "3w"]);
        assert_eq!(code, 3, "{out}");
        assert!(out.starts_with("UNKNOWN - bad window \"3w\""), "{out}");
        let (code, out) = check(d, url, &alerts, &["--no-such-flag"]);
        assert_eq!(code, 3, "{out}");
        assert!(out.starts_with("UNKNOWN - "), "{out}");
        let (code, out) = check(d, url, "[alerts]\nhit_rate_below = 70\n", &[]);
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("alerts.hit_rate_below"), "{out}");
        let (code, v) = check_json(d, "postgres://m:secret@127.0.0.1:1/none", &alerts);
        assert_eq!(code, 3, "{v}");
        assert_eq!(v["status"], "unknown");
        assert!(!v.to_string().contains("secret"), "{v}");
        // Other commands keep exit 2 for a bad config.
        let config = common::write_config_file(d, "[alerts]\nhit_rate_below = 70\n");
        let out = common::command(&config)
            .args(["--headless", "stats"])
            .output()
            .expect("stats");
        assert_eq!(out.status.code(), Some(2));
    }
}
