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

A join waits until its topic's news has reached every peer
(:meth:`InterestAnnouncer.prepare`): the last ``interest_update`` of a turn
that adds topics (or the ``interest_all`` that replaces it) is a call with an
answer, and the peer answers once it has read everything before it on the
link (an :class:`Acknowledgements`).  A whole set needs no answer: until the
peer has read all of it, it sends this node everything.  A link that goes
away answers with its failure; a peer that does not answer within
``timeout`` seconds is named in a warning, and the joins go on.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .._log import RateLimitedLog, truncate_repr
from ..adapters.interest import DEFAULT_LINGER, DEFAULT_PREPARE_TIMEOUT, Confirmation, Interest

__all__ = [
    "Acknowledgements",
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


class Acknowledgements(Confirmation):
    """
    The peers' answers to one interest message, sent on every link, that the
    joins on the topics it adds wait for (a
    :class:`~twisted_phoenix.adapters.interest.Confirmation`).  It fires once
    every link it was sent on has answered (or failed: a link gone), or at
    its timeout, when ``on_slow`` is called with it.

    :ivar topics: the topics it adds.
    :ivar unanswered: the links that have not answered yet.
    """

    __slots__ = ("topics", "unanswered", "on_done", "_on_slow", "_sent")

    def __init__(
        self,
        clock: Any,
        timeout: float,
        on_slow: Callable[[Acknowledgements], None],
        on_done: Callable[[Acknowledgements], None],
    ) -> None:
        super().__init__(clock, timeout, self._slow)
        self.topics: list[str] = []
        self.unanswered: dict[Any, None] = {}
        self.on_done = on_done
        self._on_slow = on_slow
        self._sent = False

    def expect(self, link: Any, answer: Deferred[Any]) -> None:
        """Wait for ``link``'s ``answer`` (its failure counts as an answer)."""
        self.unanswered[link] = None
        answer.addBoth(self._answered, link)

    def sent(self) -> None:
        """The message is on every link: fire once all have answered (at once if there are none)."""
        self._sent = True
        if not self.unanswered:
            self.fire()

    def fire(self) -> None:
        if not self.done:
            super().fire()
            self.on_done(self)

    def _answered(self, result: Any, link: Any) -> None:
        self.unanswered.pop(link, None)
        if self._sent and not self.unanswered:
            self.fire()

    def _slow(self) -> None:
        self._on_slow(self)


class InterestAnnouncer:
    """
    What this node tells its peers it wants (see the module docstring).

    :param clock: provides ``callLater`` (the reactor, or a ``task.Clock``).
    :param links: called with no argument, returns the links to tell now:
        objects with ``send_interest(method, *args, answer=False)``, which
        returns the answer's Deferred when ``answer`` is true (``None`` if
        the link is gone).
    :param linger: seconds a topic stays wanted after its last local subscriber left.
    :param max_topics: past this many wanted topics, ask for everything.
    :param batch: the most topics in one message.
    :param max_length: while a wanted topic is longer (in characters), ask for everything.
    :param timeout: seconds a join waits at most for the peers' answers
        (:meth:`prepare`).

    :ivar everything: whether this node asks its peers for everything now.
    :ivar pending: changes not sent yet: topic → wanted.
    :ivar slow: joins that went on after ``timeout`` without every peer's
        answer (for metrics; it only grows).
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
        timeout: float = DEFAULT_PREPARE_TIMEOUT,
    ) -> None:
        if max_topics < 1 or batch < 1 or max_length < 1:
            raise ValueError("max_topics, batch and max_length must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.clock = clock
        self.links = links
        self.max_topics = max_topics
        self.batch = batch
        self.max_length = max_length
        self.timeout = timeout
        self.interest = Interest(clock, self._gained, self._lost, linger)
        self.everything = False
        self.pending: dict[str, bool] = {}
        self.slow = 0
        self._call: Any = None
        self._long = 0
        # The answers the next flush asks for (joins wait for them already).
        self._next: Acknowledgements | None = None
        # Topics whose add is sent, not yet answered by every peer.
        self._unconfirmed: dict[str, Acknowledgements] = {}
        # The answers to the last interest_all, while awaited.
        self._everything_acks: Acknowledgements | None = None
        self._rlog = RateLimitedLog(log, clock)

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

    def prepare(self, topic: str) -> Acknowledgements | None:
        """
        Make sure every peer will send this node the broadcasts of
        ``topic``, which a join is about to subscribe to: want it at once
        (for ``linger`` plus twice ``timeout`` seconds at least, unless a
        subscriber comes meanwhile) and return the answers to wait for, or
        ``None`` when every peer knows already (or there is none).
        """
        interest = self.interest
        if (
            topic in interest.topics and topic not in interest.leaving and not self.everything
            and topic not in self.pending and topic not in self._unconfirmed
        ):
            return None  # the common case: a topic with local subscribers, acknowledged
        interest.prepare(topic, interest.linger + 2 * self.timeout)
        if self.everything:
            acks = self._everything_acks
            return None if acks is None or acks.done else acks
        if self.pending.get(topic):
            acks = self._next
            if acks is None:
                if not any(True for _ in self.links()):
                    return None  # nobody to tell: a peer linked later gets the whole set
                acks = self._next = self._acknowledgements()
                self._schedule()
            return acks
        return self._unconfirmed.get(topic)

    def _acknowledgements(self) -> Acknowledgements:
        return Acknowledgements(self.clock, self.timeout, self._slow, self._confirmed)

    def _confirmed(self, acks: Acknowledgements) -> None:
        unconfirmed = self._unconfirmed
        for topic in acks.topics:
            if unconfirmed.get(topic) is acks:
                del unconfirmed[topic]
        if self._everything_acks is acks:
            self._everything_acks = None

    def _slow(self, acks: Acknowledgements) -> None:
        self.slow += acks.waiting
        peers = sorted(str(getattr(link, "peer", link)) for link in acks.unanswered)
        self._rlog.warn(
            "Node(s) {peers} did not acknowledge within {timeout:g} s that this node wants {topics}: "
            "{joins} join(s) went on without it (a broadcast they send meanwhile may miss this node)",
            peers=", ".join(peers), timeout=self.timeout, joins=acks.waiting,
            topics=truncate_repr(acks.topics) if acks.topics else "every topic",
        )

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
                self._everything_acks = None
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
        # The joins waiting for the next flush wait for this instead.
        acks, self._next = self._next, None
        if acks is None:
            acks = self._acknowledgements()
        log.info(
            "This node wants {n} topics (more than {max}, or one longer than {length} characters): "
            "its peers send it every broadcast", n=len(self.interest.topics), max=self.max_topics,
            length=self.max_length,
        )
        self._everything_acks = acks
        for link in list(self.links()):
            answer = link.send_interest("interest_all", answer=True)
            if answer is not None:
                acks.expect(link, answer)
        acks.sent()

    # -- telling the peers ------------------------------------------------------------

    def announce(self, link: Any) -> None:
        """
        Tell a new link the whole set (or that this node wants everything).
        No answer is needed: until the peer has read all of it, it sends
        this node everything.
        """
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
        """
        Send the pending changes to every link now.  When they add topics
        (or joins wait for them), the last message on each link asks for
        an answer.
        """
        self._cancel()
        pending, self.pending = self.pending, {}
        acks, self._next = self._next, None
        if not pending:
            if acks is not None:
                acks.sent()
            return
        adds = [topic for topic, wanted in pending.items() if wanted]
        removes = [topic for topic, wanted in pending.items() if not wanted]
        if adds and acks is None:
            acks = self._acknowledgements()
        if acks is not None:
            acks.topics = adds
            unconfirmed = self._unconfirmed
            for topic in adds:
                unconfirmed[topic] = acks
        links = list(self.links())
        batch = self.batch
        count = max(len(adds), len(removes))
        for start in range(0, count, batch):
            a, r = adds[start : start + batch], removes[start : start + batch]
            if acks is not None and start + batch >= count:
                for link in links:
                    answer = link.send_interest("interest_update", a, r, answer=True)
                    if answer is not None:
                        acks.expect(link, answer)
            else:
                for link in links:
                    link.send_interest("interest_update", a, r)
        if acks is not None:
            acks.sent()

    def stop(self) -> None:
        """Cancel the pending flush and the lingering topics' timers; no join waits any more."""
        self._cancel()
        self.interest.stop()
        waited = {*self._unconfirmed.values(), self._next, self._everything_acks}
        self._next = None
        for acks in waited:
            if acks is not None:
                acks.fire()

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
