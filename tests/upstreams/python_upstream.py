"""An app server behind wsedge's proxy mode, written with Python `websockets` (not by us).

Usage: python_upstream.py [PORT]  prints "listening PORT" once it accepts connections
                                  (on PORT if given: a restarted upstream keeps its port).

  /private        answers 401 (process_request), the connection is never upgraded
  /port           sends the port it listens on as one text message, then echoes
  /headers        sends the request headers it received as one JSON text message, then echoes
  /close/CODE     closes at once with CODE and reason "bye"
  /extensions     sends the extensions negotiated (JSON list of names), then echoes

With WSEDGE_DEFLATE=1 in its environment it negotiates permessage-deflate (off otherwise).
  anything else   echoes every message; subprotocol "chat" if the client offers it
"""
import asyncio
import json
import os
import sys

from websockets.asyncio.server import serve


def process_request(connection, request):
    if request.path == "/private":
        return connection.respond(401, "need a token\n")
    return None


def select_subprotocol(connection, offered):
    # Unlike the library default, a client that offers nothing is served without one.
    return "chat" if "chat" in offered else None


async def handler(ws):
    path = ws.request.path
    if path == "/port":
        await ws.send(str(ws.local_address[1]))
    elif path == "/headers":
        await ws.send(json.dumps([[k, v] for k, v in ws.request.headers.raw_items()]))
    elif path == "/extensions":
        await ws.send(json.dumps([e.name for e in ws.protocol.extensions]))
    elif path.startswith("/close/"):
        await ws.close(int(path.split("/")[2]), "bye")
        return
    async for message in ws:
        await ws.send(message)


async def main():
    async with serve(
        handler,
        "127.0.0.1",
        int(sys.argv[1]) if len(sys.argv) > 1 else 0,
        process_request=process_request,
        select_subprotocol=select_subprotocol,
        max_size=2 * 1024 * 1024,
        compression="deflate" if os.environ.get("WSEDGE_DEFLATE") == "1" else None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"listening {port}", flush=True)
        # Ends when the test closes our stdin (or dies): never outlives its test.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


asyncio.run(main())
