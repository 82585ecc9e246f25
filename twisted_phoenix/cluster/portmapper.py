# -*- test-case-name: tests.test_cluster_portmapper -*-
"""
A port mapper, like Erlang's ``epmd``: on each host, node names to the ports
their cluster links listen on, so ``Node.connect("server@127.0.0.1")`` works
with a bare name.

There is no separate daemon to start: the first node on a host listens on
the mapper port (127.0.0.1 only) and serves the others.  Every node keeps a
connection to the mapper open while it is registered; when the serving node
goes away, the others race to serve in its place and register again.

The protocol is one line per request: ``REGISTER name port`` (answered
``OK`` or ``TAKEN``; the name stays registered while that connection
lives), ``LOOKUP name`` (``PORT n`` or ``NONE``) and ``NAMES``
(``NAMES name=port ...``).
"""

from __future__ import annotations

import errno
import os
import random
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

__all__ = ["DEFAULT_PORT", "PortMapper", "MapperClient", "mapper_port"]

#: Erlang's epmd uses 4369; one above, so both can run on one machine.
DEFAULT_PORT = 4370

log = Logger()


def mapper_port(environ: Any = os.environ) -> int:
    """The mapper port: ``PHOENIX_EPMD_PORT``, else :data:`DEFAULT_PORT`."""
    return int(environ.get("PHOENIX_EPMD_PORT") or DEFAULT_PORT)


