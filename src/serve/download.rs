//! `GET /download/{file_id}` and `GET /files/{key}`: a fresh mirror copy is streamed from the
//! mirror bucket (a hit); a stale, purged or missing one is streamed from the origin while it
//! is uploaded (a miss, see `fill`). A fresh copy the mirror fails to serve (timeout, 5xx, a
//! refused URL even after re-signing) is streamed from the origin without a new upload, since
//! the object is fine; a circuit breaker keeps a browning-out bucket from being hammered.
//!
//! HTTP (RFC 9110) on every path: one strong ETag per content (the row's `content_etag`, which
//! a miss sends too), If-None-Match (304, counted as a revalidation, not a download), Range
//! (206 only when the body really is that range; several ranges get the whole body, 200),
//! If-Range (a range only while the validator still matches), HEAD (never a download),
//! Content-Length, Content-Type and Content-Disposition. Every GET of a known file becomes a
//! download event when its body ends (bytes actually sent, duration, status). Error bodies
//! never carry origin URLs.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::Stream;

use super::fill::{Fill, FillJob, FillState, Fills, Joined};
use super::upstream;
use super::{json_error, Shared};
use crate::engine::db::CatalogRow;
use crate::engine::model::{FileDetail, NewDownloadEvent};

/// How long a file row is reused while changes are followed (NOTIFY on PostgreSQL, the change
/// log on SQLite): every change made by any process forgets the row when it arrives, so this
/// only bounds how long a row lives; a lost connection forgets every row.
pub const ROW_TTL_NOTIFIED: Duration = Duration::from_secs(60);
/// When changes cannot be followed (the database refused): a change made by another process
/// is seen within this time.
pub const ROW_TTL_POLLED: Duration = Duration::from_secs(1);

#[derive(Clone, Hash, PartialEq, Eq)]
pub enum Lookup {
    Id(i64),
    Key(String),
}

pub use super::cache::TtlCache;

/// A file row with the header values every answer about it carries, made once per lookup.
pub struct Row {
    pub file: Arc<FileDetail>,
    disposition: Option<HeaderValue>,
    /// The ETag clients are sent for the copy (its content ETag; the object's for a copy
    /// stored before content ETags were recorded), unquoted and as a header value.
    etag: Option<(String, HeaderValue)>,
}

impl Row {
    fn new(file: FileDetail) -> Row {
        let etag = file.content_etag.as_deref().or(file.etag.as_deref());
        Row {
            disposition: HeaderValue::from_str(&content_disposition(
                &file.origin_file_name,
                &file.key,
            ))
            .ok(),
            etag: etag.and_then(|e| {
                let e = e.trim_matches('"');
                etag_value(e).map(|v| (e.to_string(), v))
            }),
            file: Arc::new(file),
        }
    }
}

/// File rows (or their absence) by id and key for a short time, so a hit costs no database
/// round trip. A change is noticed when it arrives, or within `ROW_TTL_POLLED`; a fill forgets
/// its row at once.
pub type RowCache = TtlCache<Lookup, Option<Arc<Row>>>;

impl RowCache {
    pub fn forget(&self, row: &FileDetail) {
        self.remove(&Lookup::Id(row.id));
        self.remove(&Lookup::Key(row.key.clone()));
    }
}

/// How long a presigned mirror URL is valid, and how long it is reused.
const URL_LIFETIME: Duration = Duration::from_secs(15 * 60);
pub const URL_REUSE: Duration = Duration::from_secs(10 * 60);

/// Presigned GET URLs of mirror objects by key, parsed, reused until well before they expire:
/// a hit then costs one plain HTTP GET to the bucket, no request signing and no URL parsing.
pub type SignedUrls = TtlCache<String, Uri>;

async fn signed_url(s: &Shared, key: &str) -> crate::engine::error::Result<Uri> {
    if let Some(url) = s.urls.get(key) {
        return Ok(url);
    }
    let url = s.mirror.presign_get(key, URL_LIFETIME).await?;
    let url = Uri::try_from(url).map_err(|e| {
        crate::engine::error::Error::runtime(format!("presigned URL does not parse: {e}"))
    })?;
    s.urls.put(key.to_string(), url.clone());
    Ok(url)
}

