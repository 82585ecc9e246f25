"""
Bad input over real loopback sockets: every offence gets its defined answer,
is logged, costs the offender what it would cost in Phoenix, and leaves every
other client working.

Each test connects a well-behaved bystander (joined to ``ping``) before the
offence, and afterwards checks that the bystander still gets its pong and
that a new client can connect, join and ping.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from twisted_phoenix import Channel, Endpoint, Socket, ok
from twisted_phoenix.examples.hello_sockets import SALT, AuthSocket, PingChannel
from twisted_phoenix.token import sign

from ._client import HandshakeRefused, capture_logs, connect, raw_connect, serve

SECRET = "b" * 64
MAX_FRAME = 1024
HANDSHAKE_TIMEOUT = 0.5
MAX_BACKLOG = 5
MAX_LAG = 256 * 1024
MAX_HEADER_BYTES = 4096

JOIN_OK = {"response": {}, "status": "ok"}
PONG = {"response": {"ping": "pong"}, "status": "ok"}


class RecordingChannel(Channel):
    """Records its terminate reasons on the endpoint."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "ping":
            return ok({"ping": "pong"})
        return super().handle_in(event, payload)

    def terminate(self, reason: Any) -> None:
        self.endpoint.terminated(self.topic, reason)  # type: ignore[attr-defined]


class StuckChannel(Channel):
    """A join that never answers."""

    def join(self, topic: str, payload: Any) -> Any:
        return Deferred()


class BadInputSocket(Socket):
    channels = {
        "ping": PingChannel,
        "ping:*": PingChannel,
        "rec:*": RecordingChannel,
        "stuck": StuckChannel,
    }
    max_backlog = MAX_BACKLOG


class TokenSocket(Socket):
    """Takes phoenix.js's authToken subprotocol."""

    channels = {"ping": PingChannel}
    auth_token = True


class SilentSocket(Socket):
    """A connect that never answers."""

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        return Deferred()


class BadInputEndpoint(Endpoint):
    sockets = {
        "/socket": BadInputSocket,
        "/auth_socket": AuthSocket,
        "/token_socket": TokenSocket,
        "/silent": SilentSocket,
    }
    max_frame_size = MAX_FRAME
    handshake_timeout = HANDSHAKE_TIMEOUT
    max_lag = MAX_LAG
    max_header_bytes = MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.terminations: list[tuple[str, Any]] = []
        self._waiting: list[Deferred[Any]] = []

    def terminated(self, topic: str, reason: Any) -> None:
        self.terminations.append((topic, reason))
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback((topic, reason))

    def next_termination(self, timeout: float = 5.0) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d.addTimeout(timeout, reactor)


class _Offence:
    """Server, bystander and checks shared by every bad-input test."""

    @inlineCallbacks
    def setUp(self) -> Any:
        self.logs = capture_logs(self)  # type: ignore[arg-type]
        self.endpoint = BadInputEndpoint(reactor, secret_key_base=SECRET)
        self.server = serve(self, self.endpoint)  # type: ignore[arg-type]
        self.port = self.server.port
        self.bystander = yield self.connect()
        yield self.bystander.join_and_ping("ping", "1")
        self._pings = 0

    def connect(self, **kwargs: Any) -> Any:
        return connect(reactor, self.port, test=self, **kwargs)  # type: ignore[arg-type]

    @inlineCallbacks
    def offender(self, **kwargs: Any) -> Any:
        """A client that has joined rec:offender (to watch its channel end)."""
        client = yield self.connect(**kwargs)
        if kwargs.get("query", "vsn=2.0.0") == "vsn=2.0.0":
            reply = yield client.request(["1", "1", "rec:offender", "phx_join", {}])
            self.assertEqual(reply, ["1", "1", "rec:offender", "phx_reply", JOIN_OK])  # type: ignore[attr-defined]
        return client

    @inlineCallbacks
    def assertOthersUnaffected(self) -> Any:
        """The bystander still gets its pong, and a new client works."""
        self._pings += 1
        ref = f"b{self._pings}"
        reply = yield self.bystander.request(["1", ref, "ping", "ping", {}])
        self.assertEqual(reply, ["1", ref, "ping", "phx_reply", PONG])  # type: ignore[attr-defined]
        fresh = yield self.connect()
        yield fresh.join_and_ping("ping", "1")
        yield fresh.disconnect()

    def assertLogged(self, text: str, level: LogLevel) -> None:
        """Some event at ``level`` or above mentions ``text``."""
        found = self.logs.find(text, level)
        self.assertTrue(found, f"no {level.name} log containing {text!r} in {self.logs.messages()}")  # type: ignore[attr-defined]

    @inlineCallbacks
    def assertClosedWith(self, client: Any, code: int) -> Any:
        """The server closed ``client`` cleanly with ``code``."""
        was_clean, got, reason = yield client.closed
        self.assertEqual((was_clean, got), (True, code), reason)  # type: ignore[attr-defined]
        return reason


