# -*- test-case-name: tests.test_http -*-
"""
The first request of every HTTP connection: read with hard limits, then
handed to the WebSocket transport or to :mod:`twisted.web`.

:class:`PhoenixSite` is the factory a server listens with
(:meth:`Endpoint.site() <twisted_phoenix.endpoint.Endpoint.site>`).  Until a
client has authenticated it is a stranger, and what a stranger may cost is
bounded here, before any parsing library sees its bytes:

* the connection count: past ``max_connections`` a new connection is
  answered ``503`` at once (and the connected ones are unharmed);
* the request head: at most ``max_header_bytes``, complete within
  ``handshake_timeout`` seconds of the connection (a hard deadline, not reset
  by each byte it sends);
* no request body on a WebSocket path: refused from its headers, before a
  byte of it is read.

Then the request waits its turn: handshakes are the expensive part of a
connect storm, and they run at most :attr:`PhoenixSite.handshakes_per_turn`
per reactor turn, so the clients already connected keep being served while
thousands connect.  A WebSocket upgrade on a socket's ``<mount>/websocket``
goes straight to Autobahn; anything else (long-poll, pages, 404s) to the
:class:`twisted.web.server.Site` of :meth:`Endpoint.resource()
<twisted_phoenix.endpoint.Endpoint.resource>`.
"""

from __future__ import annotations

import resource
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

from twisted.internet import defer
from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.server import Site
from zope.interface import implementer

from .._log import limited_log

if TYPE_CHECKING:
    from ..endpoint import Endpoint
    from .websocket import PhoenixServerFactory

__all__ = ["HeadError", "PhoenixSite", "RequestHead", "default_max_connections", "parse_head"]

#: File descriptors kept free for everything that is not a client: the
#: listening sockets, cluster links, log files, the port mapper.
FD_RESERVE = 256


