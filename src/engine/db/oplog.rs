//! The `operations` audit log and the per-database mutation lock
//! (a PostgreSQL advisory lock held on its own connection / a lock row in SQLite).

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::types::Json;

use super::{on_pool, ts, Db, Pool};
use crate::engine::error::{Error, Result};
use crate::engine::model::OperationRecord;

/// The advisory lock key shared by every mirrorctl process on a database ("mirrorct").
const ADVISORY_KEY: i64 = 0x6d69_7272_6f72_6374;
const LOCK_NAME: &str = "mutation";

/// Holds the mutation lock until `release` (or drop, which releases in the background).
pub struct LockGuard {
    db: Db,
    pg_conn: Option<PoolConnection<sqlx::Postgres>>,
    released: bool,
}

impl LockGuard {
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        release(&self.db, self.pg_conn.take()).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let db = self.db.clone();
        let conn = self.pg_conn.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = release(&db, conn).await;
            });
        }
    }
}

async fn release(db: &Db, pg_conn: Option<PoolConnection<sqlx::Postgres>>) -> Result<()> {
    let r: Result<(), sqlx::Error> = async {
        match (&db.pool, pg_conn) {
            (Pool::Postgres(_), Some(mut conn)) => {
                sqlx::query("DELETE FROM operation_lock WHERE name = $1")
                    .bind(LOCK_NAME)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(ADVISORY_KEY)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            (Pool::Sqlite(p), _) => {
                sqlx::query("DELETE FROM operation_lock WHERE name = $1 AND holder = $2")
                    .bind(LOCK_NAME)
                    .bind(holder_id())
                    .execute(p)
                    .await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }
    .await;
    r.map_err(|e| db.err(e))
}

/// `host:pid`, so a lock row left by a crashed process on this host can be recognised.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// True when `holder` names a process on this host that no longer exists.
fn holder_is_dead(holder: &str) -> bool {
    let mine = holder_id();
    let (Some((host, pid)), Some((my_host, _))) = (holder.rsplit_once(':'), mine.rsplit_once(':'))
    else {
        return false;
    };
    host == my_host && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[derive(sqlx::FromRow)]
struct LockRow {
    kind: String,
    operator: String,
    holder: String,
    started_at: DateTime<Utc>,
}

fn busy(row: &LockRow) -> Error {
    Error::Busy(format!(
        "{} started by {} at {}",
        row.kind,
        row.operator,
        row.started_at.format("%Y-%m-%d %H:%M:%S UTC")
    ))
}

impl Db {
    /// Takes the mutation lock for `kind`, or fails with "busy: <kind> started by <who> at <when>".
    pub async fn acquire_lock(&self, kind: &str, operator: &str) -> Result<LockGuard> {
        let now = ts(Utc::now());
        match &self.pool {
            Pool::Postgres(p) => {
                let mut conn = p.acquire().await.map_err(|e| self.err(e))?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.err(e))?;
                if !got {
                    let row: Option<LockRow> = sqlx::query_as(
                        "SELECT kind, operator, holder, started_at FROM operation_lock WHERE name = $1",
                    )
                    .bind(LOCK_NAME)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| self.err(e))?;
                    return Err(match row {
                        Some(r) => busy(&r),
                        None => Error::Busy("another mutating operation is running".into()),
                    });
                }
                sqlx::query(
                    "INSERT INTO operation_lock (name, kind, operator, holder, started_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, operator = excluded.operator, \
                     holder = excluded.holder, started_at = excluded.started_at",
                )
                .bind(LOCK_NAME)
                .bind(kind)
                .bind(operator)
                .bind(holder_id())
                .bind(now)
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
                Ok(LockGuard {
                    db: self.clone(),
                    pg_conn: Some(conn),
                    released: false,
                })
            }
            Pool::Sqlite(p) => {
                for _ in 0..2 {
                    let inserted = sqlx::query(
                        "INSERT INTO operation_lock (name, kind, operator, holder, started_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(LOCK_NAME)
                    .bind(kind)
                    .bind(operator)
                    .bind(holder_id())
                    .bind(now)
                    .execute(p)
                    .await
                    .map_err(|e| self.err(e))?
                    .rows_affected();
                    if inserted == 1 {
                        return Ok(LockGuard {
                            db: self.clone(),
                            pg_conn: None,
                            released: false,
                        });
                    }
                    let row: Option<LockRow> = sqlx::query_as(
                        "SELECT kind, operator, holder, started_at FROM operation_lock WHERE name = $1",
                    )
                    .bind(LOCK_NAME)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| self.err(e))?;
                    match row {
                        Some(r) if holder_is_dead(&r.holder) => {
                            // Left by a process that crashed: take it over.
                            sqlx::query(
                                "DELETE FROM operation_lock WHERE name = $1 AND holder = $2",
                            )
                            .bind(LOCK_NAME)
                            .bind(&r.holder)
                            .execute(p)
                            .await
                            .map_err(|e| self.err(e))?;
                        }
                        Some(r) => return Err(busy(&r)),
                        None => {}
                    }
                }
                Err(Error::Busy("another mutating operation is running".into()))
            }
        }
    }

    /// Writes the `operations` row for an action that starts now; returns its id.
    pub async fn start_operation(
        &self,
        kind: &str,
        params: &serde_json::Value,
        operator: &str,
    ) -> Result<i64> {
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            sqlx::query_scalar(
            "INSERT INTO operations (kind, params, operator, started_at, status) VALUES ($1, $2, $3, $4, 'running') \
             RETURNING id"
        )
        .bind(kind)
        .bind(Json(params))
        .bind(operator)
        .bind(ts(Utc::now()))
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
