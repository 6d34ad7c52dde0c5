"""A python-socketio app server (aiohttp), for tests/frameworks.rs.

Usage: python socketio_server.py PORT NAME. Prints "listening PORT"; answers every "msg"
with its name and the transport in use.
"""

import asyncio
import sys

import socketio
from aiohttp import web

NAME = sys.argv[2] if len(sys.argv) > 2 else "app"
sio = socketio.AsyncServer(async_mode="aiohttp")
app = web.Application()
sio.attach(app)


@sio.on("msg")
async def msg(sid, data):
    return {"from": NAME, "echo": data, "transport": sio.transport(sid)}


async def main():
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
