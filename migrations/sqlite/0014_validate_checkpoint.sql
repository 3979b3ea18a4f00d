-- Kept in lockstep with migrations/postgres/0014_validate_checkpoint.sql: how far a
-- `validate --all` of a bucket got. The walk visits the live files in key byte order and
-- writes this row in the transaction that records each batch of results, so `after_key` is
-- the last key whose result is in the rows and `counts` what the run had found up to it.
-- `validate --resume` continues from here after a run that stopped (crashed, killed,
-- cancelled, or a listing that failed for good); a run that completes deletes the row.
CREATE TABLE validate_checkpoints (
    bucket       TEXT PRIMARY KEY,
    -- The `operations` row of the run that wrote it last.
    operation_id INTEGER NOT NULL,
    -- NULL: the run stopped before its first batch was written.
    after_key    TEXT,
    counts       TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
