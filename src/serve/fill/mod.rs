//! Misses: one origin fetch per file at a time (single-flight), spooled to an anonymous
//! temporary file that every waiting client and the mirror upload read from as it grows.
//!
//! The first client never waits for the upload: it reads the spool right behind the origin.
//! A client that disconnects stops only its own reader; the fetch and the upload go on in
//! their own task. The upload goes through the engine's `remirror::store`, so the row is
//! updated (or, for a catalog entry's first copy, inserted) only after S3 confirmed the object,
//! and a failed or short body leaves no object. Memory stays flat in file size: bodies live on
//! disk, never in memory.
//!
//! A pull-through fill (a key the catalog does not know) registers the catalog entry when the
//! origin answers 200 from its own host; a 404 is remembered for `serve.negative_ttl`, so
//! concurrent and later requests for the key cost the origin nothing.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Stream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::Shared;
use crate::engine::model::FileDetail;
use crate::engine::ops::remirror::{self, StoreTarget};
use crate::engine::origin::OriginMeta;

/// Bytes written to or read from the spool at once.
const CHUNK: usize = 256 * 1024;

/// How far a fill got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillState {
    /// Waiting for the origin's response headers.
    Connecting,
    /// This many bytes are in the spool, more are coming.
    Streaming(u64),
    /// The whole body (this many bytes) is in the spool.
    Done(u64),
    /// The origin failed (before or after sending some bytes).
    Failed { written: u64, error: String },
    /// A pull-through key the origin does not have (HTTP 404).
    NotFound,
}

/// What a fill fetches and where the copy goes.
#[derive(Clone)]
pub struct FillJob {
    pub row: Arc<FileDetail>,
    /// A key the catalog does not know: register it on a 200, remember a 404.
    pub pull_through: bool,
}

/// One origin fetch in flight.
pub struct Fill {
    spool: Arc<std::fs::File>,
    meta: OnceLock<OriginMeta>,
    state: watch::Sender<FillState>,
    /// The mirrored row once the copy is recorded: `Some(Some(id))`, or `Some(None)` when the
    /// copy was not stored. Downloads of a file without a row wait for it to record themselves.
    stored: watch::Sender<Option<Option<i64>>>,
}

impl Fill {
    /// What the origin said (set before the state leaves `Connecting`).
    pub fn meta(&self) -> Option<&OriginMeta> {
        self.meta.get()
    }

    /// Waits for the origin's answer: `Streaming`, `Done` or `Failed`.
    pub async fn started(&self) -> FillState {
        let mut rx = self.state.subscribe();
        let state = match rx.wait_for(|s| !matches!(s, FillState::Connecting)).await {
            Ok(s) => s.clone(),
            Err(_) => FillState::Failed {
                written: 0,
                error: "the fill ended unexpectedly".into(),
            },
        };
        state
    }

    /// Waits until the copy is recorded (or failed): the mirrored row's id, if any.
    pub async fn stored(&self) -> Option<i64> {
        let mut rx = self.stored.subscribe();
        let id = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.flatten(),
            Err(_) => None,
        };
        id
    }

    /// The body from `start` up to `end` (exclusive; the whole body when `None`), read from
    /// the spool as the origin delivers it. Fails when the origin fails.
    pub fn follow(
        self: &Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>> {
        struct Cursor {
            fill: Arc<Fill>,
            rx: watch::Receiver<FillState>,
            pos: u64,
            end: Option<u64>,
            over: bool,
        }
        let cursor = Cursor {
            rx: self.state.subscribe(),
            fill: self.clone(),
            pos: start,
            end,
            over: false,
        };
        Box::pin(futures::stream::unfold(cursor, |mut c| async move {
            if c.over {
                return None;
            }
            loop {
                let state = c.rx.borrow_and_update().clone();
                let (available, complete) = match state {
                    FillState::Connecting => (0, false),
                    FillState::Streaming(n) => (n, false),
                    FillState::Done(n) => (n, true),
                    FillState::Failed { error, .. } => {
                        c.over = true;
                        return Some((Err(io::Error::other(error)), c));
                    }
                    FillState::NotFound => {
                        c.over = true;
                        return Some((Err(io::Error::other("origin: not found (HTTP 404)")), c));
                    }
                };
                let limit = c.end.map_or(available, |e| e.min(available));
                if c.pos < limit {
                    let len = (limit - c.pos).min(CHUNK as u64) as usize;
                    let (spool, pos) = (c.fill.spool.clone(), c.pos);
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len];
                        spool
                            .read_exact_at(&mut buf, pos)
                            .map(|()| Bytes::from(buf))
                    })
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
                    return match read {
                        Ok(b) => {
                            c.pos += b.len() as u64;
                            Some((Ok(b), c))
                        }
                        Err(e) => {
                            c.over = true;
                            Some((Err(e), c))
                        }
                    };
                }
                if complete || c.end.is_some_and(|e| c.pos >= e) {
                    return None;
                }
                if c.rx.changed().await.is_err() {
                    c.over = true;
                    return Some((Err(io::Error::other("the fill ended unexpectedly")), c));
                }
            }
        }))
    }
}

