"""
Tests for L{twisted_phoenix.client.Presence}: phoenix.js's own presence
test cases (assets/test/presence_test.js), ported, and the pending-diffs
behaviour over a real client channel.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.client import Presence

from .test_client import Harness


def clone(value: Any) -> Any:
    return copy.deepcopy(value)


def joins_fixture() -> dict[str, Any]:
    return {"u1": {"metas": [{"id": 1, "phx_ref": "1.2"}]}}


def leaves_fixture() -> dict[str, Any]:
    return {"u2": {"metas": [{"id": 2, "phx_ref": "2"}]}}


def state_fixture() -> dict[str, Any]:
    return {
        "u1": {"metas": [{"id": 1, "phx_ref": "1"}]},
        "u2": {"metas": [{"id": 2, "phx_ref": "2"}]},
        "u3": {"metas": [{"id": 3, "phx_ref": "3"}]},
    }


class ChannelStub:
    """phoenix.js's test channelStub: one callback per event, and a join_ref that changes on reconnect."""

    def __init__(self) -> None:
        self.ref = 1
        self.events: dict[str, Callable[[Any], Any]] = {}

    def on(self, event: str, callback: Callable[[Any], Any]) -> None:
        self.events[event] = callback

    def trigger(self, event: str, data: Any) -> None:
        self.events[event](data)

    def join_ref(self) -> str:
        return f"{self.ref}"

    def simulate_disconnect_and_reconnect(self) -> None:
        self.ref += 1


def list_by_first(key: str, presence: dict[str, Any]) -> Any:
    return presence["metas"][0]


