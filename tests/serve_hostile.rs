//! The data plane against hostile and unlucky clients, over real sockets: connections that send
//! half a request and stall (slowloris), kept-alive connections left idle, more connections
//! than `serve.max_connections`, and clients behind proxies for the rate limit. The mirror is
//! s3s-fs in-process over a SQLite database; every request is a hit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::{S3Server, TestDb};
use mirrorctl::config::{Config, HumanDuration};
use mirrorctl::engine::model::{NewMirroredFile, NewOriginFile};
use mirrorctl::engine::Ctx;
use mirrorctl::serve::Server;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIZE: usize = 1000;

/// One fresh file in the mirror and its rows.
struct Mirror {
    _s3: S3Server,
    db: TestDb,
    config: Config,
    id: i64,
    body: Vec<u8>,
}

impl Mirror {
    async fn new() -> Mirror {
        Mirror::with_size(SIZE).await
    }

    async fn with_size(size: usize) -> Mirror {
        let s3 = S3Server::s3s().await;
        let db = TestDb::sqlite().await;
        let (bucket_cfg, bucket) = s3.new_bucket("hostile").await;
        let key = "mods/0/hit.zip";
        let body: Vec<u8> = (0..size).map(|n| (n % 251) as u8).collect();
        let etag = bucket
            .put_stream(key, &body[..], Some("application/zip"))
            .await
            .expect("upload")
            .etag;
        let origin_ids = db
            .db
            .insert_origin_files(&[NewOriginFile {
                source: "http".into(),
                remote_id: "r0".into(),
                file_name: "hit.zip".into(),
                url: key.into(),
                size: Some(size as i64),
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
                key: key.into(),
                size: size as i64,
                sha256: Some(hex::encode(sha2::Sha256::digest(&body))),
                etag,
                mirrored_at: Utc::now() - TimeDelta::days(2),
                is_stale: false,
                stale_reason: None,
            }])
            .await
            .expect("mirrored row");
        let mut config = common::config(&db.url, bucket_cfg);
        config.serve.event_flush = HumanDuration(Duration::from_millis(100));
        config.serve.shutdown_timeout = HumanDuration(Duration::from_secs(5));
        Mirror {
            _s3: s3,
            db,
            config,
            id: ids[0],
            body,
        }
    }

