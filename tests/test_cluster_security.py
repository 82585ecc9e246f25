"""
Link security with nodes in this process, over real loopback: links are
TLS by default and their cookie proofs bound to the connection, so a relay
reads nothing (transparent) or cannot link (terminating TLS); plaintext only
when asked, and a plaintext node and a TLS node refuse each other, saying
why; a connection that does not log in is dropped, and only so many may wait.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import LogLevel

from twisted_phoenix.cluster import ClusterTLS
from twisted_phoenix.cluster import node as node_module
from twisted_phoenix.cluster.node import Node
from twisted_phoenix.pubsub import PubSub

from ._cluster import COOKIE, ClusterPKI, Collector, free_port
from ._faultproxy import FaultProxy
from .test_cluster import TIMEOUT, ClusterTestCase, host

#: A string that only the broadcasts of these tests carry.
MARKER = "c3f1-payload-marker-7a9e"


class DefaultTLSTests(ClusterTestCase):
    """Without certificates, links are TLS all the same."""

    @defer.inlineCallbacks
    def test_tls_by_default(self) -> None:
        """Two nodes with no certificates link over TLS 1.3, each with its own self-signed certificate."""
        a, b = yield self.mesh("a", "b")
        self.assertTrue(a.tls.self_signed and b.tls.self_signed)
        self.assertNotEqual(a.tls.certificate.digest(), b.tls.certificate.digest())
        for n, peer in ((a, b), (b, a)):
            transport = self.connection_of(n.links[peer.name])
            self.assertTrue(ISSLTransport.providedBy(transport), transport)
            self.assertEqual(transport.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertTrue(self.logs.find("listening for cluster links on 127.0.0.1:", LogLevel.info))
        self.assertTrue(self.logs.find("(TLS, self-signed certificate)", LogLevel.info))
        got = Collector(reactor, b.pubsub, "room")
        a.pubsub.broadcast("room", "msg", {"n": 1})
        self.assertEqual([x.payload for x in (yield got.wait_for(1, TIMEOUT))], [{"n": 1}])

    @defer.inlineCallbacks
    def test_plaintext(self) -> None:
        """plaintext=True links over bare TCP, and says so."""
        a, b = yield self.mesh("a", "b", plaintext=True)
        self.assertIsNone(a.tls)
        self.assertFalse(ISSLTransport.providedBy(self.connection_of(a.links[b.name])))
        self.assertTrue(self.logs.find("(plaintext)", LogLevel.info))

    def test_plaintext_and_certificates(self) -> None:
        """Asking for plaintext and giving certificates is an error."""
        with self.assertRaises(ValueError):
            Node(reactor, host("a"), cookie=COOKIE, pubsub=PubSub(), plaintext=True,
                 tls=ClusterTLS.generate("a"))

    @defer.inlineCallbacks
    def test_tls_node_meets_plaintext_node(self) -> None:
        """A TLS node and a plaintext node refuse each other, both ways, each saying why."""
        self.patch(node_module, "CONNECT_TIMEOUT", 1.0)
        secure = yield self.node("secure")
        plain = yield self.node("plain", plaintext=True)
        self.assertIs((yield secure.connect(plain.name)), False)
        self.assertTrue(self.logs.find("it speaks TLS to this node's plaintext link port (--dist-plaintext)",
                                       LogLevel.error))
        self.assertTrue(self.logs.find("the TLS handshake failed: is it a plaintext node (--dist-plaintext)?",
                                       LogLevel.error))
        self.assertIs((yield plain.connect(secure.name)), False)
        self.assertTrue(self.logs.find("no answer to a plaintext login: is it a TLS node?", LogLevel.error))
        self.assertEqual((secure.list(), plain.list()), ([], []))


class RelayTests(ClusterTestCase):
    """Something between two nodes (here, in this process; see test_cluster_attacks for a local attacker)."""

    @defer.inlineCallbacks
    def relay(self, target: Node, **options: Any) -> Any:
        proxy = FaultProxy(reactor, target._listening.getHost().port, **options)
        yield proxy.start()
        self.addCleanup(proxy.stop)
        return proxy

    @defer.inlineCallbacks
    def test_transparent_relay_reads_nothing(self) -> None:
        """A relay passing bytes along links the nodes, and sees no broadcast's payload: only ciphertext."""
        b = yield self.node("b")
        a = yield self.node("a", mapper_port=free_port())  # finds b only through the relay
        proxy = yield self.relay(b, capture=True)
        self.assertTrue((yield a.connect(f"{b.name}={proxy.address}")))
        got = Collector(reactor, b.pubsub, "room")
        a.pubsub.broadcast("room", "msg", {"secret": MARKER * 10})
        self.assertEqual((yield got.wait_for(1, TIMEOUT))[0].payload, {"secret": MARKER * 10})
        relayed = bytes(proxy.captured["to_server"]) + bytes(proxy.captured["to_client"])
        self.assertGreater(len(proxy.captured["to_server"]), len(MARKER) * 10)
        self.assertNotIn(MARKER.encode(), relayed)
        self.assertNotIn(COOKIE.encode(), relayed)
        self.assertNotIn(b"a@127.0.0.1", relayed)  # not even the names

    @defer.inlineCallbacks
    def test_terminating_relay_fails_the_proof(self) -> None:
        """A relay that terminates TLS on both sides cannot pass the cookie proof: no link, both sides say so."""
        b = yield self.node("b")
        a = yield self.node("a", mapper_port=free_port())
        proxy = yield self.relay(b, capture=True, terminate_tls=ClusterTLS.generate("relay"))
        self.assertIs((yield a.connect(f"{b.name}={proxy.address}")), False)
        self.assertTrue(self.logs.find("Refused node a@127.0.0.1 from", LogLevel.error))
        self.assertTrue(self.logs.find("or a relay between us: the proof is bound to this TLS connection",
                                       LogLevel.error))
        self.assertTrue(self.logs.find("Cannot connect to node b@127.0.0.1 at 127.0.0.1:", LogLevel.error))
        self.assertEqual((a.list(), b.list()), ([], []))
        a.pubsub.broadcast("room", "msg", {"secret": MARKER})
        plaintext = bytes(proxy.captured["to_server"]) + bytes(proxy.captured["to_client"])
        self.assertIn(b"a@127.0.0.1", plaintext)  # it did read the login...
        self.assertNotIn(MARKER.encode(), plaintext)  # ...and nothing else
        self.assertNotIn(COOKIE.encode(), plaintext)

    @defer.inlineCallbacks
    def test_terminating_relay_with_ca(self) -> None:
        """With certificates from a CA, a relay that terminates TLS does not get past the handshake."""
        directory = tempfile.mkdtemp(prefix="cluster-pki-")
        self.addCleanup(shutil.rmtree, directory, True)
        authority = ClusterPKI(directory)
        b = yield self.node("b", tls=authority.tls("b"))
        a = yield self.node("a", tls=authority.tls("a"), mapper_port=free_port())
        proxy = yield self.relay(b, capture=True, terminate_tls=ClusterTLS.generate("relay"))
        self.assertIs((yield a.connect(f"{b.name}={proxy.address}")), False)
        self.assertEqual(bytes(proxy.captured["to_server"]), b"")
        self.assertEqual((a.list(), b.list()), ([], []))
        # Twisted logs the relay's certificate having no subjectAltName on
        # its way to refusing it (its chain is not from the CA either).
        from service_identity.exceptions import CertificateError

        self.flushLoggedErrors(CertificateError)


