#!/usr/bin/env bash
# Archive a big month while `mirrorctl serve` records downloads: are events lost, and how much
# does serve's latency move while the archive runs?
#
#   scripts/bench-archive-load.sh DATABASE_URL
#
# DATABASE_URL is a PostgreSQL database filled by scripts/scale-dataset.sh. The script
#   1. adds BENCH_FILES small mirrored files of its own (source 'bench-load', one run stamp per
#      run) and puts their objects into the S3 endpoint of `mirrorctl demo up` (s3s-fs over a
#      directory, in its own process), which also holds the archive;
#   2. starts `serve` and loads it with wrk at about BENCH_RATE requests/s (default 2000:
#      BENCH_CONNS connections, each pausing BENCH_PAUSE_MS between requests), in windows of
#      BENCH_WINDOW s (default 5; wrk restarts between windows, so every window has its p99);
#   3. measures BENCH_BEFORE windows without archiving, then runs
#      `archive run --partition P --yes` (P: BENCH_PARTITION, default the newest month that ended
#      more than 3 months ago) and keeps measuring windows until it is done, then one more;
#   4. stops the load, reads serve's counters, stops serve (it flushes what it holds), and
#      compares: download_events rows of the bench files = downloads serve answered, none
#      dropped; the archived month's recorded row count = its exact count before; verify.
#
# It destroys nothing but the archived month's partition (the archive keeps it: restore with
# the printed command). The bench files and their events stay (source 'bench-load'), and the
# S3 directory with the archive stays in BENCH_DIR (default /tmp/mirrorctl-bench-archive-load).
# Needs psql, wrk, curl, python3; builds the release binary unless MIRRORCTL_BIN names one.
set -euo pipefail
URL=${1:?usage: bench-archive-load.sh DATABASE_URL}
cd "$(dirname "$0")/.."
RATE=${BENCH_RATE:-2000}
PAUSE_MS=${BENCH_PAUSE_MS:-10}
# Each connection sends one request, waits for the answer, pauses PAUSE_MS: about
# CONNS / (pause + latency) requests/s. Sized for ~2.5 ms of mean latency on loopback.
CONNS=${BENCH_CONNS:-$(( (RATE * (PAUSE_MS * 10 + 25) + 9999) / 10000 ))}
WINDOW=${BENCH_WINDOW:-5}
BEFORE=${BENCH_BEFORE:-6}
NFILES=${BENCH_FILES:-200}
DIR=${BENCH_DIR:-/tmp/mirrorctl-bench-archive-load}
RUN=$(date -u +%Y%m%dT%H%M%S)
WORK="$DIR/run-$RUN"
mkdir -p "$WORK"
DEMO_PID="" SERVE_PID=""
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  for p in "$SERVE_PID" "$DEMO_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
for tool in psql wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
ulimit -n 65536 2>/dev/null || true
q() { psql "$URL" -v ON_ERROR_STOP=1 -Atq "$@"; }

if [ -n "${MIRRORCTL_BIN:-}" ]; then
  BIN=$(realpath "$MIRRORCTL_BIN")
else
  log "building (release)"
  cargo build --release --quiet --bin mirrorctl
  cp target/release/mirrorctl "$WORK/mirrorctl"   # a private copy: target/ may be rebuilt meanwhile
  BIN="$WORK/mirrorctl"
fi

PART=${BENCH_PARTITION:-download_events_$(date -u -d "$(date -u +%Y-%m-01) -4 months" +y%Ym%m)}
[[ "$PART" =~ ^download_events_y[0-9]{4}m[0-9]{2}$ ]] || { echo "bad partition name $PART" >&2; exit 2; }
[ "$(q -c "SELECT to_regclass('$PART') IS NOT NULL")" = t ] || { echo "$PART does not exist in $URL" >&2; exit 2; }
log "partition $PART: counting"
MONTH_ROWS=$(q -c "SELECT count(*) FROM $PART")
MONTH_SIZE=$(q -c "SELECT pg_size_pretty(pg_total_relation_size('$PART'))")
log "$PART: $MONTH_ROWS rows, $MONTH_SIZE"

