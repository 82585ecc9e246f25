"""
Tests for L{twisted_phoenix._output}: the per-turn flusher and a
connection's pending output, in memory and over real loopback sockets.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from twisted_phoenix._output import BATCH, JOIN, Flusher, StreamOutput, write_now
from twisted_phoenix.serializers import Frame

from ._client import capture_logs


class _Exploding:
    """An output whose flush raises."""

    def flush(self) -> None:
        raise RuntimeError("boom")


class _Counting:
    def __init__(self) -> None:
        self.flushed = 0

    def flush(self) -> None:
        self.flushed += 1


class FlusherTests(TestCase):
    """
    L{Flusher}.
    """

    def test_oncePerTurn(self) -> None:
        """Outputs made dirty in one turn are flushed together, once, at the end of the turn."""
        clock = Clock()
        flusher = Flusher(clock)
        a, b = _Counting(), _Counting()
        flusher.dirty(a)
        flusher.dirty(b)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual((a.flushed, b.flushed), (0, 0))
        clock.advance(0)
        self.assertEqual((a.flushed, b.flushed), (1, 1))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_errorDoesNotStopOthers(self) -> None:
        """An output whose flush raises is logged; the outputs after it are still flushed."""
        clock = Clock()
        flusher = Flusher(clock)
        logs = capture_logs(self)
        after = _Counting()
        flusher.dirty(_Exploding())
        flusher.dirty(after)
        clock.advance(0)
        self.assertEqual(after.flushed, 1)
        failures = [e["log_failure"] for e in logs.events if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertTrue(failures[0].check(RuntimeError))
        self.flushLoggedErrors(RuntimeError)
        # And the next turn's outputs are scheduled as usual.
        flusher.dirty(after)
        clock.advance(0)
        self.assertEqual(after.flushed, 2)


class _Overflow:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def _memory_output(max_lag: int = 1000) -> tuple[StreamOutput, StringTransport, Clock, _Overflow]:
    clock = Clock()
    transport = StringTransport()
    overflow = _Overflow()
    output = StreamOutput(transport, Flusher(clock), max_lag, overflow)
    return output, transport, clock, overflow


class StreamOutputMemoryTests(SynchronousTestCase):
    """
    L{StreamOutput} on a transport it writes through (as over TLS).
    """

    def test_registersAsStreamingProducer(self) -> None:
        """The output is its transport's streaming producer."""
        output, transport, _, _ = _memory_output()
        self.assertIs(transport.producer, output)
        self.assertTrue(transport.streaming)

    def test_queuedUntilEndOfTurn(self) -> None:
        """Frames sent during a turn are written at its end, in order, in one write."""
        output, transport, clock, _ = _memory_output()
        output.send(b"one")
        output.send(b"two")
        self.assertEqual(transport.value(), b"")
        self.assertEqual(output.lag, 6)
        clock.advance(0)
        self.assertEqual(transport.value(), b"onetwo")
        self.assertEqual(output.lag, 0)

    def test_pausedKeepsReferences(self) -> None:
        """While the transport pauses the output, frames wait as the very objects sent."""
        output, transport, clock, _ = _memory_output(max_lag=10_000)
        output.pauseProducing()
        frames = [bytes([65 + n]) * 100 for n in range(5)]
        for frame in frames:
            output.send(frame)
        clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(output.lag, 500)
        for queued, frame in zip(output._queue, frames):
            self.assertIs(queued, frame)
        output.resumeProducing()
        self.assertEqual(transport.value(), b"".join(frames))
        self.assertEqual(output.lag, 0)

    def test_batches(self) -> None:
        """Writes through a transport join at most BATCH bytes (a larger frame goes whole)."""
        output, transport, clock, _ = _memory_output(max_lag=10 * BATCH)
        writes: list[bytes] = []
        transport.write = writes.append  # type: ignore[method-assign]
        small = b"s" * (BATCH // 4)
        big = b"b" * (BATCH * 2)
        for frame in (small, small, small, small, small, big):
            output.send(frame)
        clock.advance(0)
        self.assertEqual([len(w) for w in writes], [BATCH, len(small) + len(big)])
        self.assertEqual(b"".join(writes), small * 5 + big)

    def test_overflow(self) -> None:
        """Past max_lag while paused, the queue is dropped and on_overflow called once, at flush."""
        output, transport, clock, overflow = _memory_output(max_lag=250)
        output.pauseProducing()
        for _ in range(3):
            output.send(b"x" * 100)
        self.assertTrue(output.overflowed)
        self.assertEqual(output.lag, 0)
        self.assertEqual(overflow.calls, 0)  # not from inside whatever loop is sending
        output.send(b"more")
        clock.advance(0)
        self.assertEqual(overflow.calls, 1)
        self.assertEqual(output.lag, 0)
        output.send(b"more")
        clock.advance(0)
        self.assertEqual(overflow.calls, 1)
        self.assertEqual(transport.value(), b"")

    def test_burstWhileWritingIsNotLag(self) -> None:
        """A burst larger than max_lag within one turn is written, not counted as lag."""
        output, transport, clock, overflow = _memory_output(max_lag=250)
        for _ in range(5):
            output.send(b"x" * 100)
        clock.advance(0)
        self.assertFalse(output.overflowed)
        self.assertEqual(len(transport.value()), 500)

    def test_stopHandsOverAndUnregisters(self) -> None:
        """stop() writes what waits to the transport and unregisters the output."""
        output, transport, clock, _ = _memory_output()
        output.pauseProducing()
        output.send(b"left")
        output.stop()
        self.assertIsNone(transport.producer)
        self.assertEqual(transport.value(), b"left")
        output.send(b"after")
        clock.advance(0)
        self.assertEqual(transport.value(), b"left")

    def test_sendFrameFramesOnceAndStopsWhenClosed(self) -> None:
        """send_frame frames a Frame once for every output; nothing once the output is not open, or stopped."""
        output, transport, clock, _ = _memory_output()
        other, other_transport, other_clock, _ = _memory_output()
        frame = Frame(b"hi", False)
        output.send_frame(frame)
        other.send_frame(frame)
        self.assertEqual(frame.wire, b"\x81\x02hi")
        clock.advance(0)
        other_clock.advance(0)
        self.assertEqual((transport.value(), other_transport.value()), (b"\x81\x02hi", b"\x81\x02hi"))
        output.open = False
        output.send_frame(Frame(b"late", False))
        other.stop()
        self.assertFalse(other.open)
        other.send_frame(Frame(b"late", False))
        clock.advance(0)
        other_clock.advance(0)
        self.assertEqual((output.lag, other.lag), (0, 0))
        self.assertEqual((transport.value(), other_transport.value()), (b"\x81\x02hi", b"\x81\x02hi"))

    def test_disconnectingDropsQueue(self) -> None:
        """Nothing is written once the transport is closing."""
        output, transport, clock, _ = _memory_output()
        output.send(b"late")
        transport.loseConnection()
        clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(output.lag, 0)

    def test_stopProducingDropsQueue(self) -> None:
        """stopProducing (the connection is gone) drops what waits."""
        output, transport, clock, _ = _memory_output()
        output.send(b"late")
        output.stopProducing()
        clock.advance(0)
        self.assertEqual(transport.value(), b"")


class _Server(Protocol):
    """Records the server side of a loopback connection."""

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost.callback(None)  # type: ignore[attr-defined]


class StreamOutputSocketTests(TestCase):
    """
    L{StreamOutput} on a real plain TCP connection, where it sends on the
    socket itself.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        factory = Factory.forProtocol(_Server)
        factory.connected = Deferred()  # type: ignore[attr-defined]
        factory.lost = Deferred()  # type: ignore[attr-defined]
        self.lost = factory.lost  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.client.setblocking(False)
        self.server = yield factory.connected  # type: ignore[attr-defined]
        self.transport = self.server.transport
        self.assertIsInstance(self.transport, tcp.Server)
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        self.transport.setTcpNoDelay(True)  # as Autobahn sets it on WebSocket connections
        self.overflow = _Overflow()
        self.output = StreamOutput(self.transport, Flusher(reactor), 1 << 30, self.overflow)

        @inlineCallbacks
        def close() -> Any:
            self.client.close()
            if self.transport.connected:
                self.transport.abortConnection()
            yield self.lost

        self.addCleanup(close)

    def read_all(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.client.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    @inlineCallbacks
    def test_sendsOnTheSocket(self) -> Any:
        """Frames go out through the output's own socket calls, not Twisted's buffer."""
        self.output.send(b"hello ")
        self.output.send(b"world")
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.transport.dataBuffer, b"")
        self.assertEqual(self.transport._tempDataBuffer, [])
        received = b""
        while len(received) < 11:
            received += self.read_all()
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(received, b"hello world")

    def recv_exactly(self, size: int) -> bytes:
        """Read ``size`` bytes from the client's socket, blocking (the kernel has them or is sending them)."""
        self.client.setblocking(True)
        self.client.settimeout(10)
        try:
            received = b""
            while len(received) < size:
                chunk = self.client.recv(size - len(received))
                if not chunk:
                    break
                received += chunk
            return received
        finally:
            self.client.setblocking(False)

    def test_writeNow(self) -> None:
        """write_now sends on the socket at once: nothing buffered, no write registered."""
        answer = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
        write_now(self.transport, answer)
        self.assertEqual((self.transport.dataBuffer, self.transport._tempDataBuffer), (b"", []))
        self.assertNotIn(self.transport, reactor.getWriters())
        self.assertEqual(self.recv_exactly(len(answer)), answer)  # in the kernel already

    @inlineCallbacks
    def test_writeNowAfterBuffered(self) -> Any:
        """Bytes Twisted holds go first: write_now then writes through the transport."""
        self.transport.write(b"first ")
        write_now(self.transport, b"second")
        self.assertEqual(self.transport._tempDataBuffer, [b"first ", b"second"])
        received = b""
        deadline = reactor.seconds() + 30
        while len(received) < 12 and reactor.seconds() < deadline:
            received += self.read_all()
            yield deferLater(reactor, 0, lambda: None)  # Twisted writes when the reactor turns
        self.assertEqual(received, b"first second")

    @inlineCallbacks
    def test_writeNowPartial(self) -> Any:
        """What the kernel does not take goes to the transport, in order, and arrives."""
        data = bytes(range(256)) * (4 * 4096)  # 4 MiB: more than the socket buffers hold
        write_now(self.transport, data)
        held = len(self.transport.dataBuffer) + self.transport._tempDataLen
        self.assertGreater(held, 0)
        self.assertLess(held, len(data))
        received = b""
        deadline = reactor.seconds() + 30
        while len(received) < len(data) and reactor.seconds() < deadline:
            received += self.read_all()
            yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(received, data)

    @inlineCallbacks
    def test_stalledClientKeepsSharedFrames(self) -> Any:
        """
        A client that does not read: the kernel takes what it can, the rest
        waits as references to the frames sent, and Twisted buffers nothing;
        once the client reads, everything arrives, in order.
        """
        frames = [bytes([48 + n % 10]) * 4096 for n in range(512)]  # 2 MiB, far beyond the shrunk socket buffers
        for frame in frames:
            self.output.send(frame)
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(self.output._paused)
        self.assertGreater(self.output.lag, 0)
        self.assertEqual(self.transport.dataBuffer, b"")
        self.assertEqual(self.transport._tempDataBuffer, [])
        # Every queued item is one of the frames sent (or a view of the one
        # the kernel took part of): no private copy.
        queued = list(self.output._queue)
        for item in queued[1:]:
            self.assertTrue(any(item is frame for frame in frames[-len(queued) :]))
        received = []
        total = sum(map(len, frames))
        size = 0
        while size < total:
            chunk = self.read_all()
            received.append(chunk)
            size += len(chunk)
            yield deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(b"".join(received), b"".join(frames))
        self.assertEqual(self.output.lag, 0)
        self.assertFalse(self.output._paused)
        self.assertEqual(self.overflow.calls, 0)

    @inlineCallbacks
    def test_smallFramesJoined(self) -> Any:
        """
        A turn's small frames go out joined in one send; what the kernel
        does not take of them stays queued as the frames themselves (or a
        view of the one it took part of), never the joined copy, and arrives
        in order once the client reads.
        """
        # Fill the kernel's buffers first, as a client that stopped reading has.
        filler = b"-" * 65536
        sock = self.transport.getHandle()
        sock.setblocking(False)
        filled = 0
        while True:
            try:
                filled += sock.send(filler)
            except BlockingIOError:
                break
        frames = [b"%05d" % n + b"." * 95 for n in range(JOIN // 100)]  # just under JOIN bytes
        for frame in frames:
            self.output.send(frame)
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(self.output._paused)
        queued = list(self.output._queue)
        self.assertGreater(len(queued), 1)
        for item in queued:
            frame = item.obj if isinstance(item, memoryview) else item
            self.assertTrue(any(frame is f for f in frames))
        self.assertEqual(self.output.lag, sum(map(len, queued)))
        self.assertEqual(self.transport.dataBuffer, b"")
        received = b""
        total = filled + sum(map(len, frames))
        while len(received) < total:
            received += self.read_all()
            yield deferLater(reactor, 0.001, lambda: None)
        self.assertEqual(received, b"-" * filled + b"".join(frames))
        self.assertEqual(self.output.lag, 0)
        self.assertFalse(self.output._paused)

    @inlineCallbacks
    def test_overflowOnRealSocket(self) -> Any:
        """A stalled client more than max_lag behind is given up once."""
        self.output.max_lag = 64 * 1024
        for _ in range(200):
            self.output.send(b"z" * 4096)
            yield deferLater(reactor, 0, lambda: None)
            if self.output.overflowed:
                break
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(self.output.overflowed)
        self.assertEqual(self.overflow.calls, 1)
        self.assertEqual(self.output.lag, 0)

    @inlineCallbacks
    def test_lostConnectionIsSkipped(self) -> Any:
        """
        A connection lost earlier in the same turn is skipped by the flush:
        no exception, nothing queued.
        """
        self.output.send(b"before")
        self.transport.connectionLost(Failure(ConnectionDone()))
        flusher_errors = capture_logs(self)
        yield deferLater(reactor, 0, lambda: None)
        self.assertEqual(self.output.lag, 0)
        self.assertEqual([e for e in flusher_errors.events if e.get("log_failure")], [])
