-- Kept in lockstep with migrations/postgres/0010_replication.sql: the S3 front's inventory
-- version and the replication outbox.

ALTER TABLE backup_inventory ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

CREATE TABLE replication_tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    path             TEXT NOT NULL,
    op               TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    version          INTEGER NOT NULL,
    size             INTEGER NOT NULL DEFAULT 0,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    next_attempt_at  TEXT NOT NULL,
    claimed_by       TEXT,
    claimed_until    TEXT,
    finished_at      TEXT
);
CREATE INDEX replication_tasks_due ON replication_tasks (next_attempt_at, id)
    WHERE state IN ('pending', 'running');
CREATE INDEX replication_tasks_open_path ON replication_tasks (path)
    WHERE state IN ('pending', 'running', 'failed');
-- What a replica that died left behind (its claims and intents), found by its instance id.
CREATE INDEX replication_tasks_holder ON replication_tasks (claimed_by)
    WHERE state IN ('pending', 'running');
CREATE INDEX replication_tasks_finished ON replication_tasks (finished_at)
    WHERE state = 'done';
