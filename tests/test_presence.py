"""
Tests for L{twisted_phoenix.presence}: the Presence API as channels use it
(protocol notes section 6.1), through real channels on in-memory connections
(L{twisted_phoenix.testing}), on one node and across nodes.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import Channel, Endpoint, Socket, Stop, error, ok
from twisted_phoenix.examples.hello_sockets import SALT, AuthSocket, HelloSocketsEndpoint, UserSocket
from twisted_phoenix.presence import AlreadyTracked, Presence, Presences
from twisted_phoenix.testing import ANY, ChannelTest, ClientSocket
from twisted_phoenix.token import sign

from .test_presence_tracker import Network

SECRET = "s" * 64
NOW = 1_700_000_000


def last_frame(client: ClientSocket) -> Any:
    """The last frame the client received, decoded as raw V2 JSON."""
    return orjson.loads(client.frames[-1].data)


def frames(client: ClientSocket, event: str, since: int = 0) -> list[Any]:
    """Every raw V2 frame of ``event`` the client received (from frame number ``since`` on)."""
    return [f for f in (orjson.loads(fr.data) for fr in client.frames[since:]) if f[3] == event]


class RoomChannel(Channel):
    """Drives the Presence API from client events, as a user's channel would."""

    #: Every channel instance, to call the API on a channel that has ended.
    instances: list[RoomChannel] = []

    def join(self, topic: str, payload: Any) -> Any:
        RoomChannel.instances.append(self)
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        presence = self.endpoint.presence
        key, topic = payload.get("key"), payload.get("topic")
        if event == "track":
            try:
                ref = presence.track(self, key, payload.get("meta", {}), topic=topic)
            except AlreadyTracked:
                return error({"reason": "already tracked"})
            return ok({"ref": ref})
        if event == "untrack":
            presence.untrack(self, key, topic=topic)
            return ok()
        if event == "update":
            return ok({"ref": presence.update(self, key, payload["meta"], topic=topic)})
        if event == "count":
            return ok({"ref": presence.update(self, key, lambda meta: {**meta, "n": meta.get("n", 0) + 1})})
        if event == "list":
            return ok(presence.list(self))
        if event == "get":
            return ok({"found": presence.get_by_key(self.topic, key)})
        if event == "stop":
            return Stop("normal", ok())
        raise RuntimeError(f"crash on {event}")


class RoomSocket(Socket):
    channels = {"room:*": RoomChannel}

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        return True


class RoomEndpoint(Endpoint):
    sockets = {"/socket": RoomSocket}


class UserPresence(Presence):
    """Adds each user's name next to its metas, as a fetch/2 would from a database."""

    def fetch(self, topic: str, presences: Presences) -> Presences:
        return {key: {**entry, "user": {"name": key.upper(), "topic": topic}} for key, entry in presences.items()}


class FetchEndpoint(RoomEndpoint):
    presence_class = UserPresence


class PresenceTestCase(SynchronousTestCase):
    """A L{RoomEndpoint} on a Clock."""

    endpoint_class: type[Endpoint] = RoomEndpoint

    def setUp(self) -> None:
        RoomChannel.instances = []
        self.clock = Clock()
        self.clock.advance(NOW)
        self.harness = ChannelTest(self.endpoint_class, self.clock, secret_key_base=SECRET)
        self.presence = self.harness.endpoint.presence

    def client(self, topic: str = "room:1") -> ClientSocket:
        client = self.successResultOf(self.harness.connect(RoomSocket))
        assert client is not None
        self.assertEqual(self.successResultOf(client.join(topic)).status, "ok")
        return client

    def call(self, client: ClientSocket, event: str, payload: Any, status: str = "ok", topic: str = "room:1") -> Any:
        ref = client.push(topic, event, payload)
        return client.assert_reply(ref, status).payload


