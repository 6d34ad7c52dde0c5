"""A reconnect storm through an edge to an app server whose session setup costs CPU:
how long until every client is back, against the app's floor, with how many attempts, and
how much of the app's work was for clients that had left.

N clients (wsedge-loadgen reconnect) come back at once, on CPU 1; the app
(benches/storm_app.py, SETUP_MS of CPU per upgrade, one process) and the edge share CPU 0.
Paths: straight to the app, through wsedge (proxy mode, defaults), through nginx (its
standard WebSocket proxy, benches/contenders/nginx-proxy.conf), through HAProxy
(benches/contenders/haproxy-proxy.cfg: what it offers to pace an app does not fit held
WebSockets, see there). Client policies:
impatient (5 s per attempt, exponential backoff 250 ms..10 s, full jitter) and Socket.IO's
defaults (20 s, 1 s doubling to 5 s, randomised by +-50%); Retry-After honoured.

The floor is N divided by the app's closed-loop upgrade rate (64 in flight, measured in the
same run). Wasted sessions are the app's upgrades beyond the clients that got in: sessions
set up for clients that had given up.

    benches/storm.py [--clients 8000] [--rounds 2] [--setup-ms 2]
                     [--paths direct,wsedge,nginx,haproxy]
                     [--policies impatient,socketio] [--secs 90] [--edge-args "..."] [--apps 1]

With `--apps 2` two app servers share CPU 0 behind the edges (so the floor is the same):
the edges balance over them; `direct` goes to the first only and is skipped.

Path `wsedge-h2`: the same sockets come back as WebSockets over HTTP/2 to wsedge (`--h2c`),
`--h2-streams` K on each client's connection (so `--clients`/K clients, a client in once
all its streams are), each stream bridged to its own upstream connection to the app.
"""
import argparse
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WSEDGE = os.path.join(ROOT, "target", "release", "wsedge")
LOADGEN = os.path.join(ROOT, "target", "release", "wsedge-loadgen")
VENV_PY = os.path.join(ROOT, "target", "thirdparty", "venv", "bin", "python")
APP_PORT, EDGE_PORT = 9611, 9612

POLICIES = {
    "impatient": ["--attempt-timeout", "5s", "--backoff", "exponential:250ms..10s",
                  "--jitter", "full"],
    "socketio": ["--attempt-timeout", "20s", "--backoff", "exponential:1s..5s",
                 "--jitter", "spread:0.5"],
}


def started(command, needle, cpu="0", **kw):
    """Starts `command` on `cpu` and waits for `needle` in its output."""
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(["taskset", "-c", cpu] + command, stdout=log, stderr=log,
                            cwd=ROOT, **kw)
    for _ in range(200):
        log.seek(0)
        if needle in log.read():
            return proc, log
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    log.seek(0)
    raise SystemExit(f"{command[0]} did not start: {log.read()[-2000:]}")


