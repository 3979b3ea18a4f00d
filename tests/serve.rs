//! The data plane against real servers over real sockets: s3s-fs in-process and Garage out of
//! process, SQLite and PostgreSQL, an HTTP origin on loopback that counts its fetches and can
//! be slowed down or broken, and a fault-injecting proxy in front of S3 for failed uploads.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use common::origin::{content, sha256, start_origin, Origin};
use common::proxy::FaultProxy;
use common::{S3Server, TestDb};
use mirrorctl::config::{BucketConfig, Config, HumanDuration};
use mirrorctl::engine::model::{NewMirroredFile, NewOriginFile};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;
use mirrorctl::serve::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// A mirror with files in known states and the data plane in front of it.

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// In the mirror, current.
    Fresh,
    /// An older version in the mirror, the row marked stale.
    Stale,
    /// The row says fresh but the object is not in the mirror.
    Lost,
}

struct Fixture {
    origin: Arc<Origin>,
    origin_url: String,
    db: TestDb,
    bucket: S3Bucket,
    bucket_cfg: BucketConfig,
    ids: Vec<i64>,
    keys: Vec<String>,
    bodies: Vec<Vec<u8>>,
    http: reqwest::Client,
}

impl Fixture {
    async fn new(s3: &S3Server, db: TestDb, files: &[(Kind, usize)]) -> Fixture {
        let (origin_url, origin) = start_origin().await;
        let (bucket_cfg, bucket) = s3.new_bucket("serve").await;
        let mut f = Fixture {
            origin,
            origin_url,
            db,
            bucket,
            bucket_cfg,
            ids: Vec::new(),
            keys: Vec::new(),
            bodies: Vec::new(),
            http: common::http_client().no_proxy().build().expect("client"),
        };
        let mut origin_rows = Vec::new();
        for (i, &(_, size)) in files.iter().enumerate() {
            let key = format!("mods/{i}/file {i}-ü.zip");
            let data = content(i, 1, size);
            f.origin
                .files
                .lock()
                .expect("origin files")
                .insert(key.clone(), Bytes::from(data.clone()));
            origin_rows.push(NewOriginFile {
                source: "http".into(),
                remote_id: format!("r{i}"),
                file_name: format!("file {i}-ü.zip"),
                url: key.clone(),
                size: Some(size as i64),
                etag: None,
                updated_at: Utc::now() - TimeDelta::days(3),
            });
            f.keys.push(key);
            f.bodies.push(data);
        }
        let origin_ids =
            f.db.db
                .insert_origin_files(&origin_rows)
                .await
                .expect("origin rows");
        let mut rows = Vec::new();
        for (i, &(kind, size)) in files.iter().enumerate() {
            let stored = match kind {
                Kind::Fresh => Some(f.bodies[i].clone()),
                Kind::Stale => Some(content(i, 0, size + 3)),
                Kind::Lost => None,
            };
            let etag = match &stored {
                Some(data) => {
                    f.bucket
                        .put_stream(&f.keys[i], &data[..], Some("application/zip"))
                        .await
                        .expect("upload")
                        .etag
                }
                None => None,
            };
            let data = stored.unwrap_or_else(|| f.bodies[i].clone());
            rows.push(NewMirroredFile {
                origin_file_id: origin_ids[i],
                bucket: f.bucket.name().to_string(),
                key: f.keys[i].clone(),
                size: data.len() as i64,
                sha256: Some(sha256(&data)),
                etag,
                mirrored_at: Utc::now() - TimeDelta::days(2),
                is_stale: kind == Kind::Stale,
                stale_reason: (kind == Kind::Stale).then(|| "origin size changed".to_string()),
            });
        }
        f.ids =
            f.db.db
                .insert_mirrored_files(&rows)
                .await
                .expect("mirrored rows");
        f
    }

    fn config(&self, mirror: BucketConfig) -> Config {
        let mut c = common::config(&self.db.url, mirror);
        c.origin.base_url = Some(self.origin_url.clone());
        c.origin.retries = 0;
        c.origin.timeout = HumanDuration(Duration::from_secs(20));
        c.serve.event_flush = HumanDuration(Duration::from_millis(100));
        c.serve.shutdown_timeout = HumanDuration(Duration::from_secs(20));
        c
    }