class TrackedChannelTests(SynchronousTestCase):
    """
    Tests for the demo's L{TrackedChannel} on C{/socket} and C{/auth_socket}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.harness = ChannelTest(HelloSocketsEndpoint, self.clock, secret_key_base=SECRET)
        self.presence = self.harness.endpoint.presence

    def user(self, user_id: str | None) -> ClientSocket:
        client = self.successResultOf(self.harness.connect(UserSocket))
        assert client is not None
        # The demo's tracked topic takes the presence key from the join payload.
        join = client.join
        client.join = lambda topic, payload=None, **kw: join(  # type: ignore[method-assign]
            topic, {"user_id": user_id} if payload is None and user_id is not None else payload, **kw
        )
        return client

    def test_presenceState(self) -> None:
        """After the join, the channel tracks the user with online_at and pushes presence_state, exactly as Phoenix does."""
        client = self.user("u1")
        reply = self.successResultOf(client.join("tracked"))
        self.assertEqual(reply.status, "ok")
        [meta] = self.presence.list("tracked")["u1"]["metas"]
        self.assertEqual(meta, {"online_at": NOW, "phx_ref": ANY})
        jr = client.join_refs["tracked"]
        self.assertEqual(frames(client, "presence_state"), [
            [jr, None, "tracked", "presence_state", {"u1": {"metas": [{"online_at": NOW, "phx_ref": meta["phx_ref"]}]}}],
        ])
        self.assertEqual(len(meta["phx_ref"]), 16)

    def test_stateBeforeOwnDiff(self) -> None:
        """As in Phoenix, the joining client gets the reply, then presence_state, then the diff of its own join."""
        client = self.user("u1")
        self.successResultOf(client.join("tracked"))
        events = [f[3] for f in (orjson.loads(fr.data) for fr in client.frames)]
        self.assertEqual(events, ["phx_reply", "presence_state", "presence_diff"])

    def test_presenceDiffBroadcast(self) -> None:
        """Another user's arrival and departure reach a subscriber as presence_diff broadcasts with both joins and leaves."""
        first = self.user("u1")
        self.successResultOf(first.join("tracked"))
        second = self.user("u2")
        self.successResultOf(second.join("tracked"))
        [meta] = self.presence.get_by_key("tracked", "u2")["metas"]
        self.assertEqual(last_frame(first), [None, None, "tracked", "presence_diff", {"joins": {"u2": {"metas": [meta]}}, "leaves": {}}])
        state = frames(second, "presence_state")[0][4]
        self.assertEqual(sorted(state), ["u1", "u2"])
        second.close()
        self.assertEqual(last_frame(first), [None, None, "tracked", "presence_diff", {"joins": {}, "leaves": {"u2": {"metas": [meta]}}}])
        self.assertEqual(list(self.presence.list("tracked")), ["u1"])

    def test_twoTabs(self) -> None:
        """One user on two connections has two metas; closing one leaves the other."""
        tab1, tab2 = self.user("u1"), self.user("u1")
        self.successResultOf(tab1.join("tracked"))
        self.clock.advance(5)
        self.successResultOf(tab2.join("tracked"))
        metas = self.presence.list("tracked")["u1"]["metas"]
        self.assertEqual([m["online_at"] for m in metas], [NOW, NOW + 5])
        self.assertNotEqual(metas[0]["phx_ref"], metas[1]["phx_ref"])
        self.assertEqual(frames(tab2, "presence_state")[0][4], {"u1": {"metas": metas}})
        tab1.close()
        self.assertEqual(self.presence.list("tracked"), {"u1": {"metas": [metas[1]]}})
        self.assertEqual(last_frame(tab2)[4], {"joins": {}, "leaves": {"u1": {"metas": [metas[0]]}}})

    def test_anonymous(self) -> None:
        """On /socket, joining tracked without a user_id in the join payload tracks the key "anonymous"."""
        client = self.user(None)
        reply = self.successResultOf(client.join("tracked"))
        self.assertEqual(reply.status, "ok")
        self.assertEqual(list(self.presence.list("tracked")), ["anonymous"])

    def test_authSocket(self) -> None:
        """On /auth_socket, tracked keys the presence by the token's user id, as a string."""
        token = sign(SECRET, SALT, 42, clock=self.clock)
        client = self.successResultOf(self.harness.connect(AuthSocket, {"token": token}))
        assert client is not None
        self.assertEqual(self.successResultOf(client.join("tracked")).status, "ok")
        self.assertEqual(list(self.presence.list("tracked")), ["42"])
        self.assertEqual(list(frames(client, "presence_state")[0][4]), ["42"])


