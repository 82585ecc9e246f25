"""
Tests for L{twisted_phoenix._session}: how one connection routes its
messages (protocol notes section 3.2, one test per rule), which join_ref and
ref the frames the server originates carry (3.3), and how the connection
ends.  They run through L{twisted_phoenix.testing}, which they also test.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import Channel, ConnectRefused, Endpoint, Socket, error, ok
from twisted_phoenix.message import Broadcast, Message, Reply
from twisted_phoenix.serializers import DecodeError, VersionError
from twisted_phoenix.testing import ANY, BroadcastRecorder, ChannelTest, ClientSocket, FakeConnection

CRASHED = {"reason": "join crashed"}
UNMATCHED = {"reason": "unmatched topic"}
TOO_MANY = {"reason": "too many channels joined"}


class RoomChannel(Channel):
    """
    A channel driven by its join payload and events; it records its
    callbacks in its socket's ``events``.
    """

    def join(self, topic: str, payload: Any) -> Any:
        self.socket.events.append(("join", topic, payload))
        if payload.get("refuse"):
            return error({"reason": "refused"})
        if payload.get("crash"):
            raise ZeroDivisionError("join")
        if payload.get("pending"):
            d: Deferred[Any] = Deferred()
            self.socket.pending.append(d)
            self.send("after_join")
            return d
        if payload.get("after_join"):
            self.send("after_join")
        if payload.get("reply"):
            return ok({"welcome": payload["reply"]})
        return None

    def handle_in(self, event: str, payload: Any) -> Any:
        self.socket.events.append(("in", self.topic, event, payload))
        if event == "echo":
            return ok(payload)
        if event == "crash":
            raise ZeroDivisionError("handle_in")
        return None

    def handle_info(self, message: Any) -> None:
        if message == "after_join":
            self.broadcast("user_entered", {"user": None})
            self.push("joined", {"status": "connected"})

    def terminate(self, reason: Any) -> None:
        self.socket.events.append(("terminate", self.topic, reason))
        self.push("you_left", {"reason": repr(reason)})


class EventSocket(Socket):
    """A socket that records its channels' callbacks."""

    channels = {"room:*": RoomChannel, "exact": RoomChannel}

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.events: list[Any] = []
        self.pending: list[Deferred[Any]] = []


class OneChannelSocket(EventSocket):
    """Phoenix's ``max_channels_per_transport: 1``."""

    max_channels = 1


class SmallBacklogSocket(EventSocket):
    """At most 2 frames may wait behind a pending join."""

    max_backlog = 2


