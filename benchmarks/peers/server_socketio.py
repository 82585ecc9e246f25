"""
The python-socketio 5 peer, on aiohttp.

``python -m benchmarks.peers.server_socketio --port N`` serves Socket.IO at
``/socket.io/`` on 127.0.0.1 (``socketio.AsyncServer`` with
``async_mode="aiohttp"``, attached to an ``aiohttp.web.Application``):

* event ``join`` with an ack: ``enter_room(sid, topic)``, acked
  ``{"status": "ok"}`` (a Socket.IO room is the equivalent of a joined
  channel);
* event ``ping`` with an ack: acked ``{"ping": "pong"}``;
* event ``broadcast``: ``emit("broadcast", payload, room="ping")``, the
  room fan-out (the packet is encoded once and sent to every member).

Defaults otherwise, but for the Engine.IO heartbeat: every hour instead of
every 25 s (with 20 s to answer): busy with a long fan-out, the server would
otherwise drop clients whose pongs it had not read in time.  The load
generator connects straight to the WebSocket transport
(``?EIO=4&transport=websocket``), without the long-polling first step, and
answers every Engine.IO ping.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio
from aiohttp import web

from benchmarks.peers._args import BACKLOG, parse

#: Engine.IO's heartbeat, every 25 s with 20 s to answer by default: raised
#: (see the module's docstring).
PING_SECONDS = 3600


def make_server() -> socketio.AsyncServer:
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        logger=False,
        engineio_logger=False,
        ping_interval=PING_SECONDS,
        ping_timeout=PING_SECONDS,
    )

    @sio.event
    async def join(sid: str, topic: Any) -> dict[str, str]:
        await sio.enter_room(sid, str(topic))
        return {"status": "ok"}

    @sio.event
    async def ping(sid: str, payload: Any) -> dict[str, str]:
        return {"ping": "pong"}

    @sio.event
    async def broadcast(sid: str, payload: Any) -> None:
        await sio.emit("broadcast", payload, room="ping")

    return sio


async def main() -> None:
    args = parse("python -m benchmarks.peers.server_socketio")
    sio = make_server()
    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=BACKLOG)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
