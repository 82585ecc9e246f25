"""
phoenix.js in a real browser: headless Chromium (Debian's ``chromium``,
driven by ``playwright-core`` from ``tests/js``) loads
``tests/js/browser_page.html`` with phoenix.js's browser build, served from
another origin than the ``twistd -n phoenix`` server (so CORS and
``check_origin`` are exercised for real), and uses the long-poll transport:

* chosen outright (``new Socket(url, {transport: LongPoll})``);
* as the fallback of a page whose WebSocket is blocked
  (``longPollFallbackMs``).

Without Chromium these tests skip, saying why, unless the environment
variable ``CI`` is set: there they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from ._server import (
    CHROMIUM,
    JS_DIR,
    ChildFailed,
    ChildProcess,
    NodeRun,
    require_node_modules,
    require_program,
    run_node,
    start_server,
)

_SERVING = re.compile(r"Serving HTTP on \S+ port (\d+)")


def start_page_server(testcase: Any) -> defer.Deferred[int]:
    """Serve ``tests/js`` (the page and phoenix.js) on a free port; fire with the port."""
    child = ChildProcess("page server", reactor)
    argv = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", JS_DIR]
    reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ))
    testcase.addCleanup(child.stop)
    d = child.wait_for_output(lambda out: _SERVING.search(out), 15.0, "the page server's port")
    return d.addCallback(lambda match: int(match.group(1)))


class BrowserLongPollTests(unittest.TestCase):
    """phoenix.js's LongPoll in headless Chromium against a real server."""

    timeout = 120

    def setUp(self) -> None:
        require_program(CHROMIUM, "chromium")
        try:
            require_node_modules("phoenix", "playwright-core")
        except ChildFailed as e:
            self.fail(str(e))

    @defer.inlineCallbacks
    def run_page(self, mode: str) -> Any:
        """Start a server and the page server, open the page; fire with (events, server)."""
        server = yield start_server(self, "--name", "browser@127.0.0.1")
        page_port = yield start_page_server(self)
        profile = tempfile.mkdtemp(prefix="twisted_phoenix_chromium_")
        self.addCleanup(shutil.rmtree, profile, True)
        page = (
            f"http://127.0.0.1:{page_port}/browser_page.html"
            f"?server={server.url(scheme='http')}&mode={mode}"
        )
        options = {"chromium": CHROMIUM, "userDataDir": profile, "deadlineMs": 40000}
        child = yield run_node(self, ["browser_run.js", page, json.dumps(options)], timeout=60.0, name="chromium")
        run = NodeRun(child)
        if run.exit_code != 0 or not any(e["ev"] == "done" for e in run.events):
            self.fail(f"the page did not finish (exit {run.exit_code})\n{run.output()}\n{server.output()}")
        return run.events, server

    def assertPageWorked(self, events: list[dict[str, Any]]) -> None:
        """The page joined, got its replies, the broadcast and presence, over long-poll."""

        def one(ev: str, **fields: Any) -> dict[str, Any]:
            found = [e for e in events if e["ev"] == ev and all(e.get(k) == v for k, v in fields.items())]
            self.assertEqual(len(found), 1, f"{ev} {fields}: {found}")
            return found[0]

        self.assertEqual(one("join", topic="ping")["result"], ["ok", {}])
        self.assertEqual(one("reply", label="ping")["result"], ["ok", {"ping": "pong"}])
        self.assertEqual(one("reply", label="phrase")["result"], ["ok", {"ping": "é ü"}])
        self.assertEqual(one("broadcast")["payloads"], [{"body": "hi", "n": 1}])
        self.assertEqual(one("join", topic="tracked")["result"], ["ok", {}])
        self.assertEqual(one("presence")["list"], [{"id": "browser", "count": 1}])
        state = one("state")
        self.assertEqual((state["transport"], state["connected"]), ("longpoll", True))
        self.assertEqual([e for e in events if e["ev"] in ("page_error", "fail")], [])
        # The browser's own requests: polls and posts to /socket/longpoll, the posts preflighted.
        requests = [e for e in events if e["ev"] == "http" and "/socket/longpoll" in e["url"]]
        self.assertEqual({e["method"] for e in requests}, {"GET", "POST"})

    @defer.inlineCallbacks
    def test_longPollTransport(self) -> Any:
        """A page using phoenix.js's LongPoll transport joins, pushes, gets broadcasts and presence."""
        events, server = yield self.run_page("longpoll")
        self.assertPageWorked(events)
        self.assertEqual([e["transport"] for e in events if e["ev"] == "open"], ["longpoll"])
        self.assertEqual([e for e in events if e["ev"] == "websocket_attempt"], [])
        self.assertIn("Transport: longpoll", server.output())

    @defer.inlineCallbacks
    def test_fallbackWhenWebSocketBlocked(self) -> Any:
        """A page whose WebSocket is blocked falls back to long-poll (longPollFallbackMs) and works."""
        events, server = yield self.run_page("fallback")
        attempts = [e for e in events if e["ev"] == "websocket_attempt"]
        self.assertGreaterEqual(len(attempts), 1)
        self.assertTrue(attempts[0]["url"].endswith("/socket/websocket?vsn=2.0.0"), attempts[0])
        opens = [e for e in events if e["ev"] == "open"]
        self.assertEqual([e["transport"] for e in opens], ["longpoll"])
        self.assertPageWorked(events)
        self.assertNotIn("Transport: websocket", server.output())
