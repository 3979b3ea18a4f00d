#!/usr/bin/env bash
# The backup down under a steady write load (issue 16's fault case): main and backup on two
# separate single-node Garage servers, PostgreSQL for the inventory and the task table,
# `mirrorctl serve` with the S3 front and its replication workers. A paced PUT load goes through
# the front (examples/s3_put_load.rs); after a warm-up the backup's Garage is killed (SIGKILL)
# for OUTAGE_SECS, then started again on the same data and ports. `mirrorctl --headless
# replication status -o json` is sampled every SAMPLE_SECS throughout and printed as a table
# (pending, pending bytes, lag = age of the oldest task not done, failed, drain rate, ETA) next
# to the wall time since the outage began, so the lag can be checked against it. Then: how long
# after the backup came back every task recorded before it came back was done, how long until
# the queue was empty once the load stopped, and `mirrorctl --headless drift -o json` (main,
# backup and inventory must agree).
#
#   scripts/bench-backup-outage.sh
#   OUTAGE_SECS=30 WARMUP_SECS=20 TAIL_SECS=30 scripts/bench-backup-outage.sh   # a trial run
#
# Defaults: RATE=50 PUT/s of SIZE=65536 bytes, CONC=16 at once, WARMUP_SECS=60,
# OUTAGE_SECS=300, TAIL_SECS=180 of load after the backup is back, SAMPLE_SECS=10,
# WORKERS=16 replication workers. Needs Garage, PostgreSQL 15 (started if it is not running).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-50}
SIZE=${SIZE:-65536}
CONC=${CONC:-16}
WARMUP_SECS=${WARMUP_SECS:-60}
OUTAGE_SECS=${OUTAGE_SECS:-300}
TAIL_SECS=${TAIL_SECS:-180}
SAMPLE_SECS=${SAMPLE_SECS:-10}
WORKERS=${WORKERS:-16}
WORK=$(mktemp -d /tmp/mirrorctl-bench-outage.XXXXXX)
MAIN_PID="" BACKUP_PID="" SERVE_PID="" LOAD_PID="" STARTED_PG="" PG_ADMIN="" DB=""
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  for p in "$LOAD_PID" "$SERVE_PID" "$MAIN_PID" "$BACKUP_PID"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [ -n "$DB" ] && psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "$STARTED_PG" ] && pg_ctlcluster "$STARTED_PG" main stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
LOAD_START=$(cut -d" " -f1-3 /proc/loadavg)

log "building (release)"
cargo build --release --quiet --bin mirrorctl --example s3_put_load
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cp "$TARGET/release/mirrorctl" "$TARGET/release/examples/s3_put_load" "$WORK/"
CODE="release build of $(git rev-parse --short HEAD)$([ -z "$(git status --porcelain -- src migrations examples Cargo.toml Cargo.lock)" ] || echo ' with uncommitted changes')"

. scripts/postgres.sh
start_postgres "${PG_VERSION:-15}"
DB="bench_outage_$$"
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB" >/dev/null
URL="$PG_BASE/$DB"
sql() { psql "$URL" -Atc "$1"; }

. scripts/garage.sh
start_garage "$WORK/gmain" 20G
MAIN_PID=$GARAGE_PID MAIN_ENDPOINT=$GARAGE_ENDPOINT MAIN_KEY=$GARAGE_KEY MAIN_SECRET=$GARAGE_SECRET
start_garage "$WORK/gbackup" 20G
BACKUP_PID=$GARAGE_PID BACKUP_ENDPOINT=$GARAGE_ENDPOINT BACKUP_KEY=$GARAGE_KEY BACKUP_SECRET=$GARAGE_SECRET
s3() { # s3 KEY SECRET curl-args...
  local k=$1 s=$2; shift 2
  curl -sf --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --user "$k:$s" "$@"
}
s3 "$MAIN_KEY" "$MAIN_SECRET" -X PUT "$MAIN_ENDPOINT/outage-main" >/dev/null
s3 "$BACKUP_KEY" "$BACKUP_SECRET" -X PUT "$BACKUP_ENDPOINT/outage-backup" >/dev/null
# The backup's Garage again, on its own config, data and ports (start_garage made them).
restart_backup() {
  RUST_LOG=warn "$(garage_bin)" -c "$WORK/gbackup/garage.toml" server >>"$WORK/gbackup/garage.log" 2>&1 &
  BACKUP_PID=$!
  for _ in $(seq 1 300); do
    s3 "$BACKUP_KEY" "$BACKUP_SECRET" -o /dev/null "$BACKUP_ENDPOINT/outage-backup?list-type=2&max-keys=1" && return
    sleep 0.1
  done
  echo "the backup Garage did not come back" >&2; tail "$WORK/gbackup/garage.log" >&2; exit 1
}

