#!/usr/bin/env bash
# Hits through `mirrorctl serve` next to nginx proxying the same objects, side by side in one run,
# on loopback: a single-node Garage as the mirror bucket, a SQLite database, wrk as the load.
#
# Both answer GET /files/<key> for the same mirrored objects (BENCH_FILES files of each of
# BENCH_SIZES, default 500 of 1 KiB, 4 KiB, 64 KiB and 1 MiB), and both GET each hit from Garage's
# S3 API with a presigned URL: serve signs its own (once per object, reused for 10 minutes); nginx
# (Debian's) looks the key up in a `map` of presigned URLs made for this run (boto3, valid for a
# day) and does `proxy_pass` to it over an upstream with `keepalive 64`, HTTP/1.1 and
# `proxy_buffering` and its buffers at their defaults, `worker_processes auto`, no access log.
# Presigned URLs rather than a public website bucket, so that Garage does the same work per
# request behind both (the same S3 GET with a signature check) and only the proxy differs. nginx
# records nothing; serve also writes every download as a download_events row (batches every 5 s).
# A third column GETs the same presigned URLs from Garage directly: the floor under both.
# (Garage keeps objects under 3 KiB inline in its metadata; larger ones are block files.)
#
# Each round runs wrk (-t2, BENCH_CONNS connections, default 64, BENCH_SECS s, default 10) for
# each size against nginx, serve and Garage, one after the other, the order rotating from round
# to round; all three are warmed first (3 s per size each). The table shows the medians over
# BENCH_ROUNDS rounds (default 3), then every round. Needs garage (cargo install garage), curl
# and python3; installs nginx, wrk (apt) and boto3 (pip) when missing. Builds
# `cargo build --release` unless MIRRORCTL_BIN names a binary.
#
#   scripts/bench-serve-nginx.sh
#   BENCH_SERVE_ARGS="--threads 1" scripts/bench-serve-nginx.sh    # serve's own flags
#   BENCH_FILES=100 BENCH_ROUNDS=1 BENCH_SECS=5 MIRRORCTL_BIN=target/debug/mirrorctl scripts/bench-serve-nginx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${BENCH_FILES:-500}
SIZES=${BENCH_SIZES:-1k 4k 64k 1m}
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECS:-10}
CONNS=${BENCH_CONNS:-64}
WORK=$(mktemp -d /tmp/mirrorctl-bench-nginx.XXXXXX)
GARAGE_PID="" ORIGIN_PID="" SERVE_PID="" NGINX_PID=""
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  for p in "$NGINX_PID" "$SERVE_PID" "$ORIGIN_PID" "$GARAGE_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
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
python3 -c 'import boto3' 2>/dev/null || { log "installing boto3"; python3 -m pip install -q boto3 >/dev/null; }
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

. scripts/garage.sh
start_garage "$WORK/garage" 8G
BUCKET=bench-nginx
s3() { curl -sf --aws-sigv4 aws:amz:us-east-1:s3 -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' --user "$GARAGE_KEY:$GARAGE_SECRET" "$@"; }
s3 -X PUT "$GARAGE_ENDPOINT/$BUCKET" >/dev/null

# --- the origin, the catalog and the mirror copies ------------------------------------------------
log "dataset: $N files of each of $SIZES at the origin, imported and prefetched"
python3 - "$WORK/origin" "$N" $SIZES > "$WORK/catalog.jsonl" <<'PY'
import json, os, sys
root, n, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
units = {"k": 1024, "m": 1024 * 1024}
for s in sizes:
    size = int(s[:-1]) * units[s[-1].lower()]
    os.makedirs(f"{root}/sizes/{s}", exist_ok=True)
    for i in range(1, n + 1):
        key = f"sizes/{s}/{i}.bin"
        with open(f"{root}/{key}", "wb") as f:
            f.write(os.urandom(size))
        print(json.dumps({"remote_id": f"{s}-{i}", "url": key, "size": size, "file_name": f"{i}.bin"}))
PY
ORIGIN_PORT=$(free_port)
python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$WORK/origin" >"$WORK/origin.log" 2>&1 &
ORIGIN_PID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/" && break; sleep 0.1; done

PORT=$(free_port)
cat > "$WORK/config.toml" <<TOML
[database]
url = "sqlite://$WORK/bench.db"

[buckets.mirror]
bucket = "$BUCKET"
endpoint = "$GARAGE_ENDPOINT"
path_style = true
access_key_id = "$GARAGE_KEY"
secret_access_key = "$GARAGE_SECRET"

[origin]
base_url = "http://127.0.0.1:$ORIGIN_PORT/"
max_file_size = "64MiB"

[serve]
listen = "127.0.0.1:$PORT"
TOML
M=("$BIN" --config "$WORK/config.toml" --headless)
"${M[@]}" catalog import "$WORK/catalog.jsonl" >"$WORK/import.out"
PREFETCH=$("${M[@]}" prefetch --unmirrored --yes -j 8 -o json 2>"$WORK/prefetch.err") || { cat "$WORK/prefetch.err" >&2; exit 1; }
STORED=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["stored"])' <<<"$PREFETCH")
LEFT=$("${M[@]}" prefetch --unmirrored --dry-run -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["candidates"])')
[ "$LEFT" = 0 ] || { echo "prefetch left $LEFT entries unmirrored" >&2; exit 1; }

