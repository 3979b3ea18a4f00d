//! Catalog entries without a copy, pull-through of unknown keys and the admin API, against
//! real components over real sockets: s3s-fs in-process, SQLite (and PostgreSQL when
//! configured), and HTTP origins on loopback that log every request and can answer a file, a
//! 404, a 500 or a redirect to another host.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use common::{S3Server, TestDb};
use futures::StreamExt;
use mirrorctl::config::{BucketConfig, Config, HumanDuration, Secret};
use mirrorctl::engine::db::Backend;
use mirrorctl::engine::jobs::Progress;
use mirrorctl::engine::model::FileDetail;
use mirrorctl::engine::ops::catalog::{self, ImportInput, ImportParams};
use mirrorctl::engine::s3::S3Bucket;
use mirrorctl::engine::Ctx;
use mirrorctl::serve::Server;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// An HTTP origin: answers by path, logs every request it receives.

#[derive(Clone)]
enum Answer {
    File(Bytes),
    Status(u16),
    /// `302 Found` to this location.
    Redirect(String),
}

#[derive(Default)]
struct Origin {
    /// By percent-decoded path, without the leading '/'.
    answers: Mutex<HashMap<String, Answer>>,
    /// The raw path and query of every request, in arrival order.
    seen: Mutex<Vec<String>>,
    requests: AtomicUsize,
    /// A pause before each 64 KiB chunk of a file.
    chunk_delay_ms: AtomicU64,
}

impl Origin {
    fn set(&self, path: &str, a: Answer) {
        self.answers
            .lock()
            .expect("answers")
            .insert(path.to_string(), a);
    }

    fn file(&self, path: &str, data: &[u8]) {
        self.set(path, Answer::File(Bytes::copy_from_slice(data)));
    }

    /// Requests whose decoded path is `/{path}`.
    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|raw| decoded_path(raw) == path)
            .count()
    }

    fn total(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("seen").clone()
    }
}

/// `/a%20b?x=1` → `a b`.
fn decoded_path(raw: &str) -> String {
    let path = raw.split('?').next().unwrap_or("");
    percent_encoding::percent_decode_str(path.trim_start_matches('/'))
        .decode_utf8_lossy()
        .into_owned()
}

async fn origin_answer(State(o): State<Arc<Origin>>, req: Request) -> Response {
    let raw = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    o.requests.fetch_add(1, Ordering::SeqCst);
    o.seen.lock().expect("seen").push(raw.clone());
    let answer = o
        .answers
        .lock()
        .expect("answers")
        .get(&decoded_path(&raw))
        .cloned();
    let mut r = Response::new(Body::empty());
    match answer {
        None => *r.status_mut() = StatusCode::NOT_FOUND,
        Some(Answer::Status(s)) => {
            *r.status_mut() = StatusCode::from_u16(s).expect("status");
        }
        Some(Answer::Redirect(to)) => {
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&to).expect("location"),
            );
        }
        Some(Answer::File(data)) => {
            if req.method() == Method::GET {
                let delay = Duration::from_millis(o.chunk_delay_ms.load(Ordering::SeqCst));
                let chunks: Vec<Bytes> =
                    data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
                let stream =
                    futures::stream::unfold(chunks.into_iter(), move |mut it| async move {
                        let c = it.next()?;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Some((Ok::<_, std::io::Error>(c), it))
                    });
                r = Response::new(Body::from_stream(stream));
            }
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
            h.insert(
                header::ETAG,
                HeaderValue::from_str(&format!("\"{}\"", &sha256(&data)[..16])).expect("etag"),
            );
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
    }
    r
}

/// An origin listening on `ip`, port chosen by the system.
async fn start_origin(ip: &str) -> (SocketAddr, Arc<Origin>) {
    let o = Arc::new(Origin::default());
    let app = axum::Router::new()
        .fallback(origin_answer)
        .with_state(o.clone());
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, o)
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

fn content(seed: usize, size: usize) -> Vec<u8> {
    (0..size)
        .map(|n| ((n / 5) as u8).wrapping_mul(31).wrapping_add(seed as u8))
        .collect()
}

/// What a key's path segments may keep unencoded in a request URL.
const KEY_CHARS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

// ---------------------------------------------------------------------------------------------
// A mirror bucket, a database, an origin, and the data plane in front of them.

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

struct Env {
    db: TestDb,
    bucket: S3Bucket,
    bucket_cfg: BucketConfig,
    origin: Arc<Origin>,
    origin_addr: SocketAddr,
    http: reqwest::Client,
}

struct Running {
    server: Server,
    base: String,
    admin: Option<String>,
}

impl Running {
    async fn stop(self) {
        self.server.shutdown();
        self.server.wait().await.expect("clean shutdown");
    }
}

