//! The S3 front's outbox: each write the main bucket confirmed becomes its `backup_inventory`
//! row and a `replication_tasks` row in one transaction; replication workers claim tasks (one
//! path at a time across every worker of every replica), bring the backup in line with the
//! inventory, and finish them. The status figures come from the same table.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::{on_pool, on_relaxed_pool, BeginWrite, Db};
use crate::engine::error::Result;

/// A write the main bucket confirmed, as the front records it.
#[derive(Debug, Clone)]
pub struct FrontWrite {
    pub path: String,
    /// `None` for a delete.
    pub object: Option<WrittenObject>,
}

/// The object a put, copy or completed multipart upload left in the main bucket.
#[derive(Debug, Clone)]
pub struct WrittenObject {
    pub size: i64,
    pub etag: Option<String>,
    pub content_type: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// A task a worker claimed: make the backup hold what the inventory says of `path`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedTask {
    pub id: i64,
    pub path: String,
    pub op: String,
    pub version: i64,
    pub size: i64,
    pub attempts: i32,
}

/// What the inventory says of a path now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InventoryState {
    pub size: i64,
    pub etag: Option<String>,
    pub deleted: bool,
    pub version: i64,
}

/// One task for the status report.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TaskRow {
    pub id: i64,
    pub path: String,
    pub op: String,
    pub version: i64,
    pub size: i64,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

/// Counts over the open tasks.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct BacklogCounts {
    pub pending: i64,
    pub pending_bytes: i64,
    pub running: i64,
    pub failed: i64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Tasks finished in the drain window, and when the first and the last of them finished.
    pub drained: i64,
    pub first_drained_at: Option<DateTime<Utc>>,
    pub last_drained_at: Option<DateTime<Utc>>,
    /// Writes the front began and has not recorded yet (requests in flight).
    pub in_flight: i64,
}

/// How a claimed task ended, for `finish_task`.
#[derive(Debug, Clone)]
pub enum TaskEnd {
    /// The backup holds the inventory's state as of `version`: every open task of the path
    /// up to that version is done.
    Replicated { version: i64 },
    /// Try again at `at`; `counted` says whether this was a failed attempt (or only a wait,
    /// e.g. main changed under the copy and a newer task will follow).
    Retry {
        at: DateTime<Utc>,
        error: String,
        counted: bool,
    },
}

/// What an insert into `backup_inventory` does to a row already there (`excluded` the new
/// figures): bumps its version; a delete keeps the last object's figures.
macro_rules! inventory_conflict {
    () => {
        "ON CONFLICT (path) DO UPDATE SET \
         size = CASE WHEN excluded.deleted THEN backup_inventory.size ELSE excluded.size END, \
         etag = CASE WHEN excluded.deleted THEN backup_inventory.etag ELSE excluded.etag END, \
         content_type = CASE WHEN excluded.deleted THEN backup_inventory.content_type \
                        ELSE excluded.content_type END, \
         last_modified = CASE WHEN excluded.deleted THEN backup_inventory.last_modified \
                         ELSE excluded.last_modified END, \
         is_backed_up = FALSE, deleted = excluded.deleted, \
         updated_at = excluded.updated_at, version = backup_inventory.version + 1"
    };
}

/// Upserts a path's inventory row ($1 path, $2 size, $3 etag, $4 content type, $5 last
/// modified, $6 deleted, $7 now), bumping its version; a delete keeps the last object's
/// figures. Returns the new version.
macro_rules! upsert_inventory {
    () => {
        concat!(
            "INSERT INTO backup_inventory (path, size, etag, content_type, \
             is_backed_up, last_modified, deleted, updated_at, version) \
             VALUES ($1, $2, $3, $4, FALSE, $5, $6, $7, 1) ",
            inventory_conflict!(),
            " RETURNING version"
        )
    };
}
const UPSERT_INVENTORY: &str = upsert_inventory!();

/// Binds `upsert_inventory!`'s parameters ($1-$7) to `$query`: `$path`, then `$object` (an
/// `Option<&WrittenObject>`, `None` for a delete) and `$now`.
macro_rules! bind_upsert {
    ($query:expr, $path:expr, $object:expr, $now:expr) => {{
        let o: Option<&WrittenObject> = $object;
        $query
            .bind($path)
            .bind(o.map_or(0, |o| o.size))
            .bind(o.and_then(|o| o.etag.clone()))
            .bind(o.and_then(|o| o.content_type.clone()))
            .bind(o.and_then(|o| o.last_modified))
            .bind(o.is_none())
            .bind($now)
    }};
}

