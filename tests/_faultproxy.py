"""
A fault-injecting TCP proxy for the cluster tests: it relays connections to
one target, and a test (or an attacker script) makes the network misbehave:

* :meth:`FaultProxy.pause` / :meth:`~FaultProxy.resume`: stop reading from
  both sides (bytes wait in the kernel's buffers, as on a stalled route);
* :meth:`~FaultProxy.drop`: swallow everything from both sides, the
  connections staying open (a black hole: only heartbeats notice);
* :meth:`~FaultProxy.delay`: deliver each chunk that many seconds late, in order;
* :meth:`~FaultProxy.cut`: reset every connection, and every new one at once;
* :meth:`~FaultProxy.restore`: back to relaying (for connections made from
  now on, and for open ones after a pause, drop or delay).

With ``capture=True`` it keeps every byte it relays, each direction
apart; with ``terminate_tls`` it is a relay that terminates TLS on both
sides (its own certificate towards the client, an unverified TLS client
towards the target), so what it keeps is the plaintext: what a man in the
middle would read.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

__all__ = ["FaultProxy"]


class _Outbound(Protocol):
    """The proxy's connection to the target."""

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def dataReceived(self, data: bytes) -> None:
        self.inbound.proxy._relay(self, self.inbound, data, "to_client")

    def connectionLost(self, reason: Any = None) -> None:
        self.inbound.outbound_lost()


