# -*- test-case-name: tests.test_websocket -*-
"""
The WebSocket transport: all the Autobahn glue, and nothing else.

:class:`PhoenixServerFactory` serves one user :class:`~twisted_phoenix.socket.Socket`
class at one mount point.  Its protocol performs Phoenix's handshake checks
(origin, auth token, ``vsn``, ``connect``), then hands every frame to a
:class:`~twisted_phoenix._session.Session` and writes what the session sends.

Outgoing frames are written straight to the TCP transport, framed once per
:class:`~twisted_phoenix.serializers.Frame` (server frames are not masked and
permessage-deflate is not offered), so one broadcast is framed once for all
its subscribers.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.util import create_transport_details
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._autobahn import ReactorTimer
from .._log import RateLimitedLog, limited_log, truncate
from .._handshake import (
    Connected,
    HandshakeRequest,
    Refusal,
    check_origin,
    connect_info,
    connect_now,
    parse_params,
    path_params,
    refused_event,
)
from .._output import StreamOutput, write_now, ws_frame
from .._session import Session
from ..serializers import DecodeError, Frame
from ..socket import Socket

if TYPE_CHECKING:
    from ..endpoint import Endpoint
    from .http import RequestHead

__all__ = [
    "PhoenixServerFactory",
    "PhoenixServerProtocol",
    "WebSocketUpgrade",
    "parse_params",
    "path_params",
    "ws_frame",
]

# Autobahn's connection states, read on every frame in and out: as module
# constants they are one global load, where a class attribute read through
# the instance is a full attribute lookup (CPython 3.11 does not specialise
# it).
_CONNECTING = WebSocketServerProtocol.STATE_CONNECTING
_OPEN = WebSocketServerProtocol.STATE_OPEN
_SEND_GROUND = WebSocketServerProtocol.SEND_STATE_GROUND

txaio.use_twisted()

#: Our own lines about clients (the protocol's ``log`` is Autobahn's txaio
#: logger, which drops its debug chatter).
_log = Logger("twisted_phoenix.transports.websocket.PhoenixServerProtocol")

AUTH_TOKEN_PREFIX = "base64url.bearer.phx."

CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
#: Sent to a client that fell ``Endpoint.max_lag`` bytes behind: "try again
#: later" (phoenix.js reconnects after any close it did not ask for).
CLOSE_TRY_AGAIN_LATER = 1013
#: Sent to every client when the server drains before it stops (Phoenix's
#: drainer): "service restart"; phoenix.js reconnects, to another server.
CLOSE_SERVICE_RESTART = 1012

#: Frames up to this size are parsed and unmasked by the transport itself;
#: Autobahn handles larger ones (and everything else).
FAST_FRAME = 16 * 1024


class PhoenixServerProtocol(WebSocketServerProtocol):
    """
    One client connection: Phoenix's handshake checks, then frames to and
    from a :class:`~twisted_phoenix._session.Session`.
    """

    # A txaio logger, as Autobahn expects: it drops Autobahn's many debug
    # lines unless txaio.set_global_log_level("debug") asks for them (a plain
    # twisted.logger.Logger would send them all to twistd's log).
    log = txaio.make_logger()
    factory: PhoenixServerFactory
    session: Session | None = None
    _socket: Socket | None = None
    _serializer: Any = None
    _last_seen: float = 0.0
    #: What waits to be written, once the WebSocket is open.
    output: StreamOutput | None = None
    #: The largest frame :meth:`_fast_frames` handles (set from the factory).
    _fast_limit = 0
    #: The request head PhoenixSite read and parsed, for :meth:`_handshake`.
    request_head: RequestHead | None = None
    #: The transport's name in metrics and telemetry.
    transport_name = "websocket"

    # Autobahn's initial per-connection state (WebSocketProtocol._connectionMade
    # sets it on every connection) as class defaults: a connection assigns
    # only what changes.  tests/test_websocket.py checks that these are all
    # of Autobahn's, with its values.
    _perMessageCompress = None
    trackedTimings = None
    triggered = False
    wasMaxFramePayloadSizeExceeded = False
    wasMaxMessagePayloadSizeExceeded = False
    closedByMe = False
    failedByMe = False
    droppedByMe = False
    wasClean = False
    wasNotCleanReason = None
    wasServerConnectionDropTimeout = False
    wasOpenHandshakeTimeout = False
    wasCloseHandshakeTimeout = False
    wasServingFlashSocketPolicyFile = False
    localCloseCode = None
    localCloseReason = None
    remoteCloseCode = None
    remoteCloseReason = None
    openHandshakeTimeoutCall = None
    closeHandshakeTimeoutCall = None
    autoPingTimeoutCall = None
    autoPingPending = None
    autoPingPendingCall = None
    autoPingPendingSeq = 0
    autoPingPendingSent = None

    @cached_property
    def utf8validator(self) -> Utf8Validator:
        """Autobahn's UTF-8 validator, made for the frames Autobahn parses (most never reach it)."""
        return Utf8Validator()

    # -- handshake ---------------------------------------------------------------

    def connectionMade(self) -> None:
        # What Autobahn's connectionMade and _connectionMade do for a server
        # connection, without formatting their debug lines' arguments
        # (hltype, pformat), which cost a tenth of a handshake whether the
        # lines are logged or not.
        transport = self.transport
        self._transport_details = details = create_transport_details(transport, True)
        self.peer = details.peer
        try:
            transport.setTcpNoDelay(self.tcpNoDelay)
        except Exception:  # not TCP (Autobahn ignores it the same way)
            pass
        self._connectionMade()

    def _connectionMade(self) -> None:
        # The options are class attributes (PhoenixServerFactory sets them):
        # nothing to copy per connection.
        self.state = _CONNECTING
        self.send_state = _SEND_GROUND
        self.data = b""
        self.send_queue = deque()
        self.trafficStats = TrafficStats()
        if self.openHandshakeTimeout > 0:
            self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(
                self.openHandshakeTimeout, self.onOpenHandshakeTimeout
            )
        self.factory.countConnections += 1

    def onConnect(self, request: Any) -> Any:
        factory = self.factory
        socket_class = factory.socket_class
        endpoint = factory.endpoint
        headers = request.headers
        try:
            check_origin(endpoint, socket_class, headers.get("origin"), "websocket")
        except Refusal as e:
            raise ConnectionDeny(e.status, e.reason) from None

        uri = urlsplit(self.http_request_uri)
        peer = self.transport.getPeer()
        handshake = HandshakeRequest(
            path=uri.path,
            query=uri.query,
            headers=headers,
            peer=(getattr(peer, "host", None), getattr(peer, "port", None)),
            secure=ISSLTransport.providedBy(self.transport),
        )
        info = connect_info(handshake)
        info["sec_websocket_headers"] = {k: v for k, v in headers.items() if k.startswith("sec-websocket-")}
        subprotocol = None
        if socket_class.auth_token:
            offered = [p for p in request.protocols if p.startswith(AUTH_TOKEN_PREFIX)]
            if len(offered) == 1:
                encoded = offered[0][len(AUTH_TOKEN_PREFIX):]
                try:
                    token = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
                    info["auth_token"] = token.decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    self._limited().warn("Refused an undecodable auth token")
                    refused_event(endpoint, socket_class, "websocket", 403, "auth_token")
                    raise ConnectionDeny(403, "Forbidden") from None
            if "phoenix" in request.protocols:
                subprotocol = "phoenix"

        params = parse_params(uri.query)
        # Path params (``/socket/:room``) win over query params, as in Phoenix.
        params.update(path_params(factory.mount, uri.path))

        def connected(result: Connected) -> Any:
            self._socket = result.socket
            self._serializer = result.serializer
            return subprotocol

        try:
            result = connect_now(
                endpoint, socket_class, params=params, info=info, serializers=factory.serializers,
                transport="websocket",
            )
        except Refusal as e:
            raise ConnectionDeny(e.status, e.reason) from None
        if not isinstance(result, Deferred):
            return connected(result)

        def refused(failure: Failure) -> Any:
            failure.trap(Refusal)
            raise ConnectionDeny(failure.value.status, failure.value.reason)

        return result.addCallbacks(connected, refused)

    def _handshake(self, head: RequestHead, data: bytes) -> bool:
        """
        The opening handshake of an ordinary request, from the head
        :class:`~twisted_phoenix.transports.http.PhoenixSite` parsed: what
        Autobahn's ``processHandshake`` would do for it, without parsing it
        again.  ``False`` (nothing done) for anything unusual, which
        Autobahn then handles, with its own answers.
        """
        headers = head.headers
        key = headers.get(b"sec-websocket-key", b"")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if (
            not valid_key
            or head.version != b"HTTP/1.1"
            or headers.get(b"sec-websocket-version") != b"13"
            or b"upgrade" not in headers.get(b"connection", b"").lower()
            or b"host" not in headers
            or b", " in headers.get(b"origin", b"")
        ):
            return False
        end = data.find(b"\r\n\r\n")
        target = data[: data.find(b"\r\n")].split(b" ")[1].decode("ascii")
        uri = urlsplit(target)
        self.http_request_uri = target
        self.http_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items()}
        self.http_request_path = uri.path
        self.http_request_params = parse_qs(uri.query)
        self.http_request_host = self.http_headers["host"]
        self.websocket_version = 13
        self.websocket_origin = self.http_headers.get("origin", "").strip()
        protocols = self.http_headers.get("sec-websocket-protocol")
        self.websocket_protocols = [p.strip() for p in protocols.split(",") if p.strip()] if protocols else []
        # Offers of permessage-deflate are declined, as Phoenix (compress:
        # false) declines them: no extension is answered.
        self.websocket_extensions = []
        self._wskey = key.decode("ascii")
        self.data = data[end + 4 :]
        request = ConnectionRequest(
            self.peer, self.http_headers, self.http_request_host, self.http_request_path,
            self.http_request_params, 13, self.websocket_origin, self.websocket_protocols, [],
        )
        try:
            answer = self.onConnect(request)
        except ConnectionDeny as e:
            self.failHandshake(e.reason, e.code)
            return True
        except Exception as e:
            self._limited().failure("A WebSocket handshake failed")
            self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
            return True
        if isinstance(answer, Deferred):

            def denied(failure: Failure) -> None:
                if failure.check(ConnectionDeny):
                    self.failHandshake(failure.value.reason, failure.value.code)
                else:
                    self._limited().failure("A WebSocket handshake failed", failure)
                    self.failHandshake("Internal server error", ConnectionDeny.INTERNAL_SERVER_ERROR)

            answer.addCallbacks(self.succeedHandshake, denied)
        else:
            self.succeedHandshake(answer)
        return True

    def onOpen(self) -> None:
        assert self._socket is not None
        self.session = Session(self._socket, self._serializer, self)
        self._socket = None
        self._touch()
        # Served through twisted.web (Endpoint.resource() in a Site of the
        # application's), the HTTP channel registered itself as this
        # transport's producer and Autobahn leaves it there: it would keep
        # the upgrade request alive.  The output is the producer now.
        if self.transport.producer is not None:
            self.transport.unregisterProducer()
        endpoint = self.factory.endpoint
        if endpoint.draining:
            # Its handshake was under way when the drain began.  Closed with
            # Autobahn's own writes, which follow the handshake's answer (the
            # output would write to the socket ahead of it).
            self.drain()
            return
        self.output = StreamOutput(self.transport, endpoint.flusher, endpoint.max_lag, self._fell_behind)
        #: Where fastlane broadcasts go (``Connection.broadcast_output``).
        self.broadcast_output = self.output
        self._fast_limit = min(FAST_FRAME, self.factory.endpoint.max_frame_size)
        self.factory.idle.add(self)

    # -- input ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._last_seen = self.factory.reactor.seconds()
        head = self.request_head
        if head is not None:
            self.request_head = None
            if self.state == _CONNECTING and self._handshake(head, data):
                return
        if self.state == _OPEN and not self.data and self.current_frame is None and not self.inside_message:
            # The common case, a read of whole unfragmented data frames,
            # goes straight to onMessage; anything else (control frames,
            # fragments, a frame split across reads, large frames) is
            # Autobahn's to parse.
            data = self._fast_frames(data)
            if not data:
                return
        self._dataReceived(data)

    def _fast_frames(self, data: bytes) -> bytes:
        """
        Deliver the leading whole data frames of ``data`` (masked, FIN set,
        no extension bits, at most :data:`FAST_FRAME` bytes), exactly as
        Autobahn would; return what is left for Autobahn.
        """
        pos = 0
        size = len(data)
        limit = self._fast_limit
        while pos + 6 <= size:
            first = data[pos]
            if first != 0x81 and first != 0x82:
                break
            length = data[pos + 1] ^ 0x80  # the mask bit must be set
            if length < 126:
                start = pos + 6
            elif length == 126 and pos + 8 <= size:
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 8
            else:
                break
            end = start + length
            if end > size or length > limit:
                break
            payload = data[start:end]
            if length:
                # Unmask with one XOR of two integers: fast in C, for frames this small.
                mask = data[start - 4 : start] * ((length >> 2) + 1)
                payload = (
                    int.from_bytes(payload, "little") ^ int.from_bytes(mask[:length], "little")
                ).to_bytes(length, "little")
            if first == 0x81 and not payload.isascii():
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError:
                    break  # Autobahn fails it with 1007
            pos = end
            self.onMessage(payload, first == 0x82)
            if self.state != _OPEN:
                return b""
        return data[pos:] if pos else data

    def _touch(self) -> None:
        self._last_seen = self.factory.reactor.seconds()

    def _limited(self) -> RateLimitedLog:
        """The endpoint's rate-limited log for this transport's lines about a client."""
        return limited_log(_log, self.factory.reactor, self.factory.endpoint)

    def idle_timeout(self) -> None:
        """No data for ``Socket.timeout`` seconds: close, as Phoenix does (1000)."""
        self._limited().info(
            "Closing an idle connection after {timeout} s without data", timeout=self.factory.idle.timeout
        )
        self._dropped("idle")
        self.close(CLOSE_NORMAL)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or session.closed:
            return
        try:
            session.frame_received(payload, isBinary, self._last_seen)
        except DecodeError as e:
            self._limited().error("Closing a connection that sent a malformed frame: {error}", error=truncate(str(e)))
            self._dropped("malformed")
            self.close(CLOSE_INTERNAL_ERROR)
        except Exception:
            self._limited().failure("Closing a connection after an error handling its frame")
            self._dropped("error")
            self.close(CLOSE_INTERNAL_ERROR)

    def _dropped(self, reason: str) -> None:
        """The server is about to close this client: count it (and emit ``drop``)."""
        if self.state == self.STATE_OPEN and self.session is not None and not self.session.closed:
            self.factory.endpoint.metrics.drop(reason, self.session)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Every refused WebSocket handshake ends here: Autobahn's own
        # refusals, and ours (ConnectionDeny from onConnect).
        self.factory.endpoint.metrics.refuse(code)
        super().failHandshake(reason, code, responseHeaders)

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == self.STATE_CONNECTING:  # connect() took too long: dropped without an answer
            self.factory.endpoint.metrics.refuse(408)
        super().onOpenHandshakeTimeout()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.idle.discard(self)
        # Autobahn leaves its closing-handshake timer pending when the TCP
        # connection ends some other way (e.g. a second protocol error).
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        session = self.session
        if session is not None:
            if not wasClean and not session.closed:
                # A dead peer: no closing handshake (Autobahn logs it at debug only).
                self._limited().info(
                    "{socket} connection lost without a closing handshake: {reason}",
                    socket=type(session.socket).__name__, reason=truncate(reason),
                )
            session.connection_lost()

    # -- Connection ------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        """
        Queue ``frame``, framed once however many connections it goes to;
        what is queued in one reactor turn goes out in one write.
        """
        # The output knows whether the WebSocket is open: it stops taking
        # frames at the close frame (sendCloseFrame) and when the connection
        # is closed or lost (stop, stopProducing).
        output = self.output
        if output is not None:
            output.send_frame(frame)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own frames (pong, close) go after what is queued, at once.
        output = self.output
        if output is None:
            if sync or chopsize or self.send_queue:
                super().sendData(data, sync, chopsize)
            else:
                # The handshake's answer: to the socket now, not in a later turn.
                write_now(self.transport, data)
        elif output.overflowed:
            self.transport.write(data)  # the close frame to a client given up
        else:
            output.send(data)
            output.flush()

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> Any:
        # A close reason that is not UTF-8 is a protocol error (1002), as
        # Phoenix's adapters answer it; Autobahn would send 1007.
        if reasonRaw is not None:
            try:
                reasonRaw.decode("utf-8")
            except UnicodeDecodeError:
                if self._protocol_violation("close reason is not UTF-8"):
                    return True
                reasonRaw = None
        return super().onCloseFrame(code, reasonRaw)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        # Phoenix's adapters send no close reason: log ours, send none.
        if self.state == self.STATE_OPEN:
            self._limited().info("Closing a connection ({code}): {reason}", code=code, reason=truncate(reason))
            self._dropped("too_large" if code == 1009 else "protocol")
        super()._fail_connection(code, "")

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False) -> None:
        # The WebSocket is closing from here on: broadcasts stop at the
        # output (the fastlane), as every other frame stops in send_frame.
        if self.output is not None:
            self.output.open = False
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def _closeConnection(self, abort: bool = False) -> None:
        # A paused producer would keep loseConnection waiting.
        if self.output is not None:
            self.output.stop()
        super()._closeConnection(abort)

    def _fell_behind(self) -> None:
        """More than ``Endpoint.max_lag`` bytes wait for this client: give it up."""
        self._limited().warn(
            "Closing a connection that does not read: over {limit} bytes wait for it",
            limit=self.factory.endpoint.max_lag,
        )
        # The close frame may never be read; Autobahn's closing-handshake
        # timeout then drops the TCP connection.
        self._dropped("slow")
        self.close(CLOSE_TRY_AGAIN_LATER)

    def drain(self) -> None:
        """
        The server is draining (Phoenix's drainer): close with 1012, no
        reason text; the channels terminate with ``("shutdown", "draining")``.
        """
        if self.session is not None and not self.session.closed:
            self.session.close_reason = ("shutdown", "draining")
        self.close(CLOSE_SERVICE_RESTART)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """
        Start the closing handshake with any close code (Autobahn's sendClose
        allows few).  ``reason`` is sent as the close reason; Phoenix sends
        none, so its closes (idle, disconnect, malformed frame) pass none.
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code, reason.encode("utf-8")[:120] if reason else None)
            if self.session is not None:
                # The channels end now; the handshake may take a while.
                self.session.connection_lost()


