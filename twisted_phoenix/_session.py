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
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from ._channelserver import ChannelServer
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
from .serializers import Serializer

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
    )

    def __init__(self, socket: Socket, serializer: Serializer, connection: Connection) -> None:
        self.endpoint: Endpoint = socket.endpoint
        self.reactor = self.endpoint.reactor
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
        self._backlog: deque[Message] | None = None
        self._id = socket.id()
        if self._id is not None:
            self.endpoint.pubsub.subscribe(self._id, self)
        socket.session = self

    # -- input -----------------------------------------------------------------

    def frame_received(self, data: bytes, binary: bool) -> None:
        """
        Handle one client frame.

        :raises twisted_phoenix.serializers.DecodeError: for a malformed
            frame; the transport then closes the connection (1011), as
            Phoenix does.
        """
        message = self.serializer.decode(data, binary)
        if self._joining:
            if self._backlog is None:
                self._backlog = deque()
            if len(self._backlog) >= self.socket.max_backlog:
                self.log.error(
                    "Closing {socket}: more than {n} messages queued behind a pending join",
                    socket=type(self.socket).__name__, n=self.socket.max_backlog,
                )
                self.connection.close(CLOSE_POLICY, "too many queued messages")
                return
            self._backlog.append(message)
        else:
            self.handle_message(message)

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
        elif (
            message.join_ref is not None
            and server.join_ref is not None
            and message.join_ref != server.join_ref
        ):
            # Stale join_ref: silently dropped, as Phoenix does since 1.8.3.  A
            # channel joined without one (V1) accepts any ("match on nil").
            pass
        elif event == PHX_LEAVE:
            server.post_leave(message)
        else:
            server.post_in(message)

    def _join(self, message: Message, existing: ChannelServer | None) -> None:
        topic = message.topic
        close_old = None
        if existing is not None:
            self.log.debug("Duplicate channel join for topic {topic!r}", topic=topic)
            existing.kill()
            del self.channels[topic]
            close_old = Message(topic, PHX_CLOSE, {}, existing.join_ref, existing.join_ref)
        channel_class = self.socket.route(topic)
        if channel_class is None:
            self.log.warn(
                "Ignoring unmatched topic {topic!r} in {socket}",
                topic=topic, socket=type(self.socket).__name__,
            )
            self.send(Reply(topic, "error", UNMATCHED_TOPIC, message.ref, None))
        elif len(self.channels) >= self.socket.max_channels:
            self.log.error(
                "Joining {topic!r} in {socket} refused: more than {n} channels",
                topic=topic, socket=type(self.socket).__name__, n=self.socket.max_channels,
            )
            self.send(Reply(topic, "error", TOO_MANY_CHANNELS, message.ref, message.join_ref))
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
        self.send(Reply(message.topic, result.status, result.response, message.ref, message.join_ref))
        if close_old is not None:
            self.send(close_old)
        if result.status == "ok" and server.state == "joined":
            self.log.info(
                "JOINED {topic} in {channel}", topic=message.topic, channel=type(server.channel).__name__
            )
            server.start()
        elif self.channels.get(message.topic) is server:
            del self.channels[message.topic]
        backlog = self._backlog
        while backlog and not self._joining and not self.closed:
            self.handle_message(backlog.popleft())

    # -- output ----------------------------------------------------------------

    def send(self, message: Message | Reply) -> None:
        """Encode and write one message (dropped once the connection closed)."""
        if not self.closed:
            self.connection.send_frame(self.serializer.encode(message))

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
            self.connection.close(CLOSE_GOING_AWAY, "disconnected")

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
