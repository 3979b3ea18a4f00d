//! The data plane (`mirrorctl serve`): the download proxy that serves files from the mirror
//! bucket (hits), fills the mirror from the origin on misses while streaming to the client,
//! records every download, exposes Prometheus metrics and health checks, and runs the
//! scheduled workers. It calls the engine for everything that touches the database, the
//! buckets or the origin.

mod admin;
mod breaker;
mod cache;
mod changes;
mod cores;
mod download;
mod events;
mod fill;
pub mod fleet;
mod limit;
mod listener;
mod metrics;
mod peer;
mod replicate;
mod s3front;
mod upstream;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::error::{Error, Result};
use crate::engine::origin::Origin;
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

/// What every request handler shares.
pub(crate) struct Shared {
    ctx: Arc<Ctx>,
    mirror: S3Bucket,
    /// The mirror for fills' uploads: one part in flight each, so a fill holds one part in
    /// memory however large the file and however many misses run at once (the client reads
    /// the spool, not the upload, so a slower upload never slows a download).
    fill_mirror: S3Bucket,
    origin: Origin,
    rows: download::RowCache,
    /// Presigned mirror URLs for hits, and the client that GETs them.
    urls: download::SignedUrls,
    upstream: upstream::Upstream,
    /// Small hits reading from the mirror at once. Each holds one connection to the S3 server
    /// and its buffers: without a bound, 500 clients kept ~575 connections open (71 with it).
    small_hits: tokio::sync::Semaphore,
    fills: fill::Fills,
    recorder: events::Recorder,
    metrics: metrics::Metrics,
    limiter: Option<limit::Limiter>,
    /// `GET /files/{key}` may fetch keys the catalog does not know from `base_url`.
    pull_through: bool,
    base_url: Option<url::Url>,
    /// Keys the origin answered 404 for, remembered for `serve.negative_ttl`.
    negative: download::TtlCache<String, ()>,
    /// Hits go to the origin while the mirror keeps failing.
    breaker: breaker::Breaker,
    /// This replica, as it appears in fill leases and the fleet table.
    instance: String,
    /// How other replicas reach this one's peer endpoint (none without an admin listener).
    peer_url: Option<String>,
    /// The admin bearer token: the peer endpoint needs it, and this replica sends it.
    peer_token: Option<String>,
    /// The client for other replicas' peer endpoints.
    peers: reqwest::Client,
}

/// A running data plane.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    s3_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Server {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where the S3 front listens, if it does.
    pub fn s3_addr(&self) -> Option<SocketAddr> {
        self.s3_addr
    }

    /// Starts a graceful shutdown: stop accepting, finish in-flight downloads and uploads
    /// (up to `serve.shutdown_timeout`), write the remaining download events.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::runtime(format!("serve task failed: {e}")))?
    }
}

/// Starts the data plane on `listener`: connects the mirror bucket and the origin first, so a
/// misconfiguration fails here and not on the first request.
pub async fn start(ctx: Arc<Ctx>, listener: TcpListener) -> Result<Server> {
    start_with_admin(ctx, listener, None).await
}

/// As `start`, with the admin API on `admin` (it needs `serve.admin_token`).
pub async fn start_with_admin(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    admin: Option<TcpListener>,
) -> Result<Server> {
    start_listeners(
        ctx,
        Listeners {
            download: listener,
            admin,
            s3: None,
            connection_threads: None,
        },
    )
    .await
}

/// Where the data plane listens: downloads, and optionally the admin API and the S3 front.
pub struct Listeners {
    pub download: TcpListener,
    pub admin: Option<TcpListener>,
    pub s3: Option<TcpListener>,
    /// Threads that serve download connections (`None`: `cores::default_threads()`).
    pub connection_threads: Option<usize>,
}

