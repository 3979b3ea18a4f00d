#!/usr/bin/env bash
# drift vs `rclone check` and vs a bare listing, side by side, on one loopback Garage server:
# wall time and peak RSS (/usr/bin/time -v) of `mirrorctl drift --combined`, of a bare parallel
# listing of both buckets (examples/drift_bench_list.rs: main and backup listed at once, pages
# of 1,000, the same S3 client, nothing compared: the floor drift is measured against) and of
# `rclone check --combined` with its defaults and with --fast-list, on buckets seeded with
# drift of every kind. The listing and mirrorctl run REPEAT times (default 3), alternating;
# rclone once. Also checks that both report the same difference set.
#
#   scripts/bench-drift.sh [N ...]        # default: 100000
#   REPEAT=5 DRIFT_ARGS="-j 8" scripts/bench-drift.sh 10000 100000
#
# Needs: Garage (garage on PATH or in ~/.cargo/bin), rclone, GNU time. GARAGE_DB_ENGINE picks
# Garage's metadata engine (lmdb, its default, or sqlite). Garage, not s3s-fs:
# rclone's --fast-list lists nothing on s3s-fs (empty-delimiter quirk).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("${@:-100000}")
WORK=$(mktemp -d /tmp/mirrorctl-bench.XXXXXX)
GARAGE_PID=""
cleanup() {
  [ -n "$GARAGE_PID" ] && kill "$GARAGE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '== %s\n' "$*" >&2; }

command -v rclone >/dev/null || { echo "rclone is not installed (apt-get install rclone)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "GNU time is not installed (apt-get install time)" >&2; exit 2; }
. scripts/garage.sh

log "building mirrorctl (release)"
cargo build --release --quiet --bin mirrorctl --example drift_bench_seed --example drift_bench_list
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
# Copies, so that a rebuild during a long run does not swap the binaries under it.
cp "$TARGET/release/mirrorctl" "$TARGET/release/examples/drift_bench_seed" "$TARGET/release/examples/drift_bench_list" "$WORK/"
MIRRORCTL="$WORK/mirrorctl"
SEED="$WORK/drift_bench_seed"
LIST="$WORK/drift_bench_list"
REPEAT=${REPEAT:-3}
read -r -a DRIFT_ARGS <<<"${DRIFT_ARGS:-}"

# LMDB is Garage's default metadata engine (and seeds ~2.5x faster than its SQLite engine).
export GARAGE_DB_ENGINE=${GARAGE_DB_ENGINE:-lmdb}
log "Garage metadata engine: $GARAGE_DB_ENGINE"
start_garage "$WORK/garage" 100G || exit 2
KEY=$GARAGE_KEY SECRET=$GARAGE_SECRET ENDPOINT=$GARAGE_ENDPOINT

export RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other RCLONE_CONFIG_G_ENDPOINT="$ENDPOINT" \
  RCLONE_CONFIG_G_ACCESS_KEY_ID="$KEY" RCLONE_CONFIG_G_SECRET_ACCESS_KEY="$SECRET" \
  RCLONE_CONFIG_G_REGION=us-east-1 RCLONE_CONFIG_G_FORCE_PATH_STYLE=true

# Runs a command under GNU time; prints "seconds peak_rss_kib" and keeps stdout in $2.
measure() {
  local name=$1 out=$2; shift 2
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$out" 2>"$WORK/$name.err" || true
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/$name.time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.time")
  echo "$wall $rss"
}

for N in "${SIZES[@]}"; do
  MAIN="bench-main-$N"; BACKUP="bench-backup-$N"; DB="$WORK/inventory-$N.db"
  log "seeding $N objects per bucket (this is the slow part)"
  "$SEED" "$ENDPOINT" "$KEY" "$SECRET" "$MAIN" "$BACKUP" "$N" "$DB"
  cat > "$WORK/config-$N.toml" <<TOML
[database]
url = "sqlite://$DB"

[buckets.mirror]
bucket = "$MAIN"
endpoint = "$ENDPOINT"
path_style = true
access_key_id = "$KEY"
secret_access_key = "$SECRET"

[buckets.backup]
bucket = "$BACKUP"
endpoint = "$ENDPOINT"
path_style = true
access_key_id = "$KEY"
secret_access_key = "$SECRET"
TOML
  # Warm the server's caches the same way for everyone.
  env -u AWS_CA_BUNDLE rclone size "G:$MAIN" >/dev/null 2>&1 || true

  T_LISTS=() T_OURS_ALL=() R_LISTS=() R_OURS_ALL=()
  for r in $(seq 1 "$REPEAT"); do
    read -r T R < <(measure list "$WORK/list-$N.txt" "$LIST" "$ENDPOINT" "$KEY" "$SECRET" "$MAIN" "$BACKUP")
    T_LISTS+=("$T"); R_LISTS+=("$R")
    read -r T R < <(measure ours "$WORK/ours-$N.txt" "$MIRRORCTL" --config "$WORK/config-$N.toml" --headless drift --combined "${DRIFT_ARGS[@]}")
    T_OURS_ALL+=("$T"); R_OURS_ALL+=("$R")
    log "run $r: bare listing ${T_LISTS[-1]} s ($(cat "$WORK/list-$N.txt")), mirrorctl ${T_OURS_ALL[-1]} s"
  done
  # The median of the runs.
  median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  T_LIST=$(median "${T_LISTS[@]}"); R_LIST=$(median "${R_LISTS[@]}")
  T_OURS=$(median "${T_OURS_ALL[@]}"); R_OURS=$(median "${R_OURS_ALL[@]}")
  read -r T_RC R_RC < <(measure rclone "$WORK/rclone-$N.txt" env -u AWS_CA_BUNDLE rclone check "G:$MAIN" "G:$BACKUP" --combined -)
  read -r T_RCF R_RCF < <(measure rclonef "$WORK/rclonef-$N.txt" env -u AWS_CA_BUNDLE rclone check --fast-list "G:$MAIN" "G:$BACKUP" --combined -)

  for f in ours rclone rclonef; do sort -k2 "$WORK/$f-$N.txt" | grep -v '^= ' > "$WORK/$f-$N.diffs" || true; done
  SAME_RC=$(cmp -s "$WORK/ours-$N.diffs" "$WORK/rclone-$N.diffs" && echo yes || echo no)
  SAME_RCF=$(cmp -s "$WORK/ours-$N.diffs" "$WORK/rclonef-$N.diffs" && echo yes || echo no)
  echo
  echo "N=$N objects per bucket; differences found: $(wc -l < "$WORK/ours-$N.diffs") (mirrorctl), $(wc -l < "$WORK/rclone-$N.diffs") (rclone), $(wc -l < "$WORK/rclonef-$N.diffs") (rclone --fast-list)"
  echo "mirrorctl summary: $(tail -1 "$WORK/ours.err")"
  printf '| %-32s | %9s | %13s | %s |\n' "tool" "wall (s)" "peak RSS (MiB)" "same difference set as mirrorctl"
  printf '| %-32s | %9s | %13s | %s |\n' "bare listing of both buckets" "$T_LIST" "$((R_LIST / 1024))" "- (runs: ${T_LISTS[*]})"
  printf '| %-32s | %9s | %13s | %s |\n' "mirrorctl drift --combined" "$T_OURS" "$((R_OURS / 1024))" "- (runs: ${T_OURS_ALL[*]})"
  printf '| %-32s | %9s | %13s | %s |\n' "rclone check" "$T_RC" "$((R_RC / 1024))" "$SAME_RC"
  printf '| %-32s | %9s | %13s | %s |\n' "rclone check --fast-list" "$T_RCF" "$((R_RCF / 1024))" "$SAME_RCF"
  python3 -c "import sys; o,l,r,f=map(float,sys.argv[1:]); print(f'mirrorctl / bare listing: {o/l:.2f}x (goal <= 1.2); mirrorctl / rclone check: {o/r:.2f}x, / rclone --fast-list: {o/f:.2f}x (goal <= 0.5)')" "$T_OURS" "$T_LIST" "$T_RC" "$T_RCF"
  [ "$SAME_RC" = yes ] || diff "$WORK/ours-$N.diffs" "$WORK/rclone-$N.diffs" | head -20
done
