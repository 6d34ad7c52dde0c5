#!/usr/bin/env python3
"""The figures of "Benchmarking across several machines" in docs/benchmarking.md.

spread: one wsedge with two reactors (io_uring, pinned, one per CPU) stormed, interleaved
round by round, by
  A  one wsedge-loadgen process,
  B  `--processes 2` (two processes, merged by the parent), and
  C  two independent processes started together with `--start-at`, each with its own
     `--hdr-log`, then `wsedge-loadgen merge` (the several-machines workflow on one machine),
(A B C, then A C B, alternating)
reporting medians of the rate, of the server's CPU per upgrade, and for C the merged rate
against the sum of the two processes' own rates.

ramps: `ramp --plot` against wsedge (io_uring, one reactor) and nginx (Lua, one worker),
each on CPU 0 with the load on CPU 1, same steps and SLO, interleaved; the plots of the last
round go to --figures.

    python3 benches/loadgen_spread.py [--rounds 5] [--secs 3] [--ramp-rounds 2] [--slo 5ms]
                                      [--figures docs/figures] [--skip spread|ramps]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import compare  # benches/compare.py: building, starting and stopping contenders, CPU time


def run(argv, timeout):
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def spread(bins, options):
    port = compare.free_port()
    server, _ = compare.start("wsedge x2", lambda p: (
        [bins["wsedge"], "serve", "--io", "uring", "--threads", "2", "--after", "close",
         "--listen", f"127.0.0.1:{p}"], None, None), port, cpus="0-1")
    url = f"ws://127.0.0.1:{port}/"
    storm = [bins["loadgen"], "storm", url, "--concurrency", "128", "--duration", f"{options.secs}s"]
    rows = {"A one process": [], "B --processes 2": [], "C two with --start-at, merged": []}
    parts_ratio = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(options.rounds):
            # B and C swap places every other round, so that order does not favour either.
            names = list(rows)
            order = names if round_ % 2 == 0 else [names[0], names[2], names[1]]
            for name in order:
                before = compare.cpu_seconds(server.pid)
                if name.startswith("A"):
                    result = run(storm + ["--json"], options.secs + 60)
                elif name.startswith("B"):
                    result = run(storm + ["--processes", "2", "--json"], options.secs + 60)
                else:
                    start = f"@{time.time() + 0.5:.3f}"
                    half = [bins["loadgen"], "storm", url, "--concurrency", "64",
                            "--duration", f"{options.secs}s", "--start-at", start, "--json"]
                    logs = [os.path.join(scratch, f"part-{i}.hlog") for i in range(2)]
                    procs = [subprocess.Popen(half + ["--hdr-log", log], stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True) for log in logs]
                    parts = [json.loads(p.communicate(timeout=options.secs + 60)[0].strip().splitlines()[-1])
                             for p in procs]
                    result = run([bins["loadgen"], "merge", *logs, "--json"], 60)
                    total = sum(p["upgrades_per_sec"] for p in parts)
                    parts_ratio.append(result["upgrades_per_sec"] / total)
                cpu = compare.cpu_seconds(server.pid) - before
                row = {"rate": result["upgrades_per_sec"], "cpu_us": cpu * 1e6 / max(result["ok"], 1),
                       "p99": result["latency_us"]["p99"], "errors": result["errors_total"]}
                rows[name].append(row)
                print(f"  round {round_} {name:<32} {row['rate']:>9.0f}/s  {row['cpu_us']:6.2f} us CPU/upgrade"
                      f"  p99 {row['p99']} us  errors {row['errors']}", flush=True)
    compare.stop(server)
    print(f"\nspread: wsedge --threads 2 (io_uring), storm at concurrency 128, medians of "
          f"{options.rounds} rounds of {options.secs} s\n")
    print("| load | upgrades/s | server CPU per upgrade | p99 | errors |")
    print("|---|---|---|---|---|")
    base = statistics.median(r["rate"] for r in rows["A one process"])
    for name, runs in rows.items():
        rate = statistics.median(r["rate"] for r in runs)
        print(f"| {name} | {rate:,.0f} ({rate / base:.2f}x) | {statistics.median(r['cpu_us'] for r in runs):.2f} µs "
              f"| {statistics.median(r['p99'] for r in runs):,.0f} µs | {sum(r['errors'] for r in runs)} |")
    print(f"\nC: merged rate / sum of the two processes' own rates: median "
          f"{statistics.median(parts_ratio):.3f} (min {min(parts_ratio):.3f}, max {max(parts_ratio):.3f})")


def ramps(bins, options):
    table = compare.contenders(bins, echo=False)
    chosen = {"wsedge io_uring": table["wsedge io_uring"], "nginx lua": table["nginx lua"]}
    os.makedirs(options.figures, exist_ok=True)
    for round_ in range(options.ramp_rounds):
        for name, (_, make) in chosen.items():
            port = compare.free_port()
            process, _ = compare.start(name, make, port)
            svg = os.path.join(options.figures, f"ramp-{name.split()[0]}.svg")
            result = compare.run_json("loadgen", [
                bins["loadgen"], "ramp", f"ws://127.0.0.1:{port}/", "--from", str(options.ramp_from),
                "--to", str(options.ramp_to), "--step", str(options.ramp_step), "--step-duration", "2s",
                "--slo-p99", options.slo, "--server-pid", str(process.pid), "--plot", svg, "--plot-title",
                f"{name}, one worker on CPU 0 (load on CPU 1)", "--json"], timeout=600)
            compare.stop(process)
            steps = "  ".join(f"{s['rate']:.0f}:{s['upgrades_per_sec']:.0f}/{s['latency_us']['p99']}"
                              f"/{100 * (s['server_cpu_share'] or 0):.0f}%" for s in result["steps"])
            print(f"  round {round_} {name:<16} knee {result['best_rate']}/s  plot {svg}\n"
                  f"    offered:achieved/p99 us/server CPU  {steps}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secs", type=int, default=3)
    parser.add_argument("--figures", default=os.path.join(compare.ROOT, "docs", "figures"))
    parser.add_argument("--ramp-rounds", type=int, default=2)
    parser.add_argument("--ramp-from", type=int, default=2000)
    parser.add_argument("--ramp-to", type=int, default=34000)
    parser.add_argument("--ramp-step", type=int, default=2000)
    parser.add_argument("--slo", default="5ms", help="the ramps' --slo-p99")
    parser.add_argument("--skip", choices=["spread", "ramps"], help="leave one part out")
    options = parser.parse_args()
    try:
        compare.install()
        bins = compare.build()
        if options.skip != "spread":
            spread(bins, options)
        if options.skip != "ramps":
            ramps(bins, options)
    finally:
        for process in compare.started:
            compare.stop(process)


if __name__ == "__main__":
    sys.exit(main())