impl Env {
    async fn new(s3: &S3Server, db: TestDb) -> Env {
        let (origin_addr, origin) = start_origin("127.0.0.1").await;
        let (bucket_cfg, bucket) = s3.new_bucket("pull").await;
        Env {
            db,
            bucket,
            bucket_cfg,
            origin,
            origin_addr,
            http: common::http_client()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
        }
    }

    fn backend(&self) -> String {
        format!("{:?}", self.db.db.backend())
    }

    /// Pull-through on (`origin.base_url` set), events flushed every 200 ms.
    fn config(&self) -> Config {
        let mut c = common::config(&self.db.url, self.bucket_cfg.clone());
        c.origin.base_url = Some(format!("http://{}/", self.origin_addr));
        c.origin.retries = 0;
        c.origin.timeout = HumanDuration(Duration::from_secs(20));
        c.serve.event_flush = HumanDuration(Duration::from_millis(200));
        c.serve.shutdown_timeout = HumanDuration(Duration::from_secs(20));
        c
    }

    fn ctx(&self, config: Config) -> Ctx {
        Ctx::new(config, self.db.db.clone(), false)
    }

    async fn serve(&self, config: Config) -> Running {
        self.start(config, false).await
    }

    /// With the admin API on its own listener and `ADMIN_TOKEN`.
    async fn serve_with_admin(&self, mut config: Config) -> Running {
        config.serve.admin_token = Some(Secret::new(ADMIN_TOKEN));
        self.start(config, true).await
    }

    async fn start(&self, config: Config, with_admin: bool) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let admin_listener = if with_admin {
            Some(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind admin"),
            )
        } else {
            None
        };
        let server = mirrorctl::serve::start_with_admin(
            Arc::new(self.ctx(config)),
            listener,
            admin_listener,
        )
        .await
        .expect("start serve");
        let base = format!("http://{}", server.addr());
        let admin = server.admin_addr().map(|a| format!("http://{a}"));
        assert_eq!(
            admin.is_some(),
            with_admin,
            "an admin listener iff asked for"
        );
        Running {
            server,
            base,
            admin,
        }
    }

    async fn get(&self, url: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let r = self.http.get(url).send().await.expect("request");
        let status = r.status();
        let h = r.headers().clone();
        let body = r.bytes().await.expect("body").to_vec();
        (status, h, body)
    }

    async fn object(&self, key: &str) -> Option<Vec<u8>> {
        let mut o = self.bucket.get(key, None).await.expect("get object")?;
        let mut v = Vec::new();
        o.body.read_to_end(&mut v).await.expect("object body");
        Some(v)
    }

    /// The fresh mirrored row of `key`, once a fill has inserted it (up to 10 s).
    async fn wait_row(&self, key: &str) -> FileDetail {
        for _ in 0..200 {
            if let Some(row) = self.db.db.get_file_by_key(key).await.expect("db") {
                if !row.is_stale && row.deleted_at.is_none() {
                    return row;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: no fresh mirrored row for {key:?} within 10 s",
            self.backend()
        );
    }

    /// Waits until no fill is in flight (up to 10 s): every copy started is recorded and its
    /// cached row forgotten, so the next request sees the database.
    async fn wait_idle(&self, base: &str) {
        for _ in 0..200 {
            let text = self
                .http
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics text");
            if text.lines().any(|l| l == "mirrorctl_fills_in_flight 0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fills still in flight after 10 s");
    }

    async fn count(&self, sql: &str, arg: Option<&str>) -> i64 {
        match self.db.db.backend() {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.db.url)
                    .await
                    .expect("sqlite");
                let mut q = sqlx::query_scalar::<_, i64>(sql);
                if let Some(a) = arg {
                    q = q.bind(a.to_string());
                }
                let v = q.fetch_one(&pool).await.expect("count");
                pool.close().await;
                v
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db.url).await.expect("postgres");
                let mut q = sqlx::query_scalar::<_, i64>(sql);
                if let Some(a) = arg {
                    q = q.bind(a.to_string());
                }
                let v = q.fetch_one(&pool).await.expect("count");
                pool.close().await;
                v
            }
        }
    }

    /// Catalog rows that name `key` as key, remote id or URL.
    async fn catalog_rows_naming(&self, key: &str) -> i64 {
        self.count(
            "SELECT count(*) FROM origin_files WHERE key = $1 OR remote_id = $1 OR url = $1",
            Some(key),
        )
        .await
    }

    async fn table_rows(&self, table: &str) -> i64 {
        self.count(&format!("SELECT count(*) FROM {table}"), None)
            .await
    }

    /// Every download event: `(file_id, cache_hit, bytes, status)`, in id order.
    async fn events(&self) -> Vec<(i64, bool, i64, i16)> {
        let sql = "SELECT file_id, cache_hit, bytes, status FROM download_events ORDER BY id";
        match self.db.db.backend() {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.db.url)
                    .await
                    .expect("sqlite");
                let v = sqlx::query_as(sql).fetch_all(&pool).await.expect("events");
                pool.close().await;
                v
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db.url).await.expect("postgres");
                let v = sqlx::query_as(sql).fetch_all(&pool).await.expect("events");
                pool.close().await;
                v
            }
        }
    }

    /// Waits until `n` download events are written (up to 10 s), and returns them.
    async fn wait_events(&self, n: usize) -> Vec<(i64, bool, i64, i16)> {
        let mut ev = Vec::new();
        for _ in 0..200 {
            ev = self.events().await;
            if ev.len() >= n {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{}: {n} events not written within 10 s: {ev:?}",
            self.backend()
        );
    }
}

