"""
The chat example (:mod:`twisted_phoenix.examples.chat`) in real headless
Chromium pages, on a real two-node cluster: ``twistd -n phoenix --endpoint
twisted_phoenix.examples.chat:Endpoint`` nodes ``a`` and ``b`` on loopback,
one page on each, driven like a user by ``tests/js/chat_browser.js``
(playwright-core with Debian's ``chromium``).

Chromium missing: the tests are skipped, with the reason, when the
environment variable ``CI`` is unset, and fail when it is set.  Every wait
is for something the page shows, bounded.

``CHAT_SCREENSHOTS=DIR`` also saves the screenshots the tests take (alice's
page while bob types, and bob's) in ``DIR``; that is how the pictures of
``docs/chat.rst`` were made::

    CHAT_SCREENSHOTS=docs/_static python -m pytest tests/test_chat_browser.py -k twoNodes
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
from typing import Any
from unittest import mock

from twisted.internet import defer
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from ._cluster import free_port
from ._server import (
    CHROMIUM,
    ChildFailed,
    ChildProcess,
    ServerProcess,
    require_node_modules,
    spawn_node,
    start_server,
    wait_ended,
    require_program,
)

ENDPOINT = "twisted_phoenix.examples.chat:Endpoint"

#: Bound on a wait for something that needs no failure detection.
TIMEOUT = 20.0

#: The chat's presence down_period (5 s) and then some, for a loaded machine.
DOWN_TIMEOUT = 15.0

#: A restarted node's page reconnects (phoenix.js tries every 5 s by then)
#: and rejoins.
RECOVERY_TIMEOUT = 40.0

NODE_READY = "listening for cluster links"


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def node(name: str) -> str:
    return f"{name}@127.0.0.1"


class RequireProgramTests(SynchronousTestCase):
    """L{require_program}: skipped outside CI, failed in CI."""

    def test_skipOutsideCI(self) -> None:
        """Without CI, a missing program skips, naming the package."""
        with mock.patch.dict(os.environ):
            os.environ.pop("CI", None)
            error = self.assertRaises(SkipTest, require_program, "/nonexistent/chromium", "chromium")
        self.assertIn("apt-get install chromium", str(error))

    def test_failInCI(self) -> None:
        """With CI set, a missing program fails."""
        with mock.patch.dict(os.environ, {"CI": "true"}):
            error = self.assertRaises(AssertionError, require_program, "no-such-program-here", "pkg")
        self.assertIn("CI is set", str(error))

    def test_found(self) -> None:
        """A program on PATH, or an executable path, is returned."""
        self.assertEqual(require_program(sys.executable, "python3"), sys.executable)
        self.assertTrue(require_program("sh", "dash").endswith("/sh"))


class Browser:
    """
    A running ``chat_browser.js``: Chromium, its pages, and one command at a
    time.
    """

    def __init__(self, testcase: ChatClusterTestCase) -> None:
        self.testcase = testcase
        # Chromium's profile and anything else it writes go under here.
        self.tmpdir = tempfile.mkdtemp(prefix="twisted_phoenix-chromium-")
        testcase.addCleanup(shutil.rmtree, self.tmpdir, ignore_errors=True)
        testcase.addCleanup(self._kill_leftovers)
        self.child: ChildProcess = spawn_node(
            testcase, ["chat_browser.js"], env={"TMPDIR": self.tmpdir, "CHROMIUM": CHROMIUM}, name="chromium",
        )
        testcase.addCleanup(self._exit)
        self.events: list[dict[str, Any]] = []
        self._parsed = 0
        self._next_id = 0

    def _parse(self) -> list[dict[str, Any]]:
        data = bytes(self.child.stdout)
        end = data.rfind(b"\n") + 1
        if end > self._parsed:
            for line in data[self._parsed:end].decode("utf-8", "replace").splitlines():
                if line.startswith("{"):
                    self.events.append(json.loads(line))
            self._parsed = end
        return self.events

    def ready(self) -> defer.Deferred[dict[str, Any]]:
        """Fires once Chromium runs; fails with the driver's reason if it cannot start."""

        def found(_: str) -> Any:
            return next((e for e in self._parse() if e["ev"] == "ready" or e.get("id", 0) is None), None)

        def check(event: dict[str, Any]) -> dict[str, Any]:
            if event["ev"] != "ready":
                raise ChildFailed(f"chat_browser.js: {event['error']}\n{self.child.output()}")
            return event

        return self.child.wait_for_output(found, 45.0, "Chromium started").addCallback(check)

    def command(self, cmd: str, timeout: float = TIMEOUT, **fields: Any) -> defer.Deferred[dict[str, Any]]:
        """Send a command; fire with its answer, or fail with the page's state."""
        self._next_id += 1
        ident = self._next_id
        if cmd == "wait":
            # The driver gives up first, and says what the page showed.
            fields["timeoutMs"] = int((timeout - 3) * 1000)
        self.child.transport.write(json.dumps({"id": ident, "cmd": cmd, **fields}).encode() + b"\n")

        def found(_: str) -> Any:
            return next((e for e in self._parse() if e.get("id") == ident), None)

        def check(event: dict[str, Any]) -> dict[str, Any]:
            if event["ev"] != "done":
                raise ChildFailed(
                    f"{cmd} {fields} failed: {event['error']}\npage state: {json.dumps(event.get('state'))}"
                )
            return event

        d = self.child.wait_for_output(found, timeout, f"the answer to {cmd} {fields}")
        return self.testcase.explained(d.addCallback(check))

    def wait(self, page: str, timeout: float = TIMEOUT, **expect: Any) -> defer.Deferred[dict[str, Any]]:
        """Fire with the page's state once it shows ``expect`` (see chat_browser.js)."""
        return self.command("wait", timeout, page=page, expect=expect).addCallback(lambda e: e["state"])

    def page_errors(self) -> list[dict[str, Any]]:
        """The uncaught exceptions of every page so far."""
        return [e for e in self._parse() if e["ev"] == "pageerror"]

    def _exit(self) -> defer.Deferred[Any]:
        """Ask the driver to close Chromium and exit; stop it if it does not."""
        if not self.child.running:
            return defer.succeed(None)
        self.child.transport.write(b'{"id": -1, "cmd": "exit"}\n')
        return wait_ended(self.child, 15.0).addErrback(lambda _: None)

    def _kill_leftovers(self) -> None:
        """SIGKILL any Chromium process still using this test's profile directory."""
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.tmpdir.encode() in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass


class ChatClusterTestCase(TestCase):
    """A cluster of its own (port mapper port, cookie) serving the chat, and a browser."""

    def setUp(self) -> None:
        require_program(CHROMIUM, "chromium")
        require_node_modules("playwright-core")
        self.epmd_port = str(free_port())
        self.cookie = f"chat-browser-{secrets.token_hex(8)}"
        self.servers: dict[str, ServerProcess] = {}
        self.browser: Browser | None = None

    def explained(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """On failure, add the end of every node's log and of the browser's output."""

        def add_logs(failure: Any) -> Any:
            if failure.check(ChildFailed):
                logs = "\n".join(
                    f"--- node {name} (last lines) ---\n" + "\n".join(s.output().splitlines()[-40:])
                    for name, s in self.servers.items()
                )
                if self.browser is not None:
                    logs += "\n--- browser ---\n" + "\n".join(self.browser.child.output().splitlines()[-40:])
                raise ChildFailed(f"{failure.value}\n{logs}")
            return failure

        return d.addErrback(add_logs)

    def start(self, name: str, *, connect: tuple[str, ...] = (), port: int = 0) -> defer.Deferred[ServerProcess]:
        """Start node ``name@127.0.0.1`` serving the chat on ``port`` (0: any), in the dev environment."""
        args = [
            "--name", node(name), "--endpoint", ENDPOINT, "--env", "dev",
            "--epmd-port", self.epmd_port, "--cookie", self.cookie,
        ]
        for other in connect:
            args += ["--connect", node(other)]
        d = start_server(
            self, *args, ready=NODE_READY, name=name, timeout=TIMEOUT,
            listen=(f"tcp:{port}:interface=127.0.0.1",),
        )

        def started(server: ServerProcess) -> ServerProcess:
            self.servers[name] = server
            return server

        return self.explained(d.addCallback(started))

    def wait_log(self, name: str, text: str, since: int = 0) -> defer.Deferred[Any]:
        child = self.servers[name].child
        return self.explained(child.wait_for_output(
            lambda out: text in out[since:], TIMEOUT, f"{text!r} in the log of {name}"
        ))

    @defer.inlineCallbacks
    def start_cluster(self) -> Any:
        """Nodes a and b (b connects to a), linked both ways, and a browser."""
        yield self.start("a")
        yield self.start("b", connect=("a",))
        yield defer.gatherResults([
            self.wait_log("a", f"Node {node('b')} connected to {node('a')}"),
            self.wait_log("b", f"Node {node('a')} connected to {node('b')}"),
        ])
        self.browser = Browser(self)
        yield self.explained(self.browser.ready())

    @defer.inlineCallbacks
    def open_joined(self, page: str, name: str, url: str) -> Any:
        """Open the chat at ``url`` as ``page``, join as ``name``; fires with the page's state."""
        assert self.browser is not None
        opened = yield self.browser.command("open", page=page, url=url)
        self.assertEqual(opened["status"], 200)
        yield self.browser.command("join", page=page, name=name)
        state = yield self.browser.wait(page, status="joined")
        return state

    def url(self, name: str, host: str = "127.0.0.1", query: str = "") -> str:
        return f"http://{host}:{self.servers[name].port}/{query}"

    def tearDown(self) -> None:
        if self.browser is not None:
            self.assertEqual(self.browser.page_errors(), [])


class ChatTwoNodesTests(ChatClusterTestCase):
    """A page on each node of a two-node cluster."""

    @defer.inlineCallbacks
    def test_twoNodes(self) -> None:
        """Each page sees the other online; messages and typing cross the nodes both ways; a closed page leaves."""
        yield self.start_cluster()
        browser = self.browser
        assert browser is not None
        # Pages at 127.0.0.1 and at localhost: the dev environment accepts
        # both origins (the endpoint's host is localhost).
        state = yield self.open_joined("alice", "alice", self.url("a"))
        self.assertIn(f"on node {node('a')}", state["statusText"])
        state = yield self.open_joined("bob", "bob", self.url("b", host="localhost"))
        self.assertIn(f"on node {node('b')}", state["statusText"])
        yield browser.wait("alice", online=["alice", "bob"], event="bob joined")
        yield browser.wait("bob", online=["alice", "bob"])

        # Messages, a → b and b → a; each page shows its own too.
        yield browser.command("send", page="alice", text="Hello from node a!")
        for page in ("bob", "alice"):
            yield browser.wait(page, message={"name": "alice", "body": "Hello from node a!"})
        yield browser.command("send", page="bob", text="Hi Alice, I am on node b.")
        yield browser.command("send", page="alice", text="Two nodes, one room.")
        state = yield browser.wait("alice", messageCount=3)
        self.assertEqual(state["messages"], [
            {"name": "alice", "body": "Hello from node a!"},
            {"name": "bob", "body": "Hi Alice, I am on node b."},
            {"name": "alice", "body": "Two nodes, one room."},
        ])
        state = yield browser.wait("bob", messageCount=3)
        self.assertEqual(state["messages"], [
            {"name": "alice", "body": "Hello from node a!"},
            {"name": "bob", "body": "Hi Alice, I am on node b."},
            {"name": "alice", "body": "Two nodes, one room."},
        ])

        # bob types on b: alice's page on a shows it, in the list and below the messages.
        yield browser.command("type", page="bob", text="Nice, and ")
        state = yield browser.wait("alice", typing=["bob"], typingLine="bob is typing")
        self.assertEqual(state["online"], ["alice", "bob"])
        yield self.screenshots()
        # He stops: the page says so after 3 s without a keystroke.
        yield browser.wait("alice", typing=[], typingLine="")
        # alice types on a: bob's page on b shows it.
        yield browser.command("type", page="alice", text="One more")
        yield browser.wait("bob", typing=["alice"], typingLine="alice is typing")

        # bob closes his page: alice sees him leave.
        yield browser.command("close", page="bob")
        state = yield browser.wait("alice", online=["alice"], event="bob left")
        self.assertEqual(state["events"], ["bob joined", "bob left"])

    @defer.inlineCallbacks
    def test_twoNodesLongPoll(self) -> None:
        """Both pages on phoenix.js's LongPoll (``?transport=longpoll``), one per node: presence, messages and leaving cross the nodes."""
        yield self.start_cluster()
        browser = self.browser
        assert browser is not None
        state = yield self.open_joined("alice", "alice", self.url("a", query="?transport=longpoll"))
        self.assertIn(f"on node {node('a')}", state["statusText"])
        state = yield self.open_joined("bob", "bob", self.url("b", host="localhost", query="?transport=longpoll"))
        self.assertIn(f"on node {node('b')}", state["statusText"])
        yield browser.wait("alice", online=["alice", "bob"], event="bob joined")
        yield browser.wait("bob", online=["alice", "bob"])
        yield browser.command("send", page="alice", text="Polling from a")
        yield browser.wait("bob", message={"name": "alice", "body": "Polling from a"})
        yield browser.command("send", page="bob", text="Polling from b")
        state = yield browser.wait("alice", messageCount=2)
        self.assertEqual(state["messages"], [
            {"name": "alice", "body": "Polling from a"},
            {"name": "bob", "body": "Polling from b"},
        ])
        yield browser.command("type", page="bob", text="more")
        yield browser.wait("alice", typing=["bob"], typingLine="bob is typing")
        # A closed page stops polling: its session ends 1.5 windows (15 s)
        # after its last poll, and bob leaves with it.
        yield browser.command("close", page="bob")
        yield browser.wait("alice", timeout=RECOVERY_TIMEOUT, online=["alice"], event="bob left")
        # Every connection was a long-poll session, on both nodes.
        for name in ("a", "b"):
            output = self.servers[name].output()
            self.assertIn("Transport: longpoll", output)
            self.assertNotIn("Transport: websocket", output)

    @defer.inlineCallbacks
    def screenshots(self) -> Any:
        """PNGs of both pages (kept in $CHAT_SCREENSHOTS if set)."""
        assert self.browser is not None
        keep = os.environ.get("CHAT_SCREENSHOTS")
        for page in ("alice", "bob"):
            path = os.path.join(keep or self.browser.tmpdir, f"chat-{page}.png")
            answer = yield self.browser.command("screenshot", page=page, path=os.path.abspath(path))
            self.assertGreater(answer["bytes"], 1000)
            with open(path, "rb") as f:
                self.assertEqual(f.read(8), PNG_SIGNATURE)


class ChatNodeKilledTests(ChatClusterTestCase):
    """A node killed with SIGKILL while a page is on it, then restarted."""

    @defer.inlineCallbacks
    def test_killAndRestart(self) -> None:
        """The page on a killed node reconnects and rejoins once it restarts; the other page sees its user go and come back."""
        yield self.start_cluster()
        browser = self.browser
        assert browser is not None
        b_port = self.servers["b"].port
        yield self.open_joined("alice", "alice", self.url("a"))
        yield self.open_joined("bob", "bob", self.url("b"))
        yield browser.wait("alice", online=["alice", "bob"])
        yield browser.wait("bob", online=["alice", "bob"])

        # kill -9 b: bob's page loses its connection; alice's page sees bob
        # leave once node b has been silent for the presence down_period.
        self.servers["b"].child.transport.signalProcess("KILL")
        yield self.servers["b"].child.wait_ended()
        yield browser.wait("bob", status="offline")
        state = yield browser.wait("alice", DOWN_TIMEOUT, online=["alice"])
        self.assertEqual(state["events"], ["bob joined", "bob left"])

        # b restarts on the same port: bob's page reconnects and rejoins by
        # itself, and sees alice again; alice's page sees bob come back.
        yield self.start("b", connect=("a",), port=b_port)
        state = yield browser.wait("bob", RECOVERY_TIMEOUT, status="joined", online=["alice", "bob"])
        self.assertIn(f"on node {node('b')}", state["statusText"])
        state = yield browser.wait("alice", online=["alice", "bob"])
        self.assertEqual(state["events"], ["bob joined", "bob left", "bob joined"])

        # Messages cross the nodes again, both ways.
        yield browser.command("send", page="bob", text="I am back.")
        yield browser.wait("alice", message={"name": "bob", "body": "I am back."})
        yield browser.command("send", page="alice", text="Welcome back, bob.")
        yield browser.wait("bob", message={"name": "alice", "body": "Welcome back, bob."})
