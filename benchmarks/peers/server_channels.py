"""
The Django Channels 4 peer: Daphne serving an ``AsyncWebsocketConsumer``,
with the Redis channel layer (``channels_redis``).

``python -m benchmarks.peers.server_channels --port N --redis-port R``
serves WebSocket at ``/ws/`` on 127.0.0.1; the harness starts
``redis-server`` on ``R`` first.  Daphne runs in this process, as ``daphne`` would run
it (its asyncio reactor, default options but for the listen backlog), with
Django configured in code (no database, ``DEBUG`` off).  The consumer speaks
the same subset of Phoenix's V2 JSON as the Autobahn floors, with the
standard library's ``json``:

* ``phx_join``: ``channel_layer.group_add(topic, channel_name)``, then the
  Phoenix reply (a group is the equivalent of a joined channel);
* ``broadcast``: ``channel_layer.group_send(topic, ...)`` with the encoded
  ``[null, null, topic, "broadcast", payload]``; every member's consumer
  gets it from Redis and sends it (the Channels way to fan out);
* any other push (the round trip's ``ping``): echoed back with ``send``.

The layer's per-channel capacity is raised from 100 to 10,000 messages and
its expiry from 60 to 600 s, so that a burst of broadcasts is not dropped,
and its Redis connection pool blocks when its 100 connections are busy
instead of failing, and has no socket timeout
(``benchmarks/peers/_channels_layer.py``).
"""

from __future__ import annotations

# Daphne installs the asyncio reactor when imported; first.
import daphne.server  # isort:skip

import json
from typing import Any

_COMPACT = (",", ":")


def configure(redis_port: int) -> Any:
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="x" * 50,
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        DATABASES={},
        LOGGING_CONFIG=None,
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "benchmarks.peers._channels_layer.BlockingPoolLayer",
                "CONFIG": {
                    "hosts": [("127.0.0.1", redis_port)],
                    "capacity": 10_000,
                    "expiry": 600,
                },
            }
        },
    )
    django.setup()

    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class PingConsumer(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            self.topics: list[str] = []
            await self.accept()

        async def disconnect(self, code: Any) -> None:
            for topic in self.topics:
                await self.channel_layer.group_discard(topic, self.channel_name)

        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
            join_ref, ref, topic, event, payload = json.loads(text_data or bytes_data or b"null")[:5]
            if event == "phx_join":
                await self.channel_layer.group_add(topic, self.channel_name)
                self.topics.append(topic)
                reply = [join_ref, ref, topic, "phx_reply", {"response": {}, "status": "ok"}]
                await self.send(text_data=json.dumps(reply, separators=_COMPACT))
            elif event == "broadcast":
                text = json.dumps([None, None, topic, event, payload], separators=_COMPACT)
                await self.channel_layer.group_send(topic, {"type": "fanout", "text": text})
            else:
                await self.send(text_data=text_data)

        async def fanout(self, message: dict[str, Any]) -> None:
            await self.send(text_data=message["text"])

    return ProtocolTypeRouter({"websocket": URLRouter([path("ws/", PingConsumer.as_asgi())])})


def main(argv: list[str] | None = None) -> None:
    from benchmarks.peers._args import parse

    args = parse("python -m benchmarks.peers.server_channels", argv, redis=True)
    application = configure(args.redis_port)
    server = daphne.server.Server(
        application=application,
        endpoints=[f"tcp:port={args.port}:interface=127.0.0.1:backlog=1024"],
        signal_handlers=True,
        verbosity=0,
    )
    server.run()


if __name__ == "__main__":
    main()
