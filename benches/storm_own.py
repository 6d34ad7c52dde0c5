"""A reconnect storm against the server's own handshakes, with its CPU capped: how long
until every client is back, with how many attempts and how much server CPU per client in,
against the floor servers and nginx.

N clients (wsedge-loadgen reconnect, on CPU 1) come back at once to a server on CPU 0 whose
CPU is capped by a cgroup (v1 `cpu.cfs_quota_us`, or v2 `cpu.max`) at --cap percent of a
core, so that one load core offers far more than the server can take: the storm regime.
Servers: wsedge (`--after echo`, one reactor) on epoll and io_uring, the floor servers
(benches/upgrade_storm.rs for ws://, benches/tls_floor.rs for wss://: the least an upgrade
costs), nginx (one worker answering the upgrade in Lua; OpenSSL with the same certificate,
TLS 1.3, X25519). Every server listens with the same backlog, and the kernel's
`net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog` are raised to it for the run and
restored after. Every server answers the 101 and holds the connection (the floors and nginx
read and drop what follows); clients that give up close with a FIN, as a browser or a
Socket.IO client does.

Server CPU per client in is the server's CPU time over the storm (the scheduler's clock,
summed over its threads) divided by the clients that got in.

Client policies: impatient (5 s per attempt, exponential backoff 250 ms..10 s, full jitter)
and patient (Socket.IO's defaults: 20 s, 1 s doubling to 5 s, randomised by +-50%);
Retry-After honoured. Patient clients waste nothing when the server keeps up within 20 s:
what impatient clients cost beyond them is work spent on clients that had left.

HTTP/2 (servers `epoll-h2`, `uring-h2`: wsedge with `--h2`, or `--h2c` without `--tls`):
the same sockets come back as WebSockets over HTTP/2 (RFC 8441), `--h2-streams` K on each
client's connection (a browser's tabs on one origin), so `--clients`/K clients; a client
is in once all its streams are, and the server CPU is per socket.

    benches/storm.py --own [--clients 10000] [--tls] [--cap 20] [--rounds 3]
                           [--servers epoll,uring,floor,nginx,epoll-h2,uring-h2]
                           [--policies impatient,socketio] [--h2-streams 10]
                           [--wsedge-args "..."] [--baseline BIN]
"""
import json
import os
import shlex
import statistics
import subprocess
import tempfile
import time

from ab import free_port, make_cert
from storm import (POLICIES, ROOT, WSEDGE, loadgen, recovery, stop, stopped_counters,
                   wait_listening)
from tls_cost import nginx_argv

BACKLOG = 16384
CGROUP_V1 = "/sys/fs/cgroup/cpu"
CGROUP_V2 = "/sys/fs/cgroup"
FLOOR_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
HOLD_LUA = """\\r\\n\\r\\n")
                sock:settimeouts(60000, 60000, 3600000)
                while true do
                    local data, err = sock:receive(2)
                    if not data and err ~= "timeout" then break end
                end"""


class Cap:
    """A cgroup holding the server at `percent` of one core."""

    def __init__(self, percent):
        self.v1 = os.path.exists(os.path.join(CGROUP_V1, "cpu.cfs_quota_us"))
        base = CGROUP_V1 if self.v1 else CGROUP_V2
        self.path = os.path.join(base, f"wsedge-storm-{os.getpid()}")
        os.makedirs(self.path, exist_ok=True)
        period = 10_000
        quota = period * percent // 100
        if self.v1:
            self.write("cpu.cfs_period_us", period)
            self.write("cpu.cfs_quota_us", quota)
        else:
            self.write("cpu.max", f"{quota} {period}")

    def write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(str(value))

    def enter(self, pid):
        self.write("cgroup.procs", pid)

    def remove(self):
        try:
            os.rmdir(self.path)
        except OSError:
            pass


class Sysctls:
    """Raises the accept and SYN backlogs for the run; restores them after."""

    NAMES = ("net/core/somaxconn", "net/ipv4/tcp_max_syn_backlog")

    def __enter__(self):
        self.saved = {}
        for name in self.NAMES:
            path = f"/proc/sys/{name}"
            with open(path) as f:
                self.saved[path] = f.read().strip()
            with open(path, "w") as f:
                f.write(str(max(BACKLOG, int(self.saved[path]))))
        return self

    def __exit__(self, *_):
        for path, value in self.saved.items():
            with open(path, "w") as f:
                f.write(value)


def floor_binaries():
    """The floor servers' bench binaries: (plain, tls)."""
    built = subprocess.run(
        ["cargo", "bench", "--no-run", "--bench", "tls_floor", "--bench", "upgrade_storm",
         "--message-format", "json"], cwd=ROOT, capture_output=True, text=True,
        check=True).stdout
    found = {}
    for line in built.splitlines():
        message = json.loads(line)
        name = message.get("target", {}).get("name")
        if name in ("tls_floor", "upgrade_storm") and message.get("executable"):
            found[name] = message["executable"]
    return found["upgrade_storm"], found["tls_floor"]


