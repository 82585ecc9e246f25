"""
End-to-end cluster tests with real processes: ``twistd -n phoenix`` nodes
and the ``twisted-phoenix console`` on loopback, checked with a real
WebSocket client.

Each test has its own port mapper port and cookie (never the developer's
cookie file or running nodes).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from ._client import connect
from ._cluster import COOKIE, free_port, run_console
from ._server import ChildFailed, ChildProcess, ServerProcess, start_server

#: Logged by a node once it listens for links (and is registered).
NODE_READY = "listening for cluster links"

#: Bound on any one wait.
TIMEOUT = 20.0

JOIN_OK = ["1", "1", "ping", "phx_reply", {"response": {}, "status": "ok"}]


def node(name: str) -> str:
    return f"{name}@127.0.0.1"


class ProcessTestCase(TestCase):
    """Nodes of one cluster: the same port mapper port and cookie for all."""

    def setUp(self) -> None:
        self.env = {"PHOENIX_EPMD_PORT": str(free_port()), "PHOENIX_COOKIE": COOKIE}

    def start(self, name: str, *args: str, http: bool = True, **env: str) -> defer.Deferred[ServerProcess]:
        """Start the twistd node ``name@127.0.0.1`` (HTTP on port 0 unless ``http=False``)."""
        if not http:
            args = ("--no-http", *args)
        return start_server(
            self, "--name", node(name), *args,
            env={**self.env, **env}, ready=NODE_READY, name=name, timeout=TIMEOUT,
            listen=("tcp:0:interface=127.0.0.1",) if http else (),
        )

    def console(self, name: str, *args: str, stdin: bytes | None = None, **env: str) -> defer.Deferred[ChildProcess]:
        """Run the console as node ``name@127.0.0.1``; fires once it has exited."""
        return run_console(
            self, reactor, "--name", node(name), *args, env={**self.env, **env}, stdin=stdin,
            timeout=TIMEOUT, name=f"console {name}",
        )

    def assertConsole(self, run: ChildProcess, lines: list[str]) -> None:
        """The console exited 0 after printing exactly ``lines``."""
        self.assertEqual(run.exit_code, 0, run.output())
        self.assertEqual(run.stdout.decode().splitlines(), lines, run.output())

    def wait_log(self, server: ServerProcess, *texts: str, since: int = 0) -> defer.Deferred[Any]:
        """Fire once the server has logged every one of ``texts`` (after offset ``since``)."""
        return server.child.wait_for_output(
            lambda out: all(t in out[since:] for t in texts), TIMEOUT, f"{texts} in the log of {server.child.name}"
        )

    def link_address(self, server: ServerProcess) -> str:
        """``127.0.0.1:PORT``: where ``server`` listens for cluster links (from its log)."""
        found = re.search(r"listening for cluster links on 127\.0\.0\.1:(\d+)", server.output())
        assert found is not None, server.output()
        return f"127.0.0.1:{found.group(1)}"

    def log_size(self, server: ServerProcess) -> int:
        return len(server.child.stdout.decode("utf-8", "replace"))

    @defer.inlineCallbacks
    def joined_client(self, server: ServerProcess) -> Any:
        """A WebSocket client of ``server`` that has joined ``ping``."""
        client = yield connect(reactor, server.port, test=self)
        self.assertEqual((yield client.request(["1", "1", "ping", "phx_join", {}])), JOIN_OK)
        return client

    @defer.inlineCallbacks
    def assertSendPing(self, client: Any, payload: dict[str, Any]) -> Any:
        """The client's next frame is exactly the PingChannel's send_ping with ``payload``."""
        data, binary = yield client.next_frame(TIMEOUT)
        self.assertFalse(binary)
        self.assertEqual(orjson.loads(data), ["1", None, "ping", "send_ping", payload])
        return data


class TranscriptTests(ProcessTestCase):
    """The README's transcript, end to end."""

    @defer.inlineCallbacks
    def test_transcript(self) -> None:
        """A console node connects by name; its broadcast reaches a WebSocket client of the server."""
        server = yield self.start("server")
        piped = yield self.console(
            "remote", stdin=b'Node.list()\nNode.connect("server@127.0.0.1")\nNode.list()\n'
        )
        self.assertConsole(piped, ["[]", "True", "['server@127.0.0.1']"])
        client = yield self.joined_client(server)
        run = yield self.console(
            "remote", "--connect", node("server"), "-c", "Endpoint.broadcast('ping', 'request_ping', {})"
        )
        self.assertConsole(run, [])
        data = yield self.assertSendPing(client, {"from_node": "server@127.0.0.1"})
        self.assertEqual(data, b'["1",null,"ping","send_ping",{"from_node":"server@127.0.0.1"}]')
        # The console left cleanly: the server does not try to relink it.
        yield self.wait_log(server, "Node remote@127.0.0.1 left")
        self.assertNotIn("Node remote@127.0.0.1 is down", server.output())


