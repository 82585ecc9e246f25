# -*- test-case-name: tests.test_cluster_broker -*-
"""
The Perspective Broker connections of cluster links, and how little a peer
that has not proved the cookie can make a node do.

Until its peer is authenticated a :class:`LinkBroker` decodes Banana under
tight limits, so that no unauthenticated input makes the process hold more
than a fraction of a megabyte for it: on the link port, until the peer has
logged in, :data:`PRE_AUTH_BYTES` bytes in all, :data:`PRE_AUTH_ITEMS`
items, lists nested :data:`PRE_AUTH_DEPTH` deep; on a link we open, until
the accepting node's hello proof checks out, :data:`PEER_HELLO_BYTES` and
:data:`PEER_HELLO_ITEMS` (its hello answer names its peers).  Past them, the
connection is dropped.  Authenticated peers get Banana's own limits (640 KiB
strings), as before.

The accepting side (:class:`LinkServerFactory`) also gives each connection
``login_timeout`` seconds to log in, and takes at most ``max_pending``
connections that have not logged in yet at once: past that, new ones are
closed at once.  Refusals are logged, at most once per
:data:`LOG_INTERVAL` seconds for each kind, with a count of the others.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.spread import banana, pb

__all__ = [
    "LOGIN_TIMEOUT",
    "LOG_INTERVAL",
    "MAX_PENDING",
    "PEER_HELLO_BYTES",
    "PEER_HELLO_ITEMS",
    "PRE_AUTH_BYTES",
    "PRE_AUTH_DEPTH",
    "PRE_AUTH_ITEMS",
    "LinkBroker",
    "LinkClientFactory",
    "LinkServerFactory",
    "Refused",
    "Throttled",
]

log = Logger()

#: Seconds a connection to the link port has to log in.
LOGIN_TIMEOUT = 10.0

#: Connections to the link port that have not logged in yet, at once.
MAX_PENDING = 100

#: Bytes a peer connecting to the link port may send before it has logged
#: in (a login takes about 110).
PRE_AUTH_BYTES = 16 * 1024

#: Banana items (each list, string and number) it may send before (a login: about 40).
PRE_AUTH_ITEMS = 1024

#: How deep any peer may nest Banana lists before it is authenticated (a
#: login nests 7 deep, a hello answer 7).
PRE_AUTH_DEPTH = 16

#: Bytes a node we connect to may send before its hello proof checks out:
#: its hello answer names every node it is linked to (about 130 bytes each).
PEER_HELLO_BYTES = 1024 * 1024

#: Banana items a node we connect to may send before its proof (about 10 for each node it names).
PEER_HELLO_ITEMS = 64 * 1024

#: Seconds between two log lines about refused connections of one kind.
LOG_INTERVAL = 10.0

#: The first byte of a TLS record carrying a handshake (a ClientHello).
_TLS_HANDSHAKE = 0x16


class Throttled:
    """
    Log lines of a kind at most once per ``interval`` seconds; the next one
    logged says how many were left out.
    """

    def __init__(self, clock: Any, interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self._kinds: dict[str, list[float]] = {}

    def emit(self, level: LogLevel, kind: str, format: str, **fields: Any) -> bool:
        """Log ``format`` unless a line of ``kind`` was logged less than ``interval`` ago; whether it was."""
        now = self.clock.seconds()
        state = self._kinds.get(kind)
        if state is not None and now < state[0]:
            state[1] += 1
            return False
        left_out = int(state[1]) if state is not None else 0
        self._kinds[kind] = [now + self.interval, 0]
        if left_out:
            format += " ({left_out} more like it in the last {interval:.0f} s not logged)"
        log.emit(level, format, left_out=left_out, interval=self.interval, **fields)
        return True


class _BoundedStack(list):  # type: ignore[type-arg]
    """Banana's stack of open lists, refusing to nest deeper than the broker allows before login."""

    __slots__ = ("broker",)

    def append(self, item: Any) -> None:
        broker = self.broker
        if not broker.authenticated:
            if len(self) >= broker.max_depth:
                raise banana.BananaError(f"lists nested more than {broker.max_depth} deep before login")
            broker._count_item()
        list.append(self, item)


