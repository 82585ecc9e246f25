"""
Tests for :meth:`Endpoint.drain <twisted_phoenix.endpoint.Endpoint.drain>`,
Phoenix's socket drainer, which a worker runs before it stops: WebSocket
clients are closed with 1012, long-poll sessions end, channels terminate
with ``("shutdown", "draining")``, in batches.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix import Channel, Endpoint, Socket, ok

from ._client import connect, serve
from .test_longpoll import EchoChannel, LongPollTestCase, Response

JOIN = ["1", "1", "room:a", "phx_join", {}]


class RecordingChannel(Channel):
    """Joins anything; records how it terminated."""

    terminated: list[Any] = []

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def terminate(self, reason: Any) -> None:
        RecordingChannel.terminated.append(reason)


class RecordingSocket(Socket):
    channels = {"room:*": RecordingChannel}

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        return True


class DrainEndpoint(Endpoint):
    sockets = {"/socket": RecordingSocket}
    check_origin = False


class WebSocketDrainTests(TestCase):
    """Draining WebSocket clients, over real loopback connections."""

    def setUp(self) -> None:
        RecordingChannel.terminated = []

    @defer.inlineCallbacks
    def test_closes_with_1012(self) -> None:
        """Every WebSocket client is closed with 1012 and no reason; its channels terminate with draining."""
        endpoint = DrainEndpoint(reactor)
        server = serve(self, endpoint)
        clients = []
        for _ in range(3):
            client = yield connect(reactor, server.port, test=self)
            reply = yield client.request(JOIN)
            self.assertEqual(reply[4]["status"], "ok")
            clients.append(client)
        told = yield endpoint.drain()
        self.assertEqual(told, 3)
        for client in clients:
            was_clean, code, reason = yield client.wait_closed()
            self.assertEqual((was_clean, code), (True, 1012))
            self.assertFalse(reason)
        self.assertEqual(RecordingChannel.terminated, [("shutdown", "draining")] * 3)
        yield server.wait_no_connections()

    @defer.inlineCallbacks
    def test_opened_while_draining(self) -> None:
        """A WebSocket whose handshake ends after the drain began is closed with 1012 at once."""
        endpoint = DrainEndpoint(reactor)
        server = serve(self, endpoint)
        self.assertEqual((yield endpoint.drain()), 0)
        client = yield connect(reactor, server.port, test=self)
        _, code, _ = yield client.wait_closed()
        self.assertEqual(code, 1012)


class _Connection:
    """Stands for a connection in the drain's batches."""

    def __init__(self, log: list[Any], name: str) -> None:
        self.log = log
        self.name = name

    def drain(self) -> None:
        self.log.append(self.name)


class _Broken(_Connection):
    def drain(self) -> None:
        raise RuntimeError("boom")


class BatchTests(SynchronousTestCase):
    """The drain goes in batches, as Phoenix's drainer does."""

    def test_batches(self) -> None:
        """``batch_size`` connections every ``interval`` seconds; fires with the count after the last batch."""
        clock = Clock()
        endpoint = DrainEndpoint(clock)
        told: list[str] = []
        sweeper = endpoint.websocket_factories()["/socket"].idle
        connections = [_Connection(told, f"c{i}") for i in range(5)]
        sweeper.connections.update(connections)
        d = endpoint.drain(batch_size=2, interval=2.0)
        self.assertEqual(len(told), 2)
        self.assertNoResult(d)
        clock.advance(1.9)
        self.assertEqual(len(told), 2)
        clock.advance(0.1)
        self.assertEqual(len(told), 4)
        clock.advance(2.0)
        self.assertEqual(sorted(told), sorted(c.name for c in connections))
        self.assertEqual(self.successResultOf(d), 5)
        self.assertTrue(endpoint.draining)

    def test_one_failure(self) -> None:
        """A connection whose drain fails is logged; the others are drained all the same."""
        endpoint = DrainEndpoint(Clock())
        told: list[str] = []
        sweeper = endpoint.websocket_factories()["/socket"].idle
        sweeper.connections.update([_Broken(told, "bad"), _Connection(told, "good")])
        self.assertEqual(self.successResultOf(endpoint.drain()), 2)
        self.assertEqual(told, ["good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class LongPollDrainTests(LongPollTestCase):
    """Draining long-poll sessions."""

    def test_sessions_end(self) -> None:
        """A held poll hears 410, the channels terminate with draining, and new sessions are refused (503)."""
        token = self.open()
        self.post(token, JOIN)
        self.poll(token)
        held = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        d = self.endpoint.drain()
        self.assertEqual(self.successResultOf(d), 1)
        answer = Response(held)
        self.assertEqual(answer.json(), {"status": 410})
        # The answers of a draining server close their connection.
        self.assertEqual(answer.headers["connection"], "close")
        self.assertTrue(answer.closed)
        self.assertEqual(EchoChannel.terminated, [("room:a", ("shutdown", "draining"))])
        self.assertEqual(self.sessions(), {})
        self.assertEqual(self.request("GET", "/socket/longpoll?vsn=2.0.0").code, 503)
