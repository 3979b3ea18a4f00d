//! A fill from the origin, by the replica that holds the file's fill lease: the body goes into
//! the spool (which the clients and the upload follow), then the copy is recorded over the row
//! version the fill started from.

use std::sync::Arc;

use super::{spool, Fill, FillJob, FillState};
use crate::engine::error::Error;
use crate::engine::ops::remirror::{self, StoreTarget};
use crate::engine::origin::OriginMeta;
use crate::serve::Shared;

/// What a client may be told about an origin failure: the status, never the URL (which can
/// carry tokens) or the transport's own words.
pub fn client_message(e: &Error) -> String {
    match e {
        Error::Origin { url, message } => {
            let names_a_place =
                message.contains("://") || (!url.is_empty() && message.contains(url.as_str()));
            if names_a_place {
                "origin unreachable or failed".into()
            } else {
                format!("origin: {message}")
            }
        }
        _ => "origin fetch failed".into(),
    }
}

/// Fetches the origin into the spool while the upload follows it; then records the new copy.
pub(super) async fn fetch(shared: &Arc<Shared>, fill: &Arc<Fill>, job: &FillJob) {
    let row = job.row.clone();
    let m = &shared.metrics;
    m.origin_fetches.inc();
    let body = match shared.origin.get(&row.origin_url).await {
        Ok(Some(b)) if job.pull_through => match pulled_from_elsewhere(shared, &b) {
            Some(why) => Err((why.clone(), why)),
            None => Ok(b),
        },
        Ok(Some(b)) => Ok(b),
        Ok(None) if job.pull_through => {
            shared.negative.put(row.key.clone(), ());
            tracing::info!("pull-through {}: not at the origin (404)", row.key);
            fill.state.send_replace(FillState::NotFound);
            return;
        }
        Ok(None) => Err((
            "origin: file gone (HTTP 404)".to_string(),
            "origin: file gone (HTTP 404)".to_string(),
        )),
        Err(e) => Err((e.to_string(), client_message(&e))),
    };
    let body = match body {
        Ok(b) => b,
        Err((detail, error)) => {
            m.origin_errors.inc();
            tracing::warn!("miss {} ({}): {detail}", row.id, row.key);
            fill.state
                .send_replace(FillState::Failed { written: 0, error });
            return;
        }
    };
    let meta = body.meta.clone();
    let _ = fill.meta.set(body.meta);
    fill.state.send_replace(FillState::Streaming(0));
    let upload = tokio::spawn({
        let (shared, fill, row, meta) = (shared.clone(), fill.clone(), row.clone(), meta.clone());
        let pull_through = job.pull_through;
        async move {
            // A pulled key's catalog entry is registered while the body streams, off the
            // client's path; the copy's row needs it only at the end.
            let origin_file_id = if pull_through {
                register(&shared, &row.key, &meta).await?
            } else {
                row.origin_file_id
            };
            let reader = tokio_util::io::StreamReader::new(fill.follow(0, None));
            let target = StoreTarget {
                id: (row.id != 0).then_some(row.id),
                version: (row.id != 0).then_some(row.version),
                origin_file_id,
                key: row.key.clone(),
            };
            remirror::store(&shared.ctx.db, &shared.fill_mirror, &target, reader, meta).await
        }
    });
    match spool(fill, body.body, meta.size).await {
        Ok(n) => {
            fill.state.send_replace(FillState::Done(n));
        }
        Err(e) => {
            m.origin_errors.inc();
            tracing::warn!("miss {} ({}): origin body failed: {e}", row.id, row.key);
            fill.fail("origin: the body broke off".into());
        }
    }
    match upload.await {
        Ok(Ok((bytes, _, id))) => {
            // The next request sees the new copy at once (not only once the lease is released).
            shared.rows.forget(&row);
            m.uploads.inc();
            fill.stored.send_replace(Some(Some(id)));
            tracing::info!("miss {id} ({}): {bytes} bytes now in the mirror", row.key);
        }
        Ok(Err(e)) => {
            m.upload_errors.inc();
            tracing::warn!(
                "miss {} ({}): not stored in the mirror: {e}",
                row.id,
                row.key
            );
        }
        Err(e) => {
            m.upload_errors.inc();
            tracing::warn!("miss {} ({}): upload task failed: {e}", row.id, row.key);
        }
    }
}

/// Why a pull-through answer must not be registered: it came from another host than
/// `origin.base_url`'s (a redirect).
fn pulled_from_elsewhere(
    shared: &Shared,
    body: &crate::engine::origin::OriginBody,
) -> Option<String> {
    let (Some(final_url), Some(base)) = (&body.final_url, &shared.base_url) else {
        return None;
    };
    let same = final_url.scheme() == base.scheme()
        && final_url.host_str() == base.host_str()
        && final_url.port_or_known_default() == base.port_or_known_default();
    (!same).then(|| "origin redirected to another host: not mirrored".to_string())
}

/// Registers a pulled key in the catalog (source `http`, the key as remote id and URL) and
/// returns the entry's id.
async fn register(
    shared: &Shared,
    key: &str,
    meta: &OriginMeta,
) -> crate::engine::error::Result<i64> {
    let db = &shared.ctx.db;
    let entry = crate::engine::db::CatalogEntry {
        source: "http".into(),
        remote_id: key.to_string(),
        url: crate::engine::keys::key_to_url(key),
        file_name: crate::engine::keys::last_segment(key),
        size: meta.size.map(|n| n as i64),
        etag: meta.etag.clone(),
        updated_at: meta.last_modified,
        key: key.to_string(),
    };
    let id = db.catalog_register(&entry, chrono::Utc::now()).await?;
    tracing::info!("pull-through {key}: registered as catalog entry {id}");
    Ok(id)
}
