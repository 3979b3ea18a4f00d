//! Follows the database's changes (PostgreSQL `LISTEN`, SQLite's change log): a stale mark, a
//! purge, a new copy or a catalog change made by any process makes every replica forget what it
//! cached of that file (its row by id and by key, a remembered 404), within the notification's
//! delivery time on PostgreSQL (milliseconds) or the change log's polling interval on SQLite
//! (250 ms), well inside a second. When the connection is lost, changes
//! may have been missed, so everything cached is forgotten, and again on reconnecting.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::download::Lookup;
use super::Shared;
use crate::engine::db::{Change, Changes};

pub async fn follow(shared: Arc<Shared>, mut changes: Changes, cancel: CancellationToken) {
    loop {
        let change = tokio::select! {
            _ = cancel.cancelled() => return,
            c = changes.next() => c,
        };
        match change {
            Change::File { id, key } => {
                shared.rows.remove(&Lookup::Id(id));
                shared.rows.remove(&Lookup::Key(key));
            }
            Change::Catalog { key } => {
                shared.negative.remove(&key);
                shared.rows.remove(&Lookup::Key(key));
            }
            Change::Lost => {
                tracing::warn!("change notifications interrupted: forgetting every cached row");
                shared.rows.clear();
                shared.negative.clear();
            }
        }
    }
}
