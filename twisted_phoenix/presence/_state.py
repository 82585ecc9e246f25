# -*- test-case-name: tests.test_presence_state -*-
"""
The replicated state behind Presence: an observed-remove set with a causal
context (an ORSWOT), like phoenix_pubsub's ``Phoenix.Tracker.State``.

Pure data and functions of it: no I/O, no clock.  Everything about time
(heartbeats, down and permdown periods) lives in
:mod:`twisted_phoenix.presence.tracker`.

Each entry is ``(topic, owner, key, meta)`` and is identified by a *dot*
``(replica, n)``: the replica (a node incarnation) that added it and that
replica's n-th event.  Only the replica that added an entry removes it.  A
state knows which dots it has *seen* (its causal context: every dot up to a
contiguous clock per replica, plus a *cloud* of dots seen out of order); an
entry it has seen but does not hold was removed.  Merging two states keeps an
entry when both hold it, or when one holds it and the other has not seen it:
merge is commutative, associative and idempotent, so replicas that exchange
their states, or the deltas of their changes, in any order, converge.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

__all__ = ["Dot", "Entry", "Fragment", "State", "WireError"]

Dot = tuple[str, int]


class Entry(NamedTuple):
    """One tracked presence."""

    topic: str
    owner: str
    key: str
    meta: dict[str, Any]


class WireError(ValueError):
    """A fragment from a peer that is not well formed."""


class Fragment:
    """
    A state or a delta as it travels between replicas: entries, and the dots
    the sender has seen (``context`` up to a clock per replica, plus ``cloud``).
    """

    __slots__ = ("values", "context", "cloud")

    def __init__(
        self,
        values: dict[Dot, Entry] | None = None,
        context: dict[str, int] | None = None,
        cloud: set[Dot] | None = None,
    ) -> None:
        self.values = values if values is not None else {}
        self.context = context if context is not None else {}
        self.cloud = cloud if cloud is not None else set()

    def seen(self, dot: Dot) -> bool:
        """Whether the sender had seen ``dot`` (added, and maybe removed it)."""
        return dot[1] <= self.context.get(dot[0], 0) or dot in self.cloud

    def __bool__(self) -> bool:
        return bool(self.values or self.cloud or self.context)

    def to_wire(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "values": [[r, n, e.topic, e.owner, e.key, e.meta] for (r, n), e in self.values.items()],
            "context": dict(self.context),
            "cloud": [[r, n] for r, n in self.cloud],
        }

    @classmethod
    def from_wire(cls, data: Any) -> Fragment:
        """Parse :meth:`to_wire`'s output, checking every field."""
        try:
            values = {}
            for r, n, topic, owner, key, meta in data["values"]:
                if not (isinstance(r, str) and _clock(n) and isinstance(topic, str)
                        and isinstance(owner, str) and isinstance(key, str) and isinstance(meta, dict)):
                    raise WireError("bad value")
                values[(r, n)] = Entry(topic, owner, key, meta)
            context = data["context"]
            if not isinstance(context, dict) or not all(
                isinstance(r, str) and _clock(n) for r, n in context.items()
            ):
                raise WireError("bad context")
            cloud = set()
            for r, n in data["cloud"]:
                if not (isinstance(r, str) and _clock(n)):
                    raise WireError("bad cloud")
                cloud.add((r, n))
        except (KeyError, TypeError, ValueError) as e:
            raise WireError(f"malformed presence fragment: {e}") from None
        return cls(values, dict(context), cloud)


def _clock(n: Any) -> bool:
    return type(n) is int and n >= 0


