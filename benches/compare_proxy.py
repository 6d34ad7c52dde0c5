#!/usr/bin/env python3
"""Edge proxies head to head: wsedge --after proxy against nginx's standard WebSocket proxy,
each in front of the same upstream.

Layout on 2 cores: the edge under test runs one worker pinned to CPU 0; the upstream (a
wsedge --after close for upgrades, --after echo for throughput) and the load share CPU 1.
Runs are interleaved (A B C A B C ...), and every figure is a median over rounds.

  upgrades: wsedge-loadgen storms each edge; ranked by the edge's CPU time per upgrade
            (utime + stime from /proc/PID/stat over the run / verified upgrades) and rate.
  relay:    benches/relay_throughput.rs echoes 64 KiB binary messages through each edge;
            MB/s of payload echoed and the edge's CPU time per MB.

A "direct" row (the load straight to the upstream) shows what the upstream alone allows.

    benches/compare_proxy.py [--quick] [--rounds N] [--secs S] [--concurrency 64,256] [--out FILE]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (shared helpers: install, start, stop, cpu_seconds, loadgen)
from compare import ROOT, free_port, median, start, stop, cpu_seconds, version  # noqa: E402


def nginx_proxy_command(port, upstream):
    prefix = tempfile.mkdtemp(prefix="wsedge-nginx-proxy-")
    with open(os.path.join(ROOT, "benches", "contenders", "nginx-proxy.conf")) as f:
        conf = (f.read().replace("@PORT@", str(port)).replace("@PREFIX@", prefix)
                .replace("@UPSTREAM@", f"127.0.0.1:{upstream}"))
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return (["nginx", "-p", prefix, "-c", path, "-e", "stderr"], None, None)


def edges(bins, upstream):
    wsedge = lambda io: lambda p: ([bins["wsedge"], "serve", "--io", io, "--threads", "1", "--no-pin",
                                    "--after", "proxy", "--upstream", f"127.0.0.1:{upstream}",
                                    "--listen", f"127.0.0.1:{p}"], None, None)
    wsedge_version = version([bins["wsedge"], "--version"])
    return {
        "wsedge proxy epoll": (wsedge_version, wsedge("epoll")),
        "wsedge proxy io_uring": (wsedge_version, wsedge("uring")),
        "nginx proxy": (version(["nginx", "-v"]), lambda p: nginx_proxy_command(p, upstream)),
    }


def start_upstream(bins, after):
    port = free_port()
    process, _ = start(f"upstream ({after})", lambda p: (
        [bins["wsedge"], "serve", "--io", "epoll", "--threads", "1", "--no-pin", "--after", after,
         "--listen", f"127.0.0.1:{p}"], None, None), port, cpus="1")
    return process, port


def throughput(bins, port, options):
    return compare.run_json("relay_throughput", [bins["relay"], "--target", f"127.0.0.1:{port}",
                                                 "--size", str(64 * 1024), "--secs", str(options.secs)],
                            timeout=options.secs + 60)


def run(bins, options):
    records = []
    upstream, upstream_port = start_upstream(bins, "close")
    table = edges(bins, upstream_port)
    servers = {name: start(name, make, port, "0") + (port,)
               for name, (_, make) in table.items() for port in [free_port()]}
    print(f"upgrades: {options.rounds} round(s) x {options.secs} s at concurrency {options.concurrency}; "
          "edge on CPU 0, upstream and load on CPU 1", flush=True)
    for round_ in range(options.rounds):
        for concurrency in options.concurrency:
            for name, (process, _key, port) in [("direct", (upstream, None, upstream_port))] + list(servers.items()):
                args = ["storm", f"ws://127.0.0.1:{port}/", "--duration", f"{options.secs}s",
                        "--concurrency", str(concurrency)]
                before = cpu_seconds(process.pid)
                result = compare.loadgen(bins, args, timeout=options.secs + 60)
                cpu = cpu_seconds(process.pid) - before
                record = {"kind": "upgrades", "contender": name, "round": round_, "concurrency": concurrency,
                          "edge_cpu_s": cpu, "cpu_us_per_upgrade": cpu * 1e6 / max(result["ok"], 1), **result}
                records.append(record)
                print(f"  round {round_} c={concurrency:<4} {name:<22} {result['upgrades_per_sec']:>8.0f}/s "
                      f"{record['cpu_us_per_upgrade']:>7.2f} us CPU/upgrade  p99 {result['latency_us']['p99']:>7} us"
                      f"  errors {result['errors_total']}", flush=True)
    for process, _, _ in servers.values():
        stop(process)
    stop(upstream)

    upstream, upstream_port = start_upstream(bins, "echo")
    table = edges(bins, upstream_port)
    servers = {name: start(name, make, port, "0") + (port,)
               for name, (_, make) in table.items() for port in [free_port()]}
    print("relay: 64 KiB binary messages, 4 in flight, one connection", flush=True)
    for round_ in range(options.rounds):
        for name, (process, _key, port) in [("direct", (upstream, None, upstream_port))] + list(servers.items()):
            before = cpu_seconds(process.pid)
            result = throughput(bins, port, options)
            cpu = cpu_seconds(process.pid) - before
            mb = result["bytes_per_sec"] * result["elapsed_s"] / 1e6
            record = {"kind": "relay", "contender": name, "round": round_, "edge_cpu_s": cpu,
                      "cpu_ms_per_mb": cpu * 1e3 / max(mb, 1e-9), **result}
            records.append(record)
            print(f"  round {round_} {name:<22} {result['mb_per_sec']:>8.1f} MB/s  "
                  f"{record['cpu_ms_per_mb']:.3f} ms CPU/MB", flush=True)
    for process, _, _ in servers.values():
        stop(process)
    stop(upstream)
    return records, {name: v for name, (v, _) in table.items()}


def report(records, versions, options):
    print("\nupgrades through an edge: medians of rounds (min-max); CPU is the edge's (the upstream's for direct); "
          "ratios vs nginx are medians of per-round ratios")
    for concurrency in options.concurrency:
        rows = [r for r in records if r["kind"] == "upgrades" and r["concurrency"] == concurrency]
        names = list(dict.fromkeys(r["contender"] for r in rows))
        cpu = {n: median([r["cpu_us_per_upgrade"] for r in rows if r["contender"] == n]) for n in names}
        rate = {n: median([r["upgrades_per_sec"] for r in rows if r["contender"] == n]) for n in names}
        print(f"\n### concurrency {concurrency}\n")
        print("| edge | version | upgrades/s | edge CPU per upgrade | upgrades per edge CPU-second | p50 | p99 | errors "
              "| rate vs nginx | upgrades per CPU-s vs nginx |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        nginx = {r["round"]: r for r in rows if r["contender"] == "nginx proxy"}

        def paired(mine, ratio):
            """Median over rounds of a ratio against nginx's run of the same round: a round
            in which the machine was slower for everyone cancels out."""
            return median([ratio(r, nginx[r["round"]]) for r in mine if r["round"] in nginx])

        for name in names:
            mine = [r for r in rows if r["contender"] == name]
            rates = [r["upgrades_per_sec"] for r in mine]
            vs_rate = paired(mine, lambda a, b: a["upgrades_per_sec"] / b["upgrades_per_sec"])
            vs_cpu = paired(mine, lambda a, b: b["cpu_us_per_upgrade"] / a["cpu_us_per_upgrade"])
            print(f"| {name} | {versions.get(name, 'wsedge --after close (the upstream)')} "
                  f"| {median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
                  f"| {cpu[name]:.2f} µs | {1e6 / cpu[name]:,.0f} "
                  f"| {median([r['latency_us']['p50'] for r in mine]):,.0f} µs "
                  f"| {median([r['latency_us']['p99'] for r in mine]):,.0f} µs "
                  f"| {sum(r['errors_total'] for r in mine)} | {vs_rate:.2f}x | {vs_cpu:.2f}x |")
    rows = [r for r in records if r["kind"] == "relay"]
    names = list(dict.fromkeys(r["contender"] for r in rows))
    print("\n### relay, 64 KiB messages\n")
    print("| edge | MB/s echoed | edge CPU per MB |")
    print("|---|---|---|")
    for name in names:
        mine = [r for r in rows if r["contender"] == name]
        speeds = [r["mb_per_sec"] for r in mine]
        print(f"| {name} | {median(speeds):,.1f} ({min(speeds):,.1f}-{max(speeds):,.1f}) "
              f"| {median([r['cpu_ms_per_mb'] for r in mine]):.3f} ms |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 s")
    parser.add_argument("--out", help="write every measurement as JSON lines to this file")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secs", type=int, default=3)
    parser.add_argument("--concurrency", default="64")
    parser.add_argument("--skip-install", action="store_true")
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.secs, options.concurrency = 1, 1, "64"
    options.concurrency = [int(c) for c in options.concurrency.split(",")]

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        if not options.skip_install:
            compare.install()
        bins = compare.build()
        subprocess.run(["cargo", "bench", "-q", "--no-run", "--bench", "relay_throughput"], cwd=ROOT, check=True,
                       stderr=subprocess.DEVNULL)
        bins["relay"] = compare.newest("target/release/deps/relay_throughput-*")
        records, versions = run(bins, options)
        report(records, versions, options)
        if options.out:
            with open(options.out, "w") as f:
                for record in records:
                    f.write(json.dumps(record) + "\n")
    finally:
        for process in compare.started:
            stop(process)


if __name__ == "__main__":
    main()
