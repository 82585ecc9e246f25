"""
Tests for L{twisted_phoenix.origin.origin_allowed}, Phoenix's
C{check_origin} (protocol notes section 8.1).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix import Endpoint
from twisted_phoenix.examples.hello_sockets import UserSocket
from twisted_phoenix.origin import DEV_HOSTS, origin_allowed

from ._client import HandshakeRefused, capture_logs, connect, serve


class OriginAllowedTests(SynchronousTestCase):
    """
    Tests for L{origin_allowed}.
    """

    def test_noOriginHeader(self) -> None:
        """A request without an Origin header is never checked."""
        for setting in (True, ["//example.com"], lambda origin: False):
            self.assertTrue(origin_allowed(None, setting, "example.com"))

    def test_false(self) -> None:
        """False allows every origin, even null."""
        self.assertTrue(origin_allowed("https://evil.com", False, "example.com"))
        self.assertTrue(origin_allowed("null", False, "example.com"))

    def test_true(self) -> None:
        """True compares only the host with the endpoint's host, any scheme or port."""
        self.assertTrue(origin_allowed("https://example.com", True, "example.com"))
        self.assertTrue(origin_allowed("http://example.com:4000", True, "example.com"))
        self.assertTrue(origin_allowed("http://EXAMPLE.com", True, "Example.COM"))
        self.assertFalse(origin_allowed("https://example.org", True, "example.com"))
        self.assertFalse(origin_allowed("https://sub.example.com", True, "example.com"))

    def test_anySchemeAndPort(self) -> None:
        """A "//host" entry accepts that host with any scheme and port."""
        allowed = ["//example.com"]
        self.assertTrue(origin_allowed("https://example.com", allowed, "x"))
        self.assertTrue(origin_allowed("http://example.com:8080", allowed, "x"))
        self.assertFalse(origin_allowed("http://notallowed.com", allowed, "x"))
        self.assertFalse(origin_allowed("http://sub.example.com", allowed, "x"))

    def test_wildcard(self) -> None:
        """A "//*.host" entry accepts the host itself and any subdomain, not look-alikes."""
        allowed = ["//*.example.com"]
        self.assertTrue(origin_allowed("https://example.com", allowed, "x"))
        self.assertTrue(origin_allowed("https://a.example.com", allowed, "x"))
        self.assertTrue(origin_allowed("https://a.b.example.com:444", allowed, "x"))
        self.assertFalse(origin_allowed("https://badexample.com", allowed, "x"))
        self.assertFalse(origin_allowed("https://example.com.evil.org", allowed, "x"))

    def test_schemeImpliesPort(self) -> None:
        """"https://h" requires https and implies port 443."""
        allowed = ["https://example.com"]
        self.assertTrue(origin_allowed("https://example.com", allowed, "x"))
        self.assertTrue(origin_allowed("https://example.com:443", allowed, "x"))
        self.assertFalse(origin_allowed("https://example.com:8443", allowed, "x"))
        self.assertFalse(origin_allowed("http://example.com", allowed, "x"))
        self.assertFalse(origin_allowed("http://example.com:443", allowed, "x"))

    def test_httpImpliesPort80(self) -> None:
        """"http://h" implies port 80."""
        allowed = ["http://example.com"]
        self.assertTrue(origin_allowed("http://example.com:80", allowed, "x"))
        self.assertFalse(origin_allowed("http://example.com:4000", allowed, "x"))

    def test_explicitPort(self) -> None:
        """A port given without a scheme is compared; the scheme is not."""
        allowed = ["//localhost:4000"]
        self.assertTrue(origin_allowed("http://localhost:4000", allowed, "x"))
        self.assertTrue(origin_allowed("https://localhost:4000", allowed, "x"))
        self.assertFalse(origin_allowed("http://localhost:4001", allowed, "x"))
        self.assertFalse(origin_allowed("http://localhost", allowed, "x"))

    def test_anyEntry(self) -> None:
        """An origin matching any entry of the list is allowed."""
        allowed = ["//a.com", "https://b.com", "//*.c.com"]
        for origin in ("http://a.com", "https://b.com", "http://x.c.com"):
            self.assertTrue(origin_allowed(origin, allowed, "x"), origin)
        self.assertFalse(origin_allowed("http://b.com", allowed, "x"))
        self.assertFalse(origin_allowed("http://a.com", [], "x"))

    def test_callable(self) -> None:
        """A callable decides, receiving the origin string, even "null"."""
        seen: list[str] = []

        def check(origin: str) -> bool:
            seen.append(origin)
            return origin.endswith(".test")

        self.assertTrue(origin_allowed("https://app.test", check, "x"))
        self.assertFalse(origin_allowed("null", check, "x"))
        self.assertEqual(seen, ["https://app.test", "null"])

    def test_nullOrigin(self) -> None:
        """An origin without a host ("null") is refused by True and by lists."""
        self.assertFalse(origin_allowed("null", True, "localhost"))
        self.assertFalse(origin_allowed("null", ["//localhost"], "localhost"))
        self.assertFalse(origin_allowed("file://", ["//*.localhost"], "localhost"))

    def test_malformedPort(self) -> None:
        """An origin whose port does not parse never matches an entry that compares ports."""
        self.assertFalse(origin_allowed("http://example.com:99999", ["http://example.com"], "x"))


