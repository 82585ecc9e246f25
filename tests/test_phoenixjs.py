"""
Conformance with the real phoenix.js client.

Each test starts a real ``twistd -n phoenix`` process (``tests/_server.py``)
and runs one scenario of ``tests/js/phoenix_scenarios.js``: the npm
``phoenix`` 1.8.16 ``Socket`` under Node, with the ``ws`` WebSocket or with
phoenix.js's own ``LongPoll`` transport (over Node's ``fetch``).  The
script prints what the client observed (replies, pushes, socket and channel
events, every WebSocket frame verbatim) as JSON lines, and the tests assert
on them here.  Every scenario runs with the V1 (``vsn=1.0.0``, JSON objects,
through custom ``encode``/``decode`` as phoenix.js 1.3-era clients spoke it)
and the V2 (``vsn=2.0.0``, phoenix.js's default) serializers, over both
transports.  Over long-poll the client's "frames" are the messages of its
polls and the lines of its posts, the same text as WebSocket frames.

The demo app (``twisted_phoenix.examples.hello_sockets``) is served as
``twistd`` serves it by default; behaviours that need server code to act
(``Endpoint.broadcast``, ``auth_token``) use ``tests._apps.ConformanceEndpoint``,
the demo endpoint plus two test sockets.

Needs ``npm ci`` in ``tests/js``; without it these tests fail and say so.
"""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.trial import unittest

from twisted_phoenix.examples.hello_sockets import MAX_AGE, SALT
from twisted_phoenix.token import sign, verify

from ._server import TEST_SECRET, ChildFailed, require_node_modules, run_node_scenario, start_server

NODE_NAME = "phoenixjs@127.0.0.1"
CONFORMANCE_APP = "tests._apps:ConformanceEndpoint"


class WireFrame(NamedTuple):
    """One decoded text frame, with its text as sent."""

    join_ref: Any
    ref: Any
    topic: str
    event: str
    payload: Any
    text: str


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def server_frame(vsn: str, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> str:
    """The exact text Phoenix writes for this message (sorted keys; V1 never writes join_ref)."""
    if vsn.startswith("1."):
        return _dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})
    return _dumps([join_ref, ref, topic, event, payload])


def ok_reply(response: Any) -> dict[str, Any]:
    """The payload of an ok phx_reply."""
    return {"response": response, "status": "ok"}


class Observed:
    """What one phoenix.js scenario printed, with lookups for the assertions."""

    def __init__(self, events: list[dict[str, Any]], vsn: str) -> None:
        self.events = events
        self.vsn = vsn
        ends = [i for i, e in enumerate(events) if e["ev"] == "scenario_end"]
        #: Events before the client started its own disconnect.
        self.during = events[: ends[0]] if ends else events

    def of(self, ev: str, **fields: Any) -> list[dict[str, Any]]:
        """Events of kind ``ev`` (before the scenario's end) matching ``fields``."""
        return [e for e in self.during if e["ev"] == ev and all(e.get(k) == v for k, v in fields.items())]

    def reply(self, label: str) -> tuple[str, Any]:
        """(status, response) of the push labelled ``label``."""
        found = self.of("reply", label=label)
        assert len(found) == 1, f"expected one reply labelled {label!r}: {found}"
        return found[0]["status"], found[0]["response"]

    def joins(self, sock: str, topic: str) -> list[tuple[str, Any]]:
        """(status, response) of every join reply, rejoins included."""
        return [(e["status"], e["response"]) for e in self.of("join", sock=sock, topic=topic)]

    def join_refs(self, sock: str, topic: str) -> list[str]:
        """The client's join_ref at each join reply."""
        return [e["join_ref"] for e in self.of("join", sock=sock, topic=topic)]

    def pushes(self, sock: str, topic: str, event: str) -> list[Any]:
        """Payloads of the server pushes/broadcasts the channel handed to ``on(event)``."""
        return [e["payload"] for e in self.of("push", sock=sock, topic=topic, event=event)]

    def frames(self, sock: str, direction: str) -> list[WireFrame]:
        """Every text frame of ``sock`` in ``direction`` ("in" or "out"), decoded."""
        frames = []
        for e in self.events:
            if e["ev"] == "frame" and e["sock"] == sock and e["dir"] == direction and not e["binary"]:
                frames.append(self._decode(e["text"]))
        return frames

    def _decode(self, text: str) -> WireFrame:
        value = json.loads(text)
        if isinstance(value, list):
            join_ref, ref, topic, event, payload = value
        else:
            join_ref = value.get("join_ref")
            ref, topic, event, payload = value["ref"], value["topic"], value["event"], value["payload"]
        return WireFrame(join_ref, ref, topic, event, payload, text)

    def ref_of(self, sock: str, topic: str, event: str) -> str:
        """The ref of the one frame ``sock`` sent with this topic and event."""
        refs = [f.ref for f in self.frames(sock, "out") if f.topic == topic and f.event == event]
        assert len(refs) == 1, f"expected one {event} sent on {topic}: {refs}"
        return refs[0]

    def replies_to(self, sock: str, ref: str) -> list[WireFrame]:
        """phx_reply frames ``sock`` received for ``ref`` (till the client exited)."""
        return [f for f in self.frames(sock, "in") if f.event == "phx_reply" and f.ref == ref]