class MalformedFrameTests(_Offence, TestCase):
    """
    A frame the serializer cannot decode closes its connection with 1011
    (section 2.5); its channels terminate.
    """

    @inlineCallbacks
    def _malformed(self, frame: str | bytes, binary: bool = False, query: str = "vsn=2.0.0") -> Any:
        client = yield self.offender(query=query)
        if binary:
            client.send_binary(frame)
        else:
            client.send_text(frame)
        yield self.assertClosedWith(client, 1011)
        self.assertLogged("Closing a connection that sent a malformed frame", LogLevel.error)
        if query == "vsn=2.0.0":
            self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        yield self.assertOthersUnaffected()

    def test_invalidJSON(self) -> None:
        """Text that is not JSON: 1011."""
        return self._malformed('["1","2","ping",')

    def test_notAnArray(self) -> None:
        """A V2 frame that is a JSON object: 1011."""
        return self._malformed('{"topic":"ping","event":"ping","payload":{},"ref":"1"}')

    def test_scalar(self) -> None:
        """A V2 frame that is a bare JSON number: 1011."""
        return self._malformed("42")

    def test_shortArray(self) -> None:
        """A V2 array of fewer than five items: 1011."""
        return self._malformed('["1","2","ping","ping"]')

    def test_nonStringTopic(self) -> None:
        """A V2 array whose topic is not a string: 1011."""
        return self._malformed('["1","2",5,"ping",{}]')

    def test_nonStringEvent(self) -> None:
        """A V2 array whose event is not a string: 1011."""
        return self._malformed('["1","2","ping",null,{}]')

    def test_v1MissingKey(self) -> None:
        """A V1 object without "ref": 1011."""
        return self._malformed('{"topic":"ping","event":"phx_join","payload":{}}', query="vsn=1.0.0")

    def test_v1Array(self) -> None:
        """A V2-style array sent to a V1 connection: 1011."""
        return self._malformed('["1","1","ping","phx_join",{}]', query="vsn=1.0.0")

    def test_v1Binary(self) -> None:
        """Any binary frame on a V1 connection: 1011."""
        return self._malformed(b"\x00\x00\x00\x04\x04pingping", binary=True, query="vsn=1.0.0")

    def test_binaryReplyKind(self) -> None:
        """A binary frame of kind 1 (a server reply) from a client: 1011."""
        return self._malformed(b"\x01\x01\x01\x04\x02" + b"11ping" + b"ok", binary=True)

    def test_binaryBroadcastKind(self) -> None:
        """A binary frame of kind 2 (a server broadcast) from a client: 1011."""
        return self._malformed(b"\x02\x04\x04pingping", binary=True)

    def test_truncatedBinary(self) -> None:
        """A kind-0 frame shorter than its header says: 1011."""
        return self._malformed(b"\x00\x01\x01\x0a\x03" + b"12room", binary=True)

    def test_binaryHeaderOnly(self) -> None:
        """A binary frame shorter than a kind-0 header: 1011."""
        return self._malformed(b"\x00\x01", binary=True)

    def test_binaryFieldNotUTF8(self) -> None:
        """A kind-0 frame whose topic is not UTF-8: 1011."""
        return self._malformed(b"\x00\x01\x01\x02\x04" + b"12" + b"\xff\xfe" + b"ping", binary=True)

    @inlineCallbacks
    def test_invalidUTF8(self) -> None:
        """A text frame that is not UTF-8: Autobahn closes with 1007, logged."""
        client = yield self.offender()
        client.send_text(b'["1","2","rec:offender","ping",{"a":"\xff\xfe"}]')
        yield self.assertClosedWith(client, 1007)
        self.assertLogged("failing WebSocket connection (code=1007)", LogLevel.warn)
        self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        yield self.assertOthersUnaffected()


