"""
Tests for L{twisted_phoenix._reactor}: Twisted's own reactor tests run
against L{DirectEPollReactor}, its dispatch over real loopback sockets, and
the plugin's choice of reactor in real twistd processes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTCP
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.test import test_core, test_fdset, test_time
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.trial.unittest import SkipTest, TestCase

from ._server import start_server

DIRECT = "twisted_phoenix._reactor.DirectEPollReactor"


# Twisted's conformance tests for reactors (system events, file descriptor
# sets, timed calls), on this one.


class DirectSystemEventTestsBuilder(test_core.SystemEventTestsBuilder):
    _reactors = [DIRECT]


class DirectFDSetTestsBuilder(test_fdset.ReactorFDSetTestsBuilder):
    _reactors = [DIRECT]

    def test_lostFileDescriptor(self) -> None:
        # Twisted skips it for EPollReactor by its class name: closing a
        # descriptor removes it from the epoll set, so it cannot be noticed.
        raise SkipTest("epoll cannot detect lost file descriptors")


class DirectTimeTestsBuilder(test_time.TimeTestsBuilder):
    _reactors = [DIRECT]


class _Echo(Protocol):
    """Echoes; raises on ``boom``."""

    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise ZeroDivisionError("boom")
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost.append(self)


class _Client(Protocol):
    def __init__(self, send: bytes, done: Any) -> None:
        self.send = send
        self.done = done
        self.received = b""
        self.closed = False

    def connectionMade(self) -> None:
        self.transport.write(self.send)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.done(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.done(self)


class DirectDispatchTestsBuilder(ReactorBuilder):
    """I/O events reach their selectables over real loopback sockets."""

    _reactors = [DIRECT]
    requiredInterfaces = (IReactorTCP,)

    def _serve(self, reactor: Any) -> tuple[Factory, int]:
        factory = Factory.forProtocol(_Echo)
        factory.lost = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return factory, port.getHost().port

    def _connect(self, reactor: Any, port: int, send: bytes, clients: list[_Client], done: Any) -> None:
        factory = ClientFactory()

        def build(addr: Any) -> _Client:
            client = _Client(send, done)
            clients.append(client)
            return client

        factory.buildProtocol = build  # type: ignore[method-assign]
        reactor.connectTCP("127.0.0.1", port, factory)

    def test_errorClosesOnlyItsConnection(self) -> None:
        """
        What one connection's protocol raises is logged and closes that
        connection; another on the same reactor is served all the while.
        """
        reactor = self.buildReactor()
        server, port = self._serve(reactor)
        clients: list[_Client] = []
        seen: dict[str, Any] = {}

        def done(_: _Client) -> None:
            bad = [c for c in clients if c.send == b"boom"]
            good = [c for c in clients if c.send == b"hello"]
            if not seen and bad and bad[0].closed and good and good[0].received == b"hello":
                # What stood when the bad one was gone and the good one served
                # (stopping the reactor then closes every connection).
                seen.update(good_closed=good[0].closed, server_lost=len(server.lost))  # type: ignore[attr-defined]
                reactor.stop()

        self._connect(reactor, port, b"boom", clients, done)
        self._connect(reactor, port, b"hello", clients, done)
        self.runReactor(reactor)
        self.assertEqual(seen, {"good_closed": False, "server_lost": 1})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


globals().update(DirectSystemEventTestsBuilder.makeTestCaseClasses())
globals().update(DirectFDSetTestsBuilder.makeTestCaseClasses())
globals().update(DirectTimeTestsBuilder.makeTestCaseClasses())
globals().update(DirectDispatchTestsBuilder.makeTestCaseClasses())


class PluginReactorTests(TestCase):
    """The reactor ``twistd phoenix`` runs on, in real processes."""

    @inlineCallbacks
    def test_default(self) -> Any:
        """Without --reactor, the plugin installs DirectEPollReactor."""
        server = yield start_server(self)
        self.assertIn(f"reactor class: {DIRECT}.", server.output())

    @inlineCallbacks
    def test_chosen(self) -> Any:
        """twistd --reactor wins."""
        server = yield start_server(self, twistd_args=("--reactor", "poll"))
        self.assertIn("reactor class: twisted.internet.pollreactor.PollReactor.", server.output())
