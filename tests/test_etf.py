"""
Tests for L{twisted_phoenix._etf}.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._etf import (
    MAX_DECOMPRESSED_SIZE,
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
        for tag in [77, 88, 89, 90, 101, 102, 103, 112, 113, 114, 117, 120, 0, 255]:
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


def _compressed(size: int, stream: bytes) -> bytes:
    """A compressed term declaring ``size`` bytes, holding ``stream``."""
    return struct.pack(">BBI", 131, 80, size) + stream


# Phoenix's compressed vector's message (spec, Appendix C, 1).
PHOENIX_DATA = {"user_id": 42, "name": "ab" * 40}
PHOENIX_COMPRESSED = _h(
    "835000000081789ccb602e61606060ca05122c7989b9a920464062127521c850f6d2"
    "e2d4a2f8cc9444ad3c360686b8b0770b19931818031b00485e29ff"
)


class CompressedEncodeTests(SynchronousTestCase):
    """
    Tests for L{term_to_binary} with C{compressed}.
    """

    def test_phoenixVector(self) -> None:
        """compressed=True writes what term_to_binary(term, [:compressed]) wrote."""
        term = (PHOENIX_DATA, 1_795_000_000_000, 86400)
        self.assertEqual(term_to_binary(term, compressed=True), PHOENIX_COMPRESSED)
        self.assertEqual(term_to_binary(term, compressed=6), PHOENIX_COMPRESSED)

    def test_layout(self) -> None:
        """131, 80, the plain size without the version byte, then a zlib stream."""
        plain = term_to_binary("x" * 1000)
        packed = term_to_binary("x" * 1000, compressed=True)
        self.assertEqual(packed[:6], _h("83 50") + struct.pack(">I", len(plain) - 1))
        self.assertEqual(zlib.decompress(packed[6:]), plain[1:])

    def test_levels(self) -> None:
        """An int is a zlib level; 0 and False mean no compression."""
        value = "abc" * 500
        plain = term_to_binary(value)
        self.assertEqual(term_to_binary(value, compressed=0), plain)
        self.assertEqual(term_to_binary(value, compressed=False), plain)
        self.assertEqual(term_to_binary(value, compressed=1)[6:], zlib.compress(plain[1:], 1))
        self.assertEqual(term_to_binary(value, compressed=9)[6:], zlib.compress(plain[1:], 9))
        for bad in [10, -1, 1.5, "6"]:
            self.assertRaises(ValueError, term_to_binary, value, compressed=bad)

    def test_onlyWhenNotLonger(self) -> None:
        """As in the BEAM, a term is compressed only if that makes it no longer."""
        # erts_term_to_binary gives zlib the plain size minus the 5 bytes of
        # tag 80 and size, and keeps the term plain if the stream does not fit.
        self.assertEqual(term_to_binary(42, compressed=True), _h("83 61 2a"))
        # Its zlib stream is one byte too long: plain.
        oneTooMany = b"aaaaaaaabaabbbbbbb"
        plain = term_to_binary(oneTooMany)
        self.assertEqual(len(zlib.compress(plain[1:], 6)), len(plain) - 1 - 5 + 1)
        self.assertEqual(term_to_binary(oneTooMany, compressed=True), plain)
        # Its zlib stream fits exactly: compressed, and as long as plain.
        exact = b"bbabaaaabbabaaaabbaba"
        plain = term_to_binary(exact)
        packed = term_to_binary(exact, compressed=True)
        self.assertEqual(packed[:2], _h("83 50"))
        self.assertEqual(len(packed), len(plain))


class CompressedDecodeTests(SynchronousTestCase):
    """
    Tests for L{binary_to_term} on compressed terms, and its cap.
    """

    def test_phoenixVector(self) -> None:
        """Phoenix's compressed term decodes."""
        self.assertEqual(
            binary_to_term(PHOENIX_COMPRESSED), (PHOENIX_DATA, 1_795_000_000_000, 86400)
        )

    def test_defaultCap(self) -> None:
        """The default cap is 64 KiB of inflated term, inclusive."""
        self.assertEqual(MAX_DECOMPRESSED_SIZE, 65536)
        body = b"\x6d" + struct.pack(">I", 65536 - 5) + b"z" * (65536 - 5)
        self.assertEqual(binary_to_term(_compressed(65536, zlib.compress(body))), "z" * 65531)
        body = b"\x6d" + struct.pack(">I", 65536 - 4) + b"z" * (65536 - 4)
        self.assertRaises(ETFError, binary_to_term, _compressed(65537, zlib.compress(body)))

    def test_configurableCap(self) -> None:
        """max_decompressed_size moves the cap both ways."""
        packed = term_to_binary("q" * 5000, compressed=True)
        self.assertEqual(binary_to_term(packed, max_decompressed_size=5005), "q" * 5000)
        self.assertRaises(ETFError, binary_to_term, packed, max_decompressed_size=5004)
        big = term_to_binary("q" * 200_000, compressed=True)
        self.assertRaises(ETFError, binary_to_term, big)
        self.assertEqual(
            binary_to_term(big, max_decompressed_size=300_000), "q" * 200_000
        )

    def assertCheap(self, data: bytes) -> None:
        """
        C{data} is refused, having allocated a few times the cap at most
        (zlib's window and output buffers), not the megabytes it holds.
        """
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        tracemalloc.reset_peak()
        self.assertRaises(ETFError, binary_to_term, data)
        self.assertLess(tracemalloc.get_traced_memory()[1], 8 * MAX_DECOMPRESSED_SIZE)

    def test_bombDeclaringLittle(self) -> None:
        """A small declared size that inflates to 10 MB is refused after the cap."""
        bomb = zlib.compress(b"\x6b" + b"\x00" * 10_000_000, 9)
        self.assertLess(len(bomb), 20_000)
        self.assertCheap(_compressed(100, bomb))
        self.assertCheap(_compressed(MAX_DECOMPRESSED_SIZE, bomb))

    def test_bombDeclaringMuch(self) -> None:
        """A huge declared size is refused before anything is inflated."""
        bomb = zlib.compress(b"\x6b" + b"\x00" * 10_000_000, 9)
        self.assertCheap(_compressed(2**32 - 1, bomb))
        self.assertCheap(_compressed(10_000_001, bomb))
        self.assertCheap(_compressed(MAX_DECOMPRESSED_SIZE + 1, b""))

    def test_sizeMismatch(self) -> None:
        """A term inflating to more or fewer bytes than it declares is refused."""
        body = term_to_binary("hello")[1:]
        stream = zlib.compress(body)
        self.assertEqual(binary_to_term(_compressed(len(body), stream)), "hello")
        for size in [0, 1, len(body) - 1, len(body) + 1, 1000]:
            self.assertRaises(ETFError, binary_to_term, _compressed(size, stream))

    def test_badStreams(self) -> None:
        """Truncated, garbage, or trailing zlib data is refused."""
        body = term_to_binary(list(range(300)))[1:]
        stream = zlib.compress(body)
        size = len(body)
        for data in [
            _compressed(size, stream[:-1]),  # checksum cut
            _compressed(size, stream[: len(stream) // 2]),
            _compressed(size, b""),
            _compressed(size, b"garbage!" * 4),
            _compressed(size, stream[:-4] + b"\x00\x00\x00\x00"),  # bad adler32
            _compressed(size, stream + b"\x00"),  # trailing byte
            _compressed(size, stream + stream),
            _compressed(size, zlib.compress(body)[:2] + b"\xff" * 40),
            _h("83 50"),
            _h("83 50 000000"),
        ]:
            self.assertRaises(ETFError, binary_to_term, data)

    def test_bodyIsChecked(self) -> None:
        """The inflated term is held to the same rules as a plain one."""
        for body in [_h("70 00"), _h("61 01 61 02"), _h("68 01") * (MAX_DEPTH + 2) + _h("6a")]:
            packed = _compressed(len(body), zlib.compress(body))
            self.assertRaises(ETFError, binary_to_term, packed)
        # Tag 80 is only valid right after the version byte.
        nested = _h("68 01 50 00000002") + zlib.compress(_h("61 01"))
        self.assertRaises(ETFError, binary_to_term, b"\x83" + nested)

    @given(terms, st.integers(min_value=0, max_value=9))
    def test_roundTrip(self, value: object, level: int) -> None:
        """Every term survives compression at every level."""
        packed = term_to_binary(value, compressed=level)
        self.assertEqual(binary_to_term(packed, max_decompressed_size=2**20), value)

    @given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=200))
    def test_garbage(self, size: int, stream: bytes) -> None:
        """Any declared size with any bytes decodes or raises ETFError, nothing else."""
        try:
            binary_to_term(_compressed(size, stream))
        except ETFError:
            pass

    @given(st.binary(max_size=300))
    def test_garbageAfterZlibHeader(self, tail: bytes) -> None:
        """Bytes behind a valid zlib header decode or raise ETFError, nothing else."""
        try:
            binary_to_term(_compressed(len(tail) * 3, b"\x78\x9c" + tail))
        except ETFError:
            pass


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = (value,)
    return value