class CloseFrameTests(_Offence, TestCase):
    """
    Close frames a client may not send get 1002 (protocol error), without a
    reason text, as Phoenix's adapters answer them.
    """

    @inlineCallbacks
    def _closed_with_1002(self, payload: bytes) -> Any:
        client = yield self.offender()
        client.send_frame(8, payload)
        reason = yield self.assertClosedWith(client, 1002)
        self.assertEqual(reason, None)
        self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        yield self.assertOthersUnaffected()

    def test_codeBelow1000(self) -> None:
        """Code 999: 1002."""
        return self._closed_with_1002(struct.pack("!H", 999))

    def test_code1005(self) -> None:
        """Code 1005 (reserved for "no code"): 1002."""
        return self._closed_with_1002(struct.pack("!H", 1005))

    def test_code1006(self) -> None:
        """Code 1006 (reserved for "abnormal closure"): 1002."""
        return self._closed_with_1002(struct.pack("!H", 1006))

    def test_code5000(self) -> None:
        """Code 5000 (beyond the registered ranges): 1002."""
        return self._closed_with_1002(struct.pack("!H", 5000))

    def test_reasonNotUTF8(self) -> None:
        """A valid code with a reason that is not UTF-8: 1002."""
        return self._closed_with_1002(struct.pack("!H", 1000) + b"\xff\xfe")

    def test_oneByteBody(self) -> None:
        """A close body of one byte (half a code): 1002."""
        return self._closed_with_1002(b"\x03")

    @inlineCallbacks
    def test_validClose(self) -> None:
        """A valid close is answered with 1000, cleanly."""
        client = yield self.offender()
        client.send_frame(8, struct.pack("!H", 4000) + "bye".encode())
        yield self.assertClosedWith(client, 1000)
        yield self.assertOthersUnaffected()


class OversizedInputTests(_Offence, TestCase):
    """
    Endpoint.max_frame_size bounds frames and whole messages (1009).
    """

    @inlineCallbacks
    def test_frameAtLimit(self) -> None:
        """A frame of exactly max_frame_size bytes is accepted."""
        client = yield self.offender()
        head = '["1","2","rec:offender","ping",{"pad":"'
        tail = '"}]'
        client.send_text(head + "x" * (MAX_FRAME - len(head) - len(tail)) + tail)
        reply = yield client.next_json()
        self.assertEqual(reply, ["1", "2", "rec:offender", "phx_reply", PONG])

    @inlineCallbacks
    def test_frameTooLarge(self) -> None:
        """One byte more than max_frame_size: 1009, logged."""
        client = yield self.offender()
        client.send_text("[" + " " * MAX_FRAME)
        yield self.assertClosedWith(client, 1009)
        self.assertLogged("failing WebSocket connection (code=1009)", LogLevel.warn)
        self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_binaryFrameTooLarge(self) -> None:
        """A binary frame over the limit: 1009."""
        client = yield self.offender()
        client.send_binary(b"\x00" * (MAX_FRAME * 4))
        yield self.assertClosedWith(client, 1009)
        self.assertLogged("failing WebSocket connection (code=1009)", LogLevel.warn)
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_endlessFragments(self) -> None:
        """
        A message that never ends, in continuation frames each under the
        limit: 1009 once the total passes max_frame_size.
        """
        client = yield self.offender()
        client.send_frame(1, b"[" * 200, fin=False)
        for _ in range(20):
            client.send_frame(0, b"[" * 200, fin=False)
        reason = yield self.assertClosedWith(client, 1009)
        self.assertEqual(reason, None)  # Phoenix's adapters send no reason text
        self.assertLogged("Closing a connection (1009): received WebSocket message size", LogLevel.info)
        self.assertLogged("exceeds payload limit of 1024", LogLevel.info)
        self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        yield self.assertOthersUnaffected()


