#!/usr/bin/env python3
"""What a restart costs the clients of a storm: five `--takeover` hand-overs against five plain
restarts (SIGTERM, then a new process binds), under `wsedge-loadgen storm` at concurrency 64.

Per backend and way of restarting: wsedge (2 reactors, close mode, --drain-secs 1) on a fixed
port, the storm from CPU 1 for the whole run, a new process every 2 s. Reported: upgrades,
failures by kind (refused, reset, ...), and each new process's time from exec to serving
(the "took over" or "listening on" line). Every process started is stopped by PID.

    benches/restart.py [--wsedge BIN] [--loadgen BIN] [--restarts 5]
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Wsedge:
    """A wsedge process whose stderr lines are kept, and when each arrived."""

    def __init__(self, argv):
        self.started = time.monotonic()
        self.lines = []
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line))

    def wait_for(self, needle, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if needle in line:
                    return at - self.started
            if self.process.poll() is not None:
                raise RuntimeError("wsedge exited: " + "".join(l for _, l in self.lines))
            time.sleep(0.005)
        raise RuntimeError(f"no {needle!r} within {timeout} s")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def run(args, io, way):
    port = free_port()
    directory = tempfile.mkdtemp(prefix="wsedge-restart-")
    argv = [args.wsedge, "serve", "--io", io, "--threads", "2", "--no-pin", "--after", "close",
            "--drain-secs", "1", "--listen", f"127.0.0.1:{port}"]
    if way == "takeover":
        argv += ["--takeover", os.path.join(directory, "wsedge.sock")]
    processes = [Wsedge(argv)]
    processes[0].wait_for("offering the listening sockets" if way == "takeover" else "listening on")
    duration = 3 + 2 * args.restarts
    storm = subprocess.Popen(
        ["taskset", "-c", "1", args.loadgen, "storm", f"ws://127.0.0.1:{port}/", "--concurrency", "64",
         "--duration", f"{duration}s", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready = []
    try:
        time.sleep(1.5)
        for _ in range(args.restarts):
            old = processes[-1]
            if way == "restart":
                old.process.terminate()
            new = Wsedge(argv)
            processes.append(new)
            ready.append(new.wait_for("took over" if way == "takeover" else "listening on"))
            if way == "takeover":
                new.wait_for("offering the listening sockets")
            time.sleep(2)
        out, _ = storm.communicate(timeout=duration + 60)
    finally:
        for process in processes:
            process.stop()
        if storm.poll() is None:
            storm.kill()
    report = json.loads(out.strip().splitlines()[-1])
    return report, ready


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target/release/wsedge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/wsedge-loadgen"))
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    print(f"| backend | way | upgrades | failed | failures by kind | exec to serving (median, max) |")
    print("|---|---|---|---|---|---|")
    for io in ("epoll", "uring"):
        for way in ("takeover", "restart"):
            report, ready = run(args, io, way)
            errors = {k: v for k, v in report.get("errors", {}).items() if v}
            print(f"| {io} | {way} | {report['ok']:,} | {report['errors_total']:,} | "
                  f"{errors or 'none'} | {statistics.median(ready) * 1000:.0f} ms, "
                  f"{max(ready) * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
