"""
End-to-end tests of ``twistd -n phoenix --workers N`` with real processes:
the parent and its workers, WebSocket and long-poll clients on loopback,
another node, and Redis.

Each test has its own port mapper port and cookie.  Which worker accepts
a connection is the kernel's choice, and on an idle machine it may be the
same one many times in a row; so a test that needs a client on a given
worker stops the others (SIGSTOP) while that client connects, leaving the
shared socket to that worker alone, and checks where it landed (each
client's :class:`tests._worker_app.WhereChannel` names its node).
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any, Callable

import orjson
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from twisted_phoenix.client import Socket as PhoenixSocket
from twisted_phoenix.token import verify
from twisted_phoenix.transports.longpoll import TOKEN_SALT

from ._client import Client, connect
from ._cluster import COOKIE, free_port, wait_until
from ._server import TEST_SECRET, ServerProcess, start_server

APP = "tests._worker_app:WorkersEndpoint"

#: Bound on any one wait.
TIMEOUT = 30.0

_STARTED = re.compile(r"Worker (\d+) started: (\S+), pid (\d+)")


def all_ready(count: int) -> str:
    """What the parent logs once its ``count`` workers are ready and linked."""
    return f"All {count} workers ready and linked"


def join_message(topic: str, ref: str = "1", payload: Any = None) -> list[Any]:
    return [ref, ref, topic, "phx_join", payload or {}]


class WorkersTestCase(TestCase):
    """Helpers: start a parent, find clients on every worker, read frames."""

    timeout = 180

    def setUp(self) -> None:
        self.env = {"PHOENIX_EPMD_PORT": str(free_port()), "PHOENIX_COOKIE": COOKIE}

    def start(self, *args: str, workers: int = 2, name: str = "parent", env: Any = None) -> defer.Deferred[ServerProcess]:
        """Start ``twistd phoenix --workers N`` with the test app; fires once every worker is ready and linked."""
        return start_server(
            self, "--workers", str(workers), "--endpoint", APP, *args,
            env={**self.env, **(env or {})}, ready=all_ready(workers), timeout=TIMEOUT, name=name,
        )

    def workers(self, server: ServerProcess) -> dict[str, int]:
        """Worker name → pid of its latest start, from the parent's log."""
        return {m.group(2): int(m.group(3)) for m in _STARTED.finditer(server.output())}

    @defer.inlineCallbacks
    def where(self, client: Client, topic: str = "room:lobby", ref: str = "1") -> Any:
        """Join ``topic`` (a WhereChannel); fires with the join's response: node, nodes."""
        reply = yield client.request(join_message(topic, ref), timeout=TIMEOUT)
        self.assertEqual(reply[3], "phx_reply", reply)
        self.assertEqual(reply[4]["status"], "ok", reply)
        return reply[4]["response"]

    @defer.inlineCallbacks
    def accepted_by(self, server: ServerProcess, name: str, open: Callable[[], defer.Deferred[Any]]) -> Any:
        """
        Fires with ``open()``'s result, a connection that worker ``name``
        accepted: every other worker is stopped (SIGSTOP) until it is open.
        """
        others = [pid for node, pid in self.workers(server).items() if node != name]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            result = yield open()
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)
        return result

    @defer.inlineCallbacks
    def on_every_worker(self, server: ServerProcess, per_node: int = 1) -> Any:
        """
        Connect ``per_node`` clients to each worker, each joined to
        ``room:lobby``; fires with ``{node: [Client]}``.
        """
        found: dict[str, list[Client]] = {}
        for node in sorted(self.workers(server)):
            for _ in range(per_node):
                client = yield self.accepted_by(
                    server, node, lambda: connect(reactor, server.port, test=self, timeout=TIMEOUT)
                )
                self.assertEqual((yield self.where(client))["node"], node)
                found.setdefault(node, []).append(client)
        return found

    def frames_until(self, client: Client, done: Callable[[Any], bool], what: str) -> Any:
        """Read frames until ``done(frame)``; fires with every frame read."""
        return client.frames_until(done, what, TIMEOUT)

    @defer.inlineCallbacks
    def assertShoutReaches(self, sender: Client, receivers: list[Client], payload: dict[str, Any], ref: str) -> Any:
        """``sender`` shouts ``payload`` on room:lobby; every receiver (the sender too) gets it once."""
        sender.send_json(["1", ref, "room:lobby", "shout", payload])
        for client in [sender, *receivers]:
            got = yield self.frames_until(client, lambda f: f[3] == "shout" and f[4] == payload, f"shout {payload}")
            self.assertEqual([f for f in got if f[3] == "shout"], [[None, None, "room:lobby", "shout", payload]])


