# -*- test-case-name: tests.test_client -*-
"""
A Phoenix Channels client for Twisted code: the twin of phoenix.js, for
scripts, bots, tests and load generators.

:class:`Socket`, :class:`Channel`, :class:`Push` and :class:`Presence`
behave as phoenix.js 1.8's classes of the same names (heartbeats, the
reconnect and rejoin backoffs, pushes buffered until joined, rejoins after
``phx_error`` and lost connections, presence syncing), with snake_case
names, a reactor passed in (every timer runs on it), and
:class:`~twisted.internet.defer.Deferred` results: ``join``, ``push`` and
``leave`` fire with the reply's response, or fail with :class:`ReplyError`
(status ``error``) or :class:`PushTimeout`.

A bot that joins ``room:lobby``, pushes and prints the replies::

    from twisted.internet import defer, task
    from twisted_phoenix.client import ReplyError, Socket

    @defer.inlineCallbacks
    def main(reactor):
        socket = Socket("ws://localhost:4000/socket", {"user_id": "bot"}, reactor=reactor)
        yield socket.connect()
        channel = socket.channel("room:lobby", {"nickname": "bot"})
        channel.on("shout", lambda payload: print("shout:", payload))
        print("joined:", (yield channel.join()))
        print("ping:", (yield channel.push("ping", {"n": 1})))
        try:
            yield channel.push("forbidden", {})
        except ReplyError as e:
            print("refused:", e.response)
        yield channel.leave()
        yield socket.disconnect()

    task.react(main)

``wss://`` URLs verify the server against the platform's trust store, or
``Socket(..., trust_root=Certificate.loadPEM(ca_pem))``, or any
``tls_options=optionsForClientTLS(...)``.  ``Socket(..., vsn="1.0.0")``
speaks the V1 JSON-object format; ``bytes`` payloads (V2 only) travel as
binary frames.  The transport is pluggable (``transport=``): see
:mod:`twisted_phoenix.client._transport`.
"""

from ._timer import Timer, default_reconnect_after, default_rejoin_after
from ._transport import CLOSED, CLOSING, CONNECTING, OPEN, CloseEvent, Transport, TransportFactory, TransportHandler
from .channel import Channel
from .presence import Presence
from .push import Push, PushTimeout, ReplyError
from .serializers import V1, V2, ClientSerializer
from .socket import Disconnected, Socket
from .websocket import ConnectionFailed, WebSocketTransport

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "Channel",
    "ClientSerializer",
    "CloseEvent",
    "ConnectionFailed",
    "Disconnected",
    "Presence",
    "Push",
    "PushTimeout",
    "ReplyError",
    "Socket",
    "Timer",
    "Transport",
    "TransportFactory",
    "TransportHandler",
    "V1",
    "V2",
    "WebSocketTransport",
    "default_reconnect_after",
    "default_rejoin_after",
]
