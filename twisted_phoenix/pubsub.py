# -*- test-case-name: tests.test_pubsub -*-
"""
Local publish/subscribe with Phoenix's channel fastlane.

A subscriber is any object with the attributes of :class:`Subscriber`.  Channel
servers subscribe to their topic with a *fastlane*: the connection their
client is on, its serializer and the events the channel intercepts.  A
broadcast is then encoded once per serializer and the same :class:`Frame` is
written to every fastlane subscriber that does not intercept its event,
without waking the channel.  Every other subscriber gets the
:class:`~twisted_phoenix.message.Broadcast` through ``handle_broadcast``.

Moving broadcasts between the nodes of a cluster is the job of an *adapter*
(see :class:`Adapter`); the dispatch on each node is done here.  An adapter
that routes by interest (see :class:`InterestAdapter`) is told when a topic
gains its first local subscriber and loses its last one, and is asked to
:meth:`~PubSub.prepare` a topic before a join subscribes to it, so that a
client that has its join reply misses no broadcast from another node.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel

from ._log import RateLimitedLog, truncate_repr
from .message import Broadcast
from .serializers import Frame, Serializer

__all__ = ["Adapter", "Connection", "InterestAdapter", "PubSub", "Subscriber", "CallbackSubscriber"]


class Connection(Protocol):
    """
    What the session layer needs of a transport: send a frame, close.

    A connection may also have a ``broadcast_output``: a lighter object with
    the same ``send_frame``, which its channels' fastlane broadcasts go to
    instead (the WebSocket transport's output); without one, they go to the
    connection.
    """

    def send_frame(self, frame: Frame) -> None:
        """Write one encoded frame to the client (dropped once closed)."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection with a WebSocket close code."""


class Subscriber(Protocol):
    """
    A subscriber of a topic.

    :ivar fastlane: the connection to write encoded broadcasts to, or ``None``
        for a subscriber that wants every broadcast as a value.
    :ivar serializer: the fastlane connection's serializer.
    :ivar intercepts: the events that go to ``handle_broadcast`` even on the
        fastlane.
    """

    fastlane: Connection | None
    serializer: Serializer | None
    intercepts: frozenset[str]

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        """Receive a broadcast that does not take the fastlane."""


class Adapter(Protocol):
    """
    Moves broadcasts to the other nodes of a cluster.
    """

    def broadcast(self, broadcast: Broadcast) -> None:
        """Ship ``broadcast`` to every other node, which dispatches it locally."""

    def direct_broadcast(self, node: str, broadcast: Broadcast) -> bool:
        """Ship ``broadcast`` to ``node`` only; ``False`` if it is not connected."""


class InterestAdapter(Adapter, Protocol):
    """
    An adapter that only brings a node the topics it has subscribers for.

    The three methods are optional: :class:`PubSub` calls each one the
    adapter has, and an adapter without them gets every broadcast.
    """

    def prepare_interest(self, topic: str) -> Deferred[None] | None:
        """
        A join is about to subscribe to ``topic``: make sure every other
        node will send this node its broadcasts.  Return ``None`` when that
        is true already (the common case, which must cost next to nothing),
        else a Deferred that fires (never fails) once it is true, or after a
        short timeout.  A topic prepared but never subscribed to is dropped
        like one whose last subscriber left.
        """

    def topic_subscribed(self, topic: str) -> None:
        """``topic`` has its first subscriber on this node."""

    def topic_unsubscribed(self, topic: str) -> None:
        """``topic`` has lost its last subscriber on this node."""


class CallbackSubscriber:
    """
    A subscriber that calls a function with each :class:`Broadcast`.
    """

    __slots__ = ("callback",)
    fastlane = None
    serializer = None
    intercepts: frozenset[str] = frozenset()

    def __init__(self, callback: Callable[[Broadcast], Any]) -> None:
        self.callback = callback

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        self.callback(broadcast)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CallbackSubscriber) and other.callback == self.callback

    def __hash__(self) -> int:
        return hash(self.callback)


