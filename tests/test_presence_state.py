"""
Tests for L{twisted_phoenix.presence._state}: the pure observed-remove set
(ORSWOT) behind Presence (protocol notes section 6.3).

The property tests run random histories of local operations on two to four
replicas, take deltas and whole-state extracts at random points, and deliver
them (through the wire format) in random orders, with duplicates.

What the design guarantees, and so what is tested: an entry is removed only
by the replica that added it (only the owner's node knows when its channel
ends), so "observed remove" means that a leave on one replica removes that
replica's own entry and nothing another replica added, even for the same
(owner, topic, key); and a replica that has seen a removal never takes the
entry back from an older fragment.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.presence._state import Dot, Entry, Fragment, State, WireError

#: Modest and deterministic: the suite stays fast and never flaky.
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

OWNERS = ["o1", "o2"]
TOPICS = ["lobby", "room:1"]
KEYS = ["u1", "u2"]


def seen_dots(fragment: Any) -> frozenset[Dot]:
    """Every dot a state or fragment has seen: its context expanded, plus its cloud."""
    dots = {(r, i) for r, n in fragment.context.items() for i in range(1, n + 1)}
    return frozenset(dots | set(fragment.cloud))


def normal(fragment: Any) -> tuple[dict[Dot, Entry], frozenset[Dot]]:
    """A state or fragment as (values, seen dots), whatever its context/cloud split."""
    return dict(fragment.values), seen_dots(fragment)


def on_wire(fragment: Fragment) -> bytes:
    """A fragment as the bytes a peer would receive."""
    return orjson.dumps(fragment.to_wire())


def off_wire(data: bytes) -> Fragment:
    """A fragment decoded from the wire (fresh objects each time)."""
    return Fragment.from_wire(orjson.loads(data))


def join_all(*fragments: Fragment) -> State:
    """A fresh observer replica that merged ``fragments`` in order."""
    state = State("observer")
    for fragment in fragments:
        state.merge(fragment)
    return state


def own_entries(state: State) -> dict[Dot, Entry]:
    """The entries a replica added and still holds."""
    return {d: e for d, e in state.values.items() if d[0] == state.replica}


# -- random histories ------------------------------------------------------------

#: The kinds of operation, weighted by repetition.
KINDS = ["join", "join", "join", "leave", "leave_owner", "update", "delta", "delta",
         "extract", "deliver", "deliver", "deliver", "down", "up"]


def operation(n: int) -> tuple[Any, ...]:
    """
    Decode one operation from an integer (one draw per operation keeps the
    generation fast; smaller integers shrink to simpler operations).
    """
    n, kind = divmod(n, len(KINDS))
    n, replica = divmod(n, 4)
    n, owner = divmod(n, len(OWNERS))
    n, topic = divmod(n, len(TOPICS))
    n, key = divmod(n, len(KEYS))
    n, meta = divmod(n, 10)
    name = KINDS[kind]
    args: tuple[Any, ...]
    if name in ("join", "update"):
        args = (OWNERS[owner], TOPICS[topic], KEYS[key], meta)
    elif name == "leave":
        args = (OWNERS[owner], TOPICS[topic], KEYS[key])
    elif name == "leave_owner":
        args = (OWNERS[owner],)
    elif name == "deliver":
        args = (n + 7 * meta,)
    elif name in ("down", "up"):
        args = (owner * 2 + key,)
    else:
        args = ()
    return (name, replica, *args)


OPERATION = st.integers(0, 2**24 - 1).map(operation)


class Cluster:
    """
    Replicas running a history.  Every fragment they produce is kept as wire
    bytes in L{messages}; L{views} follows the joins and leaves each replica
    reports, to check that they always describe its visible entries.
    """

    def __init__(self, size: int) -> None:
        self.states = [State(f"r{i}") for i in range(size)]
        self.messages: list[bytes] = []
        #: For each replica: the remote entries its reported diffs add up to.
        self.views: list[dict[Dot, Entry]] = [{} for _ in range(size)]

    def replica(self, index: int) -> State:
        return self.states[index % len(self.states)]

    def report(self, state: State, joins: list[tuple[Dot, Entry]], leaves: list[tuple[Dot, Entry]]) -> None:
        view = self.views[self.states.index(state)]
        for dot, entry in leaves:
            assert view.pop(dot) == entry, f"{state.replica} reported an unknown leave {dot}"
        for dot, entry in joins:
            assert dot not in view, f"{state.replica} reported {dot} joining twice"
            view[dot] = entry

    def check_view(self, state: State) -> None:
        view = self.views[self.states.index(state)]
        visible = {d: e for d, e in state.visible() if d[0] != state.replica}
        assert view == visible, f"{state.replica}: diffs {view} but visible {visible}"

    def deliver(self, state: State, data: bytes) -> None:
        self.report(state, *state.merge(off_wire(data)))
        self.check_view(state)

    def apply(self, operation: tuple[Any, ...]) -> None:
        kind, state = operation[0], self.replica(operation[1])
        if kind == "join":
            _, _, owner, topic, key, meta = operation
            if state.get(owner, topic, key) is None:  # as the Tracker does
                state.join(owner, topic, key, {"m": meta})
        elif kind == "leave":
            state.leave(*operation[2:])
        elif kind == "leave_owner":
            state.leave_owner(operation[2])
        elif kind == "update":
            _, _, owner, topic, key, meta = operation
            old = state.leave(owner, topic, key)
            if old is not None:
                state.join(owner, topic, key, {"m": meta, "prev": old.meta["m"]})
        elif kind == "delta":
            delta = state.take_delta()
            if delta is not None:
                self.messages.append(on_wire(delta))
        elif kind == "extract":
            self.messages.append(on_wire(state.extract()))
        elif kind == "deliver":
            if self.messages:
                self.deliver(state, self.messages[operation[2] % len(self.messages)])
        elif kind == "down":
            self.report(state, [], state.replica_down(self.replica(operation[2]).replica))
        elif kind == "up":
            self.report(state, state.replica_up(self.replica(operation[2]).replica), [])
        self.check_view(state)

    def finish(self) -> None:
        """Every replica sends its last delta."""
        for state in self.states:
            delta = state.take_delta()
            if delta is not None:
                self.messages.append(on_wire(delta))

    def deliver_everything(self, rnd: random.Random) -> None:
        """Every message to every replica, each in its own random order, with duplicates."""
        for state in self.states:
            order = list(range(len(self.messages)))
            if order:
                order += rnd.choices(order, k=rnd.randint(0, 4))
            rnd.shuffle(order)
            for i in order:
                self.deliver(state, self.messages[i])

    def expected(self) -> dict[Dot, Entry]:
        """What everyone should hold in the end: each replica's own live entries."""
        expected: dict[Dot, Entry] = {}
        for state in self.states:
            expected.update(own_entries(state))
        return expected


