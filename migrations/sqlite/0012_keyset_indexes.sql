-- Kept in lockstep with PostgreSQL's 0012 (built CONCURRENTLY there): indexes for keyset
-- paging of the Files view and purge's least-recently-used walk. Each sorts every column the
-- same way, so one row comparison bounds a page from either end. SQLite compares text
-- bytewise, so the name index is in byte order as on PostgreSQL.
CREATE INDEX IF NOT EXISTS mirrored_files_page_downloads ON mirrored_files (download_count, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS mirrored_files_page_size ON mirrored_files (size, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS mirrored_files_page_bytes_served ON mirrored_files (bytes_served, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS mirrored_files_page_last_downloaded ON mirrored_files (coalesce(last_downloaded_at, ''), id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS mirrored_files_page_stale ON mirrored_files (is_stale, download_count, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS mirrored_files_page_name ON mirrored_files (key, id) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS mirrored_files_lru ON mirrored_files (bucket, coalesce(last_downloaded_at, mirrored_at), id, size) WHERE deleted_at IS NULL;
DROP INDEX IF EXISTS mirrored_files_downloads;
DROP INDEX IF EXISTS mirrored_files_size;
DROP INDEX IF EXISTS mirrored_files_bytes_served;
DROP INDEX IF EXISTS mirrored_files_last_downloaded;
DROP INDEX IF EXISTS mirrored_files_stale_first;
DROP INDEX IF EXISTS mirrored_files_key;