class WorkersClusterTests(WorkersTestCase):
    """Two workers serve one port, as one cluster."""

    @defer.inlineCallbacks
    def test_workers_serve_as_a_cluster(self) -> Any:
        """Both workers get clients; each lists its sibling; broadcasts and presence span them."""
        server = yield self.start()
        names = sorted(self.workers(server))
        self.assertEqual(len(names), 2)
        # Generated names, one base for both: phoenix-<hex>-1@host, -2@host.
        self.assertRegex(names[0], r"^phoenix-[0-9a-f]{8}-1@")
        self.assertEqual(names[1], names[0].replace("-1@", "-2@"))
        self.assertEqual(server.output().count("twisted_phoenix listening on"), 1)
        found = yield self.on_every_worker(server, per_node=2)
        self.assertEqual(sorted(found), names)
        for node, clients in found.items():
            response = yield self.where(clients[0], "where", ref="2")
            self.assertEqual(response, {"node": node, "nodes": [n for n in names if n != node]})
        (a1, a2), (b1, b2) = found[names[0]], found[names[1]]
        yield self.assertShoutReaches(a1, [a2, b1, b2], {"from": "worker 1"}, "3")
        yield self.assertShoutReaches(b2, [a1, a2, b1], {"from": "worker 2"}, "4")
        # Presence: alice on worker 1, bob on worker 2; each sees the other.
        a1.send_json(join_message("tracked", "5", {"user_id": "alice"}))
        b1.send_json(join_message("tracked", "5", {"user_id": "bob"}))

        def sees(user: str) -> Callable[[Any], bool]:
            def check(frame: Any) -> bool:
                if frame[2] != "tracked":
                    return False
                if frame[3] == "presence_state":
                    return user in frame[4]
                return frame[3] == "presence_diff" and user in frame[4]["joins"]
            return check

        yield self.frames_until(b1, sees("alice"), "alice's presence on worker 2")
        yield self.frames_until(a1, sees("bob"), "bob's presence on worker 1")

    @defer.inlineCallbacks
    def test_killed_worker_restarts(self) -> Any:
        """kill -9 of a worker: it is restarted, its clients reconnect, the other worker's are unaffected."""
        server = yield self.start()
        pids = self.workers(server)
        url = server.url("/socket")
        sockets: dict[str, list[Any]] = {}
        for name in sorted(pids):
            sock = PhoenixSocket(url, reactor=reactor)
            self.addCleanup(sock.disconnect)
            yield self.accepted_by(server, name, sock.connect)
            channel = sock.channel("where")
            self.assertEqual((yield channel.join())["node"], name)
            sockets[name] = [(sock, channel)]
        victim, survivor = sorted(pids)
        closes: dict[str, list[Any]] = {name: [] for name in pids}
        for name, pairs in sockets.items():
            for sock, _ in pairs:
                sock.on_close(closes[name].append)
        ready_before = server.output().count(all_ready(2))
        os.kill(pids[victim], signal.SIGKILL)
        yield server.child.wait_for_output(
            lambda out: out.count(all_ready(2)) > ready_before, TIMEOUT, "the worker restarted and linked"
        )
        self.assertIn("was killed by SIGKILL", server.output())
        self.assertNotEqual(self.workers(server)[victim], pids[victim])
        # The victim's clients reconnect (to either worker) and rejoin.
        for sock, channel in sockets[victim]:
            yield wait_until(reactor, sock.is_connected, TIMEOUT, what="the client reconnected")
            yield wait_until(reactor, channel.is_joined, TIMEOUT, what="the channel rejoined")
            answer = yield channel.push("where", {}, timeout=TIMEOUT)
            self.assertIn(answer["node"], pids)
        self.assertTrue(closes[victim])
        # The survivor's clients never noticed, and still are served by it.
        self.assertEqual(closes[survivor], [])
        for sock, channel in sockets[survivor]:
            answer = yield channel.push("where", {}, timeout=TIMEOUT)
            self.assertEqual(answer, {"node": survivor, "nodes": [victim]})

    @defer.inlineCallbacks
    def test_sigterm_drains(self) -> Any:
        """SIGTERM: WebSocket clients get 1012, a waiting poll 410, the parent exits 0 in time, no worker is left."""
        server = yield self.start("--drain-timeout", "5")
        pids = self.workers(server)
        found = yield self.on_every_worker(server)
        session = _LongPoll(self, server.port)
        token = yield session.open()
        poll = session.request("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        started = reactor.seconds()
        server.child.transport.signalProcess("TERM")
        for (client,) in found.values():
            was_clean, code, _ = yield client.wait_closed(TIMEOUT)
            self.assertEqual(code, 1012)
        # Held at the drain: 410; arrived after it: refused (503).  Either
        # way the worker closes the connection (the client's next goes elsewhere).
        answer = yield poll.addTimeout(TIMEOUT, reactor)
        self.assertIn(answer, [(200, {"status": 410}), (503, None)])
        yield session.lost()
        code = yield server.child.wait_ended().addTimeout(TIMEOUT, reactor)
        self.assertEqual(code, 0, server.output())
        self.assertLess(reactor.seconds() - started, 5 + 10)
        for pid in pids.values():
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertIn("Every worker has stopped", server.output())
        self.assertNotIn("Killing", server.output())
        # Nobody listens any more.
        failure = yield self.assertFailure(connect(reactor, server.port, timeout=5), Exception)
        self.assertIsNotNone(failure)


    @defer.inlineCallbacks
    def test_one_worker_ctrl_c(self) -> Any:
        """``--workers 1`` and Ctrl-C (SIGINT to the parent and its worker at once): 1012, exit 0."""
        server = yield self.start("--drain-timeout", "5", workers=1)
        (pid,) = self.workers(server).values()
        client = yield connect(reactor, server.port, test=self, timeout=TIMEOUT)
        self.assertEqual((yield self.where(client))["nodes"], [])
        server.child.transport.signalProcess("INT")
        os.kill(pid, signal.SIGINT)
        _, code, _ = yield client.wait_closed(TIMEOUT)
        self.assertEqual(code, 1012)
        exit_code = yield server.child.wait_ended().addTimeout(TIMEOUT, reactor)
        self.assertEqual(exit_code, 0, server.output())
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)


    @defer.inlineCallbacks
    def test_orphans_exit(self) -> Any:
        """kill -9 of the parent: its workers close their clients (1012) and exit by themselves."""
        server = yield self.start()
        pids = list(self.workers(server).values())
        found = yield self.on_every_worker(server)
        server.child.transport.signalProcess("KILL")
        for (client,) in found.values():
            _, code, _ = yield client.wait_closed(TIMEOUT)
            self.assertEqual(code, 1012)
        yield wait_until(reactor, lambda: all(gone(pid) for pid in pids), TIMEOUT, what="the workers exited")


