//! Change notifications: on PostgreSQL every state change of a mirrored row or a catalog entry
//! is announced on the `mirrorctl_changes` channel by the triggers of migration 0009, in the
//! changing transaction (so it arrives once it committed, from whichever process made it).
//! `serve` replicas listen and forget what they cached of the file. SQLite has no channel.

use sqlx::postgres::PgListener;

use super::{Db, Pool};
use crate::engine::error::Result;

const CHANNEL: &str = "mirrorctl_changes";

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

/// A listening connection (PostgreSQL).
pub struct Changes {
    listener: PgListener,
    /// Whether `Lost` was reported since the last notification.
    lost: bool,
}

impl Changes {
    /// The next change. A lost connection yields `Change::Lost` once; the next calls reconnect,
    /// retrying every second as long as the database is away.
    pub async fn next(&mut self) -> Change {
        loop {
            match self.listener.try_recv().await {
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
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    if !self.lost {
                        tracing::warn!("change notifications: {e}");
                        self.lost = true;
                        return Change::Lost;
                    }
                }
            }
        }
    }
}

impl Db {
    /// Listens for changes; `None` on SQLite, which cannot announce them.
    pub async fn listen_changes(&self) -> Result<Option<Changes>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool)
            .await
            .map_err(|e| self.err(e))?;
        listener.listen(CHANNEL).await.map_err(|e| self.err(e))?;
        Ok(Some(Changes {
            listener,
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
