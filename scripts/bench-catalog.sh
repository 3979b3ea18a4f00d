#!/usr/bin/env bash
# Benchmarks of the catalog: import, pull-through and prefetch, on loopback, against
# PostgreSQL 15 (a fresh database per run, dropped at the end), a single-node Garage as the
# mirror bucket and Python's http.server as the origin (its access log counts origin requests):
#   1. `catalog import` of a 1,000,000-line JSON Lines file: wall time, peak RSS, where the time
#      goes (sqlx's statement log: staging vs merge; CPU of mirrorctl vs PostgreSQL), next to
#      psql's `\copy` of the same rows (as CSV) into a plain table, and into one with a unique
#      index, as the floor;
#   2. the same import again: wall time, and that it changed nothing (added 0, changed 0);
#   3. pull-through of unknown keys through `serve`: curl's time_starttransfer through serve for
#      fresh keys (each requested once) next to the origin's own for the same files, paired;
#   4. 1,000 concurrent requests (xargs -P 50 curl) for 100 keys the origin does not have: how
#      many reached the origin (negative cache and single-flight);
#   5. `prefetch --unmirrored` of 10,000 small files (no copies yet), then rounds of
#      `remirror --all-stale` and `prefetch --unmirrored` of the same files at the same
#      concurrency, each after marking them all stale: files/s, peak RSS, CPU of each process
#      involved (and of anything else on the machine).
# Prints the figures and the commands. Needs PostgreSQL 15 (pg_ctlcluster), garage
# (cargo install garage), curl, python3, GNU time.
#
#   scripts/bench-catalog.sh
#   BENCH_LINES=200000 BENCH_PREFETCH=2000 scripts/bench-catalog.sh
#   BENCH_J=4 BENCH_ROUNDS=2 scripts/bench-catalog.sh   # prefetch/remirror concurrency (default
#                                                       # 16) and rounds of the pair (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
LINES=${BENCH_LINES:-1000000}
NPULL=${BENCH_PULL:-200}
NPF=${BENCH_PREFETCH:-10000}
J=${BENCH_J:-16}
WORK=$(mktemp -d /tmp/mirrorctl-bench-catalog.XXXXXX)
GARAGE_PID="" ORIGIN_PID="" SERVE_PID="" STARTED_PG="" PG_ADMIN="" DBS=()
log() { printf '== %s\n' "$*" >&2; }
cleanup() {
  for p in "$SERVE_PID" "$ORIGIN_PID" "$GARAGE_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [ -n "$PG_ADMIN" ]; then
    for d in "${DBS[@]}"; do
      for _ in 1 2 3 4 5; do psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 && break; sleep 1; done
      psql "$PG_ADMIN" -Atc "SELECT 1 FROM pg_database WHERE datname = '$d'" 2>/dev/null | grep -q 1 && echo "could not drop database $d" >&2
    done
  fi
  [ -n "$STARTED_PG" ] && pg_ctlcluster "$STARTED_PG" main stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -x /usr/bin/time ] || { echo "GNU time is not installed (apt-get install time)" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || true
T_START=$(date +%s) LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log "building (release)"
cargo build --release --quiet --bin mirrorctl
cp target/release/mirrorctl "$WORK/mirrorctl"   # a private copy: target/ may be rebuilt meanwhile
# What was built: the tree is shared, so say whether the measured paths differ from HEAD.
CODE="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src/engine src/serve src/main.rs || echo ' + uncommitted changes in src/engine, src/serve or src/main.rs')"
BIN="$WORK/mirrorctl"

# --- PostgreSQL: the cluster as scripts/test.sh sets it up, a fresh database per run -------------
. scripts/postgres.sh
start_postgres "${PG_VERSION:-15}"
TAG="bench_catalog_$$_$(date +%s)"
DB_A="${TAG}_a" DB_B="${TAG}_b"     # a: the 1M import and serve; b: prefetch/remirror
for d in "$DB_A" "$DB_B"; do
  psql "$PG_ADMIN" -qc "CREATE DATABASE $d" >/dev/null
  DBS+=("$d")
done
URL_A="$PG_BASE/$DB_A" URL_B="$PG_BASE/$DB_B"
MIRRORCTL_DATABASE_URL="$URL_A" "$BIN" migrate >/dev/null
MIRRORCTL_DATABASE_URL="$URL_B" "$BIN" migrate >/dev/null
# Statements over 20 ms in the prefetch/remirror database go to the server log, read per phase.
PG_LOG=$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $7}')
as_root su postgres -c "psql -q -p $PG_PORT -c \"ALTER DATABASE $DB_B SET log_min_duration_statement = '20ms'\""
PG_SETTINGS=$(psql "$URL_A" -Atc "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ' ') FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'max_wal_size', 'work_mem')")

