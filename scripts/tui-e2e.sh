#!/usr/bin/env bash
# End-to-end test of the terminal UI: runs the real binary on a fresh embedded demo inside a
# private tmux server (120x40), drives it with keys and asserts on what the screen shows:
# dashboard, view switches with `:`, the files filter and file detail, help, the catalog's
# "mirror now" through its confirmation, the Replication view's empty state and its retry
# confirmation, a validation run through its confirmation to the end, read-only refusal,
# `mirrorctl prefetch` and `mirrorctl replication` opening on their view, and a clean exit that
# gives the terminal back. Exits non-zero (and prints the screen) on the first failed expectation.
#
#   scripts/tui-e2e.sh                      builds the debug binary first (in $CARGO_TARGET_DIR
#                                           when set, else target/)
#   MIRRORCTL_BIN=path scripts/tui-e2e.sh   uses that binary
set -euo pipefail
cd "$(dirname "$0")/.."

command -v tmux >/dev/null || { echo "tui-e2e: tmux is required" >&2; exit 2; }
BIN=${MIRRORCTL_BIN:-}
if [ -z "$BIN" ]; then
    cargo build --quiet
    BIN=${CARGO_TARGET_DIR:-target}/debug/mirrorctl
fi
BIN=$(realpath "$BIN")
DEMO=$(mktemp -d)
SOCK="mirrorctl-e2e-$$"
S=e2e
T() { tmux -L "$SOCK" "$@"; }
cleanup() {
    T kill-server 2>/dev/null || true
    rm -rf "$DEMO"
}
trap cleanup EXIT

screen() { T capture-pane -t "$S" -p; }
fail() {
    echo "FAIL: $*" >&2
    echo "----- screen -----" >&2
    screen >&2 || true
    echo "------------------" >&2
    exit 1
}
# wait_for TEXT [SECONDS]: until TEXT is on screen.
wait_for() {
    local text=$1 secs=${2:-10} i
    for ((i = 0; i < secs * 10; i++)); do
        if screen | grep -qF -- "$text"; then return 0; fi
        sleep 0.1
    done
    fail "did not see \"$text\" within ${secs}s"
}
# wait_gone TEXT [SECONDS]: until TEXT is no longer on screen.
wait_gone() {
    local text=$1 secs=${2:-10} i
    for ((i = 0; i < secs * 10; i++)); do
        if ! screen | grep -qF -- "$text"; then return 0; fi
        sleep 0.1
    done
    fail "\"$text\" still on screen after ${secs}s"
}
# keys ARGS...: tmux send-keys, then a pause so Esc is not merged with the next key.
keys() {
    T send-keys -t "$S" "$@"
    sleep 0.3
}
# command LINE: a `:` command.
command() {
    keys :
    T send-keys -t "$S" -l "$1"
    keys Enter
}
pass() { echo "ok: $*"; }

echo "tui-e2e: generating the demo in $DEMO"
MIRRORCTL_DEMO_DIR=$DEMO "$BIN" --demo --headless stats >/dev/null 2>&1 || fail "demo generation failed"
# How many files the demo mirrored and how many catalog entries it left unmirrored depend on
# the hour it is generated (its download history follows the clock and the calendar): read
# them from it.
field() { grep -o "\"$1\": *[0-9]*" | head -1 | grep -o '[0-9]*$'; }
commas() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; }
demo_json() { MIRRORCTL_DEMO_DIR=$DEMO "$BIN" --demo --headless "$@" -o json 2>/dev/null; }
FILES=$(demo_json stats | field storage_objects)
CATALOG=$(demo_json catalog list --unmirrored --limit 1)
ENTRIES=$(field total <<<"$CATALOG")
UNMIRRORED=$(field unmirrored <<<"$CATALOG")
[ -n "$FILES" ] && [ -n "$ENTRIES" ] && [ -n "$UNMIRRORED" ] || fail "cannot read the demo's figures"
echo "tui-e2e: the demo has $FILES mirrored files, $ENTRIES catalog entries, $UNMIRRORED unmirrored"

T new-session -d -s "$S" -x 120 -y 40 "bash --norc --noprofile"
T send-keys -t "$S" "export MIRRORCTL_DEMO_DIR=$DEMO PS1='$ '; clear; echo before-tui" Enter
wait_for "before-tui"

# --- Dashboard ---------------------------------------------------------------------------
T send-keys -t "$S" "'$BIN' --demo; echo TUI-EXIT=\$?" Enter
wait_for "1 Dashboard" 15
wait_for "Hit rate" 15
wait_for "Hits vs misses per hour"
screen | grep -qE "Storage +$(commas "$FILES") objects" || fail "dashboard storage figure"
keys w
wait_for "Hits vs misses per hour"
keys w
wait_for "Hits vs misses per day"
pass "dashboard with figures and chart; window switch"

# --- Files: `:` command, filter, sort, detail ----------------------------------------------
command files
wait_for "Files $(commas "$FILES")"
wait_for "DOWNLOADS▼"
keys /
T send-keys -t "$S" -l "maps"
keys Enter
wait_for 'filter "maps"'
screen | grep -E "^│ +[0-9]+ " | grep -v maps && fail "a row without maps in its key survived the filter"
keys s
wait_for "SERVED▼"
keys Enter
wait_for "Downloads per day"
wait_for "Mirror"
keys Escape
wait_gone "Downloads per day"
wait_for 'filter "maps"'
keys Escape
wait_for "Files $(commas "$FILES")"
pass "files: filter, sort, detail"

