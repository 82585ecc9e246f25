"""
Tests for :mod:`twisted_phoenix.cluster.portmapper`, over real loopback.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix.cluster.portmapper import (
    DEFAULT_PORT,
    MapperClient,
    PortMapper,
    _MapperClientProtocol,
    mapper_port,
)

from ._cluster import free_port, wait_until, watch_logs

TIMEOUT = 5.0


class MapperPortTests(SynchronousTestCase):
    """Where the port mapper listens."""

    def test_default(self) -> None:
        """Without PHOENIX_EPMD_PORT it is 4370, one above Erlang's epmd."""
        self.assertEqual(DEFAULT_PORT, 4370)
        self.assertEqual(mapper_port({}), 4370)
        self.assertEqual(mapper_port({"PHOENIX_EPMD_PORT": ""}), 4370)

    def test_environment(self) -> None:
        """PHOENIX_EPMD_PORT gives another port."""
        self.assertEqual(mapper_port({"PHOENIX_EPMD_PORT": "5123"}), 5123)


class MapperProtocolTests(TestCase):
    """The mapper's line protocol: REGISTER, LOOKUP, NAMES."""

    def setUp(self) -> None:
        self.mapper = PortMapper()
        self.listening = reactor.listenTCP(0, self.mapper, interface="127.0.0.1")
        self.addCleanup(self._stop_mapper)
        self.port = self.listening.getHost().port

    @defer.inlineCallbacks
    def _stop_mapper(self) -> Any:
        yield self.listening.stopListening()
        yield self.mapper.disconnect_all()

    @defer.inlineCallbacks
    def client(self) -> Any:
        """A raw connection to the mapper, closed in cleanup."""
        factory = Factory.forProtocol(_MapperClientProtocol)
        factory.noisy = False
        protocol = yield TCP4ClientEndpoint(reactor, "127.0.0.1", self.port).connect(factory)

        def close() -> defer.Deferred[None]:
            if protocol.lost.called:
                return defer.succeed(None)
            d: defer.Deferred[None] = defer.Deferred()
            protocol.lost.addCallback(lambda r: d.callback(None) or r)
            protocol.transport.abortConnection()
            return d.addTimeout(TIMEOUT, reactor)

        self.addCleanup(close)
        protocol.close = close
        return protocol

    def ask(self, client: Any, line: str) -> defer.Deferred[str]:
        return client.request(line).addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def test_register_lookup_names(self) -> None:
        """A registered name is found by LOOKUP and listed by NAMES, sorted; others are NONE."""
        a = yield self.client()
        b = yield self.client()
        self.assertEqual((yield self.ask(a, "REGISTER zeta 9001")), "OK")
        self.assertEqual((yield self.ask(b, "REGISTER alpha 9002")), "OK")
        self.assertEqual((yield self.ask(a, "LOOKUP alpha")), "PORT 9002")
        self.assertEqual((yield self.ask(b, "LOOKUP zeta")), "PORT 9001")
        self.assertEqual((yield self.ask(a, "LOOKUP nobody")), "NONE")
        self.assertEqual((yield self.ask(a, "NAMES")), "NAMES alpha=9002 zeta=9001")
        self.assertEqual(self.mapper.ports, {"alpha": 9002, "zeta": 9001})

    @defer.inlineCallbacks
    def test_names_empty(self) -> None:
        """NAMES with nobody registered is just NAMES."""
        a = yield self.client()
        self.assertEqual((yield self.ask(a, "NAMES")), "NAMES")

    @defer.inlineCallbacks
    def test_taken(self) -> None:
        """A name held by another connection is TAKEN; its holder may register it again."""
        a = yield self.client()
        b = yield self.client()
        self.assertEqual((yield self.ask(a, "REGISTER server 9001")), "OK")
        self.assertEqual((yield self.ask(b, "REGISTER server 9999")), "TAKEN")
        self.assertEqual((yield self.ask(b, "LOOKUP server")), "PORT 9001")
        self.assertEqual((yield self.ask(a, "REGISTER server 9003")), "OK")
        self.assertEqual((yield self.ask(b, "LOOKUP server")), "PORT 9003")

    @defer.inlineCallbacks
    def test_unregistered_when_connection_closes(self) -> None:
        """A name is freed when the connection that registered it closes, and can be taken again."""
        a = yield self.client()
        b = yield self.client()
        self.assertEqual((yield self.ask(a, "REGISTER server 9001")), "OK")
        self.assertEqual((yield self.ask(b, "REGISTER other 9002")), "OK")
        yield a.close()
        # The mapper notices the close on its own schedule: poll (bounded).
        yield wait_until(reactor, lambda: "server" not in self.mapper.ports, TIMEOUT, what="server unregistered")
        self.assertEqual((yield self.ask(b, "LOOKUP server")), "NONE")
        self.assertEqual((yield self.ask(b, "NAMES")), "NAMES other=9002")
        self.assertEqual((yield self.ask(b, "REGISTER server 9005")), "OK")
        self.assertEqual((yield self.ask(b, "LOOKUP server")), "PORT 9005")

    @defer.inlineCallbacks
    def test_bad_request(self) -> None:
        """A request the mapper does not know closes the connection, with a warning."""
        logs = watch_logs(self, reactor)
        for line in ("HELLO", "REGISTER name notaport", "REGISTER name", "LOOKUP", "LOOKUP a b"):
            client = yield self.client()
            with self.assertRaises(error.ConnectionLost, msg=line):
                yield self.ask(client, line)
        self.assertEqual(len(logs.find("Port mapper: bad request", LogLevel.warn)), 5)
        self.assertEqual(self.mapper.ports, {})

    @defer.inlineCallbacks
    def test_line_too_long(self) -> None:
        """A request line over 1024 bytes closes the connection."""
        client = yield self.client()
        client.transport.write(b"LOOKUP " + b"x" * 2000)
        d: defer.Deferred[None] = defer.Deferred()
        client.lost.addCallback(lambda r: d.callback(None) or r)
        yield d.addTimeout(TIMEOUT, reactor)