def default_max_connections(soft_limit: int | None = None) -> int:
    """
    The default ``max_connections``: the process's open-file limit, less a
    reserve for the rest of the server (:data:`FD_RESERVE`, or a tenth of a
    small limit).
    """
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = 1 << 20
    return max(1, soft_limit - min(FD_RESERVE, soft_limit // 10))


class HeadError(ValueError):
    """A request head that is not HTTP/1.x."""


class RequestHead(NamedTuple):
    """The parts of a request head the routing needs."""

    method: bytes
    path: str
    version: bytes
    headers: dict[bytes, bytes]


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def parse_head(head: bytes) -> RequestHead:
    """
    Parse an HTTP/1.x request head (request line and header lines, without
    the blank line that ends it).  Header names are lower-cased; repeated
    headers are joined with ``", "``.

    :raises HeadError: when it is not one.
    """
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HeadError("bad request line")
    method, target, version = parts
    if not method or not _TOKEN.issuperset(method) or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise HeadError("bad request line")
    if not target.startswith(b"/"):
        raise HeadError("bad request target")
    try:
        path = unquote(target.split(b"?", 1)[0].decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        raise HeadError("bad request target") from None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not _TOKEN.issuperset(name):
            raise HeadError("bad header line")
        name = name.lower()
        value = value.strip(b" \t")
        headers[name] = headers[name] + b", " + value if name in headers else value
    return RequestHead(method, path, version, headers)


def _response(status: int, reason: str, body: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + body


class _Turnstile:
    """
    Lets at most ``per_turn`` requests through per reactor turn, in arrival
    order.  A request that finds nobody waiting and the turn's share not used
    up goes through at once (the usual case: no Deferred, no timer, no
    pause); the others wait for the next turns.
    """

    def __init__(self, reactor: IReactorTime, per_turn: int) -> None:
        self.reactor = reactor
        self.per_turn = per_turn
        self.waiting: deque[_RequestReader] = deque()
        #: Requests let through in this turn.
        self._admitted = 0
        self._scheduled = False

    def enter(self, reader: _RequestReader) -> None:
        """``reader`` has its request: let it through now or queue it."""
        self._next_turn_later()
        if not self.waiting and self._admitted < self.per_turn:
            self._admitted += 1
            self._admit(reader)
        else:
            self.waiting.append(reader)

    def _next_turn_later(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.reactor.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._scheduled = False
        self._admitted = 0
        waiting = self.waiting
        while waiting and self._admitted < self.per_turn:
            reader = waiting.popleft()
            if not reader.gone:
                self._admitted += 1
                self._admit(reader)
        if self._admitted:
            self._next_turn_later()  # to count the next turn's from zero

    @staticmethod
    def _admit(reader: _RequestReader) -> None:
        try:
            reader.admit()
        except Exception:
            Logger().failure("Handling a request failed")
            reader.transport.abortConnection()


class _RequestReader(Protocol):
    """
    Reads one request head under the site's limits, then becomes the
    protocol it routes to.
    """

    log = Logger()
    gone = False
    _inner: Protocol | None = None

    def __init__(self, site: PhoenixSite, addr: Any) -> None:
        self.site = site
        self.addr = addr
        self._buffer = b""
        self._deadline: Any = None
        self._route: Any = None
        self._head: RequestHead | None = None
        self._paused = False

    def connectionMade(self) -> None:
        self._deadline = self.site.reactor.callLater(self.site.handshake_timeout, self._expired)

    def dataReceived(self, data: bytes) -> None:
        buffered = self._buffer
        self._buffer = buffered = buffered + data
        if self._route is not None:
            # Waiting at the turnstile.  A WebSocket client sends nothing
            # more before its answer; whoever sends more than a head's worth
            # is not read until its turn.
            if len(buffered) > self.site.max_header_bytes and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            return
        end = buffered.find(b"\r\n\r\n", max(0, len(buffered) - len(data) - 3))
        if end < 0:
            if len(buffered) > self.site.max_header_bytes:
                self._refuse(431, "Request Header Fields Too Large", "its request head is too large")
            return
        if end > self.site.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", "its request head is too large")
            return
        self._stop_deadline()
        try:
            head = parse_head(buffered[:end])
        except HeadError as e:
            self._refuse(400, "Bad Request", str(e))
            return
        self._head = head
        self._route = self.site.route(head)
        if isinstance(self._route, tuple):  # refused by the routing
            status, reason, body, why = self._route
            self._refuse(status, reason, why, body)
            return
        self.site.turnstile.enter(self)

    def admit(self) -> None:
        """Our turn: become the protocol the request goes to."""
        inner = self._route.buildProtocol(self.addr)
        self._inner = inner
        if hasattr(inner, "request_head"):
            inner.request_head = self._head  # the WebSocket transport need not parse it again
        # From now on the transport's reads go straight to the inner protocol.
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        inner.makeConnection(self.transport)
        if self._paused:
            self.transport.resumeProducing()
        data, self._buffer = self._buffer, b""
        inner.dataReceived(data)

    def _expired(self) -> None:
        self._deadline = None
        self.site.log_refusal(408, "did not send its request within {timeout} s", timeout=self.site.handshake_timeout)
        self.transport.write(_response(408, "Request Timeout"))
        self.transport.loseConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: int, reason: str, why: str, body: bytes = b"") -> None:
        self._stop_deadline()
        self._route = False
        self.site.log_refusal(status, "refused with {status}: {why}", why=why)
        self.transport.write(_response(status, reason, body))
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.gone = True
        self._stop_deadline()
        self.site._lost(self)
        if self._inner is not None:
            self._inner.connectionLost(reason)


class _Unavailable(Protocol):
    """Answers 503 at once: the server is at ``max_connections``."""

    def connectionMade(self) -> None:
        self.transport.write(_response(503, "Service Unavailable"))
        self.transport.loseConnection()


@implementer(IProtocolNegotiationFactory)
class PhoenixSite(Factory):
    """
    The factory an :class:`~twisted_phoenix.endpoint.Endpoint` is served
    with: every connection's first request is read here (see the module's
    docstring), then handed to Autobahn or to ``web``.

    Served over TLS (``ssl:``), it answers ALPN with ``http/1.1``: browsers
    offer ``h2`` and ``http/1.1``, and a TLS server that chooses neither
    (Twisted's, for a factory that names no protocol) fails the handshake.

    :param endpoint: the endpoint; its limits apply.
    :param web: the :mod:`twisted.web` site for everything that is not a
        WebSocket upgrade on a socket's path.
    :param websockets: mount path → the WebSocket factory of its socket.
    """

    log = Logger()
    noisy = False

    def __init__(self, endpoint: Endpoint, web: Site, websockets: dict[str, PhoenixServerFactory]) -> None:
        self.endpoint = endpoint
        self.reactor = endpoint.reactor
        self.web = web
        self.handshake_timeout = endpoint.handshake_timeout
        self.max_header_bytes = endpoint.max_header_bytes
        self.max_connections = (
            endpoint.max_connections if endpoint.max_connections is not None else default_max_connections()
        )
        #: The open connections (a WebSocket, an HTTP connection, a request
        #: being read), as their first protocol.
        self.open: set[Protocol] = set()
        self._idle: list[defer.Deferred[None]] = []
        self.turnstile = _Turnstile(endpoint.reactor, endpoint.handshakes_per_turn)
        self._websockets = [
            ([s for s in mount.split("/") if s] + ["websocket"], factory) for mount, factory in websockets.items()
        ]

    def acceptableProtocols(self) -> list[bytes]:
        """The one ALPN protocol spoken: HTTP/1.1 (WebSocket upgrades included)."""
        return [b"http/1.1"]

    @property
    def handshakes_per_turn(self) -> int:
        """Requests handled per reactor turn (``Endpoint.handshakes_per_turn``)."""
        return self.turnstile.per_turn

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self.open)

    def buildProtocol(self, addr: Any) -> Protocol:
        if len(self.open) >= self.max_connections:
            self.log_refusal(503, "refused with 503: {n} connections open (max_connections)", n=len(self.open))
            return _Unavailable()
        reader = _RequestReader(self, addr)
        self.open.add(reader)
        return reader

    def _lost(self, reader: _RequestReader) -> None:
        self.open.discard(reader)
        if not self.open and self._idle:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def abort_all(self) -> None:
        """Drop every open connection at once."""
        for reader in list(self.open):
            reader.transport.abortConnection()

    def when_idle(self) -> defer.Deferred[None]:
        """A Deferred that fires once no connection is open."""
        if not self.open:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(lambda d: self._idle.remove(d))
        self._idle.append(d)
        return d

    def route(self, head: RequestHead) -> Any:
        """
        The factory ``head`` goes to, or ``(status, reason, body, why)`` for
        a refusal.
        """
        segments = [s for s in head.path.split("/") if s]
        for pattern, factory in self._websockets:
            if len(pattern) == len(segments) and all(
                p == s or (p[:1] == ":" and len(p) > 1) for p, s in zip(pattern, segments)
            ):
                return self._websocket_route(head, factory)
        return self.web

    def _websocket_route(self, head: RequestHead, factory: PhoenixServerFactory) -> Any:
        headers = head.headers
        if head.method != b"GET":
            # Phoenix answers any other method with 400 and an empty body.
            return (400, "Bad Request", b"", f"{head.method.decode()} on a WebSocket path")
        if headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            return (400, "Bad Request", b"", "a request body on a WebSocket path")
        if b"websocket" not in headers.get(b"upgrade", b"").lower():
            return (400, "Bad Request", b"'upgrade' header must contain 'websocket'", "not a WebSocket upgrade")
        return factory

    def log_refusal(self, status: int, text: str, **fields: Any) -> None:
        """Count a stranger refused with ``status``; log why (rate-limited: they may be thousands)."""
        self.endpoint.metrics.refuse(status)
        limited_log(self.log, self.reactor, self.endpoint).warn("A connection was " + text, status=status, **fields)
