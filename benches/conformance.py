#!/usr/bin/env python3
"""RFC 6455 conformance: the Autobahn|Testsuite cases, run by kosoku (PyPI: a native runner of
Autobahn's own case files), against wsedge's echo mode on both backends and through its proxy
(a wsedge echo upstream behind it), and against Node `ws` for comparison when it is installed.

Cases 12.* and 13.* (permessage-deflate) are left out: echo mode declines compression by
design, and the proxy passes the upstream's choice through. Every wsedge target must score
OK or INFORMATIONAL on every case it runs (NON-STRICT, FAILED and UNIMPLEMENTED fail the run);
the exit code says whether it did.

    benches/conformance.py [--wsedge target/release/wsedge] [--kosoku kosoku]
                           [--include '9.*' ...] [--exclude CASE ...] [--node-ws DIR] [--out FILE]
"""
import argparse
import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCEPTED = {"OK", "INFORMATIONAL"}
NODE_ECHO = """
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(process.argv[2]),
                                  perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
wss.on('connection', (ws) => {
  ws.on('error', () => {});  // a protocol error closes the socket with its code
  ws.on('message', (data, binary) => ws.send(data, { binary }));
});
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, process, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port} within 30 s")


def start(command, port, what, env=None):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_listening(port, process, what)
    return process


def stop(processes):
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wsedge_command(binary, io, port, *extra):
    return [binary, "serve", "--io", io, "--threads", "1", "--no-pin", "--listen", f"127.0.0.1:{port}",
            "--max-message-bytes", str(64 * 1024 * 1024), *extra]


def targets(options):
    """(name, strict, start) for every target: start() returns (port, processes)."""
    def echo(io):
        def run():
            port = free_port()
            return port, [start(wsedge_command(options.wsedge, io, port, "--after", "echo"), port, f"echo {io}")]
        return run

    def proxy(io):
        def run():
            upstream = free_port()
            echo_process = start(wsedge_command(options.wsedge, "epoll", upstream, "--after", "echo"),
                                 upstream, "upstream echo")
            port = free_port()
            edge = start(wsedge_command(options.wsedge, io, port, "--after", "proxy",
                                        "--upstream", f"127.0.0.1:{upstream}"), port, f"proxy {io}")
            return port, [edge, echo_process]
        return run

    found = [("wsedge echo, epoll", True, echo("epoll")), ("wsedge echo, io_uring", True, echo("uring")),
             ("wsedge proxy (epoll) -> wsedge echo", True, proxy("epoll")),
             ("wsedge proxy (io_uring) -> wsedge echo", True, proxy("uring"))]
    if options.node_ws and shutil.which("node"):
        def node():
            port = free_port()
            script = os.path.join(tempfile.mkdtemp(prefix="wsedge-conformance-"), "echo.js")
            with open(script, "w") as f:
                f.write(NODE_ECHO)
            env = dict(os.environ, NODE_PATH=os.path.join(options.node_ws, "node_modules"))
            return port, [start(["node", script, str(port)], port, "node ws", env=env)]
        found.append(("Node ws (echo)", False, node))
    return found


def run_cases(options, port):
    outdir = tempfile.mkdtemp(prefix="wsedge-autobahn-")
    command = [options.kosoku, f"127.0.0.1:{port}", "-p", str(options.parallelism), "-o", outdir]
    for case in options.include:
        command += ["-i", case]
    for case in options.exclude:
        command += ["-x", case]
    subprocess.run(command, cwd=outdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                   timeout=options.timeout, check=False)
    with open(os.path.join(outdir, "index.json")) as f:
        index = json.load(f)
    shutil.rmtree(outdir, ignore_errors=True)
    return {case: result["behavior"] for cases in index.values() for case, result in cases.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target", "release", "wsedge"))
    parser.add_argument("--kosoku", default=shutil.which("kosoku") or "kosoku")
    parser.add_argument("--include", action="append", default=[], help="case id or glob (default: all)")
    parser.add_argument("--exclude", action="append", default=["12.*", "13.*"])
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--timeout", type=int, default=900, help="seconds for one target's cases")
    parser.add_argument("--node-ws", help="a folder whose node_modules holds ws, to compare with")
    parser.add_argument("--out", help="write every case's behavior per target as JSON here")
    options = parser.parse_args()
    # Cases run with a scratch folder as the working directory: relative paths would not
    # resolve there.
    options.kosoku = os.path.abspath(shutil.which(options.kosoku) or options.kosoku)
    options.wsedge = os.path.abspath(options.wsedge)
    if options.node_ws:
        options.node_ws = os.path.abspath(options.node_ws)

    results, failed = {}, []
    for name, strict, launch in targets(options):
        started = time.monotonic()
        port, processes = launch()
        try:
            behaviors = run_cases(options, port)
        finally:
            stop(processes)
        results[name] = behaviors
        counts = collections.Counter(behaviors.values())
        bad = sorted(case for case, b in behaviors.items() if b not in ACCEPTED)
        print(f"{name:<40} {len(behaviors):>4} cases  " +
              "  ".join(f"{b} {n}" for b, n in sorted(counts.items())) +
              f"  ({time.monotonic() - started:.1f} s)" + (f"  not OK: {', '.join(bad)}" if bad else ""),
              flush=True)
        if strict and (bad or not behaviors):
            failed.append(name)
    if options.out:
        with open(options.out, "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if failed:
        sys.exit(f"conformance: not every case OK for {', '.join(failed)}")


if __name__ == "__main__":
    main()
