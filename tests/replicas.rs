//! Several `serve` replicas on one PostgreSQL database and one bucket (the Garage cluster
//! scripts/test.sh starts, each replica talking to its own node, or a single S3 server), as a
//! real deployment runs them: one origin fetch and one upload per missing file across the
//! fleet, no purged row revived by a fill, changes seen by every replica within a second.
//! Every request goes over real sockets; the mirror's writes are counted by a pass-through
//! proxy in front of each node.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use common::origin::{content, sha256, start_origin, Origin};
use common::proxy::FaultProxy;
use common::{S3Server, TestDb};
use mirrorctl::config::{BucketConfig, Config, HumanDuration, Secret};
use mirrorctl::engine::db::Db;
use mirrorctl::engine::model::{NewMirroredFile, NewOriginFile};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;
use mirrorctl::serve::Server;

const TOKEN: &str = "replica-test-token-0123456789";

struct Replica {
    server: Server,
    base: String,
}

struct Fleet {
    origin: Arc<Origin>,
    origin_url: String,
    db: TestDb,
    bucket: S3Bucket,
    /// One proxy per node, in front of which one replica talks to the bucket.
    proxies: Vec<FaultProxy>,
    node_configs: Vec<BucketConfig>,
    keys: Vec<String>,
    origin_ids: Vec<i64>,
    bodies: Vec<Vec<u8>>,
    http: reqwest::Client,
    /// Kept alive for the test (an in-process server stops when dropped).
    _nodes: Vec<S3Server>,
}

impl Fleet {
    /// `None` when PostgreSQL or S3 is not configured (and not required).
    async fn new(files: usize, size: usize) -> Option<Fleet> {
        Fleet::on(TestDb::postgres().await?, files, size).await
    }

    async fn on(db: TestDb, files: usize, size: usize) -> Option<Fleet> {
        let nodes = match S3Server::garage_cluster() {
            Some(n) => n,
            None => {
                assert!(!common::servers_required(), "no Garage configured");
                vec![S3Server::s3s().await]
            }
        };
        let (cfg, bucket) = nodes[0].new_bucket("replicas").await;
        let mut proxies = Vec::new();
        let mut node_configs = Vec::new();
        for i in 0..3 {
            let node = &nodes[i % nodes.len()];
            let proxy = FaultProxy::start(&node.endpoint).await;
            let mut c = node.bucket_config(&cfg.bucket);
            c.endpoint = Some(proxy.endpoint.clone());
            node_configs.push(c);
            proxies.push(proxy);
        }
        let (origin_url, origin) = start_origin().await;
        let mut f = Fleet {
            origin,
            origin_url,
            db,
            bucket,
            proxies,
            node_configs,
            keys: Vec::new(),
            origin_ids: Vec::new(),
            bodies: Vec::new(),
            http: common::http_client().no_proxy().build().expect("client"),
            _nodes: nodes,
        };
        let mut rows = Vec::new();
        for i in 0..files {
            let key = format!("pkgs/{i}/pkg-{i}.tar");
            let data = content(i, 1, size);
            f.origin
                .files
                .lock()
                .expect("origin files")
                .insert(key.clone(), Bytes::from(data.clone()));
            rows.push(NewOriginFile {
                source: "http".into(),
                remote_id: format!("p{i}"),
                file_name: format!("pkg-{i}.tar"),
                url: key.clone(),
                size: Some(size as i64),
                etag: None,
                updated_at: Utc::now() - TimeDelta::days(1),
            });
            f.keys.push(key);
            f.bodies.push(data);
        }
        f.origin_ids = f.db.db.insert_origin_files(&rows).await.expect("catalog");
        Some(f)
    }

