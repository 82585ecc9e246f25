"""
The Redis adapter's bookkeeping, in memory: URLs, interest, sequence numbers
and gaps, and the adapter itself on ``StringTransport`` connections with a
``task.Clock`` (what it writes to Redis, how it reads what Redis sends, what
it does when a connection goes).  The real Redis is in
``tests/test_redis_processes.py``.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.adapters._redis_protocol import CommandProtocol, SubscriberProtocol
from twisted_phoenix.adapters.interest import DEFAULT_PREPARE_TIMEOUT, Confirmation, Interest
from twisted_phoenix.adapters.redis import RedisAdapter
from twisted_phoenix.adapters.redis_url import RedisConfig, parse_redis_url
from twisted_phoenix.adapters.sequence import Gap, Incoming, Outgoing
from twisted_phoenix.message import Broadcast
from twisted_phoenix.pubsub import CallbackSubscriber, PubSub
from twisted_phoenix.serializers import json_dumps

from ._client import capture_logs


# -- RESP helpers ---------------------------------------------------------------------------


def resp(*items: Any) -> bytes:
    """Encode an array push as Redis sends it (bytes/str as bulk strings, ints as integers)."""
    out = [b"*%d\r\n" % len(items)]
    for item in items:
        if isinstance(item, int):
            out.append(b":%d\r\n" % item)
        else:
            data = item.encode() if isinstance(item, str) else item
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def commands(data: bytes) -> list[list[bytes]]:
    """Decode the commands a client wrote (arrays of bulk strings)."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"*", data[pos:]
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        pos = end + 2
        command = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            length = int(data[pos + 1 : end])
            command.append(data[end + 2 : end + 2 + length])
            pos = end + 2 + length + 2
        out.append(command)
    return out


def message(node: str, incarnation: str, run: int, seq: int, topic: str | None, event: str, payload: Any) -> bytes:
    """A message as another node publishes it."""
    binary = isinstance(payload, bytes)
    body = payload if binary else (json_dumps(payload) if payload is not None else b"")
    return orjson.dumps([1, node, incarnation, run, seq, topic, event, binary]) + b"\n" + body


# -- URLs -------------------------------------------------------------------------------------


class RedisURLTests(SynchronousTestCase):
    """``redis://`` and ``rediss://`` URLs."""

    def test_defaults(self) -> None:
        """A bare host gets port 6379, db 0, no credentials, no TLS, prefix phx."""
        self.assertEqual(parse_redis_url("redis://127.0.0.1"), RedisConfig(host="127.0.0.1"))

    def test_password_and_db(self) -> None:
        """``redis://:secret@host:port/3``: a password alone, a port and a db."""
        config = parse_redis_url("redis://:s%40cret@redis.example:6380/3")
        self.assertEqual((config.host, config.port, config.db), ("redis.example", 6380, 3))
        self.assertEqual((config.username, config.password), (None, "s@cret"))

    def test_username_and_password(self) -> None:
        """``redis://user:secret@host``: Redis 6 ACL credentials."""
        config = parse_redis_url("redis://app:secret@h")
        self.assertEqual((config.username, config.password), ("app", "secret"))

    def test_tls(self) -> None:
        """``rediss://`` with a CA, a client certificate and a prefix."""
        config = parse_redis_url(
            "rediss://h:6390?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&prefix=app1"
        )
        self.assertEqual(
            (config.tls, config.ca, config.cert, config.key, config.prefix), (True, "/ca.pem", "/c.pem", "/k.pem", "app1")
        )
        self.assertEqual(config.address(), "rediss://h:6390")

    def test_address_hides_credentials(self) -> None:
        """What the logs show has no password."""
        self.assertEqual(parse_redis_url("redis://u:pw@[::1]:7000").address(), "redis://[::1]:7000")

    def test_errors(self) -> None:
        """Wrong schemes, half credentials, unknown or misplaced parameters are refused, without the password."""
        for url, fragment in [
            ("http://h", "redis:// or rediss://"),
            ("redis://", "needs a host"),
            ("redis://user@h", "needs a password too"),
            ("redis://h/x", "database"),
            ("redis://h:99999", "not a Redis URL"),
            ("redis://h?db=2", "unknown Redis URL parameter"),
            ("redis://h?ssl_ca_certs=/ca.pem", "rediss://"),
            ("rediss://h?ssl_certfile=/c.pem", "both ssl_certfile and ssl_keyfile"),
            ("redis://h?prefix=", "prefix"),
        ]:
            with self.assertRaises(ValueError, msg=url) as caught:
                parse_redis_url(url)
            self.assertIn(fragment, str(caught.exception), url)
        with self.assertRaises(ValueError) as caught:
            parse_redis_url("http://u:topsecret@h")
        self.assertNotIn("topsecret", str(caught.exception))


# -- interest -----------------------------------------------------------------------------------


