-- A key lookup (`GET /files/{key}`, `file KEY`) considers purged rows too: without an index
-- over every row it scanned the table for each key the mirror does not know, which every
-- pull-through and every request for an unknown key does.
CREATE INDEX mirrored_files_key_all ON mirrored_files (key, id);
