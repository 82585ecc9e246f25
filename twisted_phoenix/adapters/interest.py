# -*- test-case-name: tests.test_redis_adapter -*-
"""
Which topics a node wants from the other nodes: interest-based routing.

A node wants a topic from its first local subscriber until a little after
its last one leaves (``linger``, 5 s by default), so that a client that
rejoins at once, or a topic whose subscribers churn, does not subscribe and
unsubscribe upstream each time.  :class:`~twisted_phoenix.pubsub.PubSub`
tells the adapter of the first and the last local subscriber
(``topic_subscribed``/``topic_unsubscribed``); the adapter keeps an
:class:`Interest` and subscribes upstream (a Redis channel, say) when it
calls ``subscribe`` and unsubscribes when it calls ``unsubscribe``.

A join does not wait for its first local subscriber to be announced: before
the channel subscribes, :meth:`~twisted_phoenix.pubsub.PubSub.prepare` asks
the adapter (``prepare_interest``) to want the topic at once
(:meth:`Interest.prepare`) and to say when the other nodes will send it the
topic's broadcasts; the adapter answers with a :class:`Confirmation`'s
Deferred, which fires then, or after ``timeout`` seconds at most.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

__all__ = ["DEFAULT_LINGER", "DEFAULT_PREPARE_TIMEOUT", "Confirmation", "Interest"]

log = Logger()

#: Seconds a topic stays wanted after its last local subscriber left.
DEFAULT_LINGER = 5.0

#: Seconds a join waits at most for the other nodes to know that this node
#: wants its topic (``Node.prepare_timeout``, ``RedisAdapter.prepare_timeout``).
DEFAULT_PREPARE_TIMEOUT = 1.0


class Interest:
    """
    The topics a node wants, with a delay before it stops wanting one.

    :param clock: provides ``callLater`` (the reactor, or a ``task.Clock``).
    :param subscribe: called with a topic when it becomes wanted.
    :param unsubscribe: called with a topic ``linger`` seconds after its
        last local subscriber left, unless one came back meanwhile.
    :param linger: that delay, in seconds (0: at once).
    """

    def __init__(
        self,
        clock: Any,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if linger < 0:
            raise ValueError("linger cannot be negative")
        self.clock = clock
        self.linger = linger
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        #: The wanted topics, those lingering included.
        self.topics: set[str] = set()
        #: The topics wanted only until a timer fires (lingering, or held
        #: for a join by :meth:`prepare`): topic → its delayed call.
        self.leaving: dict[str, Any] = {}

    def gained(self, topic: str) -> None:
        """``topic`` has its first local subscriber."""
        call = self.leaving.pop(topic, None)
        if call is not None:
            call.cancel()  # back before it was dropped: still subscribed upstream
            return
        if topic in self.topics:
            return
        self.topics.add(topic)
        self._call(self._subscribe, topic)

    def lost(self, topic: str) -> None:
        """``topic`` has lost its last local subscriber."""
        if topic not in self.topics or topic in self.leaving:
            return
        if self.linger == 0:
            self._drop(topic)
        else:
            self.leaving[topic] = self.clock.callLater(self.linger, self._expire, topic)

    def prepare(self, topic: str, hold: float) -> bool:
        """
        Want ``topic`` now, before its first local subscriber comes (a join
        waiting for the other nodes to know): for ``hold`` seconds at least,
        as if a subscriber had left then, unless one comes meanwhile.  A
        topic wanted already stays so; one lingering lingers ``hold``
        seconds at least.  Returns whether the topic is newly wanted.
        """
        call = self.leaving.get(topic)
        if call is not None:
            if call.getTime() - self.clock.seconds() < hold:
                call.reset(hold)
            return False
        if topic in self.topics:
            return False
        self.topics.add(topic)
        self.leaving[topic] = self.clock.callLater(hold, self._expire, topic)
        self._call(self._subscribe, topic)
        return True

    def update(self, topics: Iterable[str]) -> None:
        """Want each of ``topics`` (those that have local subscribers now)."""
        for topic in topics:
            self.gained(topic)

    def lingering(self, topic: str) -> bool:
        """Whether ``topic`` is only wanted for its linger delay."""
        return topic in self.leaving

    def stop(self) -> None:
        """Cancel the pending unsubscriptions (the adapter is going away)."""
        for call in self.leaving.values():
            if call.active():
                call.cancel()
        self.leaving.clear()

    def _expire(self, topic: str) -> None:
        del self.leaving[topic]
        self._drop(topic)

    def _drop(self, topic: str) -> None:
        self.topics.discard(topic)
        self._call(self._unsubscribe, topic)

    def _call(self, f: Callable[[str], None], topic: str) -> None:
        try:
            f(topic)
        except Exception:
            log.failure("Interest callback failed for topic {topic}", topic=topic)


class Confirmation:
    """
    Joins waiting for one piece of news to be confirmed: the other nodes'
    answers to an interest message, or Redis's confirmation of a
    ``SUBSCRIBE``.  Each waits ``timeout`` seconds at most, counted from the
    first one.

    :param clock: provides ``callLater``.
    :param timeout: the longest wait, in seconds.
    :param on_timeout: called (with no argument) when the timeout fires
        before the confirmation; it logs who was slow.

    :ivar done: whether it fired (confirmed, or timed out): later joins do
        not wait for it.
    :ivar timed_out: whether it fired because of the timeout.
    """

    __slots__ = ("clock", "timeout", "on_timeout", "done", "timed_out", "_waiters", "_timer")

    def __init__(self, clock: Any, timeout: float, on_timeout: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.done = False
        self.timed_out = False
        self._waiters: list[Deferred[None]] = []
        self._timer: Any = None

    def wait(self) -> Deferred[None]:
        """A Deferred firing (with ``None``, never failing) once confirmed or timed out."""
        d: Deferred[None] = Deferred()
        if self.done:
            d.callback(None)
            return d
        self._waiters.append(d)
        if self._timer is None:
            self._timer = self.clock.callLater(self.timeout, self._expire)
        return d

    @property
    def waiting(self) -> int:
        """Joins waiting now."""
        return len(self._waiters)

    def fire(self) -> None:
        """Confirmed: every waiting join goes on (a no-op once done)."""
        if self.done:
            return
        self.done = True
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:  # a join cancelled meanwhile
                d.callback(None)

    def _expire(self) -> None:
        self._timer = None
        self.timed_out = True
        if self.on_timeout is not None:
            try:
                self.on_timeout()
            except Exception:
                log.failure("Logging a confirmation's timeout failed")
        self.fire()
