#!/usr/bin/env bash
# The S3 front of `mirrorctl serve`, side by side with Garage itself, on loopback (a
# single-node Garage for the main and backup buckets, PostgreSQL for the inventory):
#
#  1. PUT throughput: BENCH_PUTS objects of BENCH_SIZE bytes (default 3,000 of 64 KiB),
#     BENCH_CONC at once (default 32), straight to Garage and through the front, BENCH_ROUNDS
#     rounds (default 3) with the order alternating; the load is examples/s3_put_load.rs
#     (the AWS SDK). The front also records every write and replicates it meanwhile. A fourth
#     column PUTs straight to Garage and copies each object server-side into another bucket
#     right after (COPY_TO): Garage's own work for a replicated write, with no front at all,
#     which bounds what the front can reach while replicating on the same Garage and cores.
#  2. Lag: BENCH_RATE PUTs a second (default 200) for BENCH_LAG_SECS (default 30) through the
#     front; each task's lag (recorded -> copied to the backup) from the task table: p50, p99,
#     max, and how long the queue took to drain after the last PUT.
#  Convergence: two clients PUT the same BENCH_CONV keys (default 10,000) at once while the aws
#     CLI deletes 30 % of them; once the queue drained, `drift` main <-> backup <-> inventory.
#  3. Memory: serve's RSS sampled every 0.2 s while the aws CLI uploads a BENCH_BIG_MIB file
#     (default 2048) through the front (multipart, 8 MiB parts).
#
#   scripts/bench-s3front.sh
#   BENCH_PUTS=500 BENCH_LAG_SECS=10 BENCH_BIG_MIB=256 scripts/bench-s3front.sh
#   BENCH_SERVE_ARGS="--threads 1" scripts/bench-s3front.sh    # serve's own flags
set -euo pipefail
cd "$(dirname "$0")/.."
PUTS=${BENCH_PUTS:-3000}
SIZE=${BENCH_SIZE:-65536}
CONC=${BENCH_CONC:-32}
ROUNDS=${BENCH_ROUNDS:-3}
RATE=${BENCH_RATE:-200}
LAG_SECS=${BENCH_LAG_SECS:-30}
BIG_MIB=${BENCH_BIG_MIB:-2048}
WORK=$(mktemp -d /tmp/mirrorctl-bench-s3front.XXXXXX)
GARAGE_PID="" SERVE_PID="" STARTED_PG="" PG_ADMIN="" DB=""
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null || true
  [ -n "$GARAGE_PID" ] && kill "$GARAGE_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "$DB" ] && psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "$STARTED_PG" ] && pg_ctlcluster "$STARTED_PG" main stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
LOAD_START=$(cut -d" " -f1-3 /proc/loadavg)

log "building (release)"
cargo build --release --quiet --bin mirrorctl --example s3_put_load
T=${CARGO_TARGET_DIR:-target}/release
cp "$T/mirrorctl" "$T/examples/s3_put_load" "$WORK/"
CODE="release build of $(git rev-parse --short HEAD)$([ -z "$(git status --porcelain -- src migrations examples Cargo.toml Cargo.lock)" ] || echo ' with uncommitted changes')"

. scripts/postgres.sh
start_postgres "${PG_VERSION:-15}"
DB="bench_s3front_$$"
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
URL="$PG_BASE/$DB"

. scripts/garage.sh
start_garage "$WORK/garage" 20G
s3() { curl -sf --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --user "$GARAGE_KEY:$GARAGE_SECRET" "$@"; }
for b in bench-main bench-backup bench-direct bench-direct-copy; do s3 -X PUT "$GARAGE_ENDPOINT/$b" >/dev/null; done

PORT=$(free_port) S3_PORT=$(free_port)
APP_KEY=BENCHAPPKEY0001 APP_SECRET=bench-app-secret-0123456789
cat > "$WORK/config.toml" <<TOML
[database]
url = "$URL"
max_connections = 32

[buckets.mirror]
bucket = "bench-main"
endpoint = "$GARAGE_ENDPOINT"
access_key_id = "$GARAGE_KEY"
secret_access_key = "$GARAGE_SECRET"

[buckets.backup]
bucket = "bench-backup"
endpoint = "$GARAGE_ENDPOINT"
access_key_id = "$GARAGE_KEY"
secret_access_key = "$GARAGE_SECRET"

[serve]
listen = "127.0.0.1:$PORT"
s3_listen = "127.0.0.1:$S3_PORT"

[s3_front]
replication_workers = WORKERS

