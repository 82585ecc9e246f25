"""
Tests for L{twisted_phoenix.presence.tracker}: the Tracker replicating
presence entries between nodes by gossip (protocol notes section 6.3).

Several nodes share one L{Clock} and talk through L{Network}, an in-memory
cluster adapter whose messages wait in a queue until the test delivers them:
so the test decides the order, drops (partitions) and duplicates.
"""

from __future__ import annotations

import base64
import random
from collections import deque
from typing import Any, Callable

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.message import Broadcast
from twisted_phoenix.presence import tracker as tracker_module
from twisted_phoenix.presence.tracker import Diff, Tracker
from twisted_phoenix.pubsub import PubSub

#: Short periods keep the arithmetic readable: a beat a second, an empty
#: beat every 3 quiet beats, down after 10 s of silence, dropped after 30 s.
FAST = {"broadcast_period": 1.0, "max_silent_periods": 3, "down_period": 10.0, "permdown_period": 30.0}

#: The topic the trackers (named "presence" by default) gossip on.
GOSSIP = "phx_presence:presence"

Shipped = tuple[str, str, str, str, bytes]  # src, dst, topic, event, JSON payload


class _Adapter:
    """One node's side of a L{Network}."""

    def __init__(self, network: Network, pubsub: PubSub) -> None:
        self.network = network
        self.pubsub = pubsub

    def broadcast(self, broadcast: Broadcast) -> None:
        for name in list(self.network.nodes):
            if name != self.pubsub.node_name:
                self.network.ship(self.pubsub, name, broadcast)

    def direct_broadcast(self, node: str, broadcast: Broadcast) -> bool:
        if node not in self.network.nodes:
            return False
        self.network.ship(self.pubsub, node, broadcast)
        return True


class Network:
    """
    An in-memory cluster: the PubSub adapters of several nodes.

    What nodes send waits in L{queue} (payloads as JSON bytes, as on a real
    link) until L{flush} delivers it in order.  A test may reorder the
    queue, L{block} a direction (a partition), drop chosen messages
    (L{drop_next}), or deliver everything twice (L{duplicate}).

    :ivar sent: every message shipped, delivered or not.
    :ivar delivered: every message delivered.
    """

    def __init__(self) -> None:
        self.nodes: dict[str, PubSub] = {}
        self.queue: deque[Shipped] = deque()
        self.blocked: set[tuple[str, str]] = set()
        self.duplicate = False
        self.sent: list[Shipped] = []
        self.delivered: list[Shipped] = []
        self._drops: list[Callable[[Shipped], bool]] = []

    def node(self, name: str) -> PubSub:
        """A PubSub for node ``name``; a new one replaces (kills) the node's previous incarnation."""
        pubsub = PubSub(name)
        pubsub.adapter = _Adapter(self, pubsub)
        self.nodes[name] = pubsub
        return pubsub

    def ship(self, source: PubSub, destination: str, broadcast: Broadcast) -> None:
        if self.nodes.get(source.node_name) is not source:
            return  # a dead incarnation says nothing
        shipped = (source.node_name, destination, broadcast.topic, broadcast.event, orjson.dumps(broadcast.payload))
        self.sent.append(shipped)
        self.queue.append(shipped)

    def block(self, source: str, destination: str) -> None:
        """Drop everything ``source`` sends ``destination`` until L{heal}."""
        self.blocked.add((source, destination))

    def heal(self) -> None:
        """Undo every L{block}."""
        self.blocked.clear()

    def drop_next(self, match: Callable[[Shipped], bool]) -> None:
        """Drop the next message ``match`` accepts."""
        self._drops.append(match)

    def deliver(self, shipped: Shipped) -> None:
        """Deliver one message now (unless blocked or to be dropped)."""
        source, destination, topic, event, data = shipped
        if (source, destination) in self.blocked:
            return
        for match in self._drops:
            if match(shipped):
                self._drops.remove(match)
                return
        pubsub = self.nodes.get(destination)
        if pubsub is None:
            return
        for _ in range(2 if self.duplicate else 1):
            self.delivered.append(shipped)
            pubsub.dispatch(Broadcast(topic, event, orjson.loads(data)))

    def flush(self) -> None:
        """Deliver everything queued, and what that causes, in order."""
        while self.queue:
            self.deliver(self.queue.popleft())

    def events(self, source: str | None = None, destination: str | None = None) -> list[str]:
        """The events delivered, optionally from and to given nodes."""
        return [
            event for s, d, _, event, _ in self.delivered
            if (source is None or s == source) and (destination is None or d == destination)
        ]


