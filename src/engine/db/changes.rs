//! Change notifications: on PostgreSQL every state change of a mirrored row or a catalog entry
//! is announced on the `mirrorctl_changes` channel by the triggers of migration 0009, in the
//! changing transaction (so it arrives once it committed, from whichever process made it).
//! `serve` replicas listen and forget what they cached of the file. SQLite has no channel: its
//! triggers (migration 0016) write the same payloads to `change_log`, which each process reads
//! every `POLL_EVERY`.

use std::collections::VecDeque;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::SqlitePool;

use super::{Db, Pool};
use crate::engine::error::Result;

const CHANNEL: &str = "mirrorctl_changes";
/// How often a process on SQLite reads the change log: a change is seen within this.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Change log entries older than this are pruned (by any reader, every `PRUNE_EVERY`).
const KEEP_FOR: Duration = Duration::from_secs(600);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Entries read at once.
const READ_AT_ONCE: i64 = 1000;

/// One announced change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A mirrored row changed state (or was inserted or deleted).
    File { id: i64, key: String },
    /// A catalog entry with this key was added or changed.
    Catalog { key: String },
    /// The connection was lost: changes made from now until it is back are missed, so forget
    /// everything (rows cached after this live their time to live at most).
    Lost,
}

impl Change {
    fn parse(payload: &str) -> Option<Change> {
        let (kind, rest) = payload.split_once(' ')?;
        match kind {
            "f" => {
                let (id, key) = rest.split_once(' ')?;
                Some(Change::File {
                    id: id.parse().ok()?,
                    key: key.to_string(),
                })
            }
            "c" => Some(Change::Catalog {
                key: rest.to_string(),
            }),
            _ => None,
        }
    }
}

/// The changes made by any process: a listening connection (PostgreSQL), or a reader of the
/// change log (SQLite).
pub struct Changes {
    source: Source,
    /// Whether `Lost` was reported since the last change.
    lost: bool,
}

enum Source {
    Listen(PgListener),
    Poll(Poller),
}

struct Poller {
    pool: SqlitePool,
    /// The last entry read.
    cursor: i64,
    ready: VecDeque<Change>,
    next_prune: tokio::time::Instant,
}

impl Changes {
    /// The next change. A lost connection (or change log entries pruned before they were
    /// read) yields `Change::Lost` once; the next calls reconnect, retrying every second as
    /// long as the database is away.
    pub async fn next(&mut self) -> Change {
        match &mut self.source {
            Source::Listen(listener) => loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        self.lost = false;
                        if let Some(c) = Change::parse(n.payload()) {
                            return c;
                        }
                    }
                    Ok(None) => {
                        self.lost = true;
                        return Change::Lost;
                    }
                    Err(e) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if !self.lost {
                            tracing::warn!("change notifications: {e}");
                            self.lost = true;
                            return Change::Lost;
                        }
                    }
                }
            },
            Source::Poll(p) => loop {
                if let Some(c) = p.ready.pop_front() {
                    return c;
                }
                tokio::time::sleep(POLL_EVERY).await;
                match p.read().await {
                    Ok(true) => self.lost = false,
                    Ok(false) => {
                        self.lost = false;
                        return Change::Lost;
                    }
                    Err(e) if !self.lost => {
                        tracing::warn!("change log: {e}");
                        self.lost = true;
                        return Change::Lost;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            },
        }
    }
}

impl Poller {
    /// Reads the entries after the cursor into `ready`; false when some were pruned unread.
    async fn read(&mut self) -> Result<bool, sqlx::Error> {
        if tokio::time::Instant::now() >= self.next_prune {
            self.next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            sqlx::query(
                "DELETE FROM change_log WHERE at < CAST(strftime('%s', 'now') AS INTEGER) - $1",
            )
            .bind(KEEP_FOR.as_secs() as i64)
            .execute(&self.pool)
            .await?;
        }
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, payload FROM change_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(self.cursor)
        .bind(READ_AT_ONCE)
        .fetch_all(&self.pool)
        .await?;
        // One writer at a time and AUTOINCREMENT: committed entries have no gaps, so a gap
        // after the cursor means entries were pruned before this process read them.
        let complete = rows.first().is_none_or(|(seq, _)| *seq == self.cursor + 1);
        for (seq, payload) in rows {
            self.cursor = seq;
            if let Some(c) = Change::parse(&payload) {
                self.ready.push_back(c);
            }
        }
        Ok(complete)
    }
}

impl Db {
    /// Follows the changes made by any process: NOTIFY on PostgreSQL, the change log on SQLite.
    pub async fn listen_changes(&self) -> Result<Option<Changes>> {
        let source = match &self.pool {
            Pool::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool)
                    .await
                    .map_err(|e| self.err(e))?;
                listener.listen(CHANNEL).await.map_err(|e| self.err(e))?;
                Source::Listen(listener)
            }
            Pool::Sqlite(pool) => {
                let cursor: i64 =
                    sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM change_log")
                        .fetch_one(pool)
                        .await
                        .map_err(|e| self.err(e))?;
                Source::Poll(Poller {
                    pool: pool.clone(),
                    cursor,
                    ready: VecDeque::new(),
                    next_prune: tokio::time::Instant::now(),
                })
            }
        };
        Ok(Some(Changes {
            source,
            lost: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            Change::parse("f 12 a/b c.zip"),
            Some(Change::File {
                id: 12,
                key: "a/b c.zip".into()
            })
        );
        assert_eq!(
            Change::parse("c x/y"),
            Some(Change::Catalog { key: "x/y".into() })
        );
        assert_eq!(Change::parse("f nope"), None);
        assert_eq!(Change::parse("zz"), None);
    }
}