    async fn serve(&self, config: Config) -> (Server, String) {
        let ctx = Ctx::new(config, self.db.db.clone(), false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let server = mirrorctl::serve::start(Arc::new(ctx), listener)
            .await
            .expect("start serve");
        let addr = server.addr().to_string();
        (server, addr)
    }

    fn path(&self) -> String {
        format!("/download/{}", self.id)
    }
}

fn http() -> reqwest::Client {
    common::http_client().no_proxy().build().expect("client")
}

fn secs(s: f64) -> HumanDuration {
    HumanDuration(Duration::from_secs_f64(s))
}

/// The value of an unlabelled metric in the text of `GET /metrics`.
async fn metric(addr: &str, name: &str) -> f64 {
    let text = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Sends one keep-alive GET on `s` and reads its answer: the status and the body.
async fn get_on(s: &mut TcpStream, addr: &str, path: &str) -> (u16, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await.expect("read answer");
        assert!(n > 0, "connection closed before the answer's headers");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    while got.len() < head_end + length {
        let n = s.read(&mut buf).await.expect("read body");
        assert!(n > 0, "connection closed mid-body");
        got.extend_from_slice(&buf[..n]);
    }
    (status, got[head_end..].to_vec())
}

/// Waits up to `limit` for the server to close `s` (a read returns 0 or fails); `None` when
/// it is still open then. Bytes the server sends first (an error answer) are skipped.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Instant> {
    let until = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_and_hits_stay_fast() {
    let m = Mirror::new().await;
    let mut cfg = m.config.clone();
    cfg.serve.header_timeout = secs(2.0);
    let (server, addr) = m.serve(cfg).await;
    let client = http();
    let url = format!("http://{addr}{}", m.path());
    // The first hit fills the server's row and URL caches.
    let r = client.get(&url).send().await.expect("warm-up");
    assert_eq!(r.status(), 200);

    let opened = Instant::now();
    let mut slow = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let partial = if i % 2 == 0 {
            "GET /download/1 HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_string()
        } else {
            format!("GET {}", m.path())
        };
        s.write_all(partial.as_bytes()).await.expect("write");
        slow.push(s);
    }
    assert!(
        metric(&addr, "mirrorctl_connections_open").await >= 200.0,
        "the slow connections are open"
    );

    // While they hang, hits on new connections are served at once.
    let mut took = Vec::new();
    for _ in 0..5 {
        let fresh = http();
        let t0 = Instant::now();
        let r = fresh.get(&url).send().await.expect("hit");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("body");
        took.push(t0.elapsed());
        assert_eq!(&body[..], &m.body[..]);
    }
    eprintln!("hits during the slowloris: {took:?}");
    // The requirement is under 100 ms; the median is asserted so that one request delayed by
    // a busy test machine does not fail the run, but none may take a second.
    let mut sorted = took.clone();
    sorted.sort();
    assert!(
        sorted[2] < Duration::from_millis(100) && sorted[4] < Duration::from_secs(1),
        "hits took too long while 200 connections stalled: {took:?}"
    );

    // The server closes every slow connection once header_timeout has passed.
    for (i, s) in slow.iter_mut().enumerate() {
        let left = Duration::from_secs(4).saturating_sub(opened.elapsed());
        let at = closed_within(s, left)
            .await
            .unwrap_or_else(|| panic!("slow connection {i} still open 4 s after it opened"));
        let after = at.duration_since(opened);
        assert!(
            after >= Duration::from_millis(1900),
            "slow connection {i} closed after {after:?}, before header_timeout"
        );
    }
    assert!(
        opened.elapsed() < Duration::from_secs(4),
        "{:?}",
        opened.elapsed()
    );
    assert_eq!(
        metric(&addr, "mirrorctl_connections_timed_out_total").await,
        200.0
    );
    assert!(metric(&addr, "mirrorctl_connections_open").await < 10.0);
    server.shutdown();
    server.wait().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_kept_alive_connection_is_closed_after_idle_timeout() {
    let m = Mirror::new().await;
    let mut cfg = m.config.clone();
    // Longer than the header timeout: the idle wait is not cut at header_timeout.
    cfg.serve.header_timeout = secs(1.0);
    cfg.serve.idle_timeout = secs(2.0);
    let (server, addr) = m.serve(cfg).await;
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let (status, body) = get_on(&mut s, &addr, &m.path()).await;
    assert_eq!((status, body.len()), (200, SIZE));
    // Idle for 1.5 s: past header_timeout, within idle_timeout; the connection still serves.
    assert!(
        closed_within(&mut s, Duration::from_millis(1500))
            .await
            .is_none(),
        "closed before idle_timeout"
    );
    let (status, body) = get_on(&mut s, &addr, &m.path()).await;
    assert_eq!((status, &body[..]), (200, &m.body[..]));
    let idle_from = Instant::now();
    let closed = closed_within(&mut s, Duration::from_secs(4))
        .await
        .expect("an idle connection is closed");
    let idle = closed.duration_since(idle_from);
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_millis(3000),
        "closed after {idle:?} idle, idle_timeout is 2s"
    );
    assert_eq!(
        metric(&addr, "mirrorctl_connections_timed_out_total").await,
        1.0
    );
    server.shutdown();
    server.wait().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_max_connections_a_connection_waits_until_one_closes() {
    let m = Mirror::new().await;
    let mut cfg = m.config.clone();
    cfg.serve.max_connections = 5;
    let (server, addr) = m.serve(cfg).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        assert_eq!(get_on(&mut s, &addr, &m.path()).await.0, 200);
        open.push(s);
    }
    // The sixth connects (the kernel queues it) but is not served.
    let mut sixth = TcpStream::connect(&addr).await.expect("connect");
    let waiting = tokio::spawn({
        let (addr, path) = (addr.clone(), m.path());
        async move {
            let answer = get_on(&mut sixth, &addr, &path).await;
            (answer, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "a sixth connection was served");
    let freed = Instant::now();
    drop(open.pop());
    let ((status, body), served) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the sixth is served once one closes")
        .expect("task");
    assert_eq!((status, body.len()), (200, SIZE));
    assert!(served.duration_since(freed) < Duration::from_secs(1));
    // The others still work.
    assert_eq!(get_on(&mut open[0], &addr, &m.path()).await.0, 200);
    drop(open);
    server.shutdown();
    server.wait().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_for_names_the_client_only_from_a_trusted_proxy() {
    let m = Mirror::new().await;
    let client = http();
    let status = |addr: String, xff: &'static str| {
        let (client, path) = (client.clone(), m.path());
        async move {
            let r = client
                .get(format!("http://{addr}{path}"))
                .header("x-forwarded-for", xff)
                .send()
                .await
                .expect("request");
            if r.status() == 429 {
                assert!(r.headers().get("retry-after").is_some());
            }
            r.status().as_u16()
        }
    };
    let mut cfg = m.config.clone();
    // One request per 100 s after a burst of 2: no refill during the test.
    cfg.serve.rate_limit = 0.01;
    cfg.serve.rate_burst = 2;

    // The peer 127.0.0.1 is not a trusted proxy: every request counts as 127.0.0.1's.
    cfg.serve.trusted_proxies = vec!["10.0.0.0/8".into()];
    let (server, addr) = m.serve(cfg.clone()).await;
    assert_eq!(status(addr.clone(), "203.0.113.1").await, 200);
    assert_eq!(status(addr.clone(), "203.0.113.2").await, 200);
    assert_eq!(status(addr.clone(), "203.0.113.3").await, 429);
    assert_eq!(status(addr.clone(), "198.51.100.7").await, 429);
    assert_eq!(metric(&addr, "mirrorctl_rate_limited_total").await, 2.0);
    server.shutdown();
    server.wait().await.expect("shutdown");

    // Behind a trusted proxy, each forwarded client has its own budget.
    cfg.serve.trusted_proxies = vec!["10.0.0.0/8".into(), "127.0.0.1".into()];
    let (server, addr) = m.serve(cfg).await;
    assert_eq!(status(addr.clone(), "203.0.113.1").await, 200);
    assert_eq!(status(addr.clone(), "203.0.113.1").await, 200);
    assert_eq!(status(addr.clone(), "203.0.113.1").await, 429);
    // A spoofed entry on the left does not buy a new budget.
    assert_eq!(status(addr.clone(), "192.0.2.99, 203.0.113.1").await, 429);
    assert_eq!(status(addr.clone(), "203.0.113.2").await, 200);
    assert_eq!(status(addr.clone(), "203.0.113.2, 10.1.1.1").await, 200);
    assert_eq!(status(addr.clone(), "203.0.113.2").await, 429);
    assert_eq!(metric(&addr, "mirrorctl_rate_limited_total").await, 3.0);
    server.shutdown();
    server.wait().await.expect("shutdown");
}

#[test]
fn a_bad_trusted_proxy_is_a_config_error() {
    let text = "[serve]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.300\"]\n";
    let config = mirrorctl::config::parse(text).expect("parses");
    let e = mirrorctl::config::validate(&config).expect_err("refused");
    assert_eq!(
        e,
        "key `serve.trusted_proxies`: bad entry \"10.0.0.300\" (expected an address or a CIDR range, e.g. \"10.0.0.0/8\")"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_answers_and_closes_stalled_and_idle_connections() {
    // Larger than the sockets' buffers: a client that stops reading keeps its answer in flight.
    let m = Mirror::with_size(16 << 20).await;
    let (server, addr) = m.serve(m.config.clone()).await;
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(get_on(&mut idle, &addr, "/healthz").await.0, 200);
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        stalled.push(s);
    }
    let mut download = TcpStream::connect(&addr).await.expect("connect");
    download
        .write_all(format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", m.path()).as_bytes())
        .await
        .expect("write");
    let mut got = vec![0u8; 64 * 1024];
    download.read_exact(&mut got).await.expect("first bytes");

    let t0 = Instant::now();
    server.shutdown();
    let stopped = tokio::spawn(server.wait());
    for s in stalled.iter_mut().chain([&mut idle]) {
        assert!(
            closed_within(s, Duration::from_secs(1)).await.is_some(),
            "a connection not being answered is still open at shutdown"
        );
    }
    assert!(!stopped.is_finished(), "stopped before the download ended");
    download.read_to_end(&mut got).await.expect("the rest");
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("headers")
        + 4;
    assert_eq!(
        &got[head_end..],
        &m.body[..],
        "the answer in flight was sent whole"
    );
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("stops once the download ended")
        .expect("task")
        .expect("shutdown");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}