PORT=$(free_port) S3_PORT=$(free_port)
APP_KEY=BENCHAPPKEY0001 APP_SECRET=bench-app-secret-0123456789
cat > "$WORK/config.toml" <<TOML
[database]
url = "$URL"
max_connections = 32

[buckets.mirror]
bucket = "outage-main"
endpoint = "$MAIN_ENDPOINT"
access_key_id = "$MAIN_KEY"
secret_access_key = "$MAIN_SECRET"

[buckets.backup]
bucket = "outage-backup"
endpoint = "$BACKUP_ENDPOINT"
access_key_id = "$BACKUP_KEY"
secret_access_key = "$BACKUP_SECRET"

[serve]
listen = "127.0.0.1:$PORT"
s3_listen = "127.0.0.1:$S3_PORT"

[s3_front]
replication_workers = $WORKERS

[[s3_front.clients]]
name = "bench"
access_key_id = "$APP_KEY"
secret_access_key = "$APP_SECRET"
buckets = ["outage-main"]
TOML
M=("$WORK/mirrorctl" --config "$WORK/config.toml")
"${M[@]}" migrate >/dev/null
"${M[@]}" serve >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" || { cat "$WORK/serve.log" >&2; exit 1; }

# --- The load, and the outage in the middle of it -------------------------------------------------
N=$((RATE * (WARMUP_SECS + OUTAGE_SECS + TAIL_SECS)))
log "load: $N PUTs of $SIZE bytes at $RATE/s through the front; backup down from ${WARMUP_SECS}s for ${OUTAGE_SECS}s"
T0=$(date +%s.%N)
"$WORK/s3_put_load" "http://127.0.0.1:$S3_PORT" "$APP_KEY" "$APP_SECRET" outage-main load/ \
  "$N" "$SIZE" "$CONC" "$RATE" >"$WORK/load.json" &
LOAD_PID=$!
since() { python3 -c "import time; print(f'{time.time()-$1:.1f}')"; }

KILLED_AT="" BACK_AT="" BACK_DB="" SAMPLES="$WORK/samples.txt"
sample() { # one row: t, phase, since outage began, then the status figures
  local now phase
  now=$(date +%s.%N)
  if [ -z "$KILLED_AT" ]; then phase=warm-up; elif [ -z "$BACK_AT" ]; then phase=outage; else phase=back; fi
  "${M[@]}" --headless replication status -o json >"$WORK/status.json" 2>/dev/null || true
  python3 - "$now" "$T0" "${KILLED_AT:-}" "$phase" "$WORK/status.json" <<'PY' >>"$SAMPLES"
import json, sys
now, t0, killed, phase = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    s = json.load(open(sys.argv[5]))
except ValueError:
    print(f"{now - t0:7.1f}  {phase:8}  (status unavailable)")
    sys.exit()
since = f"{now - float(killed):7.1f}" if killed else "      -"
eta = "-" if s["eta_s"] is None else f"{s['eta_s']:.0f}"
print(f"{now - t0:7.1f}  {phase:8}  {since}  {s['pending']:7d}  {s['pending_bytes'] / 2**20:9.1f}  "
      f"{s['lag_s']:7.1f}  {s['failed']:6d}  {s['in_flight']:6d}  {s['drain_per_s']:7.1f}  {eta:>6}")
PY
  tail -1 "$SAMPLES" >&2
}
printf '%7s  %-8s  %7s  %7s  %9s  %7s  %6s  %6s  %7s  %6s\n' "t (s)" phase "outage" pending "MiB" "lag (s)" failed inflt "drain/s" "ETA s" >"$SAMPLES"

