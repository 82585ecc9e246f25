"""
Tests for L{twisted_phoenix.telemetry}: the events an application observes,
their fields, that every one is delivered, and that nothing is built
without an observer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.telemetry import EVENTS, NAMESPACE, Telemetry
from twisted_phoenix.testing import ChannelTest

from ._client import capture_logs
from .test_longpoll import SECRET, LongPollEndpoint, LongPollTestCase
from .test_metrics import CountEndpoint, CountSocket, WebSocketClient


class Events:
    """An observer that keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["phoenix_event"] == name]

    def one(self, name: str) -> dict[str, Any]:
        found = self.named(name)
        if len(found) != 1:
            raise AssertionError(f"{len(found)} {name} events in {[e['phoenix_event'] for e in self.events]}")
        return found[0]


def fields(event: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: event[name] for name in names}


class TelemetryTests(SynchronousTestCase):
    """The Telemetry object itself."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(1000)
        self.telemetry = Telemetry(self.clock)

    def test_twistedLoggerEvent(self) -> None:
        """An event is a twisted.logger event: namespace, level, time, a format that renders its fields."""
        events = Events()
        self.telemetry.observe(events)
        self.telemetry.emit("leave", topic="room:1", channel="RoomChannel", socket="UserSocket", reason="left", duration=2.5)
        event = events.one("leave")
        self.assertEqual(event["log_namespace"], NAMESPACE)
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(event["log_time"], 1000)
        self.assertEqual(formatEvent(event), "leave room:1 RoomChannel on UserSocket: left after 2.500 s")

    def test_observeOnce(self) -> None:
        """An observer added twice is called once; one removed is not called."""
        events = Events()
        self.telemetry.observe(events)
        self.telemetry.observe(events)
        self.telemetry.emit("disconnect", socket="S", transport="websocket", duration=1.0)
        self.telemetry.unobserve(events)
        self.telemetry.unobserve(events)
        self.telemetry.emit("disconnect", socket="S", transport="websocket", duration=1.0)
        self.assertEqual(len(events.events), 1)

    def test_failingObserver(self) -> None:
        """An observer that raises is logged; the others get the event, and it keeps observing."""
        logs = capture_logs(self)
        calls: list[Any] = []

        def broken(event: dict[str, Any]) -> None:
            calls.append(event)
            raise RuntimeError("observer bug")

        events = Events()
        self.telemetry.observe(broken)
        self.telemetry.observe(events)
        self.telemetry.emit("disconnect", socket="S", transport="websocket", duration=1.0)
        self.telemetry.emit("disconnect", socket="S", transport="websocket", duration=1.0)
        self.assertEqual((len(calls), len(events.events)), (2, 2))
        self.assertEqual(len(logs.find("A telemetry observer failed on disconnect")), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_globalLogPublisher(self) -> None:
        """The server's log can observe the events: they arrive as log lines."""
        logs = capture_logs(self)
        self.telemetry.observe(globalLogPublisher)
        self.telemetry.emit("drop", socket="S", transport="longpoll", reason="idle", duration=3.0)
        self.assertEqual(logs.find("drop S longpoll"), ["drop S longpoll: idle after 3.000 s"])

    def test_everyEventFormats(self) -> None:
        """Every event's format names only fields the event carries (checked by the tests below)."""
        self.assertEqual(
            set(EVENTS),
            {"connect", "connect_refused", "join", "join_refused", "leave", "crash", "drop", "disconnect"},
        )