[[s3_front.clients]]
name = "bench"
access_key_id = "$APP_KEY"
secret_access_key = "$APP_SECRET"
buckets = ["bench-main"]
TOML
sed 's/WORKERS/0/' "$WORK/config.toml" > "$WORK/front-only.toml"
sed -i 's/WORKERS/16/' "$WORK/config.toml"
M=("$WORK/mirrorctl" --config "$WORK/config.toml")
"${M[@]}" migrate >/dev/null
start_serve() { # start_serve CONFIG
  # shellcheck disable=SC2086  # BENCH_SERVE_ARGS is split on purpose, e.g. "--threads 1"
  "$WORK/mirrorctl" --config "$1" serve ${BENCH_SERVE_ARGS:-} >>"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && return; sleep 0.1; done
  cat "$WORK/serve.log" >&2; exit 1
}
stop_serve() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""; }
FRONT="http://127.0.0.1:$S3_PORT"
printf '[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n' > "$WORK/aws-config"
load() { "$WORK/s3_put_load" "$@"; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read())['$1'])"; }

wait_drained() {
  local t0; t0=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    [ "$(psql "$URL" -Atc "SELECT count(*) FROM replication_tasks WHERE state <> 'done'")" = 0 ] && break
    sleep 0.1
  done
  python3 -c "import time; print(f'{time.time()-$t0:.1f}')"
}

# --- 1. PUT throughput ----------------------------------------------------------------------------
# Three columns: Garage directly; the front with replication off (serve.s3_front.replication_workers
# = 0: the front's own cost, the copies left for later); the front with replication on (every
# object also copied to the backup bucket on the same Garage meanwhile, so Garage writes twice).
log "PUT throughput: $PUTS x $SIZE bytes, $CONC at once, $ROUNDS rounds"
load "$GARAGE_ENDPOINT" "$GARAGE_KEY" "$GARAGE_SECRET" bench-direct warm/ 300 "$SIZE" "$CONC" >/dev/null
DIRECT=() FRONTS=() REPLICATING=() COPYING=()
put_round() { # put_round SIDE ROUND
  local out
  case $1 in
    direct) out=$(load "$GARAGE_ENDPOINT" "$GARAGE_KEY" "$GARAGE_SECRET" bench-direct "r$2/" "$PUTS" "$SIZE" "$CONC") ;;
    copying) out=$(COPY_TO=bench-direct-copy load "$GARAGE_ENDPOINT" "$GARAGE_KEY" "$GARAGE_SECRET" bench-direct "c$2/" "$PUTS" "$SIZE" "$CONC") ;;
    *) out=$(load "$FRONT" "$APP_KEY" "$APP_SECRET" bench-main "$1-r$2/" "$PUTS" "$SIZE" "$CONC") ;;
  esac
  [ "$(field errors <<<"$out")" = 0 ] || { echo "$1 round $2: errors: $out" >&2; exit 1; }
  echo "round $2 $1: $out" >&2
  field puts_per_s <<<"$out"
}
for r in $(seq 1 "$ROUNDS"); do
  start_serve "$WORK/front-only.toml"
  load "$FRONT" "$APP_KEY" "$APP_SECRET" bench-main warm/ 300 "$SIZE" "$CONC" >/dev/null
  if [ $((r % 2)) = 1 ]; then
    DIRECT+=("$(put_round direct "$r")"); FRONTS+=("$(put_round front "$r")")
  else
    FRONTS+=("$(put_round front "$r")"); DIRECT+=("$(put_round direct "$r")")
  fi
  stop_serve
  start_serve "$WORK/config.toml"
  wait_drained >/dev/null
  REPLICATING+=("$(put_round replicating "$r")")
  wait_drained >/dev/null
  stop_serve
  COPYING+=("$(put_round copying "$r")")
done
start_serve "$WORK/config.toml"
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MD=$(median "${DIRECT[@]}") MF=$(median "${FRONTS[@]}") MR=$(median "${REPLICATING[@]}")
MC=$(median "${COPYING[@]}")
RATIO_C=$(python3 -c "print(f'{$MC/$MD:.2f}')")
RATIO=$(python3 -c "print(f'{$MF/$MD:.2f}')")
RATIO_R=$(python3 -c "print(f'{$MR/$MD:.2f}')")

