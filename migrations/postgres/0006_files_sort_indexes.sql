-- The Files view and `files` sort by bytes served and by staleness too: page those orders from
-- an index like the others, so a page at 1,000,000 files never sorts the table.
CREATE INDEX mirrored_files_bytes_served ON mirrored_files (bytes_served DESC, id)
    WHERE deleted_at IS NULL;
CREATE INDEX mirrored_files_stale_first ON mirrored_files (is_stale DESC, download_count DESC, id)
    WHERE deleted_at IS NULL;
