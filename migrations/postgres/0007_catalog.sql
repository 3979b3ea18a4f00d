-- The catalog: origin_files is what the mirror may serve. Each entry knows the object key its
-- mirrored copy lives under (so a catalog entry not yet mirrored can be served and prefetched
-- by key), and a pruned entry is soft-deleted. Kept in lockstep with migrations/sqlite/0007.
ALTER TABLE origin_files ADD COLUMN key TEXT;
ALTER TABLE origin_files ADD COLUMN deleted_at TIMESTAMPTZ;
UPDATE origin_files o SET key = (
    SELECT m.key FROM mirrored_files m WHERE m.origin_file_id = o.id ORDER BY m.id DESC LIMIT 1
);
CREATE INDEX origin_files_key ON origin_files (key, id) WHERE deleted_at IS NULL;
