# -*- test-case-name: tests.test_client_serializers -*-
"""
The client's side of Phoenix's wire formats: it encodes what a client
sends and decodes what a server sends (the mirror image of
:mod:`twisted_phoenix.serializers`).

* ``vsn=2.0.0`` (:data:`V2`, phoenix.js's default): text frames are JSON
  arrays ``[join_ref, ref, topic, event, payload]``; a :class:`bytes`
  payload goes out as a binary push frame (kind 0) and binary pushes,
  replies and broadcasts (kinds 0, 1, 2) are decoded, their payload
  :class:`bytes`.
* ``vsn=1.0.0`` (:data:`V1`): JSON objects ``{"topic", "event", "payload",
  "ref", "join_ref"}``, text only.

Messages are :class:`twisted_phoenix.message.Message` values either way; a
binary reply decodes as ``phx_reply`` with the payload ``{"status": STATUS,
"response": BYTES}``, as phoenix.js decodes it.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..message import PHX_REPLY, Message
from ..serializers import DecodeError

__all__ = ["ClientSerializer", "DecodeError", "V1", "V2", "V1ClientSerializer", "V2ClientSerializer", "for_vsn"]

_BINARY = (bytes, bytearray, memoryview)
_PUSH, _REPLY, _BROADCAST = 0, 1, 2


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class ClientSerializer(Protocol):
    """What a :class:`~twisted_phoenix.client.socket.Socket` needs from a serializer."""

    vsn: str

    def encode(self, message: Message) -> tuple[bytes, bool]:
        """``(data, is_binary)`` for a client message.

        :raises TypeError: for a payload the format cannot carry.
        :raises ValueError: for a binary frame field longer than 255 bytes.
        """

    def decode(self, data: bytes, binary: bool) -> Message:
        """A server frame as a message.

        :raises DecodeError: when the frame is malformed.
        """


def _field(value: Any, name: str) -> bytes:
    raw = b"" if value is None else str(value).encode("utf-8")
    if len(raw) > 255:
        raise ValueError(
            f"unable to convert {name} to binary: must be less than or equal to 255 bytes, "
            f"but is {len(raw)} bytes"
        )
    return raw


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("binary frame fields must be UTF-8") from None


class V2ClientSerializer:
    """``vsn=2.0.0``: JSON arrays, and binary frames for :class:`bytes` payloads."""

    vsn = "2.0.0"

    def encode(self, message: Message) -> tuple[bytes, bool]:
        payload = message.payload
        if isinstance(payload, _BINARY):
            jr = _field(message.join_ref, "join_ref")
            ref = _field(message.ref, "ref")
            topic = _field(message.topic, "topic")
            event = _field(message.event, "event")
            header = bytes((_PUSH, len(jr), len(ref), len(topic), len(event)))
            return header + jr + ref + topic + event + bytes(payload), True
        return _dumps([message.join_ref, message.ref, message.topic, message.event, payload]), False

    def decode(self, data: bytes, binary: bool) -> Message:
        if binary:
            return self._decode_binary(bytes(data))
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"invalid JSON: {e}") from None
        if type(value) is not list or len(value) < 5:
            raise DecodeError("a V2 message must be a JSON array of 5 items")
        join_ref, ref, topic, event, payload = value[:5]
        if type(topic) is not str or type(event) is not str:
            raise DecodeError("topic and event must be strings")
        return Message(topic, event, payload, ref, join_ref)

    @staticmethod
    def _decode_binary(data: bytes) -> Message:
        if not data:
            raise DecodeError("empty binary frame")
        kind = data[0]
        if kind == _PUSH:  # join_ref, topic, event
            sizes, offset = data[1:4], 4
        elif kind == _REPLY:  # join_ref, ref, topic, status
            sizes, offset = data[1:5], 5
        elif kind == _BROADCAST:  # topic, event
            sizes, offset = data[1:3], 3
        else:
            raise DecodeError(f"unknown binary frame kind {kind}")
        end = offset + sum(sizes)
        if len(data) < offset or len(data) < end:
            raise DecodeError("truncated binary frame")
        fields = []
        for size in sizes:
            fields.append(_text(data[offset : offset + size]))
            offset += size
        payload = data[end:]
        if kind == _PUSH:
            join_ref, topic, event = fields
            return Message(topic, event, payload, None, join_ref)
        if kind == _REPLY:
            join_ref, ref, topic, status = fields
            return Message(topic, PHX_REPLY, {"status": status, "response": payload}, ref, join_ref)
        topic, event = fields
        return Message(topic, event, payload, None, None)


class V1ClientSerializer:
    """``vsn=1.0.0``: JSON objects, text frames only."""

    vsn = "1.0.0"

    def encode(self, message: Message) -> tuple[bytes, bool]:
        if isinstance(message.payload, _BINARY):
            raise TypeError("the V1 serializer cannot carry binary payloads (use vsn 2.0.0)")
        return (
            _dumps(
                {
                    "topic": message.topic,
                    "event": message.event,
                    "payload": message.payload,
                    "ref": message.ref,
                    "join_ref": message.join_ref,
                }
            ),
            False,
        )

    def decode(self, data: bytes, binary: bool) -> Message:
        if binary:
            raise DecodeError("the V1 serializer takes text frames only")
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise DecodeError(f"invalid JSON: {e}") from None
        if type(value) is not dict:
            raise DecodeError("a V1 message must be a JSON object")
        topic, event = value.get("topic"), value.get("event")
        if type(topic) is not str or type(event) is not str:
            raise DecodeError("topic and event must be strings")
        return Message(topic, event, value.get("payload"), value.get("ref"), value.get("join_ref"))


V1 = V1ClientSerializer()
V2 = V2ClientSerializer()


def for_vsn(vsn: str) -> ClientSerializer:
    """
    The serializer for a ``vsn``: :data:`V1` for ``1.x.y``, :data:`V2` for
    ``2.x.y``.

    :raises ValueError: for any other version.
    """
    major = vsn.split(".", 1)[0]
    if major == "1":
        return V1
    if major == "2":
        return V2
    raise ValueError(f"no client serializer for vsn {vsn!r} (1.0.0 and 2.0.0 are known)")
