#!/usr/bin/env bash
# Benchmark of `archive run` (export + upload + read-back verify + drop) against
# `pg_dump -Fc -t <partition>` of the same PostgreSQL partition: wall time, output size and peak
# RSS (/usr/bin/time -v), side by side, on one month of >= 1,500,000 events.
#
#   scripts/bench-archive.sh                      # fills a fresh DB with scripts/scale-dataset.sh
#   BENCH_DB=mirror_bench REUSE_DATASET=1 scripts/bench-archive.sh   # a DB it already filled
#   OWN_DATA=1 ROWS=3000000 scripts/bench-archive.sh   # one synthetic month (generate_series)
#
# Needs PostgreSQL (scripts/test.sh sets up the role) and builds the release binary. The S3
# endpoint is the embedded demo's s3s-fs server (`mirrorctl demo up`) in its own process, so the
# archive run's RSS is mirrorctl alone. Prints a Markdown block for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROWS=${ROWS:-1600000}
YEAR=${YEAR:-2025}
MONTH=${MONTH:-01}
PART="download_events_y${YEAR}m${MONTH}"
PG_PORT=${PG_PORT:-$(pg_lsclusters -h 2>/dev/null | awk '$2=="main" && $4=="online" {print $3; exit}')}
PG_PORT=${PG_PORT:-5432}
DB=${BENCH_DB:-mirrorctl_bench}
ADMIN_URL="postgres://mirrorctl:mirrorctl@127.0.0.1:$PG_PORT/postgres"
DB_URL="postgres://mirrorctl:mirrorctl@127.0.0.1:$PG_PORT/$DB"
WORK=$(mktemp -d /tmp/mirrorctl-bench.XXXXXX)
DEMO_PID=""
cleanup() {
  [ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '== %s\n' "$*" >&2; }

cargo build --release --quiet --bin mirrorctl
BIN="$ROOT/target/release/mirrorctl"

if [ -z "${REUSE_DATASET:-}" ]; then
  log "fresh database $DB"
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
fi

log "S3 endpoint: mirrorctl demo up (s3s-fs) in $WORK/demo"
MIRRORCTL_DEMO_DIR="$WORK/demo" "$BIN" demo up >"$WORK/demo.out" 2>"$WORK/demo.err" &
DEMO_PID=$!
for _ in $(seq 1 600); do grep -q '^export AWS_ENDPOINT_URL' "$WORK/demo.out" 2>/dev/null && break; sleep 0.5; done
ENDPOINT=$(sed -n 's/^export AWS_ENDPOINT_URL=//p' "$WORK/demo.out")
KEY=$(sed -n 's/^export AWS_ACCESS_KEY_ID=//p' "$WORK/demo.out")
SECRET=$(sed -n 's/^export AWS_SECRET_ACCESS_KEY=//p' "$WORK/demo.out")
[ -n "$ENDPOINT" ] || { cat "$WORK/demo.err" >&2; exit 1; }

cat >"$WORK/config.toml" <<TOML
[database]
url = "$DB_URL"

[buckets.mirror]
bucket = "mirror"
endpoint = "$ENDPOINT"
path_style = true
access_key_id = "$KEY"
secret_access_key = "$SECRET"

[buckets.archive]
bucket = "archive"
endpoint = "$ENDPOINT"
path_style = true
access_key_id = "$KEY"
secret_access_key = "$SECRET"
prefix = "bench/"
TOML
M() { "$BIN" --config "$WORK/config.toml" "$@"; }
M migrate >/dev/null

if [ -z "${OWN_DATA:-}" ]; then
  # The 10,000,000-event dataset (REUSE_DATASET=1: already filled by scale-dataset.sh).
  [ -n "${REUSE_DATASET:-}" ] || { log "dataset: scripts/scale-dataset.sh"; MIRRORCTL_BIN="$BIN" scripts/scale-dataset.sh "$DB_URL" 1000000 10000000 >&2; }
  # The newest month that ended more than 3 months ago: full, and eligible for archiving.
  PART="download_events_$(date -u -d "$(date -u +%Y-%m-01) -4 months" +y%Ym%m)"
  log "partition $PART: $(psql "$DB_URL" -Atc "SELECT count(*) FROM $PART") rows"
else
  log "dataset: $ROWS events in $PART (generate_series)"
  START="$YEAR-$MONTH-01 00:00:00+00"
  psql "$DB_URL" -q -v ON_ERROR_STOP=1 <<SQL
CREATE TABLE IF NOT EXISTS $PART PARTITION OF download_events
  FOR VALUES FROM ('$START') TO (('$START'::timestamptz) + interval '1 month');
SELECT setseed(0.42);
-- Downloads spread evenly over the month in time order, Zipf-like file popularity, 85% hits,
-- ~1% errors, sizes up to 64 MiB.
INSERT INTO download_events (occurred_at, file_id, cache_hit, bytes, duration_ms, status)
SELECT '$START'::timestamptz + (g * (interval '1 month' / $ROWS)) + (random() * interval '1 second'),
       1 + floor(power(random(), 3) * 20000)::bigint,
       random() < 0.85,
       floor(random() * 64 * 1024 * 1024)::bigint,
       floor(random() * 3000)::int,
       CASE WHEN random() < 0.01 THEN 503 WHEN random() < 0.02 THEN 404 ELSE 200 END
FROM generate_series(0, $ROWS - 1) AS g;
VACUUM ANALYZE $PART;
SQL
fi
N=$(psql "$DB_URL" -Atc "SELECT count(*) FROM $PART")
TABLE_BYTES=$(psql "$DB_URL" -Atc "SELECT pg_total_relation_size('$PART')")
log "$PART: $N rows, $TABLE_BYTES bytes in PostgreSQL"

measure() { # name, then the command; prints "wall_s rss_kib"
  local name=$1; shift
  /usr/bin/time -v "$@" >"$WORK/$name.out" 2>"$WORK/$name.time" || { cat "$WORK/$name.time" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/$name.time")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
  echo "$wall $rss"
}

# Warm the cache once so neither side pays for the first read from disk.
psql "$DB_URL" -qAtc "SELECT count(*) FROM $PART" >/dev/null

log "pg_dump -Fc -t $PART"
read -r DUMP_WALL DUMP_RSS < <(measure dump pg_dump -Fc -t "$PART" -f "$WORK/$PART.dump" "$DB_URL")
DUMP_BYTES=$(stat -c %s "$WORK/$PART.dump")

log "mirrorctl archive run --partition $PART --yes"
read -r ARCH_WALL ARCH_RSS < <(measure archive "$BIN" --config "$WORK/config.toml" --headless -o json archive run --partition "$PART" --yes)
ARCH_BYTES=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$WORK/archive.out")
ARCH_ROWS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rows"])' "$WORK/archive.out")

log "mirrorctl archive restore $PART"
read -r REST_WALL REST_RSS < <(measure restore "$BIN" --config "$WORK/config.toml" --headless archive restore "$PART")
RESTORED=$(psql "$DB_URL" -Atc "SELECT count(*) FROM $PART")

cat <<MD

### $(date -u +%Y-%m-%d) — $PART, $N rows ($(( TABLE_BYTES / 1048576 )) MiB in PostgreSQL $(psql "$DB_URL" -Atc 'SHOW server_version' | cut -d' ' -f1))

Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); S3 = \`mirrorctl demo up\` (s3s-fs, loopback).

| command | wall | output | peak RSS |
| --- | ---: | ---: | ---: |
| \`pg_dump -Fc -t $PART -f $PART.dump \$DB\` | $DUMP_WALL | $DUMP_BYTES B ($(( DUMP_BYTES / 1048576 )) MiB) | $(( DUMP_RSS / 1024 )) MiB |
| \`mirrorctl --headless archive run --partition $PART --yes\` (export + upload + verify + drop) | $ARCH_WALL | $ARCH_BYTES B ($(( ARCH_BYTES / 1048576 )) MiB), $ARCH_ROWS rows | $(( ARCH_RSS / 1024 )) MiB |
| \`mirrorctl --headless archive restore $PART\` | $REST_WALL | $RESTORED rows back | $(( REST_RSS / 1024 )) MiB |

Parquet / dump size: $(python3 -c "print(f'{$ARCH_BYTES / $DUMP_BYTES:.0%}')"). Reproduce: \`scripts/bench-archive.sh\` (or \`BENCH_DB=… REUSE_DATASET=1 scripts/bench-archive.sh\`).
MD
