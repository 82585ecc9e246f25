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
import struct
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure

from .._output import StreamOutput
from .._session import Session
from ..origin import origin_allowed
from ..serializers import DecodeError, Frame, VersionError, select_serializer
from ..socket import ConnectRefused, Socket

if TYPE_CHECKING:
    from ..endpoint import Endpoint

__all__ = [
    "PhoenixServerFactory",
    "PhoenixServerProtocol",
    "WebSocketUpgrade",
    "parse_params",
    "path_params",
    "ws_frame",
]

txaio.use_twisted()

AUTH_TOKEN_PREFIX = "base64url.bearer.phx."

CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
#: Sent to a client that fell ``Endpoint.max_lag`` bytes behind: "try again
#: later" (phoenix.js reconnects after any close it did not ask for).
CLOSE_TRY_AGAIN_LATER = 1013


def ws_frame(data: bytes, binary: bool) -> bytes:
    """Frame ``data`` as one unmasked, unfragmented server message."""
    first = 0x82 if binary else 0x81
    size = len(data)
    if size < 126:
        return bytes((first, size)) + data
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + data
    return struct.pack("!BBQ", first, 127, size) + data


def parse_params(query: str) -> dict[str, Any]:
    """
    Parse a query string into Phoenix's params: ``a[b]=c`` nests,
    ``a[]=x`` builds a list, a repeated plain key keeps its last value.
    """
    params: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        head, sep, rest = key.partition("[")
        if not sep or not rest.endswith("]") or not head:
            params[key] = value
            continue
        path = [head] + rest[:-1].split("][")
        target: Any = params
        for name, child in zip(path, path[1:]):
            nxt = target.get(name) if isinstance(target, dict) else None
            if child == "":
                if not isinstance(nxt, list):
                    nxt = target[name] = []
            elif not isinstance(nxt, dict):
                nxt = target[name] = {}
            target = nxt
        last = path[-1]
        if isinstance(target, list):
            target.append(value)
        elif isinstance(target, dict):
            target[last] = value
    return params


