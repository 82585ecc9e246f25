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
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.logger import Logger

__all__ = ["DEFAULT_LINGER", "Interest"]

log = Logger()

#: Seconds a topic stays wanted after its last local subscriber left.
DEFAULT_LINGER = 5.0


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
        self._leaving: dict[str, Any] = {}

    def gained(self, topic: str) -> None:
        """``topic`` has its first local subscriber."""
        call = self._leaving.pop(topic, None)
        if call is not None:
            call.cancel()  # back before it was dropped: still subscribed upstream
            return
        if topic in self.topics:
            return
        self.topics.add(topic)
        self._call(self._subscribe, topic)

    def lost(self, topic: str) -> None:
        """``topic`` has lost its last local subscriber."""
        if topic not in self.topics or topic in self._leaving:
            return
        if self.linger == 0:
            self._drop(topic)
        else:
            self._leaving[topic] = self.clock.callLater(self.linger, self._expire, topic)

    def update(self, topics: Iterable[str]) -> None:
        """Want each of ``topics`` (those that have local subscribers now)."""
        for topic in topics:
            self.gained(topic)

    def lingering(self, topic: str) -> bool:
        """Whether ``topic`` is only wanted for its linger delay."""
        return topic in self._leaving

    def stop(self) -> None:
        """Cancel the pending unsubscriptions (the adapter is going away)."""
        for call in self._leaving.values():
            if call.active():
                call.cancel()
        self._leaving.clear()

    def _expire(self, topic: str) -> None:
        del self._leaving[topic]
        self._drop(topic)

    def _drop(self, topic: str) -> None:
        self.topics.discard(topic)
        self._call(self._unsubscribe, topic)

    def _call(self, f: Callable[[str], None], topic: str) -> None:
        try:
            f(topic)
        except Exception:
            log.failure("Interest callback failed for topic {topic}", topic=topic)