# --- 2. Lag at a sustained rate -------------------------------------------------------------------
N_LAG=$((RATE * LAG_SECS))
log "lag: $RATE PUTs/s for ${LAG_SECS}s ($N_LAG objects of $SIZE bytes)"
MARK=$(psql "$URL" -Atc "SELECT coalesce(max(id), 0) FROM replication_tasks")
out=$(load "$FRONT" "$APP_KEY" "$APP_SECRET" bench-main lag/ "$N_LAG" "$SIZE" 64 "$RATE")
echo "paced load: $out"
DRAIN=$(wait_drained)
LAG=$(psql "$URL" -Atc "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY x)::numeric, 3) || ' / ' ||
  round(percentile_cont(0.99) WITHIN GROUP (ORDER BY x)::numeric, 3) || ' / ' || round(max(x)::numeric, 3) || ' s over ' || count(*) || ' tasks'
  FROM (SELECT extract(epoch FROM finished_at - created_at) AS x FROM replication_tasks WHERE id > $MARK AND state = 'done') t")

# --- Convergence: concurrent clients writing, overwriting and deleting the same keys --------------
N_CONV=${BENCH_CONV:-10000}
log "convergence: two clients writing the same $N_CONV keys at once, a third deleting 30 % of them"
load "$FRONT" "$APP_KEY" "$APP_SECRET" bench-main conv/ "$N_CONV" 4096 16 > "$WORK/conv-a.json" &
A=$!
load "$FRONT" "$APP_KEY" "$APP_SECRET" bench-main conv/ "$N_CONV" 8192 16 > "$WORK/conv-b.json" &
B=$!
sleep 2
AWS_CONFIG_FILE="$WORK/aws-config" AWS_ACCESS_KEY_ID=$APP_KEY AWS_SECRET_ACCESS_KEY=$APP_SECRET \
  aws --endpoint-url "$FRONT" s3 rm --recursive --only-show-errors s3://bench-main/conv/ \
  --exclude '*' --include '0000[0-2]*' || true
wait "$A" "$B"
CONV_DRAIN=$(wait_drained)
DRIFT=$("${M[@]}" --headless drift -o json 2>/dev/null || true)
DRIFT_SUMMARY=$(python3 -c "import json,sys; s=json.loads(sys.stdin.read())['summary']; print(', '.join(f'{k} {v}' for k,v in s.items()))" <<<"$DRIFT")
CONV_OBJECTS=$(psql "$URL" -Atc "SELECT count(*) FROM backup_inventory WHERE NOT deleted AND path LIKE 'conv/%'")

# --- 3. RSS during a large multipart upload -------------------------------------------------------
BIG="$WORK/big.bin"
log "memory: a ${BIG_MIB} MiB upload with the aws CLI"
head -c "$((BIG_MIB * 1024 * 1024))" /dev/urandom > "$BIG"
RSS_BEFORE=$(awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status")
( while kill -0 "$SERVE_PID" 2>/dev/null; do awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status"; sleep 0.2; done ) > "$WORK/rss.txt" &
SAMPLER=$!
T0=$(date +%s.%N)
AWS_CONFIG_FILE="$WORK/aws-config" AWS_ACCESS_KEY_ID=$APP_KEY AWS_SECRET_ACCESS_KEY=$APP_SECRET \
  aws --endpoint-url "$FRONT" s3 cp "$BIG" s3://bench-main/big/big.bin --only-show-errors
T1=$(date +%s.%N)
wait_drained >/dev/null
kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true
RSS_MAX=$(sort -n "$WORK/rss.txt" | tail -1)
RSS_AFTER=$(awk '/VmRSS/ {print $2}' "/proc/$SERVE_PID/status")
BACKED=$(psql "$URL" -Atc "SELECT size || ' bytes, backed up: ' || is_backed_up FROM backup_inventory WHERE path = 'big/big.bin'")
rm -f "$BIG"

echo
echo "code: $CODE${BENCH_SERVE_ARGS:+, serve $BENCH_SERVE_ARGS}; load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "PUT throughput, $SIZE-byte objects, $CONC at once, median of $ROUNDS rounds of $PUTS:"
echo "  Garage direct: $MD PUT/s (rounds: ${DIRECT[*]})"
echo "  through the front, replication off: $MF PUT/s (rounds: ${FRONTS[*]}); front / direct: $RATIO"
echo "  through the front, replicating to the backup meanwhile: $MR PUT/s (rounds: ${REPLICATING[*]}); front / direct: $RATIO_R"
echo "  Garage direct, each object also copied server-side (no front): $MC PUT/s (rounds: ${COPYING[*]}); / direct: $RATIO_C"
echo "Lag at $RATE PUT/s for ${LAG_SECS}s (p50 / p99 / max): $LAG; drained ${DRAIN}s after the last PUT"
echo "Convergence: $(cat "$WORK/conv-a.json") / $(cat "$WORK/conv-b.json"); drained ${CONV_DRAIN}s after; $CONV_OBJECTS live conv/ objects; drift main/backup/inventory: $DRIFT_SUMMARY"
echo "RSS of serve during a ${BIG_MIB} MiB multipart upload: before $((RSS_BEFORE / 1024)) MiB, max $((RSS_MAX / 1024)) MiB, after $((RSS_AFTER / 1024)) MiB; upload $(python3 -c "print(f'{$T1-$T0:.1f}')") s; inventory: $BACKED"