class HandshakeRefusalTests(_Offence, TestCase):
    """
    Refused handshakes get HTTP 403 and a log line, never a frame.
    """

    @inlineCallbacks
    def _refused(self, logged: str, level: LogLevel, **kwargs: Any) -> Any:
        failure = yield self.assertFailure(self.connect(**kwargs), HandshakeRefused)
        self.assertEqual(failure.status, 403)
        self.assertLogged(logged, level)
        yield self.assertOthersUnaffected()

    def test_unmatchedVersion(self) -> None:
        """vsn=123.1.1 parses but matches nothing: 403, logged with the version."""
        return self._refused(
            "The client's requested transport version '123.1.1' does not match", LogLevel.warn,
            query="vsn=123.1.1",
        )

    def test_nextMinorVersion(self) -> None:
        """vsn=2.1.0 is outside ~> 2.0.0: 403."""
        return self._refused("'2.1.0' does not match", LogLevel.warn, query="vsn=2.1.0")

    def test_nullOrigin(self) -> None:
        """A page opened from disk (Origin: null): 403, as check_origin refuses a hostless origin."""
        return self._refused("Could not check origin for Phoenix.Socket transport", LogLevel.error, origin="null")

    def test_unparsableVersion(self) -> None:
        """vsn=abc: 403, logged as invalid."""
        return self._refused("Client sent invalid transport version 'abc'", LogLevel.warn, query="vsn=abc")

    def test_versionNotAString(self) -> None:
        """vsn[x]=1 (a map, not a string): 403."""
        return self._refused("Client sent invalid transport version", LogLevel.warn, query="vsn[x]=1")

    def test_tokenFromAnotherSecret(self) -> None:
        """A token signed with another secret_key_base: 403, logged as invalid."""
        token = sign("z" * 64, SALT, 42)
        return self._refused(
            "AuthSocket refused a connection: token invalid", LogLevel.warn,
            path="/auth_socket/websocket", query=f"token={token}&vsn=2.0.0",
        )

    def test_tokenWithAnotherSalt(self) -> None:
        """A token signed with the right secret but another salt: 403."""
        token = sign(SECRET, "user auth", 42)
        return self._refused(
            "token invalid", LogLevel.warn, path="/auth_socket/websocket", query=f"token={token}&vsn=2.0.0"
        )

    def test_undecodableAuthToken(self) -> None:
        """An authToken subprotocol that is not base64: 403."""
        return self._refused(
            "Refused an undecodable auth token", LogLevel.warn,
            path="/token_socket/websocket", protocols=["phoenix", "base64url.bearer.phx.%%%"],
        )

    def test_authTokenNotUTF8(self) -> None:
        """An authToken that decodes to bytes that are not UTF-8: 403."""
        encoded = base64.b64encode(b"\xff\xfe\xfd").decode().rstrip("=")
        return self._refused(
            "Refused an undecodable auth token", LogLevel.warn,
            path="/token_socket/websocket", protocols=["phoenix", "base64url.bearer.phx." + encoded],
        )


