"""
Test-only helpers for real loopback tests: a server harness, a small
WebSocket client built on Autobahn, a raw TCP client for non-WebSocket abuse,
and a log capture.

Everything here is bounded: every wait has a timeout, and the cleanups wait
for the TCP connections to be gone so trial's reactor stays clean.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import provider

from twisted_phoenix._autobahn import ReactorTimer

__all__ = [
    "DEFAULT_TIMEOUT",
    "Client",
    "HandshakeRefused",
    "LogCapture",
    "RawClient",
    "Server",
    "capture_logs",
    "connect",
    "raw_connect",
    "serve",
]

#: Seconds any single wait may take before the test fails.
DEFAULT_TIMEOUT = 5.0


class _Once:
    """A result that any number of waiters can wait for."""

    def __init__(self) -> None:
        self.done = False
        self.result: Any = None
        self._waiters: list[Deferred[Any]] = []

    def fire(self, result: Any) -> None:
        if self.done:
            return
        self.done = True
        self.result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(result)

    def wait(self, reactor: Any, timeout: float | None = DEFAULT_TIMEOUT) -> Deferred[Any]:
        if self.done:
            return defer.succeed(self.result)
        d: Deferred[Any] = Deferred(lambda d: self._waiters.remove(d))
        self._waiters.append(d)
        if timeout is not None:
            d.addTimeout(timeout, reactor)
        return d


# -- server ------------------------------------------------------------------------


class Server:
    """
    An endpoint served over real loopback TCP.

    :ivar port: the listening port number.
    :ivar site: the endpoint's :class:`~twisted_phoenix.transports.http.PhoenixSite`.
    """

    def __init__(self, reactor: Any, endpoint: Any, listening: Any, site: Any) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.site = site
        self._listening = listening
        self.port: int = listening.getHost().port

    @property
    def connections(self) -> list[Any]:
        """The server-side TCP connections still open (their first protocols)."""
        return list(self.site.open)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening, drop every connection and wait until they are gone."""
        yield self._listening.stopListening()
        self.site.abort_all()
        yield self.wait_no_connections()

    def wait_no_connections(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Fires once every server-side TCP connection has gone."""
        return self.site.when_idle().addTimeout(timeout, self.reactor)


def serve(test: TestCase, endpoint: Any) -> Server:
    """
    Serve ``endpoint.site()`` on 127.0.0.1, port 0; stopped (and every
    server-side connection gone) in ``test``'s cleanup.
    """
    reactor = endpoint.reactor
    site = endpoint.site()
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    server = Server(reactor, endpoint, listening, site)
    test.addCleanup(server.stop)
    return server


# -- WebSocket client -----------------------------------------------------------------


class HandshakeRefused(Exception):
    """
    The server refused the opening handshake.

    :ivar status: the HTTP status (e.g. 403), or ``None`` when the server
        dropped the connection without answering.
    """

    def __init__(self, status: int | None, reason: str | None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class _ClientProtocol(WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.opened = _Once()
        self.closed_event = _Once()
        self.lost = _Once()
        self.frames: DeferredQueue[tuple[bytes, bool]] = DeferredQueue()
        self.was_open = False

    def onOpen(self) -> None:
        self.was_open = True
        self.opened.fire(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.put((payload, isBinary))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.was_open:
            status_line = getattr(self, "http_status_line", None)
            status = None
            if status_line:
                parts = status_line.split()
                if len(parts) > 1 and parts[1].isdigit():
                    status = int(parts[1])
            self.opened.fire(Failure(HandshakeRefused(status, reason)))
        self.closed_event.fire((wasClean, code, reason))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        try:
            super().connectionLost(reason)
        finally:
            # Autobahn may leave its closing-handshake timer pending.
            if self.closeHandshakeTimeoutCall is not None:
                self.closeHandshakeTimeoutCall.cancel()
                self.closeHandshakeTimeoutCall = None
            if not self.opened.done:
                self.opened.fire(Failure(HandshakeRefused(None, "connection lost")))
            self.closed_event.fire((False, None, "connection lost"))
            self.lost.fire(None)


class Client:
    """
    One test WebSocket connection.

    Frames the server sends queue up; :meth:`next_frame` takes the next one.
    """

    def __init__(self, reactor: Any, protocol: _ClientProtocol) -> None:
        self.reactor = reactor
        self.protocol = protocol

    # -- sending --

    def send_text(self, data: str | bytes) -> None:
        """Send one text frame (bytes are sent as they are, valid UTF-8 or not)."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.protocol.sendMessage(data, isBinary=False)

    def send_binary(self, data: bytes) -> None:
        """Send one binary frame."""
        self.protocol.sendMessage(data, isBinary=True)

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` as a compact JSON text frame."""
        self.send_text(orjson.dumps(obj))

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        """Send one raw WebSocket frame (e.g. a continuation frame, opcode 0)."""
        self.protocol.sendFrame(opcode, payload, fin=fin)

    # -- receiving --

    def next_frame(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[tuple[bytes, bool]]:
        """The next frame from the server, as ``(data, is_binary)``."""
        return self.protocol.frames.get().addTimeout(timeout, self.reactor)

    @defer.inlineCallbacks
    def next_json(self, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """The next frame, which must be a text frame, decoded from JSON."""
        data, binary = yield self.next_frame(timeout)
        if binary:
            raise AssertionError(f"expected a text frame, got binary {data!r}")
        return orjson.loads(data)

    @defer.inlineCallbacks
    def frames_until(self, done: Callable[[Any], bool], what: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Read JSON frames until ``done(frame)``; fires with every frame read, or fails after ``timeout``."""
        frames: list[Any] = []
        deadline = self.reactor.seconds() + timeout
        while True:
            left = deadline - self.reactor.seconds()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout} s; got {frames[-5:]!r}")
            try:
                frame = yield self.next_json(left)
            except defer.TimeoutError:
                raise AssertionError(f"no {what} within {timeout} s; got {frames[-5:]!r}") from None
            frames.append(frame)
            if done(frame):
                return frames

    @defer.inlineCallbacks
    def request(self, message: Any, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Send ``message`` as JSON and return the next frame, decoded."""
        self.send_json(message)
        return (yield self.next_json(timeout))

    @defer.inlineCallbacks
    def join_and_ping(self, topic: str = "ping", ref: str = "1") -> Any:
        """Join a PingChannel-like ``topic`` and ping it; assert the V2 replies."""
        joined = yield self.request([ref, ref, topic, "phx_join", {}])
        assert joined == [ref, ref, topic, "phx_reply", {"response": {}, "status": "ok"}], joined
        pong = yield self.request([ref, ref + "p", topic, "ping", {}])
        assert pong == [ref, ref + "p", topic, "phx_reply", {"response": {"ping": "pong"}, "status": "ok"}], pong
        return pong

    @property
    def pending_frames(self) -> int:
        """How many received frames wait in the queue."""
        return len(self.protocol.frames.pending)

    # -- state --

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected."""
        return self.protocol.websocket_protocol_in_use

    @property
    def is_open(self) -> bool:
        return self.protocol.state == self.protocol.STATE_OPEN

    @property
    def closed(self) -> Deferred[tuple[bool, int | None, str | None]]:
        """Fires with ``(wasClean, code, reason)`` once closed (bounded)."""
        return self.protocol.closed_event.wait(self.reactor)

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[tuple[bool, int | None, str | None]]:
        """As :attr:`closed`, with another bound."""
        return self.protocol.closed_event.wait(self.reactor, timeout)

    def connection_lost(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[None]:
        """Fires once the TCP connection is gone."""
        return self.protocol.lost.wait(self.reactor, timeout)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Start the closing handshake."""
        self.protocol.sendClose(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection at once, as a dead peer would."""
        self.protocol.transport.abortConnection()

    @defer.inlineCallbacks
    def disconnect(self) -> Any:
        """Close (cleanly if possible) and wait for the TCP connection to be gone."""
        protocol = self.protocol
        if protocol.lost.done:
            return
        if protocol.state == protocol.STATE_OPEN:
            protocol.sendClose(1000)
        try:
            yield protocol.lost.wait(self.reactor, 2.0)
        except defer.TimeoutError:
            protocol.transport.abortConnection()
            yield protocol.lost.wait(self.reactor)


@defer.inlineCallbacks
def connect(
    reactor: Any,
    port: int,
    path: str = "/socket/websocket",
    query: str | None = "vsn=2.0.0",
    headers: dict[str, str] | None = None,
    protocols: list[str] | None = None,
    origin: str | None = None,
    useragent: str | None = None,
    test: TestCase | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """
    Open a WebSocket to ``ws://127.0.0.1:<port><path>?<query>``.

    Fires with a :class:`Client` once open, or fails with
    :class:`HandshakeRefused` (carrying the HTTP status).  With ``test``, the
    client is disconnected in the test's cleanup.
    """
    url = f"ws://127.0.0.1:{port}{path}"
    if query:
        url += "?" + query
    factory = WebSocketClientFactory(
        url, reactor=reactor, headers=headers or {}, protocols=protocols or [], origin=origin
    )
    if useragent is not None:
        factory.useragent = useragent
    factory.protocol = _ClientProtocol
    factory._batched_timer = ReactorTimer(reactor)
    factory.setProtocolOptions(
        openHandshakeTimeout=timeout,
        closeHandshakeTimeout=2,
        maxFramePayloadSize=0,
        maxMessagePayloadSize=0,
        autoFragmentSize=0,
        perMessageCompressionOffers=[],
        failByDrop=False,
    )
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    protocol = yield endpoint.connect(factory)
    client = Client(reactor, protocol)
    if test is not None:
        test.addCleanup(client.disconnect)
    try:
        yield protocol.opened.wait(reactor, timeout)
    except BaseException:
        yield client.disconnect()
        raise
    return client


# -- raw TCP --------------------------------------------------------------------------


class _RawProtocol(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = _Once()
        self._data_waiters: list[tuple[Callable[[bytes], bool], _Once]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for item in list(self._data_waiters):
            condition, once = item
            if condition(self.received):
                self._data_waiters.remove(item)
                once.fire(self.received)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.fire(self.received)


class RawClient:
    """A plain TCP connection, for requests that are not WebSocket at all."""

    def __init__(self, reactor: Any, protocol: _RawProtocol) -> None:
        self.reactor = reactor
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.protocol.transport.write(data)

    @property
    def received(self) -> bytes:
        return self.protocol.received

    def wait_for(self, marker: bytes, timeout: float = DEFAULT_TIMEOUT) -> Deferred[bytes]:
        """Fires with everything received once it contains ``marker``."""
        condition = lambda data: marker in data  # noqa: E731
        if condition(self.protocol.received):
            return defer.succeed(self.protocol.received)
        once = _Once()
        self.protocol._data_waiters.append((condition, once))
        return once.wait(self.reactor, timeout)

    def connection_lost(self, timeout: float = DEFAULT_TIMEOUT) -> Deferred[bytes]:
        """Fires with everything received once the server has closed the connection."""
        return self.protocol.lost.wait(self.reactor, timeout)

    @defer.inlineCallbacks
    def disconnect(self) -> Any:
        if not self.protocol.lost.done:
            self.protocol.transport.abortConnection()
            yield self.protocol.lost.wait(self.reactor)


@defer.inlineCallbacks
def raw_connect(reactor: Any, port: int, test: TestCase | None = None) -> Any:
    """Open a plain TCP connection to 127.0.0.1:``port``."""
    factory = Factory.forProtocol(_RawProtocol)
    protocol = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=DEFAULT_TIMEOUT).connect(factory)
    client = RawClient(reactor, protocol)
    if test is not None:
        test.addCleanup(client.disconnect)
    return client


# -- logs -------------------------------------------------------------------------------


class LogCapture:
    """The log events emitted while a test runs."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def messages(self, level: LogLevel | None = None) -> list[str]:
        """The formatted messages, at ``level`` or above when given."""
        out = []
        for event in self.events:
            event_level = event.get("log_level")
            if level is not None and (event_level is None or event_level < level):
                continue
            out.append(formatEvent(event) or "")
        return out

    def find(self, text: str, level: LogLevel | None = None) -> list[str]:
        """The messages (at ``level`` or above) containing ``text``."""
        return [m for m in self.messages(level) if text in m]


def capture_logs(test: TestCase) -> LogCapture:
    """Capture every log event until ``test``'s cleanup."""
    capture = LogCapture()
    observer = provider(ILogObserver)(capture)
    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return capture