def stop(proc, log=None):
    """SIGTERM, then the process's output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is None:
        return ""
    log.seek(0)
    return log.read()


def app(setup_ms, port=APP_PORT):
    return started([VENV_PY, "benches/storm_app.py", str(port), str(setup_ms)],
                   "listening on")


def app_ports(apps):
    """The app servers' ports: the first is APP_PORT, the others after the edge's."""
    return [APP_PORT] + [EDGE_PORT + i for i in range(1, apps)]


def app_upgrades(output):
    for line in output.splitlines():
        if line.startswith("upgrades="):
            return int(line.split("=", 1)[1])
    return None


def wait_listening(port):
    """Returns once something accepts connections on `port` (10 s at most)."""
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def nginx(ports):
    prefix = tempfile.mkdtemp(prefix="wsedge-storm-nginx-")
    servers = "\n        ".join(f"server 127.0.0.1:{p};" for p in ports)
    with open(os.path.join(ROOT, "benches", "contenders", "nginx-proxy.conf")) as f:
        conf = (f.read().replace("@PORT@", str(EDGE_PORT))
                .replace("server @UPSTREAM@;", servers).replace("@PREFIX@", prefix))
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", prefix, "-c", path,
                             "-e", "stderr"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_listening(EDGE_PORT)
    return proc, None


def haproxy(ports):
    prefix = tempfile.mkdtemp(prefix="wsedge-storm-haproxy-")
    servers = "\n".join(f"    server app{i} 127.0.0.1:{p}" for i, p in enumerate(ports))
    with open(os.path.join(ROOT, "benches", "contenders", "haproxy-proxy.cfg")) as f:
        conf = f.read().replace("@PORT@", str(EDGE_PORT)).replace("@SERVERS@", servers)
    path = os.path.join(prefix, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen(["taskset", "-c", "0", "haproxy", "-db", "-f", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(EDGE_PORT)
    return proc, None


def wsedge(extra, ports):
    upstreams = [arg for p in ports for arg in ("--upstream", f"127.0.0.1:{p}")]
    return started([WSEDGE, "serve", "--listen", f"127.0.0.1:{EDGE_PORT}", "--after", "proxy",
                    "--threads", "1", "--backlog", "4096"] + upstreams + extra, "listening on")


def loadgen(args):
    out = subprocess.run(["taskset", "-c", "1", LOADGEN] + args + ["--json"],
                         capture_output=True, text=True, cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise SystemExit(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def floor_rate(setup_ms):
    """The app's closed-loop upgrade rate, 64 in flight, straight to it."""
    proc, log = app(setup_ms)
    try:
        run = loadgen(["storm", f"ws://127.0.0.1:{APP_PORT}/", "--concurrency", "64",
                       "--duration", "5s"])
    finally:
        stop(proc, log)
    return run["upgrades_per_sec"]


def stopped_counters(output):
    """The counters of a wsedge's `stopped:` line, by name."""
    stopped = next((l for l in output.splitlines() if "stopped:" in l), "")
    return dict(w.split("=", 1) for w in stopped.split("stopped:")[-1].split() if "=" in w)


def recovery(run, clients):
    """What a reconnect run says of the clients' return."""
    return {
        "clients_in": run["clients_in"],
        "all_in_s": run["in_after_s"]["p100"],
        "p50_in_s": run["in_after_s"]["p50"],
        # Over every client, in or not (the loadgen's own mean is over those in).
        "attempts": run["attempts_total"] / clients,
        "refusals": sum(run["refusals"].values()),
    }


