"""
Tests for L{twisted_phoenix.channel} and L{twisted_phoenix._channelserver}:
what a channel's callbacks may return and what each produces (protocol notes
sections 3.3, 3.4 and 4), run in memory with L{twisted_phoenix.testing}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import Broadcast, Channel, Result, Socket, Stop, error, ok
from twisted_phoenix.channel import is_normal_reason
from twisted_phoenix.message import Message, Reply
from twisted_phoenix.testing import ChannelTest

CRASH = {"reason": "channel_crash"}


def _reason(value: Any) -> Any:
    """JSON has no tuples: a list from a payload becomes a tuple reason."""
    return tuple(value) if isinstance(value, list) else value


class ScriptChannel(Channel):
    """
    A channel whose behaviour each test picks with its join payload and
    events; every callback is recorded in its socket's ``events``.
    """

    intercept = ["intercepted", "stop_out", "bad_out", "plain_out"]

    def _record(self, *event: Any) -> None:
        self.socket.events.append(event)

    def join(self, topic: str, payload: Any) -> Any:
        self._record("join", topic, payload)
        if payload.get("push"):
            self.push("too_early", {})
        if payload.get("broadcast"):
            self.broadcast("too_early", {})
        if payload.get("bad"):
            return "nope"
        if payload.get("status"):
            return Result(payload["status"], {})
        if "send_after" in payload:
            self.socket.timers.append(self.send_after(payload["send_after"], "tick"))
        if "assign" in payload:
            self.assigns["mine"] = payload["assign"]
        if "send" in payload:
            self.send(payload["send"])
        if "subscribe" in payload:
            self.subscribe(payload["subscribe"])
        return None

    def handle_in(self, event: str, payload: Any) -> Any:
        self._record("in", event, payload)
        if event == "reply":
            return Result(payload["status"], payload["response"])
        if event == "reply_status_only":
            return ok()
        if event == "noreply":
            return None
        if event == "stop":
            return Stop(_reason(payload["reason"]))
        if event == "stop_reply":
            return Stop(_reason(payload["reason"]), ok({"bye": 1}))
        if event == "crash":
            raise ZeroDivisionError("handle_in")
        if event == "bad":
            return "garbage"
        if event == "defer":
            d: Deferred[Any] = Deferred()
            self.socket.pending.append(d)
            return d
        if event == "socket_ref":
            self.socket.refs.append(self.socket_ref())
            return None
        if event == "send_after":
            self.socket.timers.append(self.send_after(payload["seconds"], payload["message"]))
            return None
        if event == "subscribe":
            self.subscribe(payload["topic"])
            return None
        if event == "unsubscribe":
            self.unsubscribe(payload["topic"])
            return None
        if event == "broadcast":
            self.broadcast(payload["event"], payload["payload"])
            return None
        if event == "broadcast_from":
            self.broadcast_from(payload["event"], payload["payload"])
            return None
        if event == "binary_event":
            self.push("binary_event", b"\x00\x01")
            return ok(b"\x01\x02\x03\x04")
        if event == "long_event":
            self.push("e" * 256, b"")
            return None
        if event == "unencodable":
            self.push("bad_push", {"set": {1, 2}})
            self.push("good_push", {})
            return ok({"object": object()})
        if event == "assigns":
            return ok(dict(self.assigns))
        if event == "send":
            self.send(payload["message"])
            self.push("sent", {})
            return None
        return super().handle_in(event, payload)

    def handle_info(self, message: Any) -> Any:
        self._record("info", message)
        if message == "stop":
            return Stop("shutdown")
        if message == "bad":
            return 42
        if message == "crash":
            raise ZeroDivisionError("handle_info")
        if message == "socket_ref":
            self.socket_ref()
        if message == "tick":
            self.push("tick", {})
        return None

    def handle_out(self, event: str, payload: Any) -> Any:
        self._record("out", event, payload)
        if event == "stop_out":
            return Stop("normal")
        if event == "bad_out":
            return "garbage"
        if event == "plain_out":
            return super().handle_out(event, payload)
        self.push(event, {**payload, "seen_by": self.join_ref})
        return None

    def terminate(self, reason: Any) -> Any:
        self._record("terminate", reason)
        if self.socket.terminate_fails == "raise":
            raise ValueError("terminate")
        if self.socket.terminate_fails == "deferred":
            return fail(ValueError("terminate"))
        return None


class PlainChannel(Channel):
    """A channel that only overrides join."""

    def join(self, topic: str, payload: Any) -> None:
        return None


class ScriptSocket(Socket):
    """Routes everything to L{ScriptChannel}, and records."""

    channels = {"plain": PlainChannel, "*": ScriptChannel}

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.events: list[Any] = []
        self.pending: list[Deferred[Any]] = []
        self.refs: list[Any] = []
        self.timers: list[Any] = []
        self.terminate_fails: str | None = None


class ChannelTestCase(SynchronousTestCase):
    """Common setup: one client joined to C{room:1} with join_ref "11"."""

    def setUp(self) -> None:
        self.harness = ChannelTest(node_name="n1@host")
        self.client = self.harness.socket(ScriptSocket, assigns={"user": 7})
        self.join_reply = self.successResultOf(self.client.join("room:1", join_ref="11"))
        self._seen = len(self.client.messages)

    def new(self) -> list[Any]:
        """What the client received since the last call."""
        messages = self.client.messages[self._seen :]
        self._seen = len(self.client.messages)
        return messages

    def events(self, kind: str) -> list[Any]:
        """The recorded callbacks of one kind."""
        return [e[1:] for e in self.client.socket.events if e[0] == kind]

    def close(self) -> Message:
        return Message("room:1", "phx_close", {}, "11", "11")

    def error(self) -> Message:
        return Message("room:1", "phx_error", CRASH, "11", "11")


class HandleInTests(ChannelTestCase):
    """
    Tests for what C{handle_in} returns.
    """

    def test_noReply(self) -> None:
        """None sends nothing."""
        self.client.push("room:1", "noreply", {"a": 1})
        self.assertEqual(self.new(), [])
        self.assertEqual(self.events("in"), [("noreply", {"a": 1})])

    def test_replies(self) -> None:
        """A Result replies with its status, any string, and response."""
        refs = [
            self.client.push("room:1", "reply", {"status": status, "response": {"s": status}})
            for status in ("ok", "error", "custom")
        ]
        ref4 = self.client.push("room:1", "reply_status_only")
        self.assertEqual(
            self.new(),
            [Reply("room:1", s, {"s": s}, r, "11") for s, r in zip(("ok", "error", "custom"), refs)]
            + [Reply("room:1", "ok", {}, ref4, "11")],
        )

    def test_binary(self) -> None:
        """A binary push gets a binary reply and a binary push carrying the join_ref."""
        self.client.send_frame(bytes.fromhex("000201060c") + b"112room:1" + b"binary_event\x01\x02", True)
        self.assertEqual(
            [(f.binary, f.data) for f in self.client.frames[-2:]],
            [
                (True, bytes.fromhex("0002060c") + b"11room:1binary_event\x00\x01"),
                (True, bytes.fromhex("0102010602") + b"112room:1ok\x01\x02\x03\x04"),
            ],
        )
        self.assertEqual(self.events("in"), [("binary_event", b"\x01\x02")])

    def test_binaryV1ReplyAndPushFail(self) -> None:
        """
        Under V1 a binary push cannot be encoded and is dropped, and a
        binary reply becomes the error "reply crashed"; both are logged and
        the channel carries on.
        """
        client = self.harness.socket(ScriptSocket, vsn="1.0.0")
        self.successResultOf(client.join("room:1"))
        ref = client.push("room:1", "binary_event", {})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 2)
        client.assert_reply(ref, "error", {"reason": "reply crashed"})
        client.refute_push("binary_event")
        client.refute_push("phx_error")
        ref = client.push("room:1", "reply", {"status": "ok", "response": {"still": "here"}})
        client.assert_reply(ref, "ok", {"still": "here"})

    def test_fieldTooLongDropped(self) -> None:
        """A binary push with a field over 255 bytes is dropped and logged; the channel lives."""
        self.client.push("room:1", "long_event", {})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.new(), [])
        self.assertIn("room:1", self.client.session.channels)

    def test_stopNormalReasons(self) -> None:
        """Stop with normal, shutdown or ("shutdown", x) sends phx_close, then terminate runs."""
        for reason in ("normal", "shutdown", ["shutdown", "bye"]):
            self.successResultOf(self.client.join("room:1", join_ref="11"))
            self.new()
            self.client.push("room:1", "stop", {"reason": reason})
            self.assertEqual(self.new(), [self.close()])
            self.assertEqual(self.events("terminate")[-1], (_reason(reason),))
            self.assertEqual(self.client.session.channels, {})

    def test_stopOtherReason(self) -> None:
        """Stop with any other reason runs terminate, then sends phx_error."""
        self.client.push("room:1", "stop", {"reason": "boom"})
        self.assertEqual(self.new(), [self.error()])
        self.assertEqual(self.events("terminate"), [("boom",)])
        self.assertEqual(self.client.session.channels, {})

    def test_stopWithReply(self) -> None:
        """Stop carrying a reply sends the reply first, then phx_close."""
        ref = self.client.push("room:1", "stop_reply", {"reason": "normal"})
        self.assertEqual(self.new(), [Reply("room:1", "ok", {"bye": 1}, ref, "11"), self.close()])

    def test_stopWithReplyAbnormal(self) -> None:
        """Stop with a reply and an abnormal reason: reply, then phx_error."""
        ref = self.client.push("room:1", "stop_reply", {"reason": "boom"})
        self.assertEqual(self.new(), [Reply("room:1", "ok", {"bye": 1}, ref, "11"), self.error()])

    def test_crash(self) -> None:
        """An exception sends phx_error [jr, jr] channel_crash; terminate gets the Failure."""
        self.client.push("room:1", "crash", {})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.new(), [self.error()])
        [(reason,)] = self.events("terminate")
        self.assertIsInstance(reason, Failure)
        self.assertTrue(reason.check(ZeroDivisionError))

    def test_crashDropsQueuedMessages(self) -> None:
        """Messages queued behind a crashing callback are dropped with the channel."""
        self.client.push("room:1", "defer", {})
        self.client.push("room:1", "reply", {"status": "ok", "response": {}})
        self.client.socket.pending[0].errback(ZeroDivisionError())
        self.flushLoggedErrors(ZeroDivisionError)
        self.assertEqual(self.new(), [self.error()])
        self.assertEqual([e[0] for e in self.events("in")], ["defer"])

    def test_badReturn(self) -> None:
        """A return value handle_in may not give crashes the channel with a logged TypeError."""
        self.client.push("room:1", "bad", {})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.new(), [self.error()])

    def test_unhandledEvent(self) -> None:
        """The default handle_in raises, which crashes the channel."""
        self.client.push("room:1", "unknown", {})
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        self.assertEqual(self.new(), [self.error()])

    def test_deferredSerializes(self) -> None:
        """A pending handle_in holds that channel's next message, not other channels'."""
        self.successResultOf(self.client.join("room:2", join_ref="12"))
        self.new()
        ref1 = self.client.push("room:1", "defer", {})
        ref2 = self.client.push("room:1", "reply", {"status": "ok", "response": {"n": 2}})
        ref3 = self.client.push("room:2", "reply", {"status": "ok", "response": {"n": 3}})
        self.assertEqual(self.new(), [Reply("room:2", "ok", {"n": 3}, ref3, "12")])
        self.assertEqual([e[0] for e in self.events("in")], ["defer", "reply"])
        self.client.socket.pending[0].callback(ok({"n": 1}))
        self.assertEqual(
            self.new(),
            [Reply("room:1", "ok", {"n": 1}, ref1, "11"), Reply("room:1", "ok", {"n": 2}, ref2, "11")],
        )

    def test_deferredChain(self) -> None:
        """A queued handle_in that returns a pending Deferred in turn holds the messages behind it."""
        self.client.push("room:1", "defer", {})
        self.client.push("room:1", "defer", {})
        ref = self.client.push("room:1", "reply", {"status": "ok", "response": {}})
        first, = self.client.socket.pending
        first.callback(None)
        self.assertEqual(len(self.client.socket.pending), 2)
        self.client.refute_reply(ref)
        self.assertEqual([e[0] for e in self.events("in")], ["defer", "defer"])
        self.client.socket.pending[1].callback(None)
        self.client.assert_reply(ref, "ok", {})

    def test_deferredStop(self) -> None:
        """A Deferred firing with Stop stops the channel."""
        self.client.push("room:1", "defer", {})
        self.client.socket.pending[0].callback(Stop("normal"))
        self.assertEqual(self.new(), [self.close()])

    def test_deferredFailure(self) -> None:
        """A failing Deferred crashes the channel."""
        self.client.push("room:1", "defer", {})
        self.client.socket.pending[0].errback(ZeroDivisionError())
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.new(), [self.error()])

    def test_deferredBadResult(self) -> None:
        """A Deferred firing with a bad value crashes the channel with a TypeError."""
        self.client.push("room:1", "defer", {})
        self.client.socket.pending[0].callback(object())
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.new(), [self.error()])

    def test_deferredAfterDuplicateJoin(self) -> None:
        """A channel replaced by a duplicate join sends nothing when its pending handle_in ends."""
        self.client.push("room:1", "defer", {})
        self.successResultOf(self.client.join("room:1", join_ref="12"))
        self.new()
        self.client.socket.pending[0].callback(ok({"late": True}))
        self.assertEqual(self.new(), [])

    def test_leaveWaitsForPending(self) -> None:
        """A leave queued behind a pending handle_in is answered after it."""
        ref1 = self.client.push("room:1", "defer", {})
        ref2 = self.client.leave("room:1")
        self.assertEqual(self.new(), [])
        self.client.socket.pending[0].callback(None)
        self.assertEqual(
            self.new(), [Reply("room:1", "ok", {}, ref2, "11"), self.close()]
        )
        self.client.refute_reply(ref1)

    def test_assigns(self) -> None:
        """A channel starts with a copy of the socket's assigns; its changes stay its own."""
        self.successResultOf(self.client.join("room:2", {"assign": 1}))
        self.client.push("room:1", "assigns", {})
        ref = self.client.push("room:2", "assigns", {})
        self.assertEqual(self.client.replies[-2].payload, {"user": 7})
        self.client.assert_reply(ref, "ok", {"user": 7, "mine": 1})
        self.assertEqual(self.client.socket.assigns, {"user": 7})

    def test_channelAttributes(self) -> None:
        """A channel knows its topic, join_ref, socket and endpoint."""
        channel = self.client.session.channels["room:1"].channel
        self.assertEqual((channel.topic, channel.join_ref), ("room:1", "11"))
        self.assertIs(channel.socket, self.client.socket)
        self.assertIs(channel.endpoint, self.harness.endpoint)

    def test_sendRunsAfterCallback(self) -> None:
        """send() delivers to handle_info after the current callback, in order."""
        self.client.push("room:1", "send", {"message": "tick"})
        self.assertEqual(
            self.new(),
            [Message("room:1", "sent", {}, None, "11"), Message("room:1", "tick", {}, None, "11")],
        )