# CPU seconds (user+system) of a process; of PostgreSQL: the postmaster's own and its reaped
# children's (a backend that ended is counted there), plus its live children's.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
PG_DATA=$(pg_lsclusters -h | awk -v v="$PG_VERSION" '$1==v && $2=="main" {print $6}')
PG_MASTER=$(as_root head -1 "$PG_DATA/postmaster.pid")
pg_cpu() {
  python3 - "$PG_MASTER" "$(getconf CLK_TCK)" <<'PY'
import os, sys
master, hz = sys.argv[1], int(sys.argv[2])
def fields(pid):
    s = open(f"/proc/{pid}/stat").read()
    return s[s.rindex(")") + 2:].split()   # from field 3 (state) on
f = fields(master)
total = sum(int(x) for x in f[11:15])      # utime stime cutime cstime
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            g = fields(pid)
        except OSError:
            continue
        if g[1] == master:                 # ppid
            total += int(g[11]) + int(g[12])
print(total / hz)
PY
}
# The whole machine's busy CPU seconds (all processes: ours and anyone else's).
machine_cpu() { awk -v t="$(getconf CLK_TCK)" '/^cpu / {print ($2+$3+$4+$7+$8+$9)/t}' /proc/stat; }
# measure NAME CMD...: runs CMD under GNU time; sets ELAPSED (s), RSS_MIB, CPU_S (user+sys),
# MACHINE_S (busy CPU seconds of the whole machine meanwhile) and LOAD1 (load average before);
# stdout in $WORK/NAME.out, stderr in $WORK/NAME.err. Exit 3 (problems found) counts as done.
measure() {
  local name=$1; shift
  local rc=0 m0
  LOAD1=$(cut -d' ' -f1 /proc/loadavg); m0=$(machine_cpu)
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
  if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
    echo "$name failed (exit $rc):" >&2; tail -20 "$WORK/$name.err" >&2; exit 1
  fi
  ELAPSED=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$WORK/$name.time" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  RSS_MIB=$(awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$WORK/$name.time")
  CPU_S=$(awk -F': ' '/User time|System time/ {s+=$2} END {printf "%.2f", s}' "$WORK/$name.time")
  MACHINE_S=$(python3 -c "print(round($(machine_cpu) - $m0, 1))")
}
jget() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(" ".join(str(d[k]) for k in sys.argv[2:]))' "$@"; }

# --- 1. the catalog file -----------------------------------------------------------------------
log "generating $LINES catalog lines (JSON Lines, and the same rows as CSV for \\copy)"
python3 - "$LINES" "$WORK/catalog.jsonl" "$WORK/catalog.csv" <<'PY'
import hashlib, random, sys
n = int(sys.argv[1])
rnd = random.Random(8)
syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "xe", "zu", "bra", "cor", "dul", "fen", "gri"]
projects = ["".join(rnd.choice(syll) for _ in range(rnd.randint(2, 4))) + rnd.choice(["", "-lib", "-core", "-tools", "-mod"]) for _ in range(40000)]
with open(sys.argv[2], "w") as j, open(sys.argv[3], "w") as c:
    c.write("remote_id,url,size,etag,file_name\n")
    for i in range(1, n + 1):
        p = projects[int(len(projects) * rnd.random() ** 2)]
        ver = f"{rnd.randint(0, 9)}.{rnd.randint(0, 30)}.{rnd.randint(0, 99)}"
        rid = str(1000000 + i)
        name = f"{p}-{ver}.bin"
        url = f"pkgs/{p}/{rid}/{name}"
        size = min(int(rnd.lognormvariate(13, 2)), 4 << 30)
        etag = hashlib.md5(rid.encode()).hexdigest()
        j.write(f'{{"remote_id":"{rid}","url":"{url}","size":{size},"etag":"{etag}","file_name":"{name}"}}\n')
        c.write(f"{rid},{url},{size},{etag},{name}\n")
