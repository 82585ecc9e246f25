"""
Tests for :mod:`twisted_phoenix.cluster.broker`: what a peer that has not
proved the cookie can make a node do.  In memory (StringTransport,
task.Clock).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.spread import banana, pb
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.cluster.broker import (
    LOGIN_TIMEOUT,
    MAX_PENDING,
    PEER_HELLO_BYTES,
    PRE_AUTH_BYTES,
    PRE_AUTH_DEPTH,
    PRE_AUTH_ITEMS,
    LinkBroker,
    LinkServerFactory,
    Refused,
    Throttled,
)
from twisted_phoenix.cluster.link import ClusterRealm, CookieChecker

from ._cluster import LogWatcher

#: A list of one element, opened: Banana's cheapest way to nest.
OPENER = b"\x01\x80"


def watch(test: SynchronousTestCase) -> LogWatcher:
    logs = LogWatcher(Clock())
    globalLogPublisher.addObserver(logs)
    test.addCleanup(globalLogPublisher.removeObserver, logs)
    return logs


def server_broker(**limits: Any) -> tuple[LinkBroker, StringTransport, list[str]]:
    """An accepting broker, connected (its dialect offered), recording why it refuses."""
    factory = LinkServerFactory(Portal(ClusterRealm(None), [CookieChecker("cookie")]), Clock())  # type: ignore[arg-type]
    broker = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    for name, value in limits.items():
        setattr(broker, name, value)
    refused: list[str] = []
    broker.on_refused = lambda b, reason: refused.append(reason)
    transport = StringTransport()
    broker.makeConnection(transport)
    return broker, transport, refused


def string_start(length: int) -> bytes:
    """The start of a Banana list holding a string of ``length`` bytes (the string's bytes to follow)."""
    prefix: list[bytes] = []
    banana.int2b128(length, prefix.append)
    return OPENER + b"".join(prefix) + b"\x82"


class LimitsTests(SynchronousTestCase):
    """The defaults."""

    def test_defaults(self) -> None:
        """10 s to log in, 100 waiting at once, 16 KiB / 1024 items / 16 deep before login; a hello answer 1 MiB."""
        self.assertEqual((LOGIN_TIMEOUT, MAX_PENDING), (10.0, 100))
        self.assertEqual((PRE_AUTH_BYTES, PRE_AUTH_ITEMS, PRE_AUTH_DEPTH), (16 * 1024, 1024, 16))
        self.assertEqual(PEER_HELLO_BYTES, 1024 * 1024)


class PreAuthBananaTests(SynchronousTestCase):
    """Before its peer is authenticated, a broker decodes Banana under tight limits."""

    def test_login_fits(self) -> None:
        """A whole PB login, in memory, is well within the limits, and authenticates the broker."""
        from twisted.test import iosim

        from twisted_phoenix.cluster.auth import login_secret
        from twisted_phoenix.cluster.link import NodeMind

        from .test_cluster_link import FakeNode

        node = FakeNode()
        factory = LinkServerFactory(Portal(ClusterRealm(node), [CookieChecker("cookie")]), Clock())  # type: ignore[arg-type]
        refused: list[str] = []
        server = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        server.on_refused = lambda b, reason: refused.append(reason)
        client_factory = pb.PBClientFactory()
        client = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client))
        secret = login_secret("cookie", b"", "a@127.0.0.1")
        from twisted.cred.credentials import UsernamePassword

        d = client_factory.login(UsernamePassword(b"a@127.0.0.1", secret), client=NodeMind())
        pump.flush()
        self.successResultOf(d)
        self.assertTrue(server.authenticated)
        self.assertEqual(refused, [])
        self.assertLess(server.received_bytes, 200)
        self.assertLess(server.received_items, 100)
        self.assertEqual(factory.pending, set())

    def test_nesting(self) -> None:
        """Lists nested deeper than max_depth drop the connection; max_depth is fine."""
        broker, transport, refused = server_broker()
        broker.dataReceived(banana.encode(b"pb") + OPENER * PRE_AUTH_DEPTH)
        self.assertEqual(refused, [])
        self.assertEqual(len(broker.listStack), PRE_AUTH_DEPTH)
        broker.dataReceived(OPENER)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(refused, [f"not Perspective Broker before login (BananaError: lists nested more than "
                                   f"{PRE_AUTH_DEPTH} deep before login)"])

    def test_bytes(self) -> None:
        """More than max_bytes in all before login drops the connection, before decoding them."""
        broker, transport, refused = server_broker(max_bytes=1000)
        broker.dataReceived(banana.encode(b"pb"))
        broker.dataReceived(string_start(5000) + b"x" * 900)  # a string, still incomplete
        self.assertEqual(refused, [])
        broker.dataReceived(b"x" * 200)
        self.assertEqual(refused, ["more than 1000 bytes before login"])
        self.assertTrue(transport.disconnecting)

    def test_items(self) -> None:
        """More than max_items Banana items before login drops the connection."""
        broker, transport, refused = server_broker(max_items=50)
        # A list of 100 integers, within the byte budget.
        broker.dataReceived(banana.encode(b"pb") + b"\x64\x80" + b"\x01\x81" * 100)
        self.assertTrue(transport.disconnecting)
        self.assertIn("more than 50 items before login", refused[0])

    def test_bomb_memory(self) -> None:
        """10 MB of nested list openers allocate almost nothing: the connection goes at the first chunk."""
        broker, transport, refused = server_broker()
        chunk = OPENER * 32 * 1024  # 64 KiB, a read's worth
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        for _ in range(10 * 1024 * 1024 // len(chunk)):
            broker.dataReceived(chunk)
        _, peak = tracemalloc.get_traced_memory()
        self.assertLess(peak, 512 * 1024)
        self.assertEqual(len(refused), 1)
        self.assertEqual(len(broker.listStack), 0)  # the chunk was never decoded: over the byte budget
        self.assertTrue(transport.disconnecting)

    def test_bomb_in_small_chunks(self) -> None:
        """Openers trickled within the byte budget stop at the depth limit."""
        broker, transport, refused = server_broker()
        broker.dataReceived(banana.encode(b"pb"))
        for _ in range(1000):
            broker.dataReceived(OPENER * 4)
        self.assertEqual(len(refused), 1)
        self.assertLessEqual(len(broker.listStack), PRE_AUTH_DEPTH)
        self.assertLessEqual(broker.received_bytes, PRE_AUTH_DEPTH * 2 + 100)

    def test_garbage(self) -> None:
        """An unknown Banana type byte before login drops the connection, without a traceback."""
        broker, transport, refused = server_broker()
        broker.dataReceived(b"\x01\xff")
        self.assertTrue(transport.disconnecting)
        self.assertIn("not Perspective Broker before login", refused[0])

    def test_tls_on_plaintext_port(self) -> None:
        """A TLS ClientHello on a plaintext link port is refused with a line that says so."""
        broker, transport, refused = server_broker()
        broker.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        self.assertTrue(transport.disconnecting)
        self.assertIn("it speaks TLS to this node's plaintext link port (--dist-plaintext)", refused[0])

    def test_refused_once(self) -> None:
        """A refused connection ignores what else it gets, and is reported once."""
        broker, transport, refused = server_broker(max_bytes=10)
        broker.dataReceived(b"x" * 20)
        broker.dataReceived(b"x" * 20)
        self.assertEqual(len(refused), 1)

    def test_authenticated(self) -> None:
        """Once authenticated, a peer gets Banana's own limits: deep nesting and many bytes are fine."""
        broker, transport, refused = server_broker(max_bytes=1000)
        called: list[int] = []
        broker.notify_authenticated(lambda: called.append(1))
        broker.dataReceived(banana.encode(b"pb"))
        broker.authenticate()
        broker.authenticate()
        self.assertEqual(called, [1])
        broker.dataReceived(OPENER * 1000)
        broker.dataReceived(string_start(5000) + b"x" * 4000)
        self.assertEqual(refused, [])
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(broker.listStack), 1001)

    def test_authenticated_garbage(self) -> None:
        """An authenticated peer's undecodable data is logged once and drops its connection."""
        logs = watch(self)
        broker, transport, refused = server_broker()
        broker.dataReceived(banana.encode(b"pb"))
        broker.authenticate()
        broker.dataReceived(b"\x01\xff")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(logs.find("it sent what Banana cannot decode", LogLevel.critical)), 1)
        self.flushLoggedErrors(NotImplementedError)