HISTORY = st.tuples(st.integers(2, 4), st.lists(OPERATION, min_size=15, max_size=60))


def run(history: tuple[int, list[tuple[Any, ...]]]) -> Cluster:
    size, operations = history
    cluster = Cluster(size)
    for operation in operations:
        cluster.apply(operation)
    cluster.finish()
    return cluster


def fragments(cluster: Cluster) -> list[bytes]:
    """Every fragment of a history, and each replica's final state."""
    return cluster.messages + [on_wire(s.extract()) for s in cluster.states]


class MergeLatticeTests(SynchronousTestCase):
    """
    Merge is a join: commutative, associative and idempotent, on the
    fragments real histories produce.
    """

    @PROPERTY
    @given(HISTORY, st.data())
    def test_commutative(self, history: Any, data: st.DataObject) -> None:
        """Merging x then y gives the same values and seen dots as y then x."""
        cluster = run(history)
        x = off_wire(data.draw(st.sampled_from(fragments(cluster))))
        y = off_wire(data.draw(st.sampled_from(fragments(cluster))))
        self.assertEqual(normal(join_all(x, y)), normal(join_all(y, x)))

    @PROPERTY
    @given(HISTORY, st.data())
    def test_associative(self, history: Any, data: st.DataObject) -> None:
        """(x merge y) merge z and x merge (y merge z) have the same values and seen dots."""
        cluster = run(history)
        x, y, z = (off_wire(data.draw(st.sampled_from(fragments(cluster)))) for _ in range(3))
        left = join_all(join_all(x, y).extract(), z)
        right = join_all(x, join_all(y, z).extract())
        self.assertEqual(normal(left), normal(right))

    @PROPERTY
    @given(HISTORY, st.data())
    def test_idempotent(self, history: Any, data: st.DataObject) -> None:
        """Merging a fragment twice is merging it once, which reproduces the fragment; the second merge reports nothing."""
        cluster = run(history)
        x = off_wire(data.draw(st.sampled_from(fragments(cluster))))
        once = join_all(x)
        self.assertEqual(normal(once), normal(x))
        self.assertEqual(once.merge(x), ([], []))
        self.assertEqual(normal(once), normal(x))