class ChannelEventTests(SynchronousTestCase):
    """join, join_refused, leave, crash, drop and disconnect on in-memory connections."""

    def setUp(self) -> None:
        self.test = ChannelTest(CountEndpoint)
        self.endpoint = self.test.endpoint
        self.events = Events()
        self.endpoint.telemetry.observe(self.events)
        self.client = self.test.socket(CountSocket)

    def assertFormats(self) -> None:
        for event in self.events.events:
            text = formatEvent(event)
            self.assertNotIn("Unable to format", text, event)
            self.assertIn(event["phoenix_event"], text)

    def test_join(self) -> None:
        """A join: topic, channel, socket and the seconds it took."""
        self.client.join("room:1")
        event = self.events.one("join")
        self.assertEqual(
            fields(event, "topic", "channel", "socket", "duration"),
            {"topic": "room:1", "channel": "CountChannel", "socket": "CountSocket", "duration": 0},
        )
        self.assertFormats()

    def test_joinRefused(self) -> None:
        """A refused join carries the reason of its reply; an unmatched topic has no channel."""
        self.client.join("room:1", {"refuse": True})
        self.client.join("nowhere:1")
        self.client.join("room:2", {"crash": True})
        refused = self.events.named("join_refused")
        self.assertEqual(
            [fields(e, "topic", "channel", "reason") for e in refused],
            [
                {"topic": "room:1", "channel": "CountChannel", "reason": "nope"},
                {"topic": "nowhere:1", "channel": None, "reason": "unmatched topic"},
                {"topic": "room:2", "channel": "CountChannel", "reason": "join crashed"},
            ],
        )
        self.assertFalse(self.events.named("join"))
        self.assertFormats()
        self.flushLoggedErrors(RuntimeError)

    def test_tooManyChannels(self) -> None:
        """A join past max_channels is refused with that reason."""
        self.patch(CountSocket, "max_channels", 1)
        self.client.join("room:1")
        self.client.join("room:2")
        self.assertEqual(self.events.one("join_refused")["reason"], "too many channels joined")

    def test_leave(self) -> None:
        """A leave: why the channel ended and how long since it joined."""
        self.client.join("room:1")
        self.client.join("room:2")
        self.client.join("room:3")
        self.test.advance(5)
        self.client.leave("room:1")
        self.client.push("room:2", "stop")
        self.client.close()
        leaves = self.events.named("leave")
        self.assertEqual(
            [fields(e, "topic", "reason", "duration") for e in leaves],
            [
                {"topic": "room:1", "reason": "left", "duration": 5},
                {"topic": "room:2", "reason": "normal", "duration": 5},
                {"topic": "room:3", "reason": "closed", "duration": 5},
            ],
        )
        self.assertFormats()

    def test_crash(self) -> None:
        """A crash carries its failure (log_failure), its phase and the exception."""
        self.client.join("room:1")
        self.client.join("room:2")
        self.client.push("room:1", "crash")
        self.client.push("room:2", "stop_badly")
        self.client.join("room:3", {"crash": True})
        crashes = self.events.named("crash")
        self.assertEqual([(e["topic"], e["phase"]) for e in crashes], [("room:1", "callback"), ("room:2", "stop"), ("room:3", "join")])
        self.assertIsInstance(crashes[0]["log_failure"], Failure)
        self.assertIn("boom", crashes[0]["reason"])
        self.assertEqual(crashes[1]["reason"], "bad")
        self.assertFalse(self.events.named("leave"))
        self.assertFormats()
        self.flushLoggedErrors(RuntimeError)

    def test_dropAndDisconnect(self) -> None:
        """A client closed by the server: drop (with the reason), then disconnect, with its age."""
        self.endpoint.event_burst = 1
        client = self.test.socket(CountSocket)
        self.test.advance(2)
        for _ in range(5):
            client.heartbeat()
        drop = self.events.one("drop")
        self.assertEqual(fields(drop, "reason", "socket", "duration"), {"reason": "rate", "socket": "CountSocket", "duration": 2})
        self.assertEqual(self.events.one("disconnect")["duration"], 2)
        names = [e["phoenix_event"] for e in self.events.events]
        self.assertLess(names.index("drop"), names.index("disconnect"))
        self.assertFormats()

    def test_notRateLimited(self) -> None:
        """Every drop is an event, though the log's warnings about them are rate-limited."""
        logs = capture_logs(self)
        self.endpoint.event_burst = 1
        for _ in range(50):
            client = self.test.socket(CountSocket)
            for _ in range(3):
                client.heartbeat()
        self.assertEqual(len(self.events.named("drop")), 50)
        self.assertEqual(self.endpoint.metrics.dropped["rate"], 50)
        self.assertLessEqual(len(logs.find("kept sending")), 10)

    def test_nothingBuiltWithoutObserver(self) -> None:
        """Without an observer, no event is built (emit is never called)."""
        self.endpoint.telemetry.unobserve(self.events)

        def emit(name: str, **kw: Any) -> None:
            raise AssertionError(f"emitted {name} without an observer")

        self.patch(self.endpoint.telemetry, "emit", emit)
        client = self.test.socket(CountSocket)
        client.join("room:1")
        client.join("room:2", {"refuse": True})
        client.join("nowhere")
        client.push("room:1", "crash")
        client.join("room:3")
        client.leave("room:3")
        self.endpoint.broadcast("user:none", "disconnect", {})
        client.close()
        self.assertEqual(self.endpoint.metrics.joins_received, 4)
        self.flushLoggedErrors(RuntimeError)


