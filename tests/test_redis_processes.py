"""
End to end: ``twistd -n phoenix --pubsub redis://...`` nodes linked only
through a real ``redis-server`` (no cluster links, no ``--name``: each node
generates its name), driven by real WebSocket clients.

The demo's broadcast crosses both ways; presence tracked on one node is
listed on the other; a node is subscribed to a topic's channel only while it
has subscribers (``PUBSUB NUMSUB``); a Redis restart during a broadcast
stream is survived and the loss is counted and logged, never silent; the
same over ``rediss://``; and with cluster links beside Redis, a broadcast is
still delivered once.

Every wait is bounded; nodes and redis-server are stopped in cleanup.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from typing import Any, Callable

from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from ._client import Client, connect
from ._cluster import COOKIE, ClusterPKI, free_port
from ._redis import RedisServer
from ._server import ServerProcess, start_server

#: Bound on any one wait.
TIMEOUT = 25.0

ENDPOINT = "tests._presence_apps:PresenceClusterEndpoint"

#: Logged by the adapter: "Node NAME connecting to Redis at URL".
CONNECTING = re.compile(r"Node (\S+) connecting to Redis at")


class RedisNodesTestCase(TestCase):
    """A redis-server of its own, and twistd nodes on it."""

    timeout = 150
    tls: dict[str, str] | None = None

    def setUp(self) -> Any:
        self.redis = RedisServer(self, reactor, tls=self.tls)
        return self.redis.start()

    @defer.inlineCallbacks
    def start_node(self, label: str, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """A twistd node on this Redis, once connected both ways; ``.name`` is its (generated) name."""
        server = yield start_server(
            self, "--pubsub", self.redis.url(), "--endpoint", ENDPOINT, *args,
            env=env, name=label, timeout=TIMEOUT, **kwargs,
        )
        yield self.wait_log(server, "connected to Redis", "(publishing)", "(subscribed)")
        server.name = CONNECTING.search(server.output()).group(1)
        return server

    def wait_log(self, server: ServerProcess, *texts: str, since: int = 0) -> defer.Deferred[Any]:
        return server.child.wait_for_output(
            lambda out: all(t in out[since:] for t in texts), TIMEOUT, f"{texts} in the log of {server.child.name}"
        )

    def wait_log_match(self, server: ServerProcess, pattern: str, since: int = 0) -> defer.Deferred[Any]:
        return server.child.wait_for_output(
            lambda out: re.search(pattern, out[since:]), TIMEOUT, f"/{pattern}/ in the log of {server.child.name}"
        )

    @defer.inlineCallbacks
    def poll(self, ask: Callable[[], defer.Deferred[Any]], check: Callable[[Any], bool], what: str) -> Any:
        """Ask every 0.1 s until ``check(answer)``; bounded."""
        deadline = reactor.seconds() + TIMEOUT
        answer = None
        while reactor.seconds() < deadline:
            answer = yield ask()
            if check(answer):
                return answer
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail(f"no {what} within {TIMEOUT} s (last answer {answer!r})")

    @defer.inlineCallbacks
    def assert_numsub(self, topic: str, count: int) -> Any:
        """Redis has ``count`` nodes subscribed to ``topic``'s channel now (no wait: a join's reply says so)."""
        channel = f"phx:t:{topic}"
        self.assertEqual((yield self.redis.numsub(channel)), {channel: count})

    @defer.inlineCallbacks
    def client(self, server: ServerProcess, query: str = "vsn=2.0.0") -> Any:
        client = yield connect(reactor, server.port, query=query, test=self)
        return client

    @defer.inlineCallbacks
    def joined(self, server: ServerProcess, topic: str = "ping", query: str = "vsn=2.0.0", payload: Any = None) -> Any:
        client = yield self.client(server, query)
        reply = yield client.request(["1", "1", topic, "phx_join", payload or {}], timeout=TIMEOUT)
        self.assertEqual(reply[3:], ["phx_reply", {"response": {}, "status": "ok"}])
        return client

    def frames_until(self, client: Client, done: Callable[[Any], bool], what: str) -> Any:
        """Read frames until ``done(frame)``; fires with every frame read."""
        return client.frames_until(done, what, TIMEOUT)


class RedisProcessTests(RedisNodesTestCase):
    """Two nodes, linked only through Redis."""

    @defer.inlineCallbacks
    def test_broadcast_both_ways(self) -> Any:
        """The demo's broadcast crosses both ways, once each, and each node names itself."""
        a, b = yield defer.gatherResults([self.start_node("a"), self.start_node("b")])
        self.assertNotEqual(a.name, b.name)
        self.assertNotIn("listening for cluster links", a.output())
        ca = yield self.joined(a)
        cb = yield self.joined(b)
        yield self.assert_numsub("ping", 2)  # the join replies came once Redis had both subscriptions
        ca.send_json(["1", "2", "ping", "broadcast", {"from": "a"}])
        got = yield self.frames_until(cb, lambda f: f[3] == "broadcast", "a's broadcast on b")
        self.assertEqual(got, [[None, None, "ping", "broadcast", {"from": "a"}]])
        cb.send_json(["1", "2", "ping", "broadcast", {"from": "b"}])
        got = yield self.frames_until(ca, lambda f: f[4] == {"from": "b"}, "b's broadcast on a")
        # a got its own once (delivered locally, its echo from Redis skipped), then b's.
        self.assertEqual([f[4] for f in got], [{"from": "a"}, {"from": "b"}])
        got = yield self.frames_until(cb, lambda f: f[4] == {"from": "b"}, "b's own broadcast")
        self.assertEqual(len(got), 1)
        # Anything delivered twice would come before a marker sent after.
        ca.send_json(["1", "3", "ping", "broadcast", {"marker": True}])
        for client in (ca, cb):
            got = yield self.frames_until(client, lambda f: f[4] == {"marker": True}, "the marker")
            self.assertEqual(len(got), 1, got)
        for server in (a, b):
            self.assertNotIn("Lost", server.output())
            self.assertNotIn("not published", server.output())

    @defer.inlineCallbacks
    def test_presence(self) -> Any:
        """A user tracked on one node is listed on the other, both ways."""
        a, b = yield defer.gatherResults([self.start_node("a"), self.start_node("b")])
        yield defer.gatherResults([
            self.wait_log(a, f"Node {b.name} is up (Redis)"), self.wait_log(b, f"Node {a.name} is up (Redis)"),
        ])
        alice = yield self.joined(a, "tracked", payload={"user_id": "alice"})
        bob = yield self.joined(b, "tracked", payload={"user_id": "bob"})

        def lists(user: str) -> Callable[[Any], bool]:
            def check(frame: Any) -> bool:
                event, payload = frame[3], frame[4]
                if event == "presence_state":
                    return user in payload
                return event == "presence_diff" and user in payload.get("joins", {})

            return check

        yield self.frames_until(bob, lists("alice"), "alice listed on b")
        yield self.frames_until(alice, lists("bob"), "bob listed on a")
        # A late joiner on b gets both in its first presence_state.
        carol = yield self.joined(b, "tracked", payload={"user_id": "carol"})
        state = yield self.frames_until(carol, lambda f: f[3] == "presence_state", "carol's presence_state")
        self.assertLessEqual({"alice", "bob", "carol"}, set(state[-1][4]))

    @defer.inlineCallbacks
    def test_interest(self) -> Any:
        """A node is subscribed to a topic's channel only while it has subscribers there (plus 5 s)."""
        a, b = yield defer.gatherResults([self.start_node("a"), self.start_node("b")])
        channels = ("phx:t:ping", "phx:t:phx_presence:presence", "phx:nodes", f"phx:n:{a.name}")
        counts = yield self.redis.numsub(*channels)
        self.assertEqual(counts, {"phx:t:ping": 0, "phx:t:phx_presence:presence": 2, "phx:nodes": 2, f"phx:n:{a.name}": 1})
        ca = yield self.joined(a)
        yield self.assert_numsub("ping", 1)  # a's join reply came once Redis had a's subscription
        cb = yield self.joined(b)
        yield self.assert_numsub("ping", 2)
        left_at = reactor.seconds()
        yield cb.disconnect()
        yield self.poll(lambda: self.redis.numsub("phx:t:ping"), lambda n: n == {"phx:t:ping": 1}, "b unsubscribed")
        self.assertGreaterEqual(reactor.seconds() - left_at, 4.5)  # the 5 s linger
        # a broadcasts on ping: b, not subscribed, receives none of it.
        ca.send_json(["1", "2", "ping", "broadcast", {"n": 1}])
        yield self.frames_until(ca, lambda f: f[3] == "broadcast", "a's own broadcast")
        yield ca.disconnect()


