"""
Tests for the chat example, :mod:`twisted_phoenix.examples.chat`: its
channel in memory (:mod:`twisted_phoenix.testing`), and its page served by
the endpoint.  tests/test_chat_browser.py runs it in Chromium on a cluster.
"""

from __future__ import annotations

import os
import re

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix.examples import chat
from twisted_phoenix.examples.chat import (
    MAX_BODY,
    MAX_NAME,
    TYPING_TIMEOUT,
    ChatEndpoint,
    ChatSocket,
    Endpoint,
    clean_text,
)
from twisted_phoenix.testing import ANY, ChannelTest, ClientSocket

from ._client import serve
from .test_static import request

NOW = 1_700_000_000
ROOM = "room:lobby"
STATIC = os.path.join(os.path.dirname(os.path.abspath(chat.__file__)), "static")


class ChatTestCase(SynchronousTestCase):
    """The chat endpoint on a Clock set to L{NOW}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.harness = ChannelTest(ChatEndpoint, self.clock, node_name="a@127.0.0.1")

    def client(self) -> ClientSocket:
        client = self.successResultOf(self.harness.connect(ChatSocket))
        assert client is not None
        return client

    def joined(self, name: str) -> ClientSocket:
        client = self.client()
        reply = self.successResultOf(client.join(ROOM, {"name": name}))
        self.assertEqual((reply.status, reply.payload), ("ok", {"name": name.strip(), "node": "a@127.0.0.1"}))
        return client

    def metas(self, name: str) -> list[dict[str, object]]:
        self.clock.advance(0)
        entry = self.harness.endpoint.presence.get_by_key(ROOM, name)
        assert entry is not None
        return entry["metas"]


class RoomChannelTests(ChatTestCase):
    """Joining, presence, messages and typing in ``room:*``."""

    def test_endpoint(self) -> None:
        """``Endpoint`` is the chat endpoint: the socket at /socket, the page at /."""
        self.assertIs(Endpoint, ChatEndpoint)
        self.assertEqual(list(ChatEndpoint.sockets), ["/socket"])
        self.assertEqual(self.harness.endpoint.static_directories()["/"], STATIC)

    def test_joinNeedsName(self) -> None:
        """A join without a usable name is refused with a reason."""
        for payload in ({}, {"name": ""}, {"name": "   "}, {"name": 42}, {"name": "x" * (MAX_NAME + 1)},
                        {"name": "two\nlines"}, None, []):
            reply = self.successResultOf(self.client().join(ROOM, payload))
            self.assertEqual(reply.status, "error", payload)
            self.assertIn("name", reply.payload["reason"])
        self.assertEqual(self.harness.endpoint.presence.list(ROOM), {})

    def test_presence(self) -> None:
        """A joined user is tracked by name with online_at, typing and node; others see the diff."""
        alice = self.joined("  alice ")
        state = alice.assert_push("presence_state")
        self.assertEqual(list(state.payload), ["alice"])
        [meta] = state.payload["alice"]["metas"]
        self.assertEqual(
            {k: v for k, v in meta.items() if k != "phx_ref"},
            {"online_at": NOW * 1000, "typing": False, "node": "a@127.0.0.1"},
        )
        bob = self.joined("bob")
        self.assertEqual(sorted(bob.assert_push("presence_state").payload), ["alice", "bob"])
        alice.assert_broadcast("presence_diff", {"joins": {"bob": ANY}, "leaves": {}})
        bob.close()
        alice.assert_broadcast("presence_diff", {"joins": {}, "leaves": {"bob": ANY}})

    def test_message(self) -> None:
        """new_msg is broadcast to the room with the sender's name and the server's time, and replied ok."""
        alice = self.joined("alice")
        bob = self.joined("bob")
        ref = alice.push(ROOM, "new_msg", {"body": "  hello\nworld  "})
        alice.assert_reply(ref, "ok", {})
        expected = {"name": "alice", "body": "hello\nworld", "at": NOW * 1000}
        bob.assert_broadcast("new_msg", expected)
        alice.assert_broadcast("new_msg", expected)

    def test_badMessage(self) -> None:
        """An empty, too long or non-text message is refused, and nothing is broadcast."""
        alice = self.joined("alice")
        for payload in ({"body": ""}, {"body": " \n "}, {"body": "x" * (MAX_BODY + 1)}, {"body": 1}, {}, "hi"):
            ref = alice.push(ROOM, "new_msg", payload)
            reply = alice.assert_reply(ref, "error")
            self.assertIn("message", reply.payload["reason"])
        alice.refute_broadcast("new_msg")
        ref = alice.push(ROOM, "new_msg", {"body": "x" * MAX_BODY})
        alice.assert_reply(ref, "ok")

    def test_unknownEvent(self) -> None:
        """An unknown event gets an error reply; the channel goes on."""
        alice = self.joined("alice")
        alice.assert_reply(alice.push(ROOM, "shout", {}), "error", {"reason": "unknown event shout"})
        alice.assert_reply(alice.push(ROOM, "new_msg", {"body": "still here"}), "ok")

    def test_typing(self) -> None:
        """typing sets the presence meta (once per change), goes back on send and after the timeout."""
        alice = self.joined("alice")
        bob = self.joined("bob")
        bob.assert_broadcast("presence_diff", {"joins": {"bob": ANY}, "leaves": {}})
        alice.push(ROOM, "typing", {"typing": True})
        self.assertEqual(self.metas("alice")[0]["typing"], True)
        bob.assert_broadcast("presence_diff", {"joins": {"alice": ANY}, "leaves": {"alice": ANY}})
        alice.push(ROOM, "typing", {"typing": True})  # again: no change, no diff
        bob.refute_broadcast("presence_diff")
        # Sending a message ends typing.
        alice.push(ROOM, "new_msg", {"body": "done"})
        self.assertEqual(self.metas("alice")[0]["typing"], False)
        # Without news for TYPING_TIMEOUT seconds, typing ends too.
        alice.push(ROOM, "typing", {"typing": True})
        self.clock.advance(TYPING_TIMEOUT - 1)
        alice.push(ROOM, "typing", {"typing": True})  # a keystroke: the timeout starts again
        self.clock.advance(TYPING_TIMEOUT - 1)
        self.assertEqual(self.metas("alice")[0]["typing"], True)
        self.clock.advance(1)
        self.assertEqual(self.metas("alice")[0]["typing"], False)
        alice.push(ROOM, "typing", {"typing": "yes"})  # only true is true
        self.assertEqual(self.metas("alice")[0]["typing"], False)

    def test_cleanText(self) -> None:
        """Text is stripped of control characters and surrounding space, and bounded."""
        self.assertEqual(clean_text(" a\x00b\x1b[31m ", 10), "ab[31m")
        self.assertEqual(clean_text("a\tb\nc", 10), "a\tb\nc")
        self.assertIsNone(clean_text("abc", 2))
        self.assertIsNone(clean_text("\x00", 2))
        self.assertIsNone(clean_text(None, 2))


class ChatPageTests(TestCase):
    """The page, served by the chat endpoint next to its socket."""

    @defer.inlineCallbacks
    def test_page(self) -> None:
        """/ is the page; its script and style are served, and phoenix.js where the script imports it."""
        port = serve(self, ChatEndpoint(reactor)).port
        page = yield request(self, port, "/")
        self.assertEqual(page.status, 200)
        self.assertEqual(page.headers["content-type"], "text/html; charset=utf-8")
        html = page.body.decode("utf-8")
        self.assertIn('<html lang="en">', html)
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        self.assertEqual(sources, ["data:,", "chat.css", "chat.js"])
        for source, content_type in (("/chat.css", "text/css"), ("/chat.js", "text/javascript")):
            response = yield request(self, port, source)
            self.assertEqual(response.status, 200, source)
            self.assertTrue(response.headers["content-type"].startswith(content_type), source)
        script = (yield request(self, port, "/chat.js")).body.decode("utf-8")
        [module] = re.findall(r'from "([^"]+)"', script)
        self.assertEqual(module, "/phoenix/phoenix.mjs")
        self.assertEqual((yield request(self, port, module)).status, 200)
        self.assertNotIn("innerHTML", script)

    def test_labels(self) -> None:
        """Every input of the page has a label."""
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
            html = f.read()
        inputs = re.findall(r'<input id="([^"]+)"', html)
        self.assertEqual(inputs, ["name", "body"])
        for ident in inputs:
            self.assertIn(f'<label for="{ident}">', html)
