#!/usr/bin/env bash
# PNG screenshots of the terminal UI: runs the demo TUI in a private tmux server (120x40),
# visits each view by its number key, a file's detail, the help and two confirmation dialogs
# (cancelled: nothing is changed), captures each screen with its colours (`capture-pane -e -N`)
# once it has stopped changing, and renders it with scripts/ansi_png.py to
# assets/tui-<view>-120x40.png. Re-runnable; the tmux server is removed on exit.
#
#   scripts/screenshots.sh                     uses target/debug/mirrorctl (build it first)
#   MIRRORCTL_BIN=path scripts/screenshots.sh  uses that binary
#
# The demo lives in $MIRRORCTL_DEMO_DIR (default /tmp/shots-demo, regenerated each run). Needs
# tmux, python3 and Pillow (python3 -m pip install pillow).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v tmux >/dev/null || { echo "screenshots: tmux is required" >&2; exit 2; }
python3 -c 'import PIL' 2>/dev/null || { echo "screenshots: Pillow is required (python3 -m pip install pillow)" >&2; exit 2; }
BIN=$(realpath "${MIRRORCTL_BIN:-target/debug/mirrorctl}")
[ -x "$BIN" ] || { echo "screenshots: no binary at $BIN (cargo build first)" >&2; exit 2; }
# Its own demo, generated afresh each run (previews of purges leave dry_run rows in the audit
# log that the History view would show on the next run); a MIRRORCTL_DEMO_DIR given by the
# caller is used as it is.
if [ -z "${MIRRORCTL_DEMO_DIR:-}" ]; then
    export MIRRORCTL_DEMO_DIR=/tmp/shots-demo
    rm -rf "$MIRRORCTL_DEMO_DIR"
fi
OUT=assets
SOCK=$(mktemp -d)  # a private tmux server, its socket removed with the directory
S=shots
# The coloured captures go to a temporary directory, or to $SHOTS_KEEP (kept, for re-rendering
# with scripts/ansi_png.py without running the UI again).
if [ -n "${SHOTS_KEEP:-}" ]; then TMP=$SHOTS_KEEP; mkdir -p "$TMP"; else TMP=$(mktemp -d); fi
T() { tmux -S "$SOCK/tmux" "$@"; }
cleanup() {
    T kill-server 2>/dev/null || true
    rm -rf "$SOCK"
    [ -n "${SHOTS_KEEP:-}" ] || rm -rf "$TMP"
}
trap cleanup EXIT

screen() { T capture-pane -t "$S" -p; }
fail() {
    echo "screenshots: $*" >&2
    screen >&2 || true
    exit 1
}
# wait_for TEXT [SECONDS]: until TEXT is on screen.
wait_for() {
    local text=$1 secs=${2:-15} i
    for ((i = 0; i < secs * 10; i++)); do
        if screen | grep -qF -- "$text"; then return 0; fi
        sleep 0.1
    done
    fail "did not see \"$text\" within ${secs}s"
}
# settle: until two captures 0.3 s apart are the same (a view's data has been drawn).
settle() {
    local a b i
    a=$(screen)
    for ((i = 0; i < 30; i++)); do
        sleep 0.3
        b=$(screen)
        [ "$a" = "$b" ] && return 0
        a=$b
    done
}
keys() {
    T send-keys -t "$S" "$@"
    sleep 0.2
}
# shot NAME: capture the screen with colours and render assets/tui-NAME-120x40.png.
shot() {
    settle
    T capture-pane -t "$S" -e -p -N >"$TMP/$1.ans"
    python3 scripts/ansi_png.py "$TMP/$1.ans" "$OUT/tui-$1-120x40.png" --cols 120 --rows 40
    echo "screenshots: $OUT/tui-$1-120x40.png"
}

[ -e "$MIRRORCTL_DEMO_DIR" ] || echo "screenshots: generating the demo in $MIRRORCTL_DEMO_DIR"
T new-session -d -s "$S" -x 120 -y 40 "bash --norc --noprofile"
T set-option -t "$S" status off
T send-keys -t "$S" "export PS1='$ '; clear; echo before-tui" Enter
wait_for before-tui
# The first run generates the demo dataset before the UI starts: give it time.
T send-keys -t "$S" "'$BIN' --demo; echo TUI-EXIT=\$?" Enter
wait_for "1 Dashboard" 120
wait_for "Hit rate"
wait_for "Hits vs misses per"
shot dashboard

keys 2
wait_for "DOWNLOADS▼"
shot files
keys Enter
wait_for "Downloads per day"
shot file-detail
keys Escape

keys 3
wait_for "┌ Jobs"
shot jobs
keys 4
wait_for "┌ Drift"
wait_for "Last run:"
shot drift
keys 5
wait_for "┌ Archive"
wait_for "PARTITION"
shot archive
keys 6
wait_for "┌ History"
shot history
keys 7
wait_for "┌ Catalog"
wait_for "1 of "
shot catalog
keys 8
wait_for "┌ Fleet"
shot fleet
keys 9
wait_for "┌ Replication"
shot replication-empty

# Confirmation dialogs, each cancelled with n.
keys 1
wait_for "Hits vs misses per"
keys v
wait_for "Confirm validate"
wait_for "Affects:"
shot confirm-validate
keys n
wait_for "nothing was changed"
keys 2
wait_for "DOWNLOADS▼"
keys :
T send-keys -t "$S" -l "purge stale"
keys Enter
wait_for "Confirm purge"
wait_for "Affects:"
shot confirm-purge
keys n
wait_for "purge: cancelled, nothing was changed"

keys '?'
wait_for "┌ Help"
shot help
keys Escape

keys q
# With a job running the UI asks first.
for ((i = 0; i < 30; i++)); do
    if screen | grep -qF "TUI-EXIT="; then break; fi
    if screen | grep -qF "Quit? "; then keys y; fi
    sleep 0.1
done
wait_for "TUI-EXIT=0"
