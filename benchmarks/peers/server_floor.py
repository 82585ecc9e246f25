"""
The plain-Autobahn floors of the yardstick workloads: ``benchmarks/server_autobahn.py``
(the fan-out floors, unchanged) plus an echo for the round trip.

``python -m benchmarks.peers.server_floor prepared`` or ``... raw``: a
``phx_join`` subscribes and is answered with Phoenix's reply, a
``broadcast`` is written to every subscriber (``sendPreparedMessage`` or
``transport.write`` of a frame built once), and any other push (the
round trip's ``ping``) is echoed back as it came: ``sendMessage`` in the
``prepared`` floor, a frame written with ``transport.write`` in the ``raw``
one.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from benchmarks._control import serve
from benchmarks.server_autobahn import MODES, FloorFactory, FloorProtocol, frame

_SORT = orjson.OPT_SORT_KEYS


class EchoFloorProtocol(FloorProtocol):
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


class EchoFloorFactory(FloorFactory):
    protocol = EchoFloorProtocol


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in MODES:
        sys.exit(f"usage: python -m benchmarks.peers.server_floor {{{','.join(MODES)}}}")
    from twisted.internet import reactor

    serve(reactor, EchoFloorFactory(argv[0], reactor=reactor))


if __name__ == "__main__":
    main(sys.argv[1:])
