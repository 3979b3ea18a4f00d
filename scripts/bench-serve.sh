#!/usr/bin/env bash
# Benchmarks of the data plane (`mirrorctl serve`, issue 7) on loopback, with wrk as the load
# generator, a single-node Garage as the S3 server, the demo HTTP origin and a SQLite database:
#   1. a 1 GiB miss on a fresh process: time to first byte at the client next to the origin's
#      own time to first byte, the whole transfer, the upload into the mirror, peak RSS;
#   2. hits of 64 KiB files: throughput through serve next to GETting the same objects directly
#      from Garage (presigned URLs), side by side, at 64 connections, in BENCH_ROUNDS rounds
#      (default 5) that also measure a second serve process started with --threads 1;
#   3. latency of hits at 4 connections, serve vs direct: p50/p99 and the p99 serve adds;
#   4. 500 concurrent clients for 60 s: errors, events written/dropped, RSS every 10 s.
# Needs garage (cargo install garage), wrk and curl. Prints the figures and the commands.
#
#   scripts/bench-serve.sh                  # 1,000 files of 64 KiB
#   BENCH_FILES=200 BENCH_LONG=20 scripts/bench-serve.sh
#   BENCH_PROFILE=/tmp/prof scripts/bench-serve.sh   # only: perf profile of serve under hits
#   BENCH_HOLD=1 scripts/bench-serve.sh      # only: set up, warm, print the URLs, keep running
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_FILES:-1000}
LONG=${BENCH_LONG:-60}
WORK=$(mktemp -d /tmp/mirrorctl-bench-serve.XXXXXX)
GARAGE_PID="" DEMO_PID="" SERVE_PID="" SERVE1_PID=""
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  for p in "$SERVE_PID" "$SERVE1_PID" "$DEMO_PID" "$GARAGE_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install -y wrk)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

log "building (release)"
cargo build --release --quiet --bin mirrorctl
cp target/release/mirrorctl "$WORK/mirrorctl"   # a private copy: target/ may be rebuilt meanwhile
BIN="$WORK/mirrorctl"

. scripts/garage.sh
start_garage "$WORK/garage" 8G || exit 1
ENDPOINT=$GARAGE_ENDPOINT

# The demo's HTTP origin over $WORK/demo/origin (marked generated so it serves our files).
DEMO="$WORK/demo"
mkdir -p "$DEMO/origin/big"
VERSION=$(sed -n 's/^const GENERATOR_VERSION: &str = "\(.*\)";/\1/p' src/demo.rs)
printf '%s' "$VERSION" > "$DEMO/.generated"
ORIGIN_PORT=$(free_port)
MIRRORCTL_DEMO_DIR="$DEMO" "$BIN" demo up --origin-port "$ORIGIN_PORT" >"$WORK/demo.out" 2>"$WORK/demo.err" &
DEMO_PID=$!
ORIGIN="http://127.0.0.1:$ORIGIN_PORT/"
for _ in $(seq 1 100); do curl -s -o /dev/null "$ORIGIN" && break; sleep 0.1; done

DB="sqlite://$WORK/bench.db"
PORT=$(free_port)
cat > "$WORK/config.toml" <<TOML
[database]
url = "$DB"

[buckets.mirror]
bucket = "bench-serve"
endpoint = "$ENDPOINT"
path_style = true
access_key_id = "$GARAGE_KEY"
secret_access_key = "$GARAGE_SECRET"

[origin]
base_url = "$ORIGIN"
max_file_size = "2GiB"

[serve]
listen = "127.0.0.1:$PORT"
TOML

