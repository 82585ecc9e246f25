"""
Tests for L{twisted_phoenix.transports.websocket.parse_params}: the query
string as C{connect} sees it (protocol notes sections 1.1 and 1.4).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.transports.websocket import parse_params


class ParseParamsTests(SynchronousTestCase):
    """
    Tests for L{parse_params}.
    """

    def test_plain(self) -> None:
        """Plain keys map to their string values, vsn included."""
        self.assertEqual(
            parse_params("token=abc&logging=enabled&vsn=2.0.0"),
            {"token": "abc", "logging": "enabled", "vsn": "2.0.0"},
        )

    def test_phoenixJSURL(self) -> None:
        """The query phoenix.js builds for {token, nested: {a: 1}} nests the object."""
        self.assertEqual(
            parse_params("token=abc&nested%5Ba%5D=1&vsn=2.0.0"),
            {"token": "abc", "nested": {"a": "1"}, "vsn": "2.0.0"},
        )

    def test_deepNesting(self) -> None:
        """a[b][c]=d nests twice, and siblings merge."""
        self.assertEqual(
            parse_params("a[b][c]=d&a[b][e]=f&a[g]=h"),
            {"a": {"b": {"c": "d", "e": "f"}, "g": "h"}},
        )

    def test_list(self) -> None:
        """a[]=x&a[]=y builds a list, in order."""
        self.assertEqual(parse_params("a[]=x&a[]=y"), {"a": ["x", "y"]})

    def test_blankValues(self) -> None:
        """Blank values are kept as empty strings."""
        self.assertEqual(parse_params("a=&b[c]=&vsn=2.0.0"), {"a": "", "b": {"c": ""}, "vsn": "2.0.0"})

    def test_repeatedKeyLastWins(self) -> None:
        """A repeated plain key keeps its last value."""
        self.assertEqual(parse_params("a=1&a=2"), {"a": "2"})

    def test_percentAndPlus(self) -> None:
        """Percent escapes and + are decoded."""
        self.assertEqual(parse_params("q=a+b%2Fc%C3%A9"), {"q": "a b/cé"})

    def test_empty(self) -> None:
        """An empty query gives no params."""
        self.assertEqual(parse_params(""), {})

    def test_vsnAsMap(self) -> None:
        """vsn[x]=1 makes vsn a map, which select_serializer then refuses."""
        self.assertEqual(parse_params("vsn[x]=1"), {"vsn": {"x": "1"}})

    def test_malformedBrackets(self) -> None:
        """Keys whose brackets do not close, or that start with one, stay plain."""
        self.assertEqual(parse_params("a[b=1&[c]=2"), {"a[b": "1", "[c]": "2"})
