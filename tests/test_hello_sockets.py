"""
Tests for L{twisted_phoenix.examples.hello_sockets}, the demo application of
the Real-Time Phoenix book, run in memory with L{twisted_phoenix.testing}
and a L{Clock}.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.examples.hello_sockets import (
    MAX_AGE,
    SALT,
    AuthSocket,
    Endpoint,
    HelloSocketsEndpoint,
    UserSocket,
    recurring_seconds,
)
from twisted_phoenix.message import Message, Reply
from twisted_phoenix.origin import origin_allowed
from twisted_phoenix.testing import ANY, ChannelTest, ClientSocket
from twisted_phoenix.token import sign, verify

SECRET = "s" * 64
#: A plausible "now" for the clock: tokens carry their signing time.
NOW = 1_700_000_000


class HelloSocketsTestCase(SynchronousTestCase):
    """A demo endpoint on a Clock set to L{NOW}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.harness = ChannelTest(
            HelloSocketsEndpoint, self.clock, node_name="hello@127.0.0.1", secret_key_base=SECRET
        )

    def user(self) -> ClientSocket:
        client = self.successResultOf(self.harness.connect(UserSocket))
        assert client is not None
        return client

    def joined(self, client: ClientSocket, topic: str) -> ClientSocket:
        reply = self.successResultOf(client.join(topic))
        self.assertEqual(reply.status, "ok")
        return client


class EndpointTests(HelloSocketsTestCase):
    """
    Tests for the demo endpoint's configuration.
    """

    def test_sockets(self) -> None:
        """The endpoint mounts UserSocket at /socket and AuthSocket at /auth_socket."""
        self.assertIs(Endpoint, HelloSocketsEndpoint)
        self.assertEqual(
            dict(HelloSocketsEndpoint.sockets), {"/socket": UserSocket, "/auth_socket": AuthSocket}
        )

    def test_checkOrigin(self) -> None:
        """Pages from localhost and 127.0.0.1, any port, may connect; others may not."""
        setting = HelloSocketsEndpoint.check_origin
        self.assertTrue(origin_allowed("http://localhost:4000", setting, "localhost"))
        self.assertTrue(origin_allowed("http://127.0.0.1:8080", setting, "localhost"))
        self.assertFalse(origin_allowed("http://example.com", setting, "localhost"))


