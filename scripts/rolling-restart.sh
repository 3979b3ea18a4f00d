#!/usr/bin/env bash
# A rolling restart of 3 `mirrorctl serve` replicas under load, on loopback: does every download a
# client got become exactly one download_events row?
#
# The replicas share one PostgreSQL database (a fresh one per run, created through the role of
# $MIRRORCTL_TEST_DATABASE_URL, default the one scripts/test.sh creates, and dropped at the end)
# and one bucket on a 3-node Garage cluster (scripts/garage.sh; replica i uses node i's S3
# endpoint). Each has its own listen and admin port, `event_flush = "1s"`. nginx (Debian's) is
# the load balancer: an upstream of the 3 with keepalive, `proxy_next_upstream error timeout
# http_502 http_503`, each server `max_fails=1 fail_timeout=<BENCH_FAIL_TIMEOUT>s` (default 2:
# how long nginx leaves out a replica it failed to reach; with nginx's default of 10 s and
# restarts 5 s apart, 2 of 4 runs had every replica left out at once for a while, and nginx
# answered those requests with a 502 of its own). The
# origin is `python3 -m http.server`; BENCH_FILES files (default 200) of BENCH_SIZE bytes
# (default 65536) are imported into the catalog and prefetched before the load, so the load is
# hits.
#
# Load: wrk through nginx (-t2, BENCH_CONNS connections, default 32) for BENCH_LOAD s (default
# 40), GETs of the files in turn. Meanwhile, 5 s in and then every BENCH_GAP s (default 10), each
# replica in turn gets SIGTERM, is waited for, started again and waited for until /readyz answers
# 200. The wrk script counts, per status, the responses that carry X-Cache (file downloads);
# after BENCH_LOAD s it asks only for /healthz for 5 more seconds, so that the requests wrk
# abandons when it stops are not downloads and every file download it started is counted.
# After the load and 3 s for the replicas' flushes:
#   SELECT count(*) FROM download_events WHERE status < 400
# (less the events there were before the load: one GET through nginx checks the setup) against
# the 2xx file downloads wrk counted. Prints both (and the same count after all
# replicas were stopped) and exits 1 when they differ.
#
# Needs garage (cargo install garage), PostgreSQL (scripts/test.sh sets it up), curl, python3;
# installs nginx and wrk (apt) when missing. Builds `cargo build --release` unless MIRRORCTL_BIN
# names a binary.
#
#   scripts/rolling-restart.sh
#   MIRRORCTL_BIN=target/debug/mirrorctl BENCH_LOAD=20 BENCH_GAP=5 scripts/rolling-restart.sh
#   BENCH_KEEP=1 scripts/rolling-restart.sh     # keeps the run's directory (logs, configs)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_FILES:-200}
SIZE=${BENCH_SIZE:-65536}
CONNS=${BENCH_CONNS:-32}
LOAD=${BENCH_LOAD:-40}
GAP=${BENCH_GAP:-10}
TAIL=5
LB_FAIL_TIMEOUT=${BENCH_FAIL_TIMEOUT:-2}
REPLICAS=3
ADMIN_URL=${MIRRORCTL_TEST_DATABASE_URL:-postgres://mirrorctl:mirrorctl@127.0.0.1:5432/mirrorctl_test}
WORK=$(mktemp -d /tmp/mirrorctl-rolling.XXXXXX)
DB_NAME="mirrorctl_rolling_$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
DB_URL="${ADMIN_URL%/*}/$DB_NAME"
ORIGIN_PID="" NGINX_PID="" WRK_PID="" DB_CREATED=""
SERVE_PIDS=()
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  local p
  for p in "$WRK_PID" "$NGINX_PID" "${SERVE_PIDS[@]}" "$ORIGIN_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "$WRK_PID" "$NGINX_PID" "${SERVE_PIDS[@]}" "$ORIGIN_PID"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  declare -F stop_garage_cluster >/dev/null && stop_garage_cluster
  [ -n "$DB_CREATED" ] && psql -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  if [ -n "${BENCH_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
APT_UPDATED=""
apt_install() {
  [ -n "$APT_UPDATED" ] || { as_root apt-get update -qq >/dev/null; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { log "installing nginx"; apt_install nginx; }
command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
command -v psql >/dev/null || { echo "psql is not installed (scripts/test.sh sets up PostgreSQL)" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || true
LOAD_START=$(cut -d" " -f1-3 /proc/loadavg)

if [ -n "${MIRRORCTL_BIN:-}" ]; then
  cp "$MIRRORCTL_BIN" "$WORK/mirrorctl"
  CODE="the binary $MIRRORCTL_BIN"
else
  log "building (release)"
  cargo build --release --quiet --bin mirrorctl
  cp target/release/mirrorctl "$WORK/mirrorctl"   # a private copy: target/ may be rebuilt meanwhile
  CODE="release build of $(git rev-parse --short HEAD)$([ -z "$(git status --porcelain -- src migrations Cargo.toml Cargo.lock)" ] || echo ' with uncommitted changes in src, migrations or Cargo')"
fi
BIN="$WORK/mirrorctl"

psql -q "$ADMIN_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null
DB_CREATED=1
. scripts/garage.sh
log "3-node Garage cluster"
start_garage_cluster "$WORK/garage" 3 4G
read -r -a ENDPOINTS <<<"$GARAGE_CLUSTER_ENDPOINTS"
BUCKET=rolling
curl -sf --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
  --user "$GARAGE_CLUSTER_KEY:$GARAGE_CLUSTER_SECRET" -X PUT "$GARAGE_CLUSTER_ENDPOINT/$BUCKET" >/dev/null

log "origin: $N files of $SIZE bytes"
python3 - "$WORK/origin" "$N" "$SIZE" > "$WORK/catalog.jsonl" <<'PY'
import json, os, sys
root, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(f"{root}/pkgs", exist_ok=True)
for i in range(1, n + 1):
    key = f"pkgs/{i}.bin"
    with open(f"{root}/{key}", "wb") as f:
        f.write(os.urandom(size))
    print(json.dumps({"remote_id": str(i), "url": key, "size": size, "file_name": f"{i}.bin"}))
PY
ORIGIN_PORT=$(free_port)
python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$WORK/origin" >"$WORK/origin.log" 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/" && break; sleep 0.1; done

TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
PORTS=() ADMIN_PORTS=()
for i in $(seq 1 $REPLICAS); do
  PORTS+=("$(free_port)"); ADMIN_PORTS+=("$(free_port)")
  cat > "$WORK/replica$i.toml" <<TOML
[database]
url = "$DB_URL"

[buckets.mirror]
bucket = "$BUCKET"
endpoint = "${ENDPOINTS[$((i - 1))]}"
path_style = true
access_key_id = "$GARAGE_CLUSTER_KEY"
secret_access_key = "$GARAGE_CLUSTER_SECRET"

[origin]
base_url = "http://127.0.0.1:$ORIGIN_PORT/"

[serve]
listen = "127.0.0.1:${PORTS[$((i - 1))]}"
admin_listen = "127.0.0.1:${ADMIN_PORTS[$((i - 1))]}"
admin_token = "$TOKEN"
event_flush = "1s"
shutdown_timeout = "10s"
TOML
done
M=("$BIN" --config "$WORK/replica1.toml" --headless)
"$BIN" --config "$WORK/replica1.toml" migrate >"$WORK/migrate.out" 2>&1 || { cat "$WORK/migrate.out" >&2; exit 1; }
"${M[@]}" catalog import "$WORK/catalog.jsonl" >"$WORK/import.out"
"${M[@]}" prefetch --unmirrored --yes -j 8 >"$WORK/prefetch.out" 2>&1 || { cat "$WORK/prefetch.out" >&2; exit 1; }
psql_db() { psql -qtA "$DB_URL" -c "$1"; }
MIRRORED=$(psql_db "SELECT count(*) FROM mirrored_files WHERE deleted_at IS NULL AND NOT is_stale")
[ "$MIRRORED" = "$N" ] || { echo "prefetch mirrored $MIRRORED of $N files" >&2; cat "$WORK/prefetch.out" >&2; exit 1; }

# start_replica I: starts replica I (1-based) and waits until its /readyz answers 200.
start_replica() {
  local i=$1
  "$BIN" --config "$WORK/replica$i.toml" serve >>"$WORK/replica$i.log" 2>&1 &
  SERVE_PIDS[$((i - 1))]=$!
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:${PORTS[$((i - 1))]}/readyz" && return 0
    kill -0 "${SERVE_PIDS[$((i - 1))]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "replica $i did not become ready:" >&2; tail -20 "$WORK/replica$i.log" >&2; return 1
}
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.2f}')"; }
for i in $(seq 1 $REPLICAS); do start_replica "$i"; done

# --- nginx in front --------------------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/logs"
{
  [ "$(id -u)" = 0 ] && echo "user root;"   # workers write proxy temp files under $WORK (mode 700)
  cat <<NGINX
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  log_format lb '\$status|\$request_uri|\$upstream_addr|\$upstream_status';
  access_log $WORK/nginx/logs/access.log lb buffer=256k flush=1s;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream mirror {
$(for p in "${PORTS[@]}"; do echo "    server 127.0.0.1:$p max_fails=1 fail_timeout=${LB_FAIL_TIMEOUT}s;"; done)
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503;
      proxy_pass http://mirror;
    }
  }
}
NGINX
} > "$WORK/nginx/nginx.conf"
"$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" -g 'daemon off;' &
NGINX_PID=$!
LB="http://127.0.0.1:$NGINX_PORT"
for _ in $(seq 1 100); do curl -s -o /dev/null "$LB/healthz" && break; sleep 0.1; done
FIRST=$(curl -s -o /dev/null -D - -w '%{http_code}' "$LB/files/pkgs/1.bin" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {c=$2} /^[0-9]+$/ {s=$0} END {print s, c}')
[ "${FIRST%% *}" = 200 ] || { echo "GET through nginx: $FIRST" >&2; exit 1; }
# That GET's event (flushed within 1 s) and log line (nginx flushes its log every 1 s) are not load.
for _ in $(seq 1 50); do [ "$(psql_db "SELECT count(*) FROM download_events")" -ge 1 ] && break; sleep 0.1; done
sleep 1.5
BEFORE=$(psql_db "SELECT count(*) FROM download_events WHERE status < 400")
NGINX_BEFORE=$(wc -l < "$WORK/nginx/logs/access.log")

# --- the load ----------------------------------------------------------------------------------------
seq 1 "$N" | sed 's|^|/files/pkgs/|; s|$|.bin|' > "$WORK/paths.txt"
cat > "$WORK/count.lua" <<'LUA'
-- GETs the paths of args[1] in turn until args[2] seconds have passed, then only /healthz.
-- Counts per status the responses with an X-Cache header (file downloads) and the others (the
-- /healthz tail, and answers nginx made itself, such as a 502); done() prints both.
local threads = {}
function setup(thread) table.insert(threads, thread) end
local paths, i, deadline = {}, 0, 0
counts, others = {}, {}
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
  deadline = os.time() + tonumber(args[2])
end
function request()
  if os.time() >= deadline then return wrk.format("GET", "/healthz") end
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
function response(status, headers, body)
  for name in pairs(headers) do
    if string.lower(name) == "x-cache" then
      counts[status] = (counts[status] or 0) + 1
      return
    end
  end
  others[status] = (others[status] or 0) + 1
end
function done(summary, latency, requests)
  local files, rest = {}, {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do files[status] = (files[status] or 0) + n end
    for status, n in pairs(t:get("others")) do rest[status] = (rest[status] or 0) + n end
  end
  local ok = 0
  for status, n in pairs(files) do
    io.write(string.format("file %d %d\n", status, n))
    if status >= 200 and status < 300 then ok = ok + n end
  end
  for status, n in pairs(rest) do io.write(string.format("other %d %d\n", status, n)) end
  local e = summary.errors
  io.write(string.format("file_2xx %d\nrequests %d\nerrors connect %d read %d write %d status %d timeout %d\n",
    ok, summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("p99_ms %.2f\n", latency:percentile(99) / 1000))
end
LUA
log "load: wrk -c$CONNS through nginx for $LOAD s (+$TAIL s of /healthz); a rolling restart 5 s in, every $GAP s"
wrk -t2 -c"$CONNS" -d"$((LOAD + TAIL))"s --timeout 10s -s "$WORK/count.lua" "$LB" -- "$WORK/paths.txt" "$LOAD" >"$WORK/wrk.out" 2>&1 &
WRK_PID=$!
T0=$(now)
RESTARTS=""
sleep 5
for i in $(seq 1 $REPLICAS); do
  t=$(now)
  pid=${SERVE_PIDS[$((i - 1))]}
  kill -TERM "$pid"
  wait "$pid" && rc=0 || rc=$?
  down=$(since "$t")
  start_replica "$i"
  RESTARTS="$RESTARTS
  replica $i: SIGTERM at $(python3 -c "print(f'{$t - $T0:.1f}')") s, exited $rc after $down s, ready again $(since "$t") s after the SIGTERM"
  if [ "$i" -lt $REPLICAS ]; then sleep "$(python3 -c "print(max(0, $GAP - ($(now) - $t)))")"; fi
done
wait "$WRK_PID" || { cat "$WORK/wrk.out" >&2; exit 1; }
WRK_PID=""
sleep 3   # three event flushes
EVENTS=$(psql_db "SELECT count(*) FROM download_events WHERE status < 400")
EVENTS=$((EVENTS - BEFORE))
BY_STATUS=$(psql_db "SELECT string_agg(status || ': ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) n FROM download_events GROUP BY status) s")
for i in $(seq 1 $REPLICAS); do kill -TERM "${SERVE_PIDS[$((i - 1))]}"; done
for i in $(seq 1 $REPLICAS); do wait "${SERVE_PIDS[$((i - 1))]}" 2>/dev/null || true; done
SERVE_PIDS=()
AFTER_STOP=$(( $(psql_db "SELECT count(*) FROM download_events WHERE status < 400") - BEFORE ))
kill -TERM "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=""

OK=$(awk '$1=="file_2xx" {print $2}' "$WORK/wrk.out")
LOAD_LOG=$(tail -n +"$((NGINX_BEFORE + 1))" "$WORK/nginx/logs/access.log" | grep '^[0-9]*|/files/' || true)
NGINX_FILES=$(grep -c . <<<"$LOAD_LOG" || true)
NGINX_2XX=$(awk -F'|' '$1 ~ /^2/' <<<"$LOAD_LOG" | wc -l)
RETRIED=$(awk -F'|' '$3 ~ /,/' <<<"$LOAD_LOG" | wc -l)
# The replica that answered each (the last address nginx tried), as "replica i: n".
PER_REPLICA=$(awk -F'|' '{n=split($3, t, ", "); print t[n]}' <<<"$LOAD_LOG" | sort | uniq -c \
  | while read -r n addr; do
      r="?"; for i in $(seq 1 $REPLICAS); do [ "$addr" = "127.0.0.1:${PORTS[$((i - 1))]}" ] && r=$i; done
      echo "replica $r: $n"
    done | sort | paste -sd, - | sed 's/,/, /g')
UPSTREAM_ERRORS=$(grep -c 'upstream' "$WORK/nginx/logs/error.log" || true)
cat <<EOF
machine: $(nproc) cores, loopback, load average $LOAD_START at the start and $(cut -d" " -f1-3 /proc/loadavg) at the end, $(date -u '+%Y-%m-%d %H:%M UTC'); 3 replicas (mirrorctl: $CODE) on PostgreSQL $(psql_db 'SHOW server_version' | awk '{print $1}'), Garage $("$(garage_bin)" --version 2>/dev/null | head -1 | awk '{print $2}') 3 nodes, $("$NGINX" -v 2>&1 | sed 's|.*: ||') in front; first GET through nginx: $FIRST
load: $N files of $SIZE bytes, wrk -t2 -c$CONNS -d$((LOAD + TAIL))s --timeout 10s -s count.lua (files for $LOAD s, then /healthz)$RESTARTS
wrk: $(awk '$1=="requests" {print $2}' "$WORK/wrk.out") requests, file responses by status: $(awk '$1=="file" {printf "%s%s: %s", sep, $2, $3; sep=", "}' "$WORK/wrk.out"); the others (no X-Cache) by status: $(awk '$1=="other" {printf "%s%s: %s", sep, $2, $3; sep=", "}' "$WORK/wrk.out"); $(grep '^errors' "$WORK/wrk.out"); p99 of all requests $(awk '$1=="p99_ms" {print $2}' "$WORK/wrk.out") ms
nginx: $NGINX_FILES file requests logged, $NGINX_2XX answered 2xx ($PER_REPLICA), $RETRIED passed to a second replica; $UPSTREAM_ERRORS upstream lines in its error log
download_events by status: ${BY_STATUS:-none}
file downloads answered 2xx (wrk): $OK
download_events with status < 400, 3 s after the load: $EVENTS (after all replicas stopped: $AFTER_STOP)
EOF
if [ "$EVENTS" != "$OK" ]; then
  echo "MISMATCH: $EVENTS events for $OK downloads ($((EVENTS - OK)))"
  grep 'upstream' "$WORK/nginx/logs/error.log" | sed 's/^[0-9/: ]*//' | cut -c1-200 | sort | uniq -c | sort -rn | head -5
  exit 1
fi
echo "match: one event per download"
