#!/usr/bin/env bash
# Benchmarks of the cache lifecycle (issue 3), against a single-node Garage (the S3 server) and
# the embedded demo origin (`mirrorctl demo up`, an HTTP origin over a directory), with a SQLite
# database, all on loopback:
#   1. validate --all of N files (default 100,000) at concurrency 64: files/s and peak RSS;
#   2. remirror of one 1 GiB origin file: peak RSS and throughput, next to `aws s3 cp` of the
#      same file to the same Garage bucket;
#   3. purge of the N objects (purge --unused-days 5): wall time.
# Prints the figures and the exact commands. Needs garage (cargo install garage), aws (the AWS
# CLI) and /usr/bin/time.
#
#   scripts/bench-lifecycle.sh            # N = 100000
#   BENCH_FILES=20000 scripts/bench-lifecycle.sh
#   S3_SERVER=s3s-fs scripts/bench-lifecycle.sh   # the demo's in-process s3s-fs instead of Garage
#   SKIP_REMIRROR=1 scripts/bench-lifecycle.sh    # validate and purge only (no 1 GiB file)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${BENCH_FILES:-100000}
WORK=$(mktemp -d /tmp/mirrorctl-bench.XXXXXX)
GARAGE_PID=""
DEMO_PID=""
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  [ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null || true
  [ -n "$GARAGE_PID" ] && kill "$GARAGE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- build -------------------------------------------------------------------------------------
log "building (release)"
cargo build --release --quiet --bin mirrorctl
# A private copy: the shared target directory may be rebuilt by other work while this runs.
cp target/release/mirrorctl "$WORK/mirrorctl"
BIN="$WORK/mirrorctl"

# --- Garage (unless S3_SERVER=s3s-fs) -------------------------------------------------------------
S3_SERVER=${S3_SERVER:-garage}
. scripts/garage.sh
if [ "$S3_SERVER" = garage ]; then
  start_garage "$WORK/garage" 20G || exit 1
  GK=$GARAGE_KEY GS=$GARAGE_SECRET ENDPOINT=$GARAGE_ENDPOINT
fi

# --- origin: the demo's HTTP origin over $WORK/demo/origin ----------------------------------------
DEMO="$WORK/demo"
mkdir -p "$DEMO/origin/big"
# Mark the demo directory generated so `demo up` serves our files instead of its own dataset.
VERSION=$(sed -n 's/^const GENERATOR_VERSION: &str = "\(.*\)";/\1/p' src/demo.rs)
[ -n "$VERSION" ] || { echo "cannot read GENERATOR_VERSION from src/demo.rs" >&2; exit 1; }
printf '%s' "$VERSION" > "$DEMO/.generated"
ORIGIN_PORT=$(free_port)
MIRRORCTL_DEMO_DIR="$DEMO" "$BIN" demo up --origin-port "$ORIGIN_PORT" >"$WORK/demo.out" 2>"$WORK/demo.err" &
DEMO_PID=$!
ORIGIN="http://127.0.0.1:$ORIGIN_PORT/"
for _ in $(seq 1 100); do curl -s -o /dev/null "$ORIGIN" && break; sleep 0.1; done
if [ "$S3_SERVER" = s3s-fs ]; then
  # `demo up` serves s3s-fs over $DEMO too; it prints the endpoint and keys once it listens.
  for _ in $(seq 1 100); do grep -q '^export AWS_ENDPOINT_URL' "$WORK/demo.out" 2>/dev/null && break; sleep 0.1; done
  ENDPOINT=$(sed -n 's/^export AWS_ENDPOINT_URL=//p' "$WORK/demo.out")
  GK=$(sed -n 's/^export AWS_ACCESS_KEY_ID=//p' "$WORK/demo.out")
  GS=$(sed -n 's/^export AWS_SECRET_ACCESS_KEY=//p' "$WORK/demo.out")
  [ -n "$ENDPOINT" ] || { cat "$WORK/demo.err" >&2; exit 1; }
fi

DB="sqlite://$WORK/bench.db"
cat > "$WORK/config.toml" <<TOML
[database]
url = "$DB"

[buckets.mirror]
bucket = "bench-mirror"
endpoint = "$ENDPOINT"
path_style = true
access_key_id = "$GK"
secret_access_key = "$GS"

[origin]
base_url = "$ORIGIN"
max_file_size = "2GiB"
TOML
M=("$BIN" --config "$WORK/config.toml" --headless)

# --- dataset ---------------------------------------------------------------------------------------
log "creating $N origin files, uploading them to Garage, recording them (fixture)"
[ -n "${SKIP_REMIRROR:-}" ] || head -c 1073741824 /dev/urandom > "$DEMO/origin/big/1GiB.bin"
MIRRORCTL_BENCH_FILES=$N MIRRORCTL_BENCH_ORIGIN_DIR="$DEMO/origin" MIRRORCTL_BENCH_BUCKET=bench-mirror \
MIRRORCTL_BENCH_ENDPOINT="$ENDPOINT" MIRRORCTL_BENCH_KEY="$GK" MIRRORCTL_BENCH_SECRET="$GS" \
MIRRORCTL_BENCH_DATABASE_URL="$DB" MIRRORCTL_BENCH_BIG_KEY="big/1GiB.bin" \
  cargo test --release --quiet --test lifecycle -- --ignored --exact bench_fixture >"$WORK/fixture.log" 2>&1 \
  || { cat "$WORK/fixture.log" >&2; exit 1; }

timed() { # timed NAME CMD...: runs CMD under /usr/bin/time -v, keeps stdout in $WORK/NAME.out
  local name=$1; shift
  if ! /usr/bin/time -v "$@" >"$WORK/$name.out" 2>"$WORK/$name.time"; then
    # Exit 3 (problems found) still measured a complete run; anything else is a failure.
    grep -q "Exit status: 3" "$WORK/$name.time" || { cat "$WORK/$name.time" >&2; exit 1; }
  fi
  ELAPSED=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/$name.time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  RSS_KB=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
}

# --- 1. validate -------------------------------------------------------------------------------------
log "validate --all -j 64 over $N files"
timed validate "${M[@]}" validate --all -j 64 -o json
CHECKED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["checked"])' "$WORK/validate.out")
FRESH=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fresh"])' "$WORK/validate.out")
V_RATE=$(python3 -c "print(round($CHECKED / $ELAPSED))")
V_SECS=$ELAPSED; V_RSS=$((RSS_KB / 1024))

