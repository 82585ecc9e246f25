"""
Tests for :mod:`twisted_phoenix.cluster.portmapper`: the protocol in
memory (iosim, task.Clock), the nodes' side over real loopback.
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.protocols.basic import LineOnlyReceiver
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix.cluster import portmapper
from twisted_phoenix.cluster.auth import line_mac, mapper_proof
from twisted_phoenix.cluster.broker import Refused
from twisted_phoenix.cluster.portmapper import (
    DEFAULT_PORT,
    MapperClient,
    MapperError,
    PortMapper,
    _MapperClientProtocol,
    _MapperServerProtocol,
    _Untrusted,
    mapper_port,
)

from ._cluster import COOKIE, LogWatcher, free_port, wait_until, watch_logs

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


class _RawClient(LineOnlyReceiver):
    """A client that sends what it is told and keeps every line it gets."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)


class _Session:
    """One client connection to an in-memory mapper: the client protocol and its pump."""

    def __init__(self, mapper: PortMapper, port: int, raw: bool = False) -> None:
        self.server = mapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        self.client: Any = _RawClient() if raw else _MapperClientProtocol()
        self.server_transport = iosim.makeFakeServer(self.server)
        self.client_transport = iosim.makeFakeClient(self.client)
        self.pump = iosim.connect(self.server, self.server_transport, self.client, self.client_transport)

    def run(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        self.pump.flush()
        return d

    def close(self) -> None:
        self.client_transport.loseConnection()
        self.pump.flush()


class MapperProtocolTests(SynchronousTestCase):
    """The mapper's protocol, in memory: both sides prove the cookie, then REGISTER, LOOKUP, NAMES."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.mapper = PortMapper(COOKIE, self.clock, login_timeout=10.0, max_pending=100)
        self.logs = LogWatcher(self.clock)
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)
        self._ports = iter(range(40000, 41000))

    def session(self, cookie: str = COOKIE, handshake: bool = True) -> _Session:
        s = _Session(self.mapper, next(self._ports))
        if handshake:
            self.successResultOf(s.run(s.client.handshake(cookie)))
        return s

    def ask(self, s: _Session, line: str) -> str:
        return self.successResultOf(s.run(s.client.request(line)))

    def test_register_lookup_names(self) -> None:
        """A registered name is found by LOOKUP and listed by NAMES, sorted; others are NONE."""
        a, b = self.session(), self.session()
        self.assertEqual(self.ask(a, "REGISTER zeta 9001"), "OK")
        self.assertEqual(self.ask(b, "REGISTER alpha 9002"), "OK")
        self.assertEqual(self.ask(a, "LOOKUP alpha"), "PORT 9002")
        self.assertEqual(self.ask(b, "LOOKUP zeta"), "PORT 9001")
        self.assertEqual(self.ask(a, "LOOKUP nobody"), "NONE")
        self.assertEqual(self.ask(a, "NAMES"), "NAMES alpha=9002 zeta=9001")
        self.assertEqual(self.mapper.ports, {"alpha": 9002, "zeta": 9001})

    def test_names_empty(self) -> None:
        """NAMES with nobody registered is just NAMES."""
        self.assertEqual(self.ask(self.session(), "NAMES"), "NAMES")

    def test_one_name_per_connection(self) -> None:
        """A second REGISTER on a connection is REFUSED, whatever the name; the first stays."""
        a = self.session()
        self.assertEqual(self.ask(a, "REGISTER server 9001"), "OK")
        self.assertEqual(self.ask(a, "REGISTER other 9002"), "REFUSED")
        self.assertEqual(self.ask(a, "REGISTER server 9003"), "REFUSED")
        self.assertEqual(self.mapper.ports, {"server": 9001})
        a.close()
        self.assertEqual(self.mapper.ports, {})

    def test_taken(self) -> None:
        """A name a live connection holds is TAKEN; once that connection closes it is free."""
        a, b = self.session(), self.session()
        self.assertEqual(self.ask(a, "REGISTER server 9001"), "OK")
        self.assertEqual(self.ask(b, "REGISTER server 9999"), "TAKEN")
        self.assertEqual(self.ask(b, "LOOKUP server"), "PORT 9001")
        a.close()
        self.assertEqual(self.ask(b, "LOOKUP server"), "NONE")
        self.assertEqual(self.ask(b, "REGISTER server 9005"), "OK")
        self.assertEqual(self.ask(b, "LOOKUP server"), "PORT 9005")

    def test_client_without_cookie(self) -> None:
        """A client with another cookie finds the mapper's proof wrong; a wrong PROOF is DENIED and closed."""
        s = self.session(handshake=False)
        failure = self.failureResultOf(s.run(s.client.handshake("another cookie")), _Untrusted)
        self.assertIn("no proof", str(failure.value))
        # A client that sends a proof anyway (a guess) is refused.
        raw = _Session(self.mapper, 1, raw=True)
        raw.client.sendLine(b"HELLO " + b"0" * 32)
        raw.pump.flush()
        raw.client.sendLine(b"PROOF " + b"f" * 64)
        raw.pump.flush()
        self.assertTrue(raw.server_transport.disconnecting or raw.server_transport.disconnected)
        self.assertEqual(raw.client.lines[-1], b"DENIED")
        self.assertEqual(self.mapper.ports, {})
        self.assertTrue(self.logs.find("Port mapper: refused a client from 127.0.0.1:1: it does not know the cookie",
                                       LogLevel.warn))

    def test_requests_before_proof(self) -> None:
        """REGISTER, LOOKUP or NAMES before the handshake close the connection; nothing is registered."""
        for line in (b"REGISTER x 9001", b"LOOKUP x", b"NAMES", b"HELLO", b"HELLO short"):
            s = self._raw()
            s.client.sendLine(line)
            s.pump.flush()
            self.assertTrue(s.server_transport.disconnecting, line)
        self.assertEqual(self.mapper.ports, {})

    def _raw(self) -> _Session:
        return _Session(self.mapper, next(self._ports), raw=True)

    def test_request_mac(self) -> None:
        """A request with a wrong MAC, or a replayed one, closes the connection."""
        a = self.session()
        a.client.sendLine(b"REGISTER x 9001 " + b"0" * 32)
        a.pump.flush()
        self.assertTrue(a.server_transport.disconnecting)
        b = self.session()
        self.assertEqual(self.ask(b, "LOOKUP x"), "NONE")
        # Replay the first request's line: its MAC covered sequence number 0.
        key = b.server._key
        b.client.sendLine(f"REGISTER x 9001 {line_mac(key, 'request', 0, 'REGISTER x 9001')}".encode())
        b.pump.flush()
        self.assertTrue(b.server_transport.disconnecting)
        self.assertEqual(self.mapper.ports, {})
        self.assertTrue(self.logs.find("with a wrong MAC", LogLevel.warn))

    def test_bad_request(self) -> None:
        """A request the mapper does not know, from a client with the cookie, closes the connection, with a warning."""
        for line in ("HELLO", "REGISTER name notaport", "REGISTER name 0", "REGISTER name", "LOOKUP", "LOOKUP a b",
                     "REGISTER bad/name 9001", "REGISTER name \u00b2"):
            s = self.session()
            self.failureResultOf(s.run(s.client.request(line)), error.ConnectionLost)
        self.assertEqual(len(self.logs.find("Port mapper: bad request", LogLevel.warn)), 8)
        self.assertEqual(self.mapper.ports, {})

    def test_line_too_long(self) -> None:
        """A request line over 1024 bytes closes the connection."""
        s = self._raw()
        s.client.transport.write(b"HELLO " + b"x" * 2000)
        s.pump.flush()
        self.assertTrue(s.server_transport.disconnected or s.server_transport.disconnecting)

    def test_deadline(self) -> None:
        """A connection that has not proved the cookie within login_timeout is dropped; a proven one stays."""
        idle = self._raw()
        proven = self.session()
        self.clock.advance(9.9)
        self.assertFalse(idle.server_transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(idle.server_transport.disconnecting)
        idle.pump.flush()
        self.assertFalse(proven.server_transport.disconnecting)
        self.assertEqual(self.mapper.pending, set())
        self.assertTrue(self.logs.find("did not prove the cookie within 10 s", LogLevel.warn))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pending_cap(self) -> None:
        """Past max_pending connections that have not proved the cookie, new ones are closed at once."""
        self.mapper.max_pending = 2
        first, second = self._raw(), self._raw()
        protocol = self.mapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertIsInstance(protocol, Refused)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(self.logs.find("connections are already waiting to prove the cookie", LogLevel.warn))
        # One of them proves the cookie: room for one more.
        first.client.sendLine(b"HELLO " + b"1" * 32)
        first.pump.flush()
        nonce = first.client.lines[0].split(b" ")[1].decode()
        first.client.sendLine(f"PROOF {mapper_proof(COOKIE, 'client', '1' * 32, nonce)}".encode())
        first.pump.flush()
        self.assertEqual(self.mapper.pending, {second.server})
        third = self._raw()
        self.assertIsInstance(third.server, _MapperServerProtocol)
        self.assertEqual(self.mapper.pending, {second.server, third.server})

    def test_fake_mapper_answers(self) -> None:
        """A client refuses an answer whose MAC is wrong (an answer not from the mapper it authenticated)."""
        s = self.session()
        d = s.client.request("LOOKUP x")
        s.client.lineReceived(b"PORT 1234 " + b"0" * 32)
        self.failureResultOf(d, _Untrusted)

    def test_mapper_proof_is_mutual(self) -> None:
        """The mapper's proof and its client's differ (neither can be replayed as the other)."""
        self.assertNotEqual(mapper_proof(COOKIE, "server", "a" * 32, "b" * 32),
                            mapper_proof(COOKIE, "client", "a" * 32, "b" * 32))


class MapperClientTests(TestCase):
    """Nodes' side: serve the mapper when nobody does, register, look up, take over."""

    def setUp(self) -> None:
        self.port = free_port()

    def client(self, cookie: str = COOKIE, **kwargs: Any) -> MapperClient:
        client = MapperClient(reactor, self.port, cookie, **kwargs)
        self.addCleanup(client.stop)
        return client

    @defer.inlineCallbacks
    def registered(self, name: str, port: int, cookie: str = COOKIE) -> Any:
        client = self.client(cookie)
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
        """Any client with the cookie finds any registered name; unknown names are None."""
        a = yield self.registered("a", 9001)
        b = yield self.registered("b", 9002)
        self.assertEqual((yield a.lookup("b")), 9002)
        self.assertEqual((yield b.lookup("a")), 9001)
        self.assertIsNone((yield b.lookup("c")))
        stranger = self.client()
        self.assertEqual((yield stranger.lookup("a")), 9001)
        self.assertEqual((yield stranger.names()), {"a": 9001, "b": 9002})

    @defer.inlineCallbacks
    def test_lookup_without_mapper(self) -> None:
        """With no mapper running, a lookup finds nothing (it does not fail)."""
        self.assertIsNone((yield self.client().lookup("a").addTimeout(TIMEOUT, reactor)))

    @defer.inlineCallbacks
    def test_name_taken(self) -> None:
        """Registering a name a live node holds is a ValueError."""
        yield self.registered("a", 9001)
        with self.assertRaises(ValueError):
            yield self.client().register("a", 9009).addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def test_other_cookie(self) -> None:
        """
        A node of a cluster with another cookie on the same mapper port can
        neither register nor look up, and is told to choose another port.
        """
        logs = watch_logs(self, reactor)
        yield self.registered("a", 9001)
        other = self.client("another cookie")
        with self.assertRaises(MapperError) as caught:
            yield other.register("b", 9002).addTimeout(TIMEOUT, reactor)
        self.assertIn("--epmd-port or PHOENIX_EPMD_PORT", str(caught.exception))
        self.assertIn("another cookie", str(caught.exception))
        with self.assertRaises(MapperError):
            yield other.lookup("a").addTimeout(TIMEOUT, reactor)
        # The mapper's side says what it saw (info: it is not an attack on it).
        yield logs.wait_for("left before proving the cookie", TIMEOUT)

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
    def test_impostor_takes_the_port(self) -> None:
        """
        When the serving node goes and something without the cookie takes
        the port first, the others do not register with it; they keep
        trying, and register once a real mapper is back.
        """
        logs = watch_logs(self, reactor)
        a = yield self.registered("a", 9001)
        b = yield self.registered("b", 9002)
        b.RETRY = (0.05,)
        yield a.stop()
        # In the same turn as a's port closed, before b tries again.
        impostor = PortMapper("not the cookie", reactor)
        listening = yield TCP4ServerEndpoint(reactor, self.port, interface="127.0.0.1").listen(impostor)
        yield logs.wait_for("Could not register with the port mapper again", TIMEOUT, LogLevel.error)
        self.assertTrue(logs.find("does not prove this cluster's cookie", LogLevel.error))
        self.assertEqual(impostor.ports, {})
        yield listening.stopListening()
        yield impostor.disconnect_all()
        yield logs.wait_for("Registered with the port mapper again", TIMEOUT)
        self.assertEqual(b.serving.ports, {"b": 9002})

    @defer.inlineCallbacks
    def test_lost_race_at_listen(self) -> None:
        """A node whose listen() loses the race to serve (EADDRINUSE after bind) registers all the same."""
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
        client = MapperClient(reactor, self.port, COOKIE, timeout=0.3)
        self.addCleanup(client.stop)
        with self.assertRaises(RuntimeError) as caught:
            yield client.register("a", 9001).addTimeout(TIMEOUT, reactor)
        self.assertIn("PHOENIX_EPMD_PORT", str(caught.exception))
        yield self.all_closed()

    @defer.inlineCallbacks
    def test_lookup_none(self) -> None:
        """A lookup finds nothing after the timeout, and closes its connection."""
        client = MapperClient(reactor, self.port, COOKIE, timeout=0.3)
        self.assertIsNone((yield client.lookup("a").addTimeout(TIMEOUT, reactor)))
        yield self.all_closed()

    @defer.inlineCallbacks
    def test_hangs_up(self) -> None:
        """Something that hangs up on every request makes registering fail, not spin forever."""
        factory = Factory.forProtocol(_HangUp)
        factory.noisy = False
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        client = MapperClient(reactor, listening.getHost().port, COOKIE)
        self.addCleanup(client.stop)
        with self.assertRaises(RuntimeError) as caught:
            yield client.register("a", 9001).addTimeout(TIMEOUT, reactor)
        self.assertIn("hangs up", str(caught.exception))
        self.assertIsNone((yield client.lookup("a")))
