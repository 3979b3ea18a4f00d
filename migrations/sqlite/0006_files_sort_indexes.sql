-- Kept in lockstep with PostgreSQL's 0006: the bytes-served and stale-first orders of the
-- Files view page from an index.
CREATE INDEX mirrored_files_bytes_served ON mirrored_files (bytes_served DESC, id)
    WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_stale_first ON mirrored_files (is_stale DESC, download_count DESC, id)
    WHERE deleted_at IS NULL;