class SocketRefTests(ChannelTestCase):
    """
    Tests for C{socket_ref} and late replies.
    """

    def test_lateReply(self) -> None:
        """A reply through a socket_ref goes out after handle_in returned, with jr and ref."""
        ref = self.client.push("room:1", "socket_ref", {})
        self.assertEqual(self.new(), [])
        [socket_ref] = self.client.socket.refs
        channel = self.client.session.channels["room:1"].channel
        channel.reply(socket_ref, ok({"late": 1}))
        channel.reply(socket_ref, error({"again": 2}))
        self.assertEqual(
            self.new(),
            [
                Reply("room:1", "ok", {"late": 1}, ref, "11"),
                Reply("room:1", "error", {"again": 2}, ref, "11"),
            ],
        )

    def test_lateReplyAfterLeave(self) -> None:
        """A late reply goes out even after the channel left."""
        ref = self.client.push("room:1", "socket_ref", {})
        channel = self.client.session.channels["room:1"].channel
        self.client.leave("room:1")
        self.new()
        channel.reply(self.client.socket.refs[0], ok())
        self.assertEqual(self.new(), [Reply("room:1", "ok", {}, ref, "11")])

    def test_lateReplyNeedsResult(self) -> None:
        """reply() refuses anything but a Result."""
        self.client.push("room:1", "socket_ref", {})
        channel = self.client.session.channels["room:1"].channel
        self.assertRaises(TypeError, channel.reply, self.client.socket.refs[0], {"status": "ok"})

    def test_outsideHandleIn(self) -> None:
        """socket_ref outside handle_in raises, crashing the channel."""
        self.client.session.channels["room:1"].channel.send("socket_ref")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.new(), [self.error()])


