//! `lock status` and `lock release`: who holds the mutation lock, whether the holder looks
//! alive, and freeing a lock whose holder is gone (or, forced, one whose holder is not), so
//! that a stuck lock never needs SQL.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::db::{heartbeat_every, Backend, LockSession, LockStatus};
use crate::engine::error::{Error, Result};
use crate::engine::jobs::{audited, Progress, Report};
use crate::engine::Ctx;

/// Where the lock stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    /// Nobody holds it and no row is left.
    Free,
    /// A live holder has it: another mutating operation is refused as busy.
    Held,
    /// A row is left by a holder that is gone (its lease ended, or on PostgreSQL its session
    /// ended): it blocks nobody, and the next mutating operation replaces it.
    Expired,
}

impl LockState {
    pub fn label(self) -> &'static str {
        match self {
            LockState::Free => "free",
            LockState::Held => "held",
            LockState::Expired => "expired",
        }
    }
}

/// `lock status`.
#[derive(Debug, Clone, Serialize)]
pub struct LockReport {
    pub generated_at: DateTime<Utc>,
    /// `postgres` (an advisory lock) or `sqlite` (a lease row).
    pub backend: &'static str,
    pub state: LockState,
    /// Another mutating operation would be refused as busy now.
    pub held: bool,
    /// The holder looks alive: on PostgreSQL a session holds the advisory lock, on SQLite
    /// the lease was renewed in time.
    pub holder_alive: bool,
    /// The row's lease has not ended.
    pub lease_fresh: bool,
    /// The holder ran on this host (same PID namespace) and its process is gone.
    pub holder_process_gone: bool,
    /// `host:pid` of the process that took the lock.
    pub holder: Option<String>,
    /// The operation that took it (`purge`, `archive`, …) and who ran it.
    pub kind: Option<String>,
    pub operator: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    pub heartbeat_age_s: Option<i64>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The holder's row in `history`.
    pub operation_id: Option<i64>,
    /// PostgreSQL: the session holding the advisory lock (backend pid, client, start).
    pub session: Option<LockSession>,
    /// How often the holder renews its lease (a sixth of the lease it wrote; without a
    /// holder, this process's `database.lock_lease` / 6).
    pub heartbeat_every_s: f64,
}

impl Report for LockReport {}

impl LockReport {
    fn new(ctx: &Ctx, status: Option<LockStatus>, now: DateTime<Utc>) -> LockReport {
        let backend = match ctx.db.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        let heartbeat_every_s = heartbeat_every(ctx.db.lock_lease()).as_secs_f64();
        let Some(s) = status else {
            return LockReport {
                generated_at: now,
                backend,
                state: LockState::Free,
                held: false,
                holder_alive: false,
                lease_fresh: false,
                holder_process_gone: false,
                holder: None,
                kind: None,
                operator: None,
                started_at: None,
                heartbeat_at: None,
                heartbeat_age_s: None,
                expires_at: None,
                operation_id: None,
                session: None,
                heartbeat_every_s,
            };
        };
        let row = s.row.as_ref();
        // The holder renews at its own pace: a sixth of the lease it wrote.
        let heartbeat_every_s = row
            .and_then(|r| Some((r.expires_at? - r.heartbeat_at?).num_seconds() as f64 / 6.0))
            .filter(|s| *s > 0.0)
            .unwrap_or(heartbeat_every_s);
        LockReport {
            generated_at: now,
            backend,
            state: if s.held {
                LockState::Held
            } else {
                LockState::Expired
            },
            held: s.held,
            holder_alive: s.held,
            lease_fresh: s.lease_fresh,
            holder_process_gone: s.holder_process_gone,
            holder: row.map(|r| r.holder.clone()),
            kind: row.map(|r| r.kind.clone()),
            operator: row.map(|r| r.operator.clone()),
            started_at: row.map(|r| r.started_at),
            heartbeat_at: row.and_then(|r| r.heartbeat_at),
            heartbeat_age_s: row
                .and_then(|r| r.heartbeat_at)
                .map(|h| (now - h).num_seconds().max(0)),
            expires_at: row.and_then(|r| r.expires_at),
            operation_id: row.and_then(|r| r.operation_id),
            session: s.session,
            heartbeat_every_s,
        }
    }

