"""Drives wsedge with the Python `websockets` library (an independent implementation).

Usage: python_client.py BASE_URL   (e.g. ws://127.0.0.1:8080)
Prints one line per check; exits non-zero on the first failure.
"""
import sys

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

base = sys.argv[1]

with connect(base + "/chat", subprotocols=["v1", "v2"], open_timeout=10) as ws:
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
    with connect(base + "/elsewhere", open_timeout=10):
        pass
    sys.exit("expected a rejection for /elsewhere")
except InvalidStatus as error:
    assert error.response.status_code == 404, error.response.status_code
    print("rejection ok: 404")