log "S3 endpoint: mirrorctl demo up (s3s-fs) over $DIR/s3"
MIRRORCTL_DEMO_DIR="$DIR/s3" "$BIN" demo up >"$WORK/demo.out" 2>"$WORK/demo.err" &
DEMO_PID=$!
for _ in $(seq 1 600); do grep -q '^export AWS_ENDPOINT_URL' "$WORK/demo.out" 2>/dev/null && break; sleep 0.5; done
ENDPOINT=$(sed -n 's/^export AWS_ENDPOINT_URL=//p' "$WORK/demo.out")
KEY=$(sed -n 's/^export AWS_ACCESS_KEY_ID=//p' "$WORK/demo.out")
SECRET=$(sed -n 's/^export AWS_SECRET_ACCESS_KEY=//p' "$WORK/demo.out")
[ -n "$ENDPOINT" ] || { cat "$WORK/demo.err" >&2; exit 1; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$WORK/config.toml" <<TOML
[database]
url = "$URL"

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
prefix = "bench-load/"

[serve]
listen = "127.0.0.1:$PORT"
TOML
M() { "$BIN" --config "$WORK/config.toml" "$@"; }

log "$NFILES bench files (4 KiB each): rows, and objects in the mirror bucket"
q -v n="$NFILES" -v run="$RUN" >"$WORK/files.txt" <<'SQL'
WITH o AS (
  INSERT INTO origin_files (source, remote_id, file_name, url, size, etag, updated_at)
  SELECT 'bench-load', :'run' || '-' || g, g || '.bin', 'bench-load/' || :'run' || '/' || g || '.bin',
         4096, NULL, now() - interval '1 day'
  FROM generate_series(1, :n) g
  RETURNING id, url)
INSERT INTO mirrored_files (origin_file_id, bucket, key, size, sha256, etag, mirrored_at, is_stale)
SELECT id, 'mirror', url, 4096, NULL, NULL, now() - interval '1 day', false FROM o
RETURNING id || ' ' || key;
SQL
while read -r id key; do
  mkdir -p "$(dirname "$DIR/s3/s3/mirror/$key")"
  head -c 4096 /dev/urandom >"$DIR/s3/s3/mirror/$key"
  echo "/download/$id"
done <"$WORK/files.txt" >"$WORK/paths.txt"
IDS=$(awk '{printf "%s%s", sep, $1; sep=","}' "$WORK/files.txt")

# Not through M: $! must be serve itself, which the SIGTERM below is for.
"$BIN" --config "$WORK/config.toml" serve >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
CODE=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT$(head -1 "$WORK/paths.txt")")
[ "$CODE" = 200 ] || { echo "serve answered $CODE for a bench file" >&2; tail "$WORK/serve.log" >&2; exit 1; }

# Each connection pauses between requests, so the rate is about CONNS / (pause + latency).
cat >"$WORK/load.lua" <<'LUA'
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args)
  paths = {}
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  pause = tonumber(args[2])
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
delay = function() return pause end
LUA
window() { # window NAME: one window of load, its figures in $WORK/NAME.wrk
  wrk -t2 -c"$CONNS" -d"${WINDOW}s" --timeout 10s --latency -s "$WORK/load.lua" \
    "http://127.0.0.1:$PORT" -- "$WORK/paths.txt" "$PAUSE_MS" >"$WORK/$1.wrk" 2>&1
}
summary() { # summary NAME: requests, req/s, p50 ms, p99 ms, errors
  python3 - "$WORK/$1.wrk" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, u = re.match(r"([0-9.]+)(us|ms|s)", v).groups()
    return float(n) / 1000 if u == "us" else float(n) * 1000 if u == "s" else float(n)
req = int(re.search(r"(\d+) requests in", t).group(1))
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
err = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", t))
err += sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
print(req, rps, p50, p99, err)
PY
}

