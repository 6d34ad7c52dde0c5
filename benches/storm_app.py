"""An app server whose session setup costs CPU, for storms through the edge
(benches/storm.sh): Python `websockets` in one process that spends SETUP_MS of CPU on each
upgrade before its 101 (authentication, loading the session: what real apps do), then holds
the connection, echoing. One process on one core: it sets up 1000 / SETUP_MS sessions a
second at best, and a herd beyond that waits in its accept queue.

Usage: storm_app.py PORT [SETUP_MS]   (default 2)
Prints "listening on 127.0.0.1:PORT", and on SIGTERM "upgrades=N" (sessions set up).
"""
import asyncio
import os
import signal
import sys
import time

from websockets.asyncio.server import serve

SETUP_S = (float(sys.argv[2]) if len(sys.argv) > 2 else 2.0) / 1000.0
upgrades = 0


def setup(connection, request):
    """Runs before the 101: the session's setup, on the CPU."""
    global upgrades
    end = time.perf_counter() + SETUP_S
    while time.perf_counter() < end:
        pass
    upgrades += 1
    return None


async def handler(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(port):
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(handler, "127.0.0.1", port, backlog=4096, compression=None,
                     process_request=setup, ping_interval=None):
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await stop
        # Before the connections are closed: that may take the rest of the grace period.
        print(f"upgrades={upgrades}", flush=True)
        os._exit(0)


asyncio.run(main(int(sys.argv[1])))
