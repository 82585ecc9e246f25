# -*- test-case-name: tests.test_channel -*-
"""
The user channel: one :class:`Channel` object per joined topic per connection.

Subclass :class:`Channel` and override its callbacks; each may return its
result directly or as a :class:`~twisted.internet.defer.Deferred`:

``join(topic, payload)``
    ``None`` or :func:`ok` accepts the join (with ``{}`` or the given reply),
    :func:`error` refuses it.  An exception answers ``{"reason": "join crashed"}``.

``handle_in(event, payload)``
    ``None`` sends no reply; :func:`ok`, :func:`error` or any :class:`Result`
    replies; :class:`Stop` stops the channel, replying first when it carries a
    result.  An exception crashes the channel: the client gets ``phx_error``
    and only that channel ends.

``handle_info(message)``
    Messages sent with :meth:`Channel.send` or :meth:`Channel.send_after`,
    and broadcasts on topics added with :meth:`Channel.subscribe`.  ``None``
    or :class:`Stop`.

``handle_out(event, payload)``
    Broadcasts on the channel's own topic whose event is listed in
    :attr:`Channel.intercept`.  The default pushes them unchanged.

``terminate(reason)``
    The channel is ending: ``("shutdown", "left")`` after a leave,
    ``("shutdown", "closed")`` when the connection closed,
    ``("shutdown", "disconnected")`` after a ``disconnect`` broadcast to the
    socket id, the :class:`Stop` reason, or the :class:`~twisted.python.failure.Failure`
    of a crash.  It is not called after a failed join or a duplicate join.

The callbacks of one channel run one at a time, in order, as in a Phoenix
channel process: while a callback's Deferred is pending, the channel's next
message waits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Collection, NamedTuple

from twisted.internet.defer import Deferred

from ._log import truncate_repr

if TYPE_CHECKING:
    from ._channelserver import ChannelServer, Timer
    from .endpoint import Endpoint
    from .socket import Socket

__all__ = ["Channel", "Result", "SocketRef", "Stop", "ok", "error", "is_normal_reason"]


class Result(NamedTuple):
    """
    A reply's status and response, e.g. ``Result("ok", {"ping": "pong"})``.
    """

    status: str
    response: Any = None


def ok(response: Any = None) -> Result:
    """A reply with status ``ok`` (the response defaults to ``{}``)."""
    return Result("ok", {} if response is None else response)


def error(response: Any = None) -> Result:
    """A reply with status ``error`` (the response defaults to ``{}``)."""
    return Result("error", {} if response is None else response)


class Stop(NamedTuple):
    """
    Stop the channel with ``reason``, after sending ``reply`` if given.

    ``"normal"``, ``"shutdown"`` and ``("shutdown", anything)`` close the
    channel cleanly (``phx_close``); any other reason is an error
    (``phx_error``), after which phoenix.js rejoins.
    """

    reason: Any = "normal"
    reply: Result | None = None


def is_normal_reason(reason: Any) -> bool:
    """Whether ``reason`` ends a channel with ``phx_close`` (not ``phx_error``)."""
    return reason in ("normal", "shutdown") or (
        type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown"
    )


class SocketRef(NamedTuple):
    """
    Where to send a reply later: see :meth:`Channel.socket_ref`.
    """

    server: "ChannelServer"
    topic: str
    join_ref: Any
    ref: Any


class Channel:
    """
    Base class of user channels.

    :cvar intercept: events of broadcasts on this channel's topic that go
        through :meth:`handle_out` instead of straight to the client.
    :ivar socket: the :class:`~twisted_phoenix.socket.Socket` of the
        connection this channel was joined on.
    :ivar topic: the joined topic.
    :ivar assigns: this channel's own copy of the socket's assigns.
    :ivar join_ref: the join reference of the client's ``phx_join``.
    """

    intercept: ClassVar[Collection[str]] = ()

    socket: Socket
    topic: str
    assigns: dict[str, Any]
    join_ref: Any
    _server: ChannelServer

    # -- callbacks ---------------------------------------------------------

    def join(self, topic: str, payload: Any) -> Result | None | Deferred[Any]:
        """Accept or refuse a join; see the module documentation."""
        raise NotImplementedError(f"{type(self).__name__} does not define join")

    def handle_in(self, event: str, payload: Any) -> Result | Stop | None | Deferred[Any]:
        """Handle an event pushed by the client."""
        raise NotImplementedError(f"{type(self).__name__} does not handle event {event!r}")

    def handle_info(self, message: Any) -> Stop | None | Deferred[Any]:
        """Handle a message sent to this channel by the server."""
        self._server._rlog().warn(
            "{channel} received unexpected message in handle_info: {info}",
            channel=type(self).__name__,
            info=truncate_repr(message),  # not "message": legacy log observers overwrite that key
        )
        return None

    def handle_out(self, event: str, payload: Any) -> Stop | None | Deferred[Any]:
        """Handle an intercepted broadcast; the default pushes it unchanged."""
        self.push(event, payload)
        return None

    def terminate(self, reason: Any) -> None | Deferred[Any]:
        """The channel is ending (see the module documentation)."""
        return None

    # -- API -----------------------------------------------------------------

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint serving this channel."""
        return self.socket.endpoint

    def push(self, event: str, payload: Any) -> None:
        """Send ``event`` to this channel's client only."""
        self._server.push(event, payload)

    def broadcast(self, event: str, payload: Any) -> None:
        """Send ``event`` to every subscriber of this topic, this one included, on every node."""
        self._server.check_joined("broadcast")
        self.endpoint.pubsub.broadcast(self.topic, event, payload)

    def broadcast_from(self, event: str, payload: Any) -> None:
        """Send ``event`` to every subscriber of this topic but this channel."""
        self._server.check_joined("broadcast_from")
        self.endpoint.pubsub.broadcast_from(self._server, self.topic, event, payload)

    def socket_ref(self) -> SocketRef:
        """
        Capture where the event being handled came from, so that
        :meth:`reply` can answer it later.  Only valid inside ``handle_in``.
        """
        return self._server.socket_ref()

    def reply(self, ref: SocketRef, result: Result) -> None:
        """Send a ``phx_reply`` for the event captured by ``ref``."""
        ref.server.reply(ref, result)

    def send(self, message: Any) -> None:
        """Deliver ``message`` to this channel's :meth:`handle_info`, after the current callback."""
        self._server.post_info(message)

    def send_after(self, seconds: float, message: Any) -> Timer:
        """
        Deliver ``message`` to :meth:`handle_info` after ``seconds``.  The
        returned timer has ``cancel()``; timers die with the channel.
        """
        return self._server.send_after(seconds, message)

    def subscribe(self, topic: str) -> None:
        """
        Receive the broadcasts on another ``topic`` in :meth:`handle_info`.

        The other nodes of a cluster are told at once.  Called in
        :meth:`join`, the join's reply waits until they know, as for the
        channel's own topic; called later, nothing waits: broadcasts from
        other nodes come once they know (one link transit later).
        """
        self._server.subscribe(topic)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving broadcasts on ``topic`` added with :meth:`subscribe`."""
        self._server.unsubscribe(topic)