class PingChannelTests(HelloSocketsTestCase):
    """
    Tests for L{PingChannel} on L{UserSocket}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.client = self.joined(self.user(), "ping")

    def test_anyoneConnects(self) -> None:
        """UserSocket accepts a connection without params, and has no id."""
        self.assertIsNone(self.client.socket.id())

    def test_ping(self) -> None:
        """ping is answered ok {"ping": "pong"}."""
        ref = self.client.push("ping", "ping", {})
        self.assertEqual(
            self.client.frames[-1].data,
            b'["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]',
        )
        self.client.assert_reply(ref, "ok", {"ping": "pong"})

    def test_pingEvent(self) -> None:
        """ping:X is answered ok {"ping": X}."""
        ref = self.client.push("ping", "ping:hello", {})
        self.client.assert_reply(ref, "ok", {"ping": "hello"})

    def test_pong(self) -> None:
        """pong gets no reply."""
        ref = self.client.push("ping", "pong", {})
        self.client.refute_reply(ref)
        self.assertFalse(self.client.closed)

    def test_ding(self) -> None:
        """ding replies "shutting down", then closes the channel."""
        ref = self.client.push("ping", "ding", {})
        self.assertEqual(
            self.client.messages[-2:],
            [
                Reply("ping", "ok", {"msg": "shutting down"}, ref, "1"),
                Message("ping", "phx_close", {}, "1", "1"),
            ],
        )

    def test_paramPing(self) -> None:
        """param_ping echoes its payload."""
        ref = self.client.push("ping", "param_ping", {"error": False, "arr": [1, 2]})
        self.client.assert_reply(ref, "ok", {"error": False, "arr": [1, 2]})

    def test_paramPingError(self) -> None:
        """param_ping with error: true answers an error."""
        ref = self.client.push("ping", "param_ping", {"error": True})
        self.client.assert_reply(ref, "error", {"reason": "You asked for this!"})

    def test_broadcast(self) -> None:
        """broadcast reaches every client on the topic, the sender included."""
        other = self.joined(self.user(), "ping")
        recorder = self.harness.subscribe("ping")
        ref = self.client.push("ping", "broadcast", {"some": "data"})
        self.client.refute_reply(ref)
        self.client.assert_broadcast("broadcast", {"some": "data"})
        other.assert_broadcast("broadcast", {"some": "data"})
        recorder.assert_broadcast("broadcast", {"some": "data"})
        self.assertEqual(other.frames[-1].data, b'[null,null,"ping","broadcast",{"some":"data"}]')

    def test_unhandledEventCrashes(self) -> None:
        """An unknown event crashes the channel with phx_error; the socket lives on."""
        self.client.push("ping", "nope", {})
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        self.client.assert_push("phx_error", {"reason": "channel_crash"})
        self.client.assert_reply(self.client.heartbeat(), "ok", {})

    def test_requestPing(self) -> None:
        """A request_ping broadcast comes back as send_ping with from_node and the join_ref."""
        other = self.joined(self.user(), "ping")
        self.harness.broadcast("ping", "request_ping", {"n": 1})
        self.assertEqual(
            self.client.messages[-1],
            Message("ping", "send_ping", {"n": 1, "from_node": "hello@127.0.0.1"}, None, "1"),
        )
        self.assertEqual(
            self.client.frames[-1].data,
            b'["1",null,"ping","send_ping",{"from_node":"hello@127.0.0.1","n":1}]',
        )
        other.assert_push("send_ping", {"n": 1, "from_node": "hello@127.0.0.1"})
        self.assertEqual(self.client.broadcasts, [])

    def test_pingWildcardTopic(self) -> None:
        """ping:* topics are PingChannels too."""
        client = self.joined(self.user(), "ping:room")
        client.assert_reply(client.push("ping:room", "ping", {}), "ok", {"ping": "pong"})


class WildcardChannelTests(HelloSocketsTestCase):
    """
    Tests for L{WildcardChannel}.
    """

    def test_joinWhenDouble(self) -> None:
        """wild:A:B joins only when B is twice A."""
        client = self.user()
        results = {
            topic: self.successResultOf(client.join(topic))
            for topic in ("wild:1:2", "wild:20:40", "wild:1:3", "wild:a:b", "wild:1", "wild:1:2:4")
        }
        self.assertEqual(
            {t: (r.status, r.payload) for t, r in results.items()},
            {
                "wild:1:2": ("ok", {}),
                "wild:20:40": ("ok", {}),
                "wild:1:3": ("error", {}),
                "wild:a:b": ("error", {}),
                "wild:1": ("error", {}),
                "wild:1:2:4": ("error", {}),
            },
        )

    def test_ping(self) -> None:
        """A joined wildcard channel answers ping; other events crash it."""
        client = self.joined(self.user(), "wild:2:4")
        client.assert_reply(client.push("wild:2:4", "ping", {}), "ok", {"ping": "pong"})
        client.push("wild:2:4", "other", {})
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        client.assert_push("phx_error")

    def test_unmatched(self) -> None:
        """UserSocket has no route for other topics."""
        reply = self.successResultOf(self.user().join("user:1"))
        self.assertEqual(
            (reply.status, reply.payload, reply.join_ref), ("error", {"reason": "unmatched topic"}, None)
        )


class AuthSocketTests(HelloSocketsTestCase):
    """
    Tests for L{AuthSocket} and its channels.
    """

    def token(self, user_id: int = 1, **kw: object) -> str:
        return sign(SECRET, SALT, user_id, clock=self.clock, **kw)  # type: ignore[arg-type]

    def auth(self, user_id: int = 1) -> ClientSocket:
        client = self.successResultOf(self.harness.connect(AuthSocket, {"token": self.token(user_id)}))
        assert client is not None
        return client

    def test_connect(self) -> None:
        """A valid token connects, assigns user_id and names the socket id after it."""
        client = self.auth(42)
        self.assertEqual(client.socket.assigns, {"user_id": 42})
        self.assertEqual(client.socket.id(), "auth_socket:42")

    def test_missingToken(self) -> None:
        """A connection without a token is refused."""
        self.assertIsNone(self.successResultOf(self.harness.connect(AuthSocket)))
        self.assertIsNone(self.successResultOf(self.harness.connect(AuthSocket, {"token": {"a": "1"}})))

    def test_badToken(self) -> None:
        """A token signed with another secret or salt, or garbage, is refused."""
        for token in (
            sign("t" * 64, SALT, 1, clock=self.clock),
            sign(SECRET, "other salt", 1, clock=self.clock),
            "garbage",
        ):
            self.assertIsNone(self.successResultOf(self.harness.connect(AuthSocket, {"token": token})))

    def test_expiredToken(self) -> None:
        """A token older than a day is refused; one just inside the day is accepted."""
        token = self.token()
        self.clock.advance(MAX_AGE)
        self.assertIsNotNone(self.successResultOf(self.harness.connect(AuthSocket, {"token": token})))
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.harness.connect(AuthSocket, {"token": token})))

    def test_authChannel(self) -> None:
        """user:ID may be joined by user ID only."""
        client = self.auth(1)
        self.assertEqual(self.successResultOf(client.join("user:1")).status, "ok")
        reply = self.successResultOf(client.join("user:2"))
        self.assertEqual((reply.status, reply.payload), ("error", {"reason": "unauthorized"}))

    def test_ping(self) -> None:
        """AuthSocket routes ping to PingChannel."""
        client = self.joined(self.auth(), "ping")
        client.assert_reply(client.push("ping", "ping", {}), "ok", {"ping": "pong"})

    def test_disconnect(self) -> None:
        """A disconnect broadcast to auth_socket:ID closes that user's connections with 1001."""
        one, two, other = self.auth(1), self.auth(1), self.auth(2)
        self.joined(one, "ping")
        self.harness.broadcast("auth_socket:1", "disconnect", {})
        self.assertEqual((one.close_code, two.close_code, other.closed), (1001, 1001, False))
        self.assertEqual(self.harness.endpoint.pubsub.subscribers("ping"), ())

    def test_recurringTokens(self) -> None:
        """RecurringChannel pushes its first token one period after the join, then one every period."""
        client = self.auth(7)
        reply = self.successResultOf(client.join("recurring"))
        self.assertEqual(client.messages[0], reply)
        period = recurring_seconds()
        self.clock.advance(period - 0.001)
        client.refute_push("new_token")
        self.clock.advance(0.001)
        first = client.assert_push("new_token", {"token": ANY})
        self.assertEqual(first.join_ref, reply.join_ref)
        self.assertEqual(verify(SECRET, SALT, first.payload["token"], clock=self.clock).data, 7)
        self.clock.advance(period - 0.001)
        client.refute_push("new_token")
        self.clock.advance(0.001)
        second = client.assert_push("new_token", {"token": ANY})
        self.assertNotEqual(second.payload["token"], first.payload["token"])
        result = verify(SECRET, SALT, second.payload["token"], max_age=1, clock=self.clock)
        self.assertEqual((result.ok, result.data), (True, 7))
        self.clock.advance(period)
        client.assert_push("new_token", {"token": ANY})

    def test_recurringStopsOnLeave(self) -> None:
        """After a leave, RecurringChannel pushes no more tokens and leaves no timer behind."""
        client = self.auth(7)
        self.successResultOf(client.join("recurring"))
        client.leave("recurring")
        before = len(client.pushes)
        self.clock.advance(recurring_seconds() * 3)
        self.assertEqual(len(client.pushes), before)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unmatched(self) -> None:
        """AuthSocket has no route for wild:*."""
        reply = self.successResultOf(self.auth().join("wild:1:2"))
        self.assertEqual(reply.payload, {"reason": "unmatched topic"})


