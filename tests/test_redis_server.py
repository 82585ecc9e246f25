"""
The Redis adapter against a real ``redis-server``, in process: two nodes
(each a PubSub and a RedisAdapter on the real reactor) linked only through
Redis.  Broadcasts both ways, interest (``PUBSUB NUMSUB``), direct
broadcasts and node-up, a Redis restart in the middle of a stream, Redis
dropping a subscriber that does not read, AUTH and TLS.

Every wait is bounded; the redis-server and the adapters are stopped in
cleanup.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from twisted_phoenix.adapters.redis import RedisAdapter
from twisted_phoenix.message import Broadcast
from twisted_phoenix.pubsub import CallbackSubscriber, PubSub

from ._client import capture_logs
from ._cluster import ClusterPKI, wait_until
from ._redis import RedisServer

#: Bound on any one wait.
TIMEOUT = 20.0


class LiveNode:
    """A PubSub and its RedisAdapter, and what its local subscribers got."""

    def __init__(self, test: TestCase, name: str, url: str, **options: Any) -> None:
        self.pubsub = PubSub(name)
        options.setdefault("backoff", (0.05, 0.5))
        self.adapter = RedisAdapter(reactor, self.pubsub, url, **options)
        self.got: dict[str, list[Broadcast]] = {}
        self.subscribers: dict[str, CallbackSubscriber] = {}
        self.up: list[str] = []
        self.adapter.node_up_callbacks.append(self.up.append)
        self.adapter.startService()
        test.addCleanup(self.stop)

    def stop(self) -> defer.Deferred[Any]:
        if self.adapter.running:
            return defer.maybeDeferred(self.adapter.stopService)
        return defer.succeed(None)

    def subscribe(self, topic: str) -> None:
        subscriber = self.subscribers[topic] = CallbackSubscriber(self.got.setdefault(topic, []).append)
        self.pubsub.subscribe(topic, subscriber)

    def unsubscribe(self, topic: str) -> None:
        self.pubsub.unsubscribe(topic, self.subscribers.pop(topic))


class RedisLiveTests(TestCase):
    """Two in-process nodes on one redis-server."""

    timeout = 90

    def setUp(self) -> Any:
        self.redis = RedisServer(self, reactor)
        self.logs = capture_logs(self)
        return self.redis.start()

    def node(self, name: str, url: str | None = None, **options: Any) -> LiveNode:
        return LiveNode(self, name, url or self.redis.url(), **options)

    def wait(self, condition: Any, what: str, timeout: float = TIMEOUT) -> defer.Deferred[Any]:
        return wait_until(reactor, condition, timeout=timeout, interval=0.02, what=what)

    @defer.inlineCallbacks
    def linked(self, *names: str, **options: Any) -> Any:
        """Nodes that have heard each other's hello."""
        nodes = [self.node(name, **options) for name in names]
        for node in nodes:
            others = sorted(n for n in names if n != node.pubsub.node_name)
            yield self.wait(lambda node=node, others=others: node.adapter.list() == others, f"{node.pubsub.node_name} sees {others}")
        return nodes

    @defer.inlineCallbacks
    def test_both_ways(self) -> Any:
        """A broadcast crosses both ways and reaches each subscriber exactly once, binary payloads too."""
        a, b = yield self.linked("a@h", "b@h")
        a.subscribe("room")
        b.subscribe("room")
        yield self.wait(lambda: a.adapter.is_subscribed("room") and b.adapter.is_subscribed("room"), "subscribed")
        a.pubsub.broadcast("room", "from_a", {"n": 1})
        b.pubsub.broadcast("room", "from_b", b"\x00\x01binary")
        expected = [Broadcast("room", "from_a", {"n": 1}), Broadcast("room", "from_b", b"\x00\x01binary")]
        for node in (a, b):
            yield self.wait(lambda node=node: len(node.got["room"]) >= 2, "both broadcasts")
        # Anything more (an echo of its own from Redis) would arrive before a
        # marker sent after; so send one and wait for it.
        a.pubsub.broadcast("room", "marker", {})
        yield self.wait(lambda: len(b.got["room"]) == 3, "marker on b")
        yield self.wait(lambda: b.adapter.received == 2 and a.adapter.received == 1, "counts")
        everything = sorted(expected + [Broadcast("room", "marker", {})], key=repr)
        self.assertEqual(sorted(a.got["room"], key=repr), everything)
        self.assertEqual(sorted(b.got["room"], key=repr), everything)
        self.assertEqual((a.adapter.lost, b.adapter.lost, a.adapter.publish_dropped), (0, 0, 0))

    @defer.inlineCallbacks
    def test_interest(self) -> Any:
        """A node is subscribed to a topic's channel only while it has subscribers (and linger after)."""
        a, b = yield self.linked("a@h", "b@h", linger=0.3)
        channel = "phx:t:only_a"
        self.assertEqual((yield self.redis.numsub(channel)), {channel: 0})
        a.subscribe("only_a")
        yield self.wait(lambda: a.adapter.is_subscribed("only_a"), "a subscribed")
        self.assertEqual((yield self.redis.numsub(channel, "phx:n:a@h", "phx:nodes")),
                         {channel: 1, "phx:n:a@h": 1, "phx:nodes": 2})
        # b has no subscriber: b's own broadcasts reach a, nothing reaches b.
        for n in range(5):
            b.pubsub.broadcast("only_a", "e", {"n": n})
        yield self.wait(lambda: len(a.got["only_a"]) == 5, "a got them")
        self.assertEqual(b.adapter.received, 0)
        a.unsubscribe("only_a")
        self.assertEqual((yield self.redis.numsub(channel)), {channel: 1})  # lingering
        yield self.wait(lambda: not a.adapter.is_subscribed("only_a"), "a unsubscribed")
        self.assertEqual((yield self.redis.numsub(channel)), {channel: 0})

    @defer.inlineCallbacks
    def test_direct_and_node_up(self) -> Any:
        """Nodes learn of each other through hello; a direct broadcast reaches only its node."""
        a, b, c = yield self.linked("a@h", "b@h", "c@h")
        self.assertIn("b@h", a.up)
        self.assertIn("a@h", b.up)
        for node in (a, b, c):
            node.subscribe("inbox")
        self.assertTrue(a.pubsub.direct_broadcast("b@h", "inbox", "hi", {"to": "b"}))
        yield self.wait(lambda: len(b.got["inbox"]) == 1, "b got it")
        self.assertEqual(b.got["inbox"], [Broadcast("inbox", "hi", {"to": "b"})])
        self.assertTrue(a.pubsub.direct_broadcast("nobody@h", "inbox", "hi", {}))
        yield self.wait(lambda: a.adapter.direct_undelivered == 1, "undelivered counted")
        self.assertEqual((a.got.get("inbox"), c.got.get("inbox")), ([], []))
        # A node that stops says goodbye.
        yield c.stop()
        yield self.wait(lambda: a.adapter.list() == ["b@h"], "c gone from a's list")

    @defer.inlineCallbacks
    def test_redis_restart(self) -> Any:
        """Redis killed and restarted mid-stream: both resubscribe, delivery resumes, every loss is counted and logged."""
        a, b = yield self.linked("a@h", "b@h")
        b.subscribe("stream")
        yield self.wait(lambda: b.adapter.is_subscribed("stream"), "b subscribed")
        counter = iter(range(1_000_000))
        loop = LoopingCall(lambda: a.pubsub.broadcast("stream", "n", {"n": next(counter)}))
        loop.clock = reactor
        loop.start(0.005)
        self.addCleanup(lambda: loop.running and loop.stop())
        yield self.wait(lambda: len(b.got.get("stream", ())) >= 50, "the stream flows")
        yield self.redis.kill()
        yield self.wait(lambda: a.adapter.publish_dropped >= 20, "a drops while Redis is down")
        yield self.redis.start()
        yield self.wait(lambda: b.adapter.lost > 0 and a.adapter.connected and b.adapter.connected, "the gap seen")
        seen = len(b.got["stream"])
        yield self.wait(lambda: len(b.got["stream"]) >= seen + 50, "the stream flows again")
        loop.stop()
        numbers = [m.payload["n"] for m in b.got["stream"]]
        missing = (numbers[-1] - numbers[0] + 1) - len(numbers)
        self.assertEqual(numbers, sorted(numbers))
        # Every message b did not get is counted, no more, no less.
        self.assertGreater(missing, 0)
        self.assertEqual(b.adapter.lost, missing)
        self.assertGreaterEqual(a.adapter.publish_dropped, 20)
        self.assertEqual((a.adapter.reconnects, b.adapter.reconnects), (2, 2))
        yield self.wait(lambda: self.logs.find("broadcast(s) from node a@h (sequence gap", LogLevel.warn), "the loss logged")
        self.assertTrue(self.logs.find("broadcast(s) not published", LogLevel.warn))
        self.assertTrue(self.logs.find("Lost the connection to Redis", LogLevel.warn))
        self.assertTrue(self.logs.find("reconnected to Redis", LogLevel.warn))
        # They said hello again: each is up again for the other (presence re-syncs on that).
        yield self.wait(lambda: a.up.count("b@h") >= 2 and b.up.count("a@h") >= 2, "node up again")

    @defer.inlineCallbacks
    def test_slow_subscriber_dropped(self) -> Any:
        """Redis dropping a subscriber that reads too slowly is a reconnect like any other: the gap is counted."""
        yield self.redis.cli("CONFIG", "SET", "client-output-buffer-limit", "pubsub 256kb 128kb 1")
        a, b = yield self.linked("a@h", "b@h")
        b.subscribe("flood")
        yield self.wait(lambda: b.adapter.is_subscribed("flood"), "b subscribed")
        a.pubsub.broadcast("flood", "n", {"n": -1})
        yield self.wait(lambda: len(b.got.get("flood", ())) == 1, "first one")
        b.adapter._subscriber.transport.pauseProducing()  # b stops reading
        counter = iter(range(1_000_000))
        pad = "x" * 1000

        def flood() -> None:
            for _ in range(100):
                a.pubsub.broadcast("flood", "n", {"n": next(counter), "pad": pad})

        loop = LoopingCall(flood)
        loop.clock = reactor
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        yield self._poll(lambda: self.redis.numsub("phx:t:flood"), {"phx:t:flood": 0}, "Redis drops b's subscription")
        loop.stop()
        last = next(counter) - 1
        b.adapter._subscriber.transport.resumeProducing()
        yield self.wait(lambda: b.adapter.reconnects >= 1 and b.adapter.connected, "b reconnected")
        yield self.wait(lambda: b.adapter.is_subscribed("flood"), "b subscribed again")
        a.pubsub.broadcast("flood", "n", {"n": last + 1})
        yield self.wait(lambda: b.got["flood"][-1].payload["n"] == last + 1, "the one after")
        numbers = [m.payload["n"] for m in b.got["flood"]]
        missing = (numbers[-1] - numbers[0] + 1) - len(numbers)
        self.assertGreater(missing, 0)
        self.assertEqual(b.adapter.lost, missing)

    @defer.inlineCallbacks
    def _poll(self, ask: Any, expected: Any, what: str) -> Any:
        """Ask (a Deferred) every 0.1 s until it answers ``expected``; bounded."""
        deadline = reactor.seconds() + TIMEOUT
        while reactor.seconds() < deadline:
            value = yield ask()
            if value == expected:
                return value
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"no {what} within {TIMEOUT} s (last answer {value!r})")

    def client_on(self, node: LiveNode) -> Any:
        """A client of the demo's endpoint on ``node``, through the real session and channels (in memory)."""
        from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket
        from twisted_phoenix.testing import ChannelTest

        endpoint = HelloSocketsEndpoint(reactor, node_name=node.pubsub.node_name, secret_key_base="s" * 64,
                                        pubsub=node.pubsub)
        client = ChannelTest(endpoint).socket(UserSocket)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_join_waits_for_subscription(self) -> Any:
        """A join's reply comes once Redis has confirmed the node's SUBSCRIBE: what is published after reaches it."""
        a, b = yield self.linked("a@h", "b@h")
        client = self.client_on(b)
        for i in range(10):
            topic = f"ping:{i}"
            reply = yield client.join(topic).addTimeout(TIMEOUT, reactor)
            self.assertEqual(reply.status, "ok")
            self.assertTrue(b.adapter.is_subscribed(topic))
            a.pubsub.broadcast(topic, "shout", {"i": i})  # at once
        yield self.wait(lambda: len(client.broadcasts) == 10, "every shout")
        self.assertEqual(sorted(m.payload["i"] for m in client.broadcasts), list(range(10)))
        self.assertEqual(b.adapter.lost, 0)

    @defer.inlineCallbacks
    def test_join_waits_for_confirmation(self) -> Any:
        """Redis has subscribed the node, but until the node has read the confirmation the join waits."""
        a, b = yield self.linked("a@h", "b@h")
        client = self.client_on(b)
        b.adapter._subscriber.transport.pauseProducing()  # b reads nothing from its subscription connection
        reply = client.join("ping:held")
        yield self.poll_numsub("phx:t:ping:held", 1)
        self.assertFalse(reply.called)
        a.pubsub.broadcast("ping:held", "shout", {"after": "subscribe"})
        b.adapter._subscriber.transport.resumeProducing()
        self.assertEqual((yield reply.addTimeout(TIMEOUT, reactor)).status, "ok")
        yield self.wait(lambda: len(client.broadcasts) == 1, "the shout")

    @defer.inlineCallbacks
    def test_join_timeout(self) -> Any:
        """Unconfirmed within prepare_timeout: the join goes on, with a warning."""
        b = self.node("b@h", prepare_timeout=0.3)
        yield self.wait(lambda: b.adapter.connected, "connected")
        client = self.client_on(b)
        b.adapter._subscriber.transport.pauseProducing()
        self.addCleanup(lambda: b.adapter._subscriber and b.adapter._subscriber.transport.resumeProducing())
        started = reactor.seconds()
        self.assertEqual((yield client.join("ping:slow").addTimeout(TIMEOUT, reactor)).status, "ok")
        self.assertGreaterEqual(reactor.seconds() - started, 0.29)
        self.assertTrue(self.logs.find("did not confirm the subscription to phx:t:ping:slow within 0.3 s", LogLevel.warn))

    @defer.inlineCallbacks
    def poll_numsub(self, channel: str, count: int) -> Any:
        """Ask Redis every 0.02 s until ``channel`` has ``count`` subscribers; bounded."""
        deadline = reactor.seconds() + TIMEOUT
        while True:
            counts = yield self.redis.numsub(channel)
            if counts == {channel: count}:
                return
            if reactor.seconds() > deadline:
                self.fail(f"{channel} never had {count} subscriber(s): {counts}")
            yield deferLater(reactor, 0.02, lambda: None)


