# -*- test-case-name: tests.test_client -*-
"""
phoenix.js's ``Channel``: one topic joined over a
:class:`~twisted_phoenix.client.socket.Socket`.

The states and their transitions are phoenix.js's: ``closed`` → ``joining``
(:meth:`Channel.join`) → ``joined`` on an ``ok`` reply; ``errored`` after an
error reply, a join timeout, a ``phx_error`` from the server or a lost
connection, and from there back to ``joining`` with the rejoin backoff (and
at once when the socket reopens); ``leaving`` → ``closed`` after
:meth:`Channel.leave` or a ``phx_close`` from the server, for good.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from ..message import PHX_CLOSE, PHX_ERROR, PHX_JOIN, PHX_LEAVE, PHX_REPLY
from ._timer import Timer
from .push import Push

if TYPE_CHECKING:
    from .socket import Socket

__all__ = ["Channel", "CLOSED", "ERRORED", "JOINED", "JOINING", "LEAVING"]

log = Logger()

CLOSED, ERRORED, JOINED, JOINING, LEAVING = "closed", "errored", "joined", "joining", "leaving"


def _closure(value: Any) -> Callable[[], Any]:
    return value if callable(value) else (lambda: value)


class _Binding:
    __slots__ = ("event", "ref", "callback", "raw")

    def __init__(self, event: str, ref: int, callback: Callable[..., Any], raw: bool) -> None:
        self.event = event
        self.ref = ref
        self.callback = callback
        self.raw = raw


class Channel:
    """
    A topic over a socket; made by :meth:`Socket.channel <twisted_phoenix.client.socket.Socket.channel>`.

    :ivar topic: the topic.
    :ivar state: ``"closed"``, ``"joining"``, ``"joined"``, ``"errored"`` or ``"leaving"``.
    :ivar join_push: the :class:`~twisted_phoenix.client.push.Push` of the
        join: ``channel.join_push.receive("ok", callback)`` runs on every
        (re)join, not only the first.
    :ivar timeout: the default timeout of joins and pushes, in seconds.
    """

    def __init__(self, topic: str, params: Any, socket: Socket) -> None:
        self.state = CLOSED
        self.topic = topic
        self.params = _closure(params if params is not None else {})
        self.socket = socket
        self.bindings: list[_Binding] = []
        self.binding_ref = 0
        self.timeout: float = socket.timeout
        self.joined_once = False
        self.join_push = Push(self, PHX_JOIN, self.params, self.timeout)
        self.push_buffer: list[Push] = []
        self.state_change_refs: list[int] = []
        self.rejoin_timer = Timer(self._rejoin_if_connected, socket.rejoin_after, socket.reactor)
        self.state_change_refs.append(socket.on_error(lambda error: self.rejoin_timer.reset()))
        self.state_change_refs.append(socket.on_open(self._socket_opened))
        self.join_push.receive("ok", self._joined)
        self.join_push.receive("error", self._join_refused)
        self.join_push.receive("timeout", self._join_timed_out)
        self._on(PHX_CLOSE, self._closed, raw=True)
        self._on(PHX_ERROR, self._errored, raw=True)
        self._on(PHX_REPLY, self._reply, raw=True)

    def __repr__(self) -> str:
        return f"<Channel {self.topic!r} {self.state} join_ref={self.join_ref()!r}>"

    # -- public API ------------------------------------------------------------------------

    def join(self, timeout: float | None = None) -> defer.Deferred[Any]:
        """
        Join the topic (once per channel object; it rejoins by itself).

        :param timeout: seconds to wait for the reply (the socket's
            ``timeout`` by default); it becomes this channel's default.
        :return: a Deferred firing with the join reply's response, or failing
            with :class:`~twisted_phoenix.client.push.ReplyError` (the server
            refused: the channel keeps retrying with the rejoin backoff until
            :meth:`leave`) or :class:`~twisted_phoenix.client.push.PushTimeout`.
        :raises RuntimeError: when called a second time.
        """
        if self.joined_once:
            raise RuntimeError(
                "tried to join multiple times. 'join' can only be called a single time per channel instance"
            )
        if timeout is not None:
            self.timeout = timeout
        self.joined_once = True
        d = self.join_push.deferred()
        self.rejoin()
        return d

    def push(self, event: str, payload: Any = None, timeout: float | None = None) -> defer.Deferred[Any]:
        """
        Push ``event`` with ``payload`` (a JSON value, ``{}`` when ``None``, or
        :class:`bytes` with the V2 serializer).  Before the join succeeded the
        push waits in a buffer (its timeout running), as in phoenix.js.

        :return: a Deferred firing with the reply's response, or failing with
            :class:`~twisted_phoenix.client.push.ReplyError`,
            :class:`~twisted_phoenix.client.push.PushTimeout` (also when the server
            never replies to this event), or the encoding error (``TypeError``)
            of a payload the serializer cannot carry.
        :raises RuntimeError: before :meth:`join`.
        """
        if payload is None:
            payload = {}
        if not self.joined_once:
            raise RuntimeError(
                f"tried to push '{event}' to '{self.topic}' before joining. "
                "Use channel.join() before pushing events"
            )
        push_event = Push(self, event, lambda: payload, self.timeout if timeout is None else timeout)
        d = push_event.deferred()
        if self.can_push():
            push_event.send()
        else:
            push_event.start_timeout()
            self.push_buffer.append(push_event)
        return d

    def leave(self, timeout: float | None = None) -> defer.Deferred[Any]:
        """
        Leave: the server ends the channel, and this channel closes for good
        (its ``on_close`` callbacks run with ``"leave"``) on the reply or the
        timeout; at once when not joined.

        :return: a Deferred firing with the reply's response (``{}`` when
            not joined), or failing with :class:`~twisted_phoenix.client.push.PushTimeout`.
        """
        return self._leave(timeout).deferred()

    def on(self, event: str, callback: Callable[[Any], Any]) -> int:
        """
        Call ``callback(payload)`` for every ``event`` the server sends on
        this topic (pushes and broadcasts).

        :return: a ref for :meth:`off`.
        """
        return self._on(event, callback, raw=False)

    def off(self, event: str, ref: int | None = None) -> None:
        """Remove the callback ``ref`` of ``event``, or all of them."""
        self.bindings = [b for b in self.bindings if not (b.event == event and (ref is None or ref == b.ref))]

    def on_close(self, callback: Callable[[Any], Any]) -> int:
        """Call ``callback(payload)`` when the channel closes (``phx_close``, or ``"leave"``)."""
        return self.on(PHX_CLOSE, callback)

    def on_error(self, callback: Callable[[Any], Any]) -> int:
        """
        Call ``callback(reason)`` when the channel errors: the server's
        ``phx_error`` payload, or ``{"source": "transport", "reason": ...}``
        when the connection was lost.
        """
        return self.on(PHX_ERROR, callback)

    def join_ref(self) -> str | None:
        """The ref of the current join."""
        return self.join_push.ref

    def can_push(self) -> bool:
        """Whether a push goes out now (joined over an open socket)."""
        return self.socket.is_connected() and self.is_joined()

    def is_closed(self) -> bool:
        return self.state == CLOSED

    def is_errored(self) -> bool:
        return self.state == ERRORED

    def is_joined(self) -> bool:
        return self.state == JOINED

    def is_joining(self) -> bool:
        return self.state == JOINING

    def is_leaving(self) -> bool:
        return self.state == LEAVING

    # -- phoenix.js internals ------------------------------------------------------------

    def _leave(self, timeout: float | None = None) -> Push:
        self.rejoin_timer.reset()
        self.join_push.cancel_timeout()
        self.state = LEAVING

        def on_close(_: Any) -> None:
            self.trigger(PHX_CLOSE, "leave")

        leave_push = Push(self, PHX_LEAVE, lambda: {}, self.timeout if timeout is None else timeout)
        leave_push.receive("ok", on_close).receive("timeout", on_close)
        leave_push.send()
        if not self.can_push():
            leave_push.trigger("ok", {})
        return leave_push

    def _on(self, event: str, callback: Callable[..., Any], raw: bool) -> int:
        ref = self.binding_ref
        self.binding_ref += 1
        self.bindings.append(_Binding(event, ref, callback, raw))
        return ref

    def is_member(self, topic: str, event: str, payload: Any, join_ref: Any) -> bool:
        """Whether a message is for this channel (not for an outdated join)."""
        if self.topic != topic:
            return False
        if join_ref and join_ref != self.join_ref():
            log.debug("dropping outdated message {topic} {event} ({join_ref})", topic=topic, event=event, join_ref=join_ref)
            return False
        return True

    def rejoin(self, timeout: float | None = None) -> None:
        """Send the join again (a duplicate channel on the topic leaves first)."""
        if self.is_leaving():
            return
        self.socket.leave_open_topic(self.topic)
        self.state = JOINING
        self.join_push.resend(self.timeout if timeout is None else timeout)

    def trigger(self, event: str, payload: Any = None, ref: Any = None, join_ref: Any = None) -> None:
        """Run the callbacks of ``event``."""
        join_ref = join_ref or self.join_ref()
        for binding in [b for b in self.bindings if b.event == event]:
            if binding.raw:
                binding.callback(payload, ref, join_ref)
            else:
                self._call(binding.callback, payload)

    def reply_event_name(self, ref: Any) -> str:
        return f"chan_reply_{ref}"

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run a user callback; its exception is logged, never raised into the transport."""
        try:
            callback(*args)
        except Exception:
            log.failure("Exception in a callback of channel {topic}", topic=self.topic)

    # -- hooks wired in __init__ ------------------------------------------------------------

    def _rejoin_if_connected(self) -> None:
        if self.socket.is_connected():
            self.rejoin()

    def _socket_opened(self) -> None:
        self.rejoin_timer.reset()
        if self.is_errored():
            self.rejoin()

    def _joined(self, response: Any) -> None:
        self.state = JOINED
        self.rejoin_timer.reset()
        buffered, self.push_buffer = self.push_buffer, []
        for push_event in buffered:
            push_event.send()

    def _join_refused(self, response: Any) -> None:
        self.state = ERRORED
        if self.socket.is_connected():
            self.rejoin_timer.schedule_timeout()

    def _join_timed_out(self, response: Any) -> None:
        log.debug("timeout {topic} ({join_ref})", topic=self.topic, join_ref=self.join_ref())
        Push(self, PHX_LEAVE, lambda: {}, self.timeout).send()
        self.state = ERRORED
        self.join_push.reset()
        if self.socket.is_connected():
            self.rejoin_timer.schedule_timeout()

    def _closed(self, payload: Any, ref: Any, join_ref: Any) -> None:
        self.rejoin_timer.reset()
        log.debug("close {topic} {join_ref}", topic=self.topic, join_ref=self.join_ref())
        self.state = CLOSED
        self.socket.remove(self)

    def _errored(self, reason: Any, ref: Any, join_ref: Any) -> None:
        log.debug("error {topic} {reason!r}", topic=self.topic, reason=reason)
        if self.is_joining():
            self.join_push.reset()
        self.state = ERRORED
        if self.socket.is_connected():
            self.rejoin_timer.schedule_timeout()

    def _reply(self, payload: Any, ref: Any, join_ref: Any) -> None:
        self.trigger(self.reply_event_name(ref), payload)
