//! The `operations` audit log. A running operation's row names its process (`host:pid`) and
//! carries a lease its job renews (`OperationHeartbeat`), so rows left `running` by a process
//! that crashed or was killed can be told from live ones and closed as `interrupted`.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::lock::{heartbeat_every, holder_id, lease_end};
use super::{on_pool, ts, Db};
use crate::engine::error::Result;
use crate::engine::model::OperationRecord;

/// Renews a running operation's lease until `stop` (or drop).
pub struct OperationHeartbeat {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl OperationHeartbeat {
    /// Stops renewing (before the row is closed, so no renewal races the close).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for OperationHeartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Db {
    /// Writes the `operations` row for an action that starts now; returns its id.
    pub async fn start_operation(
        &self,
        kind: &str,
        params: &serde_json::Value,
        operator: &str,
    ) -> Result<i64> {
        let now = Utc::now();
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_scalar(
            "INSERT INTO operations (kind, params, operator, started_at, status, holder, heartbeat_at, expires_at) \
             VALUES ($1, $2, $3, $4, 'running', $5, $4, $6) RETURNING id"
        )
        .bind(kind)
        .bind(Json(params))
        .bind(operator)
        .bind(ts(now))
        .bind(holder_id())
        .bind(lease_end(now, self.lock_lease()))
        .fetch_one(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// Closes an `operations` row with its outcome and summary.
    pub async fn finish_operation(
        &self,
        id: i64,
        status: &str,
        summary: &serde_json::Value,
    ) -> Result<()> {
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| sqlx::query(
            "UPDATE operations SET finished_at = $1, status = $2, summary = $3 WHERE id = $4"
        )
        .bind(ts(Utc::now()))
        .bind(status)
        .bind(Json(summary))
        .bind(id)
        .execute(p)
        .await
        .map(|_| ()));
        r.map_err(|e| self.err(e))
    }

    /// Renews the lease of operation `id` every `heartbeat_every(lock_lease)` until stopped.
    /// A failed renewal is retried at the next beat: only a lease that ends in between lets
    /// the row be taken for abandoned.
    pub fn keep_operation_alive(&self, id: i64) -> OperationHeartbeat {
        let stop = CancellationToken::new();
        let db = self.clone();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            let lease = db.lock_lease();
            loop {
                tokio::select! {
                    _ = until.cancelled() => return,
                    _ = tokio::time::sleep(heartbeat_every(lease)) => {}
                }
                let now = Utc::now();
                let r: Result<_, sqlx::Error> = on_pool!(db, |p| sqlx::query(
                    "UPDATE operations SET heartbeat_at = $1, expires_at = $2 \
                     WHERE id = $3 AND status = 'running'"
                )
                .bind(ts(now))
                .bind(lease_end(now, lease))
                .bind(id)
                .execute(p)
                .await
                .map(|_| ()));
                if let Err(e) = r {
                    tracing::warn!("renewing operation {id}: {}", db.err(e));
                }
            }
        });
        OperationHeartbeat {
            stop,
            task: Some(task),
        }
    }

    /// Closes as `interrupted` the rows still `running` whose lease ended before `now`: their
    /// process stopped renewing them (it crashed, was killed or lost the database) and is
    /// gone. `finished_at` becomes the last heartbeat: the process was last seen then. Rows of live operations are renewed and never match. Rows written before leases
    /// existed have none and are left alone. Returns the ids closed.
    pub async fn interrupt_abandoned_operations(&self, now: DateTime<Utc>) -> Result<Vec<i64>> {
        let summary = serde_json::json!({
            "error": "interrupted: its process stopped renewing the operation (crashed, killed \
                      or cut off from the database) and is gone",
        });
        let r: Result<Vec<i64>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_scalar(
            "UPDATE operations SET status = 'interrupted', finished_at = coalesce(heartbeat_at, $1), \
             summary = $2 \
             WHERE status = 'running' AND expires_at <= $1 RETURNING id"
        )
        .bind(ts(now))
        .bind(Json(&summary))
        .fetch_all(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// The newest `limit` operations, newest first.
    pub async fn list_operations(&self, limit: i64) -> Result<Vec<OperationRecord>> {
        let r = on_pool!(self, |p| sqlx::query_as::<_, OperationRecord>(
            "SELECT id, kind, params, operator, started_at, finished_at, status, summary \
             FROM operations ORDER BY started_at DESC, id DESC LIMIT $1"
        )
        .bind(limit.max(0))
        .fetch_all(p)
        .await);
        r.map_err(|e| self.err(e))
    }

    /// When an operation of `kind` last finished successfully.
    pub async fn last_finished(&self, kind: &str) -> Result<Option<DateTime<Utc>>> {
        let r: Result<Option<DateTime<Utc>>, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_scalar(
            "SELECT max(finished_at) FROM operations WHERE kind = $1 AND status IN ('ok', 'found_problems')"
        )
        .bind(kind)
        .fetch_one(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// The newest finished operation of `kind` (any outcome), for views that show the latest
    /// result after a restart.
    pub async fn latest_finished_operation(&self, kind: &str) -> Result<Option<OperationRecord>> {
        let r = on_pool!(self, |p| sqlx::query_as::<_, OperationRecord>(
            "SELECT id, kind, params, operator, started_at, finished_at, status, summary \
             FROM operations WHERE kind = $1 AND finished_at IS NOT NULL \
             ORDER BY finished_at DESC, id DESC LIMIT 1"
        )
        .bind(kind)
        .fetch_optional(p)
        .await);
        r.map_err(|e| self.err(e))
    }
}
