-- validate --all merges the live files of a bucket with the bucket's listing, which is in UTF-8
-- byte order. The (bucket, key) index follows the database collation, which is usually not
-- byte order; this one is.
CREATE INDEX mirrored_files_live_key_bytes ON mirrored_files (bucket, key COLLATE "C")
    WHERE deleted_at IS NULL;
