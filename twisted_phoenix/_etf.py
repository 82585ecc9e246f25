# -*- test-case-name: tests.test_etf -*-
"""
A small, safe codec for Erlang's External Term Format.

This is the subset of ``:erlang.term_to_binary/1`` and
``:erlang.binary_to_term/1`` that ``Phoenix.Token`` needs: numbers, atoms,
binaries, tuples, lists and maps.  The mapping between Python and Erlang is::

    Python                      Erlang
    int                         integer (97, 98, 110 or 111)
    float (finite)              float (70; 99 also accepted when decoding)
    str                         UTF-8 binary (109), as Elixir strings are
    bytes                       binary (109)
    Atom("name")                atom (119/118; 100 and 115 also accepted)
    True / False / None         the atoms true / false / nil
    tuple                       tuple (104 or 105)
    list                        list (108, or 107 for short lists of bytes)
    dict                        map (116)

Decoding is lossy in two documented ways: a binary decodes to :class:`str` when it
is valid UTF-8 and to :class:`bytes` otherwise, and a string (107) decodes to a
list of ints, just as it is a list in Erlang.

The decoder is meant for untrusted input.  It refuses executable terms (funs
and exports), pids, ports, references, bit strings and improper lists; it
checks every declared length against the bytes that are actually left before
using it; it limits nesting to :data:`MAX_DEPTH`; it inflates a compressed
term (``term_to_binary(term, [:compressed])``) only up to
:data:`MAX_DECOMPRESSED_SIZE` bytes, never further, whatever the term declares;
and it raises :class:`ETFError` (a :class:`ValueError`) for every malformed
input.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from typing import Any

__all__ = [
    "Atom",
    "ETFError",
    "MAX_DECOMPRESSED_SIZE",
    "MAX_DEPTH",
    "binary_to_term",
    "term_to_binary",
]

MAX_DEPTH = 100

#: The default cap, in bytes, on the size of a compressed term once inflated
#: (the size Erlang writes after tag 80, which excludes the version byte).
MAX_DECOMPRESSED_SIZE = 64 * 1024

#: The zlib level of ``term_to_binary(term, [:compressed])``.
DEFAULT_COMPRESSION = 6

VERSION = 131
NEW_FLOAT_EXT = 70
COMPRESSED = 80
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119

_REFUSED = {
    COMPRESSED: "compressed terms inside a term",
    77: "bit strings",
    88: "pids",
    89: "ports",
    90: "references",
    101: "references",
    102: "ports",
    103: "pids",
    112: "funs",
    113: "exports",
    114: "references",
    117: "funs",
    120: "ports",
}

_OLD_FLOAT = re.compile(rb"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")


class ETFError(ValueError):
    """
    The input is not a term this codec can safely encode or decode.
    """


class Atom(str):
    """
    An Erlang atom.

    Atoms are never equal to plain strings, just as ``:name`` is not
    ``"name"`` in Elixir, so a map can hold both as keys.  ``true``, ``false``
    and ``nil`` are represented by ``True``, ``False`` and ``None`` instead.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Atom) and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((Atom, str(self)))

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


_SPECIAL_ATOMS = {"true": True, "false": False, "nil": None}


def term_to_binary(value: Any, *, compressed: bool | int = False) -> bytes:
    """
    Encode ``value`` as ``:erlang.term_to_binary/1`` would.

    Small maps are written with their keys in Erlang term order, so the
    output matches the BEAM's byte for byte for the types above.

    :param compressed: ``True`` compresses as ``term_to_binary(value,
        [:compressed])`` does (zlib level 6); an int from 0 to 9 is the level
        of ``{:compressed, level}``, 0 meaning no compression.  As in the BEAM,
        the result is compressed only if that makes it no longer than the
        plain encoding, so small terms stay plain.
    :raises TypeError: for a value of a type that has no Erlang equivalent.
    :raises ETFError: for a value Erlang cannot represent, such as a NaN, a
        string with lone surrogates or an atom longer than 255 characters.
    :raises ValueError: for a compression level outside 0 to 9.
    """
    out = bytearray([VERSION])
    _encode(value, out)
    level = _compressionLevel(compressed)
    if level:
        return _compress(bytes(out), level)
    return bytes(out)


def _compressionLevel(compressed: bool | int) -> int:
    if compressed is True:
        return DEFAULT_COMPRESSION
    if compressed is False:
        return 0
    if type(compressed) is not int or not 0 <= compressed <= 9:
        raise ValueError(f"compression level must be 0 to 9, not {compressed!r}")
    return compressed


def _compress(plain: bytes, level: int) -> bytes:
    """
    The BEAM's rule (``erts_term_to_binary`` in ``external.c``): zlib gets an
    output buffer of the term's size minus 5 bytes (tag 80 and the 4-byte
    size), and the term stays uncompressed if the stream does not fit.
    """
    size = len(plain) - 1  # Without the version byte.
    deflated = zlib.compress(plain[1:], level)
    if len(deflated) > size - 5:
        return plain
    return struct.pack(">BBI", VERSION, COMPRESSED, size) + deflated


