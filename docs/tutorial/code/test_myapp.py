"""
Step 7: myapp's sockets and channels, tested in memory with
twisted_phoenix.testing, the twin of Phoenix.ChannelTest.

    python -m twisted.trial test_myapp
    python -m pytest -q test_myapp.py
"""

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.testing import ANY, ChannelTest
from twisted_phoenix.token import sign, verify

import myapp

SECRET = "a secret key base for the tests only, 64 characters or more......"


class PingChannelTests(SynchronousTestCase):
    def test_ping(self):
        """ping is answered with pong; any other event crashes the channel."""
        harness = ChannelTest(myapp.Endpoint)
        client = self.successResultOf(harness.connect(myapp.UserSocket))
        self.successResultOf(client.join("ping"))
        ref = client.push("ping", "ping")
        client.assert_reply(ref, "ok", {"ping": "pong"})
        client.push("ping", "pong")
        client.assert_push("phx_error", {"reason": "channel_crash"})
        # The crash was logged: take it, or the test fails.
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)


class RoomChannelTests(SynchronousTestCase):
    def setUp(self):
        self.harness = ChannelTest(myapp.Endpoint, secret_key_base=SECRET)

    def join(self, name):
        """Connect as ``name``, join room:lobby, and take the welcome."""
        connecting = self.harness.connect(myapp.UserSocket, {"name": name})
        client = self.successResultOf(connecting)
        reply = self.successResultOf(client.join("room:lobby"))
        self.assertEqual((reply.status, reply.payload), ("ok", {"name": name}))
        welcome = f"Welcome to room:lobby, {name}!"
        client.assert_push("welcome", {"body": welcome})
        return client

    def test_shout(self):
        """A shout is broadcast to the room, its sender included."""
        alice, bob = self.join("alice"), self.join("bob")
        lobby = self.harness.subscribe("room:lobby")
        ref = alice.push("room:lobby", "shout", {"body": "hello"})
        alice.assert_reply(ref, "ok", {})
        shout = {"from": "alice", "body": "hello"}
        lobby.assert_broadcast("shout", shout)
        alice.assert_push("shout", shout)
        bob.assert_push("shout", shout)

    def test_empty_shout(self):
        """An empty shout gets an error reply and is not broadcast."""
        alice = self.join("alice")
        lobby = self.harness.subscribe("room:lobby")
        ref = alice.push("room:lobby", "shout", {"body": "  "})
        alice.assert_reply(ref, "error", {"reason": "empty shout"})
        lobby.refute_broadcast("shout")

    def test_typing(self):
        """Typing reaches the others, not the one typing; no reply."""
        alice, bob = self.join("alice"), self.join("bob")
        ref = alice.push("room:lobby", "typing", {})
        bob.assert_broadcast("typing", {"from": "alice"})
        alice.refute_broadcast("typing")
        alice.refute_reply(ref)

    def test_mute(self):
        """Once alice mutes bob, his shouts reach everyone but her."""
        alice, bob = self.join("alice"), self.join("bob")
        ref = alice.push("room:lobby", "mute", {"name": "bob"})
        alice.assert_reply(ref, "ok")
        bob.push("room:lobby", "shout", {"body": "anyone?"})
        bob.assert_push("shout", {"from": "bob", "body": "anyone?"})
        alice.refute_push("shout")

    def test_ask(self):
        """The answer is a reply that comes one second later."""
        alice = self.join("alice")
        ref = alice.push("room:lobby", "ask", {"question": "why?"})
        self.harness.advance(0.5)
        alice.refute_reply(ref)
        self.harness.advance(0.5)
        alice.assert_reply(ref, "ok", {"question": "why?", "answer": 42})


class AuthSocketTests(SynchronousTestCase):
    def setUp(self):
        self.harness = ChannelTest(myapp.Endpoint, secret_key_base=SECRET)

    def connect(self, params):
        connecting = self.harness.connect(myapp.AuthSocket, params)
        return self.successResultOf(connecting)

    def sign_in(self, user_id):
        """A client of user ``user_id``, connected with a fresh token."""
        token = myapp.user_token(SECRET, user_id, clock=self.harness.clock)
        client = self.connect({"token": token})
        self.assertIsNotNone(client)
        return client

    def test_refused(self):
        """No token, a forged token, an expired token: refused."""
        clock = self.harness.clock
        self.assertIsNone(self.connect({}))
        forged = sign("another secret key base", myapp.SALT, 42, clock=clock)
        self.assertIsNone(self.connect({"token": forged}))
        token = myapp.user_token(SECRET, 42, clock=clock)
        self.harness.advance(myapp.MAX_AGE + 1)
        self.assertIsNone(self.connect({"token": token}))

    def test_own_topic_only(self):
        """User 42 may join user:42, not user:7."""
        client = self.sign_in(42)
        joined = self.successResultOf(client.join("user:42"))
        self.assertEqual(joined.status, "ok")
        refused = self.successResultOf(client.join("user:7"))
        self.assertEqual(refused.status, "error")
        self.assertEqual(refused.payload, {"reason": "unauthorized"})

    def test_sign_out(self):
        """sign_out closes all connections of that user (1001), only theirs."""
        phone, laptop = self.sign_in(42), self.sign_in(42)
        other = self.sign_in(7)
        self.successResultOf(phone.join("user:42"))
        phone.push("user:42", "sign_out")
        self.assertEqual((phone.close_code, laptop.close_code), (1001, 1001))
        self.assertFalse(other.closed)

    def test_recurring(self):
        """A fresh token one period after the join, then every period."""
        client = self.sign_in(42)
        self.successResultOf(client.join("recurring"))
        self.harness.advance(4)
        client.refute_push("new_token")
        self.harness.advance(1)
        push = client.assert_push("new_token", {"token": ANY})
        token = push.payload["token"]
        result = verify(SECRET, myapp.SALT, token, clock=self.harness.clock)
        self.assertEqual(result.data, 42)
        self.harness.advance(5)
        client.assert_push("new_token")
        client.refute_push("new_token")

    def test_recurring_terminate(self):
        """Leaving ends the channel: terminate runs, and no token comes."""
        client = self.sign_in(42)
        self.successResultOf(client.join("recurring"))
        with capturedLogs() as events:
            client.assert_reply(client.leave("recurring"), "ok")
        client.assert_push("phx_close")
        reasons = [
            event["reason"] for event in events
            if event["log_format"].startswith("RecurringChannel")
        ]
        self.assertEqual(reasons, [("shutdown", "left")])
        self.harness.advance(60)
        client.refute_push("new_token")

    def test_presence(self):
        """Joining a room tracks the user: state to them, diffs to all."""
        alice = self.sign_in(42)
        self.successResultOf(alice.join("room:lobby"))
        state = alice.assert_push("presence_state").payload
        meta = {"online_at": 0, "node": "nonode@nohost", "phx_ref": ANY}
        self.assertEqual(state, {"42": {"metas": [meta]}})
        alice.assert_push("welcome")
        joined = {"joins": {"42": ANY}, "leaves": {}}
        alice.assert_broadcast("presence_diff", joined)

        bob = self.sign_in(7)
        self.successResultOf(bob.join("room:lobby"))
        joined = {"joins": {"7": ANY}, "leaves": {}}
        alice.assert_broadcast("presence_diff", joined)
        bob.close()
        left = {"joins": {}, "leaves": {"7": ANY}}
        alice.assert_broadcast("presence_diff", left)