async fn lookup(s: &Shared, k: &Lookup) -> Result<Option<Arc<Row>>, Response> {
    if let Some(row) = s.rows.get(k) {
        return Ok(row);
    }
    let found = match k {
        Lookup::Id(id) => s.ctx.db.get_file_by_id(*id).await,
        Lookup::Key(key) => match s
            .ctx
            .db
            .get_file_by_key_in(Some(s.mirror.name()), key)
            .await
        {
            // A catalog entry not mirrored yet is served as a miss that stores its first copy.
            Ok(None) => s
                .ctx
                .db
                .catalog_by_key(s.mirror.name(), key)
                .await
                .map(|c| c.map(|c| unmirrored(c, s.mirror.name()))),
            other => other,
        },
    };
    match found {
        Ok(row) => {
            let row = row.map(|file| Arc::new(Row::new(file)));
            s.rows.put(k.clone(), row.clone());
            Ok(row)
        }
        Err(e) => {
            tracing::warn!("file lookup: {e}");
            Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable",
            ))
        }
    }
}

pub async fn by_id(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    match id.parse::<i64>() {
        Ok(id) => find_and_serve(&s, Lookup::Id(id), &method, &headers, started).await,
        Err(_) => json_error(
            StatusCode::BAD_REQUEST,
            format!("file id must be a number, got {id:?}"),
        ),
    }
}

pub async fn by_key(
    State(s): State<Arc<Shared>>,
    Path(key): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    match crate::engine::keys::check_key(&key) {
        Ok(()) => find_and_serve(&s, Lookup::Key(key), &method, &headers, started).await,
        Err(why) => json_error(StatusCode::BAD_REQUEST, why),
    }
}

/// The detail of a catalog entry that has no mirrored row yet (id 0: its row is inserted when
/// the first copy is stored; origin file id 0: a pulled key, registered by the fill).
fn unmirrored(c: CatalogRow, bucket: &str) -> FileDetail {
    FileDetail {
        id: 0,
        bucket: bucket.to_string(),
        key: c.key.clone().unwrap_or_default(),
        size: c.size.unwrap_or(0),
        downloads: 0,
        bytes_served: 0,
        last_downloaded_at: None,
        is_stale: true,
        origin_file_id: c.id,
        sha256: None,
        etag: None,
        mirrored_at: c.updated_at,
        last_validated_at: None,
        stale_reason: Some("not_mirrored".into()),
        deleted_at: None,
        origin_source: c.source,
        origin_remote_id: c.remote_id,
        origin_file_name: c.file_name,
        origin_url: c.url,
        origin_size: c.size,
        origin_etag: c.etag,
        origin_updated_at: c.updated_at,
        version: 0,
        content_etag: None,
    }
}

/// `GET /files/{key}` for a key neither the mirror nor the catalog knows: fetched from
/// `origin.base_url + key` when pull-through is on and the key is allowed; a 404 from the
/// origin is remembered for `serve.negative_ttl`.
async fn pull_through(
    s: &Arc<Shared>,
    key: String,
    method: &Method,
    headers: &HeaderMap,
    started: Instant,
) -> Response {
    let allowed = &s.ctx.config.origin.allow_prefixes;
    if !allowed.is_empty() && !allowed.iter().any(|p| key.starts_with(p.as_str())) {
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "no mirrored file with key {key:?} (and it is not under origin.allow_prefixes)"
            ),
        );
    }
    if s.negative.get(key.as_str()).is_some() {
        return not_at_origin(&key);
    }
    // A catalog entry not registered yet (id 0): the fill registers it on a 200.
    let entry = CatalogRow {
        id: 0,
        source: "http".into(),
        remote_id: key.clone(),
        file_name: String::new(),
        // Encoded, so the key stays a path under base_url (never a query, scheme or `..`).
        url: crate::engine::keys::key_to_url(&key),
        size: None,
        etag: None,
        key: Some(key),
        updated_at: Utc::now(),
        deleted_at: None,
        mirrored_id: None,
        mirrored_stale: None,
    };
    let detail = unmirrored(entry, s.mirror.name());
    miss(
        s,
        Arc::new(Row::new(detail)),
        method,
        headers,
        started,
        true,
    )
    .await
}

fn not_at_origin(key: &str) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        format!("no file with key {key:?} at the origin"),
    )
}

