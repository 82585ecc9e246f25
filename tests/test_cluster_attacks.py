"""
A local attacker against a cluster of real ``twistd -n phoenix`` nodes: a
process of the same user on the same host, without the cookie
(``tests/_attacker.py``).  It tries to register names at the port mapper,
to squat a name right after its node is killed, to take the port mapper's
port and send the nodes through its relays, to hold the link port with
idle connections, and to blow up a node's memory with nested Banana lists.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import shutil
from typing import Any

from twisted.internet import defer, reactor

from ._cluster import free_port
from ._server import REPO_ROOT, ChildFailed, ChildProcess, ServerProcess, _clean_env, _spawn
from .test_cluster_processes import TIMEOUT, ProcessTestCase, node

#: Only the broadcasts of these tests carry it.
MARKER = "4b1d-broadcast-marker-e2f0"


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class AttackTestCase(ProcessTestCase):
    """Nodes of one cluster, and an attacker process."""

    def attacker(self, *args: str, name: str = "attacker") -> ChildProcess:
        """Start ``python -m tests._attacker *args``; killed in cleanup."""
        env = _clean_env({"PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        child = _spawn(reactor, name, [sys.executable, "-m", "tests._attacker", *args], env, path=REPO_ROOT)
        self.addCleanup(child.stop, 2.0)
        return child

    def event(self, child: ChildProcess, name: str, timeout: float = TIMEOUT) -> defer.Deferred[dict[str, Any]]:
        """Fire with the attacker's first report of event ``name``."""

        def find(text: str) -> Any:
            for line in text.splitlines():
                if line.startswith("{"):
                    event = json.loads(line)
                    if event["event"] == name:
                        return event
            return None

        return child.wait_for_output(find, timeout, f"{name!r} from {child.name}")

    def events(self, child: ChildProcess, name: str) -> list[dict[str, Any]]:
        """Every report of event ``name`` so far."""
        found = []
        for line in child.stdout.decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event["event"] == name:
                    found.append(event)
        return found

    def tell(self, child: ChildProcess, command: str) -> None:
        child.transport.write(command.encode() + b"\n")

    def link_port(self, server: ServerProcess) -> int:
        return int(self.link_address(server).rpartition(":")[2])

    def kill(self, server: ServerProcess) -> defer.Deferred[Any]:
        """kill -9, and wait until it is reaped."""
        server.child.transport.signalProcess("KILL")
        return server.child.wait_ended()


