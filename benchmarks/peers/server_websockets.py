"""
The ``websockets`` peer (asyncio, its new ``websockets.asyncio`` API).

``python -m benchmarks.peers.server_websockets --port N`` serves WebSocket
at ``/`` on 127.0.0.1 and speaks the same subset of Phoenix's V2 JSON as the
Autobahn floors, with the standard library's ``json``:

* ``[join_ref, ref, topic, "phx_join", {}]`` adds the connection to the
  topic's set and is answered ``[join_ref, ref, topic, "phx_reply",
  {"response": {}, "status": "ok"}]``;
* ``[.., .., topic, "broadcast", payload]`` encodes ``[null, null, topic,
  "broadcast", payload]`` once and hands it to ``websockets``'
  ``broadcast()`` helper with the topic's set;
* any other push (the round trip's ``ping``, a heartbeat) is echoed back
  with ``await websocket.send(message)``.

Server defaults otherwise (keepalive pings every 20 s, answered by the
generator's ``ws``; no compression, which the generator does not offer).
"""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from benchmarks.peers._args import BACKLOG, parse

_COMPACT = (",", ":")
TOPICS: dict[str, set[ServerConnection]] = {}


async def handler(websocket: ServerConnection) -> None:
    joined: list[str] = []
    try:
        async for message in websocket:
            join_ref, ref, topic, event, payload = json.loads(message)[:5]
            if event == "phx_join":
                TOPICS.setdefault(topic, set()).add(websocket)
                joined.append(topic)
                reply = [join_ref, ref, topic, "phx_reply", {"response": {}, "status": "ok"}]
                await websocket.send(json.dumps(reply, separators=_COMPACT))
            elif event == "broadcast":
                text = json.dumps([None, None, topic, event, payload], separators=_COMPACT)
                broadcast(TOPICS.get(topic, ()), text)
            else:
                await websocket.send(message)
    except ConnectionClosed:
        pass  # the generator terminates its connections without a close frame
    finally:
        for topic in joined:
            TOPICS.get(topic, set()).discard(websocket)


async def main() -> None:
    args = parse("python -m benchmarks.peers.server_websockets")
    async with serve(handler, "127.0.0.1", args.port, compression=None, backlog=BACKLOG) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
