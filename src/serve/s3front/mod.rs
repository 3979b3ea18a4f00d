//! The S3 front (`serve.s3_listen`, seed 004): apps talk plain S3 to it, signing with keys it
//! issues (`[[s3_front.clients]]`); it forwards each request to the main bucket with the
//! bucket's own credentials, bodies streamed, and records every write main confirmed as its
//! `backup_inventory` row and a replication task in one transaction before it answers. The
//! replication workers (`super::replicate`) copy main -> backup.

mod auth;
mod batch;
mod convert;
mod ops;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use crate::engine::db::{Db, FrontWrite};
use crate::engine::s3::S3Bucket;
use crate::engine::Ctx;

/// What the S3 operations share.
pub struct Front {
    main: S3Bucket,
    db: Db,
    region: String,
    clients: Arc<auth::Clients>,
    /// Wakes this process's replication worker when a task is recorded.
    wake: Arc<Notify>,
    metrics: Metrics,
    /// Writes' intents (path, delete?) and records, each in batches (group commit).
    intents: batch::Batcher<(String, bool), i64>,
    records: batch::Batcher<(i64, FrontWrite), i64>,
}

/// Batches of write intents: begun by `instance`, settled by the grace after their start.
fn intent_batcher(db: Db, instance: String) -> batch::Batcher<(String, bool), i64> {
    let instance = Arc::new(instance);
    batch::Batcher::new(BATCHES_AT_ONCE, move |paths: Vec<(String, bool)>| {
        let (db, instance) = (db.clone(), instance.clone());
        async move {
            let now = chrono::Utc::now();
            let settle_by = now + chrono::Duration::from_std(ops::INTENT_GRACE).unwrap_or_default();
            let paths: Vec<(&str, bool)> = paths.iter().map(|(p, d)| (p.as_str(), *d)).collect();
            db.begin_front_writes(&paths, &instance, now, settle_by)
                .await
        }
    })
}

/// Batches of confirmed writes: inventory rows and tasks, committed durably.
fn record_batcher(db: Db) -> batch::Batcher<(i64, FrontWrite), i64> {
    batch::Batcher::new(BATCHES_AT_ONCE, move |writes: Vec<(i64, FrontWrite)>| {
        let db = db.clone();
        async move { db.record_front_writes(&writes, chrono::Utc::now()).await }
    })
}

/// Batches of each kind written at once (each holds a database connection meanwhile).
const BATCHES_AT_ONCE: usize = 1;

/// Serves the S3 API on `listener` until `cancel`; then stops accepting and lets requests in
/// flight finish for up to `grace`.
pub async fn start(
    ctx: Arc<Ctx>,
    instance: String,
    listener: TcpListener,
    wake: Arc<Notify>,
    metrics: Metrics,
    cancel: CancellationToken,
    grace: Duration,
) -> crate::engine::error::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let main = ctx.main().await?.clone();
    let cfg = &ctx.config.s3_front;
    let clients = Arc::new(auth::Clients::new(&cfg.clients));
    let front = Front {
        main,
        intents: intent_batcher(ctx.db.clone(), instance),
        records: record_batcher(ctx.db.clone()),
        db: ctx.db.clone(),
        region: cfg.region.clone(),
        clients: clients.clone(),
        wake,
        metrics,
    };
    let mut b = s3s::service::S3ServiceBuilder::new(front);
    b.set_auth(auth::Keys(clients.clone()));
    b.set_access(auth::Access(clients));
    let service = b.build();
    let task = tokio::spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        loop {
            let (socket, _) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("s3 front {addr}: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = socket.set_nodelay(true);
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        drop(listener);
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("s3 front: requests still running after {grace:?} were cut off");
        }
    });
    Ok((addr, task))
}