/// PostgreSQL records confirmed writes, at most one per path, in one statement (one round
/// trip for a whole batch): the inventory upserts, in path order; then each write's intent
/// made a due task of the new version, or a new task when the intent is gone. The writes come
/// as arrays: $1 paths, $2 sizes, $3 ETags, $4 content types, $5 last modified, $6 deleted,
/// $7 intent ids; $8 is now. Returns each path with its new version.
const RECORD_WRITES_PG: &str = concat!(
    "WITH w AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], \
     $5::timestamptz[], $6::bool[], $7::int8[]) \
     AS w(path, size, etag, content_type, last_modified, deleted, intent)), \
     inv AS (INSERT INTO backup_inventory (path, size, etag, content_type, is_backed_up, \
     last_modified, deleted, updated_at, version) \
     SELECT path, size, etag, content_type, FALSE, last_modified, deleted, $8, 1 FROM w \
     ORDER BY path COLLATE \"C\" ",
    inventory_conflict!(),
    " RETURNING path, version), \
     task AS (UPDATE replication_tasks t \
     SET op = CASE WHEN w.deleted THEN 'delete' ELSE 'put' END, version = inv.version, \
     size = w.size, state = 'pending', attempts = 0, next_attempt_at = $8, finished_at = NULL, \
     claimed_by = NULL, claimed_until = NULL, created_at = $8 \
     FROM w JOIN inv ON inv.path = w.path WHERE t.id = w.intent RETURNING t.id), \
     added AS (INSERT INTO replication_tasks (path, op, version, size, state, created_at, \
     next_attempt_at) SELECT w.path, CASE WHEN w.deleted THEN 'delete' ELSE 'put' END, \
     inv.version, w.size, 'pending', $8, $8 FROM w JOIN inv ON inv.path = w.path \
     WHERE w.intent NOT IN (SELECT id FROM task)) \
     SELECT path, version FROM inv"
);

/// The tasks a replication of version $3 of path $2 by task $4 (at $1) ends: this task and
/// every other open task of the path up to that version are done, except intents of writes in
/// flight and tasks another worker is copying.
macro_rules! finish_replicated {
    () => {
        "UPDATE replication_tasks SET state = 'done', finished_at = $1, claimed_by = NULL, \
         claimed_until = NULL, last_error = NULL \
         WHERE path = $2 AND state <> 'done' AND version <= $3 \
         AND (id = $4 OR (version >= 0 AND (state <> 'running' OR claimed_until < $1)))"
    };
}

/// The end of a replication on PostgreSQL in one statement (one round trip instead of five),
/// as `finish_task` does in three on SQLite: `finish_replicated!`; this task back to pending if
/// it is still running (the inventory moved past its version meanwhile: a later task copies the
/// newer state); the inventory row backed up if it is still at that version.
const FINISH_REPLICATED_PG: &str = concat!(
    "WITH done AS (",
    finish_replicated!(),
    " RETURNING id), \
     back AS (UPDATE replication_tasks SET state = 'pending', claimed_by = NULL, \
     claimed_until = NULL WHERE id = $4 AND state = 'running' \
     AND NOT EXISTS (SELECT 1 FROM done WHERE done.id = $4)), \
     inv AS (UPDATE backup_inventory SET is_backed_up = NOT deleted \
     WHERE path = $2 AND version = $3) \
     SELECT count(*) FROM done"
);

const TASK_COLUMNS: &str =
    "id, path, op, version, size, state, attempts, last_error, created_at, next_attempt_at";

