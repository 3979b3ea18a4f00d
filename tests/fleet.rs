//! The fleet of `serve` replicas on one database, on SQLite and (when
//! MIRRORCTL_TEST_DATABASE_URL is set) PostgreSQL: heartbeat tasks that make replicas `up`,
//! a clean stop that makes one `stopped`, an old heartbeat that makes one `gone`, the metrics
//! lease held by exactly one replica and taken over when its holder stops or dies, and
//! `mirrorctl --headless fleet` through the real binary.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use mirrorctl::config::Config;
use mirrorctl::engine::db::{Backend, Db, FleetBeat};
use mirrorctl::engine::ops::fleet::{self, FleetReport, ReplicaStatus};
use mirrorctl::engine::Ctx;
use mirrorctl::serve::fleet::{Instance, MetricsLease, Sample, Timing};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn backend(db: &TestDb) -> &'static str {
    match db.db.backend() {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

fn ctx(db: &TestDb) -> Ctx {
    common::ctx(db, Config::default())
}

fn instance(id: &str) -> Instance {
    Instance {
        id: id.to_string(),
        version: "9.9.9-test",
        hostname: "test-host".into(),
        listen: "127.0.0.1:0".into(),
        peer_url: Some(format!("http://{id}.internal:9090")),
        started_at: Utc::now(),
    }
}

/// A running heartbeat task with a fake load: `step` more requests on every sample.
struct Replica {
    id: String,
    lease: MetricsLease,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(db: &Db, id: &str, step: u64, timing: Timing) -> Replica {
        let requests = Arc::new(AtomicU64::new(0));
        let sample = move || Sample {
            requests_total: requests.fetch_add(step, Ordering::Relaxed) + step,
            fills_in_flight: 2,
            queue_depth: 5,
        };
        let lease = MetricsLease::default();
        let cancel = CancellationToken::new();
        let task = mirrorctl::serve::fleet::spawn_with(
            db.clone(),
            instance(id),
            sample,
            lease.clone(),
            cancel.clone(),
            timing,
        );
        Replica {
            id: id.to_string(),
            lease,
            cancel,
            task,
        }
    }

    /// A clean shutdown: the task marks the row stopped and gives the lease up.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the heartbeat task stops within 10 s")
            .expect("the heartbeat task does not panic");
    }
}

fn fast() -> Timing {
    Timing {
        heartbeat: Duration::from_millis(300),
        ..Timing::default()
    }
}

