"""A compressing client (Python `websockets`, permessage-deflate offered as it does by
default) through the edge to a compressing upstream. Usage: deflate_client.py URL [CA_FILE]

URL ends in /extensions (tests/upstreams/python_upstream.py). Prints the extension the 101
names, what the upstream negotiated, and "echo ok" once a large compressible message and a
small one came back whole; exits 1 otherwise.
"""
import asyncio
import json
import ssl
import sys

from websockets.asyncio.client import connect


async def main():
    url = sys.argv[1]
    context = None
    if url.startswith("wss://"):
        context = ssl.create_default_context(cafile=sys.argv[2])
    async with connect(url, ssl=context, max_size=4 * 1024 * 1024) as ws:
        print("client extension:", ws.response.headers.get("Sec-WebSocket-Extensions"))
        print("upstream extensions:", json.loads(await ws.recv()))
        print("client negotiated:", [e.name for e in ws.protocol.extensions])
        big = "wsedge relays compressed frames unchanged. " * 20000
        for message in (big, "small", big.encode()):
            await ws.send(message)
            if await ws.recv() != message:
                print("echo differs")
                sys.exit(1)
        print("echo ok")


asyncio.run(main())