fn files_url(base: &str, key: &str) -> String {
    format!(
        "{base}/files/{}",
        percent_encoding::utf8_percent_encode(key, KEY_CHARS)
    )
}

fn header_str<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
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

/// A catalog entry (imported, key set) without a mirrored row: the first GET is a miss that
/// streams the origin's body (fetched from the entry's URL, not its key) and inserts the row;
/// the next is a hit; the first download's event carries the new row's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalog_entry_without_a_copy_is_a_miss_then_a_hit() {
    let s3 = S3Server::s3s().await;
    for db in TestDb::all().await {
        let env = Env::new(&s3, db).await;
        let backend = env.backend();
        let size = 200_000;
        let data = content(1, size);
        env.origin.file("files/cat-1-v1.bin", &data);

        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("catalog.jsonl");
        std::fs::write(
            &path,
            format!(
                "{{\"source\":\"http\",\"remote_id\":\"cat-1\",\"url\":\"files/cat-1-v1.bin\",\
                 \"key\":\"pkgs/cat-1.bin\",\"size\":{size}}}\n"
            ),
        )
        .expect("write catalog");
        let ctx = env.ctx(env.config());
        let report = catalog::import(
            &ctx,
            ImportParams {
                input: ImportInput::Path(path.display().to_string()),
                ..Default::default()
            },
            &Progress::none(),
        )
        .await
        .expect("import");
        assert_eq!(
            (report.merge.added, report.skipped),
            (1, 0),
            "{backend}: {report:?}"
        );
        let entry = env
            .db
            .db
            .catalog_get(env.bucket.name(), "http/cat-1")
            .await
            .expect("db")
            .expect("catalog entry");
        assert_eq!(entry.key.as_deref(), Some("pkgs/cat-1.bin"));
        assert_eq!(entry.mirrored_id, None);
        assert_eq!(env.table_rows("mirrored_files").await, 0);

        let run = env.serve(env.config()).await;
        let url = files_url(&run.base, "pkgs/cat-1.bin");
        let (st, h, body) = env.get(&url).await;
        assert_eq!(st, StatusCode::OK, "{backend}");
        assert_eq!(header_str(&h, "x-cache"), "MISS", "{backend}");
        assert_eq!(header_str(&h, "content-length"), size.to_string());
        assert!(body == data, "{backend}: the origin's bytes, whole");
        assert_eq!(env.origin.count("files/cat-1-v1.bin"), 1, "{backend}");
        assert_eq!(
            env.origin.count("pkgs/cat-1.bin"),
            0,
            "{backend}: fetched by the entry's URL, not pulled by key"
        );

        let row = env.wait_row("pkgs/cat-1.bin").await;
        assert_eq!(row.origin_file_id, entry.id, "{backend}");
        assert_eq!(row.bucket, env.bucket.name());
        assert_eq!(row.size, size as i64);
        assert_eq!(row.sha256.as_deref(), Some(sha256(&data).as_str()));
        assert_eq!(env.table_rows("mirrored_files").await, 1, "{backend}");
        assert!(
            env.object("pkgs/cat-1.bin").await.as_deref() == Some(&data[..]),
            "{backend}: the copy is in the mirror"
        );
        env.wait_idle(&run.base).await;

        let (st, h, body) = env.get(&url).await;
        assert_eq!(
            (st, header_str(&h, "x-cache")),
            (StatusCode::OK, "HIT"),
            "{backend}"
        );
        assert!(body == data, "{backend}");
        assert_eq!(
            env.origin.total(),
            1,
            "{backend}: the hit cost the origin nothing"
        );

        // Written by the periodic flush (200 ms), not only at shutdown.
        let ev = env.wait_events(2).await;
        assert_eq!(
            ev,
            vec![
                (row.id, false, size as i64, 200),
                (row.id, true, size as i64, 200)
            ],
            "{backend}"
        );
        run.stop().await;
        assert_eq!(env.events().await.len(), 2, "{backend}");
        let row = env
            .db
            .db
            .get_file_by_id(row.id)
            .await
            .expect("db")
            .expect("row");
        assert_eq!(row.downloads, 2, "{backend}");
    }
}

