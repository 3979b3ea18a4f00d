#!/usr/bin/env bash
# README.md's "## Your own mirror", end to end: runs the commands of the fenced blocks marked
# `<!-- first-mirror: run -->`, read from the README itself (so what runs is what the README
# says, byte for byte), one at a time in one shell, against a fresh Garage bucket, a fresh
# database and `python3 -m http.server` as the origin (a separate process). Only the block
# marked `<!-- first-mirror: values -->` is replaced: this script sets the same variables to
# the servers it started, and fails when that block assigns anything else.
#
# Checks every step: the exit code; a trailing `# TEXT` comment on a command is the output it
# must print, exactly (so the README's `# x-cache: MISS` / `# x-cache: HIT` are checked); a
# downloaded body equals the origin's file (SHA-256); after a miss the entry shows up mirrored
# in `catalog list -o json`; after an import the catalog grew; after a prefetch nothing is
# unmirrored. At the end: every entry mirrored with the origin's size, the bucket's objects
# equal the origin's files, the row's SHA-256 is the origin's, `serve` stops cleanly on
# SIGTERM, and `stats` counts the hits and misses the README's downloads got.
#
#   scripts/first-mirror.sh                    both databases (PostgreSQL, then SQLite)
#   scripts/first-mirror.sh sqlite             one of them
#   MIRRORCTL_BIN=path scripts/first-mirror.sh another binary (default target/debug/mirrorctl)
#
# PostgreSQL: the server and role of $MIRRORCTL_TEST_DATABASE_URL (default: the role and
# database scripts/test.sh creates on the local cluster); a fresh database mirrorctl_first_<hex>
# is created for the run and dropped at the end. Garage: started here (scripts/garage.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
README=$ROOT/README.md
BIN=$(realpath "${MIRRORCTL_BIN:-target/debug/mirrorctl}" 2>/dev/null || true)
[ -x "$BIN" ] || { echo "first-mirror: no binary at ${MIRRORCTL_BIN:-target/debug/mirrorctl} (run cargo build)" >&2; exit 2; }
ADMIN_URL=${MIRRORCTL_TEST_DATABASE_URL:-postgres://mirrorctl:mirrorctl@127.0.0.1:5432/mirrorctl_test}
KINDS=("$@")
[ ${#KINDS[@]} -gt 0 ] || KINDS=(postgres sqlite)
for k in "${KINDS[@]}"; do
    case $k in postgres | sqlite) ;; *) echo "first-mirror: unknown database kind $k (postgres, sqlite)" >&2; exit 2 ;; esac
done
for tool in aws curl python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "first-mirror: $tool is required" >&2; exit 2; }
done
. scripts/garage.sh

# The variables the values block sets (the script sets them to its own servers instead).
VALUE_NAMES="AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY DB_URL LISTEN ORIGIN_URL S3_ENDPOINT"

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "  ok: $*"; }

# block KIND: the lines of every README fenced block right after `<!-- first-mirror: KIND -->`.
block() {
    awk -v marker="<!-- first-mirror: $1 -->" '
        $0 == marker { armed = 1; next }
        armed == 1 && /^```/ { armed = 2; next }
        armed == 1 && !/^$/ { exit 1 }          # the fence must follow the marker
        armed == 2 && /^```/ { armed = 0; next }
        armed == 2 { print }
    ' "$README"
}

