"""
Tests for L{twisted_phoenix.client}: the Python twin of phoenix.js, driven
in memory by a L{task.Clock} and a fake transport, its frames encoded and
decoded by the server's own serializers.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

import twisted_phoenix.client
from twisted_phoenix import serializers as server_serializers
from twisted_phoenix.client import (
    CLOSED,
    CLOSING,
    CONNECTING,
    OPEN,
    CloseEvent,
    ConnectionFailed,
    Disconnected,
    PushTimeout,
    ReplyError,
    Socket,
    default_reconnect_after,
    default_rejoin_after,
)
from twisted_phoenix.message import Message, Reply

URL = "ws://example.test/socket"


class FakeTransport:
    """
    A transport in memory: the test opens it, feeds it server frames and
    closes it; what the client sends is kept in L{sent}.
    """

    skip_heartbeat = False
    buffered_amount = 0
    protocol = None

    def __init__(self, clock: Clock, url: str, protocols: Sequence[str] | None, handler: Any) -> None:
        self.clock = clock
        self.url = url
        self.protocols = protocols
        self.handler = handler
        self.ready_state = CONNECTING
        self.sent: list[tuple[bytes, bool]] = []
        self.close_calls: list[tuple[int | None, str]] = []
        self.created_at = clock.seconds()

    # -- the Transport interface --

    def send(self, data: bytes, binary: bool) -> None:
        assert self.ready_state == OPEN, f"send while {self.ready_state}"
        self.sent.append((data, binary))

    def close(self, code: int | None = None, reason: str = "") -> None:
        self.close_calls.append((code, reason))
        if self.ready_state in (CLOSING, CLOSED):
            return
        self.ready_state = CLOSING
        # The server answers the closing handshake on a later turn.
        self.clock.callLater(0, self.closed, CloseEvent(1005 if code is None else code, reason, True))

    # -- what the server / network does --

    def open(self) -> None:
        self.ready_state = OPEN
        self.handler.transport_open()

    def closed(self, event: CloseEvent) -> None:
        if self.ready_state == CLOSED:
            return
        self.ready_state = CLOSED
        self.handler.transport_close(event)

    def drop(self) -> None:
        """The connection is lost without a closing handshake."""
        self.closed(CloseEvent(1006, "connection lost", False))

    def fail(self, message: str = "connection refused") -> None:
        """A connection attempt fails, as a refused TCP connection or HTTP 403."""
        self.ready_state = CLOSED
        self.handler.transport_error(ConnectionFailed(message))
        self.handler.transport_close(CloseEvent(1006, message, False))

    def receive(self, data: bytes, binary: bool = False) -> None:
        self.handler.transport_message(data, binary)


class Harness:
    """A client L{Socket} over L{FakeTransport}s, and a server's view of the frames."""

    def __init__(self, vsn: str = "2.0.0", url: str = URL, **options: Any) -> None:
        self.clock = Clock()
        self.transports: list[FakeTransport] = []
        self.vsn = vsn
        self.server = server_serializers.select_serializer(vsn)
        self.socket = Socket(url, reactor=self.clock, vsn=vsn, transport=self.make_transport, **options)

    def make_transport(self, url: str, protocols: Sequence[str] | None, handler: Any) -> FakeTransport:
        transport = FakeTransport(self.clock, url, protocols, handler)
        self.transports.append(transport)
        return transport

    @property
    def transport(self) -> FakeTransport:
        return self.transports[-1]

    def open(self) -> FakeTransport:
        """Connect and open the connection."""
        self.socket.connect()
        self.transport.open()
        return self.transport

    def sent(self, transport: FakeTransport | None = None) -> list[Message]:
        """Every message the client sent on ``transport``, decoded as the server decodes it."""
        transport = transport or self.transport
        return [self.server.decode(data, binary) for data, binary in transport.sent]

    def take(self) -> list[Message]:
        """The messages sent since the last call."""
        messages = self.sent()
        self.transport.sent.clear()
        return messages

    def last(self, event: str | None = None) -> Message:
        """The last message sent (with ``event``)."""
        messages = [m for m in self.sent() if event is None or m.event == event]
        assert messages, f"nothing sent (event {event!r})"
        return messages[-1]

    def reply(self, message: Message, status: str = "ok", response: Any = None) -> None:
        """The server's reply to ``message``."""
        frame = self.server.encode(
            Reply(message.topic, status, {} if response is None else response, message.ref, message.join_ref)
        )
        self.transport.receive(frame.data, frame.binary)

    def server_push(self, topic: str, event: str, payload: Any, join_ref: Any = None) -> None:
        """A push (or, without join_ref, a broadcast) from the server."""
        frame = self.server.encode(Message(topic, event, payload, None, join_ref))
        self.transport.receive(frame.data, frame.binary)

    def joined(self, topic: str = "room:lobby", params: Any = None) -> Any:
        """A channel on an open socket, joined."""
        if self.socket.connection is None:
            self.open()
        channel = self.socket.channel(topic, params)
        channel.join()
        self.reply(self.last("phx_join"))
        assert channel.is_joined(), channel.state
        return channel


