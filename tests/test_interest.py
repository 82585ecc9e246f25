"""
Tests for :mod:`twisted_phoenix.cluster.routing`, the interest messages of
:mod:`twisted_phoenix.cluster.link` and the routing in
:class:`~twisted_phoenix.cluster.node.Node`'s broadcasts: in memory, with a
``task.Clock`` and fake links.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.spread import jelly
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.cluster import node as node_module
from twisted_phoenix.cluster.link import Link, RejectedCall
from twisted_phoenix.cluster.node import Node
from twisted_phoenix.cluster.routing import (
    BATCH,
    DEFAULT_MAX_TOPICS,
    MAX_TOPIC_LENGTH,
    InterestAnnouncer,
    PeerInterest,
)
from twisted_phoenix.message import Broadcast
from twisted_phoenix.pubsub import CallbackSubscriber, PubSub

from ._cluster import LogWatcher
from .test_cluster_link import FakeRemote, make_link


def watch(test: SynchronousTestCase) -> LogWatcher:
    logs = LogWatcher(Clock())
    globalLogPublisher.addObserver(logs)
    test.addCleanup(globalLogPublisher.removeObserver, logs)
    return logs


class PeerInterestTests(SynchronousTestCase):
    """What a peer said it wants: every broadcast until a whole set is in, then only that set."""

    def test_unknown_wants_everything(self) -> None:
        """A peer that has said nothing is sent every broadcast."""
        peer = PeerInterest("p")
        self.assertEqual(peer.state, "unknown")
        self.assertIsNone(peer.topics)
        self.assertTrue(peer.wants("anything"))

    def test_whole_set(self) -> None:
        """Once the last part of its set is in, the peer wants those topics only."""
        peer = PeerInterest("p")
        peer.set_part(["a", "b"], False)
        self.assertEqual(peer.state, "building")
        self.assertTrue(peer.wants("z"), "a set being built is not yet the peer's")
        peer.set_part(["c"], True)
        self.assertEqual((peer.state, peer.topics), ("set", {"a", "b", "c"}))
        self.assertTrue(peer.wants("c"))
        self.assertFalse(peer.wants("z"))

    def test_empty_set(self) -> None:
        """An empty set: the peer wants nothing."""
        peer = PeerInterest("p")
        peer.set_part([], True)
        self.assertEqual(peer.topics, set())
        self.assertFalse(peer.wants("a"))

    def test_update(self) -> None:
        """Adds and removes change a whole set."""
        peer = PeerInterest("p")
        peer.set_part(["a", "b"], True)
        peer.update(["c"], ["a", "never-there"])
        self.assertEqual(peer.topics, {"b", "c"})

    def test_update_before_set_ignored(self) -> None:
        """Changes sent before the peer's whole set (a link not announced yet) are ignored: the set follows."""
        peer = PeerInterest("p")
        peer.update(["a"], [])
        self.assertEqual((peer.state, peer.topics), ("unknown", None))
        peer.everything()
        peer.update(["a"], [])
        self.assertEqual((peer.state, peer.topics), ("all", None))

    def test_everything(self) -> None:
        """A peer that asks for everything gets everything; a new set routes again."""
        peer = PeerInterest("p")
        peer.set_part(["a"], True)
        peer.everything()
        self.assertTrue(peer.wants("z"))
        peer.set_part(["b"], True)
        self.assertEqual(peer.topics, {"b"})

    def test_new_set_replaces(self) -> None:
        """A second whole set replaces the first (and while it arrives, everything goes)."""
        peer = PeerInterest("p")
        peer.set_part(["a"], True)
        peer.set_part(["b"], False)
        self.assertTrue(peer.wants("a") and peer.wants("z"))
        peer.set_part(["c"], True)
        self.assertEqual(peer.topics, {"b", "c"})

    def test_too_many_topics_in_set(self) -> None:
        """A set over max_topics: the peer is sent everything, the rest of that set is ignored, logged."""
        logs = watch(self)
        peer = PeerInterest("p", max_topics=3)
        peer.set_part(["a", "b"], False)
        peer.set_part(["c", "d"], False)
        self.assertEqual(peer.state, "discarding")
        self.assertTrue(peer.wants("z"))
        peer.set_part(["e"], False)
        peer.set_part(["f"], True)
        self.assertEqual((peer.state, peer.topics), ("overflow", None))
        self.assertTrue(logs.find("Node p declared too much interest (more than 3 topics)", LogLevel.warn))
        # A set that fits routes again.
        peer.set_part(["a"], True)
        self.assertEqual((peer.state, peer.topics), ("set", {"a"}))

    def test_too_many_topics_by_update(self) -> None:
        """Adds that take a set over max_topics: everything, and later updates are ignored."""
        peer = PeerInterest("p", max_topics=2)
        peer.set_part(["a"], True)
        peer.update(["b"], [])
        self.assertEqual(peer.topics, {"a", "b"})
        peer.update(["c"], [])
        self.assertEqual((peer.state, peer.topics), ("overflow", None))
        peer.update([], ["a", "b", "c"])
        self.assertEqual((peer.state, peer.topics), ("overflow", None))

    def test_message_over_batch(self) -> None:
        """More than BATCH topics in one message: everything (the message is not applied)."""
        logs = watch(self)
        peer = PeerInterest("p")
        peer.set_part([str(i) for i in range(BATCH + 1)], True)
        self.assertEqual((peer.state, peer.topics), ("overflow", None))
        peer.set_part(["a"], True)
        peer.update([], [str(i) for i in range(BATCH + 1)])
        self.assertEqual((peer.state, peer.topics), ("overflow", None))
        self.assertEqual(len(logs.find(f"{BATCH + 1} topics in one message", LogLevel.warn)), 2)

    def test_bad_topics(self) -> None:
        """A topic that is not a string, or is over MAX_TOPIC_LENGTH: everything."""
        for bad in (1, None, b"bytes", ["nested"], "x" * (MAX_TOPIC_LENGTH + 1)):
            peer = PeerInterest("p")
            peer.set_part(["a"], True)
            peer.update(["b", bad], [])
            self.assertEqual((peer.state, peer.topics), ("overflow", None), repr(bad)[:40])
            peer = PeerInterest("p")
            peer.set_part(["a", bad], True)
            self.assertEqual((peer.state, peer.topics), ("overflow", None), repr(bad)[:40])

    def test_longest_topic(self) -> None:
        """A topic of exactly MAX_TOPIC_LENGTH characters is fine."""
        peer = PeerInterest("p")
        peer.set_part(["x" * MAX_TOPIC_LENGTH], True)
        self.assertEqual(peer.state, "set")

    def test_other_limits(self) -> None:
        """The batch and the topic length are the peer's own (a Node's interest_batch, interest_topic_length)."""
        peer = PeerInterest("p", batch=2, max_length=3)
        peer.set_part(["a", "bcd"], True)
        self.assertEqual(peer.topics, {"a", "bcd"})
        peer.update(["x", "y", "z"], [])
        self.assertEqual(peer.state, "overflow")
        peer.set_part(["abcd"], True)
        self.assertEqual(peer.state, "overflow")