log "dataset: $N files of 64 KiB in Garage and the database, a 1 GiB origin file not yet mirrored"
head -c 1073741824 /dev/urandom > "$DEMO/origin/big/1GiB.bin"
MIRRORCTL_BENCH_FILES=$N MIRRORCTL_BENCH_FILE_SIZE=65536 MIRRORCTL_BENCH_ORIGIN_DIR="$DEMO/origin" \
MIRRORCTL_BENCH_BUCKET=bench-serve MIRRORCTL_BENCH_ENDPOINT="$ENDPOINT" MIRRORCTL_BENCH_KEY="$GARAGE_KEY" \
MIRRORCTL_BENCH_SECRET="$GARAGE_SECRET" MIRRORCTL_BENCH_DATABASE_URL="$DB" MIRRORCTL_BENCH_BIG_KEY="big/1GiB.bin" \
MIRRORCTL_BENCH_PRESIGN_OUT="$WORK/presigned.txt" \
  cargo test --release --quiet --test lifecycle -- --ignored --exact bench_fixture >"$WORK/fixture.log" 2>&1 \
  || { cat "$WORK/fixture.log" >&2; exit 1; }
BIG_ID=$((N + 1))

start_serve() {
  "$BIN" --config "$WORK/config.toml" serve >"$WORK/serve.log" 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && return; sleep 0.1; done
  cat "$WORK/serve.log" >&2; exit 1
}
rss_mib() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$SERVE_PID/status"; }
hwm_mib() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$SERVE_PID/status"; }

# --- 1. a 1 GiB miss -------------------------------------------------------------------------------
start_serve
if [ -z "${BENCH_PROFILE:-}" ]; then
log "1 GiB: the origin directly, then a miss through serve"
O_TTFB=$(curl -s -o /dev/null -w '%{time_starttransfer}' "${ORIGIN}big/1GiB.bin")
MISS=$(curl -s -o "$WORK/big.out" -w '%{time_starttransfer} %{time_total} %{size_download} %{http_code}' \
  "http://127.0.0.1:$PORT/download/$BIG_ID")
read -r M_TTFB M_TOTAL M_SIZE M_CODE <<<"$MISS"
cmp -s "$WORK/big.out" "$DEMO/origin/big/1GiB.bin" && M_SAME=identical || M_SAME=DIFFERENT
rm -f "$WORK/big.out"
T0=$(date +%s.%N)
for _ in $(seq 1 1200); do
  "$BIN" --config "$WORK/config.toml" --headless file "$BIG_ID" -o json 2>/dev/null \
    | python3 -c 'import json,sys; sys.exit(0 if not json.load(sys.stdin)["is_stale"] else 1)' && break
  sleep 0.25
done
UPLOADED_AFTER=$(python3 -c "print(round($(date +%s.%N) - $T0, 1))")
M_HWM=$(hwm_mib)
HIT_BIG=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' -D "$WORK/h.txt" "http://127.0.0.1:$PORT/download/$BIG_ID")
BIG_CACHE=$(awk -F': ' 'tolower($1)=="x-cache" {print $2}' "$WORK/h.txt" | tr -d '\r')
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true
start_serve
fi

# --- 2-4. hits -------------------------------------------------------------------------------------
seq 1 "$N" | sed 's|^|/download/|' > "$WORK/serve-paths.txt"
sed -E 's|^https?://[^/]+||' "$WORK/presigned.txt" > "$WORK/direct-paths.txt"
cat > "$WORK/rotate.lua" <<'LUA'
local paths = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
LUA
DIRECT_BASE=$(head -1 "$WORK/presigned.txt" | sed -E 's|^(https?://[^/]+).*|\1|')
SERVE_BASE="http://127.0.0.1:$PORT"
# Warm both paths (row cache, connection pools) before measuring.
wrk -t2 -c16 -d3s -s "$WORK/rotate.lua" "$SERVE_BASE" -- "$WORK/serve-paths.txt" >/dev/null
wrk -t2 -c16 -d3s -s "$WORK/rotate.lua" "$DIRECT_BASE" -- "$WORK/direct-paths.txt" >/dev/null

