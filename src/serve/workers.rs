//! Scheduled workers of the serve process, each off unless `[serve]` sets its interval:
//! validation of recently downloaded files, purge of unused files, archive of old months,
//! catalog sync from the origin (without prune). They
//! call the same engine operations as the TUI and `--headless`, so they take the same lock
//! (a busy lock skips the round) and write the same audit rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::error::{Error, Result};
use crate::engine::jobs::Progress;
use crate::engine::ops::{archive, catalog, purge, validate};
use crate::engine::Ctx;

#[derive(Debug, Clone, Copy)]
enum Worker {
    Validate,
    PurgeUnused,
    Archive,
    CatalogSync,
}

impl Worker {
    fn name(self) -> &'static str {
        match self {
            Worker::Validate => "validate",
            Worker::PurgeUnused => "purge-unused",
            Worker::Archive => "archive",
            Worker::CatalogSync => "catalog-sync",
        }
    }

    /// One round; returns a one-line summary.
    async fn round(self, ctx: &Ctx, progress: &Progress) -> Result<String> {
        match self {
            Worker::Validate => {
                let r = validate::run(ctx, validate::ValidateParams::default(), progress).await?;
                Ok(r.to_string())
            }
            Worker::PurgeUnused => {
                let p = purge::PurgeParams {
                    target: purge::PurgeTarget::UnusedDays(ctx.config.policy.unused_days),
                    dry_run: false,
                    max_delete: None,
                    yes: true,
                    prefix: None,
                    pattern: None,
                    impact_days: purge::DEFAULT_IMPACT_DAYS,
                };
                let r = purge::run(ctx, p, progress).await?;
                Ok(r.to_string())
            }
            Worker::Archive => {
                let p = archive::ArchiveRunParams {
                    yes: true,
                    ..Default::default()
                };
                let r = archive::run(ctx, p, progress).await?;
                Ok(r.to_string())
            }
            Worker::CatalogSync => {
                let r = catalog::sync(ctx, catalog::ImportParams::default(), progress).await?;
                Ok(r.to_string())
            }
        }
    }
}

/// Starts the configured workers; they stop when `cancel` fires (a round under way is
/// cancelled through its progress handle and stops at its next safe point).
pub fn spawn(ctx: Arc<Ctx>, cancel: CancellationToken) -> Vec<JoinHandle<()>> {
    let s = &ctx.config.serve;
    [
        (Worker::Validate, s.validate_every),
        (Worker::PurgeUnused, s.purge_unused_every),
        (Worker::Archive, s.archive_every),
        (Worker::CatalogSync, s.catalog_sync_every),
    ]
    .into_iter()
    .filter_map(|(w, every)| every.map(|e| (w, e.0)))
    .map(|(w, every)| tokio::spawn(run(ctx.clone(), w, every, cancel.clone())))
    .collect()
}

async fn run(ctx: Arc<Ctx>, worker: Worker, every: Duration, cancel: CancellationToken) {
    if ctx.read_only {
        tracing::warn!("worker {}: not started (read-only mode)", worker.name());
        return;
    }
    tracing::info!("worker {}: every {every:?}", worker.name());
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let progress = Progress::quiet(cancel.child_token());
        match worker.round(&ctx, &progress).await {
            Ok(summary) => tracing::info!("worker {}: {summary}", worker.name()),
            Err(Error::Busy(who)) => {
                tracing::info!("worker {}: skipped, busy: {who}", worker.name())
            }
            Err(e) => tracing::warn!("worker {}: {e}", worker.name()),
        }
    }
}