PY
FILE_MIB=$(du -m "$WORK/catalog.jsonl" | cut -f1)
SAMPLE=$(head -1 "$WORK/catalog.jsonl")

# sqlx's statement log (each statement with its elapsed time) shows where an import's time goes.
IMPORT_LOG="mirrorctl=info,sqlx::query=debug"
stages() { # stages NAME: the staging phase and the merge's statements, from sqlx's log
  python3 - "$WORK/$1.err" <<'PY'
import re, sys
from datetime import datetime
def secs(v):
    m = re.match(r"([0-9.]+)(ns|µs|us|ms|s)$", v)
    return float(m.group(1)) * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1}[m.group(2)]
def label(summary, stmt):
    text = stmt or summary
    for pat, name in [(r"^INSERT INTO catalog_stage", "stage"), (r"^INSERT INTO origin_files", "insert new"),
                      (r"^UPDATE mirrored_files", "mark stale"), (r"^UPDATE origin_files", "update changed"),
                      (r"^SELECT count\(\*\) FROM catalog_stage$", "count staged"),
                      (r"^SELECT count\(\*\) FROM catalog_stage s WHERE NOT EXISTS", "count new"),
                      (r"^SELECT count\(\*\) FROM catalog_stage s JOIN origin_files", "count changed"), (r"^COMMIT", "commit")]:
        if re.search(pat, text):
            return name
    return None
rows = []
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r'(\S+Z) .*summary="([^"]*)" db\.statement="((?:[^"\\]|\\.)*)".*elapsed=([0-9.]+[a-zµ]+) ', line)
    if not m:
        continue
    name = label(m.group(2), m.group(3).replace("\\n", " ").strip())
    if name:
        t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")[:26] + "+00:00").timestamp()
        rows.append((name, t, secs(m.group(4))))
st = [r for r in rows if r[0] == "stage"]
if not st:
    print("no statement log"); sys.exit()
first = st[0][1] - st[0][2]
merge_start = max(r[1] for r in st)
commit = max(r[1] for r in rows)
parts = {}
for name, t, e in rows:
    if name not in ("stage",):
        parts[name] = parts.get(name, 0) + e
print(f"staging {merge_start - first:.1f}s from the first batch to the last ({len(st)} INSERT … UNNEST, {sum(r[2] for r in st):.1f}s of it in PostgreSQL); "
      f"merge {commit - merge_start:.1f}s: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items()))
PY
}

log "catalog import of $LINES lines ($FILE_MIB MiB)"
PG0=$(pg_cpu)
measure import1 env MIRRORCTL_DATABASE_URL="$URL_A" MIRRORCTL_LOG="$IMPORT_LOG" "$BIN" --headless catalog import "$WORK/catalog.jsonl" -o json
I1_S=$ELAPSED I1_RSS=$RSS_MIB I1_CPU=$CPU_S I1_PG=$(python3 -c "print(round($(pg_cpu) - $PG0, 1))") I1_M="$MACHINE_S s busy on the machine, load $LOAD1 before"
read -r I1_ADDED I1_CHANGED I1_UNCHANGED I1_LINES <<<"$(jget "$WORK/import1.out" added changed unchanged lines)"
I1_STAGES=$(stages import1)
ROWS_A=$(psql "$URL_A" -Atc "SELECT count(*) FROM origin_files")

log "the same import again"
PG0=$(pg_cpu)
measure import2 env MIRRORCTL_DATABASE_URL="$URL_A" MIRRORCTL_LOG="$IMPORT_LOG" "$BIN" --headless catalog import "$WORK/catalog.jsonl" -o json
I2_S=$ELAPSED I2_RSS=$RSS_MIB I2_CPU=$CPU_S I2_PG=$(python3 -c "print(round($(pg_cpu) - $PG0, 1))") I2_M="$MACHINE_S s busy on the machine, load $LOAD1 before"
read -r I2_ADDED I2_CHANGED I2_UNCHANGED <<<"$(jget "$WORK/import2.out" added changed unchanged)"
I2_STAGES=$(stages import2)