class MapperClientTests(TestCase):
    """Nodes' side: serve the mapper when nobody does, register, look up, take over."""

    def setUp(self) -> None:
        self.port = free_port()

    @defer.inlineCallbacks
    def registered(self, name: str, port: int) -> Any:
        client = MapperClient(reactor, self.port)
        self.addCleanup(client.stop)
        yield client.register(name, port).addTimeout(TIMEOUT, reactor)
        return client

    @defer.inlineCallbacks
    def test_first_serves(self) -> None:
        """The first node on a host serves the mapper; the next ones register with it."""
        a = yield self.registered("a", 9001)
        b = yield self.registered("b", 9002)
        self.assertIsNotNone(a.serving)
        self.assertIsNone(b.serving)
        self.assertEqual(a.serving.ports, {"a": 9001, "b": 9002})

    @defer.inlineCallbacks
    def test_lookup(self) -> None:
        """Any client finds any registered name; unknown names are None."""
        a = yield self.registered("a", 9001)
        b = yield self.registered("b", 9002)
        self.assertEqual((yield a.lookup("b")), 9002)
        self.assertEqual((yield b.lookup("a")), 9001)
        self.assertIsNone((yield b.lookup("c")))
        stranger = MapperClient(reactor, self.port)
        self.assertEqual((yield stranger.lookup("a")), 9001)

    @defer.inlineCallbacks
    def test_lookup_without_mapper(self) -> None:
        """With no mapper running, a lookup finds nothing (it does not fail)."""
        client = MapperClient(reactor, self.port)
        self.assertIsNone((yield client.lookup("a").addTimeout(TIMEOUT, reactor)))

    @defer.inlineCallbacks
    def test_name_taken(self) -> None:
        """Registering a name a live node holds is a ValueError."""
        yield self.registered("a", 9001)
        second = MapperClient(reactor, self.port)
        self.addCleanup(second.stop)
        with self.assertRaises(ValueError):
            yield second.register("a", 9009).addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def test_stop_unregisters(self) -> None:
        """A client that stops is no longer found, and its name is free again."""
        a = yield self.registered("a", 9001)
        b = yield self.registered("b", 9002)
        yield b.stop()
        # The serving side sees the close a moment later: poll (bounded).
        yield wait_until(reactor, lambda: "b" not in a.serving.ports, TIMEOUT, what="b unregistered")
        self.assertIsNone((yield a.lookup("b")))
        yield self.registered("b", 9003)
        self.assertEqual((yield a.lookup("b")), 9003)

    @defer.inlineCallbacks
    def test_takeover(self) -> None:
        """When the serving node stops, another serves and every other node registers again."""
        a = yield self.registered("a", 9001)
        b = yield self.registered("b", 9002)
        c = yield self.registered("c", 9003)
        self.assertIsNotNone(a.serving)
        yield a.stop()

        def settled() -> bool:
            servers = [x for x in (b, c) if x.serving is not None]
            return len(servers) == 1 and servers[0].serving.ports == {"b": 9002, "c": 9003}

        # Takeover happens on the survivors' own schedule (random delays): poll (bounded).
        yield wait_until(reactor, settled, TIMEOUT, what="b or c serving b and c")
        self.assertEqual((yield b.lookup("c")), 9003)
        self.assertEqual((yield c.lookup("b")), 9002)
        self.assertIsNone((yield c.lookup("a")))

    @defer.inlineCallbacks
    def test_takeover_twice(self) -> None:
        """The mapper survives its successive servers stopping, down to the last node."""
        clients = []
        for i in range(4):
            clients.append((yield self.registered(f"n{i}", 9000 + i)))
        alive = list(clients)
        while len(alive) > 1:
            server = next(x for x in alive if x.serving is not None)
            yield server.stop()
            alive.remove(server)
            expected = {f"n{clients.index(x)}": 9000 + clients.index(x) for x in alive}

            def settled() -> bool:
                servers = [x for x in alive if x.serving is not None]
                return len(servers) == 1 and servers[0].serving.ports == expected

            # As above: poll (bounded) for the takeover.
            yield wait_until(reactor, settled, TIMEOUT, what=f"one of {len(alive)} serving {expected}")

    @defer.inlineCallbacks
    def test_lost_race_at_listen(self) -> None:
        """A node whose listen() loses the race to serve (EADDRINUSE after bind) registers all the same."""
        from twisted.internet.endpoints import TCP4ServerEndpoint

        from twisted_phoenix.cluster import portmapper

        attempts = []

        class LosesOnce:
            # Two nodes with SO_REUSEADDR can both bind the free mapper port;
            # the one that calls listen() second gets a bare OSError, which
            # Twisted does not wrap in CannotListenError.
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.real = TCP4ServerEndpoint(*args, **kwargs)

            def listen(self, factory: Any) -> Any:
                attempts.append(factory)
                if len(attempts) == 1:
                    return defer.fail(OSError(errno.EADDRINUSE, "Address already in use"))
                return self.real.listen(factory)

        self.patch(portmapper, "TCP4ServerEndpoint", LosesOnce)
        a = yield self.registered("a", 9001)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(a.serving.ports, {"a": 9001})