async fn find_and_serve(
    s: &Arc<Shared>,
    k: Lookup,
    method: &Method,
    headers: &HeaderMap,
    started: Instant,
) -> Response {
    match lookup(s, &k).await {
        Ok(Some(row)) => serve(s, row, method, headers, started).await,
        Ok(None) if s.pull_through => match k {
            Lookup::Key(key) => pull_through(s, key, method, headers, started).await,
            Lookup::Id(id) => json_error(
                StatusCode::NOT_FOUND,
                format!("no mirrored file with id {id}"),
            ),
        },
        Ok(None) => {
            let what = match k {
                Lookup::Id(id) => format!("id {id}"),
                Lookup::Key(key) => format!("key {key:?}"),
            };
            json_error(
                StatusCode::NOT_FOUND,
                format!("no mirrored file with {what}"),
            )
        }
        Err(r) => r,
    }
}

async fn serve(
    s: &Arc<Shared>,
    row: Arc<Row>,
    method: &Method,
    headers: &HeaderMap,
    started: Instant,
) -> Response {
    let file = &row.file;
    if file.bucket != s.mirror.name() {
        return json_error(
            StatusCode::NOT_FOUND,
            format!(
                "file {} is in bucket {}, not in this mirror ({})",
                file.id,
                file.bucket,
                s.mirror.name()
            ),
        );
    }
    let fresh = file.deleted_at.is_none() && !file.is_stale;
    if fresh {
        if !s.breaker.allow() {
            return bypass(s, &row, method, started).await;
        }
        match hit(s, &row, method, headers, started).await {
            Hit::Served(r) => {
                s.breaker.success();
                return r;
            }
            Hit::Missing => s.breaker.success(),
            Hit::Failed => {
                s.breaker.failure();
                return bypass(s, &row, method, started).await;
            }
        }
    }
    miss(s, row, method, headers, started, false).await
}

/// What the mirror did with a hit.
enum Hit {
    Served(Response),
    /// The object is not there after all: fetch and store it again (a miss).
    Missing,
    /// The bucket failed (already counted and logged): serve from the origin, store nothing.
    Failed,
}