log "psql \\copy of the same rows (CSV) into a plain table, and into one with a unique index"
psql "$URL_A" -qc "CREATE TABLE copy_plain (remote_id text, url text, size bigint, etag text, file_name text)"
psql "$URL_A" -qc "CREATE TABLE copy_unique (remote_id text, url text, size bigint, etag text, file_name text, UNIQUE (remote_id))"
measure copy1 psql "$URL_A" -qc "\\copy copy_plain FROM '$WORK/catalog.csv' WITH (FORMAT csv, HEADER)"
C1_S=$ELAPSED
measure copy2 psql "$URL_A" -qc "\\copy copy_unique FROM '$WORK/catalog.csv' WITH (FORMAT csv, HEADER)"
C2_S=$ELAPSED
psql "$URL_A" -qc "DROP TABLE copy_plain, copy_unique"
rm -f "$WORK/catalog.csv"
# The import leaves work behind (autovacuum of a million new rows, a checkpoint of what it
# wrote): done now, so that it does not land on the later phases' CPU and time.
log "VACUUM ANALYZE origin_files and CHECKPOINT"
T0=$(date +%s.%N)
psql "$URL_A" -qc "VACUUM ANALYZE origin_files"
as_root su postgres -c "psql -q -p $PG_PORT -c CHECKPOINT"
SETTLE_S=$(python3 -c "print(round($(date +%s.%N) - $T0, 1))")

# --- Garage, the origin, serve -----------------------------------------------------------------
. scripts/garage.sh
start_garage "$WORK/garage" 8G || exit 1
G=("$(garage_bin)" -c "$WORK/garage/garage.toml")
"${G[@]}" bucket create bench-catalog >/dev/null
"${G[@]}" bucket allow --read --write --owner bench-catalog --key mirrorctl >/dev/null

log "origin files: $NPULL for pull-through (64 KiB), $NPF for prefetch (16 KiB)"
ORIGIN_DIR="$WORK/origin"
python3 - "$ORIGIN_DIR" "$NPULL" "$NPF" "$WORK/prefetch.jsonl" <<'PY'
import os, sys
root, npull, npf = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in ("pull", "warm", "pf"):
    os.makedirs(os.path.join(root, d), exist_ok=True)
for i in range(npull):
    open(os.path.join(root, "pull", f"{i:05d}.bin"), "wb").write(os.urandom(65536))
for i in range(5):
    open(os.path.join(root, "warm", f"{i}.bin"), "wb").write(os.urandom(65536))
with open(sys.argv[4], "w") as cat:
    for i in range(npf):
        open(os.path.join(root, "pf", f"{i:05d}.bin"), "wb").write(os.urandom(16384))
        cat.write(f'{{"remote_id":"pf-{i}","url":"pf/{i:05d}.bin","size":16384}}\n')
PY
ORIGIN_PORT=$(free_port)
# ThreadingHTTPServer (a thread per connection); every request is a line of its access log.
python3 -u -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$ORIGIN_DIR" 2>"$WORK/origin.log" >/dev/null &
ORIGIN_PID=$!
ORIGIN="http://127.0.0.1:$ORIGIN_PORT/"
for _ in $(seq 1 100); do curl -s -o /dev/null "${ORIGIN}warm/0.bin" && break; sleep 0.1; done

write_config() { # write_config FILE DATABASE_URL PORT
  cat > "$1" <<TOML
[database]
url = "$2"

[buckets.mirror]
bucket = "bench-catalog"
endpoint = "$GARAGE_ENDPOINT"
path_style = true
access_key_id = "$GARAGE_KEY"
secret_access_key = "$GARAGE_SECRET"

[origin]
base_url = "$ORIGIN"

[serve]
listen = "127.0.0.1:$3"
negative_ttl = "60s"
TOML
}
PORT=$(free_port)
write_config "$WORK/serve.toml" "$URL_A" "$PORT"
"$BIN" --config "$WORK/serve.toml" serve >"$WORK/serve.log" 2>&1 &
SERVE_PID=$!
SERVE="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do curl -sf -o /dev/null "$SERVE/healthz" && break; sleep 0.1; done
curl -sf -o /dev/null "$SERVE/readyz" || { echo "serve is not ready:" >&2; curl -s "$SERVE/readyz" >&2; cat "$WORK/serve.log" >&2; exit 1; }
# Warm serve's pools (database, origin, mirror) with keys that are not measured.
for i in 0 1 2 3 4; do curl -s -o /dev/null "$SERVE/files/warm/$i.bin"; done
sleep 1

