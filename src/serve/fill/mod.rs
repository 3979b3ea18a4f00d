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
//!
//! Across replicas, one fill per file: a fill first takes the file's lease in the database
//! (`fill:{bucket}/{key}`, renewed while it runs, released once the copy is recorded). The
//! holder fetches the origin (`origin`). A replica that finds the lease taken streams the
//! holder's spool over the holder's admin listener (`remote`), so its clients get bytes as
//! soon as the holder does, whatever the file's size. When the holder cannot be reached (no
//! `peer_url`, a network split, a holder that just crashed), it waits for the lease to end and
//! then serves the holder's copy from the mirror, or, if none was recorded (the holder failed
//! or crashed: its lease expires after `LEASE_TTL`), takes the lease and fetches itself. When
//! the database cannot be asked, the fill goes to the origin without a lease: availability
//! first, at the price of a possible duplicate fetch.

mod origin;
mod remote;

pub use origin::client_message;

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

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::engine::db::Leased;
use crate::engine::model::FileDetail;
use crate::engine::origin::OriginMeta;

/// How long a fill lease lasts unless renewed: a crashed holder blocks its file this long.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// How long a replica waits for a fill it cannot stream from (then it takes over).
const WAIT_FOR_HOLDER: Duration = Duration::from_secs(120);

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
    /// Ends the fill as failed (keeping the bytes already written for the readers' count).
    fn fail(&self, error: String) {
        self.state.send_modify(|s| {
            let written = match s {
                FillState::Streaming(n) | FillState::Done(n) => *n,
                _ => 0,
            };
            *s = FillState::Failed { written, error };
        });
    }

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
    /// Fills at once at most (`serve.max_fills`).
    max: usize,
}

/// What `Fills::join` found.
pub enum Joined {
    Fill(Arc<Fill>),
    /// A pull-through key the origin just answered 404 for.
    NotAtOrigin,
    /// `serve.max_fills` fills are running: try again later.
    Busy,
}

impl Fills {
    pub fn new(spool_dir: PathBuf, tasks: TaskTracker, max: usize) -> Fills {
        Fills {
            inflight: Mutex::new(HashMap::new()),
            spool_dir,
            tasks,
            max: max.max(1),
        }
    }

    /// The fill of `key` in flight here, if any.
    pub fn get(&self, key: &str) -> Option<Arc<Fill>> {
        let inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.get(key).cloned()
    }

    /// The fill of the job's key in flight, or a new one started for it.
    pub fn join(shared: &Arc<Shared>, job: FillJob) -> io::Result<Joined> {
        let fills = &shared.fills;
        let mut inflight = fills.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // A fill that failed is not joined, even before it left the map: the request tries
        // the origin afresh.
        if let Some(f) = inflight.get(&job.row.key) {
            let over = matches!(*f.state.borrow(), FillState::Failed { .. });
            if !over {
                return Ok(Joined::Fill(f.clone()));
            }
        }
        // A fill that found nothing remembers the 404 before it leaves the map, so a request
        // that missed both on its way here sees the 404 now, under the lock.
        if job.pull_through && shared.negative.get(job.row.key.as_str()).is_some() {
            return Ok(Joined::NotAtOrigin);
        }
        // The cap is on origin fetches: fills that ended (and only wait for their upload or
        // their lease release) do not count.
        let fetching = inflight
            .values()
            .filter(|f| {
                matches!(
                    *f.state.borrow(),
                    FillState::Connecting | FillState::Streaming(_)
                )
            })
            .count();
        if fetching >= fills.max {
            return Ok(Joined::Busy);
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
        Ok(Joined::Fill(fill))
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

/// The lease that makes a file's fill exclusive across replicas.
fn lease_name(bucket: &str, key: &str) -> String {
    format!("fill:{bucket}/{key}")
}

/// Renews a held lease until released.
struct Keeper {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    fn start(shared: &Arc<Shared>, name: &str) -> Keeper {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (shared, name, stop) = (shared.clone(), name.to_string(), stop.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RENEW_EVERY) => {}
                    }
                    let db = &shared.ctx.db;
                    let peer = shared.peer_url.as_deref();
                    match db
                        .try_lease(&name, &shared.instance, peer, LEASE_TTL, Utc::now())
                        .await
                    {
                        Ok(Leased::Acquired) => {}
                        Ok(Leased::HeldBy(h)) => {
                            tracing::warn!("{name}: lease lost to {} (renewal too late)", h.holder)
                        }
                        Err(e) => tracing::warn!("{name}: lease not renewed: {e}"),
                    }
                }
            }
        });
        Keeper { stop, task }
    }

    async fn release(self, shared: &Shared, name: &str) {
        self.stop.cancel();
        let _ = self.task.await;
        if let Err(e) = shared.ctx.db.release_lease(name, &shared.instance).await {
            tracing::warn!("{name}: lease not released (it expires by itself): {e}");
        }
    }
}

/// Runs a fill: from the origin with the file's lease, else from the replica that holds it.
async fn run(shared: Arc<Shared>, fill: Arc<Fill>, job: FillJob) {
    let _finish = Finish {
        shared: shared.clone(),
        fill: fill.clone(),
        row: job.row.clone(),
    };
    let name = lease_name(shared.mirror.name(), &job.row.key);
    let db = &shared.ctx.db;
    // Each round either fills or waits for another replica's fill to end.
    for _ in 0..3 {
        let peer = shared.peer_url.as_deref();
        match db
            .try_lease(&name, &shared.instance, peer, LEASE_TTL, Utc::now())
            .await
        {
            Ok(Leased::Acquired) => {
                // Another replica may have stored the copy between this one's lookup and now.
                if let Some(copy) = remote::fresh_copy(&shared, &job.row).await {
                    let _ = db.release_lease(&name, &shared.instance).await;
                    if remote::from_mirror(&shared, &fill, &copy).await {
                        return;
                    }
                    continue;
                }
                let keeper = Keeper::start(&shared, &name);
                origin::fetch(&shared, &fill, &job).await;
                keeper.release(&shared, &name).await;
                return;
            }
            Ok(Leased::HeldBy(holder)) => {
                if let Some(peer) = holder.address.as_deref() {
                    if remote::from_peer(&shared, &fill, peer, &job.row.key).await {
                        remote::record_when_stored(&shared, &fill, &name, &job.row.key).await;
                        return;
                    }
                }
                remote::wait_for_release(&shared, &name, WAIT_FOR_HOLDER).await;
                if let Some(copy) = remote::fresh_copy(&shared, &job.row).await {
                    if remote::from_mirror(&shared, &fill, &copy).await {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("{name}: lease unavailable, fetching without it: {e}");
                origin::fetch(&shared, &fill, &job).await;
                return;
            }
        }
    }
    fill.fail("another replica keeps this file's fill: try again".into());
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