class ConvergenceTests(SynchronousTestCase):
    """
    Replicas that receive each other's deltas and extracts, in any order and
    any number of times, converge.
    """

    @PROPERTY
    @given(HISTORY, st.randoms(use_true_random=False))
    def test_anyOrderConverges(self, history: Any, rnd: random.Random) -> None:
        """After every fragment reached every replica in any order, with duplicates, all hold exactly the owners' live entries and the same clocks; the reported diffs always match what is visible."""
        cluster = run(history)
        for state in cluster.states:  # bring everyone up: then visible() is values
            for other in cluster.states:
                cluster.report(state, state.replica_up(other.replica), [])
        cluster.deliver_everything(rnd)
        expected = sorted(cluster.expected().items())
        clocks = {s.replica: s.clock for s in cluster.states}
        for state in cluster.states:
            self.assertEqual(state.visible(), expected)
            for topic in TOPICS:
                self.assertEqual(state.list(topic), [(d, e) for d, e in expected if e.topic == topic])
            self.assertEqual({r: n for r, n in state.context.items() if n}, {r: n for r, n in clocks.items() if n})
            self.assertEqual(state.cloud, set())
            cluster.check_view(state)

    @PROPERTY
    @given(HISTORY, st.randoms(use_true_random=False))
    def test_staleFragmentsChangeNothing(self, history: Any, rnd: random.Random) -> None:
        """Once converged, delivering every old delta and extract again (removed entries included) changes nothing and reports nothing."""
        cluster = run(history)
        cluster.deliver_everything(rnd)
        before = [normal(s) for s in cluster.states]
        for state in cluster.states:
            for data in rnd.sample(cluster.messages, len(cluster.messages)):
                self.assertEqual(state.merge(off_wire(data)), ([], []))
        self.assertEqual([normal(s) for s in cluster.states], before)

    @PROPERTY
    @given(HISTORY, st.randoms(use_true_random=False))
    def test_onlyOwnersRemove(self, history: Any, rnd: random.Random) -> None:
        """Leaves on one replica never remove another replica's entries: every replica still holds every live entry of every other."""
        cluster = run(history)
        cluster.deliver_everything(rnd)
        for state in cluster.states:
            for other in cluster.states:
                for dot, entry in own_entries(other).items():
                    self.assertEqual(state.values.get(dot), entry)

    @PROPERTY
    @given(HISTORY, st.randoms(use_true_random=False), st.integers(0, 3), st.integers(0, 3))
    def test_removedReplicaNeverReturns(self, history: Any, rnd: random.Random, who: int, whom: int) -> None:
        """After remove_replica, no fragment brings the replica's entries back, and the others' entries still converge."""
        cluster = run(history)
        state, gone = cluster.replica(who), cluster.replica(whom)
        if state is gone:
            gone = cluster.replica(whom + 1)
        cluster.report(state, [], state.remove_replica(gone.replica))
        cluster.deliver_everything(rnd)
        expected = {d: e for d, e in cluster.expected().items() if d[0] != gone.replica}
        self.assertEqual(state.values, expected)
        self.assertNotIn(gone.replica, state.context)
        self.assertFalse({d for d in state.cloud if d[0] == gone.replica})


