#!/usr/bin/env python3
"""Before and after: two wsedge binaries, A B A B interleaved, medians.

For each round, each backend and each binary: wsedge with one reactor on CPU 0, the load
(and in proxy mode the upstream, a wsedge --after close) on CPU 1; wsedge-loadgen storms it
for SECS seconds at concurrency 64. The figure is the server's CPU time per verified upgrade
(utime + stime from /proc/PID/stat over the run, divided by upgrades); the rate is shown too.

    benches/ab.py --before OLD_BIN --after NEW_BIN [--mode close|proxy] [--rounds 7] [--secs 3]
                  [--after-proxy-header v1|v2] [--after-args "--upstream-balance least-connections"]

`--after-proxy-header` measures what reading a PROXY header costs: the "after" server runs with
--accept-proxy-protocol and the load sends the header (--before and --after may then be the
same binary).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, port, cpu):
    process = subprocess.Popen(["taskset", "-c", cpu] + argv, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{argv} did not listen")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(binary, io, port, after, upstream=None, extra=()):
    argv = [binary, "serve", "--io", io, "--threads", "1", "--no-pin", "--after", after,
            "--listen", f"127.0.0.1:{port}", *extra]
    if upstream:
        argv += ["--upstream", f"127.0.0.1:{upstream}"]
    return argv


def one_run(binary, io, mode, secs, loadgen, proxy_header=None, server_args=()):
    extra = ["--accept-proxy-protocol", "--proxy-protocol-from", "127.0.0.0/8"] if proxy_header else []
    extra += list(server_args)
    load_extra = ["--proxy-header", proxy_header] if proxy_header else []
    port = free_port()
    upstream = None
    if mode == "proxy":
        upstream_port = free_port()
        upstream = start(serve(binary, "epoll", upstream_port, "close"), upstream_port, "1")
        server = start(serve(binary, io, port, "proxy", upstream_port, extra), port, "0")
    else:
        server = start(serve(binary, io, port, "close", extra=extra), port, "0")
    try:
        before = cpu_seconds(server.pid)
        out = subprocess.run(["taskset", "-c", "1", loadgen, "storm", f"ws://127.0.0.1:{port}/",
                              "--concurrency", "64", "--duration", f"{secs}s", "--json", *load_extra],
                             capture_output=True, text=True, timeout=secs + 60)
        cpu = cpu_seconds(server.pid) - before
        result = json.loads(out.stdout.strip().splitlines()[-1])
        ok = max(result["ok"], 1)
        return cpu / ok * 1e6, result["upgrades_per_sec"]
    finally:
        for p in (server, upstream):
            if p:
                p.kill()
                p.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--mode", default="close", choices=["close", "proxy"])
    parser.add_argument("--io", default="epoll,uring")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--secs", type=float, default=3)
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target", "release", "wsedge-loadgen"))
    parser.add_argument("--after-proxy-header", choices=["v1", "v2"])
    parser.add_argument("--after-args", default="", help="extra flags for the after server")
    options = parser.parse_args()
    ios = options.io.split(",")
    cpu = {(io, v): [] for io in ios for v in ("before", "after")}
    rate = {(io, v): [] for io in ios for v in ("before", "after")}
    ratios = {io: [] for io in ios}
    for round_ in range(options.rounds):
        for io in ios:
            pair = {}
            # Alternate which goes first, so that neither always gets the warmer machine.
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for variant in order:
                binary = options.before if variant == "before" else options.after
                header = options.after_proxy_header if variant == "after" else None
                server_args = options.after_args.split() if variant == "after" else []
                us, per_sec = one_run(binary, io, options.mode, options.secs, options.loadgen, header,
                                      server_args)
                cpu[(io, variant)].append(us)
                rate[(io, variant)].append(per_sec)
                pair[variant] = us
            ratios[io].append(pair["after"] / pair["before"])
            print(f"round {round_ + 1} {io}: before {pair['before']:.1f} us, after {pair['after']:.1f} us",
                  flush=True)
    print(f"\n{options.mode} mode, {options.rounds} rounds of {options.secs:.0f} s, medians:")
    print("| backend | before CPU/upgrade | after CPU/upgrade | after/before (median of rounds) | before rate | after rate |")
    print("|---|---|---|---|---|---|")
    for io in ios:
        print(f"| {io} | {statistics.median(cpu[(io, 'before')]):.1f} us | "
              f"{statistics.median(cpu[(io, 'after')]):.1f} us | {statistics.median(ratios[io]):.3f} | "
              f"{statistics.median(rate[(io, 'before')]):,.0f}/s | {statistics.median(rate[(io, 'after')]):,.0f}/s |")


if __name__ == "__main__":
    main()
