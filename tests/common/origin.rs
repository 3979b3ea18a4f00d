//! An HTTP origin on loopback that counts its GETs, can go slow (a pause between 64 KiB chunks)
//! or fail (HTTP 500). Its ETag is a strong one made of the content.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use sha2::Digest;

#[derive(Default)]
pub struct Origin {
    pub files: Mutex<HashMap<String, Bytes>>,
    pub gets: AtomicUsize,
    pub chunk_delay_ms: AtomicU64,
    pub broken: AtomicBool,
}

async fn origin_file(
    State(o): State<Arc<Origin>>,
    method: Method,
    Path(path): Path<String>,
) -> Response {
    let mut r = Response::new(Body::empty());
    if o.broken.load(Ordering::SeqCst) {
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    let Some(data) = o.files.lock().expect("origin files").get(&path).cloned() else {
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    };
    let etag = format!("\"{}\"", &sha256(&data)[..16]);
    if method == Method::GET {
        o.gets.fetch_add(1, Ordering::SeqCst);
        let delay = Duration::from_millis(o.chunk_delay_ms.load(Ordering::SeqCst));
        let chunks: Vec<Bytes> = data.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
        let stream = futures::stream::unfold(chunks.into_iter(), move |mut it| async move {
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
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    r
}

pub async fn start_origin() -> (String, Arc<Origin>) {
    let o = Arc::new(Origin::default());
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(origin_file))
        .with_state(o.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind origin");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/"), o)
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

pub fn content(i: usize, version: u8, size: usize) -> Vec<u8> {
    (0..size)
        .map(|n| {
            ((n / 7) as u8)
                .wrapping_add(i as u8 * 13)
                .wrapping_add(version)
        })
        .collect()
}