class _Mute(Protocol):
    """Accepts a connection and never answers (something else on the mapper port)."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _HangUp(Protocol):
    """Accepts a connection and closes it at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class ForeignServiceTests(TestCase):
    """Something that is not a port mapper holds the mapper port."""

    def setUp(self) -> None:
        factory = Factory.forProtocol(_Mute)
        factory.noisy = False
        factory.connections = []
        self.factory = factory
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.listening.stopListening)
        self.port = self.listening.getHost().port

    def all_closed(self) -> defer.Deferred[Any]:
        return defer.gatherResults([c.lost for c in self.factory.connections]).addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def test_register_fails(self) -> None:
        """Registering fails with an explanation after the timeout, rather than hang the node."""
        client = MapperClient(reactor, self.port, timeout=0.3)
        self.addCleanup(client.stop)
        with self.assertRaises(RuntimeError) as caught:
            yield client.register("a", 9001).addTimeout(TIMEOUT, reactor)
        self.assertIn("PHOENIX_EPMD_PORT", str(caught.exception))
        yield self.all_closed()

    @defer.inlineCallbacks
    def test_lookup_none(self) -> None:
        """A lookup finds nothing after the timeout, and closes its connection."""
        client = MapperClient(reactor, self.port, timeout=0.3)
        self.assertIsNone((yield client.lookup("a").addTimeout(TIMEOUT, reactor)))
        yield self.all_closed()

    @defer.inlineCallbacks
    def test_hangs_up(self) -> None:
        """Something that hangs up on every request makes registering fail, not spin forever."""
        factory = Factory.forProtocol(_HangUp)
        factory.noisy = False
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        client = MapperClient(reactor, listening.getHost().port)
        self.addCleanup(client.stop)
        with self.assertRaises(RuntimeError) as caught:
            yield client.register("a", 9001).addTimeout(TIMEOUT, reactor)
        self.assertIn("hangs up", str(caught.exception))
        self.assertIsNone((yield client.lookup("a")))