/// Serves a fresh copy from the mirror.
async fn hit(
    s: &Arc<Shared>,
    row: &Row,
    method: &Method,
    headers: &HeaderMap,
    started: Instant,
) -> Hit {
    let file = &row.file;
    let size = file.size.max(0) as u64;
    if let Some((etag, value)) = &row.etag {
        if none_match(headers, etag) {
            return Hit::Served(not_modified(s, file.id, true, method, value, started));
        }
    }
    // A date in If-Range cannot be checked before the mirror answers: the whole body, then.
    let served_etag = row.etag.as_ref().map(|(e, _)| e.as_str());
    let range = if if_range_holds(headers, served_etag, None) {
        match parse_range(headers, size) {
            Ok(r) => r,
            Err(()) => return Hit::Served(unsatisfiable(size)),
        }
    } else {
        None
    };
    if *method == Method::HEAD {
        let meta = match s.mirror.head(&file.key).await {
            Ok(Some(m)) => m,
            Ok(None) => return Hit::Missing,
            Err(e) => {
                mirror_read_failed(s, file, format!("HEAD: {e}"));
                return Hit::Failed;
            }
        };
        let mut r = empty(StatusCode::OK);
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
        let etag = row
            .etag
            .as_ref()
            .map(|(_, v)| v.clone())
            .or_else(|| meta.etag.as_deref().and_then(etag_value));
        let content_type = meta.content_type.as_deref().and_then(value);
        common_headers(h, row, content_type, etag, "HIT");
        if let Some(lm) = meta.last_modified {
            insert(h, header::LAST_MODIFIED, &http_date(lm));
        }
        return Hit::Served(r);
    }
    // A small body is read whole below, so its permit is held for one short round trip.
    let _permit = if size <= WHOLE_UP_TO {
        s.small_hits.acquire().await.ok()
    } else {
        None
    };
    // A refused URL (403: expired, or signed with rotated keys) is signed afresh once.
    let mut up = None;
    for attempt in 0..2 {
        let url = match signed_url(s, &file.key).await {
            Ok(u) => u,
            Err(e) => {
                mirror_read_failed(s, file, format!("cannot sign a GET: {e}"));
                return Hit::Failed;
            }
        };
        let r = match s.upstream.get(url, range).await {
            Ok(r) => r,
            Err(e) => {
                mirror_read_failed(s, file, e);
                return Hit::Failed;
            }
        };
        match r.status().as_u16() {
            200 | 206 => {
                up = Some(r);
                break;
            }
            404 => {
                tracing::info!(
                    "file {} ({}): fresh in the database but missing in the mirror: fetching from the origin",
                    file.id,
                    file.key
                );
                return Hit::Missing;
            }
            403 if attempt == 0 => s.urls.remove(&file.key),
            status => {
                s.urls.remove(&file.key);
                mirror_read_failed(s, file, format!("HTTP {status}"));
                return Hit::Failed;
            }
        }
    }
    let Some(mut up) = up else {
        mirror_read_failed(s, file, "HTTP 403 after signing afresh");
        return Hit::Failed;
    };
    // 206 only when the mirror sent that range: a 200 is the whole body, answered as such.
    let partial = up.status() == StatusCode::PARTIAL_CONTENT && range.is_some();
    let status = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let pass = |name: header::HeaderName| up.headers().get(name).cloned();
    let content_type = pass(header::CONTENT_TYPE);
    let last_modified = pass(header::LAST_MODIFIED);
    let content_range = if partial {
        pass(header::CONTENT_RANGE)
    } else {
        None
    };
    let etag = row
        .etag
        .as_ref()
        .map(|(_, v)| v.clone())
        .or_else(|| pass(header::ETAG));
    let length = hyper::body::Body::size_hint(up.body()).exact();
    let stream: BodyStream = if length.is_some_and(|n| n <= WHOLE_UP_TO) {
        // A small body is read whole before answering: one write to the client instead of
        // one per upstream chunk, and a mirror that fails mid-body still falls back to the
        // origin, since the client has not seen a byte yet. The chunks are kept as received
        // (no copy into one buffer); written back to back, they still leave in one `writev`.
        match upstream::read_all(up.body_mut()).await {
            Ok(chunks) => Box::pin(futures::stream::iter(chunks.into_iter().map(Ok))),
            Err(e) => {
                mirror_read_failed(s, file, e);
                return Hit::Failed;
            }
        }
    } else {
        Box::pin(upstream::stream(up.into_body()))
    };
    let body = Metered::new(
        s.clone(),
        FileRef::Known(file.id),
        true,
        status,
        started,
        stream,
    );
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Some(n) = length {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, cr);
    }
    common_headers(h, row, content_type, etag, "HIT");
    if let Some(lm) = last_modified {
        h.insert(header::LAST_MODIFIED, lm);
    }
    Hit::Served(r)
}

/// A mirror read that failed before the client saw a byte: counted and logged.
fn mirror_read_failed(s: &Shared, row: &FileDetail, e: impl std::fmt::Display) {
    s.metrics.mirror_errors.inc();
    tracing::warn!(
        "file {} ({}): mirror read failed, serving from the origin: {e}",
        row.id,
        row.key
    );
}

/// A fresh copy the mirror cannot serve now, streamed from the origin without a new upload
/// (the object is fine). The whole body, 200, whatever Range asked; a miss in the stats.
async fn bypass(s: &Arc<Shared>, row: &Row, method: &Method, started: Instant) -> Response {
    let file = &row.file;
    s.metrics.mirror_fallbacks.inc();
    if *method == Method::HEAD {
        return match s.origin.head(&file.origin_url).await {
            Ok(Some(meta)) => origin_head(row, &meta, "BYPASS"),
            Ok(None) => json_error(StatusCode::BAD_GATEWAY, "origin: file gone (HTTP 404)"),
            Err(e) => {
                tracing::warn!("file {} ({}): origin HEAD failed: {e}", file.id, file.key);
                json_error(StatusCode::BAD_GATEWAY, super::fill::client_message(&e))
            }
        };
    }
    let body = match s.origin.get(&file.origin_url).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            record(s, file.id, false, 0, 502, started);
            return json_error(StatusCode::BAD_GATEWAY, "origin: file gone (HTTP 404)");
        }
        Err(e) => {
            tracing::warn!("file {} ({}): origin GET failed: {e}", file.id, file.key);
            record(s, file.id, false, 0, 502, started);
            return json_error(StatusCode::BAD_GATEWAY, super::fill::client_message(&e));
        }
    };
    let meta = body.meta.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(body.body, 256 * 1024);
    let body = Metered::new(
        s.clone(),
        FileRef::Known(file.id),
        false,
        StatusCode::OK,
        started,
        stream,
    );
    let mut r = Response::new(Body::from_stream(body));
    origin_headers(r.headers_mut(), row, &meta, "BYPASS");
    if let Some(lm) = meta.last_modified {
        insert(r.headers_mut(), header::LAST_MODIFIED, &http_date(lm));
    }
    r
}

