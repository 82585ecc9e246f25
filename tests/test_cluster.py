"""
Tests for :mod:`twisted_phoenix.cluster.node`: nodes in this process, each
with its own PubSub, linked over real loopback TCP (and TLS).

Every test has its own port mapper port and an explicit cookie.
"""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.spread import pb
from twisted.cred.credentials import UsernamePassword
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix.cluster import node as node_module
from twisted_phoenix.cluster.auth import login_secret
from twisted_phoenix.cluster.link import CookieChecker, Link, proof
from twisted_phoenix.cluster.tls import channel_binding
from twisted_phoenix.cluster.node import Node
from twisted_phoenix.pubsub import CallbackSubscriber, PubSub

from ._cluster import COOKIE, Collector, ClusterPKI, TapOptionsMixin, free_port, start_node, wait_interest, wait_until, watch_logs

#: Bound on any one wait in these tests.
TIMEOUT = 10.0


def host(name: str) -> str:
    return f"{name}@127.0.0.1"


class ClusterTestCase(TestCase):
    """Nodes on loopback with this test's own port mapper port."""

    def setUp(self) -> None:
        self.mapper_port = free_port()
        self.logs = watch_logs(self, reactor)

    def node(self, name: str, **options: Any) -> defer.Deferred[Node]:
        """Start the node ``name@127.0.0.1``; stopped in cleanup."""
        options.setdefault("mapper_port", self.mapper_port)
        return start_node(self, reactor, host(name), **options)

    def wait_mesh(self, *nodes: Node, timeout: float = TIMEOUT) -> defer.Deferred[Any]:
        """Fire once every node is linked to every other one."""

        def meshed() -> bool:
            return all(n.list() == sorted(m.name for m in nodes if m is not n) for n in nodes)

        # Links come up on their own schedule (transitive introductions): poll, bounded.
        return wait_until(reactor, meshed, timeout, what=f"full mesh of {[n.name for n in nodes]}")

    @defer.inlineCallbacks
    def mesh(self, *names: str, **options: Any) -> Any:
        """Start nodes ``names``, link each to the first, wait for the full mesh."""
        nodes = []
        for name in names:
            nodes.append((yield self.node(name, **options)))
        for other in nodes[1:]:
            self.assertTrue((yield other.connect(nodes[0].name)))
        yield self.wait_mesh(*nodes)
        return nodes

    @defer.inlineCallbacks
    def crash(self, node: Node) -> Any:
        """
        Stop ``node`` as a crash would: its connections dropped, no goodbye,
        gone from the port mapper.
        """
        node._stopping = True  # it must not relink by itself either
        for timer in list(node._timers):
            if timer.active():
                timer.cancel()
        yield node._connections.close_all(reactor)
        yield node.mapper.stop()
        yield node._listening.stopListening()

    def connection_of(self, link: Link) -> Any:
        return link.remote.broker.transport

    def address_of(self, node: Node) -> str:
        """Where ``node`` listens for links, as ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{node._listening.getHost().port}"


class NodeTests(ClusterTestCase):
    """Naming, connecting, listing."""

    @defer.inlineCallbacks
    def test_connect_by_name(self) -> None:
        """Nodes find each other by bare name through the port mapper, and list each other."""
        a = yield self.node("a")
        b = yield self.node("b")
        self.assertEqual((a.self(), b.self()), (host("a"), host("b")))
        self.assertEqual((a.list(), b.list()), ([], []))
        self.assertIs((yield a.connect(host("b"))), True)
        self.assertEqual(a.list(), [host("b")])
        # The accepting side has linked before answering the hello.
        self.assertEqual(b.list(), [host("a")])
        self.assertEqual(self.logs.find("Node b@127.0.0.1 connected to a@127.0.0.1", LogLevel.info),
                         ["Node b@127.0.0.1 connected to a@127.0.0.1"])

    @defer.inlineCallbacks
    def test_connect_again(self) -> None:
        """Connecting to a linked node, or to oneself, is True and changes nothing."""
        a = yield self.node("a")
        yield self.node("b")
        self.assertTrue((yield a.connect(host("b"))))
        link = a.links[host("b")]
        self.assertTrue((yield a.connect(host("b"))))
        self.assertTrue((yield a.connect(host("a"))))
        self.assertIs(a.links[host("b")], link)
        self.assertEqual(a.list(), [host("b")])

    @defer.inlineCallbacks
    def test_connect_by_address(self) -> None:
        """name@host=ADDRESS:PORT links to a node another port mapper knows."""
        a = yield self.node("a")
        b = yield self.node("b", mapper_port=free_port())
        b_port = b._listening.getHost().port
        self.assertFalse((yield a.connect(host("b"))))
        self.assertTrue((yield a.connect(f"{host('b')}=127.0.0.1:{b_port}")))
        self.assertEqual((a.list(), b.list()), ([host("b")], [host("a")]))

    @defer.inlineCallbacks
    def test_connect_unknown(self) -> None:
        """An unregistered name, a malformed name or a remote host without address is False, logged."""
        a = yield self.node("a")
        self.assertIs((yield a.connect(host("nobody"))), False)
        self.assertTrue(self.logs.find("Cannot connect to node nobody@127.0.0.1: no node of that name", LogLevel.warn))
        self.assertIs((yield a.connect("nobody")), False)
        self.assertTrue(self.logs.find("Cannot connect: a node name is name@host", LogLevel.error))
        self.assertIs((yield a.connect("x@192.0.2.1")), False)
        self.assertTrue(self.logs.find("give its address, as name@host=ADDRESS:PORT", LogLevel.warn))
        self.assertIs((yield a.connect(f"{host('b')}=nowhere")), False)
        self.assertEqual(a.list(), [])

    @defer.inlineCallbacks
    def test_name_taken(self) -> None:
        """A node cannot start with the name of a live node on the same host."""
        yield self.node("a")
        twin = Node(reactor, host("a"), cookie=COOKIE, pubsub=PubSub(), mapper_port=self.mapper_port)
        self.addCleanup(twin.stop)
        with self.assertRaises(ValueError):
            yield twin.start()

    @defer.inlineCallbacks
    def test_transitive_mesh(self) -> None:
        """A–B, then C–A: every node ends up linked to every other."""
        a = yield self.node("a")
        b = yield self.node("b")
        c = yield self.node("c")
        self.assertTrue((yield a.connect(b.name)))
        self.assertTrue((yield c.connect(a.name)))
        yield self.wait_mesh(a, b, c)
        d = yield self.node("d")
        self.assertTrue((yield d.connect(c.name)))
        yield self.wait_mesh(a, b, c, d)
        self.assertEqual(b.list(), [host("a"), host("c"), host("d")])

    @defer.inlineCallbacks
    def test_initial_connect(self) -> None:
        """connect=[...] links at start, and keeps trying until the node is there."""
        a = yield self.node("a", connect=[host("b")])
        yield self.logs.wait_for("Cannot connect to node b@127.0.0.1", TIMEOUT)
        b = yield self.node("b")
        yield self.wait_mesh(a, b)

    @defer.inlineCallbacks
    def test_simultaneous_connects(self) -> None:
        """Connecting both ways at once leaves one link, the same connection on both ends."""
        for round in range(5):
            a = yield self.node(f"a{round}")
            b = yield self.node(f"b{round}")
            results = yield defer.gatherResults([a.connect(b.name), b.connect(a.name)])
            self.assertEqual(results, [True, True])

            def settled() -> bool:
                # The losing connection is dropped a moment later: poll, bounded.
                if len(a._connections.brokers) != 1 or len(b._connections.brokers) != 1:
                    return False
                ours, theirs = a.links.get(b.name), b.links.get(a.name)
                return (
                    ours is not None and theirs is not None
                    and self.connection_of(ours).getHost() == self.connection_of(theirs).getPeer()
                )

            yield wait_until(reactor, settled, TIMEOUT, what="a single link")
            self.assertEqual((a.list(), b.list()), ([b.name], [a.name]))
        self.assertEqual(self.logs.find("is down"), [])

    @defer.inlineCallbacks
    def test_simultaneous_mesh(self) -> None:
        """Five nodes all connecting to each other at once end with one link per pair, nothing lost."""
        nodes = []
        for i in range(5):
            nodes.append((yield self.node(f"n{i}")))
        results = yield defer.gatherResults([a.connect(b.name) for a in nodes for b in nodes if a is not b])
        self.assertEqual(set(results), {True})
        yield self.wait_mesh(*nodes)
        # Duplicates are dropped a moment later: poll, bounded.
        yield wait_until(
            reactor, lambda: all(len(n._connections.brokers) == 4 for n in nodes), TIMEOUT, what="4 connections each"
        )
        for n in nodes:
            for peer, link in n.links.items():
                other = next(m for m in nodes if m.name == peer).links[n.name]
                self.assertEqual(self.connection_of(link).getPeer(), self.connection_of(other).getHost())
        self.assertEqual(self.logs.find("is down"), [])
        self.assertEqual(self.logs.find("Rejected"), [])
        self.assertEqual(self.logs.find("did not answer our hello"), [])

    @defer.inlineCallbacks
    def test_stop_leaves(self) -> None:
        """A node that stops says goodbye: the others drop it without retrying."""
        a, b = yield self.mesh("a", "b")
        yield b.stop()
        yield self.logs.wait_for("Node b@127.0.0.1 left", TIMEOUT)
        self.assertEqual(a.list(), [])
        self.assertEqual(a._retrying, set())
        self.assertEqual(self.logs.find("is down"), [])

    @defer.inlineCallbacks
    def test_stop_while_retrying(self) -> None:
        """A node that keeps retrying a missing peer stops at once, its retry timer cancelled."""
        a = yield self.node("a", connect=[host("ghost")])
        yield self.logs.wait_for("Cannot connect to node ghost@127.0.0.1", TIMEOUT)
        self.assertEqual(a._retrying, {host("ghost")})
        yield a.stop()
        self.assertEqual(a._timers, set())

    @defer.inlineCallbacks
    def test_stop_while_connecting(self) -> None:
        """stop() drops a connection still waiting for its login, and connect() then answers False."""
        silent = _SilentServer()
        listening = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        a = yield self.node("a")
        connecting = a.connect(f"{host('mute')}=127.0.0.1:{listening.getHost().port}")
        yield silent.connected.addTimeout(TIMEOUT, reactor)
        started = reactor.seconds()
        yield a.stop()
        self.assertIs((yield connecting), False)
        self.assertLess(reactor.seconds() - started, 2.0)  # not the 5 s login timeout
        yield silent.lost.addTimeout(TIMEOUT, reactor)
        self.assertEqual(a._connections.brokers, set())

    @defer.inlineCallbacks
    def test_stop_closes_everything(self) -> None:
        """After stop(), none of a node's connections or timers is left."""
        nodes = yield self.mesh("a", "b", "c")
        links = [link for n in nodes for link in n.links.values()]
        self.assertEqual(len(links), 6)
        for n in reversed(nodes):
            yield n.stop()
            self.assertEqual(n._connections.brokers, set())
            self.assertEqual(n._timers, set())
            self.assertEqual(n.list(), [])
        for link in links:
            self.assertTrue(link.closed)
            self.assertFalse(link._heartbeat.running)


