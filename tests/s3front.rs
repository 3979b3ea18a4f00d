//! The S3 front of `serve` (seed 004) against real servers: a real S3 client (the AWS SDK,
//! through the engine's bucket type) signs with a key the front issued; the front forwards to
//! the main bucket, records the inventory and a replication task, and its workers copy to the
//! backup. Main and backup on one Garage (server-side copies) and on two s3s-fs endpoints
//! (streamed copies); SQLite and PostgreSQL. Also: bad signatures, the backup down for a while,
//! and the claim rules that keep a stale task from overwriting a newer object.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use common::{S3Server, TestDb};
use mirrorctl::config::{BucketConfig, Config, FrontClient, Secret};
use mirrorctl::engine::db::{FrontWrite, TaskEnd, WrittenObject};
use mirrorctl::engine::ops::replication;
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;
use mirrorctl::serve::{Listeners, Server};
use tokio::net::TcpListener;

const APP_KEY: &str = "APPKEY0123456789";
const APP_SECRET: &str = "app-secret-0123456789abcdef";

struct Front {
    server: Server,
    ctx: Arc<Ctx>,
    /// The app's view: the main bucket's name at the front's address, the app's keys.
    app: S3Bucket,
    main: S3Bucket,
    backup: S3Bucket,
}

fn front_config(db: &TestDb, main: BucketConfig, backup: BucketConfig) -> Config {
    let mut c = common::config(&db.url, main.clone());
    c.buckets.backup = Some(backup);
    c.s3_front.clients = vec![FrontClient {
        name: "app".into(),
        access_key_id: APP_KEY.into(),
        secret_access_key: Secret::new(APP_SECRET),
        buckets: vec![main.bucket.clone()],
    }];
    c
}

async fn start_front(db: &TestDb, config: Config) -> Front {
    let main_cfg = config.buckets.mirror.clone().expect("main");
    let ctx = Arc::new(common::ctx(db, config));
    let main = ctx.main().await.expect("main").clone();
    let backup = ctx.backup().await.expect("backup").clone();
    let bind = || TcpListener::bind("127.0.0.1:0");
    let server = mirrorctl::serve::start_listeners(
        ctx.clone(),
        Listeners {
            download: bind().await.expect("bind"),
            admin: None,
            s3: Some(bind().await.expect("bind s3")),
            connection_threads: None,
        },
    )
    .await
    .expect("serve starts");
    let addr = server.s3_addr().expect("s3 front address");
    let mut app_cfg = BucketConfig::with_static_keys(
        &main_cfg.bucket,
        &format!("http://{addr}"),
        APP_KEY,
        APP_SECRET,
    );
    // Small parts, so a 12 MiB upload is a multipart upload through the front.
    app_cfg.multipart_threshold.0 = 5 * 1024 * 1024;
    app_cfg.part_size.0 = 5 * 1024 * 1024;
    let app = S3Bucket::connect(&app_cfg).await.expect("app client");
    Front {
        server,
        ctx,
        app,
        main,
        backup,
    }
}

impl Front {
    async fn stop(self) {
        self.server.shutdown();
        self.server.wait().await.expect("serve stops");
    }

