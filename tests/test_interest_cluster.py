"""
Interest routing between real nodes in this process, linked over loopback
TLS: a broadcast skips the nodes without a subscriber for its topic, and
nothing else changes (presence, direct broadcasts, relinks).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import LogLevel

from twisted_phoenix.cluster.node import Node
from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket
from twisted_phoenix.presence.tracker import Tracker
from twisted_phoenix.pubsub import CallbackSubscriber
from twisted_phoenix.testing import ChannelTest, ClientSocket

from ._client import connect, serve
from ._cluster import Collector, told, wait_interest, wait_until
from .test_cluster import TIMEOUT, ClusterTestCase


class IdSocket(UserSocket):
    """The demo's socket, with the id ``user_socket:<id param>``."""

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        self.assigns["id"] = params.get("id", "anonymous")
        return True

    def id(self) -> str:
        return f"user_socket:{self.assigns['id']}"


class IdEndpoint(HelloSocketsEndpoint):
    sockets = {"/socket": IdSocket}


def record(node: Node) -> list[tuple[str, str]]:
    """Every broadcast ``node`` receives over its links, as ``(from, topic)``."""
    got: list[tuple[str, str]] = []
    receive = node._broadcast_received

    def recording(link: Any, topic: str, *args: Any) -> None:
        got.append((link.peer, topic))
        receive(link, topic, *args)

    node._broadcast_received = recording  # type: ignore[method-assign]
    return got