/// A key neither the mirror nor the catalog knows is fetched from `base_url + key`, served
/// byte for byte, registered in the catalog and stored; the next GET is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_key_is_pulled_registered_and_mirrored() {
    let s3 = S3Server::s3s().await;
    for db in TestDb::all().await {
        let env = Env::new(&s3, db).await;
        let backend = env.backend();
        let key = "pull/dir/file-ü 1.bin";
        let data = content(2, 300_007);
        env.origin.file(key, &data);
        let run = env.serve(env.config()).await;
        assert_eq!(env.table_rows("origin_files").await, 0);

        let url = files_url(&run.base, key);
        let (st, h, body) = env.get(&url).await;
        assert_eq!(st, StatusCode::OK, "{backend}");
        assert_eq!(header_str(&h, "x-cache"), "MISS");
        assert_eq!(header_str(&h, "content-length"), "300007");
        assert!(body == data, "{backend}: byte for byte");
        assert_eq!(env.origin.count(key), 1, "{backend}");

        let row = env.wait_row(key).await;
        assert_eq!(row.size, data.len() as i64);
        assert_eq!(row.sha256.as_deref(), Some(sha256(&data).as_str()));
        let entry = env
            .db
            .db
            .catalog_get(env.bucket.name(), &format!("http/{key}"))
            .await
            .expect("db")
            .expect("a catalog entry for the pulled key");
        assert_eq!(
            (
                entry.source.as_str(),
                entry.remote_id.as_str(),
                entry.url.as_str(),
                entry.key.as_deref()
            ),
            (
                "http",
                key,
                mirrorctl::engine::keys::key_to_url(key).as_str(),
                Some(key)
            ),
            "{backend}"
        );
        assert_eq!(entry.size, Some(data.len() as i64));
        assert_eq!(entry.mirrored_id, Some(row.id));
        assert_eq!(row.origin_file_id, entry.id);
        assert_eq!(env.table_rows("origin_files").await, 1, "{backend}");
        assert!(
            env.object(key).await.as_deref() == Some(&data[..]),
            "{backend}: the mirror object"
        );
        env.wait_idle(&run.base).await;

        let (st, h, body) = env.get(&url).await;
        assert_eq!(
            (st, header_str(&h, "x-cache")),
            (StatusCode::OK, "HIT"),
            "{backend}"
        );
        assert!(body == data);
        assert_eq!(env.origin.total(), 1, "{backend}");
        run.stop().await;
        assert_eq!(
            env.events().await,
            vec![
                (row.id, false, data.len() as i64, 200),
                (row.id, true, data.len() as i64, 200)
            ],
            "{backend}: the pulled download is recorded with the new row's id"
        );
    }
}

/// Concurrent GETs of one unknown key share one origin fetch and register one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_of_one_key_share_one_fetch() {
    let s3 = S3Server::s3s().await;
    let env = Env::new(&s3, TestDb::sqlite().await).await;
    let key = "pull/slow.bin";
    let data = content(3, 2 * 1024 * 1024 + 3);
    env.origin.file(key, &data);
    // 33 chunks of 64 KiB, 20 ms apart: about 0.7 s on the wire.
    env.origin.chunk_delay_ms.store(20, Ordering::SeqCst);
    let run = env.serve(env.config()).await;
    let url = files_url(&run.base, key);
    let mut clients = Vec::new();
    for n in 0..8 {
        let (http, url) = (env.http.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(n * 30)).await;
            let r = http.get(&url).send().await.expect("get");
            (r.status(), r.bytes().await.expect("body").to_vec())
        }));
    }
    for c in clients {
        let (status, body) = c.await.expect("client");
        assert_eq!(status, StatusCode::OK);
        assert!(body == data, "every client gets the origin's bytes");
    }
    assert_eq!(env.origin.count(key), 1, "one origin fetch");
    let row = env.wait_row(key).await;
    env.wait_idle(&run.base).await;
    assert_eq!(env.catalog_rows_naming(key).await, 1);
    assert_eq!(env.table_rows("mirrored_files").await, 1);
    run.stop().await;
    let ev = env.events().await;
    assert_eq!(ev.len(), 8, "{ev:?}");
    assert!(
        ev.iter()
            .all(|e| *e == (row.id, false, data.len() as i64, 200)),
        "{ev:?}"
    );
}

