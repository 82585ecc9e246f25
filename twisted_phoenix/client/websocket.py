# -*- test-case-name: tests.test_client_integration -*-
"""
The WebSocket transport of the Python client: Autobahn's Twisted client,
behind the small contract of :mod:`twisted_phoenix.client._transport`.

``ws://`` connects over TCP; ``wss://`` over TLS, verifying the server's
certificate for the URL's host against the platform's trust store, a given
``trust_root`` (e.g. ``twisted.internet.ssl.Certificate.loadPEM(ca_pem)``)
or with any ``tls_options`` (an ``IOpenSSLClientConnectionCreator`` such
as :func:`twisted.internet.ssl.optionsForClientTLS` returns).

Every timer, Autobahn's included, runs on the given reactor.
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import urlsplit

import txaio
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure

from .._autobahn import ReactorTimer
from ._transport import CLOSED, CLOSING, CONNECTING, OPEN, CloseEvent, TransportHandler

__all__ = ["ConnectionFailed", "WebSocketTransport"]

txaio.use_twisted()

#: The close code a browser reports when no closing handshake took place.
ABNORMAL_CLOSURE = 1006


class ConnectionFailed(Exception):
    """A connection attempt failed: refused, timed out, TLS rejected, or the handshake refused (e.g. HTTP 403)."""


class _ClientProtocol(WebSocketClientProtocol):
    """Autobahn's events, forwarded to the owning :class:`WebSocketTransport`."""

    @property
    def owner(self) -> WebSocketTransport:
        return self.factory.owner  # type: ignore[no-any-return]

    def onConnect(self, response: Any) -> None:
        self.owner.protocol = response.protocol or None

    def onOpen(self) -> None:
        self.owner._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.owner._message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.owner._closed(wasClean, code, reason)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        # Autobahn waits for the server to drop TCP after the closing
        # handshake with txaio's (global) reactor; wait with ours instead.
        drop_timeout = self.serverConnectionDropTimeout
        self.serverConnectionDropTimeout = 0
        try:
            result = super().onCloseFrame(code, reasonRaw)
        finally:
            self.serverConnectionDropTimeout = drop_timeout
        if (
            self.state == self.STATE_CLOSING
            and self.wasClean
            and drop_timeout > 0
            and self.serverConnectionDropTimeoutCall is None
        ):
            self.serverConnectionDropTimeoutCall = self.factory._batched_timer.call_later(
                drop_timeout, self.onServerConnectionDropTimeout
            )
        return result

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        try:
            super().connectionLost(reason)
        finally:
            # Autobahn may leave its closing-handshake timer pending.
            if self.closeHandshakeTimeoutCall is not None:
                self.closeHandshakeTimeoutCall.cancel()
                self.closeHandshakeTimeoutCall = None
            if self.openHandshakeTimeoutCall is not None:
                self.openHandshakeTimeoutCall.cancel()
                self.openHandshakeTimeoutCall = None
            # onClose is not called when the connection never got far enough.
            self.owner._closed(False, None, reason.getErrorMessage() if reason is not None else "connection lost")


