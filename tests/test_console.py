"""
Tests for :mod:`twisted_phoenix.console`: the evaluator, the wait for the
cluster mesh, the console run as a real child process (``-c`` and piped
input) against nodes in this process, and against a cluster of three
``twistd`` processes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from typing import Any

import orjson
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix.console import MESH_TIMEOUT, _MeshNode, add_arguments, evaluate, introduced, wait_for_mesh

from ._client import connect
from ._cluster import COOKIE, Collector, ClusterPKI, free_port, run_console, start_node, watch_logs
from ._server import start_server

TIMEOUT = 20.0


class EvaluateTests(SynchronousTestCase):
    """Running console input."""

    def test_expression(self) -> None:
        """An expression's value is returned."""
        self.assertEqual(evaluate("1 + 2", {}), 3)

    def test_statements(self) -> None:
        """Statements run in the namespace and return None."""
        namespace: dict[str, Any] = {}
        self.assertIsNone(evaluate("x = 5\ny = x * 2", namespace))
        self.assertEqual((namespace["x"], namespace["y"]), (5, 10))

    def test_statements_then_expression(self) -> None:
        """Statements followed by an expression return the expression's value, after the statements."""
        namespace: dict[str, Any] = {"Node": "n"}
        self.assertEqual(evaluate("z = [Node]\nz * 2", namespace), ["n", "n"])
        self.assertEqual(namespace["z"], ["n"])

    def test_compound(self) -> None:
        """Definitions and loops work, and a call of what they define returns its value."""
        namespace: dict[str, Any] = {}
        self.assertEqual(evaluate("def f(a):\n    return a + 1\nf(41)", namespace), 42)

    def test_empty(self) -> None:
        """Empty input is None."""
        self.assertIsNone(evaluate("", {}))
        self.assertIsNone(evaluate("# nothing", {}))

    def test_errors(self) -> None:
        """Syntax errors and exceptions propagate to the caller."""
        self.assertRaises(SyntaxError, evaluate, "1 +", {})
        self.assertRaises(ZeroDivisionError, evaluate, "1 / 0", {})
        self.assertRaises(NameError, evaluate, "undefined_name", {})


class FakeLink:
    """A link whose peer introduced ``nodes`` in its hello."""

    def __init__(self, nodes: dict[str, str]) -> None:
        self.info = {"nodes": nodes}


class FakeNode:
    """What :func:`wait_for_mesh` reads of a Node: its name, links and node-up callbacks."""

    def __init__(self, name: str = "me@127.0.0.1") -> None:
        self.name = name
        self.links: dict[str, FakeLink] = {}
        self.node_up_callbacks: list[Any] = []
        self.connecting: dict[str, defer.Deferred[bool]] = {}

    def link_up(self, peer: str, *introduces: str) -> None:
        """A link to ``peer`` comes up; ``peer`` is linked to ``introduces``."""
        self.links[peer] = FakeLink({name: "127.0.0.1:1" for name in introduces})
        for callback in list(self.node_up_callbacks):
            callback(peer)

    def connect(self, target: str) -> defer.Deferred[bool]:
        d: defer.Deferred[bool] = defer.Deferred()
        self.connecting[target] = d
        return d

    def list(self) -> list[str]:
        return sorted(self.links)