log "warm-up, then $BEFORE windows of ${WINDOW}s at ~$RATE req/s ($CONNS connections, ${PAUSE_MS} ms pause)"
window warm >/dev/null
: >"$WORK/windows.txt"
for n in $(seq 1 "$BEFORE"); do
  window "before-$n"; echo "before $(summary "before-$n")" >>"$WORK/windows.txt"
done

log "archive run --partition $PART under load"
T0=$(date +%s.%N)
( M --headless archive run --partition "$PART" --yes -o json >"$WORK/archive.json" 2>"$WORK/archive.err"
  echo $? >"$WORK/archive.rc" ) &
ARCHIVE_PID=$!
n=0
while kill -0 "$ARCHIVE_PID" 2>/dev/null; do
  n=$((n + 1)); window "during-$n"; echo "during $(summary "during-$n")" >>"$WORK/windows.txt"
done
wait "$ARCHIVE_PID" || true
T1=$(date +%s.%N)
window after-1; echo "after $(summary after-1)" >>"$WORK/windows.txt"

log "stopping the load; serve's counters, then serve stops (it flushes what it holds)"
sleep 6
METRICS=$(curl -s "http://127.0.0.1:$PORT/metrics")
metric() { echo "$METRICS" | awk -v m="$1" '$1 ~ "^"m {s += $2} END {printf "%d", s}'; }
SERVED=$(metric mirrorctl_downloads_total)
WRITTEN=$(metric mirrorctl_download_events_written_total)
DROPPED=$(metric mirrorctl_download_events_dropped_total)
kill -TERM "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""
ROWS=$(q -c "SELECT count(*) FROM download_events WHERE file_id IN ($IDS)")
ARC_RC=$(cat "$WORK/archive.rc")
RECORDED=$(q -c "SELECT coalesce(max(row_count), -1) FROM archived_partitions WHERE partition = '$PART' AND state = 'archived'")
VERIFY=$(M --headless archive verify "$PART" >/dev/null 2>&1 && echo ok || echo FAILED)

python3 - "$WORK/windows.txt" "$MONTH_ROWS" "$RECORDED" "$ARC_RC" "$T0" "$T1" "$SERVED" "$WRITTEN" "$DROPPED" "$ROWS" "$VERIFY" "$PART" "$MONTH_SIZE" "$RATE" <<'PY'
import statistics, sys
(path, month_rows, recorded, rc, t0, t1, served, written, dropped, rows, verify, part, size,
 rate) = sys.argv[1:]
w = {"before": [], "during": [], "after": []}
for line in open(path):
    phase, req, rps, p50, p99, err = line.split()
    w[phase].append((int(req), float(rps), float(p50), float(p99), int(err)))
def phase(name):
    v = w[name]
    if not v:
        return f"{name:7} no window"
    p99 = [x[3] for x in v]
    return (f"{name:7} {len(v):2} windows  {sum(x[0] for x in v):8} requests  "
            f"{statistics.mean(x[1] for x in v):7.0f} req/s  p50 {statistics.median(x[2] for x in v):6.2f} ms  "
            f"p99 median {statistics.median(p99):7.2f} ms, worst window {max(p99):7.2f} ms  "
            f"errors {sum(x[4] for x in v)}")
completed = sum(x[0] for v in w.values() for x in v)
lost = int(served) - int(rows)
print(f"archive run --partition {part}: {month_rows} rows ({size}), exit {rc}, "
      f"{float(t1) - float(t0):.1f} s under ~{rate} req/s")
print(f"  recorded row_count {recorded} (exact count before: {month_rows}) -> "
      f"{'nothing lost' if recorded == month_rows else 'MISMATCH'}; archive verify: {verify}")
for name in ("before", "during", "after"):
    print("  " + phase(name))
print(f"  downloads answered by serve {served} (with the warm-up), completed in the measured windows "
      f"{completed}; events written {written}, "
      f"dropped {dropped}; download_events rows of the bench files {rows} -> "
      f"{'0 events lost' if lost == 0 and int(dropped) == 0 else f'{lost} events lost'}")
PY
echo "(windows: $WORK/windows.txt; restore the month: $BIN --config $WORK/config.toml --headless archive restore $PART)"
