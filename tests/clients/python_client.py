"""Drives wsedge with the Python `websockets` library (an independent implementation).

Usage: python_client.py BASE_URL [CA_FILE]   (e.g. ws://127.0.0.1:8080, or wss:// and the
CA that signed the server's certificate)
Prints one line per check; exits non-zero on the first failure.
"""
import ssl
import sys

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

base = sys.argv[1]
tls = {"ssl": ssl.create_default_context(cafile=sys.argv[2])} if base.startswith("wss") else {}

with connect(base + "/chat", subprotocols=["v1", "v2"], open_timeout=10, **tls) as ws:
    assert ws.subprotocol == "v2", ws.subprotocol
    ws.send("héllo")
    assert ws.recv(timeout=10) == "héllo"
    ws.send(b"\x00\x01\x02" * 50_000)
    assert ws.recv(timeout=10) == b"\x00\x01\x02" * 50_000
    assert ws.ping(b"beat").wait(timeout=10)
    print("echo ok: subprotocol v2, text, 150000-byte binary, ping")
    ws.close(code=1000, reason="done")
    assert ws.close_code == 1000, ws.close_code
    print("close ok: 1000 echoed")

try:
    with connect(base + "/elsewhere", open_timeout=10, **tls):
        pass
    sys.exit("expected a rejection for /elsewhere")
except InvalidStatus as error:
    assert error.response.status_code == 404, error.response.status_code
    print("rejection ok: 404")
