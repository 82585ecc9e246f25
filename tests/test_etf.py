"""
Tests for L{twisted_phoenix._etf}.
"""

from __future__ import annotations

import struct

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._etf import (
    MAX_DEPTH,
    Atom,
    ETFError,
    binary_to_term,
    term_to_binary,
)


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


terms = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**2100), max_value=2**2100)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children)
    | st.lists(children).map(tuple)
    | st.dictionaries(st.text(), children),
    max_leaves=30,
)


class EncodeTests(SynchronousTestCase):
    """
    Tests for L{term_to_binary}.
    """

    def test_integers(self) -> None:
        """Integers use the smallest of Erlang's integer encodings."""
        self.assertEqual(term_to_binary(42), _h("83 61 2a"))
        self.assertEqual(term_to_binary(256), _h("83 62 00000100"))
        self.assertEqual(term_to_binary(-1), _h("83 62 ffffffff"))
        big = _h("83 6e 06 00 0068e5cf8b01")
        self.assertEqual(term_to_binary(1_700_000_000_000), big)
        self.assertEqual(term_to_binary(-(2**31) - 1), _h("83 6e 04 01 01000080"))
        self.assertEqual(term_to_binary(2**2048)[:7], _h("83 6f 00000101 00"))

    def test_atoms(self) -> None:
        """Atoms, booleans and None are UTF-8 atoms."""
        self.assertEqual(term_to_binary(True), _h("83 77 04") + b"true")
        self.assertEqual(term_to_binary(False), _h("83 77 05") + b"false")
        self.assertEqual(term_to_binary(None), _h("83 77 03") + b"nil")
        self.assertEqual(term_to_binary(Atom("ok")), _h("83 77 02") + b"ok")
        self.assertEqual(term_to_binary(Atom("é" * 200))[:4], _h("83 76 0190"))

    def test_binaries(self) -> None:
        """Strings are UTF-8 binaries, as Elixir strings are."""
        self.assertEqual(term_to_binary("hé"), _h("83 6d 00000003 68 c3a9"))
        self.assertEqual(term_to_binary(b"\xff"), _h("83 6d 00000001 ff"))

    def test_float(self) -> None:
        """Floats are NEW_FLOAT_EXT."""
        self.assertEqual(term_to_binary(1.5), _h("83 46") + struct.pack(">d", 1.5))

    def test_containers(self) -> None:
        """Tuples, lists and maps encode as Erlang does them."""
        self.assertEqual(term_to_binary(()), _h("83 68 00"))
        self.assertEqual(term_to_binary([]), _h("83 6a"))
        self.assertEqual(term_to_binary([1, 2]), _h("83 6b 0002 01 02"))
        self.assertEqual(term_to_binary([1000]), _h("83 6c 00000001 62 000003e8 6a"))
        self.assertEqual(term_to_binary((0,) * 256)[:6], _h("83 69 00000100"))

    def test_mapKeyOrder(self) -> None:
        """Small maps are written with their keys in Erlang term order."""
        value = {"b": 1, Atom("z"): 2, 2.0: 3, 1: 4, (1,): 5, "a": 6}
        expected = term_to_binary(1)[1:]  # 1 < 2.0 < :z < {1} < "a" < "b"
        self.assertEqual(
            term_to_binary(value),
            _h("83 74 00000006")
            + expected + _h("61 04")
            + term_to_binary(2.0)[1:] + _h("61 03")
            + term_to_binary(Atom("z"))[1:] + _h("61 02")
            + term_to_binary((1,))[1:] + _h("61 05")
            + term_to_binary("a")[1:] + _h("61 06")
            + term_to_binary("b")[1:] + _h("61 01"),
        )

    def test_unencodable(self) -> None:
        """Values Erlang cannot hold raise ETFError, unknown types TypeError."""
        for value in [float("nan"), float("inf"), "\ud800", Atom("a" * 256)]:
            self.assertRaises(ETFError, term_to_binary, value)
        self.assertRaises(TypeError, term_to_binary, object())
        self.assertRaises(TypeError, term_to_binary, {1, 2})


