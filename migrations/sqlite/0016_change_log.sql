-- Kept in lockstep with migrations/postgres/0016_change_log.sql. SQLite has no LISTEN/NOTIFY:
-- the changes PostgreSQL announces on `mirrorctl_changes` (0009) are written here instead, with
-- the same payloads (`f <id> <key>` for a mirrored row, `c <key>` for a catalog entry), in the
-- changing transaction. Every serve process reads what is new four times a second
-- (`Db::listen_changes`), so a cached row lives until it changes rather than for one second.
-- The readers prune entries older than ten minutes.
CREATE TABLE change_log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    payload  TEXT NOT NULL
);

CREATE TRIGGER mirrored_files_changed AFTER UPDATE OF version ON mirrored_files
    WHEN OLD.version IS NOT NEW.version
BEGIN
    INSERT INTO change_log (payload) VALUES ('f ' || NEW.id || ' ' || NEW.key);
END;

CREATE TRIGGER mirrored_files_inserted AFTER INSERT ON mirrored_files
BEGIN
    INSERT INTO change_log (payload) VALUES ('f ' || NEW.id || ' ' || NEW.key);
END;

CREATE TRIGGER mirrored_files_deleted AFTER DELETE ON mirrored_files
BEGIN
    INSERT INTO change_log (payload) VALUES ('f ' || OLD.id || ' ' || OLD.key);
END;

CREATE TRIGGER origin_files_inserted AFTER INSERT ON origin_files WHEN NEW.key IS NOT NULL
BEGIN
    INSERT INTO change_log (payload) VALUES ('c ' || NEW.key);
END;

CREATE TRIGGER origin_files_changed AFTER UPDATE ON origin_files
BEGIN
    INSERT INTO change_log (payload) SELECT 'c ' || NEW.key WHERE NEW.key IS NOT NULL;
    INSERT INTO change_log (payload) SELECT 'c ' || OLD.key
        WHERE OLD.key IS NOT NULL AND OLD.key IS NOT NEW.key;
END;