class RoutingMixin:
    """
    The routing rules, run under a given protocol version.
    """

    vsn = "2.0.0"

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.client = self.harness.socket(EventSocket, vsn=self.vsn)
        self._seen = 0

    def new(self) -> list[Any]:
        """What the client received since the last call."""
        messages = self.client.messages[self._seen :]
        self._seen = len(self.client.messages)
        return messages

    def jr(self, join_ref: Any) -> Any:
        """The join_ref the client sees: V1 never writes one."""
        return join_ref

    def joined(self, topic: str = "room:1", payload: Any = None, **kw: Any) -> Reply:
        d = self.client.join(topic, payload or {}, **kw)
        reply = self.successResultOf(d)  # type: ignore[attr-defined]
        self.client.clear()
        self.new()
        return reply

    # rule 1 -------------------------------------------------------------------

    def test_heartbeat(self) -> None:
        """A heartbeat gets ok {} with a null join_ref, whatever join_ref and payload it had."""
        ref = self.client.heartbeat()
        self.client.send(Message("phoenix", "heartbeat", {"ignored": True}, "h2", "77"))
        self.assertEqual(
            self.client.replies,
            [Reply("phoenix", "ok", {}, ref, None), Reply("phoenix", "ok", {}, "h2", None)],
        )

    # rule 2 -------------------------------------------------------------------

    def test_unmatchedJoin(self) -> None:
        """A join on a topic without a route gets "unmatched topic" with a null join_ref."""
        reply = self.successResultOf(self.client.join("lobby", {}))
        self.assertEqual(reply, Reply("lobby", "error", UNMATCHED, reply.ref, None))
        self.assertEqual(self.client.socket.events, [])

    def test_routes(self) -> None:
        """An exact route matches only its topic; a prefix route any topic it starts."""
        self.assertEqual(self.successResultOf(self.client.join("exact")).status, "ok")
        self.assertEqual(self.successResultOf(self.client.join("exact:1")).status, "error")
        self.assertEqual(self.successResultOf(self.client.join("room:")).status, "ok")

    def test_joinOk(self) -> None:
        """A join returning None is answered ok {}, echoing join_ref and ref."""
        reply = self.successResultOf(self.client.join("room:1", {"a": 1}, join_ref="11"))
        self.assertEqual(reply, Reply("room:1", "ok", {}, reply.ref, self.jr("11")))
        self.assertEqual(self.client.socket.events, [("join", "room:1", {"a": 1})])

    def test_joinOkWithReply(self) -> None:
        """A join returning ok(reply) is answered with that response."""
        reply = self.successResultOf(self.client.join("room:1", {"reply": "hi"}))
        self.assertEqual((reply.status, reply.payload), ("ok", {"welcome": "hi"}))

    def test_joinError(self) -> None:
        """A refused join gets the error reply and nothing else; the topic stays unjoined."""
        reply = self.successResultOf(self.client.join("room:1", {"refuse": True}, join_ref="11"))
        self.assertEqual(reply, Reply("room:1", "error", {"reason": "refused"}, reply.ref, self.jr("11")))
        self.new()
        ref = self.client.push("room:1", "echo", {})
        self.assertEqual(self.new(), [Reply("room:1", "error", UNMATCHED, ref, None)])
        self.assertEqual([e[0] for e in self.client.socket.events], ["join"])

    def test_joinCrashed(self) -> None:
        """A join that raises gets "join crashed", echoing join_ref; the error is logged."""
        reply = self.successResultOf(self.client.join("room:1", {"crash": True}, join_ref="12"))
        self.assertEqual(reply, Reply("room:1", "error", CRASHED, reply.ref, self.jr("12")))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # type: ignore[attr-defined]
        self.assertNotIn("room:1", self.client.session.channels)
        self.assertEqual(self.client.pushes, [])

    def test_joinAfterFailedJoin(self) -> None:
        """A topic whose join failed can be joined again."""
        self.successResultOf(self.client.join("room:1", {"refuse": True}))
        self.assertEqual(self.successResultOf(self.client.join("room:1")).status, "ok")

    def test_tooManyChannels(self) -> None:
        """The 101st join is refused with "too many channels joined", echoing join_ref and ref."""
        for i in range(100):
            self.assertEqual(self.successResultOf(self.client.join(f"room:{i}")).status, "ok")
        reply = self.successResultOf(self.client.join("room:100", join_ref="x"))
        self.assertEqual(reply, Reply("room:100", "error", TOO_MANY, reply.ref, self.jr("x")))
        self.assertEqual(reply.ref, "101")
        self.assertEqual(len(self.client.session.channels), 100)
        # A duplicate join of a joined topic is not refused.
        self.assertEqual(self.successResultOf(self.client.join("room:5")).status, "ok")

    def test_maxChannelsHonoured(self) -> None:
        """max_channels = 1 refuses a second join, and allows one after a leave."""
        client = self.harness.socket(OneChannelSocket, vsn=self.vsn)
        self.assertEqual(self.successResultOf(client.join("room:1")).status, "ok")
        reply = self.successResultOf(client.join("room:2"))
        self.assertEqual((reply.status, reply.payload, reply.ref), ("error", TOO_MANY, "2"))
        client.leave("room:1")
        self.assertEqual(self.successResultOf(client.join("room:2")).status, "ok")

    # rule 3 -------------------------------------------------------------------

    def test_duplicateJoin(self) -> None:
        """A duplicate join is answered, then phx_close goes out for the old join_ref, no terminate."""
        self.joined("room:1", join_ref="11")
        reply = self.successResultOf(self.client.join("room:1", {"after_join": True}, join_ref="12"))
        self.assertEqual(
            self.new(),
            [
                Reply("room:1", "ok", {}, reply.ref, self.jr("12")),
                Message("room:1", "phx_close", {}, "11", self.jr("11")),
                *self._afterJoin("12"),
            ],
        )
        self.assertNotIn("terminate", [e[0] for e in self.client.socket.events])

    def test_duplicateJoinOldChannelGone(self) -> None:
        """After a duplicate join, only the new channel gets events and broadcasts."""
        self.joined("room:1", join_ref="11")
        self.joined("room:1", join_ref="12")
        servers = self.harness.endpoint.pubsub.subscribers("room:1")
        self.assertEqual(servers, (self.client.session.channels["room:1"],))
        self.client.push("room:1", "echo", {"n": 1})
        self.client.push("room:1", "echo", {"n": 2}, join_ref="11")
        self.assertEqual(self.new(), [Reply("room:1", "ok", {"n": 1}, ANY, self.jr("12"))])

    def test_duplicateJoinSameJoinRef(self) -> None:
        """A duplicate join reusing its join_ref gets a phx_close carrying that same join_ref."""
        self.joined("room:1", join_ref="11")
        self.successResultOf(self.client.join("room:1", join_ref="11"))
        self.assertEqual(self.client.pushes, [Message("room:1", "phx_close", {}, "11", self.jr("11"))])

    def test_duplicateJoinRefused(self) -> None:
        """A duplicate join that is refused still closes the old channel."""
        self.joined("room:1", join_ref="11")
        reply = self.successResultOf(self.client.join("room:1", {"refuse": True}, join_ref="12"))
        self.assertEqual(reply.status, "error")
        self.assertEqual(self.client.pushes, [Message("room:1", "phx_close", {}, "11", self.jr("11"))])
        self.assertEqual(self.client.session.channels, {})

    # rule 4 -------------------------------------------------------------------

    def test_leave(self) -> None:
        """A leave gets ok with the channel's join_ref, phx_close [jr, jr], then terminate's pushes."""
        self.joined("room:1", join_ref="11")
        ref = self.client.leave("room:1")
        self.assertEqual(
            self.new(),
            [
                Reply("room:1", "ok", {}, ref, self.jr("11")),
                Message("room:1", "phx_close", {}, "11", self.jr("11")),
                Message("room:1", "you_left", {"reason": "('shutdown', 'left')"}, None, self.jr("11")),
            ],
        )
        self.assertEqual(self.client.socket.events[-1], ("terminate", "room:1", ("shutdown", "left")))
        self.assertEqual(self.client.session.channels, {})
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("room:1"), ())

    def test_leaveNullJoinRef(self) -> None:
        """A leave with a null join_ref is accepted."""
        self.joined("room:1", join_ref="11")
        ref = self.client.leave("room:1", join_ref=None)
        self.client.assert_reply(ref, "ok", {})
        self.client.assert_push("phx_close", {})

    def test_leaveStaleJoinRef(self) -> None:
        """A leave with a stale join_ref is silently ignored."""
        self.joined("room:1", join_ref="11")
        self.client.leave("room:1", join_ref="10")
        self.assertEqual(self.new(), [])
        self.assertIn("room:1", self.client.session.channels)

    def test_eventAfterLeave(self) -> None:
        """An event on a topic that was left gets "unmatched topic"."""
        self.joined("room:1")
        self.client.leave("room:1")
        ref = self.client.push("room:1", "echo", {})
        self.assertEqual(self.client.messages[-1], Reply("room:1", "error", UNMATCHED, ref, None))

    # rule 5 -------------------------------------------------------------------

    def test_leaveUnjoined(self) -> None:
        """A leave on a topic not joined is answered ok {}, echoing its join_ref and ref."""
        ref = self.client.leave("room:9", join_ref="5")
        ref2 = self.client.leave("nowhere", join_ref=None)
        self.assertEqual(
            self.client.messages,
            [Reply("room:9", "ok", {}, ref, self.jr("5")), Reply("nowhere", "ok", {}, ref2, None)],
        )

    # rule 6 -------------------------------------------------------------------

    def test_event(self) -> None:
        """An event with the channel's join_ref reaches handle_in; its reply carries jr and ref."""
        self.joined("room:1", join_ref="11")
        ref = self.client.push("room:1", "echo", {"a": 1})
        self.assertEqual(self.new(), [Reply("room:1", "ok", {"a": 1}, ref, self.jr("11"))])

    def test_eventNullJoinRef(self) -> None:
        """An event with a null join_ref is accepted, and answered with the channel's join_ref."""
        self.joined("room:1", join_ref="11")
        ref = self.client.push("room:1", "echo", {"a": 1}, join_ref=None)
        self.assertEqual(self.new(), [Reply("room:1", "ok", {"a": 1}, ref, self.jr("11"))])

    def test_eventStaleJoinRef(self) -> None:
        """An event with a stale join_ref is silently dropped."""
        self.joined("room:1", join_ref="11")
        self.client.push("room:1", "echo", {"a": 1}, join_ref="10")
        self.assertEqual(self.new(), [])
        self.assertNotIn("in", [e[0] for e in self.client.socket.events])

    def test_controlEventNamesNotSpecial(self) -> None:
        """Events named like server events go to handle_in like any other."""
        self.joined("room:1")
        self.client.push("room:1", "phx_reply", {"x": 1})
        self.client.push("room:1", "phx_close", {})
        self.assertEqual(
            [e[2] for e in self.client.socket.events if e[0] == "in"], ["phx_reply", "phx_close"]
        )

    # rule 7 -------------------------------------------------------------------

    def test_eventUnjoined(self) -> None:
        """An event on a topic never joined gets "unmatched topic" with a null join_ref, every time."""
        ref1 = self.client.push("room:1", "echo", {}, join_ref="3")
        ref2 = self.client.push("room:1", "phx_reply", {})
        self.assertEqual(
            self.client.messages,
            [
                Reply("room:1", "error", UNMATCHED, ref1, None),
                Reply("room:1", "error", UNMATCHED, ref2, None),
            ],
        )

    # 3.3: joins without a join_ref ------------------------------------------------

    def test_nullJoinRef(self) -> None:
        """Joined without join_ref: replies and pushes use the join's ref, phx_close null/null."""
        reply = self.successResultOf(self.client.join("room:1", {"after_join": True}, join_ref=None))
        self.assertEqual(reply.join_ref, None)
        jr = reply.ref
        ref = self.client.push("room:1", "echo", {})
        self.client.leave("room:1")
        self.assertEqual(
            self.new(),
            [
                reply,
                *self._afterJoin(jr),
                Reply("room:1", "ok", {}, ref, self.jr(jr)),
                Reply("room:1", "ok", {}, ANY, self.jr(jr)),
                Message("room:1", "phx_close", {}, None, None),
                Message("room:1", "you_left", ANY, None, self.jr(jr)),
            ],
        )

    def test_nullJoinRefMessagesWithJoinsRef(self) -> None:
        """After a join without join_ref, events carrying the join's ref as join_ref are accepted."""
        reply = self.successResultOf(self.client.join("room:1", join_ref=None))
        ref = self.client.push("room:1", "echo", {"a": 1}, join_ref=reply.ref)
        self.client.assert_reply(ref, "ok", {"a": 1})

    def _afterJoin(self, join_ref: Any) -> list[Any]:
        """What after_join sends: a broadcast, then a push."""
        broadcast = (
            Broadcast("room:1", "user_entered", {"user": None})
            if self.vsn.startswith("2")
            else Message("room:1", "user_entered", {"user": None}, None, None)
        )
        return [broadcast, Message("room:1", "joined", {"status": "connected"}, None, self.jr(join_ref))]

    def test_afterJoinOrder(self) -> None:
        """The join reply precedes what the channel sends itself from join: broadcast, then push."""
        reply = self.successResultOf(self.client.join("room:1", {"after_join": True}, join_ref="11"))
        self.assertEqual(self.client.messages, [reply, *self._afterJoin("11")])

    # ending ------------------------------------------------------------------------

    def test_crashIsolated(self) -> None:
        """A crash sends phx_error [jr, jr] channel_crash; other channels and the socket live on."""
        self.joined("room:1", join_ref="11")
        self.joined("room:2", join_ref="12")
        self.client.push("room:1", "crash", {})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)  # type: ignore[attr-defined]
        crash = Message("room:1", "phx_error", {"reason": "channel_crash"}, "11", self.jr("11"))
        self.assertEqual(self.client.messages[-1], crash)
        ref = self.client.push("room:2", "echo", {"still": "here"})
        self.client.assert_reply(ref, "ok", {"still": "here"})
        hb = self.client.heartbeat()
        self.client.assert_reply(hb, "ok", {})
        ref = self.client.push("room:1", "echo", {})
        self.client.assert_reply(ref, "error", UNMATCHED)
        self.assertFalse(self.client.closed)
        self.assertEqual(list(self.client.session.channels), ["room:2"])

    def test_connectionLost(self) -> None:
        """When the connection goes away every channel terminates with ("shutdown", "closed")."""
        self.joined("room:1")
        self.joined("room:2")
        self.client.close()
        terminated = [e for e in self.client.socket.events if e[0] == "terminate"]
        self.assertEqual(
            sorted(terminated),
            [
                ("terminate", "room:1", ("shutdown", "closed")),
                ("terminate", "room:2", ("shutdown", "closed")),
            ],
        )
        self.assertEqual(self.new(), [])  # the terminate pushes went nowhere
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("room:1"), ())