# Samples every SAMPLE_SECS on the clock of the run, whatever a sample costs.
next=0
tick() { # waits until the next sample is due, takes it
  local due; due=$(python3 -c "print($T0 + $next)")
  python3 -c "import time; time.sleep(max(0, $due - time.time()))"
  sample
  next=$((next + SAMPLE_SECS))
}
while python3 -c "import sys,time; sys.exit(0 if time.time() < $T0 + $WARMUP_SECS else 1)"; do tick; done
python3 -c "import time; time.sleep(max(0, $T0 + $WARMUP_SECS - time.time()))"
log "killing the backup Garage (pid $BACKUP_PID)"
kill -KILL "$BACKUP_PID"; wait "$BACKUP_PID" 2>/dev/null || true
KILLED_AT=$(date +%s.%N)
KILLED_DB=$(sql "SELECT now()")
while python3 -c "import sys,time; sys.exit(0 if time.time() < $KILLED_AT + $OUTAGE_SECS else 1)"; do tick; done
python3 -c "import time; time.sleep(max(0, $KILLED_AT + $OUTAGE_SECS - time.time()))"
log "starting the backup Garage again"
restart_backup
BACK_AT=$(date +%s.%N)
BACK_DB=$(sql "SELECT now()")
OUTAGE_WALL=$(python3 -c "print(f'{$BACK_AT - $KILLED_AT:.1f}')")
# The outage's backlog is drained once every task recorded before the backup was back is done.
BACKLOG_AT_BACK=$(sql "SELECT count(*) FROM replication_tasks WHERE state <> 'done' AND created_at < '$BACK_DB'")
DRAINED_AT=""
while kill -0 "$LOAD_PID" 2>/dev/null || [ "$(sql "SELECT count(*) FROM replication_tasks WHERE state <> 'done'")" != 0 ]; do
  if [ -z "$DRAINED_AT" ] && [ "$(sql "SELECT count(*) FROM replication_tasks WHERE state <> 'done' AND created_at < '$BACK_DB'")" = 0 ]; then
    DRAINED_AT=$(date +%s.%N)
    log "the outage's backlog drained $(python3 -c "print(f'{$DRAINED_AT - $BACK_AT:.1f}')") s after the backup was back"
  fi
  if python3 -c "import sys,time; sys.exit(0 if time.time() >= $T0 + $next else 1)"; then sample; next=$((next + SAMPLE_SECS)); fi
  if python3 -c "import sys,time; sys.exit(0 if time.time() > $BACK_AT + 1800 else 1)"; then
    log "the queue did not drain within 30 minutes of the backup's return"; break
  fi
  sleep 0.5
done
wait "$LOAD_PID" || true
LOAD_PID=""
EMPTY_AT=$(date +%s.%N)
sample
DRAIN_S=$([ -n "$DRAINED_AT" ] && python3 -c "print(f'{$DRAINED_AT - $BACK_AT:.1f}')" || echo "not drained")

# --- Lag against the wall clock ------------------------------------------------------------------
LAG_CHECK=$(python3 - "$SAMPLES" <<'PY'
import sys
rows = []
for line in open(sys.argv[1]).read().splitlines()[1:]:
    f = line.split()
    if len(f) >= 10 and f[1] == "outage":
        rows.append((float(f[2]), float(f[5])))
if len(rows) >= 2:
    (s0, l0), (s1, l1) = rows[0], rows[-1]
    slope = (l1 - l0) / (s1 - s0) if s1 > s0 else float("nan")
    worst = max(abs(l - s) for s, l in rows)
    print(f"lag grew {l1 - l0:.1f} s over {s1 - s0:.1f} s of outage ({slope:.3f} s per s); "
          f"lag vs wall time since the outage began: at most {worst:.1f} s apart over {len(rows)} samples")
else:
    print("too few samples during the outage")
PY
)

# --- Convergence ---------------------------------------------------------------------------------
log "drift: main, backup and inventory"
DRIFT=$("${M[@]}" --headless drift -o json 2>"$WORK/drift.err" || true)
DRIFT_SUMMARY=$(python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
s = r['summary']
diffs = sum(v for k, v in s.items() if k not in ('same', 'pending'))
print(f\"{diffs} differences; main {r['main_objects']}, backup {r['backup_objects']}, inventory {r['inventory_rows']} rows; \" + ', '.join(f'{k} {v}' for k, v in s.items()))
" <<<"$DRIFT" 2>/dev/null || echo "drift failed: $(tail -1 "$WORK/drift.err")")
# `attempts` counts claims: a task copied at its first try has 1.
TASKS=$(sql "SELECT count(*) || ' tasks, ' || sum(CASE WHEN attempts > 1 THEN 1 ELSE 0 END) || ' claimed more than once, at most ' || coalesce(max(attempts), 0) || ' claims, ' || sum(CASE WHEN state <> 'done' THEN 1 ELSE 0 END) || ' not done' FROM replication_tasks")

echo
echo "code: $CODE; load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
echo "load: $RATE PUT/s of $SIZE bytes through the front, $CONC at once; backup Garage killed at ${WARMUP_SECS} s (PostgreSQL time $KILLED_DB), back after ${OUTAGE_WALL} s (PostgreSQL time $BACK_DB)"
echo
cat "$SAMPLES"
echo
echo "load generator: $(cat "$WORK/load.json")"
echo "lag: $LAG_CHECK"
echo "backlog when the backup came back: $BACKLOG_AT_BACK tasks recorded before it; all done ${DRAIN_S} s after its return"
echo "queue empty $(python3 -c "print(f'{$EMPTY_AT - $BACK_AT:.1f}')") s after the backup's return (the load ran until $(python3 -c "print(f'{$WARMUP_SECS + $OUTAGE_SECS + $TAIL_SECS}')") s at its pace)"
echo "task table: $TASKS"
echo "drift after draining: $DRIFT_SUMMARY"