/// The origin's answer to a HEAD, as this server's.
fn origin_head(
    row: &Row,
    meta: &crate::engine::origin::OriginMeta,
    cache: &'static str,
) -> Response {
    let mut r = empty(StatusCode::OK);
    origin_headers(r.headers_mut(), row, meta, cache);
    r
}

/// The headers of a whole body the origin describes: length, type, strong ETag.
fn origin_headers(
    h: &mut HeaderMap,
    row: &Row,
    meta: &crate::engine::origin::OriginMeta,
    cache: &'static str,
) {
    if let Some(n) = meta.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    common_headers(
        h,
        row,
        meta.content_type.as_deref().and_then(value),
        strong_etag(meta.etag.as_deref()),
        cache,
    );
}

/// 304 Not Modified: a revalidation, recorded (for a GET) apart from downloads.
fn not_modified(
    s: &Shared,
    file_id: i64,
    hit: bool,
    method: &Method,
    etag: &HeaderValue,
    started: Instant,
) -> Response {
    if *method == Method::GET {
        record(s, file_id, hit, 0, 304, started);
    }
    let mut r = empty(StatusCode::NOT_MODIFIED);
    r.headers_mut().insert(header::ETAG, etag.clone());
    r
}

/// Streams from the origin through the file's fill (started now or joined).
async fn miss(
    s: &Arc<Shared>,
    row: Arc<Row>,
    method: &Method,
    headers: &HeaderMap,
    started: Instant,
    pull_through: bool,
) -> Response {
    let file = &row.file;
    if *method == Method::HEAD {
        return match s.origin.head(&file.origin_url).await {
            Ok(Some(meta)) => origin_head(&row, &meta, "MISS"),
            Ok(None) if pull_through => {
                s.negative.put(file.key.clone(), ());
                not_at_origin(&file.key)
            }
            Ok(None) => json_error(StatusCode::BAD_GATEWAY, "origin: file gone (HTTP 404)"),
            Err(e) => {
                tracing::warn!("HEAD {}: origin failed: {e}", file.key);
                json_error(StatusCode::BAD_GATEWAY, super::fill::client_message(&e))
            }
        };
    }
    let job = FillJob {
        row: file.clone(),
        pull_through,
    };
    let fill = match Fills::join(s, job) {
        Ok(Joined::Fill(f)) => f,
        Ok(Joined::NotAtOrigin) => return not_at_origin(&file.key),
        Ok(Joined::Busy) => {
            s.metrics.fills_rejected.inc();
            if !pull_through {
                record(s, file.id, false, 0, 503, started);
            }
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many files are being fetched from the origin at once: retry shortly",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        }
        Err(e) => {
            tracing::error!("miss {}: {e}", file.key);
            record(s, file.id, false, 0, 500, started);
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot spool the download (see the server log)",
            );
        }
    };
    match fill.started().await {
        FillState::Failed { written: 0, error } => {
            // A pulled key without a catalog entry is not a known file: no event.
            if !pull_through {
                record(s, file.id, false, 0, 502, started);
            }
            return json_error(StatusCode::BAD_GATEWAY, error);
        }
        FillState::NotFound => return not_at_origin(&file.key),
        _ => {}
    }
    let meta = fill.meta().cloned().unwrap_or_default();
    let etag = strong_etag(meta.etag.as_deref());
    if let (Some(e), Some(v)) = (meta.etag.as_deref(), &etag) {
        if none_match(headers, e) {
            let id = if file.id == 0 {
                fill.stored().await.unwrap_or(0)
            } else {
                file.id
            };
            return not_modified(s, id, false, method, v, started);
        }
    }
    let validator = etag.as_ref().and(meta.etag.as_deref());
    let (status, range) = match meta.size {
        Some(_) if !if_range_holds(headers, validator, meta.last_modified) => {
            (StatusCode::OK, None)
        }
        Some(size) => match parse_range(headers, size) {
            Ok(Some(r)) => (StatusCode::PARTIAL_CONTENT, Some(r)),
            Ok(None) => (StatusCode::OK, None),
            Err(()) => return unsatisfiable(size),
        },
        None => (StatusCode::OK, None),
    };
    let (start, end) = match range {
        Some((a, b)) => (a, Some(b + 1)),
        None => (0, None),
    };
    // A first copy has no row yet: the download is recorded once the copy is.
    let file_ref = if file.id == 0 {
        FileRef::Pending(fill.clone())
    } else {
        FileRef::Known(file.id)
    };
    let body = Metered::new(
        s.clone(),
        file_ref,
        false,
        status,
        started,
        fill.follow(start, end),
    );
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    match (range, meta.size) {
        (Some((a, b)), Some(size)) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(b - a + 1));
            insert(h, header::CONTENT_RANGE, &format!("bytes {a}-{b}/{size}"));
        }
        (None, Some(size)) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        _ => {}
    }
    common_headers(
        h,
        &row,
        meta.content_type.as_deref().and_then(value),
        etag,
        "MISS",
    );
    if let Some(lm) = meta.last_modified {
        insert(h, header::LAST_MODIFIED, &http_date(lm));
    }
    r
}

