# -*- test-case-name: tests.test_client -*-
"""
phoenix.js's ``Socket``: one connection to a
Phoenix socket, kept alive by heartbeats and reconnects, carrying any
number of :class:`~twisted_phoenix.client.channel.Channel` objects.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..message import HEARTBEAT, HEARTBEAT_TOPIC, PHX_JOIN, PHX_LEAVE, PHX_ERROR, Message
from ..serializers import DecodeError
from ._connection import Connection
from ._params import append_params
from ._timer import Backoff, Timer, default_reconnect_after, default_rejoin_after
from ._transport import CLOSING, CONNECTING, OPEN, CloseEvent, Transport, TransportFactory
from .channel import Channel
from .serializers import ClientSerializer, for_vsn

__all__ = ["AUTH_TOKEN_PREFIX", "Disconnected", "Socket"]

log = Logger()

#: The prefix of the ``Sec-WebSocket-Protocol`` entry carrying an auth token.
AUTH_TOKEN_PREFIX = "base64url.bearer.phx."
WS_CLOSE_NORMAL = 1000


class Disconnected(Exception):
    """:meth:`Socket.disconnect` was called before the connection opened."""


def _closure(value: Any) -> Callable[[], Any]:
    return value if callable(value) else (lambda: value)


class Socket:
    """
    A connection to a Phoenix socket, as phoenix.js's ``Socket``.

    :param url: the socket's mount, e.g. ``ws://localhost:4000/socket``;
        ``/websocket``, the params and ``vsn`` are appended.
    :param params: a dict of connect params, or a callable returning one,
        called again for every (re)connection.
    :param reactor: provides time and networking (required: there is no
        global reactor here).
    :param vsn: ``"2.0.0"`` (JSON arrays and binary frames) or ``"1.0.0"``
        (JSON objects).
    :param heartbeat_interval: seconds between heartbeats; a heartbeat not
        answered by the next one closes the connection and reconnects.
    :param timeout: default seconds to wait for join/push/leave replies.
    :param reconnect_after: tries → seconds before reconnecting
        (phoenix.js's: 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1, 2, then 5).
    :param rejoin_after: tries → seconds before rejoining an errored
        channel (phoenix.js's: 1, 2, 5, then 10).
    :param auth_token: a token (or a callable returning one) sent in the
        ``Sec-WebSocket-Protocol`` header as phoenix.js's ``authToken``,
        for sockets with ``auth_token = True``.
    :param serializer: overrides the serializer ``vsn`` selects.
    :param transport: a :data:`~twisted_phoenix.client._transport.TransportFactory`;
        by default a :class:`~twisted_phoenix.client.websocket.WebSocketTransport`
        made with ``tls_options``, ``trust_root`` and ``headers``.
    :param tls_options: client TLS options for ``wss://`` (an
        ``IOpenSSLClientConnectionCreator``).
    :param trust_root: the CA certificate(s) to verify a ``wss://`` server
        against (``twisted.internet.ssl.Certificate`` or another
        ``IOpenSSLTrustRoot``), when ``tls_options`` is not given.
    :param headers: extra HTTP headers for the WebSocket upgrade.

    :ivar channels: the channels made by :meth:`channel` and not yet closed.
    """

    def __init__(
        self,
        url: str,
        params: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        *,
        reactor: Any,
        vsn: str = "2.0.0",
        heartbeat_interval: float = 30.0,
        timeout: float = 10.0,
        reconnect_after: Backoff = default_reconnect_after,
        rejoin_after: Backoff = default_rejoin_after,
        auth_token: str | Callable[[], str] | None = None,
        serializer: ClientSerializer | None = None,
        transport: TransportFactory | None = None,
        tls_options: Any = None,
        trust_root: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.reactor = reactor
        self.state_change_callbacks: dict[str, list[tuple[int, Callable[..., Any]]]] = {
            "open": [],
            "close": [],
            "error": [],
            "message": [],
        }
        self.channels: list[Channel] = []
        self.send_buffer: list[Callable[[], Any]] = []
        self.ref = 0
        self.timeout = timeout
        self.vsn = vsn
        self.serializer: ClientSerializer = serializer if serializer is not None else for_vsn(vsn)
        if transport is None:
            from .websocket import WebSocketTransport

            transport = partial(
                WebSocketTransport,
                reactor=reactor,
                tls_options=tls_options,
                trust_root=trust_root,
                connect_timeout=timeout,
                headers=dict(headers or {}),
            )
        self.transport_factory: TransportFactory = transport
        self.established_connections = 0
        self.close_was_clean = True
        self.connection: Connection | None = None
        self.connect_clock = 1
        self.heartbeat_interval = heartbeat_interval
        self.rejoin_after = rejoin_after
        self.reconnect_after = reconnect_after
        self.params = _closure(params if params is not None else {})
        self.end_point = f"{url}/websocket"
        self.heartbeat_timeout_timer: IDelayedCall | None = None
        self.heartbeat_timer: IDelayedCall | None = None
        self.pending_heartbeat_ref: str | None = None
        self.reconnect_timer = Timer(lambda: self._teardown_and_reconnect(self._connect), reconnect_after, reactor)
        self.auth_token = _closure(auth_token) if auth_token is not None else None
        self._open_waiters: list[defer.Deferred[Socket]] = []

    def __repr__(self) -> str:
        return f"<Socket {self.end_point} {self.connection_state()}>"

    # -- connecting ---------------------------------------------------------------------------

    @property
    def conn(self) -> Transport | None:
        """The transport of the current connection."""
        return self.connection.transport if self.connection is not None else None

    def endpoint_url(self) -> str:
        """The URL of the next connection: params (evaluated now) and ``vsn`` in the query."""
        return append_params(append_params(self.end_point, self.params()), {"vsn": self.vsn})

    def connect(self) -> defer.Deferred[Socket]:
        """
        Connect (if not connected or connecting).  The socket then stays
        connected, reconnecting with the backoff after any close it did not
        ask for, until :meth:`disconnect`.

        :return: a Deferred firing with this socket when the connection is
            open (at once if it is); failed attempts do not fail it (they go
            to :meth:`on_error`, and the socket retries), :meth:`disconnect`
            before the open fails it with :class:`Disconnected`.  Bound the
            wait with ``addTimeout`` if needed.
        """
        if self.is_connected():
            return defer.succeed(self)
        self._connect()
        d: defer.Deferred[Socket] = defer.Deferred(lambda d: self._open_waiters.remove(d))
        self._open_waiters.append(d)
        return d

    def _connect(self) -> None:
        if self.connection is not None and not self.connection.ended:
            return
        self._transport_connect()

    def disconnect(self, code: int | None = None, reason: str | None = None) -> defer.Deferred[None]:
        """
        Close the connection for good (no reconnect).

        :param code: the close code (none by default, as phoenix.js).
        :return: a Deferred firing once the connection is closed.
        """
        self.connect_clock += 1
        self.close_was_clean = True
        self.reconnect_timer.reset()
        if self.connection is not None:
            self.connection.ended = True
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            waiter.errback(Disconnected("disconnect() was called before the connection opened"))
        d: defer.Deferred[None] = defer.Deferred()
        self._teardown(lambda: d.callback(None), code, reason)
        return d

    def _transport_connect(self) -> None:
        previous = self.connection
        self.connect_clock += 1
        self.close_was_clean = False
        self.reconnect_timer.cancel()
        protocols = None
        if self.auth_token is not None:
            token = base64.b64encode(self.auth_token().encode("utf-8")).decode("ascii").replace("=", "")
            protocols = ["phoenix", f"{AUTH_TOKEN_PREFIX}{token}"]
        connection = Connection(self)
        connection.transport = self.transport_factory(self.endpoint_url(), protocols, connection)
        self.connection = connection
        log.debug("connecting to {url}", url=self.end_point)
        if previous is not None and previous.is_open():
            self._trigger_chan_error("connection_closed", previous)

    # -- callbacks ------------------------------------------------------------------------------

    def on_open(self, callback: Callable[[], Any]) -> int:
        """Call ``callback()`` whenever a connection opens; returns a ref for :meth:`off`."""
        return self._register("open", callback)

    def on_close(self, callback: Callable[[CloseEvent], Any]) -> int:
        """Call ``callback(event)`` (a :class:`~twisted_phoenix.client._transport.CloseEvent`) whenever a connection closes."""
        return self._register("close", callback)

    def on_error(self, callback: Callable[[BaseException], Any]) -> int:
        """Call ``callback(error)`` whenever a connection fails (refused, handshake refused, ...)."""
        return self._register("error", callback)

    def on_message(self, callback: Callable[[Message], Any]) -> int:
        """Call ``callback(message)`` with every :class:`~twisted_phoenix.message.Message` received."""
        return self._register("message", callback)

    def off(self, refs: Sequence[int]) -> None:
        """Remove the callbacks registered with these refs."""
        for key, callbacks in self.state_change_callbacks.items():
            self.state_change_callbacks[key] = [c for c in callbacks if c[0] not in refs]

    def _register(self, kind: str, callback: Callable[..., Any]) -> int:
        ref = int(self.make_ref())
        self.state_change_callbacks[kind].append((ref, callback))
        return ref

    def _run_callbacks(self, kind: str, *args: Any) -> None:
        for _, callback in list(self.state_change_callbacks[kind]):
            try:
                callback(*args)
            except Exception:
                log.failure("Exception in a socket {kind} callback", kind=kind)

    # -- channels -----------------------------------------------------------------------------

    def channel(self, topic: str, params: Any = None) -> Channel:
        """
        A new :class:`~twisted_phoenix.client.channel.Channel` for ``topic``, joined
        with ``params`` (a dict, or a callable returning one for each join).
        """
        chan = Channel(topic, params, self)
        self.channels.append(chan)
        return chan

    def remove(self, channel: Channel) -> None:
        """Forget a closed channel."""
        self.off(channel.state_change_refs)
        self.channels = [c for c in self.channels if c is not channel]

    def leave_open_topic(self, topic: str) -> None:
        """Leave a joined or joining channel on ``topic`` (before another joins it)."""
        for channel in self.channels:
            if channel.topic == topic and (channel.is_joined() or channel.is_joining()):
                log.debug('leaving duplicate topic "{topic}"', topic=topic)
                channel._leave()
                return

    # -- state ----------------------------------------------------------------------------------

    def connection_state(self) -> str:
        """``"connecting"``, ``"open"``, ``"closing"`` or ``"closed"``."""
        conn = self.conn
        state = conn.ready_state if conn is not None else None
        if state == CONNECTING:
            return "connecting"
        if state == OPEN:
            return "open"
        if state == CLOSING:
            return "closing"
        return "closed"

    def is_connected(self) -> bool:
        """Whether the connection is open."""
        return self.connection_state() == "open"

    def make_ref(self) -> str:
        """The next message ref."""
        self.ref += 1
        return str(self.ref)

    # -- sending ----------------------------------------------------------------------------------

    def push(self, message: Message, channel: Channel | None = None) -> None:
        """
        Send ``message`` now if connected, else when the connection opens
        (dropped then if its channel has rejoined or closed since).

        :raises TypeError: when the serializer cannot encode the payload.
        """
        data, binary = self.serializer.encode(message)
        if self.is_connected():
            self._send(message, data, binary, channel)
        else:

            def send_later() -> None:
                if not self._is_outdated(message, channel):
                    self._send(message, data, binary, channel)

            self.send_buffer.append(send_later)

    def _send(self, message: Message, data: bytes, binary: bool, channel: Channel | None) -> None:
        connection = self.connection
        assert connection is not None
        if channel is not None and message.event == PHX_JOIN:
            connection.joins[channel] = message.join_ref
        if not connection.is_current() or not connection.is_open():
            return
        if message.event != PHX_LEAVE and self._is_outdated(message, channel):
            return
        connection.transport.send(data, binary)

    def _is_outdated(self, message: Message, channel: Channel | None) -> bool:
        return channel is not None and (message.join_ref != channel.join_ref() or channel.is_closed())

    def _flush_send_buffer(self) -> None:
        if self.is_connected() and self.send_buffer:
            buffered, self.send_buffer = self.send_buffer, []
            for send in buffered:
                send()

    def ping(self, callback: Callable[[float], Any]) -> bool:
        """
        Send a heartbeat and call ``callback(rtt)`` with the round trip in
        seconds when answered; ``False`` (and nothing sent) when not connected.
        """
        if not self.is_connected():
            return False
        assert self.connection is not None
        ref = self.make_ref()
        start = self.reactor.seconds()
        self.connection.pings[ref] = lambda: callback(self.reactor.seconds() - start)
        self.push(Message(HEARTBEAT_TOPIC, HEARTBEAT, {}, ref, None))
        return True

    # -- heartbeat ------------------------------------------------------------------------------

    def _clear_heartbeats(self) -> None:
        for call in (self.heartbeat_timer, self.heartbeat_timeout_timer):
            if call is not None and call.active():
                call.cancel()
        self.heartbeat_timer = self.heartbeat_timeout_timer = None
        self.pending_heartbeat_ref = None

    def _reset_heartbeat(self) -> None:
        conn = self.conn
        if conn is not None and conn.skip_heartbeat:
            return
        self._clear_heartbeats()
        self.heartbeat_timer = self.reactor.callLater(self.heartbeat_interval, self._send_heartbeat)

    def _send_heartbeat(self) -> None:
        self.heartbeat_timer = None
        if self.pending_heartbeat_ref is not None and not self.is_connected():
            return
        self.pending_heartbeat_ref = self.make_ref()
        self.push(Message(HEARTBEAT_TOPIC, HEARTBEAT, {}, self.pending_heartbeat_ref, None))
        self.heartbeat_timeout_timer = self.reactor.callLater(self.heartbeat_interval, self._heartbeat_timeout)

    def _heartbeat_timeout(self) -> None:
        self.heartbeat_timeout_timer = None
        if self.pending_heartbeat_ref is None:
            return
        connection = self.connection
        self.pending_heartbeat_ref = None
        log.info("heartbeat timeout on {url}: attempting to re-establish the connection", url=self.end_point)
        self.close_was_clean = False
        if connection is not None:
            connection.close(WS_CLOSE_NORMAL, "heartbeat timeout")
        if not self._still_uses(connection):
            return
        self._trigger_chan_error("heartbeat_timeout")
        if not self._still_uses(connection):
            return
        self._teardown_and_reconnect(self.reconnect_timer.schedule_timeout)

    # -- teardown -------------------------------------------------------------------------------

    def _teardown_and_reconnect(self, reconnect: Callable[[], Any]) -> None:
        connection = self.connection
        connect_clock = self.connect_clock

        def torn_down() -> None:
            if connect_clock != self.connect_clock or (connection is not None and connection.ended):
                return
            reconnect()

        self._teardown(torn_down)

    def _still_uses(self, connection: Connection | None) -> bool:
        return self.connection is connection and not (connection is not None and connection.ended)

    def _teardown(
        self, callback: Callable[[], Any] | None = None, code: int | None = None, reason: str | None = None
    ) -> None:
        connection = self.connection
        if connection is None:
            if callback is not None:
                callback()
            return
        self._clear_heartbeats()

        def buffer_done() -> None:
            if not connection.closing:
                was_opened = not connection.is_connecting()
                connection.close(code, reason)
                if was_opened:
                    self._trigger_chan_error("connection_closed", connection)

            def closed() -> None:
                if self.connection is connection:
                    self.connection = None
                if callback is not None:
                    callback()

            connection.wait_closed(closed)

        self._wait_for_buffer_done(connection.transport, buffer_done)

    def _wait_for_buffer_done(self, transport: Transport, callback: Callable[[], Any], tries: int = 1) -> None:
        if tries == 5 or not transport.buffered_amount or transport.ready_state != OPEN:
            callback()
            return
        self.reactor.callLater(0.150 * tries, self._wait_for_buffer_done, transport, callback, tries + 1)

    # -- transport events -------------------------------------------------------------------------

    def _on_conn_open(self) -> None:
        log.debug("connected to {url}", url=self.end_point)
        self.close_was_clean = False
        self.established_connections += 1
        self._flush_send_buffer()
        self.reconnect_timer.reset()
        self._reset_heartbeat()
        self._run_callbacks("open")
        waiters, self._open_waiters = self._open_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def _on_conn_close(self, event: CloseEvent) -> None:
        connection = self.connection
        log.debug("close {url} {event}", url=self.end_point, event=event)
        self._clear_heartbeats()
        closed_by_us = connection is not None and connection.closing
        self._trigger_chan_error("connection_closed", connection)
        if self._still_uses(connection) and not closed_by_us and not self.close_was_clean:
            self.reconnect_timer.schedule_timeout()
        self._run_callbacks("close", event)

    def _on_conn_error(self, error: BaseException) -> None:
        connection = self.connection
        log.debug("error {url}: {error}", url=self.end_point, error=error)
        self._run_callbacks("error", error)
        self._trigger_chan_error("connection_error", connection)

    def _trigger_chan_error(self, reason: str, connection: Connection | None | Any = ...) -> None:
        """Error the channels: they rejoin once a connection is open again."""
        if connection is ...:
            connection = self.connection
        errored_before = False
        if connection is not None and not connection.is_open():
            errored_before = connection.channels_errored
            connection.channels_errored = True
        joins = [(channel, channel.join_ref()) for channel in self.channels]
        for channel, join_ref in joins:
            if channel.join_ref() != join_ref:
                continue
            if (
                connection is not None
                and (errored_before or not connection.is_current())
                and not connection.carried(channel, join_ref)
            ):
                continue
            if not (channel.is_errored() or channel.is_leaving() or channel.is_closed()):
                channel.trigger(PHX_ERROR, {"source": "transport", "reason": reason})

    def _on_conn_message(self, data: bytes, binary: bool) -> None:
        connection = self.connection
        assert connection is not None
        was_open = connection.is_open()
        try:
            message = self.serializer.decode(data, binary)
        except DecodeError as e:
            log.warn("Dropped a frame the {vsn} serializer cannot decode: {error}", vsn=self.serializer.vsn, error=e)
            return
        if connection is not self.connection or (was_open and not connection.is_open()):
            return
        topic, event, payload, ref, join_ref = message
        if ref is not None and ref == self.pending_heartbeat_ref:
            self._clear_heartbeats()
            self.heartbeat_timer = self.reactor.callLater(self.heartbeat_interval, self._send_heartbeat)
        for channel in list(self.channels):
            if channel.is_member(topic, event, payload, join_ref):
                try:
                    channel.trigger(event, payload, ref, join_ref)
                except Exception:
                    log.failure("Exception handling {event} on {topic}", event=event, topic=topic)
        self._run_callbacks("message", message)
        ping = connection.pings.pop(ref, None) if ref is not None else None
        if ping is not None:
            try:
                ping()
            except Exception:
                log.failure("Exception in a ping callback")