/// Starts the data plane on its listeners; the replication workers run whenever a backup
/// bucket is configured (they drain what the S3 front, here or in another replica, recorded).
pub async fn start_listeners(ctx: Arc<Ctx>, listeners: Listeners) -> Result<Server> {
    let Listeners {
        download: listener,
        admin,
        s3,
        connection_threads,
    } = listeners;
    let addr = listener.local_addr()?;
    let token = match (&admin, &ctx.config.serve.admin_token) {
        (Some(_), None) => {
            return Err(Error::Usage("the admin API needs serve.admin_token".into()));
        }
        (_, t) => t.as_ref().map(|t| t.expose().to_string()),
    };
    let admin = match admin {
        Some(l) => {
            let a = l.local_addr()?;
            Some((l, a))
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(|(_, a)| *a);
    let peer_url = ctx
        .config
        .serve
        .peer_url
        .clone()
        .or_else(|| admin_addr.map(default_peer_url));
    let mirror = ctx.mirror().await?.clone();
    let origin = ctx.origin().await?.clone();
    let cfg = ctx.config.serve.clone();
    let metrics = metrics::Metrics::new();
    let stop_recorder = CancellationToken::new();
    let (recorder, recorder_task) = events::Recorder::start(
        ctx.db.clone(),
        cfg.event_flush.0,
        metrics.clone(),
        stop_recorder.clone(),
    );
    let spool_dir = cfg.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let uploads = TaskTracker::new();
    // Where changes are announced, cached rows live until announced changed.
    let announced = match ctx.db.listen_changes().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("change notifications unavailable, rows are cached for 1s: {e}");
            None
        }
    };
    let row_ttl = if announced.is_some() {
        download::ROW_TTL_NOTIFIED
    } else {
        download::ROW_TTL_POLLED
    };
    crate::engine::tls::install_provider();
    let peers = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| Error::runtime(format!("peer HTTP client: {e}")))?;
    let breaker = breaker::Breaker::new(metrics.mirror_circuit_open.clone());
    let threads = connection_threads.unwrap_or_else(cores::default_threads);
    let cores = cores::Cores::start(threads)?;
    let me = fleet::Instance::this_process(addr.to_string(), peer_url.clone());
    let shared = Arc::new(Shared {
        fill_mirror: mirror.clone().with_part_concurrency(1),
        mirror,
        origin,
        rows: download::RowCache::new(row_ttl),
        urls: download::SignedUrls::new(download::URL_REUSE),
        upstream: upstream::Upstream::new(threads, download::SMALL_HITS_AT_ONCE)?,
        small_hits: tokio::sync::Semaphore::new(download::SMALL_HITS_AT_ONCE),
        fills: fill::Fills::new(spool_dir, uploads.clone(), cfg.max_fills),
        recorder,
        metrics,
        limiter: limit::Limiter::from_config(&cfg)?,
        pull_through: cfg.pull_through_on(&ctx.config.origin),
        base_url: ctx
            .config
            .origin
            .base_url
            .as_deref()
            .and_then(|b| crate::engine::keys::base_url(b).ok()),
        negative: download::TtlCache::new(cfg.negative_ttl.0),
        breaker,
        instance: me.id.clone(),
        peer_url,
        peer_token: token.clone(),
        peers,
        ctx: ctx.clone(),
    });
    let cancel = CancellationToken::new();
    let mut workers = workers::spawn(ctx.clone(), cancel.clone());
    workers.push(tokio::spawn(partitions_ahead(ctx.clone(), cancel.clone())));
    if let Some(announced) = announced {
        workers.push(tokio::spawn(changes::follow(
            shared.clone(),
            announced,
            cancel.clone(),
        )));
    }
    // The fleet row says "stopped" only once downloads and uploads drained.
    let fleet_stop = CancellationToken::new();
    let fleet_task = fleet::spawn(
        ctx.db.clone(),
        me,
        {
            let s = shared.clone();
            move || fleet::Sample {
                requests_total: s.metrics.requests_total(),
                fills_in_flight: s.metrics.fills_in_flight.get(),
                queue_depth: s.recorder.queue_depth(),
            }
        },
        shared.metrics.metrics_lease.clone(),
        fleet_stop.clone(),
    );
    let wake = Arc::new(tokio::sync::Notify::new());
    if let Some(w) = replicate::spawn(
        ctx.clone(),
        shared.instance.clone(),
        wake.clone(),
        shared.metrics.clone(),
        cancel.clone(),
    )
    .await
    {
        workers.push(w);
    }
    let s3_front = match s3 {
        Some(l) => Some(
            s3front::start(
                ctx.clone(),
                shared.instance.clone(),
                l,
                wake,
                shared.metrics.clone(),
                cancel.clone(),
                cfg.shutdown_timeout.0,
            )
            .await?,
        ),
        None => None,
    };
    let s3_addr = s3_front.as_ref().map(|(a, _)| *a);
    if let Some((_, t)) = s3_front {
        workers.push(t);
    }
    let app = router(shared.clone());
    let admin = admin.map(|(l, a)| {
        let token = token.as_deref().unwrap_or_default();
        (l, a, admin_router(shared.clone(), token))
    });
    let admin_task = admin.map(|(l, admin_addr, app)| {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let served = axum::serve(l, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = served.await {
                tracing::error!("admin API {admin_addr}: {e}");
            }
        })
    });
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            let grace = cfg.shutdown_timeout.0;
            let served = listener::serve(
                listener,
                app,
                listener::Limits::from_config(&cfg),
                shared.metrics.clone(),
                &cores,
                cancel.clone(),
            );
            let cut_off = async {
                cancel.cancelled().await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                r = served => r.map_err(|e| Error::runtime(format!("serve {addr}: {e}")))?,
                _ = cut_off => tracing::warn!("shutdown: downloads still running after {grace:?} were cut off"),
            }
            // Misses keep uploading after their clients are gone: let them finish.
            uploads.close();
            if tokio::time::timeout(grace, uploads.wait()).await.is_err() {
                tracing::warn!(
                    "shutdown: mirror uploads still running after {grace:?} were abandoned"
                );
            }
            for w in workers {
                let _ = w.await;
            }
            if let Some(t) = admin_task {
                let _ = t.await;
            }
            fleet_stop.cancel();
            let _ = fleet_task.await;
            // Write the events of everything served so far.
            stop_recorder.cancel();
            let _ = recorder_task.await;
            drop(shared);
            // Last: what requests started (fills, pooled connections) ran on these threads.
            drop(cores);
            Ok(())
        }
    });
    Ok(Server {
        addr,
        admin_addr,
        s3_addr,
        cancel,
        task,
    })
}

