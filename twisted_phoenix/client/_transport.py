# -*- test-case-name: tests.test_client -*-
"""
The contract between a :class:`~twisted_phoenix.client.socket.Socket` and the
transport that moves its frames (phoenix.js's ``transport`` option).

A transport factory is called as ``factory(url, protocols, handler)`` for
each connection attempt, with the ``ws://``/``wss://`` URL of the socket's
``/websocket`` endpoint (params and ``vsn`` in its query), the WebSocket
subprotocols to offer (``None``, or ``["phoenix", "base64url.bearer.phx.…"]``
with an auth token) and a :class:`TransportHandler`.  It returns a
:class:`Transport` in the :data:`CONNECTING` state and reports what happens
to the handler, exactly as a browser ``WebSocket`` fires ``onopen``,
``onmessage``, ``onerror`` and ``onclose``:

* :meth:`~TransportHandler.transport_open` once, when open;
* :meth:`~TransportHandler.transport_message` for every frame;
* :meth:`~TransportHandler.transport_error` when the connection fails (a
  refused connection, a refused handshake), before the close;
* :meth:`~TransportHandler.transport_close` exactly once, last, however the
  connection ends (also after a failed attempt, and after :meth:`Transport.close`).

The handler is never called from inside the factory call, ``send`` or
``close``: always from the reactor later, as a browser queues its events.
A long-poll transport would map the URL to ``http(s)://…/longpoll`` as
phoenix.js's ``LongPoll`` does, and set :attr:`Transport.skip_heartbeat`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Protocol, Sequence

__all__ = [
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "CloseEvent",
    "Transport",
    "TransportFactory",
    "TransportHandler",
]

#: ``Transport.ready_state`` values, as a browser WebSocket's ``readyState``.
CONNECTING, OPEN, CLOSING, CLOSED = 0, 1, 2, 3


class CloseEvent(NamedTuple):
    """
    How a connection ended (a browser's ``CloseEvent``).

    :ivar code: the close code the server sent, or 1006 when the connection
        ended without a closing handshake (1005 when the close frame had no code).
    :ivar reason: the close reason, or a description of the failure.
    :ivar was_clean: whether the closing handshake completed.
    """

    code: int
    reason: str
    was_clean: bool


class TransportHandler(Protocol):
    """What a transport reports to (the socket's connection object)."""

    def transport_open(self) -> None:
        """The connection is open."""

    def transport_message(self, data: bytes, binary: bool) -> None:
        """A frame arrived."""

    def transport_error(self, error: BaseException) -> None:
        """The connection failed (reported before :meth:`transport_close`)."""

    def transport_close(self, event: CloseEvent) -> None:
        """The connection ended; nothing more will be reported."""


class Transport(Protocol):
    """
    One connection attempt.

    :ivar ready_state: :data:`CONNECTING`, :data:`OPEN`, :data:`CLOSING` or :data:`CLOSED`.
    :ivar buffered_amount: bytes accepted by :meth:`send` but not yet written
        (0 when the transport writes everything in order, as Twisted does).
    :ivar skip_heartbeat: ``True`` for a transport that needs no heartbeat
        (phoenix.js's long poll).
    :ivar protocol: the subprotocol the server selected, or ``None``.
    """

    ready_state: int
    buffered_amount: int
    skip_heartbeat: bool
    protocol: Optional[str]

    def send(self, data: bytes, binary: bool) -> None:
        """Send one frame (only while :data:`OPEN`)."""

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close (with a closing handshake when open); a no-op once closing."""


#: ``factory(url, protocols, handler)`` → a :class:`Transport`.
TransportFactory = Callable[[str, Optional[Sequence[str]], TransportHandler], Transport]