class RedisRestartTests(RedisNodesTestCase):
    """Redis killed and restarted under a broadcast stream."""

    @defer.inlineCallbacks
    def test_restart(self) -> Any:
        """Both nodes reconnect and resubscribe; delivery resumes; every lost broadcast is counted and logged."""
        a, b = yield defer.gatherResults([self.start_node("a"), self.start_node("b")])
        ca = yield self.joined(a)
        cb = yield self.joined(b)
        yield self.assert_numsub("ping", 2)  # the join replies came once Redis had both subscriptions
        counter = iter(range(1_000_000))
        sent: list[int] = []

        def send() -> None:
            n = next(counter)
            sent.append(n)
            ca.send_json(["1", None, "ping", "broadcast", {"n": n}])

        loop = LoopingCall(send)
        loop.clock = reactor
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        got = yield self.frames_until(cb, lambda f: f[4]["n"] >= 30, "the stream on b")
        since = {s: len(s.output()) for s in (a, b)}
        yield self.redis.kill()
        yield defer.gatherResults([
            self.wait_log(a, "Lost the connection to Redis", since=since[a]),
            self.wait_log(b, "Lost the connection to Redis", since=since[b]),
        ])
        yield deferLater(reactor, 0.5, lambda: None)  # broadcasts go on meanwhile: a drops them
        yield self.redis.start()
        yield defer.gatherResults([
            self.wait_log(a, "reconnected to Redis", "(subscribed)", "(publishing)", since=since[a]),
            self.wait_log(b, "reconnected to Redis", "(subscribed)", "(publishing)", since=since[b]),
        ])
        resumed_at = sent[-1]
        got += yield self.frames_until(cb, lambda f: f[4]["n"] >= resumed_at + 30, "the stream on b again")
        loop.stop()
        numbers = [f[4]["n"] for f in got]
        self.assertEqual(numbers, sorted(numbers))
        missing = numbers[-1] - numbers[0] + 1 - len(numbers)
        self.assertGreater(missing, 0)
        yield self.wait_log(a, "broadcast(s) not published", since=since[a])
        # b logged what it lost on ping: exactly what its client missed.
        pattern = re.compile(rf"Lost \d+ broadcast\(s\) from node {re.escape(a.name)} \(sequence gap; by topic: [^)]*\bping (\d+)")
        yield self.wait_log_match(b, pattern.pattern, since=since[b])
        yield deferLater(reactor, 1.5, lambda: None)  # any later summary line (one a second at most)
        logged = sum(int(n) for n in pattern.findall(b.output()[since[b]:]))
        self.assertEqual(logged, missing, b.output())


