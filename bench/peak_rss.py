#!/usr/bin/env python3
"""Runs a command and prints its peak memory, sampled from /proc/PID/status every 10 ms: peak RSS
(VmHWM), and the peaks of its anonymous (heap) and file-backed (mapped, reclaimable) parts.

    python3 bench/peak_rss.py target/debug/tpv eval --model DIR --data ONE.jsonl --max-new-tokens 1

(docs/numbers.md, "Loading a model's weights").
"""
import subprocess
import sys
import time

proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
while proc.poll() is None:
    try:
        with open(f"/proc/{proc.pid}/status") as status:
            for line in status:
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]))
    except FileNotFoundError:
        pass
    time.sleep(0.01)
err = proc.stderr.read().decode()
print(", ".join(f"{k} {v / 1024 / 1024:.2f} GiB" for k, v in peak.items()), f"(exit {proc.returncode})")
if proc.returncode:
    print(err[-2000:], file=sys.stderr)