class PresenceTests(PresenceTestCase):
    """
    Tests for L{Presence} through L{RoomChannel}.
    """

    def test_track(self) -> None:
        """track returns the phx_ref, lists the key with its meta, and broadcasts the join to the topic."""
        watcher = self.client()
        client = self.client()
        ref = self.call(client, "track", {"key": "u1", "meta": {"status": "away"}})["ref"]
        meta = {"status": "away", "phx_ref": ref}
        self.assertEqual(self.presence.list("room:1"), {"u1": {"metas": [meta]}})
        self.assertEqual(self.call(client, "list", {}), {"u1": {"metas": [meta]}})
        watcher.assert_broadcast("presence_diff", {"joins": {"u1": {"metas": [meta]}}, "leaves": {}}, topic="room:1")

    def test_keysAreStrings(self) -> None:
        """A non-string key is listed as a string."""
        client = self.client()
        self.call(client, "track", {"key": 7})
        self.assertEqual(list(self.presence.list("room:1")), ["7"])
        self.assertEqual(self.presence.get_by_key("room:1", 7), self.presence.get_by_key("room:1", "7"))

    def test_alreadyTracked(self) -> None:
        """Tracking the same key again from the same channel raises AlreadyTracked; another key, topic or channel is fine."""
        client = self.client()
        self.call(client, "track", {"key": "u1"})
        self.assertEqual(self.call(client, "track", {"key": "u1"}, "error"), {"reason": "already tracked"})
        self.call(client, "track", {"key": "u2"})
        self.call(client, "track", {"key": "u1", "topic": "room:other"})
        self.call(self.client(), "track", {"key": "u1"})
        self.assertEqual(len(self.presence.list("room:1")["u1"]["metas"]), 2)

    def test_alreadyTrackedDirect(self) -> None:
        """AlreadyTracked names the topic and the key."""
        self.client()
        channel = RoomChannel.instances[0]
        self.presence.track(channel, "u1", {})
        e = self.assertRaises(AlreadyTracked, self.presence.track, channel, "u1", {})
        self.assertEqual(e.args, ("room:1", "u1"))

    def test_updateMap(self) -> None:
        """update with a map replaces the meta: one diff with the new meta (phx_ref_prev) in joins and the old one in leaves."""
        watcher = self.client()
        client = self.client()
        ref = self.call(client, "track", {"key": "u1", "meta": {"status": "away"}})["ref"]
        since = len(watcher.frames)
        new = self.call(client, "update", {"key": "u1", "meta": {"status": "busy", "phx_ref": "forged"}})["ref"]
        self.assertNotEqual(new, ref)
        joined = {"status": "busy", "phx_ref": new, "phx_ref_prev": ref}
        self.assertEqual(self.presence.list("room:1"), {"u1": {"metas": [joined]}})
        self.assertEqual(frames(watcher, "presence_diff", since), [[None, None, "room:1", "presence_diff", {
            "joins": {"u1": {"metas": [joined]}},
            "leaves": {"u1": {"metas": [{"status": "away", "phx_ref": ref}]}},
        }]])

    def test_updateFunction(self) -> None:
        """update with a function applies it to the current meta."""
        client = self.client()
        ref = self.call(client, "track", {"key": "u1", "meta": {"status": "away"}})["ref"]
        r1 = self.call(client, "count", {"key": "u1"})["ref"]
        r2 = self.call(client, "count", {"key": "u1"})["ref"]
        self.assertEqual(self.presence.list("room:1"), {"u1": {"metas": [{"status": "away", "n": 2, "phx_ref": r2, "phx_ref_prev": r1}]}})
        self.assertEqual(len({ref, r1, r2}), 3)

    def test_updateNotTracked(self) -> None:
        """update of a key this channel does not track returns None (Phoenix's :nopresence) and broadcasts nothing."""
        client = self.client()
        other = self.client()
        self.assertEqual(self.call(client, "update", {"key": "u1", "meta": {}}), {"ref": None})
        self.call(other, "track", {"key": "u1"})
        client.clear()
        self.assertEqual(self.call(client, "update", {"key": "u1", "meta": {}}), {"ref": None})
        self.assertEqual(self.call(client, "count", {"key": "u1"}), {"ref": None})
        client.refute_broadcast("presence_diff")

    def test_untrack(self) -> None:
        """untrack removes the key and broadcasts the leave; untracking what is not tracked does nothing."""
        watcher = self.client()
        client = self.client()
        self.call(client, "untrack", {"key": "u1"})
        ref = self.call(client, "track", {"key": "u1"})["ref"]
        since = len(watcher.frames)
        self.call(client, "untrack", {"key": "u1"})
        self.call(client, "untrack", {"key": "u1"})
        self.assertEqual(self.presence.list("room:1"), {})
        self.assertEqual(frames(watcher, "presence_diff", since), [[None, None, "room:1", "presence_diff", {"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": ref}]}}}]])

    def test_getByKey(self) -> None:
        """get_by_key returns one key's metas, or None."""
        client = self.client()
        ref = self.call(client, "track", {"key": "u1", "meta": {"a": 1}})["ref"]
        self.call(client, "track", {"key": "u2"})
        self.assertEqual(self.presence.get_by_key("room:1", "u1"), {"metas": [{"a": 1, "phx_ref": ref}]})
        self.assertEqual(self.call(client, "get", {"key": "u1"}), {"found": {"metas": [{"a": 1, "phx_ref": ref}]}})
        self.assertIsNone(self.presence.get_by_key("room:1", "nobody"))
        self.assertIsNone(self.presence.get_by_key("room:2", "u1"))

    def test_otherTopic(self) -> None:
        """A channel may track on another topic: the diffs go to that topic, and the entry leaves with the channel."""
        recorder = self.harness.subscribe("room:other")
        client = self.client()
        ref = self.call(client, "track", {"key": "u1", "topic": "room:other"})["ref"]
        self.assertEqual(self.presence.list("room:other"), {"u1": {"metas": [{"phx_ref": ref}]}})
        self.assertEqual(self.presence.list("room:1"), {})
        recorder.assert_broadcast("presence_diff", {"joins": {"u1": {"metas": [{"phx_ref": ref}]}}, "leaves": {}})
        client.leave("room:1")
        recorder.assert_broadcast("presence_diff", {"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": ref}]}}})
        self.assertEqual(self.presence.list("room:other"), {})


