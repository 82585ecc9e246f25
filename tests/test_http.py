"""
Tests for L{twisted_phoenix.transports.http}: the request head parser and
the limits and pacing of L{PhoenixSite}, in memory.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import Endpoint, Socket
from twisted_phoenix.transports.http import (
    FD_RESERVE,
    HeadError,
    PhoenixSite,
    RequestHead,
    default_max_connections,
    parse_head,
)

UPGRADE = (
    b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _turn(clock: Clock) -> None:
    """
    Run the calls due now, but not those they schedule for "now" (as the
    reactor runs those on its next turn; Clock.advance would run them too).
    """
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


class ParseHeadTests(SynchronousTestCase):
    """
    L{parse_head}.
    """

    def test_parses(self) -> None:
        """Method, decoded path, version and lower-cased headers."""
        head = parse_head(b"GET /a%20b/c?x=1 HTTP/1.1\r\nHost: h\r\nX-Thing:  v \r\nx-thing: w")
        self.assertEqual(
            head, RequestHead(b"GET", "/a b/c", b"HTTP/1.1", {b"host": b"h", b"x-thing": b"v, w"})
        )

    def test_refusals(self) -> None:
        """Request lines and headers that are not HTTP/1.x raise HeadError."""
        for head in (
            b"",
            b"GET /",
            b"GET / HTTP/2.0",
            b"GET / HTTP/1.1 extra",
            b"G(T / HTTP/1.1",
            b"GET nopath HTTP/1.1",
            b"GET /\xff HTTP/1.1",
            b"GET /%ff HTTP/1.1",
            b"GET / HTTP/1.1\r\nno colon",
            b"GET / HTTP/1.1\r\n: empty name",
            b"GET / HTTP/1.1\r\nbad name: x",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage",
        ):
            with self.assertRaises(HeadError, msg=repr(head)):
                parse_head(head)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.binary(max_size=300))
    def test_anyBytes(self, data: bytes) -> None:
        """Any bytes either parse or raise HeadError, nothing else."""
        try:
            head = parse_head(data)
        except HeadError:
            return
        self.assertIsInstance(head, RequestHead)

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(st.integers(0, len(UPGRADE) - 5), max_size=6), st.binary(min_size=1, max_size=4))
    def test_mutatedHeads(self, positions: list[int], junk: bytes) -> None:
        """A real handshake head with bytes replaced: parsed or HeadError, nothing else."""
        data = bytearray(UPGRADE[:-4])
        for position in positions:
            data[position : position + len(junk)] = junk
        try:
            parse_head(bytes(data))
        except HeadError:
            pass


class DefaultMaxConnectionsTests(SynchronousTestCase):
    """
    L{default_max_connections}.
    """

    def test_reserve(self) -> None:
        """A reserve of FD_RESERVE, or a tenth of a small limit, is kept."""
        self.assertEqual(default_max_connections(20000), 20000 - FD_RESERVE)
        self.assertEqual(default_max_connections(1024), 1024 - 102)
        self.assertEqual(default_max_connections(5), 5)

    def test_fromProcess(self) -> None:
        """Without an argument, the process's soft limit is used."""
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.assertEqual(default_max_connections(), default_max_connections(soft))


class _Socket(Socket):
    pass


class _Endpoint(Endpoint):
    sockets = {"/socket": _Socket, "/rooms/:room": _Socket}
    handshake_timeout = 5.0
    max_header_bytes = 1024
    max_connections = 3
    handshakes_per_turn = 2


class _Recorder:
    """A protocol factory standing in for Autobahn or twisted.web."""

    def __init__(self) -> None:
        self.protocols: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        recorder = self

        class Inner:
            transport: Any = None

            def __init__(self) -> None:
                self.data = b""
                self.lost = False
                recorder.protocols.append(self)

            def makeConnection(self, transport: Any) -> None:
                self.transport = transport

            def dataReceived(self, data: bytes) -> None:
                self.data += data

            def connectionLost(self, reason: Any = None) -> None:
                self.lost = True

        return Inner()


