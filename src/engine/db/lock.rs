//! The per-database mutation lock and its lease. PostgreSQL locks with an advisory lock held
//! on its own connection (it dies with the session); SQLite with the `operation_lock` row
//! itself. On both the row names the holder and carries a lease (`heartbeat_at`,
//! `expires_at`) that a heartbeat renews while the lock is held: on SQLite a holder that
//! crashed blocks nobody past its lease (the next acquirer takes the row over in one
//! statement), and on both `lock status` can tell a live holder from a dead one.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::pool::PoolConnection;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ts, Db, Pool};
use crate::engine::error::{Error, Result};

/// The advisory lock key shared by every mirrorctl process on a database ("mirrorct").
const ADVISORY_KEY: i64 = 0x6d69_7272_6f72_6374;
const LOCK_NAME: &str = "mutation";

/// How long a lease lasts without renewal (`database.lock_lease`).
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);

/// How often a lease of `lease` is renewed: six times per lease, so that a slow database
/// costing a renewal or two does not lose it (60 s lease: every 10 s).
pub fn heartbeat_every(lease: Duration) -> Duration {
    (lease / 6).max(Duration::from_millis(200))
}

/// The end of a lease of `lease` that starts at `now`.
pub(crate) fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    ts(now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::days(1)))
}

/// `host:pid` of this process: who holds a lock or runs an operation.
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// This process as a lock token knows it: `host:pid:pid-namespace:start-time`, so that a
/// process on the same host and in the same PID namespace can prove the holder gone at once
/// (no such PID, or a PID reused by a later process). A holder elsewhere (another host, another
/// container: a restarted container's PID 1 is a new process in a new namespace) is judged by
/// its lease alone.
fn process_identity() -> String {
    let pid = std::process::id();
    format!(
        "{}:{}:{}",
        holder_id(),
        pid_namespace().unwrap_or_default(),
        start_time(pid).unwrap_or_default()
    )
}

fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let digits: String = link
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// The start time of process `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// True when the acquisition `token` was made by a process on this host, in this PID
/// namespace, that no longer runs. Anything this cannot prove is left to the lease.
fn holder_process_gone(token: &str) -> bool {
    let mine = process_identity();
    let mut me = mine.split(':');
    let mut it = token.split(':');
    let (Some(host), Some(pid), Some(ns), Some(start)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return false;
    };
    let (Some(my_host), _, Some(my_ns)) = (me.next(), me.next(), me.next()) else {
        return false;
    };
    if host != my_host || ns.is_empty() || ns != my_ns || start.is_empty() {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_time(pid).is_none_or(|now_start| now_start != start)
}

/// The `operation_lock` row: who took the lock, for what, and their lease.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LockRow {
    /// The operation holding it (`purge`, `archive`, …).
    pub kind: String,
    pub operator: String,
    /// `host:pid` of the holding process.
    pub holder: String,
    pub started_at: DateTime<Utc>,
    /// The holder's last renewal; `None` for a row written before leases existed.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// When the lease ends unless renewed.
    pub expires_at: Option<DateTime<Utc>>,
    /// The holder's `operations` row, once written.
    pub operation_id: Option<i64>,
    /// Tells one acquisition from the next; never shown.
    #[serde(skip)]
    pub token: Option<String>,
}

impl LockRow {
    /// True while the lease has not ended at `now`.
    pub fn lease_fresh(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|e| e > ts(now))
    }

    /// True when the holder ran on this host, in this PID namespace, and is gone.
    pub fn holder_process_gone(&self) -> bool {
        self.token.as_deref().is_some_and(holder_process_gone)
    }
}

/// The PostgreSQL session holding the advisory lock (from `pg_locks` and `pg_stat_activity`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LockSession {
    /// The backend's process id on the database server.
    pub pid: i32,
    /// The client's address; `None` over a Unix socket or without the privilege to see it.
    pub client_addr: Option<String>,
    pub backend_start: Option<DateTime<Utc>>,
    pub application_name: Option<String>,
}

/// Who holds the mutation lock, or held it last and left its row behind.
#[derive(Debug, Clone, Serialize)]
pub struct LockStatus {
    /// The lock blocks another acquirer now: on PostgreSQL a session holds the advisory lock,
    /// on SQLite the row's lease has not ended.
    pub held: bool,
    /// The row's lease has not ended (its holder renewed it recently).
    pub lease_fresh: bool,
    /// The holder ran on this host, in this PID namespace, and its process is gone: no need
    /// to wait for its lease.
    pub holder_process_gone: bool,
    /// The row naming the holder (PostgreSQL: absent when the advisory lock is held by a
    /// version that wrote no row, or by something else).
    pub row: Option<LockRow>,
    /// PostgreSQL only: the session holding the advisory lock.
    pub session: Option<LockSession>,
}

