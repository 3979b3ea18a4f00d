-- no-transaction
-- Indexes for keyset paging of the Files view and for purge's least-recently-used walk, built
-- CONCURRENTLY so that writers keep writing while they build (minutes on 10M files). Such a
-- build cannot run in a transaction: mirrorctl runs this file one statement at a time, drops a
-- half-built (invalid) index left by an interrupted run before building it again, and every
-- statement is safe to rerun. One statement per line ending in ";".
--
-- Each index sorts every column the same way, so one row comparison "(a, id) < (x, y)" bounds
-- a page from either end, and a backward scan gives the descending orders.
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_page_downloads ON mirrored_files (download_count, id) WHERE deleted_at IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_page_size ON mirrored_files (size, id) WHERE deleted_at IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_page_bytes_served ON mirrored_files (bytes_served, id) WHERE deleted_at IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_page_last_downloaded ON mirrored_files ((coalesce(last_downloaded_at, '-infinity'::timestamptz)), id) WHERE deleted_at IS NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_page_stale ON mirrored_files (is_stale, download_count, id) WHERE deleted_at IS NULL;
-- Name order is byte order (as S3 lists keys), which also makes a key prefix an index range.
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_page_name ON mirrored_files ((key COLLATE "C"), id) WHERE deleted_at IS NULL;
-- purge --max-bytes / --unused-days walk a bucket's live files least recently used first and
-- add up their sizes from the index alone (an index-only scan: the columns of the expression
-- are carried too).
CREATE INDEX CONCURRENTLY IF NOT EXISTS mirrored_files_lru ON mirrored_files (bucket, (coalesce(last_downloaded_at, mirrored_at)), id) INCLUDE (size, last_downloaded_at, mirrored_at) WHERE deleted_at IS NULL;
-- The indexes these replace (mixed sort directions, which no row comparison can bound).
DROP INDEX CONCURRENTLY IF EXISTS mirrored_files_downloads;
DROP INDEX CONCURRENTLY IF EXISTS mirrored_files_size;
DROP INDEX CONCURRENTLY IF EXISTS mirrored_files_bytes_served;
DROP INDEX CONCURRENTLY IF EXISTS mirrored_files_last_downloaded;
DROP INDEX CONCURRENTLY IF EXISTS mirrored_files_stale_first;
DROP INDEX CONCURRENTLY IF EXISTS mirrored_files_key;