/// Polls the fleet until `done` holds for the report, up to `limit`.
async fn wait_for(
    ctx: &Ctx,
    limit: Duration,
    what: &str,
    done: impl Fn(&FleetReport) -> bool,
) -> FleetReport {
    let start = std::time::Instant::now();
    loop {
        let r = fleet::list(ctx, Utc::now()).await.expect("fleet list");
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; last report {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_of(r: &FleetReport, id: &str) -> Option<ReplicaStatus> {
    r.replicas
        .iter()
        .find(|x| x.instance_id == id)
        .map(|x| x.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_replicas_are_up_and_a_clean_stop_is_stopped() {
    for db in TestDb::all().await {
        let label = backend(&db);
        let ctx = ctx(&db);
        let a = Replica::start(&db.db, "replica-a", 100, fast());
        let b = Replica::start(&db.db, "replica-b", 10, fast());
        // Up, with a rate from two samples or more.
        let r = wait_for(&ctx, Duration::from_secs(10), label, |r| {
            r.totals.up == 2 && r.replicas.iter().all(|x| x.requests_per_s > 0.0)
        })
        .await;
        assert_eq!(r.totals.replicas, 2, "{label}");
        assert_eq!((r.totals.gone, r.totals.stopped), (0, 0), "{label}");
        let ra = r
            .replicas
            .iter()
            .find(|x| x.instance_id == "replica-a")
            .expect("replica-a listed");
        assert_eq!(ra.version, "9.9.9-test", "{label}");
        assert_eq!(ra.hostname, "test-host", "{label}");
        assert_eq!(
            ra.peer_url.as_deref(),
            Some("http://replica-a.internal:9090"),
            "{label}"
        );
        assert_eq!((ra.fills_in_flight, ra.queue_depth), (2, 5), "{label}");
        // 100 requests every 300 ms is about 333 per second (the ticks are not exact).
        assert!(
            (150.0..700.0).contains(&ra.requests_per_s),
            "{label}: replica-a at {} req/s",
            ra.requests_per_s
        );
        assert_eq!(
            (r.totals.fills_in_flight, r.totals.queue_depth),
            (4, 10),
            "{label}"
        );
        assert!(
            r.replicas.iter().all(|x| x.status == ReplicaStatus::Up),
            "{label}"
        );
        use mirrorctl::engine::jobs::Report;
        assert!(!r.found_problems(), "{label}");

        b.stop().await;
        let r = fleet::list(&ctx, Utc::now()).await.expect("fleet list");
        assert_eq!(
            status_of(&r, "replica-b"),
            Some(ReplicaStatus::Stopped),
            "{label}"
        );
        assert_eq!(
            status_of(&r, "replica-a"),
            Some(ReplicaStatus::Up),
            "{label}"
        );
        let rb = r
            .replicas
            .iter()
            .find(|x| x.instance_id == "replica-b")
            .expect("replica-b listed");
        assert!(rb.stopped_at.is_some(), "{label}");
        assert_eq!(
            rb.requests_per_s, 0.0,
            "{label}: a stopped replica has no load"
        );
        assert_eq!(
            (r.totals.up, r.totals.stopped, r.totals.fills_in_flight),
            (1, 1, 2),
            "{label}: totals count the replicas that are up"
        );
        assert!(
            !r.found_problems(),
            "{label}: a clean stop is not a problem"
        );
        // Some seconds on, a stopped replica is still stopped, not gone.
        let later = Utc::now() + TimeDelta::seconds(60);
        let r = fleet::list(&ctx, later).await.expect("fleet list");
        assert_eq!(
            status_of(&r, "replica-b"),
            Some(ReplicaStatus::Stopped),
            "{label}"
        );
        a.stop().await;
    }
}

fn beat(id: &str, at: DateTime<Utc>) -> FleetBeat {
    FleetBeat {
        instance_id: id.into(),
        version: "0.1.0".into(),
        hostname: "h1".into(),
        listen: "0.0.0.0:8080".into(),
        peer_url: None,
        started_at: at - TimeDelta::hours(1),
        heartbeat_at: at,
        requests_per_s: 12.5,
        fills_in_flight: 1,
        queue_depth: 3,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_heartbeat_without_a_stop_is_gone_and_old_rows_are_pruned() {
    for db in TestDb::all().await {
        let label = backend(&db);
        let ctx = ctx(&db);
        let now = Utc::now();
        db.db
            .heartbeat(&beat("fresh", now - TimeDelta::seconds(5)))
            .await
            .expect("beat");
        db.db
            .heartbeat(&beat("silent", now - TimeDelta::seconds(8)))
            .await
            .expect("beat");
        db.db
            .heartbeat(&beat("ancient", now - TimeDelta::hours(25)))
            .await
            .expect("beat");
        let r = fleet::list(&ctx, now).await.expect("fleet list");
        assert_eq!(status_of(&r, "fresh"), Some(ReplicaStatus::Up), "{label}");
        assert_eq!(
            status_of(&r, "silent"),
            Some(ReplicaStatus::Gone),
            "{label}"
        );
        assert_eq!(
            status_of(&r, "ancient"),
            Some(ReplicaStatus::Gone),
            "{label}"
        );
        assert_eq!((r.totals.up, r.totals.gone), (1, 2), "{label}");
        // Only replicas that are up count towards the load.
        assert_eq!(r.totals.requests_per_s, 12.5, "{label}");
        use mirrorctl::engine::jobs::Report;
        assert!(
            r.found_problems(),
            "{label}: a gone replica needs attention"
        );
        let silent = r
            .replicas
            .iter()
            .find(|x| x.instance_id == "silent")
            .expect("silent listed");
        assert_eq!(silent.heartbeat_age_s, 8, "{label}");

        // A stop, then a beat of the same instance: running again.
        db.db.fleet_stopped("silent", now).await.expect("stopped");
        let r = fleet::list(&ctx, now).await.expect("fleet list");
        assert_eq!(
            status_of(&r, "silent"),
            Some(ReplicaStatus::Stopped),
            "{label}"
        );
        db.db.heartbeat(&beat("silent", now)).await.expect("beat");
        let r = fleet::list(&ctx, now).await.expect("fleet list");
        assert_eq!(status_of(&r, "silent"), Some(ReplicaStatus::Up), "{label}");

        let pruned = db
            .db
            .prune_fleet(now - TimeDelta::hours(24))
            .await
            .expect("prune");
        assert_eq!(pruned, 1, "{label}");
        let ids: Vec<String> = db
            .db
            .fleet_list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.instance_id)
            .collect();
        assert_eq!(ids.len(), 2, "{label}: {ids:?}");
        assert!(!ids.contains(&"ancient".to_string()), "{label}: {ids:?}");
    }
}

/// Samples both flags for `span`, failing if both are ever held at once.
async fn never_both(a: &MetricsLease, b: &MetricsLease, span: Duration, label: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < span {
        assert!(
            !(a.held() && b.held()),
            "{label}: two replicas export the DB-wide metrics"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_held(l: &MetricsLease, limit: Duration, what: &str) -> Duration {
    let start = std::time::Instant::now();
    while !l.held() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_holds_the_metrics_lease_and_another_takes_it_over() {
    // Without a heartbeat task a process is alone and exports; with one, the lease decides.
    let lone = MetricsLease::default();
    assert!(lone.held());
    for db in TestDb::all().await {
        let label = backend(&db);
        let ctx = ctx(&db);
        // A short lease so that the crash below is over quickly.
        let timing = Timing {
            heartbeat: Duration::from_millis(300),
            metrics_ttl: Duration::from_secs(3),
        };
        let a = Replica::start(&db.db, "lease-a", 1, timing);
        let b = Replica::start(&db.db, "lease-b", 1, timing);
        let start = std::time::Instant::now();
        while !(a.lease.held() || b.lease.held()) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{label}: nobody took the metrics lease"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        never_both(&a.lease, &b.lease, Duration::from_secs(2), label).await;
        let (holder, other) = if a.lease.held() { (a, b) } else { (b, a) };
        assert!(holder.lease.held() && !other.lease.held(), "{label}");
        let r = fleet::list(&ctx, Utc::now()).await.expect("fleet list");
        assert_eq!(
            r.metrics_holder.as_deref(),
            Some(holder.id.as_str()),
            "{label}"
        );
        let exporters: Vec<&str> = r
            .replicas
            .iter()
            .filter(|x| x.exports_db_metrics)
            .map(|x| x.instance_id.as_str())
            .collect();
        assert_eq!(exporters, [holder.id.as_str()], "{label}");

        // A clean stop gives the lease up: the other takes it at its next beat.
        let holder_lease = holder.lease.clone();
        holder.stop().await;
        assert!(
            !holder_lease.held(),
            "{label}: a stopped replica exports nothing"
        );
        let took = until_held(&other.lease, Duration::from_millis(1200), label).await;
        eprintln!("{label}: taken over {took:?} after a clean stop");

        // A crash (the task dies without releasing): the lease runs out, then the other
        // replica takes it, not before.
        let third = Replica::start(&db.db, "lease-c", 1, timing);
        never_both(
            &other.lease,
            &third.lease,
            Duration::from_millis(900),
            label,
        )
        .await;
        assert!(other.lease.held() && !third.lease.held(), "{label}");
        other.task.abort();
        let _ = other.task.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !third.lease.held(),
            "{label}: the lease was taken before it expired"
        );
        let took = until_held(&third.lease, Duration::from_secs(6), label).await;
        eprintln!("{label}: taken over {took:?} (+0.5 s) after a crash");
        let r = fleet::list(&ctx, Utc::now()).await.expect("fleet list");
        assert_eq!(r.metrics_holder.as_deref(), Some("lease-c"), "{label}");
        third.stop().await;
        let r = fleet::list(&ctx, Utc::now()).await.expect("fleet list");
        assert_eq!(r.metrics_holder, None, "{label}: released on stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_fleet_prints_the_replicas_and_exits_3_when_one_is_gone() {
    for db in TestDb::all().await {
        let label = backend(&db);
        let dir = tempfile::tempdir().expect("temp dir");
        let config =
            common::write_config_file(dir.path(), &format!("[database]\nurl = {:?}\n", db.url));
        let run = |args: &[&str]| {
            let out = common::command(&config)
                .args(args)
                .output()
                .expect("run mirrorctl");
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                stderr,
            )
        };

        let (code, stdout, stderr) = run(&["--headless", "fleet"]);
        assert_eq!(code, Some(0), "{label}: {stderr}");
        assert!(stdout.contains("no serve replica"), "{label}: {stdout}");

        let now = Utc::now();
        db.db.heartbeat(&beat("web-1", now)).await.expect("beat");
        db.db
            .heartbeat(&beat("web-2", now - TimeDelta::minutes(5)))
            .await
            .expect("beat");
        let (code, stdout, stderr) = run(&["--headless", "fleet", "-o", "json"]);
        assert_eq!(code, Some(3), "{label}: a gone replica is exit 3: {stderr}");
        let v: Value = serde_json::from_str(&stdout).expect("one JSON document");
        let replicas = v["replicas"].as_array().expect("replicas array");
        assert_eq!(replicas.len(), 2, "{label}: {v}");
        let by_id = |id: &str| {
            replicas
                .iter()
                .find(|r| r["instance_id"] == id)
                .unwrap_or_else(|| panic!("{label}: {id} missing in {v}"))
        };
        let web1 = by_id("web-1");
        assert_eq!(web1["status"], "up", "{label}");
        for key in [
            "version",
            "hostname",
            "listen",
            "peer_url",
            "started_at",
            "heartbeat_at",
            "heartbeat_age_s",
            "stopped_at",
            "requests_per_s",
            "fills_in_flight",
            "queue_depth",
            "exports_db_metrics",
        ] {
            assert!(web1.get(key).is_some(), "{label}: no {key} in {web1}");
        }
        assert_eq!(web1["requests_per_s"], 12.5, "{label}");
        assert_eq!(by_id("web-2")["status"], "gone", "{label}");
        assert!(
            by_id("web-2")["heartbeat_age_s"].as_i64().unwrap_or(0) >= 300,
            "{label}"
        );
        assert_eq!(v["totals"]["up"], 1, "{label}");
        assert_eq!(v["totals"]["gone"], 1, "{label}");
        assert_eq!(v["totals"]["requests_per_s"], 12.5, "{label}");
        assert_eq!(v["gone_after_s"], 6, "{label}");

        let (code, stdout, _) = run(&["--headless", "fleet"]);
        assert_eq!(code, Some(3), "{label}");
        for needle in [
            "INSTANCE",
            "STATUS",
            "HEARTBEAT",
            "REQ/S",
            "web-1",
            "web-2",
            "gone",
            "5m ago",
        ] {
            assert!(
                stdout.contains(needle),
                "{label}: no {needle:?} in\n{stdout}"
            );
        }

        // Once the silent one is known to have stopped cleanly, nothing needs attention.
        db.db.fleet_stopped("web-2", now).await.expect("stopped");
        let (code, stdout, stderr) = run(&["--headless", "fleet", "-o", "json"]);
        assert_eq!(code, Some(0), "{label}: {stderr}");
        let v: Value = serde_json::from_str(&stdout).expect("one JSON document");
        assert_eq!(v["totals"]["stopped"], 1, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_database_drops_the_metrics_lease() {
    for db in TestDb::all().await {
        let label = backend(&db);
        // The replica's own pool, so that closing it leaves the test's connection open.
        let own = Db::connect(&db.url, 2, Duration::from_secs(5))
            .await
            .expect("connect");
        let r = Replica::start(&own, "cut-off", 1, fast());
        until_held(&r.lease, Duration::from_secs(5), label).await;
        own.close().await;
        let start = std::time::Instant::now();
        while r.lease.held() {
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{label}: still exporting without a database"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // It keeps running (retrying every beat) and still stops when asked.
        assert!(!r.task.is_finished(), "{label}");
        r.stop().await;
    }
}