class RoutingV2Tests(RoutingMixin, SynchronousTestCase):
    """
    The routing rules under V2 (phoenix.js).
    """

    def test_heartbeatBytes(self) -> None:
        """The heartbeat reply is byte for byte Phoenix's, with a null join_ref."""
        self.client.send_frame(b'[null,"6","phoenix","heartbeat",{}]')
        self.client.send_frame(b'["3","7","phoenix","heartbeat",{"x":1}]')
        self.assertEqual(
            [f.data for f in self.client.frames],
            [
                b'[null,"6","phoenix","phx_reply",{"response":{},"status":"ok"}]',
                b'[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]',
            ],
        )

    def test_unmatchedBytes(self) -> None:
        """The "unmatched topic" reply is byte for byte Phoenix's."""
        self.client.send_frame(b'["11","1","unmatched-topic","phx_join",{}]')
        self.assertEqual(
            self.client.frames[0].data,
            b'[null,"1","unmatched-topic","phx_reply",'
            b'{"response":{"reason":"unmatched topic"},"status":"error"}]',
        )

    def test_closeAndErrorBytes(self) -> None:
        """phx_close and phx_error carry the join_ref as both join_ref and ref."""
        self.joined("room:1", join_ref="11")
        self.joined("room:2", join_ref="12")
        self.client.leave("room:1")
        self.client.push("room:2", "crash", {})
        self.flushLoggedErrors(ZeroDivisionError)
        data = [f.data for f in self.client.frames]
        self.assertIn(b'["11","11","room:1","phx_close",{}]', data)
        self.assertEqual(data[-1], b'["12","12","room:2","phx_error",{"reason":"channel_crash"}]')

    def test_refsEchoedExactly(self) -> None:
        """join_ref and ref are echoed exactly, in join replies and pushes."""
        self.client.send_frame(b'["x7","x7","room:1","phx_join",{"after_join":true}]')
        self.client.send_frame(b'["x7","","room:1","echo",{}]')
        self.assertEqual(
            [f.data for f in self.client.frames],
            [
                b'["x7","x7","room:1","phx_reply",{"response":{},"status":"ok"}]',
                b'[null,null,"room:1","user_entered",{"user":null}]',
                b'["x7",null,"room:1","joined",{"status":"connected"}]',
                b'["x7","","room:1","phx_reply",{"response":{},"status":"ok"}]',
            ],
        )

    def test_numericRefClosesConnection(self) -> None:
        """A numeric ref is a malformed frame: the connection closes with 1011 and nothing is joined."""
        self.client.send_frame(b'[7,7,"room:1","phx_join",{}]')
        self.assertEqual(self.client.close_code, 1011)
        self.assertEqual(self.client.frames, [])
        self.assertEqual(self.client.session.channels, {})

    def test_binaryPush(self) -> None:
        """A binary push reaches handle_in as bytes."""
        self.joined("room:1", join_ref="3")
        self.client.push("room:1", "bin", b"\x01\x02\x03")
        self.assertEqual(self.client.socket.events[-1], ("in", "room:1", "bin", b"\x01\x02\x03"))


