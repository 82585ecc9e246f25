"""
Property tests (hypothesis) for the session layer's edges.

Serializers: whatever bytes arrive, ``decode`` returns a
L{twisted_phoenix.message.Message} whose fields obey the rules of
L{twisted_phoenix.serializers.Serializer} or raises
L{twisted_phoenix.serializers.DecodeError}, never anything else; and what
decodes can be answered (a reply and a push carrying its payload encode).

Session: random sequences of joins, leaves, events, heartbeats, stale and
null join_refs, duplicate joins, pending joins, clock jumps and garbage
frames against the demo channels and a test channel, on a V2 and a V1
client of one endpoint: no exception but DecodeError leaves
C{frame_received}, every message with a ref gets at most one reply, every
frame written decodes, and the channel table matches the PubSub.

The examples are derandomized and bounded, so CI runs the same cases in a
few seconds.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import Channel, Stop, error, ok
from twisted_phoenix._channelserver import JOINED, JOINING, ChannelServer
from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket
from twisted_phoenix.message import PHX_JOIN, PHX_LEAVE, PHX_REPLY, Message, Reply
from twisted_phoenix.serializers import (
    DecodeError,
    Serializer,
    V1JSONSerializer,
    V2JSONSerializer,
)
from twisted_phoenix.testing import ChannelTest, ClientSocket, encode_client_message

V1 = V1JSONSerializer()
V2 = V2JSONSerializer()
BOTH = st.sampled_from([V1, V2])

FAST = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- serializers ------------------------------------------------------------------


def depth(value: Any) -> int:
    """The nesting of arrays and objects in a JSON value (a scalar is 0)."""
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def size(text: str) -> int:
    return len(text.encode("utf-8"))


def assert_valid(test: SynchronousTestCase, serializer: Serializer, message: Message, binary: bool) -> None:
    """``message`` obeys the decode rules and can be answered."""
    test.assertIs(type(message), Message)
    for name in (message.topic, message.event):
        test.assertIs(type(name), str)
        test.assertLessEqual(size(name), serializer.max_name_bytes)
    for ref in (message.ref, message.join_ref):
        if ref is not None:
            test.assertIs(type(ref), str)
            test.assertLessEqual(size(ref), serializer.max_ref_bytes)
    if binary:
        test.assertIs(type(message.payload), bytes)
    else:
        test.assertNotIsInstance(message.payload, bytes)
        test.assertLessEqual(depth(message.payload), serializer.max_payload_depth)
    for answer in (
        Reply(message.topic, "ok", message.payload, message.ref, message.join_ref),
        Message(message.topic, message.event, message.payload, None, message.join_ref),
    ):
        frame = serializer.encode(answer)
        if not frame.binary:
            orjson.loads(frame.data)


def decode(test: SynchronousTestCase, serializer: Serializer, data: bytes, binary: bool) -> Message | None:
    """Decode; anything but a Message or a DecodeError fails the test."""
    try:
        message = serializer.decode(data, binary)
    except DecodeError:
        return None
    assert_valid(test, serializer, message, binary)
    return message


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
names = st.text(max_size=300) | st.sampled_from(["phoenix", "heartbeat", "phx_join", "room:1", ""])
refs = st.none() | st.text(max_size=80) | json_values


def number_texts() -> st.SearchStrategy[bytes]:
    """JSON number literals of any size."""
    return st.from_regex(rb"-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,5})?", fullmatch=True)


def mutate(data: st.DataObject, frame: bytes) -> bytes:
    """Apply a few random byte-level changes to ``frame``."""
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        at = data.draw(st.integers(0, len(buf)))
        if kind == "flip" and at < len(buf):
            buf[at] = data.draw(st.integers(0, 255))
        elif kind == "delete":
            del buf[at : at + data.draw(st.integers(1, 8))]
        elif kind == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"[", b"{", b'"', b"\xff", b"\\u"]))
        else:
            del buf[at:]
    return bytes(buf)


def valid_frame(serializer: Serializer, message: Message) -> tuple[bytes, bool]:
    return encode_client_message(serializer, message)


messages = st.builds(
    Message,
    st.text(max_size=40),
    st.text(max_size=40),
    json_values,
    st.none() | st.text(max_size=10),
    st.none() | st.text(max_size=10),
)


class SerializerPropertyTests(SynchronousTestCase):
    """
    Properties of decode under both serializers.
    """

    @FAST
    @given(BOTH, st.binary(max_size=300), st.booleans())
    def test_randomBytes(self, serializer: Serializer, data: bytes, binary: bool) -> None:
        """Random bytes decode by the rules or raise DecodeError."""
        decode(self, serializer, data, binary)

    @FAST
    @given(BOTH, st.lists(refs | names | json_values, max_size=7))
    def test_randomArrays(self, serializer: Serializer, items: list[Any]) -> None:
        """Arrays of any values in any slot decode by the rules or raise DecodeError."""
        message = decode(self, serializer, orjson.dumps(items), False)
        if message is not None and serializer is V2:
            self.assertEqual(list(message[:2]) + [message.ref, message.join_ref], [items[2], items[3], items[1], items[0]])

    @FAST
    @given(
        BOTH,
        st.dictionaries(
            st.sampled_from(["topic", "event", "payload", "ref", "join_ref", "other"]),
            refs | names | json_values,
        ),
    )
    def test_randomObjects(self, serializer: Serializer, obj: dict[str, Any]) -> None:
        """Objects with any of V1's keys, holding any values, decode by the rules or raise DecodeError."""
        message = decode(self, serializer, orjson.dumps(obj), False)
        if message is not None:
            self.assertIs(serializer, V1)
            self.assertEqual(message.ref, obj["ref"])

    @FAST
    @given(BOTH, messages)
    def test_validFramesRoundTrip(self, serializer: Serializer, message: Message) -> None:
        """A frame made the way clients make it decodes to the message it came from."""
        data, binary = valid_frame(serializer, message)
        decoded = decode(self, serializer, data, binary)
        if size(message.topic) <= 255 and size(message.event) <= 255:
            self.assertEqual(decoded, message)

    @FAST
    @given(BOTH, messages, st.data())
    def test_mutatedFrames(self, serializer: Serializer, message: Message, data: st.DataObject) -> None:
        """Valid frames with bytes flipped, cut, deleted or inserted decode by the rules or raise DecodeError."""
        frame, binary = valid_frame(serializer, message)
        decode(self, serializer, mutate(data, frame), binary)

    @FAST
    @given(
        st.text(max_size=70),
        st.text(max_size=70),
        st.text(max_size=300),
        st.text(max_size=300),
        st.binary(max_size=50),
        st.data(),
    )
    def test_binaryFrames(self, jr: str, ref: str, topic: str, event: str, payload: bytes, data: st.DataObject) -> None:
        """V2 binary pushes, whole, truncated or mutated, decode by the rules or raise DecodeError."""
        fields = [f.encode("utf-8")[:255] for f in (jr, ref, topic, event)]
        frame = bytes([0] + [len(f) for f in fields]) + b"".join(fields) + payload
        whole = decode(self, V2, frame, True)
        fits = all(len(f) <= 64 for f in fields[:2]) and all(
            _utf8(f) for f in fields
        )
        self.assertEqual(whole is not None, fits)
        cut = data.draw(st.integers(0, len(frame)))
        decode(self, V2, frame[:cut], True)
        decode(self, V2, mutate(data, frame), True)

    @FAST
    @given(BOTH, st.integers(200, 1100), st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")]))
    def test_deepNesting(self, serializer: Serializer, levels: int, brackets: tuple[bytes, bytes]) -> None:
        """A payload nested up to 252 levels decodes and is answered; deeper is a DecodeError."""
        opening, closing = brackets
        payload = opening * levels + b"1" + closing * levels
        if serializer is V2:
            frame = b'[null,"1","t","e",' + payload + b"]"
        else:
            frame = b'{"topic":"t","event":"e","ref":"1","payload":' + payload + b"}"
        message = decode(self, serializer, frame, False)
        self.assertEqual(message is not None, levels <= 252, levels)

    @FAST
    @given(BOTH, st.integers(0, 300), st.integers(0, 300))
    def test_wideShallowPayloads(self, serializer: Serializer, arrays: int, objects: int) -> None:
        """Many brackets side by side are no nesting: they decode."""
        payload = [[] for _ in range(arrays)] + [{} for _ in range(objects)]
        frame, _ = valid_frame(serializer, Message("t", "e", payload, "1", None))
        self.assertIsNotNone(decode(self, serializer, frame, False))

    @FAST
    @given(BOTH, number_texts())
    def test_hugeNumbers(self, serializer: Serializer, number: bytes) -> None:
        """Numbers of any size decode by the rules (and encode back) or raise DecodeError."""
        if serializer is V2:
            frame = b'[null,"1","t","e",{"n":' + number + b"}]"
        else:
            frame = b'{"topic":"t","event":"e","ref":"1","payload":[' + number + b"]}"
        decode(self, serializer, frame, False)

    @FAST
    @given(BOTH, st.binary(min_size=1, max_size=6), st.integers(0, 3))
    def test_invalidUTF8(self, serializer: Serializer, junk: bytes, slot: int) -> None:
        """Bytes that are not UTF-8 inside a string decode by the rules or raise DecodeError."""
        parts = [b'"1"', b'"2"', b'"t"', b'"e"']
        parts[slot] = b'"' + junk + b'"'
        if serializer is V2:
            frame = b"[" + b",".join(parts) + b",{}]"
        else:
            frame = b'{"join_ref":%s,"ref":%s,"topic":%s,"event":%s,"payload":{}}' % tuple(parts)
        message = decode(self, serializer, frame, False)
        try:
            junk.decode("utf-8")
        except UnicodeDecodeError:
            self.assertIsNone(message)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- the session ----------------------------------------------------------------------


class FuzzChannel(Channel):
    """A test channel whose join and events do whatever the fuzzer asks."""

    intercept = ["out"]

    def join(self, topic: str, payload: Any) -> Any:
        mode = payload.get("mode") if isinstance(payload, dict) else None
        if mode == "refuse":
            return error({"reason": "no"})
        if mode == "crash":
            raise ZeroDivisionError("join")
        if mode == "pending":
            d: Deferred[Any] = Deferred()
            self.socket.pending.append(d)  # type: ignore[attr-defined]
            return d
        if mode == "bad":
            return ok({"o": object()})
        if mode == "after":
            self.send("after")
        return None

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "echo":
            return ok(payload if not isinstance(payload, bytes) else {"bytes": len(payload)})
        if event == "crash":
            raise ZeroDivisionError("handle_in")
        if event == "stop":
            return Stop("normal", ok())
        if event == "stop_error":
            return Stop("boom")
        if event == "bad_reply":
            return ok({"o": object()})
        if event == "bad_push":
            self.push("x", {"o": object()})
            return None
        if event == "late":
            self.socket.late.append(self.socket_ref())  # type: ignore[attr-defined]
            return None
        if event == "broadcast":
            self.broadcast("b", payload if isinstance(payload, (dict, bytes)) else {"v": payload})
            return None
        if event == "out":
            self.broadcast("out", {"o": object()})
            return None
        return None

    def handle_info(self, message: Any) -> None:
        self.push(str(message), {})


class FuzzSocket(UserSocket):
    """The demo's routes plus the fuzz channel."""

    channels = {**UserSocket.channels, "t:*": FuzzChannel}

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.assigns["user_id"] = "u"
        self.pending: list[Deferred[Any]] = []
        self.late: list[Any] = []


class FuzzEndpoint(HelloSocketsEndpoint):
    """Small rate limits, so that sequences reach them."""

    event_rate = 50.0
    event_burst = 60.0
    join_rate = 10.0
    join_burst = 20.0


TOPICS = ["ping", "ping:1", "wild:1:2", "wild:1:3", "tracked", "t:1", "t:2", "nowhere", "phoenix"]
EVENTS = [
    "ping", "ping:x", "pong", "ding", "param_ping", "broadcast", "unknown", "echo", "crash",
    "stop", "stop_error", "bad_reply", "bad_push", "late", "out", "heartbeat",
]
# Weighted towards what reaches a channel: its topics, its join_ref.
LIKELY_TOPICS = st.sampled_from(TOPICS + ["t:1", "t:2", "ping"] * 2)
#: For events and leaves: mostly a topic the client has joined.
A_JOINED_TOPIC = "<joined>"
TARGET_TOPICS = st.sampled_from([A_JOINED_TOPIC] * 12 + TOPICS)
JOIN_REFS = st.sampled_from(["current"] * 4 + ["null", "stale", "fresh"])
JOIN_PAYLOADS = st.sampled_from([{}] * 3 + [{"mode": m} for m in ("refuse", "crash", "pending", "bad", "after")])
PAYLOADS = st.sampled_from([{}, {"mode": "ok"}, {"error": True}, {"a": [1, "x"]}]) | json_values
CLIENT = st.sampled_from([0, 0, 1])
KINDS = st.sampled_from(
    # (kind, weight): garbage closes the connection, so it is rare.
    [kind for kind, weight in (
        ("join", 8), ("event", 20), ("binary", 2), ("leave", 3), ("heartbeat", 2), ("resolve", 4),
        ("late_reply", 2), ("advance", 4), ("burst", 2), ("garbage", 1),
    ) for _ in range(weight)]
)


def operation(data: st.DataObject) -> tuple[Any, ...]:
    """Draw one operation for :class:`Driver`."""
    kind = data.draw(KINDS)
    if kind == "join":
        return (kind, data.draw(CLIENT), data.draw(LIKELY_TOPICS), data.draw(JOIN_REFS), data.draw(JOIN_PAYLOADS))
    if kind == "event":
        return (
            kind, data.draw(CLIENT), data.draw(TARGET_TOPICS), data.draw(st.sampled_from(EVENTS)),
            data.draw(JOIN_REFS), data.draw(PAYLOADS),
        )
    if kind == "binary":
        return (
            kind, data.draw(TARGET_TOPICS), data.draw(st.sampled_from(EVENTS)), data.draw(JOIN_REFS),
            data.draw(st.binary(max_size=8)),
        )
    if kind == "leave":
        return (kind, data.draw(CLIENT), data.draw(TARGET_TOPICS), data.draw(JOIN_REFS))
    if kind == "heartbeat":
        return (kind, data.draw(CLIENT))
    if kind == "resolve":
        return (kind, data.draw(st.sampled_from(["ok", "error", "fail"])))
    if kind == "late_reply":
        return (kind, data.draw(st.sampled_from(["ok", "bad"])))
    if kind == "advance":
        return (kind, data.draw(st.sampled_from([0.0, 0.05, 0.5, 5.0, 5.0])))
    if kind == "burst":
        return (kind, data.draw(CLIENT), data.draw(st.integers(1, 90)), data.draw(st.booleans()))
    return (kind, data.draw(CLIENT), data.draw(st.binary(max_size=40)))


class Driver:
    """Two clients (V2 and V1) of one endpoint, driven frame by frame."""

    def __init__(self, test: SynchronousTestCase) -> None:
        self.test = test
        self.harness = ChannelTest(FuzzEndpoint)
        self.clients = [self.harness.socket(FuzzSocket, vsn=vsn) for vsn in ("2.0.0", "1.0.0")]
        self.join_refs: list[dict[str, str]] = [{}, {}]
        self.refs = 0
        self.sent: list[set[str]] = [set(), set()]

    def ref(self) -> str:
        self.refs += 1
        return str(self.refs)

    def topic(self, index: int, topic: str) -> str:
        """``topic``, or for A_JOINED_TOPIC one the client has joined (else "ping")."""
        if topic != A_JOINED_TOPIC:
            return topic
        joined = sorted(self.clients[index].session.channels)
        return joined[self.refs % len(joined)] if joined else "ping"

    def join_ref(self, index: int, topic: str, choice: str) -> str | None:
        current = self.join_refs[index].get(topic)
        if choice == "current" and current is not None:
            return current
        if choice == "null":
            return None
        if choice == "stale":
            return "stale"
        return self.ref()

    def send(self, index: int, message: Message) -> None:
        client = self.clients[index]
        if message.ref is not None:
            self.sent[index].add(message.ref)
        data, binary = encode_client_message(client.serializer, message)
        self.feed(client, data, binary)

    def feed(self, client: ClientSocket, data: bytes, binary: bool) -> None:
        session = client.session
        if session.closed:
            return
        try:
            session.frame_received(data, binary)
        except DecodeError:
            client.connection.close(1011, "malformed frame")  # as the transport does

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "join":
            _, index, topic, choice, payload = op
            ref = self.ref()
            join_ref = ref if choice == "fresh" else self.join_ref(index, topic, choice)
            if join_ref is not None:
                self.join_refs[index][topic] = join_ref
            self.send(index, Message(topic, PHX_JOIN, payload, ref, join_ref))
        elif kind == "event":
            _, index, topic, event, choice, payload = op
            topic = self.topic(index, topic)
            event = "heartbeat" if topic == "phoenix" else event
            self.send(index, Message(topic, event, payload, self.ref(), self.join_ref(index, topic, choice)))
        elif kind == "binary":
            _, topic, event, choice, payload = op
            topic = self.topic(0, topic)
            self.send(0, Message(topic, event, payload, self.ref(), self.join_ref(0, topic, choice)))
        elif kind == "leave":
            _, index, topic, choice = op
            topic = self.topic(index, topic)
            self.send(index, Message(topic, PHX_LEAVE, {}, self.ref(), self.join_ref(index, topic, choice)))
        elif kind == "heartbeat":
            self.send(op[1], Message("phoenix", "heartbeat", {}, self.ref(), None))
        elif kind == "resolve":
            for client in self.clients:
                if client.socket.pending:
                    d = client.socket.pending.pop(0)
                    {"ok": lambda: d.callback(None), "error": lambda: d.callback(error({})),
                     "fail": lambda: d.errback(ZeroDivisionError("later"))}[op[1]]()
                    break
        elif kind == "late_reply":
            for client in self.clients:
                if client.socket.late:
                    socket_ref = client.socket.late.pop(0)
                    socket_ref.server.reply(socket_ref, ok({"o": object()} if op[1] == "bad" else {}))
                    break
        elif kind == "advance":
            self.harness.advance(op[1])
        elif kind == "burst":
            _, index, count, joins = op
            for i in range(count):
                if joins:
                    ref = self.ref()
                    self.send(index, Message(f"t:burst{i}", PHX_JOIN, {}, ref, ref))
                else:
                    self.send(index, Message("phoenix", "heartbeat", {}, self.ref(), None))
        elif kind == "garbage":
            self.feed(self.clients[op[1]], op[2], False)

    def check(self) -> None:
        """The invariants, for both clients."""
        test = self.test
        pubsub = self.harness.endpoint.pubsub
        live: dict[str, list[ChannelServer]] = {}
        for index, client in enumerate(self.clients):
            counts: dict[Any, int] = {}
            for frame in client.frames:
                if frame.binary:
                    kind = frame.data[0]
                    if kind == 1:
                        ref_len = frame.data[2]
                        start = 5 + frame.data[1]
                        ref = frame.data[start : start + ref_len].decode()
                        counts[ref] = counts.get(ref, 0) + 1
                    continue
                obj = orjson.loads(frame.data)  # every frame written decodes
                event, ref = (obj[3], obj[1]) if index == 0 else (obj["event"], obj["ref"])
                if event == PHX_REPLY:
                    counts[ref] = counts.get(ref, 0) + 1
            for ref, count in counts.items():
                test.assertEqual(count, 1, f"{count} replies to {ref!r}")
                test.assertIn(ref, self.sent[index])
            session = client.session
            if session.closed:
                test.assertEqual(session.channels, {})
            for topic, server in session.channels.items():
                test.assertEqual(server.topic, topic)
                test.assertIs(server.session, session)
                test.assertIn(server.state, (JOINING, JOINED))
                if server.state is JOINED:
                    live.setdefault(topic, []).append(server)
        for topic in TOPICS:
            subscribed = [s for s in pubsub.subscribers(topic) if isinstance(s, ChannelServer)]
            test.assertEqual(sorted(map(id, subscribed)), sorted(map(id, live.get(topic, []))), topic)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for topic in TOPICS:
            self.test.assertEqual(
                [s for s in self.harness.endpoint.pubsub.subscribers(topic) if isinstance(s, ChannelServer)], []
            )


class SessionPropertyTests(SynchronousTestCase):
    """
    Properties of a session's routing under random sequences of messages.
    """

    @settings(FAST, max_examples=200)
    @given(st.data())
    def test_routing(self, data: st.DataObject) -> None:
        """No exception escapes, one reply at most per ref, frames decode, the channel table holds."""
        driver = Driver(self)
        try:
            for _ in range(data.draw(st.integers(0, 40))):
                driver.run(operation(data))
                driver.check()
            driver.close()
        finally:
            self.flushLoggedErrors()
