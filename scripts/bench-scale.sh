#!/usr/bin/env bash
# PostgreSQL at production scale (10M files / 100M events from scripts/scale-dataset.sh):
#  1. migrate: the pending migrations (the CONCURRENTLY index builds of 0012 and the pg_trgm
#     index) while writers update files and insert events; the writers' worst latency per
#     second, from pgbench run back to back in 5 s slices during the migration.
#  2. read paths: whole-process latency (scripts/latency.py) of stats over every window,
#     files page 1 / page 100,000 (--after the last id of page 99,999) / the last page in
#     every sort, file KEY, --filter (substring and ^prefix), purge --max-bytes --dry-run.
#
#   scripts/bench-scale.sh postgres://mirrorctl:mirrorctl@127.0.0.1/mirror_bench
# SKIP_MIGRATE=1 skips part 1 (e.g. on a rerun, once the migrations are applied). PARTS picks
# the read paths to time (default: "stats pages file filter purge").
set -euo pipefail
URL=${1:?usage: bench-scale.sh DATABASE_URL}
cd "$(dirname "$0")/.."
BIN=${MIRRORCTL_BIN:-target/release/mirrorctl}
[ -x "$BIN" ] || cargo build --release --quiet
RUNS=${RUNS:-30}
export MIRRORCTL_DATABASE_URL="$URL"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
q() { psql "$URL" -Atq -c "$1"; }

echo "== dataset: $(q 'SELECT count(*) FROM mirrored_files') files, $(q "SELECT to_char(sum(reltuples), 'FM999,999,999,999') FROM pg_class WHERE relkind = 'r' AND relname LIKE 'download\_events\_y%'") events (estimate)"

if [ "${SKIP_MIGRATE:-}" != 1 ]; then
  # The writers: a download as the data plane records it (counters and one event).
  cat > "$work/write.sql" <<'SQL'
\set id random(1, 10000000)
UPDATE mirrored_files SET download_count = download_count + 1, bytes_served = bytes_served + 4096, last_downloaded_at = now() WHERE id = :id;
INSERT INTO download_events (occurred_at, file_id, cache_hit, bytes, duration_ms, status) VALUES (now(), :id, true, 4096, 3, 200);
SQL
  "$BIN" migrate --dry-run
  writers() { # $1: a directory for the logs; runs until $1/done exists
    (
      cd "$1"
      while [ ! -e done ]; do
        pgbench -n -c 2 -R 100 -T 5 -f "$work/write.sql" -l --aggregate-interval=1 "$URL" >/dev/null 2>&1 || true
      done
    )
  }
  # Aggregated log lines: interval_start count sum sum2 min_us max_us …
  summary() {
    cat "$1"/pgbench_log.* | awk -v what="$2" '
      { n += $2; if ($6 > max) max = $6; if ($6 > 1000000) slow++; secs++ }
      END { printf "writers %s: %d transactions over %d s, worst %.1f ms, seconds with a transaction over 1 s: %d\n", what, n, secs, max / 1000, slow }'
    sort -k6 -n -r "$1"/pgbench_log.* | head -3 | awk '{ printf "  worst second: at %d (epoch) %d transactions, max %.1f ms\n", $1, $2, $6 / 1000 }'
  }
  mkdir -p "$work/base" "$work/during"
  writers "$work/base" &
  sleep 60
  touch "$work/base/done"
  wait
  summary "$work/base" "before migrate (60 s)"
  writers "$work/during" &
  sleep 6
  echo "migrate starts at $(date +%s) (epoch)"
  "$BIN" migrate
  echo "migrate ends at $(date +%s) (epoch)"
  sleep 6
  touch "$work/during/done"
  wait
  summary "$work/during" "during migrate"
fi

PARTS=" ${PARTS:-stats pages file filter purge} "
part() { [[ $PARTS == *" $1 "* ]]; }
echo "== read paths ($RUNS runs each, whole process):$PARTS"
lat() { scripts/latency.py "$RUNS" "$BIN" --headless "$@" -o json; }
if part stats; then for w in 24h 7d 30d all; do lat stats --window "$w"; done; fi
if part pages; then for s in downloads size last-downloaded name; do
  order=$(case $s in
    downloads) echo "download_count DESC, id DESC" ;;
    size) echo "size DESC, id DESC" ;;
    last-downloaded) echo "coalesce(last_downloaded_at, '-infinity'::timestamptz) DESC, id DESC" ;;
    name) echo "key COLLATE \"C\", id" ;;
  esac)
  # The last row of page 99,999 (50 rows a page): page 100,000 starts after it.
  cursor=$(q "SELECT id FROM mirrored_files WHERE deleted_at IS NULL ORDER BY $order OFFSET 4999949 LIMIT 1")
  lat files --sort "$s" --limit 50
  lat files --sort "$s" --limit 50 --after "$cursor"
  lat files --sort "$s" --limit 50 --last
done; fi
if part file; then
  key=$(q "SELECT key FROM mirrored_files WHERE id = 7654321")
  lat file "$key"
  lat file 7654321
fi
if part filter; then
  lat files --filter file-7654321 --limit 50
  lat files --filter '^mods/2551440/' --limit 50
  lat files --filter 'file-765432' --sort name --limit 50
  # Common words only: the sort's own index, read until a page matches.
  lat files --filter 'file-' --limit 50
fi
part purge || exit 0

# purge needs a mirror bucket in the config; a dry run only reads the database.
cat > "$work/config.toml" <<TOML
[database]
url = "$URL"
[buckets.mirror]
endpoint = "http://127.0.0.1:9"
bucket = "mirror"
region = "us-east-1"
access_key_id = "bench"
secret_access_key = "bench"
TOML
bytes=$(q "SELECT bytes FROM mirror_counters")
for free in 1073741824 107374182400; do
  max=$(( bytes - free ))
  # With the price (30 days of the candidates' downloads, the default) and without.
  for days in 30 0; do
    env -u MIRRORCTL_DATABASE_URL scripts/latency.py "$RUNS" "$BIN" --config "$work/config.toml" --headless purge --max-bytes "$max" --dry-run --impact-days "$days" -o json
  done
  env -u MIRRORCTL_DATABASE_URL "$BIN" --config "$work/config.toml" --headless purge --max-bytes "$max" --dry-run --impact-days 0 -o json | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  selects", r["candidates"], "files,", r["bytes"], "bytes")'
done
