#!/usr/bin/env python3
"""Proxy mode over a fleet of three real app servers (tests/upstreams/python_upstream.py, Python
`websockets`): where held connections land after an upstream is added late, by balance, and
the share of keys that move when one of three upstreams is removed under hash balancing.

    benches/fleet.py [--wsedge target/release/wsedge] [--io epoll|uring] [--held 600] [--late 300]
                     [--keys 1000]

Run it with a Python that has `websockets` (.ci/run installs one in target/thirdparty/venv).
Each client asks the app server's `/port` page, which names the upstream it reached.
"""
import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading

from websockets.asyncio.client import connect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_upstream():
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/upstreams/python_upstream.py")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    return process, int(line.split()[1])


def start_wsedge(binary, io, config):
    process = subprocess.Popen([binary, "serve", "--io", io, "--threads", "2", "--listen", "127.0.0.1:0",
                                "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "listening on" in line:
            port = int(line.split("listening on ")[1].split()[0].split(",")[0].rsplit(":", 1)[1])
            # Keep reading its log, so that a full pipe never stalls it.
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, port
    raise SystemExit("wsedge did not start")


def write_config(path, ports, extra):
    listed = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    with open(path, "w") as f:
        f.write(f'after = "proxy"\nupstream = [{listed}]\n{extra}')


async def hold(port, n, headers=None):
    """Opens n connections, each asking /port; returns (sockets, ports reached)."""
    async def one(i):
        extra = headers(i) if headers else None
        ws = await connect(f"ws://127.0.0.1:{port}/port", additional_headers=extra, open_timeout=20)
        return ws, int(await ws.recv())
    results = []
    for batch in range(0, n, 100):
        results += await asyncio.gather(*(one(i) for i in range(batch, min(n, batch + 100))))
    return [r[0] for r in results], [r[1] for r in results]


async def reload(process):
    process.send_signal(signal.SIGHUP)
    # The reload is published for the reactors' next turn; give the signal thread a moment.
    await asyncio.sleep(0.5)


async def late_add(args, balance):
    upstreams = [start_upstream() for _ in range(3)]
    ports = [p for _, p in upstreams]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        config = f.name
    extra = f'upstream-balance = "{balance}"\n'
    write_config(config, ports[:2], extra)
    server, port = start_wsedge(args.wsedge, args.io, config)
    try:
        first, reached = await hold(port, args.held)
        write_config(config, ports, extra)
        await reload(server)
        second, reached_late = await hold(port, args.late)
        spread = [reached.count(p) + reached_late.count(p) for p in ports]
        for ws in first + second:
            await ws.close()
        return spread
    finally:
        server.kill()
        for process, _ in upstreams:
            process.kill()
        os.unlink(config)


async def keys_moved(args):
    upstreams = [start_upstream() for _ in range(3)]
    ports = [p for _, p in upstreams]
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        config = f.name
    extra = 'upstream-balance = "hash"\nupstream-hash-key = "header:X-User-Id"\n'
    write_config(config, ports, extra)
    server, port = start_wsedge(args.wsedge, args.io, config)
    headers = lambda i: {"X-User-Id": f"user-{i}"}
    try:
        sockets, before = await hold(port, args.keys, headers)
        for ws in sockets:
            await ws.close()
        write_config(config, ports[:2], extra)
        await reload(server)
        sockets, after = await hold(port, args.keys, headers)
        for ws in sockets:
            await ws.close()
        moved = sum(1 for b, a in zip(before, after) if a != b)
        on_removed = before.count(ports[2])
        others_moved = sum(1 for b, a in zip(before, after) if a != b and b != ports[2])
        return moved, on_removed, others_moved
    finally:
        server.kill()
        for process, _ in upstreams:
            process.kill()
        os.unlink(config)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target/release/wsedge"))
    parser.add_argument("--io", default="epoll")
    parser.add_argument("--held", type=int, default=600)
    parser.add_argument("--late", type=int, default=300)
    parser.add_argument("--keys", type=int, default=1000)
    args = parser.parse_args()
    print(f"{args.held} held over two upstreams, a third added by reload, {args.late} more ({args.io}):")
    print("| balance | upstream 1 | upstream 2 | upstream 3 (late) |")
    print("|---|---|---|---|")
    for balance in ["round-robin", "least-connections"]:
        spread = await late_add(args, balance)
        print(f"| {balance} | " + " | ".join(str(n) for n in spread) + " |")
    moved, on_removed, others = await keys_moved(args)
    print(f"\nhash by header, {args.keys} keys, one of three upstreams removed: {moved} keys moved "
          f"({100 * moved / args.keys:.1f}%), {on_removed} were on the removed one, {others} others moved")


asyncio.run(main())