def heartbeat_from(node: str, *, delta: bool | None = None) -> Callable[[Shipped], bool]:
    """Matches a heartbeat from ``node`` (with or without a delta, if given)."""

    def match(shipped: Shipped) -> bool:
        source, _, _, event, data = shipped
        if source != node or event != "heartbeat":
            return False
        return delta is None or (orjson.loads(data)["delta"] is not None) == delta

    return match


class Node:
    """A node: its PubSub on the network, its Tracker and the diffs it reported."""

    def __init__(self, network: Network, clock: Clock, name: str, **options: Any) -> None:
        self.name = name
        self.pubsub = network.node(name)
        self.diffs: list[Diff] = []
        self.tracker = Tracker(clock, self.pubsub, self.diffs.append, **{**FAST, **options})

    def start(self) -> Node:
        self.tracker.start()
        return self

    def presences(self, topic: str) -> list[tuple[str, dict[str, Any]]]:
        """(key, meta) of the visible entries of ``topic``, sorted."""
        return sorted(((e.key, e.meta) for e in self.tracker.list(topic)), key=orjson.dumps)

    def take_diffs(self) -> list[Diff]:
        diffs, self.diffs[:] = list(self.diffs), []
        return diffs


class TrackerTestCase(SynchronousTestCase):
    """Nodes on one L{Network} and one L{Clock}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.network = Network()

    def node(self, name: str, start: bool = True, **options: Any) -> Node:
        node = Node(self.network, self.clock, name, **options)
        if start:
            node.start()
            self.network.flush()
        return node

    def tick(self, n: int = 1) -> None:
        """Let ``n`` broadcast periods pass, delivering what is sent after each."""
        for _ in range(n):
            self.clock.advance(FAST["broadcast_period"])
            self.network.flush()


class LocalTests(TrackerTestCase):
    """
    Tests for the local API of L{Tracker}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.a = self.node("a")

    def test_track(self) -> None:
        """track adds phx_ref to the meta, reports the join at once and returns the ref."""
        ref = self.a.tracker.track("o1", "room", "u1", {"x": 1})
        meta = {"x": 1, "phx_ref": ref}
        self.assertEqual(self.a.diffs, [{"room": ({"u1": [meta]}, {})}])
        self.assertEqual(self.a.presences("room"), [("u1", meta)])
        self.assertEqual(self.a.tracker.get("o1", "room", "u1").meta, meta)

    def test_trackDoesNotShareMeta(self) -> None:
        """The tracked meta is a copy: changing the caller's dict later changes nothing."""
        meta = {"x": 1}
        self.a.tracker.track("o1", "room", "u1", meta)
        meta["x"] = 2
        self.assertEqual(self.a.presences("room")[0][1]["x"], 1)

    def test_trackTwice(self) -> None:
        """Tracking the same (owner, topic, key) again returns None and reports nothing."""
        self.a.tracker.track("o1", "room", "u1", {})
        self.a.take_diffs()
        self.assertIsNone(self.a.tracker.track("o1", "room", "u1", {}))
        self.assertEqual(self.a.diffs, [])
        self.assertIsNotNone(self.a.tracker.track("o2", "room", "u1", {}))
        self.assertIsNotNone(self.a.tracker.track("o1", "room", "u2", {}))
        self.assertIsNotNone(self.a.tracker.track("o1", "lobby", "u1", {}))

    def test_update(self) -> None:
        """update reports one diff with the key in joins (new meta, phx_ref_prev) and in leaves (old meta)."""
        ref = self.a.tracker.track("o1", "room", "u1", {"s": "away"})
        self.a.take_diffs()
        new = self.a.tracker.update("o1", "room", "u1", {"s": "busy"})
        self.assertNotEqual(new, ref)
        self.assertEqual(self.a.diffs, [{"room": (
            {"u1": [{"s": "busy", "phx_ref": new, "phx_ref_prev": ref}]},
            {"u1": [{"s": "away", "phx_ref": ref}]},
        )}])
        self.assertEqual(self.a.presences("room"), [("u1", {"s": "busy", "phx_ref": new, "phx_ref_prev": ref})])

    def test_updateUntracked(self) -> None:
        """update of an untracked key returns None and reports nothing."""
        self.assertIsNone(self.a.tracker.update("o1", "room", "u1", {}))
        self.assertEqual(self.a.diffs, [])

    def test_untrack(self) -> None:
        """untrack reports the leave; untracking again does nothing."""
        ref = self.a.tracker.track("o1", "room", "u1", {})
        self.a.take_diffs()
        self.a.tracker.untrack("o1", "room", "u1")
        self.a.tracker.untrack("o1", "room", "u1")
        self.assertEqual(self.a.diffs, [{"room": ({}, {"u1": [{"phx_ref": ref}]})}])
        self.assertEqual(self.a.presences("room"), [])

    def test_untrackOwner(self) -> None:
        """untrack_owner reports one diff leaving every entry of the owner, per topic, and keeps the others."""
        r1 = self.a.tracker.track("o1", "room", "u1", {})
        r2 = self.a.tracker.track("o1", "lobby", "u1", {})
        r3 = self.a.tracker.track("o2", "room", "u2", {})
        self.a.take_diffs()
        self.a.tracker.untrack_owner("o1")
        self.a.tracker.untrack_owner("o1")
        self.assertEqual(self.a.diffs, [{
            "room": ({}, {"u1": [{"phx_ref": r1}]}),
            "lobby": ({}, {"u1": [{"phx_ref": r2}]}),
        }])
        self.assertEqual(self.a.presences("room"), [("u2", {"phx_ref": r3})])

    def test_diffHandlerFailure(self) -> None:
        """An exception in on_diff is logged and does not undo the change."""
        events: list[dict[str, Any]] = []
        self.patch(tracker_module, "log", Logger(observer=events.append))

        def fail(diff: Diff) -> None:
            raise RuntimeError("boom")

        self.a.tracker.on_diff = fail
        self.a.tracker.track("o1", "room", "u1", {})
        self.assertEqual([e["log_level"] for e in events], [LogLevel.critical])
        self.assertEqual(len(self.a.presences("room")), 1)

    def test_ref(self) -> None:
        """A phx_ref is 16 URL-safe base64 characters (12 bytes), and refs made at the same instant differ."""
        refs = [self.a.tracker.make_ref() for _ in range(2000)]
        for ref in refs:
            self.assertRegex(ref, r"^[A-Za-z0-9_-]{16}$")
            self.assertEqual(len(base64.urlsafe_b64decode(ref)), 12)
        self.assertEqual(len(set(refs)), len(refs))

    def test_refTime(self) -> None:
        """make_ref takes its time from the reactor: the first 8 bytes are the clock in nanoseconds."""
        self.clock.advance(1_700_000_000.25)
        raw = base64.urlsafe_b64decode(self.a.tracker.make_ref())
        self.assertLess(abs(int.from_bytes(raw[:8], "big") - 1_700_000_000_250_000_000), 1000)
        self.clock.advance(1)
        raw2 = base64.urlsafe_b64decode(self.a.tracker.make_ref())
        self.assertLess(abs(int.from_bytes(raw2[:8], "big") - 1_700_000_001_250_000_000), 1000)
        self.assertEqual(raw[8:10], raw2[8:10])  # same replica

    def test_refsDifferByReplica(self) -> None:
        """Two trackers on the same node name make different refs at the same instant."""
        other = Tracker(self.clock, PubSub("a"), lambda diff: None, **FAST)
        self.assertNotEqual(other.replica, self.a.tracker.replica)
        self.assertNotEqual(other.make_ref(), self.a.tracker.make_ref())

    def test_options(self) -> None:
        """down_period defaults to broadcast_period * max_silent_periods * 2; it must be at least two periods, and permdown_period longer."""
        pubsub = PubSub("x")
        t = Tracker(self.clock, pubsub, lambda diff: None)
        self.assertEqual((t.broadcast_period, t.max_silent_periods, t.down_period, t.permdown_period), (1.5, 10, 30.0, 1200.0))
        self.assertEqual(t.topic, "phx_presence:presence")
        self.assertEqual(Tracker(self.clock, pubsub, lambda d: None, name="chat").topic, "phx_presence:chat")
        self.assertRaises(ValueError, Tracker, self.clock, pubsub, lambda d: None, broadcast_period=2, down_period=3)
        self.assertRaises(ValueError, Tracker, self.clock, pubsub, lambda d: None, down_period=30, permdown_period=30)

    def test_replicaName(self) -> None:
        """The replica is named after the node, with a part unique to this incarnation."""
        self.assertRegex(self.a.tracker.replica, r"^a/[0-9a-f]{12}$")