class ChannelEndTests(PresenceTestCase):
    """
    An entry leaves when its channel ends, however it ends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.watcher = self.client()
        self.tracker = self.client()
        self.ref = self.call(self.tracker, "track", {"key": "u1"})["ref"]
        self.call(self.tracker, "track", {"key": "u2", "meta": {"x": 1}})
        self.watcher.clear()
        self.leaves = {"u1": {"metas": [{"phx_ref": self.ref}]}, "u2": {"metas": [{"x": 1, "phx_ref": ANY}]}}

    def assertLeft(self) -> None:
        self.assertEqual(self.presence.list("room:1"), {})
        self.watcher.assert_broadcast("presence_diff", {"joins": {}, "leaves": self.leaves}, topic="room:1")
        self.watcher.refute_broadcast("presence_diff")

    def test_leave(self) -> None:
        """The client leaving the channel makes one leave diff."""
        self.tracker.leave("room:1")
        self.assertLeft()

    def test_stop(self) -> None:
        """The channel stopping itself makes one leave diff."""
        self.call(self.tracker, "stop", {})
        self.assertLeft()

    def test_crash(self) -> None:
        """The channel crashing makes one leave diff."""
        self.tracker.push("room:1", "boom", {})
        self.flushLoggedErrors(RuntimeError)
        self.tracker.assert_push("phx_error", topic="room:1")
        self.assertLeft()

    def test_close(self) -> None:
        """The connection closing makes one leave diff."""
        self.tracker.close()
        self.assertLeft()

    def test_duplicateJoin(self) -> None:
        """A duplicate join of the topic on the same connection ends the first channel: its entries leave."""
        self.successResultOf(self.tracker.join("room:1"))
        self.assertLeft()

    def test_trackAfterEnd(self) -> None:
        """A channel that has ended cannot stay tracked: its entry joins and leaves at once, as for a dead process in Phoenix."""
        channel = RoomChannel.instances[1]
        self.tracker.leave("room:1")
        since = len(self.watcher.frames)
        self.presence.track(channel, "late", {})
        self.assertEqual(self.presence.list("room:1"), {})
        self.assertEqual([f[4]["joins"] != {} for f in frames(self.watcher, "presence_diff", since)], [True, False])
        self.assertEqual(self.presence.tracker.state.values, {})


class FetchTests(PresenceTestCase):
    """
    Tests for a L{Presence} subclass overriding C{fetch}.
    """

    endpoint_class = FetchEndpoint

    def test_list(self) -> None:
        """list and get_by_key pass through fetch."""
        client = self.client()
        ref = self.call(client, "track", {"key": "u1"})["ref"]
        entry = {"metas": [{"phx_ref": ref}], "user": {"name": "U1", "topic": "room:1"}}
        self.assertEqual(self.presence.list("room:1"), {"u1": entry})
        self.assertEqual(self.presence.get_by_key("room:1", "u1"), entry)

    def test_diffs(self) -> None:
        """Both sides of every diff pass through fetch."""
        watcher = self.client()
        client = self.client()
        ref = self.call(client, "track", {"key": "u1"})["ref"]
        new = self.call(client, "update", {"key": "u1", "meta": {"v": 2}})["ref"]
        client.close()
        user = {"name": "U1", "topic": "room:1"}
        self.assertEqual([f[4] for f in frames(watcher, "presence_diff")], [
            {"joins": {"u1": {"metas": [{"phx_ref": ref}], "user": user}}, "leaves": {}},
            {"joins": {"u1": {"metas": [{"v": 2, "phx_ref": new, "phx_ref_prev": ref}], "user": user}},
             "leaves": {"u1": {"metas": [{"phx_ref": ref}], "user": user}}},
            {"joins": {}, "leaves": {"u1": {"metas": [{"v": 2, "phx_ref": new, "phx_ref_prev": ref}], "user": user}}},
        ])


class LifecycleTests(PresenceTestCase):
    """
    Tests for Endpoint.start and Endpoint.stop, which run the tracker.
    """

    def test_startStop(self) -> None:
        """start subscribes the tracker to its gossip and starts its heartbeats; stop ends them and announces the departure."""
        gossip = self.harness.subscribe("phx_presence:presence")
        endpoint = self.harness.endpoint
        endpoint.start()
        gossip.assert_broadcast("transfer_req", {"replica": self.presence.tracker.replica, "node": "nonode@nohost"})
        for _ in range(10):  # ten quiet periods: an empty heartbeat
            self.harness.advance(1.5)
        gossip.assert_broadcast("heartbeat", {"delta": None, "clock": 0, "replica": ANY, "node": ANY})
        endpoint.stop()
        gossip.assert_broadcast("permdown", ANY)
        self.harness.advance(100)
        gossip.refute_broadcast("heartbeat")

    def test_options(self) -> None:
        """presence_options reach the tracker."""

        class Tuned(RoomEndpoint):
            presence_options = {"broadcast_period": 0.5, "down_period": 7.0, "name": "chat"}

        presence = Tuned(self.clock).presence
        self.assertEqual((presence.tracker.broadcast_period, presence.tracker.down_period), (0.5, 7.0))
        self.assertEqual(presence.tracker.topic, "phx_presence:chat")


class ClusterTests(SynchronousTestCase):
    """
    Presence across two nodes: the demo endpoint on each, one Clock, an
    in-memory network between them.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.network = Network()
        self.harnesses = {}
        for name in ("a", "b"):
            endpoint = HelloSocketsEndpoint(self.clock, node_name=name, secret_key_base=SECRET, pubsub=self.network.node(name))
            endpoint.start()
            self.network.flush()
            self.harnesses[name] = ChannelTest(endpoint)

    def user(self, node: str, user_id: str) -> ClientSocket:
        client = self.successResultOf(self.harnesses[node].connect(UserSocket))
        assert client is not None
        self.assertEqual(self.successResultOf(client.join("tracked", {"user_id": user_id})).status, "ok")
        return client

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.advance(1.5)
            self.network.flush()

    def test_remoteDiffs(self) -> None:
        """A user on node a reaches node b's subscribers as presence_diff after a heartbeat, and leaves the same way."""
        on_b = self.user("b", "u2")
        on_a = self.user("a", "u1")
        [meta] = self.harnesses["a"].endpoint.presence.list("tracked")["u1"]["metas"]
        self.assertEqual([f for f in frames(on_b, "presence_diff") if "u1" in f[4]["joins"]], [])
        self.tick()
        self.assertEqual(last_frame(on_b), [None, None, "tracked", "presence_diff", {"joins": {"u1": {"metas": [meta]}}, "leaves": {}}])
        self.assertEqual(sorted(self.harnesses["b"].endpoint.presence.list("tracked")), ["u1", "u2"])
        on_a.close()
        self.tick()
        self.assertEqual(last_frame(on_b), [None, None, "tracked", "presence_diff", {"joins": {}, "leaves": {"u1": {"metas": [meta]}}}])

    def test_stateIncludesRemote(self) -> None:
        """presence_state lists the users of every node."""
        self.user("a", "u1")
        self.tick()
        on_b = self.user("b", "u1")
        state = frames(on_b, "presence_state")[0][4]
        self.assertEqual([m["online_at"] for m in state["u1"]["metas"]], [NOW, NOW + 1])  # whole seconds

    def test_sameKeyBothNodes(self) -> None:
        """The first channel of each node (the same owner number) tracking the same key are two metas; one leaving keeps the other everywhere."""
        on_a, on_b = self.user("a", "u1"), self.user("b", "u1")
        self.tick()
        for name in ("a", "b"):
            self.assertEqual(len(self.harnesses[name].endpoint.presence.list("tracked")["u1"]["metas"]), 2)
        on_a.close()
        self.tick()
        b_meta = self.harnesses["b"].endpoint.presence.list("tracked")["u1"]["metas"]
        for name in ("a", "b"):
            self.assertEqual(self.harnesses[name].endpoint.presence.list("tracked"), {"u1": {"metas": b_meta}})
        self.assertEqual(len(b_meta), 1)
        on_b.assert_broadcast("presence_diff", {"joins": {}, "leaves": {"u1": {"metas": [ANY]}}})

    def test_nodeStops(self) -> None:
        """When node a stops, node b's subscribers see its users leave at once."""
        on_b = self.user("b", "u2")
        self.user("a", "u1")
        self.tick()
        self.harnesses["a"].endpoint.stop()
        self.network.flush()
        self.assertEqual(last_frame(on_b)[4], {"joins": {}, "leaves": {"u1": {"metas": [ANY]}}})
        self.assertEqual(list(self.harnesses["b"].endpoint.presence.list("tracked")), ["u2"])