class EncodeFailureTests(ChannelTestCase):
    """
    Tests for replies and pushes the serializer cannot encode: an error
    for that message only, logged; the channel carries on.
    """

    def test_replyAndPush(self) -> None:
        """
        An unencodable push is dropped, the next push goes out, and an
        unencodable reply becomes the error "reply crashed" for its ref.
        """
        ref = self.client.push("room:1", "unencodable", {})
        self.assertEqual(
            self.new(),
            [
                Message("room:1", "good_push", {}, None, "11"),
                Reply("room:1", "error", {"reason": "reply crashed"}, ref, "11"),
            ],
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 2)
        ref = self.client.push("room:1", "reply_status_only", {})
        self.client.assert_reply(ref, "ok")

    def test_lateReply(self) -> None:
        """An unencodable late reply becomes the error "reply crashed" too."""
        ref = self.client.push("room:1", "socket_ref", {})
        channel = self.client.session.channels["room:1"].channel
        channel.reply(self.client.socket.refs[0], ok({"late": object()}))
        self.assertEqual(self.new(), [Reply("room:1", "error", {"reason": "reply crashed"}, ref, "11")])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_interceptedBroadcast(self) -> None:
        """An intercepted broadcast that handle_out cannot push is dropped for that client only."""
        self.harness.broadcast("room:1", "intercepted", {"object": object()})
        self.assertEqual(self.new(), [])
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertIn("room:1", self.client.session.channels)
        self.harness.broadcast("room:1", "intercepted", {"a": 1})
        self.assertEqual(
            self.new(), [Message("room:1", "intercepted", {"a": 1, "seen_by": "11"}, None, "11")]
        )

    def test_logged(self) -> None:
        """The log names the serializer, the kind, the topic and what became of it."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.client.push("room:1", "unencodable", {})
        self.flushLoggedErrors(TypeError)
        self.assertEqual(
            [formatEvent(e) for e in events if "cannot encode" in formatEvent(e)],
            [
                "V2JSONSerializer cannot encode a push 'bad_push' on 'room:1'; dropped",
                "V2JSONSerializer cannot encode a reply on 'room:1'; answered with an error",
            ],
        )


class JoinTests(SynchronousTestCase):
    """
    Tests for what C{join} may do and return.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.client = self.harness.socket(ScriptSocket)

    def assertCrashed(self, payload: Any, exception: type[Exception]) -> None:
        reply = self.successResultOf(self.client.join("room:1", payload))
        self.assertEqual((reply.status, reply.payload), ("error", {"reason": "join crashed"}))
        self.assertEqual(len(self.flushLoggedErrors(exception)), 1)
        self.assertEqual(self.client.pushes, [])
        self.assertEqual(self.client.session.channels, {})
        self.assertNotIn("terminate", [e[0] for e in self.client.socket.events])

    def test_pushInJoin(self) -> None:
        """push inside join raises, so the join crashes."""
        self.assertCrashed({"push": True}, RuntimeError)

    def test_broadcastInJoin(self) -> None:
        """broadcast inside join raises, so the join crashes and nothing is broadcast."""
        recorder = self.harness.subscribe("room:1")
        self.assertCrashed({"broadcast": True}, RuntimeError)
        self.assertEqual(recorder.broadcasts, [])

    def test_badReturn(self) -> None:
        """join returning something else than None, ok() or error() crashes it."""
        self.assertCrashed({"bad": True}, TypeError)

    def test_otherStatus(self) -> None:
        """join returning a Result of another status crashes it."""
        self.assertCrashed({"status": "custom"}, TypeError)

    def test_defaultJoin(self) -> None:
        """A channel without join refuses every join as crashed."""

        class NoJoin(Channel):
            pass

        class NoJoinSocket(Socket):
            channels = {"x": NoJoin}

        client = self.harness.socket(NoJoinSocket)
        self.assertEqual(self.successResultOf(client.join("x")).payload, {"reason": "join crashed"})
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)

    def test_plainChannelDefaults(self) -> None:
        """A channel with only join crashes on events and logs unexpected info."""
        self.successResultOf(self.client.join("plain"))
        server = self.client.session.channels["plain"]
        server.channel.send("hello")
        self.assertEqual(self.client.pushes, [])
        self.client.push("plain", "ev", {})
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        self.client.assert_push("phx_error", CRASH)


