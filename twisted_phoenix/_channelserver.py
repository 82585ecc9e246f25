# -*- test-case-name: tests.test_channel -*-
"""
The runtime of one joined channel: Phoenix's ``Phoenix.Channel.Server``.

A :class:`ChannelServer` owns the user's :class:`~twisted_phoenix.channel.Channel`
object and plays the part of its Erlang process: a mailbox processed one
message at a time (waiting for a callback's Deferred before the next), the
fastlane subscription to its topic, its timers, and the way it ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._log import RateLimitedLog, limited_log, truncate_repr

from .channel import Channel, Result, SocketRef, Stop, is_normal_reason
from .message import Broadcast, Message, Reply

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from ._session import Session

JOINING, JOINED, ENDING, DEAD = "joining", "joined", "ending", "dead"

#: The reply to a join whose callback raised.
JOIN_CRASHED = Result("error", {"reason": "join crashed"})


_INTERCEPTS: dict[type, frozenset[str]] = {}


def _intercepts(channel_class: type[Channel]) -> frozenset[str]:
    """One shared frozenset per channel class (it is read on every broadcast)."""
    cached = _INTERCEPTS.get(channel_class)
    if cached is None or cached != frozenset(channel_class.intercept):
        cached = _INTERCEPTS[channel_class] = frozenset(channel_class.intercept)
    return cached


class Timer:
    """
    A pending :meth:`~twisted_phoenix.channel.Channel.send_after`.
    """

    __slots__ = ("_server", "_call")

    def __init__(self, server: ChannelServer, call: IDelayedCall) -> None:
        self._server = server
        self._call = call

    def active(self) -> bool:
        """Whether the message is still to be delivered."""
        return self._call.active()

    def cancel(self) -> None:
        """Do not deliver the message; a no-op once delivered or cancelled."""
        if self._call.active():
            self._call.cancel()
        timers = self._server.timers
        if timers is not None:
            timers.discard(self)


class _InfoSubscriber:
    """Subscribes a channel to another topic; broadcasts go to handle_info."""

    __slots__ = ("server",)
    fastlane = None
    serializer = None
    intercepts: frozenset[str] = frozenset()

    def __init__(self, server: ChannelServer) -> None:
        self.server = server

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        self.server.post_info(broadcast)


class ChannelServer:
    """
    The process-like runtime of one channel on one connection.

    It is also the channel's fastlane subscriber of its own topic (see
    :class:`~twisted_phoenix.pubsub.Subscriber`).
    """

    log = Logger()

    __slots__ = (
        "session",
        "topic",
        "join_ref",
        "reply_join_ref",
        "channel",
        "fastlane",
        "serializer",
        "intercepts",
        "state",
        "timers",
        "_mailbox",
        "_draining",
        "_waiting",
        "_current",
        "_others",
        "_on_end",
        "_preparing",
        "started",
    )

    def __init__(
        self,
        session: Session,
        channel_class: type[Channel],
        topic: str,
        join_ref: Any,
        ref: Any,
    ) -> None:
        self.session = session
        self.topic = topic
        #: The raw join_ref, as phx_close and phx_error carry it.
        self.join_ref = join_ref
        #: Replies and pushes carry the join's ref when the client sent no join_ref.
        self.reply_join_ref = ref if join_ref is None else join_ref
        self.fastlane = getattr(session.connection, "broadcast_output", session.connection)
        self.serializer = session.serializer
        self.intercepts = _intercepts(channel_class)
        self.state = JOINING
        # Created when first needed: most channels never use a timer, and a
        # mailbox is empty most of the time (memory per connection matters).
        self.timers: set[Timer] | None = None
        self._mailbox: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._draining = False
        self._waiting = False
        self._current: Message | None = None
        self._others: dict[str, _InfoSubscriber] = {}
        self._on_end: list[Callable[[], None]] | None = None
        self._preparing: Deferred[Any] | None = None
        #: When the join began (the telemetry's durations count from here).
        self.started = session.reactor.seconds()
        channel = self.channel = channel_class()
        channel._server = self
        channel.socket = session.socket
        channel.topic = topic
        channel.join_ref = self.reply_join_ref
        channel.assigns = dict(session.socket.assigns)

    def __repr__(self) -> str:
        return f"<ChannelServer {type(self.channel).__name__} {self.topic!r} {self.state}>"

    # -- join ------------------------------------------------------------------

    def join(self, payload: Any) -> Deferred[Result]:
        """
        Run the channel's ``join``.  The Deferred fires with the reply
        :class:`Result` and never fails.  On success the channel is subscribed
        to its topic before the Deferred fires, so the reply precedes any
        broadcast.

        Before it subscribes, the channel waits for its topic to be
        :meth:`prepared <twisted_phoenix.pubsub.PubSub.prepare>` (and the
        topics it subscribed to in ``join``), when the adapter says there is
        something to wait for: then every other node sends this node the
        topic's broadcasts by the time the client has the reply.  Meanwhile
        the channel is still joining: what it sent itself waits in its
        mailbox, and a channel that ends (its connection closed) is never
        subscribed.
        """
        d = maybeDeferred(self.channel.join, self.topic, payload)
        return d.addCallback(self._joined).addErrback(self._join_crashed)

    def _joined(self, result: Any) -> Result | Deferred[Result]:
        if self.state is DEAD:  # killed by a duplicate join while joining
            return JOIN_CRASHED
        if result is None:
            result = Result("ok", {})
        if type(result) is not Result or result.status not in ("ok", "error"):
            raise TypeError(f"join must return None, ok(...) or error(...), not {result!r}")
        if result.status == "ok":
            wait = self._prepare()
            if wait is not None:
                self._preparing = wait
                return wait.addBoth(self._prepared, result)
            self._subscribe_joined()
        else:
            self._die()
        return result

    def _prepare(self) -> Deferred[Any] | None:
        """What the join waits for before it subscribes (usually nothing)."""
        pubsub = self.session.endpoint.pubsub
        wait = pubsub.prepare(self.topic)
        if self._others:
            # Topics subscribed to in join: their news goes with the topic's.
            waits = [w for w in map(pubsub.prepare, self._others) if w is not None]
            if waits:
                if wait is not None:
                    waits.append(wait)
                wait = waits[0] if len(waits) == 1 else DeferredList(waits, consumeErrors=True)
        return wait

    def _prepared(self, _: Any, result: Result) -> Result:
        self._preparing = None
        if self.state is DEAD:  # its connection closed meanwhile
            return JOIN_CRASHED
        self._subscribe_joined()
        return result

    def _subscribe_joined(self) -> None:
        self.state = JOINED
        channels = self.session.endpoint.metrics.channels
        channels[type(self.channel)] = channels.get(type(self.channel), 0) + 1
        self.session.endpoint.pubsub.subscribe(self.topic, self)

    def _join_crashed(self, failure: Failure) -> Result:
        self._rlog().failure(
            "{channel} crashed joining {topic}",
            failure,
            channel=type(self.channel).__name__,
            topic=truncate_repr(self.topic),
        )
        self._ended("crash", failure, "join")
        self._die()
        return JOIN_CRASHED

    def start(self) -> None:
        """Process whatever the channel sent itself during its join."""
        self._drain()

    # -- mailbox ---------------------------------------------------------------

    def _post(self, handler: Callable[..., Any], *args: Any) -> None:
        if self.state is DEAD or self.state is ENDING:
            return
        self._mailbox.append((handler, args))
        if self.state is JOINED and not self._draining and not self._waiting:
            self._drain()

    def _drain(self) -> None:
        self._draining = True
        mailbox = self._mailbox
        try:
            while mailbox and self.state is JOINED:
                handler, args = mailbox.pop(0)
                result = handler(*args)
                # The handlers return None or a Deferred.  (No isinstance:
                # Deferred's ABCMeta makes it a Python-level call per message.)
                if result is not None:
                    self._waiting = True
                    result.addBoth(self._resume)
                    if self._waiting:
                        return
        finally:
            self._draining = False

    def _resume(self, _: object) -> None:
        self._waiting = False
        if not self._draining:
            self._drain()

    def _call(self, callback: Callable[..., Any], args: tuple[Any, ...], on_result: Callable[[Any], None]) -> Deferred[None] | None:
        """Run a user callback; hand its result to ``on_result``; crash on errors."""
        try:
            result = callback(*args)
        except BaseException:
            self.crash(Failure())
            return None
        if type(result) is not Result and result is not None and isinstance(result, Deferred):
            return result.addCallback(on_result).addErrback(self.crash)
        try:
            on_result(result)
        except BaseException:
            self.crash(Failure())
        return None

    def post_in(self, message: Message) -> None:
        """An event from the client, for ``handle_in``."""
        self._post(self._handle_in, message)

    def post_leave(self, message: Message) -> None:
        """The client's ``phx_leave``."""
        self._post(self._handle_leave, message)

    def post_info(self, message: Any) -> None:
        """A message for ``handle_info``."""
        self._post(self._handle_info, message)

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        """An intercepted broadcast on this channel's topic, for ``handle_out``."""
        self._post(self._handle_out, broadcast)

    def _handle_in(self, message: Message) -> Deferred[None] | None:
        self._current = message

        def on_result(result: Any) -> None:
            self._current = None
            if result is None or self.state is DEAD:
                return  # a channel killed meanwhile (duplicate join) no longer replies
            if type(result) is Result:
                self._send_reply(message.ref, result)
            elif type(result) is Stop:
                if result.reply is not None:
                    self._send_reply(message.ref, result.reply)
                self.stop(result.reason)
            else:
                raise TypeError(f"handle_in({message.event!r}) returned {result!r}")

        return self._call(self.channel.handle_in, (message.event, message.payload), on_result)

    def _handle_info(self, message: Any) -> Deferred[None] | None:
        return self._call(self.channel.handle_info, (message,), self._on_noreply)

    def _handle_out(self, broadcast: Broadcast) -> Deferred[None] | None:
        return self._call(self.channel.handle_out, (broadcast.event, broadcast.payload), self._on_noreply)

    def _on_noreply(self, result: Any) -> None:
        if type(result) is Stop:
            self.stop(result.reason)
        elif result is not None:
            raise TypeError(f"expected None or Stop, got {result!r}")

    def _handle_leave(self, message: Message) -> None:
        self._send_reply(message.ref, Result("ok", {}))
        self.stop(("shutdown", "left"))

    # -- output ------------------------------------------------------------------

    def check_joined(self, what: str) -> None:
        """Phoenix forbids pushing or broadcasting from inside ``join``."""
        if self.state is JOINING:
            raise RuntimeError(f"{what} cannot be used inside join; send yourself a message instead")

    def push(self, event: str, payload: Any) -> None:
        """Send a push to the client (dropped once the channel is dead)."""
        self.check_joined("push")
        if self.state is not DEAD:
            self.session.send(Message(self.topic, event, payload, None, self.reply_join_ref))

    def _send_reply(self, ref: Any, result: Result) -> None:
        self.session.send(Reply(self.topic, result.status, result.response, ref, self.reply_join_ref))

    def socket_ref(self) -> SocketRef:
        """The ref of the event being handled; see ``Channel.socket_ref``."""
        if self._current is None:
            raise RuntimeError("socket_ref is only available inside handle_in")
        return SocketRef(self, self.topic, self.reply_join_ref, self._current.ref)

    def reply(self, ref: SocketRef, result: Result) -> None:
        """Send a late reply; like Phoenix, it goes out even if the channel has ended."""
        if type(result) is not Result:
            raise TypeError(f"reply takes ok(...), error(...) or a Result, not {result!r}")
        self.session.send(Reply(ref.topic, result.status, result.response, ref.ref, ref.join_ref))

    # -- timers and subscriptions -------------------------------------------------

    def send_after(self, seconds: float, message: Any) -> Timer:
        """Post ``message`` to handle_info after ``seconds``."""
        if self.state is DEAD:
            raise RuntimeError("send_after on a channel that has ended")

        def fire() -> None:
            if self.timers is not None:
                self.timers.discard(timer)
            self.post_info(message)

        timer = Timer(self, self.session.reactor.callLater(seconds, fire))
        if self.timers is None:
            self.timers = set()
        self.timers.add(timer)
        return timer

    def subscribe(self, topic: str) -> None:
        """Subscribe to ``topic``; its broadcasts arrive in handle_info."""
        if topic not in self._others:
            subscriber = self._others[topic] = _InfoSubscriber(self)
            self.session.endpoint.pubsub.subscribe(topic, subscriber)

    def unsubscribe(self, topic: str) -> None:
        """Undo :meth:`subscribe`."""
        subscriber = self._others.pop(topic, None)
        if subscriber is not None:
            self.session.endpoint.pubsub.unsubscribe(topic, subscriber)

    # -- ending ------------------------------------------------------------------

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the channel ends, however it ends (Presence uses this)."""
        if self.state is DEAD:
            callback()
        else:
            if self._on_end is None:
                self._on_end = []
            self._on_end.append(callback)

    def _die(self) -> None:
        """Stop receiving anything: timers, subscriptions, mailbox."""
        was_joined = self.state is JOINED or self.state is ENDING
        self.state = DEAD
        self._mailbox.clear()
        for timer in list(self.timers or ()):
            timer.cancel()
        pubsub = self.session.endpoint.pubsub
        if was_joined:
            self.session.endpoint.metrics.channels[type(self.channel)] -= 1
            pubsub.unsubscribe(self.topic, self)
        for topic in list(self._others):
            self.unsubscribe(topic)
        callbacks, self._on_end = self._on_end, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                self._rlog().failure(
                    "{topic}: an end-of-channel callback failed", topic=truncate_repr(self.topic)
                )
        preparing, self._preparing = self._preparing, None
        if preparing is not None:
            # Dead while its join waited: the join ends now (never subscribed).
            preparing.cancel()

    def _terminate(self, reason: Any) -> None:
        """Run the channel's terminate; pushes it makes still go out."""
        self.state = ENDING
        self._mailbox.clear()
        if is_normal_reason(reason):
            self._ended("leave", reason)
        else:
            self._ended("crash", reason, "stop" if type(reason) is not Failure else "callback")
        d = maybeDeferred(self.channel.terminate, reason)
        d.addErrback(
            lambda f: self._rlog().failure(
                "{channel} {topic} failed in terminate", f,
                channel=type(self.channel).__name__, topic=truncate_repr(self.topic),
            )
        )
        self._die()

    def stop(self, reason: Any) -> None:
        """
        End the channel.  A normal reason sends ``phx_close`` first; any other
        reason sends ``phx_error`` after ``terminate``.
        """
        if self.state is DEAD or self.state is ENDING:
            return
        normal = is_normal_reason(reason)
        if normal:
            self.session.channel_closed(self)
        else:
            self._rlog().error(
                "{channel} {topic} stopped with reason {reason}",
                channel=type(self.channel).__name__, topic=truncate_repr(self.topic),
                reason=truncate_repr(reason),
            )
        self._terminate(reason)
        if not normal:
            self.session.channel_errored(self)

    def crash(self, failure: Failure) -> None:
        """A callback raised: log it, terminate, and tell the client ``phx_error``."""
        if self.state is DEAD or self.state is ENDING:
            self._rlog().failure(
                "{topic} failed after it ended", failure, topic=truncate_repr(self.topic)
            )
            return
        self._current = None
        self._rlog().failure(
            "{channel} {topic} crashed", failure,
            channel=type(self.channel).__name__, topic=truncate_repr(self.topic),
        )
        self._terminate(failure)
        self.session.channel_errored(self)

    def shutdown(self, reason: Any) -> None:
        """The connection went away: terminate without sending anything."""
        if self.state is JOINED:
            self._terminate(reason)
        else:
            self._die()

    def kill(self) -> None:
        """End at once without terminate (a duplicate join, or a join reply that cannot be encoded)."""
        if self.state is JOINED:
            self._ended("leave", "killed")
        self._die()

    def _ended(self, event: str, reason: Any, phase: str = "") -> None:
        """Count a crash; emit ``leave`` or ``crash``."""
        endpoint = self.session.endpoint
        name = type(self.channel).__name__
        if event == "crash":
            crashes = endpoint.metrics.crashes
            crashes[name] = crashes.get(name, 0) + 1
        telemetry = endpoint.telemetry
        if not telemetry.observers:
            return
        fields: dict[str, Any] = {
            "topic": self.topic, "channel": name, "socket": type(self.session.socket).__name__,
            "duration": self.session.reactor.seconds() - self.started,
        }
        if type(reason) is Failure:
            fields["log_failure"] = reason
            fields["reason"] = truncate_repr(reason.value)
        else:
            fields["reason"] = _reason_text(reason)
        if event == "crash":
            fields["phase"] = phase
        telemetry.emit(event, **fields)

    def _rlog(self) -> RateLimitedLog:
        """The rate-limited log the channel servers of this endpoint share."""
        return limited_log(ChannelServer.log, self.session.reactor, self.session.endpoint)


def _reason_text(reason: Any) -> str:
    """A stop reason for an event: ``"left"`` for ``("shutdown", "left")``, else its repr, cut."""
    if type(reason) is tuple and len(reason) == 2 and reason[0] == "shutdown" and type(reason[1]) is str:
        return reason[1]
    return reason if type(reason) is str else truncate_repr(reason)