def gather(deferred: Any) -> list[Any]:
    """The results a Deferred fires with (a failure kept as it is)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    return results


class SocketConnectTests(SynchronousTestCase):
    """Connecting, the URL, params and the auth token."""

    def test_endpointUrl(self) -> None:
        """The URL is the mount plus /websocket, the params (nested as phoenix.js writes them) and vsn."""
        h = Harness(params={"user_id": "a b&c", "n": 7, "ok": True, "room": {"id": 1, "tags": ["x", "y"]}})
        h.socket.connect()
        self.assertEqual(
            h.transport.url,
            "ws://example.test/socket/websocket?user_id=a%20b%26c&n=7&ok=true"
            "&room%5Bid%5D=1&room%5Btags%5D%5B0%5D=x&room%5Btags%5D%5B1%5D=y&vsn=2.0.0",
        )
        self.assertIsNone(h.transport.protocols)

    def test_endpointUrlWithoutParams(self) -> None:
        """Without params only vsn is in the query."""
        h = Harness(vsn="1.0.0")
        h.socket.connect()
        self.assertEqual(h.transport.url, "ws://example.test/socket/websocket?vsn=1.0.0")

    def test_connectFiresWhenOpen(self) -> None:
        """connect() fires with the socket once the transport opens, after the on_open callbacks."""
        h = Harness()
        opened: list[str] = []
        h.socket.on_open(lambda: opened.append("open"))
        d = h.socket.connect()
        self.assertNoResult(d)
        self.assertEqual(h.socket.connection_state(), "connecting")
        h.transport.open()
        self.assertIs(self.successResultOf(d), h.socket)
        self.assertEqual(opened, ["open"])
        self.assertTrue(h.socket.is_connected())
        self.assertIs(self.successResultOf(h.socket.connect()), h.socket)
        self.assertEqual(len(h.transports), 1)

    def test_connectTwiceOneTransport(self) -> None:
        """connect() while connecting makes no second connection; both Deferreds fire on open."""
        h = Harness()
        first, second = h.socket.connect(), h.socket.connect()
        self.assertEqual(len(h.transports), 1)
        h.transport.open()
        self.successResultOf(first)
        self.successResultOf(second)

    def test_connectSurvivesFailedAttempts(self) -> None:
        """Failed attempts go to on_error and the socket retries; connect() fires on the first open."""
        h = Harness()
        errors: list[BaseException] = []
        h.socket.on_error(errors.append)
        d = h.socket.connect()
        h.transport.fail("HTTP 403")
        self.assertNoResult(d)
        self.assertEqual([str(e) for e in errors], ["HTTP 403"])
        h.clock.advance(default_reconnect_after(1))
        self.assertEqual(len(h.transports), 2)
        h.transport.open()
        self.successResultOf(d)

    def test_disconnectBeforeOpenFailsConnect(self) -> None:
        """disconnect() before the open fails connect()'s Deferred with Disconnected."""
        h = Harness()
        d = h.socket.connect()
        h.socket.disconnect()
        self.failureResultOf(d, Disconnected)

    def test_paramsCallableReevaluated(self) -> None:
        """A params callable is called again for every reconnection, as phoenix.js's closure."""
        h = Harness()
        tokens = iter(["t1", "t2"])
        h.socket.params = lambda: {"token": next(tokens)}
        h.open()
        self.assertIn("token=t1&", h.transport.url)
        h.transport.drop()
        h.clock.advance(default_reconnect_after(1))
        self.assertEqual(len(h.transports), 2)
        self.assertIn("token=t2&", h.transport.url)

    def test_paramsCallableArgument(self) -> None:
        """The params argument may itself be a callable."""
        calls: list[int] = []

        def params() -> dict[str, Any]:
            calls.append(1)
            return {"n": len(calls)}

        h = Harness(params=params)
        h.open()
        self.assertIn("?n=1&vsn", h.transport.url)

    def test_authTokenSubprotocol(self) -> None:
        """auth_token is offered as ["phoenix", "base64url.bearer.phx." + base64 without padding]."""
        h = Harness(auth_token="SFMyNTY.g2gDYSpuBgBo.abcd")
        h.socket.connect()
        # btoa("SFMyNTY.g2gDYSpuBgBo.abcd") is "U0ZNeU5UWS5nMmdEWVNwdUJnQm8uYWJjZA==".
        self.assertEqual(h.transport.protocols, ["phoenix", "base64url.bearer.phx.U0ZNeU5UWS5nMmdEWVNwdUJnQm8uYWJjZA"])
        self.assertNotIn("token", h.transport.url)

    def test_authTokenCallable(self) -> None:
        """A callable auth_token is called for each connection."""
        tokens = iter(["one", "two"])
        h = Harness(auth_token=lambda: next(tokens))
        h.open()
        h.transport.drop()
        h.clock.advance(default_reconnect_after(1))
        offered = [t.protocols[1] for t in h.transports]  # type: ignore[index]
        self.assertEqual(
            offered, ["base64url.bearer.phx." + base64.b64encode(t).decode().rstrip("=") for t in (b"one", b"two")]
        )

    def test_badUrl(self) -> None:
        """The default transport refuses a URL that is not ws:// or wss:// at connect(); nothing is left half-made."""
        socket = Socket("http://example.test/socket", reactor=Clock())
        self.assertRaises(ValueError, socket.connect)
        self.assertIsNone(socket.connection)
        self.assertEqual(socket.connection_state(), "closed")

    def test_unknownVsn(self) -> None:
        """A vsn with no client serializer is refused at once."""
        self.assertRaises(ValueError, Socket, URL, reactor=Clock(), vsn="3.0.0")