class RoutingV1Tests(RoutingMixin, SynchronousTestCase):
    """
    The routing rules under V1, whose frames never carry a join_ref.
    """

    vsn = "1.0.0"

    def jr(self, join_ref: Any) -> Any:
        return None

    def test_replyBytes(self) -> None:
        """V1 replies are objects with sorted keys and no join_ref."""
        self.client.send_frame(b'{"topic":"room:1","event":"phx_join","payload":{},"ref":"1"}')
        self.assertEqual(
            self.client.frames[0].data,
            b'{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:1"}',
        )

    def test_joinedWithoutJoinRefAcceptsAny(self) -> None:
        """A channel joined without join_ref accepts events and leaves with any join_ref."""
        self.successResultOf(self.client.join("room:1", join_ref=None))
        ref = self.client.push("room:1", "echo", {"a": 1}, join_ref="other")
        self.client.assert_reply(ref, "ok", {"a": 1})
        ref = self.client.leave("room:1", join_ref="another")
        self.client.assert_reply(ref, "ok", {})
        self.client.assert_push("phx_close", {})


class PendingJoinTests(SynchronousTestCase):
    """
    Tests for a join whose callback returns a pending Deferred: the
    connection waits for it, as Phoenix's transport waits for join/3.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.client = self.harness.socket(EventSocket)

    def test_framesHeldUntilJoined(self) -> None:
        """Frames sent while a join is pending are handled after its reply, in order."""
        d = self.client.join("room:1", {"pending": True})
        self.assertNoResult(d)
        hb = self.client.heartbeat()
        ref = self.client.push("room:1", "echo", {"n": 1})
        other = self.client.join("room:2")
        self.assertEqual(self.client.messages, [])
        self.client.socket.pending[0].callback(None)
        join = self.successResultOf(d)
        self.assertEqual(self.successResultOf(other).status, "ok")
        self.assertEqual(
            self.client.messages,
            [
                join,
                Broadcast("room:1", "user_entered", {"user": None}),
                Message("room:1", "joined", {"status": "connected"}, None, join.ref),
                Reply("phoenix", "ok", {}, hb, None),
                Reply("room:1", "ok", {"n": 1}, ref, join.ref),
                Reply("room:2", "ok", {}, ANY, ANY),
            ],
        )

    def test_pendingJoinRefused(self) -> None:
        """A pending join that ends refused lets the held frames through afterwards."""
        d = self.client.join("room:1", {"pending": True})
        ref = self.client.push("room:1", "echo", {})
        self.client.socket.pending[0].callback(error({"no": 1}))
        self.assertEqual(self.successResultOf(d).payload, {"no": 1})
        self.client.assert_reply(ref, "error", UNMATCHED)
        self.client.refute_push("joined")

    def test_pendingJoinFails(self) -> None:
        """A pending join whose Deferred fails gets "join crashed"."""
        d = self.client.join("room:1", {"pending": True})
        self.client.socket.pending[0].errback(ZeroDivisionError())
        self.assertEqual(self.successResultOf(d).payload, CRASHED)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_backlogLimit(self) -> None:
        """More than max_backlog frames behind a pending join close the connection with 1008."""
        client = self.harness.socket(SmallBacklogSocket)
        d = client.join("room:1", {"pending": True})
        client.heartbeat()
        client.heartbeat()
        self.assertFalse(client.closed)
        client.heartbeat()
        self.assertEqual(client.close_code, 1008)
        client.socket.pending[0].callback(None)
        self.assertNoResult(d)
        self.assertEqual(client.messages, [])

    def test_closedWhileJoining(self) -> None:
        """A connection lost during a pending join sends nothing when the join completes."""
        d = self.client.join("room:1", {"pending": True})
        self.client.close()
        self.client.socket.pending[0].callback(None)
        self.assertNoResult(d)
        self.assertEqual(self.client.messages, [])
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("room:1"), ())


class SocketIdTests(SynchronousTestCase):
    """
    Tests for the socket id topic and the ``disconnect`` broadcast.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.client = self.harness.socket(EventSocket, id="user_socket:1")
        self.successResultOf(self.client.join("room:1"))
        self.successResultOf(self.client.join("room:2"))
        self.start = len(self.client.messages)

    def test_disconnect(self) -> None:
        """A disconnect broadcast to the socket id closes with 1001; channels end "disconnected"."""
        other = self.harness.socket(EventSocket, id="user_socket:2")
        self.harness.broadcast("user_socket:1", "disconnect", {})
        self.assertEqual(self.client.close_code, 1001)
        self.assertEqual(self.client.messages[self.start :], [])
        terminated = sorted(e for e in self.client.socket.events if e[0] == "terminate")
        self.assertEqual(
            terminated,
            [
                ("terminate", "room:1", ("shutdown", "disconnected")),
                ("terminate", "room:2", ("shutdown", "disconnected")),
            ],
        )
        self.assertFalse(other.closed)
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("user_socket:1"), ())

    def test_otherEventsIgnored(self) -> None:
        """Other broadcasts to the socket id are ignored."""
        self.harness.broadcast("user_socket:1", "something", {})
        self.assertFalse(self.client.closed)
        self.assertEqual(self.client.messages[self.start :], [])

    def test_noIdNoSubscription(self) -> None:
        """A socket whose id() is None subscribes to nothing."""
        before = dict(self.harness.endpoint.pubsub._topics)
        self.harness.socket(EventSocket)
        self.assertEqual(self.harness.endpoint.pubsub._topics, before)


