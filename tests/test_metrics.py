"""
Tests for L{twisted_phoenix.metrics}: every counter and gauge, driven by the
event it counts on in-memory connections, and the Prometheus exposition.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_phoenix import Channel, Endpoint, Socket, Stop, error, ok
from twisted_phoenix.message import Broadcast, Message
from twisted_phoenix.metrics import DROP_REASONS, REFUSAL_STATUSES, Metrics
from twisted_phoenix.pubsub import CallbackSubscriber
from twisted_phoenix.testing import ChannelTest

from .test_longpoll import SECRET, LongPollEndpoint, LongPollTestCase

# -- the application ------------------------------------------------------------------


class CountChannel(Channel):
    """Does on demand everything the counters count."""

    intercept = ["shout_out"]

    def join(self, topic: str, payload: Any) -> Any:
        if payload.get("refuse"):
            return error({"reason": "nope"})
        if payload.get("crash"):
            raise RuntimeError("join crash")
        if payload.get("hang"):
            return Deferred()  # a join that never answers
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "ping":
            return ok({"pong": True})
        if event == "push":
            self.push("pushed", {})
            return None
        if event == "crash":
            raise RuntimeError("boom")
        if event == "stop":
            return Stop("normal")
        if event == "stop_badly":
            return Stop("bad")
        if event == "track":
            self.endpoint.presence.track(self, payload["key"], {})
            return ok()
        return None

    def handle_out(self, event: str, payload: Any) -> Any:
        self.push(event, payload)
        return None


class OtherChannel(CountChannel):
    """A second channel class, for the per-class gauge."""


class CountSocket(Socket):
    channels = {"room:*": CountChannel, "other:*": OtherChannel}
    max_backlog = 2

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        self.assigns["user"] = params.get("user")
        return params.get("refuse") != "1"

    def id(self) -> str | None:
        user = self.assigns.get("user")
        return None if user is None else f"user:{user}"


class IdleSocket(CountSocket):
    timeout = 1.0


class CountEndpoint(Endpoint):
    sockets = {"/socket": CountSocket, "/idle": IdleSocket}
    check_origin = False
    env = "test"
    max_frame_size = 1000


# -- reading the metrics ----------------------------------------------------------------


def value(endpoint: Endpoint, name: str, **labels: str) -> float:
    """The sample of metric ``name`` with ``labels`` (0 when the family has no such sample)."""
    for family in endpoint.metrics.families():
        if family.name == name:
            for label_values, sample in family.samples:
                if dict(zip(family.labels, label_values)) == labels:
                    return sample
            return 0
    raise AssertionError(f"no metric {name}")


# -- an in-memory WebSocket client --------------------------------------------------------


def client_frame(payload: bytes, opcode: int = 1, mask: bool = True) -> bytes:
    """One client frame (masked, as clients must)."""
    size = len(payload)
    head = bytes([0x80 | opcode])
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    else:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class _Transport(StringTransport):
    """A L{StringTransport} that, like TCP's, lets a producer be unregistered twice."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