# --- 3. pull-through: first byte through serve vs from the origin, per key -----------------------
log "pull-through of $NPULL unknown keys, each once, paired with the origin directly"
: > "$WORK/ttfb.txt"
direct() { curl -s -o /dev/null -w '%{time_starttransfer}' "$ORIGIN$1"; }
through() { curl -s -o /dev/null -w '%{time_starttransfer} %{http_code} %{size_download}' "$SERVE/files/$1"; }
for i in $(seq 0 $((NPULL - 1))); do
  k=$(printf 'pull/%05d.bin' "$i")
  if [ $((i % 2)) = 0 ]; then d=$(direct "$k"); s=$(through "$k"); else s=$(through "$k"); d=$(direct "$k"); fi
  echo "$d $s" >> "$WORK/ttfb.txt"
done
TTFB=$(python3 - "$WORK/ttfb.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
d = [float(r[0]) * 1000 for r in rows]; s = [float(r[1]) * 1000 for r in rows]
ok = sum(1 for r in rows if r[2] == "200" and r[3] == "65536")
add = sorted(b - a for a, b in zip(d, s))
q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]
print(f"{len(rows)} keys, {ok} answered 200 with the whole body; origin first byte median {statistics.median(d):.2f} ms "
      f"(p95 {q(d, .95):.2f}); through serve median {statistics.median(s):.2f} ms (p95 {q(s, .95):.2f}); "
      f"added per key: median {statistics.median(add):.2f} ms, p95 {q(add, .95):.2f} ms, max {add[-1]:.2f} ms")
PY
)
sleep 3
PULL_STORED=$(psql "$URL_A" -Atc "SELECT count(*) FROM mirrored_files WHERE key LIKE 'pull/%' AND deleted_at IS NULL AND NOT is_stale")
PULL_REG=$(psql "$URL_A" -Atc "SELECT count(*) FROM origin_files WHERE key LIKE 'pull/%'")
AGAIN=$(curl -s -o /dev/null -D - "$SERVE/files/pull/00000.bin" | awk -F': ' 'tolower($1)=="x-cache" {print $2}' | tr -d '\r')

# --- 4. 1,000 concurrent requests for 100 keys the origin does not have --------------------------
log "1,000 requests (50 at a time) for 100 keys the origin does not have"
python3 - "$SERVE" > "$WORK/missing-urls.txt" <<'PY'
import random, sys
urls = [f"{sys.argv[1]}/files/missing/{k:04d}.bin" for k in range(100) for _ in range(10)]
random.Random(4).shuffle(urls)
print("\n".join(urls))
PY
T0=$(date +%s.%N)
xargs -P 50 -n 1 curl -s -o /dev/null -w '%{http_code}\n' < "$WORK/missing-urls.txt" > "$WORK/missing-codes.txt"
NEG_S=$(python3 -c "print(round($(date +%s.%N) - $T0, 2))")
sleep 1
NEG_CODES=$(sort "$WORK/missing-codes.txt" | uniq -c | awk '{printf "%s×%s ", $1, $2}')
NEG_ORIGIN=$(grep -c '"GET /missing/' "$WORK/origin.log" || true)
NEG_KEYS=$(grep -o '"GET /missing/[0-9]*\.bin' "$WORK/origin.log" | sort -u | wc -l)
kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; SERVE_PID=""