run_wrk() { # run_wrk NAME CONNS SECS BASE PATHS
  wrk -t2 -c"$2" -d"$3"s --timeout 10s --latency -s "$WORK/rotate.lua" "$4" -- "$5" > "$WORK/$1.wrk" 2>&1
}
rps() { awk '/Requests\/sec/ {print $2}' "$WORK/$1.wrk"; }
mibs() { awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024}; printf "%.1f", v}' "$WORK/$1.wrk"; }
pct() { awk -v p="$2" '$1==p {print $2}' "$WORK/$1.wrk"; }
errs() { awk '/Socket errors|Non-2xx/ {print}' "$WORK/$1.wrk" | tr '\n' ' '; }
to_ms() { python3 -c "
import re,sys
v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)', v)
n=float(m.group(1)); u=m.group(2)
print(round(n/1000 if u=='us' else n if u=='ms' else n*1000, 2))" "$1"; }

if [ -n "${BENCH_HOLD:-}" ]; then
  # For investigation: keep everything running and say where.
  # serve may be stopped and restarted by hand; this ends when Garage is stopped.
  echo "serve $SERVE_BASE (pid $SERVE_PID: $BIN --config $WORK/config.toml serve), Garage direct $DIRECT_BASE (pid $GARAGE_PID); paths $WORK/serve-paths.txt $WORK/direct-paths.txt; lua $WORK/rotate.lua"
  while kill -0 "$GARAGE_PID" 2>/dev/null; do sleep 5; done
  exit 0
fi
if [ -n "${BENCH_PROFILE:-}" ]; then
  mkdir -p "$BENCH_PROFILE"
  log "profiling serve under 64 connections of hits for 15 s"
  perf record -F 999 -g -o "$BENCH_PROFILE/serve.perf" -p "$SERVE_PID" -- sleep 15 >/dev/null 2>&1 &
  PERF_PID=$!
  run_wrk prof 64 15 "$SERVE_BASE" "$WORK/serve-paths.txt"
  wait "$PERF_PID" || true
  echo "hits through serve while profiled: $(rps prof) req/s; CPU: $(ps -o cputime= -p "$SERVE_PID") serve, $(ps -o cputime= -p "$GARAGE_PID") Garage"
  perf report -i "$BENCH_PROFILE/serve.perf" --no-children --sort symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -40
  exit 0
fi

# Hits: ROUNDS rounds of 10 s each of serve, Garage directly, and serve --threads 1 (a second
# serve process; each idles while the others are measured). Throughput on this shared machine
# moved by 10-14 points between single runs of unchanged code, so each round is a side-by-side
# pair and the medians count.
ROUNDS=${BENCH_ROUNDS:-5}
PORT1=$(free_port)
"$BIN" --config "$WORK/config.toml" serve --listen "127.0.0.1:$PORT1" --threads 1 >"$WORK/serve1.log" 2>&1 &
SERVE1_PID=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT1/healthz" && break; sleep 0.1; done
SERVE1_BASE="http://127.0.0.1:$PORT1"
wrk -t2 -c16 -d3s -s "$WORK/rotate.lua" "$SERVE1_BASE" -- "$WORK/serve-paths.txt" >/dev/null
log "hits at 64 connections: $ROUNDS rounds of serve, Garage directly, serve --threads 1 (10 s each)"
: > "$WORK/rounds.txt"
for r in $(seq 1 "$ROUNDS"); do
  run_wrk "hits-serve-$r" 64 10 "$SERVE_BASE" "$WORK/serve-paths.txt"
  run_wrk "hits-direct-$r" 64 10 "$DIRECT_BASE" "$WORK/direct-paths.txt"
  run_wrk "hits-serve1-$r" 64 10 "$SERVE1_BASE" "$WORK/serve-paths.txt"
  echo "$(rps "hits-serve-$r") $(rps "hits-direct-$r") $(rps "hits-serve1-$r") [$(errs "hits-serve-$r")$(errs "hits-direct-$r")$(errs "hits-serve1-$r")]" >> "$WORK/rounds.txt"