class PortMapperAttackTests(AttackTestCase):
    """The attacker against the port mapper."""

    @defer.inlineCallbacks
    def test_register_flood(self) -> None:
        """Several REGISTERs on one connection, old style or with a made-up proof: none is taken."""
        server = yield self.start("server")
        attacker = self.attacker("register", "--mapper-port", self.env["PHOENIX_EPMD_PORT"],
                                 "--names", "victim,other,server", "--seconds", "1.5")
        done = yield self.event(attacker, "done")
        self.assertGreater(done["attempts"], 5)
        self.assertEqual(done["ok"], 0, done)
        self.assertNotIn("OK", done["answers"])
        self.assertIn("DENIED", done["answers"])
        yield self.wait_log(server, "Port mapper: refused a client from 127.0.0.1:",
                            "it does not know the cookie", "Port mapper: bad request")
        # Both are rate-limited: one line each per 10 s, whatever the attempts.
        self.assertLessEqual(server.output().count("it does not know the cookie"), 2)
        # The names the attacker tried are free for the nodes.
        yield self.start("victim", http=False)
        yield self.start("other", http=False)

    @defer.inlineCallbacks
    def test_squat_after_kill(self) -> None:
        """Right after kill -9 of a node, a process without the cookie cannot take its name; the node restarts."""
        m = yield self.start("m")
        x = yield self.start("x", "--connect", node("m"), http=False)
        yield self.wait_log(m, "Node x@127.0.0.1 connected to m")
        squatter = self.attacker("register", "--mapper-port", self.env["PHOENIX_EPMD_PORT"], "--names", "x",
                                 "--seconds", "3", "--wait-go")
        yield self.event(squatter, "ready")
        since = self.log_size(m)
        yield self.kill(x)
        self.tell(squatter, "go")
        yield self.wait_log(m, "Node x@127.0.0.1 is down", since=since)
        # Restarted while the squatter keeps trying.
        x = yield self.start("x", "--connect", node("m"), http=False)
        self.assertEqual(self.events(squatter, "done"), [], "the squatter had stopped trying already")
        yield self.wait_log(m, "Node x@127.0.0.1 connected to m", since=since)
        done = yield self.event(squatter, "done")
        self.assertGreater(done["attempts"], 5)
        self.assertEqual(done["ok"], 0, done)
        self.assertNotIn("already registered", x.output())

    @defer.inlineCallbacks
    def test_fake_mapper_after_kill(self) -> None:
        """
        kill -9 of the node serving the port mapper, and the attacker binds
        the port first, answering lookups with its relays: the nodes refuse
        it (they tell it nothing but a nonce), keep their links, and a link
        through its relays reads nothing (passing bytes along) or fails the
        cookie proof (terminating TLS).  Once it is gone, the nodes serve
        the mapper again and the killed node comes back.
        """
        a = yield self.start("a")
        b = yield self.start("b", "--connect", node("a"))
        c = yield self.start("c", "--connect", node("a"), http=False)
        yield defer.gatherResults([
            self.wait_log(b, "Node a@127.0.0.1 connected to b", "Node c@127.0.0.1 connected to b"),
            self.wait_log(c, "Node a@127.0.0.1 connected to c", "Node b@127.0.0.1 connected to c"),
        ])
        self.assertIn("Serving the port mapper", a.output())
        client = yield self.joined_client(b)
        directory = tempfile.mkdtemp(prefix="relay-capture-")
        self.addCleanup(shutil.rmtree, directory, True)
        capture = os.path.join(directory, "capture")
        attacker = self.attacker("fake-mapper", "--mapper-port", self.env["PHOENIX_EPMD_PORT"],
                                 "--target-port", str(self.link_port(b)), "--capture", capture)
        relays = yield self.event(attacker, "relays")

        # The attacker wins the race for the port: b and c are stopped
        # while a dies and the attacker binds (otherwise they would often
        # serve the mapper first, within milliseconds, and there would be
        # nothing to test).
        since = {s: self.log_size(s) for s in (b, c)}
        for s in (b, c):
            s.child.transport.signalProcess(signal.SIGSTOP)
        self.addCleanup(lambda: [s.child.running and s.child.transport.signalProcess(signal.SIGCONT) for s in (b, c)])
        yield self.kill(a)
        self.tell(attacker, "go")
        yield self.event(attacker, "bound")
        for s in (b, c):
            s.child.transport.signalProcess(signal.SIGCONT)

        # b and c find a mapper that does not prove the cookie, and say so.
        for s in (b, c):
            yield self.wait_log(s, "Node a@127.0.0.1 is down", "Could not register with the port mapper again",
                                "does not prove this cluster's cookie", since=since[s])
        lines = [e["line"] for e in self.events(attacker, "mapper-line")]
        self.assertTrue(lines)
        self.assertEqual({line.split(" ")[0] for line in lines}, {"HELLO"}, lines)
        # Their link holds.
        for s, peer in ((b, "c"), (c, "b")):
            self.assertNotIn(f"Node {peer}@127.0.0.1 is down", s.output()[since[s]:])
        # The killed node cannot come back while the port is held, and says why.
        with self.assertRaises(ChildFailed) as caught:
            yield self.start("a")
        self.assertIn("does not prove this cluster's cookie", str(caught.exception))
        self.assertIn("--epmd-port or PHOENIX_EPMD_PORT", str(caught.exception))

        # A node sent through the TLS-terminating relay: no link.
        through_mitm = f"{node('b')}=127.0.0.1:{relays['mitm']}"
        run = yield self.console("d", "--epmd-port", str(free_port()), "--connect", through_mitm,
                                 "-c", f"Endpoint.broadcast('ping', 'request_ping', {{'m': {MARKER!r}}})")
        self.assertIn(b"could not connect to b@127.0.0.1", run.stderr, run.output())
        self.assertIn(b"or a relay between us", run.stderr)
        yield self.wait_log(b, "Refused node d@127.0.0.1 from", "or a relay between us")
        # A node sent through the relay that passes bytes along: linked, and its broadcast arrives.
        through_relay = f"{node('b')}=127.0.0.1:{relays['transparent']}"
        run = yield self.console("e", "--epmd-port", str(free_port()), "--connect", through_relay,
                                 "-c", f"Endpoint.broadcast('ping', 'request_ping', {{'m': {MARKER!r}}})")
        self.assertConsole(run, [])
        yield self.assertSendPing(client, {"m": MARKER, "from_node": "b@127.0.0.1"})

        # What the relays carried: never the broadcast.
        self.tell(attacker, "report")
        carried = yield self.event(attacker, "report")
        self.assertEqual(carried["transparent_connections"], 1)
        self.assertEqual(carried["mitm_connections"], 1)  # d's; b and c never came
        with open(f"{capture}.transparent", "rb") as f:
            transparent = f.read()
        with open(f"{capture}.mitm", "rb") as f:
            mitm = f.read()
        self.assertGreater(len(transparent), 1000)
        self.assertNotIn(MARKER.encode(), transparent)
        self.assertNotIn(b"e@127.0.0.1", transparent)
        self.assertIn(b"d@127.0.0.1", mitm)  # it read d's login, which it could not use
        self.assertNotIn(MARKER.encode(), mitm)

        # The attacker goes: b and c serve the port mapper again, a comes back.
        since = {s: self.log_size(s) for s in (b, c)}
        yield attacker.stop(2.0)
        yield defer.DeferredList([
            self.wait_log(s, "Registered with the port mapper again", since=since[s]) for s in (b, c)
        ], fireOnOneCallback=True, fireOnOneErrback=True)
        a = yield self.start("a")
        yield defer.gatherResults([
            self.wait_log(b, "Node a@127.0.0.1 connected to b", since=since[b]),
            self.wait_log(c, "Node a@127.0.0.1 connected to c", since=since[c]),
        ])