class WaitForMeshTests(SynchronousTestCase):
    """Waiting until this node is linked to every node its peers introduced."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.node = FakeNode()

    def assertDone(self, d: defer.Deferred[list[str]], missing: list[str]) -> None:
        """``d`` fired with ``missing``; nothing is left waiting (callback, timer)."""
        self.assertEqual(self.successResultOf(d), missing)
        self.assertEqual(self.node.node_up_callbacks, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_links(self) -> None:
        """Without links there is nothing to wait for."""
        self.assertDone(wait_for_mesh(self.node, self.clock), [])

    def test_already_formed(self) -> None:
        """Every introduced node already linked (this node's own name aside): fires at once."""
        self.node.link_up("a@127.0.0.1", "b@127.0.0.1", "me@127.0.0.1")
        self.node.link_up("b@127.0.0.1", "a@127.0.0.1")
        self.assertEqual(introduced(self.node), {"a@127.0.0.1", "b@127.0.0.1"})
        self.assertDone(wait_for_mesh(self.node, self.clock), [])

    def test_waits_for_introduced(self) -> None:
        """Linked to A, which introduced B and C: fires once B and C are linked too."""
        self.node.link_up("a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1")
        d = wait_for_mesh(self.node, self.clock)
        self.assertNoResult(d)
        self.node.link_up("b@127.0.0.1", "a@127.0.0.1", "c@127.0.0.1")
        self.assertNoResult(d)
        self.node.link_up("c@127.0.0.1", "a@127.0.0.1", "b@127.0.0.1")
        self.assertDone(d, [])

    def test_transitive(self) -> None:
        """A node introduced by a node linked while waiting is waited for too."""
        self.node.link_up("a@127.0.0.1", "b@127.0.0.1")
        d = wait_for_mesh(self.node, self.clock)
        self.node.link_up("b@127.0.0.1", "a@127.0.0.1", "d@127.0.0.1")
        self.assertNoResult(d)
        self.node.link_up("d@127.0.0.1", "b@127.0.0.1")
        self.assertDone(d, [])

    def test_timeout(self) -> None:
        """The wait is bounded: after the timeout it fires with the nodes still not linked."""
        self.node.link_up("a@127.0.0.1", "c@127.0.0.1", "b@127.0.0.1")
        d = wait_for_mesh(self.node, self.clock, timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertDone(d, ["b@127.0.0.1", "c@127.0.0.1"])
        self.assertEqual(MESH_TIMEOUT, 10)

    def test_connect_waits(self) -> None:
        """The console's Node.connect fires once the nodes the new peer introduced are linked."""
        node = _MeshNode(self.node, self.clock, MESH_TIMEOUT)
        d = node.connect("a@127.0.0.1")
        self.node.link_up("a@127.0.0.1", "b@127.0.0.1")
        self.node.connecting["a@127.0.0.1"].callback(True)
        self.assertNoResult(d)
        self.node.link_up("b@127.0.0.1", "a@127.0.0.1")
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(node.list(), ["a@127.0.0.1", "b@127.0.0.1"])
        failed = node.connect("nobody@127.0.0.1")
        self.node.connecting["nobody@127.0.0.1"].callback(False)
        self.assertIs(self.successResultOf(failed), False)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ArgumentsTests(SynchronousTestCase):
    """The console's command line."""

    def parse(self, *argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return parser.parse_args(list(argv))

    def test_options(self) -> None:
        """--name is given; --connect repeats; -c, --cookie, --epmd-port and TLS files are read."""
        args = self.parse("--name", "r@127.0.0.1", "--connect", "a@127.0.0.1", "--connect", "b@h=1.2.3.4:5",
                          "--cookie", "k", "--epmd-port", "5000", "-c", "Node.list()",
                          "--dist-cert", "c.pem", "--dist-key", "k.pem", "--dist-ca", "ca.pem")
        self.assertEqual(args.name, "r@127.0.0.1")
        self.assertEqual(args.connect, ["a@127.0.0.1", "b@h=1.2.3.4:5"])
        self.assertEqual((args.cookie, args.epmd_port, args.code), ("k", 5000, "Node.list()"))
        self.assertEqual((args.dist_cert, args.dist_key, args.dist_ca), ("c.pem", "k.pem", "ca.pem"))

    def test_defaults(self) -> None:
        """Without options: no connections, the demo endpoint, cookie and mapper port from the environment."""
        args = self.parse("--name", "r@127.0.0.1")
        self.assertEqual(args.connect, [])
        self.assertEqual(args.endpoint, "twisted_phoenix.examples.hello_sockets:Endpoint")
        self.assertIsNone(args.cookie)
        self.assertIsNone(args.epmd_port)
        self.assertIsNone(args.code)
        self.assertEqual(args.mesh_timeout, MESH_TIMEOUT)

    def test_name_required(self) -> None:
        """--name is required."""
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))  # type: ignore[method-assign]
        self.assertRaises(ValueError, parser.parse_args, [])


class ConsoleProcessTests(TestCase):
    """The console as a child process, against a node in this process."""

    def setUp(self) -> None:
        self.mapper_port = free_port()
        self.env = {"PHOENIX_COOKIE": COOKIE, "PHOENIX_EPMD_PORT": None}
        self.logs = watch_logs(self, reactor)

    def console(self, *args: str, stdin: bytes | None = None, **env: Any) -> defer.Deferred[Any]:
        return run_console(
            self, reactor, "--epmd-port", str(self.mapper_port), *args, env={**self.env, **env}, stdin=stdin,
            timeout=TIMEOUT,
        )

    def node(self, name: str = "app", **options: Any) -> defer.Deferred[Any]:
        return start_node(self, reactor, f"{name}@127.0.0.1", mapper_port=self.mapper_port, **options)

    def assertOutput(self, run: Any, lines: list[str], exit_code: int = 0) -> None:
        self.assertEqual(run.exit_code, exit_code, run.output())
        self.assertEqual(run.stdout.decode().splitlines(), lines, run.output())

    @defer.inlineCallbacks
    def test_command(self) -> None:
        """-c runs the code, prints its value's repr and exits 0; None prints nothing."""
        run = yield self.console("--name", "c@127.0.0.1", "-c", "(Node.self(), Node.list())")
        self.assertOutput(run, ["('c@127.0.0.1', [])"])
        run = yield self.console("--name", "c@127.0.0.1", "-c", "x = 1")
        self.assertOutput(run, [])

    @defer.inlineCallbacks
    def test_command_error(self) -> None:
        """-c code that raises prints the traceback and exits 1."""
        run = yield self.console("--name", "c@127.0.0.1", "-c", "1 / 0")
        self.assertOutput(run, [], exit_code=1)
        self.assertIn(b"ZeroDivisionError", run.stderr)

    @defer.inlineCallbacks
    def test_connect_and_broadcast(self) -> None:
        """--connect links to a node; Endpoint.broadcast reaches its subscribers; the console leaves cleanly."""
        app = yield self.node()
        got = Collector(reactor, app.pubsub, "room")
        run = yield self.console(
            "--name", "c@127.0.0.1", "--connect", app.name,
            "-c", "Endpoint.broadcast('room', 'hello', {'from': Node.self()}); Node.list()",
        )
        self.assertOutput(run, ["['app@127.0.0.1']"])
        self.assertEqual([b.payload for b in (yield got.wait_for(1, TIMEOUT))], [{"from": "c@127.0.0.1"}])
        yield self.logs.wait_for("Node c@127.0.0.1 left", TIMEOUT)
        self.assertEqual(self.logs.find("Node c@127.0.0.1 is down"), [])
        self.assertEqual(app.list(), [])

    @defer.inlineCallbacks
    def test_presence(self) -> None:
        """The console's endpoint replicates presence: it lists who is tracked on the other node."""
        from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint

        app = yield self.node()
        endpoint = HelloSocketsEndpoint(reactor, node_name=app.name, pubsub=app.pubsub)
        endpoint.start()
        self.addCleanup(endpoint.stop)
        endpoint.presence.tracker.track("owner", "tracked", "42", {"online_at": 1})
        # Wait (bounded, by the console's own -c Deferred) for the first
        # presence_diff the console's node sees on "tracked".
        code = (
            "d = __import__('twisted.internet.defer', fromlist=['Deferred']).Deferred(); "
            "Endpoint.subscribe('tracked', lambda b: d.called or d.callback(None)); "
            "d.addTimeout(10, reactor).addCallback(lambda _: sorted(Endpoint.presence.list('tracked')))"
        )
        run = yield self.console("--name", "c@127.0.0.1", "--connect", app.name, "-c", code)
        self.assertOutput(run, ["['42']"])

    @defer.inlineCallbacks
    def test_deferred_result(self) -> None:
        """A Deferred result is waited for and its result printed."""
        app = yield self.node()
        run = yield self.console("--name", "c@127.0.0.1", "-c", f"Node.connect({app.name!r})")
        self.assertOutput(run, ["True"])
        run = yield self.console("--name", "c@127.0.0.1", "-c", "Node.connect('nobody@127.0.0.1')")
        self.assertOutput(run, ["False"])

    @defer.inlineCallbacks
    def test_cannot_connect(self) -> None:
        """A --connect that fails is reported on stderr; the code still runs."""
        run = yield self.console("--name", "c@127.0.0.1", "--connect", "nobody@127.0.0.1", "-c", "Node.list()")
        self.assertOutput(run, ["[]"])
        self.assertIn(b"could not connect to nobody@127.0.0.1", run.stderr)

    @defer.inlineCallbacks
    def test_wrong_cookie(self) -> None:
        """A console with another cookie cannot connect, and the node logs the refusal."""
        app = yield self.node()
        # Its own port mapper: the cluster's would not let it in at all (test_other_cluster).
        address = f"127.0.0.1:{app._listening.getHost().port}"
        run = yield self.console("--name", "c@127.0.0.1", "--cookie", "wrong", "--epmd-port", str(free_port()),
                                 "--connect", f"{app.name}={address}", "-c", "Node.list()")
        self.assertOutput(run, ["[]"])
        self.assertIn(b"could not connect to app@127.0.0.1", run.stderr)
        self.assertTrue(self.logs.find("Refused node c@127.0.0.1 from", LogLevel.error))
        self.assertEqual(app.list(), [])

    @defer.inlineCallbacks
    def test_other_cluster(self) -> None:
        """A console with another cookie on the cluster's port mapper port exits 1, naming the fix."""
        app = yield self.node()
        run = yield self.console("--name", "c@127.0.0.1", "--cookie", "wrong", "--connect", app.name,
                                 "-c", "Node.list()")
        self.assertOutput(run, [], exit_code=1)
        self.assertIn(b"does not prove this cluster's cookie", run.stderr)
        self.assertIn(b"--epmd-port or PHOENIX_EPMD_PORT", run.stderr)
        self.assertEqual(app.list(), [])

    @defer.inlineCallbacks
    def test_name_taken(self) -> None:
        """A console cannot take the name of a live node: it says why and exits 1."""
        app = yield self.node()
        run = yield self.console("--name", app.name, "-c", "Node.list()")
        self.assertOutput(run, [], exit_code=1)
        self.assertIn(b"already registered", run.stderr)

    @defer.inlineCallbacks
    def test_piped(self) -> None:
        """Piped statements run in turn, Deferreds awaited in order; errors are shown and input goes on."""
        yield self.node()
        stdin = (
            b"Node.list()\n"
            b"Node.connect('app@127.0.0.1')\n"
            b"def names():\n"
            b"    return [n.upper() for n in Node.list()]\n"
            b"\n"
            b"names()\n"
            b"1 / 0\n"
            b"this is ) not python\n"
            b"Node.self()\n"
        )
        run = yield self.console("--name", "c@127.0.0.1", stdin=stdin)
        self.assertOutput(run, ["[]", "True", "['APP@127.0.0.1']", "'c@127.0.0.1'"])
        self.assertIn(b"ZeroDivisionError", run.stderr)
        self.assertIn(b"SyntaxError", run.stderr)
        yield self.logs.wait_for("Node c@127.0.0.1 left", TIMEOUT)

    @defer.inlineCallbacks
    def test_piped_unterminated(self) -> None:
        """A last statement without a newline, or a block left open at EOF, still runs."""
        run = yield self.console("--name", "c@127.0.0.1", stdin=b"for i in range(2):\n    print(i)")
        self.assertOutput(run, ["0", "1"])
        run = yield self.console("--name", "c@127.0.0.1", stdin=b"Node.self()")
        self.assertOutput(run, ["'c@127.0.0.1'"])

    @defer.inlineCallbacks
    def test_tls(self) -> None:
        """With --dist-cert/--dist-key/--dist-ca the console links over TLS to a TLS node."""
        directory = tempfile.mkdtemp(prefix="console-pki-")
        self.addCleanup(shutil.rmtree, directory, True)
        pki = ClusterPKI(directory)
        app = yield self.node(tls=pki.tls("app"))
        cert, key = pki.issue("c")
        run = yield self.console("--name", "c@127.0.0.1", "--connect", app.name, "--dist-cert", cert,
                                 "--dist-key", key, "--dist-ca", pki.ca_path, "-c", "Node.list()")
        self.assertOutput(run, ["['app@127.0.0.1']"])
        run = yield self.console("--name", "d@127.0.0.1", "--connect", app.name, "-c", "Node.list()")
        self.assertOutput(run, ["[]"])

    @defer.inlineCallbacks
    def test_encrypted_by_default(self) -> None:
        """Without certificates the console links over TLS (its own certificate), and broadcasts."""
        app = yield self.node()
        got = Collector(reactor, app.pubsub, "room")
        run = yield self.console("--name", "c@127.0.0.1", "--connect", app.name,
                                 "-c", "Endpoint.broadcast('room', 'msg', {'n': 1}); Node.links['app@127.0.0.1']"
                                       ".remote.broker.transport.getHandle().get_protocol_version_name()")
        self.assertOutput(run, ["'TLSv1.3'"])
        self.assertEqual([b.payload for b in (yield got.wait_for(1, 10))], [{"n": 1}])

    @defer.inlineCallbacks
    def test_plaintext(self) -> None:
        """With --dist-plaintext the console links to a plaintext node; without it, it cannot."""
        app = yield self.node(plaintext=True)
        run = yield self.console("--name", "c@127.0.0.1", "--dist-plaintext", "--connect", app.name,
                                 "-c", "Node.list()")
        self.assertOutput(run, ["['app@127.0.0.1']"])
        run = yield self.console("--name", "d@127.0.0.1", "--connect", app.name, "-c", "Node.list()")
        self.assertOutput(run, ["[]"])
        self.assertIn(b"is it a plaintext node (--dist-plaintext)?", run.stderr)


class ClusterConsoleTests(TestCase):
    """The console against a cluster of three ``twistd`` processes."""

    def setUp(self) -> None:
        self.env = {"PHOENIX_EPMD_PORT": str(free_port()), "PHOENIX_COOKIE": COOKIE}

    def start(self, name: str, *args: str) -> defer.Deferred[Any]:
        return start_server(
            self, "--name", f"{name}@127.0.0.1", *args, env=self.env, ready="listening for cluster links",
            name=name, timeout=TIMEOUT,
        )

    @defer.inlineCallbacks
    def joined(self, server: Any) -> Any:
        """A WebSocket client of ``server`` joined to the demo's ``ping``."""
        client = yield connect(reactor, server.port, test=self)
        reply = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(reply, ["1", "1", "ping", "phx_reply", {"response": {}, "status": "ok"}])
        return client

    @defer.inlineCallbacks
    def test_broadcast_reaches_the_whole_cluster(self) -> None:
        """Consoles linked to A (-c) or B (piped) run their code once linked to all three; broadcasts reach C."""
        a = yield self.start("a")
        b = yield self.start("b", "--connect", "a@127.0.0.1")
        c = yield self.start("c", "--connect", "a@127.0.0.1")
        for server in (b, c):
            yield a.child.wait_for_output(
                lambda out, s=server: f"Node {s.child.name}@127.0.0.1 connected" in out, TIMEOUT, "the link"
            )
        clients = {}
        for name, server in (("b", b), ("c", c)):
            clients[name] = yield self.joined(server)
        run = yield run_console(
            self, reactor, "--name", "console@127.0.0.1", "--connect", "a@127.0.0.1",
            "-c", "Endpoint.broadcast('ping', 'request_ping', {}); Node.list()",
            env=self.env, timeout=TIMEOUT,
        )
        self.assertEqual(run.exit_code, 0, run.output())
        self.assertEqual(run.stdout.decode().splitlines(), ["['a@127.0.0.1', 'b@127.0.0.1', 'c@127.0.0.1']"])
        for name, client in clients.items():
            data, _ = yield client.next_frame(TIMEOUT)
            self.assertEqual(orjson.loads(data), ["1", None, "ping", "send_ping", {"from_node": f"{name}@127.0.0.1"}])
        piped = yield run_console(
            self, reactor, "--name", "piped@127.0.0.1", "--connect", "b@127.0.0.1",
            env=self.env, timeout=TIMEOUT,
            stdin=b"Endpoint.broadcast('ping', 'request_ping', {})\nNode.list()\n",
        )
        self.assertEqual(piped.exit_code, 0, piped.output())
        self.assertEqual(piped.stdout.decode().splitlines(), ["['a@127.0.0.1', 'b@127.0.0.1', 'c@127.0.0.1']"])
        data, _ = yield clients["c"].next_frame(TIMEOUT)
        self.assertEqual(orjson.loads(data), ["1", None, "ping", "send_ping", {"from_node": "c@127.0.0.1"}])


class InteractiveConsoleTests(TestCase):
    """The console on a terminal: Twisted's manhole, with the reactor running."""

    timeout = 60

    @defer.inlineCallbacks
    def test_manhole(self) -> None:
        """On a pty, typed statements run; a Deferred's result is shown when it fires; ^D leaves cleanly."""
        import os
        import sys

        from ._cluster import CONSOLE_PROGRAM
        from ._server import REPO_ROOT, _clean_env, _spawn, wait_ended

        mapper_port = free_port()
        node = yield start_node(self, reactor, "app@127.0.0.1", mapper_port=mapper_port)
        env = _clean_env({"PHOENIX_COOKIE": COOKIE, "PHOENIX_EPMD_PORT": None, "PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-c", CONSOLE_PROGRAM, "--name", "tty@127.0.0.1", "--epmd-port", str(mapper_port)]
        child = _spawn(reactor, "console", argv, env, path=REPO_ROOT, use_pty=True)
        self.addCleanup(child.stop, 2.0)
        yield child.wait_for_output(lambda out: ">>> " in out, TIMEOUT, "the prompt")
        child.transport.write(b'Node.connect("app@127.0.0.1")\r')
        yield child.wait_for_output(lambda out: "True" in out, TIMEOUT, "the Deferred's result")
        self.assertEqual(node.list(), ["tty@127.0.0.1"])
        child.transport.write(b"sorted(Node.list() + [Node.self()])\r")
        yield child.wait_for_output(
            lambda out: "['app@127.0.0.1', 'tty@127.0.0.1']" in out, TIMEOUT, "the list"
        )
        child.transport.write(b"\x04")  # ^D on an empty line
        yield wait_ended(child, TIMEOUT)
        self.assertEqual(child.exit_code, 0, child.output())