class FakeLink:
    """A link as the announcer sees it: records what it is told, and holds the answers asked for."""

    def __init__(self, peer: str = "peer@h") -> None:
        self.peer = peer
        self.sent: list[tuple[Any, ...]] = []
        #: (message index in sent, the answer's Deferred), for each message that asked for one.
        self.answers: list[tuple[int, Deferred[Any]]] = []

    def send_interest(self, method: str, *args: Any, answer: bool = False) -> Deferred[Any] | None:
        self.sent.append((method, *args))
        if not answer:
            return None
        d: Deferred[Any] = Deferred()
        self.answers.append((len(self.sent) - 1, d))
        return d

    def answer(self) -> None:
        """The peer answers every message that asked for an answer."""
        answers, self.answers = self.answers, []
        for _, d in answers:
            d.callback(None)


def _announcer(
    test: SynchronousTestCase, links: list[Any] | None = None, **options: Any
) -> tuple[InterestAnnouncer, Clock, list[Any]]:
    """An announcer on a Clock telling ``links`` (one FakeLink by default), stopped at the test's end."""
    clock = Clock()
    links = [FakeLink()] if links is None else links
    options.setdefault("linger", 5.0)
    announcer = InterestAnnouncer(clock, lambda: links, **options)
    test.addCleanup(announcer.stop)
    return announcer, clock, links


