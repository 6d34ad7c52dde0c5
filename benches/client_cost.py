#!/usr/bin/env python3
"""Client cost: wsedge-loadgen against the bare mio client in benches/upgrade_storm.rs.

Both storm the floor server (pinned to CPU 0) from CPU 1, interleaved, and are compared by
rate and by their own CPU time per upgrade (utime + stime from wait4's rusage).

    python3 benches/client_cost.py [ROUNDS] [SECONDS] [CONCURRENCY]
"""
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
secs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
concurrency = sys.argv[3] if len(sys.argv) > 3 else "64"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(root)
subprocess.run(["cargo", "build", "--release", "-q", "-p", "wsedge-loadgen"], check=True)
subprocess.run(["cargo", "bench", "--bench", "upgrade_storm", "--no-run", "-q"], check=True,
               stderr=subprocess.DEVNULL)
bench = max((p for p in glob.glob("target/release/deps/upgrade_storm-*") if not p.endswith(".d")),
            key=os.path.getmtime)

floor = subprocess.Popen(["taskset", "-c", "0", bench, "--floor-server"], stdout=subprocess.PIPE, text=True)
try:
    addr = re.search(r"listening on (\S+)", floor.stdout.readline()).group(1)
    clients = {
        "wsedge-loadgen": ["target/release/wsedge-loadgen", "storm", f"ws://{addr}/bench", "--duration",
                           f"{secs}s", "--concurrency", concurrency, "--json",
                           "--key", "dGhlIHNhbXBsZSBub25jZQ=="],
        "wsedge-loadgen --source-ips none": ["target/release/wsedge-loadgen", "storm", f"ws://{addr}/bench",
                                             "--duration", f"{secs}s", "--concurrency", concurrency, "--json",
                                             "--key", "dGhlIHNhbXBsZSBub25jZQ==", "--source-ips", "none"],
        "bare mio client": [bench, "--target", addr, "--secs", str(secs), "--concurrency", concurrency],
    }
    results = {name: [] for name in clients}
    for _ in range(rounds):
        for name, command in clients.items():
            process = subprocess.Popen(["taskset", "-c", "1"] + command, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True)
            started = time.monotonic()
            out = process.stdout.read()
            _, _, usage = os.wait4(process.pid, 0)
            wall = time.monotonic() - started
            last = out.strip().splitlines()[-1]
            upgrades = json.loads(last)["ok"] if last.startswith("{") else int(last.split()[0])
            cpu = usage.ru_utime + usage.ru_stime
            results[name].append((upgrades / secs, cpu * 1e6 / max(upgrades, 1)))
            print(f"  {name:<32} {upgrades / secs:>8.0} upgrades/s  {cpu * 1e6 / max(upgrades, 1):6.2f} us client CPU/upgrade  (wall {wall:.1f} s)")
    print(f"\n| client | upgrades/s (median) | client CPU per upgrade (median) |")
    print("|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.0f} | {statistics.median(r[1] for r in rows):.2f} us |")
finally:
    floor.kill()