class RedisTLSProcessTests(RedisNodesTestCase):
    """Nodes on ``rediss://``."""

    def setUp(self) -> Any:
        directory = tempfile.mkdtemp(prefix="twisted_phoenix_redis_tls_")
        self.addCleanup(shutil.rmtree, directory, True)
        pki = ClusterPKI(directory, "twisted_phoenix redis test CA")
        cert, key = pki.issue("localhost")
        self.tls = {"ca": pki.ca_path, "cert": cert, "key": key}
        return super().setUp()

    @defer.inlineCallbacks
    def test_tls(self) -> Any:
        """The demo's broadcast crosses between two nodes on rediss://."""
        self.assertTrue(self.redis.url().startswith("rediss://"))
        a, b = yield defer.gatherResults([self.start_node("a"), self.start_node("b")])
        ca = yield self.joined(a)
        cb = yield self.joined(b)
        yield self.assert_numsub("ping", 2)  # the join replies came once Redis had both subscriptions
        ca.send_json(["1", "2", "ping", "broadcast", {"over": "tls"}])
        got = yield self.frames_until(cb, lambda f: f[3] == "broadcast", "the broadcast on b")
        self.assertEqual(got[-1][4], {"over": "tls"})


class RedisWithLinksTests(RedisNodesTestCase):
    """Cluster links beside Redis carry no broadcasts."""

    @defer.inlineCallbacks
    def test_delivered_once(self) -> Any:
        """Two nodes linked by PB and on Redis: a broadcast reaches the other node's client once."""
        env = {"PHOENIX_EPMD_PORT": str(free_port()), "PHOENIX_COOKIE": COOKIE}
        a = yield self.start_node("a", "--name", "a@127.0.0.1", env=env, ready="listening for cluster links")
        b = yield self.start_node("b", "--name", "b@127.0.0.1", "--connect", "a@127.0.0.1", env=env,
                                  ready="listening for cluster links")
        self.assertEqual((a.name, b.name), ("a@127.0.0.1", "b@127.0.0.1"))
        yield self.wait_log(a, "Node b@127.0.0.1 connected to a@127.0.0.1")
        ca = yield self.joined(a)
        cb = yield self.joined(b)
        yield self.assert_numsub("ping", 2)  # the join replies came once Redis had both subscriptions
        ca.send_json(["1", "2", "ping", "broadcast", {"n": 1}])
        ca.send_json(["1", "3", "ping", "broadcast", {"n": 2}])
        got = yield self.frames_until(cb, lambda f: f[4] == {"n": 2}, "both broadcasts on b")
        self.assertEqual([f[4] for f in got], [{"n": 1}, {"n": 2}])
        # Anything delivered twice would come before a marker sent after.
        cb.send_json(["1", "4", "ping", "broadcast", {"marker": True}])
        got = yield self.frames_until(cb, lambda f: f[4] == {"marker": True}, "the marker")
        self.assertEqual(len(got), 1, got)