class LocalChangesTests(SynchronousTestCase):
    """
    Tests for the local operations of L{State} and the deltas they make.
    """

    def test_join(self) -> None:
        """join adds an entry under a new dot of this replica and returns the dot."""
        s = State("a")
        self.assertEqual(s.join("o1", "t", "k", {"x": 1}), ("a", 1))
        self.assertEqual(s.join("o1", "t", "k2", {}), ("a", 2))
        self.assertEqual(s.get("o1", "t", "k"), Entry("t", "o1", "k", {"x": 1}))
        self.assertEqual(s.list("t"), [(("a", 1), Entry("t", "o1", "k", {"x": 1})), (("a", 2), Entry("t", "o1", "k2", {}))])
        self.assertEqual(s.list("other"), [])

    def test_leave(self) -> None:
        """leave removes and returns the entry for (owner, topic, key), None if there is none."""
        s = State("a")
        s.join("o1", "t", "k", {"x": 1})
        s.join("o1", "t2", "k", {"x": 2})
        self.assertEqual(s.leave("o1", "t", "k"), Entry("t", "o1", "k", {"x": 1}))
        self.assertIsNone(s.leave("o1", "t", "k"))
        self.assertIsNone(s.get("o1", "t", "k"))
        self.assertEqual([e.topic for _, e in s.visible()], ["t2"])
        self.assertEqual(list(s.topics()), ["t2"])

    def test_leaveOwner(self) -> None:
        """leave_owner removes every entry of one owner and no other."""
        s = State("a")
        s.join("o1", "t", "k", {})
        s.join("o1", "t2", "k2", {})
        s.join("o2", "t", "k", {})
        self.assertEqual(sorted(e.topic for e in s.leave_owner("o1")), ["t", "t2"])
        self.assertEqual([e.owner for _, e in s.visible()], ["o2"])
        self.assertEqual(s.leave_owner("o1"), [])

    def test_takeDelta(self) -> None:
        """take_delta returns the changes since the last call, then None until the next change."""
        s = State("a")
        self.assertIsNone(s.take_delta())
        dot = s.join("o1", "t", "k", {})
        delta = s.take_delta()
        self.assertEqual(delta.values, {dot: Entry("t", "o1", "k", {})})
        self.assertIn(dot, seen_dots(delta))
        self.assertIsNone(s.take_delta())

    def test_joinThenLeaveInOneDelta(self) -> None:
        """An entry added and removed within one delta travels as a seen dot without a value, so a stale extract cannot add it later."""
        a, b = State("a"), State("b")
        a.join("o1", "t", "k", {})
        stale = a.extract()
        a.leave("o1", "t", "k")
        delta = a.take_delta()
        self.assertEqual(delta.values, {})
        self.assertEqual(b.merge(delta), ([], []))
        self.assertEqual(b.merge(stale), ([], []))
        self.assertEqual(b.values, {})

    def test_leaveAdvancesClock(self) -> None:
        """A leave takes a dot of its own, so a peer that missed it sees a gap between its context and the replica's clock."""
        a, b = State("a"), State("b")
        a.join("o1", "t", "k", {})
        b.merge(a.take_delta())
        self.assertEqual(b.context["a"], a.clock)
        a.leave("o1", "t", "k")
        a.take_delta()  # lost on its way to b
        self.assertLess(b.context["a"], a.clock)
        b.merge(a.extract())  # the repair: a transfer
        self.assertEqual(b.context["a"], a.clock)
        self.assertEqual(b.values, {})


