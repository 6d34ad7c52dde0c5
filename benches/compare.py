#!/usr/bin/env python3
"""Head-to-head handshake benchmark: wsedge against nginx and the usual WebSocket servers.

Every contender runs one worker pinned to CPU 0 on its own loopback port; wsedge-loadgen
storms each from CPU 1, interleaved (A B C ... A B C ...), at each concurrency. Servers are
ranked by server CPU time per upgrade (utime + stime from /proc/PID/stat over the run,
divided by verified upgrades): on 2 cores the load cannot saturate a fast server, so the
rate alone cannot rank them. A hold of upgraded connections (echo mode) measures RSS per
connection. Everything started is stopped by PID; every run is bounded.

Then the same over `wss://` (unless --no-tls): wsedge on both backends terminating TLS
against nginx (Debian's, with its OpenSSL) terminating TLS and answering the upgrade in Lua,
and the rustls floor (benches/tls_floor.rs); same ECDSA P-256 certificate, TLS 1.3, X25519,
session tickets on, one worker each, full handshakes.

    benches/compare.sh [--quick] [--out FILE] [--rounds N] [--secs S] [--hold N] [--no-tls]
                       [--plot FILE.svg]
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import tls_cost  # benches/tls_cost.py: the test certificate and nginx's TLS configuration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIRDPARTY = os.path.join(ROOT, "target", "thirdparty")
FLOOR_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
started = []  # every Popen we started, stopped by PID at exit


def sh(*command, **kwargs):
    return subprocess.run(command, check=True, **kwargs)


def install():
    """Idempotent: nginx with Lua from Debian, ws from npm, websockets from PyPI."""
    if not shutil.which("nginx") or not glob.glob("/etc/nginx/modules-enabled/*lua*"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        sh("apt-get", "update", "-qq", env=env)
        sh("apt-get", "install", "-y", "-qq", "nginx-light", "libnginx-mod-http-lua", env=env,
           stdout=subprocess.DEVNULL)
    if not os.path.isdir(os.path.join(THIRDPARTY, "node", "node_modules", "ws")):
        sh("npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
           os.path.join(THIRDPARTY, "node"), "ws@8", stdout=subprocess.DEVNULL)
    python = os.path.join(THIRDPARTY, "venv", "bin", "python")
    if not os.path.exists(python):
        sh(sys.executable, "-m", "venv", os.path.join(THIRDPARTY, "venv"))
    sh(os.path.join(THIRDPARTY, "venv", "bin", "pip"), "install", "-q", "--disable-pip-version-check",
       "websockets>=13,<18")


def newest(pattern):
    paths = [p for p in glob.glob(os.path.join(ROOT, pattern)) if not p.endswith(".d")]
    return max(paths, key=os.path.getmtime)


def build():
    sh("cargo", "build", "--release", "-q", "-p", "wsedge", "-p", "wsedge-loadgen", cwd=ROOT)
    sh("cargo", "bench", "-q", "--no-run", "--bench", "upgrade_storm", "--bench", "contender_tokio_tungstenite",
       "--bench", "tls_floor", cwd=ROOT, stderr=subprocess.DEVNULL)
    return {
        "tls_floor": newest("target/release/deps/tls_floor-*"),
        "wsedge": os.path.join(ROOT, "target", "release", "wsedge"),
        "loadgen": os.path.join(ROOT, "target", "release", "wsedge-loadgen"),
        "floor": newest("target/release/deps/upgrade_storm-*"),
        "tokio": newest("target/release/deps/contender_tokio_tungstenite-*"),
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version(command):
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def all_core_contenders(bins):
    """The contenders that can use every core, started that way."""
    cores = str(os.cpu_count() or 2)
    return {
        f"wsedge io_uring x{cores}": (version([bins["wsedge"], "--version"]), lambda p: (
            [bins["wsedge"], "serve", "--io", "uring", "--threads", cores, "--after", "close",
             "--listen", f"127.0.0.1:{p}"], None, None)),
        f"wsedge epoll x{cores}": (version([bins["wsedge"], "--version"]), lambda p: (
            [bins["wsedge"], "serve", "--io", "epoll", "--threads", cores, "--after", "close",
             "--listen", f"127.0.0.1:{p}"], None, None)),
        f"nginx lua x{cores}": (version(["nginx", "-v"]), lambda p: nginx_command(p, workers=int(cores))),
    }


def contenders(bins, echo):
    """name -> (version, function(port) -> (argv, env, fixed_key))."""
    node_env = dict(os.environ, NODE_PATH=os.path.join(THIRDPARTY, "node", "node_modules"))
    python = os.path.join(THIRDPARTY, "venv", "bin", "python")
    after = "echo" if echo else "close"
    wsedge_version = version([bins["wsedge"], "--version"])
    table = {
        "wsedge epoll": (wsedge_version, lambda p: ([bins["wsedge"], "serve", "--io", "epoll", "--threads", "1",
                                                      "--no-pin", "--after", after, "--listen", f"127.0.0.1:{p}"], None, None)),
        "wsedge io_uring": (wsedge_version, lambda p: ([bins["wsedge"], "serve", "--io", "uring", "--threads", "1",
                                                         "--no-pin", "--after", after, "--listen", f"127.0.0.1:{p}"], None, None)),
        "node ws": (version(["node", "--version"]) + ", ws " + ws_version(),
                    lambda p: (["node", os.path.join(ROOT, "benches", "contenders", "node_ws_server.js"), str(p), after],
                               node_env, None)),
        "python websockets": ("websockets " + version([python, "-c", "import websockets; print(websockets.__version__)"]),
                              lambda p: ([python, os.path.join(ROOT, "benches", "contenders", "python_ws_server.py"),
                                          str(p), after], None, None)),
        "tokio-tungstenite": ("tokio-tungstenite 0.30, current-thread runtime",
                              lambda p: ([bins["tokio"], "--listen", f"127.0.0.1:{p}"] + (["--echo"] if echo else []),
                                         None, None)),
    }
    if not echo:
        table["nginx lua"] = (version(["nginx", "-v"]), lambda p: nginx_command(p, workers=1))
        table["floor"] = ("accept, epoll, read, canned 101, close",
                          lambda p: ([bins["floor"], "--floor-server", "--port", str(p)], None, FLOOR_KEY))
    return table


def tls_contenders(bins, cert, key, echo=False):
    """The wss rows: name -> (version, function(port) -> (argv, env, fixed_key)). Held
    connections (echo) only for wsedge: the other two close after the upgrade."""
    wsedge_version = version([bins["wsedge"], "--version"])
    after = "echo" if echo else "close"

    def wsedge(io):
        return lambda p: ([bins["wsedge"], "serve", "--io", io, "--threads", "1", "--no-pin", "--after", after,
                           "--listen-tls", f"127.0.0.1:{p}", "--tls-cert", cert, "--tls-key", key,
                           "--tls-versions", "1.3", "--tls-groups", "x25519"], None, None)
    table = {
        "wsedge epoll wss": (wsedge_version, wsedge("epoll")),
        "wsedge io_uring wss": (wsedge_version, wsedge("uring")),
    }
    if echo:
        return table
    return {
        **table,
        "nginx lua wss": (version(["nginx", "-v"]) + ", " + version(["openssl", "version"]),
                          lambda p: (tls_cost.nginx_argv(p, cert, key), None, None)),
        "floor wss": ("mio + rustls, canned 101", lambda p: ([bins["tls_floor"], str(p), cert, key], None, FLOOR_KEY)),
    }


def ws_version():
    try:
        with open(os.path.join(THIRDPARTY, "node", "node_modules", "ws", "package.json")) as f:
            return json.load(f)["version"]
    except OSError:
        return "?"


def nginx_command(port, workers):
    prefix = tempfile.mkdtemp(prefix="wsedge-nginx-")
    with open(os.path.join(ROOT, "benches", "contenders", "nginx-lua.conf")) as f:
        conf = f.read().replace("@PORT@", str(port)).replace("@PREFIX@", prefix)
    if workers > 1:
        # Several workers need the master process; the CPU of all of them is counted.
        conf = conf.replace("master_process off;", "master_process on;")
        conf = conf.replace("worker_processes 1;", f"worker_processes {workers};")
        conf = conf.replace("backlog=4096;", "backlog=4096 reuseport;")
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return (["nginx", "-p", prefix, "-c", path, "-e", "stderr"], None, None)


def start(name, make, port, cpus="0"):
    argv, env, key = make(port)
    # Its own session, so that stopping it stops its children too (nginx's workers).
    process = subprocess.Popen(["taskset", "-c", cpus] + argv, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started.append(process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at startup ({' '.join(argv)})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, key
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on {port} within 30 s")


def stop(process):
    """Kills a contender we started and every process in its session (by its group id)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def cpu_seconds(pid):
    """utime + stime of `pid` and of its live children (nginx's workers)."""
    total = 0
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat == f"/proc/{pid}/stat" or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_json(name, argv, timeout):
    """Runs a client on CPU 1 and returns the JSON object on the last line of its stdout."""
    out = subprocess.run(["taskset", "-c", "1"] + argv, capture_output=True, text=True, timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def loadgen(bins, args, timeout):
    return run_json("loadgen", [bins["loadgen"]] + args + ["--json"], timeout)


def storm_all(bins, table, options, cpus="0", ca=None):
    servers = {}
    for name, (_, make) in table.items():
        port = free_port()
        process, key = start(name, make, port, cpus)
        servers[name] = (process, port, key)
    records = []
    for round_ in range(options.rounds):
        for concurrency in options.concurrency:
            for name, (process, port, key) in servers.items():
                url = f"wss://localhost:{port}/bench" if ca else f"ws://127.0.0.1:{port}/bench"
                args = ["storm", url, "--duration", f"{options.secs}s",
                        "--concurrency", str(concurrency)] + (["--key", key] if key else []) \
                    + (["--ca", ca] if ca else [])
                before = cpu_seconds(process.pid)
                result = loadgen(bins, args, timeout=options.secs + 60)
                cpu = cpu_seconds(process.pid) - before
                record = {"contender": name, "round": round_, "concurrency": concurrency, "server_cpu_s": cpu,
                          "cpu_us_per_upgrade": cpu * 1e6 / max(result["ok"], 1), **result}
                records.append(record)
                print(f"  round {round_} c={concurrency:<4} {name:<18} {result['upgrades_per_sec']:>9.0f}/s "
                      f"{record['cpu_us_per_upgrade']:>7.2f} us CPU/upgrade  p99 {result['latency_us']['p99']:>7} us"
                      f"  errors {result['errors_total']}", flush=True)
    for process, _, _ in servers.values():
        stop(process)
    return records


def hold_all(bins, table, count, ca=None):
    rows = {}
    for name, (_, make) in table.items():
        port = free_port()
        process, _ = start(name, make, port)
        url = f"wss://localhost:{port}/" if ca else f"ws://127.0.0.1:{port}/"
        try:
            result = loadgen(bins, ["hold", url, "--connections", str(count), "--hold", "2s",
                                    "--duration", "60s", "--server-pid", str(process.pid)]
                             + (["--ca", ca] if ca else []), timeout=120)
            rows[name] = result
            print(f"  hold {name:<18} established {result['established']}/{count}  "
                  f"RSS per connection {result.get('server_rss_bytes_per_conn') or 0:.0f} bytes", flush=True)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"  hold {name:<18} failed: {error}", flush=True)
        finally:
            stop(process)
    return rows


