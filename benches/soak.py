#!/usr/bin/env python3
"""Soak: a bounded mix of everything a storm edge sees, on both backends at once, then an
audit of what the servers hold and what they counted.

Four wsedge processes run side by side: echo mode on epoll and on io_uring, proxy mode on
epoll and on io_uring (in front of an upstream in this script that echoes relayed bytes and
resets the connections whose path asks for it). For SECS seconds, concurrently and in rounds:

  storms        wsedge-loadgen storm (--count bounded) against each echo server
  held          wsedge-loadgen hold, pinging, against each echo server
  h2 storms     wsedge-loadgen storm --h2 --streams 10 against every server (--h2c):
                WebSockets as HTTP/2 streams, ten a connection (through a proxy, each
                stream its own upstream connection)
  slowloris     wsedge-loadgen slowloris against each echo server (cut at the 1 s handshake timeout)
  rejected      requests without Upgrade (426) and POSTs (405) against every server
  proxied       upgrades through each proxy, relaying random bytes both ways, checked
  resets        upgrades through each proxy whose upstream resets mid-relay

Then, once every client is gone: each server's open descriptors are back to what they were
at start, its RSS within a small margin, every counter is exactly what the mix caused
(nothing else counted), and the outcomes add up to the accepted connections.

    benches/soak.py SECS [--bin-dir target/release] [--rss-margin-mib 8]

Exits non-zero on any mismatch; prints one line per server and figures for the record.
"""
import argparse
import base64
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HANDSHAKE_TIMEOUT_MS = 1000
started = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(path="/", key=None):
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode(), key


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a head: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