class SyncStateTests(SynchronousTestCase):
    """L{Presence.sync_state}."""

    def test_syncsEmptyState(self) -> None:
        """The state of an empty presence becomes the new state; the input is left as it was."""
        new_state = {"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}}
        state: dict[str, Any] = {}
        Presence.sync_state(state, new_state)
        self.assertEqual(state, {})
        state = Presence.sync_state(state, new_state)
        self.assertEqual(state, new_state)

    def test_onJoinsAndOnLeaves(self) -> None:
        """New keys are onJoin'ed with current None; missing keys onLeave'd with their metas emptied."""
        new_state = state_fixture()
        state = {"u4": {"metas": [{"id": 4, "phx_ref": "4"}]}}
        joined: dict[str, Any] = {}
        left: dict[str, Any] = {}

        def on_join(key: str, current: Any, new_pres: Any) -> None:
            joined[key] = {"current": current, "newPres": new_pres}

        def on_leave(key: str, current: Any, left_pres: Any) -> None:
            left[key] = {"current": current, "leftPres": left_pres}

        state = Presence.sync_state(state, new_state, on_join, on_leave)
        self.assertEqual(state, new_state)
        self.assertEqual(
            joined,
            {
                "u1": {"current": None, "newPres": {"metas": [{"id": 1, "phx_ref": "1"}]}},
                "u2": {"current": None, "newPres": {"metas": [{"id": 2, "phx_ref": "2"}]}},
                "u3": {"current": None, "newPres": {"metas": [{"id": 3, "phx_ref": "3"}]}},
            },
        )
        self.assertEqual(left, {"u4": {"current": {"metas": []}, "leftPres": {"metas": [{"id": 4, "phx_ref": "4"}]}}})

    def test_onJoinsOnlyNewlyAddedMetas(self) -> None:
        """For a known key only the metas with new phx_refs are onJoin'ed."""
        new_state = {"u3": {"metas": [{"id": 3, "phx_ref": "3"}, {"id": 3, "phx_ref": "3.new"}]}}
        state = {"u3": {"metas": [{"id": 3, "phx_ref": "3"}]}}
        joined: list[Any] = []
        left: list[Any] = []
        state = Presence.sync_state(
            state,
            clone(new_state),
            lambda key, current, new_pres: joined.append([key, clone({"current": current, "newPres": new_pres})]),
            lambda key, current, left_pres: left.append([key, clone({"current": current, "leftPres": left_pres})]),
        )
        self.assertEqual(state, new_state)
        self.assertEqual(
            joined,
            [
                [
                    "u3",
                    {"current": {"metas": [{"id": 3, "phx_ref": "3"}]}, "newPres": {"metas": [{"id": 3, "phx_ref": "3.new"}]}},
                ]
            ],
        )
        self.assertEqual(left, [])

    def test_newStateNotModified(self) -> None:
        """The new state given is not modified (phoenix.js would rewrite its metas in place)."""
        new_state = {"u3": {"metas": [{"id": 3, "phx_ref": "3"}, {"id": 3, "phx_ref": "3.new"}]}}
        given = clone(new_state)
        Presence.sync_state({"u3": {"metas": [{"id": 3, "phx_ref": "3"}]}}, given)
        self.assertEqual(given, new_state)


class SyncDiffTests(SynchronousTestCase):
    """L{Presence.sync_diff}."""

    def test_syncsEmptyState(self) -> None:
        """Joins into an empty state become the state."""
        joins = {"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}}
        state = Presence.sync_diff({}, {"joins": joins, "leaves": {}})
        self.assertEqual(state, joins)

    def test_removesPresenceWhenMetaEmptyAndAddsAdditionalMeta(self) -> None:
        """A key whose last meta leaves goes; a join of a known key adds its meta after the current ones."""
        state = state_fixture()
        state = Presence.sync_diff(state, {"joins": joins_fixture(), "leaves": leaves_fixture()})
        self.assertEqual(
            state,
            {
                "u1": {"metas": [{"id": 1, "phx_ref": "1"}, {"id": 1, "phx_ref": "1.2"}]},
                "u3": {"metas": [{"id": 3, "phx_ref": "3"}]},
            },
        )

    def test_removesMetaWhileLeavingKeyIfOtherMetasExist(self) -> None:
        """A leave removes only its metas; the key stays while others remain."""
        state = {"u1": {"metas": [{"id": 1, "phx_ref": "1"}, {"id": 1, "phx_ref": "1.2"}]}}
        state = Presence.sync_diff(state, {"joins": {}, "leaves": {"u1": {"metas": [{"id": 1, "phx_ref": "1"}]}}})
        self.assertEqual(state, {"u1": {"metas": [{"id": 1, "phx_ref": "1.2"}]}})

    def test_inputStateNotModified(self) -> None:
        """The state given is left as it was."""
        state = state_fixture()
        Presence.sync_diff(state, {"joins": joins_fixture(), "leaves": leaves_fixture()})
        self.assertEqual(state, state_fixture())

    def test_leaveOfUnknownKeyIgnored(self) -> None:
        """A leave for a key not in the state calls nothing."""
        left: list[Any] = []
        state = Presence.sync_diff({}, {"joins": {}, "leaves": leaves_fixture()}, None, lambda *a: left.append(a))
        self.assertEqual((state, left), ({}, []))


class ListTests(SynchronousTestCase):
    """L{Presence.list_state}."""

    def test_listsFullPresenceByDefault(self) -> None:
        """Without a chooser the presences are listed."""
        self.assertEqual(
            Presence.list_state(state_fixture()),
            [{"metas": [{"id": 1, "phx_ref": "1"}]}, {"metas": [{"id": 2, "phx_ref": "2"}]}, {"metas": [{"id": 3, "phx_ref": "3"}]}],
        )

    def test_listsWithCustomFunction(self) -> None:
        """The chooser gets (key, presence)."""
        state = {"u1": {"metas": [{"id": 1, "phx_ref": "1.first"}, {"id": 1, "phx_ref": "1.second"}]}}
        self.assertEqual(Presence.list_state(state, list_by_first), [{"id": 1, "phx_ref": "1.first"}])


class PresenceInstanceTests(SynchronousTestCase):
    """A L{Presence} following a channel (phoenix.js's "instance" cases)."""

    def setUp(self) -> None:
        self.channel = ChannelStub()

    def test_syncsStateAndDiffs(self) -> None:
        """presence_state then presence_diff keep list() up to date."""
        presence = Presence(self.channel)
        user1 = {"metas": [{"id": 1, "phx_ref": "1"}]}
        user2 = {"metas": [{"id": 2, "phx_ref": "2"}]}
        self.channel.trigger("presence_state", {"u1": user1, "u2": user2})
        self.assertEqual(presence.list(list_by_first), [{"id": 1, "phx_ref": "1"}, {"id": 2, "phx_ref": "2"}])
        self.channel.trigger("presence_diff", {"joins": {}, "leaves": {"u1": user1}})
        self.assertEqual(presence.list(list_by_first), [{"id": 2, "phx_ref": "2"}])

    def test_appliesPendingDiffIfStateNotYetSynced(self) -> None:
        """Diffs before the state of the current join wait, and are applied once it arrives."""
        presence = Presence(self.channel)
        on_joins: list[Any] = []
        on_leaves: list[Any] = []
        presence.on_join(lambda key, current, new_pres: on_joins.append(clone({"id": key, "current": current, "newPres": new_pres})))
        presence.on_leave(lambda key, current, left_pres: on_leaves.append(clone({"id": key, "current": current, "leftPres": left_pres})))
        user1 = {"metas": [{"id": 1, "phx_ref": "1"}]}
        user2 = {"metas": [{"id": 2, "phx_ref": "2"}]}
        user3 = {"metas": [{"id": 3, "phx_ref": "3"}]}
        new_state = {"u1": user1, "u2": user2}
        leaves = {"u2": user2}

        self.channel.trigger("presence_diff", {"joins": {}, "leaves": leaves})
        self.assertEqual(presence.list(list_by_first), [])
        self.assertEqual(presence.pending_diffs, [{"joins": {}, "leaves": leaves}])

        self.channel.trigger("presence_state", new_state)
        self.assertEqual(on_leaves, [{"id": "u2", "current": {"metas": []}, "leftPres": {"metas": [{"id": 2, "phx_ref": "2"}]}}])
        self.assertEqual(presence.list(list_by_first), [{"id": 1, "phx_ref": "1"}])
        self.assertEqual(presence.pending_diffs, [])
        self.assertEqual(
            on_joins,
            [
                {"id": "u1", "current": None, "newPres": {"metas": [{"id": 1, "phx_ref": "1"}]}},
                {"id": "u2", "current": None, "newPres": {"metas": [{"id": 2, "phx_ref": "2"}]}},
            ],
        )

        self.channel.simulate_disconnect_and_reconnect()
        self.assertTrue(presence.in_pending_sync_state())
        self.channel.trigger("presence_diff", {"joins": {}, "leaves": {"u1": user1}})
        self.assertEqual(presence.list(list_by_first), [{"id": 1, "phx_ref": "1"}])
        self.channel.trigger("presence_state", {"u1": user1, "u3": user3})
        self.assertEqual(presence.list(list_by_first), [{"id": 3, "phx_ref": "3"}])

    def test_allowsCustomChannelEvents(self) -> None:
        """events= renames the state and diff events."""
        presence = Presence(self.channel, events={"state": "the_state", "diff": "the_diff"})
        user1 = {"metas": [{"id": 1, "phx_ref": "1"}]}
        self.channel.trigger("the_state", {"user1": user1})
        self.assertEqual(presence.list(list_by_first), [{"id": 1, "phx_ref": "1"}])
        self.channel.trigger("the_diff", {"joins": {}, "leaves": {"user1": user1}})
        self.assertEqual(presence.list(list_by_first), [])

    def test_updatesExistingMetaForPresenceUpdate(self) -> None:
        """A leave + join of the same key in one diff (a meta update) replaces the meta; onJoin sees the old one."""
        presence = Presence(self.channel)
        on_joins: list[Any] = []
        on_leaves: list[Any] = []
        user1 = {"metas": [{"id": 1, "phx_ref": "1"}]}
        user2 = {"metas": [{"id": 2, "name": "chris", "phx_ref": "2"}]}
        self.channel.trigger("presence_state", clone({"u1": user1, "u2": user2}))
        presence.on_join(lambda key, current, new_pres: on_joins.append(clone({"id": key, "current": current, "newPres": new_pres})))
        presence.on_leave(lambda key, current, left_pres: on_leaves.append(clone({"id": key, "current": current, "leftPres": left_pres})))
        self.assertEqual(
            presence.list(lambda key, p: p["metas"]),
            [[{"id": 1, "phx_ref": "1"}], [{"id": 2, "name": "chris", "phx_ref": "2"}]],
        )
        leaves = {"u2": user2}
        joins = {"u2": {"metas": [{"id": 2, "name": "chris.2", "phx_ref": "2.2", "phx_ref_prev": "2"}]}}
        self.channel.trigger("presence_diff", {"joins": joins, "leaves": leaves})
        self.assertEqual(
            presence.list(lambda key, p: p["metas"]),
            [[{"id": 1, "phx_ref": "1"}], [{"id": 2, "name": "chris.2", "phx_ref": "2.2", "phx_ref_prev": "2"}]],
        )
        self.assertEqual(
            on_joins,
            [
                {
                    "id": "u2",
                    "current": {"metas": [{"id": 2, "name": "chris", "phx_ref": "2"}]},
                    "newPres": {"metas": [{"id": 2, "name": "chris.2", "phx_ref": "2.2", "phx_ref_prev": "2"}]},
                }
            ],
        )
        self.assertEqual(
            on_leaves,
            [
                {
                    "id": "u2",
                    "current": {"metas": [{"id": 2, "name": "chris.2", "phx_ref": "2.2", "phx_ref_prev": "2"}]},
                    "leftPres": {"metas": [{"id": 2, "name": "chris", "phx_ref": "2"}]},
                }
            ],
        )

    def test_onSync(self) -> None:
        """on_sync runs after every applied state and diff, not for a pending diff."""
        presence = Presence(self.channel)
        syncs: list[int] = []
        presence.on_sync(lambda: syncs.append(len(presence.list())))
        self.channel.trigger("presence_diff", {"joins": joins_fixture(), "leaves": {}})
        self.assertEqual(syncs, [])
        self.channel.trigger("presence_state", state_fixture())
        self.channel.trigger("presence_diff", {"joins": {}, "leaves": leaves_fixture()})
        self.assertEqual(syncs, [3, 2])


class PresenceOverChannelTests(SynchronousTestCase):
    """A L{Presence} on a real client channel, keyed on its join_ref."""

    def test_rejoinWaitsForNewState(self) -> None:
        """After a rejoin, diffs wait for the new join's presence_state; the old state's diffs applied before."""
        h = Harness()
        h.open()
        channel = h.socket.channel("tracked")
        presence = Presence(channel)
        channel.join()
        join = h.last("phx_join")
        # A diff broadcast (no join_ref) before the state: pending.
        h.server_push("tracked", "presence_diff", {"joins": {"bob": {"metas": [{"phx_ref": "b1"}]}}, "leaves": {}})
        h.reply(join)
        self.assertEqual(presence.list(), [])
        h.server_push("tracked", "presence_state", {"alice": {"metas": [{"phx_ref": "a1"}]}}, join_ref=join.join_ref)
        self.assertEqual(presence.list(lambda key, p: key), ["alice", "bob"])
        self.assertFalse(presence.in_pending_sync_state())
        # The channel crashes and rejoins: pending again until the new state.
        h.server_push("tracked", "phx_error", {}, join_ref=join.join_ref)
        h.clock.advance(1)
        rejoin = h.last("phx_join")
        self.assertTrue(presence.in_pending_sync_state())
        h.reply(rejoin)
        h.server_push("tracked", "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": "a1"}]}}})
        self.assertEqual(presence.list(lambda key, p: key), ["alice", "bob"])
        h.server_push(
            "tracked", "presence_state",
            {"alice": {"metas": [{"phx_ref": "a1"}]}, "carol": {"metas": [{"phx_ref": "c1"}]}},
            join_ref=rejoin.join_ref,
        )
        self.assertEqual(presence.list(lambda key, p: key), ["carol"])