class PhoenixSiteTests(SynchronousTestCase):
    """
    L{PhoenixSite} with in-memory transports and a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = _Endpoint(self.clock)
        self.websocket = _Recorder()
        self.web = _Recorder()
        self.site = PhoenixSite(
            self.endpoint, self.web, {"/socket": self.websocket, "/rooms/:room": self.websocket}  # type: ignore[arg-type, dict-item]
        )

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: Any) -> None:
        protocol.connectionLost(None)

    def test_websocketRoute(self) -> None:
        """
        An upgrade on <mount>/websocket goes to the socket's factory, head
        and all: at once while the turn has room and nobody waits.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(UPGRADE[:20])
        self.assertEqual(self.websocket.protocols, [])
        protocol.dataReceived(UPGRADE[20:])
        [inner] = self.websocket.protocols
        self.assertIs(inner.transport, transport)
        self.assertEqual(inner.data, UPGRADE)
        self.assertEqual(transport.producerState, "producing")  # never paused
        protocol.dataReceived(b"more")
        self.assertEqual(inner.data, UPGRADE + b"more")
        self.lose(protocol)
        self.assertTrue(inner.lost)
        self.assertEqual(self.site.connections, 0)

    def test_waitingTurn(self) -> None:
        """
        Past the turn's share a request waits for the next turn, still read
        (a WebSocket client sends nothing more before its answer) until it
        has sent more than a head's worth of bytes, then not read until its
        turn; what it sent reaches the protocol it goes to, in order.
        """
        first, _ = self.connect()
        second, _ = self.connect()
        third, transport = self.connect()
        for protocol in (first, second, third):
            protocol.dataReceived(UPGRADE)
        self.assertEqual(len(self.websocket.protocols), 2)  # handshakes_per_turn
        self.assertEqual(transport.producerState, "producing")
        third.dataReceived(b"x" * 100)
        self.assertEqual(transport.producerState, "producing")
        third.dataReceived(b"y" * self.endpoint.max_header_bytes)
        self.assertEqual(transport.producerState, "paused")
        _turn(self.clock)
        self.assertEqual(len(self.websocket.protocols), 3)
        self.assertEqual(self.websocket.protocols[2].data, UPGRADE + b"x" * 100 + b"y" * self.endpoint.max_header_bytes)
        self.assertEqual(transport.producerState, "producing")

    def test_pathParamRoute(self) -> None:
        """A :name segment matches any one segment."""
        protocol, _ = self.connect()
        protocol.dataReceived(UPGRADE.replace(b"/socket/websocket", b"/rooms/42/websocket"))
        self.clock.advance(0)
        self.assertEqual(len(self.websocket.protocols), 1)

    def test_otherRequestsGoToWeb(self) -> None:
        """Anything else goes to twisted.web."""
        protocol, _ = self.connect()
        request = b"GET /socket/longpoll?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n\r\n"
        protocol.dataReceived(request)
        self.clock.advance(0)
        [inner] = self.web.protocols
        self.assertEqual(inner.data, request)
        self.assertEqual(self.websocket.protocols, [])

    def _refused(self, request: bytes, status: bytes) -> bytes:
        protocol, transport = self.connect()
        protocol.dataReceived(request)
        self.clock.advance(0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 " + status), transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.websocket.protocols + self.web.protocols, [])
        self.lose(protocol)
        return transport.value()

    def test_postOnWebSocketPath(self) -> None:
        """Another method than GET on a WebSocket path: 400, empty body."""
        answer = self._refused(b"POST /socket/websocket HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"400 ")
        self.assertTrue(answer.endswith(b"\r\n\r\n"))

    def test_bodyOnWebSocketPath(self) -> None:
        """A WebSocket upgrade announcing a body: 400 before any of it is read."""
        self._refused(UPGRADE[:-2] + b"Content-Length: 5\r\n\r\n", b"400 ")
        self._refused(UPGRADE[:-2] + b"Transfer-Encoding: chunked\r\n\r\n", b"400 ")

    def test_notAnUpgrade(self) -> None:
        """A plain GET on a WebSocket path: 400 with Phoenix's kind of text."""
        answer = self._refused(b"GET /socket/websocket HTTP/1.1\r\nHost: x\r\n\r\n", b"400 ")
        self.assertIn(b"upgrade", answer)

    def test_headTooLarge(self) -> None:
        """A head over max_header_bytes: 431 as soon as it is too large, ended or not."""
        self._refused(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000, b"431 ")
        self._refused(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000 + b"\r\n\r\n", b"431 ")

    def test_garbage(self) -> None:
        """A head that is not HTTP: 400."""
        self._refused(b"\x16\x03\x01garbage\r\n\r\n", b"400 ")

    def test_deadlineNotResetByData(self) -> None:
        """The head must be complete handshake_timeout after the connection, however it trickles."""
        protocol, transport = self.connect()
        for _ in range(49):
            self.clock.advance(0.1)
            protocol.dataReceived(b"G")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.11)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)

    def test_deadlineStopsWithTheHead(self) -> None:
        """Once the head is complete, the deadline no longer applies."""
        protocol, transport = self.connect()
        protocol.dataReceived(UPGRADE)
        self.clock.advance(0)
        self.clock.advance(10)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_maxConnections(self) -> None:
        """Past max_connections a new connection gets 503 at once; one closing makes room."""
        first, _ = self.connect()
        self.connect()
        self.connect()
        self.assertEqual(self.site.connections, 3)
        _, transport = self.connect()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.connections, 3)
        self.lose(first)
        self.assertEqual(self.site.connections, 2)
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"")

    def test_pacedPerTurn(self) -> None:
        """At most handshakes_per_turn requests are handled per reactor turn, in arrival order."""
        self.endpoint.max_connections = 10
        self.site = PhoenixSite(self.endpoint, self.web, {"/socket": self.websocket})  # type: ignore[arg-type, dict-item]
        protocols = [self.connect()[0] for _ in range(5)]
        for n, protocol in enumerate(protocols):
            protocol.dataReceived(UPGRADE.replace(b"vsn=2.0.0", b"n=%d" % n))
        counts = [len(self.websocket.protocols)]  # the arrival's turn
        for _ in range(3):
            _turn(self.clock)
            counts.append(len(self.websocket.protocols))
        self.assertEqual(counts, [2, 4, 5, 5])
        self.assertEqual([p.data[:14] for p in self.websocket.protocols], [b"GET /socket/we"] * 5)
        self.assertEqual(
            [p.data.split(b"?", 1)[1][:3] for p in self.websocket.protocols], [b"n=0", b"n=1", b"n=2", b"n=3", b"n=4"]
        )

    def test_goneWhileWaiting(self) -> None:
        """A connection that closes while waiting its turn is skipped."""
        admitted = [self.connect()[0] for _ in range(self.endpoint.handshakes_per_turn)]
        for protocol in admitted:
            protocol.dataReceived(UPGRADE)  # the turn's share
        protocol, _ = self.connect()
        protocol.dataReceived(UPGRADE)
        self.lose(protocol)
        self.clock.advance(0)
        self.assertEqual(len(self.websocket.protocols), len(admitted))
        self.assertEqual(self.site.connections, len(admitted))

    def test_whenIdle(self) -> None:
        """when_idle fires once every connection is closed; abort_all drops them."""
        first, t1 = self.connect()
        second, t2 = self.connect()
        d = self.site.when_idle()
        self.assertNoResult(d)
        self.site.abort_all()
        self.assertTrue(t1.disconnected and t2.disconnected)
        self.lose(first)
        self.assertNoResult(d)
        self.lose(second)
        self.successResultOf(d)
        self.successResultOf(self.site.when_idle())

    def test_refusalsLoggedRateLimited(self) -> None:
        """Refusals are logged through the endpoint's rate-limited log, with a count of the rest."""
        from twisted.logger import Logger

        events: list[dict[str, Any]] = []
        self.site.log = Logger(namespace="test_refusals", observer=events.append)
        for _ in range(15):
            self._refused(b"\x16garbage\r\n\r\n", b"400 ")
        self.assertEqual(len(events), 10)
        self.clock.advance(11)
        self._refused(b"\x16garbage\r\n\r\n", b"400 ")
        self.assertEqual(len(events), 11)
        self.assertEqual(events[-1]["log_suppressed"], 5)