class PhoenixServerFactory(WebSocketServerFactory):
    """
    Serves one :class:`~twisted_phoenix.socket.Socket` class.
    """

    protocol = PhoenixServerProtocol

    def __init__(
        self, endpoint: Endpoint, socket_class: type[Socket], *, max_frame_size: int, mount: str = ""
    ) -> None:
        super().__init__(reactor=endpoint.reactor)
        self.endpoint = endpoint
        self.socket_class = socket_class
        #: The mount path, whose ``:name`` segments become params.
        self.mount = mount
        self.serializers = getattr(socket_class, "serializers", None) or _default_serializers()
        # Autobahn's timers (handshake, closing, idle) on our reactor.  Not
        # txaio's batched timer: it rounds deadlines down to whole seconds, so
        # a 0.5 s handshake timeout could fire at once.
        self._batched_timer = ReactorTimer(endpoint.reactor)
        #: The open connections, for the idle timeout.
        self.idle = IdleSweeper(endpoint.reactor, socket_class.timeout)
        self.setProtocolOptions(
            # Fail with a close frame (1007, 1009, 1002), not a bare TCP drop.
            failByDrop=False,
            # A request that is no WebSocket upgrade gets a 4xx, not
            # Autobahn's status page (whose ?redirect= is an open redirect).
            webStatus=False,
            # "Origin: null" (a page opened from disk, a sandboxed frame) is
            # for check_origin to judge, as in Phoenix: refused (403) by True
            # and by lists, accepted by False (Autobahn would answer 400).
            allowNullOrigin=True,
            maxFramePayloadSize=max_frame_size,
            maxMessagePayloadSize=max_frame_size,
            openHandshakeTimeout=endpoint.handshake_timeout,
            closeHandshakeTimeout=endpoint.close_timeout,
        )
        # Autobahn copies its ~40 protocol options onto every new connection
        # (and pretty-prints them for a debug line: half the CPU of a
        # handshake).  This factory's connections read them from a class of
        # their own instead (see PhoenixServerProtocol._connectionMade).
        # (Functions among them, such as perMessageCompressionAccept, must
        # stay plain functions, not become methods of the class.)
        self.protocol = type(
            PhoenixServerProtocol.__name__,
            (PhoenixServerProtocol,),
            {
                name: staticmethod(value) if callable(value) else value
                for name in PhoenixServerProtocol.CONFIG_ATTRS
                for value in (getattr(self, name),)
            },
        )