class GossipTests(TrackerTestCase):
    """
    Tests for replication between running trackers.
    """

    def setUp(self) -> None:
        super().setUp()
        self.a = self.node("a")
        self.b = self.node("b")

    def test_remoteTrack(self) -> None:
        """A track reaches another node with the next heartbeat, as the same diff."""
        ref = self.a.tracker.track("o1", "room", "u1", {"x": 1})
        self.network.flush()
        self.assertEqual(self.b.diffs, [])
        self.assertEqual(self.b.presences("room"), [])
        self.tick()
        self.assertEqual(self.b.diffs, [{"room": ({"u1": [{"x": 1, "phx_ref": ref}]}, {})}])
        self.assertEqual(self.b.presences("room"), self.a.presences("room"))

    def test_remoteUpdate(self) -> None:
        """An update reaches another node as one diff with the key in both joins and leaves."""
        ref = self.a.tracker.track("o1", "room", "u1", {"s": 1})
        self.tick()
        self.b.take_diffs()
        new = self.a.tracker.update("o1", "room", "u1", {"s": 2})
        self.tick()
        self.assertEqual(self.b.diffs, [{"room": (
            {"u1": [{"s": 2, "phx_ref": new, "phx_ref_prev": ref}]},
            {"u1": [{"s": 1, "phx_ref": ref}]},
        )}])

    def test_remoteUntrack(self) -> None:
        """An untrack reaches another node as a leave."""
        ref = self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.b.take_diffs()
        self.a.tracker.untrack_owner("o1")
        self.tick()
        self.assertEqual(self.b.diffs, [{"room": ({}, {"u1": [{"phx_ref": ref}]})}])
        self.assertEqual(self.b.presences("room"), [])

    def test_sameOwnerNameOnTwoNodes(self) -> None:
        """Owner names are per node: ending owner "1" on one node leaves nothing of owner "1" on another, and both may track the same key."""
        ra = self.a.tracker.track("1", "room", "u1", {})
        rb = self.b.tracker.track("1", "room", "u1", {})
        self.assertIsNotNone(rb)
        self.tick()
        self.a.tracker.untrack_owner("1")
        self.tick()
        for node in (self.a, self.b):
            self.assertEqual(node.presences("room"), [("u1", {"phx_ref": rb})])
        self.assertNotEqual(ra, rb)

    def test_updateAfterSync(self) -> None:
        """A node can update its own key after learning another node's entry for the same owner name and key."""
        self.a.tracker.track("1", "room", "u1", {"v": "a"})
        self.tick()
        self.assertIsNone(self.b.tracker.update("1", "room", "u1", {"v": "b"}))
        self.assertIsNone(self.b.tracker.get("1", "room", "u1"))
        self.assertIsNotNone(self.b.tracker.track("1", "room", "u1", {"v": "b"}))

    def test_quietHeartbeat(self) -> None:
        """A tracker with no changes sends an empty heartbeat every max_silent_periods periods; a change goes out at the next period."""
        self.network.delivered.clear()
        self.tick(6)
        self.assertEqual(self.network.events("a", "b"), ["heartbeat", "heartbeat"])
        self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.assertEqual(self.network.events("a", "b"), ["heartbeat"] * 3)

    def test_newNodeGetsState(self) -> None:
        """A node that starts later learns the whole state by transfer at once, and the others learn its entries the same way."""
        refs = [self.a.tracker.track(f"o{i}", "room", f"u{i}", {}) for i in range(3)]
        ref_b = self.b.tracker.track("o1", "lobby", "u9", {})
        self.tick(5)
        c = self.node("c", start=False)
        ref_c = c.tracker.track("o1", "room", "c1", {})
        self.a.take_diffs()
        self.network.delivered.clear()
        c.start()
        self.network.flush()
        self.assertIn("transfer_req", self.network.events("c", "a"))
        self.assertIn("transfer_ack", self.network.events("a", "c"))
        self.assertEqual(c.presences("room"), self.a.presences("room"))
        self.assertEqual([k for k, _ in c.presences("room")], ["c1", "u0", "u1", "u2"])
        self.assertEqual(c.presences("lobby"), [("u9", {"phx_ref": ref_b})])
        self.assertEqual(sorted(m["phx_ref"] for k, m in c.presences("room") if k != "c1"), sorted(refs))
        self.assertEqual(self.a.diffs, [{"room": ({"c1": [{"phx_ref": ref_c}]}, {})}])
        self.assertEqual(self.b.presences("room"), c.presences("room"))

    def test_lostDeltaRepaired(self) -> None:
        """A lost heartbeat is repaired by a transfer as soon as the next heartbeat shows the gap in the clock."""
        self.network.drop_next(heartbeat_from("a", delta=True))
        r1 = self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.assertEqual(self.b.presences("room"), [])
        r2 = self.a.tracker.track("o2", "room", "u2", {})
        self.network.delivered.clear()
        self.tick()
        self.assertIn("transfer_req", self.network.events("b", "a"))
        self.assertEqual(self.b.presences("room"), [("u1", {"phx_ref": r1}), ("u2", {"phx_ref": r2})])

    def test_lostLeaveRepaired(self) -> None:
        """A lost heartbeat carrying only a leave is repaired when the next (empty) heartbeat shows the gap."""
        ref = self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.b.take_diffs()
        self.network.drop_next(heartbeat_from("a", delta=True))
        self.a.tracker.untrack("o1", "room", "u1")
        self.tick()
        self.assertEqual(len(self.b.presences("room")), 1)
        self.tick(FAST["max_silent_periods"])
        self.assertEqual(self.b.presences("room"), [])
        self.assertEqual(self.b.diffs, [{"room": ({}, {"u1": [{"phx_ref": ref}]})}])

    def test_lostTransferAskedAgain(self) -> None:
        """If the transfer answering a gap is lost too, the next heartbeat asks again."""
        self.network.drop_next(heartbeat_from("a", delta=True))
        self.network.drop_next(lambda s: s[3] == "transfer_ack" and s[0] == "a")
        self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.a.tracker.track("o2", "room", "u2", {})
        self.tick()
        self.assertEqual([k for k, _ in self.b.presences("room")], ["u2"])
        self.tick(FAST["max_silent_periods"])
        self.assertEqual([k for k, _ in self.b.presences("room")], ["u1", "u2"])

    def test_reorderedHeartbeats(self) -> None:
        """A later heartbeat arriving before an earlier one gives the same state, and a removed entry never appears."""
        self.network.delivered.clear()
        self.a.tracker.track("o1", "room", "u1", {})
        self.clock.advance(1)  # heartbeat 1 queued
        self.a.tracker.untrack("o1", "room", "u1")
        r2 = self.a.tracker.track("o1", "room", "u2", {})
        self.clock.advance(1)  # heartbeat 2 queued
        self.network.queue.reverse()
        self.network.flush()
        self.assertEqual(self.b.presences("room"), [("u2", {"phx_ref": r2})])
        self.assertEqual(self.b.diffs, [{"room": ({"u2": [{"phx_ref": r2}]}, {})}])
        self.assertNotIn("transfer_req", self.network.events("b", "a"))

    def test_duplicates(self) -> None:
        """Gossip delivered twice changes nothing: every change is reported once."""
        self.network.duplicate = True
        ref = self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        new = self.a.tracker.update("o1", "room", "u1", {"v": 2})
        self.tick()
        self.a.tracker.untrack("o1", "room", "u1")
        self.tick(4)
        self.assertEqual(self.b.diffs, [
            {"room": ({"u1": [{"phx_ref": ref}]}, {})},
            {"room": ({"u1": [{"v": 2, "phx_ref": new, "phx_ref_prev": ref}]}, {"u1": [{"phx_ref": ref}]})},
            {"room": ({}, {"u1": [{"v": 2, "phx_ref": new, "phx_ref_prev": ref}]})},
        ])

    def test_stop(self) -> None:
        """A tracker that stops tells the others, which drop its entries at once and report them as leaves."""
        ref = self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.b.take_diffs()
        self.a.tracker.stop()
        self.network.flush()
        self.assertEqual(self.b.diffs, [{"room": ({}, {"u1": [{"phx_ref": ref}]})}])
        self.assertEqual(self.b.presences("room"), [])
        self.assertNotIn("a", self.b.tracker.replicas)
        self.network.delivered.clear()
        self.tick(10)
        self.assertEqual(self.network.events("a"), [])

    def test_nodeUp(self) -> None:
        """With an adapter that reports new links, a tracker asks a newly linked node for its state at once, until it stops."""
        c = self.node("c", start=False)
        c.pubsub.adapter.node_up_callbacks = []  # type: ignore[union-attr]
        c.start()
        self.network.flush()
        [callback] = c.pubsub.adapter.node_up_callbacks  # type: ignore[union-attr]
        self.network.delivered.clear()
        callback("a")
        self.network.flush()
        self.assertEqual(self.network.events("c", "a"), ["transfer_req"])
        c.tracker.stop()
        self.assertEqual(c.pubsub.adapter.node_up_callbacks, [])  # type: ignore[union-attr]

    def test_permdownFromOtherReplicaIgnored(self) -> None:
        """A permdown naming a replica other than the node's current one is ignored."""
        self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.a.pubsub.broadcast(GOSSIP, "permdown", {"replica": "a/000000000000", "node": "a"})
        self.network.flush()
        self.assertEqual(len(self.b.presences("room")), 1)