class SocketHeartbeatTests(SynchronousTestCase):
    """Heartbeats, and the reconnect after a missed one."""

    def test_heartbeatEveryInterval(self) -> None:
        """A heartbeat goes out heartbeat_interval after the open, and again that long after each reply."""
        h = Harness(heartbeat_interval=30.0)
        h.open()
        h.clock.advance(29.9)
        self.assertEqual(h.sent(), [])
        h.clock.advance(0.1)
        (beat,) = h.take()
        self.assertEqual((beat.topic, beat.event, beat.payload, beat.join_ref), ("phoenix", "heartbeat", {}, None))
        h.clock.advance(10)
        h.reply(beat)
        h.clock.advance(29.9)
        self.assertEqual(h.sent(), [])
        h.clock.advance(0.1)
        (second,) = h.take()
        self.assertEqual(second.event, "heartbeat")
        self.assertNotEqual(second.ref, beat.ref)
        self.assertEqual(h.transport.close_calls, [])

    def test_heartbeatWireFormat(self) -> None:
        """The heartbeat frame is phoenix.js's, byte for byte, in both serializers."""
        for vsn, expected in (
            ("2.0.0", b'[null,"1","phoenix","heartbeat",{}]'),
            ("1.0.0", b'{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1","join_ref":null}'),
        ):
            h = Harness(vsn=vsn)
            h.socket.ref = 0
            h.socket.connect()
            h.socket.ref = 0  # connect() made no ref; make sure the heartbeat's is "1"
            h.transport.open()
            h.clock.advance(30)
            self.assertEqual(h.transport.sent, [(expected, False)], vsn)

    def test_missedHeartbeatReconnects(self) -> None:
        """
        A heartbeat unanswered when the next is due closes the connection
        (1000, "heartbeat timeout"), errors the channels and reconnects with the backoff.
        """
        h = Harness(heartbeat_interval=30.0)
        channel = h.joined()
        errors: list[Any] = []
        channel.on_error(errors.append)
        closes: list[CloseEvent] = []
        h.socket.on_close(closes.append)
        first = h.transport
        h.clock.advance(30)  # heartbeat sent
        h.clock.advance(29.9)
        self.assertEqual(first.close_calls, [])
        h.clock.advance(0.1)
        self.assertEqual(first.close_calls, [(1000, "heartbeat timeout")])
        self.assertEqual(errors, [{"source": "transport", "reason": "heartbeat_timeout"}])
        self.assertTrue(channel.is_errored())
        h.clock.advance(0)  # the close completes
        self.assertEqual(closes, [CloseEvent(1000, "heartbeat timeout", True)])
        self.assertEqual(len(h.transports), 1)
        h.clock.advance(default_reconnect_after(1))
        self.assertEqual(len(h.transports), 2)
        # The new connection opens: the channel rejoins at once.
        h.transport.open()
        join = h.last("phx_join")
        self.assertEqual(join.topic, "room:lobby")
        self.assertEqual(join.join_ref, channel.join_ref())
        h.reply(join)
        self.assertTrue(channel.is_joined())

    def test_deadServerClosingHandshake(self) -> None:
        """A transport that never finishes closing after a heartbeat timeout is given up after 1.5 s."""
        h = Harness(heartbeat_interval=30.0)
        h.open()
        h.transport.close = lambda code=None, reason="": h.transport.close_calls.append((code, reason))  # type: ignore[method-assign]
        h.clock.advance(30)
        h.clock.advance(30)
        self.assertEqual(h.transport.close_calls, [(1000, "heartbeat timeout")])
        h.clock.advance(1.49)
        self.assertEqual(len(h.transports), 1)
        h.clock.advance(0.011)  # the wait ends
        self.assertEqual(len(h.transports), 1)
        h.clock.advance(default_reconnect_after(1))
        self.assertEqual(len(h.transports), 2)

    def test_pingRoundTrip(self) -> None:
        """ping() sends a heartbeat and calls back with the round trip in seconds."""
        h = Harness()
        rtts: list[float] = []
        self.assertFalse(h.socket.ping(rtts.append))
        h.open()
        self.assertTrue(h.socket.ping(rtts.append))
        beat = h.last()
        h.clock.advance(0.25)
        h.reply(beat)
        self.assertEqual(rtts, [0.25])


