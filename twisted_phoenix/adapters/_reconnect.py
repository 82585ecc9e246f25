# -*- test-case-name: tests.test_redis_adapter -*-
"""
One client connection kept up: connect, and after a failed attempt or a lost
connection, connect again after a delay that doubles (from ``initial`` up
to ``maximum``) with each attempt that did not get as far as *ready*.

Twisted's ``ClientService`` resets its backoff as soon as TCP connects, so a
server that accepts and then refuses (a TLS handshake, an ``AUTH``) would be
retried in a tight loop; and it cannot lose a connection while its
``prepareConnection`` step is pending.  This is small enough to own.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

__all__ = ["Reconnector"]


class Reconnector(Factory):
    """
    Keeps one connection to ``endpoint`` up while started.

    The protocols it builds (by calling ``build()``) must call :meth:`lost`
    from their ``connectionLost``, and :meth:`ready` once usable.

    :param clock: provides ``callLater``.
    :param endpoint: a client endpoint.
    :param build: makes a protocol.
    :param failed: called with the ``Failure`` of each failed attempt.
    :param backoff: ``(initial, maximum)`` seconds between attempts.
    """

    noisy = False

    def __init__(
        self,
        clock: Any,
        endpoint: Any,
        build: Callable[[], Any],
        failed: Callable[[Failure], None],
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.clock = clock
        self.endpoint = endpoint
        self.build = build
        self.failed = failed
        self.initial, self.maximum = backoff
        #: Attempts since the last connection that got ready.
        self.failures = 0
        #: The current connection's protocol, if any.
        self.protocol: Any = None
        self.stopped = True
        self._attempt: defer.Deferred[Any] | None = None
        self._timer: Any = None
        self._closed: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.protocol = self.build()
        protocol.factory = self
        return protocol

    def start(self) -> None:
        """Connect, and keep connected until :meth:`stop`."""
        if not self.stopped:
            return
        self.stopped = False
        self._connect()

    def stop(self) -> defer.Deferred[None]:
        """Stop reconnecting and close the connection; fires once it is gone."""
        self.stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self.protocol is None or self.protocol.transport is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._closed.append(d)
        self.protocol.transport.loseConnection()
        return d

    def ready(self, protocol: Any) -> None:
        """``protocol``'s connection is usable: the next loss retries from the shortest delay."""
        self.failures = 0

    def lost(self, protocol: Any) -> None:
        """``protocol``'s connection is gone: retry (unless stopped)."""
        if protocol is not self.protocol:
            return
        self.protocol = None
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)
        if not self.stopped:
            self._retry()

    def _connect(self) -> None:
        self._timer = None
        attempt = self._attempt = self.endpoint.connect(self)

        def done(result: Any) -> Any:
            if self._attempt is attempt:
                self._attempt = None
            if isinstance(result, Failure):
                if not self.stopped and not result.check(defer.CancelledError):
                    self.failed(result)
                    self._retry()
            return None

        attempt.addBoth(done)

    def _retry(self) -> None:
        delay = min(self.initial * (2 ** min(self.failures, 30)), self.maximum)
        self.failures += 1
        self._timer = self.clock.callLater(delay, self._connect)
