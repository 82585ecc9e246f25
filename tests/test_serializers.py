"""
Tests for L{twisted_phoenix.serializers}: the V1 and V2 wire formats
(protocol notes section 2) and the choice of serializer by C{vsn} (1.3).
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.message import Broadcast, Message, Reply
from twisted_phoenix.serializers import (
    SERIALIZERS,
    V1JSONSerializer,
    V2JSONSerializer,
    DecodeError,
    Frame,
    VersionError,
    json_dumps,
    select_serializer,
)

V1 = V1JSONSerializer()
V2 = V2JSONSerializer()

#: The binary push phoenix.js 1.8.16 sent in the captured session (spec 2.2).
CAPTURED_PUSH = bytes.fromhex("0001010a03") + b"3" + b"5" + b"room:lobby" + b"bin" + b"\x01\x02\x03"
#: The matching binary reply.
CAPTURED_REPLY = bytes.fromhex("0101010a02") + b"3" + b"5" + b"room:lobby" + b"ok" + b"\x09\x09"


class JSONDumpsTests(SynchronousTestCase):
    """
    Tests for L{json_dumps}, which must write JSON the way Jason does.
    """

    def test_compactSortedKeys(self) -> None:
        """Objects are written with sorted keys and no whitespace at all."""
        self.assertEqual(
            json_dumps({"b": [1, 2], "a": {"z": None, "y": True}}),
            b'{"a":{"y":true,"z":null},"b":[1,2]}',
        )

    def test_controlCharactersUpperCaseHex(self) -> None:
        """Control characters without a short escape become \\u00XX with upper-case hex."""
        self.assertEqual(json_dumps("\x1f\x0b\x01"), b'"\\u001F\\u000B\\u0001"')

    def test_shortEscapes(self) -> None:
        """Quote, backslash and \\b \\t \\n \\f \\r use their short escapes."""
        self.assertEqual(json_dumps('"\\\b\t\n\f\r'), b'"\\"\\\\\\b\\t\\n\\f\\r"')

    def test_nonASCIIRaw(self) -> None:
        """Non-ASCII text, DEL and U+2028 are written as raw UTF-8."""
        self.assertEqual(json_dumps("é€\x7f\u2028"), '"é€\x7f\u2028"'.encode("utf-8"))

    def test_slashNotEscaped(self) -> None:
        """A forward slash is not escaped."""
        self.assertEqual(json_dumps("a/b"), b'"a/b"')

    def test_literalBackslashUPreserved(self) -> None:
        """Text that merely looks like a lower-case \\u escape keeps its case."""
        text = "\\u001f and \\\x1f"
        data = json_dumps(text)
        self.assertEqual(data, b'"\\\\u001f and \\\\\\u001F"')
        self.assertEqual(V2.decode(json_dumps([None, None, "t", "e", text]), False).payload, text)


class V2EncodeTests(SynchronousTestCase):
    """
    Tests for L{V2JSONSerializer.encode} and L{V2JSONSerializer.fastlane}.
    """

    def test_push(self) -> None:
        """A push is [join_ref, null, topic, event, payload]."""
        frame = V2.encode(Message("room:1", "new_msg", {"body": "hi/é"}, None, "3"))
        self.assertEqual(frame.data, '["3",null,"room:1","new_msg",{"body":"hi/é"}]'.encode())
        self.assertFalse(frame.binary)

    def test_reply(self) -> None:
        """A reply is a phx_reply whose payload holds status and response, keys sorted."""
        frame = V2.encode(Reply("room:1", "ok", {"b": 1, "a": 2}, "4", "3"))
        self.assertEqual(
            frame.data, b'["3","4","room:1","phx_reply",{"response":{"a":2,"b":1},"status":"ok"}]'
        )

    def test_refsWrittenAsGiven(self) -> None:
        """Refs are written back as they are (decoding admits only strings and null)."""
        frame = V2.encode(Reply("phoenix", "ok", {}, "1", None))
        self.assertEqual(frame.data, b'[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]')

    def test_broadcast(self) -> None:
        """A fastlane broadcast is [null, null, topic, event, payload]."""
        frame = V2.fastlane(Broadcast("room:1", "shout", {"x": 1}))
        self.assertEqual(frame.data, b'[null,null,"room:1","shout",{"x":1}]')
        self.assertFalse(frame.binary)

    def test_binaryPush(self) -> None:
        """A binary push is kind 0 with no ref field: 0, jr, topic and event lengths."""
        frame = V2.encode(Message("room:lobby", "bin", b"\x00\x01", None, "3"))
        self.assertTrue(frame.binary)
        self.assertEqual(frame.data, bytes.fromhex("00010a03") + b"3room:lobbybin\x00\x01")

    def test_binaryReplyMatchesCapture(self) -> None:
        """A binary reply is kind 1, byte for byte the reply in the captured session."""
        frame = V2.encode(Reply("room:lobby", "ok", b"\x09\x09", "5", "3"))
        self.assertTrue(frame.binary)
        self.assertEqual(frame.data, CAPTURED_REPLY)

    def test_binaryReplyNullJoinRef(self) -> None:
        """A null join_ref is written as an empty field in a binary reply."""
        frame = V2.encode(Reply("t", "ok", b"x", "5", None))
        self.assertEqual(frame.data, bytes.fromhex("0100010102") + b"5tokx")

    def test_binaryBroadcast(self) -> None:
        """A binary broadcast is kind 2: topic and event lengths, no refs."""
        frame = V2.fastlane(Broadcast("room:lobby", "bin", b"\xff"))
        self.assertTrue(frame.binary)
        self.assertEqual(frame.data, bytes.fromhex("020a03") + b"room:lobbybin\xff")

    def test_fieldLimit(self) -> None:
        """Binary frame fields are limited to 255 bytes; 255 itself is fine."""
        self.assertEqual(V2.encode(Message("t" * 255, "e", b"", None, None)).data[2], 255)
        self.assertRaises(ValueError, V2.encode, Message("t" * 256, "e", b"", None, None))
        self.assertRaises(ValueError, V2.fastlane, Broadcast("t", "é" * 128, b""))


class V2DecodeTests(SynchronousTestCase):
    """
    Tests for L{V2JSONSerializer.decode}.
    """

    def test_textMessage(self) -> None:
        """A 5-item array decodes to a Message."""
        self.assertEqual(
            V2.decode(b'["3","4","room:1","ping",{"a":1}]', False),
            Message("room:1", "ping", {"a": 1}, "4", "3"),
        )

    def test_extraItemsIgnored(self) -> None:
        """Items after the fifth are ignored."""
        self.assertEqual(
            V2.decode(b'[null,"1","phoenix","heartbeat",{},"extra",7]', False),
            Message("phoenix", "heartbeat", {}, "1", None),
        )

    def test_refsStringsOrNull(self) -> None:
        """String and null refs decode as they are; numeric refs are a DecodeError."""
        message = V2.decode(b'["7",null,"t","e",{}]', False)
        self.assertEqual((message.join_ref, message.ref), ("7", None))
        self.assertRaises(DecodeError, V2.decode, b'[7,"1","t","e",{}]', False)
        self.assertRaises(DecodeError, V2.decode, b'["7",1,"t","e",{}]', False)

    def test_capturedBinaryPush(self) -> None:
        """The captured phoenix.js binary push decodes to its fields and raw payload."""
        self.assertEqual(
            V2.decode(CAPTURED_PUSH, True),
            Message("room:lobby", "bin", b"\x01\x02\x03", "5", "3"),
        )

    def test_binaryEmptyRefs(self) -> None:
        """Empty join_ref and ref fields decode as empty strings, not null."""
        message = V2.decode(bytes.fromhex("0000000101") + b"te", True)
        self.assertEqual((message.join_ref, message.ref, message.payload), ("", "", b""))

    def test_invalidJSON(self) -> None:
        """Invalid JSON is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, b'["1",', False)

    def test_notAnArray(self) -> None:
        """A JSON object is a DecodeError under V2."""
        self.assertRaises(
            DecodeError, V2.decode, b'{"topic":"t","event":"e","payload":{},"ref":"1"}', False
        )

    def test_shortArray(self) -> None:
        """An array of fewer than 5 items is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, b'[null,"1","t","e"]', False)

    def test_nonStringTopic(self) -> None:
        """A topic that is not a string is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, b'[null,"1",5,"e",{}]', False)

    def test_nonStringEvent(self) -> None:
        """An event that is not a string is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, b'[null,"1","t",null,{}]', False)

    def test_binaryOtherKind(self) -> None:
        """A client binary frame of kind 1 or 2 is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, CAPTURED_REPLY, True)
        self.assertRaises(DecodeError, V2.decode, bytes.fromhex("020a03") + b"room:lobbybin", True)

    def test_binaryTruncated(self) -> None:
        """A binary frame shorter than its header says is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, CAPTURED_PUSH[:12], True)
        self.assertRaises(DecodeError, V2.decode, b"\x00\x01", True)

    def test_binaryInvalidUTF8(self) -> None:
        """A binary field that is not UTF-8 is a DecodeError."""
        self.assertRaises(DecodeError, V2.decode, bytes.fromhex("0000000101") + b"\xffe", True)


class V1Tests(SynchronousTestCase):
    """
    Tests for L{V1JSONSerializer}.
    """

    def test_reply(self) -> None:
        """A V1 reply is an object with sorted keys and no join_ref."""
        frame = V1.encode(Reply("t", "ok", {}, "1", "9"))
        self.assertEqual(
            frame.data, b'{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"t"}'
        )

    def test_push(self) -> None:
        """A V1 push carries a null ref and no join_ref."""
        frame = V1.encode(Message("t", "joined", {"a": "\x1f"}, None, "9"))
        self.assertEqual(frame.data, b'{"event":"joined","payload":{"a":"\\u001F"},"ref":null,"topic":"t"}')

    def test_broadcast(self) -> None:
        """A V1 broadcast carries a null ref."""
        frame = V1.fastlane(Broadcast("t", "shout", {"b": 1}))
        self.assertEqual(frame.data, b'{"event":"shout","payload":{"b":1},"ref":null,"topic":"t"}')

    def test_binaryRefused(self) -> None:
        """V1 cannot encode binary payloads."""
        self.assertRaises(TypeError, V1.encode, Message("t", "e", b"x"))
        self.assertRaises(TypeError, V1.encode, Reply("t", "ok", b"x", "1"))
        self.assertRaises(TypeError, V1.fastlane, Broadcast("t", "e", b"x"))

    def test_decode(self) -> None:
        """A V1 object decodes with an optional join_ref."""
        self.assertEqual(
            V1.decode(b'{"topic":"t","event":"e","payload":[1],"ref":"2"}', False),
            Message("t", "e", [1], "2", None),
        )
        self.assertEqual(
            V1.decode(b'{"topic":"t","event":"e","payload":{},"ref":"2","join_ref":"1"}', False),
            Message("t", "e", {}, "2", "1"),
        )

    def test_missingKeys(self) -> None:
        """Each of topic, event, payload and ref is required."""
        full = {"topic": "t", "event": "e", "payload": {}, "ref": "1"}
        for key in full:
            partial = {k: v for k, v in full.items() if k != key}
            self.assertRaises(DecodeError, V1.decode, json_dumps(partial), False)

    def test_notAnObject(self) -> None:
        """A V2 array is a DecodeError under V1."""
        self.assertRaises(DecodeError, V1.decode, b'[null,"1","t","e",{}]', False)

    def test_invalidJSON(self) -> None:
        """Invalid JSON is a DecodeError."""
        self.assertRaises(DecodeError, V1.decode, b"{", False)

    def test_nonStringTopic(self) -> None:
        """A non-string topic is a DecodeError."""
        self.assertRaises(DecodeError, V1.decode, b'{"topic":1,"event":"e","payload":{},"ref":"1"}', False)

    def test_binaryFrame(self) -> None:
        """A binary frame is a DecodeError under V1."""
        self.assertRaises(DecodeError, V1.decode, CAPTURED_PUSH, True)


class FrameTests(SynchronousTestCase):
    """
    Tests for L{Frame}.
    """

    def test_attributes(self) -> None:
        """A frame holds its data, its kind, and an empty wire cache."""
        frame = Frame(b"x", True)
        self.assertEqual((frame.data, frame.binary, frame.wire), (b"x", True, None))
        self.assertEqual(repr(frame), "Frame(b'x', binary=True)")


class SelectSerializerTests(SynchronousTestCase):
    """
    Tests for L{select_serializer}.
    """

    def test_missingVsnIsV1(self) -> None:
        """No vsn means 1.0.0, the V1 serializer."""
        self.assertIsInstance(select_serializer(None), V1JSONSerializer)
        self.assertIsInstance(select_serializer("1.0.0"), V1JSONSerializer)

    def test_v2Patch(self) -> None:
        """2.0.0 and any 2.0.x select V2."""
        self.assertIsInstance(select_serializer("2.0.0"), V2JSONSerializer)
        self.assertIsInstance(select_serializer("2.0.7"), V2JSONSerializer)

    def test_mismatch(self) -> None:
        """Versions that parse but match no requirement are refused, naming the version."""
        for vsn in ("2.1.0", "123.1.1", "3.0.0", "0.9.0"):
            e = self.assertRaises(VersionError, select_serializer, vsn)
            self.assertIn(f"requested transport version {vsn!r}", str(e))

    def test_invalid(self) -> None:
        """Versions that do not parse, or are not strings, are refused as invalid."""
        for vsn in ("2.0", "abc", "", "2.0.0.0", {"x": "1"}):
            e = self.assertRaises(VersionError, select_serializer, vsn)  # type: ignore[arg-type]
            self.assertIn("invalid transport version", str(e))

    def test_prerelease(self) -> None:
        """A pre-release such as 2.0.1-dev matches nothing."""
        self.assertRaises(VersionError, select_serializer, "2.0.1-dev")

    def test_buildMetadata(self) -> None:
        """Build metadata does not make a pre-release: 2.0.1+build selects V2."""
        self.assertIsInstance(select_serializer("2.0.1+build"), V2JSONSerializer)

    def test_customList(self) -> None:
        """An explicit serializer list is honoured."""
        self.assertRaises(VersionError, select_serializer, None, SERIALIZERS[1:])


class JSONRoundTripTests(SynchronousTestCase):
    """
    Property tests: the escape rewriting never changes a value.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from(["\\", "u", "0", "1", "f", "F", "\x1f", "\x00", "a", '"'])))
    def test_textRoundTrips(self, text: str) -> None:
        """Any text, however many backslashes it holds, decodes back to itself."""
        data = json_dumps({"t": text})
        self.assertEqual(orjson.loads(data), {"t": text})
        self.assertNotRegex(data.decode(), r"(?<!\\)(?:\\\\)*\\u00[01][a-f]")