impl Db {
    /// Before a write is forwarded to main: one task per path, an *intent* (version -1) of
    /// `creator` (a fleet instance id), not due until `settle_by`. If the process dies before
    /// the write is recorded, the intent becomes due once its creator is gone from the fleet
    /// (or at `settle_by`) and a worker reconciles the path with what main actually holds, so
    /// a write main took but nobody recorded still reaches the inventory and the backup.
    /// One statement through the relaxed sessions: the record that follows waits for the WAL
    /// flush, which covers this earlier commit too.
    pub async fn begin_front_writes(
        &self,
        paths: &[(&str, bool)],
        creator: &str,
        now: DateTime<Utc>,
        settle_by: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let r: Result<Vec<i64>, sqlx::Error> = on_relaxed_pool!(self, |p| {
            let mut qb = QueryBuilder::new(
                "INSERT INTO replication_tasks (path, op, version, size, state, created_at, \
                 next_attempt_at, claimed_by) ",
            );
            qb.push_values(paths, |mut b, (path, delete)| {
                b.push_bind(*path)
                    .push_bind(if *delete { "delete" } else { "put" })
                    .push_bind(-1i64)
                    .push_bind(0i64)
                    .push_bind("pending")
                    .push_bind(now)
                    .push_bind(settle_by)
                    .push_bind(creator);
            });
            qb.push(" RETURNING id");
            qb.build_query_scalar::<i64>().fetch_all(p).await
        });
        r.map_err(|e| self.err(e))
    }

    /// Records writes the main bucket confirmed, in one transaction: each path's inventory row
    /// (its version bumped; a delete is a soft delete) and its intent made a task due now.
    /// Returns the new versions, in order. Rows are written in path order (the writes of one
    /// path in the order given), so transactions recording several paths at once lock them in
    /// the same order and never deadlock. On PostgreSQL that is one statement per batch, or
    /// one per round when a path was written more than once (`rounds_by_path`).
    pub async fn record_front_writes(
        &self,
        writes: &[(i64, FrontWrite)],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut versions = vec![0; writes.len()];
        let r: Result<(), sqlx::Error> = match &self.pool {
            super::Pool::Postgres(p) => {
                async {
                    let rounds = rounds_by_path(writes);
                    if let [only] = rounds.as_slice() {
                        return record_writes_pg(p, writes, only, now, &mut versions).await;
                    }
                    let mut tx = p.begin().await?;
                    for round in &rounds {
                        record_writes_pg(&mut *tx, writes, round, now, &mut versions).await?;
                    }
                    tx.commit().await
                }
                .await
            }
            super::Pool::Sqlite(p) => {
                let mut order: Vec<usize> = (0..writes.len()).collect();
                order.sort_by(|a, b| writes[*a].1.path.cmp(&writes[*b].1.path));
                async {
                    let mut conn = p.acquire().await?;
                    let mut tx = conn.begin_write().await?;
                    for &at in &order {
                        let (intent, w) = &writes[at];
                        versions[at] = record_write_sqlite(&mut tx, *intent, w, now).await?;
                    }
                    tx.commit().await
                }
                .await
            }
        };
        r.map_err(|e| self.err(e))?;
        Ok(versions)
    }

    /// Main refused these writes: their intents go.
    pub async fn drop_intents(&self, ids: &[i64]) -> Result<()> {
        self.settle_intents(ids, None).await
    }

    /// Whether main took these writes is unknown (no answer): their intents are due now, so a
    /// worker reconciles the paths with main.
    pub async fn intents_due(&self, ids: &[i64], now: DateTime<Utc>) -> Result<()> {
        self.settle_intents(ids, Some(now)).await
    }

