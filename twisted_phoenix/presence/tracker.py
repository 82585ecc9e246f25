# -*- test-case-name: tests.test_presence_tracker,tests.test_presence -*-
"""
The Tracker: runs a :class:`~twisted_phoenix.presence._state.State` on one
node, like phoenix_pubsub's ``Phoenix.Tracker.Shard``.

* Local changes (track, untrack, update, an owner ending) change the state,
  are reported at once as diffs, and accumulate in a delta.
* Every ``broadcast_period`` the delta is gossiped to the other nodes over
  the cluster PubSub (topic ``phx_presence:<name>``); a quiet tracker still
  sends an empty heartbeat every ``max_silent_periods`` periods.
* A replica that hears of a new replica, or notices a gap in another's
  clock, asks it for its whole state (``transfer_req``/``transfer_ack``).
* A replica silent for ``down_period`` is *down*: its entries are hidden and
  reported as leaves, and shown again (as joins) if it comes back.  After
  ``permdown_period`` they are dropped for good.  A restarted node is a new
  replica: the old one's entries are dropped as soon as the new one speaks.
* A tracker that stops cleanly tells the others to drop its replica at once.
"""

from __future__ import annotations

import base64
import secrets
import zlib
from typing import Any, Callable

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .._log import limited_log, truncate
from ..message import Broadcast
from ..pubsub import CallbackSubscriber, PubSub
from ._state import Dot, Entry, Fragment, State, WireError

__all__ = ["Tracker", "Diff", "check_periods"]

log = Logger()

#: ``{topic: (joins, leaves)}`` with joins and leaves as ``{key: [meta, ...]}``.
Diff = dict[str, tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]]


class _Replica:
    __slots__ = ("name", "node", "last_heard", "up", "transfer_asked")

    def __init__(self, name: str, node: str, now: float) -> None:
        self.name = name
        self.node = node
        self.last_heard = now
        self.up = True
        self.transfer_asked = -1.0


def check_periods(
    broadcast_period: float = 1.5,
    max_silent_periods: int = 10,
    down_period: float | None = None,
    permdown_period: float = 1200.0,
) -> float:
    """
    Check a tracker's periods (the :class:`Tracker` options); return the
    down period, computed when not given.

    :raises ValueError: when they do not make sense together.
    """
    if down_period is None:
        down_period = broadcast_period * max_silent_periods * 2
    if down_period < 2 * broadcast_period:
        raise ValueError("down_period must be at least twice broadcast_period")
    if permdown_period <= down_period:
        raise ValueError("permdown_period must be greater than down_period")
    return down_period