class LinkBroker(pb.Broker):
    """
    A PB broker for cluster links: Banana limits until :meth:`authenticate`;
    remembers why its connection was lost (:attr:`lost_reason`) and why it
    dropped it (:attr:`refused`).

    :ivar max_bytes: bytes the peer may send before it is authenticated.
    :ivar max_items: Banana items it may send before.
    :ivar max_depth: how deep it may nest lists before.
    """

    lost_reason: Any = None
    authenticated = False
    #: The TLS channel binding of this connection (set when logging in).
    binding = b""
    max_bytes = PRE_AUTH_BYTES
    max_items = PRE_AUTH_ITEMS
    max_depth = PRE_AUTH_DEPTH
    #: Called with ``(broker, reason)`` when this broker drops its connection before login.
    on_refused: Callable[[LinkBroker, str], None] | None = None
    #: The peer's address, for log lines.
    peer_address: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stack = _BoundedStack()
        stack.broker = self
        self.listStack = stack
        self.received_bytes = 0
        self.received_items = 0
        self.refused: str | None = None
        self._authenticated_callbacks: list[Callable[[], None]] = []

    def authenticate(self) -> None:
        """The peer proved the cookie: Banana's own limits from now on."""
        if self.authenticated:
            return
        self.authenticated = True
        callbacks, self._authenticated_callbacks = self._authenticated_callbacks, []
        for callback in callbacks:
            callback()

    def notify_authenticated(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when :meth:`authenticate` is."""
        self._authenticated_callbacks.append(callback)

    def refuse(self, reason: str) -> None:
        """Drop the connection, for ``reason`` (told to :attr:`on_refused` once)."""
        if self.refused is None:
            self.refused = reason
            if self.on_refused is not None:
                self.on_refused(self, reason)
        if self.transport is not None:
            self.transport.abortConnection()

    def _count_item(self) -> None:
        self.received_items += 1
        if self.received_items > self.max_items:
            raise banana.BananaError(f"more than {self.max_items} items before login")

    def gotItem(self, item: Any) -> None:
        if not self.authenticated:
            self._count_item()
        super().gotItem(item)

    def dataReceived(self, data: bytes) -> None:
        if self.refused is not None:
            return
        if not self.authenticated:
            if not self.received_bytes and data[:1] == bytes((_TLS_HANDSHAKE,)) and not self.isClient \
                    and not ISSLTransport.providedBy(self.transport):
                self.received_bytes += len(data)
                self.refuse("it speaks TLS to this node's plaintext link port (--dist-plaintext): "
                            "every node of a cluster must use TLS, or every one plaintext")
                return
            self.received_bytes += len(data)
            if self.received_bytes > self.max_bytes:
                self.refuse(f"more than {self.max_bytes} bytes before login")
                return
            try:
                super().dataReceived(data)
            except Exception as e:
                # Banana's own errors (BananaError, an unknown type byte, a
                # vocabulary number it does not know) and ours.
                self.refuse(f"not Perspective Broker before login ({type(e).__name__}: {str(e)[:200]})")
            return
        try:
            super().dataReceived(data)
        except Exception:
            # From a peer that proved the cookie: what Twisted would do
            # (log it, drop the connection), in one place.
            log.failure("Dropping the link from {address}: it sent what Banana cannot decode",
                        address=self.peer_address)
            self.refused = "undecodable data"
            if self.transport is not None:
                self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)


class Refused(Protocol):
    """Closes its connection as soon as it is made."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class LinkServerFactory(pb.PBServerFactory):
    """
    The link port: PB with a deadline to log in, and a cap on the
    connections that have not yet.

    :param portal: the cookie-checking portal.
    :param reactor: for the deadlines.
    :param login_timeout: seconds each connection has to log in.
    :param max_pending: connections not logged in yet, at once.
    :param track: called with each broker made (the node keeps them all, to close them).
    """

    noisy = False
    protocol = LinkBroker

    def __init__(
        self,
        portal: Any,
        reactor: Any,
        *,
        login_timeout: float = LOGIN_TIMEOUT,
        max_pending: int = MAX_PENDING,
        track: Callable[[LinkBroker], None] | None = None,
        limits: dict[str, int] | None = None,
    ) -> None:
        super().__init__(portal)
        self.reactor = reactor
        self.login_timeout = login_timeout
        self.max_pending = max_pending
        self.pending: set[LinkBroker] = set()
        self.refused = 0
        self.throttle = Throttled(reactor)
        self._track = track
        self._limits = limits or {}

    def buildProtocol(self, addr: Any) -> Any:
        address = _address(addr)
        if len(self.pending) >= self.max_pending:
            self.refused += 1
            self.throttle.emit(
                LogLevel.warn, "pending",
                "Refused a cluster connection from {address}: {n} connections are already waiting "
                "to log in (--dist-max-pending)", address=address, n=len(self.pending),
            )
            return Refused()
        broker = super().buildProtocol(addr)
        for name, value in self._limits.items():
            setattr(broker, name, value)
        broker.peer_address = address
        broker.on_refused = self._refused
        self.pending.add(broker)
        deadline = self.reactor.callLater(
            self.login_timeout, broker.refuse, f"no login within {self.login_timeout:g} s"
        )

        def done() -> None:
            self.pending.discard(broker)
            if deadline.active():
                deadline.cancel()

        broker.notify_authenticated(done)
        broker.notifyOnDisconnect(done)
        if self._track is not None:
            self._track(broker)
        return broker

    def _refused(self, broker: LinkBroker, reason: str) -> None:
        self.refused += 1
        level = LogLevel.error if "plaintext" in reason else LogLevel.warn
        kind = reason.split(" (")[0][:40]
        self.throttle.emit(level, kind, "Dropped a cluster connection from {address} before login: {reason}",
                           address=broker.peer_address, reason=reason)


class LinkClientFactory(pb.PBClientFactory):
    """Our side of a link we open: its broker keeps Banana limits until the peer's hello proof checks out."""

    noisy = False
    protocol = LinkBroker

    def __init__(self, track: Callable[[LinkBroker], None] | None = None,
                 limits: dict[str, int] | None = None) -> None:
        super().__init__()
        self._track = track
        self._limits = limits or {}

    def buildProtocol(self, addr: Any) -> Any:
        broker = super().buildProtocol(addr)
        for name, value in self._limits.items():
            setattr(broker, name, value)
        broker.peer_address = _address(addr)
        broker.on_refused = _refused_by_us
        if self._track is not None:
            self._track(broker)

        # Endpoints never call clientConnectionLost, which is what fails a
        # pending login when the connection goes before PB is ready (a
        # failed TLS handshake): do it here, or login waits for its timeout.
        def lost() -> None:
            reason = getattr(broker.lost_reason, "value", None)
            self._failAll(ConnectionLost(f"lost before login: {reason!r:.300}"))

        broker.notifyOnDisconnect(lost)
        return broker


def _refused_by_us(broker: LinkBroker, reason: str) -> None:
    log.warn("Dropped the connection to {address} before its proof of the cookie: {reason}",
             address=broker.peer_address, reason=reason)


def _address(addr: Any) -> str:
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    return f"{host}:{port}" if host is not None else str(addr)