class BroadcastTests(ClusterTestCase):
    """The PubSub adapter: broadcasts cross each link once and are dispatched on every node."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.nodes = yield self.mesh("a", "b", "c")
        self.a, self.b, self.c = self.nodes
        self.collectors = {n.name: Collector(reactor, n.pubsub, "room") for n in self.nodes}
        # Interest routing: a broadcast sent before a node's peers know of
        # its new subscriber may not reach it (docs/cluster.rst).
        yield wait_interest(reactor, self.nodes, "room", TIMEOUT)

    @defer.inlineCallbacks
    def settle(self, *senders: Node) -> Any:
        """
        Each sender broadcasts a marker; links are ordered, so once every
        node has every marker, everything sent before has arrived.
        """
        markers = {n.name: Collector(reactor, n.pubsub, "marker") for n in self.nodes}
        yield wait_interest(reactor, self.nodes, "marker", TIMEOUT)
        for sender in senders:
            sender.pubsub.broadcast("marker", "done", {"from": sender.name})
        for collector in markers.values():
            yield collector.wait_for(len(senders), TIMEOUT)

    def received(self, node: Node) -> list[Any]:
        return self.collectors[node.name].payloads()

    @defer.inlineCallbacks
    def test_everywhere_once(self) -> None:
        """A broadcast from any node reaches the subscribers of every node exactly once."""
        for i, sender in enumerate(self.nodes):
            sender.pubsub.broadcast("room", "msg", {"n": i})
        yield self.settle(*self.nodes)
        for n in self.nodes:
            self.assertEqual(sorted(p["n"] for _, p in self.received(n)), [0, 1, 2], n.name)
            self.assertEqual(len(self.received(n)), 3)

    @defer.inlineCallbacks
    def test_order_per_sender(self) -> None:
        """Broadcasts from one node arrive on every node in the order they were sent."""
        for i in range(50):
            self.b.pubsub.broadcast("room", "msg", {"n": i})
        yield self.settle(self.b)
        for n in self.nodes:
            self.assertEqual([p["n"] for _, p in self.received(n)], list(range(50)))

    @defer.inlineCallbacks
    def test_other_topics(self) -> None:
        """Only the subscribers of the topic get a broadcast."""
        self.a.pubsub.broadcast("elsewhere", "msg", {"n": 1})
        yield self.settle(self.a)
        for n in self.nodes:
            self.assertEqual(self.received(n), [])

    @defer.inlineCallbacks
    def test_broadcast_from(self) -> None:
        """broadcast_from skips the sender; every other subscriber, here and elsewhere, gets it."""
        sender_got: list[Any] = []
        sender = CallbackSubscriber(sender_got.append)
        self.a.pubsub.subscribe("room", sender)
        self.a.pubsub.broadcast_from(sender, "room", "msg", {"n": 1})
        yield self.settle(self.a)
        self.assertEqual(sender_got, [])
        for n in self.nodes:
            self.assertEqual(self.received(n), [("msg", {"n": 1})], n.name)

    @defer.inlineCallbacks
    def test_local_broadcast(self) -> None:
        """local_broadcast reaches this node's subscribers only."""
        self.b.pubsub.local_broadcast("room", "msg", {"n": 1})
        yield self.settle(self.b)
        self.assertEqual(self.received(self.b), [("msg", {"n": 1})])
        self.assertEqual(self.received(self.a), [])
        self.assertEqual(self.received(self.c), [])

    @defer.inlineCallbacks
    def test_direct_broadcast(self) -> None:
        """direct_broadcast reaches the named node only (this one included); unknown nodes are False."""
        self.assertTrue(self.a.pubsub.direct_broadcast(self.c.name, "room", "msg", {"to": "c"}))
        self.assertTrue(self.a.pubsub.direct_broadcast(self.a.name, "room", "msg", {"to": "a"}))
        self.assertFalse(self.a.pubsub.direct_broadcast(host("nobody"), "room", "msg", {"to": "x"}))
        self.assertTrue(self.logs.find("Direct broadcast to nobody@127.0.0.1 dropped: not connected", LogLevel.warn))
        yield self.settle(self.a)
        self.assertEqual(self.received(self.c), [("msg", {"to": "c"})])
        self.assertEqual(self.received(self.a), [("msg", {"to": "a"})])
        self.assertEqual(self.received(self.b), [])

    @defer.inlineCallbacks
    def test_large_payload(self) -> None:
        """A 1.5 MB payload (over Banana's 640 KiB string limit) crosses intact."""
        big = {"text": "x" * 1_500_000, "list": list(range(1000))}
        self.c.pubsub.broadcast("room", "big", big)
        yield self.settle(self.c)
        for n in self.nodes:
            self.assertEqual(self.received(n), [("big", big)])

    @defer.inlineCallbacks
    def test_binary_payload(self) -> None:
        """Binary payloads, small and 1.5 MB, cross as the same bytes."""
        small = bytes(range(256))
        large = bytes(range(256)) * 6000
        self.a.pubsub.broadcast("room", "bin", small)
        self.a.pubsub.broadcast("room", "bin", large)
        self.a.pubsub.broadcast("room", "bin", b"")
        yield self.settle(self.a)
        for n in self.nodes:
            self.assertEqual(self.received(n), [("bin", small), ("bin", large), ("bin", b"")])

    @defer.inlineCallbacks
    def test_unicode_payload(self) -> None:
        """Text payloads keep their characters and types."""
        payload = {"text": "héllo ✓ 😀", "n": 1.5, "ok": True, "none": None, "nested": {"l": [1, "2"]}}
        self.b.pubsub.broadcast("room", "msg", payload)
        yield self.settle(self.b)
        self.assertEqual(self.received(self.a), [("msg", payload)])

    @defer.inlineCallbacks
    def test_burst(self) -> None:
        """A burst of broadcasts sent in one go (2 MB, far over Twisted's 64 KiB buffer) all arrive."""
        for i in range(100):
            self.a.pubsub.broadcast("room", "msg", {"n": i, "pad": "p" * 20_000})
        yield self.settle(self.a)
        for n in (self.b, self.c):
            self.assertEqual([p["n"] for _, p in self.received(n)], list(range(100)))
        self.assertEqual([link.dropped for link in self.a.links.values()], [0, 0])