    async fn serve(&self, config: Config) -> (Server, String) {
        let ctx = Ctx::new(config, self.db.db.clone(), false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = mirrorctl::serve::start(Arc::new(ctx), listener)
            .await
            .expect("start serve");
        let base = format!("http://{}", server.addr());
        (server, base)
    }

    async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMapOwned, Vec<u8>) {
        let mut rb = self.http.get(url);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.expect("request");
        let status = r.status();
        let h = r.headers().clone();
        let body = r.bytes().await.expect("body").to_vec();
        (status, h, body)
    }

    /// A GET without headers, as it came back.
    async fn fetch(&self, url: &str) -> reqwest::Response {
        self.http.get(url).send().await.expect("request")
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let mut o = self.bucket.get(key, None).await.expect("get object")?;
        let mut v = Vec::new();
        o.body.read_to_end(&mut v).await.expect("object body");
        Some(v)
    }

    async fn row(&self, i: usize) -> mirrorctl::engine::model::FileDetail {
        self.db
            .db
            .get_file_by_id(self.ids[i])
            .await
            .expect("db")
            .expect("row")
    }

    /// Waits until file `i`'s row is fresh again (a fill finished), up to 20 s.
    async fn wait_fresh(&self, i: usize) -> mirrorctl::engine::model::FileDetail {
        for _ in 0..200 {
            let row = self.row(i).await;
            if !row.is_stale && row.sha256.as_deref() == Some(sha256(&self.bodies[i]).as_str()) {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("file {i} did not become fresh");
    }

    async fn events(&self, i: usize) -> Vec<(bool, i64, i16)> {
        let sql =
            "SELECT cache_hit, bytes, status FROM download_events WHERE file_id = $1 ORDER BY id";
        match self.db.db.backend() {
            mirrorctl::engine::db::Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.db.url)
                    .await
                    .expect("sqlite");
                let v = sqlx::query_as(sql)
                    .bind(self.ids[i])
                    .fetch_all(&pool)
                    .await
                    .expect("events");
                pool.close().await;
                v
            }
            mirrorctl::engine::db::Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db.url).await.expect("postgres");
                let v = sqlx::query_as(sql)
                    .bind(self.ids[i])
                    .fetch_all(&pool)
                    .await
                    .expect("events");
                pool.close().await;
                v
            }
        }
    }
}

type HeaderMapOwned = reqwest::header::HeaderMap;

/// No multipart upload left in the bucket. s3s-fs does not implement ListMultipartUploads:
/// there the check is Garage's to make.
async fn assert_no_pending_uploads(bucket: &S3Bucket) {
    match bucket.pending_uploads().await {
        Ok(v) => assert!(v.is_empty(), "multipart uploads left behind: {v:?}"),
        Err(e) if e.to_string().contains("NotImplemented") => {}
        Err(e) => panic!("list multipart uploads: {e}"),
    }
}