# --- nginx: /files/<key> -> the key's presigned URL on Garage ---------------------------------------
KEY=$GARAGE_KEY SECRET=$GARAGE_SECRET python3 - "$GARAGE_ENDPOINT" "$BUCKET" "$WORK/catalog.jsonl" > "$WORK/presigned.map" <<'PY'
import json, os, sys
from urllib.parse import urlsplit
import boto3
from botocore.config import Config
endpoint, bucket, catalog = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"],
                  config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
direct = {}
for line in open(catalog):
    key = json.loads(line)["url"]
    u = urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=86400))
    print(f'    "/files/{key}" "{u.path}?{u.query}";')
    direct.setdefault(key.split("/")[1], []).append(f"{u.path}?{u.query}")
for size, paths in direct.items():   # the same URLs, for wrk straight at Garage
    with open(f"{os.path.dirname(catalog)}/direct-{size}.txt", "w") as f:
        f.write("\n".join(paths) + "\n")
PY
NGINX_PORT=$(free_port)
GARAGE_HOSTPORT=${GARAGE_ENDPOINT#http://}
mkdir -p "$WORK/nginx/logs"
{
  [ "$(id -u)" = 0 ] && echo "user root;"   # workers write proxy temp files under $WORK (mode 700)
  cat <<NGINX
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/client_body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  map_hash_bucket_size 128;
  map_hash_max_size 65536;
  map \$uri \$garage_path {
    default "";
$(cat "$WORK/presigned.map")
  }
  upstream garage {
    server $GARAGE_HOSTPORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location /files/ {
      if (\$garage_path = "") { return 404; }
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $GARAGE_HOSTPORT;
      proxy_pass http://garage\$garage_path;
    }
  }
}
NGINX
} > "$WORK/nginx/nginx.conf"
"$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/logs/error.log" -g 'daemon off;' &
NGINX_PID=$!

# shellcheck disable=SC2086  # BENCH_SERVE_ARGS is split on purpose, e.g. "--threads 1"
"$BIN" --config "$WORK/config.toml" serve ${BENCH_SERVE_ARGS:-} >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz" || { cat "$WORK/serve.log" >&2; exit 1; }
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break; sleep 0.1; done
NGINX_BASE="http://127.0.0.1:$NGINX_PORT" SERVE_BASE="http://127.0.0.1:$PORT"

# Both give back the origin's bytes, and serve's are hits.
CHECKS=""
for s in $SIZES; do
  key="sizes/$s/1.bin"
  want=$(sha256sum < "$WORK/origin/$key" | cut -d' ' -f1)
  got_n=$(curl -sf "$NGINX_BASE/files/$key" | sha256sum | cut -d' ' -f1)
  got_s=$(curl -sf -D "$WORK/h.txt" "$SERVE_BASE/files/$key" | sha256sum | cut -d' ' -f1)
  cache=$(awk -F': ' 'tolower($1)=="x-cache" {print $2}' "$WORK/h.txt" | tr -d '\r')
  [ "$got_n" = "$want" ] || { echo "nginx: $key differs from the origin's file" >&2; exit 1; }
  [ "$got_s" = "$want" ] || { echo "serve: $key differs from the origin's file" >&2; exit 1; }
  CHECKS="$CHECKS $s:$cache"
done

# --- load ----------------------------------------------------------------------------------------------
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
for s in $SIZES; do seq 1 "$N" | sed "s|^|/files/sizes/$s/|; s|\$|.bin|" > "$WORK/paths-$s.txt"; done
run_wrk() { # run_wrk NAME CONNS SECS BASE PATHS
  wrk -t2 -c"$2" -d"$3"s --timeout 10s --latency -s "$WORK/rotate.lua" "$4" -- "$5" > "$WORK/$1.wrk" 2>&1
}
# target WHO SIZE: the base URL and the paths file of nginx, serve or Garage directly.
target() {
  case $1 in
    nginx) echo "$NGINX_BASE $WORK/paths-$2.txt" ;;
    serve) echo "$SERVE_BASE $WORK/paths-$2.txt" ;;
    direct) echo "$GARAGE_ENDPOINT $WORK/direct-$2.txt" ;;
  esac
}
log "warming the three (3 s per size each)"
for s in $SIZES; do
  for who in nginx serve direct; do read -r base paths <<<"$(target $who "$s")"; run_wrk "warm-$who-$s" 16 3 "$base" "$paths"; done