class FailureTests(TrackerTestCase):
    """
    Tests for silent, restarted and misbehaving nodes.
    """

    def setUp(self) -> None:
        super().setUp()
        self.a = self.node("a")
        self.b = self.node("b")
        self.ref = self.a.tracker.track("o1", "room", "u1", {})
        self.tick()
        self.b.take_diffs()
        self.leave = {"room": ({}, {"u1": [{"phx_ref": self.ref}]})}
        self.join = {"room": ({"u1": [{"phx_ref": self.ref}]}, {})}

    def test_down(self) -> None:
        """A node silent for down_period is down: its entries are hidden and reported as leaves, but kept."""
        self.network.block("a", "b")
        self.tick(int(FAST["down_period"]))
        self.assertEqual(self.b.diffs, [])
        self.tick(2)
        self.assertEqual(self.b.diffs, [self.leave])
        self.assertEqual(self.b.presences("room"), [])
        self.assertEqual(len(self.b.tracker.state.values), 1)
        self.tick(5)
        self.assertEqual(self.b.diffs, [self.leave])

    def test_upAgain(self) -> None:
        """A down node that speaks again with the same replica is up: its entries are reported as joins, with the changes made meanwhile."""
        self.network.block("a", "b")
        self.tick(12)
        self.b.take_diffs()
        r2 = self.a.tracker.track("o2", "room", "u2", {})
        self.tick()
        self.network.heal()
        self.tick(FAST["max_silent_periods"])
        joined = [k for d in self.b.diffs for k in d["room"][0]]
        self.assertEqual(sorted(joined), ["u1", "u2"])
        self.assertEqual(self.b.presences("room"), [("u1", {"phx_ref": self.ref}), ("u2", {"phx_ref": r2})])

    def test_permdown(self) -> None:
        """A node silent for permdown_period is dropped: its entries are deleted, without a second leave."""
        self.network.block("a", "b")
        self.tick(int(FAST["permdown_period"]) + 2)
        self.assertEqual(self.b.diffs, [self.leave])
        self.assertEqual(self.b.tracker.state.values, {})
        self.assertNotIn("a", self.b.tracker.replicas)

    def test_longPartitionHeals(self) -> None:
        """A replica dropped for silence alone that speaks again is taken back, and its entries return (as in Phoenix)."""
        self.network.block("a", "b")
        self.tick(int(FAST["permdown_period"]) + 2)
        self.assertEqual(self.b.tracker.state.values, {})
        self.network.heal()
        self.tick(int(FAST["max_silent_periods"]) + 2)
        self.assertEqual([e.key for e in self.b.tracker.list("room")], ["u1"])

    def test_stoppedTrackerCannotStart(self) -> None:
        """A stopped tracker refuses to start again: its peers dropped its replica for good."""
        self.a.tracker.stop()
        self.assertRaises(RuntimeError, self.a.tracker.start)

    def test_permdownAtOnce(self) -> None:
        """A node whose silence jumps past permdown_period at once is dropped and its visible entries reported as leaves."""
        self.network.block("a", "b")
        self.clock.advance(FAST["permdown_period"] + 5)
        self.network.flush()
        self.assertEqual(self.b.diffs, [self.leave])
        self.assertEqual(self.b.tracker.state.values, {})

    def test_restart(self) -> None:
        """When a restarted node speaks, its old replica's entries leave at once; the new replica's are joined."""
        a2 = self.node("a", start=False)
        ref2 = a2.tracker.track("o1", "room", "u1", {"new": True})
        self.assertEqual(self.b.diffs, [])
        a2.start()
        self.network.flush()
        self.assertEqual(self.b.diffs, [self.leave, {"room": ({"u1": [{"new": True, "phx_ref": ref2}]}, {})}])
        self.assertEqual(self.b.tracker.replicas["a"].name, a2.tracker.replica)
        self.assertEqual(self.b.presences("room"), [("u1", {"new": True, "phx_ref": ref2})])

    def test_restartOldNeverReturns(self) -> None:
        """After a restart, late gossip from the old replica and a third node's stale copy of its entries change nothing."""
        c = self.node("c")
        self.tick()
        self.assertEqual(len(c.presences("room")), 1)
        old_beat = next(s for s in self.network.sent if s[0] == "a" and s[3] == "heartbeat")
        self.network.block("a", "c")  # c does not hear of the restart yet
        a2 = self.node("a")
        self.assertEqual(self.b.presences("room"), [])
        self.b.take_diffs()
        # a late heartbeat of the old replica
        self.b.pubsub.dispatch(Broadcast(GOSSIP, "heartbeat", orjson.loads(old_beat[4])))
        # c's state, which still holds the old replica's entry, as a transfer
        self.assertEqual(len(c.presences("room")), 1)
        state = c.tracker.state.extract(exclude=self.b.tracker.replica).to_wire()
        c.pubsub.direct_broadcast("b", GOSSIP, "transfer_ack", {"state": state, "replica": c.tracker.replica, "node": "c"})
        self.network.flush()
        self.tick(3)
        self.assertEqual(self.b.presences("room"), [])
        self.assertEqual(self.b.diffs, [])
        self.assertEqual(self.b.tracker.replicas["a"].name, a2.tracker.replica)
        r = a2.tracker.track("o9", "room", "u9", {})
        self.tick()
        self.assertEqual(self.b.presences("room"), [("u9", {"phx_ref": r})])

    def test_malformedGossip(self) -> None:
        """Malformed gossip is logged as an error and ignored; the tracker keeps working."""
        events: list[dict[str, Any]] = []
        self.patch(tracker_module, "log", Logger(observer=events.append))
        before = dict(self.b.tracker.state.values)
        who = {"replica": self.a.tracker.replica, "node": "a"}
        bad = [
            ("heartbeat", {**who, "delta": "garbage", "clock": 1}),
            ("heartbeat", {**who, "delta": {"values": [["x", 1]], "context": {}, "cloud": []}, "clock": 1}),
            ("heartbeat", {**who, "delta": {"values": [], "context": {"a": -1}, "cloud": []}, "clock": 1}),
            ("transfer_ack", dict(who)),
            ("transfer_ack", {**who, "state": 5}),
            ("transfer_ack", {**who, "state": None}),
        ]
        for event, payload in bad:
            self.a.pubsub.direct_broadcast("b", GOSSIP, event, payload)
        self.network.flush()
        self.b.pubsub.dispatch(Broadcast(GOSSIP, "heartbeat", b"\x00binary"))
        errors = [e for e in events if e["log_level"] >= LogLevel.error]
        self.assertEqual(len(errors), len(bad) + 1)
        self.assertEqual(self.b.tracker.state.values, before)
        self.assertEqual(self.b.diffs, [])
        r2 = self.a.tracker.track("o2", "room", "u2", {})
        self.tick()
        self.assertEqual([k for k, _ in self.b.presences("room")], ["u1", "u2"])
        self.assertEqual(self.b.diffs, [{"room": ({"u2": [{"phx_ref": r2}]}, {})}])

    def test_gossipWithoutSender(self) -> None:
        """Gossip that does not name its replica and node as strings, or that comes from this replica, is ignored."""
        for payload in ({}, {"replica": 1, "node": "a"}, {"replica": "z/1", "node": None},
                        {"replica": self.b.tracker.replica, "node": "b", "delta": "garbage"}):
            self.b.pubsub.dispatch(Broadcast(GOSSIP, "heartbeat", payload))
        self.assertEqual(list(self.b.tracker.replicas), ["a"])
        self.assertEqual(self.b.diffs, [])