class ConnectEventTests(SynchronousTestCase):
    """connect and connect_refused, from the WebSocket handshake."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoint = CountEndpoint(self.reactor, secret_key_base=SECRET)
        self.site = self.endpoint.site()
        self.events = Events()
        self.endpoint.telemetry.observe(self.events)

    def test_connect(self) -> None:
        """A connect: socket, transport, serializer, socket id and the seconds connect took; then a disconnect."""
        client = WebSocketClient(self.endpoint, self.site, "/socket/websocket?vsn=2.0.0&user=7")
        event = self.events.one("connect")
        self.assertEqual(
            fields(event, "socket", "transport", "serializer", "socket_id", "duration"),
            {"socket": "CountSocket", "transport": "websocket", "serializer": "V2JSONSerializer",
             "socket_id": "user:7", "duration": 0},
        )
        client.lose()
        self.assertEqual(fields(self.events.one("disconnect"), "socket", "transport"), {"socket": "CountSocket", "transport": "websocket"})

    def test_refused(self) -> None:
        """A refused connect says why: connect, vsn or origin."""
        WebSocketClient(self.endpoint, self.site, "/socket/websocket?vsn=2.0.0&refuse=1")
        WebSocketClient(self.endpoint, self.site, "/socket/websocket?vsn=9.0.0")
        self.patch(CountEndpoint, "check_origin", ["//allowed.example"])
        WebSocketClient(self.endpoint, self.site, "/socket/websocket?vsn=2.0.0", origin="https://evil.example")
        refused = self.events.named("connect_refused")
        self.assertEqual(
            [fields(e, "socket", "transport", "status", "reason") for e in refused],
            [
                {"socket": "CountSocket", "transport": "websocket", "status": 403, "reason": reason}
                for reason in ("connect", "vsn", "origin")
            ],
        )
        self.assertFalse(self.events.named("connect"))

    def test_drop(self) -> None:
        """A WebSocket dropped by the server: drop with its reason and transport."""
        client = WebSocketClient(self.endpoint, self.site)
        client.send("not json")
        self.assertEqual(
            fields(self.events.one("drop"), "reason", "transport", "socket"),
            {"reason": "malformed", "transport": "websocket", "socket": "CountSocket"},
        )


class LongPollEventTests(LongPollTestCase):
    """connect, connect_refused and drop on the long-poll transport."""

    endpoint_class = LongPollEndpoint

    def setUp(self) -> None:
        super().setUp()
        self.events = Events()
        self.endpoint.telemetry.observe(self.events)

    def test_connectAndDrop(self) -> None:
        """A long-poll session's connect and, once it stops polling, its drop (idle) and disconnect."""
        self.open()
        self.assertEqual(self.events.one("connect")["transport"], "longpoll")
        self.reactor.advance(100)
        self.assertEqual(fields(self.events.one("drop"), "reason", "transport"), {"reason": "idle", "transport": "longpoll"})
        self.assertEqual(self.events.one("disconnect")["transport"], "longpoll")

    def test_refused(self) -> None:
        """A refused long-poll connect."""
        self.request("GET", "/socket/longpoll?vsn=2.0.0&refuse=1")
        self.assertEqual(
            fields(self.events.one("connect_refused"), "transport", "status", "reason"),
            {"transport": "longpoll", "status": 403, "reason": "connect"},
        )