class PreparingAdapter:
    """
    A PubSub adapter that holds every join's topic (``prepare_interest``)
    until the test releases it, except the topics in ``known``.
    """

    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.cancelled: list[str] = []
        self.known: set[str] = set()
        self.waits: dict[str, list[Deferred[None]]] = {}

    def broadcast(self, message: Broadcast) -> None:
        pass

    def direct_broadcast(self, node: str, message: Broadcast) -> bool:
        return False

    def prepare_interest(self, topic: str) -> Deferred[None] | None:
        self.prepared.append(topic)
        if topic in self.known:
            return None
        d: Deferred[None] = Deferred(lambda d: self.cancelled.append(topic))
        self.waits.setdefault(topic, []).append(d)
        return d

    def release(self, topic: str) -> None:
        self.known.add(topic)
        for d in self.waits.pop(topic):
            d.callback(None)


class JoinPrepareTests(SynchronousTestCase):
    """
    A join waits for PubSub.prepare before it subscribes and replies
    (interest routing: the other nodes must know first).
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.adapter = PreparingAdapter()
        self.pubsub = self.harness.endpoint.pubsub
        self.pubsub.adapter = self.adapter  # type: ignore[assignment]
        self.client = self.harness.socket(ScriptSocket)

    def test_replyWaits(self) -> None:
        """No reply and no subscription until the topic is prepared; then the reply, then broadcasts."""
        reply = self.client.join("room:1")
        self.assertEqual(self.adapter.prepared, ["room:1"])
        self.assertNoResult(reply)
        self.assertEqual(self.pubsub.subscribers("room:1"), ())
        self.assertEqual(self.harness.endpoint.metrics.channels, {})
        self.harness.broadcast("room:1", "early", {})
        self.adapter.release("room:1")
        self.assertEqual(self.successResultOf(reply).status, "ok")
        self.assertEqual(len(self.pubsub.subscribers("room:1")), 1)
        self.assertEqual(self.harness.endpoint.metrics.channels, {ScriptChannel: 1})
        self.harness.broadcast("room:1", "late", {})
        self.assertEqual([type(m).__name__ for m in self.client.messages], ["Reply", "Broadcast"])
        self.client.assert_broadcast("late", {})

    def test_knownTopic(self) -> None:
        """A topic the adapter has nothing to wait for: the reply at once, as without an adapter."""
        self.adapter.known.add("room:1")
        self.assertEqual(self.successResultOf(self.client.join("room:1")).status, "ok")
        self.assertEqual(self.adapter.prepared, ["room:1"])

    def test_errorJoinNotPrepared(self) -> None:
        """A join refused by the channel prepares nothing."""
        self.assertEqual(self.successResultOf(self.client.join("room:1", {"status": "error"})).status, "error")
        self.assertEqual(self.adapter.prepared, [])

    def test_framesWait(self) -> None:
        """Frames behind the waiting join wait for it, as behind any pending join."""
        reply = self.client.join("room:1")
        ref = self.client.push("room:1", "reply", {"status": "ok", "response": {"n": 1}})
        self.assertEqual(self.client.messages, [])
        self.assertEqual(self.client.socket.events, [("join", "room:1", {})])
        self.adapter.release("room:1")
        self.successResultOf(reply)
        self.client.assert_reply(ref, "ok", {"n": 1})
        self.assertEqual([m.ref for m in self.client.replies], ["1", ref])

    def test_sentInJoin(self) -> None:
        """What the channel sent itself in join (presence's pattern) is handled after the reply."""
        reply = self.client.join("room:1", {"send": "tick"})
        self.assertEqual(self.client.socket.events, [("join", "room:1", {"send": "tick"})])
        self.adapter.release("room:1")
        self.successResultOf(reply)
        self.assertEqual(self.client.socket.events[1:], [("info", "tick")])
        self.assertEqual([type(m).__name__ for m in self.client.messages], ["Reply", "Message"])
        self.client.assert_push("tick", {})

    def test_timerWhileWaiting(self) -> None:
        """A send_after that fires while the join waits is handled once joined."""
        reply = self.client.join("room:1", {"send_after": 1})
        self.harness.advance(1)
        self.assertEqual(self.client.messages, [])
        self.adapter.release("room:1")
        self.successResultOf(reply)
        self.client.assert_push("tick", {})

    def test_otherTopicsOfTheJoin(self) -> None:
        """Topics the channel subscribed to in join are prepared too: the reply waits for all."""
        reply = self.client.join("room:1", {"subscribe": "news"})
        self.assertEqual(sorted(self.adapter.prepared), ["news", "room:1"])
        self.adapter.release("room:1")
        self.assertNoResult(reply)
        self.adapter.release("news")
        self.successResultOf(reply)
        self.harness.broadcast("news", "headline", {})
        self.assertEqual(self.client.socket.events[-1], ("info", Broadcast("news", "headline", {})))

    def test_closedWhileWaiting(self) -> None:
        """The connection closes while the join waits: the wait is cancelled, never subscribed, no terminate."""
        reply = self.client.join("room:1")
        self.client.close()
        self.assertEqual(self.adapter.cancelled, ["room:1"])
        self.assertNoResult(reply)
        self.assertEqual(self.pubsub.subscribers("room:1"), ())
        self.assertEqual(self.pubsub.topics(), [])
        self.assertEqual(self.client.session.channels, {})
        self.assertEqual(self.harness.endpoint.metrics.channels, {})
        self.assertEqual([e[0] for e in self.client.socket.events], ["join"])
        self.assertEqual(self.client.connection.frames, [])

    def test_duplicateJoinWhileWaiting(self) -> None:
        """A second join of the topic while the first waits is queued; then it replaces the first, as today."""
        first = self.client.join("room:1")
        second = self.client.join("room:1")
        self.adapter.release("room:1")
        self.assertEqual(self.successResultOf(first).status, "ok")
        self.assertEqual(self.successResultOf(second).status, "ok")
        self.client.assert_push("phx_close", {})
        self.assertEqual(len(self.pubsub.subscribers("room:1")), 1)
        self.assertEqual(self.harness.endpoint.metrics.channels, {ScriptChannel: 1})


class JoinPreparePresenceTests(SynchronousTestCase):
    """The demo's presence channel (track after a send to self in join) with a join that waits."""

    def test_presenceAfterReply(self) -> None:
        """The reply, then presence_state, then the diff of its own join, as without a wait."""
        from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket

        harness = ChannelTest(HelloSocketsEndpoint, secret_key_base="s" * 64)
        adapter = PreparingAdapter()
        harness.endpoint.pubsub.adapter = adapter  # type: ignore[assignment]
        client = self.successResultOf(harness.connect(UserSocket))
        assert client is not None
        reply = client.join("tracked", {"user_id": "u1"})
        self.assertEqual(client.messages, [])
        self.assertEqual(harness.endpoint.presence.list("tracked"), {})
        adapter.release("tracked")
        self.assertEqual(self.successResultOf(reply).status, "ok")
        self.assertEqual([m.event for m in client.messages[1:]], ["presence_state", "presence_diff"])
        self.assertIn("u1", harness.endpoint.presence.list("tracked"))


class TimerTests(ChannelTestCase):
    """
    Tests for C{send_after}: time is the endpoint's reactor.
    """

    def test_fires(self) -> None:
        """send_after delivers to handle_info once the clock reaches the delay."""
        self.client.push("room:1", "send_after", {"seconds": 5, "message": "tick"})
        self.harness.advance(4.9)
        self.assertEqual(self.new(), [])
        self.harness.advance(0.1)
        self.assertEqual(self.new(), [Message("room:1", "tick", {}, None, "11")])
        self.assertFalse(self.client.socket.timers[0].active())

    def test_cancel(self) -> None:
        """A cancelled timer delivers nothing; cancelling twice is fine."""
        self.client.push("room:1", "send_after", {"seconds": 5, "message": "tick"})
        timer = self.client.socket.timers[0]
        self.assertTrue(timer.active())
        timer.cancel()
        timer.cancel()
        self.harness.advance(10)
        self.assertEqual((self.new(), self.events("info")), ([], []))

    def test_cancelledOnLeave(self) -> None:
        """Timers end with the channel: no handle_info after a leave."""
        self.client.push("room:1", "send_after", {"seconds": 5, "message": "tick"})
        self.client.leave("room:1")
        self.assertFalse(self.client.socket.timers[0].active())
        self.harness.advance(10)
        self.assertEqual(self.events("info"), [])
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])  # type: ignore[attr-defined]

    def test_cancelledOnCrash(self) -> None:
        """Timers end when the channel crashes."""
        self.client.push("room:1", "send_after", {"seconds": 5, "message": "tick"})
        self.client.push("room:1", "crash", {})
        self.flushLoggedErrors(ZeroDivisionError)
        self.harness.advance(10)
        self.assertEqual(self.events("info"), [])

    def test_cancelledOnClose(self) -> None:
        """Timers end when the connection closes."""
        self.client.push("room:1", "send_after", {"seconds": 5, "message": "tick"})
        self.client.close()
        self.harness.advance(10)
        self.assertEqual(self.events("info"), [])

    def test_setInJoin(self) -> None:
        """A timer set inside join fires after the join."""
        self.successResultOf(self.client.join("room:2", {"send_after": 1}, join_ref="12"))
        self.harness.advance(1)
        self.client.assert_push("tick", {}, topic="room:2")

    def test_timerWaitsForPendingWork(self) -> None:
        """A timer firing while handle_in is pending waits its turn in the mailbox."""
        self.client.push("room:1", "defer", {})
        channel = self.client.session.channels["room:1"].channel
        channel.send_after(0, "tick")
        self.harness.advance(0)
        self.assertEqual(self.new(), [])
        self.client.socket.pending[0].callback(None)
        self.assertEqual(self.new(), [Message("room:1", "tick", {}, None, "11")])

    def test_infoStop(self) -> None:
        """handle_info returning Stop("shutdown") closes the channel."""
        self.client.push("room:1", "send_after", {"seconds": 1, "message": "stop"})
        self.harness.advance(1)
        self.assertEqual(self.new(), [self.close()])
        self.assertEqual(self.events("terminate"), [("shutdown",)])

    def test_infoBadReturn(self) -> None:
        """handle_info returning something else than None or Stop crashes with a TypeError."""
        self.client.push("room:1", "send_after", {"seconds": 1, "message": "bad"})
        self.harness.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.new(), [self.error()])

    def test_infoCrash(self) -> None:
        """handle_info raising crashes the channel."""
        self.client.push("room:1", "send_after", {"seconds": 1, "message": "crash"})
        self.harness.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.new(), [self.error()])