class Tracker:
    """
    Presence entries of this node, replicated to every node.

    :param reactor: provides time.
    :param pubsub: the node's PubSub (wired to the cluster, if any).
    :param on_diff: called with a :data:`Diff` after every change, local or
        remote.
    :param name: the tracker's name; trackers of the same name replicate.
    :param broadcast_period: seconds between gossip rounds (1.5).
    :param max_silent_periods: rounds without changes before an empty
        heartbeat is sent anyway (10).
    :param down_period: seconds of silence before a replica is down
        (default ``broadcast_period * max_silent_periods * 2``).
    :param permdown_period: seconds of silence before a replica's entries
        are dropped (1200).
    """

    def __init__(
        self,
        reactor: Any,
        pubsub: PubSub,
        on_diff: Callable[[Diff], None],
        *,
        name: str = "presence",
        broadcast_period: float = 1.5,
        max_silent_periods: int = 10,
        down_period: float | None = None,
        permdown_period: float = 1200.0,
    ) -> None:
        down_period = check_periods(broadcast_period, max_silent_periods, down_period, permdown_period)
        self.reactor = reactor
        self.pubsub = pubsub
        self.on_diff = on_diff
        self.topic = f"phx_presence:{name}"
        self.broadcast_period = broadcast_period
        self.max_silent_periods = max_silent_periods
        self.down_period = down_period
        self.permdown_period = permdown_period
        self.node = pubsub.node_name
        self.replica = f"{self.node}/{secrets.token_hex(6)}"
        self.state = State(self.replica)
        self.replicas: dict[str, _Replica] = {}
        self._silent = 0
        self._ref_counter = 0
        self._node_hash = zlib.crc32(self.replica.encode()) & 0xFFFF
        self._subscriber = CallbackSubscriber(self._gossip)
        #: Replicas dropped for silence alone, which may still come back.
        self._timed_out: set[str] = set()
        self._stopped = False
        self._loop: LoopingCall | None = None
        #: Bytes of gossip this tracker has sent (for the benchmark).
        self.gossip_bytes = 0

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Join the gossip: heartbeats, and a request for everyone's state."""
        if self._stopped:
            # Peers dropped this replica for good when it stopped.
            raise RuntimeError("a stopped Tracker cannot start again; make a new one")
        self.pubsub.subscribe(self.topic, self._subscriber)
        callbacks = getattr(self.pubsub.adapter, "node_up_callbacks", None)
        if callbacks is not None:
            callbacks.append(self._node_up)
        self._loop = LoopingCall(self.heartbeat)
        self._loop.clock = self.reactor
        self._loop.start(self.broadcast_period, now=False)
        self._send("transfer_req", {})

    def _node_up(self, node: str) -> None:
        # A new link: exchange whole states now rather than at the next beat.
        self._send("transfer_req", {}, node=node)

    def stop(self) -> None:
        """Leave: peers drop this replica's entries at once."""
        self._stopped = True
        callbacks = getattr(self.pubsub.adapter, "node_up_callbacks", None)
        if callbacks is not None and self._node_up in callbacks:
            callbacks.remove(self._node_up)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.pubsub.unsubscribe(self.topic, self._subscriber)
        self._send("permdown", {})

    # -- local API ------------------------------------------------------------------

    def make_ref(self) -> str:
        """A new ``phx_ref``: 12 bytes (time, replica, counter) as 16 URL-safe characters."""
        self._ref_counter = (self._ref_counter + 1) & 0xFFFF
        ns = int(self.reactor.seconds() * 1e9) & 0xFFFFFFFFFFFFFFFF
        raw = ns.to_bytes(8, "big") + self._node_hash.to_bytes(2, "big") + self._ref_counter.to_bytes(2, "big")
        return base64.urlsafe_b64encode(raw).decode("ascii")

    def track(self, owner: str, topic: str, key: str, meta: dict[str, Any]) -> str | None:
        """Track ``key`` on ``topic`` for ``owner``; ``None`` if already tracked."""
        if self.state.get(owner, topic, key) is not None:
            return None
        ref = self.make_ref()
        meta = {**meta, "phx_ref": ref}
        dot = self.state.join(owner, topic, key, meta)
        self._report([(dot, Entry(topic, owner, key, meta))], [])
        return ref

    def update(self, owner: str, topic: str, key: str, meta: dict[str, Any]) -> str | None:
        """Replace the meta of a tracked key; ``None`` if not tracked."""
        old = self.state.leave(owner, topic, key)
        if old is None:
            return None
        ref = self.make_ref()
        meta = {**meta, "phx_ref": ref, "phx_ref_prev": old.meta.get("phx_ref")}
        dot = self.state.join(owner, topic, key, meta)
        self._report([(dot, Entry(topic, owner, key, meta))], [((self.replica, 0), old)])
        return ref

    def untrack(self, owner: str, topic: str, key: str) -> None:
        """Stop tracking ``key`` on ``topic`` for ``owner``."""
        old = self.state.leave(owner, topic, key)
        if old is not None:
            self._report([], [((self.replica, 0), old)])

    def untrack_owner(self, owner: str) -> None:
        """Stop tracking everything of ``owner``."""
        gone = self.state.leave_owner(owner)
        if gone:
            self._report([], [((self.replica, 0), e) for e in gone])

    def get(self, owner: str, topic: str, key: str) -> Entry | None:
        """The entry of ``owner`` for (topic, key)."""
        return self.state.get(owner, topic, key)

    def list(self, topic: str) -> list[Entry]:
        """The visible entries of ``topic``, on every node."""
        return [entry for _, entry in self.state.list(topic)]

    # -- gossip ---------------------------------------------------------------------

    def heartbeat(self) -> None:
        """One gossip round: send the delta (or a periodic empty beat), detect downs."""
        delta = self.state.take_delta()
        self._silent += 1
        if delta is not None or self._silent >= self.max_silent_periods:
            self._silent = 0
            self._send("heartbeat", {
                "delta": delta.to_wire() if delta is not None else None,
                "clock": self.state.clock,
            })
        self.detect_downs()

    def detect_downs(self) -> None:
        """Mark replicas down, or drop them, by how long they have been silent."""
        now = self.reactor.seconds()
        for replica in list(self.replicas.values()):
            silent = now - replica.last_heard
            if silent > self.permdown_period:
                self._timed_out.add(replica.name)
                self._permdown(replica)
            elif replica.up and silent > self.down_period:
                replica.up = False
                log.warn("Presence replica {replica} is down", replica=replica.name)
                self._report([], self.state.replica_down(replica.name))

    def _send(self, event: str, payload: dict[str, Any], node: str | None = None) -> None:
        payload = {**payload, "replica": self.replica, "node": self.node}
        if node is None:
            self.pubsub.broadcast(self.topic, event, payload)
        else:
            self.pubsub.direct_broadcast(node, self.topic, event, payload)
        if self.pubsub.adapter is not None:
            from ..serializers import json_dumps

            self.gossip_bytes += len(json_dumps(payload))

    def _gossip(self, message: Broadcast) -> None:
        payload = message.payload
        if not isinstance(payload, dict):
            limited_log(log, self.reactor, self).error(
                "Ignored bad presence gossip: a {event} that is not a map", event=truncate(message.event)
            )
            return
        replica_name, node = payload.get("replica"), payload.get("node")
        if replica_name == self.replica or not isinstance(replica_name, str) or not isinstance(node, str):
            return
        try:
            if message.event == "heartbeat":
                known = self._heard(replica_name, node)
                if payload.get("delta") is not None:
                    self._merge(Fragment.from_wire(payload["delta"]))
                clock = payload.get("clock")
                if known is not None and type(clock) is int and self.state.context.get(replica_name, 0) < clock:
                    self._ask_transfer(known)
            elif message.event == "transfer_req":
                self._heard(replica_name, node)
                state = self.state.extract(exclude=replica_name)
                self._send("transfer_ack", {"state": state.to_wire()}, node=node)
            elif message.event == "transfer_ack":
                self._heard(replica_name, node)
                self._merge(Fragment.from_wire(payload["state"]))
            elif message.event == "permdown":
                replica = self.replicas.get(node)
                if replica is not None and replica.name == replica_name:
                    log.info("Presence replica {replica} left", replica=replica_name)
                    self._permdown(replica)
        except (WireError, KeyError, TypeError) as e:
            limited_log(log, self.reactor, self).error(
                "Ignored bad presence gossip from {node}: {error}",
                node=truncate(node), error=truncate(str(e)),
            )

    def _heard(self, replica_name: str, node: str) -> _Replica | None:
        if replica_name in self._timed_out and node not in self.replicas:
            # Dropped after permdown_period of silence, yet alive: a long
            # partition healed.  Phoenix takes such a replica back as new.
            log.info("Presence replica {replica} is back after a long silence", replica=replica_name)
            self._timed_out.discard(replica_name)
            self.state.revive(replica_name)
        if replica_name in self.state.gone:
            # Dropped for good (an old incarnation of a restarted node, or a
            # stopped one): a late message from it must neither bring it back
            # nor make the node's current replica look like the old one.
            return None
        now = self.reactor.seconds()
        known = self.replicas.get(node)
        if known is not None and known.name != replica_name:
            log.info("Node {node} restarted: dropping its old presence replica", node=node)
            self._permdown(known)
            known = None
        if known is None:
            known = self.replicas[node] = _Replica(replica_name, node, now)
            self._ask_transfer(known)
        known.last_heard = now
        if not known.up:
            known.up = True
            log.info("Presence replica {replica} is up again", replica=replica_name)
            self._report(self.state.replica_up(replica_name), [])
        return known

    def _ask_transfer(self, replica: _Replica) -> None:
        now = self.reactor.seconds()
        if now - replica.transfer_asked >= self.broadcast_period:
            replica.transfer_asked = now
            self._send("transfer_req", {}, node=replica.node)

    def _merge(self, fragment: Fragment) -> None:
        joins, leaves = self.state.merge(fragment)
        if joins or leaves:
            self._report(joins, leaves)

    def _permdown(self, replica: _Replica) -> None:
        self.replicas.pop(replica.node, None)
        leaves = self.state.remove_replica(replica.name)
        if leaves:
            self._report([], leaves)

    # -- diffs ----------------------------------------------------------------------

    def _report(self, joins: list[tuple[Dot, Entry]], leaves: list[tuple[Dot, Entry]]) -> None:
        diff: Diff = {}
        for index, entries in ((0, joins), (1, leaves)):
            for _, (topic, _owner, key, meta) in entries:
                sides = diff.get(topic)
                if sides is None:
                    sides = diff[topic] = ({}, {})
                metas = sides[index].get(key)
                if metas is None:
                    sides[index][key] = [meta]
                else:
                    metas.append(meta)
        if diff:
            try:
                self.on_diff(diff)
            except Exception:
                log.failure("Presence diff handler failed")
