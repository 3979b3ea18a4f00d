-- Kept in lockstep with PostgreSQL's 0005. SQLite compares text with BINARY (byte order) by
-- default, so mirrored_files_live_key already serves validate's byte-order reads.
SELECT 1;
