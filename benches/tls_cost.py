#!/usr/bin/env python3
"""What a wss:// upgrade costs wsedge: server CPU per upgrade and memory per idle connection.

For each round, each backend and each kind of handshake (full, resumed): wsedge with one
reactor on CPU 0 terminating TLS (ECDSA P-256 certificate, TLS 1.3, X25519), wsedge-loadgen
on CPU 1 storming it with --count upgrades at concurrency 64. The figure is the server's CPU
time (utime + stime from /proc/PID/stat) over the run divided by verified upgrades; rounds
are interleaved and the medians reported. `floor` is benches/tls_floor.rs, the least a wss
upgrade costs with the same rustls settings; `nginx` (OpenSSL) terminates TLS with the same
certificate, version and group, tickets on, and answers the upgrade in Lua. Then, per backend, the RSS an idle upgraded wss
connection holds (`hold` of --idle connections, echo mode).

    benches/tls_cost.py [--wsedge BIN] [--loadgen BIN] [--rounds 5] [--count 20000] [--idle 5000]
                        [--baseline BIN] [--servers epoll,uring,floor] [--no-resume] [--no-nginx]

`--baseline BIN` adds another wsedge build's rows (`baseline-epoll`, `baseline-uring`) to the
same interleaved rounds, for an A/B of a change.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

from ab import cpu_seconds, free_port, make_cert, rss_bytes, start as ab_start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOOR = None  # the tls_floor bench binary, built in main()
BASELINE = None  # --baseline


def nginx_argv(port, cert, key):
    """nginx 1 worker terminating TLS (same certificate, TLS 1.3, X25519, tickets on) and
    answering the upgrade in Lua, as benches/compare.py's contender does in plaintext."""
    prefix = tempfile.mkdtemp(prefix="wsedge-nginx-tls-")
    with open(os.path.join(ROOT, "benches", "contenders", "nginx-lua.conf")) as f:
        conf = f.read().replace("@PORT@", str(port)).replace("@PREFIX@", prefix)
    conf = conf.replace(
        "backlog=4096;",
        f"backlog=4096 ssl;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n"
        "        ssl_protocols TLSv1.3;\n        ssl_ecdh_curve X25519;\n"
        "        ssl_session_tickets on;\n        ssl_session_cache shared:tls:10m;\n"
        # The same suite as wsedge picks (AES-128-GCM, a SHA-256 key schedule).
        "        ssl_prefer_server_ciphers on;\n        ssl_conf_command Ciphersuites "
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;")
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return ["nginx", "-p", prefix, "-c", path, "-e", "stderr"]


def start(wsedge, io, after, port, cert, key, group="x25519", version="1.3"):
    if io.startswith("baseline-"):
        wsedge, io = BASELINE, io.removeprefix("baseline-")
    if io == "floor":
        return ab_start([FLOOR, str(port), cert, key], port, "0")
    if io == "nginx":
        return ab_start(nginx_argv(port, cert, key), port, "0")
    argv = [wsedge, "serve", "--io", io, "--threads", "1", "--no-pin", "--after", after,
            "--listen", f"127.0.0.1:{free_port()}", "--listen-tls", f"127.0.0.1:{port}",
            "--tls-cert", cert, "--tls-key", key, "--tls-groups", group,
            "--tls-versions", version]
    return ab_start(argv, port, "0")


def storm(args, io, resume, cert, key, group="x25519", version="1.3"):
    port = free_port()
    server = start(args.wsedge, io, "close", port, cert, key, group, version)
    try:
        before = cpu_seconds(server.pid)
        argv = ["taskset", "-c", "1", args.loadgen, "storm", f"wss://localhost:{port}/",
                "--ca", cert, "--count", str(args.count), "--concurrency", "64",
                "--duration", "120s", "--json", "--key", "dGhlIHNhbXBsZSBub25jZQ==",
                "--tls-groups", group]
        if resume:
            argv.append("--tls-resume")
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        after = cpu_seconds(server.pid)
        report = json.loads(out.strip().splitlines()[-1])
        ok = report["ok"]
        return (after - before) / max(ok, 1) * 1e6, report["upgrades_per_sec"], \
            report["tls_resumed"], report["latency_us"]["p99"]
    finally:
        server.terminate()
        server.wait()


def idle_bytes(args, io, cert, key):
    port = free_port()
    server = start(args.wsedge, io, "echo", port, cert, key)
    try:
        time.sleep(0.3)
        base = rss_bytes(server.pid)
        hold = subprocess.Popen(
            ["taskset", "-c", "1", args.loadgen, "hold", f"wss://localhost:{port}/",
             "--ca", cert, "--connections", str(args.idle), "--hold", "3s",
             "--duration", "60s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        peak = base
        while hold.poll() is None:
            peak = max(peak, rss_bytes(server.pid))
            time.sleep(0.1)
        return (peak - base) / args.idle
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wsedge", default=os.path.join(ROOT, "target/release/wsedge"))
    parser.add_argument("--loadgen", default=os.path.join(ROOT, "target/release/wsedge-loadgen"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--providers", default="aws-lc,ring",
                        help="rustls crypto providers to compare (WSEDGE_TLS_PROVIDER)")
    parser.add_argument("--baseline", help="another wsedge binary to interleave with --wsedge")
    parser.add_argument("--servers", default="epoll,uring,floor")
    parser.add_argument("--no-resume", action="store_true", help="full handshakes only")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--groups", default="x25519",
                        help="key exchanges to measure (x25519, x25519mlkem768: wsedge only)")
    parser.add_argument("--versions", default="1.3", help="TLS versions to measure (1.2: wsedge only)")
    args = parser.parse_args()
    global FLOOR, BASELINE
    BASELINE = args.baseline
    servers_of_rustls = tuple(args.servers.split(","))
    if BASELINE:
        servers_of_rustls += tuple(f"baseline-{s}" for s in servers_of_rustls if s in ("epoll", "uring"))
    built = subprocess.run(
        ["cargo", "bench", "--no-run", "--bench", "tls_floor", "--message-format", "json"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for line in built.splitlines():
        message = json.loads(line)
        if message.get("target", {}).get("name") == "tls_floor" and message.get("executable"):
            FLOOR = message["executable"]
    with tempfile.TemporaryDirectory() as directory:
        cert, key = make_cert(directory)
        rows = {}
        providers = args.providers.split(",")
        for round_ in range(args.rounds):
            for provider in providers + ([] if args.no_nginx else ["openssl"]):
                os.environ["WSEDGE_TLS_PROVIDER"] = provider
                servers = ("nginx",) if provider == "openssl" else servers_of_rustls
                runs = [(io, group, version) for version in args.versions.split(",")
                        for group in args.groups.split(",") for io in servers
                        if (group, version) == ("x25519", "1.3") or io not in ("nginx", "floor")
                        # The hybrid group is TLS 1.3's only.
                        if (group, version) != ("x25519mlkem768", "1.2")]
                for io, group, version in runs:
                    for resume in (False,) if args.no_resume else (False, True):
                        cpu, rate, resumed, p99 = storm(args, io, resume, cert, key, group, version)
                        rows.setdefault((provider, io, f"TLS {version} {group}", resume), []).append(
                            (cpu, rate, resumed, p99))
                        print(f"round {round_ + 1} {provider} {io} TLS {version} {group} "
                              f"{'resumed' if resume else 'full'}: {cpu:.1f} us/upgrade, "
                              f"{rate:,.0f}/s, resumed {resumed}, p99 {p99} us", flush=True)
        print(f"\nwss upgrades, TLS 1.3, ECDSA P-256, {args.rounds} rounds of "
              f"{args.count}, medians:")
        print("| provider | server | TLS, group | handshake | server CPU per upgrade | resumed share | "
              "upgrades/s (client-bound) | p99 |")
        print("|---|---|---|---|---|---|---|---|")
        for (provider, io, group, resume), values in rows.items():
            cpu = statistics.median(v[0] for v in values)
            rate = statistics.median(v[1] for v in values)
            share = statistics.median(v[2] for v in values) / args.count
            p99 = statistics.median(v[3] for v in values)
            print(f"| {provider} | {io} | {group} | {'resumed' if resume else 'full'} | {cpu:.1f} us | "
                  f"{share:.0%} | {rate:,.0f} | {p99 / 1000:.1f} ms |")
        os.environ["WSEDGE_TLS_PROVIDER"] = providers[0]
        if args.idle:
            print("\nmemory per idle wss connection (RSS peak over base, echo mode):")
            for io in [s for s in servers_of_rustls if s != "floor"]:
                print(f"| {io} | {idle_bytes(args, io, cert, key):,.0f} bytes ({args.idle} held) |")


if __name__ == "__main__":
    main()
