-- Kept in lockstep with migrations/postgres/0009_replicas.sql: leases, the fleet, the row
-- version, the content ETag and revalidations. (SQLite has no change notifications: a serve
-- process on SQLite keeps its cached rows for one second.)

CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    address      TEXT,
    acquired_at  TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);

CREATE TABLE fleet (
    instance_id      TEXT PRIMARY KEY,
    version          TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    listen           TEXT NOT NULL,
    peer_url         TEXT,
    started_at       TEXT NOT NULL,
    heartbeat_at     TEXT NOT NULL,
    requests_per_s   REAL NOT NULL DEFAULT 0,
    fills_in_flight  INTEGER NOT NULL DEFAULT 0,
    queue_depth      INTEGER NOT NULL DEFAULT 0,
    stopped_at       TEXT
);

ALTER TABLE mirrored_files ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mirrored_files ADD COLUMN content_etag TEXT;
ALTER TABLE download_stats_hourly ADD COLUMN revalidations INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER mirrored_files_version AFTER UPDATE OF is_stale, deleted_at, mirrored_at, etag ON mirrored_files
    WHEN OLD.is_stale IS NOT NEW.is_stale OR OLD.deleted_at IS NOT NEW.deleted_at
         OR OLD.mirrored_at IS NOT NEW.mirrored_at OR OLD.etag IS NOT NEW.etag
BEGIN
    UPDATE mirrored_files SET version = OLD.version + 1 WHERE id = NEW.id;
END;