class TrackedChannelTests(HelloSocketsTestCase):
    """
    Tests for L{TrackedChannel}: presence on the C{tracked} topic.
    """

    def tracked(self, user_id: str) -> ClientSocket:
        client = self.successResultOf(self.harness.connect(UserSocket))
        assert client is not None
        reply = self.successResultOf(client.join("tracked", {"user_id": user_id}))
        self.assertEqual(reply.status, "ok")
        return client

    def test_anonymous(self) -> None:
        """On UserSocket, a join payload without a usable user_id tracks the key "anonymous"."""
        for payload in ({}, {"user_id": ""}, {"user_id": None}, {"user_id": ["x"]}):
            client = self.user()
            reply = self.successResultOf(client.join("tracked", payload))
            self.assertEqual(reply.status, "ok")
            self.assertEqual(list(client.assert_push("presence_state").payload), ["anonymous"])
            client.close()

    def test_joinPayloadKey(self) -> None:
        """On UserSocket the presence key is the join payload's user_id, not a connect param."""
        client = self.successResultOf(self.harness.connect(UserSocket, {"user_id": "connect-param"}))
        assert client is not None
        reply = self.successResultOf(client.join("tracked", {"user_id": "from-join"}))
        self.assertEqual(reply.status, "ok")
        self.assertEqual(list(client.assert_push("presence_state").payload), ["from-join"])

    def test_presenceState(self) -> None:
        """After the join the client gets presence_state listing itself, online_at from the clock."""
        alice = self.tracked("alice")
        state = alice.assert_push("presence_state")
        self.assertEqual(list(state.payload), ["alice"])
        [meta] = state.payload["alice"]["metas"]
        self.assertEqual(meta["online_at"], NOW)
        self.assertEqual(len(meta["phx_ref"]), 16)
        self.assertEqual(state.join_ref, "1")
        self.assertEqual(alice.messages[0].status, "ok")  # the join reply came first

    def test_diffs(self) -> None:
        """Others see presence_diff broadcasts when a user joins, leaves or disconnects."""
        alice = self.tracked("alice")
        bob = self.tracked("bob")
        bob_state = bob.assert_push("presence_state")
        self.assertEqual(sorted(bob_state.payload), ["alice", "bob"])
        bob_meta = bob_state.payload["bob"]["metas"]
        alice.assert_broadcast("presence_diff", {"joins": {"bob": {"metas": bob_meta}}, "leaves": {}})
        bob.leave("tracked")
        alice.assert_broadcast("presence_diff", {"joins": {}, "leaves": {"bob": {"metas": bob_meta}}})
        carol = self.tracked("carol")
        carol_meta = carol.assert_push("presence_state").payload["carol"]["metas"]
        carol.close()
        alice.assert_broadcast("presence_diff", {"joins": {}, "leaves": {"carol": {"metas": carol_meta}}})
        self.assertEqual(list(self.harness.endpoint.presence.list("tracked")), ["alice"])

    def test_authSocketKey(self) -> None:
        """On AuthSocket the presence key is the token's user id."""
        token = sign(SECRET, SALT, 7, clock=self.clock)
        client = self.successResultOf(self.harness.connect(AuthSocket, {"token": token}))
        assert client is not None
        self.successResultOf(client.join("tracked", {"user_id": "someone else"}))
        self.assertEqual(list(client.assert_push("presence_state").payload), ["7"])


class RecurringSecondsTests(SynchronousTestCase):
    """
    Tests for L{recurring_seconds}.
    """

    def setEnv(self, value: str | None) -> None:
        old = os.environ.pop("RECURRING_MS", None)
        if value is not None:
            os.environ["RECURRING_MS"] = value

        def restore() -> None:
            os.environ.pop("RECURRING_MS", None)
            if old is not None:
                os.environ["RECURRING_MS"] = old

        self.addCleanup(restore)

    def test_default(self) -> None:
        """The period defaults to 5 seconds."""
        self.setEnv(None)
        self.assertEqual(recurring_seconds(), 5.0)

    def test_environment(self) -> None:
        """RECURRING_MS sets the period in milliseconds."""
        self.setEnv("250")
        self.assertEqual(recurring_seconds(), 0.25)