class _MapperServerProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(self, mapper: PortMapper) -> None:
        self.mapper = mapper
        self.registered: str | None = None

    def lineReceived(self, line: bytes) -> None:
        words = line.decode("utf-8", "replace").split()
        if len(words) == 3 and words[0] == "REGISTER" and words[2].isdigit():
            self.sendLine(self.mapper._register(words[1], int(words[2]), self).encode())
        elif len(words) == 2 and words[0] == "LOOKUP":
            port = self.mapper.ports.get(words[1])
            self.sendLine(b"NONE" if port is None else f"PORT {port}".encode())
        elif words == ["NAMES"]:
            names = " ".join(f"{n}={p}" for n, p in sorted(self.mapper.ports.items()))
            self.sendLine(f"NAMES {names}".strip().encode())
        else:
            log.warn("Port mapper: bad request {line!r}", line=line[:80])
            self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionMade(self) -> None:
        self.mapper.connections.add(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.mapper.connections.discard(self)
        if self.registered is not None:
            self.mapper._unregister(self.registered, self)
        if not self.mapper.connections:
            waiters, self.mapper._idle = self.mapper._idle, []
            for d in waiters:
                d.callback(None)


class PortMapper(Factory):
    """
    The mapper's server side: who is registered, on which port.
    """

    noisy = False

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self._owners: dict[str, Any] = {}
        self.connections: set[_MapperServerProtocol] = set()
        self._idle: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> _MapperServerProtocol:
        return _MapperServerProtocol(self)

    def disconnect_all(self) -> defer.Deferred[None]:
        """Drop every connection, so their nodes find the next mapper; fires once all are gone."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        for connection in list(self.connections):
            connection.transport.abortConnection()
        return d

    def _register(self, name: str, port: int, owner: Any) -> str:
        if name in self._owners and self._owners[name] is not owner:
            return "TAKEN"
        self.ports[name] = port
        self._owners[name] = owner
        owner.registered = name
        return "OK"

    def _unregister(self, name: str, owner: Any) -> None:
        if self._owners.get(name) is owner:
            del self._owners[name], self.ports[name]


class _MapperClientProtocol(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self) -> None:
        self.answers: list[defer.Deferred[str]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def request(self, line: str) -> defer.Deferred[str]:
        d: defer.Deferred[str] = defer.Deferred()
        self.answers.append(d)
        self.sendLine(line.encode())
        return d

    def lineReceived(self, line: bytes) -> None:
        if self.answers:
            self.answers.pop(0).callback(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Any = None) -> None:
        for d in self.answers:
            d.errback(error.ConnectionLost("port mapper went away"))
        self.answers = []
        self.lost.callback(None)


class MapperClient:
    """
    A node's view of its host's port mapper: registers the node (serving
    the mapper itself when nobody does) and looks names up.

    :param reactor: the reactor.
    :param port: the mapper port on 127.0.0.1.
    :param timeout: seconds to wait for the mapper's answer to a request.
    """

    def __init__(self, reactor: Any, port: int, timeout: float = 5.0) -> None:
        self.reactor = reactor
        self.port = port
        self.timeout = timeout
        self.serving: PortMapper | None = None
        self._listening: Any = None
        self._connection: _MapperClientProtocol | None = None
        self._registration: tuple[str, int] | None = None
        self._stopped = False
        self._sleeping: set[defer.Deferred[None]] = set()
        self._lookups: set[_MapperClientProtocol] = set()

    def _sleep(self, seconds: float) -> defer.Deferred[None]:
        """A pause that :meth:`stop` cancels (it then fails with CancelledError)."""
        d = _sleep(self.reactor, seconds)
        self._sleeping.add(d)
        return d.addBoth(lambda r: self._sleeping.discard(d) or r)

    def _connect(self) -> defer.Deferred[_MapperClientProtocol]:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port, timeout=5)
        factory = Factory.forProtocol(_MapperClientProtocol)
        factory.noisy = False
        return endpoint.connect(factory)

    @defer.inlineCallbacks
    def register(self, name: str, port: int) -> Any:
        """
        Register ``name`` → ``port`` for as long as this client runs, serving
        the mapper here if no other node does.  Fires when registered.

        :raises ValueError: when a live node already holds ``name``.
        """
        self._registration = (name, port)
        lost = 0
        while not self._stopped:
            try:
                connection = yield self._connect()
            except error.ConnectError:
                try:
                    yield self._serve()
                except error.CannotListenError:
                    # Another node won the race to serve; try it.
                    try:
                        yield self._sleep(random.uniform(0.01, 0.1))
                    except defer.CancelledError:
                        return None
                continue
            self._lookups.add(connection)
            try:
                answer = yield connection.request(f"REGISTER {name} {port}").addTimeout(self.timeout, self.reactor)
            except (error.ConnectionLost, error.ConnectionDone):
                # That mapper was on its way out (stopping, or we were
                # accepted by its backlog just before it closed); find the
                # next, unless whatever is there keeps hanging up on us.
                lost += 1
                if lost > 20:
                    raise RuntimeError(
                        f"something listens on the port mapper's port 127.0.0.1:{self.port} "
                        "but hangs up on us (choose another with PHOENIX_EPMD_PORT)"
                    ) from None
                try:
                    yield self._sleep(random.uniform(0.01, 0.1))
                except defer.CancelledError:
                    return None
                continue
            except defer.TimeoutError:
                connection.transport.abortConnection()
                raise RuntimeError(
                    f"something listens on the port mapper's port 127.0.0.1:{self.port} "
                    "but does not answer as one (choose another with PHOENIX_EPMD_PORT)"
                ) from None
            finally:
                self._lookups.discard(connection)
            if self._stopped:
                connection.transport.loseConnection()
                return None
            if answer != "OK":
                connection.transport.loseConnection()
                raise ValueError(f"the node name {name!r} is already registered on this host")
            self._connection = connection
            connection.lost.addCallback(self._mapper_lost)
            return None

    def _mapper_lost(self, _: Any) -> None:
        self._connection = None
        if self._stopped or self._registration is None:
            return
        log.info("The port mapper went away; registering again")
        d = self._sleep(random.uniform(0.0, 0.2))
        d.addCallback(lambda _: self.register(*self._registration))  # type: ignore[misc]

        def failed(failure: Any) -> None:
            if not failure.check(defer.CancelledError):
                log.failure("Could not register with the port mapper", failure)

        d.addErrback(failed)

    @defer.inlineCallbacks
    def _serve(self) -> Any:
        endpoint = TCP4ServerEndpoint(self.reactor, self.port, interface="127.0.0.1")
        self.serving = PortMapper()
        try:
            self._listening = yield endpoint.listen(self.serving)
        except error.CannotListenError:
            self.serving = None
            raise
        except OSError as e:
            self.serving = None
            if e.errno != errno.EADDRINUSE:
                raise
            # Twisted wraps a failed bind() in CannotListenError, not a
            # failed listen(): with SO_REUSEADDR two nodes racing to serve
            # can both bind the port, and the loser's listen() fails.
            raise error.CannotListenError("127.0.0.1", self.port, e) from None
        log.info("Serving the port mapper on 127.0.0.1:{port}", port=self.port)

    @defer.inlineCallbacks
    def lookup(self, name: str) -> Any:
        """The port ``name`` listens on, or ``None``; a Deferred."""
        try:
            connection = yield self._connect()
        except error.ConnectError:
            return None
        self._lookups.add(connection)
        try:
            answer = yield connection.request(f"LOOKUP {name}").addTimeout(self.timeout, self.reactor)
        except (error.ConnectionLost, error.ConnectionDone, defer.TimeoutError):
            return None  # the mapper went away meanwhile, or is not one: as good as not found
        finally:
            self._lookups.discard(connection)
            connection.transport.loseConnection()
        if answer.startswith("PORT "):
            return int(answer[5:])
        return None

    def stop(self) -> defer.Deferred[Any]:
        """Unregister and stop serving the mapper; fires when closed."""
        self._stopped = True
        for sleep in list(self._sleeping):
            sleep.cancel()
        waits = []
        connections = list(self._lookups)
        if self._connection is not None:
            connections.append(self._connection)
        for connection in connections:
            waits.append(_lost(connection))
            connection.transport.abortConnection()
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        if self.serving is not None:
            waits.append(self.serving.disconnect_all())
            self.serving = None
        return defer.gatherResults(waits)


def _lost(connection: _MapperClientProtocol) -> defer.Deferred[None]:
    """A Deferred that fires when ``connection`` is gone."""
    if connection.lost.called:
        return defer.succeed(None)
    d: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        d.callback(None)
        return result

    connection.lost.addBoth(fire)
    return d


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