class SocketReconnectTests(SynchronousTestCase):
    """Reconnecting after closes the client did not ask for, with phoenix.js's backoff."""

    def test_backoffSequence(self) -> None:
        """Failed attempts are retried after 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2, then 5 s."""
        h = Harness()
        h.socket.connect()
        for delay in [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 5.0, 5.0]:
            h.transport.fail()
            count = len(h.transports)
            h.clock.advance(delay - 0.001)
            self.assertEqual(len(h.transports), count, delay)
            h.clock.advance(0.002)
            self.assertEqual(len(h.transports), count + 1, delay)

    def test_customBackoff(self) -> None:
        """reconnect_after is called with the try number (1 for the first retry)."""
        tries: list[int] = []
        h = Harness(reconnect_after=lambda n: tries.append(n) or 3.0)
        h.socket.connect()
        h.transport.fail()
        h.clock.advance(2.9)
        self.assertEqual(len(h.transports), 1)
        h.clock.advance(0.1)
        h.transport.fail()
        h.clock.advance(3)
        self.assertEqual(tries, [1, 2])
        self.assertEqual(len(h.transports), 3)

    def test_triesResetOnOpen(self) -> None:
        """Once a connection opens, the next loss starts the backoff over."""
        h = Harness()
        h.socket.connect()
        h.transport.fail()
        h.clock.advance(0.01)
        h.transport.fail()
        h.clock.advance(0.05)
        h.transport.open()
        h.transport.drop()
        h.clock.advance(0.0099)
        self.assertEqual(len(h.transports), 3)
        h.clock.advance(0.0001)
        self.assertEqual(len(h.transports), 4)

    def test_serverCloseReconnects(self) -> None:
        """A clean close by the server (e.g. a disconnect broadcast, 1001) is followed by a reconnect."""
        h = Harness()
        channel = h.joined()
        h.transport.closed(CloseEvent(1001, "", True))
        self.assertTrue(channel.is_errored())
        h.clock.advance(0.01)
        self.assertEqual(len(h.transports), 2)
        h.transport.open()
        h.reply(h.last("phx_join"))
        self.assertTrue(channel.is_joined())

    def test_disconnectDoesNotReconnect(self) -> None:
        """disconnect() closes without a code, fires once closed and never reconnects."""
        h = Harness()
        channel = h.joined()
        closes: list[CloseEvent] = []
        h.socket.on_close(closes.append)
        d = h.socket.disconnect()
        self.assertEqual(h.transport.close_calls, [(None, "")])
        self.assertNoResult(d)
        h.clock.advance(0)
        self.successResultOf(d)
        self.assertEqual(len(closes), 1)
        self.assertIsNone(h.socket.connection)
        self.assertTrue(channel.is_errored())
        h.clock.advance(60)
        self.assertEqual(len(h.transports), 1)

    def test_disconnectWithCode(self) -> None:
        """disconnect(code, reason) closes with them."""
        h = Harness()
        h.open()
        h.socket.disconnect(4000, "bye")
        self.assertEqual(h.transport.close_calls, [(4000, "bye")])

    def test_connectAfterDisconnect(self) -> None:
        """connect() after disconnect() makes a new connection, and its channels rejoin."""
        h = Harness()
        channel = h.joined()
        h.socket.disconnect()
        h.clock.advance(0)
        d = h.socket.connect()
        self.assertEqual(len(h.transports), 2)
        h.transport.open()
        self.successResultOf(d)
        join = h.last("phx_join")
        h.reply(join)
        self.assertTrue(channel.is_joined())

    def test_eventsOfAReplacedConnection(self) -> None:
        """Once a connection is replaced, its late events do not reach the socket."""
        h = Harness()
        h.open()
        old = h.transport
        messages: list[Message] = []
        h.socket.on_message(messages.append)
        h.socket.disconnect()
        h.socket.connect()
        old.receive(b'[null,null,"room:lobby","news",{}]')
        self.assertEqual(messages, [])

    def test_callbacksAndOff(self) -> None:
        """on_open/on_close/on_error/on_message callbacks run in order; off(refs) removes them."""
        h = Harness()
        seen: list[Any] = []
        refs = [
            h.socket.on_open(lambda: seen.append("open")),
            h.socket.on_close(lambda e: seen.append(("close", e.code))),
            h.socket.on_error(lambda e: seen.append(("error", str(e)))),
            h.socket.on_message(lambda m: seen.append(("message", m.event))),
        ]
        h.socket.connect()
        h.transport.fail("refused")
        h.clock.advance(0.01)
        h.transport.open()
        h.transport.receive(b'[null,null,"t","news",{}]')
        self.assertEqual(seen, [("error", "refused"), ("close", 1006), "open", ("message", "news")])
        h.socket.off(refs)
        h.transport.drop()
        self.assertEqual(len(seen), 4)

    def test_callbackExceptionIsolated(self) -> None:
        """An exception in one socket callback is logged; the next callbacks still run."""
        h = Harness()
        seen: list[str] = []
        h.socket.on_open(lambda: 1 / 0)
        h.socket.on_open(lambda: seen.append("second"))
        h.open()
        self.assertEqual(seen, ["second"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_socketPushBufferedUntilOpen(self) -> None:
        """A message pushed before the connection opens goes out when it opens."""
        h = Harness()
        h.socket.connect()
        h.socket.push(Message("phoenix", "heartbeat", {}, "99", None))
        self.assertEqual(h.transport.sent, [])
        h.transport.open()
        self.assertEqual([m.ref for m in h.sent()], ["99"])

    def test_undecodableFrameDropped(self) -> None:
        """A frame the serializer cannot decode is logged and dropped; the connection stays."""
        h = Harness()
        channel = h.joined()
        h.transport.receive(b"not json")
        h.transport.receive(b"\x07junk", True)
        self.assertTrue(channel.is_joined())
        self.assertTrue(h.socket.is_connected())


class ChannelJoinTests(SynchronousTestCase):
    """Joining: replies, errors, timeouts and rejoins."""

    def test_joinOk(self) -> None:
        """join() sends phx_join with the params (join_ref = ref) and fires with the reply's response."""
        h = Harness()
        h.open()
        channel = h.socket.channel("room:lobby", {"nick": "bot"})
        d = channel.join()
        self.assertTrue(channel.is_joining())
        join = h.last()
        self.assertEqual((join.topic, join.event, join.payload), ("room:lobby", "phx_join", {"nick": "bot"}))
        self.assertEqual(join.join_ref, join.ref)
        self.assertEqual(channel.join_ref(), join.ref)
        self.assertNoResult(d)
        h.reply(join, "ok", {"welcome": True})
        self.assertEqual(self.successResultOf(d), {"welcome": True})
        self.assertTrue(channel.is_joined())

    def test_joinWireFormat(self) -> None:
        """The join frame is phoenix.js's, byte for byte, in both serializers."""
        for vsn, expected in (
            ("2.0.0", b'["3","3","room:lobby","phx_join",{"nick":"bot"}]'),
            ("1.0.0", b'{"topic":"room:lobby","event":"phx_join","payload":{"nick":"bot"},"ref":"3","join_ref":"3"}'),
        ):
            h = Harness(vsn=vsn)
            h.open()
            h.socket.ref = 0
            channel = h.socket.channel("room:lobby", {"nick": "bot"})  # refs 1, 2: its two socket callbacks
            channel.join()
            self.assertEqual(h.transport.sent, [(expected, False)], vsn)

    def test_joinBeforeConnect(self) -> None:
        """A join made before the socket opens is sent when it opens."""
        h = Harness()
        channel = h.socket.channel("room:lobby")
        d = channel.join()
        h.socket.connect()
        self.assertEqual(h.transport.sent, [])
        h.transport.open()
        h.reply(h.last("phx_join"))
        self.assertEqual(self.successResultOf(d), {})

    def test_joinWhileConnectingSurvivesFailures(self) -> None:
        """
        A join made while the socket connects is errored once by a failed
        attempt (not again by its close or later failures) and sent once, on
        the first open, with a fresh join_ref.
        """
        h = Harness()
        channel = h.socket.channel("room:lobby")
        errors: list[Any] = []
        channel.on_error(errors.append)
        d = channel.join()
        first_ref = channel.join_ref()
        h.socket.connect()
        h.transport.fail()
        self.assertEqual(errors, [{"source": "transport", "reason": "connection_error"}])
        self.assertTrue(channel.is_errored())
        h.clock.advance(0.01)
        h.transport.fail()
        self.assertEqual(len(errors), 1)
        h.clock.advance(0.05)
        h.transport.open()
        (join,) = h.sent()
        self.assertEqual(join.event, "phx_join")
        self.assertNotEqual(join.join_ref, first_ref)
        h.reply(join)
        self.assertEqual(self.successResultOf(d), {})

    def test_joinTwice(self) -> None:
        """join() may be called once per channel."""
        h = Harness()
        channel = h.socket.channel("room:lobby")
        channel.join()
        self.assertRaises(RuntimeError, channel.join)

    def test_joinParamsCallable(self) -> None:
        """Callable channel params are evaluated for each join."""
        h = Harness()
        h.open()
        n = iter(range(1, 10))
        channel = h.socket.channel("room:lobby", lambda: {"try": next(n)})
        d = channel.join()
        self.assertEqual(h.last("phx_join").payload, {"try": 1})
        h.reply(h.last("phx_join"), "error", {})
        self.failureResultOf(d, ReplyError)
        h.clock.advance(1)
        self.assertEqual(h.last("phx_join").payload, {"try": 2})

    def test_joinError(self) -> None:
        """An error reply fails join() with ReplyError and rejoins after 1, 2, 5, 10, 10 s."""
        h = Harness()
        h.open()
        channel = h.socket.channel("room:secret")
        d = channel.join()
        h.reply(h.last(), "error", {"reason": "unauthorized"})
        failure = self.failureResultOf(d, ReplyError)
        self.assertEqual(failure.value.response, {"reason": "unauthorized"})
        self.assertEqual((failure.value.topic, failure.value.event), ("room:secret", "phx_join"))
        self.assertTrue(channel.is_errored())
        times = []
        for _ in range(5):
            count = len(h.sent())
            start = h.clock.seconds()
            while len(h.sent()) == count:
                h.clock.advance(0.5)
            times.append(h.clock.seconds() - start)
            h.reply(h.last(), "error", {"reason": "unauthorized"})
        self.assertEqual(times, [1.0, 2.0, 5.0, 10.0, 10.0])
        self.assertEqual([default_rejoin_after(n) for n in range(1, 6)], times)

    def test_joinErrorThenOk(self) -> None:
        """A join refused first and accepted on a rejoin: join_push hooks run for each reply."""
        h = Harness()
        h.open()
        channel = h.socket.channel("room:lobby")
        statuses: list[str] = []
        channel.join_push.receive("ok", lambda r: statuses.append("ok"))
        channel.join_push.receive("error", lambda r: statuses.append("error"))
        d = channel.join()
        h.reply(h.last(), "error", {})
        self.failureResultOf(d, ReplyError)
        h.clock.advance(1)
        h.reply(h.last(), "ok", {})
        self.assertTrue(channel.is_joined())
        self.assertEqual(statuses, ["error", "ok"])

    def test_joinTimeout(self) -> None:
        """No reply within the timeout: PushTimeout, a phx_leave, errored, and a rejoin after 1 s."""
        h = Harness(timeout=10.0)
        h.open()
        channel = h.socket.channel("room:lobby")
        d = channel.join(timeout=5.0)
        first = h.last()
        h.clock.advance(4.9)
        self.assertNoResult(d)
        h.clock.advance(0.1)
        failure = self.failureResultOf(d, PushTimeout)
        self.assertEqual(failure.value.timeout, 5.0)
        leave = h.last()
        self.assertEqual((leave.event, leave.join_ref), ("phx_leave", first.join_ref))
        self.assertTrue(channel.is_errored())
        h.clock.advance(1)
        rejoin = h.last()
        self.assertEqual(rejoin.event, "phx_join")
        self.assertNotEqual(rejoin.join_ref, first.join_ref)
        # A late reply to the first join is ignored.
        h.reply(first)
        self.assertTrue(channel.is_joining())
        h.reply(rejoin)
        self.assertTrue(channel.is_joined())

    def test_phxErrorRejoins(self) -> None:
        """phx_error errors the channel (on_error gets its payload) and it rejoins after 1 s with a new join_ref."""
        h = Harness()
        channel = h.joined()
        errors: list[Any] = []
        channel.on_error(errors.append)
        old_ref = channel.join_ref()
        h.server_push("room:lobby", "phx_error", {"reason": "channel_crash"}, join_ref=old_ref)
        self.assertEqual(errors, [{"reason": "channel_crash"}])
        self.assertTrue(channel.is_errored())
        h.take()
        h.clock.advance(0.99)
        self.assertEqual(h.sent(), [])
        h.clock.advance(0.01)
        (rejoin,) = h.sent()
        self.assertEqual(rejoin.event, "phx_join")
        self.assertNotEqual(rejoin.join_ref, old_ref)
        h.reply(rejoin)
        self.assertTrue(channel.is_joined())

    def test_outdatedMessagesDropped(self) -> None:
        """Messages carrying an earlier join_ref are dropped; those without one are delivered."""
        h = Harness()
        channel = h.joined()
        seen: list[Any] = []
        channel.on("news", seen.append)
        old_ref = channel.join_ref()
        h.server_push("room:lobby", "phx_error", {}, join_ref=old_ref)
        h.clock.advance(1)
        h.reply(h.last("phx_join"))
        h.server_push("room:lobby", "news", {"n": 1}, join_ref=old_ref)
        h.server_push("room:lobby", "news", {"n": 2}, join_ref=channel.join_ref())
        h.server_push("room:lobby", "news", {"n": 3})
        h.server_push("room:other", "news", {"n": 4})
        self.assertEqual(seen, [{"n": 2}, {"n": 3}])

    def test_phxCloseClosesForGood(self) -> None:
        """phx_close closes the channel: on_close runs, it leaves socket.channels and never rejoins."""
        h = Harness()
        channel = h.joined()
        closes: list[Any] = []
        channel.on_close(closes.append)
        h.server_push("room:lobby", "phx_close", {}, join_ref=channel.join_ref())
        self.assertEqual(closes, [{}])
        self.assertTrue(channel.is_closed())
        self.assertNotIn(channel, h.socket.channels)
        h.take()
        h.transport.drop()
        h.clock.advance(0.01)
        h.transport.open()
        h.clock.advance(30)
        self.assertEqual([m.event for m in h.sent()], ["heartbeat"])

    def test_rejoinAfterReconnect(self) -> None:
        """A lost connection errors the joined channels; they rejoin as soon as a new connection opens."""
        h = Harness()
        lobby = h.joined("room:lobby")
        other = h.joined("room:other")
        errors: list[Any] = []
        lobby.on_error(errors.append)
        h.transport.drop()
        self.assertEqual(errors, [{"source": "transport", "reason": "connection_closed"}])
        self.assertTrue(lobby.is_errored() and other.is_errored())
        h.clock.advance(0.01)
        h.transport.open()
        joins = {m.topic: m for m in h.sent() if m.event == "phx_join"}
        self.assertEqual(set(joins), {"room:lobby", "room:other"})
        for join in joins.values():
            h.reply(join)
        self.assertTrue(lobby.is_joined() and other.is_joined())

    def test_duplicateTopicLeavesFirst(self) -> None:
        """Joining a second channel on a joined topic leaves the first one (phoenix.js's leaveOpenTopic)."""
        h = Harness()
        first = h.joined("room:lobby")
        closes: list[Any] = []
        first.on_close(closes.append)
        first_ref = first.join_ref()
        second = h.socket.channel("room:lobby")
        second.join()
        leave, join = h.sent()[-2:]
        self.assertEqual((leave.event, leave.join_ref), ("phx_leave", first_ref))
        self.assertEqual((join.event, join.join_ref), ("phx_join", second.join_ref()))
        self.assertEqual(closes, ["leave"])
        self.assertTrue(first.is_closed())
        self.assertEqual(h.socket.channels, [second])


class ChannelPushTests(SynchronousTestCase):
    """Pushes and their replies."""

    def test_pushOk(self) -> None:
        """push() sends the event with the join_ref and a fresh ref, and fires with the response."""
        h = Harness()
        channel = h.joined()
        d = channel.push("ping", {"n": 1})
        push = h.last()
        self.assertEqual((push.topic, push.event, push.payload, push.join_ref), ("room:lobby", "ping", {"n": 1}, channel.join_ref()))
        self.assertNotEqual(push.ref, push.join_ref)
        h.reply(push, "ok", {"ping": "pong"})
        self.assertEqual(self.successResultOf(d), {"ping": "pong"})

    def test_pushDefaultPayload(self) -> None:
        """A push without a payload sends {}."""
        h = Harness()
        channel = h.joined()
        channel.push("ping")
        self.assertEqual(h.last().payload, {})

    def test_pushError(self) -> None:
        """An error reply fails the push with ReplyError carrying the response."""
        h = Harness()
        channel = h.joined()
        d = channel.push("param_ping", {"error": True})
        h.reply(h.last(), "error", {"reason": "You asked for this!"})
        failure = self.failureResultOf(d, ReplyError)
        self.assertEqual(failure.value.response, {"reason": "You asked for this!"})
        self.assertEqual(failure.value.event, "param_ping")

    def test_pushTimeout(self) -> None:
        """A push without a reply fails with PushTimeout after its timeout (the channel's by default)."""
        h = Harness(timeout=10.0)
        channel = h.joined()
        d = channel.push("pong")
        short = channel.push("pong", timeout=0.3)
        h.clock.advance(0.3)
        self.assertIsInstance(self.failureResultOf(short, PushTimeout).value.timeout, float)
        h.clock.advance(9.6)
        self.assertNoResult(d)
        h.clock.advance(0.1)
        failure = self.failureResultOf(d, PushTimeout)
        self.assertEqual((failure.value.event, failure.value.timeout), ("pong", 10.0))
        self.assertTrue(channel.is_joined())

    def test_lateReplyIgnored(self) -> None:
        """A reply after the timeout changes nothing."""
        h = Harness()
        channel = h.joined()
        d = channel.push("slow", timeout=1)
        push = h.last()
        h.clock.advance(1)
        self.failureResultOf(d, PushTimeout)
        h.reply(push, "ok", {"late": True})

    def test_pushBeforeJoin(self) -> None:
        """push() before join() raises RuntimeError."""
        h = Harness()
        channel = h.socket.channel("room:lobby")
        self.assertRaises(RuntimeError, channel.push, "ping", {})

    def test_pushesBufferedWhileJoining(self) -> None:
        """Pushes made while joining go out, in order, with the join_ref once the join succeeds."""
        h = Harness()
        h.open()
        channel = h.socket.channel("room:lobby")
        channel.join()
        d1 = channel.push("first", {"n": 1})
        d2 = channel.push("second", {"n": 2})
        self.assertEqual([m.event for m in h.sent()], ["phx_join"])
        h.reply(h.last("phx_join"))
        first, second = h.sent()[1:]
        self.assertEqual([(first.event, first.join_ref), (second.event, second.join_ref)],
                         [("first", channel.join_ref()), ("second", channel.join_ref())])
        h.reply(first, "ok", {"a": 1})
        h.reply(second, "ok", {"b": 2})
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ({"a": 1}, {"b": 2}))

    def test_bufferedPushTimesOut(self) -> None:
        """A buffered push's timeout runs while it waits; once timed out it is never sent."""
        h = Harness()
        h.open()
        channel = h.socket.channel("room:lobby")
        channel.join(timeout=10)
        d = channel.push("early", {}, timeout=2)
        h.clock.advance(2)
        self.failureResultOf(d, PushTimeout)
        h.reply(h.last("phx_join"))
        self.assertEqual([m.event for m in h.sent()], ["phx_join"])

    def test_pushBufferedWhileErrored(self) -> None:
        """Pushes made while the channel is errored wait for the rejoin."""
        h = Harness()
        channel = h.joined()
        h.transport.drop()
        d = channel.push("after", {})
        h.clock.advance(0.01)
        h.transport.open()
        h.reply(h.last("phx_join"))
        push = h.last()
        self.assertEqual(push.event, "after")
        h.reply(push, "ok", {"ok": 1})
        self.assertEqual(self.successResultOf(d), {"ok": 1})

    def test_onAndOff(self) -> None:
        """on(event) callbacks get every payload of that event; off(event, ref) removes one, off(event) all."""
        h = Harness()
        channel = h.joined()
        a: list[Any] = []
        b: list[Any] = []
        ref_a = channel.on("news", a.append)
        channel.on("news", b.append)
        h.server_push("room:lobby", "news", {"n": 1})
        channel.off("news", ref_a)
        h.server_push("room:lobby", "news", {"n": 2})
        channel.off("news")
        h.server_push("room:lobby", "news", {"n": 3})
        self.assertEqual((a, b), ([{"n": 1}], [{"n": 1}, {"n": 2}]))

    def test_callbackExceptionLogged(self) -> None:
        """An exception in an on() callback is logged; other callbacks and the socket go on."""
        h = Harness()
        channel = h.joined()
        seen: list[Any] = []
        channel.on("news", lambda p: 1 / 0)
        channel.on("news", seen.append)
        h.server_push("room:lobby", "news", {"n": 1})
        self.assertEqual(seen, [{"n": 1}])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(h.socket.is_connected())


class ChannelLeaveTests(SynchronousTestCase):
    """Leaving."""

    def test_leaveOk(self) -> None:
        """
        leave() sends phx_leave and, as phoenix.js, closes the channel at once
        (on_close gets "leave", it leaves socket.channels) and fires with {};
        the server's reply changes nothing.
        """
        h = Harness()
        channel = h.joined()
        closes: list[Any] = []
        channel.on_close(closes.append)
        join_ref = channel.join_ref()
        d = channel.leave()
        leave = h.last()
        self.assertEqual((leave.event, leave.join_ref), ("phx_leave", join_ref))
        self.assertEqual(self.successResultOf(d), {})
        self.assertEqual(closes, ["leave"])
        self.assertTrue(channel.is_closed())
        self.assertEqual(h.socket.channels, [])
        h.reply(leave)
        h.server_push("room:lobby", "phx_close", {}, join_ref=join_ref)
        self.assertEqual(closes, ["leave"])
        h.clock.advance(30)
        self.assertEqual([m.event for m in h.take()], ["phx_join", "phx_leave", "heartbeat"])

    def test_leaveWireFormat(self) -> None:
        """The leave frame carries the join_ref and a new ref, as phoenix.js's."""
        h = Harness()
        channel = h.joined()
        h.take()
        channel.leave()
        (leave,) = h.take()
        self.assertEqual(
            h.server.encode(leave).data,
            f'["{channel.join_ref()}","{leave.ref}","room:lobby","phx_leave",{{}}]'.encode(),
        )
        self.assertEqual(int(leave.ref), int(channel.join_ref()) + 1)

    def test_leaveWhenNotConnected(self) -> None:
        """Leaving a channel that is not joined closes it at once."""
        h = Harness()
        channel = h.socket.channel("room:lobby")
        channel.join()
        self.assertEqual(self.successResultOf(channel.leave()), {})
        self.assertTrue(channel.is_closed())
        h.open()
        self.assertEqual(h.sent(), [])

    def test_leaveStopsRejoins(self) -> None:
        """An errored channel that leaves does not rejoin."""
        h = Harness()
        h.open()
        channel = h.socket.channel("wild:1:3")
        d = channel.join()
        h.reply(h.last(), "error", {})
        self.failureResultOf(d, ReplyError)
        channel.leave()
        h.clock.advance(30)
        self.assertEqual([m.event for m in h.sent()], ["phx_join", "phx_leave", "heartbeat"])


class BinaryTests(SynchronousTestCase):
    """bytes payloads travel in the V2 serializer's binary frames."""

    def test_binaryPushAndReply(self) -> None:
        """A bytes payload goes out as a binary push; a binary reply fires the push with bytes."""
        h = Harness()
        channel = h.joined("bin:lobby")
        received: list[Any] = []
        channel.on("binary_event", received.append)
        d = channel.push("binary_event", b"\x01\x02")
        data, binary = h.transport.sent[-1]
        self.assertTrue(binary)
        push = h.last()
        self.assertEqual(
            data,
            bytes((0, len(push.join_ref), len(push.ref), 9, 12)) + push.join_ref.encode() + push.ref.encode()
            + b"bin:lobby" + b"binary_event" + b"\x01\x02",
        )
        self.assertEqual(push.payload, b"\x01\x02")
        h.server_push("bin:lobby", "binary_event", b"\x00\x01", join_ref=channel.join_ref())
        h.reply(push, "ok", b"\x01\x02\x03\x04")
        self.assertEqual(received, [b"\x00\x01"])
        self.assertEqual(self.successResultOf(d), b"\x01\x02\x03\x04")

    def test_binaryBroadcast(self) -> None:
        """A binary broadcast reaches on() callbacks as bytes."""
        h = Harness()
        channel = h.joined("bin:lobby")
        received: list[Any] = []
        channel.on("bytes", received.append)
        frame = server_serializers.V2JSONSerializer().fastlane(
            __import__("twisted_phoenix.message", fromlist=["Broadcast"]).Broadcast("bin:lobby", "bytes", b"\xde\xad")
        )
        h.transport.receive(frame.data, True)
        self.assertEqual(received, [b"\xde\xad"])

    def test_binaryErrorReply(self) -> None:
        """A binary error reply fails the push with ReplyError carrying the bytes."""
        h = Harness()
        channel = h.joined("bin:lobby")
        d = channel.push("x", b"\x00")
        h.reply(h.last(), "error", b"nope")
        self.assertEqual(self.failureResultOf(d, ReplyError).value.response, b"nope")

    def test_v1CannotCarryBytes(self) -> None:
        """With vsn 1.0.0 a bytes push fails at once with TypeError; nothing is sent."""
        h = Harness(vsn="1.0.0")
        channel = h.joined()
        count = len(h.sent())
        d = channel.push("binary_event", b"\x01")
        self.failureResultOf(d, TypeError)
        self.assertEqual(len(h.sent()), count)
        self.assertTrue(channel.is_joined())

    def test_v1Channel(self) -> None:
        """With vsn 1.0.0, a join and a push are answered through V1 objects (no join_ref in replies)."""
        h = Harness(vsn="1.0.0")
        channel = h.joined()
        d = channel.push("ping")
        push = h.last()
        frame = h.server.encode(Reply("room:lobby", "ok", {"ping": "pong"}, push.ref, None))
        self.assertNotIn(b"join_ref", frame.data)
        h.transport.receive(frame.data)
        self.assertEqual(self.successResultOf(d), {"ping": "pong"})


class LibraryRulesTests(SynchronousTestCase):
    """The client follows the project's rules for library code."""

    def test_noGlobalReactor(self) -> None:
        """No module of twisted_phoenix.client imports the global reactor."""
        directory = os.path.dirname(twisted_phoenix.client.__file__)
        for name in sorted(os.listdir(directory)):
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    source = f.read()
                self.assertNotIn("import reactor", source, name)
                self.assertNotIn("internet.reactor", source, name)

    def test_publicSurface(self) -> None:
        """The package re-exports its public names."""
        self.assertEqual(
            sorted(twisted_phoenix.client.__all__),
            sorted(
                [
                    "CLOSED", "CLOSING", "CONNECTING", "OPEN", "Channel", "ClientSerializer", "CloseEvent",
                    "ConnectionFailed", "Disconnected", "Presence", "Push", "PushTimeout", "ReplyError",
                    "Socket", "Timer", "Transport", "TransportFactory", "TransportHandler", "V1", "V2",
                    "WebSocketTransport", "default_reconnect_after", "default_rejoin_after",
                ]
            ),
        )
        for name in twisted_phoenix.client.__all__:
            self.assertTrue(hasattr(twisted_phoenix.client, name), name)