/// 1,000 GETs (50 at a time) of 100 keys the origin does not have: all 404, and the origin is
/// asked once per key (the first request must ask; single-flight and the negative cache stop
/// the rest within `serve.negative_ttl`). Nothing is registered. After the TTL the origin is
/// asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_negative_cache_spares_the_origin() {
    let s3 = S3Server::s3s().await;
    let env = Env::new(&s3, TestDb::sqlite().await).await;
    let run = env.serve(env.config()).await;
    let keys: Vec<String> = (0..100).map(|k| format!("gone/{k}/f.bin")).collect();
    // First 500: each key 5 times in a row (its requests overlap: single-flight), then 500
    // in rounds over all keys (later requests: the negative cache).
    let order: Vec<usize> = (0..500)
        .map(|i| i / 5)
        .chain((0..500).map(|i| i % 100))
        .collect();
    let statuses: Vec<StatusCode> = futures::stream::iter(order.into_iter().map(|k| {
        let url = files_url(&run.base, &keys[k]);
        let http = env.http.clone();
        async move { http.get(&url).send().await.expect("get").status() }
    }))
    .buffer_unordered(50)
    .collect()
    .await;
    assert_eq!(statuses.len(), 1000);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NOT_FOUND),
        "{:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::NOT_FOUND)
            .collect::<Vec<_>>()
    );
    let per_key: Vec<(usize, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i, env.origin.count(k)))
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        per_key.is_empty(),
        "keys the origin was not asked exactly once for, (key, requests): {per_key:?}"
    );
    assert_eq!(env.origin.total(), 100);
    assert_eq!(env.table_rows("origin_files").await, 0);
    assert_eq!(env.table_rows("mirrored_files").await, 0);
    run.stop().await;

    // A short TTL: remembered within it (even once the origin has the file), asked after.
    let mut cfg = env.config();
    cfg.serve.negative_ttl = HumanDuration(Duration::from_millis(700));
    let run = env.serve(cfg).await;
    let key = "late/f.bin";
    let url = files_url(&run.base, key);
    assert_eq!(env.get(&url).await.0, StatusCode::NOT_FOUND);
    let data = content(4, 1000);
    env.origin.file(key, &data);
    assert_eq!(env.get(&url).await.0, StatusCode::NOT_FOUND);
    assert_eq!(env.origin.count(key), 1, "remembered within the TTL");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (st, _, body) = env.get(&url).await;
    assert_eq!(st, StatusCode::OK, "asked again after the TTL");
    assert_eq!(body, data);
    assert_eq!(env.origin.count(key), 2);
    env.wait_row(key).await;
    run.stop().await;
}

/// An origin 500 is a 502 (not remembered as a 404: the next request asks again); a redirect
/// to another host (another address, or another port of the same one) is a 502 even though
/// the other host answered 200. Neither registers nor stores anything. A redirect within the
/// origin's own host is followed and registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_errors_and_foreign_redirects_register_nothing() {
    let s3 = S3Server::s3s().await;
    let env = Env::new(&s3, TestDb::sqlite().await).await;
    let (other_ip, other_ip_origin) = start_origin("127.0.0.2").await;
    let (other_port, other_port_origin) = start_origin("127.0.0.1").await;
    let run = env.serve(env.config()).await;

    env.origin.set("broken/a.bin", Answer::Status(500));
    for attempt in 1..=2 {
        let (st, _, body) = env.get(&files_url(&run.base, "broken/a.bin")).await;
        assert_eq!(st, StatusCode::BAD_GATEWAY);
        let v = json(&body);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("500")),
            "{v}"
        );
        assert_eq!(env.origin.count("broken/a.bin"), attempt);
    }
    assert_eq!(env.catalog_rows_naming("broken/a.bin").await, 0);

    let redirects = [
        ("redir/b.bin", other_ip, &other_ip_origin),
        ("redir/c.bin", other_port, &other_port_origin),
    ];
    for (i, (key, to, to_origin)) in redirects.iter().enumerate() {
        to_origin.file(&format!("elsewhere/{key}"), &content(10 + i, 5000));
        env.origin.set(
            key,
            Answer::Redirect(format!("http://{to}/elsewhere/{key}")),
        );
        let (st, _, body) = env.get(&files_url(&run.base, key)).await;
        assert_eq!(
            st,
            StatusCode::BAD_GATEWAY,
            "redirect to {to}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(env.origin.count(key), 1);
        assert_eq!(
            to_origin.count(&format!("elsewhere/{key}")),
            1,
            "the redirect was followed to {to}: the 502 is the host check's"
        );
        assert_eq!(env.catalog_rows_naming(key).await, 0, "{key}");
    }

    let same = content(20, 7000);
    env.origin.file("real/d.bin", &same);
    env.origin
        .set("redir/d.bin", Answer::Redirect("/real/d.bin".into()));
    let (st, _, body) = env.get(&files_url(&run.base, "redir/d.bin")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, same);
    env.wait_row("redir/d.bin").await;
    env.wait_idle(&run.base).await;
    assert_eq!(env.catalog_rows_naming("redir/d.bin").await, 1);

    for key in ["broken/a.bin", "redir/b.bin", "redir/c.bin"] {
        assert_eq!(env.object(key).await, None, "{key} not in the mirror");
        assert!(env.db.db.get_file_by_key(key).await.expect("db").is_none());
    }
    assert_eq!(env.table_rows("origin_files").await, 1);
    run.stop().await;
}

