//! The admin API, on its own listener (`serve.admin_listen`), never the download port:
//! `PUT /catalog/{source}/{remote_id}` upserts one entry (a JSON object), `POST /catalog`
//! merges JSON Lines streamed from the request body (`?strict=true` rejects the whole body at
//! the first malformed line). Both answer with the import report and need
//! `Authorization: Bearer <serve.admin_token>`; a missing or wrong token gets 401 and changes
//! nothing. The token is compared in constant time and never logged.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use futures::TryStreamExt;

use super::json_error;
use crate::engine::error::Error;
use crate::engine::ops::catalog;
use crate::engine::Ctx;

pub struct Admin {
    ctx: Arc<Ctx>,
    token: Vec<u8>,
}

pub fn router(ctx: Arc<Ctx>, token: &str) -> Router {
    let state = Arc::new(Admin {
        ctx,
        token: token.as_bytes().to_vec(),
    });
    Router::new()
        .route("/catalog", post(post_catalog))
        .route("/catalog/{source}/{*remote_id}", put(put_entry))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// Whether the request carries the configured bearer token.
fn authorized(a: &Admin, headers: &HeaderMap) -> bool {
    bearer_ok(&a.token, headers)
}

/// Whether `headers` carry `Authorization: Bearer <token>`.
pub fn bearer_ok(token: &[u8], headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = given.trim().as_bytes();
    // Constant time in the token's content: every byte is compared whatever differs first.
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn unauthorized() -> Response {
    let mut r = json_error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer <serve.admin_token>)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

fn answer(r: crate::engine::error::Result<catalog::ImportReport>) -> Response {
    match r {
        Ok(report) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&report).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => {
            let status = match e {
                Error::Usage(_) | Error::NotFound(_) | Error::Refused(_) => StatusCode::BAD_REQUEST,
                Error::Busy(_) => StatusCode::CONFLICT,
                Error::Database { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_error(status, e.to_string())
        }
    }
}

async fn put_entry(
    State(a): State<Arc<Admin>>,
    Path((source, remote_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&a, &headers) {
        return unauthorized();
    }
    let fields = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return json_error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            )
        }
    };
    answer(catalog::upsert_one(&a.ctx, &source, &remote_id, fields).await)
}

#[derive(serde::Deserialize)]
struct PostQuery {
    #[serde(default)]
    strict: bool,
}

async fn post_catalog(
    State(a): State<Arc<Admin>>,
    Query(q): Query<PostQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&a, &headers) {
        return unauthorized();
    }
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let defaults = match catalog::defaults_for(&a.ctx) {
        Ok(d) => d,
        Err(e) => return answer(Err(e)),
    };
    answer(catalog::import_api(&a.ctx, Box::new(reader), defaults, q.strict).await)
}