class BroadcastTests(ChannelTestCase):
    """
    Tests for broadcasts: the fastlane, intercepts and other topics.
    """

    def setUp(self) -> None:
        super().setUp()
        self.other = self.harness.socket(ScriptSocket)
        self.successResultOf(self.other.join("room:1", join_ref="21"))
        self.other.clear()

    def test_fastlane(self) -> None:
        """A broadcast not intercepted goes out as [null, null, ...], the same Frame to everyone."""
        self.harness.broadcast("room:1", "shout", {"a": 1})
        self.assertEqual(self.new(), [Broadcast("room:1", "shout", {"a": 1})])
        self.assertEqual(self.client.frames[-1].data, b'[null,null,"room:1","shout",{"a":1}]')
        self.assertIs(self.client.frames[-1], self.other.frames[-1])
        self.assertEqual(self.events("out"), [])

    def test_intercept(self) -> None:
        """An intercepted broadcast runs handle_out, which re-pushes with each channel's join_ref."""
        self.harness.broadcast("room:1", "intercepted", {"a": 1})
        self.assertEqual(
            self.new(), [Message("room:1", "intercepted", {"a": 1, "seen_by": "11"}, None, "11")]
        )
        self.other.assert_push("intercepted", {"a": 1, "seen_by": "21"})
        self.assertEqual(
            self.client.frames[-1].data, b'["11",null,"room:1","intercepted",{"a":1,"seen_by":"11"}]'
        )

    def test_defaultHandleOut(self) -> None:
        """The default handle_out pushes the broadcast unchanged."""
        self.harness.broadcast("room:1", "plain_out", {"a": 1})
        self.assertEqual(self.new(), [Message("room:1", "plain_out", {"a": 1}, None, "11")])

    def test_handleOutStop(self) -> None:
        """handle_out returning Stop stops the channel."""
        self.harness.broadcast("room:1", "stop_out", {})
        self.assertEqual(self.new(), [self.close()])
        self.other.assert_push("phx_close")

    def test_handleOutBadReturn(self) -> None:
        """handle_out returning a bad value crashes the channel with a TypeError."""
        self.harness.broadcast("room:1", "bad_out", {})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 2)
        self.assertEqual(self.new(), [self.error()])

    def test_broadcastIncludesSender(self) -> None:
        """broadcast from a channel reaches every subscriber, the sender included, before its reply."""
        ref = self.client.push("room:1", "broadcast", {"event": "shout", "payload": {"x": 1}})
        self.assertEqual(self.new(), [Broadcast("room:1", "shout", {"x": 1})])
        self.client.refute_reply(ref)
        self.other.assert_broadcast("shout", {"x": 1})

    def test_broadcastFromExcludesSender(self) -> None:
        """broadcast_from reaches every subscriber but the calling channel."""
        self.client.push("room:1", "broadcast_from", {"event": "shout", "payload": {"x": 1}})
        self.assertEqual(self.new(), [])
        self.other.assert_broadcast("shout", {"x": 1})

    def test_broadcastBadPayload(self) -> None:
        """A broadcast payload that is not a dict crashes the calling channel."""
        self.client.push("room:1", "broadcast", {"event": "shout", "payload": [1]})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.new(), [self.error()])
        self.assertEqual(self.other.broadcasts, [])

    def test_subscribeOtherTopic(self) -> None:
        """A channel subscribed to another topic gets its broadcasts in handle_info."""
        self.client.push("room:1", "subscribe", {"topic": "news"})
        self.harness.broadcast("news", "headline", {"h": 1})
        self.assertEqual(self.events("info"), [(Broadcast("news", "headline", {"h": 1}),)])
        self.assertEqual(self.new(), [])
        self.client.push("room:1", "unsubscribe", {"topic": "news"})
        self.harness.broadcast("news", "headline", {"h": 2})
        self.assertEqual(len(self.events("info")), 1)

    def test_subscriptionsEndWithChannel(self) -> None:
        """A channel's subscriptions end when it leaves."""
        self.client.push("room:1", "subscribe", {"topic": "news"})
        self.client.leave("room:1")
        pubsub = self.harness.endpoint.pubsub
        self.assertEqual(pubsub.subscribers("news"), ())
        self.assertEqual(len(pubsub.subscribers("room:1")), 1)  # the other client's channel

    def test_noBroadcastAfterLeave(self) -> None:
        """A channel that left receives no more broadcasts."""
        self.client.leave("room:1")
        self.new()
        self.harness.broadcast("room:1", "shout", {})
        self.assertEqual(self.new(), [])