class WebSocketClient:
    """A WebSocket client on a L{StringTransport}, through the endpoint's site."""

    def __init__(
        self, endpoint: Endpoint, site: Any, path: str = "/socket/websocket?vsn=2.0.0", origin: str | None = None
    ) -> None:
        self.reactor = endpoint.reactor
        self.reader = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        self.transport = _Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1234))
        self.reader.makeConnection(self.transport)
        head = (
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + (f"Origin: {origin}\r\n" if origin else "")
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.reader.dataReceived(head.encode())
        self.reactor.advance(0)

    @property
    def protocol(self) -> Any:
        return self.reader._inner

    def send(self, text: str) -> None:
        self.reader.dataReceived(client_frame(text.encode()))
        self.reactor.advance(0)

    def send_raw(self, data: bytes) -> None:
        self.reader.dataReceived(data)
        self.reactor.advance(0)

    def lose(self) -> None:
        """The client's TCP connection is gone."""
        self.reader.connectionLost(Failure(ConnectionDone()))


class _WebSocketCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = CountEndpoint(self.reactor, secret_key_base=SECRET)
        self.site = self.endpoint.site()

    def ws(self, path: str = "/socket/websocket?vsn=2.0.0") -> WebSocketClient:
        client = WebSocketClient(self.endpoint, self.site, path)
        self.assertEqual(client.transport.value()[:12], b"HTTP/1.1 101", client.transport.value())
        return client


# -- the tests ------------------------------------------------------------------------------


class MessageCounterTests(SynchronousTestCase):
    """Messages received and frames sent, by kind."""

    def setUp(self) -> None:
        self.test = ChannelTest(CountEndpoint)
        self.endpoint = self.test.endpoint
        self.client = self.test.socket(CountSocket)

    def test_received(self) -> None:
        """Each join, leave, event and heartbeat from a client counts once, under its kind."""
        self.client.join("room:1")
        self.client.push("room:1", "ping")
        self.client.push("room:1", "ping")
        self.client.heartbeat()
        self.client.leave("room:1")
        self.client.push("nowhere", "ping")  # an event to a topic not joined is still received
        m = self.endpoint.metrics
        self.assertEqual(
            (m.joins_received, m.events_received, m.heartbeats_received, m.leaves_received), (1, 3, 1, 1)
        )
        for kind, n in [("join", 1), ("event", 3), ("heartbeat", 1), ("leave", 1)]:
            self.assertEqual(value(self.endpoint, "phoenix_messages_received_total", kind=kind), n)

    def test_heartbeatOnlyOnPhoenixTopic(self) -> None:
        """An event named heartbeat on a channel's topic is an event, not a heartbeat."""
        self.client.join("room:1")
        self.client.push("room:1", "heartbeat")
        self.assertEqual(self.endpoint.metrics.heartbeats_received, 0)
        self.assertEqual(self.endpoint.metrics.events_received, 1)

    def test_rateLimitedStillReceived(self) -> None:
        """A message refused by the rate limit was received all the same."""
        self.endpoint.event_burst = 1
        client = self.test.socket(CountSocket)
        client.heartbeat()
        client.heartbeat()
        client.assert_reply("2", "error", {"reason": "rate limited"})
        self.assertEqual(self.endpoint.metrics.heartbeats_received, 2)

    def test_sent(self) -> None:
        """Replies and pushes (phx_close included) are counted as the frames go out."""
        self.client.join("room:1")  # reply
        self.client.push("room:1", "ping")  # reply
        self.client.push("room:1", "push")  # push
        self.client.heartbeat()  # reply
        self.client.leave("room:1")  # reply, then phx_close (a push)
        self.assertEqual(len(self.client.replies), 4)
        self.assertEqual(len(self.client.pushes), 2)
        self.assertEqual(value(self.endpoint, "phoenix_messages_sent_total", kind="reply"), 4)
        self.assertEqual(value(self.endpoint, "phoenix_messages_sent_total", kind="push"), 2)

    def test_nothingSentOnceClosed(self) -> None:
        """A push to a connection that closed is not counted."""
        self.client.join("room:1")
        self.client.session.send(Message("room:1", "early", {}, None, None))
        self.assertEqual(self.endpoint.metrics.pushes_sent, 1)
        self.client.close()
        self.client.session.send(Message("room:1", "late", {}, None, None))
        self.assertEqual(self.endpoint.metrics.pushes_sent, 1)


class BroadcastCounterTests(SynchronousTestCase):
    """Broadcasts and deliveries: counted once per broadcast, whatever the subscribers."""

    def setUp(self) -> None:
        self.test = ChannelTest(CountEndpoint)
        self.endpoint = self.test.endpoint
        self.pubsub = self.endpoint.pubsub
        self.clients = [self.test.socket(CountSocket) for _ in range(3)]
        for client in self.clients:
            client.join("room:1")

    def test_fastlane(self) -> None:
        """A broadcast to three joined clients: one broadcast, three deliveries, three frames sent."""
        self.endpoint.broadcast("room:1", "news", {"n": 1})
        for client in self.clients:
            client.assert_broadcast("news", {"n": 1})
        self.assertEqual(value(self.endpoint, "phoenix_broadcasts_total"), 1)
        self.assertEqual(value(self.endpoint, "phoenix_deliveries_total"), 3)
        self.assertEqual(value(self.endpoint, "phoenix_messages_sent_total", kind="broadcast"), 3)

    def test_noSubscribers(self) -> None:
        """A broadcast nobody here subscribes to is counted, and reaches no one."""
        self.endpoint.broadcast("room:empty", "news", {})
        self.assertEqual((self.pubsub.broadcasts, self.pubsub.deliveries), (1, 0))

    def test_senderSkipped(self) -> None:
        """``broadcast_from`` does not count the sender as reached."""
        sender = self.clients[0].session.channels["room:1"]
        self.pubsub.broadcast_from(sender, "room:1", "news", {})
        self.assertEqual((self.pubsub.broadcasts, self.pubsub.deliveries, self.pubsub.fastlane_deliveries), (1, 2, 2))

    def test_intercepted(self) -> None:
        """An intercepted broadcast reaches the channels (deliveries) and goes out as pushes, not fastlane frames."""
        self.endpoint.broadcast("room:1", "shout_out", {})
        for client in self.clients:
            client.assert_push("shout_out")
        self.assertEqual(self.pubsub.deliveries, 3)
        self.assertEqual(self.pubsub.fastlane_deliveries, 0)
        self.assertEqual(self.endpoint.metrics.pushes_sent, 3)

    def test_callbackSubscribers(self) -> None:
        """A callback subscriber is reached (a delivery) but gets no frame; one that raises is not counted."""
        got: list[Any] = []
        self.pubsub.subscribe("room:1", CallbackSubscriber(got.append))

        def fail(broadcast: Any) -> None:
            raise RuntimeError("subscriber failure")

        self.pubsub.subscribe("room:1", CallbackSubscriber(fail))
        self.endpoint.broadcast("room:1", "news", {})
        self.assertEqual(len(got), 1)
        self.assertEqual((self.pubsub.deliveries, self.pubsub.fastlane_deliveries), (4, 3))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unencodable(self) -> None:
        """A broadcast the serializer cannot encode reaches none of its fastlane subscribers."""
        self.endpoint.broadcast("room:1", "news", {"x": object()})
        self.assertEqual((self.pubsub.broadcasts, self.pubsub.deliveries), (1, 0))
        self.flushLoggedErrors()

    def test_fromOtherNode(self) -> None:
        """A broadcast that came from another node (dispatched here) is counted like ours."""
        self.pubsub.dispatch(Broadcast("room:1", "news", {}))
        self.assertEqual((self.pubsub.broadcasts, self.pubsub.deliveries), (1, 3))


class ChannelGaugeTests(SynchronousTestCase):
    """phoenix_channels, joins and crashes."""

    def setUp(self) -> None:
        self.test = ChannelTest(CountEndpoint)
        self.endpoint = self.test.endpoint
        self.client = self.test.socket(CountSocket)

    def channels(self, name: str = "CountChannel") -> float:
        return value(self.endpoint, "phoenix_channels", channel=name)

    def test_joinAndLeave(self) -> None:
        """The gauge counts channels joined now, by class; a leave takes one off."""
        self.client.join("room:1")
        self.client.join("room:2")
        self.client.join("other:1")
        self.assertEqual((self.channels(), self.channels("OtherChannel")), (2, 1))
        self.client.leave("room:1")
        self.assertEqual(self.channels(), 1)

    def test_everyEnd(self) -> None:
        """However a channel ends (stop, crash, bad stop, duplicate join, connection lost), it leaves the gauge."""
        for topic in ["room:stop", "room:crash", "room:bad", "room:dup", "room:open"]:
            self.client.join(topic)
        self.assertEqual(self.channels(), 5)
        self.client.push("room:stop", "stop")
        self.client.push("room:crash", "crash")
        self.client.push("room:bad", "stop_badly")
        self.assertEqual(self.channels(), 2)
        self.client.join("room:dup")  # the old one is killed, the new one joins
        self.assertEqual(self.channels(), 2)
        self.client.close()
        self.assertEqual(self.channels(), 0)
        self.flushLoggedErrors(RuntimeError)

    def test_refusedNotCounted(self) -> None:
        """A refused or crashed join never enters the gauge."""
        self.client.join("room:1", {"refuse": True})
        self.client.join("room:2", {"crash": True})
        self.assertEqual(self.channels(), 0)
        self.flushLoggedErrors(RuntimeError)

    def test_joinsByResult(self) -> None:
        """phoenix_channel_joins_total counts answers by channel and result."""
        self.client.join("room:1")
        self.client.join("room:2", {"refuse": True})
        self.client.join("room:3", {"crash": True})
        self.client.join("other:1")
        self.assertEqual(value(self.endpoint, "phoenix_channel_joins_total", channel="CountChannel", result="ok"), 1)
        self.assertEqual(value(self.endpoint, "phoenix_channel_joins_total", channel="CountChannel", result="error"), 2)
        self.assertEqual(value(self.endpoint, "phoenix_channel_joins_total", channel="OtherChannel", result="ok"), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_crashes(self) -> None:
        """A callback that raises, a join that raises and an abnormal stop are crashes; a normal stop is not."""
        self.client.join("room:1")
        self.client.join("room:2")
        self.client.join("room:3")
        self.client.push("room:1", "crash")
        self.client.push("room:2", "stop_badly")
        self.client.push("room:3", "stop")
        self.client.join("room:4", {"crash": True})
        self.assertEqual(value(self.endpoint, "phoenix_channel_crashes_total", channel="CountChannel"), 3)
        self.flushLoggedErrors(RuntimeError)


class SessionDropTests(SynchronousTestCase):
    """Clients the session layer closes: rate, backlog, disconnect."""

    def setUp(self) -> None:
        self.test = ChannelTest(CountEndpoint)
        self.endpoint = self.test.endpoint

    def dropped(self, reason: str) -> float:
        return value(self.endpoint, "phoenix_clients_dropped_total", reason=reason)

    def test_rate(self) -> None:
        """A client closed for its rate (1008) is counted once, under rate."""
        self.endpoint.event_burst = 1
        client = self.test.socket(CountSocket)
        for _ in range(5):
            client.heartbeat()
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(self.dropped("rate"), 1)

    def test_backlog(self) -> None:
        """A client that queues too much behind a pending join (1008) is counted under backlog."""
        client = self.test.socket(CountSocket)
        client.join("room:1", {"hang": True})
        for _ in range(5):
            client.heartbeat()
        self.assertEqual(client.close_code, 1008)
        self.assertEqual(self.dropped("backlog"), 1)

    def test_disconnect(self) -> None:
        """A client sent disconnect through its socket id (1001) is counted under disconnect."""
        client = self.test.socket(CountSocket, id="user:7")
        self.endpoint.broadcast("user:7", "disconnect", {})
        self.assertEqual(client.close_code, 1001)
        self.assertEqual(self.dropped("disconnect"), 1)

    def test_everyReasonListed(self) -> None:
        """Every reason is reported from the start, at 0."""
        family = next(f for f in self.endpoint.metrics.families() if f.name == "phoenix_clients_dropped_total")
        self.assertEqual({labels[0] for labels, _ in family.samples}, set(DROP_REASONS))
        self.assertEqual({n for _, n in family.samples}, {0})


class WebSocketMetricsTests(_WebSocketCase):
    """Connections, connects and drops of the WebSocket transport."""

    def dropped(self, reason: str) -> float:
        return value(self.endpoint, "phoenix_clients_dropped_total", reason=reason)

    def test_connections(self) -> None:
        """phoenix_connections counts open WebSockets by socket; connects count those accepted."""
        clients = [self.ws() for _ in range(3)]
        self.ws("/idle/websocket?vsn=2.0.0")
        self.assertEqual(value(self.endpoint, "phoenix_connections", socket="CountSocket", transport="websocket"), 3)
        self.assertEqual(value(self.endpoint, "phoenix_connections", socket="IdleSocket", transport="websocket"), 1)
        self.assertEqual(value(self.endpoint, "phoenix_connects_total", socket="CountSocket", transport="websocket"), 3)
        clients[0].lose()
        self.assertEqual(value(self.endpoint, "phoenix_connections", socket="CountSocket", transport="websocket"), 2)
        self.assertEqual(value(self.endpoint, "phoenix_connects_total", socket="CountSocket", transport="websocket"), 3)

    def test_malformed(self) -> None:
        """A frame the serializer cannot decode (1011) is a drop for malformed."""
        client = self.ws()
        client.send("not json")
        self.assertEqual(self.dropped("malformed"), 1)
        self.assertEqual(client.protocol.session.closed, True)

    def test_idle(self) -> None:
        """A connection idle for the socket's timeout (1000) is a drop for idle."""
        self.ws("/idle/websocket?vsn=2.0.0")
        self.reactor.advance(1.5)
        self.assertEqual(self.dropped("idle"), 1)

    def test_tooLarge(self) -> None:
        """A frame over max_frame_size (1009) is a drop for too_large."""
        client = self.ws()
        client.send_raw(client_frame(b"x" * 2000))
        self.assertEqual(self.dropped("too_large"), 1)

    def test_protocol(self) -> None:
        """An unmasked client frame (1002) is a drop for protocol; the drop is counted once."""
        client = self.ws()
        client.send_raw(client_frame(b'[null,"1","phoenix","heartbeat",{}]', mask=False))
        client.send_raw(client_frame(b'[null,"2","phoenix","heartbeat",{}]', mask=False))
        self.assertEqual(self.dropped("protocol"), 1)

    def test_slow(self) -> None:
        """A client that does not read past max_lag (1013) is a drop for slow."""
        self.endpoint.max_lag = 100
        client = self.ws()
        client.send('["1","1","room:1","phx_join",{}]')
        client.protocol.output.pauseProducing()  # its socket is full
        self.endpoint.broadcast("room:1", "news", {"x": "y" * 200})
        self.reactor.advance(0)
        self.assertEqual(self.dropped("slow"), 1)

    def test_clientCloseNotADrop(self) -> None:
        """A client that goes away on its own is no drop."""
        client = self.ws()
        client.lose()
        self.assertEqual(sum(self.endpoint.metrics.dropped.values()), 0)


class RefusalTests(_WebSocketCase):
    """phoenix_handshakes_refused_total, by status, wherever a connection is refused."""

    def refused(self, status: int) -> float:
        return value(self.endpoint, "phoenix_handshakes_refused_total", status=str(status))

    def raw(self, data: bytes) -> StringTransport:
        reader = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = _Transport()
        reader.makeConnection(transport)
        if data:
            reader.dataReceived(data)
        self.reactor.advance(0)
        return transport

    def test_listedFromStart(self) -> None:
        """The usual statuses are reported from the start, at 0."""
        for status in REFUSAL_STATUSES:
            self.assertEqual(self.refused(status), 0)

    def test_site(self) -> None:
        """The site's refusals: 400 (bad head), 431 (head too large), 408 (too slow), 503 (too many)."""
        self.raw(b"NOT HTTP\r\n\r\n")
        self.raw(b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n")
        self.raw(b"GET /socket/websocket HTTP/1.1\r\n")
        self.reactor.advance(self.endpoint.handshake_timeout + 1)
        self.site.max_connections = 0
        self.raw(b"")
        self.assertEqual([self.refused(s) for s in (400, 431, 408, 503)], [1, 1, 1, 1])

    def test_connectRefused(self) -> None:
        """A socket's connect that refuses is a 403."""
        client = WebSocketClient(self.endpoint, self.site, "/socket/websocket?vsn=2.0.0&refuse=1")
        self.assertIn(b"403", client.transport.value().split(b"\r\n")[0])
        self.assertEqual(self.refused(403), 1)

    def test_autobahnRefusal(self) -> None:
        """A handshake Autobahn refuses (a bad WebSocket version) is counted under its status."""
        transport = self.raw(
            b"GET /socket/websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n\r\n"
        )
        status = int(transport.value().split(b" ")[1])
        self.assertGreaterEqual(status, 400)
        self.assertEqual(self.refused(status), 1)

    def test_connectTimeout(self) -> None:
        """A connect that never answers until the handshake timeout is counted as 408."""
        self.patch(CountSocket, "connect", lambda self, params, info: Deferred())
        WebSocketClient(self.endpoint, self.site)
        self.reactor.advance(self.endpoint.handshake_timeout + 1)
        self.assertEqual(self.refused(408), 1)


class LongPollMetricsTests(LongPollTestCase):
    """The long-poll transport's sessions, refusals and drops."""

    endpoint_class = LongPollEndpoint

    def test_sessionsAndConnects(self) -> None:
        """Long-poll sessions are connections of the longpoll transport."""
        self.open()
        self.open()
        self.assertEqual(value(self.endpoint, "phoenix_connections", socket="EchoSocket", transport="longpoll"), 2)
        self.assertEqual(value(self.endpoint, "phoenix_connects_total", socket="EchoSocket", transport="longpoll"), 2)

    def test_refused(self) -> None:
        """A refused connect and a refused origin are 403; past max_longpoll_sessions, 503."""
        self.request("GET", "/socket/longpoll?vsn=2.0.0&refuse=1")
        self.request("GET", "/socket/longpoll?vsn=2.0.0", headers={"Origin": "https://evil.example"})
        self.patch(self.endpoint, "max_longpoll_sessions", 0)
        self.request("GET", "/socket/longpoll?vsn=2.0.0")
        self.assertEqual(value(self.endpoint, "phoenix_handshakes_refused_total", status="403"), 2)
        self.assertEqual(value(self.endpoint, "phoenix_handshakes_refused_total", status="503"), 1)
        self.flushLoggedErrors()

    def test_malformed(self) -> None:
        """A post the serializer cannot decode ends the session: a drop for malformed."""
        token = self.open()
        self.assertEqual(self.post(token, "[not json")["status"], 400)
        self.assertEqual(value(self.endpoint, "phoenix_clients_dropped_total", reason="malformed"), 1)

    def test_idle(self) -> None:
        """A session not polled for long enough ends: a drop for idle."""
        self.open()
        self.reactor.advance(100)
        self.assertEqual(value(self.endpoint, "phoenix_clients_dropped_total", reason="idle"), 1)
        self.assertEqual(value(self.endpoint, "phoenix_connections", socket="EchoSocket", transport="longpoll"), 0)

    def test_slow(self) -> None:
        """A session that does not poll while max_lag bytes wait ends: a drop for slow."""
        self.endpoint.max_lag = 100
        token = self.open()
        self.post(token, ["1", "1", "room:1", "phx_join", {}])
        self.endpoint.broadcast("room:1", "news", {"x": "y" * 200})
        self.reactor.advance(0)
        self.assertEqual(value(self.endpoint, "phoenix_clients_dropped_total", reason="slow"), 1)


class PresenceGaugeTests(SynchronousTestCase):
    """phoenix_presence_entries, read from the tracker's state."""

    def test_local(self) -> None:
        """Entries this node tracks are local; they leave with their channel."""
        test = ChannelTest(CountEndpoint)
        client = test.socket(CountSocket)
        client.join("room:1")
        client.push("room:1", "track", {"key": "alice"})
        client.push("room:1", "track", {"key": "bob"})
        self.assertEqual(value(test.endpoint, "phoenix_presence_entries", origin="local"), 2)
        self.assertEqual(value(test.endpoint, "phoenix_presence_entries", origin="remote"), 0)
        client.leave("room:1")
        test.advance(0)
        self.assertEqual(value(test.endpoint, "phoenix_presence_entries", origin="local"), 0)

    def test_remote(self) -> None:
        """Entries of other replicas are remote, unless their replica is down."""
        test = ChannelTest(CountEndpoint)
        state = test.endpoint.presence.tracker.state
        state.values[("other@host/1", 1)] = None  # type: ignore[assignment]
        state.values[("down@host/1", 1)] = None  # type: ignore[assignment]
        state.down.add("down@host/1")
        self.assertEqual(value(test.endpoint, "phoenix_presence_entries", origin="remote"), 1)


class _FakeAdapter:
    """A PubSub adapter with the parts the metrics read."""

    def __init__(self, nodes: list[str]) -> None:
        self.nodes = nodes

    def list(self) -> list[str]:
        return sorted(self.nodes)

    def broadcast(self, message: Any) -> None:
        pass

    def direct_broadcast(self, node: str, message: Any) -> bool:
        return False


class ClusterMetricsTests(SynchronousTestCase):
    """Cluster nodes and dropped broadcasts, from the node; Redis counters, from the adapter."""

    def test_noCluster(self) -> None:
        """Without an adapter: no other node, nothing dropped, no Redis metrics."""
        endpoint = CountEndpoint(MemoryReactorClock())
        self.assertEqual(value(endpoint, "phoenix_cluster_nodes"), 0)
        self.assertEqual(value(endpoint, "phoenix_cluster_broadcasts_dropped_total"), 0)
        self.assertFalse([f for f in endpoint.metrics.families() if f.name.startswith("phoenix_redis_")])

    def test_nodes(self) -> None:
        """phoenix_cluster_nodes is the adapter's list of other nodes, read when scraped."""
        endpoint = CountEndpoint(MemoryReactorClock())
        adapter = _FakeAdapter(["a@h", "b@h"])
        endpoint.pubsub.adapter = adapter
        self.assertEqual(value(endpoint, "phoenix_cluster_nodes"), 2)
        adapter.nodes.pop()
        self.assertEqual(value(endpoint, "phoenix_cluster_nodes"), 1)

    def test_nodeDrops(self) -> None:
        """A Node counts broadcasts its links drop and direct broadcasts to nodes not connected."""
        from twisted_phoenix.cluster import Node

        from .test_cluster_link import make_link

        reactor = MemoryReactorClock()
        endpoint = CountEndpoint(reactor)
        node = Node(reactor, "me@127.0.0.1", cookie="c" * 32, pubsub=endpoint.pubsub)
        self.assertFalse(node.direct_broadcast("nobody@127.0.0.1", Broadcast("t", "e", {})))
        link, fake_node, remote, _ = make_link(self)
        link.close()  # a broadcast on a closed link is dropped
        link.send_broadcast("t", "e", [b"{}"], False)
        self.assertEqual((link.dropped, fake_node.broadcasts_dropped), (1, 1))
        link.node = node
        link.send_broadcast("t", "e", [b"{}"], False)
        self.assertEqual(node.broadcasts_dropped, 2)
        self.assertEqual(value(endpoint, "phoenix_cluster_broadcasts_dropped_total"), 2)
        self.flushLoggedErrors()

    def test_sourceNotAdapter(self) -> None:
        """A node added as a source is read even when another adapter (Redis) carries the broadcasts."""
        endpoint = CountEndpoint(MemoryReactorClock())

        class FakeNode:
            broadcasts_dropped = 5
            skipped = 7

        endpoint.pubsub.adapter = _FakeAdapter([])
        endpoint.metrics.add_source(FakeNode())
        self.assertEqual(value(endpoint, "phoenix_cluster_broadcasts_dropped_total"), 5)
        self.assertEqual(value(endpoint, "phoenix_cluster_broadcasts_skipped_total"), 7)

    def test_redis(self) -> None:
        """With the Redis adapter, each of its counters is a phoenix_redis_*_total, plus phoenix_redis_connected."""
        try:
            from twisted_phoenix.adapters.redis import RedisAdapter
        except ImportError as e:  # pragma: no cover
            raise self.skipTest(f"the Redis adapter needs txredisapi: {e}")
        reactor = MemoryReactorClock()
        endpoint = CountEndpoint(reactor)
        adapter = RedisAdapter(reactor, endpoint.pubsub, "redis://127.0.0.1:1")
        adapter.published = 7
        adapter.disconnects = 2
        self.assertEqual(value(endpoint, "phoenix_redis_published_total"), 7)
        self.assertEqual(value(endpoint, "phoenix_redis_disconnects_total"), 2)
        self.assertEqual(value(endpoint, "phoenix_redis_connected"), 0)
        names = {f.name for f in endpoint.metrics.families()}
        for counter in adapter.counters():
            self.assertIn(f"phoenix_redis_{counter}_total", names)


class ExpositionTests(SynchronousTestCase):
    """The Prometheus text the collector writes, parsed back."""

    def setUp(self) -> None:
        try:
            from prometheus_client import generate_latest
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError as e:  # pragma: no cover
            raise self.skipTest(f"needs prometheus-client: {e}")
        self.generate_latest = generate_latest
        self.parse = text_string_to_metric_families
        self.test = ChannelTest(CountEndpoint)
        self.endpoint = self.test.endpoint

    def samples(self, text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in self.parse(text)
            for s in family.samples
        }

    def test_everyMetric(self) -> None:
        """Every metric is exposed, with its type, labels and current value."""
        client = self.test.socket(CountSocket)
        client.join("room:1")
        client.push("room:1", "ping")
        self.endpoint.broadcast("room:1", "news", {})
        text = self.generate_latest(self.endpoint.metrics.registry()).decode()
        types = {family.name: family.type for family in self.parse(text)}
        for name, kind in [
            ("phoenix_connections", "gauge"),
            ("phoenix_connects", "counter"),
            ("phoenix_channels", "gauge"),
            ("phoenix_channel_joins", "counter"),
            ("phoenix_channel_crashes", "counter"),
            ("phoenix_messages_received", "counter"),
            ("phoenix_messages_sent", "counter"),
            ("phoenix_broadcasts", "counter"),
            ("phoenix_deliveries", "counter"),
            ("phoenix_clients_dropped", "counter"),
            ("phoenix_handshakes_refused", "counter"),
            ("phoenix_cluster_nodes", "gauge"),
            ("phoenix_cluster_broadcasts_dropped", "counter"),
            ("phoenix_presence_entries", "gauge"),
        ]:
            self.assertEqual(types.get(name), kind, name)
        samples = self.samples(text)
        self.assertEqual(samples["phoenix_channels", frozenset({("channel", "CountChannel")})], 1)
        self.assertEqual(samples["phoenix_messages_received_total", frozenset({("kind", "event")})], 1)
        self.assertEqual(samples["phoenix_messages_sent_total", frozenset({("kind", "broadcast")})], 1)
        self.assertEqual(samples["phoenix_broadcasts_total", frozenset()], 1)
        self.assertEqual(samples["phoenix_deliveries_total", frozenset()], 1)
        self.assertEqual(samples["phoenix_handshakes_refused_total", frozenset({("status", "408")})], 0)
        # The process's own metrics come along.
        self.assertIn("process_cpu_seconds", types)

    def test_readWhenScraped(self) -> None:
        """The same registry reads the counters anew at every scrape."""
        registry = self.endpoint.metrics.registry()
        before = self.samples(self.generate_latest(registry).decode())
        self.endpoint.broadcast("room:1", "news", {})
        after = self.samples(self.generate_latest(registry).decode())
        key = ("phoenix_broadcasts_total", frozenset())
        self.assertEqual((before[key], after[key]), (0, 1))

    def test_resource(self) -> None:
        """GET /metrics on the resource answers the text format with its content type."""
        root = self.endpoint.metrics.resource()
        request = DummyRequest([b"metrics"])
        page = root.getChildWithDefault(b"metrics", request)
        body = page.render(request)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        self.assertIn(("phoenix_broadcasts_total", frozenset()), self.samples(body.decode()))

    def test_openMetrics(self) -> None:
        """A scraper that asks for OpenMetrics gets it."""
        root = self.endpoint.metrics.resource()
        request = DummyRequest([b"metrics"])
        request.requestHeaders.setRawHeaders(b"accept", [b"application/openmetrics-text; version=1.0.0"])
        body = root.getChildWithDefault(b"metrics", request).render(request)
        self.assertTrue(request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.rstrip().endswith(b"# EOF"))

    def test_readingFails(self) -> None:
        """A metric that cannot be read answers 500 (logged), not a traceback to the scraper."""
        root = self.endpoint.metrics.resource()

        def broken() -> Any:
            raise RuntimeError("cannot read")

        self.patch(Metrics, "families", lambda self: broken())
        request = DummyRequest([b"metrics"])
        root.getChildWithDefault(b"metrics", request).render(request)
        self.assertEqual(request.responseCode, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
