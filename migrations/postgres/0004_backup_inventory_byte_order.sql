-- drift merges backup_inventory with S3 listings, which are in UTF-8 byte order. The primary
-- key's index follows the database collation, which is usually not byte order; this one is.
CREATE INDEX backup_inventory_path_bytes ON backup_inventory (path COLLATE "C");