class FrameErrorTests(SynchronousTestCase):
    """
    Tests for malformed frames.
    """

    def test_decodeErrorRaised(self) -> None:
        """Session.frame_received raises DecodeError for a malformed frame."""
        client = ChannelTest().socket(EventSocket)
        self.assertRaises(DecodeError, client.session.frame_received, b"{", False)
        self.assertRaises(DecodeError, client.session.frame_received, b"\x01\x00\x00\x00\x00", True)

    def test_malformedClosesConnection(self) -> None:
        """The harness, like the transport, closes with 1011 on a malformed frame; channels end."""
        client = ChannelTest().socket(EventSocket)
        self.successResultOf(client.join("room:1"))
        client.send_frame(b'[null,"1","t"]')
        self.assertEqual(client.close_code, 1011)
        self.assertEqual(client.socket.events[-1], ("terminate", "room:1", ("shutdown", "closed")))
        client.heartbeat()
        self.assertEqual(len(client.messages), 1)


class AcceptingSocket(EventSocket):
    """Accepts a connection when its params say so."""

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> Any:
        self.events.append(("connect", params, connect_info))
        answer = params.get("answer", "yes")
        if answer == "deferred":
            d: Deferred[bool] = Deferred()
            self.pending.append(d)
            return d
        if answer == "429":
            raise ConnectRefused(429, "Too Many Requests")
        return {"yes": True, "no": False}.get(answer, answer)

    def id(self) -> Any:
        return self.assigns.get("id")