# --- 5. prefetch vs remirror -------------------------------------------------------------------
write_config "$WORK/pf.toml" "$URL_B" "$(free_port)"
M=("$BIN" --config "$WORK/pf.toml" --headless)
measure pfimport "${M[@]}" catalog import "$WORK/prefetch.jsonl" -o json
PF_IMPORT_S=$ELAPSED
phase() { # phase NAME CMD...: measure, plus the CPU the origin, Garage and PostgreSQL spent meanwhile
  local name=$1; shift
  local o0 g0 p0 o g p l0; o0=$(cpu_of "$ORIGIN_PID"); g0=$(cpu_of "$GARAGE_PID"); p0=$(pg_cpu)
  l0=$(as_root stat -c %s "$PG_LOG")
  measure "$name" "$@"
  SLOW=$(as_root tail -c +$((l0 + 1)) "$PG_LOG" | python3 -c '
import re, sys
db, n, t, top = sys.argv[1], 0, 0.0, 0.0
for line in sys.stdin:
    m = re.search(r"@" + re.escape(db) + r" LOG:  duration: ([0-9.]+) ms  (?:execute [^:]*: )?(SELECT o\.id AS catalog_id|SELECT m\.id, m\.key)", line)
    if m:
        d = float(m.group(1)); n += 1; t += d; top = max(top, d)
print(f"{n} page queries over 20 ms, {t / 1000:.2f} s in all" + (f", the longest {top:.0f} ms" if n else ""))' "$DB_B")
  o=$(python3 -c "print(round($(cpu_of "$ORIGIN_PID") - $o0, 1))"); g=$(python3 -c "print(round($(cpu_of "$GARAGE_PID") - $g0, 1))"); p=$(python3 -c "print(round($(pg_cpu) - $p0, 1))")
  OTHERS="origin $o s, Garage $g s, PostgreSQL $p s; $MACHINE_S s busy on the machine ($(python3 -c "print(round($MACHINE_S - $CPU_S - $o - $g - $p, 1))") s of it anyone else's), load $LOAD1 before; $SLOW"
}
rate() { python3 -c "print(round($1 / $2))"; }
# Before each phase the database is settled (VACUUM ANALYZE, CHECKPOINT), so that autovacuum
# of the previous step's rows (the import's, the stale marks' dead tuples) and a checkpoint do
# not land on whichever phase comes next. (It does not remove the first prefetch's extra
# PostgreSQL CPU: see BENCHMARKS.md, the page query's plan while mirrored_files grows.)
settle() {
  psql "$URL_B" -qc "VACUUM ANALYZE" 2>/dev/null
  as_root su postgres -c "psql -q -p $PG_PORT -c CHECKPOINT"
}
stale() { psql "$URL_B" -qc "UPDATE mirrored_files SET is_stale = true, stale_reason = 'bench'"; settle; }
: > "$WORK/rates.txt"
run_prefetch() { # run_prefetch NAME WHAT
  log "prefetch --unmirrored -j $J of $NPF catalog entries ($2)"
  phase "$1" "${M[@]}" prefetch --unmirrored -j "$J" --yes -o json
  local n f; read -r n f <<<"$(jget "$WORK/$1.out" stored failed)"
  echo "   prefetch --unmirrored ($2): $n stored, $f failed in ${ELAPSED}s = $(rate "$n" "$ELAPSED") files/s, peak RSS $RSS_MIB MiB; CPU: mirrorctl $CPU_S s, $OTHERS" >> "$WORK/pf-report.txt"
  if [ "$1" = prefetch0 ]; then echo "first $(rate "$n" "$ELAPSED")"; else echo "prefetch $(rate "$n" "$ELAPSED")"; fi >> "$WORK/rates.txt"
}
run_remirror() { # run_remirror NAME
  log "remirror --all-stale -j $J of the same $NPF files (stale)"
  phase "$1" "${M[@]}" remirror --all-stale -j "$J" --yes -o json
  local n f; read -r n f <<<"$(jget "$WORK/$1.out" remirrored failed)"
  echo "   remirror --all-stale (the same files, stale): $n remirrored, $f failed in ${ELAPSED}s = $(rate "$n" "$ELAPSED") files/s, peak RSS $RSS_MIB MiB; CPU: mirrorctl $CPU_S s, $OTHERS" >> "$WORK/pf-report.txt"
  echo "remirror $(rate "$n" "$ELAPSED")" >> "$WORK/rates.txt"
}
: > "$WORK/pf-report.txt"
# First the prefetch of entries without copies (it inserts the mirrored rows); then, on the
# same stale copies, BENCH_ROUNDS (default 4) rounds of remirror and prefetch, alternating
# which goes first: single runs of either moved by ±10 % on this shared machine.
settle; run_prefetch prefetch0 "no copies yet"
for r in $(seq 1 "${BENCH_ROUNDS:-4}"); do
  if [ $((r % 2)) = 1 ]; then
    stale; run_remirror "remirror$r"; stale; run_prefetch "prefetch$r" "the same files, stale"
  else
    stale; run_prefetch "prefetch$r" "the same files, stale"; stale; run_remirror "remirror$r"
  fi
done
PF_RATES=$(python3 - "$WORK/rates.txt" <<'PY'
import statistics, sys
r = {}
for line in open(sys.argv[1]):
    k, v = line.split(); r.setdefault(k, []).append(int(v))
p, m = statistics.median(r["prefetch"]), statistics.median(r["remirror"])
f = r["first"][0]
print(f"first prefetch (no copies) {f} files/s = {100 * f / m:.0f}% of remirror's median {m:.0f}; "
      f"on stale copies, {len(r['prefetch'])} runs each, median files/s: prefetch {p:.0f}, remirror {m:.0f} -> prefetch at {100 * p / m:.0f}% of remirror")
PY
)
PF_ROWS=$(psql "$URL_B" -Atc "SELECT count(*) || ' rows, ' || count(*) FILTER (WHERE NOT is_stale) || ' fresh' FROM mirrored_files WHERE deleted_at IS NULL")

cat <<EOF
machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), loopback; PostgreSQL $(psql "$URL_A" -Atc 'SHOW server_version') ($PG_SETTINGS); S3: Garage $("$(garage_bin)" --version 2>/dev/null | head -1 | awk '{print $2}') single node; origin: python3 -m http.server ($(python3 --version 2>&1)); code $CODE; load average at the start $LOAD_START
1. catalog import of $I1_LINES lines ($FILE_MIB MiB JSON Lines, e.g. $SAMPLE):
   ${I1_S}s, peak RSS $I1_RSS MiB; added $I1_ADDED, changed $I1_CHANGED, unchanged $I1_UNCHANGED; origin_files rows $ROWS_A; CPU: mirrorctl $I1_CPU s, PostgreSQL $I1_PG s ($I1_M)
   $I1_STAGES
   MIRRORCTL_DATABASE_URL=postgres://… mirrorctl --headless catalog import catalog.jsonl -o json
   floor: psql \\copy of the same rows as CSV into a plain table ${C1_S}s; into a table with UNIQUE (remote_id) ${C2_S}s
   psql URL -c "\\copy copy_plain FROM 'catalog.csv' WITH (FORMAT csv, HEADER)"
   afterwards, before the other phases: VACUUM ANALYZE origin_files and CHECKPOINT, ${SETTLE_S}s