/// Holds the mutation lock until `release` (or drop, which releases in the background) and
/// renews its lease meanwhile. When a renewal finds the lock taken away (`lock release
/// --force`, a PostgreSQL session that was terminated, a lease that ended while the process
/// was stopped and another took it over), the guard counts as lost.
pub struct LockGuard {
    db: Db,
    token: String,
    pg_conn: Arc<Mutex<Option<PoolConnection<sqlx::Postgres>>>>,
    stop: CancellationToken,
    lost: CancellationToken,
    heartbeat: Option<JoinHandle<()>>,
    released: bool,
}

impl LockGuard {
    /// Gives the lock up.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.stop.cancel();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.await;
        }
        release(&self.db, &self.token, &self.pg_conn).await
    }

    /// True once a renewal found the lock taken away.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Cancels `cancel` if the lock is lost while held, so the operation stops after the work
    /// under way instead of going on unprotected.
    pub fn cancel_on_loss(&self, cancel: CancellationToken) {
        let (lost, stop) = (self.lost.clone(), self.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = lost.cancelled() => cancel.cancel(),
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Names the holder's `operations` row in the lock row, for `lock status`.
    pub async fn set_operation(&self, operation_id: i64) -> Result<()> {
        let r: Result<_, sqlx::Error> = super::on_pool!(self.db, |p| sqlx::query(
            "UPDATE operation_lock SET operation_id = $1 WHERE name = $2 AND token = $3"
        )
        .bind(operation_id)
        .bind(LOCK_NAME)
        .bind(&self.token)
        .execute(p)
        .await
        .map(|_| ()));
        r.map_err(|e| self.db.err(e))
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.stop.cancel();
        let db = self.db.clone();
        let token = self.token.clone();
        let conn = self.pg_conn.clone();
        let heartbeat = self.heartbeat.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(h) = heartbeat {
                    let _ = h.await;
                }
                let _ = release(&db, &token, &conn).await;
            });
        }
    }
}