class RedisAuthTests(TestCase):
    """A Redis with a password."""

    timeout = 60

    def setUp(self) -> Any:
        self.redis = RedisServer(self, reactor, args=("--requirepass", "s3cret"))
        self.logs = capture_logs(self)
        return self.redis.start()

    @defer.inlineCallbacks
    def test_password(self) -> Any:
        """The URL's password is used; a wrong one is an error in the log and no connection."""
        good = LiveNode(self, "a@h", self.redis.url(":s3cret"))
        yield wait_until(reactor, lambda: good.adapter.connected, timeout=TIMEOUT, what="connected with AUTH")
        bad = LiveNode(self, "b@h", self.redis.url(":nope"))
        yield wait_until(reactor, lambda: self.logs.find("refused our AUTH", LogLevel.error), timeout=TIMEOUT, what="AUTH refused")
        self.assertFalse(bad.adapter.connected)
        self.assertNotIn("nope", "\n".join(self.logs.messages()))


class RedisTLSTests(TestCase):
    """``rediss://``: Redis over TLS, with a CA made for the test and client certificates."""

    timeout = 60

    def setUp(self) -> Any:
        directory = tempfile.mkdtemp(prefix="twisted_phoenix_redis_tls_")
        self.addCleanup(shutil.rmtree, directory, True)
        pki = ClusterPKI(directory, "twisted_phoenix redis test CA")
        cert, key = pki.issue("localhost")
        self.tls = {"ca": pki.ca_path, "cert": cert, "key": key}
        self.other_ca = ClusterPKI(directory, "some other CA").ca_path
        self.redis = RedisServer(self, reactor, tls=self.tls)
        self.logs = capture_logs(self)
        return self.redis.start()

    @defer.inlineCallbacks
    def test_broadcast_over_tls(self) -> Any:
        """Two nodes on rediss:// exchange a broadcast."""
        a = LiveNode(self, "a@h", self.redis.url())
        b = LiveNode(self, "b@h", self.redis.url())
        b.subscribe("t")
        yield wait_until(reactor, lambda: a.adapter.list() == ["b@h"] and b.adapter.is_subscribed("t"),
                         timeout=TIMEOUT, what="linked over TLS")
        a.pubsub.broadcast("t", "e", {"tls": True})
        yield wait_until(reactor, lambda: b.got["t"] == [Broadcast("t", "e", {"tls": True})], timeout=TIMEOUT, what="received")

    @defer.inlineCallbacks
    def test_untrusted_server(self) -> Any:
        """A server certificate not signed by the given CA is refused, and the log says so."""
        url = self.redis.url().replace(self.tls["ca"], self.other_ca)
        node = LiveNode(self, "a@h", url)
        yield wait_until(reactor, lambda: self.logs.find("Cannot connect to Redis", LogLevel.warn), timeout=TIMEOUT, what="refused")
        self.assertFalse(node.adapter.connected)