2. the same import again: ${I2_S}s, peak RSS $I2_RSS MiB; added $I2_ADDED, changed $I2_CHANGED, unchanged $I2_UNCHANGED; CPU: mirrorctl $I2_CPU s, PostgreSQL $I2_PG s ($I2_M)
   $I2_STAGES
3. pull-through (serve on PostgreSQL with the $ROWS_A-entry catalog, mirror on Garage), 64 KiB files:
   $TTFB
   stored afterwards: $PULL_STORED fresh copies, $PULL_REG catalog entries registered; the next GET of a pulled key: X-Cache $AGAIN
   curl -s -o /dev/null -w '%{time_starttransfer}' ${ORIGIN}pull/NNNNN.bin ; curl … $SERVE/files/pull/NNNNN.bin (alternating which goes first)
4. 1,000 requests for 100 keys the origin lacks (xargs -P 50 -n 1 curl, shuffled, each key 10 times): ${NEG_S}s; answers: $NEG_CODES; origin requests for them: $NEG_ORIGIN (for $NEG_KEYS distinct keys)
5. $NPF files of 16 KiB, catalog in PostgreSQL (imported in ${PF_IMPORT_S}s), -j $J:
$(cat "$WORK/pf-report.txt")
   $PF_RATES
   mirrored_files afterwards: $PF_ROWS
   mirrorctl --config C --headless prefetch --unmirrored -j $J --yes -o json ; psql -c "UPDATE mirrored_files SET is_stale = true" ; mirrorctl … remirror --all-stale -j $J --yes -o json
whole run: $(( $(date +%s) - T_START ))s
EOF