class SecurityTests(ClusterTestCase):
    """The cookie, the shape of calls, TLS."""

    @defer.inlineCallbacks
    def test_wrong_cookie(self) -> None:
        """A node with another cookie is refused: connect is False and both sides log an error."""
        a = yield self.node("a")
        # Another cluster: its own port mapper (two cookies cannot share one).
        b = yield self.node("b", cookie="another cookie", mapper_port=free_port())
        self.assertIs((yield a.connect(f"{b.name}={self.address_of(b)}")), False)
        self.assertTrue(self.logs.find("Refused node a@127.0.0.1 from", LogLevel.error))
        self.assertTrue(self.logs.find("wrong cookie", LogLevel.error))
        self.assertTrue(self.logs.find("Cannot connect to node b@127.0.0.1", LogLevel.error))
        self.assertIs((yield b.connect(f"{a.name}={self.address_of(a)}")), False)
        self.assertTrue(self.logs.find("Refused node b@127.0.0.1 from", LogLevel.error))
        self.assertEqual((a.list(), b.list()), ([], []))

    @defer.inlineCallbacks
    def test_impostor(self) -> None:
        """A node that lets anyone in but does not know the cookie is refused by the one connecting."""

        class AnyCookie(CookieChecker):
            def requestAvatarId(self, credentials: Any) -> Any:
                return defer.succeed(credentials.username)

        a = yield self.node("a")
        self.patch(node_module, "CookieChecker", AnyCookie)
        impostor = yield self.node("b", cookie="not the cookie", mapper_port=free_port())
        self.assertIs((yield a.connect(f"{impostor.name}={self.address_of(impostor)}")), False)
        self.assertTrue(self.logs.find("it is not b@127.0.0.1 or does not know the cookie", LogLevel.error))
        self.assertEqual(a.list(), [])
        # Poll (bounded): the impostor sees the link go a moment later.
        yield wait_until(reactor, lambda: impostor.list() == [], TIMEOUT, what="impostor dropped")

    @defer.inlineCallbacks
    def raw_login(self, node: Node, name: str, cookie: str = COOKIE) -> Any:
        """Log in to ``node`` with a bare PB client; fires with its perspective."""

        class Mind(pb.Referenceable):
            def remote_ping(self) -> bool:
                return True

            def remote_peer_up(self, *args: Any) -> None:
                return None

        factory = pb.PBClientFactory()
        factory.noisy = False
        port = node._listening.getHost().port
        if node.tls is not None:
            options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
            endpoint: Any = SSL4ClientEndpoint(reactor, "127.0.0.1", port, options)
        else:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        broker = yield endpoint.connect(factory)
        lost: defer.Deferred[None] = defer.Deferred()
        broker.notifyOnDisconnect(lambda: lost.called or lost.callback(None))

        def disconnect() -> defer.Deferred[None]:
            if not lost.called:
                broker.transport.abortConnection()
            return lost.addTimeout(TIMEOUT, reactor)

        self.addCleanup(disconnect)
        yield factory.getRootObject()
        binding = channel_binding(broker.transport)
        secret = login_secret(cookie, binding, name)
        perspective = yield factory.login(UsernamePassword(name.encode(), secret), client=Mind())
        perspective.lost = lost
        perspective.binding = binding
        return perspective

    @defer.inlineCallbacks
    def assertRefused(self, perspective: Any, method: str, *args: Any) -> Any:
        """The call fails with the node's RejectedCall."""
        with self.assertRaises(pb.RemoteError, msg=method) as caught:
            yield perspective.callRemote(method, *args).addTimeout(TIMEOUT, reactor)
        remote_type = caught.exception.remoteType
        if isinstance(remote_type, bytes):
            remote_type = remote_type.decode()
        self.assertEqual(remote_type, "twisted_phoenix.cluster.link.RejectedCall")

    @defer.inlineCallbacks
    def test_bad_calls_before_hello(self) -> None:
        """A logged-in peer's calls of the wrong shape get an error back, are logged, and break nothing."""
        a = yield self.node("a")
        b = yield self.node("b")
        raw = yield self.raw_login(a, host("raw"))
        for method, args in [
            ("broadcast", (1, 2, 3, 4)),
            ("broadcast", ("room", "msg", [b"{}"], False)),  # before hello
            ("hello", ({"name": object()},)),
            ("hello", (pb.Referenceable(),)),
            ("eval", ("__import__('os')",)),
            ("peer_up", ("x@127.0.0.1",)),
            ("hello", ({1: 2},)),
        ]:
            yield self.assertRefused(raw, method, *args)
        self.assertEqual(len(self.logs.find("Rejected a call from node raw@127.0.0.1", LogLevel.error)), 7)
        self.assertEqual(a.list(), [])
        # The node works as before.
        self.assertTrue((yield b.connect(a.name)))
        got = Collector(reactor, a.pubsub, "room")
        b.pubsub.broadcast("room", "msg", {"ok": 1})
        self.assertEqual([x.payload for x in (yield got.wait_for(1, TIMEOUT))], [{"ok": 1}])

    @defer.inlineCallbacks
    def test_bad_hello(self) -> None:
        """A hello that names another node, or this one, is refused and the connection dropped."""
        a = yield self.node("a")
        raw = yield self.raw_login(a, host("raw"))
        with self.assertRaises(pb.PBConnectionLost):
            yield raw.callRemote("hello", {"name": host("someone-else"), "nonce": "n"}).addTimeout(TIMEOUT, reactor)
        yield raw.lost.addTimeout(TIMEOUT, reactor)
        self.assertTrue(self.logs.find("Refused node raw@127.0.0.1: bad hello", LogLevel.error))
        # Nor may a peer claim to be the node itself.
        with self.assertRaises(pb.RemoteError):
            yield self.raw_login(a, a.name)
        self.assertTrue(self.logs.find("logged in with this node's own name, a@127.0.0.1", LogLevel.error))
        self.assertEqual(a.list(), [])
        self.assertEqual(a.list(), [])

    @defer.inlineCallbacks
    def test_bad_calls_after_hello(self) -> None:
        """A linked peer's malformed broadcasts are refused and logged; the node keeps working."""
        a = yield self.node("a")
        raw = yield self.raw_login(a, host("raw"))
        answer = yield raw.callRemote("hello", {"name": host("raw"), "nonce": "n"})
        self.assertEqual(answer["name"], a.name)
        self.assertEqual(answer["proof"], proof(COOKIE, "n", a.name, raw.binding))
        self.assertEqual(a.list(), [host("raw")])
        yield self.assertRefused(raw, "hello", {"name": host("raw"), "nonce": "again"})
        got = Collector(reactor, a.pubsub, "room")
        yield self.assertRefused(raw, "broadcast", "room", "msg", ["not bytes"], False)
        yield self.assertRefused(raw, "broadcast", "room", "msg", [b"not json"], False)
        yield self.assertRefused(raw, "broadcast", "room", "msg", [b"[1, 2]"], False)
        yield self.assertRefused(raw, "broadcast", "room", "msg", [b"{}"], False, "extra")
        self.assertEqual(len(self.logs.find("Rejected a broadcast from node raw@127.0.0.1", LogLevel.error)), 3)
        self.assertIsNone((yield raw.callRemote("peer_up", "not a node name", None)))
        self.assertIsNone((yield raw.callRemote("broadcast", "room", "msg", [b'{"fine"', b": 1}"], False)))
        self.assertEqual(got.payloads(), [("msg", {"fine": 1})])
        self.assertEqual(a.list(), [host("raw")])

    @defer.inlineCallbacks
    def test_tls(self) -> None:
        """Nodes with certificates from the cluster's CA link over TLS and broadcast."""
        pki = ClusterPKI(self.mktemp_dir())
        a = yield self.node("a", tls=pki.tls("a"))
        b = yield self.node("b", tls=pki.tls("b"))
        self.assertTrue((yield a.connect(b.name)))
        for n, peer in ((a, b), (b, a)):
            transport = self.connection_of(n.links[peer.name])
            self.assertTrue(ISSLTransport.providedBy(transport), transport)
            self.assertIsNotNone(transport.getPeerCertificate())
        got = Collector(reactor, b.pubsub, "room")
        a.pubsub.broadcast("room", "msg", {"big": "x" * 1_000_000})
        self.assertEqual(len((yield got.wait_for(1, TIMEOUT))[0].payload["big"]), 1_000_000)

    @defer.inlineCallbacks
    def test_tls_other_ca(self) -> None:
        """A node whose certificate another CA signed is refused, both ways; so are a self-signed and a plaintext node."""
        directory = self.mktemp_dir()
        pki = ClusterPKI(directory)
        rogue_pki = ClusterPKI(directory, name="Rogue CA")
        a = yield self.node("a", tls=pki.tls("a"))
        rogue = yield self.node("rogue", tls=rogue_pki.tls("rogue"))
        self.assertIs((yield rogue.connect(a.name)), False)
        self.assertIs((yield a.connect(rogue.name)), False)
        # Its own certificate from another CA, but trusting ours.
        from twisted_phoenix.cluster import ClusterTLS

        cert, key = rogue_pki.issue("sly")
        sly = yield self.node("sly", tls=ClusterTLS.from_files(cert, key, pki.ca_path))
        self.assertIs((yield sly.connect(a.name)), False)
        # A node with its own self-signed certificate, and a plaintext node.
        self.patch(node_module, "CONNECT_TIMEOUT", 1.0)
        own = yield self.node("own")
        self.assertIs((yield own.connect(a.name)), False)
        plain = yield self.node("plain", plaintext=True)
        self.assertIs((yield plain.connect(a.name)), False)
        self.assertEqual(len(self.logs.find("Cannot connect to node", LogLevel.warn)), 5)
        # Poll (bounded): a sees the failed handshakes' connections go.
        yield wait_until(reactor, lambda: not a._connections.brokers, TIMEOUT, what="no connection left on a")
        self.assertEqual((a.list(), rogue.list(), sly.list(), own.list(), plain.list()), ([], [], [], [], []))

    def mktemp_dir(self) -> str:
        directory = tempfile.mkdtemp(prefix="cluster-pki-")
        import shutil

        self.addCleanup(shutil.rmtree, directory, True)
        return directory


