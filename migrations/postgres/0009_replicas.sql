-- Several `serve` replicas on one database: leases (one holder per name, expiring), the fleet
-- (one row per replica, with its heartbeat), a row version that every state change bumps (so a
-- fill records its copy only over the row it started from), the ETag clients are sent for a
-- file's content, revalidations (304) apart from downloads, and change notifications.

CREATE TABLE leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    -- Where the holder can be reached for what it holds (a fill's peer URL), if anywhere.
    address      TEXT,
    acquired_at  TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE fleet (
    instance_id      TEXT PRIMARY KEY,
    version          TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    listen           TEXT NOT NULL,
    peer_url         TEXT,
    started_at       TIMESTAMPTZ NOT NULL,
    heartbeat_at     TIMESTAMPTZ NOT NULL,
    requests_per_s   DOUBLE PRECISION NOT NULL DEFAULT 0,
    fills_in_flight  BIGINT NOT NULL DEFAULT 0,
    queue_depth      BIGINT NOT NULL DEFAULT 0,
    stopped_at       TIMESTAMPTZ
);

ALTER TABLE mirrored_files ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE mirrored_files ADD COLUMN content_etag TEXT;
ALTER TABLE download_stats_hourly ADD COLUMN revalidations BIGINT NOT NULL DEFAULT 0;

-- A purge, a stale mark, a cleared mark or a new copy bumps the version; counters do not.
CREATE FUNCTION mirrored_files_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;
CREATE TRIGGER mirrored_files_version BEFORE UPDATE ON mirrored_files FOR EACH ROW
    WHEN (OLD.is_stale IS DISTINCT FROM NEW.is_stale
          OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at
          OR OLD.mirrored_at IS DISTINCT FROM NEW.mirrored_at
          OR OLD.etag IS DISTINCT FROM NEW.etag)
    EXECUTE FUNCTION mirrored_files_bump_version();

-- Every replica listens on `mirrorctl_changes` and forgets what it cached of a changed file:
-- payload `f <id> <key>` for a mirrored row, `c <key>` for a catalog entry.
CREATE FUNCTION mirrorctl_notify_file() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mirrorctl_changes', 'f ' || NEW.id || ' ' || NEW.key);
    RETURN NULL;
END $$;
CREATE TRIGGER mirrored_files_changed AFTER UPDATE ON mirrored_files FOR EACH ROW
    WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION mirrorctl_notify_file();
CREATE TRIGGER mirrored_files_inserted AFTER INSERT ON mirrored_files FOR EACH ROW
    EXECUTE FUNCTION mirrorctl_notify_file();

CREATE FUNCTION mirrorctl_notify_deleted_file() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('mirrorctl_changes', 'f ' || OLD.id || ' ' || OLD.key);
    RETURN NULL;
END $$;
CREATE TRIGGER mirrored_files_deleted AFTER DELETE ON mirrored_files FOR EACH ROW
    EXECUTE FUNCTION mirrorctl_notify_deleted_file();

CREATE FUNCTION mirrorctl_notify_catalog() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key IS NOT NULL THEN
        PERFORM pg_notify('mirrorctl_changes', 'c ' || NEW.key);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.key IS NOT NULL AND OLD.key IS DISTINCT FROM NEW.key THEN
        PERFORM pg_notify('mirrorctl_changes', 'c ' || OLD.key);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER origin_files_changed AFTER INSERT OR UPDATE ON origin_files FOR EACH ROW
    EXECUTE FUNCTION mirrorctl_notify_catalog();