def server_argv(name, port, args, cert, key):
    if name == "floor":
        if args.tls:
            return [args.floors[1], str(port), cert, key]
        return [args.floors[0], "--floor-server", "--port", str(port)]
    if name == "nginx":
        if args.tls:
            argv = nginx_argv(port, cert, key)
        else:
            prefix = tempfile.mkdtemp(prefix="wsedge-storm-nginx-")
            with open(os.path.join(ROOT, "benches", "contenders", "nginx-lua.conf")) as f:
                conf = f.read().replace("@PORT@", str(port)).replace("@PREFIX@", prefix)
            path = os.path.join(prefix, "nginx.conf")
            with open(path, "w") as f:
                f.write(conf)
            argv = ["nginx", "-p", prefix, "-c", path, "-e", "stderr"]
        conf = argv[argv.index("-c") + 1]
        with open(conf) as f:
            text = f.read().replace("backlog=4096", f"backlog={BACKLOG}")
        # Held: the 101 alone, then read until the client closes.
        text = text.replace('\\r\\n\\r\\n\\136\\2\\3\\232")', HOLD_LUA)
        assert HOLD_LUA in text, "nginx-lua.conf changed: hold the connection anew"
        with open(conf, "w") as f:
            f.write(text)
        return argv
    binary, io = (args.baseline, name.removeprefix("baseline-")) if name.startswith(
        "baseline-") else (WSEDGE, name)
    h2 = io.endswith("-h2")
    io = io.removesuffix("-h2")
    argv = [binary, "serve", "--io", io, "--threads", "1", "--no-pin", "--after", "echo",
            "--backlog", str(BACKLOG)]
    if h2:
        argv += ["--h2"] if args.tls else ["--h2c"]
    if args.tls:
        argv += ["--listen", f"127.0.0.1:{free_port()}", "--listen-tls", f"127.0.0.1:{port}",
                 "--tls-cert", cert, "--tls-key", key]
    else:
        argv += ["--listen", f"127.0.0.1:{port}"]
    return argv + shlex.split(args.wsedge_args)


def cpu_ns(pid):
    """The process's CPU time in ns, summed over its threads (/proc/PID/task/*/schedstat: the
    scheduler's clock, not /proc/PID/stat's 10 ms ticks, which are 5% of a 15,000-client
    plain storm)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def one(name, policy, args, cert, key, cap):
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(["taskset", "-c", "0"] + server_argv(name, port, args, cert, key),
                            stdout=log, stderr=log, cwd=ROOT,
                            env=dict(os.environ, FLOOR_HOLD="1"))
    try:
        wait_listening(port)
        cap.enter(proc.pid)
        url = f"wss://localhost:{port}/" if args.tls else f"ws://127.0.0.1:{port}/"
        extra = ["--ca", cert] if args.tls else []
        if name == "floor":
            extra += ["--key", FLOOR_KEY]
        streams = args.h2_streams if name.endswith("-h2") else 1
        if streams > 1 or name.endswith("-h2"):
            extra += ["--h2", "--streams", str(streams)]
        clients = args.clients // streams
        before = cpu_ns(proc.pid)
        run = loadgen(["reconnect", url, "--clients", str(clients), "--duration",
                       f"{args.secs}s", "--close", "fin", "--server-pid", str(proc.pid)]
                      + extra + POLICIES[policy])
        spent_ns = cpu_ns(proc.pid) - before
    finally:
        output = stop(proc, log)
    counters = stopped_counters(output)
    return {
        "server": name,
        "policy": policy,
        **recovery(run, clients),
        # Sockets, whatever carries them: a client over HTTP/2 holds `streams`.
        "clients_in": run["clients_in"] * streams,
        "errors": run["errors"],
        "cpu_us_per_client": spent_ns / 1000 / max(1, run["clients_in"] * streams),
        "cpu_us_per_client_ticks": run.get("server_cpu_us_per_client"),
        "counters": {k: int(v) for k, v in counters.items() if v.isdigit()},
    }


def main(args):
    args.floors = floor_binaries()
    cert, key = make_cert()
    cap = Cap(args.cap)
    rows = []
    servers = args.servers.split(",")
    if args.baseline:
        servers += [f"baseline-{s}" for s in servers if s in ("epoll", "uring")]
    kind = "wss" if args.tls else "ws"
    print(f"{args.clients} {kind} clients at once; server capped at {args.cap}% of CPU 0, "
          f"backlog {BACKLOG}", flush=True)
    try:
        with Sysctls():
            for round_ in range(args.rounds):
                for policy in args.policies.split(","):
                    for name in servers:
                        row = one(name, policy, args, cert, key, cap)
                        row["round"] = round_
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        cap.remove()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print()
    print(f"| policy | server | sockets back (of {args.clients}) | all back after "
          "| attempts per client | server CPU per socket in |")
    print("|---|---|---|---|---|---|")
    for policy in args.policies.split(","):
        for name in servers:
            mine = [r for r in rows if r["policy"] == policy and r["server"] == name]
            back = " / ".join(str(r["clients_in"]) for r in mine)
            everyone = all(r["clients_in"] == args.clients for r in mine)
            times = [r["all_in_s"] for r in mine if r["all_in_s"] is not None]
            after = f"{statistics.median(times):.2f} s" if everyone else \
                f"not all in {args.secs} s"
            cpu = [r["cpu_us_per_client"] for r in mine if r["cpu_us_per_client"]]
            cpu_text = f"{statistics.median(cpu):.1f} µs" if cpu else "-"
            print(f"| {policy} | {name} | {back} | {after} "
                  f"| {statistics.median(r['attempts'] for r in mine):.2f} | {cpu_text} |")
    print(f"\n(medians of {args.rounds} rounds, interleaved)")