/// `origin.allow_prefixes` limits what pull-through fetches (others 404 without asking the
/// origin) but not catalog entries; `serve.pull_through = false` turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_prefixes_and_pull_through_off() {
    let s3 = S3Server::s3s().await;
    let env = Env::new(&s3, TestDb::sqlite().await).await;
    let allowed = content(30, 4000);
    env.origin.file("other/a.bin", &content(31, 4000));
    env.origin.file("pkgs/a.bin", &allowed);
    env.origin.file("pkgs/b.bin", &content(32, 4000));
    env.origin.file("files/listed.bin", &content(33, 4000));
    let mut cfg = env.config();
    cfg.origin.allow_prefixes = vec!["pkgs/".into(), "tools/".into()];
    let run = env.serve(cfg.clone()).await;

    let (st, _, body) = env.get(&files_url(&run.base, "other/a.bin")).await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(env.origin.total(), 0, "the origin saw no request");
    assert_eq!(env.table_rows("origin_files").await, 0);

    let (st, h, body) = env.get(&files_url(&run.base, "pkgs/a.bin")).await;
    assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "MISS"));
    assert_eq!(body, allowed);
    env.wait_row("pkgs/a.bin").await;
    env.wait_idle(&run.base).await;

    // A catalog entry outside the prefixes is still served.
    let report = catalog::upsert_one(
        &env.ctx(cfg),
        "http",
        "listed",
        serde_json::json!({"url": "files/listed.bin", "key": "other/listed.bin"})
            .as_object()
            .expect("object")
            .clone(),
    )
    .await
    .expect("upsert");
    assert_eq!(report.merge.added, 1);
    let (st, _, body) = env.get(&files_url(&run.base, "other/listed.bin")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, content(33, 4000));
    env.wait_row("other/listed.bin").await;
    run.stop().await;

    let mut cfg = env.config();
    cfg.serve.pull_through = Some(false);
    let run = env.serve(cfg).await;
    let before = env.origin.total();
    let (st, _, _) = env.get(&files_url(&run.base, "pkgs/b.bin")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        env.origin.total(),
        before,
        "pull-through off: the origin is not asked"
    );
    assert_eq!(env.catalog_rows_naming("pkgs/b.bin").await, 0);
    run.stop().await;
}

/// `..`, `.`, empty segments and control characters are refused (400) before pull-through
/// could ask the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_keys_are_refused_before_the_origin() {
    let s3 = S3Server::s3s().await;
    let env = Env::new(&s3, TestDb::sqlite().await).await;
    env.origin.file("etc/passwd", b"root:x:0:0");
    let run = env.serve(env.config()).await;
    for path in [
        "/files/pull/../etc/passwd",
        "/files/pull/%2E%2E/etc/passwd",
        "/files/%2e%2e/etc/passwd",
        "/files/pull/./x",
        "/files/pull//x",
        "/files//pull/x",
        "/files/pull/x/",
        "/files/pull/a%0Ab",
        "/files/pull/a%00b",
        "/files/pull/a%7Fb",
    ] {
        assert_eq!(raw_status(&run.base, path).await, 400, "{path}");
    }
    assert_eq!(env.origin.total(), 0, "{:?}", env.origin.seen());
    assert_eq!(env.table_rows("origin_files").await, 0);
    run.stop().await;
}

