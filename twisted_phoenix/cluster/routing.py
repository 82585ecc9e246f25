# -*- test-case-name: tests.test_interest -*-
"""
Interest-based routing on the cluster links: each node tells its peers
which topics it has subscribers for, and a broadcast crosses only to the
nodes that want its topic.

Two halves, one per direction of a link:

* :class:`InterestAnnouncer`, what this node tells its peers.  It keeps an
  :class:`~twisted_phoenix.adapters.interest.Interest` (the component the
  Redis adapter uses): a topic is wanted from its first local subscriber
  until ``linger`` seconds after its last one left.  A new link gets the
  whole set (``interest_set``, in parts of at most :data:`BATCH` topics);
  then every change goes to every link as it happens (``interest_update``:
  the topics added and removed), batched over one reactor turn and sent
  before anything else the node sends on its links, so that an add goes
  out in the same write it would have gone out in unbatched.  A node that
  wants more than ``max_topics`` topics, or one topic longer than
  :data:`MAX_TOPIC_LENGTH`, asks for everything instead (``interest_all``)
  until it is back under three quarters of ``max_topics``.
* :class:`PeerInterest`, what one peer told us over one link.  Until it has
  told us anything (a new link, a restarted peer, a relink) it gets every
  broadcast; so it does while it asks for everything, and when it sends more
  than this node accepts (a set over ``max_topics``, a message over
  :data:`BATCH` topics, a topic over :data:`MAX_TOPIC_LENGTH` characters or
  not a string): it gets every broadcast until it sends a whole set again.

A link carries its messages in order, so a peer's view of this node's set is
exact once it has read what this node wrote: deltas sent before a link's
whole set are ignored by the peer (it knows nothing yet), and those sent after
apply to that set.  Interest messages are never dropped, even on a congested
link (they are small; a peer that stops reading is dropped by the heartbeat).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.logger import Logger

from ..adapters.interest import DEFAULT_LINGER, Interest

__all__ = [
    "BATCH",
    "DEFAULT_MAX_TOPICS",
    "MAX_TOPIC_LENGTH",
    "InterestAnnouncer",
    "PeerInterest",
]

log = Logger()

#: Topics in one interest message: a part of a whole set, or the adds (and,
#: apart, the removes) of an update (``Node.interest_batch``); a peer that
#: sends more in one message is sent everything.  Every node of a cluster
#: should use the same.
BATCH = 1000

#: The longest topic (in characters) a node declares
#: (``Node.interest_topic_length``); a node that wants a longer one asks for
#: everything while it does; a peer that declares one is sent everything.
MAX_TOPIC_LENGTH = 1024

#: Topics a node declares at most (``Node(max_interest_topics=)``,
#: ``--interest-max-topics``): past it, it asks for everything; a peer that
#: declares more is sent everything.
DEFAULT_MAX_TOPICS = 100_000


def _acceptable(topics: list[Any], batch: int, max_length: int) -> str | None:
    """Why ``topics`` is not an acceptable list of declared topics, or ``None``."""
    if len(topics) > batch:
        return f"{len(topics)} topics in one message (at most {batch})"
    for topic in topics:
        if type(topic) is not str:
            return f"a topic that is not a string ({type(topic).__name__})"
        if len(topic) > max_length:
            return f"a topic of {len(topic)} characters (at most {max_length})"
    return None


class PeerInterest:
    """
    What one peer wants, as it said over one link.

    :param peer: its name, for log lines.
    :param max_topics: the most topics it may declare; past it, it is sent everything.
    :param batch: the most topics in one of its messages.
    :param max_length: the longest topic (in characters) it may declare.

    :ivar topics: the topics it wants, or ``None``: it is sent every
        broadcast (it has said nothing yet, it asked for everything, or it
        said too much).
    :ivar state: ``"unknown"``, ``"building"`` (a whole set arriving),
        ``"set"``, ``"all"`` (it asked for everything), ``"overflow"`` (it
        said too much) or ``"discarding"`` (the rest of a set that was too
        large is still arriving).
    """

    __slots__ = ("peer", "max_topics", "batch", "max_length", "topics", "state", "_building")

    def __init__(
        self, peer: str | None, max_topics: int = DEFAULT_MAX_TOPICS, batch: int = BATCH,
        max_length: int = MAX_TOPIC_LENGTH,
    ) -> None:
        self.peer = peer
        self.max_topics = max_topics
        self.batch = batch
        self.max_length = max_length
        self.topics: set[str] | None = None
        self.state = "unknown"
        self._building: set[str] | None = None

    def __repr__(self) -> str:
        size = "" if self.topics is None else f" {len(self.topics)} topics"
        return f"<PeerInterest {self.peer} {self.state}{size}>"

    def wants(self, topic: str) -> bool:
        """Whether a broadcast on ``topic`` must cross to this peer."""
        topics = self.topics
        return topics is None or topic in topics

    def set_part(self, topics: list[Any], last: bool) -> None:
        """One part of the peer's whole set; the set holds once the ``last`` part is in."""
        if self.state == "discarding":
            # The rest of a set that was already too large.
            if last:
                self.state = "overflow"
            return
        problem = _acceptable(topics, self.batch, self.max_length)
        if self._building is None:
            self._building = set()
            self.topics = None
            self.state = "building"
        if problem is None:
            self._building.update(topics)
            if len(self._building) > self.max_topics:
                problem = f"more than {self.max_topics} topics"
        if problem is not None:
            self._overflow(problem)
            if not last:
                self.state = "discarding"
            return
        if last:
            self.topics, self._building = self._building, None
            self.state = "set"

    def update(self, adds: list[Any], removes: list[Any]) -> None:
        """Topics the peer gained and lost; ignored unless it has a whole set."""
        topics = self.topics
        if topics is None or self.state != "set":
            return  # it is sent everything until its whole set is in
        problem = _acceptable(adds, self.batch, self.max_length) or _acceptable(
            removes, self.batch, self.max_length
        )
        if problem is None:
            topics.difference_update(removes)
            topics.update(adds)
            if len(topics) > self.max_topics:
                problem = f"more than {self.max_topics} topics"
        if problem is not None:
            self._overflow(problem)

    def everything(self) -> None:
        """The peer asks for every broadcast."""
        self.topics = self._building = None
        self.state = "all"

    def _overflow(self, problem: str) -> None:
        self.topics = self._building = None
        self.state = "overflow"
        log.warn(
            "Node {peer} declared too much interest ({problem}): sending it every broadcast "
            "until it declares a whole set again", peer=self.peer, problem=problem,
        )


