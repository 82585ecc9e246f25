# -*- test-case-name: tests.test_client_presence -*-
"""
phoenix.js's ``Presence``: the client's copy of who is on a topic, kept in
sync from the server's ``presence_state`` and ``presence_diff`` pushes.

The state maps each key (e.g. a user id) to ``{"metas": [meta, ...]}``, one
meta per tracked connection, each with its ``phx_ref``::

    presence = Presence(channel)
    presence.on_join(lambda key, current, new: print(key, "joined"))
    presence.on_leave(lambda key, current, left: print(key, "left"))
    presence.on_sync(lambda: print(presence.list(lambda key, p: key)))
    channel.join()

Diffs that arrive before the state of the current join (the server sends
the state after the join reply, and after every rejoin) wait and are
applied on top of it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import orjson

__all__ = ["Presence"]

State = dict[str, dict[str, Any]]
OnJoin = Callable[[str, "dict[str, Any] | None", "dict[str, Any]"], Any]
OnLeave = Callable[[str, "dict[str, Any]", "dict[str, Any]"], Any]


def _clone(value: Any) -> Any:
    """A deep copy through JSON, as phoenix.js clones."""
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


def _noop(*args: Any) -> None:
    return None


def _refs(presence: Mapping[str, Any]) -> list[Any]:
    return [meta.get("phx_ref") for meta in presence["metas"]]


class Presence:
    """
    Follows the presence of a :class:`~twisted_phoenix.client.channel.Channel`'s topic.

    :param channel: the channel (joined before or after); anything with
        ``on(event, callback)`` and ``join_ref()`` does.
    :param events: the event names, ``{"state": "presence_state", "diff":
        "presence_diff"}`` by default.

    :ivar state: the current presences.
    :ivar pending_diffs: diffs waiting for the state of the current join.
    """

    def __init__(self, channel: Any, events: Mapping[str, str] | None = None) -> None:
        events = events or {"state": "presence_state", "diff": "presence_diff"}
        self.state: State = {}
        self.pending_diffs: list[Any] = []
        self.channel = channel
        self.join_ref: Any = None
        self._on_join: OnJoin = _noop
        self._on_leave: OnLeave = _noop
        self._on_sync: Callable[[], Any] = _noop
        channel.on(events["state"], self._state_received)
        channel.on(events["diff"], self._diff_received)

    def _state_received(self, new_state: Any) -> None:
        self.join_ref = self.channel.join_ref()
        self.state = Presence.sync_state(self.state, new_state, self._on_join, self._on_leave)
        pending, self.pending_diffs = self.pending_diffs, []
        for diff in pending:
            self.state = Presence.sync_diff(self.state, diff, self._on_join, self._on_leave)
        self._on_sync()

    def _diff_received(self, diff: Any) -> None:
        if self.in_pending_sync_state():
            self.pending_diffs.append(diff)
        else:
            self.state = Presence.sync_diff(self.state, diff, self._on_join, self._on_leave)
            self._on_sync()

    def on_join(self, callback: OnJoin) -> None:
        """Call ``callback(key, current, new_presence)`` for every join (``current`` is ``None`` for a new key)."""
        self._on_join = callback

    def on_leave(self, callback: OnLeave) -> None:
        """Call ``callback(key, current, left_presence)`` for every leave (``current`` holds the metas left)."""
        self._on_leave = callback

    def on_sync(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` after every state or diff is applied."""
        self._on_sync = callback

    def list(self, by: Callable[[str, dict[str, Any]], Any] | None = None) -> list[Any]:
        """The presences, or ``by(key, presence)`` for each."""
        return Presence.list_state(self.state, by)

    def in_pending_sync_state(self) -> bool:
        """Whether the state of the channel's current join has not arrived yet."""
        return not self.join_ref or self.join_ref != self.channel.join_ref()

    # -- phoenix.js's static API --------------------------------------------------------------

    @staticmethod
    def sync_state(
        current_state: Mapping[str, Any],
        new_state: Mapping[str, Any],
        on_join: OnJoin | None = None,
        on_leave: OnLeave | None = None,
    ) -> State:
        """
        The state after the server's full ``new_state``, calling
        ``on_join``/``on_leave`` for the metas that appeared or went;
        ``current_state`` is left as it was.
        """
        state: State = _clone(current_state)
        joins: State = {}
        leaves: State = {}
        for key, presence in state.items():
            if key not in new_state:
                leaves[key] = presence
        for key, new_presence in new_state.items():
            current = state.get(key)
            if current:
                new_refs = _refs(new_presence)
                cur_refs = _refs(current)
                joined_metas = [m for m in new_presence["metas"] if m.get("phx_ref") not in cur_refs]
                left_metas = [m for m in current["metas"] if m.get("phx_ref") not in new_refs]
                if joined_metas:
                    joins[key] = {**new_presence, "metas": joined_metas}
                if left_metas:
                    leaves[key] = {**_clone(current), "metas": left_metas}
            else:
                joins[key] = new_presence
        return Presence.sync_diff(state, {"joins": joins, "leaves": leaves}, on_join, on_leave)

    @staticmethod
    def sync_diff(
        state: Mapping[str, Any],
        diff: Mapping[str, Any],
        on_join: OnJoin | None = None,
        on_leave: OnLeave | None = None,
    ) -> State:
        """
        The state after a ``presence_diff`` ``{"joins": {...}, "leaves":
        {...}}``, calling ``on_join(key, current, new_presence)`` and
        ``on_leave(key, current, left_presence)``; ``state`` is left as it was.
        """
        new: State = dict(state)
        cloned = _clone(diff)
        joins: State = cloned.get("joins") or {}
        leaves: State = cloned.get("leaves") or {}
        on_join = on_join or _noop
        on_leave = on_leave or _noop
        for key, new_presence in joins.items():
            current = new.get(key)
            presence = new[key] = _clone(new_presence)
            if current:
                joined_refs = _refs(presence)
                cur_metas = [m for m in current["metas"] if m.get("phx_ref") not in joined_refs]
                presence["metas"][:0] = cur_metas
            on_join(key, current, new_presence)
        for key, left_presence in leaves.items():
            current = new.get(key)
            if not current:
                continue
            refs_to_remove = _refs(left_presence)
            current = new[key] = {
                **current,
                "metas": [m for m in current["metas"] if m.get("phx_ref") not in refs_to_remove],
            }
            on_leave(key, current, left_presence)
            if not current["metas"]:
                del new[key]
        return new

    @staticmethod
    def list_state(
        presences: Mapping[str, Any], chooser: Callable[[str, Any], Any] | None = None
    ) -> list[Any]:
        """phoenix.js's static ``Presence.list``: ``chooser(key, presence)`` for each, or the presences."""
        if chooser is None:
            return list(presences.values())
        return [chooser(key, presence) for key, presence in presences.items()]