/// `mirrorctl serve`: listens until Ctrl-C or SIGTERM, then shuts down gracefully. `threads`
/// (`--threads`) serve the download connections.
pub async fn run(ctx: Ctx, listen: Option<&str>, threads: Option<usize>) -> Result<()> {
    let listen = listen.unwrap_or(&ctx.config.serve.listen).to_string();
    let addr: SocketAddr = listen.parse().map_err(|_| {
        Error::Usage(format!(
            "bad listen address {listen:?} (expected IP:PORT, e.g. 127.0.0.1:8080)"
        ))
    })?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::runtime(format!("cannot listen on {addr}: {e}")))?;
    let admin =
        match &ctx.config.serve.admin_listen {
            Some(a) => {
                let a: SocketAddr = a
                    .parse()
                    .map_err(|_| Error::Usage(format!("serve.admin_listen: bad address {a:?}")))?;
                Some(TcpListener::bind(a).await.map_err(|e| {
                    Error::runtime(format!("cannot listen on {a} (admin API): {e}"))
                })?)
            }
            None => None,
        };
    let s3 = match &ctx.config.serve.s3_listen {
        Some(a) => {
            let a: SocketAddr = a
                .parse()
                .map_err(|_| Error::Usage(format!("serve.s3_listen: bad address {a:?}")))?;
            Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| Error::runtime(format!("cannot listen on {a} (S3 front): {e}")))?,
            )
        }
        None => None,
    };
    let mut ctx = ctx;
    ctx.operator = format!("serve:{}", ctx.operator);
    let server = start_listeners(
        Arc::new(ctx),
        Listeners {
            download: listener,
            admin,
            s3,
            connection_threads: threads,
        },
    )
    .await?;
    eprintln!(
        "mirrorctl serve: listening on http://{} (GET /download/{{id}}, /files/{{key}}, /metrics, /healthz, /readyz)",
        server.addr()
    );
    if let Some(a) = server.admin_addr() {
        eprintln!(
            "mirrorctl serve: admin API on http://{a} (PUT /catalog/{{source}}/{{remote_id}}, POST /catalog, GET /peer/fills/{{key}}: bearer token; /metrics, /healthz, /readyz)"
        );
    }
    if let Some(a) = server.s3_addr() {
        eprintln!(
            "mirrorctl serve: S3 front on http://{a} (writes go to the main bucket, recorded and replicated to the backup)"
        );
    }
    shutdown_signal().await;
    eprintln!("mirrorctl serve: shutting down (finishing downloads and uploads)…");
    server.shutdown();
    server.wait().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `http://<admin address>`, or with the host name when it listens on every address.
fn default_peer_url(admin: SocketAddr) -> String {
    if admin.ip().is_unspecified() {
        format!("http://{}:{}", fleet::hostname(), admin.port())
    } else {
        format!("http://{admin}")
    }
}

/// Creates the event partitions of this month and the next two at start and every 6 hours, so
/// an event flush never has to (nor waits on a lock for it).
async fn partitions_ahead(ctx: Arc<Ctx>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(Duration::from_secs(6 * 3600));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if ctx.read_only {
            return;
        }
        let now = crate::engine::db::Month::of(chrono::Utc::now());
        if let Err(e) = ctx.db.ensure_partitions_ahead(now, 2).await {
            tracing::warn!("event partitions ahead: {e}");
        }
    }
}

/// The admin listener: the catalog API and the peer endpoint (bearer token), and the same
/// `/metrics`, `/healthz` and `/readyz` as the download port, so those can stay off the public
/// port's path.
fn admin_router(shared: Arc<Shared>, token: &str) -> Router {
    let ops = Router::new()
        .route("/metrics", get(metrics::handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared.clone());
    admin::router(shared.ctx.clone(), token)
        .merge(peer::router(shared))
        .merge(ops)
}

fn router(shared: Arc<Shared>) -> Router {
    let mut downloads = Router::new()
        .route("/download/{id}", get(download::by_id))
        .route("/files/{*key}", get(download::by_key));
    if shared.limiter.is_some() {
        downloads = downloads.layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            limit::middleware,
        ));
    }
    Router::new()
        .merge(downloads)
        .route("/metrics", get(metrics::handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(shared)
}

/// A JSON error body: `{"error": "..."}`.
pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the database answers and the mirror bucket is reachable.
async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let limit = Duration::from_secs(3);
    let db = match tokio::time::timeout(limit, s.ctx.db.applied_migrations()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("database: no answer within 3s".to_string()),
    };
    let bucket = match tokio::time::timeout(limit, s.mirror.check()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("bucket {}: no answer within 3s", s.mirror.name())),
    };
    let ready = db.is_none() && bucket.is_none();
    let body = serde_json::json!({
        "ready": ready,
        "database": db.as_deref().unwrap_or("ok"),
        "mirror": bucket.as_deref().unwrap_or("ok"),
    })
    .to_string();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
