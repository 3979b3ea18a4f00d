//! The peer endpoint on the admin listener: `GET /peer/fills/{key}` streams this replica's
//! fill of `key` in flight, from its spool, as the origin delivers it, to another replica that
//! found the file's fill lease held by this one. 404 when there is no such fill here (it ended,
//! or never ran here): the asking replica then waits for the lease and reads the mirror.
//! Needs the admin bearer token, like the catalog API.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::fill::FillState;
use super::{admin, json_error, Shared};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/peer/fills/{*key}", get(fill))
        .with_state(shared)
}

async fn fill(
    State(s): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = &s.peer_token else {
        return json_error(
            StatusCode::NOT_FOUND,
            "no peer endpoint without serve.admin_token",
        );
    };
    if !admin::bearer_ok(token.as_bytes(), &headers) {
        return admin::unauthorized();
    }
    let Some(fill) = s.fills.get(&key) else {
        return json_error(StatusCode::NOT_FOUND, "no fill of this key in flight here");
    };
    match fill.started().await {
        FillState::NotFound => return json_error(StatusCode::GONE, "not at the origin"),
        FillState::Failed { written: 0, error } => {
            return json_error(StatusCode::BAD_GATEWAY, error)
        }
        _ => {}
    }
    let meta = fill.meta().cloned().unwrap_or_default();
    let mut r = Response::new(Body::from_stream(fill.follow(0, None)));
    let h = r.headers_mut();
    if let Some(n) = meta.size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        h.insert("x-origin-size", HeaderValue::from(n));
    }
    let mut put = |name: header::HeaderName, v: Option<String>| {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    };
    put(header::CONTENT_TYPE, meta.content_type.clone());
    put(header::ETAG, meta.etag.as_ref().map(|e| format!("\"{e}\"")));
    put(
        header::LAST_MODIFIED,
        meta.last_modified.map(super::download::http_date),
    );
    r
}