class InterestAnnouncerTests(SynchronousTestCase):
    """What a node tells its peers: its whole set to a new link, then changes, batched per reactor turn."""

    make = _announcer

    def test_add_in_the_same_turn(self) -> None:
        """A topic's first subscriber: the add goes out at the end of the turn (clock.advance(0))."""
        announcer, clock, (link,) = self.make()
        announcer.gained("a")
        self.assertEqual(link.sent, [])
        self.assertEqual(announcer.pending, {"a": True})
        clock.advance(0)
        self.assertEqual(link.sent, [("interest_update", ["a"], [])])
        self.assertEqual(announcer.pending, {})

    def test_batched(self) -> None:
        """Changes within one turn go out as one message, to every link."""
        announcer, clock, links = self.make([FakeLink(), FakeLink()], linger=0)
        announcer.gained("a")
        announcer.gained("b")
        announcer.gained("c")
        announcer.lost("c")
        announcer.gained("a")  # a second first-subscriber: nothing new
        clock.advance(0)
        for link in links:
            self.assertEqual(link.sent, [("interest_update", ["a", "b"], ["c"])])

    def test_flush_now(self) -> None:
        """flush() sends the pending changes at once (before anything else the node sends), and only once."""
        announcer, clock, (link,) = self.make()
        announcer.gained("a")
        announcer.flush()
        self.assertEqual(link.sent, [("interest_update", ["a"], [])])
        clock.advance(0)
        announcer.flush()
        self.assertEqual(len(link.sent), 1)

    def test_linger(self) -> None:
        """The remove goes out linger seconds after the last subscriber left, unless one came back."""
        announcer, clock, (link,) = self.make(linger=5.0)
        announcer.gained("a")
        clock.advance(0)
        announcer.lost("a")
        clock.advance(4.9)
        announcer.gained("a")  # back within the linger: nothing to tell
        clock.advance(10)
        self.assertEqual(link.sent, [("interest_update", ["a"], [])])
        announcer.lost("a")
        clock.advance(4.9)
        self.assertEqual(len(link.sent), 1)
        self.assertEqual(announcer.topics, {"a"})
        clock.advance(0.1)
        clock.advance(0)
        self.assertEqual(link.sent[1:], [("interest_update", [], ["a"])])
        self.assertEqual(announcer.topics, set())

    def test_announce(self) -> None:
        """A new link is told the whole set, lingering topics included."""
        announcer, clock, _ = self.make()
        announcer.gained("a")
        announcer.gained("b")
        announcer.lost("b")
        link = FakeLink()
        announcer.announce(link)
        self.assertEqual(len(link.sent), 1)
        method, topics, last = link.sent[0]
        self.assertEqual((method, sorted(topics), last), ("interest_set", ["a", "b"], True))

    def test_announce_empty(self) -> None:
        """A node with no topics says so: an empty whole set."""
        announcer, _, _ = self.make()
        link = FakeLink()
        announcer.announce(link)
        self.assertEqual(link.sent, [("interest_set", [], True)])

    def test_announce_in_parts(self) -> None:
        """A set over BATCH topics goes in parts of BATCH; only the last says so."""
        announcer, _, _ = self.make()
        for i in range(2 * BATCH + 1):
            announcer.gained(f"t{i}")
        link = FakeLink()
        announcer.announce(link)
        self.assertEqual([(len(m[1]), m[2]) for m in link.sent], [(BATCH, False), (BATCH, False), (1, True)])
        self.assertEqual({t for m in link.sent for t in m[1]}, announcer.topics)

    def test_update_in_parts(self) -> None:
        """More than BATCH changes in one turn go in several messages of at most BATCH adds and BATCH removes."""
        announcer, clock, (link,) = self.make(linger=0)
        for i in range(BATCH + 5):
            announcer.gained(f"t{i}")
        clock.advance(0)
        self.assertEqual([(len(m[1]), len(m[2])) for m in link.sent], [(BATCH, 0), (5, 0)])

    def test_too_many_topics(self) -> None:
        """Past max_topics the node asks for everything, once; under 3/4 of it, it sends its set again."""
        logs = watch(self)
        announcer, clock, (link,) = self.make(linger=0, max_topics=8)
        for i in range(8):
            announcer.gained(f"t{i}")
        clock.advance(0)
        link.sent.clear()
        announcer.gained("t8")
        self.assertTrue(announcer.everything)
        self.assertEqual(link.sent, [("interest_all",)])
        self.assertTrue(logs.find("its peers send it every broadcast"))
        announcer.gained("t9")
        announcer.lost("t9")
        announcer.lost("t8")
        announcer.lost("t7")
        clock.advance(0)
        self.assertEqual(link.sent, [("interest_all",)], "still over 3/4 of the limit")
        new = FakeLink()
        announcer.announce(new)
        self.assertEqual(new.sent, [("interest_all",)])
        announcer.lost("t6")  # 6 topics: 3/4 of 8
        self.assertFalse(announcer.everything)
        method, topics, last = link.sent[-1]
        self.assertEqual((method, sorted(topics), last), ("interest_set", [f"t{i}" for i in range(6)], True))
        announcer.gained("x")
        clock.advance(0)
        self.assertEqual(link.sent[-1], ("interest_update", ["x"], []))

    def test_long_topic(self) -> None:
        """A topic too long to declare: the node asks for everything while it wants it."""
        announcer, clock, (link,) = self.make(linger=0)
        announcer.gained("a")
        long = "x" * (MAX_TOPIC_LENGTH + 1)
        announcer.gained(long)
        self.assertEqual(link.sent, [("interest_all",)])
        announcer.lost(long)
        method, topics, last = link.sent[-1]
        self.assertEqual((method, topics, last), ("interest_set", ["a"], True))

    def test_stop(self) -> None:
        """stop() cancels the pending flush and the lingering topics' timers."""
        announcer, clock, (link,) = self.make(linger=5.0)
        announcer.gained("a")
        announcer.stop()
        clock.advance(0)
        self.assertEqual(link.sent, [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_limits(self) -> None:
        """max_topics, batch and max_length must be at least 1; the defaults are the module's."""
        for bad in ({"max_topics": 0}, {"batch": 0}, {"max_length": 0}):
            self.assertRaises(ValueError, InterestAnnouncer, Clock(), list, **bad)
        announcer = InterestAnnouncer(Clock(), list)
        self.assertEqual((announcer.max_topics, announcer.batch, announcer.max_length),
                         (DEFAULT_MAX_TOPICS, BATCH, MAX_TOPIC_LENGTH))

    def test_other_limits(self) -> None:
        """A smaller batch splits messages so; a smaller max_length makes a longer topic ask for everything."""
        announcer, clock, (link,) = self.make(linger=0, batch=2, max_length=3)
        for topic in ("a", "b", "c"):
            announcer.gained(topic)
        clock.advance(0)
        self.assertEqual(link.sent, [("interest_update", ["a", "b"], []), ("interest_update", ["c"], [])])
        announcer.gained("abcd")
        self.assertEqual(link.sent[-1], ("interest_all",))


class PrepareTests(SynchronousTestCase):
    """InterestAnnouncer.prepare: a join's topic announced at once, and the peers' answers awaited."""

    make = _announcer

    def test_new_topic(self) -> None:
        """The add goes out at the end of the turn, asking for an answer; the join waits for it."""
        announcer, clock, (link,) = self.make()
        acks = announcer.prepare("room")
        self.assertIsNotNone(acks)
        wait = acks.wait()
        self.assertEqual(announcer.topics, {"room"})
        clock.advance(0)
        self.assertEqual(link.sent, [("interest_update", ["room"], [])])
        self.assertEqual([index for index, _ in link.answers], [0])
        self.assertNoResult(wait)
        link.answer()
        self.assertIsNone(self.successResultOf(wait))
        self.assertIsNone(announcer.prepare("room"), "every peer knows now")
        self.assertEqual(len(link.sent), 1)

    def test_batched(self) -> None:
        """Joins on new topics within one turn (the same or others): one message, one answer per link."""
        announcer, clock, links = self.make([FakeLink("p1"), FakeLink("p2")])
        waits = [announcer.prepare(topic).wait() for topic in ("a", "b", "a", "a", "c")]  # type: ignore[union-attr]
        clock.advance(0)
        for link in links:
            self.assertEqual(link.sent, [("interest_update", ["a", "b", "c"], [])])
            self.assertEqual(len(link.answers), 1)
        links[0].answer()
        self.assertEqual([w.called for w in waits], [False] * 5)
        links[1].answer()
        self.assertEqual([w.called for w in waits], [True] * 5)

    def test_answer_after_the_add_is_sent(self) -> None:
        """A join while its topic's add is sent and not yet answered waits for that answer (no new message)."""
        announcer, clock, (link,) = self.make()
        announcer.gained("room")  # a subscriber that is not a join (Endpoint.subscribe): no wait, but answered
        clock.advance(0)
        self.assertEqual(len(link.answers), 1)
        wait = announcer.prepare("room").wait()  # type: ignore[union-attr]
        clock.advance(0)
        self.assertEqual(len(link.sent), 1)
        self.assertNoResult(wait)
        link.answer()
        self.successResultOf(wait)

    def test_flushed_early(self) -> None:
        """A broadcast in the same turn sends the news at once (flush): the join's wait holds on."""
        announcer, clock, (link,) = self.make()
        wait = announcer.prepare("room").wait()  # type: ignore[union-attr]
        announcer.flush()
        self.assertEqual(len(link.answers), 1)
        clock.advance(0)
        self.assertEqual(len(link.sent), 1)
        link.answer()
        self.successResultOf(wait)

    def test_removes_need_no_answer(self) -> None:
        """A turn that only removes topics asks for no answer."""
        announcer, clock, (link,) = self.make(linger=0)
        announcer.gained("a")
        clock.advance(0)
        link.answer()
        announcer.lost("a")
        clock.advance(0)
        self.assertEqual(link.sent[-1], ("interest_update", [], ["a"]))
        self.assertEqual(link.answers, [])

    def test_in_parts(self) -> None:
        """Over BATCH adds: only the last message of the turn asks for an answer (a link is in order)."""
        announcer, clock, (link,) = self.make(batch=2)
        wait = announcer.prepare("a").wait()  # type: ignore[union-attr]
        for topic in "bcde":
            announcer.prepare(topic)
        clock.advance(0)
        self.assertEqual(len(link.sent), 3)
        self.assertEqual([index for index, _ in link.answers], [2])
        link.answer()
        self.successResultOf(wait)

    def test_link_gone(self) -> None:
        """A link that goes away (its answer fails) holds no join; nor does one gone before the message."""
        announcer, clock, links = self.make([FakeLink("p1"), FakeLink("p2")])
        wait = announcer.prepare("room").wait()  # type: ignore[union-attr]
        links[1].send_interest = lambda *a, **k: None  # type: ignore[method-assign]
        clock.advance(0)
        (_, answer), = links[0].answers
        answer.errback(ConnectionLost("gone"))
        self.successResultOf(wait)

    def test_no_links(self) -> None:
        """No peer to tell: nothing to wait for; the topic is wanted all the same."""
        announcer, clock, _ = self.make([])
        self.assertIsNone(announcer.prepare("room"))
        self.assertEqual(announcer.topics, {"room"})

    def test_timeout(self) -> None:
        """A peer that does not answer within timeout: the joins go on, a warning names it; later joins do not wait."""
        logs = watch(self)
        announcer, clock, links = self.make([FakeLink("fast@h"), FakeLink("slow@h")], timeout=0.5)
        waits = [announcer.prepare("room").wait() for _ in range(2)]  # type: ignore[union-attr]
        clock.advance(0)
        links[0].answer()
        clock.advance(0.49)
        self.assertNoResult(waits[0])
        clock.advance(0.01)
        for wait in waits:
            self.successResultOf(wait)
        (line,) = logs.find("Node(s) slow@h did not acknowledge within 0.5 s that this node wants ['room']: "
                            "2 join(s) went on", LogLevel.warn)
        self.assertNotIn("fast@h", line)
        self.assertEqual(announcer.slow, 2)
        self.assertIsNone(announcer.prepare("room"))
        links[1].answer()  # the late answer changes nothing
        self.assertIsNone(announcer.prepare("room"))

    def test_timeout_rate_limited(self) -> None:
        """The warning is rate-limited (a peer that hangs would make one per turn of joins)."""
        logs = watch(self)
        announcer, clock, _ = self.make(timeout=0.1)
        for i in range(30):
            announcer.prepare(f"t{i}").wait()  # type: ignore[union-attr]
            clock.advance(0)
            clock.advance(0.1)
        self.assertEqual(len(logs.find("did not acknowledge", LogLevel.warn)), 10)
        self.assertEqual(announcer.slow, 30)

    def test_held_without_subscriber(self) -> None:
        """A topic prepared for a join that never subscribed is dropped after linger plus twice the timeout."""
        announcer, clock, (link,) = self.make(linger=5.0, timeout=1.0)
        announcer.prepare("room")
        clock.advance(0)
        link.answer()
        clock.advance(6.99)
        self.assertEqual(len(link.sent), 1)
        clock.advance(0.01)
        clock.advance(0)
        self.assertEqual(link.sent[-1], ("interest_update", [], ["room"]))

    def test_lingering(self) -> None:
        """A lingering topic, answered long ago: nothing to wait for, and it stays wanted for the join."""
        announcer, clock, (link,) = self.make(linger=5.0, timeout=1.0)
        announcer.gained("room")
        clock.advance(0)
        link.answer()
        announcer.lost("room")
        clock.advance(4.9)
        self.assertIsNone(announcer.prepare("room"))
        clock.advance(6.9)
        self.assertEqual(announcer.topics, {"room"})

    def test_everything(self) -> None:
        """A join whose topic makes the node ask for everything waits for the peers' answer to interest_all."""
        announcer, clock, (link,) = self.make(linger=0, max_topics=2)
        announcer.gained("a")
        announcer.gained("b")
        clock.advance(0)
        link.answer()
        wait = announcer.prepare("c").wait()  # type: ignore[union-attr]
        self.assertEqual(link.sent[-1], ("interest_all",))
        self.assertEqual(len(link.answers), 1)
        self.assertNoResult(wait)
        link.answer()
        self.successResultOf(wait)
        self.assertIsNone(announcer.prepare("d"))

    def test_everything_takes_over(self) -> None:
        """Joins waiting for the turn's message when the node asks for everything wait for interest_all instead."""
        announcer, clock, (link,) = self.make(linger=0, max_topics=2)
        wait = announcer.prepare("a").wait()  # type: ignore[union-attr]
        announcer.prepare("b")
        announcer.prepare("c")
        self.assertEqual(link.sent, [("interest_all",)])
        clock.advance(0)
        self.assertEqual(len(link.sent), 1)
        link.answer()
        self.successResultOf(wait)

    def test_stop(self) -> None:
        """Joins waiting when the node stops go on."""
        announcer, clock, _ = self.make()
        before = announcer.prepare("a").wait()  # type: ignore[union-attr]
        clock.advance(0)
        after = announcer.prepare("b").wait()  # type: ignore[union-attr]
        announcer.stop()
        self.successResultOf(before)
        self.successResultOf(after)

    def test_timeout_positive(self) -> None:
        """The timeout must be positive."""
        self.assertRaises(ValueError, InterestAnnouncer, Clock(), list, timeout=0)


class Wire:
    """A link whose interest messages cross to another Link, through jelly as over PB."""

    def __init__(self, receiver: Link) -> None:
        self.receiver = receiver

    def send_interest(self, method: str, *args: Any, answer: bool = False) -> Deferred[Any] | None:
        result = self.receiver.received(method, tuple(jelly.unjelly(jelly.jelly(list(args)))))
        return succeed(result) if answer else None


class LinkInterestTests(SynchronousTestCase):
    """The interest messages of a link: typed, routed to its PeerInterest, never dropped."""

    def test_received(self) -> None:
        """interest_set, interest_update and interest_all reach the link's PeerInterest."""
        link, node, _, _ = make_link(self)
        self.assertEqual(link.interest.state, "unknown")
        self.assertIsNone(link.received("interest_set", (["a", "b"], True)))
        self.assertEqual(link.interest.topics, {"a", "b"})
        self.assertIsNone(link.received("interest_update", (["c"], ["a"])))
        self.assertEqual(link.interest.topics, {"b", "c"})
        self.assertIsNone(link.received("interest_all", ()))
        self.assertIsNone(link.interest.topics)
        self.assertEqual(node.calls, [])

    def test_types(self) -> None:
        """Arguments of other types are rejected and logged; the peer's set is untouched."""
        link, _, _, logs = make_link(self)
        link.received("interest_set", (["a"], True))
        for method, args in [
            ("interest_set", (["a"], 1)), ("interest_set", ("a", True)), ("interest_set", (["a"],)),
            ("interest_update", (["a"], None)), ("interest_update", ({"a": 1}, [])), ("interest_all", (1,)),
            ("interest_update", ([object()], [])),
        ]:
            with self.assertRaises(RejectedCall, msg=method):
                link.received(method, args)
        self.assertEqual(link.interest.topics, {"a"})
        self.assertEqual(len(logs.find("Rejected a call from node peer@127.0.0.1", LogLevel.error)), 7)

    def test_before_hello(self) -> None:
        """Interest before the peer's hello is rejected."""
        link, _, _, _ = make_link(self, up=False)
        with self.assertRaises(RejectedCall):
            link.received("interest_set", ([], True))
        self.assertEqual(link.interest.state, "unknown")

    def test_limit_from_node(self) -> None:
        """A link takes its node's max_interest_topics."""
        link, node, _, _ = make_link(self)
        self.assertEqual(link.interest.max_topics, DEFAULT_MAX_TOPICS)
        node.max_interest_topics = 2
        other = Link(node, FakeRemote(), initiator="peer@127.0.0.1", peer="peer@127.0.0.1")  # type: ignore[arg-type]
        self.assertEqual(other.interest.max_topics, 2)

    def test_send(self) -> None:
        """An interest message is one call that wants no answer."""
        link, _, remote, _ = make_link(self)
        link.send_interest("interest_update", ["a"], [])
        self.assertEqual(remote.calls, [("interest_update", (["a"], []), {"pbanswer": False})])

    def test_send_with_answer(self) -> None:
        """Asked for, the answer is the remote call's Deferred; a closed or dead link gives None."""
        link, _, remote, _ = make_link(self)
        answer = link.send_interest("interest_update", ["a"], [], answer=True)
        self.assertEqual(remote.calls, [("interest_update", (["a"], []), {})])
        self.assertIs(answer, remote.answers[0])
        remote.dead = True
        self.assertIsNone(link.send_interest("interest_all", answer=True))
        link.close()
        self.assertIsNone(link.send_interest("interest_all", answer=True))

    def test_never_dropped(self) -> None:
        """Congestion drops broadcasts, never interest messages: the peer must not miss a change."""
        link, _, remote, _ = make_link(self)
        link.buffer_limit = 0
        link.pauseProducing()
        self.assertFalse(link.send_broadcast("t", "e", [b"{}"], False))
        link.send_interest("interest_update", ["a"], [])
        self.assertEqual([c[0] for c in remote.calls], ["interest_update"])

    def test_closed_or_dead(self) -> None:
        """On a closed link, or a dead reference, sending interest does nothing and raises nothing."""
        link, _, remote, _ = make_link(self)
        remote.dead = True
        link.send_interest("interest_all")
        link.close()
        link.send_interest("interest_all")
        self.assertEqual(remote.calls, [])

    def test_round_trip(self) -> None:
        """An announcer's messages, through jelly into a peer's Link, keep the peer's view exact."""
        receiver, _, _, _ = make_link(self)
        clock = Clock()
        wire = Wire(receiver)
        announcer = InterestAnnouncer(clock, lambda: [wire], linger=1.0, max_topics=3 * BATCH)
        self.addCleanup(announcer.stop)
        for i in range(BATCH + 10):
            announcer.gained(f"t{i}")
        announcer.flush()  # before the link's whole set: ignored by the peer
        self.assertEqual(receiver.interest.state, "unknown")
        announcer.announce(wire)
        self.assertEqual(receiver.interest.topics, announcer.topics)
        for i in range(5):
            announcer.lost(f"t{i}")
        announcer.gained("new")
        clock.advance(0)
        self.assertIn("new", receiver.interest.topics)
        self.assertIn("t0", receiver.interest.topics, "lingering")
        clock.advance(1.0)
        clock.advance(0)
        self.assertEqual(receiver.interest.topics, announcer.topics)
        self.assertNotIn("t0", receiver.interest.topics)


class RecordingLink:
    """What Node.broadcast needs of a link, recording into a shared list."""

    def __init__(self, name: str, log: list[Any], topics: set[str] | None = None, interest: bool = True) -> None:
        self.peer = name
        self.log = log
        self.address = None
        self.closed = False
        self.info = {"interest": interest}
        self.answers: list[Deferred[Any]] = []
        self.interest = PeerInterest(name)
        if topics is not None:
            self.interest.set_part(sorted(topics), True)

    def send_broadcast(self, topic: str, event: str, chunks: list[bytes], binary: bool) -> bool:
        self.log.append((self.peer, "broadcast", topic, b"".join(chunks)))
        return True

    def send_interest(self, method: str, *args: Any, answer: bool = False) -> Deferred[Any] | None:
        self.log.append((self.peer, method, *args))
        if not answer:
            return None
        d: Deferred[Any] = Deferred()
        self.answers.append(d)
        return d


class NodeRoutingTests(SynchronousTestCase):
    """Node.broadcast with interest routing, on a node that is not started, with recording links."""

    def make(self, **options: Any) -> tuple[Node, list[Any], Clock]:
        clock = Clock()
        pubsub = PubSub("me@127.0.0.1")
        node = Node(clock, "me@127.0.0.1", cookie="c", pubsub=pubsub, **options)
        self.addCleanup(node.announcer.stop)
        sent: list[Any] = []
        node.links = {
            "wants@h": RecordingLink("wants@h", sent, {"room"}),
            "not@h": RecordingLink("not@h", sent, {"other"}),
            "unknown@h": RecordingLink("unknown@h", sent),
        }
        return node, sent, clock

    def count_encodings(self) -> list[Any]:
        calls: list[Any] = []
        encode = node_module._encode
        self.patch(node_module, "_encode", lambda payload: calls.append(payload) or encode(payload))
        return calls

    def test_routes(self) -> None:
        """A broadcast goes to the peers that want its topic and those that have not said; encoded once."""
        node, sent, _ = self.make()
        encodings = self.count_encodings()
        node.broadcast(Broadcast("room", "msg", {"n": 1}))
        self.assertEqual(sent, [("wants@h", "broadcast", "room", b'{"n":1}'),
                                ("unknown@h", "broadcast", "room", b'{"n":1}')])
        self.assertEqual(len(encodings), 1)
        self.assertEqual(node.skipped, 1)

    def test_nobody_wants_it(self) -> None:
        """A broadcast no peer wants is not even encoded."""
        node, sent, _ = self.make()
        del node.links["unknown@h"]
        encodings = self.count_encodings()
        node.broadcast(Broadcast("nobody", "msg", {"n": 1}))
        self.assertEqual((sent, encodings, node.skipped), ([], [], 2))

    def test_routing_off(self) -> None:
        """interest_routing=False: every broadcast to every peer; no news of this node's topics."""
        node, sent, clock = self.make(interest_routing=False)
        node.pubsub.subscribe("mine", CallbackSubscriber(lambda b: None))
        clock.advance(0)
        node.broadcast(Broadcast("room", "msg", {}))
        self.assertEqual(sorted(s[0] for s in sent), ["not@h", "unknown@h", "wants@h"])
        self.assertEqual(node.announcer.topics, set())
        self.assertIs(node._hello(None)["interest"], False)
        self.assertIsNone(node.wanted_by("wants@h"))

    def test_news_first(self) -> None:
        """A subscription this turn reaches every interested link before a broadcast or direct broadcast."""
        node, sent, _ = self.make()
        node.pubsub.subscribe("mine", CallbackSubscriber(lambda b: None))
        node.broadcast(Broadcast("room", "msg", {}))
        self.assertEqual(sent[:3], [(peer, "interest_update", ["mine"], []) for peer in node.links])
        self.assertEqual(sent[3:], [("wants@h", "broadcast", "room", b"{}"), ("unknown@h", "broadcast", "room", b"{}")])
        sent.clear()
        node.pubsub.subscribe("second", CallbackSubscriber(lambda b: None))
        self.assertTrue(node.direct_broadcast("not@h", Broadcast("x", "msg", {})))
        self.assertEqual(sent[:3], [(peer, "interest_update", ["second"], []) for peer in node.links])
        self.assertEqual(sent[3:], [("not@h", "broadcast", "x", b"{}")])

    def test_direct_broadcast_unaffected(self) -> None:
        """A direct broadcast goes to its node whatever that node wants."""
        node, sent, _ = self.make()
        self.assertTrue(node.direct_broadcast("not@h", Broadcast("room", "msg", {})))
        self.assertEqual(sent, [("not@h", "broadcast", "room", b"{}")])

    def test_peers_without_routing(self) -> None:
        """Only the peers that route by interest are told of this node's topics."""
        node, sent, clock = self.make()
        node.links["old@h"] = RecordingLink("old@h", sent, interest=False)
        node.pubsub.subscribe("mine", CallbackSubscriber(lambda b: None))
        clock.advance(0)
        self.assertNotIn("old@h", [s[0] for s in sent])
        self.assertEqual(len(sent), 3)

    def test_topics_before_the_node(self) -> None:
        """Topics the PubSub had before the node became its adapter are wanted."""
        pubsub = PubSub("me@127.0.0.1")
        pubsub.subscribe("early", CallbackSubscriber(lambda b: None))
        node = Node(Clock(), "me@127.0.0.1", cookie="c", pubsub=pubsub)
        self.addCleanup(node.announcer.stop)
        self.assertEqual(node.announcer.topics, {"early"})

    def test_another_adapter(self) -> None:
        """When another adapter (Redis) carries the PubSub's broadcasts, the node declares nothing."""
        node, sent, clock = self.make()
        node.pubsub.adapter = object()
        self.assertIs(node._hello(None)["interest"], False)
        node.topic_subscribed("mine")
        clock.advance(0)
        self.assertEqual(sent, [])

    def test_hello(self) -> None:
        """A routing node says so in its hello."""
        node, _, _ = self.make()
        self.assertIs(node._hello(None)["interest"], True)

    def test_class_limits(self) -> None:
        """Node.interest_batch and Node.interest_topic_length set what it sends and accepts."""

        class Small(Node):
            interest_batch = 2
            interest_topic_length = 3

        node = Small(Clock(), "me@127.0.0.1", cookie="c", pubsub=PubSub("me@127.0.0.1"))
        self.addCleanup(node.announcer.stop)
        self.assertEqual((node.announcer.batch, node.announcer.max_length), (2, 3))
        link = Link(node, FakeRemote(), initiator="p@h", peer="p@h")  # type: ignore[arg-type]
        self.assertEqual((link.interest.batch, link.interest.max_length), (2, 3))

    def test_wanted_by(self) -> None:
        """wanted_by: a copy of a peer's set, or None when it is sent everything."""
        node, _, _ = self.make()
        self.assertEqual(node.wanted_by("wants@h"), {"room"})
        self.assertIsNone(node.wanted_by("unknown@h"))
        self.assertIsNone(node.wanted_by("nobody@h"))


class NodePrepareTests(SynchronousTestCase):
    """Node.prepare_interest, through PubSub.prepare, on a node that is not started, with recording links."""

    def make(self, **options: Any) -> tuple[Node, list[Any], Clock]:
        clock = Clock()
        node = Node(clock, "me@127.0.0.1", cookie="c", pubsub=PubSub("me@127.0.0.1"), **options)
        self.addCleanup(node.announcer.stop)
        sent: list[Any] = []
        node.links = {
            "p1@h": RecordingLink("p1@h", sent, {"room"}),
            "p2@h": RecordingLink("p2@h", sent),
            "old@h": RecordingLink("old@h", sent, interest=False),
        }
        return node, sent, clock

    def test_waits_for_every_routing_peer(self) -> None:
        """A join's new topic: one answered message to each peer that routes by interest; it waits for both."""
        node, sent, clock = self.make()
        wait = node.pubsub.prepare("new")
        clock.advance(0)
        self.assertEqual(sent, [("p1@h", "interest_update", ["new"], []), ("p2@h", "interest_update", ["new"], [])])
        node.links["p1@h"].answers[0].callback(None)
        self.assertNoResult(wait)
        node.links["p2@h"].answers[0].callback(None)
        self.assertIsNone(self.successResultOf(wait))
        self.assertEqual(node.links["old@h"].answers, [])

    def test_known_topic(self) -> None:
        """A topic every peer acknowledged: nothing to wait for, nothing sent (the hot path)."""
        node, sent, clock = self.make()
        wait = node.pubsub.prepare("room")
        clock.advance(0)
        for link in node.links.values():
            for answer in link.answers:
                answer.callback(None)
        self.successResultOf(wait)
        node.pubsub.subscribe("room", CallbackSubscriber(lambda b: None))
        sent.clear()
        for _ in range(3):
            self.assertIsNone(node.pubsub.prepare("room"))
        clock.advance(0)
        self.assertEqual(sent, [])

    def test_nothing_to_wait_for(self) -> None:
        """No links, routing off, or another adapter carrying the broadcasts: None, and nothing sent."""
        node, sent, clock = self.make(interest_routing=False)
        self.assertIsNone(node.pubsub.prepare("new"))
        node, sent, clock = self.make()
        node.links = {}
        self.assertIsNone(node.pubsub.prepare("new"))
        node, sent, clock = self.make()
        node.pubsub.adapter = object()
        self.assertIsNone(node.prepare_interest("new"))
        node.links = {"old@h": RecordingLink("old@h", sent, interest=False)}
        node.pubsub.adapter = node
        self.assertIsNone(node.pubsub.prepare("new"))
        clock.advance(0)
        self.assertEqual(sent, [])

    def test_timeout_option(self) -> None:
        """Node(prepare_timeout=) bounds the wait (1 s by default); it must be positive."""
        node, _, clock = self.make()
        self.assertEqual(node.prepare_timeout, 1.0)
        node, _, clock = self.make(prepare_timeout=0.2)
        wait = node.pubsub.prepare("new")
        clock.advance(0)
        clock.advance(0.2)
        self.successResultOf(wait)
        node.prepare_timeout = 3.0
        self.assertEqual(node.announcer.timeout, 3.0)
        with self.assertRaises(ValueError):
            node.prepare_timeout = 0
        self.assertRaises(ValueError, self.make, prepare_timeout=-1)