class _Mind:
    """The parts of a RemoteReference the realm uses."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker


class RealmTests(SynchronousTestCase):
    """Logging in is what authenticates a peer on the link port."""

    def test_login_authenticates(self) -> None:
        """The realm authenticates the broker of a node that logged in; its perspective has a link."""
        from .test_cluster_link import FakeNode

        node = FakeNode()
        broker, transport, _ = server_broker()
        mind = pb.RemoteReference(None, broker, 1, 0)
        self.assertFalse(broker.authenticated)
        ClusterRealm(node).requestAvatar(b"a@127.0.0.1", mind, pb.IPerspective)  # type: ignore[arg-type]
        self.assertTrue(broker.authenticated)

    def test_refused_login_does_not(self) -> None:
        """A login the realm refuses (this node's own name) leaves the broker unauthenticated."""
        from .test_cluster_link import FakeNode

        node = FakeNode()
        broker, _, _ = server_broker()
        mind = pb.RemoteReference(None, broker, 1, 0)
        with self.assertRaises(pb.Error):
            ClusterRealm(node).requestAvatar(node.name.encode(), mind, pb.IPerspective)  # type: ignore[arg-type]
        self.assertFalse(broker.authenticated)


class ServerFactoryTests(SynchronousTestCase):
    """The link port: a deadline to log in, a cap on connections that have not."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.logs = watch(self)
        self.factory = LinkServerFactory(
            Portal(ClusterRealm(None), [CookieChecker("cookie")]), self.clock,  # type: ignore[arg-type]
            login_timeout=10.0, max_pending=3,
        )
        self.port = 50000

    def connect(self) -> tuple[Any, StringTransport]:
        self.port += 1
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", self.port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_deadline(self) -> None:
        """A connection that has not logged in after login_timeout is dropped and logged; a logged-in one stays."""
        idle, idle_transport = self.connect()
        linked, linked_transport = self.connect()
        linked.authenticate()
        self.clock.advance(9.9)
        self.assertFalse(idle_transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(idle_transport.disconnecting)
        self.assertFalse(linked_transport.disconnecting)
        self.assertEqual(
            self.logs.find("Dropped a cluster connection from 127.0.0.1:50001 before login", LogLevel.warn),
            ["Dropped a cluster connection from 127.0.0.1:50001 before login: no login within 10 s"],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_deadline_cancelled_on_close(self) -> None:
        """A connection that goes before its deadline leaves no timer behind and frees its place."""
        broker, transport = self.connect()
        broker.connectionLost(Exception("gone"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.pending, set())

    def test_cap(self) -> None:
        """Past max_pending connections not logged in, new ones are closed at once; logging in frees a place."""
        first, _ = self.connect()
        self.connect()
        self.connect()
        refused, refused_transport = self.connect()
        self.assertIsInstance(refused, Refused)
        self.assertTrue(refused_transport.disconnecting)
        self.assertEqual(len(self.logs.find("connections are already waiting to log in (--dist-max-pending)",
                                            LogLevel.warn)), 1)
        first.authenticate()
        again, _ = self.connect()
        self.assertIsInstance(again, LinkBroker)
        self.assertEqual(self.factory.refused, 1)

    def test_refusals_rate_limited(self) -> None:
        """Refusals are logged once per 10 s; the next line counts those left out."""
        for _ in range(3):
            self.connect()
        for _ in range(50):
            self.connect()
        self.assertEqual(len(self.logs.find("already waiting to log in")), 1)
        self.clock.advance(10)  # the three pending ones time out too: logged once
        self.connect()
        lines = self.logs.find("already waiting to log in")
        self.assertEqual(len(lines), 2)
        self.assertIn("(49 more like it in the last 10 s not logged)", lines[1])
        self.assertEqual(len(self.logs.find("no login within")), 1)

    def test_limits_applied(self) -> None:
        """The factory's limits are each broker's."""
        factory = LinkServerFactory(
            Portal(ClusterRealm(None), [CookieChecker("cookie")]), self.clock,  # type: ignore[arg-type]
            limits={"max_bytes": 123, "max_items": 45, "max_depth": 6},
        )
        broker = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.assertEqual((broker.max_bytes, broker.max_items, broker.max_depth), (123, 45, 6))


class ThrottledTests(SynchronousTestCase):
    """Rate-limited log lines."""

    def test_kinds(self) -> None:
        """Each kind is limited on its own; the count of lines left out comes with the next."""
        clock = Clock()
        logs = watch(self)
        throttle = Throttled(clock, interval=5.0)
        self.assertTrue(throttle.emit(LogLevel.warn, "a", "line a {n}", n=1))
        self.assertFalse(throttle.emit(LogLevel.warn, "a", "line a {n}", n=2))
        self.assertTrue(throttle.emit(LogLevel.warn, "b", "line b"))
        clock.advance(5)
        self.assertTrue(throttle.emit(LogLevel.warn, "a", "line a {n}", n=3))
        self.assertEqual(logs.find("line a"), ["line a 1", "line a 3 (1 more like it in the last 5 s not logged)"])


class ClientFactoryTests(SynchronousTestCase):
    """Our side of a link we open: limits until the peer's proof, and a word when they are hit."""

    def test_limits_and_log(self) -> None:
        """A node we connect to that sends too much before its proof is dropped, with a warning."""
        from twisted_phoenix.cluster.broker import LinkClientFactory

        logs = watch(self)
        factory = LinkClientFactory(limits={"max_bytes": 100, "max_items": 10, "max_depth": 4})
        broker = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9100))
        self.assertEqual((broker.max_bytes, broker.max_items, broker.max_depth), (100, 10, 4))
        transport = StringTransport()
        broker.makeConnection(transport)
        broker.dataReceived(b"x" * 101)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            logs.find("Dropped the connection to 127.0.0.1:9100", LogLevel.warn),
            ["Dropped the connection to 127.0.0.1:9100 before its proof of the cookie: "
             "more than 100 bytes before login"],
        )