class _Inbound(Protocol):
    """A client's connection to the proxy."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.outbound: _Outbound | None = None
        self.early: list[bytes] = []
        self.closed = False

    def connectionMade(self) -> None:
        proxy = self.proxy
        proxy.accepted += 1
        if proxy.mode == "cut":
            self.transport.abortConnection()
            return
        proxy.connections.add(self)
        self.transport.pauseProducing()
        outbound = _Outbound(self)
        d = proxy._target().connect(Factory.forProtocol(lambda: outbound))

        def connected(_: Any) -> None:
            if self.closed:
                outbound.transport.abortConnection()
                return
            self.outbound = outbound
            proxy._apply(self)
            early, self.early = self.early, []
            for data in early:
                proxy._relay(self, outbound, data, "to_server")

        d.addCallbacks(connected, lambda f: self.transport.abortConnection())

    def dataReceived(self, data: bytes) -> None:
        if self.outbound is None:
            self.early.append(data)
            return
        self.proxy._relay(self, self.outbound, data, "to_server")

    def outbound_lost(self) -> None:
        if not self.closed:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        if self.outbound is not None and self.outbound.transport is not None:
            self.outbound.transport.loseConnection()
        if not self.proxy.connections:
            waiters, self.proxy._idle = self.proxy._idle, []
            for w in waiters:
                w.callback(None)


class FaultProxy:
    """
    Relays every connection made to it to ``target_host:target_port``.

    :param reactor: the reactor.
    :param target_port: the port relayed to, on ``target_host``.
    :param capture: keep every byte relayed (:attr:`captured`).
    :param terminate_tls: a relay that terminates TLS on both sides, with
        this certificate (a :class:`~twisted_phoenix.cluster.ClusterTLS`)
        towards its clients.

    :ivar mode: ``"forward"``, ``"paused"``, ``"drop"``, ``"delay"`` or ``"cut"``.
    :ivar captured: ``{"to_server": bytes, "to_client": bytes}`` with ``capture``.
    :ivar accepted: connections accepted so far (cut ones included).
    """

    def __init__(
        self, reactor: Any, target_port: int, target_host: str = "127.0.0.1", *, capture: bool = False,
        terminate_tls: Any = None,
    ) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.capture = capture
        self.terminate_tls = terminate_tls
        self.mode = "forward"
        self.delay_seconds = 0.0
        self.captured = {"to_server": bytearray(), "to_client": bytearray()}
        self.relayed = {"to_server": 0, "to_client": 0}
        self.accepted = 0
        self.connections: set[_Inbound] = set()
        self._listening: Any = None
        self._idle: list[defer.Deferred[None]] = []
        self._queues: dict[Any, list[tuple[float, bytes]]] = {}
        self._timers: dict[Any, Any] = {}

    @property
    def port(self) -> int:
        """The port the proxy listens on (127.0.0.1)."""
        return self._listening.getHost().port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> defer.Deferred[FaultProxy]:
        """Listen on 127.0.0.1 (port 0: a free one); fires with the proxy."""
        factory = Factory.forProtocol(lambda: _Inbound(self))
        factory.noisy = False
        if self.terminate_tls is not None:
            endpoint: Any = SSL4ServerEndpoint(self.reactor, port, self.terminate_tls.server_options(),
                                               interface="127.0.0.1")
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1")
        d = endpoint.listen(factory)

        def listening(port: Any) -> FaultProxy:
            self._listening = port
            return self

        return d.addCallback(listening)

    def _target(self) -> Any:
        if self.terminate_tls is not None:
            options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
            return SSL4ClientEndpoint(self.reactor, self.target_host, self.target_port, options, timeout=5)
        return TCP4ClientEndpoint(self.reactor, self.target_host, self.target_port, timeout=5)

    # -- faults ---------------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading from both sides of every connection (new ones too)."""
        self.mode = "paused"
        for inbound in list(self.connections):
            self._apply(inbound)

    def resume(self) -> None:
        """After :meth:`pause`: read again."""
        self.restore()

    def drop(self) -> None:
        """Swallow every byte from now on, both ways; connections stay open."""
        self._set("drop")

    def delay(self, seconds: float) -> None:
        """Deliver every chunk ``seconds`` late (in order) from now on."""
        self.delay_seconds = seconds
        self._set("delay")

    def cut(self) -> None:
        """Reset every connection, and each new one at once, until :meth:`restore`."""
        self.mode = "cut"
        for inbound in list(self.connections):
            inbound.transport.abortConnection()
            if inbound.outbound is not None and inbound.outbound.transport is not None:
                inbound.outbound.transport.abortConnection()

    def restore(self) -> None:
        """Relay normally again."""
        self._set("forward")

    def _set(self, mode: str) -> None:
        self.mode = mode
        for inbound in list(self.connections):
            self._apply(inbound)

    def _apply(self, inbound: _Inbound) -> None:
        """Make a connection's reading match the mode (paused or not)."""
        transports = [inbound.transport]
        if inbound.outbound is not None:
            transports.append(inbound.outbound.transport)
        for transport in transports:
            if transport is None:
                continue
            if self.mode == "paused":
                transport.pauseProducing()
            else:
                transport.resumeProducing()

    def _relay(self, source: Any, destination: Any, data: bytes, direction: str) -> None:
        if self.capture:
            self.captured[direction] += data
        if self.mode == "drop":
            return
        self.relayed[direction] += len(data)
        transport = destination.transport
        now = self.reactor.seconds()
        queue = self._queues.get(transport)
        if self.mode == "delay" or queue:
            # Delayed, or after a delay while delayed chunks are still on
            # their way: in order, never ahead of those.
            due = now + (self.delay_seconds if self.mode == "delay" else 0.0)
            if queue is None:
                queue = self._queues[transport] = []
            if queue:
                due = max(due, queue[-1][0])
            queue.append((due, data))
            if transport not in self._timers:
                self._timers[transport] = self.reactor.callLater(queue[0][0] - now, self._drain, transport)
            return
        transport.write(data)

    def _drain(self, transport: Any) -> None:
        """Deliver the delayed chunks for ``transport`` that are due, in order; wait for the next."""
        del self._timers[transport]
        queue = self._queues.get(transport, [])
        now = self.reactor.seconds()
        while queue and queue[0][0] <= now:
            _, data = queue.pop(0)
            if not getattr(transport, "disconnecting", False) and not getattr(transport, "disconnected", False):
                transport.write(data)
        if queue:
            self._timers[transport] = self.reactor.callLater(queue[0][0] - now, self._drain, transport)
        else:
            self._queues.pop(transport, None)

    # -- ending -----------------------------------------------------------------------

    def stop(self) -> defer.Deferred[Any]:
        """Stop listening and close every connection; fires when all are gone."""
        waits = []
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        self._queues.clear()
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        if self.connections:
            d: defer.Deferred[None] = defer.Deferred()
            self._idle.append(d)
            waits.append(d.addTimeout(5, self.reactor))
            for inbound in list(self.connections):
                inbound.transport.abortConnection()
        return defer.gatherResults(waits)
