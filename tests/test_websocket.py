"""
Tests for L{twisted_phoenix.transports.websocket}: the happy paths, over real
loopback sockets, byte for byte where Phoenix's bytes are known.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix import Channel, Endpoint, Socket, ok
from twisted_phoenix.examples.hello_sockets import SALT, HelloSocketsEndpoint, PingChannel
from twisted_phoenix.token import sign

from ._client import HandshakeRefused, capture_logs, connect, raw_connect, serve

SECRET = "t" * 64

JOIN_OK = {"response": {}, "status": "ok"}
PONG = {"response": {"ping": "pong"}, "status": "ok"}


class BinaryChannel(Channel):
    """Phoenix's integration-test binary channel, plus a binary broadcast."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "binary_event" and isinstance(payload, bytes):
            self.push("binary_event", b"\x00\x01")
            return ok(payload + b"\x03\x04")
        if event == "broadcast_bytes":
            self.broadcast("bytes", b"\xde\xad\xbe\xef")
            return None
        return super().handle_in(event, payload)


class RecordingChannel(Channel):
    """Records its terminate reason on the endpoint."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def terminate(self, reason: Any) -> None:
        self.endpoint.terminated.callback((self.topic, reason))  # type: ignore[attr-defined]


class ProbeSocket(Socket):
    """Records what ``connect`` sees on its endpoint."""

    channels = {"ping": PingChannel, "ping:*": PingChannel, "bin:*": BinaryChannel, "rec:*": RecordingChannel}
    auth_token = True

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        self.endpoint.connects.append((params, connect_info))  # type: ignore[attr-defined]
        return True


class IdleSocket(Socket):
    """Closes connections idle for 0.3 s."""

    channels = {"ping": PingChannel}
    timeout = 0.3


class SlowIdleSocket(Socket):
    """Closes connections idle for 1 s."""

    channels = {"ping": PingChannel}
    timeout = 1.0


class ProbeEndpoint(Endpoint):
    sockets = {
        "/socket": ProbeSocket,
        "/rooms/:room": ProbeSocket,
        "/idle": IdleSocket,
        "/slow_idle": SlowIdleSocket,
    }
    check_origin = ["//allowed.example"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connects: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.terminated: Deferred[tuple[str, Any]] = Deferred()


class _Served:
    """Serves a L{ProbeEndpoint} and a L{HelloSocketsEndpoint} per test."""

    def setUp(self) -> None:
        self.logs = capture_logs(self)  # type: ignore[arg-type]
        self.endpoint = ProbeEndpoint(reactor, secret_key_base=SECRET)
        self.port = serve(self, self.endpoint).port  # type: ignore[arg-type]

    def connect(self, **kwargs: Any) -> Any:
        return connect(reactor, kwargs.pop("port", self.port), test=self, **kwargs)  # type: ignore[arg-type]


class WireFormatTests(_Served, TestCase):
    """
    The frames on the wire, byte for byte, for both serializers.
    """

    @inlineCallbacks
    def test_wscatTranscript(self) -> None:
        """The published wscat ping transcript is reproduced byte for byte."""
        client = yield self.connect()
        client.send_text('["1","1","ping","phx_join",{}]')
        frame = yield client.next_frame()
        self.assertEqual(frame, (b'["1","1","ping","phx_reply",{"response":{},"status":"ok"}]', False))
        client.send_text('["1","2","ping","ping",{}]')
        frame = yield client.next_frame()
        self.assertEqual(
            frame, (b'["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]', False)
        )

    @inlineCallbacks
    def test_heartbeat(self) -> None:
        """A heartbeat is answered with a null join_ref, whatever the client sent."""
        client = yield self.connect()
        client.send_text('[null,"6","phoenix","heartbeat",{}]')
        frame = yield client.next_frame()
        self.assertEqual(frame, (b'[null,"6","phoenix","phx_reply",{"response":{},"status":"ok"}]', False))
        client.send_text('["9","7","phoenix","heartbeat",{"ignored":true}]')
        frame = yield client.next_frame()
        self.assertEqual(frame, (b'[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]', False))

    @inlineCallbacks
    def test_numericRefsRefused(self) -> None:
        """Refs must be strings or null: numeric refs are a malformed frame (1011), nothing joined."""
        client = yield self.connect()
        client.send_text('[1,2,"ping","phx_join",{}]')
        was_clean, code, _ = yield client.closed
        self.assertEqual((was_clean, code), (True, 1011))
        self.assertEqual(client.pending_frames, 0)

    @inlineCallbacks
    def _v1(self, query: str | None) -> Any:
        client = yield self.connect(query=query)
        client.send_text('{"topic":"ping","event":"phx_join","payload":{},"ref":"1"}')
        frame = yield client.next_frame()
        self.assertEqual(
            frame,
            (b'{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"ping"}', False),
        )
        client.send_text('{"topic":"ping","event":"ping","payload":{},"ref":"2","join_ref":"1"}')
        frame = yield client.next_frame()
        self.assertEqual(
            frame,
            (
                b'{"event":"phx_reply","payload":{"response":{"ping":"pong"},"status":"ok"},'
                b'"ref":"2","topic":"ping"}',
                False,
            ),
        )
        self.assertEqual(self.endpoint.connects[-1][0].get("vsn"), None if query is None else "1.0.0")

    def test_v1WithoutVsn(self) -> None:
        """A client that sends no vsn speaks V1: JSON objects, no join_ref."""
        return self._v1(None)

    def test_v1Explicit(self) -> None:
        """vsn=1.0.0 selects V1 objects."""
        return self._v1("vsn=1.0.0")

    @inlineCallbacks
    def test_patchVersionAccepted(self) -> None:
        """vsn=2.0.7 matches ~> 2.0.0 and speaks V2."""
        client = yield self.connect(query="vsn=2.0.7")
        reply = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(reply, ["1", "1", "ping", "phx_reply", JOIN_OK])

    @inlineCallbacks
    def test_binaryPushGetsBinaryReply(self) -> None:
        """
        A binary push (kind 0) is answered with a binary push (kind 0, no ref)
        and a binary reply (kind 1), laid out as in section 2.2.
        """
        client = yield self.connect()
        reply = yield client.request(["11", "11", "bin:lobby", "phx_join", {}])
        self.assertEqual(reply, ["11", "11", "bin:lobby", "phx_reply", JOIN_OK])
        client.send_binary(
            b"\x00\x02\x01\x09\x0c" + b"11" + b"2" + b"bin:lobby" + b"binary_event" + b"\x01\x02"
        )
        push = yield client.next_frame()
        self.assertEqual(push, (b"\x00\x02\x09\x0c" + b"11" + b"bin:lobby" + b"binary_event" + b"\x00\x01", True))
        reply = yield client.next_frame()
        self.assertEqual(
            reply, (b"\x01\x02\x01\x09\x02" + b"11" + b"2" + b"bin:lobby" + b"ok" + b"\x01\x02\x03\x04", True)
        )

    @inlineCallbacks
    def test_binaryBroadcast(self) -> None:
        """A bytes broadcast reaches every subscriber as the same kind-2 frame."""
        first = yield self.connect()
        second = yield self.connect()
        for client in (first, second):
            reply = yield client.request(["1", "1", "bin:room", "phx_join", {}])
            self.assertEqual(reply[4], JOIN_OK)
        first.send_json(["1", "2", "bin:room", "broadcast_bytes", {}])
        expected = (b"\x02\x08\x05" + b"bin:room" + b"bytes" + b"\xde\xad\xbe\xef", True)
        self.assertEqual((yield first.next_frame()), expected)
        self.assertEqual((yield second.next_frame()), expected)


class ExtensionTests(_Served, TestCase):
    """
    Browsers and Node's ws offer permessage-deflate; the server accepts the
    connection without it (Phoenix's default, compress: false).
    """

    @inlineCallbacks
    def test_deflateOfferedNotAccepted(self) -> None:
        """A handshake offering permessage-deflate opens, uncompressed."""
        client = yield self.connect(headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
        yield client.join_and_ping("ping", "1")
        self.assertEqual(client.protocol.websocket_extensions_in_use, [])


class BroadcastTests(_Served, TestCase):
    """
    Broadcasts over real connections.
    """

    @inlineCallbacks
    def test_channelBroadcastReachesEveryone(self) -> None:
        """A channel's broadcast reaches both subscribers, sender included, with identical bytes."""
        first = yield self.connect()
        second = yield self.connect()
        yield first.join_and_ping("ping", "1")
        yield second.join_and_ping("ping", "5")
        first.send_text('["1","2","ping","broadcast",{"b":2,"a":1}]')
        expected = (b'[null,null,"ping","broadcast",{"a":1,"b":2}]', False)
        self.assertEqual((yield first.next_frame()), expected)
        self.assertEqual((yield second.next_frame()), expected)

    @inlineCallbacks
    def test_burstIsOneWrite(self) -> None:
        """Broadcasts made in one reactor turn reach a subscriber in order, in one socket write."""
        client = yield self.connect()
        yield client.join_and_ping("ping:burst", "3")
        writes: list[bytes] = []
        [subscriber] = self.endpoint.pubsub.subscribers("ping:burst")
        output = subscriber.fastlane  # the connection's output
        sock = output._socket  # a plain TCP connection: the output sends on the socket itself

        class Recording:
            def send(self, data: Any) -> int:
                writes.append(bytes(data))
                return sock.send(data)

            def sendmsg(self, buffers: Any) -> int:
                writes.append(b"".join(buffers))
                return sock.sendmsg(buffers)

        output._socket = Recording()
        self.addCleanup(setattr, output, "_socket", sock)
        for n in range(10):
            self.endpoint.broadcast("ping:burst", "tick", {"n": n})
        for n in range(10):
            self.assertEqual((yield client.next_json()), [None, None, "ping:burst", "tick", {"n": n}])
        self.assertEqual(len(writes), 1)
        self.assertEqual(writes[0].count(b'"tick"'), 10)

    @inlineCallbacks
    def test_endpointBroadcast(self) -> None:
        """Endpoint.broadcast from server code reaches a joined client."""
        client = yield self.connect()
        yield client.join_and_ping("ping:news", "3")
        self.endpoint.broadcast("ping:news", "headline", {"n": 1})
        self.assertEqual((yield client.next_frame()), (b'[null,null,"ping:news","headline",{"n":1}]', False))

    @inlineCallbacks
    def test_interceptedBroadcast(self) -> None:
        """An intercepted event goes through handle_out and arrives as a push with the join_ref."""
        client = yield self.connect()
        yield client.join_and_ping("ping", "4")
        self.endpoint.broadcast("ping", "request_ping", {"x": 1})
        push = yield client.next_json()
        self.assertEqual(push, ["4", None, "ping", "send_ping", {"from_node": "nonode@nohost", "x": 1}])

    @inlineCallbacks
    def test_noBroadcastAfterLeave(self) -> None:
        """After phx_leave the client gets reply then phx_close, and no more broadcasts."""
        client = yield self.connect()
        yield client.join_and_ping("ping", "1")
        reply = yield client.request(["1", "2", "ping", "phx_leave", {}])
        self.assertEqual(reply, ["1", "2", "ping", "phx_reply", JOIN_OK])
        self.assertEqual((yield client.next_json()), ["1", "1", "ping", "phx_close", {}])
        self.endpoint.broadcast("ping", "late", {})
        reply = yield client.request([None, "3", "phoenix", "heartbeat", {}])
        self.assertEqual(reply, [None, "3", "phoenix", "phx_reply", JOIN_OK])


class ClosingTests(_Served, TestCase):
    """
    A client that closes cleanly.
    """

    @inlineCallbacks
    def test_clientClose(self) -> None:
        """A client's close is echoed, and its channels terminate with ("shutdown", "closed")."""
        client = yield self.connect()
        reply = yield client.request(["1", "1", "rec:a", "phx_join", {}])
        self.assertEqual(reply, ["1", "1", "rec:a", "phx_reply", JOIN_OK])
        client.close(1000)
        was_clean, code, _ = yield client.closed
        self.assertEqual((was_clean, code), (True, 1000))
        topic, reason = yield self.endpoint.terminated.addTimeout(5, reactor)
        self.assertEqual((topic, reason), ("rec:a", ("shutdown", "closed")))
        other = yield self.connect()
        yield other.join_and_ping("ping", "1")
        self.assertEqual(self.endpoint.pubsub.subscribers("rec:a"), ())
        self.assertFalse(self.logs.find("connection lost without a closing handshake"))


    @inlineCallbacks
    def test_noBroadcastAfterCloseFrame(self) -> None:
        """Once the server has sent its close frame, a broadcast to a channel still subscribed sends nothing after it."""
        client = yield self.connect()
        yield client.join_and_ping("ping", "1")
        [subscriber] = self.endpoint.pubsub.subscribers("ping")
        connection = subscriber.session.connection
        connection.sendCloseFrame(1000)
        self.assertFalse(connection.broadcast_output.open)
        self.endpoint.broadcast("ping", "late", {})
        was_clean, code, _ = yield client.closed
        self.assertEqual((was_clean, code), (True, 1000))
        self.assertEqual(client.pending_frames, 0)

class ConnectInfoTests(_Served, TestCase):
    """
    What a socket's ``connect`` receives.
    """

    @inlineCallbacks
    def test_connectInfo(self) -> None:
        """peer_data, uri, x_headers and user_agent describe the real request."""
        client = yield self.connect(headers={"X-Application": "Phoenix"}, useragent="foo/1.0")
        params, info = self.endpoint.connects[-1]
        self.assertEqual(params, {"vsn": "2.0.0"})
        local = client.protocol.transport.getHost()
        self.assertEqual(info["peer_data"], {"address": "127.0.0.1", "port": local.port})
        self.assertEqual(
            info["uri"],
            {"scheme": "http", "host": "127.0.0.1", "port": self.port, "path": "/socket/websocket", "query": "vsn=2.0.0"},
        )
        self.assertIn(("x-application", "Phoenix"), info["x_headers"])
        self.assertEqual(info["user_agent"], "foo/1.0")
        self.assertIn("sec-websocket-key", info["sec_websocket_headers"])
        self.assertNotIn("auth_token", info)
        self.assertTrue(self.logs.find("CONNECTED TO ProbeSocket", LogLevel.info))

    @inlineCallbacks
    def test_queryParams(self) -> None:
        """Query params arrive as strings, nested for a[b]=c, vsn included."""
        yield self.connect(query="token=abc&nested%5Ba%5D=1&a[b]=1&a[c]=2&vsn=2.0.0")
        params, _ = self.endpoint.connects[-1]
        self.assertEqual(
            params, {"token": "abc", "nested": {"a": "1"}, "a": {"b": "1", "c": "2"}, "vsn": "2.0.0"}
        )

    @inlineCallbacks
    def test_pathParams(self) -> None:
        """A :room segment of the mount path arrives in params and wins over the query."""
        client = yield self.connect(path="/rooms/lob%20by/websocket", query="room=other&x=1&vsn=2.0.0")
        params, info = self.endpoint.connects[-1]
        self.assertEqual(params, {"room": "lob by", "x": "1", "vsn": "2.0.0"})
        self.assertEqual(info["uri"]["path"], "/rooms/lob%20by/websocket")
        yield client.join_and_ping("ping", "1")

    @inlineCallbacks
    def test_authTokenSubprotocol(self) -> None:
        """
        phoenix.js's authToken subprotocol reaches connect_info["auth_token"]
        and the server selects "phoenix".
        """
        encoded = base64.b64encode(b"tok+/=").decode().rstrip("=")
        self.assertEqual(encoded, "dG9rKy89")
        client = yield self.connect(protocols=["phoenix", "base64url.bearer.phx." + encoded])
        self.assertEqual(client.subprotocol, "phoenix")
        _, info = self.endpoint.connects[-1]
        self.assertEqual(info["auth_token"], "tok+/=")
        yield client.join_and_ping("ping", "1")


class OriginTests(_Served, TestCase):
    """
    check_origin over real handshakes.
    """

    @inlineCallbacks
    def test_allowedOrigin(self) -> None:
        """An origin in the allowed list connects."""
        client = yield self.connect(origin="https://allowed.example")
        yield client.join_and_ping("ping", "1")

    @inlineCallbacks
    def test_refusedOrigin(self) -> None:
        """Another origin gets HTTP 403 and an error log; connect never runs."""
        failure = yield self.assertFailure(self.connect(origin="http://evil.example"), HandshakeRefused)
        self.assertEqual(failure.status, 403)
        self.assertEqual(self.endpoint.connects, [])
        self.assertTrue(self.logs.find("Could not check origin", LogLevel.error))

    @inlineCallbacks
    def test_noOrigin(self) -> None:
        """A request without Origin (wscat, Node) is not checked."""
        client = yield self.connect()
        yield client.join_and_ping("ping", "1")


class AuthSocketTests(TestCase):
    """
    The demo's /auth_socket, which needs a token signed with "salt identifier".
    """

    def setUp(self) -> None:
        self.logs = capture_logs(self)
        self.endpoint = HelloSocketsEndpoint(reactor, secret_key_base=SECRET)
        self.port = serve(self, self.endpoint).port

    def connect(self, token: str | None) -> Any:
        query = "vsn=2.0.0" if token is None else f"token={token}&vsn=2.0.0"
        return connect(reactor, self.port, path="/auth_socket/websocket", query=query, test=self)

    @inlineCallbacks
    def test_validToken(self) -> None:
        """A valid token connects, and its user may join their own user topic."""
        client = yield self.connect(sign(SECRET, SALT, 42))
        reply = yield client.request(["1", "1", "user:42", "phx_join", {}])
        self.assertEqual(reply, ["1", "1", "user:42", "phx_reply", JOIN_OK])
        reply = yield client.request(["2", "2", "user:7", "phx_join", {}])
        self.assertEqual(reply, ["2", "2", "user:7", "phx_reply", {"response": {"reason": "unauthorized"}, "status": "error"}])

    @inlineCallbacks
    def _refused(self, token: str | None, logged: str) -> Any:
        failure = yield self.assertFailure(self.connect(token), HandshakeRefused)
        self.assertEqual(failure.status, 403)
        self.assertTrue(self.logs.find(logged), self.logs.messages())

    def test_missingToken(self) -> None:
        """No token: 403, and the refusal is logged."""
        return self._refused(None, "REFUSED CONNECTION TO AuthSocket")

    def test_badToken(self) -> None:
        """A garbled token: 403."""
        return self._refused("SFMyNTY.garbage.garbage", "token invalid")

    def test_expiredToken(self) -> None:
        """A token signed two days ago: 403."""
        token = sign(SECRET, SALT, 42, signed_at=reactor.seconds() - 2 * 86400)
        return self._refused(token, "token expired")

    @inlineCallbacks
    def test_disconnectBroadcast(self) -> None:
        """"disconnect" on auth_socket:42 closes user 42 with 1001 and no reason text (Phoenix 1.8.8+); user 7 stays connected."""
        user42 = yield self.connect(sign(SECRET, SALT, 42))
        user7 = yield self.connect(sign(SECRET, SALT, 7))
        yield user42.join_and_ping("ping", "1")
        yield user7.join_and_ping("ping", "1")
        self.endpoint.broadcast("auth_socket:42", "disconnect", {})
        was_clean, code, reason = yield user42.closed
        self.assertEqual((was_clean, code, reason), (True, 1001, None))
        self.assertEqual(user42.pending_frames, 0)
        reply = yield user7.request(["1", "2", "ping", "ping", {}])
        self.assertEqual(reply, ["1", "2", "ping", "phx_reply", PONG])

    @inlineCallbacks
    def test_otherEventsOnSocketIdIgnored(self) -> None:
        """Broadcasts other than "disconnect" on the socket id do nothing."""
        client = yield self.connect(sign(SECRET, SALT, 42))
        self.endpoint.broadcast("auth_socket:42", "hello", {})
        yield client.join_and_ping("ping", "1")
        self.assertTrue(client.is_open)


class IdleTimeoutTests(_Served, TestCase):
    """
    Socket.timeout: a connection without inbound data is closed with 1000.
    """

    @inlineCallbacks
    def test_idleClientClosed(self) -> None:
        """A client silent for timeout (0.3 s) is closed with 1000, not earlier."""
        start = reactor.seconds()
        client = yield self.connect(path="/idle/websocket")
        was_clean, code, _ = yield client.wait_closed(timeout=5)
        self.assertEqual((was_clean, code), (True, 1000))
        self.assertGreaterEqual(reactor.seconds() - start, 0.3)
        self.assertTrue(self.logs.find("Closing an idle connection"))

    @inlineCallbacks
    def test_inboundDataResetsTimer(self) -> None:
        """
        A heartbeat before the timeout (1 s) postpones the close: it comes at
        least a full timeout after the last inbound frame.
        """
        start = reactor.seconds()
        client = yield self.connect(path="/slow_idle/websocket")
        yield deferLater(reactor, 0.4, lambda: None)
        last = reactor.seconds()
        reply = yield client.request([None, "1", "phoenix", "heartbeat", {}])
        self.assertEqual(reply, [None, "1", "phoenix", "phx_reply", JOIN_OK])
        was_clean, code, _ = yield client.wait_closed(timeout=5)
        now = reactor.seconds()
        self.assertEqual((was_clean, code), (True, 1000))
        self.assertGreaterEqual(now - last, 1.0)
        self.assertGreaterEqual(now - start, 1.4)


def _masked(payload: bytes, opcode: int = 1, fin: bool = True, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """One client frame, masked, as raw bytes."""
    size = len(payload)
    if size < 126:
        header = bytes(((0x80 if fin else 0) | opcode, 0x80 | size))
    elif size < 65536:
        header = bytes(((0x80 if fin else 0) | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes(((0x80 if fin else 0) | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FrameParsingTests(_Served, TestCase):
    """
    Client frames as the transport reads them: whole small data frames are
    parsed by the transport itself, everything else by Autobahn; both must
    give the same messages.
    """

    @inlineCallbacks
    def joined(self) -> Any:
        client = yield self.connect()
        yield client.join_and_ping("ping", "1")
        return client

    def write(self, client: Any, data: bytes) -> None:
        client.protocol.transport.write(data)

    @inlineCallbacks
    def assertPongs(self, client: Any, refs: list[str], payloads: list[Any] | None = None) -> Any:
        for n, ref in enumerate(refs):
            reply = yield client.next_json()
            expected = {"ping": "pong"} if payloads is None else payloads[n]
            self.assertEqual(reply, ["1", ref, "ping", "phx_reply", {"response": expected, "status": "ok"}])

    @inlineCallbacks
    def test_manyFramesInOneRead(self) -> Any:
        """Several whole frames in one TCP segment are all handled, in order."""
        client = yield self.joined()
        self.write(client, b"".join(_masked(b'["1","r%d","ping","ping",{}]' % n) for n in range(20)))
        yield self.assertPongs(client, [f"r{n}" for n in range(20)])

    @inlineCallbacks
    def test_mediumFrame(self) -> Any:
        """A frame with a 16-bit length, echoed by param_ping."""
        client = yield self.joined()
        pad = "é" * 3000
        self.write(client, _masked(('["1","m","ping","param_ping",{"pad":"%s"}]' % pad).encode()))
        yield self.assertPongs(client, ["m"], [{"pad": pad}])

    @inlineCallbacks
    def test_largeFrame(self) -> Any:
        """A frame beyond the transport's own parser goes through Autobahn, same answer."""
        client = yield self.joined()
        pad = "x" * 40000
        self.write(client, _masked(('["1","l","ping","param_ping",{"pad":"%s"}]' % pad).encode()))
        yield self.assertPongs(client, ["l"], [{"pad": pad}])

    @inlineCallbacks
    def test_controlBetweenData(self) -> Any:
        """A ping control frame between data frames in one read: pong and replies, in order."""
        client = yield self.joined()
        pongs: list[bytes] = []
        client.protocol.onPong = pongs.append
        self.write(
            client,
            _masked(b'["1","a","ping","ping",{}]') + _masked(b"hi", opcode=9) + _masked(b'["1","b","ping","ping",{}]'),
        )
        yield self.assertPongs(client, ["a", "b"])
        self.assertEqual(pongs, [b"hi"])

    @inlineCallbacks
    def test_fragmented(self) -> Any:
        """A message in two fragments, followed by a whole frame in the same read."""
        client = yield self.joined()
        message = b'["1","f","ping","ping",{}]'
        self.write(
            client,
            _masked(message[:10], fin=False) + _masked(message[10:], opcode=0) + _masked(b'["1","g","ping","ping",{}]'),
        )
        yield self.assertPongs(client, ["f", "g"])

    @inlineCallbacks
    def test_binaryFrame(self) -> Any:
        """A whole binary frame (a V2 binary push) is parsed the same way."""
        client = yield self.connect()
        yield client.request(["1", "1", "bin:x", "phx_join", {}])
        push = b"\x00\x01\x01\x05\x0c" + b"1" + b"2" + b"bin:x" + b"binary_event" + b"\x01\x02"
        self.write(client, _masked(push, opcode=2))
        frames = [(yield client.next_frame()), (yield client.next_frame())]
        self.assertIn((b"\x00\x01\x05\x0c1bin:xbinary_event\x00\x01", True), frames)

    @inlineCallbacks
    def test_invalidUTF8(self) -> Any:
        """A small text frame that is not UTF-8 is still closed with 1007."""
        client = yield self.joined()
        self.write(client, _masked(b'["1","u","ping","ping",{"a":"\xff"}]'))
        was_clean, code, _ = yield client.closed
        self.assertEqual((was_clean, code), (True, 1007))

    @inlineCallbacks
    def test_unmasked(self) -> Any:
        """An unmasked client frame is a protocol error (1002), as before."""
        client = yield self.joined()
        payload = b'["1","x","ping","ping",{}]'
        self.write(client, bytes((0x81, len(payload))) + payload)
        was_clean, code, _ = yield client.closed
        self.assertEqual((was_clean, code), (True, 1002))

    @inlineCallbacks
    def test_emptyTextFrame(self) -> Any:
        """An empty text frame is a malformed Phoenix message: 1011."""
        client = yield self.joined()
        self.write(client, _masked(b""))
        was_clean, code, _ = yield client.closed
        self.assertEqual((was_clean, code), (True, 1011))


class InMemoryFrameParsingTests(SynchronousTestCase):
    """
    The transport's frame parsing with every possible split of the input
    across reads, in memory.
    """

    def open(self) -> tuple[Any, StringTransport, MemoryReactorClock]:
        clock = MemoryReactorClock()
        endpoint = HelloSocketsEndpoint(clock, secret_key_base=SECRET)
        protocol = endpoint.site().buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(transport)
        protocol.dataReceived(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        clock.advance(0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "))
        transport.clear()
        protocol.dataReceived(_masked(b'["1","1","ping","phx_join",{}]'))
        clock.advance(0)
        self.assertIn(b'"phx_reply"', transport.value())
        transport.clear()
        return protocol, transport, clock

    def test_everySplit(self) -> None:
        """Three frames (small, 16-bit length, ping control) split at every byte: same replies."""
        data = (
            _masked(b'["1","a","ping","ping",{}]')
            + _masked(('["1","b","ping","param_ping",{"p":"%s"}]' % ("x" * 200)).encode())
            + _masked(b"", opcode=9)
            + _masked(b'["1","c","ping","ping",{}]')
        )
        expected = None
        for cut in range(0, len(data) + 1):
            protocol, transport, clock = self.open()
            protocol.dataReceived(data[:cut])
            clock.advance(0)
            protocol.dataReceived(data[cut:])
            clock.advance(0)
            if expected is None:
                expected = transport.value()
                self.assertEqual(expected.count(b'"phx_reply"'), 3)
                self.assertIn(b"\x8a\x00", expected)  # the pong
            self.assertEqual(transport.value(), expected, cut)


class InitialStateTests(SynchronousTestCase):
    """
    A connection sets only what changes per connection; the rest of
    Autobahn's initial state is class defaults.
    """

    def test_asAutobahns(self) -> None:
        """
        A new connection's state is exactly what Autobahn's own
        _connectionMade gives it: every attribute Autobahn sets, with its
        value (fails when a new Autobahn adds one).
        """
        from autobahn.websocket.protocol import WebSocketProtocol

        clock = MemoryReactorClock()
        endpoint = HelloSocketsEndpoint(clock, secret_key_base=SECRET)
        factory = endpoint.websocket_factories()["/socket"]
        ours = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        ours.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1)))
        theirs = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        theirs.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 2))
        built = dict(vars(theirs))
        theirs.CONFIG_ATTRS = ()  # the options are class attributes of the factory's protocol
        WebSocketProtocol._connectionMade(theirs)
        del theirs.CONFIG_ATTRS
        autobahns = {k: v for k, v in vars(theirs).items() if k not in built or built[k] is not v}
        self.assertGreater(len(autobahns), 25)
        for name, value in autobahns.items():
            mine = getattr(ours, name)
            if name.endswith("TimeoutCall") and value is not None:
                self.assertIs(type(mine), type(value), name)
            elif name == "utf8validator":  # made when first used (most connections never use it)
                self.assertIs(type(mine), type(value), name)
            elif type(value).__eq__ is object.__eq__:  # TrafficStats: same kind, same counts
                self.assertIs(type(mine), type(value), name)
                self.assertEqual(getattr(mine, "__dict__", mine), getattr(value, "__dict__", value), name)
            else:
                self.assertEqual(mine, value, name)
        self.assertEqual(factory.countConnections, 1)  # ours counted (theirs skipped the server part)
        theirs.openHandshakeTimeoutCall.cancel()
        ours.openHandshakeTimeoutCall.cancel()


class HandshakeParsingTests(_Served, TestCase):
    """
    Ordinary upgrades are answered from the head the request reader parsed;
    anything unusual falls back to Autobahn's own handshake and answers.
    """

    HEAD = (
        b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
    )

    @inlineCallbacks
    def answer(self, head: bytes) -> Any:
        raw = yield raw_connect(reactor, self.port, test=self)
        raw.write(head + b"\r\n")
        data = yield raw.wait_for(b"\r\n\r\n")
        yield raw.disconnect()
        return data

    @inlineCallbacks
    def test_ordinary(self) -> Any:
        """The 101 carries RFC 6455's accept value for the key, and no extension."""
        data = yield self.answer(self.HEAD + b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), data)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", data)
        self.assertNotIn(b"Sec-WebSocket-Extensions", data)

    @inlineCallbacks
    def test_subprotocolChosen(self) -> Any:
        """The auth token subprotocol is taken and "phoenix" answered, as Phoenix does."""
        token = base64.b64encode(b"abc").decode().rstrip("=")
        data = yield self.answer(self.HEAD + f"Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.{token}\r\n".encode())
        self.assertIn(b"Sec-WebSocket-Protocol: phoenix\r\n", data)

    @inlineCallbacks
    def test_unusualGoToAutobahn(self) -> Any:
        """Version 7, a bad key, HTTP/1.0 (505), two origins: Autobahn's own refusals."""
        cases = [
            self.HEAD.replace(b"Version: 13", b"Version: 7"),
            self.HEAD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"),
            self.HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
            self.HEAD + b"Origin: http://localhost\r\nOrigin: http://evil.test\r\n",
        ]
        for head in cases:
            data = yield self.answer(head)
            self.assertRegex(data, rb"^HTTP/1.1 (4\d\d|505) ", head)