class LinkPortAttackTests(AttackTestCase):
    """The attacker against a node's link port."""

    @defer.inlineCallbacks
    def test_idle_connections(self) -> None:
        """Past --dist-max-pending idle connections, new ones are closed at once; the rest at the deadline."""
        server = yield self.start("server", "--dist-login-timeout", "2", "--dist-max-pending", "20")
        attacker = self.attacker("idle", "--port", str(self.link_port(server)), "--count", "60", "--seconds", "20")
        done = yield self.event(attacker, "done", timeout=30)
        self.assertEqual(done["opened"], 60)
        closed = done["closed"]
        self.assertEqual(len(closed), 60, done)
        print(f"\nIdle connections: closed after {closed} s")
        at_once = [t for t in closed if t < 1.0]
        at_deadline = [t for t in closed if t >= 1.0]
        self.assertEqual(len(at_once), 40, closed)
        self.assertEqual(len(at_deadline), 20, closed)
        self.assertLess(max(at_deadline), 2.0 + 3.0, closed)
        self.assertGreaterEqual(min(at_deadline), 1.9, closed)
        output = server.output()
        # Logged, rate-limited: one line for the 40, one for the 20.
        self.assertEqual(output.count("connections are already waiting to log in (--dist-max-pending)"), 1)
        self.assertEqual(output.count("before login: no login within 2 s"), 1)
        # And the node serves its peers all along.
        run = yield self.console("op", "--connect", node("server"), "-c", "Node.list()")
        self.assertConsole(run, ["['server@127.0.0.1']"])

    @defer.inlineCallbacks
    def bomb(self, *args: str) -> Any:
        """A node (``args``), warmed up by one link; 10 MB of nested list openers; its RSS before and after."""
        server = yield self.start("server", *args, http=False)
        run = yield self.console("warmup", "--connect", node("server"), *[a for a in args if a == "--dist-plaintext"],
                                 "-c", "Node.list()")
        self.assertConsole(run, ["['server@127.0.0.1']"])
        pid = server.child.transport.pid
        before = rss_kib(pid)
        bomb_args = ["bomb", "--port", str(self.link_port(server)), "--megabytes", "10", "--seconds", "20"]
        if "--dist-plaintext" not in args:
            bomb_args.append("--tls")
        attacker = self.attacker(*bomb_args)
        closed = yield self.event(attacker, "closed", timeout=30)
        yield self.wait_log(server, "Dropped a cluster connection from 127.0.0.1:", "before login")
        after = rss_kib(pid)
        print(f"\nBanana bomb {args or '(TLS)'}: node RSS {before} KiB -> {after} KiB; "
              f"connection closed {closed['after']} s after the first byte")
        # Still serving.
        run = yield self.console("op", "--connect", node("server"), *[a for a in args if a == "--dist-plaintext"],
                                 "-c", "Node.list()")
        self.assertConsole(run, ["['server@127.0.0.1']"])
        return before, after, closed, server

    @defer.inlineCallbacks
    def test_banana_bomb(self) -> None:
        """10 MB of nested Banana list openers over TLS: the node's memory stays within a few MB, and it serves."""
        before, after, closed, server = yield self.bomb()
        self.assertLess(after - before, 4 * 1024, f"RSS {before} KiB -> {after} KiB")
        self.assertLess(closed["after"], 5.0)
        self.assertRegex(server.output(), re.compile(r"before login: more than 16384 bytes before login|nested more"))

    @defer.inlineCallbacks
    def test_banana_bomb_plaintext(self) -> None:
        """The same bomb against a plaintext node: the same bound."""
        before, after, closed, server = yield self.bomb("--dist-plaintext")
        self.assertLess(after - before, 4 * 1024, f"RSS {before} KiB -> {after} KiB")
