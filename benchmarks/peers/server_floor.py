"""
The floors: plain Autobahn doing the least a fan-out (and an echo) can do.

``python -m benchmarks.peers.server_floor {prepared,raw} --port N`` serves
WebSocket at ``/`` on 127.0.0.1 and speaks just enough of Phoenix's V2 JSON
that the load generator treats it as it treats twisted_phoenix:

* ``[join_ref, ref, topic, "phx_join", payload]`` subscribes the connection
  and is answered with the reply Phoenix sends,
  ``[join_ref, ref, topic, "phx_reply", {"response": {}, "status": "ok"}]``;
* ``[join_ref, ref, topic, "broadcast", payload]`` (the trigger) builds
  ``[null, null, topic, "broadcast", payload]`` once, as Phoenix's fastlane
  does, and writes it to every subscriber:

  - ``prepared``: ``factory.prepareMessage`` once, then
    ``sendPreparedMessage`` to each client (Autobahn's own fan-out API);
  - ``raw``: the WebSocket frame built once, then ``transport.write`` to
    each client (the least Python can do per delivery);

* any other push (the round trip's ``ping``, a heartbeat) is echoed back as
  it came: ``sendMessage`` in ``prepared``, a frame written with
  ``transport.write`` in ``raw``.

So every delivery carries the same bytes as twisted_phoenix's.  There is a
single topic: the floors measure the cost of writing, not of routing.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

from benchmarks.apps.memtrace import install as install_memtrace
from benchmarks.peers._args import BACKLOG, parse, start_twisted_logging

MODES = ("prepared", "raw")

_SORT = orjson.OPT_SORT_KEYS


def frame(data: bytes) -> bytes:
    """One unmasked, unfragmented text frame."""
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + data
    return struct.pack("!BBQ", 0x81, 127, size) + data


class FloorProtocol(WebSocketServerProtocol):
    factory: "FloorFactory"

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        join_ref, ref, topic, event, body = orjson.loads(payload)[:5]
        if event == "phx_join":
            self.factory.subscribe(self)
            reply = [join_ref, ref, topic, "phx_reply", {"response": {}, "status": "ok"}]
            self.sendMessage(orjson.dumps(reply, option=_SORT))
        elif event == "broadcast":
            self.factory.broadcast(orjson.dumps([None, None, topic, event, body], option=_SORT))
        elif self.factory.mode == "raw":
            self.transport.write(frame(payload))
        else:
            self.sendMessage(payload)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.unsubscribe(self)


class FloorFactory(WebSocketServerFactory):
    protocol = FloorProtocol

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode
        self._subscribers: dict[FloorProtocol, None] = {}
        self._snapshot: tuple[FloorProtocol, ...] | None = None

    def subscribe(self, protocol: FloorProtocol) -> None:
        self._subscribers[protocol] = None
        self._snapshot = None

    def unsubscribe(self, protocol: FloorProtocol) -> None:
        if self._subscribers.pop(protocol, 0) is None:
            self._snapshot = None

    def broadcast(self, data: bytes) -> None:
        subscribers = self._snapshot
        if subscribers is None:
            subscribers = self._snapshot = tuple(self._subscribers)
        if self.mode == "prepared":
            prepared = self.prepareMessage(data)
            for protocol in subscribers:
                protocol.sendPreparedMessage(prepared)
        else:
            wire = frame(data)
            for protocol in subscribers:
                protocol.transport.write(wire)


def main(argv: list[str] | None = None) -> None:
    args = parse("python -m benchmarks.peers.server_floor", argv, modes=MODES)
    from twisted.internet import reactor

    start_twisted_logging()
    install_memtrace()  # fanout --memory-breakdown
    reactor.listenTCP(args.port, FloorFactory(args.mode, reactor=reactor), backlog=BACKLOG, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
