"""
Tests for L{twisted_phoenix.client.serializers}: the client's side of the
V1 and V2 wire formats, byte for byte where phoenix.js's bytes are known,
and against the server's own serializers both ways.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import serializers as server
from twisted_phoenix.client.serializers import V1, V2, DecodeError, for_vsn
from twisted_phoenix.message import Broadcast, Message, Reply

#: The binary push phoenix.js 1.8.16 sent in the captured session (spec 2.2).
CAPTURED_PUSH = bytes.fromhex("0001010a03") + b"3" + b"5" + b"room:lobby" + b"bin" + b"\x01\x02\x03"
#: The matching binary reply.
CAPTURED_REPLY = bytes.fromhex("0101010a02") + b"3" + b"5" + b"room:lobby" + b"ok" + b"\x09\x09"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


class V2ClientEncodeTests(SynchronousTestCase):
    """Encoding what a client sends with ``vsn=2.0.0``."""

    def test_textPush(self) -> None:
        """A push is the JSON array phoenix.js writes."""
        self.assertEqual(
            V2.encode(Message("room:lobby", "new_msg", {"body": "hi"}, "2", "1")),
            (b'["1","2","room:lobby","new_msg",{"body":"hi"}]', False),
        )

    def test_heartbeat(self) -> None:
        """A heartbeat has a null join_ref."""
        self.assertEqual(
            V2.encode(Message("phoenix", "heartbeat", {}, "7", None)), (b'[null,"7","phoenix","heartbeat",{}]', False)
        )

    def test_nonASCII(self) -> None:
        """Non-ASCII text is written as raw UTF-8, as JSON.stringify then UTF-8 does."""
        data, _ = V2.encode(Message("t", "e", {"s": "é€"}, "1", "1"))
        self.assertEqual(data, '["1","1","t","e",{"s":"é€"}]'.encode())

    def test_binaryPushMatchesCapture(self) -> None:
        """A bytes payload is the binary push phoenix.js sent in the captured session."""
        self.assertEqual(
            V2.encode(Message("room:lobby", "bin", b"\x01\x02\x03", "5", "3")), (CAPTURED_PUSH, True)
        )

    def test_binaryPayloadTypes(self) -> None:
        """bytearray and memoryview payloads are binary too."""
        for payload in (bytearray(b"\x01\x02\x03"), memoryview(b"\x01\x02\x03")):
            self.assertEqual(V2.encode(Message("room:lobby", "bin", payload, "5", "3")), (CAPTURED_PUSH, True))

    def test_binaryFieldLimit(self) -> None:
        """A binary frame field over 255 bytes is refused, as phoenix.js refuses it."""
        self.assertRaises(ValueError, V2.encode, Message("t" * 256, "e", b"", "1", "1"))
        V2.encode(Message("t" * 255, "e", b"", "1", "1"))

    def test_serverDecodesWhatClientEncodes(self) -> None:
        """The server's V2 serializer decodes the client's frames back to the same message."""
        for message in (
            Message("room:lobby", "phx_join", {"a": [1, 2.5, None]}, "1", "1"),
            Message("phoenix", "heartbeat", {}, "9", None),
            Message("bin:x", "upload", b"\x00\xff", "4", "3"),
        ):
            data, binary = V2.encode(message)
            self.assertEqual(server.V2JSONSerializer().decode(data, binary), message)

    @settings(max_examples=50, deadline=None)
    @given(json_values, st.text(min_size=1, max_size=10), st.text(min_size=1, max_size=10))
    def test_roundTripThroughServer(self, payload: object, topic: str, event: str) -> None:
        """Any JSON payload survives client encode → server decode."""
        message = Message(topic, event, payload, "2", "1")
        data, binary = V2.encode(message)
        self.assertEqual(server.V2JSONSerializer().decode(data, binary), message)


class V2ClientDecodeTests(SynchronousTestCase):
    """Decoding what a server sends with ``vsn=2.0.0``."""

    def test_reply(self) -> None:
        """A text reply decodes as phx_reply with {status, response}."""
        frame = server.V2JSONSerializer().encode(Reply("room:lobby", "ok", {"ping": "pong"}, "2", "1"))
        self.assertEqual(
            V2.decode(frame.data, frame.binary),
            Message("room:lobby", "phx_reply", {"response": {"ping": "pong"}, "status": "ok"}, "2", "1"),
        )

    def test_broadcast(self) -> None:
        """A fastlane broadcast decodes with null refs."""
        frame = server.V2JSONSerializer().fastlane(Broadcast("room:lobby", "shout", {"x": 1}))
        self.assertEqual(V2.decode(frame.data, False), Message("room:lobby", "shout", {"x": 1}, None, None))

    def test_binaryReplyMatchesCapture(self) -> None:
        """The captured binary reply decodes as phoenix.js decodes it: {status, response: bytes}."""
        self.assertEqual(
            V2.decode(CAPTURED_REPLY, True),
            Message("room:lobby", "phx_reply", {"status": "ok", "response": b"\x09\x09"}, "5", "3"),
        )

    def test_binaryPush(self) -> None:
        """A binary push (kind 0) decodes with its join_ref and no ref."""
        frame = server.V2JSONSerializer().encode(Message("bin:x", "data", b"\x00\x01", None, "11"))
        self.assertEqual(V2.decode(frame.data, True), Message("bin:x", "data", b"\x00\x01", None, "11"))

    def test_binaryBroadcast(self) -> None:
        """A binary broadcast (kind 2) decodes with null refs."""
        frame = server.V2JSONSerializer().fastlane(Broadcast("bin:x", "bytes", b"\xde\xad\xbe\xef"))
        self.assertEqual(V2.decode(frame.data, True), Message("bin:x", "bytes", b"\xde\xad\xbe\xef", None, None))

    def test_extraItemsIgnored(self) -> None:
        """Items after the fifth are ignored, as phoenix.js's destructuring ignores them."""
        self.assertEqual(V2.decode(b'[null,null,"t","e",{},"x"]', False), Message("t", "e", {}, None, None))

    def test_malformed(self) -> None:
        """Malformed frames raise DecodeError."""
        for data, binary in (
            (b"nope", False),
            (b'{"topic":"t"}', False),
            (b'[1,2,3]', False),
            (b'[null,null,1,"e",{}]', False),
            (b"", True),
            (b"\x09abc", True),
            (b"\x01\x05\x01\x01\x01ab", True),
            (b"\x02\x01\x01\xff\xfe", True),
        ):
            self.assertRaises(DecodeError, V2.decode, data, binary)


