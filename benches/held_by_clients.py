#!/usr/bin/env python3
"""What clients that misbehave hold on a server: its descriptors, its RSS and its CPU, while N
such clients are connected and after its deadlines should have let go of them. Two builds
(A = before a change, B = after) are measured in turns, A B A B, and each figure is the
median of the rounds.

Kinds of client (the load's shape; one connection each, opened at once, never retried):

  stop-reading   upgrades (echo mode), sends 8 MiB of 64 KiB binary messages with a 4 KiB
                 receive buffer, and never reads: more echo than the kernel's buffers hold
                 (4 MiB of send buffer at most by default), so the rest waits in the server.
  tls-trickle    on a TLS listener, sends a ClientHello declared 65,535 bytes long as 1-byte
                 records, 600 records (3.6 KB) every 10 ms, until the server closes or the
                 whole 393 KB is sent.

    benches/held_by_clients.py --a OLD_WSEDGE --b NEW_WSEDGE [--kind stop-reading]
                               [--clients 1000] [--rounds 3] [--settle 5] [--io epoll|uring]
"""
import argparse
import os
import selectors
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_tcp_kib():
    """Memory the kernel's TCP sockets hold (all of them), in KiB."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                words = line.split()
                return int(words[words.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


def proc_figures(pid):
    """Descriptors, RSS (KiB) and CPU seconds of process `pid`."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return fds, rss, cpu


def start(binary, kind, io, cert_dir):
    port = free_port()
    command = [binary, "serve", "--io", io, "--threads", "1", "--no-pin", "--after", "echo",
               "--listen", f"127.0.0.1:{free_port()}"]
    if kind == "tls-trickle":
        command += ["--listen-tls", f"127.0.0.1:{port}", "--tls-cert", f"{cert_dir}/cert.pem",
                    "--tls-key", f"{cert_dir}/key.pem", "--handshake-timeout-ms", "60000"]
    else:
        command[command.index("--listen") + 1] = f"127.0.0.1:{port}"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                sys.exit(f"{binary} did not start")
            time.sleep(0.05)
    time.sleep(0.3)
    return process, port


def frame(payload):
    mask = b"\x01\x02\x03\x04"
    n = len(payload)
    if n < 126:
        header = bytes([0x82, 0x80 | n])
    elif n < 65536:
        header = bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stop_reading(port, clients):
    request = (f"GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    batch = memoryview(frame(b"\x07" * 65536) * 128)
    held = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1)
        s.setblocking(False)
        held.append([s, 0, time.monotonic()])
    # Push until each client's batch is out or the server has stopped reading it for 1 s.
    while True:
        busy = False
        for entry in held:
            s, sent, last = entry
            if sent >= len(batch) or time.monotonic() - last > 1:
                continue
            busy = True
            try:
                n = s.send(batch[sent:])
                entry[1], entry[2] = sent + n, time.monotonic()
            except BlockingIOError:
                pass
            except OSError:
                entry[1] = len(batch)
        if not busy:
            return [s for s, _, _ in held]
        time.sleep(0.001)


def tls_trickle(port, clients, seconds):
    message = bytes([1, 0, 0xFF, 0xFF, 3, 3]) + b"A" * (0xFFFF - 2)
    records = b"".join(bytes([0x16, 3, 1, 0, 1, b]) for b in message)
    held = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        held.append([s, 0])
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(sent < len(records) for _, sent in held):
        for entry in held:
            s, sent = entry
            if sent >= len(records) or s.fileno() < 0:
                continue
            try:
                entry[1] += s.send(records[sent:sent + 3600])
            except (BlockingIOError, ConnectionError, OSError):
                entry[1] = len(records)
        time.sleep(0.01)
    return [s for s, _ in held]


def measure(binary, options, cert_dir):
    process, port = start(binary, options.kind, options.io, cert_dir)
    base_fds, base_rss, base_cpu = proc_figures(process.pid)
    base_kernel = kernel_tcp_kib()
    started = time.monotonic()
    if options.kind == "stop-reading":
        held = stop_reading(port, options.clients)
    else:
        held = tls_trickle(port, options.clients, options.settle + 10)
    time.sleep(1)
    fds, rss, _ = proc_figures(process.pid)
    loaded = (fds - base_fds, rss - base_rss, kernel_tcp_kib() - base_kernel)
    # Past the server's deadlines (send timeout, linger): what is still held is held for good.
    time.sleep(max(0.0, options.settle - (time.monotonic() - started)))
    fds, rss, cpu = proc_figures(process.pid)
    after = (fds - base_fds, rss - base_rss, kernel_tcp_kib() - base_kernel)
    for s in held:
        s.close()
    process.terminate()
    process.wait(timeout=30)
    return loaded, after, cpu - base_cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="wsedge before")
    parser.add_argument("--b", default=os.path.join(ROOT, "target", "release", "wsedge"), help="wsedge after")
    parser.add_argument("--kind", choices=["stop-reading", "tls-trickle"], default="stop-reading")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=35, help="seconds from the first connect to the last reading")
    parser.add_argument("--io", choices=["epoll", "uring"], default="epoll")
    options = parser.parse_args()
    cert_dir = tempfile.mkdtemp(prefix="wsedge-held-")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", f"{cert_dir}/key.pem", "-out", f"{cert_dir}/cert.pem",
                    "-subj", "/CN=localhost", "-days", "2"], check=True, capture_output=True)
    runs = {"A": [], "B": []}
    for round_ in range(options.rounds):
        for name in ("A", "B"):
            binary = options.a if name == "A" else options.b
            result = measure(binary, options, cert_dir)
            runs[name].append(result)
            (lf, lr, lk), (af, ar, ak), cpu = result
            print(f"round {round_} {name}: while loaded {lf} fds, RSS {lr / 1024:.1f} MiB, kernel TCP "
                  f"{lk / 1024:.1f} MiB; after {options.settle:.0f} s {af} fds, RSS {ar / 1024:.1f} MiB, "
                  f"kernel TCP {ak / 1024:.1f} MiB; server CPU {cpu:.2f} s", flush=True)
    print(f"\n{options.kind}, {options.clients} clients, {options.io}, medians of {options.rounds} rounds "
          "(descriptors and RSS above the idle server's):")
    for name in ("A", "B"):
        rows = runs[name]
        med = lambda f: statistics.median(f(r) for r in rows)
        print(f"  {name}: loaded {med(lambda r: r[0][0]):.0f} fds, RSS {med(lambda r: r[0][1]) / 1024:.1f} MiB, "
              f"kernel {med(lambda r: r[0][2]) / 1024:.1f} MiB | after {options.settle:.0f} s "
              f"{med(lambda r: r[1][0]):.0f} fds, RSS {med(lambda r: r[1][1]) / 1024:.1f} MiB, "
              f"kernel {med(lambda r: r[1][2]) / 1024:.1f} MiB | CPU {med(lambda r: r[2]):.2f} s")


if __name__ == "__main__":
    main()
