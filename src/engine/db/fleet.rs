//! The fleet: one `fleet` row per `serve` replica on this database, written by the replica's
//! heartbeat (what it is, where it listens, its load) and marked stopped when it shuts down
//! cleanly. A replica that crashed simply stops beating; readers decide from the age of its
//! heartbeat whether it is up or gone.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{on_pool, ts, Db};
use crate::engine::error::Result;

/// One heartbeat of a replica: its identity and its load now.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetBeat {
    pub instance_id: String,
    pub version: String,
    pub hostname: String,
    pub listen: String,
    pub peer_url: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub requests_per_s: f64,
    pub fills_in_flight: i64,
    pub queue_depth: i64,
}

/// A replica as the `fleet` table holds it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct FleetRow {
    pub instance_id: String,
    pub version: String,
    pub hostname: String,
    pub listen: String,
    pub peer_url: Option<String>,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub requests_per_s: f64,
    pub fills_in_flight: i64,
    pub queue_depth: i64,
    /// Set by a clean shutdown; cleared by the next heartbeat of the same instance.
    pub stopped_at: Option<DateTime<Utc>>,
}

impl Db {
    /// Records a heartbeat: inserts the replica's row or updates it (a beat after a stop
    /// clears `stopped_at`: the instance is running again).
    pub async fn heartbeat(&self, b: &FleetBeat) -> Result<()> {
        let r: Result<_, sqlx::Error> = on_pool!(self, |p| sqlx::query(
            "INSERT INTO fleet (instance_id, version, hostname, listen, peer_url, started_at, \
             heartbeat_at, requests_per_s, fills_in_flight, queue_depth, stopped_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL) \
             ON CONFLICT (instance_id) DO UPDATE SET version = excluded.version, \
             hostname = excluded.hostname, listen = excluded.listen, peer_url = excluded.peer_url, \
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
             requests_per_s = excluded.requests_per_s, fills_in_flight = excluded.fills_in_flight, \
             queue_depth = excluded.queue_depth, stopped_at = NULL"
        )
        .bind(&b.instance_id)
        .bind(&b.version)
        .bind(&b.hostname)
        .bind(&b.listen)
        .bind(&b.peer_url)
        .bind(ts(b.started_at))
        .bind(ts(b.heartbeat_at))
        .bind(b.requests_per_s)
        .bind(b.fills_in_flight)
        .bind(b.queue_depth)
        .execute(p)
        .await
        .map(|_| ()));
        r.map_err(|e| self.err(e))
    }

    /// Marks a replica cleanly stopped at `at`; its load is zero from then on.
    pub async fn fleet_stopped(&self, instance_id: &str, at: DateTime<Utc>) -> Result<()> {
        let r: Result<_, sqlx::Error> = on_pool!(self, |p| sqlx::query(
            "UPDATE fleet SET stopped_at = $2, requests_per_s = 0, fills_in_flight = 0, \
             queue_depth = 0 WHERE instance_id = $1"
        )
        .bind(instance_id)
        .bind(ts(at))
        .execute(p)
        .await
        .map(|_| ()));
        r.map_err(|e| self.err(e))
    }

    /// Every replica that has a row, oldest start first.
    pub async fn fleet_list(&self) -> Result<Vec<FleetRow>> {
        let r: Result<Vec<FleetRow>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_as(
            "SELECT instance_id, version, hostname, listen, peer_url, started_at, heartbeat_at, \
             requests_per_s, fills_in_flight, queue_depth, stopped_at \
             FROM fleet ORDER BY started_at, instance_id"
        )
        .fetch_all(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// Deletes the rows of replicas whose last heartbeat is older than `before` (stopped or
    /// crashed long ago); returns how many.
    pub async fn prune_fleet(&self, before: DateTime<Utc>) -> Result<u64> {
        let r: Result<_, sqlx::Error> = on_pool!(self, |p| sqlx::query(
            "DELETE FROM fleet WHERE heartbeat_at < $1"
        )
        .bind(ts(before))
        .execute(p)
        .await
        .map(|r| r.rows_affected()));
        r.map_err(|e| self.err(e))
    }
}