def _encode(value: Any, out: bytearray) -> None:
    if value is True or value is False or value is None or isinstance(value, Atom):
        _encodeAtom(_atomName(value), out)
    elif isinstance(value, int):
        _encodeInt(value, out)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ETFError(f"Erlang has no float {value!r}")
        out.append(NEW_FLOAT_EXT)
        out += struct.pack(">d", value)
    elif isinstance(value, (str, bytes, bytearray)):
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ETFError("string is not encodable as UTF-8") from e
        _checkLength(len(value))
        out.append(BINARY_EXT)
        out += struct.pack(">I", len(value)) + value
    elif isinstance(value, tuple):
        if len(value) < 256:
            out += struct.pack(">BB", SMALL_TUPLE_EXT, len(value))
        else:
            _checkLength(len(value))
            out += struct.pack(">BI", LARGE_TUPLE_EXT, len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, list):
        _encodeList(value, out)
    elif isinstance(value, dict):
        _checkLength(len(value))
        out += struct.pack(">BI", MAP_EXT, len(value))
        items = list(value.items())
        if len(items) <= 32:
            # The BEAM keeps small maps sorted; large ones are in hash order,
            # which any order decodes the same as.
            items.sort(key=lambda item: _termOrder(item[0]))
        for k, v in items:
            _encode(k, out)
            _encode(v, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as an Erlang term")


def _atomName(value: Atom | bool | None) -> str:
    if value is None:
        return "nil"
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


def _encodeAtom(name: str, out: bytearray) -> None:
    if len(name) > 255:
        raise ETFError("atoms are limited to 255 characters")
    data = name.encode("utf-8")
    if len(data) < 256:
        out += struct.pack(">BB", SMALL_ATOM_UTF8_EXT, len(data)) + data
    else:
        out += struct.pack(">BH", ATOM_UTF8_EXT, len(data)) + data


def _encodeInt(value: int, out: bytearray) -> None:
    value = int(value)
    if 0 <= value <= 255:
        out += struct.pack(">BB", SMALL_INTEGER_EXT, value)
    elif -(2**31) <= value < 2**31:
        out += struct.pack(">Bi", INTEGER_EXT, value)
    else:
        magnitude = abs(value)
        digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        sign = 1 if value < 0 else 0
        if len(digits) < 256:
            out += struct.pack(">BBB", SMALL_BIG_EXT, len(digits), sign)
        else:
            _checkLength(len(digits))
            out += struct.pack(">BIB", LARGE_BIG_EXT, len(digits), sign)
        out += digits


def _encodeList(value: list[Any], out: bytearray) -> None:
    if not value:
        out.append(NIL_EXT)
        return
    if len(value) < 65536 and all(
        type(i) is int and 0 <= i <= 255 for i in value
    ):
        # Erlang writes a list of bytes as a "string".
        out += struct.pack(">BH", STRING_EXT, len(value)) + bytes(value)
        return
    _checkLength(len(value))
    out += struct.pack(">BI", LIST_EXT, len(value))
    for item in value:
        _encode(item, out)
    out.append(NIL_EXT)


def _checkLength(length: int) -> None:
    if length >= 2**32:
        raise ETFError("term is too large for the external term format")


def _termOrder(value: Any) -> tuple[Any, ...]:
    """
    A sort key giving Erlang's map key order for any hashable term.
    """
    if value is True or value is False or value is None or isinstance(value, Atom):
        return (1, _atomName(value))
    if isinstance(value, (int, float)):
        # In map key order every integer sorts before every float.
        return (0, isinstance(value, float), value)
    if isinstance(value, tuple):
        return (6, len(value), tuple(_termOrder(i) for i in value))
    if isinstance(value, str):
        return (10, value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return (10, value)
    return (11, 0)  # Unencodable anyway; _encode will complain.


def binary_to_term(
    data: bytes, *, max_decompressed_size: int = MAX_DECOMPRESSED_SIZE
) -> Any:
    """
    Decode a term written by ``:erlang.term_to_binary/1,2``, refusing anything
    unsafe.

    Binaries decode to :class:`str` if they are valid UTF-8 and to :class:`bytes`
    otherwise; ``true``, ``false`` and ``nil`` decode to ``True``, ``False`` and
    ``None``; other atoms decode to :class:`Atom`.

    A compressed term (tag 80) is inflated only if the size it declares is at
    most ``max_decompressed_size``, and never beyond that size plus one byte,
    so a few bytes that would inflate to megabytes cost no more than the cap.

    :raises ETFError: if ``data`` is malformed, truncated, followed by trailing
        bytes, nested deeper than :data:`MAX_DEPTH`, or holds a term this module
        refuses, or a map key that is unhashable or duplicated in Python; or if
        it is compressed and declares more than ``max_decompressed_size``
        bytes, or does not inflate to exactly the size it declares.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ETFError(f"expected bytes, not {type(data).__name__}")
    decoder = _Decoder(bytes(data))
    if decoder.take(1)[0] != VERSION:
        raise ETFError("unknown external term format version")
    if decoder.data[1:2] == bytes([COMPRESSED]):
        decoder = _Decoder(_inflate(decoder.data, max_decompressed_size))
    term = decoder.term(0)
    if decoder.pos != len(decoder.data):
        raise ETFError("trailing bytes after term")
    return term


def _inflate(data: bytes, limit: int) -> bytes:
    """
    The term inside ``data`` (``131, 80, size:32, zlib stream``), inflated to
    at most ``limit`` bytes; the result has no version byte.
    """
    if len(data) < 6:
        raise ETFError("truncated compressed term")
    (size,) = struct.unpack(">I", data[2:6])
    if size > limit:
        raise ETFError(f"compressed term declares {size} bytes, over the {limit}-byte cap")
    inflater = zlib.decompressobj()
    try:
        # One byte more than declared is enough to tell a lie from the truth.
        plain = inflater.decompress(data[6:], size + 1)
    except zlib.error as e:
        raise ETFError(f"bad compressed term: {e}") from None
    if len(plain) != size:
        raise ETFError("compressed term does not inflate to its declared size")
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise ETFError("compressed term is truncated or followed by other bytes")
    return plain


class _Decoder:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ETFError("truncated term")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str) -> int:
        value: int = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def count(self, fmt: str, minSize: int) -> int:
        """
        Read a count of items that each take at least ``minSize`` bytes, and
        check that many could fit in what is left.
        """
        n = self.unpack(fmt)
        if n * minSize > len(self.data) - self.pos:
            raise ETFError("declared length exceeds the input")
        return n

    def term(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise ETFError("term is nested too deeply")
        tag = self.take(1)[0]
        if tag == SMALL_INTEGER_EXT:
            return self.unpack(">B")
        if tag == INTEGER_EXT:
            return self.unpack(">i")
        if tag in (SMALL_BIG_EXT, LARGE_BIG_EXT):
            n = self.count(">B" if tag == SMALL_BIG_EXT else ">I", 1)
            sign = self.unpack(">B")
            if sign > 1:
                raise ETFError("bad bignum sign")
            value = int.from_bytes(self.take(n), "little")
            return -value if sign else value
        if tag == NEW_FLOAT_EXT:
            return self.finite(struct.unpack(">d", self.take(8))[0])
        if tag == FLOAT_EXT:
            text = self.take(31).rstrip(b"\x00")
            if not _OLD_FLOAT.fullmatch(text):
                raise ETFError("bad float")
            return self.finite(float(text))
        if tag in (ATOM_EXT, SMALL_ATOM_EXT, ATOM_UTF8_EXT, SMALL_ATOM_UTF8_EXT):
            return self.atom(tag)
        if tag in (SMALL_TUPLE_EXT, LARGE_TUPLE_EXT):
            n = self.count(">B" if tag == SMALL_TUPLE_EXT else ">I", 1)
            return tuple([self.term(depth + 1) for _ in range(n)])
        if tag == NIL_EXT:
            return []
        if tag == STRING_EXT:
            return list(self.take(self.unpack(">H")))
        if tag == LIST_EXT:
            n = self.count(">I", 1)
            items = [self.term(depth + 1) for _ in range(n)]
            if self.take(1)[0] != NIL_EXT:
                raise ETFError("improper lists are not supported")
            return items
        if tag == BINARY_EXT:
            raw = self.take(self.count(">I", 1))
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        if tag == MAP_EXT:
            return self.map(depth)
        raise ETFError(f"refusing {_REFUSED.get(tag, f'unknown tag {tag}')}")

    def finite(self, value: float) -> float:
        if not math.isfinite(value):
            raise ETFError("non-finite float")
        return value

    def atom(self, tag: int) -> Atom | bool | None:
        n = self.unpack(">B" if tag in (SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT) else ">H")
        raw = self.take(n)
        try:
            latin1 = tag in (ATOM_EXT, SMALL_ATOM_EXT)
            name = raw.decode("latin-1" if latin1 else "utf-8")
        except UnicodeDecodeError:
            raise ETFError("atom is not valid UTF-8") from None
        if len(name) > 255:
            raise ETFError("atom is too long")
        return _SPECIAL_ATOMS.get(name, Atom(name))

    def map(self, depth: int) -> dict[Any, Any]:
        n = self.count(">I", 2)
        result: dict[Any, Any] = {}
        for _ in range(n):
            key = self.term(depth + 1)
            value = self.term(depth + 1)
            try:
                if key in result:
                    raise ETFError(f"duplicate map key {key!r}")
            except TypeError:
                raise ETFError("map key is not hashable in Python") from None
            result[key] = value
        return result
