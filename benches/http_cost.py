#!/usr/bin/env python3
"""What a plain HTTP request forwarded under --http-path costs the edge, against an upgrade
through the same edge, and against nginx forwarding the same request.

Layout on 2 cores: the edge under test runs one worker on CPU 0; the upstream (a wsedge
--after close: it answers a plain GET with a short 426 and closes, an upgrade with 101 and
Close) and the load share CPU 1. Rounds interleave the contenders; every figure is a median
of rounds. The figure is the edge's CPU time (utime + stime from /proc over the run) per
request answered, or per verified upgrade.

  http:     `ab -c 64`: each request on a new connection (the shape of Engine.IO's polling
            through an edge that closes after each answer), answered by the upstream.
  upgrade:  `wsedge-loadgen storm` at concurrency 64: upgrade, Close, close.

    benches/http_cost.py [--rounds 5] [--requests 20000] [--secs 3] [--wsedge BIN] [--loadgen BIN]
"""
import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402
from compare import ROOT, free_port, median, start, stop, cpu_seconds  # noqa: E402
from compare_proxy import nginx_proxy_command  # noqa: E402


def ab(port, requests):
    out = subprocess.run(["taskset", "-c", "1", "ab", "-q", "-n", str(requests), "-c", "64",
                          f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"],
                         capture_output=True, text=True, timeout=300).stdout
    complete = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    return complete - failed, rate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--secs", type=float, default=3)
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target/release/wsedge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/wsedge-loadgen"))
    options = parser.parse_args()
    bins = {"wsedge": options.wsedge, "loadgen": options.loadgen}
    up_port = free_port()
    upstream, _ = start("upstream", lambda p: (
        [bins["wsedge"], "serve", "--io", "epoll", "--threads", "1", "--no-pin", "--after", "close",
         "--listen", f"127.0.0.1:{p}"], None, None), up_port, cpus="1")

    def wsedge(io):
        return lambda p: ([bins["wsedge"], "serve", "--io", io, "--threads", "1", "--no-pin",
                           "--after", "proxy", "--upstream", f"127.0.0.1:{up_port}",
                           "--http-path", "/socket.io/", "--listen", f"127.0.0.1:{p}"], None, None)
    table = {"wsedge epoll": wsedge("epoll"), "wsedge io_uring": wsedge("uring"),
             "nginx": lambda p: nginx_proxy_command(p, up_port)}
    servers = {}
    for name, make in table.items():
        port = free_port()
        servers[name] = (start(name, make, port, "0")[0], port)
    cost = {(name, kind): [] for name in table for kind in ("http", "upgrade")}
    rate = {(name, kind): [] for name in table for kind in ("http", "upgrade")}
    try:
        for round_ in range(options.rounds):
            names = list(table) if round_ % 2 == 0 else list(reversed(table))
            for name in names:
                process, port = servers[name]
                before = cpu_seconds(process.pid)
                done, per_sec = ab(port, options.requests)
                cost[(name, "http")].append((cpu_seconds(process.pid) - before) * 1e6 / max(done, 1))
                rate[(name, "http")].append(per_sec)
                before = cpu_seconds(process.pid)
                result = compare.loadgen(bins, ["storm", f"ws://127.0.0.1:{port}/socket.io/",
                                                "--duration", f"{options.secs}s", "--concurrency", "64"],
                                         timeout=options.secs + 60)
                cost[(name, "upgrade")].append((cpu_seconds(process.pid) - before) * 1e6 / max(result["ok"], 1))
                rate[(name, "upgrade")].append(result["upgrades_per_sec"])
                print(f"round {round_ + 1} {name:<16} http {cost[(name, 'http')][-1]:6.1f} us/request "
                      f"({per_sec:,.0f}/s)  upgrade {cost[(name, 'upgrade')][-1]:6.1f} us/upgrade "
                      f"({result['upgrades_per_sec']:,.0f}/s)", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)
        stop(upstream)
    print(f"\nedge CPU per forwarded request and per upgrade, {options.rounds} rounds, medians "
          "(edge on CPU 0; upstream and load on CPU 1; concurrency 64, a new connection each):")
    print("| edge | CPU per HTTP request | requests/s | CPU per upgrade | upgrades/s | request / upgrade |")
    print("|---|---|---|---|---|---|")
    for name in table:
        http, upgrade = median(cost[(name, "http")]), median(cost[(name, "upgrade")])
        print(f"| {name} | {http:.1f} µs | {median(rate[(name, 'http')]):,.0f} | {upgrade:.1f} µs | "
              f"{median(rate[(name, 'upgrade')]):,.0f} | {http / upgrade:.2f} |")
    nginx = median(cost[("nginx", "http")])
    for name in ("wsedge epoll", "wsedge io_uring"):
        ratios = [a / b for a, b in zip(cost[(name, "http")], cost[("nginx", "http")])]
        print(f"{name}: HTTP request CPU / nginx's = {median(ratios):.2f} (median of per-round ratios; nginx {nginx:.1f} µs)")


if __name__ == "__main__":
    main()
