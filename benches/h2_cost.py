#!/usr/bin/env python3
"""What a WebSocket over HTTP/2 (RFC 8441) costs the server, against an HTTP/1.1 upgrade:
server CPU per upgrade, plain and TLS, both backends, rounds interleaved; and the memory of
an idle stream and of an idle HTTP/2 connection.

Layout on 2 cores: wsedge runs one reactor on CPU 0 (--after close for the CPU figures:
every upgrade is answered, closed with Close, and a stream ends with it), wsedge-loadgen
storms from CPU 1. The figure is the server's utime + stime (/proc) over the run divided by
the upgrades (streams) the load generator verified. Cases, each a closed loop:

  ws / wss       HTTP/1.1: a new connection (and TLS 1.3 handshake) per upgrade, reset after.
  h2c 1 / h2 1   HTTP/2: a new connection per WebSocket: preface, SETTINGS, one extended
                 CONNECT (the first stream on a new connection, as a browser's first socket).
  h2c N / h2 N   HTTP/2: N streams on each connection (a further stream on an open one,
                 the connection's own cost spread over N).

Memory: RSS over the base while `hold` keeps them, echo mode: per idle HTTP/1.1 connection,
per HTTP/2 connection with one stream, and per stream with 100 streams on a connection.

With --proxy the server is the edge in proxy mode (--after proxy) in front of a wsedge
upstream in close mode on CPU 1 (beside the load generator): each WebSocket, an HTTP/1.1
upgrade or an HTTP/2 stream, is bridged to an HTTP/1.1 upgrade of its own upstream
connection, answered with the upstream's 101 and closed by the upstream's Close. The
figure is the edge's CPU alone; the memory figures are skipped.

    benches/h2_cost.py [--rounds 5] [--secs 3] [--streams 100] [--idle 2000] [--proxy]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import cpu_seconds, free_port, make_cert, rss_bytes, start  # noqa: E402
from compare import ROOT, median, run_json  # noqa: E402


def serve(binary, io, after, port, tls_port, cert, key, upstream=None):
    argv = [binary, "serve", "--io", io, "--threads", "1", "--no-pin", "--after", after,
            "--listen", f"127.0.0.1:{port}", "--listen-tls", f"127.0.0.1:{tls_port}",
            "--tls-cert", cert, "--tls-key", key, "--tls-groups", "x25519", "--h2", "--h2c"]
    if upstream:
        argv += ["--upstream", upstream, "--upstream-max-pending", "10000"]
    return start(argv, port, "0")


def cases(streams):
    return {
        "ws": ([], False, 64),
        "h2c 1": (["--h2", "--streams", "1"], False, 64),
        f"h2c {streams}": (["--h2", "--streams", str(streams)], False, 4),
        "wss": ([], True, 64),
        "h2 1": (["--h2", "--streams", "1"], True, 64),
        f"h2 {streams}": (["--h2", "--streams", str(streams)], True, 4),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secs", type=float, default=3)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--proxy", action="store_true",
                        help="the edge in proxy mode before a wsedge upstream (close mode)")
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target/release/wsedge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/wsedge-loadgen"))
    options = parser.parse_args()
    cert, key = make_cert(tempfile.mkdtemp(prefix="wsedge-h2-"))
    table = cases(options.streams)
    cost = {(io, name): [] for io in ("epoll", "uring") for name in table}
    rate = {(io, name): [] for io in ("epoll", "uring") for name in table}
    servers = {}
    app = None
    after, upstream = "close", None
    try:
        if options.proxy:
            app_port = free_port()
            app = start([options.wsedge, "serve", "--threads", "1", "--no-pin", "--after", "close",
                         "--listen", f"127.0.0.1:{app_port}"], app_port, "1")
            after, upstream = "proxy", f"127.0.0.1:{app_port}"
        for io in ("epoll", "uring"):
            port, tls_port = free_port(), free_port()
            process = serve(options.wsedge, io, after, port, tls_port, cert, key, upstream)
            servers[io] = (process, port, tls_port)
        for round_ in range(options.rounds):
            order = [(io, name) for name in table for io in ("epoll", "uring")]
            if round_ % 2:
                order.reverse()
            for io, name in order:
                process, port, tls_port = servers[io]
                extra, tls, concurrency = table[name]
                url = f"wss://localhost:{tls_port}/" if tls else f"ws://127.0.0.1:{port}/"
                args = [options.loadgen, "storm", url, "--duration", f"{options.secs}s",
                        "--concurrency", str(concurrency), *extra, "--json"]
                if tls:
                    args += ["--ca", cert]
                before = cpu_seconds(process.pid)
                result = run_json("loadgen", args, options.secs + 60)
                spent = cpu_seconds(process.pid) - before
                cost[(io, name)].append(spent * 1e6 / max(result["ok"], 1))
                rate[(io, name)].append(result["upgrades_per_sec"])
                print(f"round {round_ + 1} {io:<6} {name:<8} {cost[(io, name)][-1]:7.1f} us/upgrade "
                      f"({result['upgrades_per_sec']:,.0f}/s, {result['errors_total']} errors)", flush=True)
    finally:
        for process, _, _ in servers.values():
            process.kill()
            process.wait()
        if app:
            app.kill()
            app.wait()
    print(f"\nserver CPU per upgrade, {options.rounds} rounds interleaved, medians "
          f"(one reactor on CPU 0, wsedge-loadgen storm on CPU 1, --after {after}):")
    print("| case | epoll | io_uring | epoll / HTTP/1.1 | io_uring / HTTP/1.1 |")
    print("|---|---|---|---|---|")
    for name in table:
        base = "wss" if name.startswith("h2 ") or name == "wss" else "ws"
        cells = []
        for io in ("epoll", "uring"):
            cells.append(f"{median(cost[(io, name)]):.1f} µs ({median(rate[(io, name)]):,.0f}/s)")
        ratios = []
        for io in ("epoll", "uring"):
            per_round = [a / b for a, b in zip(cost[(io, name)], cost[(io, base)])]
            ratios.append(f"{median(per_round):.2f}")
        print(f"| {name} | {cells[0]} | {cells[1]} | {ratios[0]} | {ratios[1]} |")
    if options.proxy:
        return

    print(f"\nRSS per idle WebSocket (echo mode, held by `hold`, peak over base):")
    print("| held | epoll | io_uring |")
    print("|---|---|---|")
    shapes = {
        f"{options.idle} HTTP/1.1 ws connections": ([], options.idle, options.idle),
        f"{options.idle} h2c connections, 1 stream each": (["--h2", "--streams", "1"], options.idle, options.idle),
        f"{options.idle // 100 * 100} h2c streams, 100 a connection": (
            ["--h2", "--streams", "100"], options.idle // 100, options.idle // 100 * 100),
    }
    for shape, (extra, connections, sockets) in shapes.items():
        cells = []
        for io in ("epoll", "uring"):
            port, tls_port = free_port(), free_port()
            server = serve(options.wsedge, io, "echo", port, tls_port, cert, key)
            try:
                time.sleep(0.3)
                base = rss_bytes(server.pid)
                hold = subprocess.Popen(
                    ["taskset", "-c", "1", options.loadgen, "hold", f"ws://127.0.0.1:{port}/",
                     "--connections", str(connections), "--hold", "3s", "--duration", "60s", *extra],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                peak = base
                while hold.poll() is None:
                    peak = max(peak, rss_bytes(server.pid))
                    time.sleep(0.1)
                cells.append(f"{(peak - base) / sockets:,.0f} B")
            finally:
                server.kill()
                server.wait()
        print(f"| {shape} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