class WebSocketTransport:
    """
    One WebSocket connection attempt (see :mod:`twisted_phoenix.client._transport`).

    :param url: ``ws://host[:port]/path?query`` or ``wss://…``.
    :param protocols: subprotocols to offer.
    :param handler: told what happens.
    :param reactor: TCP, TLS, name resolution and time.
    :param tls_options: the client TLS options for ``wss://`` (overrides ``trust_root``).
    :param trust_root: the CA(s) to verify a ``wss://`` server with (the
        platform's trust store by default).
    :param connect_timeout: seconds for the TCP connection and, separately,
        for the opening handshake.
    :param close_timeout: seconds to wait for the server's close frame
        after ours before dropping the connection.
    :param headers: extra HTTP headers for the upgrade request.
    :param max_message_size: the largest frame/message accepted from the
        server, in bytes (0: no limit).
    """

    skip_heartbeat = False
    buffered_amount = 0

    def __init__(
        self,
        url: str,
        protocols: Sequence[str] | None,
        handler: TransportHandler,
        *,
        reactor: Any,
        tls_options: Any = None,
        trust_root: Any = None,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
        headers: dict[str, str] | None = None,
        max_message_size: int = 0,
    ) -> None:
        self.url = url
        self.handler = handler
        self.reactor = reactor
        self.ready_state = CONNECTING
        self.protocol: str | None = None
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        secure = parts.scheme == "wss"
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
        factory = WebSocketClientFactory(
            url, protocols=list(protocols or []), reactor=reactor, headers=dict(headers or {})
        )
        factory.protocol = _ClientProtocol
        factory.owner = self
        factory._batched_timer = ReactorTimer(reactor)
        factory.setProtocolOptions(
            openHandshakeTimeout=connect_timeout,
            closeHandshakeTimeout=close_timeout,
            serverConnectionDropTimeout=close_timeout,
            maxFramePayloadSize=max_message_size,
            maxMessagePayloadSize=max_message_size,
            autoFragmentSize=0,
            perMessageCompressionOffers=[],
            failByDrop=False,
        )
        self._factory = factory
        endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        if secure:
            if tls_options is None:
                tls_options = optionsForClientTLS(host, trustRoot=trust_root)
            endpoint = wrapClientTLS(tls_options, endpoint)
        self._endpoint = endpoint
        self._connecting: Any = None
        self._ws: _ClientProtocol | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._opened_once = False
        self._close_requested = False
        # Never report anything from inside the constructor.
        self._start_call: Any = reactor.callLater(0, self._start)

    def __repr__(self) -> str:
        return f"<WebSocketTransport {self.url} state={self.ready_state}>"

    # -- Transport ----------------------------------------------------------------------

    def send(self, data: bytes, binary: bool) -> None:
        """Send one frame, if open."""
        ws = self._ws
        if self.ready_state == OPEN and ws is not None:
            ws.sendMessage(data, isBinary=binary)

    def close(self, code: int | None = None, reason: str = "") -> None:
        """Close: a closing handshake when open, else abandon the attempt."""
        if self.ready_state in (CLOSING, CLOSED):
            return
        self._close_requested = True
        if self.ready_state == OPEN and self._ws is not None:
            self.ready_state = CLOSING
            raw = reason.encode("utf-8")[:123] if (reason and code is not None) else None
            self._ws.sendCloseFrame(code=code, reasonUtf8=raw, isReply=False)
            return
        # Still connecting.
        self.ready_state = CLOSING
        if self._start_call is not None:
            self._start_call.cancel()
            self._start_call = None
            self.reactor.callLater(0, self._end, CloseEvent(ABNORMAL_CLOSURE, "closed before connecting", False))
        elif self._connecting is not None:
            self._connecting.cancel()  # reports through _failed, on a later turn
        elif self._ws is not None and self._ws.transport is not None:
            self._ws.transport.abortConnection()

    # -- events -----------------------------------------------------------------------------

    def _start(self) -> None:
        self._start_call = None
        d = self._connecting = self._endpoint.connect(self._factory)
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, ws: _ClientProtocol) -> None:
        self._connecting = None
        self._ws = ws
        if self.ready_state == CLOSING:  # closed while the TCP connection was made
            ws.transport.abortConnection()

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if failure.check(CancelledError):
            event = CloseEvent(ABNORMAL_CLOSURE, "closed before connecting", False)
            self.reactor.callLater(0, self._end, event)
            return
        self._error = ConnectionFailed(failure.getErrorMessage())
        self.reactor.callLater(0, self._end, CloseEvent(ABNORMAL_CLOSURE, str(self._error), False))

    def _opened(self, ws: _ClientProtocol) -> None:
        if self.ready_state == CONNECTING:
            self._ws = ws
            self.ready_state = OPEN
            self._opened_once = True
            self.handler.transport_open()

    def _message(self, payload: bytes, binary: bool) -> None:
        if self.ready_state in (OPEN, CLOSING):
            self.handler.transport_message(payload, binary)

    def _closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        if self._ended:
            return
        reason = reason or ""
        if not self._opened_once and not self._close_requested and self._error is None:
            self._error = ConnectionFailed(reason or "connection failed")
        if code is None:
            code = 1005 if was_clean else ABNORMAL_CLOSURE
        self._end(CloseEvent(code, reason, bool(was_clean)))

    def _end(self, event: CloseEvent) -> None:
        if self._ended:
            return
        self._ended = True
        self.ready_state = CLOSED
        error, self._error = self._error, None
        if error is not None:
            self.handler.transport_error(error)
        self.handler.transport_close(event)