/// A pulled key must map to `base_url` + the key as a path under it: a key is not a URL. Keys
/// that pass the key checks but are read as URL syntax when joined to `base_url`:
/// percent-encoded dot segments (`%2e%2e`, which URL parsers treat as `..`, here under an
/// allowed prefix), a first segment that looks like a scheme (`http:`), and a literal `%41` or
/// `?` in the key. Every failure is collected, then reported together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulled_keys_stay_under_base_url() {
    let s3 = S3Server::s3s().await;
    let env = Env::new(&s3, TestDb::sqlite().await).await;
    let (elsewhere, elsewhere_origin) = start_origin("127.0.0.2").await;
    elsewhere_origin.file("x.bin", b"from another host");
    env.origin.file("private/secret.bin", b"not under base_url");
    let right = content(40, 3000);
    let wrong = content(41, 3000);
    env.origin.file("base/pull/a%41.bin", &right);
    env.origin.file("base/pull/aA.bin", &wrong);
    env.origin.file("base/pull/q?v=1.bin", &right);
    env.origin.file("base/pull/q", &wrong);
    let base_url = format!("http://{}/base/", env.origin_addr);
    let mut failures = Vec::new();
    let requests_since = |n: usize| env.origin.seen().split_off(n);

    let mut cfg = env.config();
    cfg.origin.base_url = Some(base_url.clone());
    cfg.origin.allow_prefixes = vec!["pkgs/".into()];
    let run = env.serve(cfg).await;
    let key = "pkgs/%2e%2e/%2e%2e/private/secret.bin";
    let (st, _, body) = env.get(&files_url(&run.base, key)).await;
    if st == StatusCode::OK || env.origin.count("private/secret.bin") > 0 {
        env.wait_idle(&run.base).await;
        failures.push(format!(
            "GET {} (allow_prefixes [\"pkgs/\"], base_url {base_url}): expected 400 or 404 and \
             no origin request outside /base/; got {st} with {:?}, the origin saw {:?}, catalog \
             rows naming the key: {}, mirror object: {}",
            files_url("", key),
            String::from_utf8_lossy(&body),
            requests_since(0),
            env.catalog_rows_naming(key).await,
            env.object(key).await.is_some()
        ));
    }
    env.wait_idle(&run.base).await;
    run.stop().await;

    // The default: no allow_prefixes.
    let mut cfg = env.config();
    cfg.origin.base_url = Some(base_url.clone());
    let run = env.serve(cfg).await;
    let key = format!("http:/{elsewhere}/x.bin");
    let before = env.origin.total();
    let (st, _, body) = env.get(&files_url(&run.base, &key)).await;
    if elsewhere_origin.total() > 0 {
        failures.push(format!(
            "GET {}: expected one request to {base_url}{key} (a 404 there); got {st} ({}), \
             {elsewhere} received {:?} and the origin {:?}",
            files_url("", &key),
            String::from_utf8_lossy(&body),
            elsewhere_origin.seen(),
            requests_since(before)
        ));
    }

    for key in ["pull/a%41.bin", "pull/q?v=1.bin"] {
        let before = env.origin.total();
        let (st, _, body) = env.get(&files_url(&run.base, key)).await;
        if st != StatusCode::OK || body != right {
            let got = if body == wrong {
                "the bytes of another origin file".to_string()
            } else {
                String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
            };
            failures.push(format!(
                "GET {}: expected 200 with the origin's /base/{key} (the key's path, encoded); \
                 got {st} with {got}; the origin saw {:?}",
                files_url("", key),
                requests_since(before)
            ));
        }
    }
    env.wait_idle(&run.base).await;
    run.stop().await;
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The admin API: a missing or wrong bearer token is a 401 that changes nothing; PUT upserts
/// one entry, POST merges JSON Lines (a bad line skipped and named, or with `?strict=true`
/// the whole body refused); an entry whose size changes marks its mirrored copy stale. The
/// public port does not serve it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_needs_its_token_and_reports_the_import() {
    let s3 = S3Server::s3s().await;
    for db in TestDb::all().await {
        let env = Env::new(&s3, db).await;
        let backend = env.backend();
        let run = env.serve_with_admin(env.config()).await;
        let admin = run.admin.clone().expect("admin address");
        assert_ne!(admin, run.base);
        let data = content(50, 9000);
        env.origin.file("files/r1-v1.bin", &data);
        let entry =
            serde_json::json!({"url": "files/r1-v1.bin", "key": "pkgs/r1.bin", "size": 9000});
        let put_url = format!("{admin}/catalog/http/r1");
        let ops_before = env.table_rows("operations").await;

        let wrong = format!("Bearer {ADMIN_TOKEN}x");
        let short = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
        let basic = format!("Basic {ADMIN_TOKEN}");
        for auth in [
            None,
            Some("Bearer nope"),
            Some(&wrong[..]),
            Some(&short[..]),
            Some(&basic[..]),
        ] {
            let mut rb = env.http.put(&put_url).body(entry.to_string());
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.send().await.expect("put");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{backend}: {auth:?}");
            assert_eq!(header_str(r.headers(), "www-authenticate"), "Bearer");
            let body = r.text().await.expect("body");
            assert!(!body.contains(ADMIN_TOKEN), "the token is not echoed");
            let mut rb = env
                .http
                .post(format!("{admin}/catalog"))
                .body("{\"remote_id\":\"r2\",\"url\":\"files/r2.bin\"}\n");
            if let Some(a) = auth {
                rb = rb.header("authorization", a);
            }
            let r = rb.send().await.expect("post");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{backend}: {auth:?}");
        }
        assert_eq!(env.table_rows("origin_files").await, 0, "{backend}");
        assert_eq!(env.table_rows("operations").await, ops_before, "{backend}");

        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let put = |url: String, body: String| {
            let rb = env
                .http
                .put(url)
                .header("authorization", &bearer)
                .body(body);
            async move {
                let r = rb.send().await.expect("put");
                (r.status(), r.bytes().await.expect("body").to_vec())
            }
        };
        let post = |query: &str, body: String| {
            let rb = env
                .http
                .post(format!("{admin}/catalog{query}"))
                .header("authorization", &bearer)
                .body(body);
            async move {
                let r = rb.send().await.expect("post");
                (r.status(), r.bytes().await.expect("body").to_vec())
            }
        };

        let (st, body) = put(put_url.clone(), entry.to_string()).await;
        assert_eq!(
            st,
            StatusCode::OK,
            "{backend}: {}",
            String::from_utf8_lossy(&body)
        );
        let v = json(&body);
        assert_eq!(
            (
                &v["added"],
                &v["changed"],
                &v["unchanged"],
                &v["marked_stale"],
                &v["skipped"]
            ),
            (
                &Value::from(1),
                &Value::from(0),
                &Value::from(0),
                &Value::from(0),
                &Value::from(0)
            ),
            "{backend}: {v}"
        );
        assert!(v["errors"].as_array().is_some_and(Vec::is_empty), "{v}");
        let row = env
            .db
            .db
            .catalog_get(env.bucket.name(), "http/r1")
            .await
            .expect("db")
            .expect("entry");
        assert_eq!(
            (row.url.as_str(), row.key.as_deref(), row.size),
            ("files/r1-v1.bin", Some("pkgs/r1.bin"), Some(9000))
        );
        let (st, body) = put(put_url.clone(), entry.to_string()).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(json(&body)["unchanged"], 1, "{backend}");

        // A remote id with slashes.
        let (st, body) = put(
            format!("{admin}/catalog/http/mods/42"),
            serde_json::json!({"url": "files/m42.bin"}).to_string(),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert!(env
            .db
            .db
            .catalog_get(env.bucket.name(), "http/mods/42")
            .await
            .expect("db")
            .is_some());

        // Bad bodies: 400 and nothing added.
        let before = env.table_rows("origin_files").await;
        for bad in [
            "[1,2]",
            "not json",
            "{\"size\": 10}",
            "{\"url\":\"a\",\"size\":\"x\"}",
        ] {
            let (st, body) = put(format!("{admin}/catalog/http/bad"), bad.into()).await;
            assert_eq!(
                st,
                StatusCode::BAD_REQUEST,
                "{backend}: {bad}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        assert_eq!(env.table_rows("origin_files").await, before);

        // Mirror the entry, then change its size: the copy is marked stale.
        let (st, h, got) = env.get(&files_url(&run.base, "pkgs/r1.bin")).await;
        assert_eq!((st, header_str(&h, "x-cache")), (StatusCode::OK, "MISS"));
        assert_eq!(got, data);
        let mirrored = env.wait_row("pkgs/r1.bin").await;
        env.wait_idle(&run.base).await;
        let changed =
            serde_json::json!({"url": "files/r1-v1.bin", "key": "pkgs/r1.bin", "size": 9001});
        let (st, body) = put(put_url.clone(), changed.to_string()).await;
        assert_eq!(st, StatusCode::OK);
        let v = json(&body);
        assert_eq!(
            (&v["changed"], &v["marked_stale"]),
            (&Value::from(1), &Value::from(1)),
            "{backend}: {v}"
        );
        let after = env
            .db
            .db
            .get_file_by_id(mirrored.id)
            .await
            .expect("db")
            .expect("row");
        assert!(after.is_stale, "{backend}");
        assert_eq!(after.stale_reason.as_deref(), Some("origin_changed"));

        // JSON Lines with one bad line: skipped and named, the rest merged.
        let before = env.table_rows("origin_files").await;
        let lines = "{\"remote_id\":\"p1\",\"url\":\"files/p1.bin\"}\n\
                     {\"remote_id\":\"p2\",\"size\":5}\n\
                     {\"remote_id\":\"p3\",\"url\":\"files/p3.bin\",\"size\":7}\n";
        let (st, body) = post("", lines.into()).await;
        assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v = json(&body);
        assert_eq!(
            (&v["added"], &v["skipped"], &v["errors"][0]["line"]),
            (&Value::from(2), &Value::from(1), &Value::from(2)),
            "{backend}: {v}"
        );
        assert_eq!(v["errors"][0]["field"], "url", "{v}");
        assert_eq!(env.table_rows("origin_files").await, before + 2);

        // Strict: the first bad line refuses the whole body.
        let lines = "{\"remote_id\":\"s1\",\"url\":\"files/s1.bin\"}\n\
                     {\"remote_id\":\"s2\",\"url\":\"files/s2.bin\",\"size\":-1}\n";
        let (st, body) = post("?strict=true", lines.into()).await;
        assert_eq!(
            st,
            StatusCode::BAD_REQUEST,
            "{backend}: {}",
            String::from_utf8_lossy(&body)
        );
        let v = json(&body);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("line 2")),
            "{v}"
        );
        assert_eq!(
            env.table_rows("origin_files").await,
            before + 2,
            "{backend}"
        );
        assert_eq!(env.catalog_rows_naming("s1").await, 0);

        // Not on the public port, with or without the token.
        for (method, path) in [
            (reqwest::Method::PUT, "/catalog/http/pub"),
            (reqwest::Method::POST, "/catalog"),
            (reqwest::Method::GET, "/catalog"),
        ] {
            let r = env
                .http
                .request(method.clone(), format!("{}{path}", run.base))
                .header("authorization", &bearer)
                .body("{\"remote_id\":\"pub\",\"url\":\"files/pub.bin\"}\n")
                .send()
                .await
                .expect("public");
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {path}");
        }
        assert_eq!(env.catalog_rows_naming("pub").await, 0);
        run.stop().await;
    }
}