class ChannelTestTests(SynchronousTestCase):
    """
    Tests for L{twisted_phoenix.testing} itself.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()

    def test_connect(self) -> None:
        """connect runs Socket.connect with the params, vsn included, and connect_info."""
        client = self.successResultOf(self.harness.connect(AcceptingSocket, {"a": "1"}, {"user_agent": "x"}))
        self.assertIsInstance(client, ClientSocket)
        self.assertEqual(client.socket.events, [("connect", {"a": "1", "vsn": "2.0.0"}, {"user_agent": "x"})])
        self.assertEqual(client.serializer.vsn, "2.0.0")

    def test_connectNoVsn(self) -> None:
        """Without vsn the client speaks V1 and the params hold no vsn."""
        client = self.successResultOf(self.harness.connect(AcceptingSocket, vsn=None))
        self.assertEqual(client.serializer.vsn, "1.0.0")
        self.assertEqual(client.socket.events[0][1], {})

    def test_connectRefused(self) -> None:
        """connect returning False gives None."""
        self.assertIsNone(self.successResultOf(self.harness.connect(AcceptingSocket, {"answer": "no"})))

    def test_connectDeferred(self) -> None:
        """connect may answer with a Deferred."""
        d = self.harness.connect(AcceptingSocket, {"answer": "deferred"})
        self.assertNoResult(d)
        socket = self._lastSocket
        socket.pending[0].callback(True)
        self.assertIsInstance(self.successResultOf(d), ClientSocket)

    @property
    def _lastSocket(self) -> Any:
        # The socket the pending connect was made on.
        import gc

        return [o for o in gc.get_objects() if isinstance(o, AcceptingSocket) and o.pending][-1]

    def test_connectRaises(self) -> None:
        """An exception from connect (e.g. ConnectRefused) fails the Deferred."""
        f = self.failureResultOf(self.harness.connect(AcceptingSocket, {"answer": "429"}), ConnectRefused)
        self.assertEqual(f.value.status, 429)

    def test_connectBadReturn(self) -> None:
        """connect returning neither True nor False is a TypeError."""
        self.failureResultOf(self.harness.connect(AcceptingSocket, {"answer": "maybe"}), TypeError)

    def test_connectBadVsn(self) -> None:
        """A vsn that selects no serializer is a VersionError."""
        self.failureResultOf(self.harness.connect(AcceptingSocket, vsn="123.1.1"), VersionError)

    def test_socketIdAndAssigns(self) -> None:
        """socket() skips connect and takes the id and assigns."""
        client = self.harness.socket(AcceptingSocket, id="u:1", assigns={"user": 1})
        self.assertEqual((client.socket.id(), client.socket.assigns), ("u:1", {"user": 1}))
        self.assertEqual(client.socket.events, [])

    def test_endpointInstance(self) -> None:
        """An endpoint instance brings its reactor; a class is built with a Clock and kwargs."""
        harness = ChannelTest(self.harness.endpoint)
        self.assertIs(harness.clock, self.harness.endpoint.reactor)
        built = ChannelTest(type(self.harness.endpoint), node_name="n@h", secret_key_base="s")
        self.assertEqual((built.endpoint.node_name, built.endpoint.secret_key_base), ("n@h", "s"))
        self.assertRaises(TypeError, ChannelTest, self.harness.endpoint, node_name="x")

    def test_assertReplyFails(self) -> None:
        """assert_reply raises AssertionError naming what arrived when nothing matches."""
        client = self.harness.socket(EventSocket)
        ref = client.heartbeat()
        e = self.assertRaises(AssertionError, client.assert_reply, ref, "error")
        self.assertIn("phoenix", str(e))
        client.assert_reply(ref, "ok", {})
        self.assertRaises(AssertionError, client.assert_reply, ref, "ok")  # consumed

    def test_assertPushConsumes(self) -> None:
        """assert_push consumes one matching push; the lists keep everything."""
        client = self.harness.socket(EventSocket)
        self.successResultOf(client.join("room:1", {"after_join": True}))
        client.assert_push("joined", {"status": "connected"})
        self.assertRaises(AssertionError, client.assert_push, "joined")
        client.refute_push("joined")
        self.assertEqual(len(client.pushes), 1)
        client.assert_broadcast("user_entered", {"user": None})
        client.refute_broadcast("user_entered")

    def test_refuteReply(self) -> None:
        """refute_reply fails once a reply to that ref arrived."""
        client = self.harness.socket(EventSocket)
        client.refute_reply("1")
        ref = client.heartbeat()
        self.assertRaises(AssertionError, client.refute_reply, ref)

    def test_waitReply(self) -> None:
        """wait_reply fires at once for a reply already received, else when it arrives."""
        client = self.harness.socket(EventSocket)
        ref = client.heartbeat()
        self.assertEqual(self.successResultOf(client.wait_reply(ref)).ref, ref)
        d = client.join("room:1", {"pending": True})
        ref = client.push("room:1", "echo", {"x": 1})
        waiting = client.wait_reply(ref)
        self.assertNoResult(waiting)
        client.socket.pending[0].callback(None)
        self.assertEqual(self.successResultOf(waiting).payload, {"x": 1})
        self.successResultOf(d)

    def test_subscribeRecorder(self) -> None:
        """subscribe() records every broadcast on a topic, intercepted or not, until stopped."""
        recorder = self.harness.subscribe("room:1")
        self.assertIsInstance(recorder, BroadcastRecorder)
        self.harness.broadcast("room:1", "a", {"n": 1})
        recorder.assert_broadcast("a", {"n": 1})
        self.assertRaises(AssertionError, recorder.assert_broadcast, "a")
        recorder.refute_broadcast("a")
        recorder.stop()
        self.harness.broadcast("room:1", "b", {})
        self.assertEqual([b.event for b in recorder.broadcasts], ["a"])

    def test_fakeConnection(self) -> None:
        """FakeConnection records frames until closed, and records the close code once."""
        from twisted_phoenix.serializers import Frame

        conn = FakeConnection()
        frame = Frame(b"x")
        conn.send_frame(frame)
        conn.close(1001, "bye")
        conn.close(1000)
        conn.send_frame(Frame(b"y"))
        self.assertEqual(
            (conn.frames, conn.closed, conn.close_code, conn.close_reason), ([frame], True, 1001, "bye")
        )

    def test_v1BinaryRefused(self) -> None:
        """A V1 client cannot send a binary payload."""
        client = self.harness.socket(EventSocket, vsn="1.0.0")
        self.assertRaises(TypeError, client.push, "room:1", "bin", b"x")

    def test_decodesBinaryFrames(self) -> None:
        """Binary replies, pushes and broadcasts are decoded from their frames."""
        from twisted_phoenix.serializers import V2JSONSerializer
        from twisted_phoenix.testing import decode_server_frame

        v2 = V2JSONSerializer()
        for value in (
            Reply("t", "ok", b"\x09", "5", "3"),
            Message("t", "e", b"\x00", None, "3"),
        ):
            self.assertEqual(decode_server_frame(v2, v2.encode(value)), value)
        self.assertEqual(
            decode_server_frame(v2, v2.fastlane(Broadcast("t", "e", b"1"))), Broadcast("t", "e", b"1")
        )


RATE_LIMITED = {"reason": "rate limited"}


class LogRecorder:
    """Records the global log's events for one test."""

    def __init__(self, test: SynchronousTestCase) -> None:
        from twisted.logger import globalLogPublisher

        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, containing: str = "") -> list[str]:
        """The formatted messages that contain ``containing``."""
        from twisted.logger import formatEvent

        return [t for t in map(formatEvent, self.events) if containing in t]


class SmallLimitsEndpoint(Endpoint):
    """Small limits, so that tests stay short."""

    event_rate = 10.0
    event_burst = 5.0
    join_rate = 1.0
    join_burst = 3.0