class InterestRoutingTests(ClusterTestCase):
    """Three nodes: subscribers on some, broadcasts from another."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.nodes = yield self.mesh("a", "b", "c", interest_linger=0.2)
        self.a, self.b, self.c = self.nodes
        self.received = {n.name: record(n) for n in self.nodes}
        # Every node has told every other its (empty) set.
        yield wait_until(
            reactor, lambda: all(link.interest.state == "set" for n in self.nodes for link in n.links.values()),
            TIMEOUT, what="every set known",
        )

    @defer.inlineCallbacks
    def settle(self, sender: Node) -> Any:
        """``sender`` broadcasts a marker every node subscribes to; once all have it, all before has arrived."""
        markers = [Collector(reactor, n.pubsub, "marker") for n in self.nodes]
        yield wait_interest(reactor, self.nodes, "marker", TIMEOUT)
        sender.pubsub.broadcast("marker", "done", {})
        for collector in markers:
            yield collector.wait_for(1, TIMEOUT)
        for n, collector in zip(self.nodes, markers):
            n.pubsub.unsubscribe("marker", collector.subscriber)

    def topics(self, node: Node, sender: Node) -> list[str]:
        """The topics of what ``node`` received from ``sender``, markers left out."""
        return [topic for peer, topic in self.received[node.name] if peer == sender.name and topic != "marker"]

    @defer.inlineCallbacks
    def test_skips_uninterested(self) -> None:
        """A broadcast crosses to the node with a subscriber only; the other never receives it."""
        got = Collector(reactor, self.b.pubsub, "room")
        yield wait_interest(reactor, self.nodes, "room", TIMEOUT)
        skipped = self.a.skipped
        for i in range(3):
            self.a.pubsub.broadcast("room", "msg", {"n": i})
        yield self.settle(self.a)
        self.assertEqual([m.payload for m in got.received], [{"n": 0}, {"n": 1}, {"n": 2}])
        self.assertEqual(self.topics(self.b, self.a), ["room"] * 3)
        self.assertEqual(self.topics(self.c, self.a), [])
        self.assertEqual(self.a.skipped - skipped, 3)
        self.assertNotIn("room", self.a.wanted_by(self.c.name))

    @defer.inlineCallbacks
    def test_reaches_it_once_subscribed(self) -> None:
        """A node that subscribes gets the broadcasts sent once its peers know; after the linger, no more."""
        got = Collector(reactor, self.c.pubsub, "room")
        yield wait_interest(reactor, self.nodes, "room", TIMEOUT)
        self.assertEqual(self.a.wanted_by(self.c.name), {"room"})
        self.a.pubsub.broadcast("room", "msg", {"n": 1})
        yield got.wait_for(1, TIMEOUT)
        # The last subscriber leaves: the topic lingers, broadcasts still come...
        self.c.pubsub.unsubscribe("room", got.subscriber)
        self.a.pubsub.broadcast("room", "msg", {"n": 2})
        yield self.settle(self.a)
        self.assertEqual(self.topics(self.c, self.a), ["room", "room"])
        self.assertEqual(len(got.received), 1)
        # ...until the linger is over and a knows.
        yield wait_until(reactor, lambda: self.a.wanted_by(self.c.name) == set(), TIMEOUT, what="room dropped")
        self.a.pubsub.broadcast("room", "msg", {"n": 3})
        yield self.settle(self.a)
        self.assertEqual(self.topics(self.c, self.a), ["room", "room"])

    @defer.inlineCallbacks
    def test_window(self) -> None:
        """The documented window: a broadcast sent before the new subscriber's node has told the sender is missed."""
        got = Collector(reactor, self.b.pubsub, "room")
        self.assertFalse(told(self.a, self.b, "room"))
        self.a.pubsub.broadcast("room", "msg", {"n": "missed"})
        yield wait_interest(reactor, self.nodes, "room", TIMEOUT)
        self.a.pubsub.broadcast("room", "msg", {"n": "got"})
        yield self.settle(self.a)
        self.assertEqual([m.payload for m in got.received], [{"n": "got"}])

    @defer.inlineCallbacks
    def test_causal(self) -> None:
        """What a node sends after subscribing reaches its peer after its news: the peer's answer gets back."""
        answered: list[Any] = []

        def answer(message: Any) -> None:
            answered.append(message.payload)
            self.a.pubsub.broadcast(message.payload["topic"], "answer", {"to": message.payload["topic"]})

        self.a.pubsub.subscribe("ask", CallbackSubscriber(answer))
        yield wait_interest(reactor, self.nodes, "ask", TIMEOUT)
        for i in range(5):
            # Subscribe and ask in the same turn: no wait for the interest to spread.
            topic = f"reply:{i}"
            got = Collector(reactor, self.b.pubsub, topic)
            self.assertFalse(told(self.a, self.b, topic))
            if i % 2:
                self.b.pubsub.direct_broadcast(self.a.name, "ask", "q", {"topic": topic})
            else:
                self.b.pubsub.broadcast("ask", "q", {"topic": topic})
            self.assertEqual([m.payload for m in (yield got.wait_for(1, TIMEOUT))], [{"to": topic}])
        self.assertEqual(len(answered), 5)

    @defer.inlineCallbacks
    def test_direct_broadcast_unaffected(self) -> None:
        """A direct broadcast reaches its node whatever the sender knows of that node's topics."""
        got = Collector(reactor, self.c.pubsub, "new")
        self.assertFalse(told(self.a, self.c, "new"))
        self.assertTrue(self.a.pubsub.direct_broadcast(self.c.name, "new", "msg", {"n": 1}))
        self.assertEqual([m.payload for m in (yield got.wait_for(1, TIMEOUT))], [{"n": 1}])

    @defer.inlineCallbacks
    def test_presence(self) -> None:
        """Presence replicates between the nodes that run a tracker; its gossip skips the node without one."""
        diffs: dict[str, list[Any]] = {"a": [], "b": []}
        trackers = {}
        for key, node in (("a", self.a), ("b", self.b)):
            tracker = Tracker(reactor, node.pubsub, diffs[key].append, broadcast_period=0.05, down_period=1.0)
            tracker.start()
            self.addCleanup(tracker.stop)
            trackers[key] = tracker
        trackers["a"].track("owner", "room:1", "alice", {"on": "a"})
        trackers["b"].track("owner", "room:1", "bob", {"on": "b"})

        def converged() -> bool:
            return all(sorted(e.key for e in t.list("room:1")) == ["alice", "bob"] for t in trackers.values())

        yield wait_until(reactor, converged, TIMEOUT, what="presence converged")
        gossip = [topic for _, topic in self.received[self.c.name] if topic.startswith("phx_presence:")]
        # c may have been sent the first gossip before it said it has no tracker; nothing after.
        yield wait_until(reactor, lambda: self.a.wanted_by(self.c.name) == set(), TIMEOUT)
        yield self.settle(self.a)
        yield self.settle(self.b)
        before = len(gossip)
        trackers["a"].track("owner", "room:1", "carol", {"on": "a"})
        yield wait_until(reactor, lambda: len(trackers["b"].list("room:1")) == 3, TIMEOUT, what="carol on b")
        yield self.settle(self.a)
        gossip = [topic for _, topic in self.received[self.c.name] if topic.startswith("phx_presence:")]
        self.assertEqual(len(gossip), before)
        self.assertGreater(self.a.skipped, 0)

    @defer.inlineCallbacks
    def test_disconnect_socket_id(self) -> None:
        """A disconnect broadcast to a socket id from another node closes that socket (its id is declared)."""
        endpoint = IdEndpoint(reactor, node_name=self.b.name, secret_key_base="s" * 64, pubsub=self.b.pubsub)
        server = serve(self, endpoint)
        client = yield connect(reactor, server.port, query="vsn=2.0.0&id=42", test=self)
        yield client.join_and_ping()
        yield wait_interest(reactor, self.nodes, "user_socket:42", TIMEOUT)
        self.assertNotIn("user_socket:42", self.a.wanted_by(self.c.name))
        self.c.pubsub.broadcast("user_socket:42", "disconnect", {})
        _, code, _ = yield client.wait_closed(TIMEOUT)
        self.assertEqual(code, 1001)
        # The socket's topic lingers, then goes from its peers' view.
        yield wait_until(reactor, lambda: "user_socket:42" not in self.c.wanted_by(self.b.name), TIMEOUT,
                         what="socket id dropped")

    @defer.inlineCallbacks
    def test_relink_resets(self) -> None:
        """A restarted node is sent everything until it has told its set; then only what it wants."""
        yield self.crash(self.c)
        yield self.logs.wait_for("Node c@127.0.0.1 is down (link from a@127.0.0.1 lost)", TIMEOUT)
        c2 = yield self.node("c", interest_linger=0.2)
        received = record(c2)
        # c2 holds back its set: its peers know nothing of it yet.
        held: list[Any] = []
        c2.announcer.announce = held.append  # type: ignore[method-assign]
        yield self.wait_mesh(self.a, self.b, c2)
        self.assertEqual(self.a.links[c2.name].interest.state, "unknown")
        self.assertIsNone(self.a.wanted_by(c2.name))
        markers = Collector(reactor, c2.pubsub, "marker-c2")
        self.a.pubsub.broadcast("elsewhere", "msg", {})
        self.a.pubsub.broadcast("marker-c2", "done", {})
        yield markers.wait_for(1, TIMEOUT)
        self.assertIn((self.a.name, "elsewhere"), received)
        # Now it tells.
        del c2.announcer.announce
        for link in held:
            c2.announcer.announce(link)
        yield wait_until(reactor, lambda: told(self.a, c2, "marker-c2"), TIMEOUT, what="a knows c2's set")
        self.assertEqual(self.a.wanted_by(c2.name), {"marker-c2"})
        received.clear()
        self.a.pubsub.broadcast("elsewhere", "msg", {})
        self.a.pubsub.broadcast("marker-c2", "done", {})
        yield markers.wait_for(2, TIMEOUT)
        self.assertEqual(received, [(self.a.name, "marker-c2")])

    @defer.inlineCallbacks
    def test_relinked_link_starts_unknown(self) -> None:
        """A link lost and made again starts with nothing known of the peer: the old set is not reused."""
        Collector(reactor, self.b.pubsub, "room")
        yield wait_interest(reactor, self.nodes, "room", TIMEOUT)
        old = self.a.links[self.b.name]
        self.assertEqual(old.interest.state, "set")
        old.close()
        yield wait_until(reactor, lambda: self.b.name in self.a.links and self.a.links[self.b.name] is not old,
                         TIMEOUT, what="relinked")
        new = self.a.links[self.b.name]
        self.assertIn(new.interest.state, ("unknown", "set"))
        yield wait_until(reactor, lambda: new.interest.state == "set", TIMEOUT, what="b's set on the new link")
        self.assertEqual(self.a.wanted_by(self.b.name), {"room"})