class TerminateTests(ChannelTestCase):
    """
    Tests for C{terminate}.
    """

    def test_raises(self) -> None:
        """terminate raising is logged and the leave completes."""
        self.client.socket.terminate_fails = "raise"
        ref = self.client.leave("room:1")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.new(), [Reply("room:1", "ok", {}, ref, "11"), self.close()])
        self.assertEqual(self.client.session.channels, {})

    def test_failedDeferred(self) -> None:
        """terminate returning a failed Deferred is logged."""
        self.client.socket.terminate_fails = "deferred"
        self.client.close()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_notAfterFailedJoin(self) -> None:
        """terminate does not run after a refused or crashed join."""
        self.successResultOf(self.client.join("room:2", {"bad": True}))
        self.flushLoggedErrors(TypeError)
        self.assertEqual(self.events("terminate"), [])

    def test_once(self) -> None:
        """terminate runs once, even if the connection closes after a leave."""
        self.client.leave("room:1")
        self.client.close()
        self.assertEqual(self.events("terminate"), [(("shutdown", "left"),)])


class IsNormalReasonTests(SynchronousTestCase):
    """
    Tests for L{is_normal_reason}.
    """

    def test_reasons(self) -> None:
        """normal, shutdown and ("shutdown", x) are normal; nothing else is."""
        for reason in ("normal", "shutdown", ("shutdown", "left"), ("shutdown", None)):
            self.assertTrue(is_normal_reason(reason), reason)
        for reason in ("boom", ("shutdown",), ("shutdown", 1, 2), ["shutdown", "x"], None, ("error", "x")):
            self.assertFalse(is_normal_reason(reason), reason)


class ResultHelperTests(SynchronousTestCase):
    """
    Tests for L{ok} and L{error}.
    """

    def test_defaults(self) -> None:
        """ok() and error() default to an empty response."""
        self.assertEqual((ok(), error()), (Result("ok", {}), Result("error", {})))
        self.assertEqual(ok([]), Result("ok", []))



class ModuleExampleTests(SynchronousTestCase):
    """
    Tests for the example in L{twisted_phoenix.testing}'s documentation.
    """

    def test_examplePasses(self) -> None:
        """The documented example test runs and passes."""
        import textwrap

        from twisted.trial.reporter import TestResult

        import twisted_phoenix.testing

        doc = twisted_phoenix.testing.__doc__ or ""
        marker = "SynchronousTestCase`::\n"
        block = doc[doc.index(marker) + len(marker) : doc.index("Phoenix's helpers")]
        namespace: dict[str, Any] = {}
        exec(compile(textwrap.dedent(block), "<testing example>", "exec"), namespace)
        result = TestResult()
        namespace["RoomChannelTests"]("test_room").run(result)
        self.assertEqual((result.errors, result.failures, result.successes), ([], [], 1))
