#!/usr/bin/env bash
# Measures the terminal UI on the demo in a private tmux server (120x40): time from sending the
# command to the first frame (tab bar) and to the dashboard's figures, five launches; then idle
# CPU of the running TUI over 10 s from /proc/PID/stat (utime+stime), and `ps -o %cpu`.
# Usage: scripts/tui-measure.sh BIN DEMO_DIR   (the demo must already be generated)
set -euo pipefail
BIN=$1; DEMO=$2; SOCK=tui-measure-$$; S=m
T() { tmux -L "$SOCK" "$@"; }
trap 'T kill-server 2>/dev/null || true' EXIT
LOG=$(mktemp)
T new-session -d -s $S -x 120 -y 40 "bash --norc --noprofile"
sleep 0.5
for run in 1 2 3 4 5; do
  T send-keys -t $S "clear" Enter; sleep 0.3
  start=$(date +%s%N)
  T send-keys -t $S "MIRRORCTL_DEMO_DIR=$DEMO MIRRORCTL_LOG=mirrorctl::tui=info '$BIN' --demo" Enter
  until T capture-pane -t $S -p | grep -q "1 Dashboard"; do sleep 0.005; done
  t1=$(date +%s%N)
  until T capture-pane -t $S -p | grep -q "Hit rate"; do sleep 0.005; done
  t2=$(date +%s%N)
  echo "run $run: tab bar on screen $(( (t1-start)/1000000 )) ms, dashboard figures $(( (t2-start)/1000000 )) ms after the command was sent"
  if [ $run = 5 ]; then
    sleep 2
    pid=$(pgrep -n -f "$BIN --demo")
    a=$(awk '{print $14+$15}' /proc/$pid/stat); sleep 10; b=$(awk '{print $14+$15}' /proc/$pid/stat)
    tck=$(getconf CLK_TCK)
    echo "idle CPU over 10 s: $((b-a)) ticks of 1/$tck s = $(awk -v t=$((b-a)) -v k=$tck 'BEGIN{printf "%.2f", 100*t/k/10}')% of one core"
    ps -o pid,%cpu,rss,cmd -p $pid | cat
  fi
  T send-keys -t $S q; sleep 0.5
done