    /// "purge started by alice at 2026-01-02 03:04:05 UTC (process host:1234)", or what is
    /// known without a row.
    pub fn describe(&self) -> String {
        match (&self.kind, &self.operator, self.started_at, &self.holder) {
            (Some(kind), Some(op), Some(at), Some(holder)) => format!(
                "{kind} started by {op} at {} (process {holder})",
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            _ => match &self.session {
                Some(s) => format!(
                    "PostgreSQL backend {} (no lock row: an older mirrorctl or another client)",
                    s.pid
                ),
                None => "nobody".into(),
            },
        }
    }
}

/// Who holds the mutation lock now. Read-only.
pub async fn status(ctx: &Ctx) -> Result<LockReport> {
    let s = ctx.db.lock_status().await?;
    Ok(LockReport::new(ctx, s, Utc::now()))
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LockReleaseParams {
    /// Release a lock whose holder looks alive (on PostgreSQL: terminate its session).
    pub force: bool,
}

/// `lock release`.
#[derive(Debug, Clone, Serialize)]
pub struct LockReleaseReport {
    /// A lock or a row left behind was removed.
    pub released: bool,
    /// The holder looked alive and `--force` released it anyway.
    pub forced: bool,
    /// PostgreSQL: the backend terminated to end the holder's session.
    pub terminated_backend: Option<i32>,
    /// What it did, in one sentence.
    pub message: String,
    /// The lock as it was found.
    pub before: LockReport,
}

impl Report for LockReleaseReport {}

/// Releases the mutation lock: one left by a holder that is gone at once; one whose holder
/// looks alive only with `force` (refused otherwise, exit 2). Refused in read-only mode.
/// Writes an `operations` row (`lock_release`).
pub async fn release(
    ctx: &Ctx,
    params: LockReleaseParams,
    progress: &Progress,
) -> Result<LockReleaseReport> {
    if ctx.read_only {
        return Err(Error::Refused(
            "read-only mode: `lock release` changes the database".into(),
        ));
    }
    // Not `mutating`: it must not wait for the lock it is about to release.
    audited(ctx, "lock_release", &params, false, progress, || async {
        let raw = ctx.db.lock_status().await?;
        let before = LockReport::new(ctx, raw.clone(), Utc::now());
        let who = before.describe();
        let report = |released, forced, terminated_backend, message: String| LockReleaseReport {
            released,
            forced,
            terminated_backend,
            message,
            before: before.clone(),
        };
        let Some(s) = raw else {
            return Ok(report(false, false, None, "no lock is held".into()));
        };
        if !s.held {
            let Some(row) = &s.row else {
                return Ok(report(false, false, None, "no lock is held".into()));
            };
            // On PostgreSQL the lock ended with its session, and a holder whose process is
            // gone renews nothing, whatever the lease says.
            let postgres = ctx.db.backend() == Backend::Postgres;
            if !ctx
                .db
                .delete_lock_row(row, postgres || s.holder_process_gone)
                .await?
            {
                return Err(Error::Runtime(
                    "the lock changed while releasing it (a new holder took it, or the old one \
                     renewed it): run `mirrorctl --headless lock status` again"
                        .into(),
                ));
            }
            return Ok(report(
                true,
                false,
                None,
                format!("released the lock left by {who}: its holder is gone"),
            ));
        }
        if !params.force {
            let beat = before
                .heartbeat_age_s
                .map(|a| format!(", last heartbeat {a}s ago"))
                .unwrap_or_default();
            return Err(Error::Refused(format!(
                "the lock is held by a live holder: {who}{beat}; add --force to release it anyway"
            )));
        }
        let mut terminated = None;
        let mut message = format!("released the lock held by {who}");
        if let Some(session) = &s.session {
            let ended = ctx.db.terminate_lock_session(session.pid).await?;
            terminated = Some(session.pid);
            let client = session
                .client_addr
                .as_deref()
                .map(|a| format!(" (client {a})"))
                .unwrap_or_default();
            message = if ended {
                format!(
                    "terminated PostgreSQL backend {}{client}, which held the lock for {who}",
                    session.pid
                )
            } else {
                format!(
                    "asked PostgreSQL backend {}{client} to terminate (it had not ended after 5s); \
                     it held the lock for {who}",
                    session.pid
                )
            };
        }
        if let Some(row) = &s.row {
            ctx.db.delete_lock_row(row, true).await?;
        }
        if ctx.db.backend() == Backend::Sqlite {
            message.push_str(&format!(
                "; that process notices at its next heartbeat (within {:.0}s) and stops after \
                 the work under way",
                before.heartbeat_every_s.ceil()
            ));
        }
        Ok(report(true, true, terminated, message))
    })
    .await
}