/// The fills in flight, by object key.
pub struct Fills {
    inflight: Mutex<HashMap<String, Arc<Fill>>>,
    spool_dir: PathBuf,
    tasks: TaskTracker,
}

impl Fills {
    pub fn new(spool_dir: PathBuf, tasks: TaskTracker) -> Fills {
        Fills {
            inflight: Mutex::new(HashMap::new()),
            spool_dir,
            tasks,
        }
    }

    /// The fill of the job's key in flight, or a new one started for it.
    /// `Ok(None)` for a pull-through key the origin just answered 404 for.
    pub fn join(shared: &Arc<Shared>, job: FillJob) -> io::Result<Option<Arc<Fill>>> {
        let fills = &shared.fills;
        let mut inflight = fills.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = inflight.get(&job.row.key) {
            return Ok(Some(f.clone()));
        }
        // A fill that found nothing remembers the 404 before it leaves the map, so a request
        // that missed both on its way here sees the 404 now, under the lock.
        if job.pull_through && shared.negative.get(job.row.key.as_str()).is_some() {
            return Ok(None);
        }
        let spool = tempfile::tempfile_in(&fills.spool_dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spool in {}: {e}", fills.spool_dir.display()),
            )
        })?;
        let fill = Arc::new(Fill {
            spool: Arc::new(spool),
            meta: OnceLock::new(),
            state: watch::Sender::new(FillState::Connecting),
            stored: watch::Sender::new(None),
        });
        inflight.insert(job.row.key.clone(), fill.clone());
        drop(inflight);
        shared.metrics.fills_in_flight.inc();
        fills.tasks.spawn(run(shared.clone(), fill.clone(), job));
        Ok(Some(fill))
    }

    /// Runs `f` as a task the shutdown waits for (downloads that record their event once the
    /// copy they came with is stored).
    pub fn track<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.tasks.spawn(f);
    }

    fn remove(&self, key: &str, fill: &Arc<Fill>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if inflight.get(key).is_some_and(|f| Arc::ptr_eq(f, fill)) {
            inflight.remove(key);
        }
    }
}

/// Ends a fill however its task ends: marks it failed if it has no final state yet (so no
/// reader waits forever), forgets the cached row (the next request sees the new copy) and
/// takes the fill out of the in-flight map (the next miss starts afresh).
struct Finish {
    shared: Arc<Shared>,
    fill: Arc<Fill>,
    row: Arc<FileDetail>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.fill.state.send_if_modified(|s| {
            let written = match s {
                FillState::Connecting => 0,
                FillState::Streaming(n) => *n,
                _ => return false,
            };
            *s = FillState::Failed {
                written,
                error: "the fill ended unexpectedly".into(),
            };
            true
        });
        self.fill.stored.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(None);
                return true;
            }
            false
        });
        self.shared.rows.forget(&self.row);
        self.shared.fills.remove(&self.row.key, &self.fill);
        self.shared.metrics.fills_in_flight.dec();
    }
}