    /// Waits until no replication task is pending; fails after `limit`.
    async fn drained(&self, limit: Duration) -> replication::ReplicationStatus {
        let start = Instant::now();
        loop {
            let s = replication::status(&self.ctx, Utc::now())
                .await
                .expect("status");
            if s.pending == 0 {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "replication did not drain within {limit:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every object of a bucket: key -> (size, SHA-256 of the body).
async fn contents(b: &S3Bucket) -> BTreeMap<String, (u64, String)> {
    use futures::TryStreamExt;
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncReadExt;
    let mut out = BTreeMap::new();
    let pages: Vec<Vec<_>> = b
        .list_pages(String::new(), None, 1000)
        .try_collect()
        .await
        .expect("list");
    for o in pages.into_iter().flatten() {
        let mut got = b.get(&o.key, None).await.expect("get").expect("exists");
        let mut body = Vec::new();
        got.body.read_to_end(&mut body).await.expect("read");
        out.insert(o.key, (o.size, hex::encode(Sha256::digest(&body))));
    }
    out
}

/// Bodies that differ by key (`i`, modulo 19) and version.
/// Every object of a bucket by its listing: key -> (size, ETag).
async fn listing(b: &S3Bucket) -> BTreeMap<String, (u64, Option<String>)> {
    use futures::TryStreamExt;
    let pages: Vec<Vec<_>> = b
        .list_pages(String::new(), None, 1000)
        .try_collect()
        .await
        .expect("list");
    pages
        .into_iter()
        .flatten()
        .map(|o| (o.key, (o.size, o.etag)))
        .collect()
}

fn body(i: usize, version: u8, size: usize) -> Bytes {
    Bytes::from(common::origin::content(i % 19, version, size))
}

/// Writes, overwrites, deletes, a multipart upload and a copy through the front; once the
/// queue drains, main, backup and the inventory hold the same objects.
async fn writes_converge(db: &TestDb, main: BucketConfig, backup: BucketConfig, label: &str) {
    let f = start_front(db, front_config(db, main, backup)).await;
    for i in 0..20 {
        f.app
            .put_bytes(&format!("objs/{i:02}.bin"), body(i, 1, 1000 + i * 37), None)
            .await
            .expect("put through the front");
    }
    for i in 0..5 {
        f.app
            .put_bytes(&format!("objs/{i:02}.bin"), body(i, 2, 3000 + i), None)
            .await
            .expect("overwrite");
    }
    let gone: Vec<String> = (15..20).map(|i| format!("objs/{i:02}.bin")).collect();
    let report = f.app.delete_batch(&gone).await.expect("delete objects");
    assert_eq!(report.deleted.len(), 5, "{label}: {:?}", report.failed);
    f.app.delete("objs/14.bin").await.expect("delete object");
    let big = body(99, 1, 12 * 1024 * 1024 + 5);
    let put = f
        .app
        .put_stream(
            "big/multipart.bin",
            &big[..],
            Some("application/octet-stream"),
        )
        .await
        .expect("multipart upload through the front");
    assert!(put.parts > 1, "{label}: the upload was multipart");
    f.app
        .forward_copy("objs/00.bin", "copies/00.bin", None, None)
        .await
        .expect("copy through the front");

    let s = f.drained(Duration::from_secs(60)).await;
    assert_eq!(s.failed, 0, "{label}: {s}");
    let in_main = contents(&f.main).await;
    let in_backup = contents(&f.backup).await;
    assert_eq!(
        in_main.len(),
        16,
        "{label}: 14 objects, the multipart one and the copy"
    );
    assert!(!in_main.contains_key("objs/14.bin") && !in_main.contains_key("objs/19.bin"));
    assert_eq!(
        in_main["objs/00.bin"].1,
        common::origin::sha256(&body(0, 2, 3000)),
        "{label}: the overwrite won"
    );
    assert_eq!(in_main["copies/00.bin"], in_main["objs/00.bin"]);
    assert_eq!(in_main["big/multipart.bin"].0, big.len() as u64);
    assert_eq!(
        in_backup, in_main,
        "{label}: the backup holds exactly what main holds"
    );

    let rows = f
        .ctx
        .db
        .inventory_page(None, 1000)
        .await
        .expect("inventory");
    let live: BTreeMap<String, i64> = rows.iter().map(|r| (r.path.clone(), r.size)).collect();
    let expect: BTreeMap<String, i64> = in_main
        .iter()
        .map(|(k, (size, _))| (k.clone(), *size as i64))
        .collect();
    assert_eq!(live, expect, "{label}: the inventory lists what main holds");
    assert!(
        rows.iter().all(|r| r.is_backed_up),
        "{label}: every row backed up"
    );
    for k in &gone {
        let st = f
            .ctx
            .db
            .inventory_state(k)
            .await
            .expect("state")
            .expect("row kept");
        assert!(st.deleted, "{label}: {k} soft-deleted");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_the_front_reach_main_inventory_and_backup() {
    for db in TestDb::all().await {
        let backend = format!("{:?}", db.db.backend());
        // Two endpoints: the backup is written by streaming (GET from main, PUT to backup).
        let (a, b) = (S3Server::s3s().await, S3Server::s3s().await);
        let (main, _) = a.new_bucket("front-main").await;
        let (backup, _) = b.new_bucket("front-backup").await;
        writes_converge(&db, main, backup, &format!("s3s-fs/{backend}")).await;
        // One endpoint: server-side copies.
        if let Some(g) = S3Server::garage() {
            let (main, _) = g.new_bucket("front-main").await;
            let (backup, _) = g.new_bucket("front-backup").await;
            writes_converge(&db, main, backup, &format!("garage/{backend}")).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_signature_or_unknown_key_gets_403_and_writes_nothing() {
    let db = TestDb::sqlite().await;
    let s = S3Server::s3s().await;
    let (main, _) = s.new_bucket("front-main").await;
    let (backup, _) = s.new_bucket("front-backup").await;
    let f = start_front(&db, front_config(&db, main.clone(), backup)).await;
    let addr = format!("http://{}", f.server.s3_addr().expect("addr"));
    for (key, secret, why) in [
        (APP_KEY, "not-the-secret-0123456789", "a wrong secret"),
        ("UNKNOWNKEY0123", APP_SECRET, "an unknown key"),
        // The main bucket's own keys are not the front's: apps never hold them.
        (s.key.as_str(), s.secret.as_str(), "the main bucket's keys"),
    ] {
        let cfg = BucketConfig::with_static_keys(&main.bucket, &addr, key, secret);
        let bad = S3Bucket::connect(&cfg).await.expect("client");
        let err = bad
            .put_bytes("x/refused.bin", Bytes::from_static(b"nope"), None)
            .await
            .expect_err(why);
        let msg = err.to_string();
        assert!(
            msg.contains("credentials rejected")
                || msg.contains("access denied")
                || msg.contains("403"),
            "{why}: {msg}"
        );
    }
    // A bucket the key may not use.
    let other = BucketConfig::with_static_keys("someone-elses", &addr, APP_KEY, APP_SECRET);
    let other = S3Bucket::connect(&other).await.expect("client");
    let err = other
        .put_bytes("x/refused.bin", Bytes::from_static(b"nope"), None)
        .await
        .expect_err("another bucket");
    assert!(err.to_string().contains("access denied"), "{err}");

    assert!(f.main.head("x/refused.bin").await.expect("head").is_none());
    assert!(f
        .ctx
        .db
        .inventory_page(None, 10)
        .await
        .expect("inv")
        .is_empty());
    let st = replication::status(&f.ctx, Utc::now())
        .await
        .expect("status");
    assert_eq!((st.pending, st.failed), (0, 0));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_backup_down_grows_an_honest_backlog_that_drains_once_it_is_back() {
    let db = TestDb::sqlite().await;
    let s = S3Server::s3s().await;
    let (main, _) = s.new_bucket("front-main").await;
    let (backup_real, _) = s.new_bucket("front-backup").await;
    let proxy = common::proxy::FaultProxy::start(&s.endpoint).await;
    proxy
        .faults
        .fail_writes
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let mut backup = backup_real.clone();
    backup.endpoint = Some(proxy.endpoint.clone());
    let f = start_front(&db, front_config(&db, main, backup)).await;
    for i in 0..40 {
        f.app
            .put_bytes(&format!("down/{i}.bin"), body(i, 1, 2048), None)
            .await
            .expect("writes are accepted while the backup is down");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s1 = replication::status(&f.ctx, Utc::now())
        .await
        .expect("status");
    assert_eq!(s1.pending, 40, "{s1}");
    assert_eq!(s1.pending_bytes, 40 * 2048, "{s1}");
    assert!(
        s1.lag_s >= 2.0,
        "the lag is the age of the oldest task: {s1}"
    );
    assert!(
        s1.troubled.iter().any(|t| t
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("InternalError"))),
        "failing tasks show their error: {:?}",
        s1.troubled
    );
    let tried_before = proxy
        .faults
        .requests
        .load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let s2 = replication::status(&f.ctx, Utc::now())
        .await
        .expect("status");
    assert!(
        s2.lag_s >= s1.lag_s + 0.9,
        "the lag keeps growing: {s1} then {s2}"
    );

    // After 5 failures in a row, one attempt a second (each retried by the S3 client up to 4
    // times), not 40 tasks retrying on their own schedules.
    let tried = proxy
        .faults
        .requests
        .load(std::sync::atomic::Ordering::SeqCst)
        - tried_before;
    assert!(
        tried <= 16,
        "a backup that is down is probed, not hammered: {tried} requests in 3 s"
    );
    proxy
        .faults
        .fail_writes
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let back = Instant::now();
    let done = f.drained(Duration::from_secs(30)).await;
    eprintln!("drained {:?} after the backup came back", back.elapsed());
    assert_eq!(done.failed, 0, "{done}");
    let main_objs = contents(&f.main).await;
    let real_backup = S3Bucket::connect(&backup_real).await.expect("backup");
    assert_eq!(contents(&real_backup).await, main_objs);
    f.stop().await;
}

/// One batch of writes that writes a path twice, then deletes it, next to another path:
/// each write gets its own version, in order, every intent becomes a task, and the inventory
/// ends as the last write left it (a delete keeps the last object's figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_records_each_write_of_a_path_in_order() {
    for db in TestDb::all().await {
        let d = &db.db;
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let paths = [("a", false), ("b", false), ("a", false), ("a", true)];
        let ids = d
            .begin_front_writes(&paths, "writer-1", now, later)
            .await
            .expect("intents");
        let sizes = [Some(1), Some(7), Some(2), None];
        let writes: Vec<(i64, FrontWrite)> = paths
            .iter()
            .zip(&ids)
            .zip(sizes)
            .map(|(((path, _), id), size)| {
                let object = size.map(|size| WrittenObject {
                    size,
                    etag: Some(format!("etag-{size}")),
                    content_type: Some("text/plain".into()),
                    last_modified: Some(now),
                });
                let path = path.to_string();
                (*id, FrontWrite { path, object })
            })
            .collect();
        let versions = d.record_front_writes(&writes, now).await.expect("record");
        assert_eq!(versions, [1, 1, 2, 3], "{}", db.url);
        let a = d.inventory_state("a").await.expect("a").expect("a's row");
        assert!(a.deleted && a.size == 2 && a.version == 3, "{a:?}");
        assert_eq!(a.etag.as_deref(), Some("etag-2"));
        let b = d.inventory_state("b").await.expect("b").expect("b's row");
        assert!(!b.deleted && b.size == 7 && b.version == 1, "{b:?}");
        let st = replication::status(&common::ctx(&db, Config::default()), now)
            .await
            .expect("status");
        assert_eq!((st.pending, st.in_flight), (4, 0), "{}: {st}", db.url);
    }
}

/// The claim rules, straight on the database: one worker per path, and a task finished for
/// an older version leaves the newer one pending and the row not backed up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_per_path_and_a_stale_copy_never_marks_a_newer_version_done() {
    for db in TestDb::all().await {
        let d = &db.db;
        let obj = |size| {
            Some(WrittenObject {
                size,
                etag: Some(format!("etag-{size}")),
                content_type: None,
                last_modified: None,
            })
        };
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let write = |path: &'static str, size| async move {
            let ids = d
                .begin_front_writes(&[(path, false)], "writer-1", now, later)
                .await
                .expect("intent");
            d.record_front_writes(
                &[(
                    ids[0],
                    FrontWrite {
                        path: path.into(),
                        object: obj(size),
                    },
                )],
                now,
            )
            .await
            .expect("record")[0]
        };
        assert_eq!(write("p", 1).await, 1);
        assert_eq!(write("q", 5).await, 1);
        assert_eq!(write("p", 2).await, 2);
        // A write in flight (its intent not yet due, its writer beating) is not claimed; the
        // intent of a writer that is gone from the fleet is: its outcome must be reconciled.
        let beat = |id: &str, at| mirrorctl::engine::db::FleetBeat {
            instance_id: id.into(),
            version: "test".into(),
            hostname: "h".into(),
            listen: "127.0.0.1:0".into(),
            peer_url: None,
            started_at: at,
            heartbeat_at: at,
            requests_per_s: 0.0,
            fills_in_flight: 0,
            queue_depth: 0,
        };
        d.heartbeat(&beat("writer-1", now)).await.expect("beat");
        // writer-dead's last heartbeat is a minute old: it is gone.
        d.heartbeat(&beat("writer-dead", now - chrono::Duration::seconds(60)))
            .await
            .expect("old beat");
        d.begin_front_writes(&[("in-flight", false)], "writer-1", now, later)
            .await
            .expect("intent in flight");
        d.begin_front_writes(&[("r", false)], "writer-dead", now, later)
            .await
            .expect("intent of a dead writer");
        let until = now + chrono::Duration::seconds(60);
        let gone = now - chrono::Duration::seconds(10);
        let a = d
            .claim_replication("A", 10, now, until, gone)
            .await
            .expect("claim A");
        let paths: Vec<&str> = a.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(paths, ["p", "q", "r"], "one task per path, oldest first");
        assert_eq!(a[2].version, -1, "r is an intent to reconcile with main");
        let b = d
            .claim_replication("B", 10, now, until, gone)
            .await
            .expect("claim B");
        assert!(
            b.is_empty(),
            "paths being copied are not claimed twice: {b:?}"
        );

        // A copies p as of version 1 only: v2's task stays, the row is not backed up.
        let p = &a[0];
        d.finish_task(p, "A", &TaskEnd::Replicated { version: 1 }, 10, now)
            .await
            .expect("finish");
        let st = replication::status(&common::ctx(&db, Config::default()), now)
            .await
            .expect("status");
        assert_eq!(st.pending, 3, "p's v2 task, q's and r's: {st}");
        // One task finished just now: a rate taken over the shortest span (5 s), an ETA at it.
        assert_eq!(st.drain_per_s, 0.2, "{st}");
        assert_eq!(st.eta_s, Some(15.0), "{st}");
        let b = d
            .claim_replication("B", 10, now, until, gone)
            .await
            .expect("claim B");
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].path.as_str(), b[0].version), ("p", 2));
        // A copy of an older version than the task's does not end the task: it is pending
        // again, the row not backed up, and the next claim takes it anew.
        d.finish_task(&b[0], "B", &TaskEnd::Replicated { version: 1 }, 10, now)
            .await
            .expect("finish an older version");
        let rows = d.inventory_page(None, 10).await.expect("rows");
        let p_row = rows.iter().find(|r| r.path == "p").expect("p");
        assert!(!p_row.is_backed_up, "v2 is not in the backup yet");
        let b = d
            .claim_replication("B", 10, now, until, gone)
            .await
            .expect("claim B again");
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!((b[0].path.as_str(), b[0].version), ("p", 2));
        d.finish_task(&b[0], "B", &TaskEnd::Replicated { version: 2 }, 10, now)
            .await
            .expect("finish v2");
        let rows = d.inventory_page(None, 10).await.expect("rows");
        let p_row = rows.iter().find(|r| r.path == "p").expect("p");
        assert!(p_row.is_backed_up && p_row.size == 2);

        // A failing task retries with its error, then fails for good after max attempts.
        let mut q = a[1].clone();
        for attempt in 1..=3 {
            assert_eq!(q.attempts, attempt);
            let end = TaskEnd::Retry {
                at: now,
                error: format!("boom {attempt}"),
                counted: true,
            };
            d.finish_task(&q, "A", &end, 3, now).await.expect("retry");
            let again = d
                .claim_replication("A", 10, now, until, gone)
                .await
                .expect("claim");
            if attempt < 3 {
                assert_eq!(again.len(), 1, "attempt {attempt}");
                q = again[0].clone();
            } else {
                assert!(again.is_empty(), "failed tasks are not claimed");
            }
        }
        let st = replication::status(&common::ctx(&db, Config::default()), now)
            .await
            .expect("status");
        assert_eq!(st.failed, 1, "{st}");
        assert_eq!(st.troubled[0].last_error.as_deref(), Some("boom 3"));

        // The same through the binary, as an operator sees it.
        let dir = tempfile::tempdir().expect("dir");
        let config =
            common::write_config_file(dir.path(), &format!("[database]\nurl = \"{}\"\n", db.url));
        let cli = |args: &[&str]| {
            let out = common::command(&config)
                .arg("--headless")
                .args(args)
                .output()
                .expect("run");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let (code, out, err) = cli(&["replication", "-o", "json"]);
        assert_eq!(code, Some(3), "a failed task is a problem found: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
        assert_eq!(v["failed"], 1, "{v}");
        assert_eq!(v["troubled"][0]["last_error"], "boom 3", "{v}");
        let (code, out, _) = cli(&["replication"]);
        assert_eq!(code, Some(3));
        assert!(
            out.contains("boom 3") && out.contains("retry --failed"),
            "{out}"
        );
        let (code, out, err) = cli(&["replication", "retry", "--failed", "--dry-run"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("would requeue 1 task\n"), "{out}");
        let (code, _, err) = cli(&["replication", "retry", "--ids", "999999"]);
        assert_eq!(code, Some(2), "an unknown id is refused: {err}");
        assert!(err.contains("999999"), "{err}");
        let (code, out, err) = cli(&["replication", "retry", "--failed"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("requeued 1 task\n"), "{out}");
        let (code, out, _) = cli(&["replication", "-o", "json"]);
        assert_eq!(code, Some(0), "nothing failed any more: {out}");
    }
}

fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs a command to success, returning its stdout.
fn run(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Real clients through the front: the aws CLI (`s3 cp` of a small file and of one above its
/// multipart threshold, `s3 sync`, `s3 ls`, a download, `s3 rm --recursive`) and rclone
/// (`copy`, `lsf`); then the backup holds exactly what main holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aws_cli_and_rclone_write_through_the_front() {
    for tool in ["aws", "rclone"] {
        if !have(tool) {
            assert!(!common::servers_required(), "{tool} is not installed");
            eprintln!("{tool} not installed: skipping");
            return;
        }
    }
    let db = TestDb::sqlite().await;
    let server = match S3Server::garage() {
        Some(g) => g,
        None => S3Server::s3s().await,
    };
    let (main, _) = server.new_bucket("front-cli").await;
    let (backup, _) = server.new_bucket("front-cli-backup").await;
    let bucket = main.bucket.clone();
    let f = start_front(&db, front_config(&db, main, backup)).await;
    let endpoint = format!("http://{}", f.server.s3_addr().expect("addr"));

    let dir = tempfile::tempdir().expect("dir");
    let p = dir.path();
    std::fs::write(p.join("small.txt"), b"hello through the front\n").expect("write");
    let big = common::origin::content(7, 1, 20 * 1024 * 1024 + 3);
    assert!(
        big.len() > 8 * 1024 * 1024,
        "above the CLI's multipart threshold"
    );
    std::fs::write(p.join("big.bin"), &big).expect("write");
    std::fs::create_dir(p.join("sync")).expect("mkdir");
    std::fs::create_dir(p.join("rc")).expect("mkdir");
    for i in 0..30 {
        std::fs::write(
            p.join(format!("sync/f{i:02}.txt")),
            format!("file {i}\n").repeat(i + 1),
        )
        .expect("write");
        if i < 10 {
            std::fs::write(p.join(format!("rc/r{i}.txt")), format!("rclone {i}\n")).expect("write");
        }
    }
    let aws_config = p.join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n",
    )
    .expect("aws config");
    let aws = |args: &[&str]| {
        let mut c = std::process::Command::new("aws");
        c.args(["--endpoint-url", &endpoint])
            .args(args)
            .current_dir(p)
            .env("AWS_ACCESS_KEY_ID", APP_KEY)
            .env("AWS_SECRET_ACCESS_KEY", APP_SECRET)
            .env("AWS_CONFIG_FILE", &aws_config)
            .env("AWS_SHARED_CREDENTIALS_FILE", p.join("none"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL");
        run(&mut c, &format!("aws {}", args.join(" ")))
    };
    let s3 = |key: &str| format!("s3://{bucket}/{key}");
    aws(&["s3", "cp", "small.txt", &s3("cli/small.txt")]);
    aws(&["s3", "cp", "big.bin", &s3("cli/big.bin")]);
    aws(&["s3", "sync", "sync", &s3("cli/sync/")]);
    let listed = aws(&["s3", "ls", "--recursive", &s3("cli/")]);
    assert_eq!(listed.lines().count(), 32, "{listed}");
    aws(&["s3", "cp", &s3("cli/big.bin"), "big.back"]);
    assert!(
        std::fs::read(p.join("big.back")).expect("read") == big,
        "download differs"
    );
    let head = f
        .main
        .head("cli/big.bin")
        .await
        .expect("head")
        .expect("in main");
    assert!(
        head.etag.as_deref().is_some_and(|e| e.contains('-')),
        "the CLI uploaded it in parts: {head:?}"
    );
    aws(&["s3", "rm", "--recursive", &s3("cli/sync/")]);

    let rclone = |args: &[&str]| {
        let mut c = std::process::Command::new("rclone");
        c.args(args)
            .current_dir(p)
            .env_remove("AWS_CA_BUNDLE")
            .env("RCLONE_CONFIG_FRONT_TYPE", "s3")
            .env("RCLONE_CONFIG_FRONT_PROVIDER", "Other")
            .env("RCLONE_CONFIG_FRONT_ENDPOINT", &endpoint)
            .env("RCLONE_CONFIG_FRONT_ACCESS_KEY_ID", APP_KEY)
            .env("RCLONE_CONFIG_FRONT_SECRET_ACCESS_KEY", APP_SECRET)
            .env("RCLONE_CONFIG_FRONT_REGION", "us-east-1")
            .env("RCLONE_CONFIG_FRONT_FORCE_PATH_STYLE", "true");
        run(&mut c, &format!("rclone {}", args.join(" ")))
    };
    let remote = format!("front:{bucket}/rc");
    rclone(&["copy", "rc", &remote]);
    let lsf = rclone(&["lsf", &remote]);
    assert_eq!(lsf.lines().count(), 10, "{lsf}");

    let s = f.drained(Duration::from_secs(60)).await;
    assert_eq!(s.failed, 0, "{s}");
    let in_main = contents(&f.main).await;
    assert_eq!(
        in_main.len(),
        12,
        "{:?}",
        in_main.keys().collect::<Vec<_>>()
    );
    assert_eq!(contents(&f.backup).await, in_main);
    f.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `mirrorctl serve` as a process, ready.
async fn spawn_serve(config: &std::path::Path, port: u16) -> std::process::Child {
    let mut child = common::command(config)
        .arg("serve")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn serve");
    let http = common::http_client().build().expect("HTTP client");
    for _ in 0..200 {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not become ready");
}

/// kill -9 of the front in the middle of PUTs and of replication: after a restart the queue
/// drains, every acknowledged write is in main, the inventory and the backup, and the backup
/// holds nothing main does not (writes main took but nobody recorded are reconciled from
/// their intents).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_front_loses_nothing_it_acknowledged_and_leaves_no_orphan() {
    let db = match TestDb::postgres().await {
        Some(db) => db,
        None => TestDb::sqlite().await,
    };
    let server = match S3Server::garage() {
        Some(g) => g,
        None => S3Server::s3s().await,
    };
    let (main, main_b) = server.new_bucket("crash-main").await;
    let (backup, backup_b) = server.new_bucket("crash-backup").await;
    let (port, s3_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("dir");
    let config = common::write_config_file(
        dir.path(),
        &format!(
            "[database]\nurl = \"{}\"\n\n{}{}[serve]\nlisten = \"127.0.0.1:{port}\"\n\
             s3_listen = \"127.0.0.1:{s3_port}\"\nevent_flush = \"1s\"\n\n\
             [[s3_front.clients]]\nname = \"app\"\naccess_key_id = \"{APP_KEY}\"\n\
             secret_access_key = \"{APP_SECRET}\"\nbuckets = [\"{}\"]\n",
            db.url,
            server.bucket_toml("mirror", &main.bucket),
            server.bucket_toml("backup", &backup.bucket),
            main.bucket
        ),
    );
    let mut first = spawn_serve(&config, port).await;
    let app = S3Bucket::connect(&BucketConfig::with_static_keys(
        &main.bucket,
        &format!("http://127.0.0.1:{s3_port}"),
        APP_KEY,
        APP_SECRET,
    ))
    .await
    .expect("app");
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (app, acked) = (app.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("w{w}/{i:05}.bin");
                    match app.put_bytes(&key, body(i, w as u8, 32 * 1024), None).await {
                        Ok(_) => acked.lock().expect("lock").push(key),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().expect("kill -9");
    let _ = first.wait();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > 20,
        "writes were acknowledged before the kill: {}",
        acked.len()
    );

    let mut second = spawn_serve(&config, port).await;
    let ctx = common::ctx(&db, Config::default());
    let start = Instant::now();
    loop {
        let s = replication::status(&ctx, Utc::now()).await.expect("status");
        // The killed process's intents wait until its heartbeat is 6 s old.
        if s.pending == 0 && s.in_flight == 0 {
            assert_eq!(s.failed, 0, "{s}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "did not drain: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} writes acknowledged; drained {:?} after the restart",
        acked.len(),
        start.elapsed()
    );
    // Server-side copies on one endpoint keep the ETag: the listings must be equal.
    let in_main = listing(&main_b).await;
    let in_backup = listing(&backup_b).await;
    for k in &acked {
        assert!(in_main.contains_key(k), "acknowledged {k} is in main");
    }
    assert_eq!(
        in_backup, in_main,
        "the backup holds exactly what main holds"
    );
    let rows = db
        .db
        .inventory_page(None, 100_000)
        .await
        .expect("inventory");
    let live: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    let main_keys: std::collections::BTreeSet<&str> = in_main.keys().map(String::as_str).collect();
    let differ: Vec<_> = live.symmetric_difference(&main_keys).collect();
    assert!(
        differ.is_empty(),
        "the inventory lists exactly what main holds; these differ: {differ:?}"
    );
    assert!(rows.iter().all(|r| r.is_backed_up));
    terminate(&second);
    let _ = second.wait();
}

fn terminate(child: &std::process::Child) {
    // SIGTERM: a clean stop.
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// Objects written to main past the front are not replicated until `replication resync`
/// queues what a drift check finds missing in the backup; a dry run queues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resync_queues_what_drift_finds_missing_in_the_backup() {
    let db = TestDb::sqlite().await;
    let s = S3Server::s3s().await;
    let (main, _) = s.new_bucket("front-main").await;
    let (backup, _) = s.new_bucket("front-backup").await;
    let f = start_front(&db, front_config(&db, main, backup)).await;
    f.app
        .put_bytes("via/front.bin", body(1, 1, 100), None)
        .await
        .expect("put");
    for i in 0..3 {
        f.main
            .put_bytes(&format!("past/{i}.bin"), body(i, 1, 200), None)
            .await
            .expect("put past the front");
    }
    f.drained(Duration::from_secs(30)).await;
    let progress = mirrorctl::engine::jobs::Progress::none();
    let refused =
        replication::resync(&f.ctx, replication::ResyncParams::default(), &progress).await;
    assert!(
        refused.is_err_and(|e| e.exit_code() == 2),
        "without --yes a resync is refused"
    );
    let dry = replication::ResyncParams {
        dry_run: true,
        ..Default::default()
    };
    let r = replication::resync(&f.ctx, dry, &progress)
        .await
        .expect("dry run");
    assert_eq!((r.found, r.queued), (3, 0), "{r}");
    let yes = replication::ResyncParams {
        yes: true,
        ..Default::default()
    };
    let r = replication::resync(&f.ctx, yes.clone(), &progress)
        .await
        .expect("resync");
    assert_eq!((r.found, r.queued), (3, 3), "{r}");
    f.drained(Duration::from_secs(30)).await;
    assert_eq!(contents(&f.backup).await, contents(&f.main).await);

    // A key the front wrote, overwritten past it: the inventory's ETag no longer matches
    // main's, so the conditional copy is refused; main is the truth, and the inventory learns it.
    f.main
        .put_bytes("via/front.bin", body(2, 2, 300), None)
        .await
        .expect("overwrite past the front");
    let r = replication::resync(&f.ctx, yes, &progress)
        .await
        .expect("resync");
    assert_eq!((r.found, r.queued), (1, 1), "{r}");
    let st = f.drained(Duration::from_secs(30)).await;
    assert_eq!(st.failed, 0, "{st}");
    let head = f
        .main
        .head("via/front.bin")
        .await
        .expect("head")
        .expect("in main");
    let row = f
        .ctx
        .db
        .inventory_state("via/front.bin")
        .await
        .expect("row")
        .expect("row");
    assert_eq!(
        (row.size as u64, row.etag),
        (head.size, head.etag),
        "the inventory records main's object"
    );
    assert_eq!(contents(&f.backup).await, contents(&f.main).await);
    f.stop().await;
}

/// Clients racing on the same keys: main keeps whichever write landed last, and the inventory
/// may have recorded another one last; once the queue drains, inventory and backup hold what
/// main holds, and nothing is left failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_key_converge_on_what_main_holds() {
    for db in TestDb::all().await {
        let s = match S3Server::garage() {
            Some(g) => g,
            None => S3Server::s3s().await,
        };
        let (main, _) = s.new_bucket("race-main").await;
        let (backup, _) = s.new_bucket("race-backup").await;
        let f = start_front(&db, front_config(&db, main, backup)).await;
        let writers: Vec<_> = (0..8u8)
            .map(|w| {
                let app = f.app.clone();
                tokio::spawn(async move {
                    for i in 0..15usize {
                        let key = format!("race/{}.bin", i % 3);
                        let size = 1000 + usize::from(w) * 100 + i;
                        app.put_bytes(&key, body(i, w, size), None)
                            .await
                            .expect("put");
                        if i % 7 == 6 {
                            app.delete(&key).await.expect("delete");
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        let st = f.drained(Duration::from_secs(60)).await;
        assert_eq!(st.failed, 0, "{st}");
        let in_main = listing(&f.main).await;
        assert_eq!(
            listing(&f.backup).await,
            in_main,
            "the backup holds what main holds"
        );
        for (key, (size, etag)) in &in_main {
            let row = f
                .ctx
                .db
                .inventory_state(key)
                .await
                .expect("row")
                .expect("listed");
            assert!(!row.deleted, "{key}");
            assert_eq!(
                (row.size as u64, &row.etag),
                (*size, etag),
                "{key}: inventory = main"
            );
        }
        f.stop().await;
    }
}