def median(values):
    return statistics.median(values) if values else float("nan")


def report(records, holds, versions, options, title="ws://", floor_name="floor"):
    concurrencies = options.concurrency
    print(f"\n## {title}\n\nupgrades per second: median (min-max) of rounds; "
          "CPU: server CPU time per verified upgrade")
    for concurrency in concurrencies:
        rows = [r for r in records if r["concurrency"] == concurrency]
        names = list(dict.fromkeys(r["contender"] for r in rows))
        cpu = {n: median([r["cpu_us_per_upgrade"] for r in rows if r["contender"] == n]) for n in names}
        best_wsedge = min(v for n, v in cpu.items() if n.startswith("wsedge"))
        floor = cpu.get(floor_name)
        print(f"\n### concurrency {concurrency}\n")
        print("| contender | version | upgrades/s | CPU per upgrade | upgrades per CPU-second | p50 | p99 | errors "
              "| RSS per held conn | CPU vs wsedge | CPU vs floor |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name in sorted(names, key=lambda n: cpu[n]):
            mine = [r for r in rows if r["contender"] == name]
            rates = [r["upgrades_per_sec"] for r in mine]
            held = holds.get(name, {}).get("server_rss_bytes_per_conn")
            print(f"| {name} | {versions.get(name, '?')} | {median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) "
                  f"| {cpu[name]:.2f} µs | {1e6 / cpu[name]:,.0f} "
                  f"| {median([r['latency_us']['p50'] for r in mine]):,.0f} µs "
                  f"| {median([r['latency_us']['p99'] for r in mine]):,.0f} µs "
                  f"| {sum(r['errors_total'] for r in mine)} "
                  f"| {f'{held:,.0f} B' if held else 'n/a'} "
                  f"| {cpu[name] / best_wsedge:.2f}x | {f'{cpu[name] / floor:.2f}x' if floor else 'n/a'} |")


def plot(bins, records, path, title):
    """Draws server CPU per upgrade and upgrades/s per contender (medians of the rounds at the
    highest concurrency) with wsedge-loadgen plot-compare."""
    if not records:
        return
    concurrency = max(r["concurrency"] for r in records)
    rows = [r for r in records if r["concurrency"] == concurrency]
    names = list(dict.fromkeys(r["contender"] for r in rows))
    table = [{"name": n,
              "upgrades_per_sec": median([r["upgrades_per_sec"] for r in rows if r["contender"] == n]),
              "cpu_us_per_upgrade": median([r["cpu_us_per_upgrade"] for r in rows if r["contender"] == n])}
             for n in names]
    rounds = max(r["round"] for r in rows) + 1
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(table, f)
    try:
        subprocess.run([bins["loadgen"], "plot-compare", f.name, "--plot", path, "--plot-title",
                        f"{title} storm, concurrency {concurrency}, medians of {rounds} round(s)"], check=True)
    finally:
        os.unlink(f.name)
    print(f"plot: {path}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round of 1 s, hold of 300")
    parser.add_argument("--out", help="write every measurement as JSON lines to this file")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--secs", type=int, default=3)
    parser.add_argument("--concurrency", default="64,512")
    parser.add_argument("--hold", type=int, default=15000, help="connections held per contender (0: skip)")
    parser.add_argument("--skip-install", action="store_true")
    parser.add_argument("--plot", metavar="FILE.svg",
                        help="draw CPU per upgrade and upgrades/s per contender (wss:// rows go to FILE-wss.svg)")
    parser.add_argument("--no-tls", action="store_true", help="skip the wss rows")
    parser.add_argument("--all-cores", action="store_true",
                        help="also run wsedge and nginx with a worker per core (they then share CPU 1 with the load)")
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.secs, options.concurrency, options.hold = 1, 1, "64", min(options.hold, 300)
    options.concurrency = [int(c) for c in options.concurrency.split(",")]
    if options.hold > 19000:
        parser.error("--hold: a process here may open at most 20,000 descriptors; use 19000 or fewer")

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    try:
        if not options.skip_install:
            install()
        bins = build()
        table = contenders(bins, echo=False)
        versions = {name: v for name, (v, _) in table.items()}
        print(f"storm: {options.rounds} round(s) x {options.secs} s at concurrency {options.concurrency}, "
              f"servers on CPU 0, wsedge-loadgen on CPU 1", flush=True)
        records = storm_all(bins, table, options)
        if options.all_cores:
            extra = all_core_contenders(bins)
            versions.update({name: v for name, (v, _) in extra.items()})
            print("all cores: servers on every CPU, load on CPU 1", flush=True)
            records += storm_all(bins, extra, options, cpus=f"0-{(os.cpu_count() or 2) - 1}")
        tls_records, tls_holds = [], {}
        if not options.no_tls:
            with tempfile.TemporaryDirectory() as directory:
                cert, key = tls_cost.make_cert(directory)
                tls_table = tls_contenders(bins, cert, key)
                versions.update({name: v for name, (v, _) in tls_table.items()})
                print("wss: TLS 1.3, ECDSA P-256, X25519, full handshakes", flush=True)
                tls_records = storm_all(bins, tls_table, options, ca=cert)
                if options.hold:
                    tls_holds = hold_all(bins, tls_contenders(bins, cert, key, echo=True), options.hold, ca=cert)
        holds = hold_all(bins, contenders(bins, echo=True), options.hold) if options.hold else {}
        report(records, holds, versions, options)
        if tls_records:
            report(tls_records, tls_holds, versions, options, title="wss://", floor_name="floor wss")
        if options.plot:
            plot(bins, records, options.plot, "ws://")
            if tls_records:
                plot(bins, tls_records, re.sub(r"(\.svg)?$", "-wss.svg", options.plot, count=1), "wss://")
        records += tls_records
        if options.out:
            with open(options.out, "w") as f:
                for record in records:
                    f.write(json.dumps(record) + "\n")
                for name, hold in {**holds, **tls_holds}.items():
                    f.write(json.dumps({"contender": name, "hold": hold}) + "\n")
    finally:
        for process in started:
            stop(process)


if __name__ == "__main__":
    main()