class DevOriginTests(SynchronousTestCase):
    """
    C{check_origin = True} in the C{dev} environment.
    """

    def test_localOriginsAnyPort(self) -> None:
        """In dev, True also accepts localhost, 127.0.0.1 and [::1], on any port and scheme."""
        self.assertEqual(DEV_HOSTS, {"localhost", "127.0.0.1", "::1"})
        for origin in ("http://localhost:4000", "http://127.0.0.1:4001", "http://[::1]:8080",
                       "https://LOCALHOST", "http://127.0.0.1"):
            self.assertTrue(origin_allowed(origin, True, "example.com", dev=True), origin)
            self.assertFalse(origin_allowed(origin, True, "example.com"), origin)

    def test_hostStillAccepted(self) -> None:
        """In dev, the endpoint's host is accepted as before."""
        self.assertTrue(origin_allowed("https://example.com", True, "example.com", dev=True))
        self.assertTrue(origin_allowed("http://[::1]:1", True, "[::1]"))

    def test_othersRefused(self) -> None:
        """In dev, other hosts, look-alikes and null are still refused."""
        for origin in ("http://evil.com", "http://localhost.evil.com", "http://127.0.0.2:4000",
                       "http://evil.com:4000@x", "null", "file://"):
            self.assertFalse(origin_allowed(origin, True, "example.com", dev=True), origin)

    def test_onlyForTrue(self) -> None:
        """Lists and functions are what they say in dev too."""
        self.assertFalse(origin_allowed("http://localhost:4000", ["//example.com"], "x", dev=True))
        self.assertFalse(origin_allowed("http://localhost:4000", lambda origin: False, "x", dev=True))


class OriginEndpoint(Endpoint):
    sockets = {"/socket": UserSocket}
    host = "example.com"


class EnvironmentHandshakeTests(TestCase):
    """
    C{Endpoint.env} and C{Endpoint.host} over real WebSocket handshakes.
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)

    def serve(self, **attributes: Any) -> int:
        endpoint = OriginEndpoint(reactor)
        for name, value in attributes.items():
            setattr(endpoint, name, value)
        return serve(self, endpoint).port

    @defer.inlineCallbacks
    def assertConnects(self, port: int, origin: str) -> Any:
        client = yield connect(reactor, port, origin=origin, test=self)
        reply = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(reply[4]["status"], "ok", origin)

    @defer.inlineCallbacks
    def assertRefused(self, port: int, origin: str) -> Any:
        failure = yield self.assertFailure(connect(reactor, port, origin=origin, test=self), HandshakeRefused)
        self.assertEqual(failure.status, 403, origin)

    def test_defaultIsProd(self) -> None:
        """An endpoint made by one's own code is in prod: the dev origins are not added."""
        self.assertEqual(Endpoint.env, "prod")

    @defer.inlineCallbacks
    def test_dev(self) -> None:
        """In dev, pages from 127.0.0.1 and localhost on any port connect, and from the host; others get 403."""
        port = self.serve(env="dev")
        for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000", "http://[::1]:4000",
                       "https://example.com"):
            yield self.assertConnects(port, origin)
        for origin in ("http://evil.example", "null"):
            yield self.assertRefused(port, origin)

    @defer.inlineCallbacks
    def test_prod(self) -> None:
        """In prod, only the host's pages connect."""
        port = self.serve(env="prod")
        yield self.assertConnects(port, "https://example.com:8443")
        for origin in ("http://127.0.0.1:4000", "http://localhost:4000", "null"):
            yield self.assertRefused(port, origin)

    @defer.inlineCallbacks
    def test_nullOrigin(self) -> None:
        """Origin: null is judged by check_origin: 403 with True, accepted with False, as in Phoenix."""
        yield self.assertRefused(self.serve(env="dev"), "null")
        yield self.assertConnects(self.serve(check_origin=False), "null")
        seen: list[str] = []
        port = self.serve(check_origin=lambda origin: seen.append(origin) or False)
        yield self.assertRefused(port, "null")
        self.assertEqual(seen, ["null"])

    @defer.inlineCallbacks
    def test_host(self) -> None:
        """Setting the host (as --host does) changes which pages connect in prod."""
        port = self.serve(env="prod", host="127.0.0.1")
        yield self.assertConnects(port, "http://127.0.0.1:4000")
        yield self.assertRefused(port, "https://example.com")