async fn release(
    db: &Db,
    token: &str,
    pg_conn: &Mutex<Option<PoolConnection<sqlx::Postgres>>>,
) -> Result<()> {
    let conn = pg_conn.lock().await.take();
    let r: Result<(), sqlx::Error> = async {
        match (&db.pool, conn) {
            (Pool::Postgres(_), Some(mut conn)) => {
                sqlx::query("DELETE FROM operation_lock WHERE name = $1 AND token = $2")
                    .bind(LOCK_NAME)
                    .bind(token)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(ADVISORY_KEY)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            (Pool::Sqlite(p), _) => {
                sqlx::query("DELETE FROM operation_lock WHERE name = $1 AND token = $2")
                    .bind(LOCK_NAME)
                    .bind(token)
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

/// Renews the lease every `heartbeat_every(lease)` until `stop`; cancels `lost` and ends when
/// the row is no longer this acquisition's (or, on PostgreSQL, the locking session broke: the
/// advisory lock went with it).
async fn heartbeat(
    db: Db,
    token: String,
    pg_conn: Arc<Mutex<Option<PoolConnection<sqlx::Postgres>>>>,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let lease = db.lock_lease();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(heartbeat_every(lease)) => {}
        }
        let now = Utc::now();
        let renew = "UPDATE operation_lock SET heartbeat_at = $1, expires_at = $2 \
                     WHERE name = $3 AND token = $4";
        let renewed: Result<u64, sqlx::Error> = match &db.pool {
            Pool::Postgres(_) => {
                let mut guard = pg_conn.lock().await;
                let Some(conn) = guard.as_mut() else { return };
                sqlx::query(renew)
                    .bind(ts(now))
                    .bind(lease_end(now, lease))
                    .bind(LOCK_NAME)
                    .bind(&token)
                    .execute(&mut **conn)
                    .await
                    .map(|r| r.rows_affected())
                    // The session that holds the advisory lock is gone: so is the lock.
                    .or(Ok(0))
            }
            Pool::Sqlite(p) => sqlx::query(renew)
                .bind(ts(now))
                .bind(lease_end(now, lease))
                .bind(LOCK_NAME)
                .bind(&token)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        };
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(
                    "the mutation lock was taken away (released by force, or its lease ended); \
                     stopping the operation after the work under way"
                );
                lost.cancel();
                return;
            }
            // A database that is slow or briefly unreachable: the next beat tries again, and
            // only a lease that ends in between lets another process in.
            Err(e) => tracing::warn!("renewing the mutation lock: {}", db.err(e)),
        }
    }
}

fn busy(row: &LockRow) -> Error {
    Error::Busy(format!(
        "{} started by {} at {} (process {}; `mirrorctl --headless lock status` shows more)",
        row.kind,
        row.operator,
        row.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        row.holder
    ))
}

const ROW_COLUMNS: &str =
    "kind, operator, holder, started_at, heartbeat_at, expires_at, operation_id, token";

impl Db {
    /// Takes the mutation lock for `kind`, or fails with "busy: <kind> started by <who> at
    /// <when>". On SQLite a lock whose lease ended (its holder crashed) is taken over.
    pub async fn acquire_lock(&self, kind: &str, operator: &str) -> Result<LockGuard> {
        let now = Utc::now();
        let lease = self.lock_lease();
        let token = format!("{}:{:016x}", process_identity(), rand::random::<u64>());
        let mut pg_conn = None;
        match &self.pool {
            Pool::Postgres(p) => {
                let mut conn = p.acquire().await.map_err(|e| self.err(e))?;
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(ADVISORY_KEY)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(|e| self.err(e))?;
                if !got {
                    let row: Option<LockRow> = sqlx::query_as(&format!(
                        "SELECT {ROW_COLUMNS} FROM operation_lock WHERE name = $1"
                    ))
                    .bind(LOCK_NAME)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| self.err(e))?;
                    return Err(match row {
                        Some(r) => busy(&r),
                        None => Error::Busy("another mutating operation is running".into()),
                    });
                }
                // The advisory lock is ours: whatever row is there was left by a holder
                // whose session ended.
                sqlx::query(
                    "INSERT INTO operation_lock \
                     (name, kind, operator, holder, started_at, token, heartbeat_at, expires_at, operation_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $5, $7, NULL) \
                     ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, operator = excluded.operator, \
                     holder = excluded.holder, started_at = excluded.started_at, token = excluded.token, \
                     heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, \
                     operation_id = NULL",
                )
                .bind(LOCK_NAME)
                .bind(kind)
                .bind(operator)
                .bind(holder_id())
                .bind(ts(now))
                .bind(&token)
                .bind(lease_end(now, lease))
                .execute(&mut *conn)
                .await
                .map_err(|e| self.err(e))?;
                pg_conn = Some(conn);
            }
            Pool::Sqlite(p) => {
                let mut won = false;
                for _ in 0..3 {
                    // One statement: inserts, or takes over a row whose lease ended; two
                    // processes racing for an expired lease cannot both see their token back.
                    let got: Option<String> = sqlx::query_scalar(
                        "INSERT INTO operation_lock \
                         (name, kind, operator, holder, started_at, token, heartbeat_at, expires_at, operation_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $5, $7, NULL) \
                         ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, operator = excluded.operator, \
                         holder = excluded.holder, started_at = excluded.started_at, token = excluded.token, \
                         heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, \
                         operation_id = NULL \
                         WHERE operation_lock.expires_at IS NULL OR operation_lock.expires_at <= excluded.started_at \
                         RETURNING token",
                    )
                    .bind(LOCK_NAME)
                    .bind(kind)
                    .bind(operator)
                    .bind(holder_id())
                    .bind(ts(now))
                    .bind(&token)
                    .bind(lease_end(now, lease))
                    .fetch_optional(p)
                    .await
                    .map_err(|e| self.err(e))?;
                    if got.as_deref() == Some(token.as_str()) {
                        won = true;
                        break;
                    }
                    let row: Option<LockRow> = sqlx::query_as(&format!(
                        "SELECT {ROW_COLUMNS} FROM operation_lock WHERE name = $1"
                    ))
                    .bind(LOCK_NAME)
                    .fetch_optional(p)
                    .await
                    .map_err(|e| self.err(e))?;
                    match row {
                        // Its process is provably gone: remove its row (only that acquisition's)
                        // and try again; of two processes doing so at once, one wins the insert.
                        Some(r) if r.holder_process_gone() => {
                            tracing::info!(
                                "taking over the mutation lock of {} (process gone)",
                                r.holder
                            );
                            sqlx::query(
                                "DELETE FROM operation_lock WHERE name = $1 AND token = $2",
                            )
                            .bind(LOCK_NAME)
                            .bind(r.token.as_deref().unwrap_or_default())
                            .execute(p)
                            .await
                            .map_err(|e| self.err(e))?;
                        }
                        Some(r) => return Err(busy(&r)),
                        // Released in between: try again.
                        None => {}
                    }
                }
                if !won {
                    return Err(Error::Busy("another mutating operation is running".into()));
                }
            }
        }
        let pg_conn = Arc::new(Mutex::new(pg_conn));
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let beat = tokio::spawn(heartbeat(
            self.clone(),
            token.clone(),
            pg_conn.clone(),
            stop.clone(),
            lost.clone(),
        ));
        Ok(LockGuard {
            db: self.clone(),
            token,
            pg_conn,
            stop,
            lost,
            heartbeat: Some(beat),
            released: false,
        })
    }

    /// Who holds the mutation lock, or `None` when nobody does and no row is left behind.
    /// Read-only.
    pub async fn lock_status(&self) -> Result<Option<LockStatus>> {
        let now = Utc::now();
        let select = format!("SELECT {ROW_COLUMNS} FROM operation_lock WHERE name = $1");
        let r: Result<Option<LockStatus>, sqlx::Error> = async {
            match &self.pool {
                Pool::Postgres(p) => {
                    let row: Option<LockRow> = sqlx::query_as(&select)
                        .bind(LOCK_NAME)
                        .fetch_optional(p)
                        .await?;
                    let session: Option<LockSession> = sqlx::query_as(
                        "SELECT a.pid, host(a.client_addr) AS client_addr, a.backend_start, \
                         a.application_name \
                         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                         AND l.classid::bigint = $1 AND l.objid::bigint = $2 \
                         LIMIT 1",
                    )
                    .bind(ADVISORY_KEY >> 32)
                    .bind(ADVISORY_KEY & 0xffff_ffff)
                    .fetch_optional(p)
                    .await?;
                    if row.is_none() && session.is_none() {
                        return Ok(None);
                    }
                    Ok(Some(LockStatus {
                        held: session.is_some(),
                        lease_fresh: row.as_ref().is_some_and(|r| r.lease_fresh(now)),
                        holder_process_gone: row.as_ref().is_some_and(LockRow::holder_process_gone),
                        row,
                        session,
                    }))
                }
                Pool::Sqlite(p) => {
                    let row: Option<LockRow> = sqlx::query_as(&select)
                        .bind(LOCK_NAME)
                        .fetch_optional(p)
                        .await?;
                    Ok(row.map(|row| {
                        let fresh = row.lease_fresh(now);
                        let gone = row.holder_process_gone();
                        LockStatus {
                            held: fresh && !gone,
                            lease_fresh: fresh,
                            holder_process_gone: gone,
                            row: Some(row),
                            session: None,
                        }
                    }))
                }
            }
        }
        .await;
        r.map_err(|e| self.err(e))
    }

    /// Deletes the lock row of the acquisition `row` (matched by its token, so a newer holder's
    /// row is never touched); unless `even_if_fresh`, only while its lease has ended. Returns
    /// whether a row was deleted.
    pub async fn delete_lock_row(&self, row: &LockRow, even_if_fresh: bool) -> Result<bool> {
        let now = ts(Utc::now());
        let token = row.token.clone().unwrap_or_default();
        let r: Result<u64, sqlx::Error> = super::on_pool!(self, |p| sqlx::query(
            "DELETE FROM operation_lock WHERE name = $1 AND coalesce(token, '') = $2 \
             AND ($3 OR expires_at IS NULL OR expires_at <= $4)"
        )
        .bind(LOCK_NAME)
        .bind(&token)
        .bind(even_if_fresh)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()));
        r.map(|n| n > 0).map_err(|e| self.err(e))
    }

    /// PostgreSQL: terminates the backend `pid` (the session holding the advisory lock) and
    /// waits up to 5 s for it to end. Returns whether it ended.
    pub async fn terminate_lock_session(&self, pid: i32) -> Result<bool> {
        match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000::bigint)")
                    .bind(pid)
                    .fetch_one(p)
                    .await
                    .map_err(|e| self.err(e))
            }
            Pool::Sqlite(_) => Ok(false),
        }
    }
}
