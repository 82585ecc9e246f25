# -*- test-case-name: tests.test_serializers -*-
"""
The wire formats: Phoenix's V1 (JSON objects) and V2 (JSON arrays plus a
binary layout) serializers, and the choice between them by ``vsn``.

JSON is written the way Phoenix (Jason) writes it for the payloads a channel
server produces: no whitespace, object keys sorted, non-ASCII raw, control
characters escaped with upper-case hex.  Floats keep Python's form (``1000.0``
where Erlang writes ``1.0e3``).

Decoding checks what every later step relies on, and refuses anything else
with a :class:`DecodeError` (the transport then closes the connection with
1011, as Phoenix's crash does): ``topic`` and ``event`` are strings,
``ref`` and ``join_ref`` strings or ``null``, each within a size limit
(:attr:`Serializer.max_name_bytes`, :attr:`Serializer.max_ref_bytes`), and
a JSON payload is nested no deeper than a reply to it can be encoded
(:attr:`Serializer.max_payload_depth`).  So whatever decodes can be echoed
back.

Every ``encode`` returns a :class:`Frame`.  A broadcast is encoded once per
serializer by :meth:`Serializer.fastlane` and the same ``Frame`` (with its
transport-level framing cached in :attr:`Frame.wire`) is handed to every
subscriber.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .message import PHX_REPLY, Broadcast, Message, Reply

__all__ = [
    "DecodeError",
    "Frame",
    "Serializer",
    "V1JSONSerializer",
    "V2JSONSerializer",
    "SERIALIZERS",
    "VersionError",
    "select_serializer",
    "json_dumps",
]

_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
# A real \u00XX escape with lower-case hex: its backslash follows a run of
# escaped backslashes (\\), not one more literal backslash.
_LOWER_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u00[01][0-9a-f]")


def json_dumps(value: Any) -> bytes:
    """
    Encode ``value`` as compact JSON with sorted keys, as Phoenix writes it.
    """
    data = orjson.dumps(value, option=_JSON_OPTIONS)
    if b"\\u00" in data:
        # orjson writes \u001f, Jason writes \u001F.
        data = _LOWER_ESCAPE.sub(lambda m: m.group(0)[:-2] + m.group(0)[-2:].upper(), data)
    return data


class DecodeError(ValueError):
    """
    A client frame that the serializer cannot decode.  Phoenix crashes the
    connection on such frames; the transport closes it with code 1011.
    """


class VersionError(ValueError):
    """
    A ``vsn`` query parameter that selects no serializer (HTTP 403).
    """


class Frame:
    """
    Encoded bytes ready for a transport.

    :ivar data: the encoded message.
    :ivar binary: whether it goes out as a binary (not text) frame.
    :ivar wire: a slot a transport may use to cache its own framing of
        ``data``, so that one broadcast is framed once for all subscribers.
    """

    __slots__ = ("data", "binary", "wire")

    def __init__(self, data: bytes, binary: bool = False) -> None:
        self.data = data
        self.binary = binary
        self.wire: bytes | None = None

    def __repr__(self) -> str:
        return f"Frame({self.data!r}, binary={self.binary})"


class Serializer:
    """
    The interface of a serializer.  Serializers are stateless singletons.

    The limits below apply to what clients send; a deployment changes them
    in a subclass listed in its socket's ``serializers``.

    :cvar max_name_bytes: the longest ``topic`` or ``event``, in UTF-8
        bytes: 255, what a V2 binary frame can carry.
    :cvar max_ref_bytes: the longest ``ref`` or ``join_ref``, in UTF-8
        bytes (phoenix.js sends decimal counters).
    :cvar max_payload_depth: the deepest nesting of arrays and objects in a
        JSON payload.  A reply wraps the payload in two more levels, and
        orjson encodes at most 254, hence 252 (a higher value lets through
        payloads whose replies cannot be encoded).
    """

    vsn: str = ""
    max_name_bytes: int = 255
    max_ref_bytes: int = 64
    max_payload_depth: int = 252

    def encode(self, message: Message | Reply) -> Frame:
        """
        Encode a push or a reply for one client.

        :raises TypeError: or :class:`ValueError` for a payload this format
            cannot carry (not JSON, or binary on V1, or a binary frame field
            over 255 bytes).
        """
        raise NotImplementedError

    def fastlane(self, broadcast: Broadcast) -> Frame:
        """
        Encode a broadcast, once for every subscriber using this serializer.

        :raises TypeError: or :class:`ValueError`, as :meth:`encode`.
        """
        raise NotImplementedError

    def decode(self, data: bytes, binary: bool) -> Message:
        """
        Decode one client frame.

        :raises DecodeError: when the frame is malformed or breaks a limit.
        """
        raise NotImplementedError

    def check(self, message: Message, data: bytes | None = None) -> Message:
        """
        Check the fields of a decoded ``message`` against this serializer's
        limits, and return it.

        :param data: the raw text frame the JSON payload came from: the
            payload's nesting is measured only when ``data`` holds more
            brackets than :attr:`max_payload_depth`, so a frame that cannot
            be too deep costs two ``bytes.count`` calls.  ``None`` for a
            binary payload.
        :raises DecodeError: when a field breaks a rule.
        """
        # The hot path of every frame.  A string of n characters takes at
        # most 4n bytes, so short ones need no encoding to be measured.
        topic, event, payload, ref, join_ref = message
        if type(topic) is not str or type(event) is not str:
            raise DecodeError("topic and event must be strings")
        limit = self.max_name_bytes
        if len(topic) + len(event) > limit >> 2 and (_over(topic, limit) or _over(event, limit)):
            raise DecodeError(f"topic and event are limited to {limit} bytes")
        limit = self.max_ref_bytes
        if ref is not None and (type(ref) is not str or len(ref) > limit >> 2 and _over(ref, limit)):
            raise DecodeError(f"ref must be null or a string of at most {limit} bytes")
        if join_ref is not None and (
            type(join_ref) is not str or len(join_ref) > limit >> 2 and _over(join_ref, limit)
        ):
            raise DecodeError(f"join_ref must be null or a string of at most {limit} bytes")
        if data is not None:
            limit = self.max_payload_depth
            if len(data) > limit and data.count(b"[") + data.count(b"{") > limit:
                # Enough brackets to be too deep: measure by encoding, at C
                # speed, what a reply would wrap the payload in.
                try:
                    _too_deep(payload, limit)
                except orjson.JSONEncodeError:
                    raise DecodeError(f"payloads are limited to {limit} levels of nesting") from None
        return message

    def __repr__(self) -> str:
        return f"<{type(self).__name__} vsn={self.vsn}>"


def _over(text: str, limit: int) -> bool:
    """Whether ``text`` takes more than ``limit`` bytes in UTF-8 (isascii is O(1))."""
    return len(text) > limit or not text.isascii() and len(text.encode("utf-8")) > limit


#: orjson's deepest nesting when encoding.
_ORJSON_MAX_DEPTH = 254


def _too_deep(payload: Any, depth: int) -> None:
    """Raise orjson.JSONEncodeError when ``payload`` is nested deeper than ``depth``."""
    wrapped = payload
    for _ in range(_ORJSON_MAX_DEPTH - depth):
        wrapped = [wrapped]
    orjson.dumps(wrapped)


class V1JSONSerializer(Serializer):
    """
    ``vsn=1.0.0``: every frame a JSON object; ``join_ref`` is never written.
    """

    vsn = "1.0.0"

    def encode(self, message: Message | Reply) -> Frame:
        if type(message.payload) is bytes:
            raise TypeError("the V1 serializer cannot carry binary payloads")
        if type(message) is Reply:
            payload: Any = {"status": message.status, "response": message.payload}
            event = PHX_REPLY
        else:
            payload, event = message.payload, message.event
        return Frame(
            json_dumps(
                {"topic": message.topic, "event": event, "payload": payload, "ref": message.ref}
            )
        )

    def fastlane(self, broadcast: Broadcast) -> Frame:
        if isinstance(broadcast.payload, bytes):
            raise TypeError("the V1 serializer cannot carry binary payloads")
        return Frame(
            json_dumps(
                {
                    "topic": broadcast.topic,
                    "event": broadcast.event,
                    "payload": broadcast.payload,
                    "ref": None,
                }
            )
        )

    def decode(self, data: bytes, binary: bool) -> Message:
        if binary:
            raise DecodeError("the V1 serializer takes text frames only")
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"invalid JSON: {e}") from None
        if type(obj) is not dict:
            raise DecodeError("a V1 message must be a JSON object")
        try:
            topic, event, payload, ref = obj["topic"], obj["event"], obj["payload"], obj["ref"]
        except KeyError as e:
            raise DecodeError(f"a V1 message needs the key {e.args[0]!r}") from None
        return self.check(Message(topic, event, payload, ref, obj.get("join_ref")), data)


# V2 binary frame kinds.
_PUSH, _REPLY, _BROADCAST = 0, 1, 2


def _field(value: Any) -> bytes:
    raw = b"" if value is None else str(value).encode("utf-8")
    if len(raw) > 255:
        raise ValueError("binary frame fields are limited to 255 bytes")
    return raw


class V2JSONSerializer(Serializer):
    """
    ``vsn=2.0.0``: ``[join_ref, ref, topic, event, payload]`` text frames, and
    binary frames for :class:`bytes` payloads.
    """

    vsn = "2.0.0"

    def encode(self, message: Message | Reply) -> Frame:
        if type(message) is Reply:
            if type(message.payload) is bytes:
                jr, ref, topic, status = (
                    _field(message.join_ref),
                    _field(message.ref),
                    _field(message.topic),
                    _field(message.status),
                )
                header = bytes((_REPLY, len(jr), len(ref), len(topic), len(status)))
                return Frame(header + jr + ref + topic + status + message.payload, True)
            return Frame(
                json_dumps(
                    [
                        message.join_ref,
                        message.ref,
                        message.topic,
                        PHX_REPLY,
                        {"status": message.status, "response": message.payload},
                    ]
                )
            )
        if type(message.payload) is bytes:
            jr, topic, event = _field(message.join_ref), _field(message.topic), _field(message.event)
            header = bytes((_PUSH, len(jr), len(topic), len(event)))
            return Frame(header + jr + topic + event + message.payload, True)
        return Frame(
            json_dumps([message.join_ref, message.ref, message.topic, message.event, message.payload])
        )

    def fastlane(self, broadcast: Broadcast) -> Frame:
        if type(broadcast.payload) is bytes:
            topic, event = _field(broadcast.topic), _field(broadcast.event)
            header = bytes((_BROADCAST, len(topic), len(event)))
            return Frame(header + topic + event + broadcast.payload, True)
        return Frame(json_dumps([None, None, broadcast.topic, broadcast.event, broadcast.payload]))

    def decode(self, data: bytes, binary: bool) -> Message:
        if binary:
            return self._decode_binary(data)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"invalid JSON: {e}") from None
        if type(obj) is not list or len(obj) < 5:
            raise DecodeError("a V2 message must be a JSON array of 5 items")
        join_ref, ref, topic, event, payload = obj[:5]
        return self.check(Message(topic, event, payload, ref, join_ref), data)

    def _decode_binary(self, data: bytes) -> Message:
        if len(data) < 5 or data[0] != _PUSH:
            raise DecodeError("a binary frame from a client must be a push (kind 0)")
        sizes = data[1:5]
        end = 5 + sum(sizes)
        if len(data) < end:
            raise DecodeError("truncated binary frame")
        fields = []
        pos = 5
        try:
            for size in sizes:
                fields.append(data[pos : pos + size].decode("utf-8"))
                pos += size
        except UnicodeDecodeError:
            raise DecodeError("binary frame fields must be UTF-8") from None
        join_ref, ref, topic, event = fields
        return self.check(Message(topic, event, data[end:], ref, join_ref))


V1 = V1JSONSerializer()
V2 = V2JSONSerializer()

#: The default serializers, as ``(serializer, major, minor)``: the version
#: requirement is Elixir's ``~> major.minor.0``.
SERIALIZERS: tuple[tuple[Serializer, int, int], ...] = ((V1, 1, 0), (V2, 2, 0))

_VERSION = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?")


def select_serializer(
    vsn: str | None, serializers: tuple[tuple[Serializer, int, int], ...] = SERIALIZERS
) -> Serializer:
    """
    Choose the serializer for a client's ``vsn`` query parameter.

    A missing ``vsn`` means ``1.0.0``.  ``~> 2.0.0`` accepts ``2.0.x`` but not
    ``2.1.0`` or a pre-release such as ``2.0.1-dev``.

    :raises VersionError: when ``vsn`` does not parse or matches nothing.
    """
    if vsn is None:
        vsn = "1.0.0"
    match = _VERSION.fullmatch(vsn) if isinstance(vsn, str) else None
    if match is None:
        raise VersionError(f"Client sent invalid transport version {vsn!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    prerelease = "-" in vsn.split("+", 1)[0]
    for serializer, want_major, want_minor in serializers:
        if not prerelease and major == want_major and minor == want_minor:
            return serializer
    wanted = " or ".join(f"~> {a}.{b}.0" for _, a, b in serializers)
    raise VersionError(
        f"The client's requested transport version {vsn!r} does not match "
        f"server's version requirements of {wanted}"
    )