class ChannelErrorTests(_Offence, TestCase):
    """
    Errors at the channel level cost at most the channel, never the connection.
    """

    @inlineCallbacks
    def test_unmatchedTopic(self) -> None:
        """A join of an unrouted topic gets "unmatched topic" with a null join_ref; the connection stays."""
        client = yield self.offender()
        reply = yield client.request(["7", "7", "nowhere", "phx_join", {}])
        self.assertEqual(reply, [None, "7", "nowhere", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
        self.assertLogged("Ignoring unmatched topic 'nowhere' in BadInputSocket", LogLevel.warn)
        reply = yield client.request(["7", "8", "nowhere", "ping", {}])
        self.assertEqual(reply, [None, "8", "nowhere", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
        reply = yield client.request(["1", "9", "rec:offender", "ping", {}])
        self.assertEqual(reply, ["1", "9", "rec:offender", "phx_reply", PONG])
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_unknownEvent(self) -> None:
        """
        An event the channel does not handle crashes that channel only:
        phx_error for its topic, while another topic on the same connection
        still answers.
        """
        client = yield self.offender()
        yield client.join_and_ping("ping:a", "2")
        yield client.join_and_ping("ping:b", "3")
        client.send_json(["2", "4", "ping:a", "no_such_event", {}])
        self.assertEqual((yield client.next_json()), ["2", "2", "ping:a", "phx_error", {"reason": "channel_crash"}])
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        self.assertLogged("PingChannel 'ping:a' crashed", LogLevel.critical)
        reply = yield client.request(["3", "5", "ping:b", "ping", {}])
        self.assertEqual(reply, ["3", "5", "ping:b", "phx_reply", PONG])
        reply = yield client.request(["2", "6", "ping:a", "ping", {}])
        self.assertEqual(reply, [None, "6", "ping:a", "phx_reply", {"response": {"reason": "unmatched topic"}, "status": "error"}])
        self.assertEqual(self.endpoint.terminations, [])
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_tooManyChannels(self) -> None:
        """The 101st join is refused with "too many channels joined"; the connection still works."""
        client = yield self.connect()
        for i in range(101):
            client.send_json([str(i), str(i), f"ping:{i}", "phx_join", {}])
        for i in range(100):
            self.assertEqual((yield client.next_json()), [str(i), str(i), f"ping:{i}", "phx_reply", JOIN_OK])
        self.assertEqual(
            (yield client.next_json()),
            ["100", "100", "ping:100", "phx_reply", {"response": {"reason": "too many channels joined"}, "status": "error"}],
        )
        self.assertLogged("Joining 'ping:100' in BadInputSocket refused: more than 100 channels", LogLevel.error)
        reply = yield client.request(["5", "x", "ping:5", "ping", {}])
        self.assertEqual(reply, ["5", "x", "ping:5", "phx_reply", PONG])
        reply = yield client.request(["5", "y", "ping:5", "phx_leave", {}])
        self.assertEqual(reply, ["5", "y", "ping:5", "phx_reply", JOIN_OK])
        self.assertEqual((yield client.next_json()), ["5", "5", "ping:5", "phx_close", {}])
        reply = yield client.request(["z", "z", "ping:100", "phx_join", {}])
        self.assertEqual(reply, ["z", "z", "ping:100", "phx_reply", JOIN_OK])
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_joinFloodDoesNotStarveOthers(self) -> None:
        """
        A flood of joins on one connection does not keep another client's
        ping waiting: the flooder's joins are answered in order (100 joined,
        then "too many channels joined" until its join burst of 200 is
        spent, then "rate limited" 200 times) until it is closed with 1008.
        """
        self.endpoint.join_rate = 0.001  # no refill while the flood arrives
        client = yield self.connect()
        flood = 1000
        for i in range(flood):
            client.send_json([str(i), str(i), f"ping:{i}", "phx_join", {}])
        yield self.assertOthersUnaffected()
        yield self.assertClosedWith(client, 1008)
        replies = _drain(client)
        self.assertEqual([r[1] for r in replies], [str(i) for i in range(400)])
        reasons = [r[4]["response"].get("reason", r[4]["status"]) for r in replies]
        self.assertEqual(
            reasons, ["ok"] * 100 + ["too many channels joined"] * 100 + ["rate limited"] * 200
        )
        self.assertLogged("refused: more than 100 channels", LogLevel.error)
        self.assertLogged("Rate limiting a BadInputSocket connection: more than 200 joins", LogLevel.warn)
        self.assertLogged("Closing a BadInputSocket connection that kept sending joins", LogLevel.warn)

    @inlineCallbacks
    def test_eventFlood(self) -> None:
        """
        A flood of events is answered up to event_burst (200), refused with
        "rate limited" for as many more, then closed with 1008; its channels
        terminate and other clients keep their replies.
        """
        self.endpoint.event_rate = 0.001  # no refill while the flood arrives
        client = yield self.offender()
        for i in range(1000):
            client.send_json(["1", str(i), "rec:offender", "ping", {}])
        yield self.assertOthersUnaffected()
        yield self.assertClosedWith(client, 1008)
        refused = {"response": {"reason": "rate limited"}, "status": "error"}
        self.assertEqual(
            _drain(client),
            [["1", str(i), "rec:offender", "phx_reply", PONG] for i in range(200)]
            + [["1", str(i), "rec:offender", "phx_reply", refused] for i in range(200, 400)],
        )
        self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        self.assertLogged("Closing a BadInputSocket connection that kept sending events", LogLevel.warn)

    @inlineCallbacks
    def test_backlogOverflow(self) -> None:
        """
        More than max_backlog frames behind a join that never answers close
        the connection with 1008 (logged); other clients are unaffected.
        """
        client = yield self.offender()
        client.send_json(["2", "2", "stuck", "phx_join", {}])
        for i in range(MAX_BACKLOG + 1):
            client.send_json([None, str(10 + i), "phoenix", "heartbeat", {}])
        yield self.assertClosedWith(client, 1008)
        self.assertLogged(f"more than {MAX_BACKLOG} messages queued behind a pending join", LogLevel.error)
        self.assertEqual(client.pending_frames, 0)
        self.assertEqual(self.endpoint.terminations, [("rec:offender", ("shutdown", "closed"))])
        yield self.assertOthersUnaffected()


class NonWebSocketTests(_Offence, TestCase):
    """
    Requests that are not WebSocket handshakes at all.
    """

    @inlineCallbacks
    def _http(self, request: bytes, status: bytes, logged: str) -> Any:
        raw = yield raw_connect(reactor, self.port, test=self)
        raw.write(request)
        received = yield raw.connection_lost()
        self.assertTrue(received.startswith(b"HTTP/1.1 " + status), received)
        self.assertLogged(logged, LogLevel.info)
        yield self.assertOthersUnaffected()

    def test_plainGet(self) -> None:
        """A GET without Upgrade gets Phoenix's 400 and the connection closes."""
        return self._http(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"400 ",
            "refused with 400: not a WebSocket upgrade",
        )

    def test_post(self) -> None:
        """A POST gets Phoenix's 400, and its body is not read."""
        return self._http(
            b"POST /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}",
            b"400 ",
            "refused with 400: POST on a WebSocket path",
        )

    def test_body(self) -> None:
        """A WebSocket upgrade that announces a body is refused before the body is read."""
        return self._http(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nContent-Length: 157286400\r\n\r\n" + b"x" * 1000,
            b"400 ",
            "refused with 400: a request body on a WebSocket path",
        )

    def test_chunkedBody(self) -> None:
        """A chunked body on a WebSocket path is refused the same way."""
        return self._http(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\n",
            b"400 ",
            "refused with 400: a request body on a WebSocket path",
        )

    def test_hugeHead(self) -> None:
        """A request head over max_header_bytes gets 431 before it ends."""
        return self._http(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nX-Pad: " + b"a" * (MAX_HEADER_BYTES + 10),
            b"431 ",
            "refused with 431: its request head is too large",
        )

    @inlineCallbacks
    def test_garbage(self) -> None:
        """Bytes that are no HTTP request get 400 and the connection is dropped."""
        raw = yield raw_connect(reactor, self.port, test=self)
        raw.write(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")
        received = yield raw.connection_lost()
        self.assertEqual(received, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.assertLogged("refused with 400: bad request line", LogLevel.warn)
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def _dropped_after_timeout(self, data: bytes, trickle: bool = False) -> Any:
        raw = yield raw_connect(reactor, self.port, test=self)
        start = reactor.seconds()
        if data:
            raw.write(data)
        if trickle:
            # One more byte of the head every tenth of the timeout: the
            # deadline counts from the connection, not from the last byte.
            call = task.LoopingCall(raw.write, b"a")
            call.clock = reactor
            call.start(HANDSHAKE_TIMEOUT / 10, now=False)
            self.addCleanup(lambda: call.running and call.stop())
        received = yield raw.connection_lost()
        elapsed = reactor.seconds() - start
        self.assertTrue(received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received)
        self.assertGreaterEqual(elapsed, HANDSHAKE_TIMEOUT - 0.1)
        self.assertLess(elapsed, HANDSHAKE_TIMEOUT * 2)
        self.assertLogged("did not send its request within", LogLevel.warn)
        yield self.assertOthersUnaffected()

    def test_silentConnection(self) -> None:
        """A TCP connection that sends nothing gets 408 after handshake_timeout."""
        return self._dropped_after_timeout(b"")

    def test_unfinishedHandshake(self) -> None:
        """A handshake whose headers never end gets 408 after handshake_timeout."""
        return self._dropped_after_timeout(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        )

    def test_trickledHandshake(self) -> None:
        """A head sent a byte at a time still gets 408 at the deadline (not reset by each byte)."""
        return self._dropped_after_timeout(
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nX-Slow: ", trickle=True
        )

    @inlineCallbacks
    def test_connectNeverAnswers(self) -> None:
        """A socket whose connect never answers drops the client after handshake_timeout."""
        start = reactor.seconds()
        failure = yield self.assertFailure(self.connect(path="/silent/websocket"), HandshakeRefused)
        self.assertIsNone(failure.status)
        self.assertGreaterEqual(reactor.seconds() - start, HANDSHAKE_TIMEOUT - 0.05)
        self.assertLogged("opening handshake timeout", LogLevel.warn)
        yield self.assertOthersUnaffected()


class DeadPeerTests(_Offence, TestCase):
    """
    A client that vanishes without a closing handshake.
    """

    @inlineCallbacks
    def test_abortedClient(self) -> None:
        """
        An aborted connection's channels terminate, and broadcasts to their
        topic still reach the remaining subscribers.
        """
        client = yield self.offender()
        reply = yield self.bystander.request(["9", "9", "rec:offender", "phx_join", {}])
        self.assertEqual(reply, ["9", "9", "rec:offender", "phx_reply", JOIN_OK])
        self.assertEqual(len(self.endpoint.pubsub.subscribers("rec:offender")), 2)
        terminated = self.endpoint.next_termination()
        client.abort()
        topic, reason = yield terminated
        self.assertEqual((topic, reason), ("rec:offender", ("shutdown", "closed")))
        yield self.assertOthersUnaffected()
        self.assertEqual(len(self.endpoint.pubsub.subscribers("rec:offender")), 1)
        self.assertLogged("BadInputSocket connection lost without a closing handshake", LogLevel.info)
        self.endpoint.broadcast("rec:offender", "news", {"n": 1})
        self.assertEqual((yield self.bystander.next_json()), [None, None, "rec:offender", "news", {"n": 1}])
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_slowClientDropped(self) -> None:
        """
        A client that stops reading is dropped once more than
        max_lag bytes wait for it; a reading subscriber of the same
        topic gets every broadcast and stays connected.
        """
        client = yield self.offender()
        reply = yield self.bystander.request(["9", "9", "rec:offender", "phx_join", {}])
        self.assertEqual(reply, ["9", "9", "rec:offender", "phx_reply", JOIN_OK])
        client.protocol.transport.pauseProducing()  # the offender reads no more
        terminated = self.endpoint.next_termination(timeout=60)
        chunk = "x" * 16384
        sent = 0
        # One broadcast per reactor turn, so the bystander can keep reading;
        # bounded: the kernel's loopback buffers hold a few MB at most.
        while not terminated.called and sent < 3000:
            self.endpoint.broadcast("rec:offender", "news", {"n": sent, "pad": chunk})
            sent += 1
            yield deferLater(reactor, 0, lambda: None)
        self.assertEqual((yield terminated), ("rec:offender", ("shutdown", "closed")))
        self.assertLogged("Closing a connection that does not read", LogLevel.warn)
        for n in range(sent):
            frame = yield self.bystander.next_json()
            self.assertEqual(frame[3:5], ["news", {"n": n, "pad": chunk}])
        yield self.assertOthersUnaffected()

    @inlineCallbacks
    def test_abortMidFrame(self) -> None:
        """A client that dies halfway through a frame costs only its own connection."""
        client = yield self.offender()
        terminated = self.endpoint.next_termination()
        client.protocol.transport.write(b"\x81\xfe\x03\x00\x00\x00\x00\x00" + b"[" * 100)
        client.abort()
        self.assertEqual((yield terminated), ("rec:offender", ("shutdown", "closed")))
        self.assertLogged("BadInputSocket connection lost without a closing handshake", LogLevel.info)
        yield self.assertOthersUnaffected()


def _drain(client: Any) -> list[Any]:
    """The JSON frames a closed client received and nobody took yet."""
    frames = []
    while client.pending_frames:
        data, binary = client.protocol.frames.pending.pop(0)
        frames.append(orjson.loads(data))
    return frames