class ObservedRemoveTests(SynchronousTestCase):
    """
    Only the replica that added an entry removes it; removals win over older
    copies of the entry.
    """

    def test_leaveIgnoresOtherReplicasEntries(self) -> None:
        """leave, leave_owner and get on one replica ignore entries another replica added for the same owner name."""
        a, b = State("a"), State("b")
        a.join("o1", "t", "k", {"from": "a"})
        b.merge(a.take_delta())
        self.assertIsNone(b.get("o1", "t", "k"))
        self.assertIsNone(b.leave("o1", "t", "k"))
        self.assertEqual(b.leave_owner("o1"), [])
        self.assertIsNone(b.take_delta())
        self.assertEqual([e.meta for _, e in b.list("t")], [{"from": "a"}])

    def test_concurrentAddSurvives(self) -> None:
        """Two replicas add the same (owner, topic, key); one leaves; the other's entry survives everywhere."""
        a, b = State("a"), State("b")
        a.join("o1", "t", "k", {"from": "a"})
        b.join("o1", "t", "k", {"from": "b"})
        da, db = a.take_delta(), b.take_delta()
        a.merge(db)
        b.merge(da)
        self.assertEqual(a.leave("o1", "t", "k"), Entry("t", "o1", "k", {"from": "a"}))
        leave = a.take_delta()
        self.assertEqual(b.merge(leave), ([], [(("a", 1), Entry("t", "o1", "k", {"from": "a"}))]))
        for s in (a, b):
            self.assertEqual([e.meta for _, e in s.list("t")], [{"from": "b"}])

    def test_removedEntryNeverReturns(self) -> None:
        """A peer that saw a removal ignores the entry in an older delta or extract, in either order of arrival."""
        a = State("a")
        a.join("o1", "t", "k", {})
        join_delta, old_extract = a.take_delta(), a.extract()
        a.leave("o1", "t", "k")
        leave_delta = a.take_delta()
        for order in ([join_delta, leave_delta, old_extract], [leave_delta, join_delta, old_extract],
                      [old_extract, leave_delta, join_delta, old_extract]):
            b = State("b")
            for fragment in order:
                b.merge(fragment)
            self.assertEqual(b.values, {})
            self.assertEqual(b.visible(), [])

    def test_mergeReportsJoinsAndLeaves(self) -> None:
        """merge returns the entries it added as joins and those it removed as leaves; an update is both at once."""
        a, b = State("a"), State("b")
        dot = a.join("o1", "t", "k", {"v": 1})
        self.assertEqual(b.merge(a.take_delta()), ([(dot, Entry("t", "o1", "k", {"v": 1}))], []))
        a.leave("o1", "t", "k")
        new = a.join("o1", "t", "k", {"v": 2})
        joins, leaves = b.merge(a.take_delta())
        self.assertEqual(joins, [(new, Entry("t", "o1", "k", {"v": 2}))])
        self.assertEqual(leaves, [(dot, Entry("t", "o1", "k", {"v": 1}))])

    def test_ownEntriesComeOnlyFromOwnChanges(self) -> None:
        """A replica ignores its own dots in a peer's fragment: neither a stale copy nor a missing one changes them."""
        a, b = State("a"), State("b")
        a.join("o1", "t", "k", {})
        b.merge(a.take_delta())
        copy = b.extract()
        a.leave("o1", "t", "k")
        self.assertEqual(a.merge(copy), ([], []))
        self.assertEqual(a.values, {})
        a.join("o2", "t", "k", {})
        self.assertEqual(a.merge(b.extract()), ([], []))  # b has not seen ("a", 3)
        self.assertEqual(len(a.values), 1)

    def test_extractExclude(self) -> None:
        """extract(exclude=r) leaves out r's entries (r knows them), and r merging it keeps its own."""
        a, b = State("a"), State("b")
        a.join("o1", "t", "k", {})
        b.join("o2", "t", "k", {})
        b.merge(a.take_delta())
        for_a = b.extract(exclude="a")
        self.assertEqual([d[0] for d in for_a.values], ["b"])
        self.assertEqual(a.merge(for_a)[1], [])
        self.assertEqual(sorted(d[0] for d in a.values), ["a", "b"])