class State:
    """
    One replica's view of every replica's entries.

    :param replica: this replica's name (unique per node incarnation).
    """

    def __init__(self, replica: str) -> None:
        self.replica = replica
        self.values: dict[Dot, Entry] = {}
        self.context: dict[str, int] = {replica: 0}
        self.cloud: set[Dot] = set()
        #: Replicas whose entries are hidden (``down``) but kept.
        self.down: set[str] = set()
        #: Replicas dropped for good: their entries are never taken back.
        self.gone: set[str] = set()
        self._by_topic: dict[str, set[Dot]] = {}
        self._by_owner: dict[str, set[Dot]] = {}
        #: The highest dot added per replica, and the replicas whose entries
        #: were not all added in the order of their dots (see merge).
        self._last_added: dict[str, int] = {}
        self._unordered: set[str] = set()
        self._delta = Fragment()

    # -- local changes ---------------------------------------------------------

    @property
    def clock(self) -> int:
        """This replica's own event counter."""
        return self.context[self.replica]

    def join(self, owner: str, topic: str, key: str, meta: dict[str, Any]) -> Dot:
        """Add an entry; returns its dot."""
        n = self.context[self.replica] = self.context[self.replica] + 1
        dot = (self.replica, n)
        entry = Entry(topic, owner, key, meta)
        self._add(dot, entry)
        self._delta.values[dot] = entry
        self._delta.cloud.add(dot)
        return dot

    def _own(self, owner: str) -> list[Dot]:
        # Owner names are local to a node (other nodes reuse them): only this
        # replica's dots belong to this node's owners.
        return [dot for dot in self._by_owner.get(owner, ()) if dot[0] == self.replica]

    def leave(self, owner: str, topic: str, key: str) -> Entry | None:
        """Remove this replica's entry for (owner, topic, key), if any."""
        for dot in self._own(owner):
            entry = self.values[dot]
            if entry.topic == topic and entry.key == key:
                self._remove_local(dot)
                return entry
        return None

    def leave_owner(self, owner: str) -> list[Entry]:
        """Remove every entry of ``owner`` (a channel that ended) on this replica."""
        return [self._remove_local(dot) for dot in self._own(owner)]

    def _remove_local(self, dot: Dot) -> Entry:
        entry = self._remove(dot)
        self._delta.values.pop(dot, None)
        self._delta.cloud.add(dot)
        # As in Phoenix, a removal bumps the clock (a dot with no value): a
        # peer that misses this delta sees a gap between its context and our
        # clock, and asks for a transfer.
        n = self.context[self.replica] = self.context[self.replica] + 1
        self._delta.cloud.add((self.replica, n))
        return entry

    def get(self, owner: str, topic: str, key: str) -> Entry | None:
        """This replica's entry of ``owner`` for (topic, key)."""
        for dot in self._own(owner):
            entry = self.values[dot]
            if entry.topic == topic and entry.key == key:
                return entry
        return None

    # -- reading ---------------------------------------------------------------

    def list(self, topic: str) -> list[tuple[Dot, Entry]]:
        """The visible entries of ``topic`` (those of replicas that are not down), oldest first."""
        down = self.down
        return sorted(
            (dot, self.values[dot]) for dot in self._by_topic.get(topic, ()) if dot[0] not in down
        )

    def visible(self) -> list[tuple[Dot, Entry]]:
        """Every visible entry."""
        return sorted((d, e) for d, e in self.values.items() if d[0] not in self.down)

    def topics(self) -> Iterable[str]:
        """Topics with at least one entry."""
        return self._by_topic.keys()

    # -- exchange ----------------------------------------------------------------

    def take_delta(self) -> Fragment | None:
        """The changes since the last call, or ``None`` when there are none."""
        delta = self._delta
        if not delta.cloud:
            return None
        self._delta = Fragment()
        return delta

    def extract(self, exclude: str | None = None) -> Fragment:
        """The whole state, less the entries of replica ``exclude``."""
        values = {d: e for d, e in self.values.items() if d[0] != exclude}
        return Fragment(values, dict(self.context), set(self.cloud))

    def seen(self, dot: Dot) -> bool:
        """Whether this state has seen ``dot``."""
        return dot[1] <= self.context.get(dot[0], 0) or dot in self.cloud

    def merge(self, fragment: Fragment) -> tuple[list[tuple[Dot, Entry]], list[tuple[Dot, Entry]]]:
        """
        Merge a state or delta from another replica.  Returns the visible
        ``(joins, leaves)`` it caused.
        """
        joins = []
        leaves = []
        for dot, entry in fragment.values.items():
            if dot[0] in self.gone or dot[0] == self.replica or self.seen(dot):
                continue
            self._add(dot, entry)
            if dot[0] not in self.down:
                joins.append((dot, entry))
        values = self.values
        seen: list[Dot] | None = None
        if not fragment.context:
            # A delta has seen only the dots of its cloud: look at those, not
            # at every entry, so that a delta costs what it holds rather than
            # the size of the state.  Sorted, they are in the order the loop
            # below would find them in, as long as they are of one replica
            # whose entries were added here in the order of their dots.
            seen = sorted(d for d in fragment.cloud if d in values and d[0] != self.replica)
            if seen and (seen[0][0] != seen[-1][0] or seen[0][0] in self._unordered):
                seen = None
        if seen is None:
            seen = [d for d in values if d[0] != self.replica and fragment.seen(d)]
        for dot in seen:
            if dot not in fragment.values:
                entry = self._remove(dot)
                if dot[0] not in self.down:
                    leaves.append((dot, entry))
        for replica, n in fragment.context.items():
            if replica not in self.gone and n > self.context.get(replica, 0):
                self.context[replica] = n
        self.cloud |= {d for d in fragment.cloud if d[0] not in self.gone}
        self._compact()
        return joins, leaves

    def _compact(self) -> None:
        # Advance each replica's clock over the dots that follow it without
        # a gap, then drop every dot the clocks cover: a set lookup per dot,
        # no sort (a delta's cloud holds a dot per change).
        cloud = self.cloud
        if not cloud:
            return
        context = self.context
        for replica in {r for r, _ in cloud}:
            have = n = context.get(replica, 0)
            while (replica, n + 1) in cloud:
                n += 1
            if n != have:
                context[replica] = n
        self.cloud = {d for d in cloud if d[1] > context.get(d[0], 0)}

    # -- replicas ----------------------------------------------------------------

    def replica_down(self, replica: str) -> list[tuple[Dot, Entry]]:
        """Hide ``replica``'s entries; returns them (as leaves)."""
        if replica in self.down or replica == self.replica:
            return []
        self.down.add(replica)
        return [(d, e) for d, e in self.values.items() if d[0] == replica]

    def replica_up(self, replica: str) -> list[tuple[Dot, Entry]]:
        """Show ``replica``'s entries again; returns them (as joins)."""
        if replica not in self.down:
            return []
        self.down.discard(replica)
        return [(d, e) for d, e in self.values.items() if d[0] == replica]

    def remove_replica(self, replica: str) -> list[tuple[Dot, Entry]]:
        """
        Drop ``replica`` for good (permdown).  Returns the entries that were
        still visible (as leaves).
        """
        if replica == self.replica:
            return []
        visible = replica not in self.down
        removed = [(d, self._remove(d)) for d in [d for d in self.values if d[0] == replica]]
        self.gone.add(replica)
        self.down.discard(replica)
        self.context.pop(replica, None)
        self._last_added.pop(replica, None)
        self._unordered.discard(replica)
        self.cloud = {d for d in self.cloud if d[0] != replica}
        return removed if visible else []

    def revive(self, replica: str) -> None:
        """
        Accept ``replica`` again after :meth:`remove_replica` (it was only
        silent, not gone): it starts from nothing, and a transfer of its
        state brings its entries back.
        """
        self.gone.discard(replica)

    # -- indexes -------------------------------------------------------------------

    def _add(self, dot: Dot, entry: Entry) -> None:
        replica, n = dot
        if n < self._last_added.get(replica, 0):
            self._unordered.add(replica)
        else:
            self._last_added[replica] = n
        self.values[dot] = entry
        self._by_topic.setdefault(entry.topic, set()).add(dot)
        self._by_owner.setdefault(entry.owner, set()).add(dot)

    def _remove(self, dot: Dot) -> Entry:
        entry = self.values.pop(dot)
        for index, name in ((self._by_topic, entry.topic), (self._by_owner, entry.owner)):
            dots = index[name]
            dots.discard(dot)
            if not dots:
                del index[name]
        return entry