class V1ClientTests(SynchronousTestCase):
    """``vsn=1.0.0``: JSON objects."""

    def test_encode(self) -> None:
        """A push is the JSON object phoenix.js 1.3-era clients wrote, join_ref included."""
        self.assertEqual(
            V1.encode(Message("room:lobby", "phx_join", {}, "1", "1")),
            (b'{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}', False),
        )

    def test_serverDecodesWhatClientEncodes(self) -> None:
        """The server's V1 serializer decodes the client's frames back to the same message."""
        message = Message("room:lobby", "ping", {"n": [1, "é"]}, "3", "1")
        data, binary = V1.encode(message)
        self.assertEqual(server.V1JSONSerializer().decode(data, binary), message)

    def test_decodeReply(self) -> None:
        """A V1 reply (no join_ref on the wire) decodes with join_ref None."""
        frame = server.V1JSONSerializer().encode(Reply("room:lobby", "error", {"reason": "x"}, "3", "1"))
        self.assertEqual(
            V1.decode(frame.data, False),
            Message("room:lobby", "phx_reply", {"response": {"reason": "x"}, "status": "error"}, "3", None),
        )

    def test_noBinary(self) -> None:
        """V1 cannot carry bytes payloads nor decode binary frames."""
        self.assertRaises(TypeError, V1.encode, Message("t", "e", b"\x01", "1", "1"))
        self.assertRaises(DecodeError, V1.decode, b"\x00", True)

    def test_malformed(self) -> None:
        """Malformed V1 frames raise DecodeError."""
        for data in (b"[]", b"{", b'{"topic":1,"event":"e"}'):
            self.assertRaises(DecodeError, V1.decode, data, False)


class ForVsnTests(SynchronousTestCase):
    """Choosing the client serializer by vsn."""

    def test_versions(self) -> None:
        """1.x.y selects V1, 2.x.y selects V2, anything else is refused."""
        self.assertIs(for_vsn("1.0.0"), V1)
        self.assertIs(for_vsn("2.0.0"), V2)
        self.assertIs(for_vsn("2.0.7"), V2)
        self.assertRaises(ValueError, for_vsn, "3.0.0")
