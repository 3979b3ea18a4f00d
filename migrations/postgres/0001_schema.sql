-- mirrorctl schema (PostgreSQL). Kept in lockstep with migrations/sqlite/0001_schema.sql.

CREATE TABLE origin_files (
    id          BIGSERIAL PRIMARY KEY,
    source      TEXT NOT NULL DEFAULT 'http',
    remote_id   TEXT NOT NULL,
    file_name   TEXT NOT NULL,
    url         TEXT NOT NULL,
    size        BIGINT,
    etag        TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, remote_id)
);

CREATE TABLE mirrored_files (
    id                  BIGSERIAL PRIMARY KEY,
    origin_file_id      BIGINT NOT NULL REFERENCES origin_files (id),
    bucket              TEXT NOT NULL,
    key                 TEXT NOT NULL,
    size                BIGINT NOT NULL,
    sha256              TEXT,
    etag                TEXT,
    mirrored_at         TIMESTAMPTZ NOT NULL,
    last_downloaded_at  TIMESTAMPTZ,
    last_validated_at   TIMESTAMPTZ,
    is_stale            BOOLEAN NOT NULL DEFAULT FALSE,
    stale_reason        TEXT,
    download_count      BIGINT NOT NULL DEFAULT 0,
    bytes_served        BIGINT NOT NULL DEFAULT 0,
    deleted_at          TIMESTAMPTZ
);
CREATE UNIQUE INDEX mirrored_files_live_key ON mirrored_files (bucket, key) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_key ON mirrored_files (key, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_downloads ON mirrored_files (download_count DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_size ON mirrored_files (size DESC, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_last_downloaded ON mirrored_files (last_downloaded_at DESC NULLS LAST, id) WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_stale ON mirrored_files (id) WHERE deleted_at IS NULL AND is_stale;
CREATE INDEX mirrored_files_origin ON mirrored_files (origin_file_id);

-- One row per download served. Range-partitioned by month: download_events_yYYYYmMM,
-- created ahead of the writes that need them.
CREATE TABLE download_events (
    id           BIGSERIAL,
    occurred_at  TIMESTAMPTZ NOT NULL,
    file_id      BIGINT NOT NULL,
    cache_hit    BOOLEAN NOT NULL,
    bytes        BIGINT NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status       SMALLINT NOT NULL,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX download_events_file ON download_events (file_id, occurred_at);
CREATE INDEX download_events_time ON download_events (occurred_at);

-- Hourly rollup of download_events, kept by the write path so stats never scan events.
CREATE TABLE download_stats_hourly (
    hour        TIMESTAMPTZ PRIMARY KEY,
    hits        BIGINT NOT NULL DEFAULT 0,
    misses      BIGINT NOT NULL DEFAULT 0,
    errors      BIGINT NOT NULL DEFAULT 0,
    bytes_hit   BIGINT NOT NULL DEFAULT 0,
    bytes_miss  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE archived_partitions (
    partition       TEXT PRIMARY KEY,
    year            INTEGER NOT NULL,
    month           INTEGER NOT NULL,
    row_count       BIGINT NOT NULL,
    bytes           BIGINT NOT NULL,
    sha256          TEXT NOT NULL,
    bucket          TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    archived_at     TIMESTAMPTZ NOT NULL,
    schema_version  INTEGER NOT NULL,
    state           TEXT NOT NULL
);

CREATE TABLE backup_inventory (
    path           TEXT PRIMARY KEY,
    size           BIGINT NOT NULL,
    etag           TEXT,
    content_type   TEXT,
    is_backed_up   BOOLEAN NOT NULL DEFAULT FALSE,
    last_modified  TIMESTAMPTZ,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE operations (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL,
    params       JSONB NOT NULL DEFAULT '{}',
    operator     TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    status       TEXT NOT NULL,
    summary      JSONB
);
CREATE INDEX operations_started ON operations (started_at DESC);

-- Who holds the mutation lock (the lock itself is an advisory lock in PostgreSQL).
CREATE TABLE operation_lock (
    name          TEXT PRIMARY KEY,
    operation_id  BIGINT,
    kind          TEXT NOT NULL,
    operator      TEXT NOT NULL,
    holder        TEXT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL
);

-- Live storage totals, kept by triggers so that stats never scan mirrored_files.
CREATE TABLE mirror_counters (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    objects  BIGINT NOT NULL DEFAULT 0,
    bytes    BIGINT NOT NULL DEFAULT 0,
    stale    BIGINT NOT NULL DEFAULT 0
);
INSERT INTO mirror_counters (id) VALUES (1);

CREATE FUNCTION mirror_counters_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d_objects BIGINT := 0;
    d_bytes   BIGINT := 0;
    d_stale   BIGINT := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT d_objects + count(*), d_bytes + coalesce(sum(size), 0), d_stale + count(*) FILTER (WHERE is_stale)
          INTO d_objects, d_bytes, d_stale
          FROM new_rows WHERE deleted_at IS NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        SELECT d_objects - count(*), d_bytes - coalesce(sum(size), 0), d_stale - count(*) FILTER (WHERE is_stale)
          INTO d_objects, d_bytes, d_stale
          FROM old_rows WHERE deleted_at IS NULL;
    END IF;
    IF d_objects <> 0 OR d_bytes <> 0 OR d_stale <> 0 THEN
        UPDATE mirror_counters
           SET objects = objects + d_objects, bytes = bytes + d_bytes, stale = stale + d_stale
         WHERE id = 1;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER mirror_counters_ins AFTER INSERT ON mirrored_files
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mirror_counters_apply();
CREATE TRIGGER mirror_counters_upd AFTER UPDATE ON mirrored_files
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION mirror_counters_apply();
CREATE TRIGGER mirror_counters_del AFTER DELETE ON mirrored_files
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION mirror_counters_apply();