    fn config(&self, node: usize) -> Config {
        let mut c = common::config(&self.db.url, self.node_configs[node].clone());
        c.origin.base_url = Some(self.origin_url.clone());
        c.origin.retries = 0;
        c.origin.timeout = HumanDuration(Duration::from_secs(20));
        c.serve.event_flush = HumanDuration(Duration::from_millis(200));
        c.serve.shutdown_timeout = HumanDuration(Duration::from_secs(20));
        c.serve.admin_token = Some(Secret::new(TOKEN));
        c
    }

    /// A replica with its own database pool, listener and admin listener.
    async fn replica(&self, node: usize, config: Config) -> Replica {
        let db = Db::connect(&self.db.url, 8, Duration::from_secs(5))
            .await
            .expect("replica pool");
        let ctx = Ctx::new(config, db, false);
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (listener, admin) = (bind().await.expect("bind"), bind().await.expect("bind"));
        let server = mirrorctl::serve::start_with_admin(Arc::new(ctx), listener, Some(admin))
            .await
            .unwrap_or_else(|e| panic!("start replica {node}: {e}"));
        let base = format!("http://{}", server.addr());
        Replica { server, base }
    }

    async fn fleet(&self) -> Vec<Replica> {
        let mut v = Vec::new();
        for node in 0..3 {
            v.push(self.replica(node, self.config(node)).await);
        }
        v
    }

    fn writes(&self) -> u64 {
        self.proxies
            .iter()
            .map(|p| p.faults.writes.load(Ordering::SeqCst))
            .sum()
    }

    async fn get(&self, url: &str) -> (u16, String, Vec<u8>) {
        let r = self.http.get(url).send().await.expect("request");
        let status = r.status().as_u16();
        let cache = r
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, cache, r.bytes().await.expect("body").to_vec())
    }

    /// A replica's `/metrics` text.
    async fn metrics(&self, r: &Replica) -> String {
        let m = self.http.get(format!("{}/metrics", r.base)).send().await;
        m.expect("metrics").text().await.expect("metrics text")
    }

    fn url(&self, r: &Replica, i: usize) -> String {
        format!("{}/files/{}", r.base, self.keys[i])
    }
}

