# -*- test-case-name: tests.test_presence -*-
"""
Presence: who is on a topic, across the cluster (Phoenix.Presence).

In a channel::

    class RoomChannel(Channel):
        def join(self, topic, payload):
            self.send("after_join")
            return ok()

        def handle_info(self, message):
            if message == "after_join":
                presence = self.endpoint.presence
                presence.track(self, self.assigns["user_id"], {"online_at": int(self.endpoint.reactor.seconds())})
                self.push("presence_state", presence.list(self.topic))

Every change is pushed to the topic's subscribers on every node as
``presence_diff`` ``{"joins": {...}, "leaves": {...}}``, which phoenix.js's
``Presence`` understands.  An entry leaves when its channel ends, however it
ends.  Subclass :class:`Presence` and override :meth:`~Presence.fetch` to add
data to what ``list`` and the diffs show, then set the endpoint's
``presence_class``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.logger import Logger

from .tracker import Diff, Tracker

if TYPE_CHECKING:
    from ..channel import Channel
    from ..endpoint import Endpoint

__all__ = ["AlreadyTracked", "Presence", "Tracker"]

Presences = dict[str, dict[str, list[dict[str, Any]]]]

log = Logger()


class AlreadyTracked(Exception):
    """This channel already tracks that key on that topic."""


class Presence:
    """
    The presence API of one endpoint.

    :param endpoint: the endpoint (its reactor and PubSub).
    :param options: passed to :class:`~twisted_phoenix.presence.tracker.Tracker`
        (``broadcast_period``, ``down_period``, ...).
    """

    def __init__(self, endpoint: Endpoint, **options: Any) -> None:
        self.endpoint = endpoint
        self.tracker = Tracker(endpoint.reactor, endpoint.pubsub, self._diff, **options)
        self._owners: dict[int, str] = {}
        self._next_owner = 0
        #: Diffs made this reactor turn, sent on the next one.
        self._pending_diffs: list[Diff] = []

    def start(self) -> None:
        """Start replicating (called by the endpoint's service)."""
        self.tracker.start()

    def stop(self) -> None:
        """Stop replicating; the other nodes drop this node's entries."""
        self.tracker.stop()

    # -- tracking ----------------------------------------------------------------

    def _owner(self, channel: Channel) -> str:
        server = channel._server
        owner = self._owners.get(id(server))
        if owner is None:
            self._next_owner += 1
            owner = self._owners[id(server)] = str(self._next_owner)

            def ended() -> None:
                del self._owners[id(server)]
                self.tracker.untrack_owner(owner)

            server.on_end(ended)
        return owner

    def track(self, channel: Channel, key: Any, meta: dict[str, Any], *, topic: str | None = None) -> str:
        """
        Track ``key`` with ``meta`` on the channel's topic (or ``topic``)
        for as long as the channel lives.  Returns the ``phx_ref``.

        :raises AlreadyTracked: if this channel already tracks ``key`` there.
        """
        topic = channel.topic if topic is None else topic
        owner = self._owner(channel)
        ref = self.tracker.track(owner, topic, str(key), dict(meta))
        if ref is None:
            raise AlreadyTracked(topic, key)
        if id(channel._server) not in self._owners:
            # The channel had already ended (its end callback ran at once):
            # like a dead pid in Phoenix, the entry joins and leaves at once.
            self.tracker.untrack_owner(owner)
        return ref

    def untrack(self, channel: Channel, key: Any, *, topic: str | None = None) -> None:
        """Stop tracking ``key`` for this channel."""
        owner = self._owners.get(id(channel._server))
        if owner is not None:
            self.tracker.untrack(owner, channel.topic if topic is None else topic, str(key))

    def update(
        self,
        channel: Channel,
        key: Any,
        meta: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]],
        *,
        topic: str | None = None,
    ) -> str | None:
        """
        Replace the meta of a tracked key (or apply ``meta`` to the old one
        when it is a function).  Returns the new ``phx_ref``, or ``None`` if
        the key is not tracked (Phoenix's ``{:error, :nopresence}``).
        """
        topic = channel.topic if topic is None else topic
        owner = self._owners.get(id(channel._server))
        if owner is None:
            return None
        if callable(meta):
            old = self.tracker.get(owner, topic, str(key))
            if old is None:
                return None
            meta = meta(dict(old.meta))
        meta = {k: v for k, v in meta.items() if k not in ("phx_ref", "phx_ref_prev")}
        return self.tracker.update(owner, topic, str(key), meta)

    # -- reading --------------------------------------------------------------------

    def list(self, topic: str | Channel) -> Presences:
        """``{key: {"metas": [meta, ...]}}`` for a topic (or a channel's topic), through :meth:`fetch`."""
        if not isinstance(topic, str):
            topic = topic.topic
        presences: Presences = {}
        for entry in self.tracker.list(topic):
            presences.setdefault(entry.key, {"metas": []})["metas"].append(entry.meta)
        return self.fetch(topic, presences)

    def get_by_key(self, topic: str | Channel, key: Any) -> dict[str, list[dict[str, Any]]] | None:
        """``{"metas": [...]}`` for one key, or ``None``."""
        if not isinstance(topic, str):
            topic = topic.topic
        key = str(key)
        metas = [e.meta for e in self.tracker.list(topic) if e.key == key]
        if not metas:
            return None
        return self.fetch(topic, {key: {"metas": metas}}).get(key)

    def fetch(self, topic: str, presences: Presences) -> Presences:
        """
        Override to add data to each key's entry (Phoenix's ``fetch/2``), e.g.
        a user record next to ``"metas"``.  Called for ``list`` and for
        every diff.
        """
        return presences

    # -- diffs ------------------------------------------------------------------------

    def _diff(self, diff: Diff) -> None:
        # As in Phoenix, diffs go out asynchronously (in order): a channel
        # that tracks and then pushes presence_state sends the state first.
        # One timer for all the diffs of a turn: a timer per diff cost as
        # much as the rest of a track (docs/benchmarks.rst, "Presence replication").
        self._pending_diffs.append(diff)
        if len(self._pending_diffs) == 1:
            self.endpoint.reactor.callLater(0, self._send_diffs)

    def _send_diffs(self) -> None:
        # Diffs made while these go out wait for the next turn, as before.
        diffs, self._pending_diffs = self._pending_diffs, []
        for diff in diffs:
            try:
                self._send_diff(diff)
            except Exception:
                log.failure("Sending a presence diff failed")

    def _send_diff(self, diff: Diff) -> None:
        for topic, (joins, leaves) in diff.items():
            payload = {
                "joins": self.fetch(topic, {k: {"metas": m} for k, m in joins.items()}),
                "leaves": self.fetch(topic, {k: {"metas": m} for k, m in leaves.items()}),
            }
            self.endpoint.pubsub.local_broadcast(topic, "presence_diff", payload)
