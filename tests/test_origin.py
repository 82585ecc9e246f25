"""
Tests for L{twisted_phoenix.origin.origin_allowed}, Phoenix's
C{check_origin} (protocol notes section 8.1).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.origin import origin_allowed


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
