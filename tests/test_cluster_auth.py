"""
Tests for :mod:`twisted_phoenix.cluster.auth` (the proofs of the cookie)
and :mod:`twisted_phoenix.cluster.tls` (self-signed certificates, the
channel binding), in memory.
"""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet import ssl
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.cluster.auth import (
    hello_proof,
    line_mac,
    login_secret,
    mapper_proof,
    mapper_session_key,
    new_nonce,
    same,
)
from twisted_phoenix.cluster.tls import ClusterTLS, channel_binding

from ._cluster import ClusterPKI


class ProofTests(SynchronousTestCase):
    """Every proof depends on all it covers, and no proof can pass for another."""

    def test_login_secret(self) -> None:
        """The login secret depends on the cookie, the channel binding and the name."""
        base = login_secret("cookie", b"binding", "a@h")
        self.assertEqual(len(base), 64)
        for other in (login_secret("cookie2", b"binding", "a@h"), login_secret("cookie", b"other", "a@h"),
                      login_secret("cookie", b"", "a@h"), login_secret("cookie", b"binding", "b@h")):
            self.assertNotEqual(other, base)
        self.assertNotIn(b"cookie", base)

    def test_hello_proof(self) -> None:
        """The hello proof depends on the cookie, the nonce, the name and the binding."""
        base = hello_proof("cookie", "nonce", "a@h", b"binding")
        for other in (hello_proof("cookie2", "nonce", "a@h", b"binding"),
                      hello_proof("cookie", "nonce2", "a@h", b"binding"),
                      hello_proof("cookie", "nonce", "b@h", b"binding"),
                      hello_proof("cookie", "nonce", "a@h", b"other")):
            self.assertNotEqual(other, base)

    def test_framing(self) -> None:
        """Moving bytes from one part to the next changes the proof (each part is length-prefixed)."""
        self.assertNotEqual(hello_proof("c", "ab", "c@h"), hello_proof("c", "a", "bc@h"))
        self.assertNotEqual(mapper_proof("c", "server", "ab", "c"), mapper_proof("c", "server", "a", "bc"))

    def test_labels(self) -> None:
        """One use's proof is never another's: login, hello, mapper server, mapper client, session key."""
        values = {
            login_secret("c", b"x", "y").decode(),
            hello_proof("c", "x", "y"),
            mapper_proof("c", "server", "x", "y"),
            mapper_proof("c", "client", "x", "y"),
            mapper_session_key("c", "x", "y").hex(),
        }
        self.assertEqual(len(values), 5)
        with self.assertRaises(ValueError):
            mapper_proof("c", "anyone", "x", "y")

    def test_line_mac(self) -> None:
        """A line's MAC covers its direction, its number and its text."""
        key = mapper_session_key("c", "x", "y")
        base = line_mac(key, "request", 0, "LOOKUP a")
        self.assertEqual(len(base), 32)
        for other in (line_mac(key, "answer", 0, "LOOKUP a"), line_mac(key, "request", 1, "LOOKUP a"),
                      line_mac(key, "request", 0, "LOOKUP b"),
                      line_mac(mapper_session_key("c", "x", "z"), "request", 0, "LOOKUP a")):
            self.assertNotEqual(other, base)

    def test_same(self) -> None:
        """Proofs compare equal only when they are: str or bytes; None or other types never."""
        self.assertTrue(same("abc", "abc"))
        self.assertTrue(same(b"abc", "abc"))
        self.assertFalse(same("abd", "abc"))
        self.assertFalse(same(None, "abc"))
        self.assertFalse(same(123, "abc"))  # type: ignore[arg-type]

    def test_nonces(self) -> None:
        """Nonces are 32 hex digits, fresh each time."""
        a, b = new_nonce(), new_nonce()
        self.assertEqual(len(a), 32)
        self.assertNotEqual(a, b)
        int(a, 16)


def tls_connection(server: ClusterTLS, client: ClusterTLS, hostname: str = "127.0.0.1") -> tuple[Any, Any, Any]:
    """A TLS connection in memory between ``server`` and ``client``: both ends' transports and the pump."""
    server_factory = TLSMemoryBIOFactory(server.server_options(), False, Factory.forProtocol(Protocol))
    client_factory = TLSMemoryBIOFactory(client.client_options(hostname), True, ClientFactory.forProtocol(Protocol))
    s = server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    c = client_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
    pump = iosim.connect(s, iosim.makeFakeServer(s), c, iosim.makeFakeClient(c), greet=False)
    return s, c, pump