def _v1(topic: object = "t", event: object = "e", payload: object = None, ref: object = "1", **extra: object) -> bytes:
    obj = {"topic": topic, "event": event, "payload": {} if payload is None else payload, "ref": ref, **extra}
    return orjson.dumps(obj)


def _v2(join_ref: object = None, ref: object = "1", topic: object = "t", event: object = "e", payload: object = None) -> bytes:
    return orjson.dumps([join_ref, ref, topic, event, {} if payload is None else payload])


def _nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


class EdgeInputTests(SynchronousTestCase):
    """
    Tests for the limits decode enforces under both serializers: field
    types and sizes, and payload nesting.
    """

    def decodes(self, frame: bytes, serializer: object, binary: bool = False) -> bool:
        """Whether ``frame`` decodes (True) or is a DecodeError (False)."""
        try:
            serializer.decode(frame, binary)  # type: ignore[attr-defined]
        except DecodeError:
            return False
        return True

    def test_refTypes(self) -> None:
        """ref and join_ref must be strings or null, under both serializers."""
        for value in (1, 1.5, True, False, [], ["1"], {}, {"a": 1}):
            self.assertFalse(self.decodes(_v2(ref=value), V2), value)
            self.assertFalse(self.decodes(_v2(join_ref=value), V2), value)
            self.assertFalse(self.decodes(_v1(ref=value), V1), value)
            self.assertFalse(self.decodes(_v1(join_ref=value), V1), value)
        for value in (None, "", "1", "é"):
            self.assertTrue(self.decodes(_v2(ref=value, join_ref=value), V2), value)
            self.assertTrue(self.decodes(_v1(ref=value, join_ref=value), V1), value)

    def test_refSize(self) -> None:
        """A ref or join_ref is at most 64 bytes in UTF-8, not characters."""
        for ok_ref, long_ref in (("r" * 64, "r" * 65), ("€" * 21, "€" * 22)):
            self.assertTrue(self.decodes(_v2(ref=ok_ref, join_ref=ok_ref), V2))
            self.assertTrue(self.decodes(_v1(ref=ok_ref, join_ref=ok_ref), V1))
            self.assertFalse(self.decodes(_v2(ref=long_ref), V2))
            self.assertFalse(self.decodes(_v2(join_ref=long_ref), V2))
            self.assertFalse(self.decodes(_v1(ref=long_ref), V1))
            self.assertFalse(self.decodes(_v1(join_ref=long_ref), V1))

    def test_nameSize(self) -> None:
        """A topic or event is at most 255 bytes in UTF-8 (what a binary frame carries)."""
        for ok_name, long_name in (("t" * 255, "t" * 256), ("é" * 127 + "x", "é" * 128)):
            self.assertTrue(self.decodes(_v2(topic=ok_name, event=ok_name), V2))
            self.assertTrue(self.decodes(_v1(topic=ok_name, event=ok_name), V1))
            self.assertFalse(self.decodes(_v2(topic=long_name), V2))
            self.assertFalse(self.decodes(_v2(event=long_name), V2))
            self.assertFalse(self.decodes(_v1(topic=long_name), V1))
            self.assertFalse(self.decodes(_v1(event=long_name), V1))

    def test_binaryRefSize(self) -> None:
        """A binary push's ref field is limited to 64 bytes too."""
        def push(ref: bytes) -> bytes:
            return bytes([0, 1, len(ref), 1, 1]) + b"3" + ref + b"te" + b"\x00"

        self.assertTrue(self.decodes(push(b"r" * 64), V2, True))
        self.assertFalse(self.decodes(push(b"r" * 65), V2, True))

    def test_payloadDepth(self) -> None:
        """A payload nested 252 deep decodes and its reply encodes; 253, or orjson's 1024, does not."""
        for serializer, frame in ((V2, _v2), (V1, _v1)):
            message = serializer.decode(frame(payload=orjson.loads(_nested(252))), False)
            serializer.encode(Reply("t", "ok", message.payload, "1", None))
            deep = {"a": orjson.loads(_nested(252))}
            self.assertFalse(self.decodes(frame(payload=deep), serializer))
            self.assertFalse(self.decodes(frame(payload=[orjson.loads(_nested(252))]), serializer))
        self.assertFalse(self.decodes(b'[null,"1","t","e",' + _nested(1023) + b"]", V2))
        self.assertFalse(self.decodes(b'[null,"1","t","e",' + _nested(2000) + b"]", V2))

    def test_wideShallowPayload(self) -> None:
        """Thousands of brackets side by side are no nesting."""
        payload = [[] for _ in range(5000)] + [{} for _ in range(5000)]
        self.assertTrue(self.decodes(_v2(payload=payload), V2))
        self.assertTrue(self.decodes(_v1(payload=payload), V1))

    def test_bracketsInStrings(self) -> None:
        """Brackets inside strings only make the check look closer; the payload decodes."""
        self.assertTrue(self.decodes(_v2(payload={"s": "[{" * 1000}), V2))

    def test_hugeNumbers(self) -> None:
        """A number beyond a double's range is a DecodeError; a big integer decodes and encodes."""
        self.assertFalse(self.decodes(b'[null,"1","t","e",{"n":1e400}]', V2))
        message = V2.decode(b'[null,"1","t","e",{"n":123456789012345678901234567890}]', False)
        V2.encode(Reply("t", "ok", message.payload, "1", None))

    def test_limitsAreAttributes(self) -> None:
        """A subclass may change every limit."""

        class Strict(V2JSONSerializer):
            max_name_bytes = 8
            max_ref_bytes = 2
            max_payload_depth = 3

        strict = Strict()
        self.assertTrue(self.decodes(_v2(ref="12", topic="t" * 8, payload=orjson.loads(_nested(3))), strict))
        self.assertFalse(self.decodes(_v2(ref="123"), strict))
        self.assertFalse(self.decodes(_v2(topic="t" * 9), strict))
        self.assertFalse(self.decodes(_v2(payload=orjson.loads(_nested(4))), strict))