class PendingConnectionTests(ClusterTestCase):
    """Connections to the link port that do not log in."""

    @defer.inlineCallbacks
    def idle_connections(self, port: int, count: int) -> Any:
        """``count`` TCP connections that say nothing; each one's ``lost`` fires when the node drops it."""
        connections = []
        for _ in range(count):
            protocol = _Idle()
            yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: protocol))
            self.addCleanup(protocol.close)
            connections.append(protocol)
        return connections

    @defer.inlineCallbacks
    def test_deadline_and_cap(self) -> None:
        """
        Past max_pending silent connections, new ones are closed at once; the
        others after login_timeout; real nodes link all along.
        """
        a = yield self.node("a", login_timeout=1.0, max_pending=3)
        b = yield self.node("b")
        port = a._listening.getHost().port
        started = reactor.seconds()
        idle = yield self.idle_connections(port, 5)
        # The two past the cap go at once.
        yield defer.DeferredList([c.lost for c in idle[3:]]).addTimeout(TIMEOUT, reactor)
        self.assertLess(reactor.seconds() - started, 0.9)
        self.assertFalse([c for c in idle[:3] if c.lost.called])
        self.assertTrue(self.logs.find("connections are already waiting to log in (--dist-max-pending)",
                                       LogLevel.warn))
        # While three wait, a node cannot get in either (the cap is the cap) ...
        self.assertEqual(len(a._server_factory.pending), 3)
        # ... until they are dropped at their deadline.
        yield defer.DeferredList([c.lost for c in idle[:3]]).addTimeout(TIMEOUT, reactor)
        self.assertGreaterEqual(reactor.seconds() - started, 0.9)
        self.assertTrue(self.logs.find("before login: no login within 1 s", LogLevel.warn))
        self.assertTrue((yield b.connect(a.name)))
        self.assertEqual(a.list(), [b.name])
        self.assertEqual(a._server_factory.pending, set())


class _Idle(Protocol):
    """A connection that says nothing."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def close(self) -> defer.Deferred[None]:
        if not self.lost.called:
            self.transport.abortConnection()
        return self.lost