# --- The README's blocks ------------------------------------------------------------------------
VALUES=$(block values) || fail "README: a first-mirror marker is not followed by a fenced block"
RUN=$(block run) || fail "README: a first-mirror marker is not followed by a fenced block"
[ -n "$VALUES" ] || fail "README has no <!-- first-mirror: values --> block"
[ -n "$RUN" ] || fail "README has no <!-- first-mirror: run --> block"
names=$(printf '%s\n' "$VALUES" | python3 -c '
import re, sys
names = []
for line in sys.stdin:
    line = line.rstrip("\n")
    if not line.strip() or line.lstrip().startswith("#"):
        continue
    m = re.fullmatch(r"(export )?((?:[A-Z_][A-Z0-9_]*=[^ #]* ?)+)( +#.*)?", line)
    if not m:
        sys.exit("values block: not a plain assignment: " + line)
    names += [a.split("=", 1)[0] for a in m.group(2).split()]
print(" ".join(sorted(names)))
') || fail "README: the values block may only assign variables"
[ "$names" = "$VALUE_NAMES" ] || fail "README: the values block sets [$names], this script sets [$VALUE_NAMES]"

# The run blocks as commands: one line each, a here-document with its body, `\` continuations.
mapfile -d '' -t STEPS < <(printf '%s\n' "$RUN" | python3 -c '
import re, sys
lines, steps, cur, delim = sys.stdin.read().split("\n"), [], [], None
for line in lines:
    if delim is not None:
        cur.append(line)
        if line == delim:
            steps.append("\n".join(cur)); cur, delim = [], None
        continue
    if not cur and (not line.strip() or line.lstrip().startswith("#")):
        continue
    cur.append(line)
    m = re.search(r"<<-?\s*[\x27\"]?([A-Za-z_]+)[\x27\"]?\s*$", line)
    if m:
        delim = m.group(1)
    elif not line.endswith("\\"):
        steps.append("\n".join(cur)); cur = []
if cur or delim:
    sys.exit("run block: unterminated command or here-document")
sys.stdout.write("".join(s + "\0" for s in steps))
') || fail "README: cannot split the run blocks into commands"
[ ${#STEPS[@]} -gt 0 ] || fail "README: the run blocks hold no commands"
echo "first-mirror: ${#STEPS[@]} commands from README.md"

sha() { sha256sum "$1" | cut -d' ' -f1; }

# stop PID: SIGTERM, up to 10 s to exit, then SIGKILL; reaps it (a child of this shell).
stop() {
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 100); do
        case $(ps -o stat= -p "$pid" 2>/dev/null) in "" | Z*) break ;; esac  # gone, or exited
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# catalog_json: `mirrorctl catalog list -o json` of the README's config (set by its commands).
catalog_json() { mirrorctl catalog list -o json --limit 1000; }
# catalog_field EXPR: a Python expression over the catalog document `c`.
catalog_field() { catalog_json | python3 -c "import json, sys; c = json.load(sys.stdin); print($1)"; }
# mirrored KEY: the catalog lists KEY with a fresh mirrored copy.
mirrored() {
    catalog_json | python3 -c '
import json, sys
c = json.load(sys.stdin)
sys.exit(0 if any(e["key"] == sys.argv[1] and e["mirrored_id"] and not e["mirrored_stale"]
                  for e in c["entries"]) else 1)' "$1"
}

# --- One run: fresh servers, the README's commands, the checks ---------------------------------
run_one() {
    # Globals, not locals: the EXIT trap of this run's subshell needs them after run_one returned.
    kind=$1 started=$SECONDS
    work=$(mktemp -d "/tmp/mirrorctl-first-$kind.XXXXXX")
    origin_pid="" serve_pid="" dbname="" GARAGE_PID=""
    cleanup_run() {
        stop "$serve_pid"
        stop "$origin_pid"
        stop "$GARAGE_PID"
        if [ -n "$dbname" ]; then
            psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $dbname WITH (FORCE)" >/dev/null 2>&1 ||
                echo "first-mirror: could not drop database $dbname" >&2
        fi
        rm -rf "$work"
    }
    trap cleanup_run EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    echo "first-mirror: $kind, in $work"
    unset MIRRORCTL_CONFIG MIRRORCTL_DATABASE_URL AWS_PROFILE AWS_ENDPOINT_URL AWS_SESSION_TOKEN \
        AWS_CONFIG_FILE AWS_SHARED_CREDENTIALS_FILE
    mkdir -p "$work/bin" "$work/origin/pkgs" "$work/run"
    ln -s "$BIN" "$work/bin/mirrorctl"
    export PATH="$work/bin:$PATH"

    # The origin: three files of different sizes, over HTTP, in its own process.
    head -c 3000000 /dev/urandom >"$work/origin/pkgs/f1.bin"
    head -c 70000 /dev/urandom >"$work/origin/pkgs/f2.bin"
    head -c 1000 /dev/urandom >"$work/origin/pkgs/f3.bin"
    local origin_port; origin_port=$(free_port)
    python3 -m http.server "$origin_port" --bind 127.0.0.1 --directory "$work/origin" \
        >"$work/origin.log" 2>&1 &
    origin_pid=$!
    local i
    for i in $(seq 1 50); do
        curl -sf -o /dev/null "http://127.0.0.1:$origin_port/pkgs/f3.bin" && break
        [ "$i" = 50 ] && fail "the origin (python3 -m http.server) did not answer"
        sleep 0.1
    done

    # The S3 endpoint: a single-node Garage with a key that may create buckets.
    start_garage "$work/garage" 1G || fail "Garage did not start"

    # The database: empty.
    case $kind in
        postgres)
            command -v psql >/dev/null || fail "psql is required"
            local name; name="mirrorctl_first_$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
            psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $name" >/dev/null && dbname=$name ||
                fail "cannot create a database through $(sed -E 's#(//[^:/@]*):[^@]*@#\1:redacted@#' <<<"$ADMIN_URL") (scripts/test.sh starts PostgreSQL)"
            local base=${ADMIN_URL%%\?*}
            DB_URL="${base%/*}/$dbname"
            ;;
        sqlite) DB_URL="sqlite://$work/run/mirror.db" ;;
    esac

    # The values block, with this run's servers.
    S3_ENDPOINT=$GARAGE_ENDPOINT
    export AWS_ACCESS_KEY_ID=$GARAGE_KEY
    export AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET
    ORIGIN_URL="http://127.0.0.1:$origin_port/"
    LISTEN="127.0.0.1:$(free_port)"

    cd "$work/run"
    local step expect out n=0 rc entries=0 hits=0 misses=0
    for step in "${STEPS[@]}"; do
        n=$((n + 1))
        out="$work/step$n"
        if [[ $step == *$'\n'* ]]; then
            echo "\$ ${step%%$'\n'*}   [$(($(wc -l <<<"$step") - 1)) more lines]"
        else
            echo "\$ $step"
        fi
        # The command, exactly as the README has it, in this shell.
        if eval "$step" >"$out.out" 2>"$out.err"; then rc=0; else rc=$?; fi
        sed 's/^/    /' "$out.out"
        if [ "$rc" != 0 ]; then
            sed 's/^/    stderr: /' "$out.err" >&2
            fail "step $n exited $rc: $step"
        fi
        pass "exit 0"
        if [[ $step == *"mirrorctl serve"*"&" ]]; then
            serve_pid=$!
            kill -0 "$serve_pid" 2>/dev/null || fail "mirrorctl serve is not running: $(cat serve.log)"
            pass "mirrorctl serve runs (pid $serve_pid)"
        fi
        # A trailing `  # TEXT` comment: the exact output.
        expect=""
        if [[ $step != *$'\n'* && $step =~ [^\ ]\ \ +#\ (.*)$ ]]; then
            expect=${BASH_REMATCH[1]}
            [ "$(tr -d '\r' <"$out.out")" = "$expect" ] ||
                fail "step $n printed [$(tr -d '\r' <"$out.out")], the README says [$expect]"
            pass "printed \"$expect\""
        fi
        # A download: the body is the origin's file, byte for byte.
        if [[ $step =~ -o\ ([^ ]+)\ \"http://\$LISTEN/files/([^\"]+)\" ]]; then
            local file=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]}
            [ -f "$file" ] || fail "step $n wrote no $file"
            [ "$(sha "$file")" = "$(sha "$work/origin/$key")" ] ||
                fail "step $n: $file ($(stat -c %s "$file") bytes) differs from the origin's $key"
            pass "$file is the origin's $key (sha256 $(sha "$file" | cut -c1-16)…)"
            case $expect in
                *MISS*)
                    misses=$((misses + 1))
                    # The miss stores its copy: the entry turns mirrored (upload recorded).
                    local t0=$SECONDS
                    until mirrored "$key"; do
                        [ $((SECONDS - t0)) -lt 15 ] || fail "after step $n, $key is not mirrored: $(catalog_json)"
                        sleep 0.1
                    done
                    pass "catalog list -o json: $key mirrored"
                    ;;
                *HIT*)
                    hits=$((hits + 1))
                    mirrored "$key" || fail "a HIT of $key but the catalog says it is not mirrored"
                    ;;
            esac
        fi
        if [[ $step == *"mirrorctl catalog import"* ]]; then
            local now; now=$(catalog_field 'c["total"]')
            [ "$now" -gt "$entries" ] || fail "after step $n the catalog has $now entries (before: $entries)"
            pass "catalog list -o json: $now entries (was $entries), $(catalog_field 'c["unmirrored"]') unmirrored"
            entries=$now
        fi
        if [[ $step == *"mirrorctl migrate"* ]]; then
            catalog_json >/dev/null || fail "after migrate, catalog list fails"
            [ "$(catalog_field 'c["total"]')" = 0 ] || fail "a fresh database with catalog entries"
            pass "catalog list -o json: empty catalog"
        fi
        if [[ $step == *"mirrorctl"*" prefetch "* ]]; then
            [ "$(catalog_field 'c["unmirrored"]')" = 0 ] || fail "after prefetch: $(catalog_json)"
            pass "catalog list -o json: nothing unmirrored"
        fi
        if [[ $step == "mirrorctl catalog list" ]]; then
            ! grep -q "not mirrored" "$out.out" || fail "catalog list shows entries not mirrored"
            pass "no entry \"not mirrored\""
        fi
        if [[ $step == *"cat > mirror.toml"* ]]; then
            [ -s mirror.toml ] || fail "no mirror.toml"
        fi
    done
    [ -n "$serve_pid" ] || fail "the README never starts mirrorctl serve"
    [ "$hits" -gt 0 ] || fail "the README's commands never got a HIT"

    # --- The end state ---------------------------------------------------------------------------
    echo "first-mirror: $kind, the end state"
    local e key id
    catalog_json >"$work/catalog.json"
    python3 - "$work/catalog.json" "$work/origin" <<'PY' || fail "catalog list -o json: $(cat "$work/catalog.json")"
import json, os, sys
c = json.load(open(sys.argv[1]))
assert c["unmirrored"] == 0, "unmirrored entries"
assert c["total"] == len(c["entries"]) > 0
for e in c["entries"]:
    path = os.path.join(sys.argv[2], e["key"])
    assert e["mirrored_id"] and not e["mirrored_stale"], e
    assert e["size"] == os.path.getsize(path), (e["key"], e["size"], os.path.getsize(path))
PY
    pass "catalog list -o json: $(catalog_field 'c["total"]') entries, all mirrored with the origin's sizes"
    for key in $(catalog_field '" ".join(e["key"] for e in c["entries"])'); do
        mirrorctl --headless file "$key" -o json >"$work/file.json" || fail "file $key failed"
        local bucket row_sha
        bucket=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bucket"])' "$work/file.json")
        row_sha=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sha256"])' "$work/file.json")
        [ "$row_sha" = "$(sha "$work/origin/$key")" ] || fail "$key: the row's sha256 is $row_sha"
        aws s3 cp "s3://$bucket/$key" "$work/object" --endpoint-url "$S3_ENDPOINT" --only-show-errors ||
            fail "aws s3 cp s3://$bucket/$key failed"
        [ "$(sha "$work/object")" = "$row_sha" ] || fail "s3://$bucket/$key differs from the origin's file"
        pass "s3://$bucket/$key and its row's sha256 are the origin's"
    done
    kill -TERM "$serve_pid"
    if wait "$serve_pid"; then rc=0; else rc=$?; fi
    serve_pid=""
    [ "$rc" = 0 ] || fail "mirrorctl serve exited $rc on SIGTERM: $(tail -5 serve.log)"
    pass "mirrorctl serve stopped on SIGTERM (exit 0)"
    mirrorctl --headless stats --window all -o json >"$work/stats.json" || fail "stats failed"
    python3 - "$work/stats.json" "$hits" "$misses" <<'PY' || fail "stats: $(cat "$work/stats.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert (s["hits"], s["misses"], s["errors"]) == (int(sys.argv[2]), int(sys.argv[3]), 0)
PY
    pass "stats: $hits hits, $misses misses, 0 errors"
    cd "$ROOT"
    echo "first-mirror: $kind passed in $((SECONDS - started))s"
}

for kind in "${KINDS[@]}"; do
    (run_one "$kind")
done
echo "first-mirror: all passed"
