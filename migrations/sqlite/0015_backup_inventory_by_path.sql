-- Kept in lockstep with migrations/postgres/0015_backup_inventory_by_path.sql: the inventory
-- is stored in path order. drift reads it in path (byte) order a range at a time; in a rowid
-- table the primary key's index gave that order and every row was then looked up in the table,
-- stored in insertion order (a random page read per row at a million rows). A WITHOUT ROWID
-- table is the B-tree of its primary key: the rows themselves are in path order, and writes
-- keep one tree instead of two. Safe to run again (it copies the table into the same shape).
CREATE TABLE backup_inventory_by_path (
    path           TEXT PRIMARY KEY,
    size           INTEGER NOT NULL,
    etag           TEXT,
    content_type   TEXT,
    is_backed_up   BOOLEAN NOT NULL DEFAULT FALSE,
    last_modified  TEXT,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at     TEXT NOT NULL,
    version        INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO backup_inventory_by_path
    (path, size, etag, content_type, is_backed_up, last_modified, deleted, updated_at, version)
    SELECT path, size, etag, content_type, is_backed_up, last_modified, deleted, updated_at, version
    FROM backup_inventory ORDER BY path;
DROP TABLE backup_inventory;
ALTER TABLE backup_inventory_by_path RENAME TO backup_inventory;
