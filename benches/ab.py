#!/usr/bin/env python3
"""Before and after: two wsedge binaries, A B A B interleaved, medians.

For each round, each backend and each binary: wsedge with one reactor on CPU 0, the load
(and in proxy mode the upstream, a wsedge --after close) on CPU 1; wsedge-loadgen storms it
for SECS seconds at concurrency 64. The figure is the server's CPU time per verified upgrade
(utime + stime from /proc/PID/stat over the run, divided by upgrades); the rate is shown too.

    benches/ab.py --before OLD_BIN --after NEW_BIN [--mode close|proxy] [--rounds 7] [--secs 3]
                  [--tls] [--idle N]
                  [--after-proxy-header v1|v2] [--after-args "--upstream-balance least-connections"]

`--tls` runs the close mode over wss:// (TLS 1.3, ECDSA P-256, a fresh self-signed
certificate). `--idle N` measures memory instead: the server's RSS peak over its base while
the load holds N upgraded connections in echo mode (plain, or wss with --tls), in bytes per
connection, before and after interleaved the same way.

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
import tempfile
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


CERT = None  # (cert, key) with --tls


def make_cert(directory=None):
    """A self-signed ECDSA P-256 certificate for localhost, in `directory` (a fresh temporary
    one by default): (cert, key) paths."""
    directory = directory or tempfile.mkdtemp(prefix="wsedge-ab-")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True)
    return cert, key


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def url(port):
    return f"wss://localhost:{port}/" if CERT else f"ws://127.0.0.1:{port}/"


def load_tls():
    return ["--ca", CERT[0]] if CERT else []


def serve(binary, io, port, after, upstream=None, extra=()):
    listen = ["--listen-tls", f"127.0.0.1:{port}", "--tls-cert", CERT[0], "--tls-key", CERT[1]] \
        if CERT and after != "close-upstream" else ["--listen", f"127.0.0.1:{port}"]
    after = "close" if after == "close-upstream" else after
    argv = [binary, "serve", "--io", io, "--threads", "1", "--no-pin", "--after", after,
            *listen, *extra]
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
        upstream = start(serve(binary, "epoll", upstream_port, "close-upstream"), upstream_port, "1")
        server = start(serve(binary, io, port, "proxy", upstream_port, extra), port, "0")
    else:
        server = start(serve(binary, io, port, "close", extra=extra), port, "0")
    try:
        before = cpu_seconds(server.pid)
        out = subprocess.run(["taskset", "-c", "1", loadgen, "storm", url(port), *load_tls(),
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


def idle_run(binary, io, connections, loadgen):
    """Bytes of server RSS per idle upgraded connection (echo mode): the peak over the base
    while the load holds them."""
    port = free_port()
    server = start(serve(binary, io, port, "echo"), port, "0")
    try:
        time.sleep(0.3)
        base = rss_bytes(server.pid)
        hold = subprocess.Popen(["taskset", "-c", "1", loadgen, "hold", url(port), *load_tls(),
                                 "--connections", str(connections), "--hold", "3s",
                                 "--duration", "60s"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = base
        while hold.poll() is None:
            peak = max(peak, rss_bytes(server.pid))
            time.sleep(0.1)
        return (peak - base) / connections, 0.0
    finally:
        server.kill()
        server.wait()


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
    parser.add_argument("--tls", action="store_true", help="wss:// instead of ws://")
    parser.add_argument("--idle", type=int, default=0,
                        help="measure RSS per N idle upgraded connections instead of CPU")
    options = parser.parse_args()
    global CERT
    if options.tls:
        CERT = make_cert()
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
                if options.idle:
                    us, per_sec = idle_run(binary, io, options.idle, options.loadgen)
                else:
                    us, per_sec = one_run(binary, io, options.mode, options.secs, options.loadgen,
                                          header, server_args)
                cpu[(io, variant)].append(us)
                rate[(io, variant)].append(per_sec)
                pair[variant] = us
            ratios[io].append(pair["after"] / pair["before"])
            unit = "bytes/conn" if options.idle else "us"
            print(f"round {round_ + 1} {io}: before {pair['before']:.1f} {unit}, "
                  f"after {pair['after']:.1f} {unit}", flush=True)
    scheme = "wss" if options.tls else "ws"
    if options.idle:
        print(f"\nRSS per idle upgraded {scheme} connection ({options.idle} held, echo mode), "
              f"{options.rounds} rounds, medians:")
        print("| backend | before | after | after/before (median of rounds) |")
        print("|---|---|---|---|")
        for io in ios:
            print(f"| {io} | {statistics.median(cpu[(io, 'before')]):,.0f} B | "
                  f"{statistics.median(cpu[(io, 'after')]):,.0f} B | {statistics.median(ratios[io]):.3f} |")
        return
    print(f"\n{options.mode} mode over {scheme}, {options.rounds} rounds of {options.secs:.0f} s, medians:")
    print("| backend | before CPU/upgrade | after CPU/upgrade | after/before (median of rounds) | before rate | after rate |")
    print("|---|---|---|---|---|---|")
    for io in ios:
        print(f"| {io} | {statistics.median(cpu[(io, 'before')]):.1f} us | "
              f"{statistics.median(cpu[(io, 'after')]):.1f} us | {statistics.median(ratios[io]):.3f} | "
              f"{statistics.median(rate[(io, 'before')]):,.0f}/s | {statistics.median(rate[(io, 'after')]):,.0f}/s |")


if __name__ == "__main__":
    main()