done
kill "$SERVE1_PID"; wait "$SERVE1_PID" 2>/dev/null || true
log "latency at 4 connections, 15 s each"
run_wrk lat-serve 4 15 "$SERVE_BASE" "$WORK/serve-paths.txt"
run_wrk lat-direct 4 15 "$DIRECT_BASE" "$WORK/direct-paths.txt"
log "500 connections for $LONG s through serve"
RSS_BEFORE=$(rss_mib)
run_wrk long 500 "$LONG" "$SERVE_BASE" "$WORK/serve-paths.txt" &
WRK_PID=$!
SAMPLES=""
for _ in $(seq 1 $((LONG / 10))); do sleep 10; SAMPLES="$SAMPLES $(rss_mib)"; done
wait "$WRK_PID"
sleep 2
METRICS=$(curl -s "$SERVE_BASE/metrics")
WRITTEN=$(awk '/^mirrorctl_download_events_written_total/ {print $2}' <<<"$METRICS")
DROPPED=$(awk '/^mirrorctl_download_events_dropped_total/ {print $2}' <<<"$METRICS")
HITS=$(awk '/^mirrorctl_downloads_total\{cache="hit"\}/ {print $2}' <<<"$METRICS")

LS99=$(to_ms "$(pct lat-serve 99%)") LD99=$(to_ms "$(pct lat-direct 99%)")
LS50=$(to_ms "$(pct lat-serve 50%)") LD50=$(to_ms "$(pct lat-direct 50%)")
ROUNDS_REPORT=$(python3 - "$WORK/rounds.txt" <<'PY'
import statistics, sys
rows = [l.split(None, 3) for l in open(sys.argv[1]) if l.strip()]
a, b = [], []
for s, d, s1, errs in rows:
    s, d, s1 = float(s), float(d), float(s1)
    a.append(100 * s / d); b.append(100 * s1 / d)
    print(f"  {s:7.0f} {d:7.0f} {s1:7.0f}   {a[-1]:3.0f}% {b[-1]:3.0f}%   errors {errs.strip()}")
print(f"  median share of direct: serve {statistics.median(a):.0f}%, serve --threads 1 {statistics.median(b):.0f}%")
PY
)
cat <<EOF
machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), loopback; S3: Garage $("$(garage_bin)" --version 2>/dev/null | head -1 | awk '{print $2}') single node; origin: mirrorctl demo origin; database: SQLite; load: $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}')
1 GiB miss (fresh process): HTTP $M_CODE, $M_SIZE bytes ($M_SAME to the origin file), client first byte after ${M_TTFB}s (origin alone: ${O_TTFB}s), whole body ${M_TOTAL}s; row fresh ${UPLOADED_AFTER}s after the client finished; peak RSS $M_HWM MiB; next GET: $HIT_BIG $BIG_CACHE
  curl -o /dev/null -w '%{time_starttransfer}' ${ORIGIN}big/1GiB.bin ; curl ... http://127.0.0.1:PORT/download/$BIG_ID
hits, 64 KiB, 64 connections, $ROUNDS rounds of 10 s each (req/s: serve, Garage direct, serve --threads 1; serve's share of direct):
$ROUNDS_REPORT
  wrk -t2 -c64 -d10s --latency -s rotate.lua http://127.0.0.1:PORT -- paths   (paths: /download/1..$N, or the presigned URLs)
latency, 4 connections, 15 s: serve p50 ${LS50} ms p99 ${LS99} ms ($(rps lat-serve) req/s); direct p50 ${LD50} ms p99 ${LD99} ms ($(rps lat-direct) req/s) -> serve adds $(python3 -c "print(round($LS99-$LD99,2))") ms at p99
500 connections, $LONG s: $(rps long) req/s, $(awk '/requests in/ {print $1}' "$WORK/long.wrk") requests, errors [$(errs long)]; RSS before ${RSS_BEFORE} MiB, every 10 s:${SAMPLES} MiB; hits counted $HITS, events written $WRITTEN, dropped $DROPPED
EOF