class InterestLimitTests(ClusterTestCase):
    """Bounded gossip: too many topics fall back to sending everything."""

    @defer.inlineCallbacks
    def test_too_many_topics(self) -> None:
        """A node past its max_interest_topics asks for everything; back under 3/4 of it, it routes again."""
        a = yield self.node("a")
        b = yield self.node("b", max_interest_topics=4, interest_linger=0.1)
        self.assertTrue((yield b.connect(a.name)))
        subscribers = [Collector(reactor, b.pubsub, f"t{i}") for i in range(5)]
        yield wait_until(reactor, lambda: b.name in a.links and a.links[b.name].interest.state == "all",
                         TIMEOUT, what="b asks for everything")
        self.assertTrue(b.announcer.everything)
        self.assertIsNone(a.wanted_by(b.name))
        self.assertTrue(self.logs.find("its peers send it every broadcast"))
        for i in (3, 4):
            b.pubsub.unsubscribe(f"t{i}", subscribers[i].subscriber)
        yield wait_until(reactor, lambda: a.wanted_by(b.name) == {"t0", "t1", "t2"}, TIMEOUT,
                         what="b's set again")

    @defer.inlineCallbacks
    def test_peer_says_too_much(self) -> None:
        """A peer declaring more topics than this node accepts is sent everything, and it is logged."""
        a = yield self.node("a", max_interest_topics=3)
        b = yield self.node("b")
        self.assertTrue((yield b.connect(a.name)))
        for i in range(2):
            Collector(reactor, b.pubsub, f"t{i}")
        yield wait_until(reactor, lambda: a.wanted_by(b.name) == {"t0", "t1"}, TIMEOUT, what="b's set")
        for i in range(2, 5):
            Collector(reactor, b.pubsub, f"t{i}")
        yield wait_until(reactor, lambda: a.links[b.name].interest.state == "overflow", TIMEOUT, what="overflow")
        self.assertIsNone(a.wanted_by(b.name))
        yield self.logs.wait_for("Node b@127.0.0.1 declared too much interest (more than 3 topics)",
                                 TIMEOUT, LogLevel.warn)
        got = Collector(reactor, b.pubsub, "anything")
        a.pubsub.broadcast("anything", "msg", {})
        yield got.wait_for(1, TIMEOUT)

    @defer.inlineCallbacks
    def test_routing_off(self) -> None:
        """A node with interest_routing=False is sent everything and sends everything, as before."""
        a = yield self.node("a")
        b = yield self.node("b", interest_routing=False)
        self.assertTrue((yield b.connect(a.name)))
        yield self.wait_mesh(a, b)
        got = Collector(reactor, a.pubsub, "room")
        # Nothing to wait for: b sends a everything.
        b.pubsub.broadcast("room", "msg", {"n": 1})
        yield got.wait_for(1, TIMEOUT)
        received = record(b)
        a.pubsub.broadcast("nobody-on-b", "msg", {})
        a.pubsub.direct_broadcast(b.name, "marker", "done", {})
        yield wait_until(reactor, lambda: (a.name, "marker") in received, TIMEOUT, what="marker on b")
        self.assertEqual(received, [(a.name, "nobody-on-b"), (a.name, "marker")])
        self.assertEqual(a.links[b.name].interest.state, "unknown")
        self.assertEqual(b.links[a.name].interest.state, "unknown")


