//! `fleet`: the `serve` replicas sharing this database, each up (beating), gone (stopped
//! beating without a clean shutdown: crashed, killed, cut off from the database) or stopped
//! (shut down cleanly), with the fleet's totals and which replica exports the DB-wide metrics.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::db::FleetRow;
use crate::engine::error::Result;
use crate::engine::jobs::Report;
use crate::engine::Ctx;

/// How often a replica writes its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A replica whose last heartbeat is older than this (three missed beats) is gone.
pub const GONE_AFTER: Duration = Duration::from_secs(3 * HEARTBEAT_INTERVAL.as_secs());
/// The lease whose holder exports the DB-wide gauges (storage, stale files).
pub const METRICS_LEASE: &str = "metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaStatus {
    /// Its heartbeat is recent.
    Up,
    /// It stopped beating without marking itself stopped.
    Gone,
    /// It shut down cleanly.
    Stopped,
}

impl ReplicaStatus {
    pub fn label(self) -> &'static str {
        match self {
            ReplicaStatus::Up => "up",
            ReplicaStatus::Gone => "gone",
            ReplicaStatus::Stopped => "stopped",
        }
    }

    /// The status of a replica whose row is `row`, seen at `now`.
    pub fn of(row: &FleetRow, now: DateTime<Utc>) -> ReplicaStatus {
        if row.stopped_at.is_some() {
            return ReplicaStatus::Stopped;
        }
        let gone_after = chrono::Duration::from_std(GONE_AFTER).unwrap_or(chrono::Duration::MAX);
        if now - row.heartbeat_at > gone_after {
            ReplicaStatus::Gone
        } else {
            ReplicaStatus::Up
        }
    }
}

/// One replica.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replica {
    pub instance_id: String,
    pub status: ReplicaStatus,
    pub version: String,
    pub hostname: String,
    pub listen: String,
    pub peer_url: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Whole seconds since the last heartbeat, as of the report.
    pub heartbeat_age_s: i64,
    pub stopped_at: Option<DateTime<Utc>>,
    /// As of its last heartbeat (0 once stopped).
    pub requests_per_s: f64,
    pub fills_in_flight: i64,
    pub queue_depth: i64,
    /// It holds the metrics lease: its `/metrics` has the DB-wide gauges.
    pub exports_db_metrics: bool,
}

/// The fleet's sums over the replicas that are up.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FleetTotals {
    pub replicas: usize,
    pub up: usize,
    pub gone: usize,
    pub stopped: usize,
    pub requests_per_s: f64,
    pub fills_in_flight: i64,
    pub queue_depth: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub generated_at: DateTime<Utc>,
    /// Seconds without a heartbeat after which a replica counts as gone.
    pub gone_after_s: u64,
    pub totals: FleetTotals,
    /// The replica holding the metrics lease now, if any.
    pub metrics_holder: Option<String>,
    pub replicas: Vec<Replica>,
}

/// A gone replica is something to look at (exit 3); a stopped one is not.
impl Report for FleetReport {
    fn found_problems(&self) -> bool {
        self.totals.gone > 0
    }
}

/// The fleet as of `now`.
pub async fn list(ctx: &Ctx, now: DateTime<Utc>) -> Result<FleetReport> {
    let rows = ctx.db.fleet_list().await?;
    let holder = ctx.db.lease_holder(METRICS_LEASE, now).await?;
    Ok(report(rows, holder.map(|h| h.holder), now))
}

/// The report over these rows (what `list` read), for callers that hold rows already.
pub fn report(
    rows: Vec<FleetRow>,
    metrics_holder: Option<String>,
    now: DateTime<Utc>,
) -> FleetReport {
    let mut totals = FleetTotals::default();
    let replicas: Vec<Replica> = rows
        .into_iter()
        .map(|r| {
            let status = ReplicaStatus::of(&r, now);
            totals.replicas += 1;
            match status {
                ReplicaStatus::Up => {
                    totals.up += 1;
                    totals.requests_per_s += r.requests_per_s;
                    totals.fills_in_flight += r.fills_in_flight;
                    totals.queue_depth += r.queue_depth;
                }
                ReplicaStatus::Gone => totals.gone += 1,
                ReplicaStatus::Stopped => totals.stopped += 1,
            }
            Replica {
                exports_db_metrics: metrics_holder.as_deref() == Some(r.instance_id.as_str()),
                status,
                heartbeat_age_s: (now - r.heartbeat_at).num_seconds().max(0),
                instance_id: r.instance_id,
                version: r.version,
                hostname: r.hostname,
                listen: r.listen,
                peer_url: r.peer_url,
                started_at: r.started_at,
                heartbeat_at: r.heartbeat_at,
                stopped_at: r.stopped_at,
                requests_per_s: r.requests_per_s,
                fills_in_flight: r.fills_in_flight,
                queue_depth: r.queue_depth,
            }
        })
        .collect();
    FleetReport {
        generated_at: now,
        gone_after_s: GONE_AFTER.as_secs(),
        totals,
        metrics_holder,
        replicas,
    }
}

impl std::fmt::Display for FleetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.totals;
        write!(
            f,
            "{} replicas: {} up, {} gone, {} stopped; {:.1} req/s, {} fills in flight, {} queued",
            t.replicas, t.up, t.gone, t.stopped, t.requests_per_s, t.fills_in_flight, t.queue_depth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn row(id: &str, age_s: i64, stopped: bool, now: DateTime<Utc>) -> FleetRow {
        FleetRow {
            instance_id: id.into(),
            version: "0.1.0".into(),
            hostname: "h".into(),
            listen: "127.0.0.1:8080".into(),
            peer_url: None,
            started_at: now - TimeDelta::hours(1),
            heartbeat_at: now - TimeDelta::seconds(age_s),
            requests_per_s: 10.0,
            fills_in_flight: 2,
            queue_depth: 1,
            stopped_at: stopped.then_some(now - TimeDelta::seconds(age_s)),
        }
    }

    #[test]
    fn status_by_heartbeat_age_and_stop() {
        let now = Utc::now();
        assert_eq!(
            ReplicaStatus::of(&row("a", 0, false, now), now),
            ReplicaStatus::Up
        );
        assert_eq!(
            ReplicaStatus::of(&row("a", 6, false, now), now),
            ReplicaStatus::Up
        );
        assert_eq!(
            ReplicaStatus::of(&row("a", 7, false, now), now),
            ReplicaStatus::Gone
        );
        assert_eq!(
            ReplicaStatus::of(&row("a", 0, true, now), now),
            ReplicaStatus::Stopped
        );
        assert_eq!(
            ReplicaStatus::of(&row("a", 600, true, now), now),
            ReplicaStatus::Stopped
        );
    }

    #[test]
    fn totals_sum_the_replicas_that_are_up() {
        let now = Utc::now();
        let r = report(
            vec![
                row("a", 1, false, now),
                row("b", 2, false, now),
                row("c", 60, false, now),
                row("d", 1, true, now),
            ],
            Some("b".into()),
            now,
        );
        assert_eq!(
            r.totals,
            FleetTotals {
                replicas: 4,
                up: 2,
                gone: 1,
                stopped: 1,
                requests_per_s: 20.0,
                fills_in_flight: 4,
                queue_depth: 2,
            }
        );
        assert!(r.found_problems());
        let holders: Vec<&str> = r
            .replicas
            .iter()
            .filter(|x| x.exports_db_metrics)
            .map(|x| x.instance_id.as_str())
            .collect();
        assert_eq!(holders, ["b"]);
        assert_eq!(r.replicas[2].heartbeat_age_s, 60);
    }
}
