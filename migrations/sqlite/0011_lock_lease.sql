-- Kept in lockstep with migrations/postgres/0011_lock_lease.sql: the mutation lock and the
-- audit rows of running operations carry a lease that their process renews while it runs, so
-- a process that crashed or was killed is recognised by its expired lease (PID checks cannot
-- tell a dead container's PID 1 from a live one).

-- `token` tells one acquisition from the next by the same process; `heartbeat_at` is the last
-- renewal and `expires_at` the end of the lease the holder promised: another process takes
-- an expired lock over. A row written before this migration has no lease: it counts as
-- expired.
ALTER TABLE operation_lock ADD COLUMN token TEXT;
ALTER TABLE operation_lock ADD COLUMN heartbeat_at TEXT;
ALTER TABLE operation_lock ADD COLUMN expires_at TEXT;

-- The process (`host:pid`) running an operation and its lease: a row still `running` whose
-- lease expired belongs to a process that is gone and becomes `interrupted`.
ALTER TABLE operations ADD COLUMN holder TEXT;
ALTER TABLE operations ADD COLUMN heartbeat_at TEXT;
ALTER TABLE operations ADD COLUMN expires_at TEXT;
CREATE INDEX operations_running ON operations (expires_at) WHERE status = 'running';