/// Fetches the origin into the spool while the upload follows it; then records the new copy.
async fn run(shared: Arc<Shared>, fill: Arc<Fill>, job: FillJob) {
    let row = job.row.clone();
    let _finish = Finish {
        shared: shared.clone(),
        fill: fill.clone(),
        row: row.clone(),
    };
    let m = &shared.metrics;
    m.origin_fetches.inc();
    let body = match shared.origin.get(&row.origin_url).await {
        Ok(Some(b)) if job.pull_through => match pulled_from_elsewhere(&shared, &b) {
            Some(why) => Err(why),
            None => Ok(b),
        },
        Ok(Some(b)) => Ok(b),
        Ok(None) if job.pull_through => {
            shared.negative.put(row.key.clone(), ());
            tracing::info!("pull-through {}: not at the origin (404)", row.key);
            fill.state.send_replace(FillState::NotFound);
            return;
        }
        Ok(None) => Err("origin: file gone (HTTP 404)".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let body = match body {
        Ok(b) => b,
        Err(error) => {
            m.origin_errors.inc();
            tracing::warn!("miss {} ({}): {error}", row.id, row.key);
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
        async move {
            // A pulled key's catalog entry is registered while the body streams, off the
            // client's path; the copy's row needs it only at the end.
            let origin_file_id = if job.pull_through {
                register(&shared, &row.key, &meta).await?
            } else {
                row.origin_file_id
            };
            let reader = tokio_util::io::StreamReader::new(fill.follow(0, None));
            let target = StoreTarget {
                id: (row.id != 0).then_some(row.id),
                origin_file_id,
                key: row.key.clone(),
            };
            remirror::store(&shared.ctx.db, &shared.fill_mirror, &target, reader, meta).await
        }
    });
    match spool(&fill, body.body, meta.size).await {
        Ok(n) => {
            fill.state.send_replace(FillState::Done(n));
        }
        Err(e) => {
            m.origin_errors.inc();
            tracing::warn!("miss {} ({}): origin body failed: {e}", row.id, row.key);
            fill.state.send_modify(|s| {
                let written = match s {
                    FillState::Streaming(n) => *n,
                    _ => 0,
                };
                *s = FillState::Failed {
                    written,
                    error: format!("origin: {e}"),
                };
            });
        }
    }
    match upload.await {
        Ok(Ok((bytes, _, id))) => {
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
    (!same).then(|| {
        format!(
            "origin redirected to another host ({}): not mirrored",
            final_url.host_str().unwrap_or("?")
        )
    })
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

/// Copies the origin body into the spool, publishing progress; checks Content-Length.
async fn spool(
    fill: &Fill,
    mut body: Pin<Box<dyn AsyncRead + Send>>,
    expected: Option<u64>,
) -> io::Result<u64> {
    let mut pos = 0u64;
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(CHUNK);
        // Wait for some bytes, then take whatever else is ready without waiting, so the first
        // bytes reach the clients at once and large bodies move in large writes.
        let mut eof = body.read_buf(&mut buf).await? == 0;
        while !eof && buf.len() < CHUNK {
            match body.read_buf(&mut buf).now_or_never() {
                Some(Ok(0)) => eof = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        if !buf.is_empty() {
            let chunk = buf.split().freeze();
            let len = chunk.len() as u64;
            if let Some(exp) = expected {
                if pos + len > exp {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("origin sent more than the {exp} bytes of its Content-Length"),
                    ));
                }
            }
            let spool = fill.spool.clone();
            tokio::task::spawn_blocking(move || spool.write_all_at(&chunk, pos))
                .await
                .map_err(io::Error::other)??;
            pos += len;
            fill.state.send_replace(FillState::Streaming(pos));
        }
        if eof {
            break;
        }
    }
    match expected {
        Some(exp) if exp != pos => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("origin sent {pos} bytes, Content-Length said {exp}"),
        )),
        _ => Ok(pos),
    }
}