fn empty(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

fn unsatisfiable(size: u64) -> Response {
    let mut r = json_error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
    insert(
        r.headers_mut(),
        header::CONTENT_RANGE,
        &format!("bytes */{size}"),
    );
    r
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, v: &str) {
    if let Some(v) = value(v) {
        h.insert(name, v);
    }
}

fn value(v: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(v).ok()
}

/// An ETag as a header value: quoted, whether or not it came quoted.
fn etag_value(etag: &str) -> Option<HeaderValue> {
    value(&format!("\"{}\"", etag.trim_matches('"')))
}

/// The origin's ETag when it is a strong one (what the copy's content ETag will be); a weak
/// one is not passed on, since a later hit could not send the same.
fn strong_etag(origin_etag: Option<&str>) -> Option<HeaderValue> {
    origin_etag
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.starts_with("W/"))
        .and_then(etag_value)
}

/// Whether a Range may be honoured: there is no If-Range, or it names the current
/// representation (a strong ETag match, or exactly its Last-Modified date). Otherwise the
/// client's partial copy is of another version and gets the whole body.
fn if_range_holds(
    headers: &HeaderMap,
    etag: Option<&str>,
    last_modified: Option<DateTime<Utc>>,
) -> bool {
    let Some(v) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') {
        return etag.is_some_and(|e| v.trim_matches('"') == e.trim_matches('"'));
    }
    if v.starts_with("W/") {
        return false;
    }
    match (DateTime::parse_from_rfc2822(v), last_modified) {
        (Ok(d), Some(lm)) => d.with_timezone(&Utc) == lm,
        _ => false,
    }
}

fn common_headers(
    h: &mut HeaderMap,
    row: &Row,
    content_type: Option<HeaderValue>,
    etag: Option<HeaderValue>,
    cache: &'static str,
) {
    h.insert(
        header::CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(d) = &row.disposition {
        h.insert(header::CONTENT_DISPOSITION, d.clone());
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("x-cache", HeaderValue::from_static(cache));
    if let Some(etag) = etag {
        h.insert(header::ETAG, etag);
    }
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form.
fn content_disposition(file_name: &str, key: &str) -> String {
    let name = if file_name.trim().is_empty() {
        key.rsplit('/').next().unwrap_or(key)
    } else {
        file_name
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

pub(super) fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Whether `If-None-Match` names `etag` (weak comparison, or `*`).
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let Some(v) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let etag = etag.trim_matches('"');
    v.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/").trim_matches('"') == etag
    })
}

/// A single `bytes=` range against a body of `size` bytes, as inclusive `(first, last)`.
/// `Ok(None)`: no Range header, or one this server answers with the whole body (several
/// ranges, another unit, a malformed one). `Err(())`: unsatisfiable (416).
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // The last `b` bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let Ok(first) = a.parse::<u64>() else {
            return Ok(None);
        };
        let last = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            match b.parse::<u64>() {
                Ok(last) if last >= first => last.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if first >= size {
            return Err(());
        }
        (first, last)
    };
    Ok(Some(range))
}