class WorkersWithOtherNodesTests(WorkersTestCase):
    """Workers in a larger cluster: another node, or Redis."""

    @defer.inlineCallbacks
    def test_connect_to_another_node(self) -> Any:
        """``--name a@host --connect b@host``: a-1 and a-2 link to b too, and broadcasts cross every way."""
        other = yield start_server(
            self, "--name", "b@127.0.0.1", "--endpoint", APP, env=self.env,
            ready="listening for cluster links", timeout=TIMEOUT, name="b",
        )
        server = yield self.start("--name", "a@127.0.0.1", "--connect", "b@127.0.0.1")
        self.assertEqual(sorted(self.workers(server)), ["a-1@127.0.0.1", "a-2@127.0.0.1"])
        yield other.child.wait_for_output(
            lambda out: "Node a-1@127.0.0.1 connected to b" in out and "Node a-2@127.0.0.1 connected to b" in out,
            TIMEOUT, "both workers linked to b",
        )
        found = yield self.on_every_worker(server)
        on_b = yield connect(reactor, other.port, test=self, timeout=TIMEOUT)
        self.assertEqual((yield self.where(on_b)), {"node": "b@127.0.0.1", "nodes": ["a-1@127.0.0.1", "a-2@127.0.0.1"]})
        (w1,), (w2,) = found["a-1@127.0.0.1"], found["a-2@127.0.0.1"]
        response = yield self.where(w1, "where", ref="2")
        self.assertEqual(response["nodes"], ["a-2@127.0.0.1", "b@127.0.0.1"])
        # Each join's reply came once every node knew of its subscriber
        # (docs/cluster.rst, interest routing): a-1 can shout first.
        yield self.assertShoutReaches(w1, [w2, on_b], {"from": "a-1"}, "3")
        yield self.assertShoutReaches(on_b, [w1, w2], {"from": "b"}, "4")

    @defer.inlineCallbacks
    def test_redis(self) -> Any:
        """With ``--pubsub redis://``, the workers' broadcasts go through Redis, each delivered once."""
        from ._redis import RedisServer

        redis = RedisServer(self, reactor)
        yield redis.start()
        server = yield self.start("--pubsub", redis.url())
        found = yield self.on_every_worker(server, per_node=1)
        (w1,), (w2,) = found.values()
        yield self.poll_numsub(redis, 2)
        yield self.assertShoutReaches(w1, [w2], {"via": "redis"}, "3")
        yield self.assertShoutReaches(w2, [w1], {"marker": True}, "4")
        self.assertNotIn("Lost", server.output())

    @defer.inlineCallbacks
    def poll_numsub(self, redis: Any, count: int) -> Any:
        """Wait until ``count`` nodes subscribe ``room:lobby`` in Redis."""
        deadline = reactor.seconds() + TIMEOUT
        while reactor.seconds() < deadline:
            subscribed = yield redis.numsub("phx:t:room:lobby")
            if subscribed.get("phx:t:room:lobby") == count:
                return
            yield _sleep(0.1)
        self.fail(f"room:lobby not subscribed by {count} nodes in Redis")


