# -*- test-case-name: tests.test_session -*-
"""
The per-connection multiplexer: Phoenix's ``Phoenix.Socket`` process.

A :class:`Session` receives every frame of one connection, answers
heartbeats, routes joins to channel routes, keeps at most one channel per
topic, and forwards events to the joined channels.  It knows nothing of
WebSocket: a transport gives it frames and a
:class:`~twisted_phoenix.pubsub.Connection` to write to.

The rules, their order and the frames they produce follow section 3 of the
protocol notes (``phoenix-protocol.md``), which paraphrase Phoenix's
``socket.ex``.

On top of Phoenix's rules, a session limits the rate of each connection's
messages (see :class:`~twisted_phoenix.limits.RateLimit` and the
``event_rate``, ``event_burst``, ``join_rate`` and ``join_burst``
attributes of :class:`~twisted_phoenix.endpoint.Endpoint`): a message over
the limit gets the error reply ``{"reason": "rate limited"}``, and a
connection that keeps sending after a further burst's worth of refusals is
closed with 1008.  And no frame it writes can fail to encode: a reply that
cannot be encoded is replaced by an error reply, a push that cannot is
dropped, a join whose reply cannot is a crashed join; each is logged.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

from ._channelserver import JOIN_CRASHED, ChannelServer
from ._log import RateLimitedLog, limited_log, truncate, truncate_repr
from .limits import RateLimit
from .message import (
    DISCONNECT,
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    PHX_CLOSE,
    PHX_ERROR,
    PHX_JOIN,
    PHX_LEAVE,
    Broadcast,
    Message,
    Reply,
)
from .serializers import Frame, Serializer

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .pubsub import Connection
    from .socket import Socket

#: WebSocket close codes the session asks for.
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

UNMATCHED_TOPIC = {"reason": "unmatched topic"}
TOO_MANY_CHANNELS = {"reason": "too many channels joined"}
CHANNEL_CRASH = {"reason": "channel_crash"}
RATE_LIMITED = {"reason": "rate limited"}
#: What a client gets instead of a reply the serializer cannot encode.
REPLY_CRASHED = {"reason": "reply crashed"}


class Session:
    """
    One client connection's channels.

    :param socket: the user :class:`~twisted_phoenix.socket.Socket` that
        accepted the connection.
    :param serializer: the serializer chosen by the client's ``vsn``.
    :param connection: where frames go.
    """

    log = Logger()

    # A Session is a plain subscriber of its socket id topic.
    fastlane = None
    intercepts: frozenset[str] = frozenset()

    __slots__ = (
        "endpoint",
        "reactor",
        "socket",
        "serializer",
        "connection",
        "channels",
        "closed",
        "close_reason",
        "_joining",
        "_backlog",
        "_id",
        "_events",
        "_joins",
        "started",
        "metrics",
    )

    def __init__(self, socket: Socket, serializer: Serializer, connection: Connection) -> None:
        self.endpoint: Endpoint = socket.endpoint
        self.reactor = self.endpoint.reactor
        #: The endpoint's counters (see :mod:`twisted_phoenix.metrics`).
        self.metrics = self.endpoint.metrics
        self.socket = socket
        self.serializer = serializer
        self.connection = connection
        self.channels: dict[str, ChannelServer] = {}
        self.closed = False
        #: Why the channels end when the connection does.
        self.close_reason: Any = ("shutdown", "closed")
        # While a join is pending, Phoenix's transport waits for it: later
        # frames queue here, up to socket.max_backlog of them.
        self._joining = False
        self._backlog: deque[Message | Reply] | None = None
        self._id = socket.id()
        endpoint = self.endpoint
        now = self.reactor.seconds()
        #: When the connection was accepted (for the telemetry's durations).
        self.started = now
        #: Every message but phx_join takes a token from here (heartbeats too).
        self._events = _limit(endpoint.event_rate, endpoint.event_burst, now)
        #: phx_join takes its token from here.
        self._joins = _limit(endpoint.join_rate, endpoint.join_burst, now)
        if self._id is not None:
            self.endpoint.pubsub.subscribe(self._id, self)
        socket.session = self

    # -- input -----------------------------------------------------------------

    def frame_received(self, data: bytes, binary: bool, now: float | None = None) -> None:
        """
        Handle one client frame.

        :param now: when the frame arrived, in the reactor's
            ``seconds()``; the transport passes the time it read the data
            (one clock call per read, not per frame).  ``None`` reads the
            reactor's clock.
        :raises twisted_phoenix.serializers.DecodeError: for a malformed
            frame; the transport then closes the connection (1011), as
            Phoenix does.
        """
        message = self.serializer.decode(data, binary)
        event, metrics = message.event, self.metrics
        if event == PHX_JOIN:
            metrics.joins_received += 1
            limit = self._joins
        else:
            limit = self._events
            if event == HEARTBEAT and message.topic == HEARTBEAT_TOPIC:
                metrics.heartbeats_received += 1
            elif event == PHX_LEAVE:
                metrics.leaves_received += 1
            else:
                metrics.events_received += 1
        if limit is not None:
            if now is None:
                now = self.reactor.seconds()
            if not limit.take(now) and not self._over_limit(message, limit, now):
                return
        if self._joining:
            self._queue(message)
        else:
            self.handle_message(message)

    def _queue(self, item: Message | Reply) -> None:
        """
        Hold a message (or a reply already decided) behind a pending join,
        as Phoenix's transport waits for the join.
        """
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        if len(backlog) >= self.socket.max_backlog:
            self._rlog().error(
                "Closing {socket}: more than {n} messages queued behind a pending join",
                socket=type(self.socket).__name__, n=self.socket.max_backlog,
            )
            self.metrics.drop("backlog", self)
            self.connection.close(CLOSE_POLICY, "too many queued messages")
            return
        backlog.append(item)

    def _over_limit(self, message: Message, limit: RateLimit, now: float) -> bool:
        """
        ``message`` found no token in ``limit``: refuse it, or close a
        connection that persists.

        :returns: whether to handle the message all the same: a
            ``phx_leave`` that ends a joined channel is never refused, for
            phoenix.js finishes a leave only on an ok reply (or a timeout),
            and leaves are bounded by joins anyway.
        """
        topic, event = message.topic, message.event
        if event == PHX_LEAVE:
            server = self.channels.get(topic)
            if server is not None and not _stale(message, server):
                return True
        kind = "joins" if limit is self._joins else "events"
        socket = type(self.socket).__name__
        if not limit.refuse(now):
            self._rlog().warn(
                "Closing a {socket} connection that kept sending {kind} over {rate:g}/s "
                "(burst {burst:g}) after {refused} were refused",
                socket=socket, kind=kind, rate=limit.rate, burst=limit.burst, refused=limit.refused - 1,
            )
            self.metrics.drop("rate", self)
            self.connection.close(CLOSE_POLICY, "rate limited")
            # Whatever the transport does, nothing more is read from it.
            self.connection_lost()
            return False
        if limit.refused == 1:
            self._rlog().warn(
                "Rate limiting a {socket} connection: more than {burst:g} {kind} at once or {rate:g}/s",
                socket=socket, kind=kind, rate=limit.rate, burst=limit.burst,
            )
        # A heartbeat's reply never carries a join_ref; others echo theirs.
        join_ref = None if topic == HEARTBEAT_TOPIC and event == HEARTBEAT else message.join_ref
        reply = Reply(topic, "error", RATE_LIMITED, message.ref, join_ref)
        if self._joining:
            self._queue(reply)  # after the frames before it
        else:
            self.send(reply)
        return False

    def _rlog(self) -> RateLimitedLog:
        """The rate-limited log the sessions of this endpoint share."""
        return limited_log(Session.log, self.reactor, self.endpoint)

    def handle_message(self, message: Message) -> None:
        """Route one decoded message (section 3.2 of the protocol notes)."""
        topic, event = message.topic, message.event
        if topic == HEARTBEAT_TOPIC and event == HEARTBEAT:
            self.send(Reply(HEARTBEAT_TOPIC, "ok", {}, message.ref, None))
            return
        server = self.channels.get(topic)
        if event == PHX_JOIN:
            self._join(message, server)
        elif server is None:
            if event == PHX_LEAVE:
                self.send(Reply(topic, "ok", {}, message.ref, message.join_ref))
            else:
                self.send(Reply(topic, "error", UNMATCHED_TOPIC, message.ref, None))
        elif _stale(message, server):
            # Silently dropped, as Phoenix does since 1.8.3.
            pass
        elif event == PHX_LEAVE:
            server.post_leave(message)
        else:
            server.post_in(message)

    def _join(self, message: Message, existing: ChannelServer | None) -> None:
        topic = message.topic
        close_old = None
        if existing is not None:
            self.log.debug("Duplicate channel join for topic {topic}", topic=truncate_repr(topic))
            existing.kill()
            del self.channels[topic]
            close_old = Message(topic, PHX_CLOSE, {}, existing.join_ref, existing.join_ref)
        channel_class = self.socket.route(topic)
        if channel_class is None:
            self._rlog().warn(
                "Ignoring unmatched topic {topic} in {socket}",
                topic=truncate_repr(topic), socket=type(self.socket).__name__,
            )
            self.send(Reply(topic, "error", UNMATCHED_TOPIC, message.ref, None))
            self._join_refused(topic, None, UNMATCHED_TOPIC["reason"])
        elif len(self.channels) >= self.socket.max_channels:
            self._rlog().error(
                "Joining {topic} in {socket} refused: more than {n} channels",
                topic=truncate_repr(topic), socket=type(self.socket).__name__, n=self.socket.max_channels,
            )
            self.send(Reply(topic, "error", TOO_MANY_CHANNELS, message.ref, message.join_ref))
            self._join_refused(topic, channel_class, TOO_MANY_CHANNELS["reason"])
        else:
            server = ChannelServer(self, channel_class, topic, message.join_ref, message.ref)
            self.channels[topic] = server
            self._joining = True
            server.join(message.payload).addCallback(self._joined, server, message, close_old)
            return
        if close_old is not None:
            self.send(close_old)

    def _joined(self, result: Any, server: ChannelServer, message: Message, close_old: Message | None) -> None:
        self._joining = False
        if self.closed:
            server.shutdown(self.close_reason)
            return
        topic = message.topic
        try:
            frame = self.serializer.encode(
                Reply(topic, result.status, result.response, message.ref, message.join_ref)
            )
        except Exception:
            # Never a channel joined without its reply: a crashed join.
            self._rlog().failure(
                "The reply to joining {topic} in {channel} cannot be encoded; answered as a crashed join",
                topic=truncate_repr(topic), channel=type(server.channel).__name__,
                level=LogLevel.error,
            )
            server.kill()
            result = JOIN_CRASHED
            frame = self.serializer.encode(
                Reply(topic, result.status, result.response, message.ref, message.join_ref)
            )
        self.connection.send_frame(frame)
        self._count_join(server, result)
        if close_old is not None:
            self.send(close_old)
        if result.status == "ok" and server.state == "joined":
            self.log.info(
                "JOINED {topic} in {channel}", topic=truncate(topic), channel=type(server.channel).__name__
            )
            server.start()
        elif self.channels.get(topic) is server:
            del self.channels[topic]
        backlog = self._backlog
        while backlog and not self._joining and not self.closed:
            item = backlog.popleft()
            if type(item) is Reply:
                self.send(item)
            else:
                self.handle_message(item)

    # -- output ----------------------------------------------------------------

    def send(self, message: Message | Reply) -> None:
        """
        Encode and write one message (dropped once the connection closed).

        A reply the serializer cannot encode is replaced by the error reply
        ``{"reason": "reply crashed"}``; a push that it cannot encode is
        dropped.  Either is logged, and the channel carries on.
        """
        if not self.closed:
            try:
                frame = self.serializer.encode(message)
            except Exception:
                frame = self._unencodable(message)
                if frame is None:
                    return
            self.connection.send_frame(frame)
            if type(message) is Reply:
                self.metrics.replies_sent += 1
            else:
                self.metrics.pushes_sent += 1

    def _unencodable(self, message: Message | Reply) -> Frame | None:
        """Log a message that cannot be encoded; what to send instead, if anything."""
        is_reply = type(message) is Reply
        self._rlog().failure(
            "{serializer} cannot encode a {kind} on {topic}; {outcome}",
            serializer=type(self.serializer).__name__,
            kind="reply" if is_reply else f"push {truncate_repr(message.event)}",  # type: ignore[union-attr]
            topic=truncate_repr(message.topic),
            outcome="answered with an error" if is_reply else "dropped",
            level=LogLevel.error,
        )
        if not is_reply:
            return None
        try:
            return self.serializer.encode(
                Reply(message.topic, "error", REPLY_CRASHED, message.ref, message.join_ref)
            )
        except Exception:
            return None

    def channel_closed(self, server: ChannelServer) -> None:
        """A channel ends normally: ``phx_close``, and forget it."""
        if self.channels.get(server.topic) is server:
            del self.channels[server.topic]
        self.send(Message(server.topic, PHX_CLOSE, {}, server.join_ref, server.join_ref))

    def channel_errored(self, server: ChannelServer) -> None:
        """A channel crashed: ``phx_error``, and forget it."""
        if self.channels.get(server.topic) is server:
            del self.channels[server.topic]
        self.send(Message(server.topic, PHX_ERROR, CHANNEL_CRASH, server.join_ref, server.join_ref))

    # -- the socket id topic -----------------------------------------------------

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        """A broadcast to the socket id: ``disconnect`` closes the connection (1001)."""
        if broadcast.event == DISCONNECT and not self.closed:
            self.close_reason = ("shutdown", "disconnected")
            self.metrics.drop("disconnect", self)
            self.connection.close(CLOSE_GOING_AWAY)  # no reason text, as Phoenix

    # -- end ---------------------------------------------------------------------

    def connection_lost(self) -> None:
        """The connection is gone: every channel terminates with :attr:`close_reason`."""
        if self.closed:
            return
        self.closed = True
        self._backlog = None
        if self._id is not None:
            self.endpoint.pubsub.unsubscribe(self._id, self)
        channels, self.channels = self.channels, {}
        for server in channels.values():
            server.shutdown(self.close_reason)
        if self.endpoint.telemetry.observers:
            self.endpoint.telemetry.emit("disconnect", **self.describe())

    # -- metrics and telemetry ------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """This connection's telemetry fields: ``socket``, ``transport``, ``duration`` (its age)."""
        return {
            "socket": type(self.socket).__name__,
            "transport": getattr(self.connection, "transport_name", None),
            "duration": self.reactor.seconds() - self.started,
        }

    def _count_join(self, server: ChannelServer, result: Any) -> None:
        """Count a join's answer (its reply went out) and emit ``join`` or ``join_refused``."""
        status = result.status
        channel = type(server.channel).__name__
        metrics = self.metrics
        metrics.replies_sent += 1
        joins = metrics.joins
        joins[channel, status] = joins.get((channel, status), 0) + 1
        telemetry = self.endpoint.telemetry
        if not telemetry.observers:
            return
        if status == "ok":
            telemetry.emit(
                "join", topic=server.topic, channel=channel, socket=type(self.socket).__name__,
                duration=self.reactor.seconds() - server.started,
            )
        else:
            response = result.response
            reason = response.get("reason") if isinstance(response, dict) else None
            self._join_refused(server.topic, type(server.channel), reason if isinstance(reason, str) else "error")

    def _join_refused(self, topic: str, channel_class: type | None, reason: str) -> None:
        """Emit ``join_refused``."""
        telemetry = self.endpoint.telemetry
        if telemetry.observers:
            telemetry.emit(
                "join_refused", topic=topic, channel=None if channel_class is None else channel_class.__name__,
                socket=type(self.socket).__name__, reason=reason,
            )


def _limit(rate: float | None, burst: float, now: float) -> RateLimit | None:
    """A connection's :class:`RateLimit`, or ``None`` when ``rate`` is ``None`` (no limit)."""
    return None if rate is None else RateLimit(rate, burst, now)


def _stale(message: Message, server: ChannelServer) -> bool:
    """
    Whether ``message`` carries the join_ref of an earlier join of its
    topic.  A channel joined without one (V1) accepts any ("match on nil").
    """
    return (
        message.join_ref is not None
        and server.join_ref is not None
        and message.join_ref != server.join_ref
    )