# -- convergence under a bad network ------------------------------------------------

_STEP = st.one_of(
    st.tuples(st.just("track"), st.integers(0, 2), st.sampled_from(["o1", "o2"]), st.sampled_from(["t1", "t2"]),
              st.sampled_from(["k1", "k2"]), st.integers(0, 3)),
    st.tuples(st.just("untrack"), st.integers(0, 2), st.sampled_from(["o1", "o2"]), st.sampled_from(["t1", "t2"]),
              st.sampled_from(["k1", "k2"])),
    st.tuples(st.just("update"), st.integers(0, 2), st.sampled_from(["o1", "o2"]), st.sampled_from(["t1", "t2"]),
              st.sampled_from(["k1", "k2"]), st.integers(0, 3)),
    st.tuples(st.just("untrack_owner"), st.integers(0, 2), st.sampled_from(["o1", "o2"])),
    st.tuples(st.just("tick")),
    st.tuples(st.just("tick")),
)


class ConvergenceTests(TrackerTestCase):
    """
    Trackers converge once the network behaves, whatever it lost, duplicated
    or reordered before.
    """

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_STEP, min_size=5, max_size=30), st.randoms(use_true_random=False))
    def test_badNetworkThenHeal(self, steps: list[tuple[Any, ...]], rnd: random.Random) -> None:
        """With gossip dropped, duplicated and reordered at random (for less than down_period), every node shows exactly every node's own entries a few quiet periods after the network heals."""
        self.setUp()
        nodes = [self.node(name, down_period=100.0, permdown_period=200.0) for name in "abc"]
        for step in steps:
            kind, *args = step
            if kind == "tick":
                self.clock.advance(FAST["broadcast_period"])
                queued = list(self.network.queue)
                self.network.queue.clear()
                rnd.shuffle(queued)
                for shipped in queued:
                    fate = rnd.random()
                    if fate < 0.3:
                        continue  # lost
                    self.network.deliver(shipped)
                    if fate > 0.85:
                        self.network.deliver(shipped)
                self.network.flush()  # what the deliveries caused arrives in order
                continue
            tracker = nodes[args[0]].tracker
            if kind == "track":
                tracker.track(args[1], args[2], args[3], {"v": args[4]})
            elif kind == "untrack":
                tracker.untrack(args[1], args[2], args[3])
            elif kind == "update":
                tracker.update(args[1], args[2], args[3], {"v": args[4]})
            else:
                tracker.untrack_owner(args[1])
        self.tick(3 * FAST["max_silent_periods"])
        expected = sorted(
            ((e.topic, e.key, orjson.dumps(e.meta)) for n in nodes for d, e in n.tracker.state.values.items()
             if d[0] == n.tracker.replica),
        )
        for node in nodes:
            self.assertEqual(
                sorted((t, e.key, orjson.dumps(e.meta)) for t in ("t1", "t2") for e in node.tracker.list(t)),
                expected,
            )
            self.assertEqual(sorted(node.tracker.replicas), sorted(n.name for n in nodes if n is not node))
