#!/usr/bin/env bash
# Fills a PostgreSQL database with the benchmark dataset: FILES mirrored files (default
# 10,000,000) and EVENTS download events (default 100,000,000) over the last 180 days (≈17M per
# monthly partition), with a skewed popularity curve, then the rollups and per-file counters the
# write path keeps. Everything is generated server-side (INSERT … SELECT generate_series): no
# rows cross the wire.
#
#   scripts/scale-dataset.sh postgres://user:pass@127.0.0.1/mirror_bench [FILES] [EVENTS]
#
# The dataset is kept between runs: a rerun with the same FILES and EVENTS finds it (a comment on
# mirrored_files records what was built, and the row counts are checked) and only applies
# pending migrations. REBUILD=1 starts over. Secondary indexes are dropped during the load and
# rebuilt once at the end (a sorted build instead of 100M random index inserts); triggers on
# mirrored_files are off during the load and the counters they keep are set at the end.
set -euo pipefail
URL=${1:?usage: scale-dataset.sh DATABASE_URL [FILES] [EVENTS]}
FILES=${2:-10000000}
EVENTS=${3:-100000000}
cd "$(dirname "$0")/.."
BIN=${MIRRORCTL_BIN:-target/release/mirrorctl}
[ -x "$BIN" ] || cargo build --release --quiet
t0=$(date +%s)
MIRRORCTL_DATABASE_URL="$URL" "$BIN" migrate >&2

MARK="scale-dataset files=$FILES events=$EVENTS"
have=$(psql "$URL" -Atc "SELECT obj_description('mirrored_files'::regclass, 'pg_class')")
if [ "${REBUILD:-}" != 1 ] && [ "$have" = "$MARK" ] &&
   [ "$(psql "$URL" -Atc 'SELECT count(*) FROM mirrored_files')" = "$FILES" ]; then
  echo "scale dataset already present ($MARK); REBUILD=1 to start over" >&2
  exit 0
fi

psql "$URL" -v ON_ERROR_STOP=1 -q -v files="$FILES" -v events="$EVENTS" <<'SQL'
\timing on
SET work_mem = '512MB';
SET maintenance_work_mem = '1GB';
-- Start from empty tables so the script can be rerun.
COMMENT ON TABLE mirrored_files IS NULL;
TRUNCATE download_events, download_stats_hourly, mirrored_files, origin_files, operations RESTART IDENTITY CASCADE;

-- Secondary indexes go during the load and come back at the end, from their own definitions.
CREATE TEMP TABLE saved_indexes AS
SELECT indexname, indexdef FROM pg_indexes
WHERE schemaname = current_schema()
  AND tablename IN ('origin_files', 'mirrored_files', 'download_events')
  AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid IN
      ('origin_files'::regclass, 'mirrored_files'::regclass, 'download_events'::regclass));
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT indexname FROM saved_indexes LOOP
    EXECUTE format('DROP INDEX %I', r.indexname);
  END LOOP;
END $$;
ALTER TABLE mirrored_files DISABLE TRIGGER USER;

-- Monthly partitions for the 7 months the events span (names: download_events_yYYYYmMM).
DO $$
DECLARE m date := date_trunc('month', now() - interval '200 days');
BEGIN
  WHILE m <= date_trunc('month', now()) + interval '1 month' LOOP
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF download_events FOR VALUES FROM (%L) TO (%L)',
                   'download_events_y' || to_char(m, 'YYYY') || 'm' || to_char(m, 'MM'),
                   m::timestamptz, (m + interval '1 month')::timestamptz);
    m := m + interval '1 month';
  END LOOP;
END $$;

INSERT INTO origin_files (source, remote_id, file_name, url, size, etag, updated_at)
SELECT 'http', g::text, 'file-' || g || '.zip', 'mods/' || (g / 3) || '/' || g || '/file-' || g || '.zip',
       (1024 + (hashint4(g) & 2147483647) % (64 * 1024 * 1024))::bigint, md5(g::text), now() - interval '200 days'
