#!/usr/bin/env bash
# Read-path latency of `stats` and `files` (whole process: start, connect, query, print):
# on the 1M-file / 10M-event PostgreSQL dataset and on the demo's SQLite, plus
# `--demo --headless stats` from process start with the demo already generated.
#
#   scripts/bench-foundation.sh postgres://mirrorctl:mirrorctl@127.0.0.1/mirror_bench
# Set SKIP_DATASET=1 to reuse a database that scale-dataset.sh already filled.
set -euo pipefail
URL=${1:?usage: bench-foundation.sh DATABASE_URL}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=target/release/mirrorctl
RUNS=${RUNS:-30}
[ "${SKIP_DATASET:-}" = 1 ] || scripts/scale-dataset.sh "$URL" 1000000 10000000

echo "== PostgreSQL ($(psql "$URL" -Atc 'SELECT count(*) FROM mirrored_files') files, $(psql "$URL" -Atc 'SELECT count(*) FROM download_events') events)"
for w in 24h 7d 30d all; do
  MIRRORCTL_DATABASE_URL="$URL" scripts/latency.py "$RUNS" "$BIN" --headless stats --window "$w" -o json
done
for s in downloads size last-downloaded name; do
  MIRRORCTL_DATABASE_URL="$URL" scripts/latency.py "$RUNS" "$BIN" --headless files --sort "$s" --limit 100 -o json
done

echo "== demo (SQLite)"
export MIRRORCTL_DEMO_DIR=${MIRRORCTL_DEMO_DIR:-$(mktemp -d)}
"$BIN" --demo --headless stats >/dev/null   # generate once
scripts/latency.py "$RUNS" "$BIN" --demo --headless stats
scripts/latency.py "$RUNS" "$BIN" --demo --headless stats --window all
scripts/latency.py "$RUNS" "$BIN" --demo --headless files --sort downloads --limit 100
DB="sqlite://$MIRRORCTL_DEMO_DIR/mirror.db"
MIRRORCTL_DATABASE_URL="$DB" scripts/latency.py "$RUNS" "$BIN" --headless stats
MIRRORCTL_DATABASE_URL="$DB" scripts/latency.py "$RUNS" "$BIN" --headless files --sort downloads --limit 100