class ClusterProcessTests(ProcessTestCase):
    """Three twistd nodes: two serving WebSockets, one with --no-http."""

    relay = "tests._cluster:RelayEndpoint"

    def relay_code(self, via: str, payload: dict[str, Any]) -> str:
        """Console code: have node ``via`` broadcast request_ping with ``payload`` to the cluster."""
        message = {"topic": "ping", "event": "request_ping", "payload": payload}
        return f"Endpoint.pubsub.direct_broadcast({node(via)!r}, 'relay', 'go', {message!r})"

    @defer.inlineCallbacks
    def test_cluster(self) -> None:
        """Broadcasts from a --no-http node reach both HTTP nodes' clients; a killed node leaves and rejoins."""
        h1, h2, worker = yield defer.gatherResults([
            self.start("h1"),
            self.start("h2", "--connect", node("h1")),
            self.start("worker", "--connect", node("h1"), "--endpoint", self.relay, http=False),
        ])
        self.assertIsNone(worker.port)
        yield defer.gatherResults([
            self.wait_log(h1, "Node h2@127.0.0.1 connected to h1", "Node worker@127.0.0.1 connected to h1"),
            self.wait_log(h2, "Node h1@127.0.0.1 connected to h2", "Node worker@127.0.0.1 connected to h2"),
            self.wait_log(worker, "Node h1@127.0.0.1 connected to worker", "Node h2@127.0.0.1 connected to worker"),
        ])
        self.assertNotIn("listening on", worker.output().replace("listening for cluster links", ""))
        for server in (h1, h2, worker):
            # Forming the mesh (with simultaneous connects) loses no message and no link.
            self.assertNotIn("Rejected a call", server.output())
            self.assertNotIn("is down", server.output())
        c1 = yield self.joined_client(h1)
        c2 = yield self.joined_client(h2)

        # (b) A broadcast started on the no-HTTP node: each client's frame names its own node.
        run = yield self.console("op1", "--connect", node("worker"), "-c", self.relay_code("worker", {"n": 1}))
        self.assertConsole(run, ["True"])
        yield defer.gatherResults([
            self.assertSendPing(c1, {"n": 1, "from_node": "h1@127.0.0.1"}),
            self.assertSendPing(c2, {"n": 1, "from_node": "h2@127.0.0.1"}),
        ])

        # (c) kill -9 h1 (which also served the port mapper): the others drop it within the bound.
        since = {s: self.log_size(s) for s in (h2, worker)}
        killed_at = reactor.seconds()
        h1.child.transport.signalProcess("KILL")
        yield h1.child.wait_ended()
        yield defer.gatherResults([
            self.wait_log(h2, "Node h1@127.0.0.1 is down", since=since[h2]),
            self.wait_log(worker, "Node h1@127.0.0.1 is down", since=since[worker]),
        ])
        # Defaults: heartbeat every 1 s, dropped after 3 s of silence; a kill on loopback resets at once.
        self.assertLess(reactor.seconds() - killed_at, 5.0)
        run = yield self.console(
            "op2", "--connect", node("worker"), "-c", f"sorted(Node.links[{node('worker')!r}].info['nodes'])"
        )
        self.assertConsole(run, ["['h2@127.0.0.1']"])

        # Restarted, h1 rejoins by itself: the others relink it (with backoff).
        since = {s: self.log_size(s) for s in (h2, worker)}
        h1 = yield self.start("h1")
        yield defer.gatherResults([
            self.wait_log(h2, "Node h1@127.0.0.1 connected to h2", since=since[h2]),
            self.wait_log(worker, "Node h1@127.0.0.1 connected to worker", since=since[worker]),
        ])
        c1 = yield self.joined_client(h1)
        run = yield self.console("op3", "--connect", node("worker"), "-c", self.relay_code("worker", {"n": 2}))
        self.assertConsole(run, ["True"])
        yield defer.gatherResults([
            self.assertSendPing(c1, {"n": 2, "from_node": "h1@127.0.0.1"}),
            self.assertSendPing(c2, {"n": 2, "from_node": "h2@127.0.0.1"}),
        ])


class CookieProcessTests(ProcessTestCase):
    """The cookie keeps strangers out."""

    @defer.inlineCallbacks
    def test_wrong_cookie(self) -> None:
        """A node with the wrong --cookie is refused (both logs say so) and is not in the list."""
        server = yield self.start("server")
        # Its own port mapper (test_other_cluster_same_mapper_port: it could not share the cluster's).
        intruder = yield self.start("intruder", "--cookie", "not the cookie", "--connect",
                                    f"{node('server')}={self.link_address(server)}", http=False,
                                    PHOENIX_EPMD_PORT=str(free_port()))
        yield self.wait_log(intruder, "Cannot connect to node server@127.0.0.1")
        yield self.wait_log(server, "Refused node intruder@127.0.0.1 from")
        self.assertIn("wrong cookie", intruder.output())
        self.assertRegex(server.output(), re.compile(r"#error\] Refused node intruder@127\.0\.0\.1 .*wrong cookie"))
        self.assertRegex(intruder.output(), re.compile(r"#error\] Cannot connect to node server@127\.0\.0\.1"))
        # What server lists, seen from a console with the right cookie: only the console.
        run = yield self.console(
            "op", "--connect", node("server"),
            "-c", f"(Node.list(), sorted(Node.links[{node('server')!r}].info['nodes']))",
        )
        self.assertConsole(run, ["(['server@127.0.0.1'], [])"])
        self.assertNotIn("Node intruder@127.0.0.1 connected", server.output())

    @defer.inlineCallbacks
    def test_other_cluster_same_mapper_port(self) -> None:
        """A node of another cluster (another cookie) on this cluster's port mapper port exits, naming the fix."""
        server = yield self.start("server")
        with self.assertRaises(ChildFailed) as caught:
            yield self.start("other", "--cookie", "another cluster's cookie")
        self.assertIn("does not prove this cluster's cookie", str(caught.exception))
        self.assertIn("--epmd-port or PHOENIX_EPMD_PORT", str(caught.exception))
        yield self.wait_log(server, "left before proving the cookie")

    @defer.inlineCallbacks
    def test_name_taken(self) -> None:
        """A second node with a name already live on this host exits, saying so, instead of serving alone."""
        server = yield self.start("server")
        with self.assertRaises(ChildFailed) as caught:
            yield self.start("server")
        self.assertIn("exited", str(caught.exception))
        self.assertIn("already registered on this host", str(caught.exception))
        self.assertNotIn("Node server@127.0.0.1 cannot start", server.output())