class ReplicaStatusTests(SynchronousTestCase):
    """
    Tests for replica_down, replica_up and remove_replica.
    """

    def setUp(self) -> None:
        self.a, self.b = State("a"), State("b")
        self.dot = self.a.join("o1", "t", "k", {"v": 1})
        self.entry = Entry("t", "o1", "k", {"v": 1})
        self.b.merge(self.a.take_delta())

    def test_down(self) -> None:
        """A down replica's entries are hidden and returned as leaves, once."""
        self.assertEqual(self.b.replica_down("a"), [(self.dot, self.entry)])
        self.assertEqual(self.b.list("t"), [])
        self.assertEqual(self.b.visible(), [])
        self.assertEqual(self.b.replica_down("a"), [])
        self.assertEqual(self.b.values, {self.dot: self.entry})  # kept

    def test_up(self) -> None:
        """An up replica's entries are shown again and returned as joins; up on an up replica returns nothing."""
        self.assertEqual(self.b.replica_up("a"), [])
        self.b.replica_down("a")
        self.assertEqual(self.b.replica_up("a"), [(self.dot, self.entry)])
        self.assertEqual(self.b.list("t"), [(self.dot, self.entry)])

    def test_mergeWhileDown(self) -> None:
        """Changes merged while a replica is down are kept silently, and the entries then present are the joins when it comes back."""
        self.b.replica_down("a")
        self.a.leave("o1", "t", "k")
        dot2 = self.a.join("o1", "t", "k", {"v": 2})
        self.assertEqual(self.b.merge(self.a.take_delta()), ([], []))
        self.assertEqual(self.b.visible(), [])
        self.assertEqual(self.b.replica_up("a"), [(dot2, Entry("t", "o1", "k", {"v": 2}))])

    def test_ownReplicaNeverDown(self) -> None:
        """A replica cannot mark itself down or remove itself."""
        self.assertEqual(self.a.replica_down("a"), [])
        self.assertEqual(self.a.remove_replica("a"), [])
        self.assertEqual(self.a.visible(), [(self.dot, self.entry)])

    def test_removeReplica(self) -> None:
        """remove_replica drops the replica's entries, returns the visible ones as leaves, and forgets its clock."""
        self.assertEqual(self.b.remove_replica("a"), [(self.dot, self.entry)])
        self.assertEqual(self.b.values, {})
        self.assertNotIn("a", self.b.context)

    def test_removeDownReplica(self) -> None:
        """Removing a replica that is down returns nothing: its leaves were reported when it went down."""
        self.b.replica_down("a")
        self.assertEqual(self.b.remove_replica("a"), [])
        self.assertEqual(self.b.values, {})
        self.assertNotIn("a", self.b.down)

    def test_removedReplicaNotResurrected(self) -> None:
        """After remove_replica, the replica's entries in a stale extract, a third replica's state or its own later deltas are ignored."""
        c = State("c")
        c.merge(self.a.extract())
        stale = self.a.extract()
        self.b.remove_replica("a")
        self.a.join("o2", "t", "k", {})
        for fragment in (stale, c.extract(), self.a.take_delta(), self.a.extract()):
            self.assertEqual(self.b.merge(fragment), ([], []))
        self.assertEqual(self.b.values, {})
        self.assertNotIn("a", self.b.context)
        self.assertEqual(self.b.cloud, set())