async fn stop(replicas: Vec<Replica>) {
    for r in &replicas {
        r.server.shutdown();
    }
    for r in replicas {
        r.server.wait().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_requests_over_three_replicas_fetch_and_upload_each_file_once() {
    let Some(f) = Fleet::new(20, 256 * 1024).await else {
        return;
    };
    // Slow enough that the three requests of a file overlap on three replicas.
    f.origin.chunk_delay_ms.store(40, Ordering::SeqCst);
    let replicas = f.fleet().await;
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..20 {
        for r in &replicas {
            let (url, http) = (f.url(r, i), f.http.clone());
            requests.push(tokio::spawn(async move {
                let resp = http.get(&url).send().await.expect("request");
                let status = resp.status().as_u16();
                (i, status, resp.bytes().await.expect("body").to_vec())
            }));
        }
    }
    for req in requests {
        let (i, status, body) = req.await.expect("task");
        assert_eq!(status, 200, "file {i}");
        assert_eq!(sha256(&body), sha256(&f.bodies[i]), "file {i} byte-exact");
    }
    eprintln!("60 requests over 3 replicas in {:?}", started.elapsed());
    assert_eq!(f.origin.gets.load(Ordering::SeqCst), 20, "origin fetches");
    // Uploads finish after the bodies: wait for the rows.
    for key in &f.keys {
        let mut ok = false;
        for _ in 0..100 {
            if let Some(r) = f.db.db.get_file_by_key(key).await.expect("db") {
                if !r.is_stale && r.deleted_at.is_none() {
                    ok = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "{key} stored");
    }
    assert_eq!(f.writes(), 20, "PUTs to the mirror");
    let mut from_peer = 0;
    for r in &replicas {
        from_peer += f
            .metrics(r)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("mirrorctl_fills_from_peer_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("fills_from_peer metric");
    }
    eprintln!("misses streamed from another replica's fill: {from_peer} of 40");
    assert!(from_peer > 0, "no replica streamed another's fill");
    // Every file once more, on every replica: hits now, with the ETag the misses sent.
    for i in 0..20 {
        for r in &replicas {
            let (status, cache, body) = f.get(&f.url(r, i)).await;
            assert_eq!((status, cache.as_str()), (200, "HIT"), "file {i}");
            assert_eq!(body, f.bodies[i]);
        }
    }
    assert_eq!(f.origin.gets.load(Ordering::SeqCst), 20);
    assert_eq!(f.writes(), 20);
    // The fleet table lists the three, one of them exporting the DB-wide gauges.
    let ctx = common::ctx(&f.db, f.config(0));
    let mut fleet = mirrorctl::engine::ops::fleet::list(&ctx, Utc::now())
        .await
        .expect("fleet");
    for _ in 0..50 {
        if fleet.totals.up == 3 && fleet.metrics_holder.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        fleet = mirrorctl::engine::ops::fleet::list(&ctx, Utc::now())
            .await
            .expect("fleet");
    }
    assert_eq!(fleet.totals.up, 3, "{fleet:?}");
    assert!(fleet.totals.requests_per_s >= 0.0);
    let mut gauges = 0;
    for r in &replicas {
        if f.metrics(r).await.contains("mirrorctl_storage_objects ") {
            gauges += 1;
        }
    }
    assert_eq!(
        gauges, 1,
        "DB-wide gauges from the metrics lease holder only"
    );
    stop(replicas).await;
    let fleet = mirrorctl::engine::ops::fleet::list(&ctx, Utc::now())
        .await
        .expect("fleet");
    assert_eq!(fleet.totals.stopped, 3, "{fleet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_during_fills_is_not_undone_by_them() {
    let Some(f) = Fleet::new(6, 512 * 1024).await else {
        return;
    };
    // Stale copies in the mirror: the fills below replace them, unless the purge wins.
    let ids = &f.origin_ids;
    let mut rows = Vec::new();
    for (i, key) in f.keys.iter().enumerate() {
        let old = content(i, 0, 1000);
        f.bucket
            .put_stream(key, &old[..], None)
            .await
            .expect("old copy");
        rows.push(NewMirroredFile {
            origin_file_id: ids[i],
            bucket: f.bucket.name().to_string(),
            key: key.clone(),
            size: old.len() as i64,
            sha256: Some(sha256(&old)),
            etag: None,
            mirrored_at: Utc::now() - TimeDelta::days(5),
            is_stale: true,
            stale_reason: Some("origin changed".into()),
        });
    }
    f.db.db.insert_mirrored_files(&rows).await.expect("rows");
    f.origin.chunk_delay_ms.store(100, Ordering::SeqCst);
    let replicas = f.fleet().await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let (url, http) = (f.url(&replicas[i % 3], i), f.http.clone());
        clients.push(tokio::spawn(async move {
            http.get(&url).send().await.expect("request").bytes().await
        }));
    }
    // While the origin streams (8 chunks, 100 ms apart), purge every stale file.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ctx = common::ctx(&f.db, f.config(0));
    let progress = mirrorctl::engine::jobs::Progress::quiet(Default::default());
    let params = mirrorctl::engine::ops::purge::PurgeParams {
        target: mirrorctl::engine::ops::purge::PurgeTarget::Stale,
        dry_run: false,
        max_delete: None,
        yes: true,
        prefix: None,
        pattern: None,
        impact_days: mirrorctl::engine::ops::purge::DEFAULT_IMPACT_DAYS,
    };
    let report = mirrorctl::engine::ops::purge::run(&ctx, params, &progress)
        .await
        .expect("purge");
    eprintln!("purge during fills: {report}");
    for c in clients {
        let _ = c.await.expect("task");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut revived = 0;
    for key in &f.keys {
        let row =
            f.db.db
                .get_file_by_key(key)
                .await
                .expect("db")
                .expect("row");
        if row.deleted_at.is_none() {
            revived += 1;
        } else {
            assert!(
                f.bucket.head(key).await.expect("head").is_none(),
                "{key}: a purged file's object was left behind"
            );
        }
    }
    assert_eq!(revived, 0, "purged rows revived by fills");
    stop(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_mark_made_elsewhere_is_seen_by_every_replica_within_a_second() {
    let Some(f) = Fleet::new(1, 4096).await else {
        return;
    };
    stale_mark_is_seen_within_a_second(f, Duration::from_millis(1000)).await;
}

/// SQLite has no NOTIFY: the replicas read its change log (migration 0016) every 250 ms. The
/// wait is shorter than a second so that a row cached for a second (as before the change log)
/// would still be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqlite_too_a_stale_mark_is_seen_by_every_replica_within_a_second() {
    let Some(f) = Fleet::on(TestDb::sqlite().await, 1, 4096).await else {
        return;
    };
    stale_mark_is_seen_within_a_second(f, Duration::from_millis(600)).await;
}

async fn stale_mark_is_seen_within_a_second(f: Fleet, wait: Duration) {
    let replicas = f.fleet().await;
    // First copy, then a hit on every replica (each caches the row).
    let (status, _, _) = f.get(&f.url(&replicas[0], 0)).await;
    assert_eq!(status, 200);
    let mut fresh = false;
    for _ in 0..100 {
        if let Some(r) = f.db.db.get_file_by_key(&f.keys[0]).await.expect("db") {
            if !r.is_stale {
                fresh = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fresh);
    for r in &replicas {
        let (_, cache, _) = f.get(&f.url(r, 0)).await;
        assert_eq!(cache, "HIT");
    }
    // Another process marks it stale (as a validation would).
    let other = Db::connect(&f.db.url, 1, Duration::from_secs(5))
        .await
        .expect("pool");
    let row = other
        .get_file_by_key(&f.keys[0])
        .await
        .expect("db")
        .expect("row");
    other
        .record_validation(
            &[],
            &[],
            &[mirrorctl::engine::db::StaleMark {
                id: row.id,
                reason: "origin_changed".into(),
            }],
            Utc::now(),
        )
        .await
        .expect("mark stale");
    let marked = Instant::now();
    tokio::time::sleep(wait).await;
    // All at once: one of them refills the file, and a later request could see the new copy.
    let urls: Vec<String> = replicas.iter().map(|r| f.url(r, 0)).collect();
    let answers = futures::future::join_all(urls.iter().map(|u| f.get(u))).await;
    for (n, (status, cache, body)) in answers.into_iter().enumerate() {
        assert_eq!(status, 200);
        assert_eq!(
            cache,
            "MISS",
            "replica {n} still served its cached row {:?} after the mark",
            marked.elapsed()
        );
        assert_eq!(body, f.bodies[0]);
    }
    stop(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_fill_holder_blocks_its_file_only_until_its_lease_expires() {
    let Some(f) = Fleet::new(1, 4096).await else {
        return;
    };
    // A replica took the file's lease, advertised a peer address nobody answers on, and died.
    let name = format!("fill:{}/{}", f.bucket.name(), f.keys[0]);
    let taken =
        f.db.db
            .try_lease(
                &name,
                "crashed-replica",
                Some("http://127.0.0.1:9"),
                Duration::from_secs(3),
                Utc::now(),
            )
            .await
            .expect("lease");
    assert_eq!(taken, mirrorctl::engine::db::Leased::Acquired);
    let r = f.replica(0, f.config(0)).await;
    let started = Instant::now();
    let (status, cache, body) = f.get(&f.url(&r, 0)).await;
    let waited = started.elapsed();
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert_eq!(body, f.bodies[0]);
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(8),
        "waited {waited:?} for a lease of 3 s (stored with second precision)"
    );
    assert_eq!(f.origin.gets.load(Ordering::SeqCst), 1);
    stop(vec![r]).await;
}
