-- Kept in lockstep with PostgreSQL's 0004. SQLite compares text with BINARY (byte order) by
-- default, so the primary key's index already serves drift's byte-order reads.
SELECT 1;