FROM generate_series(1, :files) g;

-- Skewed popularity: file = files * u^4 picks low ids far more often. One day at a time, each
-- day in time order, as the data plane writes them, so ids grow with occurred_at.
CREATE TEMP TABLE params AS SELECT :files::bigint AS files, :events::bigint AS events;
DO $$
DECLARE
  p params%ROWTYPE;
  day0 timestamptz := now() - interval '180 days';
  d int;
BEGIN
  SELECT * INTO p FROM params;
  FOR d IN 0..179 LOOP
    INSERT INTO download_events (occurred_at, file_id, cache_hit, bytes, duration_ms, status)
    SELECT t, f, r > 0.08, CASE WHEN r < 0.002 THEN 0 ELSE 1024 + f % 65536 END,
           (5 + r * 900)::int, CASE WHEN r < 0.002 THEN 502 ELSE 200 END
    FROM (SELECT day0 + (d || ' days')::interval + random() * interval '1 day' AS t,
                 1 + floor(p.files * power(random(), 4))::bigint AS f, random() AS r
          FROM generate_series(1, p.events / 180 + CASE WHEN d < p.events % 180 THEN 1 ELSE 0 END)) s
    ORDER BY t;
  END LOOP;
END $$;

INSERT INTO download_stats_hourly (hour, hits, misses, errors, bytes_hit, bytes_miss)
SELECT date_trunc('hour', occurred_at, 'UTC'),
       count(*) FILTER (WHERE status < 500 AND cache_hit),
       count(*) FILTER (WHERE status < 500 AND NOT cache_hit),
       count(*) FILTER (WHERE status >= 500),
       coalesce(sum(bytes) FILTER (WHERE status < 500 AND cache_hit), 0),
       coalesce(sum(bytes) FILTER (WHERE status < 500 AND NOT cache_hit), 0)
FROM download_events GROUP BY 1;

-- Per-file counters from the events, then the files with them (one write per row, no UPDATE).
CREATE TEMP TABLE per_file AS
SELECT file_id, count(*) AS n, sum(bytes) AS b, max(occurred_at) AS last
FROM download_events WHERE status < 500 GROUP BY file_id;
ANALYZE per_file;

INSERT INTO mirrored_files (origin_file_id, bucket, key, size, sha256, etag, mirrored_at, is_stale,
                            stale_reason, download_count, bytes_served, last_downloaded_at)
SELECT o.id, 'mirror', o.url, o.size, NULL, o.etag, now() - ((o.id % 190) || ' days')::interval,
       o.id % 97 = 0, CASE WHEN o.id % 97 = 0 THEN 'origin size changed' END,
       coalesce(s.n, 0), coalesce(s.b, 0), s.last
FROM origin_files o LEFT JOIN per_file s ON s.file_id = o.id
ORDER BY o.id;

UPDATE mirror_counters SET objects = c.objects, bytes = c.bytes, stale = c.stale
FROM (SELECT count(*) AS objects, coalesce(sum(size), 0) AS bytes, count(*) FILTER (WHERE is_stale) AS stale
      FROM mirrored_files WHERE deleted_at IS NULL) c
WHERE id = 1;
ALTER TABLE mirrored_files ENABLE TRIGGER USER;

DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT indexname, indexdef FROM saved_indexes LOOP
    RAISE NOTICE 'index %', r.indexname;
    -- A partitioned table's index reads "ON ONLY": built that way it would cover no partition.
    EXECUTE replace(r.indexdef, ' ON ONLY ', ' ON ');
  END LOOP;
END $$;

VACUUM ANALYZE origin_files, mirrored_files, download_events, download_stats_hourly, mirror_counters;
SELECT (SELECT count(*) FROM mirrored_files) AS files, (SELECT count(*) FROM download_events) AS events;
SQL
psql "$URL" -q -c "COMMENT ON TABLE mirrored_files IS '$MARK'"
echo "scale dataset ready in $(( $(date +%s) - t0 ))s" >&2