class ChannelBindingTests(SynchronousTestCase):
    """The TLS channel binding the proofs cover."""

    def setUp(self) -> None:
        self.a = ClusterTLS.generate("a@127.0.0.1")
        self.b = ClusterTLS.generate("b@127.0.0.1")

    def test_same_both_ends(self) -> None:
        """Both ends of one TLS connection get the same 32 bytes."""
        s, c, pump = tls_connection(self.a, self.b)
        pump.flush()
        self.assertEqual(len(channel_binding(s)), 32)
        self.assertEqual(channel_binding(s), channel_binding(c))
        self.assertEqual(s.getHandle().get_protocol_version_name(), "TLSv1.3")

    def test_relay(self) -> None:
        """
        A relay that terminates TLS holds two connections with two bindings:
        a secret made on one does not log in on the other.
        """
        relay = ClusterTLS.generate("relay")
        s1, c1, pump1 = tls_connection(relay, self.b)  # the connecting node to the relay
        s2, c2, pump2 = tls_connection(self.a, relay)  # the relay to the accepting node
        pump1.flush()
        pump2.flush()
        self.assertNotEqual(channel_binding(c1), channel_binding(s2))
        self.assertNotEqual(login_secret("cookie", channel_binding(c1), "b@h"),
                            login_secret("cookie", channel_binding(s2), "b@h"))

    def test_per_connection(self) -> None:
        """Two connections between the same nodes get different bindings."""
        s1, c1, pump1 = tls_connection(self.a, self.b)
        s2, c2, pump2 = tls_connection(self.a, self.b)
        pump1.flush()
        pump2.flush()
        self.assertNotEqual(channel_binding(s1), channel_binding(s2))

    def test_plaintext(self) -> None:
        """A plaintext connection's binding is empty; so is no connection's."""
        self.assertEqual(channel_binding(StringTransport()), b"")
        self.assertEqual(channel_binding(None), b"")

    def test_before_handshake(self) -> None:
        """Before the handshake there is no binding: a ValueError, not an empty one."""
        s, c, pump = tls_connection(self.a, self.b)
        with self.assertRaises(ValueError):
            channel_binding(c)

    def test_with_ca(self) -> None:
        """Certificates from a CA give a binding too."""
        directory = tempfile.mkdtemp()
        import shutil

        self.addCleanup(shutil.rmtree, directory, True)
        pki = ClusterPKI(directory)
        s, c, pump = tls_connection(pki.tls("a"), pki.tls("b"))
        pump.flush()
        self.assertEqual(len(channel_binding(c)), 32)
        self.assertEqual(channel_binding(s), channel_binding(c))


class GeneratedCertificateTests(SynchronousTestCase):
    """The certificate a node makes itself when none is configured."""

    def test_generate(self) -> None:
        """A fresh EC P-256 key and self-signed certificate each time; no CA."""
        a = ClusterTLS.generate("a@127.0.0.1")
        again = ClusterTLS.generate("a@127.0.0.1")
        self.assertTrue(a.self_signed)
        self.assertIsNone(a.authority)
        self.assertEqual(a.certificate.getSubject().commonName, b"a@127.0.0.1")
        self.assertNotEqual(a.certificate.digest(), again.certificate.digest())
        key = a.certificate.privateKey.original
        self.assertEqual(getattr(key, "bits", lambda: None)(), 256)

    def test_tls13_only(self) -> None:
        """A client that offers at most TLS 1.2 cannot connect to a node."""
        a = ClusterTLS.generate("a@127.0.0.1")

        class OldClient:
            def client_options(self, hostname: str) -> Any:
                return ssl.CertificateOptions(lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2)

        s, c, pump = tls_connection(a, OldClient())  # type: ignore[arg-type]
        pump.flush()
        self.assertTrue(s.transport.disconnecting or s.transport.disconnected)
        self.assertTrue(c.transport.disconnecting or c.transport.disconnected)
        with self.assertRaises(ValueError):
            channel_binding(s)