def accept_for(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class Upstream:
    """The proxies' app server: answers 101, echoes what it gets; on /reset it resets the
    connection after the first bytes."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn):
        try:
            conn.settimeout(30)
            head, rest = read_head(conn)
            key = next(l.split(":", 1)[1].strip() for l in head.split("\r\n")
                       if l.lower().startswith("sec-websocket-key:"))
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_for(key)}\r\n\r\n").encode())
            resets = head.split(" ")[1].startswith("/reset")
            while True:
                data = rest or conn.recv(65536)
                rest = b""
                if not data:
                    break
                if resets:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    break
                conn.sendall(data)
        except (OSError, StopIteration, ConnectionError):
            pass
        finally:
            conn.close()


class Server:
    def __init__(self, name, wsedge, io, after, extra):
        self.name, self.port = name, free_port()
        self.metrics_port = free_port()
        argv = [wsedge, "serve", "--io", io, "--threads", "2", "--no-pin", "--after", after,
                "--listen", f"127.0.0.1:{self.port}", "--metrics", f"127.0.0.1:{self.metrics_port}",
                "--handshake-timeout-ms", str(HANDSHAKE_TIMEOUT_MS)] + extra
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        started.append(self.process)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.metrics()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start: {self.process.stderr.read()}")
                time.sleep(0.05)
        self.fds_at_start, self.rss_at_start = self.fds(), self.rss()
        self.expected = {}
        self.lock = threading.Lock()

    def expect(self, **counts):
        with self.lock:
            for key, n in counts.items():
                self.expected[key] = self.expected.get(key, 0) + n

    def metrics(self):
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        sums = {}
        for line in data.decode().split("\r\n\r\n", 1)[1].splitlines():
            if line and not line.startswith("#"):
                series, value = line.rsplit(" ", 1)
                name = series.split("{")[0]
                sums[name] = sums.get(name, 0) + float(value)
                if name == "wsedge_rejections_total" and 'status="408"' in series:
                    sums["answered_timeouts"] = sums.get("answered_timeouts", 0) + float(value)
        return sums

    def fds(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))


def loadgen(binary, *args):
    out = subprocess.run([binary, *args, "--json"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(deadline, body):
    count = 0
    while time.monotonic() < deadline:
        body()
        count += 1
    return count


def storms(server, binary, deadline):
    def body():
        result = loadgen(binary, "storm", f"ws://127.0.0.1:{server.port}/", "--count", "2000",
                         "--concurrency", "16", "--duration", "120s", "--source-ips", "none")
        assert result["errors_total"] == 0, result
        server.expect(upgraded=result["ok"])
    return rounds(deadline, body)


def h2_storms(server, binary, deadline, count=200):
    def body():
        result = loadgen(binary, "storm", f"ws://127.0.0.1:{server.port}/", "--h2", "--streams", "10",
                         "--count", str(count), "--concurrency", "4", "--duration", "120s",
                         "--source-ips", "none")
        assert result["errors_total"] == 0, result
        server.expect(upgraded=result["ok"])
    return rounds(deadline, body)


def held(server, binary, deadline):
    def body():
        result = loadgen(binary, "hold", f"ws://127.0.0.1:{server.port}/", "--connections", "100",
                         "--hold", "3s", "--ping-interval", "200ms", "--duration", "30s",
                         "--source-ips", "none")
        assert result["errors_total"] == 0 and result["established"] == 100, result
        server.expect(upgraded=100)
    return rounds(deadline, body)


def slowloris(server, binary, deadline):
    def body():
        result = loadgen(binary, "slowloris", f"ws://127.0.0.1:{server.port}/", "--connections", "20",
                         "--byte-interval", "200ms", "--duration", "5s", "--source-ips", "none")
        assert result["cut_off"] == 20, result
        # Each sent bytes before the deadline: a 408, counted as a rejection and a timeout.
        server.expect(rejected=20, handshake_timeouts=20, answered_timeouts=20)
    return rounds(deadline, body)


def rejected(servers, deadline):
    bad = [(b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n", "426"),
           (b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 0\r\n\r\n", "405")]

    def body():
        for server in servers:
            for payload, status in bad:
                with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                    s.sendall(payload)
                    head, _ = read_head(s)
                    assert head.split(" ")[1] == status, head
                server.expect(rejected=1)
    return rounds(deadline, body)


def frame(payload):
    mask = os.urandom(4)
    header = bytes([0x82])
    n = len(payload)
    header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def proxied(server, deadline):
    def body():
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            data, key = request("/relay")
            s.sendall(data)
            head, rest = read_head(s)
            assert head.startswith("HTTP/1.1 101") and accept_for(key) in head, head
            for _ in range(5):
                sent = frame(os.urandom(random.randint(1, 4000)))
                s.sendall(sent)
                got = rest
                while len(got) < len(sent):
                    chunk = s.recv(65536)
                    assert chunk, "the relay closed"
                    got += chunk
                assert got[:len(sent)] == sent, "relayed bytes differ"
                rest = got[len(sent):]
        server.expect(upgraded=1)
    return rounds(deadline, body)


def upstream_resets(server, deadline):
    def body():
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            data, _ = request("/reset")
            s.sendall(data)
            head, _ = read_head(s)
            assert head.startswith("HTTP/1.1 101"), head
            s.sendall(frame(b"boom"))
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        server.expect(upgraded=1)
        time.sleep(0.05)
    return rounds(deadline, body)


def wait_idle(server):
    deadline = time.monotonic() + 30
    while True:
        m = server.metrics()
        if m.get("wsedge_open_connections", 0) == 0 and server.fds() <= server.fds_at_start:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.name}: still holds {m.get('wsedge_open_connections')} "
                                 f"connections and {server.fds()} descriptors")
        time.sleep(0.1)


COUNTERS = {
    "upgraded": "wsedge_upgrades_total",
    "rejected": "wsedge_rejected_handshakes_total",
    "handshake_timeouts": "wsedge_handshake_timeouts_total",
    "answered_timeouts": "answered_timeouts",
    "idle_timeouts": "wsedge_idle_timeouts_total",
    "protocol_errors": "wsedge_protocol_errors_total",
    "admission": "wsedge_admission_rejections_total",
    "accept_pauses": "wsedge_accept_pauses_total",
    "upstream_connect_failures": "wsedge_upstream_connect_failures_total",
    "upstream_timeouts": "wsedge_upstream_timeouts_total",
    "refusals_passed": "wsedge_upstream_refusals_passed_total",
    # No --http-path here: nothing is forwarded as plain HTTP.
    "http_forwarded": "wsedge_http_forwarded_total",
    "abandoned": "wsedge_handshakes_abandoned_total",
    # Plain listeners only: nothing is shed before its key exchange.
    "shed": "wsedge_shed_before_work_total",
    # No client of the mix stops reading: no output is ever given up.
    "send_timeouts": "wsedge_send_timeouts_total",
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("secs", type=float)
    parser.add_argument("--bin-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                          "..", "target", "release"))
    parser.add_argument("--rss-margin-mib", type=float, default=8)
    options = parser.parse_args()
    wsedge = os.path.join(options.bin_dir, "wsedge")
    binary = os.path.join(options.bin_dir, "wsedge-loadgen")
    upstream = Upstream()
    proxy = ["--upstream", f"127.0.0.1:{upstream.port}", "--h2c"]
    echo_servers = [Server(f"echo {io}", wsedge, io, "echo", ["--h2c"]) for io in ("epoll", "uring")]
    proxy_servers = [Server(f"proxy {io}", wsedge, io, "proxy", proxy) for io in ("epoll", "uring")]
    servers = echo_servers + proxy_servers
    deadline = time.monotonic() + options.secs
    jobs = []
    for server in echo_servers:
        jobs += [("storms", storms, (server, binary, deadline)),
                 ("held", held, (server, binary, deadline)),
                 ("h2 storms", h2_storms, (server, binary, deadline)),
                 ("slowloris", slowloris, (server, binary, deadline))]
    for server in proxy_servers:
        jobs += [("proxied", proxied, (server, deadline)),
                 ("resets", upstream_resets, (server, deadline)),
                 # Each stream is a thread of the script's upstream: fewer a round.
                 ("h2 storms", h2_storms, (server, binary, deadline, 50))]
    jobs.append(("rejected", rejected, (servers, deadline)))
    failures, done = [], {}

    def run(name, job, args):
        try:
            done[(name, getattr(args[0], "name", "all"))] = job(*args)
        except Exception as error:  # noqa: BLE001  (reported, then the soak fails)
            failures.append(f"{name}: {error!r}")

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for server in servers:
        m = wait_idle(server)
        fds, rss = server.fds(), server.rss()
        expected = {key: server.expected.get(key, 0) for key in COUNTERS}
        counted = {key: int(m.get(name, 0)) for key, name in COUNTERS.items()}
        accepted = int(m.get("wsedge_accepted_connections_total", 0))
        outcomes = (counted["upgraded"] + counted["rejected"] + counted["refusals_passed"]
                    + counted["http_forwarded"]
                    + counted["handshake_timeouts"] - counted["answered_timeouts"] + counted["abandoned"]
                    + counted["shed"])
        # An HTTP/2 connection's outcome is its own; each of its streams has one besides.
        h2_connections = int(m.get("wsedge_h2_connections_total", 0))
        h2_streams = int(m.get("wsedge_h2_streams_total", 0))
        print(f"{server.name}: accepted {accepted}, upgraded {counted['upgraded']}, rejected "
              f"{counted['rejected']}, timeouts {counted['handshake_timeouts']}, abandoned "
              f"{counted['abandoned']}; descriptors {server.fds_at_start} -> {fds}; "
              f"RSS {server.rss_at_start / 2**20:.1f} -> {rss / 2**20:.1f} MiB")
        if counted != expected:
            diff = {k: (counted[k], expected[k]) for k in COUNTERS if counted[k] != expected[k]}
            failures.append(f"{server.name}: counted (got, caused by the mix) {diff}")
        if outcomes + h2_connections != accepted + h2_streams:
            failures.append(f"{server.name}: outcomes {outcomes} + HTTP/2 connections {h2_connections} "
                            f"!= accepted {accepted} + HTTP/2 streams {h2_streams}")
        if fds != server.fds_at_start:
            failures.append(f"{server.name}: {fds} descriptors open, {server.fds_at_start} at start")
        if rss > server.rss_at_start + options.rss_margin_mib * 2**20:
            failures.append(f"{server.name}: RSS {rss} against {server.rss_at_start} at start")
    print("rounds: " + ", ".join(f"{name} {who}: {n}" for (name, who), n in sorted(done.items())))
    for process in started:
        process.kill()
    if failures:
        print("SOAK FAILED:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"soak passed: {len(servers)} servers, {options.secs:.0f} s")


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
