//! This replica in the fleet: a task that writes its heartbeat (identity and load) to the
//! `fleet` table every 2 s and marks it stopped on a clean shutdown, and that takes and renews
//! the `metrics` lease so that exactly one replica exports the DB-wide gauges.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::db::{Db, FleetBeat, Leased};
use crate::engine::ops::fleet::{HEARTBEAT_INTERVAL, METRICS_LEASE};

pub use super::metrics::MetricsLease;

/// How long a taken metrics lease lasts without renewal: a crashed holder is replaced after
/// this at most.
pub const METRICS_LEASE_TTL: Duration = Duration::from_secs(10);
/// Rows of replicas silent for this long are deleted.
const PRUNE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often those are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// While the database keeps failing, one warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Who this replica is, as the fleet table shows it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub version: &'static str,
    pub hostname: String,
    pub listen: String,
    pub peer_url: Option<String>,
    pub started_at: DateTime<Utc>,
}

impl Instance {
    /// This process: a new id, this build's version, this host, started now.
    pub fn this_process(listen: String, peer_url: Option<String>) -> Instance {
        Instance {
            id: new_instance_id(),
            version: env!("CARGO_PKG_VERSION"),
            hostname: hostname(),
            listen,
            peer_url,
            started_at: Utc::now(),
        }
    }
}

/// The replica's load at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Requests served since the process started (a counter: the rate comes from two).
    pub requests_total: u64,
    pub fills_in_flight: i64,
    pub queue_depth: i64,
}

/// The intervals of the heartbeat task (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub metrics_ttl: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: HEARTBEAT_INTERVAL,
            metrics_ttl: METRICS_LEASE_TTL,
        }
    }
}

/// A name unique to this process: `<hostname>-<pid>-<6 random hex digits>`.
pub fn new_instance_id() -> String {
    let suffix: u32 = rand::random();
    format!(
        "{}-{}-{:06x}",
        hostname(),
        std::process::id(),
        suffix & 0xff_ffff
    )
}

/// This host's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Heartbeats every 2 s until `cancel`, then writes stopped_at and releases the metrics lease.
/// Also takes/renews the "metrics" lease (ttl 10 s) so exactly one replica exports the
/// DB-wide gauges; `lease` says whether this one does.
pub fn spawn(
    db: Db,
    me: Instance,
    sample: impl Fn() -> Sample + Send + Sync + 'static,
    lease: MetricsLease,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    spawn_with(db, me, sample, lease, cancel, Timing::default())
}

/// `spawn` with other intervals.
pub fn spawn_with(
    db: Db,
    me: Instance,
    sample: impl Fn() -> Sample + Send + Sync + 'static,
    lease: MetricsLease,
    cancel: CancellationToken,
    timing: Timing,
) -> JoinHandle<()> {
    // From now on the database decides; until the first answer nobody here exports.
    lease.set(false);
    tokio::spawn(run(db, me, sample, lease, cancel, timing))
}

async fn run(
    db: Db,
    me: Instance,
    sample: impl Fn() -> Sample + Send + Sync + 'static,
    lease: MetricsLease,
    cancel: CancellationToken,
    timing: Timing,
) {
    // Every call is bounded well inside the lease's lifetime, so a database that hangs drops
    // the flag before another replica can take the lease over.
    let limit = (timing.metrics_ttl / 2).min(Duration::from_secs(5));
    let mut ticks = tokio::time::interval(timing.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(Instant, u64)> = None;
    let mut failures = Failures::default();
    let mut pruned_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let s = sample();
        let at = Instant::now();
        let requests_per_s = match last {
            Some((t, n)) => {
                let secs = at.duration_since(t).as_secs_f64();
                if secs > 0.0 {
                    s.requests_total.saturating_sub(n) as f64 / secs
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        last = Some((at, s.requests_total));
        let now = Utc::now();
        let beat = FleetBeat {
            instance_id: me.id.clone(),
            version: me.version.to_string(),
            hostname: me.hostname.clone(),
            listen: me.listen.clone(),
            peer_url: me.peer_url.clone(),
            started_at: me.started_at,
            heartbeat_at: now,
            requests_per_s,
            fills_in_flight: s.fills_in_flight,
            queue_depth: s.queue_depth,
        };
        let beat = bounded(limit, db.heartbeat(&beat)).await;
        let leased = bounded(
            limit,
            db.try_lease(METRICS_LEASE, &me.id, None, timing.metrics_ttl, now),
        )
        .await;
        let held = matches!(leased, Ok(Leased::Acquired));
        if held != lease.held() {
            if held {
                tracing::info!("fleet: {} exports the DB-wide metrics", me.id);
            } else {
                tracing::info!("fleet: {} no longer exports the DB-wide metrics", me.id);
            }
        }
        lease.set(held);
        match beat.and(leased) {
            Ok(_) => failures.ok(),
            Err(e) => failures.failed(&e),
        }
        if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(Instant::now());
            let before = now - chrono::Duration::from_std(PRUNE_AFTER).unwrap_or_default();
            match bounded(limit, db.prune_fleet(before)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("fleet: removed {n} replicas silent for over 24 h"),
                Err(e) => tracing::debug!("fleet: prune: {e}"),
            }
        }
    }
    let was_held = lease.held();
    lease.set(false);
    if was_held {
        if let Err(e) = bounded(limit, db.release_lease(METRICS_LEASE, &me.id)).await {
            tracing::warn!("fleet: releasing the metrics lease: {e}");
        }
    }
    if let Err(e) = bounded(limit, db.fleet_stopped(&me.id, Utc::now())).await {
        tracing::warn!("fleet: marking {} stopped: {e}", me.id);
    }
}

/// A database call that gives up after `limit`.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = crate::engine::error::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("database: no answer within {limit:?}")),
    }
}

/// Heartbeat failures in a row, and when they were last logged: the first is a warning, then
/// one a minute while they go on, and one line when the database is back.
#[derive(Default)]
struct Failures {
    count: u64,
    logged_at: Option<Instant>,
}

impl Failures {
    fn failed(&mut self, e: &str) {
        self.count += 1;
        if self.logged_at.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            self.logged_at = Some(Instant::now());
            tracing::warn!(
                "fleet heartbeat failed ({} in a row; retried every tick): {e}",
                self.count
            );
        }
    }

    fn ok(&mut self) {
        if self.count > 0 {
            tracing::info!(
                "fleet heartbeat: database back after {} failed beats",
                self.count
            );
        }
        *self = Failures::default();
    }
}