class RateLimitTests(SynchronousTestCase):
    """
    Tests for the per-connection rate limits on events and joins.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest(SmallLimitsEndpoint)
        self.client = self.harness.socket(EventSocket)
        self.logs = LogRecorder(self)

    def test_eventsOverBurstRefused(self) -> None:
        """Events beyond the burst get "rate limited", echoing join_ref and ref; the channel lives."""
        self.successResultOf(self.client.join("room:1", join_ref="j"))  # a join: not an event
        refs = [self.client.push("room:1", "echo", {"n": i}) for i in range(7)]
        for ref in refs[:5]:
            self.client.assert_reply(ref, "ok")
        self.assertEqual(
            self.client.replies[-2:],
            [Reply("room:1", "error", RATE_LIMITED, ref, "j") for ref in refs[5:]],
        )
        self.assertEqual([e[3]["n"] for e in self.client.socket.events if e[0] == "in"], list(range(5)))
        self.assertFalse(self.client.closed)

    def test_refill(self) -> None:
        """Tokens come back at the rate: after 0.1 s at 10/s, one more event is served."""
        for _ in range(5):
            self.client.heartbeat()
        self.client.assert_reply(self.client.heartbeat(), "error", RATE_LIMITED)
        self.harness.advance(0.1)
        self.client.assert_reply(self.client.heartbeat(), "ok", {})
        self.client.assert_reply(self.client.heartbeat(), "error", RATE_LIMITED)

    def test_heartbeatsCount(self) -> None:
        """Heartbeats take event tokens; a refused one is an error reply with a null join_ref."""
        for _ in range(5):
            self.client.heartbeat()
        ref = self.client.push("phoenix", "heartbeat", {}, join_ref="x")
        self.assertEqual(self.client.replies[-1], Reply("phoenix", "error", RATE_LIMITED, ref, None))
        ref = self.client.push("room:1", "echo", {})
        self.client.assert_reply(ref, "error", RATE_LIMITED)

    def test_explicitNow(self) -> None:
        """frame_received takes the arrival time from its caller instead of the clock."""
        session = self.client.session
        frame = b'[null,"h","phoenix","heartbeat",{}]'
        for _ in range(6):
            session.frame_received(frame, False, 0.0)
        self.assertEqual(self.client.replies[-1].status, "error")
        session.frame_received(frame, False, 0.1)  # the clock still says 0
        self.assertEqual(self.client.replies[-1].status, "ok")

    def test_persistentFlooderClosed(self) -> None:
        """
        After burst accepted and burst more refused, the next event closes
        the connection with 1008; its channels end, it is logged once.
        """
        self.successResultOf(self.client.join("room:1"))
        for _ in range(11):
            self.client.heartbeat()
        self.assertEqual(self.client.close_code, 1008)
        self.assertEqual([r.status for r in self.client.replies[1:]], ["ok"] * 5 + ["error"] * 5)
        self.assertEqual(
            self.client.socket.events[-1], ("terminate", "room:1", ("shutdown", "closed"))
        )
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("room:1"), ())
        self.assertEqual(
            self.logs.texts("Rate limiting"),
            ["Rate limiting a EventSocket connection: more than 5 events at once or 10/s"],
        )
        self.assertEqual(
            self.logs.texts("kept sending"),
            ["Closing a EventSocket connection that kept sending events over 10/s (burst 5) after 5 were refused"],
        )
        self.client.heartbeat()  # nothing more is read
        self.assertEqual(len(self.client.replies), 11)

    def test_otherSessionsUnaffected(self) -> None:
        """One connection's flood and closing leave another's limits and channels alone."""
        other = self.harness.socket(EventSocket)
        self.successResultOf(other.join("room:1"))
        self.successResultOf(self.client.join("room:1"))
        for _ in range(20):
            self.client.push("room:1", "echo", {})
        self.assertEqual(self.client.close_code, 1008)
        refs = [other.push("room:1", "echo", {"i": i}) for i in range(5)]
        for i, ref in enumerate(refs):
            other.assert_reply(ref, "ok", {"i": i})
        self.assertFalse(other.closed)
        self.assertEqual(len(self.harness.endpoint.pubsub.subscribers("room:1")), 1)

    def test_joinsLimited(self) -> None:
        """Joins have their own bucket: beyond join_burst they get "rate limited" and join nothing."""
        for i in range(3):
            self.assertEqual(self.successResultOf(self.client.join(f"room:{i}")).status, "ok")
        reply = self.successResultOf(self.client.join("room:3", join_ref="j3"))
        self.assertEqual(reply, Reply("room:3", "error", RATE_LIMITED, reply.ref, "j3"))
        self.assertNotIn("room:3", self.client.session.channels)
        self.assertNotIn(("join", "room:3", {}), self.client.socket.events)
        ref = self.client.push("room:1", "echo", {})  # events are not affected
        self.client.assert_reply(ref, "ok")
        self.harness.advance(1)
        self.assertEqual(self.successResultOf(self.client.join("room:3")).status, "ok")

    def test_persistentJoinerClosed(self) -> None:
        """A client that keeps joining after join_burst refusals is closed with 1008."""
        for i in range(6):
            self.client.join(f"room:{i}")
        self.assertFalse(self.client.closed)
        self.client.join("room:6")
        self.assertEqual(self.client.close_code, 1008)
        self.assertEqual(self.logs.texts("kept sending joins")[0][:40], "Closing a EventSocket connection that ke")

    def test_leaveOfJoinedTopicNeverRefused(self) -> None:
        """Out of event tokens, a leave of a joined topic is still served (phoenix.js needs its ok)."""
        self.successResultOf(self.client.join("room:1", join_ref="j"))
        for _ in range(5):
            self.client.heartbeat()
        ref = self.client.leave("room:1")
        self.client.assert_reply(ref, "ok", {})
        self.client.assert_push("phx_close", {})
        self.assertEqual(self.client.session.channels, {})
        # A leave of a topic not joined, or with a stale join_ref, is an event like any.
        ref = self.client.leave("room:2")
        self.client.assert_reply(ref, "error", RATE_LIMITED)

    def test_refusalsKeepOrderBehindPendingJoin(self) -> None:
        """While a join is pending, refusals queue behind the frames before them."""
        d = self.client.join("room:1", {"pending": True})
        refs = [self.client.push("room:1", "echo", {"i": i}) for i in range(7)]
        self.assertEqual(self.client.messages, [])
        self.client.socket.pending[0].callback(None)
        self.successResultOf(d)
        replies = [m for m in self.client.replies if m.ref in refs]
        self.assertEqual([r.ref for r in replies], refs)
        self.assertEqual([r.status for r in replies], ["ok"] * 5 + ["error"] * 2)

    def test_limitsPerInstance(self) -> None:
        """An endpoint instance may override the limits; None lifts a limit."""
        harness = ChannelTest(SmallLimitsEndpoint)
        harness.endpoint.event_rate = None
        client = harness.socket(EventSocket)
        for _ in range(50):
            client.heartbeat()
        self.assertEqual({r.status for r in client.replies}, {"ok"})
        self.assertFalse(client.closed)

    def test_defaultsAllowFullRejoin(self) -> None:
        """
        With the default limits, a client rejoins its 100 channels at once,
        twice on the same connection, and 200 events at once are served.
        """
        harness = ChannelTest()
        client = harness.socket(EventSocket)
        for _round in range(2):
            replies = [client.join(f"room:{i}") for i in range(100)]
            self.assertEqual({self.successResultOf(d).status for d in replies}, {"ok"})
        refs = [client.heartbeat() for _ in range(200)]
        self.assertEqual({r.status for r in client.replies if r.ref in refs}, {"ok"})
        self.assertEqual(client.replies[-1].ref, refs[-1])

    def test_defaults(self) -> None:
        """The default limits are 100 events/s (burst 200) and 20 joins/s (burst 200)."""
        self.assertEqual(
            (Endpoint.event_rate, Endpoint.event_burst, Endpoint.join_rate, Endpoint.join_burst),
            (100.0, 200.0, 20.0, 200.0),
        )


class EncodeFailureTests(SynchronousTestCase):
    """
    Tests for what the client gets when the server's own frame cannot be encoded.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.client = self.harness.socket(UnencodableSocket)

    def test_joinReplyUnencodable(self) -> None:
        """An ok join whose reply cannot be encoded is a crashed join: nothing stays joined."""
        reply = self.successResultOf(self.client.join("bad:ok", join_ref="5"))
        self.assertEqual(reply, Reply("bad:ok", "error", CRASHED, reply.ref, "5"))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.client.session.channels, {})
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("bad:ok"), ())
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("elsewhere"), ())
        self.assertEqual(self.client.socket.ended, ["bad:ok"])
        self.harness.advance(10)  # its timer is gone
        self.client.refute_push("tick")
        ref = self.client.push("bad:ok", "x", {})
        self.client.assert_reply(ref, "error", UNMATCHED)

    def test_joinErrorUnencodable(self) -> None:
        """A refused join whose response cannot be encoded is answered as a crashed join."""
        reply = self.successResultOf(self.client.join("bad:error"))
        self.assertEqual((reply.status, reply.payload), ("error", CRASHED))
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
        self.assertEqual(self.client.session.channels, {})

    def test_duplicateJoinUnencodable(self) -> None:
        """A duplicate join whose reply cannot be encoded still closes the old channel."""
        self.successResultOf(self.client.join("bad:ok", {"fine": True}, join_ref="1"))
        reply = self.successResultOf(self.client.join("bad:ok", join_ref="2"))
        self.assertEqual(reply.payload, CRASHED)
        self.flushLoggedErrors(TypeError)
        self.client.assert_push("phx_close", {})
        self.assertEqual(self.client.session.channels, {})
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("bad:ok"), ())