class InterestAnnouncer:
    """
    What this node tells its peers it wants (see the module docstring).

    :param clock: provides ``callLater`` (the reactor, or a ``task.Clock``).
    :param links: called with no argument, returns the links to tell now:
        objects with ``send_interest(method, *args)``.
    :param linger: seconds a topic stays wanted after its last local subscriber left.
    :param max_topics: past this many wanted topics, ask for everything.
    :param batch: the most topics in one message.
    :param max_length: while a wanted topic is longer (in characters), ask for everything.

    :ivar everything: whether this node asks its peers for everything now.
    :ivar pending: changes not sent yet: topic → wanted.
    """

    def __init__(
        self,
        clock: Any,
        links: Callable[[], Iterable[Any]],
        *,
        linger: float = DEFAULT_LINGER,
        max_topics: int = DEFAULT_MAX_TOPICS,
        batch: int = BATCH,
        max_length: int = MAX_TOPIC_LENGTH,
    ) -> None:
        if max_topics < 1 or batch < 1 or max_length < 1:
            raise ValueError("max_topics, batch and max_length must be at least 1")
        self.clock = clock
        self.links = links
        self.max_topics = max_topics
        self.batch = batch
        self.max_length = max_length
        self.interest = Interest(clock, self._gained, self._lost, linger)
        self.everything = False
        self.pending: dict[str, bool] = {}
        self._call: Any = None
        self._long = 0

    @property
    def topics(self) -> set[str]:
        """The topics this node wants now (those lingering included)."""
        return self.interest.topics

    # -- PubSub's news, through Interest --------------------------------------------

    def gained(self, topic: str) -> None:
        """``topic`` has its first local subscriber."""
        self.interest.gained(topic)

    def lost(self, topic: str) -> None:
        """``topic`` has lost its last local subscriber."""
        self.interest.lost(topic)

    def _gained(self, topic: str) -> None:
        if len(topic) > self.max_length:
            self._long += 1
        if self.everything:
            return
        if self._long or len(self.interest.topics) > self.max_topics:
            self._ask_everything()
            return
        self.pending[topic] = True
        self._schedule()

    def _lost(self, topic: str) -> None:
        if len(topic) > self.max_length:
            self._long -= 1
        if self.everything:
            if not self._long and len(self.interest.topics) <= self.max_topics * 3 // 4:
                self.everything = False
                log.info("This node wants {n} topics again: telling its peers which",
                         n=len(self.interest.topics))
                for link in list(self.links()):
                    self.announce(link)
            return
        self.pending[topic] = False
        self._schedule()

    def _ask_everything(self) -> None:
        self.everything = True
        self._cancel()
        self.pending.clear()
        log.info(
            "This node wants {n} topics (more than {max}, or one longer than {length} characters): "
            "its peers send it every broadcast", n=len(self.interest.topics), max=self.max_topics,
            length=self.max_length,
        )
        for link in list(self.links()):
            link.send_interest("interest_all")

    # -- telling the peers ------------------------------------------------------------

    def announce(self, link: Any) -> None:
        """Tell a new link the whole set (or that this node wants everything)."""
        if self.everything:
            link.send_interest("interest_all")
            return
        topics = list(self.interest.topics)
        if not topics:
            link.send_interest("interest_set", [], True)
            return
        batch = self.batch
        for start in range(0, len(topics), batch):
            link.send_interest("interest_set", topics[start : start + batch], start + batch >= len(topics))

    def flush(self) -> None:
        """Send the pending changes to every link now."""
        self._cancel()
        pending, self.pending = self.pending, {}
        if not pending:
            return
        adds = [topic for topic, wanted in pending.items() if wanted]
        removes = [topic for topic, wanted in pending.items() if not wanted]
        links = list(self.links())
        batch = self.batch
        for start in range(0, max(len(adds), len(removes)), batch):
            a, r = adds[start : start + batch], removes[start : start + batch]
            for link in links:
                link.send_interest("interest_update", a, r)

    def stop(self) -> None:
        """Cancel the pending flush and the lingering topics' timers."""
        self._cancel()
        self.interest.stop()

    def _schedule(self) -> None:
        if self._call is None:
            self._call = self.clock.callLater(0, self._flush_later)

    def _flush_later(self) -> None:
        self._call = None
        self.flush()

    def _cancel(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None
