#!/usr/bin/env bash
# Fills a PostgreSQL database with the benchmark dataset: 1,000,000 mirrored files and
# 10,000,000 download events over the last 6 months (≈1.7M per monthly partition), with a
# skewed popularity curve, then builds the rollups and per-file counters the write path keeps.
# Everything is generated server-side (INSERT … SELECT generate_series): no rows cross the wire.
#
#   scripts/scale-dataset.sh postgres://user:pass@127.0.0.1/mirror_bench [FILES] [EVENTS]
set -euo pipefail
URL=${1:?usage: scale-dataset.sh DATABASE_URL [FILES] [EVENTS]}
FILES=${2:-1000000}
EVENTS=${3:-10000000}
cd "$(dirname "$0")/.."
BIN=${MIRRORCTL_BIN:-target/release/mirrorctl}
[ -x "$BIN" ] || cargo build --release --quiet
t0=$(date +%s)
MIRRORCTL_DATABASE_URL="$URL" "$BIN" migrate >&2

psql "$URL" -v ON_ERROR_STOP=1 -q -v files="$FILES" -v events="$EVENTS" <<'SQL'
\timing on
-- Start from empty tables so the script can be rerun.
TRUNCATE download_events, download_stats_hourly, mirrored_files, origin_files, operations RESTART IDENTITY CASCADE;
UPDATE mirror_counters SET objects = 0, bytes = 0, stale = 0;

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

INSERT INTO mirrored_files (origin_file_id, bucket, key, size, sha256, etag, mirrored_at, is_stale, stale_reason)
SELECT id, 'mirror', url, size, NULL, etag, now() - ((id % 190) || ' days')::interval,
       id % 97 = 0, CASE WHEN id % 97 = 0 THEN 'origin size changed' END
FROM origin_files;

-- Skewed popularity: file = files * u^4 picks low ids far more often. Rows go in in time
-- order, as the data plane writes them, so ids grow with occurred_at as in production.
INSERT INTO download_events (occurred_at, file_id, cache_hit, bytes, duration_ms, status)
SELECT t, f, r > 0.08, CASE WHEN r < 0.002 THEN 0 ELSE 1024 + f % 65536 END,
       (5 + r * 900)::int, CASE WHEN r < 0.002 THEN 502 ELSE 200 END
FROM (SELECT now() - random() * interval '180 days' AS t,
             1 + floor(:files * power(random(), 4))::bigint AS f, random() AS r
      FROM generate_series(1, :events)) s
ORDER BY t;

INSERT INTO download_stats_hourly (hour, hits, misses, errors, bytes_hit, bytes_miss)
SELECT date_trunc('hour', occurred_at, 'UTC'),
       count(*) FILTER (WHERE status < 500 AND cache_hit),
       count(*) FILTER (WHERE status < 500 AND NOT cache_hit),
       count(*) FILTER (WHERE status >= 500),
       coalesce(sum(bytes) FILTER (WHERE status < 500 AND cache_hit), 0),
       coalesce(sum(bytes) FILTER (WHERE status < 500 AND NOT cache_hit), 0)
FROM download_events GROUP BY 1;

UPDATE mirrored_files m SET download_count = s.n, bytes_served = s.b, last_downloaded_at = s.last
FROM (SELECT file_id, count(*) AS n, sum(bytes) AS b, max(occurred_at) AS last
      FROM download_events WHERE status < 500 GROUP BY file_id) s
WHERE m.id = s.file_id;

VACUUM ANALYZE origin_files, mirrored_files, download_events, download_stats_hourly, mirror_counters;
SELECT (SELECT count(*) FROM mirrored_files) AS files, (SELECT count(*) FROM download_events) AS events;
SQL
echo "scale dataset ready in $(( $(date +%s) - t0 ))s" >&2
