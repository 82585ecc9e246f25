# -*- test-case-name: tests.test_redis_adapter -*-
"""
The two Redis connections of :class:`~twisted_phoenix.adapters.redis.RedisAdapter`,
on txredisapi's protocol (its RESP parser, with hiredis when installed).

Only the parser is txredisapi's.  Its connection handling is not used: it
reaches for the global reactor, and its subscriber protocol hands subscribe
confirmations to whichever command waits for a reply.  Here the adapter owns
the connections (a :class:`~twisted_phoenix.adapters._reconnect.Reconnector`
each, on its own reactor) and each protocol hands every reply to it:

* :class:`CommandProtocol` (``PUBLISH``, ``AUTH``, ``PING``): replies come
  back in order, each to the callback given with its command.
* :class:`SubscriberProtocol`: ``message`` pushes, and the
  ``subscribe``/``unsubscribe`` confirmations, in the order Redis sends
  them, which is what lets the adapter know from which message on a
  subscription is live.

Both record when they last received anything, for the adapter's keepalive.

Importing txredisapi imports ``twisted.internet.reactor``, which installs the
default reactor if none is installed yet: a program that wants another
reactor installs it before importing :mod:`twisted_phoenix.adapters.redis`
(``twistd`` does; ``twistd phoenix`` imports it only in ``makeService``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import txredisapi

__all__ = ["CommandProtocol", "SubscriberProtocol", "encode_command"]


def encode_command(args: tuple[bytes, ...]) -> bytes:
    """A command in RESP: an array of bulk strings (txredisapi's encoder, minus its per-byte work)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(b"\r\n")
    return b"".join(parts)


class _Base(txredisapi.RedisProtocol):  # type: ignore[misc]
    """txredisapi's parser, replies as bytes (no decoding, no number guessing)."""

    #: The adapter: told of connection, replies, loss.
    adapter: Any = None
    #: The :class:`~twisted_phoenix.adapters._reconnect.Reconnector`, if any.
    factory: Any = None
    #: ``reactor.seconds()`` when something was last received.
    last_received = 0.0

    def __init__(self, clock: Any) -> None:
        super().__init__(charset=None, convertNumbers=False)
        self.clock = clock
        #: Whether the connection is usable (authenticated).
        self.ready = False
        # txredisapi's pure-Python parser pauses through callLater; make it
        # the adapter's reactor rather than the global one.
        self.callLater = clock.callLater

    def connectionMade(self) -> None:
        self.last_received = self.clock.seconds()
        super().connectionMade()  # no password, no db: marks it connected at once
        self.adapter._connection_made(self)

    def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
        self.last_received = self.clock.seconds()
        return super().dataReceived(data, unpause)

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        try:
            self.adapter._connection_lost(self, reason)
        finally:
            if self.factory is not None:
                self.factory.lost(self)  # the Reconnector: retry

    def tryConvertData(self, data: Any) -> Any:
        # Replies stay as Redis sent them: bytes, ints, lists (txredisapi
        # would walk every reply to decode nothing, as configured).
        return data

    def send(self, *args: bytes) -> None:
        """Write one command (its arguments are bytes)."""
        self.transport.write(encode_command(args))


class CommandProtocol(_Base):
    """The connection commands go on; each reply goes to its command's callback."""

    def __init__(self, clock: Any) -> None:
        super().__init__(clock)
        self._callbacks: deque[Callable[[Any], Any] | None] = deque()

    def command(self, callback: Callable[[Any], Any] | None, *args: Any) -> None:
        """Send a command; ``callback`` gets its reply (a ``ResponseError`` for an error)."""
        self.transport.write(encode_command(args))
        self._callbacks.append(callback)

    @property
    def waiting(self) -> int:
        """Commands sent and not answered yet."""
        return len(self._callbacks)

    def replyReceived(self, reply: Any) -> None:
        callback = self._callbacks.popleft() if self._callbacks else None
        if callback is not None:
            try:
                callback(reply)
            except Exception:
                self.adapter.log.failure("A Redis reply callback failed")


class SubscriberProtocol(_Base):
    """The subscription connection: every push goes to the adapter."""

    #: Whether the first command (``PING`` or ``AUTH``) is still to be
    #: answered (its reply is not a push).
    handshaking = False

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) >= 3:
            kind = reply[0]
            if kind == b"message":
                self.adapter._message(reply[1], reply[2])
                return
            if kind == b"subscribe":
                self.adapter._subscribed(reply[1])
                return
            if kind == b"unsubscribe":
                self.adapter._unsubscribed(reply[1])
                return
        if isinstance(reply, list) and reply and reply[0] == b"pong":
            return
        self.adapter._subscriber_reply(self, reply)

