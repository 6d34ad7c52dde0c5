"""Python `websockets` as a handshake server: after the upgrade, close(1000) (close mode)
or echo every message (echo mode, for holds).

Usage: python_ws_server.py PORT [close|echo]
"""
import asyncio
import sys

from websockets.asyncio.server import serve


ECHO = len(sys.argv) > 2 and sys.argv[2] == "echo"


async def handler(websocket):
    if ECHO:
        async for message in websocket:
            await websocket.send(message)
    else:
        await websocket.close(1000)


async def main(port):
    async with serve(handler, "127.0.0.1", port, backlog=4096, compression=None):
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().create_future()


asyncio.run(main(int(sys.argv[1])))