class UnencodableChannel(Channel):
    """A channel whose join answers with a value JSON cannot carry, unless told otherwise."""

    def join(self, topic: str, payload: Any) -> Any:
        self.send_after(5, "tick")
        self.subscribe("elsewhere")
        self._server.on_end(lambda: self.socket.ended.append(topic))
        if payload.get("fine"):
            return None
        if topic == "bad:error":
            return error({"why": object()})
        return ok({"value": object()})

    def handle_info(self, message: Any) -> None:
        self.push(message, {})


class UnencodableSocket(Socket):
    channels = {"bad:*": UnencodableChannel}

    def __init__(self, endpoint: Any) -> None:
        super().__init__(endpoint)
        self.ended: list[str] = []


class SessionLogTests(SynchronousTestCase):
    """
    Tests for what the session logs about client input: bounded and rate-limited.
    """

    def setUp(self) -> None:
        self.harness = ChannelTest()
        self.client = self.harness.socket(EventSocket)
        self.logs = LogRecorder(self)

    def test_longTopicTruncated(self) -> None:
        """A long unmatched topic is logged cut to 200 characters, with its length."""
        topic = "t" * 255
        self.client.join(topic)
        [line] = self.logs.texts("Ignoring unmatched topic")
        self.assertEqual(line, f"Ignoring unmatched topic {'t' * 200!r}… (255 chars) in EventSocket")

    def test_repeatedWarningSuppressed(self) -> None:
        """
        Unmatched-topic warnings are logged 10 times per 10 s across the
        endpoint's connections; the next one counts the rest.
        """
        other = self.harness.socket(EventSocket)
        for i in range(30):
            (self.client if i % 2 else other).join(f"nowhere:{i}")
        self.assertEqual(len(self.logs.texts("Ignoring unmatched topic")), 10)
        self.harness.advance(10)
        self.client.join("nowhere:again")
        self.assertEqual(
            self.logs.texts("Ignoring unmatched topic")[-1],
            "Ignoring unmatched topic 'nowhere:again' in EventSocket (suppressed 20 similar messages)",
        )

    def test_budgetPerEndpoint(self) -> None:
        """Another endpoint has its own budget."""
        for i in range(20):
            self.client.join(f"nowhere:{i}")
        ChannelTest().socket(EventSocket).join("nowhere")
        self.assertEqual(len(self.logs.texts("Ignoring unmatched topic")), 11)