done
ORDERS=("nginx serve direct" "serve direct nginx" "direct nginx serve")
log "$ROUNDS rounds: per size, nginx, serve and Garage directly (the order rotates each round), $CONNS connections, $SECS s each"
for r in $(seq 1 "$ROUNDS"); do
  for s in $SIZES; do
    for who in ${ORDERS[$(((r - 1) % 3))]}; do
      read -r base paths <<<"$(target $who "$s")"
      run_wrk "$who-$s-$r" "$CONNS" "$SECS" "$base" "$paths"
    done
  done
done

REPORT=$(python3 - "$WORK" "$ROUNDS" $SIZES <<'PY'
import re, statistics, sys
work, rounds, sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def ms(v):
    n, u = re.match(r"([0-9.]+)(us|ms|s)$", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[u]
def parse(name):
    t = open(f"{work}/{name}.wrk").read()
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", t).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
    errs = []
    m = re.search(r"Socket errors: (.*)", t)
    if m: errs.append("socket " + m.group(1).strip())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    if m: errs.append("non-2xx " + m.group(1))
    return rps, p99, errs
print(f"{'size':>5} | {'nginx req/s':>11} | {'serve req/s':>11} | {'serve/nginx':>11} | {'nginx p99':>9} | {'serve p99':>9} | {'Garage direct':>13} | {'direct p99':>10}")
rows, errors = [], []
for s in sizes:
    n = [parse(f"nginx-{s}-{r}") for r in range(1, rounds + 1)]
    v = [parse(f"serve-{s}-{r}") for r in range(1, rounds + 1)]
    d = [parse(f"direct-{s}-{r}") for r in range(1, rounds + 1)]
    for who, runs in (("nginx", n), ("serve", v), ("direct", d)):
        for r, (_, _, e) in enumerate(runs, 1):
            if e: errors.append(f"{who} {s} round {r}: {', '.join(e)}")
    med = lambda runs, i: statistics.median(x[i] for x in runs)
    nr, vr, dr = med(n, 0), med(v, 0), med(d, 0)
    print(f"{s:>5} | {nr:11,.0f} | {vr:11,.0f} | {100 * vr / nr:10.0f}% | {med(n, 1):6.2f} ms | {med(v, 1):6.2f} ms | {dr:13,.0f} | {med(d, 1):7.2f} ms")
    rows.append("  %s: " % s + "; ".join(f"{a[0]:,.0f}/{b[0]:,.0f}/{c[0]:,.0f} ({100 * b[0] / a[0]:.0f}%) p99 {a[1]:.2f}/{b[1]:.2f}/{c[1]:.2f} ms" for a, b, c in zip(n, v, d)))
print("every round (req/s nginx/serve/direct, serve's share of nginx, p99 nginx/serve/direct):")
print("\n".join(rows))
print("errors: " + ("; ".join(errors) if errors else "none (0 socket errors, 0 non-2xx in every run)"))
PY
)
METRICS=$(curl -s "$SERVE_BASE/metrics")
HITS=$(awk '/^mirrorctl_downloads_total\{cache="hit"\}/ {print $2}' <<<"$METRICS")
MISSES=$(awk '/^mirrorctl_downloads_total\{cache="miss"\}/ {print $2}' <<<"$METRICS")
cat <<EOF
machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), loopback, load average $LOAD_START at the start and $(cut -d" " -f1-3 /proc/loadavg) at the end, $(date -u '+%Y-%m-%d %H:%M UTC'); S3: Garage $("$(garage_bin)" --version 2>/dev/null | head -1 | awk '{print $2}') single node; database: SQLite; $("$NGINX" -v 2>&1 | sed 's|.*: ||'), worker_processes auto; $(wrk --version 2>&1 | head -1 | awk '{print $1, $2}'); mirrorctl: $CODE, serve ${BENCH_SERVE_ARGS:-(default flags)}
mirror: $N files of each of $SIZES ($(grep -c . "$WORK/catalog.jsonl") imported, $STORED stored by prefetch, 0 left unmirrored); first GET of each size: identical to the origin on both, serve's X-Cache:$CHECKS
hits, $CONNS connections, $SECS s, medians of $ROUNDS round(s):
$REPORT
serve counted $HITS hits, ${MISSES:-0} misses
  wrk -t2 -c$CONNS -d${SECS}s --timeout 10s --latency -s rotate.lua http://127.0.0.1:PORT -- paths   (paths: /files/sizes/SIZE/1..$N.bin for nginx and serve, the presigned URLs for Garage)
EOF