class PubSub:
    """
    The subscriptions of one node, and local dispatch.

    Subscribing twice is the same as subscribing once.  Dispatch iterates a
    snapshot of the subscribers, so a subscriber may subscribe, unsubscribe or
    close while a broadcast is being delivered.  One subscriber's failure
    never keeps a broadcast from the others: a broadcast that a serializer
    cannot encode is dropped for that serializer's fastlane subscribers
    only, and a subscriber that raises is skipped; each is logged.

    :param node_name: this node's name.
    :param adapter: moves broadcasts to the other nodes, if any.
    :param clock: gives the time (a reactor) to rate-limit the log of those
        failures (see :class:`~twisted_phoenix._log.RateLimitedLog`);
        without one every failure is logged.

    Counters, for metrics (they only grow; one addition per broadcast):

    :ivar broadcasts: broadcasts dispatched on this node (its own and those
        from other nodes).
    :ivar deliveries: subscribers they reached (the sender, a subscriber
        that raised and one whose serializer could not encode a broadcast
        are not counted).
    :ivar fastlane_deliveries: of those, frames written straight to a
        client's connection (the fastlane).
    """

    log = Logger()

    def __init__(
        self, node_name: str = "nonode@nohost", adapter: Adapter | None = None, *, clock: Any = None
    ) -> None:
        self.node_name = node_name
        self.adapter = adapter
        self._rlog = RateLimitedLog(Logger(PubSub.log.namespace), clock)
        self._topics: dict[str, dict[Subscriber, None]] = {}
        self._snapshots: dict[str, tuple[Subscriber, ...]] = {}
        self.broadcasts = 0
        self.deliveries = 0
        self.fastlane_deliveries = 0

    def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Subscribe ``subscriber`` to ``topic``."""
        subscribers = self._topics.get(topic)
        if subscribers is None:
            subscribers = self._topics[topic] = {}
            subscribers[subscriber] = None
            self._snapshots.pop(topic, None)
            self._tell_adapter("topic_subscribed", topic)
            return
        subscribers[subscriber] = None
        self._snapshots.pop(topic, None)

    def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from ``topic``; a no-op if it is not there."""
        subscribers = self._topics.get(topic)
        if subscribers is not None and subscribers.pop(subscriber, 0) is None:
            self._snapshots.pop(topic, None)
            if not subscribers:
                del self._topics[topic]
                self._tell_adapter("topic_unsubscribed", topic)

    def topics(self) -> list[str]:
        """The topics that have subscribers on this node."""
        return list(self._topics)

    def prepare(self, topic: str) -> Deferred[None] | None:
        """
        Get ready for a subscriber of ``topic`` that must miss no broadcast
        from another node from the moment it is added: the channel runtime
        calls this when a join succeeds, and waits for the Deferred, if
        any, before it subscribes the channel and sends the join's reply.

        :returns: ``None`` when nothing needs waiting (no adapter, an
            adapter that sends every broadcast everywhere, or every other
            node known to send this one the topic already), else a Deferred
            that fires with ``None`` (never fails) once the adapter has made
            sure of it (:meth:`InterestAdapter.prepare_interest`), or after
            the adapter's timeout.  Cancelling it is harmless.
        """
        adapter = self.adapter
        if adapter is None:
            return None
        prepare = getattr(adapter, "prepare_interest", None)
        if prepare is None:
            return None
        try:
            return prepare(topic)  # type: ignore[no-any-return]
        except Exception:
            self._rlog.failure(
                "PubSub adapter failed in prepare_interest({topic})", topic=truncate_repr(topic),
                level=LogLevel.error,
            )
            return None

    def _tell_adapter(self, hook: str, topic: str) -> None:
        # Only on a topic's first and last subscriber: never on the broadcast path.
        method = getattr(self.adapter, hook, None)
        if method is not None:
            try:
                method(topic)
            except Exception:
                self.log.failure("PubSub adapter failed in {hook}({topic!r})", hook=hook, topic=topic)

    def subscribers(self, topic: str) -> tuple[Subscriber, ...]:
        """The subscribers of ``topic``, in subscription order."""
        snapshot = self._snapshots.get(topic)
        if snapshot is None:
            snapshot = tuple(self._topics.get(topic, ()))
            if snapshot:
                self._snapshots[topic] = snapshot
        return snapshot

    def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Send to every subscriber of ``topic`` on every node."""
        self.broadcast_from(None, topic, event, payload)

    def broadcast_from(self, sender: Subscriber | None, topic: str, event: str, payload: Any) -> None:
        """
        Send to every subscriber of ``topic`` on every node but ``sender``.
        """
        message = _broadcast(topic, event, payload)
        if self.adapter is not None:
            self.adapter.broadcast(message)
        self.dispatch(message, sender)

    def local_broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Send to the subscribers of ``topic`` on this node only."""
        self.dispatch(_broadcast(topic, event, payload))

    def local_broadcast_from(
        self, sender: Subscriber | None, topic: str, event: str, payload: Any
    ) -> None:
        """Send to the subscribers of ``topic`` on this node but ``sender``."""
        self.dispatch(_broadcast(topic, event, payload), sender)

    def direct_broadcast(self, node: str, topic: str, event: str, payload: Any) -> bool:
        """
        Send to the subscribers of ``topic`` on the node named ``node``
        (this one included).  Returns ``False`` when that node is not
        connected: the message is dropped, as Phoenix drops it.
        """
        message = _broadcast(topic, event, payload)
        if node == self.node_name:
            self.dispatch(message)
            return True
        if self.adapter is None:
            return False
        return self.adapter.direct_broadcast(node, message)

    def dispatch(self, message: Broadcast, sender: Subscriber | None = None) -> None:
        """
        Deliver ``message`` to this node's subscribers, skipping ``sender``.

        This is the broadcast hot path: one encoding per serializer, then one
        ``send_frame`` per fastlane subscriber.
        """
        subscribers = self.subscribers(message.topic)
        self.broadcasts += 1
        if not subscribers:
            return
        event = message.event
        # serializer → its Frame, or False when it cannot encode the broadcast
        frames: dict[Serializer, Frame | bool] = {}
        # Counted off the fastlane only: subscribers not reached, and those
        # reached through handle_broadcast.
        missed = slow = 0
        for subscriber in subscribers:
            if subscriber is sender:
                missed += 1
                continue
            connection = subscriber.fastlane
            try:
                if connection is not None and event not in subscriber.intercepts:
                    serializer = subscriber.serializer
                    frame = frames.get(serializer)  # type: ignore[arg-type]
                    if frame is None:
                        frame = frames[serializer] = self._fastlane(serializer, message)  # type: ignore[index]
                    if frame is not False:
                        connection.send_frame(frame)  # type: ignore[arg-type]
                    else:
                        missed += 1
                else:
                    subscriber.handle_broadcast(message)
                    slow += 1
            except Exception:
                missed += 1
                self._rlog.failure(
                    "Subscriber {subscriber} failed on {topic} {event}",
                    subscriber=truncate_repr(subscriber),
                    topic=truncate_repr(message.topic),
                    event=truncate_repr(event),
                    level=LogLevel.error,
                )
        reached = len(subscribers) - missed
        self.deliveries += reached
        self.fastlane_deliveries += reached - slow

    def _fastlane(self, serializer: Serializer, message: Broadcast) -> Frame | bool:
        """``serializer``'s frame for ``message``, or ``False`` (logged) if it cannot encode it."""
        try:
            return serializer.fastlane(message)
        except Exception:
            self._rlog.failure(
                "{serializer} cannot encode a broadcast {event} on {topic}; "
                "dropped for its fastlane subscribers",
                serializer=type(serializer).__name__,
                topic=truncate_repr(message.topic),
                event=truncate_repr(message.event),
                level=LogLevel.error,
            )
            return False


def _broadcast(topic: str, event: str, payload: Any) -> Broadcast:
    # Phoenix: "a broadcast payload must be a map or {:binary, _}".
    if not isinstance(payload, (dict, bytes)):
        raise TypeError(f"a broadcast payload must be a dict or bytes, not {type(payload).__name__}")
    return Broadcast(topic, event, payload)
