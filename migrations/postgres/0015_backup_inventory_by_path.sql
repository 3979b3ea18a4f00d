-- Kept in lockstep with migrations/sqlite/0015_backup_inventory_by_path.sql, which stores
-- SQLite's inventory in path order (a WITHOUT ROWID table) so that drift's path-ordered reads
-- stop looking every row up by rowid. PostgreSQL has no such layout: drift reads it through
-- backup_inventory_path_bytes (0004), and a covering index would make every replication's
-- `is_backed_up` update a non-HOT one. Nothing to do here.
SELECT 1;