def token_for(user_id: Any, *, secret: str = TEST_SECRET, signed_at: float | None = None) -> str:
    """A token the demo's AuthSocket accepts (with the test servers' secret)."""
    return sign(secret, SALT, user_id, signed_at=signed_at)


class _PhoenixJSScenarios:
    """The tests, run once per serializer by the subclasses below."""

    vsn: str
    transport = "websocket"
    timeout = 60

    def setUp(self) -> None:
        try:
            require_node_modules("phoenix", "ws")
        except ChildFailed as e:
            self.fail(str(e))

    @defer.inlineCallbacks
    def scenario(
        self, name: str, *, app: bool = False, env: dict[str, str] | None = None, **options: Any
    ) -> Any:
        """Start a server, run scenario ``name`` against it; fire with (Observed, server)."""
        args = ["--name", NODE_NAME]
        if app:
            args += ["--endpoint", CONFORMANCE_APP]
        server = yield start_server(self, *args, env=env)
        run = yield run_node_scenario(
            self, name, server.url(), {"vsn": self.vsn, "transport": self.transport, **options}, server=server
        )
        return Observed(run.events, self.vsn), server

    def frame(self, join_ref: Any, ref: Any, topic: str, event: str, payload: Any) -> str:
        """The exact text the server must send for this message in this test's serializer."""
        return server_frame(self.vsn, join_ref, ref, topic, event, payload)

    def assertSocketStayedOpen(self, seen: Observed, sock: str) -> None:
        """``sock`` opened once and saw no error or close until the scenario ended."""
        self.assertEqual(len(seen.of("open", sock=sock)), 1, f"{sock} opened once")
        self.assertEqual(seen.of("error", sock=sock), [])
        self.assertEqual(seen.of("close", sock=sock), [])

    # -- /socket: PingChannel ------------------------------------------------------

    @defer.inlineCallbacks
    def test_ping_channel_events(self) -> Any:
        """PingChannel answers ping, ping:PHRASE and param_ping (ok/error) on ping and ping:*; pong never."""
        seen, _ = yield self.scenario("ping")
        self.assertEqual(seen.joins("a", "ping"), [("ok", {})])
        self.assertEqual(seen.reply("ping"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.reply("ping_phrase"), ("ok", {"ping": "hello world"}))
        self.assertEqual(seen.reply("param_ping_error"), ("error", {"reason": "You asked for this!"}))
        self.assertEqual(
            seen.reply("param_ping_ok"),
            ("ok", {"error": False, "nested": {"list": [1, 2.5, "é"], "none": None}}),
        )
        self.assertEqual(seen.joins("a", "ping:lobby"), [("ok", {})])
        self.assertEqual(seen.reply("lobby_ping"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.reply("lobby_phrase"), ("ok", {"ping": "lobby phrase"}))
        # pong: the 300 ms push timeout fired, and no reply ever came for its ref.
        self.assertEqual(seen.reply("pong")[0], "timeout")
        self.assertEqual(seen.replies_to("a", seen.ref_of("a", "ping", "pong")), [])
        # The wire text is Phoenix's: sorted keys, no whitespace, join_ref echoed (V2).
        (join_ref,) = seen.join_refs("a", "ping")
        ping_ref = seen.ref_of("a", "ping", "ping")
        self.assertEqual(
            [f.text for f in seen.replies_to("a", ping_ref)],
            [self.frame(join_ref, ping_ref, "ping", "phx_reply", ok_reply({"ping": "pong"}))],
        )
        self.assertSocketStayedOpen(seen, "a")

    @defer.inlineCallbacks
    def test_ding_stops_channel(self) -> Any:
        """ding replies ok {"msg": "shutting down"}, then phx_close closes the channel for good; the socket lives on."""
        seen, _ = yield self.scenario("ding")
        self.assertEqual(seen.reply("ding"), ("ok", {"msg": "shutting down"}))
        self.assertEqual(len(seen.of("chan_close", sock="a", topic="ping")), 1)
        (join_ref,) = seen.join_refs("a", "ping")
        ding_ref = seen.ref_of("a", "ping", "ding")
        ping_frames = [f.text for f in seen.frames("a", "in") if f.topic == "ping"]
        self.assertEqual(
            ping_frames[-2:],
            [
                self.frame(join_ref, ding_ref, "ping", "phx_reply", ok_reply({"msg": "shutting down"})),
                self.frame(join_ref, join_ref, "ping", "phx_close", {}),
            ],
        )
        # No rejoin: one phx_join for "ping" ever, and phoenix.js dropped the channel.
        joins = [f for f in seen.frames("a", "out") if f.topic == "ping" and f.event == "phx_join"]
        self.assertEqual(len(joins), 1)
        (state,) = seen.of("state", sock="a")
        self.assertEqual((state["state"], state["channels"]), ("closed", ["ping:other"]))
        self.assertEqual(seen.reply("other_ping"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.of("chan_error", sock="a"), [])
        self.assertSocketStayedOpen(seen, "a")

    @defer.inlineCallbacks
    def test_unhandled_event_crashes_channel(self) -> Any:
        """An unhandled event sends phx_error {"reason": "channel_crash"}; phoenix.js rejoins; the socket lives on."""
        seen, _ = yield self.scenario("crash")
        self.assertEqual(seen.of("chan_error", sock="a", topic="ping")[0]["payload"], {"reason": "channel_crash"})
        first, second = seen.join_refs("a", "ping")
        self.assertNotEqual(first, second)
        self.assertEqual(seen.joins("a", "ping"), [("ok", {}), ("ok", {})])
        self.assertIn(
            self.frame(first, first, "ping", "phx_error", {"reason": "channel_crash"}),
            [f.text for f in seen.frames("a", "in")],
        )
        self.assertEqual(seen.replies_to("a", seen.ref_of("a", "ping", "no_such_event")), [])
        self.assertEqual(seen.reply("ping_after_rejoin"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.reply("side_ping"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.of("chan_error", sock="a", topic="ping:side"), [])
        (state,) = seen.of("state", sock="a")
        self.assertEqual((state["state"], state["connected"]), ("joined", True))
        self.assertSocketStayedOpen(seen, "a")

    @defer.inlineCallbacks
    def test_broadcast_reaches_every_subscriber(self) -> Any:
        """broadcast pushes the payload as "broadcast" to every client on the topic, sender included; no reply."""
        seen, _ = yield self.scenario("broadcast")
        payload = {"body": "hi", "n": 1}
        expected = self.frame(None, None, "ping", "broadcast", payload)
        for sock in ("a", "b"):
            self.assertEqual(seen.pushes(sock, "ping", "broadcast"), [payload])
            self.assertEqual([f.text for f in seen.frames(sock, "in") if f.event == "broadcast"], [expected])
            self.assertSocketStayedOpen(seen, sock)
        self.assertEqual(seen.reply("broadcast")[0], "timeout")
        self.assertEqual(seen.replies_to("a", seen.ref_of("a", "ping", "broadcast")), [])

    @defer.inlineCallbacks
    def test_wildcard_join_rule(self) -> Any:
        """wild:A:B joins only when A and B are integers with B = 2A (else error {}); it answers ping."""
        seen, _ = yield self.scenario("wildcard")
        self.assertEqual(seen.joins("a", "wild:1:2"), [("ok", {})])
        self.assertEqual(seen.joins("a", "wild:21:42"), [("ok", {})])
        for topic in ("wild:1:3", "wild:a:b", "wild:1:2:4"):
            self.assertEqual(seen.joins("a", topic), [("error", {})], topic)
        self.assertEqual(seen.reply("wild_ping"), ("ok", {"ping": "pong"}))
        self.assertSocketStayedOpen(seen, "a")

    @defer.inlineCallbacks
    def test_heartbeat(self) -> Any:
        """Heartbeats every 100 ms each get {"status": "ok"} with their ref, and the connection stays open."""
        seen, _ = yield self.scenario("heartbeat")
        beats = [f for f in seen.frames("a", "out") if f.topic == "phoenix" and f.event == "heartbeat"]
        self.assertGreaterEqual(len(beats), 4)
        replies = {f.ref: f.text for f in seen.frames("a", "in") if f.topic == "phoenix"}
        for beat in beats[:4]:
            self.assertEqual(replies[beat.ref], self.frame(None, beat.ref, "phoenix", "phx_reply", ok_reply({})))
        self.assertEqual(seen.reply("ping_after_heartbeats"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.of("chan_error", sock="a"), [])
        self.assertSocketStayedOpen(seen, "a")

    # -- /auth_socket ----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_auth_socket(self) -> Any:
        """A signed token connects and joins only its own user:ID; bad, expired, forged or no tokens never connect."""
        bad_tokens = {
            "garbage": "garbage",
            "expired": token_for(42, signed_at=time.time() - 2 * MAX_AGE),
            "forged": token_for(42, secret="another secret key base, 64 characters long, not the server's"),
            "missing": None,
        }
        seen, server = yield self.scenario("auth", token=token_for(42), bad_tokens=bad_tokens)
        self.assertEqual(seen.joins("u42", "user:42"), [("ok", {})])
        self.assertEqual(seen.joins("u42", "user:43")[0], ("error", {"reason": "unauthorized"}))
        self.assertEqual(seen.reply("auth_ping"), ("ok", {"ping": "pong"}))
        self.assertSocketStayedOpen(seen, "u42")
        for name in bad_tokens:
            self.assertEqual(seen.of("open", sock=name), [], name)
            errors = seen.of("error", sock=name)
            self.assertGreaterEqual(len(errors), 2, name)
            self.assertIn("403", errors[0]["message"], name)
            self.assertGreaterEqual(len(seen.of("close", sock=name)), 2, name)
            self.assertEqual(seen.of("join", sock=name), [], name)
            self.assertEqual(seen.frames(name, "in"), [], name)
        output = server.output()
        self.assertIn("AuthSocket refused a connection: token expired", output)
        self.assertIn("AuthSocket refused a connection: token invalid", output)

    @defer.inlineCallbacks
    def test_recurring_tokens(self) -> Any:
        """RecurringChannel pushes new_token one RECURRING_MS after the join, then every RECURRING_MS; each verifies."""
        seen, _ = yield self.scenario("recurring", env={"RECURRING_MS": "200"}, token=token_for(42))
        self.assertEqual(seen.joins("u42", "recurring"), [("ok", {})])
        # The first token is not sent with the join: it comes a period later
        # (a lower bound only, so a slow machine cannot make this flaky).
        (joined,) = seen.of("join", sock="u42", topic="recurring")
        first = seen.of("push", sock="u42", topic="recurring", event="new_token")[0]
        self.assertGreaterEqual(first["t"] - joined["t"], 100)
        pushes = seen.pushes("u42", "recurring", "new_token")
        self.assertGreaterEqual(len(pushes), 2)
        for payload in pushes:
            result = verify(TEST_SECRET, SALT, payload["token"], max_age=MAX_AGE)
            self.assertTrue(result.ok, result.error)
            self.assertEqual(result.data, 42)
        (join_ref,) = seen.join_refs("u42", "recurring")
        frames = [f.text for f in seen.frames("u42", "in") if f.event == "new_token"]
        self.assertEqual(frames[:2], [self.frame(join_ref, None, "recurring", "new_token", p) for p in pushes[:2]])
        self.assertSocketStayedOpen(seen, "u42")

    # -- tests._apps: behaviours that need Endpoint.broadcast or auth_token --------------

    @defer.inlineCallbacks
    def test_request_ping_intercepted(self) -> Any:
        """request_ping comes out as send_ping with from_node and the join_ref; other broadcasts as [null,null,...]."""
        seen, _ = yield self.scenario("send_ping", app=True)
        self.assertEqual(seen.reply("request_ping"), ("ok", {}))
        payload = {"hello": "world", "from_node": NODE_NAME}
        self.assertEqual(seen.pushes("a", "ping", "send_ping"), [payload])
        (join_ref,) = seen.join_refs("a", "ping")
        texts = [f.text for f in seen.frames("a", "in") if f.topic == "ping" and f.event != "phx_reply"]
        self.assertEqual(
            texts,
            [
                self.frame(join_ref, None, "ping", "send_ping", payload),
                self.frame(None, None, "ping", "news", {"headline": "extra"}),
            ],
        )
        self.assertEqual(seen.pushes("a", "ping", "news"), [{"headline": "extra"}])
        self.assertSocketStayedOpen(seen, "a")

    @defer.inlineCallbacks
    def test_disconnect_broadcast(self) -> Any:
        """A "disconnect" broadcast to auth_socket:42 closes that user's connections with 1001; others stay."""
        seen, _ = yield self.scenario("disconnect", app=True, token42=token_for(42), token43=token_for(43))
        self.assertEqual(seen.reply("disconnect"), ("ok", {}))
        (close,) = seen.of("close", sock="u42")
        # WebSocket: the server's close frame; long-poll: phoenix.js's own
        # "session_gone" when its waiting poll hears 410.
        self.assertEqual(close["code"], 3410 if self.transport == "longpoll" else 1001)
        # No Phoenix message before the close.
        self.assertEqual([f for f in seen.frames("u42", "in") if f.event in ("phx_close", "phx_error")], [])
        # phoenix.js 1.8.16 reconnects after a close it did not start, and rejoins.
        self.assertEqual(len(seen.of("open", sock="u42")), 2)
        self.assertEqual(seen.joins("u42", "ping"), [("ok", {}), ("ok", {})])
        # u43 got an "other" event on its id topic and the disconnect of u42: no effect.
        self.assertEqual(seen.reply("u43_ping_after_other_event"), ("ok", {"ping": "pong"}))
        self.assertEqual(seen.reply("u43_ping_after_disconnect"), ("ok", {"ping": "pong"}))
        self.assertSocketStayedOpen(seen, "u43")

    @defer.inlineCallbacks
    def test_auth_token_subprotocol(self) -> Any:
        """phoenix.js's authToken reaches connect_info["auth_token"] (WebSocket: the "phoenix" subprotocol is picked)."""
        seen, _ = yield self.scenario(
            "auth_token", app=True, token=token_for(7),
            forged_token=token_for(7, secret="another secret key base, 64 characters long, not the server's"),
        )
        if self.transport == "websocket":
            self.assertEqual(seen.of("upgrade", sock="t7")[0]["protocol"], "phoenix")
        self.assertEqual(seen.joins("t7", "whoami"), [("ok", {"user_id": 7})])
        self.assertSocketStayedOpen(seen, "t7")
        for name in ("anonymous", "forged"):
            self.assertEqual(seen.of("open", sock=name), [], name)
            self.assertGreaterEqual(len(seen.of("error", sock=name)), 2, name)


class PhoenixJSV1Tests(_PhoenixJSScenarios, unittest.TestCase):
    """phoenix.js with the V1 JSON-object serializer (``vsn=1.0.0``)."""

    vsn = "1.0.0"


class PhoenixJSV2Tests(_PhoenixJSScenarios, unittest.TestCase):
    """phoenix.js with its default V2 serializer (``vsn=2.0.0``)."""

    vsn = "2.0.0"


class PhoenixJSLongPollV1Tests(_PhoenixJSScenarios, unittest.TestCase):
    """phoenix.js's LongPoll transport with the V1 serializer."""

    vsn = "1.0.0"
    transport = "longpoll"


class PhoenixJSLongPollV2Tests(_PhoenixJSScenarios, unittest.TestCase):
    """phoenix.js's LongPoll transport with its default V2 serializer."""

    vsn = "2.0.0"
    transport = "longpoll"