class FragmentWireTests(SynchronousTestCase):
    """
    Tests for L{Fragment.to_wire} and L{Fragment.from_wire}.
    """

    @PROPERTY
    @given(HISTORY)
    def test_roundTrip(self, history: Any) -> None:
        """Every fragment a history produces survives to_wire, JSON and from_wire unchanged."""
        cluster = run(history)
        for state in cluster.states:
            for fragment in (state.extract(), state.extract(exclude="r0")):
                back = off_wire(on_wire(fragment))
                self.assertEqual(back.values, fragment.values)
                self.assertEqual(back.context, fragment.context)
                self.assertEqual(back.cloud, fragment.cloud)

    def test_roundTripDelta(self) -> None:
        """A delta with values and removals round-trips through the wire format."""
        s = State("n@h/1")
        s.join("o1", "t", "k", {"a": [1, {"b": None}]})
        s.join("o1", "t", "k2", {})
        s.leave("o1", "t", "k2")
        delta = s.take_delta()
        back = off_wire(on_wire(delta))
        self.assertEqual((back.values, back.context, back.cloud), (delta.values, delta.context, delta.cloud))
        self.assertIsInstance(next(iter(back.values)), tuple)

    BAD = [
        None,
        [],
        "values",
        {},
        {"values": [], "context": {}},
        {"values": [], "cloud": []},
        {"context": {}, "cloud": []},
        {"values": [["r", 1, "t", "o", "k"]], "context": {}, "cloud": []},
        {"values": [["r", 1, "t", "o", "k", {}, "extra"]], "context": {}, "cloud": []},
        {"values": [[1, 1, "t", "o", "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", -1, "t", "o", "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", 1.0, "t", "o", "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", True, "t", "o", "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", "1", "t", "o", "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", 1, None, "o", "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", 1, "t", 7, "k", {}]], "context": {}, "cloud": []},
        {"values": [["r", 1, "t", "o", ["k"], {}]], "context": {}, "cloud": []},
        {"values": [["r", 1, "t", "o", "k", []]], "context": {}, "cloud": []},
        {"values": [5], "context": {}, "cloud": []},
        {"values": {"r": 1}, "context": {}, "cloud": []},
        {"values": [], "context": [], "cloud": []},
        {"values": [], "context": {"r": -2}, "cloud": []},
        {"values": [], "context": {"r": "3"}, "cloud": []},
        {"values": [], "context": {"r": None}, "cloud": []},
        {"values": [], "context": {}, "cloud": [["r"]]},
        {"values": [], "context": {}, "cloud": [["r", 1, 2]]},
        {"values": [], "context": {}, "cloud": [[1, 1]]},
        {"values": [], "context": {}, "cloud": [["r", False]]},
        {"values": [], "context": {}, "cloud": 3},
        {"values": [], "context": {}, "cloud": None},
    ]

    def test_malformed(self) -> None:
        """from_wire rejects every malformed fragment with WireError."""
        for data in self.BAD:
            try:
                Fragment.from_wire(data)
            except WireError:
                continue
            self.fail(f"from_wire accepted {data!r}")

    def test_wireErrorIsValueError(self) -> None:
        """WireError is a ValueError."""
        self.assertTrue(issubclass(WireError, ValueError))

    JSON = st.recursive(
        st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=6),
        lambda children: st.lists(children, max_size=7) | st.dictionaries(st.text(max_size=6), children, max_size=4),
        max_leaves=12,
    )

    @PROPERTY
    @given(st.one_of(
        JSON,
        st.fixed_dictionaries({"values": JSON, "context": JSON, "cloud": JSON}),
        st.fixed_dictionaries({
            "values": st.lists(st.lists(JSON, min_size=6, max_size=6), max_size=3),
            "context": st.dictionaries(st.text(max_size=3), JSON, max_size=3),
            "cloud": st.lists(st.lists(JSON, min_size=2, max_size=2), max_size=3),
        }),
    ))
    def test_anyJSON(self, data: Any) -> None:
        """from_wire of any JSON value returns a well-typed Fragment or raises WireError, nothing else."""
        try:
            fragment = Fragment.from_wire(data)
        except WireError:
            return
        for (r, n), entry in fragment.values.items():
            self.assertIsInstance(r, str)
            self.assertIs(type(n), int)
            self.assertIsInstance(entry.meta, dict)
        for r, n in fragment.context.items():
            self.assertIsInstance(r, str)
            self.assertIs(type(n), int)
        for r, n in fragment.cloud:
            self.assertIsInstance(r, str)
            self.assertIs(type(n), int)