class WebSocketUpgrade(WebSocketResource):
    """
    ``<mount>/websocket`` as a :mod:`twisted.web` resource, for an
    application that mounts :meth:`Endpoint.resource()
    <twisted_phoenix.endpoint.Endpoint.resource>` in a site of its own.
    Autobahn's resource would read a request body whole into memory: a
    request with one, or with a method other than ``GET``, is refused with
    400 (Phoenix's answer) before that.
    """

    def render(self, request: Any) -> Any:
        if request.method != b"GET" or request.getHeader(b"content-length") not in (None, b"0") or (
            request.getHeader(b"transfer-encoding") is not None
        ):
            request.setResponseCode(400)
            return b""
        return super().render(request)


class IdleSweeper:
    """
    Closes connections that sent nothing for ``timeout`` seconds.

    One timer for all the connections of a socket, not one per connection:
    every ``timeout / 4`` seconds it closes those silent for ``timeout`` or
    more, so a connection is closed between ``timeout`` and ``1.25 ×
    timeout`` after its last data.  The timer runs only while there are
    connections.
    """

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.connections: set[PhoenixServerProtocol] = set()
        self._call: Any = None

    def add(self, connection: PhoenixServerProtocol) -> None:
        self.connections.add(connection)
        if self._call is None:
            self._schedule()

    def discard(self, connection: PhoenixServerProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._call = self.reactor.callLater(max(self.timeout / 4, 0.01), self.sweep)

    def sweep(self) -> None:
        """Close the connections silent for ``timeout`` seconds or more."""
        self._call = None
        deadline = self.reactor.seconds() - self.timeout
        for connection in [c for c in self.connections if c._last_seen <= deadline]:
            self.connections.discard(connection)
            connection.idle_timeout()
        if self.connections:
            self._schedule()


def _default_serializers() -> Any:
    from ..serializers import SERIALIZERS

    return SERIALIZERS