def path_params(mount: str, path: str) -> dict[str, str]:
    """The values of ``mount``'s ``:name`` segments in the request ``path``."""
    names = [s for s in mount.split("/") if s]
    values = [unquote(s) for s in path.split("/") if s]
    return {n[1:]: v for n, v in zip(names, values) if n.startswith(":") and len(n) > 1}


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

    # -- handshake ---------------------------------------------------------------

    def onConnect(self, request: Any) -> Any:
        factory = self.factory
        socket_class = factory.socket_class
        endpoint = factory.endpoint
        setting = socket_class.check_origin
        if setting is None:
            setting = endpoint.check_origin
        origin = request.headers.get("origin")
        if not origin_allowed(origin, setting, endpoint.host, dev=endpoint.env == "dev"):
            self.log.error(
                "Could not check origin for Phoenix.Socket transport. Origin of the request: "
                "{origin}. This happens when you are attempting a socket connection to a "
                "different host than the one configured in your endpoint (check_origin).",
                origin=origin,
            )
            raise ConnectionDeny(403, "Forbidden")

        connect_info = self._connect_info(request)
        subprotocol = None
        if socket_class.auth_token:
            offered = [p for p in request.protocols if p.startswith(AUTH_TOKEN_PREFIX)]
            if len(offered) == 1:
                encoded = offered[0][len(AUTH_TOKEN_PREFIX):]
                try:
                    token = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
                    connect_info["auth_token"] = token.decode("utf-8")
                except (binascii.Error, UnicodeDecodeError):
                    self.log.warn("Refused an undecodable auth token")
                    raise ConnectionDeny(403, "Forbidden") from None
            if "phoenix" in request.protocols:
                subprotocol = "phoenix"

        params = parse_params(connect_info["uri"]["query"])
        # Path params (``/socket/:room``) win over query params, as in Phoenix.
        params.update(path_params(factory.mount, connect_info["uri"]["path"]))
        try:
            self._serializer = select_serializer(params.get("vsn"), factory.serializers)
        except VersionError as e:
            self.log.warn("{error}", error=str(e))
            raise ConnectionDeny(403, "Forbidden") from None

        socket = socket_class(endpoint)
        d = maybeDeferred(socket.connect, params, connect_info)

        def connected(accepted: Any) -> Any:
            if accepted is not True:
                if accepted is not False:
                    self.log.error(
                        "{socket}.connect returned {value!r}; expected True or False",
                        socket=socket_class.__name__, value=accepted,
                    )
                else:
                    self.log.info(
                        "REFUSED CONNECTION TO {socket} Transport: websocket Parameters: {params}",
                        socket=socket_class.__name__, params=_filter(params),
                    )
                raise ConnectionDeny(403, "Forbidden")
            socket_id = socket.id()
            if socket_id is not None and not isinstance(socket_id, str):
                self.log.warn("{socket}.id() must return a str or None", socket=socket_class.__name__)
                raise ConnectionDeny(403, "Forbidden")
            self._socket = socket
            self.log.info(
                "CONNECTED TO {socket} Transport: websocket Serializer: {serializer} Parameters: {params}",
                socket=socket_class.__name__, serializer=type(self._serializer).__name__,
                params=_filter(params),
            )
            return subprotocol

        def refused(failure: Failure) -> Any:
            if failure.check(ConnectionDeny):
                return failure
            if failure.check(ConnectRefused):
                raise ConnectionDeny(failure.value.status, failure.value.reason)
            self.log.failure("{socket}.connect failed", failure, socket=socket_class.__name__)
            raise ConnectionDeny(403, "Forbidden")

        return d.addCallback(connected).addErrback(refused)

    def _connect_info(self, request: Any) -> dict[str, Any]:
        headers = request.headers
        peer = self.transport.getPeer()
        secure = ISSLTransport.providedBy(self.transport)
        uri = urlsplit(self.http_request_uri)
        host, _, port = headers.get("host", "").rpartition(":")
        if not host or not port.isdigit():
            host, port = headers.get("host", ""), ("443" if secure else "80")
        return {
            "peer_data": {"address": getattr(peer, "host", None), "port": getattr(peer, "port", None)},
            "uri": {
                "scheme": "https" if secure else "http",
                "host": host,
                "port": int(port),
                "path": uri.path,
                "query": uri.query,
            },
            "x_headers": [(k, v) for k, v in headers.items() if k.startswith("x-")],
            "sec_websocket_headers": {k: v for k, v in headers.items() if k.startswith("sec-websocket-")},
            "trace_context_headers": [
                (k, headers[k]) for k in ("traceparent", "tracestate") if k in headers
            ],
            "user_agent": headers.get("user-agent"),
        }

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
        self.output = StreamOutput(self.transport, endpoint.flusher, endpoint.max_lag, self._fell_behind)
        self.factory.idle.add(self)

    # -- input ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._last_seen = self.factory.reactor.seconds()
        self._dataReceived(data)

    def _touch(self) -> None:
        self._last_seen = self.factory.reactor.seconds()

    def idle_timeout(self) -> None:
        """No data for ``Socket.timeout`` seconds: close, as Phoenix does (1000)."""
        self.log.info(
            "Closing an idle connection after {timeout} s without data", timeout=self.factory.idle.timeout
        )
        self.close(CLOSE_NORMAL)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or session.closed:
            return
        try:
            session.frame_received(payload, isBinary)
        except DecodeError as e:
            self.log.error("Closing a connection that sent a malformed frame: {error}", error=str(e))
            self.close(CLOSE_INTERNAL_ERROR)
        except Exception:
            self.log.failure("Closing a connection after an error handling its frame")
            self.close(CLOSE_INTERNAL_ERROR)

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
                self.log.info(
                    "{socket} connection lost without a closing handshake: {reason}",
                    socket=type(session.socket).__name__, reason=reason,
                )
            session.connection_lost()

    # -- Connection ------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        """
        Queue ``frame``, framed once however many connections it goes to;
        what is queued in one reactor turn goes out in one write.
        """
        output = self.output
        if output is None or self.state != self.STATE_OPEN:
            return
        wire = frame.wire
        if wire is None:
            wire = frame.wire = ws_frame(frame.data, frame.binary)
        output.send(wire)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Autobahn's own frames (pong, close) go after what is queued, at once.
        output = self.output
        if output is None:
            super().sendData(data, sync, chopsize)
        elif output.overflowed:
            self.transport.write(data)  # the close frame to a client given up
        else:
            output.send(data)
            output.flush()

    def _closeConnection(self, abort: bool = False) -> None:
        # A paused producer would keep loseConnection waiting.
        if self.output is not None:
            self.output.stop()
        super()._closeConnection(abort)

    def _fell_behind(self) -> None:
        """More than ``Endpoint.max_lag`` bytes wait for this client: give it up."""
        self.log.warn(
            "Closing a connection that does not read: over {limit} bytes wait for it",
            limit=self.factory.endpoint.max_lag,
        )
        # The close frame may never be read; Autobahn's closing-handshake
        # timeout then drops the TCP connection.
        self.close(CLOSE_TRY_AGAIN_LATER)

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


_SENSITIVE = ("password", "secret", "token")


def _filter(params: dict[str, Any]) -> dict[str, Any]:
    """Hide parameters whose name looks sensitive, as Phoenix's logger does."""
    return {
        k: ("[FILTERED]" if any(s in k.lower() for s in _SENSITIVE) else (_filter(v) if isinstance(v, dict) else v))
        for k, v in params.items()
    }


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
        self._batched_timer = _ReactorTimer(endpoint.reactor)
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


class _ReactorTimer:
    """Autobahn's ``factory._batched_timer`` interface on ``reactor.callLater``."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return _TimerCall(self._reactor.callLater(delay, func, *args, **kwargs))


class _TimerCall:
    """A delayed call whose ``cancel`` is a no-op once it ran."""

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


def _default_serializers() -> Any:
    from ..serializers import SERIALIZERS

    return SERIALIZERS