# --- 2. remirror 1 GiB, next to aws s3 cp ----------------------------------------------------------
if [ -z "${SKIP_REMIRROR:-}" ]; then
  # Alternating runs (REMIRROR_RUNS, default 3), so both tools see the same machine; the
  # median of each is reported.
  export AWS_ACCESS_KEY_ID=$GK AWS_SECRET_ACCESS_KEY=$GS AWS_DEFAULT_REGION=us-east-1
  R_ALL="" A_ALL="" R_RSS=0 A_RSS=0
  for i in $(seq 1 "${REMIRROR_RUNS:-3}"); do
    log "remirror of a 1 GiB file ($i)"
    timed remirror "${M[@]}" remirror big/1GiB.bin --yes -o json
    R_ALL="$R_ALL $ELAPSED"; R_RSS=$(( RSS_KB / 1024 > R_RSS ? RSS_KB / 1024 : R_RSS ))
    R_OK=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["remirrored"])' "$WORK/remirror.out")
    log "aws s3 cp of the same file ($i)"
    timed awscp aws --endpoint-url "$ENDPOINT" s3 cp --only-show-errors "$DEMO/origin/big/1GiB.bin" s3://bench-mirror/big/aws-copy.bin
    A_ALL="$A_ALL $ELAPSED"; A_RSS=$(( RSS_KB / 1024 > A_RSS ? RSS_KB / 1024 : A_RSS ))
  done
  median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' $1; }
  R_SECS=$(median "$R_ALL"); A_SECS=$(median "$A_ALL")
  R_MIBS=$(python3 -c "print(round(1024 / $R_SECS, 1))")
  A_MIBS=$(python3 -c "print(round(1024 / $A_SECS, 1))")
  RATIO=$(python3 -c "print(round(100 * $A_SECS / $R_SECS))")
fi

# --- 3. purge ------------------------------------------------------------------------------------------
log "purge --unused-days 5 of $N objects"
timed purge "${M[@]}" purge --unused-days 5 --yes --max-delete 1000000 -o json
P_SECS=$ELAPSED; P_RSS=$((RSS_KB / 1024))
DELETED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["deleted"])' "$WORK/purge.out")

if [ "$S3_SERVER" = garage ]; then
  S3_LABEL="Garage $("$(garage_bin)" --version 2>/dev/null | head -1 | awk '{print $2}') single node (${GARAGE_DB_ENGINE:-sqlite} metadata)"
else
  S3_LABEL="s3s-fs (mirrorctl demo up, its own process)"
fi
cat <<EOF
machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), loopback; S3: $S3_LABEL; origin: mirrorctl demo origin; database: SQLite
validate --all -j 64: $CHECKED files checked ($FRESH fresh) in ${V_SECS}s = $V_RATE files/s, peak RSS $V_RSS MiB
  mirrorctl --config C --headless validate --all -j 64 -o json
EOF
if [ -z "${SKIP_REMIRROR:-}" ]; then
  cat <<EOF
remirror 1 GiB: remirrored=$R_OK, median ${R_SECS}s (runs:$R_ALL) = $R_MIBS MiB/s, peak RSS $R_RSS MiB
  mirrorctl --config C --headless remirror big/1GiB.bin --yes -o json
aws s3 cp 1 GiB (same file, same S3 server): median ${A_SECS}s (runs:$A_ALL) = $A_MIBS MiB/s, peak RSS $A_RSS MiB  -> mirrorctl at $RATIO% of aws s3 cp
  aws --endpoint-url $ENDPOINT s3 cp --only-show-errors 1GiB.bin s3://bench-mirror/big/aws-copy.bin
EOF
fi
cat <<EOF
purge of $N objects: deleted=$DELETED in ${P_SECS}s, peak RSS $P_RSS MiB
  mirrorctl --config C --headless purge --unused-days 5 --yes --max-delete 1000000 -o json
EOF