class FailureTests(ClusterTestCase):
    """Partitions, congestion, restarts."""

    @defer.inlineCallbacks
    def test_partition(self) -> None:
        """A link that stops carrying anything is dropped by both sides within timeout + interval, then relinked."""
        interval, timeout = 0.2, 0.6
        a, b = yield self.mesh("a", "b", heartbeat_interval=interval, heartbeat_timeout=timeout)
        old_a, old_b = a.links[b.name], b.links[a.name]
        # Partition: neither end reads from this connection any more (nothing is closed).
        started = reactor.seconds()
        self.connection_of(old_a).pauseProducing()
        self.connection_of(old_b).pauseProducing()
        yield defer.gatherResults([
            self.logs.wait_for("Node b@127.0.0.1 is down (link from a@127.0.0.1 lost)", TIMEOUT),
            self.logs.wait_for("Node a@127.0.0.1 is down (link from b@127.0.0.1 lost)", TIMEOUT),
        ])
        elapsed = reactor.seconds() - started
        self.assertTrue(old_a.closed and old_b.closed)
        # Dropped at the first beat after `timeout` of silence (slack for a busy machine).
        self.assertLess(elapsed, timeout + interval + 1.0)
        self.assertTrue(self.logs.find("silent for", LogLevel.warn))
        # Heals: the dropped link was aborted, so they relink on a new connection.
        yield self.wait_mesh(a, b)
        self.assertIsNot(a.links[b.name], old_a)
        self.assertIsNot(b.links[a.name], old_b)
        got = Collector(reactor, b.pubsub, "room")
        yield wait_interest(reactor, [a, b], "room", TIMEOUT)
        a.pubsub.broadcast("room", "msg", {"after": "partition"})
        self.assertEqual((yield got.wait_for(1, TIMEOUT))[0].payload, {"after": "partition"})

    @defer.inlineCallbacks
    def test_paused_link_drops(self) -> None:
        """A congested link (its producer paused) drops and counts broadcasts rather than buffer them."""
        a, b = yield self.mesh("a", "b")
        link = a.links[b.name]
        transport = self.connection_of(link)
        got = Collector(reactor, b.pubsub, "room")
        link.buffer_limit = 0
        link.pauseProducing()
        buffered = _buffered(transport)
        for i in range(10):
            a.pubsub.broadcast("room", "msg", {"n": i})
        self.assertEqual(link.dropped, 10)
        self.assertEqual(_buffered(transport), buffered)
        link.resumeProducing()
        a.pubsub.broadcast("room", "msg", {"n": "after"})
        self.assertEqual([b.payload for b in (yield got.wait_for(1, TIMEOUT))], [{"n": "after"}])
        yield self.logs.wait_for("Dropped 10 broadcasts to b@127.0.0.1: the link is congested", TIMEOUT)

    @defer.inlineCallbacks
    def test_congested_link_bounded(self) -> None:
        """A peer that stops reading: the sender's buffer stays bounded, the excess is dropped and counted."""
        a, b = yield self.mesh("a", "b", heartbeat_timeout=60.0)
        link = a.links[b.name]
        link.buffer_limit = 1024 * 1024
        transport = self.connection_of(link)
        got = Collector(reactor, b.pubsub, "room")
        yield wait_interest(reactor, [a, b], "room", TIMEOUT)
        self.connection_of(b.links[a.name]).pauseProducing()  # b stops reading
        size = 200_000
        sent = 0
        most = 0
        # Broadcast a turn at a time (so that Twisted flushes what the kernel
        # takes) until the link drops, within a bounded number of turns.
        while link.dropped < 5 and sent < 500:
            a.pubsub.broadcast("room", "msg", {"n": sent, "pad": "p" * size})
            sent += 1
            most = max(most, _buffered(transport))
            yield deferLater(reactor, 0, lambda: None)
        self.assertGreaterEqual(link.dropped, 5, f"no drop after {sent} broadcasts")
        self.assertLessEqual(most, 64 * 1024 + link.buffer_limit + 2 * size)
        self.connection_of(b.links[a.name]).resumeProducing()
        # Twisted resumes the link once its buffer has drained: poll, bounded.
        yield wait_until(reactor, lambda: not link.paused, TIMEOUT, what="link resumed")
        a.pubsub.broadcast("room", "msg", {"n": "last"})
        delivered = sent - link.dropped
        received = yield got.wait_for(delivered + 1, TIMEOUT)
        numbers = [b.payload["n"] for b in received]
        self.assertEqual(numbers[-1], "last")
        self.assertEqual(len(numbers), delivered + 1)
        self.assertEqual(numbers[:-1], sorted(numbers[:-1]))

    @defer.inlineCallbacks
    def test_relink_after_crash(self) -> None:
        """A node that crashes is seen down; restarted (a new incarnation), the others relink it by themselves."""
        a, b, c = yield self.mesh("a", "b", "c")
        old_incarnation = b.incarnation
        yield self.crash(b)
        yield defer.gatherResults([
            self.logs.wait_for("Node b@127.0.0.1 is down (link from a@127.0.0.1 lost)", TIMEOUT),
            self.logs.wait_for("Node b@127.0.0.1 is down (link from c@127.0.0.1 lost)", TIMEOUT),
        ])
        self.assertEqual((a.list(), c.list()), ([c.name], [a.name]))
        b2 = yield self.node("b")
        self.assertNotEqual(b2.incarnation, old_incarnation)
        yield self.wait_mesh(a, b2, c)
        self.assertEqual(a.links[b2.name].info["incarnation"], b2.incarnation)
        got = Collector(reactor, b2.pubsub, "room")
        back = Collector(reactor, a.pubsub, "room")
        yield wait_interest(reactor, [a, b2, c], "room", TIMEOUT)
        a.pubsub.broadcast("room", "msg", {"to": "b2"})
        b2.pubsub.broadcast("room", "msg", {"from": "b2"})
        # b2 dispatches its own broadcast at once, a's when it arrives.
        self.assertEqual([x.payload for x in (yield got.wait_for(2, TIMEOUT))], [{"from": "b2"}, {"to": "b2"}])
        self.assertEqual([x.payload for x in (yield back.wait_for(2, TIMEOUT))], [{"to": "b2"}, {"from": "b2"}])

    @defer.inlineCallbacks
    def test_restart_after_stop(self) -> None:
        """A node that left cleanly and starts again (a new incarnation) links when it connects."""
        a, b = yield self.mesh("a", "b")
        yield b.stop()
        yield self.logs.wait_for("Node b@127.0.0.1 left", TIMEOUT)
        b2 = yield self.node("b", connect=[a.name])
        yield self.wait_mesh(a, b2)
        self.assertEqual(a.links[b2.name].info["incarnation"], b2.incarnation)

    @defer.inlineCallbacks
    def test_stale_link_replaced(self) -> None:
        """A restarted node's new link replaces the old incarnation's link the other side still holds."""
        a, b = yield self.mesh("a", "b")
        stale = a.links[b.name]
        # The old b vanishes from the port mapper but its link lingers (no
        # goodbye, no reset): a does not know yet.
        b._stopping = True
        yield b.mapper.stop()
        yield b._listening.stopListening()
        b2 = yield self.node("b", connect=[a.name])
        yield self.wait_mesh(a, b2)
        self.assertTrue(stale.closed)
        self.assertEqual(a.links[b.name].info["incarnation"], b2.incarnation)
        # Poll (bounded): the old b sees its link go a moment later.
        yield wait_until(reactor, lambda: b.list() == [], TIMEOUT, what="old b unlinked")


