-- Kept in lockstep with migrations/sqlite/0016_change_log.sql, which gives SQLite a change log
-- for what PostgreSQL announces with NOTIFY (0009). Nothing to do here.
SELECT 1;
