//! A fill another replica holds the lease for: its spool streamed over its admin listener
//! (`GET /peer/fills/{key}`, the admin bearer token), or, when it cannot be reached, its copy
//! read from the mirror once its lease ends.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio::time::Instant;

use super::{spool, Fill, FillState};
use crate::engine::model::FileDetail;
use crate::engine::origin::OriginMeta;
use crate::serve::Shared;

/// How long a peer may take to answer with headers.
const PEER_CONNECT: Duration = Duration::from_secs(3);
/// How often a waiting replica looks at the lease.
const POLL: Duration = Duration::from_millis(200);

/// Streams the holder's fill of `key` from `peer` into this fill. `false` when the peer could
/// not be asked or has no such fill (then the caller waits for the lease instead).
pub(super) async fn from_peer(
    shared: &Arc<Shared>,
    fill: &Arc<Fill>,
    peer: &str,
    key: &str,
) -> bool {
    let url = format!(
        "{}/peer/fills/{}",
        peer.trim_end_matches('/'),
        crate::engine::keys::key_to_url(key)
    );
    let mut req = shared.peers.get(&url);
    if let Some(token) = &shared.peer_token {
        req = req.bearer_auth(token);
    }
    let resp = match tokio::time::timeout(PEER_CONNECT, req.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::info!("fill {key}: peer {peer} unreachable, waiting for its fill: {e}");
            return false;
        }
        Err(_) => {
            tracing::info!(
                "fill {key}: peer {peer} did not answer in {PEER_CONNECT:?}, waiting for its fill"
            );
            return false;
        }
    };
    match resp.status().as_u16() {
        200 => {}
        410 => {
            shared.negative.put(key.to_string(), ());
            fill.state.send_replace(FillState::NotFound);
            return true;
        }
        502 => {
            fill.state.send_replace(FillState::Failed {
                written: 0,
                error: "origin fetch failed".into(),
            });
            return true;
        }
        s => {
            tracing::info!("fill {key}: peer {peer} answered HTTP {s}, waiting for its fill");
            return false;
        }
    }
    let h = resp.headers();
    let text = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let meta = OriginMeta {
        size: text("x-origin-size").and_then(|v| v.parse().ok()),
        etag: text("etag").map(|e| e.trim_matches('"').to_string()),
        last_modified: text("last-modified")
            .and_then(|v| DateTime::parse_from_rfc2822(&v).ok())
            .map(|t| t.with_timezone(&Utc)),
        content_type: text("content-type"),
    };
    shared.metrics.fills_from_peer.inc();
    let size = meta.size;
    let _ = fill.meta.set(meta);
    fill.state.send_replace(FillState::Streaming(0));
    let body = resp.bytes_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(body);
    match spool(fill, Box::pin(reader), size).await {
        Ok(n) => {
            fill.state.send_replace(FillState::Done(n));
        }
        Err(e) => {
            tracing::warn!("fill {key}: the stream from peer {peer} broke off: {e}");
            fill.fail("origin: the body broke off".into());
        }
    }
    true
}

/// Waits until the lease `name` is released or expires, at most `limit`.
pub(super) async fn wait_for_release(shared: &Shared, name: &str, limit: Duration) {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        match shared.ctx.db.lease_holder(name, Utc::now()).await {
            Ok(None) => return,
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!("{name}: cannot see the lease: {e}");
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Once the holder's lease ends: the row of the copy it stored, for the readers of a file
/// that had no row yet.
pub(super) async fn record_when_stored(shared: &Shared, fill: &Fill, name: &str, key: &str) {
    wait_for_release(shared, name, super::WAIT_FOR_HOLDER).await;
    let id = match shared
        .ctx
        .db
        .get_file_by_key_in(Some(shared.mirror.name()), key)
        .await
    {
        Ok(Some(r)) if r.deleted_at.is_none() && r.bucket == shared.mirror.name() => Some(r.id),
        _ => None,
    };
    fill.stored.send_replace(Some(id));
}

/// The fresh copy another replica recorded for `row` (a newer version, or a first row).
pub(super) async fn fresh_copy(shared: &Shared, row: &FileDetail) -> Option<FileDetail> {
    match shared
        .ctx
        .db
        .get_file_by_key_in(Some(shared.mirror.name()), &row.key)
        .await
    {
        Ok(Some(r))
            if r.deleted_at.is_none()
                && !r.is_stale
                && r.bucket == shared.mirror.name()
                && (row.id == 0 || r.id != row.id || r.version != row.version) =>
        {
            Some(r)
        }
        _ => None,
    }
}

/// Serves the copy another replica just stored, through this fill's spool.
pub(super) async fn from_mirror(shared: &Shared, fill: &Fill, copy: &FileDetail) -> bool {
    let obj = match shared.mirror.get(&copy.key, None).await {
        Ok(Some(o)) => o,
        Ok(None) => return false,
        Err(e) => {
            tracing::warn!("fill {}: cannot read the new copy: {e}", copy.key);
            return false;
        }
    };
    let meta = OriginMeta {
        size: Some(obj.meta.size),
        etag: copy.content_etag.clone(),
        last_modified: obj.meta.last_modified,
        content_type: obj.meta.content_type.clone(),
    };
    let _ = fill.meta.set(meta);
    fill.state.send_replace(FillState::Streaming(0));
    match spool(fill, obj.body, Some(obj.meta.size)).await {
        Ok(n) => {
            fill.state.send_replace(FillState::Done(n));
            fill.stored.send_replace(Some(Some(copy.id)));
        }
        Err(e) => {
            tracing::warn!("fill {}: reading the new copy broke off: {e}", copy.key);
            fill.fail("mirror: the body broke off".into());
        }
    }
    true
}