fn record(s: &Shared, file_id: i64, cache_hit: bool, bytes: u64, status: u16, started: Instant) {
    record_at(
        s,
        file_id,
        cache_hit,
        bytes,
        status,
        started.elapsed(),
        Utc::now(),
    );
}

fn record_at(
    s: &Shared,
    file_id: i64,
    cache_hit: bool,
    bytes: u64,
    status: u16,
    elapsed: Duration,
    at: DateTime<Utc>,
) {
    let m = if cache_hit {
        &s.metrics.hit
    } else {
        &s.metrics.miss
    };
    if status == 304 {
        s.metrics.revalidations.inc();
    } else {
        if status < 500 {
            m.downloads.inc();
            m.bytes_served.inc_by(bytes);
        }
        m.duration.observe(elapsed.as_secs_f64());
    }
    s.recorder.record(NewDownloadEvent {
        occurred_at: at,
        file_id,
        cache_hit,
        bytes: bytes as i64,
        duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
        status: status as i16,
    });
}

/// Hits of at most this many bytes are read whole from the mirror before the answer starts
/// (at 500 clients at once, at most 64 MiB).
const WHOLE_UP_TO: u64 = 128 * 1024;

/// Small hits reading from the mirror at once (and idle connections kept to it).
pub const SMALL_HITS_AT_ONCE: usize = 64;

type BodyStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Which mirrored file a download belongs to.
enum FileRef {
    Known(i64),
    /// A catalog entry's first copy, whose row the fill inserts; a download of a copy that was
    /// not stored belongs to no file (id 0) but still counts in the totals.
    Pending(Arc<Fill>),
}

/// A response body that counts what it sent and records the download when it ends — after
/// the last byte, on a read error (recorded as 502), or when the client goes away.
struct Metered<S> {
    inner: S,
    shared: Arc<Shared>,
    file: Option<FileRef>,
    hit: bool,
    status: StatusCode,
    started: Instant,
    sent: u64,
    failed: bool,
}

impl<S> Metered<S> {
    fn new(
        shared: Arc<Shared>,
        file: FileRef,
        hit: bool,
        status: StatusCode,
        started: Instant,
        inner: S,
    ) -> Self {
        Metered {
            inner,
            shared,
            file: Some(file),
            hit,
            status,
            started,
            sent: 0,
            failed: false,
        }
    }
}

impl<S: Stream<Item = io::Result<Bytes>> + Unpin> Stream for Metered<S> {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(b))) => self.sent += b.len() as u64,
            Poll::Ready(Some(Err(_))) => self.failed = true,
            _ => {}
        }
        next
    }
}

impl<S> Drop for Metered<S> {
    fn drop(&mut self) {
        let status = if self.failed {
            502
        } else {
            self.status.as_u16()
        };
        let (shared, hit, sent, started) = (self.shared.clone(), self.hit, self.sent, self.started);
        match self.file.take() {
            Some(FileRef::Known(id)) => record(&shared, id, hit, sent, status, started),
            Some(FileRef::Pending(fill)) => {
                let elapsed = started.elapsed();
                let at = Utc::now();
                shared.clone().fills.track(async move {
                    let id = fill.stored().await.unwrap_or(0);
                    record_at(&shared, id, hit, sent, status, elapsed, at);
                });
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).expect("header"));
        parse_range(&h, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(range("bytes=-5000", 1000), Ok(Some((0, 999))));
        assert_eq!(range("bytes=10-5000", 1000), Ok(Some((10, 999))));
        assert_eq!(range("bytes=1000-", 1000), Err(()));
        assert_eq!(range("bytes=5-1", 1000), Ok(None));
        assert_eq!(range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(range("items=0-1", 1000), Ok(None));
        assert_eq!(range("bytes=a-b", 1000), Ok(None));
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
    }

    #[test]
    fn etags_and_names() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("W/\"abc\", \"x\""),
        );
        assert!(none_match(&h, "abc"));
        assert!(!none_match(&h, "abd"));
        assert_eq!(
            content_disposition("my \"mod\".zip", "k"),
            "attachment; filename=\"my _mod_.zip\"; filename*=UTF-8''my%20%22mod%22%2Ezip"
        );
    }
}