class _SilentServer(Factory):
    """Accepts one TCP connection and never says a word."""

    noisy = False

    def __init__(self) -> None:
        self.connected: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:
        factory = self

        class Silent(Protocol):
            def connectionMade(self) -> None:
                factory.connected.callback(None)

            def connectionLost(self, reason: Any = None) -> None:
                factory.lost.callback(None)

        return Silent()


def _buffered(transport: Any) -> int:
    """Bytes waiting in a TCP transport's write buffer."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class TapClusterOptionsTests(TapOptionsMixin, SynchronousTestCase):
    """The cluster options of ``twistd phoenix``."""

    def test_cluster_options(self) -> None:
        """--name makes a node; --connect repeats; the numbers are parsed."""
        options = self.parse("--name", "a@127.0.0.1", "--cookie", "k", "--connect", "b@127.0.0.1",
                             "--connect", "c@h=10.0.0.1:9000", "--dist-port", "9100", "--epmd-port", "5000",
                             "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2")
        self.assertTrue(options["cluster"])
        self.assertEqual(options["connect"], ["b@127.0.0.1", "c@h=10.0.0.1:9000"])
        self.assertEqual((options["cookie"], options["dist-port"], options["epmd-port"]), ("k", 9100, 5000))
        self.assertEqual((options["heartbeat-interval"], options["heartbeat-timeout"]), (0.5, 2.0))
        self.assertIsNone(options["tls"])

    def test_environment(self) -> None:
        """PHOENIX_EPMD_PORT and PHOENIX_COOKIE are the defaults of --epmd-port and --cookie."""
        import os

        os.environ.update(PHOENIX_EPMD_PORT="5123", PHOENIX_COOKIE="from-env")
        options = self.parse("--name", "a@127.0.0.1")
        self.assertEqual((options["epmd-port"], options["cookie"]), (5123, "from-env"))

    def test_refused(self) -> None:
        """Bad names, heartbeats, ports, half the TLS files, or cluster options without --name are refused."""
        base = ("--cookie", "k")
        for argv in [
            ("--name", "nohost", *base),
            ("--name", "a@127.0.0.1", "--heartbeat-interval", "0", *base),
            ("--name", "a@127.0.0.1", "--heartbeat-interval", "-1", *base),
            ("--name", "a@127.0.0.1", "--heartbeat-interval", "3", "--heartbeat-timeout", "3", *base),
            ("--name", "a@127.0.0.1", "--heartbeat-timeout", "x", *base),
            ("--name", "a@127.0.0.1", "--dist-port", "70000", *base),
            ("--name", "a@127.0.0.1", "--epmd-port", "0", *base),
            ("--name", "a@127.0.0.1", "--dist-cert", "cert.pem", *base),
            ("--name", "a@127.0.0.1", "--dist-login-timeout", "0", *base),
            ("--name", "a@127.0.0.1", "--dist-login-timeout", "soon", *base),
            ("--name", "a@127.0.0.1", "--dist-max-pending", "0", *base),
            ("--name", "a@127.0.0.1", "--dist-plaintext", "--dist-cert", "c", "--dist-key", "k",
             "--dist-ca", "ca", *base),
            ("--connect", "b@127.0.0.1"),
            ("--no-http",),
        ]:
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_service(self) -> None:
        """The service runs a Node with the options, whose PubSub is the endpoint's."""
        from twisted_phoenix.tap import NodeService, makeService

        options = self.parse("--name", "a@127.0.0.1", "--cookie", "k", "--connect", "b@127.0.0.1",
                             "--epmd-port", "5000", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "2",
                             "--no-http")
        top = makeService(options)
        services = [s for s in top if isinstance(s, NodeService)]
        self.assertEqual(len(services), 1)
        node = services[0].node
        self.assertEqual((node.name, node.cookie, node.initial), ("a@127.0.0.1", "k", ["b@127.0.0.1"]))
        self.assertEqual((node.mapper.port, node.heartbeat_interval, node.heartbeat_timeout), (5000, 0.5, 2.0))
        self.assertIs(node.pubsub.adapter, node)
        self.assertEqual(node.pubsub.node_name, "a@127.0.0.1")
        self.assertFalse([s for s in top if type(s).__name__ == "ListeningService"])
        # The defaults: TLS links (a certificate made at start), 10 s to log in, 100 waiting.
        self.assertEqual((node.tls, node.plaintext), (None, False))
        self.assertEqual((node.login_timeout, node.max_pending), (10.0, 100))
        self.assertEqual((node.mapper.login_timeout, node.mapper.max_pending), (10.0, 100))

    def test_link_security_options(self) -> None:
        """--dist-plaintext, --dist-login-timeout and --dist-max-pending reach the Node and its port mapper."""
        from twisted_phoenix.tap import NodeService, makeService

        options = self.parse("--name", "a@127.0.0.1", "--cookie", "k", "--no-http", "--dist-plaintext",
                             "--dist-login-timeout", "2.5", "--dist-max-pending", "7")
        self.assertEqual((options["dist-plaintext"], options["dist-login-timeout"], options["dist-max-pending"]),
                         (True, 2.5, 7))
        node = [s for s in makeService(options) if isinstance(s, NodeService)][0].node
        self.assertEqual((node.plaintext, node.login_timeout, node.max_pending), (True, 2.5, 7))
        self.assertEqual((node.mapper.login_timeout, node.mapper.max_pending), (2.5, 7))