def one(path, policy, args):
    """One storm on one path; returns its row."""
    ports = app_ports(args.apps)
    apps = [app(args.setup_ms, p) for p in ports]
    edge = edge_log = None
    port = APP_PORT
    clients, h2 = args.clients, []
    try:
        if path == "wsedge":
            edge, edge_log = wsedge(shlex.split(args.edge_args), ports)
            port = EDGE_PORT
        elif path == "wsedge-h2":
            edge, edge_log = wsedge(["--h2c"] + shlex.split(args.edge_args), ports)
            port = EDGE_PORT
            clients = args.clients // args.h2_streams
            h2 = ["--h2", "--streams", str(args.h2_streams)]
        elif path == "nginx":
            edge, edge_log = nginx(ports)
            port = EDGE_PORT
        elif path == "haproxy":
            edge, edge_log = haproxy(ports)
            port = EDGE_PORT
        run = loadgen(["reconnect", f"ws://127.0.0.1:{port}/", "--clients", str(clients),
                       "--duration", f"{args.secs}s"] + h2 + POLICIES[policy])
    finally:
        edge_out = stop(edge, edge_log) if edge else ""
        counts = [app_upgrades(stop(proc, log)) for proc, log in apps]
        upgrades = None if None in counts else sum(counts)
    counters = stopped_counters(edge_out)
    sockets_in = run["clients_in"] * (args.h2_streams if h2 else 1)
    return {
        "path": path,
        "policy": policy,
        **recovery(run, clients),
        # Sockets, not clients: an HTTP/2 client holds K.
        "clients_in": sockets_in,
        "timeouts": run["errors"].get("handshake_timeout", 0) + run["errors"].get("connect_timeout", 0),
        "app_sessions": upgrades,
        "wasted_sessions": None if upgrades is None else max(0, upgrades - sockets_in),
        "edge": {k: int(counters[k]) for k in ("upstream_queued", "upstream_shed",
                 "upstream_left_waiting", "upstream_abandoned_pending") if k in counters},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--own", action="store_true",
                        help="storm the server's own handshakes with its CPU capped "
                        "(benches/storm_own.py) instead of an app behind an edge")
    parser.add_argument("--tls", action="store_true", help="--own: wss:// clients")
    parser.add_argument("--cap", type=int, default=20,
                        help="--own: the server's CPU cap, percent of one core")
    parser.add_argument("--servers", default="epoll,uring,floor,nginx",
                        help="--own: servers to storm")
    parser.add_argument("--wsedge-args", default="", help="--own: extra wsedge serve flags")
    parser.add_argument("--h2-streams", type=int, default=10,
                        help="--own servers epoll-h2 and uring-h2, and path wsedge-h2: "
                        "WebSockets over HTTP/2, "
                        "this many on each client's connection (the same sockets in all: "
                        "--clients / K clients)")
    parser.add_argument("--baseline", metavar="BIN",
                        help="--own: another wsedge build, interleaved as baseline-epoll/uring")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--setup-ms", type=float, default=2.0)
    parser.add_argument("--paths", default="direct,wsedge,nginx,haproxy")
    parser.add_argument("--policies", default="impatient,socketio")
    parser.add_argument("--secs", type=int, default=90, help="longest a storm may take")
    parser.add_argument("--edge-args", default="", help="extra wsedge serve flags")
    parser.add_argument("--json", metavar="FILE", help="also write every row here")
    parser.add_argument("--apps", type=int, default=1, choices=[1, 2, 3, 4],
                        help="app servers behind the edges (sharing CPU 0)")
    args = parser.parse_args()
    if args.own:
        import storm_own
        args.clients = args.clients or 10000
        args.policies = args.policies
        return storm_own.main(args)
    args.clients = args.clients or 8000
    if args.apps > 1:
        args.paths = ",".join(p for p in args.paths.split(",") if p != "direct")
    rows = []
    rate = floor_rate(args.setup_ms)
    floor = args.clients / rate
    print(f"app: {args.setup_ms} ms of CPU per session, {rate:.0f} upgrades/s closed loop: "
          f"floor {floor:.1f} s for {args.clients} clients", flush=True)
    for round_ in range(args.rounds):
        for policy in args.policies.split(","):
            for path in args.paths.split(","):
                row = one(path, policy, args)
                row["round"] = round_
                row["floor_s"] = floor
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print()
    print(f"| policy | path | clients back (of {args.clients}) | all back after | vs floor "
          "| attempts per client | 503s | timeouts | wasted app sessions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for policy in args.policies.split(","):
        for path in args.paths.split(","):
            mine = [r for r in rows if r["policy"] == policy and r["path"] == path]
            med = lambda key: statistics.median(r[key] for r in mine if r[key] is not None)
            back = " / ".join(str(r["clients_in"]) for r in mine)
            everyone = all(r["clients_in"] == args.clients for r in mine)
            after = f"{med('all_in_s'):.1f} s" if everyone else f"not all in {args.secs} s"
            ratio = f"{med('all_in_s') / floor:.2f}x" if everyone else "-"
            wasted = [r["wasted_sessions"] for r in mine if r["wasted_sessions"] is not None]
            print(f"| {policy} | {path} | {back} | {after} | {ratio} | {med('attempts'):.2f} "
                  f"| {med('refusals'):.0f} | {med('timeouts'):.0f} "
                  f"| {statistics.median(wasted) if wasted else '-'} |")
    print(f"\n(medians of {args.rounds} rounds, interleaved; floor {floor:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