    async fn settle_intents(&self, ids: &[i64], due: Option<DateTime<Utc>>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| {
            let mut qb = match due {
                None => {
                    QueryBuilder::new("DELETE FROM replication_tasks WHERE version < 0 AND id IN (")
                }
                Some(at) => {
                    let mut qb =
                        QueryBuilder::new("UPDATE replication_tasks SET next_attempt_at = ");
                    qb.push_bind(at).push(" WHERE version < 0 AND id IN (");
                    qb
                }
            };
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(p).await.map(|_| ())
        });
        r.map_err(|e| self.err(e))
    }

    /// Makes the inventory row of `path` say what main holds (`None`: nothing), bumping its
    /// version only when that changes anything; returns the row's version (0 without a row).
    /// For an intent whose write was never recorded.
    pub async fn reconcile_inventory(
        &self,
        path: &str,
        main: Option<&WrittenObject>,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let current = self.inventory_state(path).await?;
        let same = match (&current, main) {
            (Some(c), Some(m)) => !c.deleted && c.size == m.size && c.etag == m.etag,
            (Some(c), None) => c.deleted,
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if same {
            return Ok(current.map_or(0, |c| c.version));
        }
        let r: Result<i64, sqlx::Error> = on_pool!(self, |p| {
            bind_upsert!(sqlx::query_scalar(UPSERT_INVENTORY), path, main, now)
                .fetch_one(p)
                .await
        });
        r.map_err(|e| self.err(e))
    }

    /// Queues a task for each path as the inventory has it now (a path without an inventory
    /// row is copied as main has it): what `replication resync` adds for a drift finding.
    pub async fn queue_replication(&self, paths: &[String], now: DateTime<Utc>) -> Result<u64> {
        let r: Result<u64, sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut n = 0;
            for path in paths {
                n += sqlx::query(
                    "INSERT INTO replication_tasks (path, op, version, size, state, created_at, \
                     next_attempt_at) \
                     SELECT $1, CASE WHEN i.deleted THEN 'delete' ELSE 'put' END, i.version, i.size, \
                            'pending', $2, $2 FROM backup_inventory i WHERE i.path = $1 \
                     UNION ALL SELECT $1, 'put', 0, 0, 'pending', $2, $2 \
                     WHERE NOT EXISTS (SELECT 1 FROM backup_inventory WHERE path = $1)",
                )
                .bind(path)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        });
        r.map_err(|e| self.err(e))
    }

    /// Claims up to `n` due tasks for `worker` until `until`, at most one per path and none
    /// for a path another worker is copying: claims are taken one at a time across the
    /// database (a transaction-scoped advisory lock on PostgreSQL, the write lock on SQLite),
    /// and the rows are locked `FOR UPDATE SKIP LOCKED`.
    /// A replica whose fleet row has not beaten since `creator_gone_before` (or is stopped)
    /// is gone: its claims and the intents it began are due at once.
    pub async fn claim_replication(
        &self,
        worker: &str,
        n: usize,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        creator_gone_before: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let scan = (n * 4) as i64;
        let pg = self.backend() == super::Backend::Postgres;
        // Idle replicas look first without a lock (on SQLite a claim takes the write lock).
        let anything: Result<bool, sqlx::Error> = on_pool!(self, |p| sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM replication_tasks \
             WHERE state IN ('pending', 'running') AND (next_attempt_at <= $1 \
             OR claimed_until < $1 OR (claimed_by IS NOT NULL AND version < 0)))"
        )
        .bind(now)
        .fetch_one(p)
        .await);
        if !anything.map_err(|e| self.err(e))? {
            return Ok(Vec::new());
        }
        let r: Result<Vec<ClaimedTask>, sqlx::Error> = on_relaxed_pool!(self, |p| {
            let mut conn = p.acquire().await?;
            let mut tx = conn.begin_write().await?;
            if pg {
                // 0x6d697272 ("mirr"): the claim lock, one per database.
                sqlx::query("SELECT pg_advisory_xact_lock(1835627122)")
                    .execute(&mut *tx)
                    .await?;
            }
            let due: Vec<(i64, String)> = sqlx::query_as(&format!(
                "SELECT id, path FROM replication_tasks \
                 WHERE state IN ('pending', 'running') AND next_attempt_at <= $1 \
                 AND (state = 'pending' OR claimed_until < $1) \
                 ORDER BY next_attempt_at, id LIMIT $2{}",
                if pg { " FOR UPDATE SKIP LOCKED" } else { "" }
            ))
            .bind(now)
            .bind(scan)
            .fetch_all(&mut *tx)
            .await?;
            let mut due = due;
            // What a replica that is gone from the fleet left: its claims, and the intents of
            // writes it never recorded. (A holder without a fleet row is starting up.)
            let orphaned: Vec<(i64, String)> = sqlx::query_as(
                "SELECT t.id, t.path FROM replication_tasks t \
                 JOIN fleet f ON f.instance_id = t.claimed_by \
                 WHERE t.state IN ('pending', 'running') \
                 AND (f.stopped_at IS NOT NULL OR f.heartbeat_at < $2) \
                 AND ((t.state = 'pending' AND t.version < 0 AND t.next_attempt_at > $1) \
                      OR (t.state = 'running' AND t.claimed_until >= $1)) \
                 ORDER BY t.id LIMIT $3",
            )
            .bind(now)
            .bind(creator_gone_before)
            .bind(scan)
            .fetch_all(&mut *tx)
            .await?;
            due.extend(orphaned);
            if due.is_empty() {
                return Ok(Vec::new());
            }
            // One worker per path: skip paths being copied, and all but a path's oldest task.
            let mut qb = QueryBuilder::new(
                "SELECT DISTINCT path FROM replication_tasks t \
                 WHERE state = 'running' AND claimed_until >= ",
            );
            qb.push_bind(now)
                .push(
                    " AND NOT EXISTS (SELECT 1 FROM fleet f WHERE f.instance_id = t.claimed_by \
                     AND (f.stopped_at IS NOT NULL OR f.heartbeat_at < ",
                )
                .push_bind(creator_gone_before)
                .push(")) AND path IN (");
            let mut sep = qb.separated(", ");
            for (_, path) in &due {
                sep.push_bind(path);
            }
            qb.push(")");
            let busy: Vec<String> = qb.build_query_scalar().fetch_all(&mut *tx).await?;
            let mut taken: std::collections::HashSet<&str> =
                busy.iter().map(String::as_str).collect();
            let ids: Vec<i64> = due
                .iter()
                .filter(|(_, path)| taken.insert(path.as_str()))
                .take(n)
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb = QueryBuilder::new(
                "UPDATE replication_tasks SET state = 'running', attempts = attempts + 1, \
                 next_attempt_at = ",
            );
            qb.push_bind(now)
                .push(", claimed_by = ")
                .push_bind(worker)
                .push(", claimed_until = ")
                .push_bind(until)
                .push(" WHERE id IN (");
            let mut sep = qb.separated(", ");
            for id in &ids {
                sep.push_bind(*id);
            }
            qb.push(") RETURNING id, path, op, version, size, attempts");
            let claimed: Vec<ClaimedTask> = qb.build_query_as().fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok(claimed)
        });
        r.map_err(|e| self.err(e))
    }

    /// Extends `worker`'s claims on `ids` (a long copy keeps its path).
    pub async fn renew_claims(
        &self,
        worker: &str,
        ids: &[i64],
        until: DateTime<Utc>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let r: Result<(), sqlx::Error> = on_pool!(self, |p| {
            let mut qb = QueryBuilder::new("UPDATE replication_tasks SET claimed_until = ");
            qb.push_bind(until)
                .push(" WHERE state = 'running' AND claimed_by = ")
                .push_bind(worker)
                .push(" AND id IN (");
            let mut s = qb.separated(", ");
            for id in ids {
                s.push_bind(*id);
            }
            qb.push(")");
            qb.build().execute(p).await.map(|_| ())
        });
        r.map_err(|e| self.err(e))
    }

    /// What the inventory says of `path` now.
    pub async fn inventory_state(&self, path: &str) -> Result<Option<InventoryState>> {
        let r = on_pool!(self, |p| sqlx::query_as::<_, InventoryState>(
            "SELECT size, etag, deleted, version FROM backup_inventory WHERE path = $1"
        )
        .bind(path)
        .fetch_optional(p)
        .await);
        r.map_err(|e| self.err(e))
    }

    /// Ends `worker`'s claim on `task`. A replication marks this task and every other open
    /// task of the path up to the version copied done (intents of writes still in flight
    /// excepted) and the inventory row backed up (if it is still at that
    /// version); a retry puts the task back with its error, failed once it used up
    /// `max_attempts`.
    pub async fn finish_task(
        &self,
        task: &ClaimedTask,
        worker: &str,
        end: &TaskEnd,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if let (TaskEnd::Replicated { version }, Some(p)) = (end, &self.relaxed) {
            let r = sqlx::query(FINISH_REPLICATED_PG)
                .bind(now)
                .bind(&task.path)
                .bind(*version)
                .bind(task.id)
                .execute(p)
                .await;
            return r.map(|_| ()).map_err(|e| self.err(e));
        }
        let r: Result<(), sqlx::Error> = on_relaxed_pool!(self, |p| {
            let mut conn = p.acquire().await?;
            let mut tx = conn.begin_write().await?;
            match end {
                TaskEnd::Replicated { version } => {
                    // SQLite (PostgreSQL ended above): what FINISH_REPLICATED_PG does.
                    sqlx::query(finish_replicated!())
                        .bind(now)
                        .bind(&task.path)
                        .bind(*version)
                        .bind(task.id)
                        .execute(&mut *tx)
                        .await?;
                    // This claim ends too when the inventory moved past the task's version
                    // meanwhile (a later task copies the newer state).
                    sqlx::query(
                        "UPDATE replication_tasks SET state = 'pending', claimed_by = NULL, \
                         claimed_until = NULL WHERE id = $1 AND state = 'running'",
                    )
                    .bind(task.id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE backup_inventory SET is_backed_up = NOT deleted \
                         WHERE path = $1 AND version = $2",
                    )
                    .bind(&task.path)
                    .bind(*version)
                    .execute(&mut *tx)
                    .await?;
                }
                TaskEnd::Retry { at, error, counted } => {
                    let attempts = if *counted {
                        task.attempts
                    } else {
                        (task.attempts - 1).max(0)
                    };
                    let state = if attempts >= max_attempts as i32 {
                        "failed"
                    } else {
                        "pending"
                    };
                    sqlx::query(
                        "UPDATE replication_tasks SET state = $1, attempts = $2, last_error = $3, \
                         next_attempt_at = $4, claimed_by = NULL, claimed_until = NULL \
                         WHERE id = $5 AND claimed_by = $6",
                    )
                    .bind(state)
                    .bind(attempts)
                    .bind(error)
                    .bind(*at)
                    .bind(task.id)
                    .bind(worker)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await
        });
        r.map_err(|e| self.err(e))
    }

    /// Pending, running and failed counts, the bytes and age of the backlog, and the tasks
    /// finished since `drained_since`.
    pub async fn replication_backlog(
        &self,
        now: DateTime<Utc>,
        drained_since: DateTime<Utc>,
    ) -> Result<BacklogCounts> {
        let r = on_pool!(self, |p| {
            sqlx::query_as::<_, BacklogCounts>(
            // The backlog's count, bytes and oldest task in one pass over the open tasks, and
            // the drain window's count, first and last finish in one pass over the done ones.
            "SELECT q.pending, q.pending_bytes, q.oldest_pending_at, \
             (SELECT count(*) FROM replication_tasks WHERE state = 'running' AND claimed_until >= $1) \
                AS running, \
             (SELECT count(*) FROM replication_tasks WHERE state = 'failed') AS failed, \
             d.drained, d.first_drained_at, d.last_drained_at, \
             (SELECT count(*) FROM replication_tasks WHERE state = 'pending' AND version < 0 \
                AND next_attempt_at > $1) AS in_flight \
             FROM (SELECT count(*) AS pending, CAST(coalesce(sum(size), 0) AS BIGINT) AS pending_bytes, \
                          min(created_at) AS oldest_pending_at \
                   FROM replication_tasks WHERE state IN ('pending', 'running') \
                   AND (version >= 0 OR next_attempt_at <= $1)) q, \
                  (SELECT count(*) AS drained, min(finished_at) AS first_drained_at, \
                          max(finished_at) AS last_drained_at \
                   FROM replication_tasks WHERE state = 'done' AND finished_at >= $2) d"
        )
        .bind(now)
        .bind(drained_since)
        .fetch_one(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// Failed tasks, and pending ones that have failed at least once, the latest first.
    pub async fn troubled_tasks(&self, limit: i64) -> Result<Vec<TaskRow>> {
        let r = on_pool!(self, |p| {
            sqlx::query_as::<_, TaskRow>(&format!(
            "SELECT {TASK_COLUMNS} FROM replication_tasks \
             WHERE state = 'failed' OR (state IN ('pending', 'running') AND last_error IS NOT NULL) \
             ORDER BY CASE WHEN state = 'failed' THEN 0 ELSE 1 END, id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(p)
        .await
        });
        r.map_err(|e| self.err(e))
    }

    /// Puts tasks back in the queue, due now with their attempts reset: the failed ones, or
    /// the given ids (any open or failed task). Returns how many.
    pub async fn retry_tasks(
        &self,
        ids: Option<&[i64]>,
        dry_run: bool,
        now: DateTime<Utc>,
    ) -> Result<Vec<TaskRow>> {
        let r: Result<Vec<TaskRow>, sqlx::Error> = on_pool!(self, |p| {
            let mut tx = p.begin().await?;
            let mut qb = QueryBuilder::new(format!(
                "SELECT {TASK_COLUMNS} FROM replication_tasks WHERE "
            ));
            push_selection(&mut qb, ids);
            qb.push(" ORDER BY id");
            let rows: Vec<TaskRow> = qb.build_query_as().fetch_all(&mut *tx).await?;
            if !dry_run && !rows.is_empty() {
                let mut qb = QueryBuilder::new(
                    "UPDATE replication_tasks SET state = 'pending', attempts = 0, next_attempt_at = ",
                );
                qb.push_bind(now)
                    .push(", claimed_by = NULL, claimed_until = NULL WHERE id IN (");
                let mut s = qb.separated(", ");
                for r in &rows {
                    s.push_bind(r.id);
                }
                qb.push(")");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rows)
        });
        r.map_err(|e| self.err(e))
    }

    /// Deletes done tasks finished before `before`; returns how many.
    pub async fn prune_done_tasks(&self, before: DateTime<Utc>) -> Result<u64> {
        let r = on_pool!(self, |p| sqlx::query(
            "DELETE FROM replication_tasks WHERE state = 'done' AND finished_at < $1"
        )
        .bind(before)
        .execute(p)
        .await
        .map(|r| r.rows_affected()));
        r.map_err(|e| self.err(e))
    }
}

fn push_selection<'a, DB: sqlx::Database>(qb: &mut QueryBuilder<'a, DB>, ids: Option<&'a [i64]>)
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    match ids {
        None => {
            qb.push("state = 'failed'");
        }
        Some(ids) => {
            qb.push("state <> 'done' AND id IN (");
            let mut s = qb.separated(", ");
            for id in ids {
                s.push_bind(*id);
            }
            qb.push(")");
        }
    }
}

/// `writes` in rounds that hold at most one write per path: round k has the k-th write of
/// each path, so recording the rounds in order keeps each path's writes in their order.
fn rounds_by_path(writes: &[(i64, FrontWrite)]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (at, (_, w)) in writes.iter().enumerate() {
        let k = seen.entry(w.path.as_str()).or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(at);
        *k += 1;
    }
    rounds
}

/// Records the writes of one round (`round`: indexes into `writes`, one per path) on
/// PostgreSQL with `RECORD_WRITES_PG`, and puts their new versions in `versions`.
async fn record_writes_pg<'c>(
    db: impl sqlx::PgExecutor<'c>,
    writes: &[(i64, FrontWrite)],
    round: &[usize],
    now: DateTime<Utc>,
    versions: &mut [i64],
) -> Result<(), sqlx::Error> {
    let ws = || round.iter().map(|&at| &writes[at]);
    let objects = || ws().map(|(_, w)| w.object.as_ref());
    let rows: Vec<(String, i64)> = sqlx::query_as(RECORD_WRITES_PG)
        .bind(ws().map(|(_, w)| w.path.as_str()).collect::<Vec<_>>())
        .bind(
            objects()
                .map(|o| o.map_or(0, |o| o.size))
                .collect::<Vec<_>>(),
        )
        .bind(
            objects()
                .map(|o| o.and_then(|o| o.etag.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            objects()
                .map(|o| o.and_then(|o| o.content_type.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            objects()
                .map(|o| o.and_then(|o| o.last_modified))
                .collect::<Vec<_>>(),
        )
        .bind(objects().map(|o| o.is_none()).collect::<Vec<_>>())
        .bind(ws().map(|(intent, _)| *intent).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(db)
        .await?;
    let by_path: HashMap<String, i64> = rows.into_iter().collect();
    for &at in round {
        versions[at] = *by_path
            .get(&writes[at].1.path)
            .ok_or(sqlx::Error::RowNotFound)?;
    }
    Ok(())
}

/// SQLite records a confirmed write in three statements of the caller's transaction (it has
/// no data-modifying `WITH`): what `RECORD_WRITES_PG` does in one. Returns the new version.
async fn record_write_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    intent: i64,
    w: &FrontWrite,
    now: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let o = w.object.as_ref();
    let size = o.map_or(0, |o| o.size);
    let op = if o.is_none() { "delete" } else { "put" };
    let version: i64 = bind_upsert!(sqlx::query_scalar(UPSERT_INVENTORY), &w.path, o, now)
        .fetch_one(&mut **tx)
        .await?;
    let updated = sqlx::query(
        "UPDATE replication_tasks SET op = $1, version = $2, size = $3, \
         state = 'pending', attempts = 0, next_attempt_at = $4, finished_at = NULL, \
         claimed_by = NULL, claimed_until = NULL, created_at = $4 WHERE id = $5",
    )
    .bind(op)
    .bind(version)
    .bind(size)
    .bind(now)
    .bind(intent)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated == 0 {
        sqlx::query(
            "INSERT INTO replication_tasks (path, op, version, size, state, created_at, \
             next_attempt_at) VALUES ($1, $2, $3, $4, 'pending', $5, $5)",
        )
        .bind(&w.path)
        .bind(op)
        .bind(version)
        .bind(size)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(version)
}
