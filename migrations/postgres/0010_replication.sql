-- The S3 front (`serve.s3_listen`) and its replication to the backup bucket. Every write the
-- main bucket confirmed is recorded as its `backup_inventory` row and a `replication_tasks` row
-- in one transaction (an outbox); replication workers in every `serve` replica claim the tasks
-- and make the backup bucket match the inventory.

-- Bumped by every write through the front: a task replicates its path as of a version, and
-- `is_backed_up` is set only while the row is still at the version that was copied.
ALTER TABLE backup_inventory ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

CREATE TABLE replication_tasks (
    id               BIGSERIAL PRIMARY KEY,
    path             TEXT NOT NULL,
    -- 'put' (copy main -> backup) or 'delete' (delete from backup), as of `version`.
    op               TEXT NOT NULL CHECK (op IN ('put', 'delete')),
    version          BIGINT NOT NULL,
    size             BIGINT NOT NULL DEFAULT 0,
    -- pending -> running (claimed) -> done; failed once `attempts` reached the limit.
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    claimed_by       TEXT,
    claimed_until    TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
-- Claiming: open tasks in the order they became due.
CREATE INDEX replication_tasks_due ON replication_tasks (next_attempt_at, id)
    WHERE state IN ('pending', 'running');
-- "Is this path still pending?" (drift) and "is this path being copied?" (claiming).
CREATE INDEX replication_tasks_open_path ON replication_tasks (path COLLATE "C")
    WHERE state IN ('pending', 'running', 'failed');
-- What a replica that died left behind (its claims and intents), found by its instance id.
CREATE INDEX replication_tasks_holder ON replication_tasks (claimed_by)
    WHERE state IN ('pending', 'running');
-- The drain rate and the pruning of old done tasks.
CREATE INDEX replication_tasks_finished ON replication_tasks (finished_at)
    WHERE state = 'done';