class LongPollAcrossWorkersTests(WorkersTestCase):
    """A long-poll session's requests that reach the other worker are forwarded to the one holding it."""

    @defer.inlineCallbacks
    def test_forwarded(self) -> Any:
        """Posts and polls sent through a connection of the other worker reach the session, and come back."""
        server = yield self.start()
        # Keep-alive connections, each served by one worker: a new session
        # on each tells which (its token names the node holding it).
        by_node: dict[str, list[tuple[_LongPoll, str]]] = {}
        for name in sorted(self.workers(server)):
            connection = _LongPoll(self, server.port)
            token = yield self.accepted_by(server, name, connection.open)
            self.assertEqual(session_node(token), name)
            by_node[name] = [(connection, token)]
        (holder, (here, token)), (other, (there, _)) = ((n, c[0]) for n, c in sorted(by_node.items()))
        # Join through the other worker's connection, read the reply there too.
        status, answer = yield there.request(
            "POST", f"/socket/longpoll?vsn=2.0.0&token={token}", orjson.dumps(["1", "1", "where", "phx_join", {}]),
        )
        self.assertEqual(answer, {"status": 200})
        messages = yield there.messages(token)
        self.assertEqual(
            messages, [["1", "1", "where", "phx_reply", {"status": "ok", "response": {"node": holder, "nodes": [other]}}]]
        )
        # Both ways, a few times: every answer comes from the session's node.
        for i, (posting, polling) in enumerate([(here, there), (there, here), (there, there)]):
            ref = str(i + 2)
            status, answer = yield posting.request(
                "POST", f"/socket/longpoll?vsn=2.0.0&token={token}", orjson.dumps(["1", ref, "where", "where", {}]),
            )
            self.assertEqual(answer, {"status": 200})
            messages = yield polling.messages(token)
            self.assertEqual(messages[0][1:4], [ref, "where", "phx_reply"])
            self.assertEqual(messages[0][4]["response"]["node"], holder)


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie waiting for init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def session_node(token: str) -> str:
    """The node a long-poll session token names (it is signed with the test secret)."""
    result = verify(TEST_SECRET, TOKEN_SALT, token, max_age=3600)
    assert result.ok, result
    return result.data[1]


def _sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


class _HTTPClient(Protocol):
    """One keep-alive HTTP/1.1 connection: a request at a time, JSON answers with a Content-Length."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: defer.Deferred[tuple[int, Any]] | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep or self.waiting is None:
            return
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(rest) < length:
            return
        body, self.buffer = rest[:length], rest[length:]
        waiting, self.waiting = self.waiting, None
        waiting.callback((status, orjson.loads(body) if body else None))

    def connectionLost(self, reason: Any = None) -> None:
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.errback(reason)
        self.lost.callback(None)


class _LongPoll:
    """A keep-alive connection for long-poll requests (so always the same worker)."""

    def __init__(self, test: TestCase, port: int) -> None:
        self.test = test
        self.port = port
        self.protocol: _HTTPClient | None = None

    @defer.inlineCallbacks
    def _connected(self) -> Any:
        if self.protocol is None:
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, timeout=10)
            self.protocol = yield endpoint.connect(Factory.forProtocol(_HTTPClient))
            self.test.addCleanup(self.protocol.transport.loseConnection)
        return self.protocol

    def request(self, method: str, path: str, body: bytes = b"") -> defer.Deferred[tuple[int, Any]]:
        """Fires with ``(HTTP status, JSON body)``."""

        @defer.inlineCallbacks
        def go() -> Any:
            protocol = yield self._connected()
            assert protocol.waiting is None
            protocol.waiting = defer.Deferred()
            head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
            if body:
                head.append("Content-Type: application/x-ndjson")
            protocol.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            answer = yield protocol.waiting.addTimeout(TIMEOUT, reactor)
            return answer

        return go()

    def lost(self) -> defer.Deferred[None]:
        """Fires once the server has closed the connection (bounded)."""
        assert self.protocol is not None
        return self.protocol.lost.addTimeout(TIMEOUT, reactor)

    @defer.inlineCallbacks
    def open(self) -> Any:
        """A new session: its token."""
        status, answer = yield self.request("GET", "/socket/longpoll?vsn=2.0.0")
        assert status == 200 and answer["status"] == 410, answer
        return answer["token"]

    @defer.inlineCallbacks
    def messages(self, token: str) -> Any:
        """Poll until messages come; fires with them, decoded."""
        for _ in range(5):
            _, answer = yield self.request("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
            if answer["status"] == 200:
                return [orjson.loads(m) for m in answer["messages"]]
            assert answer["status"] == 204, answer
        raise AssertionError("no messages in five polls")