# --- Views by number and Tab, help ----------------------------------------------------------
keys 6
wait_for "History"
keys Tab
wait_for "not mirrored"
keys Tab
wait_for "No serve replica has written a heartbeat"
keys Tab
# The demo has no S3 front: nothing was ever replicated.
wait_for "No replication tasks: writes through the S3 front (serve.s3_listen) appear here."
wait_for "9 Replication"
keys Tab
wait_for "Hit rate"
keys 9
wait_for "Replication 0 pending, 0 failed"
keys 4
wait_for "Compares the main bucket"
keys '?'
wait_for "Everywhere"
wait_for "sort by next column"
keys NPage
keys NPage
keys NPage
keys NPage
wait_for ":prefetch [ID…|top N [WINDOW]]"
wait_for ":purge stale|unused [N]"
keys Escape
wait_gone "Esc close"
pass "views by number and Tab; help from the keymap"

# --- Catalog: mirror one entry now -----------------------------------------------------------
# The demo's catalog has entries never downloaded and stale copies; G reaches the last, id 2140.
keys 7
wait_for "Catalog $(commas "$ENTRIES") entries, $UNMIRRORED not mirrored"
keys G
wait_for "$UNMIRRORED of $UNMIRRORED"
keys m
wait_for "Confirm prefetch" 20
wait_for "mirrorctl --headless prefetch --ids 2140 --yes"
wait_for "Affects:  1 files"
keys y
wait_for "prefetch  done" 60
wait_for "prefetched 1 of 1 files"
keys 7
wait_for "Catalog $(commas "$ENTRIES") entries, $((UNMIRRORED - 1)) not mirrored"
wait_for "$((UNMIRRORED - 1)) of $((UNMIRRORED - 1))"
pass "catalog: mirror now confirmed, ran, and the entry left the list"

# --- Replication: retry every failed task asks first (the demo has none) ----------------------
keys 9
wait_for "writes through the S3 front"
keys R
wait_for "Confirm retry" 20
wait_for "mirrorctl --headless replication retry --failed"
wait_for "Affects:  0 tasks"
keys n
wait_for "retry: cancelled, nothing was changed"
pass "replication: empty state; retry all failed shows its dry run and n changes nothing"

# --- Validation through its confirmation ------------------------------------------------------
command validate
wait_for "Confirm validate" 20
wait_for "mirrorctl --headless validate --all"
# The demo's mirrored files and the one the catalog step just mirrored.
wait_for "Affects:  $(commas $((FILES + 1))) files"
keys y
wait_for "Jobs ·"
wait_for "validate  done" 120
wait_for "checked $((FILES + 1))"
pass "validation confirmed, ran and finished"

command history
wait_for "validate"
screen | grep -E "validate +(ok|found_problems)" >/dev/null || fail "the validation is not in the audit log"
pass "audit log shows the validation"

# --- Quit: the terminal is given back ---------------------------------------------------------
keys q
wait_for "TUI-EXIT=0"
screen | grep -qF "before-tui" || fail "the shell screen was not restored"
[ "$(T display -p -t "$S" '#{alternate_on}')" = 0 ] || fail "still on the alternate screen"
pass "quit restores the terminal"

# --- Read-only refusal ------------------------------------------------------------------------
T send-keys -t "$S" "clear; '$BIN' --demo --read-only; echo TUI-EXIT=\$?" Enter
wait_for "Hit rate" 15
wait_for " RO"
command "purge stale"
wait_for "refused: purge is not allowed in read-only mode"
screen | grep -qF "Confirm purge" && fail "read-only mode opened a purge confirmation"
keys 7
wait_for "not mirrored"
keys P
wait_for "refused: prefetch is not allowed in read-only mode"
screen | grep -qF "Confirm prefetch" && fail "read-only mode opened a prefetch confirmation"
keys 9
wait_for "writes through the S3 front"
keys R
wait_for "refused: retry is not allowed in read-only mode"
screen | grep -qF "Confirm retry" && fail "read-only mode opened a retry confirmation"
keys q
wait_for "TUI-EXIT=0"
pass "read-only refuses a purge, a prefetch and a retry"

# --- `mirrorctl --demo prefetch`: the Catalog view with the prefetch ready to confirm ----------
T send-keys -t "$S" "clear; '$BIN' --demo prefetch; echo TUI-EXIT=\$?" Enter
wait_for "Confirm prefetch" 20
wait_for "mirrorctl --headless prefetch --unmirrored --yes"
screen | grep -qF "Catalog $(commas "$ENTRIES") entries" || fail "prefetch did not open on the Catalog view"
keys n
wait_for "prefetch: cancelled, nothing was changed"
keys q
wait_for "TUI-EXIT=0"
pass "prefetch opens the catalog with its confirmation; n changes nothing"

# --- `mirrorctl --demo replication`: the Replication view, not the headless status -------------
T send-keys -t "$S" "clear; '$BIN' --demo replication; echo TUI-EXIT=\$?" Enter
wait_for "No replication tasks: writes through the S3 front" 15
screen | grep -qF "9 Replication" || fail "replication did not open the TUI"
keys q
wait_for "TUI-EXIT=0"
pass "mirrorctl replication opens the Replication view"

# --- Opening on a view: `mirrorctl --demo history` --------------------------------------------
T send-keys -t "$S" "clear; '$BIN' --demo history; echo TUI-EXIT=\$?" Enter
wait_for "operations" 15
screen | grep -qE "validate +(ok|found_problems)" || fail "history view did not open with the audit log"
keys q
wait_for "TUI-EXIT=0"
pass "a command name opens its view"

echo "tui-e2e: all passed"