class DecodeTests(SynchronousTestCase):
    """
    Tests for L{binary_to_term}.
    """

    def test_everyAcceptedTag(self) -> None:
        """Each accepted encoding decodes to the documented Python value."""
        cases = [
            ("83 61 ff", 255),
            ("83 62 fffffffe", -2),
            ("83 6e 01 01 05", -5),
            ("83 6f 00000001 00 07", 7),
            ("83 46 3ff8000000000000", 1.5),
            ("83 64 0002 6f6b", Atom("ok")),
            ("83 73 04 74727565", True),
            ("83 76 0005 66616c7365", False),
            ("83 77 03 6e696c", None),
            ("83 64 0001 e9", Atom("é")),
            ("83 6b 0003 010203", [1, 2, 3]),
            ("83 6c 00000001 61 01 6a", [1]),
            ("83 68 02 61 01 6a", (1, [])),
            ("83 69 00000001 61 01", (1,)),
            ("83 74 00000001 77 01 61 61 02", {Atom("a"): 2}),
            ("83 6d 00000002 6869", "hi"),
            ("83 6d 00000001 ff", b"\xff"),
        ]
        for data, expected in cases:
            self.assertEqual(binary_to_term(_h(data)), expected, data)
            self.assertIs(type(binary_to_term(_h(data))), type(expected), data)

    def test_oldFloat(self) -> None:
        """FLOAT_EXT, the old printed float format, is accepted."""
        text = b"1.50000000000000000000e+00".ljust(31, b"\x00")
        self.assertEqual(binary_to_term(b"\x83c" + text), 1.5)
        infinity = b"\x83c" + b"inf".ljust(31, b"\x00")
        self.assertRaises(ETFError, binary_to_term, infinity)

    def test_atomsAreNotStrings(self) -> None:
        """An atom and a binary with the same text are distinct map keys."""
        value = {Atom("a"): 1, "a": 2}
        self.assertNotEqual(Atom("a"), "a")
        self.assertEqual(binary_to_term(term_to_binary(value)), value)
        self.assertEqual(repr(Atom("a")), "Atom('a')")

    def test_truncated(self) -> None:
        """Every proper prefix of a valid term is rejected."""
        data = term_to_binary({"k": [1, 1000, 2**70, (1.5, Atom("x"), "s")]})
        for end in range(len(data)):
            self.assertRaises(ETFError, binary_to_term, data[:end])

    def test_hugeLengths(self) -> None:
        """Declared lengths beyond the input are rejected before use."""
        for data in [
            "83 6d ffffffff",
            "83 6c ffffffff",
            "83 69 ffffffff",
            "83 74 ffffffff",
            "83 6f ffffffff 00",
            "83 6b ffff 01",
            "83 76 ffff 61",
        ]:
            self.assertRaises(ETFError, binary_to_term, _h(data))

    def test_deepNesting(self) -> None:
        """Terms nested deeper than MAX_DEPTH are rejected."""
        ok = b"\x83" + b"\x68\x01" * MAX_DEPTH + b"\x6a"
        self.assertEqual(binary_to_term(ok), _nested(MAX_DEPTH))
        self.assertRaises(
            ETFError, binary_to_term, b"\x83" + b"\x68\x01" * (MAX_DEPTH + 1) + b"\x6a"
        )
        deepLists = b"\x83" + b"\x6c\x00\x00\x00\x01" * 100_000
        self.assertRaises(ETFError, binary_to_term, deepLists)

    def test_refusedTags(self) -> None:
        """Funs, exports, pids, ports, references and compressed terms are refused."""
        for tag in [80, 77, 88, 89, 90, 101, 102, 103, 112, 113, 114, 117, 120, 0, 255]:
            with self.assertRaises(ETFError) as raised:
                binary_to_term(bytes([131, tag]) + b"\x00" * 64)
            self.assertIsInstance(raised.exception, ValueError)

    def test_malformed(self) -> None:
        """Bad versions, trailing bytes and nonsense values are rejected."""
        for data in [
            "",
            "84 61 01",
            "83 61 01 00",
            "83 6c 00000001 61 01 61 02",  # improper list
            "83 6e 01 02 05",  # bad sign
            "83 46 7ff0000000000000",  # infinity
            "83 76 0001 ff",  # invalid UTF-8 atom
            "83 74 00000002 61 01 61 01 61 01 61 02",  # duplicate key
            "83 74 00000001 6a 61 01",  # list key, unhashable
            "83 74 00000002 61 01 61 01 77 04 74727565 61 02",  # 1 and true collide
        ]:
            self.assertRaises(ETFError, binary_to_term, _h(data))
        self.assertRaises(ETFError, binary_to_term, "83")

    @given(terms)
    def test_roundTrip(self, value: object) -> None:
        """Decoding an encoded term gives it back, and re-encodes identically."""
        encoded = term_to_binary(value)
        decoded = binary_to_term(encoded)
        self.assertEqual(decoded, value)
        self.assertEqual(term_to_binary(decoded), encoded)


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = (value,)
    return value
