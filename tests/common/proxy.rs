//! A loopback proxy in front of a real S3 server that misbehaves on request: throttles (503
//! SlowDown), cuts responses short (a dropped connection) or fails every write. It forwards
//! requests byte for byte (Host included, so signatures still verify); everything else is the
//! real server's answer.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;

/// What to break, and what happened.
#[derive(Default)]
pub struct Faults {
    /// Every PUT/POST (uploads, multipart steps, deletes) gets 500 InternalError.
    pub fail_writes: AtomicBool,
    /// The next this many requests get 503 SlowDown.
    pub throttle_next: AtomicU32,
    /// The next this many requests get their response cut off mid-body.
    pub reset_next: AtomicU32,
    /// Every PUT/POST is answered this long after the server processed it (a slow answer:
    /// the window in which a client that dies has changed the bucket but not its records).
    pub write_delay_ms: AtomicU64,
    /// Every listing request that continues a listing (it carries a continuation token) gets
    /// 500 InternalError: a bucket that starts failing part-way through a listing.
    pub fail_continued_listings: AtomicBool,
    /// Every request whose path contains this text gets 500 InternalError (one object whose
    /// requests fail while the rest of the bucket answers).
    pub fail_paths_containing: std::sync::Mutex<Option<String>>,
    /// PUT/POST requests the server has processed.
    pub writes: AtomicU64,
    /// Requests seen, and requests answered with an injected fault.
    pub requests: AtomicU64,
    pub injected: AtomicU64,
}

impl Faults {
    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    pub faults: Arc<Faults>,
    _task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    faults: Arc<Faults>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> FaultProxy {
        let faults = Arc::new(Faults::default());
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: super::http_client()
                .no_proxy()
                .build()
                .expect("proxy client"),
            faults: faults.clone(),
        });
        let app = axum::Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy {
            endpoint: format!("http://{addr}"),
            faults,
            _task: task,
        }
    }
}

fn s3_error(status: StatusCode, code: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    r
}

async fn forward(State(p): State<Arc<ProxyState>>, req: Request) -> Response {
    let f = &p.faults;
    f.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    if Faults::take(&f.throttle_next) {
        f.injected.fetch_add(1, Ordering::SeqCst);
        return s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown");
    }
    let continued_listing = parts
        .uri
        .query()
        .is_some_and(|q| q.contains("continuation-token="));
    if continued_listing && f.fail_continued_listings.load(Ordering::SeqCst) {
        f.injected.fetch_add(1, Ordering::SeqCst);
        return s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    let failing_path = f
        .fail_paths_containing
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    if failing_path.is_some_and(|p| parts.uri.path().contains(&p)) {
        f.injected.fetch_add(1, Ordering::SeqCst);
        return s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    let write = matches!(parts.method, Method::PUT | Method::POST);
    if write && f.fail_writes.load(Ordering::SeqCst) {
        f.injected.fetch_add(1, Ordering::SeqCst);
        return s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let mut rb = p
        .client
        .request(parts.method.clone(), format!("{}{path}", p.upstream));
    for (k, v) in &parts.headers {
        if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING && k != header::CONNECTION
        {
            rb = rb.header(k, v);
        }
    }
    let up = match rb.body(body).send().await {
        Ok(r) => r,
        Err(e) => return s3_error(StatusCode::BAD_GATEWAY, &format!("ProxyError {e}")),
    };
    let status = up.status();
    let headers = up.headers().clone();
    let bytes = up.bytes().await.unwrap_or_default();
    if write {
        f.writes.fetch_add(1, Ordering::SeqCst);
        let delay = f.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
    }
    let mut r = if Faults::take(&f.reset_next) {
        // Promise the whole body, send half, then fail: the client sees a dropped connection.
        f.injected.fetch_add(1, Ordering::SeqCst);
        let half = bytes.slice(..bytes.len() / 2);
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::other("connection reset by the test proxy")),
        ];
        Response::new(Body::from_stream(futures::stream::iter(chunks)))
    } else {
        Response::new(Body::from(bytes))
    };
    *r.status_mut() = status;
    for (k, v) in &headers {
        if k != header::TRANSFER_ENCODING && k != header::CONNECTION {
            r.headers_mut().append(k, v.clone());
        }
    }
    r
}