class JoinAckTests(ClusterTestCase):
    """
    A join on a topic new to its node is answered once every peer knows the
    node wants the topic: a broadcast sent after the client has its reply
    reaches it, with no wait in the test.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        self.nodes = yield self.mesh("a", "b", "c", interest_linger=0.2)
        self.a, self.b, self.c = self.nodes
        yield wait_until(
            reactor, lambda: all(link.interest.state == "set" for n in self.nodes for link in n.links.values()),
            TIMEOUT, what="every set known",
        )
        self.endpoint = HelloSocketsEndpoint(reactor, node_name=self.b.name, secret_key_base="s" * 64,
                                             pubsub=self.b.pubsub)
        self.harness = ChannelTest(self.endpoint)

    def client(self) -> ClientSocket:
        """A client of b's endpoint, through the real session and channel stack (in memory)."""
        client = self.harness.socket(UserSocket)
        self.addCleanup(client.close)
        return client

    def stop_reading(self, node: Node, peer: Node) -> Any:
        """``node`` reads nothing more from its link to ``peer`` (what ``peer`` sends waits on the link)."""
        transport = node.links[peer.name].remote.broker.transport.transport  # TCP, under TLS
        transport.pauseProducing()
        self.addCleanup(lambda: transport.connected and transport.resumeProducing())
        return transport

    def interest_calls(self, node: Node) -> list[tuple[str, str, tuple[Any, ...], bool]]:
        """Record every interest message ``node`` sends from now on: (peer, method, args, answer asked)."""
        calls: list[tuple[str, str, tuple[Any, ...], bool]] = []
        for link in node.links.values():
            send = link.send_interest

            def recording(method: str, *args: Any, answer: bool = False, link: Any = link, send: Any = send) -> Any:
                calls.append((link.peer, method, args, answer))
                return send(method, *args, answer=answer)

            link.send_interest = recording  # type: ignore[method-assign]
        return calls

    def received(self, client: ClientSocket, event: str) -> list[Any]:
        return [b.payload for b in client.broadcasts if b.event == event]

    @defer.inlineCallbacks
    def test_reply_after_every_peer_knows(self) -> None:
        """The reply waits for the slowest peer's acknowledgement; broadcasts sent as soon as it arrives reach the client."""
        reading = self.stop_reading(self.a, self.b)
        client = self.client()
        reply = client.join("ping:held")
        # c has read b's news and answered (a ping answered after it proves it); a has not.
        yield wait_until(reactor, lambda: told(self.c, self.b, "ping:held"), TIMEOUT, what="c told")
        yield self.b.links[self.c.name].call("ping")
        self.assertFalse(told(self.a, self.b, "ping:held"))
        self.assertFalse(reply.called, "replied before a knew")
        self.assertEqual(self.b.pubsub.subscribers("ping:held"), ())
        reading.resumeProducing()
        result = yield reply.addTimeout(TIMEOUT, reactor)
        self.assertEqual(result.status, "ok")
        # At once: no wait for the interest to spread.
        self.a.pubsub.broadcast("ping:held", "shout", {"from": "a"})
        self.c.pubsub.broadcast("ping:held", "shout", {"from": "c"})
        yield wait_until(reactor, lambda: len(self.received(client, "shout")) == 2, TIMEOUT, what="both shouts")
        self.assertEqual(sorted(p["from"] for p in self.received(client, "shout")), ["a", "c"])

    @defer.inlineCallbacks
    def test_websocket_join_then_broadcast(self) -> None:
        """A phoenix-style WebSocket client joins topics on b; a and c broadcast the moment each reply arrives."""
        server = serve(self, self.endpoint)
        client = yield connect(reactor, server.port, test=self)
        shouts = []
        for i in range(10):
            topic = f"ping:ws{i}"
            client.send_json([str(i), str(i), topic, "phx_join", {}])
            while True:
                frame = yield client.next_json(TIMEOUT)
                if frame[3] != "phx_reply":
                    shouts.append(frame)
                    continue
                self.assertEqual(frame, [str(i), str(i), topic, "phx_reply", {"response": {}, "status": "ok"}])
                break
            self.a.pubsub.broadcast(topic, "shout", {"from": "a"})
            self.c.pubsub.broadcast(topic, "shout", {"from": "c"})
        while len(shouts) < 20:
            shouts.append((yield client.next_json(TIMEOUT)))
        self.assertEqual(sorted((f[2], f[3], f[4]["from"]) for f in shouts),
                         sorted((f"ping:ws{i}", "shout", n) for i in range(10) for n in ("a", "c")))

    @defer.inlineCallbacks
    def test_storm_one_round_trip(self) -> None:
        """Twenty joins on one new topic in one turn: one acknowledged message per link, and all wait for it."""
        calls = self.interest_calls(self.b)
        reading = self.stop_reading(self.a, self.b)
        clients = [self.client() for _ in range(20)]
        replies = [client.join("ping:storm") for client in clients]
        yield wait_until(reactor, lambda: len(calls) == 2, TIMEOUT, what="b's news sent")
        self.assertEqual(sorted(calls), [(self.a.name, "interest_update", (["ping:storm"], []), True),
                                         (self.c.name, "interest_update", (["ping:storm"], []), True)])
        self.assertFalse(any(reply.called for reply in replies))
        reading.resumeProducing()
        results = yield defer.gatherResults([reply.addTimeout(TIMEOUT, reactor) for reply in replies])
        self.assertEqual({r.status for r in results}, {"ok"})
        self.assertEqual(len(calls), 2)
        self.a.pubsub.broadcast("ping:storm", "shout", {"from": "a"})
        yield wait_until(reactor, lambda: all(self.received(c, "shout") for c in clients), TIMEOUT,
                         what="every client has a's shout")

    @defer.inlineCallbacks
    def test_existing_topic_no_wait(self) -> None:
        """A join on a topic the node has subscribers for (known to every peer) waits for nothing: no remote call."""
        first = yield self.client().join("ping:known").addTimeout(TIMEOUT, reactor)
        self.assertEqual(first.status, "ok")
        calls = self.interest_calls(self.b)
        self.stop_reading(self.a, self.b)  # a slow peer would show, were anything awaited
        reply = self.client().join("ping:known")
        self.assertTrue(reply.called, "the reply went out at once")
        self.assertEqual(self.successResultOf(reply).status, "ok")
        yield self.b.links[self.c.name].call("ping")  # a turn or two: nothing was scheduled either
        self.assertEqual(calls, [])

    @defer.inlineCallbacks
    def test_timeout(self) -> None:
        """A peer that never answers holds a join prepare_timeout seconds at most; a warning names it."""
        self.b.prepare_timeout = 0.3
        self.stop_reading(self.a, self.b)
        client = self.client()
        started = reactor.seconds()
        result = yield client.join("ping:slow").addTimeout(TIMEOUT, reactor)
        self.assertEqual(result.status, "ok")
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)
        self.assertTrue(self.logs.find(
            "Node(s) a@127.0.0.1 did not acknowledge within 0.3 s that this node wants ['ping:slow']: "
            "1 join(s) went on", LogLevel.warn))
        self.assertEqual(self.b.announcer.slow, 1)

    @defer.inlineCallbacks
    def test_link_gone(self) -> None:
        """A peer whose link goes away while a join waits for it holds the join no longer."""
        self.b.prepare_timeout = 60.0
        self.stop_reading(self.a, self.b)
        client = self.client()
        reply = client.join("ping:gone")
        yield wait_until(reactor, lambda: told(self.c, self.b, "ping:gone"), TIMEOUT, what="c told")
        yield self.b.links[self.c.name].call("ping")
        self.assertFalse(reply.called)
        self.b.links[self.a.name].close()
        result = yield reply.addTimeout(TIMEOUT, reactor)
        self.assertEqual(result.status, "ok")
        self.assertEqual(self.b.announcer.slow, 0)

    @defer.inlineCallbacks
    def test_closed_while_waiting(self) -> None:
        """A client gone while its join waits: never subscribed; the topic, held for it, is dropped later."""
        reading = self.stop_reading(self.a, self.b)
        client = self.client()
        reply = client.join("ping:left")
        yield wait_until(reactor, lambda: told(self.c, self.b, "ping:left"), TIMEOUT, what="c told")
        client.close()
        self.assertEqual(self.b.pubsub.subscribers("ping:left"), ())
        reading.resumeProducing()
        self.assertFalse(reply.called)
        # linger (0.2 s) plus twice prepare_timeout (1 s) after the join began, c drops it.
        yield wait_until(reactor, lambda: "ping:left" not in self.c.wanted_by(self.b.name), TIMEOUT,
                         what="the topic dropped")
        self.assertFalse(reply.called)