fn header_str<'a>(h: &'a HeaderMapOwned, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Sends raw bytes (paths a URL library would normalise) and returns the status code.
async fn raw_status(base: &str, path: &str) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_and_misses_on_every_server_and_database() {
    for s3 in S3Server::all().await {
        for db in TestDb::all().await {
            let backend = format!("{} + {:?}", s3.name, db.db.backend());
            let f = Fixture::new(
                &s3,
                db,
                &[
                    (Kind::Fresh, 70_000),
                    (Kind::Stale, 300_000),
                    (Kind::Lost, 5_000),
                ],
            )
            .await;
            let (server, base) = f.serve(f.config(f.bucket_cfg.clone())).await;

            // A hit: the mirror's bytes, with the headers a download needs.
            let (st, h, body) = f.get(&format!("{base}/download/{}", f.ids[0]), &[]).await;
            assert_eq!(st, StatusCode::OK, "{backend}");
            assert_eq!(body, f.bodies[0], "{backend}");
            assert_eq!(header_str(&h, "x-cache"), "HIT");
            assert_eq!(header_str(&h, "content-length"), "70000");
            assert_eq!(header_str(&h, "content-type"), "application/zip");
            assert!(
                header_str(&h, "content-disposition")
                    .contains("filename*=UTF-8''file%200%2D%C3%BC%2Ezip"),
                "{}",
                header_str(&h, "content-disposition")
            );
            let etag = header_str(&h, "etag").to_string();
            assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");

            // The same file by key, a range of it, a HEAD, and a conditional GET.
            let by_key = format!(
                "{base}/files/{}",
                percent_encoding::utf8_percent_encode(
                    &f.keys[0],
                    percent_encoding::NON_ALPHANUMERIC
                )
                .to_string()
                .replace("%2F", "/")
            );
            let (st, _, body) = f.get(&by_key, &[]).await;
            assert_eq!((st, body.len()), (StatusCode::OK, 70_000), "{backend}");
            let (st, h, body) = f.get(&by_key, &[("range", "bytes=65530-65545")]).await;
            assert_eq!(st, StatusCode::PARTIAL_CONTENT);
            assert_eq!(body, f.bodies[0][65530..=65545]);
            assert_eq!(header_str(&h, "content-range"), "bytes 65530-65545/70000");
            let (st, _, _) = f.get(&by_key, &[("range", "bytes=70000-")]).await;
            assert_eq!(st, StatusCode::RANGE_NOT_SATISFIABLE);
            let head = f.http.head(&by_key).send().await.expect("head");
            assert_eq!(head.status(), StatusCode::OK);
            assert_eq!(header_str(head.headers(), "content-length"), "70000");
            let (st, _, body) = f.get(&by_key, &[("if-none-match", &etag)]).await;
            assert_eq!((st, body.len()), (StatusCode::NOT_MODIFIED, 0));

            // A stale file is a miss: the origin's current bytes, and the mirror is filled.
            let (st, h, body) = f.get(&format!("{base}/download/{}", f.ids[1]), &[]).await;
            assert_eq!(st, StatusCode::OK, "{backend}");
            assert_eq!(header_str(&h, "x-cache"), "MISS");
            assert_eq!(header_str(&h, "content-length"), "300000");
            assert_eq!(body, f.bodies[1], "{backend}");
            let row = f.wait_fresh(1).await;
            assert_eq!(row.size, 300_000);
            assert_eq!(
                f.object(&f.keys[1]).await.as_deref(),
                Some(&f.bodies[1][..])
            );
            // Now a hit larger than those read whole before answering: streamed.
            let (_, h, body) = f.get(&format!("{base}/download/{}", f.ids[1]), &[]).await;
            assert_eq!(header_str(&h, "x-cache"), "HIT");
            assert_eq!(body, f.bodies[1], "{backend}");

            // A row that says fresh over a lost object is served from the origin and refilled.
            let (st, h, body) = f.get(&format!("{base}/download/{}", f.ids[2]), &[]).await;
            assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "MISS"));
            assert_eq!(body, f.bodies[2]);
            f.wait_fresh(2).await;
            for _ in 0..100 {
                if f.object(&f.keys[2]).await.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                f.object(&f.keys[2]).await.as_deref(),
                Some(&f.bodies[2][..])
            );
            assert_eq!(f.origin.gets.load(Ordering::SeqCst), 2, "{backend}");

            // Unknown ids and hostile paths.
            let r = f.fetch(&format!("{base}/download/987654")).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            let v: serde_json::Value =
                serde_json::from_slice(&r.bytes().await.expect("body")).expect("json error");
            assert!(
                v["error"].as_str().is_some_and(|e| e.contains("987654")),
                "{v}"
            );
            assert_eq!(raw_status(&base, "/download/abc").await, 400);
            assert_eq!(raw_status(&base, "/files/mods/../etc/passwd").await, 400);
            assert_eq!(raw_status(&base, "/files/mods/%2E%2E/x").await, 400);
            assert_eq!(raw_status(&base, "/files/mods/a%0Ab").await, 400);
            assert_eq!(raw_status(&base, "/files/mods/a%00b").await, 400);

            // Shutdown writes the queued events: 2 GETs + range + 416 + 304 of file 0 (HEAD is
            // not a download), and the miss then the hit of file 1.
            server.shutdown();
            server.wait().await.expect("clean shutdown");
            let ev0 = f.events(0).await;
            assert_eq!(
                ev0.iter().map(|e| e.2).collect::<Vec<_>>(),
                vec![200, 200, 206, 304],
                "{backend}: {ev0:?}"
            );
            assert!(ev0.iter().all(|e| e.0), "{backend}: hits");
            assert_eq!(ev0[0].1, 70_000);
            let ev1 = f.events(1).await;
            assert_eq!(
                ev1,
                vec![(false, 300_000, 200), (true, 300_000, 200)],
                "{backend}"
            );
            let row0 = f.row(0).await;
            // The 304 is a revalidation, recorded apart from downloads.
            assert_eq!(row0.downloads, 3, "{backend}");
            let totals = f.db.db.download_totals(None).await.expect("totals");
            assert_eq!(totals.revalidations, 1, "{backend}");
            // File 0's three, file 1's miss and hit, file 2's refill.
            assert_eq!(totals.hits + totals.misses, 6, "{backend}");
            assert!(row0.last_downloaded_at.is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_share_one_origin_fetch() {
    let s3 = S3Server::s3s().await;
    let size = 3 * 1024 * 1024 + 17;
    let f = Fixture::new(&s3, TestDb::sqlite().await, &[(Kind::Stale, size)]).await;
    // ~48 chunks of 64 KiB, 20 ms apart: about a second on the wire.
    f.origin.chunk_delay_ms.store(20, Ordering::SeqCst);
    let (server, base) = f.serve(f.config(f.bucket_cfg.clone())).await;
    let url = format!("{base}/download/{}", f.ids[0]);
    let mut clients = Vec::new();
    for n in 0..8 {
        let (http, url) = (f.http.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(n * 40)).await;
            let r = http.get(&url).send().await.expect("get");
            (r.status(), r.bytes().await.expect("body").to_vec())
        }));
    }
    for c in clients {
        let (status, body) = c.await.expect("client");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), size);
        assert!(body == f.bodies[0], "every client gets the origin's bytes");
    }
    assert_eq!(f.origin.gets.load(Ordering::SeqCst), 1, "one origin fetch");
    let row = f.wait_fresh(0).await;
    assert_eq!(row.size as usize, size);
    assert_eq!(
        f.object(&f.keys[0]).await.as_deref(),
        Some(&f.bodies[0][..])
    );
    assert_no_pending_uploads(&f.bucket).await;
    server.shutdown();
    server.wait().await.expect("shutdown");
    let events = f.events(0).await;
    assert_eq!(events.len(), 8);
    assert!(
        events.iter().all(|e| *e == (false, size as i64, 200)),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_down_on_a_miss_is_a_502_and_the_mirror_copy_stays() {
    for s3 in S3Server::all().await {
        let f = Fixture::new(&s3, TestDb::sqlite().await, &[(Kind::Stale, 10_000)]).await;
        let old = f.object(&f.keys[0]).await.expect("old copy");
        f.origin.broken.store(true, Ordering::SeqCst);
        let (server, base) = f.serve(f.config(f.bucket_cfg.clone())).await;
        let r = f.fetch(&format!("{base}/download/{}", f.ids[0])).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{}", s3.name);
        let v: serde_json::Value =
            serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("500")),
            "{v}"
        );
        let metrics = f
            .fetch(&format!("{base}/metrics"))
            .await
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("mirrorctl_origin_errors_total 1"),
            "{metrics}"
        );
        server.shutdown();
        server.wait().await.expect("shutdown");
        assert_eq!(
            f.object(&f.keys[0]).await,
            Some(old),
            "mirror copy untouched"
        );
        let row = f.row(0).await;
        assert!(row.is_stale);
        assert_eq!(f.events(0).await, vec![(false, 0, 502)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_upload_still_serves_the_client_and_the_next_request_retries() {
    for s3 in S3Server::all().await {
        let size = 20 * 1024 * 1024 + 5; // multipart (threshold 16 MiB)
        let f = Fixture::new(&s3, TestDb::sqlite().await, &[(Kind::Stale, size)]).await;
        let old = f.object(&f.keys[0]).await.expect("old copy");
        let proxy = FaultProxy::start(&s3.endpoint).await;
        let mut via_proxy = f.bucket_cfg.clone();
        via_proxy.endpoint = Some(proxy.endpoint.clone());
        let (server, base) = f.serve(f.config(via_proxy)).await;
        proxy.faults.fail_writes.store(true, Ordering::SeqCst);

        let url = format!("{base}/download/{}", f.ids[0]);
        let (st, _, body) = f.get(&url, &[]).await;
        assert_eq!(st, StatusCode::OK, "{}", s3.name);
        assert!(body == f.bodies[0], "the client gets every byte");
        // Give the upload time to fail, then check nothing changed.
        let mut failed = false;
        for _ in 0..100 {
            let m = f.fetch(&format!("{base}/metrics")).await;
            if m.text()
                .await
                .expect("t")
                .contains("mirrorctl_upload_errors_total 1")
            {
                failed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(failed, "the upload failed");
        assert!(f.row(0).await.is_stale, "row untouched");
        assert_eq!(
            f.object(&f.keys[0]).await,
            Some(old),
            "old object untouched"
        );
        proxy.faults.fail_writes.store(false, Ordering::SeqCst);
        assert_no_pending_uploads(&f.bucket).await;

        // The next request is a miss again and this time the mirror is filled.
        let (st, h, body) = f.get(&url, &[]).await;
        assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "MISS"));
        assert!(body == f.bodies[0]);
        assert_eq!(f.origin.gets.load(Ordering::SeqCst), 2);
        f.wait_fresh(0).await;
        assert!(f.object(&f.keys[0]).await.expect("new copy") == f.bodies[0]);
        assert_no_pending_uploads(&f.bucket).await;
        server.shutdown();
        server.wait().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_does_not_stop_the_upload_and_shutdown_waits() {
    let s3 = S3Server::s3s().await;
    let size = 2 * 1024 * 1024;
    let f = Fixture::new(
        &s3,
        TestDb::sqlite().await,
        &[(Kind::Stale, size), (Kind::Stale, size)],
    )
    .await;
    f.origin.chunk_delay_ms.store(15, Ordering::SeqCst);
    let (server, base) = f.serve(f.config(f.bucket_cfg.clone())).await;

    // Read the first bytes of file 0, then hang up.
    let mut r = f.fetch(&format!("{base}/download/{}", f.ids[0])).await;
    let first = r.chunk().await.expect("chunk").expect("some bytes");
    assert!(!first.is_empty());
    drop(r);
    f.wait_fresh(0).await;
    assert!(f.object(&f.keys[0]).await.expect("filled") == f.bodies[0]);

    // A download under way when shutdown starts still completes.
    let url = format!("{base}/download/{}", f.ids[1]);
    let http = f.http.clone();
    let client = tokio::spawn(async move {
        let r = http.get(&url).send().await.expect("get");
        r.bytes().await.expect("whole body").to_vec()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.shutdown();
    let body = client.await.expect("client");
    assert!(
        body == f.bodies[1],
        "in-flight download finished during shutdown"
    );
    server.wait().await.expect("shutdown");
    f.wait_fresh(1).await;
    // The partial download was recorded with the bytes actually sent.
    let ev = f.events(0).await;
    assert_eq!(ev.len(), 1);
    assert!(ev[0].1 > 0 && ev[0].1 < size as i64, "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_health_readiness_and_rate_limit() {
    let s3 = S3Server::s3s().await;
    let f = Fixture::new(&s3, TestDb::sqlite().await, &[(Kind::Fresh, 1000)]).await;
    let mut cfg = f.config(f.bucket_cfg.clone());
    cfg.serve.rate_limit = 1.0;
    cfg.serve.rate_burst = 2;
    let (server, base) = f.serve(cfg).await;
    let url = format!("{base}/download/{}", f.ids[0]);
    assert_eq!(f.get(&url, &[]).await.0, StatusCode::OK);
    assert_eq!(f.get(&url, &[]).await.0, StatusCode::OK);
    let r = f.fetch(&url).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    // Health endpoints are not rate limited.
    let h = f.fetch(&format!("{base}/healthz")).await;
    assert_eq!(h.status(), StatusCode::OK);
    let r = f.fetch(&format!("{base}/readyz")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let m = f.fetch(&format!("{base}/metrics")).await;
    assert!(header_str(m.headers(), "content-type").contains("openmetrics"));
    let text = m.text().await.expect("text");
    for needle in [
        "mirrorctl_downloads_total{cache=\"hit\"} 2",
        "mirrorctl_bytes_served_total{cache=\"hit\"} 2000",
        "mirrorctl_origin_fetches_total 0",
        "mirrorctl_origin_errors_total 0",
        "mirrorctl_request_duration_seconds_bucket{",
        "mirrorctl_request_duration_seconds_count{cache=\"hit\"} 2",
        "mirrorctl_stale_files 0",
        "mirrorctl_storage_bytes 1000",
        "mirrorctl_rate_limited_total 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_eq!(
        f.http
            .get(format!("{base}/nope"))
            .send()
            .await
            .expect("x")
            .status(),
        StatusCode::NOT_FOUND
    );
    server.shutdown();
    server.wait().await.expect("shutdown");

    // A mirror bucket that does not exist: the process is up, not ready.
    let mut cfg = f.config(s3.bucket_config("no-such-bucket-here"));
    cfg.serve.rate_limit = 0.0;
    let (server, base) = f.serve(cfg).await;
    let h = f.fetch(&format!("{base}/healthz")).await;
    assert_eq!(h.status(), StatusCode::OK);
    let r = f.fetch(&format!("{base}/readyz")).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert!(
        v["mirror"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-bucket-here")),
        "{v}"
    );
    server.shutdown();
    server.wait().await.expect("shutdown");
}

#[test]
fn bad_listen_address_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = common::write_config_file(
        dir.path(),
        &format!(
            "[database]\nurl = \"sqlite://{}\"\n[serve]\nlisten = \"localhost\"\n",
            dir.path().join("m.db").display()
        ),
    );
    let out = common::command(&cfg).arg("serve").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serve.listen"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_validation_runs_and_oversized_files_are_refused() {
    let s3 = S3Server::s3s().await;
    let f = Fixture::new(
        &s3,
        TestDb::sqlite().await,
        &[(Kind::Fresh, 2000), (Kind::Stale, 50_000)],
    )
    .await;
    let mut cfg = f.config(f.bucket_cfg.clone());
    cfg.origin.max_file_size = mirrorctl::config::ByteSize(10_000);
    cfg.serve.validate_every = Some(HumanDuration(Duration::from_millis(700)));
    let (server, base) = f.serve(cfg).await;

    // A miss over origin.max_file_size: 502 naming the limit, nothing stored.
    let r = f.fetch(&format!("{base}/download/{}", f.ids[1])).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_file_size")),
        "{v}"
    );
    assert!(f.row(1).await.is_stale);

    // The validation worker runs the engine's validate with its lock and audit row.
    let mut ran = false;
    for _ in 0..50 {
        let ops = f.db.db.list_operations(10).await.expect("operations");
        if ops
            .iter()
            .any(|o| o.kind == "validate" && o.finished_at.is_some())
        {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ran, "a scheduled validation ran and was recorded");
    server.shutdown();
    server.wait().await.expect("shutdown");
}

/// The binary, as an operator starts it: `serve --threads N` runs N runtime threads, answers a
/// hit, and stops cleanly on SIGTERM. N is one more than the cores, so it differs from the
/// default on any machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_serves_with_the_threads_it_was_given() {
    let s3 = S3Server::s3s().await;
    let f = Fixture::new(&s3, TestDb::sqlite().await, &[(Kind::Fresh, 70_000)]).await;
    let dir = tempfile::tempdir().expect("dir");
    let cfg = common::write_config_file(
        dir.path(),
        &format!(
            "[database]\nurl = \"{}\"\n\n{}[origin]\nbase_url = \"{}\"\n",
            f.db.url,
            s3.bucket_toml("mirror", f.bucket.name()),
            f.origin_url
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let mut child = Reap(
        common::command(&cfg)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--threads", &threads.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start serve"),
    );
    let mut up = false;
    for _ in 0..100 {
        if f.http.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "serve did not come up");

    let (st, h, body) = f.get(&format!("{base}/download/{}", f.ids[0]), &[]).await;
    assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "HIT"));
    assert_eq!(body, f.bodies[0]);

    let pid = child.0.id();
    let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "tokio-rt-worker")
        .count();
    assert_eq!(workers, threads);

    // SAFETY: sends SIGTERM to the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let mut status = None;
    for _ in 0..200 {
        status = child.0.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "serve stops within 20 s"
    );

    let out = common::command(&cfg)
        .args(["serve", "--threads", "0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

/// A child process killed and reaped when dropped, so a failed assertion leaves no server behind.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_etag_per_content_if_range_and_ranges_on_hits_and_misses() {
    let s3 = S3Server::s3s().await;
    let f = Fixture::new(
        &s3,
        TestDb::sqlite().await,
        &[(Kind::Stale, 100_000), (Kind::Stale, 50_000)],
    )
    .await;
    let (server, base) = f.serve(f.config(f.bucket_cfg.clone())).await;
    let url0 = format!("{base}/download/{}", f.ids[0]);

    // The miss sends the origin's strong ETag; the hit after it sends the same one.
    let (st, h, body) = f.get(&url0, &[]).await;
    assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(body, f.bodies[0]);
    let miss_etag = header_str(&h, "etag").to_string();
    assert_eq!(miss_etag, format!("\"{}\"", &sha256(&f.bodies[0])[..16]));
    f.wait_fresh(0).await;
    let (_, h, _) = f.get(&url0, &[]).await;
    assert_eq!(header_str(&h, "x-cache"), "HIT");
    assert_eq!(header_str(&h, "etag"), miss_etag, "one ETag, hit or miss");

    // A conditional GET with the ETag the miss sent is a 304.
    let (st, h, body) = f.get(&url0, &[("if-none-match", &miss_etag)]).await;
    assert_eq!(st, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(header_str(&h, "etag"), miss_etag);

    // If-Range: the current ETag keeps the range, a stale one or a date gets the whole body.
    let range = ("range", "bytes=10-19");
    let (st, _, body) = f.get(&url0, &[range, ("if-range", &miss_etag)]).await;
    assert_eq!(st, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, f.bodies[0][10..20]);
    for stale in ["\"an-older-version\"", "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let (st, h, body) = f.get(&url0, &[range, ("if-range", stale)]).await;
        assert_eq!(st, StatusCode::OK, "If-Range {stale}");
        assert!(h.get("content-range").is_none());
        assert_eq!(body, f.bodies[0], "If-Range {stale}: the whole body");
    }
    // Several ranges: the whole body, 200.
    let (st, _, body) = f.get(&url0, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, f.bodies[0]);
    // HEAD answers headers and is no download.
    let r = f.http.head(&url0).send().await.expect("head");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header_str(r.headers(), "etag"), miss_etag);

    // On a miss, a stale If-Range also gets the whole body.
    let url1 = format!("{base}/download/{}", f.ids[1]);
    let (st, h, body) = f
        .get(&url1, &[range, ("if-range", "\"an-older-version\"")])
        .await;
    assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(body, f.bodies[1]);

    server.shutdown();
    server.wait().await.expect("clean shutdown");
    // File 0: miss, hit, 304, 206, 200, 200, 200 (the HEAD is not there).
    let statuses: Vec<i16> = f.events(0).await.iter().map(|e| e.2).collect();
    assert_eq!(statuses, vec![200, 200, 304, 206, 200, 200, 200]);
    let row = f.row(0).await;
    assert_eq!(row.downloads, 6, "the 304 is not a download");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_mirror_on_a_hit_is_bypassed_to_the_origin_without_an_upload() {
    let s3 = S3Server::s3s().await;
    let f = Fixture::new(&s3, TestDb::sqlite().await, &[(Kind::Fresh, 20_000)]).await;
    let proxy = FaultProxy::start(&s3.endpoint).await;
    let mut through = f.bucket_cfg.clone();
    through.endpoint = Some(proxy.endpoint.clone());
    let (server, base) = f.serve(f.config(through)).await;
    let url = format!("{base}/download/{}", f.ids[0]);
    let (_, h, _) = f.get(&url, &[]).await;
    assert_eq!(header_str(&h, "x-cache"), "HIT");

    // The bucket browns out: every request gets 503 SlowDown.
    proxy.faults.throttle_next.store(1_000, Ordering::SeqCst);
    for n in 0..5 {
        let (st, h, body) = f.get(&url, &[]).await;
        assert_eq!(
            (st, header_str(&h, "x-cache")),
            (StatusCode::OK, "BYPASS"),
            "{n}"
        );
        assert_eq!(body, f.bodies[0]);
    }
    assert_eq!(f.origin.gets.load(Ordering::SeqCst), 5);
    assert_eq!(
        proxy.faults.writes.load(Ordering::SeqCst),
        0,
        "nothing re-uploaded"
    );
    assert!(!f.row(0).await.is_stale, "the row is fine");
    // Five failures in a row opened the breaker: hits no longer try the bucket.
    let asked = proxy.faults.requests.load(Ordering::SeqCst);
    let (st, h, _) = f.get(&url, &[]).await;
    assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "BYPASS"));
    assert_eq!(proxy.faults.requests.load(Ordering::SeqCst), asked);
    let metrics = f
        .fetch(&format!("{base}/metrics"))
        .await
        .text()
        .await
        .expect("metrics");
    assert!(
        metrics.contains("mirrorctl_mirror_circuit_open 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mirrorctl_mirror_fallbacks_total 6"),
        "{metrics}"
    );
    server.shutdown();
    server.wait().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn error_bodies_name_no_origin_url_and_fills_past_the_cap_get_503() {
    let s3 = S3Server::s3s().await;
    let f = Fixture::new(
        &s3,
        TestDb::sqlite().await,
        &[
            (Kind::Stale, 600_000),
            (Kind::Stale, 1000),
            (Kind::Stale, 1000),
        ],
    )
    .await;
    // File 2's origin URL carries a token, and nothing listens there.
    let pool = sqlx::SqlitePool::connect(&f.db.url).await.expect("sqlite");
    sqlx::query("UPDATE origin_files SET url = 'http://127.0.0.1:9/x.bin?token=sekrit-123' WHERE id = (SELECT origin_file_id FROM mirrored_files WHERE id = $1)")
        .bind(f.ids[2])
        .execute(&pool)
        .await
        .expect("origin url");
    pool.close().await;
    let mut cfg = f.config(f.bucket_cfg.clone());
    cfg.serve.max_fills = 1;
    let (server, base) = f.serve(cfg).await;
    let (st, _, body) = f.get(&format!("{base}/download/{}", f.ids[2]), &[]).await;
    assert_eq!(st, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains("sekrit") && !text.contains("127.0.0.1:9"),
        "{text}"
    );

    // One fill at a time: a second file's miss meanwhile is told to come back.
    f.origin.chunk_delay_ms.store(100, Ordering::SeqCst);
    let url0 = format!("{base}/download/{}", f.ids[0]);
    let http = f.http.clone();
    let asked = f.origin.gets.load(Ordering::SeqCst);
    let slow =
        tokio::spawn(async move { http.get(&url0).send().await.expect("get").bytes().await });
    // Until the origin is sending that file (under load the fill may take a while to start;
    // the gauge alone could still be counting the failed fill above).
    for _ in 0..200 {
        if f.origin.gets.load(Ordering::SeqCst) > asked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        f.origin.gets.load(Ordering::SeqCst) > asked,
        "the fill started"
    );
    let r = f.fetch(&format!("{base}/download/{}", f.ids[1])).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header_str(r.headers(), "retry-after"), "5");
    let body = slow.await.expect("task").expect("body");
    assert_eq!(body, f.bodies[0]);
    server.shutdown();
    server.wait().await.expect("shutdown");
}
