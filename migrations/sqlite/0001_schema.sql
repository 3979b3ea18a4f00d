-- mirrorctl schema (SQLite). Kept in lockstep with migrations/postgres/0001_schema.sql.
-- Timestamps are RFC 3339 text in UTC, written by the application.

CREATE TABLE origin_files (
    id          INTEGER PRIMARY KEY,
    source      TEXT NOT NULL DEFAULT 'http',
    remote_id   TEXT NOT NULL,
    file_name   TEXT NOT NULL,
    url         TEXT NOT NULL,
    size        INTEGER,
    etag        TEXT,
    updated_at  TEXT NOT NULL,
    UNIQUE (source, remote_id)
);

CREATE TABLE mirrored_files (
    id                  INTEGER PRIMARY KEY,
    origin_file_id      INTEGER NOT NULL REFERENCES origin_files (id),
    bucket              TEXT NOT NULL,
    key                 TEXT NOT NULL,
    size                INTEGER NOT NULL,
    sha256              TEXT,
    etag                TEXT,
    mirrored_at         TEXT NOT NULL,
    last_downloaded_at  TEXT,
    last_validated_at   TEXT,
    is_stale            BOOLEAN NOT NULL DEFAULT FALSE,
    stale_reason        TEXT,
    download_count      INTEGER NOT NULL DEFAULT 0,
    bytes_served        INTEGER NOT NULL DEFAULT 0,
    deleted_at          TEXT
);
CREATE UNIQUE INDEX mirrored_files_live_key ON mirrored_files (bucket, key) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_key ON mirrored_files (key, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_downloads ON mirrored_files (download_count DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_size ON mirrored_files (size DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_last_downloaded ON mirrored_files (last_downloaded_at DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_stale ON mirrored_files (id) WHERE deleted_at IS NULL AND is_stale;
CREATE INDEX mirrored_files_origin ON mirrored_files (origin_file_id);

-- One table (no partitions in SQLite): archiving deletes the month's rows.
CREATE TABLE download_events (
    id           INTEGER PRIMARY KEY,
    occurred_at  TEXT NOT NULL,
    file_id      INTEGER NOT NULL,
    cache_hit    BOOLEAN NOT NULL,
    bytes        INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status       INTEGER NOT NULL
);
CREATE INDEX download_events_file ON download_events (file_id, occurred_at);
CREATE INDEX download_events_time ON download_events (occurred_at);

CREATE TABLE download_stats_hourly (
    hour        TEXT PRIMARY KEY,
    hits        INTEGER NOT NULL DEFAULT 0,
    misses      INTEGER NOT NULL DEFAULT 0,
    errors      INTEGER NOT NULL DEFAULT 0,
    bytes_hit   INTEGER NOT NULL DEFAULT 0,
    bytes_miss  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE archived_partitions (
    partition       TEXT PRIMARY KEY,
    year            INTEGER NOT NULL,
    month           INTEGER NOT NULL,
    row_count       INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    bucket          TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    archived_at     TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    state           TEXT NOT NULL
);

CREATE TABLE backup_inventory (
    path           TEXT PRIMARY KEY,
    size           INTEGER NOT NULL,
    etag           TEXT,
    content_type   TEXT,
    is_backed_up   BOOLEAN NOT NULL DEFAULT FALSE,
    last_modified  TEXT,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at     TEXT NOT NULL
);

CREATE TABLE operations (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    params       TEXT NOT NULL DEFAULT '{}',
    operator     TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    finished_at  TEXT,
    status       TEXT NOT NULL,
    summary      TEXT
);
CREATE INDEX operations_started ON operations (started_at DESC);

-- The mutation lock: one row while a mutating operation runs.
CREATE TABLE operation_lock (
    name          TEXT PRIMARY KEY,
    operation_id  INTEGER,
    kind          TEXT NOT NULL,
    operator      TEXT NOT NULL,
    holder        TEXT NOT NULL,
    started_at    TEXT NOT NULL
);

CREATE TABLE mirror_counters (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    objects  INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0,
    stale    INTEGER NOT NULL DEFAULT 0
);
INSERT INTO mirror_counters (id) VALUES (1);

CREATE TRIGGER mirror_counters_ins AFTER INSERT ON mirrored_files WHEN NEW.deleted_at IS NULL
BEGIN
    UPDATE mirror_counters SET objects = objects + 1, bytes = bytes + NEW.size, stale = stale + NEW.is_stale WHERE id = 1;
END;
CREATE TRIGGER mirror_counters_del AFTER DELETE ON mirrored_files WHEN OLD.deleted_at IS NULL
BEGIN
    UPDATE mirror_counters SET objects = objects - 1, bytes = bytes - OLD.size, stale = stale - OLD.is_stale WHERE id = 1;
END;
CREATE TRIGGER mirror_counters_upd AFTER UPDATE OF size, is_stale, deleted_at ON mirrored_files
BEGIN
    UPDATE mirror_counters SET
        objects = objects - (OLD.deleted_at IS NULL) + (NEW.deleted_at IS NULL),
        bytes = bytes - (CASE WHEN OLD.deleted_at IS NULL THEN OLD.size ELSE 0 END)
                      + (CASE WHEN NEW.deleted_at IS NULL THEN NEW.size ELSE 0 END),
        stale = stale - (OLD.deleted_at IS NULL AND OLD.is_stale) + (NEW.deleted_at IS NULL AND NEW.is_stale)
    WHERE id = 1;
END;
