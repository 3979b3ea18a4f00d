#!/usr/bin/env python3
"""Runs a command N times and prints min / median / p95 / max wall time in milliseconds.

    scripts/latency.py 30 target/release/mirrorctl --headless stats
Exits non-zero if any run fails.
"""
import statistics
import subprocess
import sys
import time

runs = int(sys.argv[1])
cmd = sys.argv[2:]
times = []
for _ in range(runs):
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    times.append((time.perf_counter() - t) * 1000)
    if r.returncode not in (0, 3):
        sys.exit(f"run failed ({r.returncode}): {r.stderr.decode().strip()}")
times.sort()
p95 = times[min(len(times) - 1, int(round(0.95 * len(times) + 0.5)) - 1)]
print(f"runs={runs} min={times[0]:.1f}ms median={statistics.median(times):.1f}ms "
      f"p95={p95:.1f}ms max={times[-1]:.1f}ms  :: {' '.join(cmd)}")
