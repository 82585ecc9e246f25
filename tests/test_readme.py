"""
README.rst's "Your own application" section, run as written: its
``myapp.py`` is written to a directory, served by its ``twistd`` commands
from that directory, and its browser and Node snippets run under Node
against it.  Everything is read from README.rst, so the README cannot drift
from what works; only the port changes (``--listen`` on port 0, and the
snippets' ``localhost:4000`` becomes that port).

Also: README.rst is valid reStructuredText, and the numbers it states
about dead nodes are the defaults.

Needs ``npm ci`` in ``tests/js`` (``phoenix`` and ``ws``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import docutils.core
import docutils.nodes
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ._server import PLUGIN_SOURCE, REPO_ROOT, ChildProcess, _clean_env, _spawn, require_node_modules, spawn_node

README = Path(REPO_ROOT) / "README.rst"

#: Seconds any one step may take (a busy 2-core machine is slow to start Python).
TIMEOUT = 30.0

#: ``twistd`` as its console script runs it: the current directory is not on
#: ``sys.path`` (``python -c`` puts it there; this takes it out again), so
#: ``--endpoint myapp:Endpoint`` works only as ``twistd phoenix`` makes it.
TWISTD = (
    "import sys; del sys.path[0]; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)

#: Where the snippets connect in the README, and what they print.
README_URL = "ws://localhost:4000/socket"
SHOUT = "shout { body: 'hello' }"

_LISTENING = re.compile(r"twisted_phoenix listening on \S+ port=(\d+)")


def literal_blocks() -> list[str]:
    """The text of every literal block (``::``) of README.rst, in order."""
    settings = {"report_level": 5, "halt_level": 5}
    tree = docutils.core.publish_doctree(README.read_text(encoding="utf-8"), settings_overrides=settings)
    return [block.astext() for block in tree.findall(docutils.nodes.literal_block)]


def readme_block(predicate: Any, what: str) -> str:
    """The one literal block of README.rst for which ``predicate(text)`` holds."""
    found = [text for text in literal_blocks() if predicate(text)]
    if len(found) != 1:
        raise AssertionError(f"README.rst should have one {what}, has {len(found)}: {found}")
    return found[0]


class YourOwnApplicationTests(TestCase):
    """
    The README's ``myapp.py``, served by the README's commands, used by its snippets.
    """

    timeout = 120

    def setUp(self) -> None:
        self.app = tempfile.mkdtemp(prefix="twisted_phoenix-readme-app-")
        self.addCleanup(shutil.rmtree, self.app, True)
        app_source = readme_block(lambda t: t.startswith("from twisted_phoenix import"), "myapp.py")
        Path(self.app, "myapp.py").write_text(app_source + "\n", encoding="utf-8")
        # The plugin, as an install puts it, in a directory of its own: the
        # app's directory is not on PYTHONPATH.
        self.plugins = tempfile.mkdtemp(prefix="twisted_phoenix-readme-plugin-")
        self.addCleanup(shutil.rmtree, self.plugins, True)
        os.makedirs(os.path.join(self.plugins, "twisted", "plugins"))
        shutil.copy(PLUGIN_SOURCE, os.path.join(self.plugins, "twisted", "plugins", "phoenix.py"))

    def twistd(self, command: str, name: str) -> ChildProcess:
        """Start a README ``twistd`` command in the app's directory, listening on a free port."""
        argv = shlex.split(command)
        self.assertEqual(argv[0], "twistd")
        env = _clean_env({"PORT": None, "SECRET_KEY_BASE": None, "PHOENIX_ENV": None, "PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (REPO_ROOT, self.plugins, os.environ.get("PYTHONPATH", "")) if p
        )
        argv = [sys.executable, "-c", TWISTD, *argv[1:], "--listen", "tcp:0:interface=127.0.0.1"]
        child = _spawn(reactor, name, argv, env, path=self.app)
        self.addCleanup(child.stop)
        return child

    @defer.inlineCallbacks
    def serve(self, command: str, name: str = "twistd") -> Any:
        """Start ``command``; fire with its port once it listens."""
        child = self.twistd(command, name)
        match = yield child.wait_for_output(_LISTENING.search, TIMEOUT, "'listening on'")
        return int(match.group(1))

    def serve_command(self) -> str:
        return readme_block(lambda t: t.startswith("twistd -n phoenix --endpoint myapp:Endpoint"), "serve command")

    @defer.inlineCallbacks
    def run_snippet(self, snippet: str, *node_options: str) -> Any:
        """Serve the app, run ``snippet`` under Node against it; fire once it printed the shout."""
        require_node_modules("phoenix", "ws")
        self.assertEqual(snippet.count(README_URL), 1, snippet)
        port = yield self.serve(self.serve_command())
        code = snippet.replace("localhost:4000", f"127.0.0.1:{port}")
        child = spawn_node(self, [*node_options, "-e", code], name="snippet")
        yield child.wait_for_output(lambda out: SHOUT in out, TIMEOUT, repr(SHOUT))
        yield child.stop(2.0)

    def test_node_snippet(self) -> None:
        """The Node snippet (CommonJS, the ws transport) joins room:lobby, shouts, and hears its shout."""
        snippet = readme_block(lambda t: 'require("ws")' in t, "Node snippet")
        self.assertIn("{ transport: WebSocket }", snippet)
        return self.run_snippet(snippet)

    def test_browser_snippet(self) -> None:
        """The browser snippet (an ES module, the global WebSocket) does the same, under Node's WebSocket."""
        snippet = readme_block(lambda t: t.startswith('import { Socket } from "phoenix";'), "browser snippet")
        return self.run_snippet(snippet, "--experimental-websocket", "--input-type=module")

    @defer.inlineCallbacks
    def test_second_server(self) -> None:
        """A second server from the same directory starts with the README's --pidfile command, not without it."""
        first = self.serve_command()
        yield self.serve(first, "first")
        self.assertTrue(os.path.exists(os.path.join(self.app, "twistd.pid")))
        refused = self.twistd(first, "refused")
        yield refused.wait_ended()
        self.assertNotEqual(refused.exit_code, 0)
        self.assertIn("Another twistd server is running", refused.output())
        second = readme_block(lambda t: t.startswith("twistd -n --pidfile "), "second server command")
        yield self.serve(second, "second")
        pidfile = shlex.split(second)[3]
        self.assertTrue(os.path.exists(os.path.join(self.app, pidfile)))


class ReadmeTextTests(SynchronousTestCase):
    """
    README.rst is valid reStructuredText (it is the package's long
    description), and what it says about dead nodes holds for the defaults.
    """

    def test_valid_rst(self) -> None:
        """docutils parses README.rst without a warning."""
        text = README.read_text(encoding="utf-8")
        settings = {"report_level": 2, "halt_level": 2, "warning_stream": False}
        docutils.core.publish_doctree(text, settings_overrides=settings)  # raises on a warning
        self.assertGreaterEqual(len(literal_blocks()), 5)

    def test_presence_periods(self) -> None:
        """A dead node's presences leave after 30 s of silence and are dropped after 20 min, as the README says."""
        from twisted.internet.task import Clock

        from twisted_phoenix.presence.tracker import Tracker
        from twisted_phoenix.pubsub import PubSub

        tracker = Tracker(Clock(), PubSub("a@127.0.0.1"), lambda diff: None)
        readme = " ".join(README.read_text(encoding="utf-8").split())
        self.assertEqual((tracker.down_period, tracker.permdown_period), (30, 20 * 60))
        self.assertIn("silent for ``down_period`` (30 s by default)", readme)
        self.assertIn("``permdown_period`` (20 min)", readme)

    def test_node_heartbeats(self) -> None:
        """A dead node leaves Node.list() after --heartbeat-timeout plus --heartbeat-interval: 3 s + 1 s."""
        from twisted_phoenix.tap import Options

        defaults = {name: default for name, _, default, _ in Options.optParameters}
        self.assertEqual((float(defaults["heartbeat-timeout"]), float(defaults["heartbeat-interval"])), (3, 1))
        readme = " ".join(README.read_text(encoding="utf-8").split())
        self.assertIn(
            "within about 4 seconds (``--heartbeat-timeout`` 3 s plus ``--heartbeat-interval`` 1 s)", readme
        )