class Recorder:
    """A PubSub adapter that records the interest hooks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def broadcast(self, message: Broadcast) -> None:
        pass

    def direct_broadcast(self, node: str, message: Broadcast) -> bool:
        return False

    def topic_subscribed(self, topic: str) -> None:
        self.calls.append(("+", topic))

    def topic_unsubscribed(self, topic: str) -> None:
        self.calls.append(("-", topic))


class PubSubInterestTests(SynchronousTestCase):
    """PubSub tells an adapter of a topic's first and last local subscriber."""

    def test_first_and_last(self) -> None:
        """Only the first subscriber and the last unsubscriber of a topic reach the adapter."""
        adapter = Recorder()
        pubsub = PubSub("a@h", adapter)
        one, two = CallbackSubscriber(lambda m: None), CallbackSubscriber(lambda m: 1)
        pubsub.subscribe("t", one)
        pubsub.subscribe("t", two)
        pubsub.subscribe("t", one)
        pubsub.unsubscribe("t", one)
        pubsub.unsubscribe("t", one)
        self.assertEqual(adapter.calls, [("+", "t")])
        pubsub.unsubscribe("t", two)
        self.assertEqual(adapter.calls, [("+", "t"), ("-", "t")])
        self.assertEqual(pubsub.topics(), [])

    def test_adapter_without_hooks(self) -> None:
        """An adapter without the hooks (the PB mesh) is left alone."""
        pubsub = PubSub("a@h", object())  # type: ignore[arg-type]
        subscriber = CallbackSubscriber(lambda m: None)
        pubsub.subscribe("t", subscriber)
        pubsub.unsubscribe("t", subscriber)
        self.assertEqual(pubsub.topics(), [])

    def test_prepare(self) -> None:
        """PubSub.prepare hands over what the adapter's prepare_interest answers; nothing without one."""
        waits: list[Deferred[None]] = []

        class Preparing(Recorder):
            def prepare_interest(self, topic: str) -> Deferred[None] | None:
                self.calls.append(("?", topic))
                if topic == "known":
                    return None
                waits.append(Deferred())
                return waits[-1]

        adapter = Preparing()
        pubsub = PubSub("a@h", adapter)
        self.assertIs(pubsub.prepare("new"), waits[0])
        self.assertIsNone(pubsub.prepare("known"))
        self.assertEqual(adapter.calls, [("?", "new"), ("?", "known")])
        self.assertIsNone(PubSub("a@h").prepare("t"))
        self.assertIsNone(PubSub("a@h", Recorder()).prepare("t"))

    def test_failing_prepare(self) -> None:
        """A prepare_interest that raises is logged; nothing to wait for."""

        class Failing(Recorder):
            def prepare_interest(self, topic: str) -> None:
                raise RuntimeError("boom")

        pubsub = PubSub("a@h", Failing())
        self.assertIsNone(pubsub.prepare("t"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_failing_hook(self) -> None:
        """A hook that raises is logged; the subscription holds."""

        class Failing(Recorder):
            def topic_subscribed(self, topic: str) -> None:
                raise RuntimeError("boom")

        pubsub = PubSub("a@h", Failing())
        pubsub.subscribe("t", CallbackSubscriber(lambda m: None))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(pubsub.topics(), ["t"])


class InterestTests(SynchronousTestCase):
    """A topic is wanted from its first subscriber until ``linger`` after its last."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls: list[tuple[str, str]] = []
        self.interest = Interest(
            self.clock, lambda t: self.calls.append(("+", t)), lambda t: self.calls.append(("-", t)), linger=5.0
        )

    def test_linger(self) -> None:
        """The unsubscription comes ``linger`` seconds after the last subscriber left."""
        self.interest.gained("t")
        self.interest.lost("t")
        self.clock.advance(4.9)
        self.assertEqual(self.calls, [("+", "t")])
        self.assertTrue(self.interest.lingering("t"))
        self.clock.advance(0.1)
        self.assertEqual(self.calls, [("+", "t"), ("-", "t")])
        self.assertEqual(self.interest.topics, set())

    def test_churn(self) -> None:
        """A subscriber back within the delay keeps the subscription: no unsubscribe, no resubscribe."""
        for _ in range(10):
            self.interest.gained("t")
            self.interest.lost("t")
            self.clock.advance(1)
        self.interest.gained("t")
        self.clock.advance(60)
        self.assertEqual(self.calls, [("+", "t")])
        self.assertEqual(self.interest.topics, {"t"})

    def test_no_linger(self) -> None:
        """With ``linger`` 0 the unsubscription is at once."""
        interest = Interest(self.clock, lambda t: self.calls.append(("+", t)), lambda t: self.calls.append(("-", t)), 0)
        interest.gained("t")
        interest.lost("t")
        self.assertEqual(self.calls, [("+", "t"), ("-", "t")])

    def test_stop(self) -> None:
        """Stopping cancels the pending unsubscriptions."""
        self.interest.gained("t")
        self.interest.lost("t")
        self.interest.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_negative_linger(self) -> None:
        """A negative ``linger`` is refused."""
        self.assertRaises(ValueError, Interest, self.clock, print, print, -1)

    def test_prepare(self) -> None:
        """A topic prepared is wanted at once, and dropped ``hold`` seconds later if no subscriber came."""
        self.assertTrue(self.interest.prepare("t", 7.0))
        self.assertEqual(self.calls, [("+", "t")])
        self.assertTrue(self.interest.lingering("t"))
        self.clock.advance(6.9)
        self.assertEqual(self.calls, [("+", "t")])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, [("+", "t"), ("-", "t")])
        self.assertEqual(self.interest.topics, set())

    def test_prepare_then_subscriber(self) -> None:
        """The subscriber that comes keeps the topic wanted; when it leaves, the usual linger applies."""
        self.interest.prepare("t", 7.0)
        self.interest.gained("t")
        self.clock.advance(60)
        self.assertEqual(self.calls, [("+", "t")])
        self.interest.lost("t")
        self.clock.advance(5)
        self.assertEqual(self.calls, [("+", "t"), ("-", "t")])

    def test_prepare_wanted(self) -> None:
        """A topic wanted already is left as it is; one lingering lingers ``hold`` seconds at least."""
        self.interest.gained("t")
        self.assertFalse(self.interest.prepare("t", 7.0))
        self.assertFalse(self.interest.lingering("t"))
        self.interest.lost("t")
        self.clock.advance(4)
        self.assertFalse(self.interest.prepare("t", 7.0))
        self.clock.advance(6.9)
        self.assertEqual(self.calls, [("+", "t")])
        self.clock.advance(0.1)
        self.assertEqual(self.calls, [("+", "t"), ("-", "t")])
        # A hold shorter than what is left of the linger does not shorten it.
        self.interest.gained("u")
        self.interest.lost("u")
        self.interest.prepare("u", 1.0)
        self.clock.advance(4.9)
        self.assertIn("u", self.interest.topics)


class ConfirmationTests(SynchronousTestCase):
    """Joins waiting for a confirmation, each at most ``timeout`` seconds."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.timeouts: list[None] = []
        self.confirmation = Confirmation(self.clock, 1.0, lambda: self.timeouts.append(None))

    def test_fire(self) -> None:
        """Every waiter goes on when it is confirmed; the timer is cancelled; a later wait does not wait."""
        waits = [self.confirmation.wait() for _ in range(3)]
        self.assertEqual(self.confirmation.waiting, 3)
        self.assertNoResult(waits[0])
        self.confirmation.fire()
        for d in waits:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual((self.clock.getDelayedCalls(), self.timeouts), ([], []))
        self.assertIsNone(self.successResultOf(self.confirmation.wait()))
        self.assertFalse(self.confirmation.timed_out)

    def test_timeout(self) -> None:
        """Unconfirmed after ``timeout`` seconds (from the first waiter): on_timeout, and the waiters go on."""
        first = self.confirmation.wait()
        self.clock.advance(0.5)
        second = self.confirmation.wait()
        self.clock.advance(0.49)
        self.assertNoResult(second)
        self.clock.advance(0.01)
        self.assertIsNone(self.successResultOf(first))
        self.assertIsNone(self.successResultOf(second))
        self.assertEqual(len(self.timeouts), 1)
        self.assertTrue(self.confirmation.done and self.confirmation.timed_out)
        self.confirmation.fire()  # the late confirmation: nothing more
        self.assertEqual(len(self.timeouts), 1)

    def test_cancelled_waiter(self) -> None:
        """A waiter cancelled (its channel gone) is skipped; the others go on."""
        gone, kept = self.confirmation.wait(), self.confirmation.wait()
        gone.cancel()
        self.failureResultOf(gone)
        self.confirmation.fire()
        self.assertIsNone(self.successResultOf(kept))

    def test_no_timer_without_waiters(self) -> None:
        """Nobody waits: no timer."""
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(DEFAULT_PREPARE_TIMEOUT, 1.0)


# -- sequence numbers ------------------------------------------------------------------------------


class OutgoingTests(SynchronousTestCase):
    """Publishers number their messages per channel."""

    def test_per_channel(self) -> None:
        """Each channel counts from 1 in a run of its own."""
        out = Outgoing()
        self.assertEqual([out.next(b"a"), out.next(b"a"), out.next(b"b"), out.next(b"a")], [(1, 1), (1, 2), (2, 1), (1, 3)])

    def test_sweep(self) -> None:
        """A channel idle for two sweeps is forgotten and starts a new run; one in use is kept."""
        out = Outgoing()
        out.next(b"idle")
        out.next(b"busy")
        out.sweep()
        self.assertEqual(out.next(b"busy"), (2, 2))
        out.sweep()
        self.assertEqual(len(out), 1)
        self.assertEqual(out.next(b"busy"), (2, 3))
        self.assertEqual(out.next(b"idle"), (3, 1))


class IncomingTests(SynchronousTestCase):
    """Receivers count what they missed."""

    def setUp(self) -> None:
        self.incoming = Incoming()
        self.incoming.subscribed(b"c")

    def receive(self, *seqs: int, run: int = 1, incarnation: str = "i1", node: str = "p") -> list[Gap]:
        return [self.incoming.received(b"c", node, incarnation, run, seq) for seq in seqs]

    def test_gap(self) -> None:
        """10 then 14: 3 lost, one gap."""
        gaps = self.receive(9, 10, 14, 15)
        self.assertEqual(gaps, [Gap(0, False), Gap(0, False), Gap(3, False), Gap(0, False)])
        self.assertEqual((self.incoming.lost, self.incoming.gaps, self.incoming.unknown_gaps), (3, 1, 0))

    def test_per_publisher(self) -> None:
        """Publishers are counted apart."""
        self.receive(1, 2, node="p")
        self.receive(1, 3, node="q")
        self.assertEqual(self.incoming.lost, 1)
        self.assertEqual(self.incoming.publishers(b"c"), 2)

    def test_first_message(self) -> None:
        """The first message of a publisher is no gap while the connection held since subscribing."""
        self.assertEqual(self.receive(57), [Gap(0, False)])

    def test_first_message_after_outage(self) -> None:
        """After a lost connection, a publisher first heard at seq > 1 is an unknown gap."""
        self.incoming.connection_lost()
        self.incoming.subscribed(b"c")  # resubscribed: still the first subscription
        self.assertEqual(self.receive(5), [Gap(0, True)])
        self.assertEqual(self.incoming.unknown_gaps, 1)

    def test_new_run(self) -> None:
        """A publisher that restarts its count (no outage here) loses nothing."""
        self.receive(1, 2, 3)
        self.assertEqual(self.receive(1, run=2), [Gap(0, False)])
        self.assertEqual(self.receive(1, run=1, incarnation="i2"), [Gap(0, False)])
        self.assertEqual((self.incoming.lost, self.incoming.unknown_gaps), (0, 0))

    def test_new_run_after_outage(self) -> None:
        """A new run after a lost connection: its missed start is counted, the old run's end is unknown."""
        self.receive(1, 2)
        self.incoming.connection_lost()
        self.assertEqual(self.receive(4, run=2), [Gap(3, True)])
        self.assertEqual((self.incoming.lost, self.incoming.gaps, self.incoming.unknown_gaps), (3, 1, 1))

    def test_unsubscribed(self) -> None:
        """Unsubscribing forgets the channel: what was published meanwhile is no gap."""
        self.receive(1)
        self.incoming.unsubscribed(b"c")
        self.incoming.subscribed(b"c")
        self.assertEqual(self.receive(9), [Gap(0, False)])
        self.assertEqual(self.incoming.lost, 0)


# -- the adapter ---------------------------------------------------------------------------------------


class AdapterHarness:
    """A RedisAdapter on a memory reactor, its connections on StringTransports made by the test."""

    def __init__(self, test: SynchronousTestCase, url: str = "redis://127.0.0.1:6379", **options: Any) -> None:
        self.clock = MemoryReactorClock()
        self.pubsub = PubSub("a@host")
        self.adapter = RedisAdapter(self.clock, self.pubsub, url, **options)
        self.received: list[Broadcast] = []
        self.up: list[str] = []
        self.adapter.node_up_callbacks.append(self.up.append)

    def connect(self, kind: type, handshake: bool = True) -> tuple[Any, StringTransport]:
        """A connection of ``kind``; with ``handshake``, its first PING answered (and cleared)."""
        protocol = self.adapter._build(kind)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if handshake:
            assert commands(transport.value())[0] == [b"PING"], transport.value()
            transport.clear()
            self.feed(protocol, b"+PONG\r\n")
        return protocol, transport

    def feed(self, protocol: Any, data: bytes) -> None:
        """What Redis sends; parsed at once with hiredis, over a few reactor turns with txredisapi's own parser."""
        protocol.dataReceived(data)
        while any(call.getTime() <= self.clock.seconds() for call in self.clock.getDelayedCalls()):
            self.clock.advance(0)

    def lose(self, protocol: Any, transport: StringTransport) -> None:
        transport.loseConnection()
        protocol.connectionLost(Failure(ConnectionDone("gone")))

    def subscribe_local(self, topic: str) -> CallbackSubscriber:
        subscriber = CallbackSubscriber(self.received.append)
        self.pubsub.subscribe(topic, subscriber)
        return subscriber


class RedisAdapterTests(SynchronousTestCase):
    """The adapter against in-memory connections."""

    def setUp(self) -> None:
        self.h = AdapterHarness(self)
        self.adapter = self.h.adapter
        self.logs = capture_logs(self)

    def connect_both(self) -> tuple[Any, StringTransport, Any, StringTransport]:
        pub, pub_t = self.h.connect(CommandProtocol)
        sub, sub_t = self.h.connect(SubscriberProtocol)
        return pub, pub_t, sub, sub_t

    def test_publish_once(self) -> None:
        """A broadcast is one PUBLISH on its topic's channel: a header line, then the payload's JSON bytes."""
        pub, pub_t = self.h.connect(CommandProtocol)
        payload = {"b": [1, 2], "a": "é"}
        self.h.pubsub.broadcast("room:1", "new_msg", payload)
        self.h.pubsub.broadcast("room:1", "bin", b"\x00\xff")
        (cmd1, cmd2) = commands(pub_t.value())
        self.assertEqual(cmd1[:2], [b"PUBLISH", b"phx:t:room:1"])
        head, body = cmd1[2].split(b"\n", 1)
        self.assertEqual(body, json_dumps(payload))
        self.assertEqual(orjson.loads(head), [1, "a@host", self.adapter.incarnation, 1, 1, "room:1", "new_msg", False])
        head, body = cmd2[2].split(b"\n", 1)
        self.assertEqual((orjson.loads(head)[4:], body), ([2, "room:1", "bin", True], b"\x00\xff"))
        self.assertEqual(self.adapter.published, 2)

    def test_pending_before_first_connection(self) -> None:
        """Before the first connection broadcasts wait (up to max_pending), then go out in order."""
        h = AdapterHarness(self, max_pending=2)
        for n in range(3):
            h.pubsub.broadcast("t", "e", {"n": n})
        self.assertEqual((h.adapter.publish_dropped, h.adapter.published), (1, 0))
        pub, pub_t = h.connect(CommandProtocol)
        sent = [orjson.loads(c[2].split(b"\n", 1)[1]) for c in commands(pub_t.value())]
        self.assertEqual(sent, [{"n": 0}, {"n": 1}])
        self.assertEqual(h.adapter.published, 2)

    def test_pending_dropped_at_stop(self) -> None:
        """A node that stops before it ever connected counts and logs what waited."""
        h = AdapterHarness(self)
        h.adapter.startService()
        h.pubsub.broadcast("t", "e", {})
        self.successResultOf(h.adapter.stopService())
        self.assertEqual(h.adapter.publish_dropped, 1)
        self.assertEqual(len(self.logs.find("1 broadcast(s) not published (by topic: t 1)", LogLevel.warn)), 1)

    def test_dropped_while_disconnected(self) -> None:
        """After a lost connection broadcasts are dropped, counted and logged once per interval."""
        pub, pub_t = self.h.connect(CommandProtocol)
        self.h.lose(pub, pub_t)
        for n in range(3):
            self.h.pubsub.broadcast("t", "e", {"n": n})
        self.assertFalse(self.h.pubsub.direct_broadcast("b@host", "t", "e", {}))
        self.assertEqual(self.adapter.publish_dropped, 4)
        self.assertEqual(self.logs.find("broadcast(s) not published"), [])
        self.h.clock.advance(1.0)
        self.assertEqual(len(self.logs.find("3 broadcast(s) not published (by topic: t 3)", LogLevel.warn)), 1)
        self.assertEqual(len(self.logs.find("1 broadcast(s) not published (by topic: t 1); publish_dropped=4")), 1)
        self.assertEqual(len(self.logs.find("Lost the connection to Redis", LogLevel.warn)), 1)

    def test_unconfirmed(self) -> None:
        """Publishes unanswered when the connection goes are counted as unconfirmed."""
        pub, pub_t = self.h.connect(CommandProtocol)
        self.h.pubsub.broadcast("t", "e", {})
        self.h.pubsub.broadcast("t", "e", {})
        self.h.feed(pub, b":1\r\n")
        self.h.lose(pub, pub_t)
        self.assertEqual(self.adapter.publish_unconfirmed, 1)
        self.assertEqual(len(self.logs.find("(1 broadcast(s) sent but not acknowledged: publish_unconfirmed=1)", LogLevel.warn)), 1)

    def test_subscriptions(self) -> None:
        """Subscribed: its own channel, the nodes channel, then each topic with local subscribers, by interest."""
        self.h.subscribe_local("before")
        sub, sub_t = self.h.connect(SubscriberProtocol)
        self.assertEqual(commands(sub_t.value()), [[b"SUBSCRIBE", b"phx:n:a@host", b"phx:nodes", b"phx:t:before"]])
        sub_t.clear()
        subscriber = self.h.subscribe_local("later")
        self.h.subscribe_local("later")
        self.assertEqual(commands(sub_t.value()), [[b"SUBSCRIBE", b"phx:t:later"]])
        sub_t.clear()
        self.h.pubsub.unsubscribe("later", subscriber)
        self.h.clock.advance(4.9)
        self.assertEqual(sub_t.value(), b"")
        self.h.clock.advance(0.1)
        self.assertEqual(commands(sub_t.value()), [[b"UNSUBSCRIBE", b"phx:t:later"]])

    def test_receive(self) -> None:
        """A message from another node is dispatched locally once; this node's own are skipped."""
        self.h.subscribe_local("t")
        sub, sub_t = self.h.connect(SubscriberProtocol)
        self.h.feed(sub, resp("subscribe", "phx:t:t", 1))
        own = message("a@host", self.adapter.incarnation, 1, 1, "t", "e", {"own": True})
        other = message("b@host", "inc-b", 1, 1, "t", "e", {"x": 1})
        binary = message("b@host", "inc-b", 1, 2, "t", "bin", b"\x01\x02")
        self.h.feed(sub, resp("message", "phx:t:t", own) + resp("message", "phx:t:t", other) + resp("message", "phx:t:t", binary))
        self.assertEqual(self.h.received, [Broadcast("t", "e", {"x": 1}), Broadcast("t", "bin", b"\x01\x02")])
        self.assertEqual(self.adapter.received, 2)
        self.assertEqual(self.h.up, ["b@host"])  # first heard of

    def test_direct(self) -> None:
        """A direct broadcast goes to the node's channel; one that reached no one is counted and logged."""
        pub, pub_t = self.h.connect(CommandProtocol)
        self.assertTrue(self.h.pubsub.direct_broadcast("b@host", "t", "e", {"k": 1}))
        self.assertEqual(commands(pub_t.value())[0][:2], [b"PUBLISH", b"phx:n:b@host"])
        self.h.feed(pub, b":0\r\n")
        self.assertEqual(self.adapter.direct_undelivered, 1)
        self.assertEqual(len(self.logs.find("Direct broadcast to b@host on t reached no one", LogLevel.warn)), 1)

    def test_gap_logged(self) -> None:
        """A sequence gap is counted and logged (summed per interval), never silent."""
        self.h.subscribe_local("t")
        sub, sub_t = self.h.connect(SubscriberProtocol)
        self.h.feed(sub, resp("subscribe", "phx:t:t", 1))
        for seq in (1, 2, 6, 7, 9):
            self.h.feed(sub, resp("message", "phx:t:t", message("b@host", "i", 1, seq, "t", "e", {"seq": seq})))
        self.assertEqual((self.adapter.lost, self.adapter.gaps), (4, 2))
        self.assertEqual(len(self.h.received), 5)
        self.h.clock.advance(1.0)
        self.assertEqual(
            len(self.logs.find("Lost 4 broadcast(s) from node b@host (sequence gap; by topic: t 4); lost=4", LogLevel.warn)), 1
        )

    def test_loss_log_by_topic(self) -> None:
        """The loss log names the first topics with their counts and sums the rest."""
        self.h.subscribe_local("t")
        sub, sub_t = self.h.connect(SubscriberProtocol)
        for n in range(7):
            topic = f"t{n}"
            channel = f"phx:t:{topic}"
            for seq in (1, 3):
                self.h.feed(sub, resp("message", channel, message("b@host", "i", 1, seq, topic, "e", {})))
        self.h.clock.advance(1.0)
        (line,) = self.logs.find("Lost 7 broadcast(s) from node b@host")
        self.assertIn("by topic: t0 1, t1 1, t2 1, t3 1, t4 1, other topics 2); lost=7", line)

    def test_reconnect(self) -> None:
        """After a lost connection everything is subscribed again; a gap across it is counted."""
        self.h.subscribe_local("t")
        pub, pub_t, sub, sub_t = self.connect_both()
        self.h.feed(sub, resp("subscribe", "phx:n:a@host", 1) + resp("subscribe", "phx:nodes", 2) + resp("subscribe", "phx:t:t", 3))
        self.h.feed(sub, resp("message", "phx:t:t", message("b@host", "i", 1, 1, "t", "e", {})))
        self.h.lose(sub, sub_t)
        self.assertFalse(self.adapter.connected)
        sub2, sub2_t = self.h.connect(SubscriberProtocol)
        self.assertEqual(commands(sub2_t.value()), [[b"SUBSCRIBE", b"phx:n:a@host", b"phx:nodes", b"phx:t:t"]])
        self.assertTrue(self.adapter.connected)
        self.h.feed(sub2, resp("subscribe", "phx:t:t", 1))
        self.h.feed(sub2, resp("message", "phx:t:t", message("b@host", "i", 1, 5, "t", "e", {})))
        self.assertEqual((self.adapter.lost, self.adapter.reconnects, self.adapter.disconnects), (3, 1, 1))
        self.assertEqual(len(self.logs.find("reconnected to Redis", LogLevel.warn)), 1)

    def test_unwanted_while_disconnected(self) -> None:
        """A topic whose interest ends while disconnected is not subscribed again."""
        subscriber = self.h.subscribe_local("t")
        sub, sub_t = self.h.connect(SubscriberProtocol)
        self.h.lose(sub, sub_t)
        self.h.pubsub.unsubscribe("t", subscriber)
        self.h.clock.advance(5)
        sub2, sub2_t = self.h.connect(SubscriberProtocol)
        self.assertEqual(commands(sub2_t.value()), [[b"SUBSCRIBE", b"phx:n:a@host", b"phx:nodes"]])

    def test_hello(self) -> None:
        """Once subscribed, a node says hello; a hello heard is a node up, answered directly."""
        pub, pub_t, sub, sub_t = self.connect_both()
        self.assertEqual(pub_t.value(), b"")
        self.h.feed(sub, resp("subscribe", "phx:n:a@host", 1) + resp("subscribe", "phx:nodes", 2))
        (hello,) = commands(pub_t.value())
        self.assertEqual(hello[1], b"phx:nodes")
        self.assertEqual(orjson.loads(hello[2].split(b"\n")[0])[5:7], [None, "hello"])
        pub_t.clear()
        self.h.feed(sub, resp("message", "phx:nodes", message("b@host", "ib", 0, 0, None, "hello", None)))
        self.assertEqual(self.h.up, ["b@host"])
        self.assertEqual(self.adapter.list(), ["b@host"])
        (ack,) = commands(pub_t.value())
        self.assertEqual((ack[1], orjson.loads(ack[2].split(b"\n")[0])[6]), (b"phx:n:b@host", "hello_ack"))
        # Its hello again (it reconnected): up again.  Its goodbye: gone.
        self.h.feed(sub, resp("message", "phx:nodes", message("b@host", "ib", 0, 0, None, "hello", None)))
        self.assertEqual(self.h.up, ["b@host", "b@host"])
        self.h.feed(sub, resp("message", "phx:nodes", message("b@host", "ib", 0, 0, None, "bye", None)))
        self.assertEqual(self.adapter.list(), [])

    def test_rejected(self) -> None:
        """Garbage on a channel is counted and logged, and the connection keeps reading."""
        self.h.subscribe_local("t")
        sub, sub_t = self.h.connect(SubscriberProtocol)
        self.h.feed(sub, resp("message", "phx:t:t", b"hello") + resp("message", "phx:t:t", message("b", "i", 1, 1, "t", "e", [1])))
        self.h.feed(sub, resp("message", "phx:t:t", message("b", "i", 1, 2, "t", "e", {"ok": 1})))
        self.assertEqual(self.adapter.rejected, 2)
        self.assertEqual(self.h.received, [Broadcast("t", "e", {"ok": 1})])
        self.assertEqual(len(self.logs.find("Ignored a message on Redis channel phx:t:t", LogLevel.error)), 2)

    def test_subscriber_failure_contained(self) -> None:
        """A local subscriber that raises does not break the Redis connection."""
        self.h.pubsub.subscribe("t", CallbackSubscriber(lambda m: 1 / 0))
        sub, sub_t = self.h.connect(SubscriberProtocol)
        self.h.feed(sub, resp("message", "phx:t:t", message("b", "i", 1, 1, "t", "e", {})) * 2)
        self.assertEqual(self.adapter.received, 2)
        self.assertTrue(sub_t.connected)
        self.flushLoggedErrors(ZeroDivisionError)

    def test_keepalive(self) -> None:
        """A silent connection is pinged after ping_interval and dropped after twice that."""
        h = AdapterHarness(self, ping_interval=5.0)
        h.adapter.startService()
        self.addCleanup(h.adapter.stopService)
        sub, sub_t = h.connect(SubscriberProtocol)
        sub_t.clear()
        h.clock.advance(5.0)
        self.assertEqual(commands(sub_t.value()), [[b"PING"]])
        h.feed(sub, resp("pong", ""))
        h.clock.advance(5.0)
        self.assertFalse(sub_t.disconnecting)
        h.clock.advance(5.0)
        self.assertTrue(sub_t.disconnecting)  # StringTransport's abortConnection

    def test_auth(self) -> None:
        """With a password, AUTH goes first; the connection is used only once Redis accepts it."""
        h = AdapterHarness(self, url="redis://app:pw@127.0.0.1:6379")
        h.pubsub.broadcast("t", "e", {})
        sub, sub_t = h.connect(SubscriberProtocol, handshake=False)
        pub, pub_t = h.connect(CommandProtocol, handshake=False)
        self.assertEqual(commands(sub_t.value()), [[b"AUTH", b"app", b"pw"]])
        self.assertEqual(commands(pub_t.value()), [[b"AUTH", b"app", b"pw"]])
        sub_t.clear()
        pub_t.clear()
        h.feed(sub, b"+OK\r\n")
        h.feed(pub, b"+OK\r\n")
        self.assertEqual(commands(sub_t.value())[0][0], b"SUBSCRIBE")
        self.assertEqual(commands(pub_t.value())[0][:2], [b"PUBLISH", b"phx:t:t"])

    def test_auth_refused(self) -> None:
        """A refused AUTH is logged as an error and the connection closed (to be retried)."""
        h = AdapterHarness(self, url="redis://:wrong@127.0.0.1:6379")
        sub, sub_t = h.connect(SubscriberProtocol, handshake=False)
        h.feed(sub, b"-WRONGPASS invalid username-password pair\r\n")
        self.assertTrue(sub_t.disconnecting)
        self.assertFalse(h.adapter.connected)
        self.assertEqual(len(self.logs.find("refused our AUTH", LogLevel.error)), 1)

    def test_unanswered_first_command(self) -> None:
        """A connection is not used before Redis answers its first PING (a TLS handshake may still fail)."""
        self.h.pubsub.broadcast("t", "e", {})
        pub, pub_t = self.h.connect(CommandProtocol, handshake=False)
        self.assertEqual(commands(pub_t.value()), [[b"PING"]])
        self.assertEqual(self.adapter.published, 0)
        self.h.lose(pub, pub_t)
        self.assertEqual(self.adapter.disconnects, 0)  # a failed attempt, not a lost connection
        self.assertEqual(len(self.logs.find("Cannot connect to Redis at redis://127.0.0.1:6379", LogLevel.warn)), 1)

    def test_counters(self) -> None:
        """The counters are plain numbers, all listed by counters()."""
        self.assertEqual(set(self.adapter.counters().values()), {0})
        self.assertIn("lost", self.adapter.counters())


# -- reconnecting ------------------------------------------------------------------------------


class FakeEndpoint:
    """A client endpoint whose attempts the test completes."""

    def __init__(self) -> None:
        self.attempts: list[tuple[Any, Any]] = []

    def connect(self, factory: Any) -> Any:
        from twisted.internet import defer

        d: Any = defer.Deferred()
        self.attempts.append((factory, d))
        return d


class Dummy:
    """A protocol that tells its Reconnector of its loss."""

    factory: Any = None
    transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost(self)


class RedisPrepareTests(SynchronousTestCase):
    """A join on a topic new to the node waits for Redis to confirm the SUBSCRIBE."""

    def setUp(self) -> None:
        self.h = AdapterHarness(self)
        self.adapter = self.h.adapter
        self.logs = capture_logs(self)
        self.sub, self.sub_t = self.h.connect(SubscriberProtocol)
        self.h.feed(self.sub, resp("subscribe", "phx:n:a@host", 1) + resp("subscribe", "phx:nodes", 2))
        self.sub_t.clear()

    def test_waits_for_confirmation(self) -> None:
        """SUBSCRIBE goes at once; the join goes on when Redis confirms it, and the next needs no wait."""
        wait = self.h.pubsub.prepare("room")
        self.assertEqual(commands(self.sub_t.value()), [[b"SUBSCRIBE", b"phx:t:room"]])
        self.assertNoResult(wait)
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.assertIsNone(self.successResultOf(wait))
        self.assertTrue(self.adapter.is_subscribed("room"))
        self.h.subscribe_local("room")
        self.assertIsNone(self.h.pubsub.prepare("room"))
        self.assertEqual(commands(self.sub_t.value()), [[b"SUBSCRIBE", b"phx:t:room"]])

    def test_subscribed_already(self) -> None:
        """A topic confirmed already (with subscribers, or lingering): nothing to wait for, nothing sent."""
        subscriber = self.h.subscribe_local("room")
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.sub_t.clear()
        self.assertIsNone(self.h.pubsub.prepare("room"))
        self.h.pubsub.unsubscribe("room", subscriber)
        self.h.clock.advance(1)
        self.assertIsNone(self.h.pubsub.prepare("room"))
        self.assertEqual(self.sub_t.value(), b"")

    def test_subscribed_not_confirmed(self) -> None:
        """A topic subscribed to (Channel.subscribe, Endpoint.subscribe) but not confirmed yet: a join waits too."""
        self.h.subscribe_local("room")
        wait = self.h.pubsub.prepare("room")
        self.assertNoResult(wait)
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.successResultOf(wait)
        self.assertEqual(commands(self.sub_t.value()), [[b"SUBSCRIBE", b"phx:t:room"]])

    def test_storm(self) -> None:
        """Many joins on one new topic: one SUBSCRIBE, and one confirmation lets them all go on."""
        waits = [self.h.pubsub.prepare("room") for _ in range(20)]
        self.assertEqual(commands(self.sub_t.value()), [[b"SUBSCRIBE", b"phx:t:room"]])
        self.assertEqual([w.called for w in waits], [False] * 20)
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.assertEqual([w.called for w in waits], [True] * 20)

    def test_unsubscribe_in_flight(self) -> None:
        """A topic dropped (UNSUBSCRIBE not confirmed yet) then joined waits for the new SUBSCRIBE's confirmation."""
        subscriber = self.h.subscribe_local("room")
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.h.pubsub.unsubscribe("room", subscriber)
        self.h.clock.advance(5)
        self.sub_t.clear()
        self.assertTrue(self.adapter.is_subscribed("room"), "Redis has not confirmed the UNSUBSCRIBE")
        wait = self.h.pubsub.prepare("room")
        self.assertEqual(commands(self.sub_t.value()), [[b"SUBSCRIBE", b"phx:t:room"]])
        self.h.feed(self.sub, resp("unsubscribe", "phx:t:room", 2))
        self.assertNoResult(wait)
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.successResultOf(wait)

    def test_timeout(self) -> None:
        """No confirmation within prepare_timeout: the join goes on, a warning; later joins do not wait for it."""
        wait = self.h.pubsub.prepare("room")
        self.h.clock.advance(DEFAULT_PREPARE_TIMEOUT - 0.01)
        self.assertNoResult(wait)
        self.h.clock.advance(0.01)
        self.successResultOf(wait)
        self.assertEqual(len(self.logs.find(
            "did not confirm the subscription to phx:t:room within 1 s: 1 join(s) went on", LogLevel.warn)), 1)
        self.assertIsNone(self.h.pubsub.prepare("room"))
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.assertIsNone(self.h.pubsub.prepare("room"))

    def test_other_timeout(self) -> None:
        """prepare_timeout is the adapter's option; it must be positive."""
        h = AdapterHarness(self, prepare_timeout=0.25)
        sub, sub_t = h.connect(SubscriberProtocol)
        wait = h.pubsub.prepare("room")
        h.clock.advance(0.25)
        self.successResultOf(wait)
        self.assertRaises(ValueError, AdapterHarness, self, prepare_timeout=0)

    def test_connection_lost(self) -> None:
        """The subscription connection lost while joins wait: they go on; while it is down, none waits."""
        wait = self.h.pubsub.prepare("room")
        self.h.lose(self.sub, self.sub_t)
        self.successResultOf(wait)
        self.assertIsNone(self.h.pubsub.prepare("other"))
        # Back: "room" (still held for its join) is subscribed again, and a join on it waits for that.
        sub2, sub2_t = self.h.connect(SubscriberProtocol)
        self.assertEqual(commands(sub2_t.value()), [[b"SUBSCRIBE", b"phx:n:a@host", b"phx:nodes", b"phx:t:room"]])
        wait = self.h.pubsub.prepare("room")
        self.h.feed(sub2, resp("subscribe", "phx:n:a@host", 1) + resp("subscribe", "phx:nodes", 2))
        self.assertNoResult(wait)
        self.h.feed(sub2, resp("subscribe", "phx:t:room", 3))
        self.successResultOf(wait)

    def test_stop(self) -> None:
        """A join waiting when the adapter stops goes on."""
        self.adapter.startService()
        wait = self.h.pubsub.prepare("room")
        self.adapter.stopService()
        self.successResultOf(wait)

    def test_prepared_never_joined(self) -> None:
        """A topic prepared for a join that never subscribed (its client left) is dropped after linger + 2 timeouts."""
        self.h.pubsub.prepare("room")
        self.h.feed(self.sub, resp("subscribe", "phx:t:room", 3))
        self.sub_t.clear()
        self.h.clock.advance(5 + 2 * DEFAULT_PREPARE_TIMEOUT - 0.01)
        self.assertEqual(self.sub_t.value(), b"")
        self.h.clock.advance(0.01)
        self.assertEqual(commands(self.sub_t.value()), [[b"UNSUBSCRIBE", b"phx:t:room"]])


class ReconnectorTests(SynchronousTestCase):
    """One connection kept up, with backoff."""

    def setUp(self) -> None:
        from twisted_phoenix.adapters._reconnect import Reconnector

        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.failures: list[Failure] = []
        self.connector = Reconnector(self.clock, self.endpoint, Dummy, self.failures.append, backoff=(0.1, 1.0))

    def fail_attempt(self) -> None:
        from twisted.internet.error import ConnectionRefusedError

        self.endpoint.attempts[-1][1].errback(ConnectionRefusedError())

    def connected(self) -> Dummy:
        factory, d = self.endpoint.attempts[-1]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d.callback(protocol)
        return protocol

    def test_backoff(self) -> None:
        """Failed attempts are retried after 0.1, 0.2, 0.4, ... up to the maximum, each reported."""
        self.connector.start()
        delays = []
        for _ in range(6):
            self.fail_attempt()
            (call,) = self.clock.getDelayedCalls()
            delays.append(round(call.getTime() - self.clock.seconds(), 3))
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
        self.assertEqual(len(self.failures), 6)

    def test_reset_only_when_ready(self) -> None:
        """A connection lost before it was ready keeps backing off; one that was ready starts again from 0.1."""
        self.connector.start()
        self.fail_attempt()
        self.clock.advance(0.1)
        self.connected().connectionLost()  # not ready: a failed attempt
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(round(call.getTime() - self.clock.seconds(), 3), 0.2)
        self.clock.advance(0.2)
        protocol = self.connected()
        self.connector.ready(protocol)
        protocol.connectionLost()
        (call,) = self.clock.getDelayedCalls()
        self.assertEqual(round(call.getTime() - self.clock.seconds(), 3), 0.1)

    def test_stop(self) -> None:
        """Stopping closes the connection, fires once it is gone, and does not reconnect."""
        self.connector.start()
        protocol = self.connected()
        d = self.connector.stop()
        self.assertTrue(protocol.transport.disconnecting)
        self.assertNoResult(d)
        protocol.connectionLost()
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.endpoint.attempts), 1)

    def test_stop_while_waiting(self) -> None:
        """Stopping during a backoff delay cancels it."""
        self.connector.start()
        self.fail_attempt()
        self.successResultOf(self.connector.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RedisURLSettingsTests(SynchronousTestCase):
    """The adapter's settings in the URL's query."""

    def test_settings(self) -> None:
        """linger, ping_interval and max_pending from the URL reach the adapter; arguments win."""
        config = parse_redis_url("redis://h?linger=0.5&ping_interval=2&max_pending=10")
        self.assertEqual((config.linger, config.ping_interval, config.max_pending), (0.5, 2.0, 10))
        adapter = RedisAdapter(Clock(), PubSub("a@h"), config)
        self.assertEqual((adapter.interest.linger, adapter.ping_interval, adapter.max_pending), (0.5, 2.0, 10))
        adapter = RedisAdapter(Clock(), PubSub("a@h"), config, linger=0, max_pending=0)
        self.assertEqual((adapter.interest.linger, adapter.max_pending), (0, 0))

    def test_bad_settings(self) -> None:
        """Settings that are not numbers in range are refused."""
        for query in ("linger=-1", "linger=x", "ping_interval=0", "max_pending=1.5", "max_pending=-2", "linger=nan", "linger=inf"):
            with self.assertRaises(ValueError, msg=query):
                parse_redis_url(f"redis://h?{query}")


class EncodeCommandTests(SynchronousTestCase):
    """Commands are written in RESP."""

    def test_encode(self) -> None:
        """An array of bulk strings, binary-safe."""
        from twisted_phoenix.adapters._redis_protocol import encode_command

        self.assertEqual(encode_command((b"PUBLISH", b"ch", b"a\r\nb\x00")), b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$5\r\na\r\nb\x00\r\n")
        self.assertEqual(commands(encode_command((b"PING",))), [[b"PING"]])
