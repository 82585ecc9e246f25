# -*- test-case-name: tests.test_output -*-
"""
What waits to be written to one connection, and the per-turn flusher.

A broadcast is encoded and framed once; every subscriber's
:class:`StreamOutput` then holds a *reference* to the same bytes (the output
is where the subscriber's fastlane broadcasts go: they reach it without
touching the connection's protocol object).  An output hands its queue to
the socket only as fast as the socket drains (it is the transport's
streaming producer), so a client that stops reading costs the server a
queue of references to frames that exist anyway, never a private copy of
everything it is behind.  A client more than ``max_lag`` bytes behind is
given up: the output calls its ``on_overflow`` and drops its queue.

Frames queued during one reactor turn are written at the end of the turn by
the :class:`Flusher`, in one write per connection.  One connection's failure
to flush is logged and never reaches another's.
"""

from __future__ import annotations

import errno
import struct
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

if TYPE_CHECKING:
    from .serializers import Frame

__all__ = ["BATCH", "IOV_MAX", "JOIN", "Flusher", "StreamOutput", "plain_socket", "write_now", "ws_frame"]

#: The most bytes an output joins into one write to a transport it does not
#: write to directly (TLS): that transport copies what it buffers.
BATCH = 32 * 1024


def ws_frame(data: bytes, binary: bool) -> bytes:
    """Frame ``data`` as one unmasked, unfragmented server message."""
    first = 0x82 if binary else 0x81
    size = len(data)
    if size < 126:
        return bytes((first, size)) + data
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + data
    return struct.pack("!BBQ", first, 127, size) + data


def plain_socket(transport: Any) -> Any:
    """
    The socket of a plain TCP server transport, which may be written to
    directly; ``None`` for any other (a TLS transport forwards unknown
    attributes to the TCP transport beneath it, so this checks the type).
    """
    return transport.getHandle() if type(transport) is tcp.Server and not transport.TLS else None


def write_now(transport: Any, data: bytes) -> None:
    """
    Write ``data`` now: on a plain TCP transport that holds nothing to go
    first, straight to the socket (no write registration, no later turn);
    what the kernel does not take, and everything on any other transport,
    through ``transport.write``.
    """
    socket = plain_socket(transport)
    if socket is not None and not transport.dataBuffer and not transport._tempDataBuffer and transport.connected:
        try:
            sent = socket.send(data)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                return  # the connection is gone: the reactor will say so
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class Flusher:
    """
    Flushes, once per reactor turn, every output that queued something
    during the turn: a burst of broadcasts costs each subscriber one write,
    not one per frame.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self._dirty: list[Any] = []

    def dirty(self, output: Any) -> None:
        """``output`` has something to write: flush it at the end of this turn."""
        if not self._dirty:
            self.reactor.callLater(0, self.flush)
        self._dirty.append(output)

    def flush(self) -> None:
        """Flush every dirty output; an error in one is logged, the others go on."""
        dirty, self._dirty = self._dirty, []
        for output in dirty:
            try:
                output.flush()
            except Exception:
                self.log.failure("Flushing {output!r} failed", output=output)


#: Buffers handed to one ``sendmsg`` (Linux's IOV_MAX is 1024).
IOV_MAX = 512

#: A queue of at most this many bytes is joined for one ``send``; a larger
#: one goes to ``sendmsg`` frame by frame.  Either way what the kernel does
#: not take stays queued as references to the shared frames.
JOIN = 16 * 1024


@implementer(IPushProducer)
class StreamOutput:
    """
    The pending output of one stream connection (a WebSocket over TCP or TLS).

    On a plain TCP connection the output writes to the socket itself (a
    turn's frames joined for the call when they are few, at most
    :data:`JOIN` bytes, else with ``sendmsg`` over the shared frames); what
    the kernel does not take stays here until the socket drains, as
    references to the shared frames, never a copy.  On any other transport
    (TLS) it writes through the transport, in batches of at most
    :data:`BATCH` bytes, while the transport does not pause it.

    :param transport: the connection's transport; the output registers itself
        as its streaming producer.
    :param flusher: the :class:`Flusher` that calls :meth:`flush` at the end
        of each turn in which something was queued.
    :param max_lag: how many bytes may wait for the client (beyond what the
        kernel took) before it is given up.
    :param on_overflow: called once, from :meth:`flush`, when the client is
        more than ``max_lag`` bytes behind.  The queue is dropped already.
    """

    __slots__ = (
        "transport",
        "flusher",
        "max_lag",
        "on_overflow",
        "overflowed",
        "open",
        "_queue",
        "_bytes",
        "_paused",
        "_dirty",
        "_socket",
    )

    def __init__(
        self, transport: Any, flusher: Flusher, max_lag: int, on_overflow: Callable[[], None]
    ) -> None:
        self.transport = transport
        self.flusher = flusher
        self.max_lag = max_lag
        self.on_overflow = on_overflow
        #: Set once the client fell more than max_lag behind.
        self.overflowed = False
        #: Whether :meth:`send_frame` still takes messages: the owner clears
        #: it when the WebSocket starts closing; :meth:`stop` and a lost
        #: connection clear it too.
        self.open = True
        # A list, not a deque: an empty one costs 56 bytes, and a deque keeps
        # a spare 528-byte block per connection once it has been cleared.
        self._queue: list[Any] = []
        self._bytes = 0
        self._paused = False
        self._dirty = False
        # Only a plain TCP transport is written to directly.
        self._socket = plain_socket(transport)
        transport.registerProducer(self, True)

    def __repr__(self) -> str:
        return f"<StreamOutput {self._bytes} bytes queued{' paused' if self._paused else ''}>"

    @property
    def lag(self) -> int:
        """Bytes waiting here for the client."""
        return self._bytes

    def send_frame(self, frame: Frame) -> None:
        """
        Queue a message: ``frame`` framed once, however many connections it
        goes to.  Dropped once the WebSocket is no longer :attr:`open`.
        """
        if not self.open:
            return
        wire = frame.wire
        if wire is None:
            wire = frame.wire = ws_frame(frame.data, frame.binary)
        self.send(wire)

    def send(self, data: bytes) -> None:
        """Queue ``data`` (kept by reference) for the end of this turn."""
        if self.overflowed:
            return
        self._queue.append(data)
        self._bytes += len(data)
        # Only a paused client can be behind: within a turn, a burst for one
        # that keeps up is not lag.
        if self._paused and self._bytes > self.max_lag:
            # Given up: the queue goes now (its memory with it); the owner
            # hears of it from flush, outside whatever loop is sending.
            self.overflowed = True
            self._queue.clear()
            self._bytes = 0
        if not self._dirty:
            self._dirty = True
            self.flusher.dirty(self)

    def flush(self) -> None:
        """Write what the socket takes now; keep the rest for when it drains."""
        self._dirty = False
        if self.overflowed:
            on_overflow, self.on_overflow = self.on_overflow, _nothing
            on_overflow()
        elif self._queue and not self._paused:
            transport = self.transport
            if transport.disconnecting or not transport.connected:
                self._drop()
            elif self._socket is not None:
                self._send()
            else:
                self._write()

    def stop(self) -> None:
        """
        Hand what waits to the transport and stop being its producer: call
        before ``loseConnection``, which would wait for a paused producer.
        """
        queue = [bytes(data) for data in self._queue]
        self._drop()
        self._paused = True
        self.open = False
        transport = self.transport
        if transport.producer is self:
            transport.unregisterProducer()
        if queue:
            transport.writeSequence(queue)

    def _drop(self) -> None:
        self._queue.clear()
        self._bytes = 0

    def _send(self) -> None:
        """Plain TCP: send the queued frames, joined if few, else as they are."""
        queue = self._queue
        socket = self._socket
        try:
            if len(queue) == 1:
                sent = socket.send(queue[0])
            elif self._bytes <= JOIN:
                # A few small frames: one copy in C is cheaper than sendmsg's
                # work per buffer.  The copy is for this call only: what the
                # kernel does not take stays queued as the frames themselves.
                sent = socket.send(b"".join(queue))
            else:
                sent = socket.sendmsg(queue[:IOV_MAX])
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                self._drop()  # the connection is gone: the reactor will say so
                return
            sent = 0
        if sent == self._bytes:
            # All of it (the common case): no walk over the frames.
            queue.clear()
            self._bytes = 0
            return
        self._bytes -= sent
        done = 0
        while sent:
            head = queue[done]
            if sent < len(head):
                queue[done] = memoryview(head)[sent:]
                break
            sent -= len(head)
            done += 1
        del queue[:done]
        if queue:
            self._wait_writable()

    def _wait_writable(self) -> None:
        """
        The kernel took part of the queue: wait until the socket drains.
        Twisted resumes a paused producer once its own (empty) buffer is
        written, which is when the socket is writable again.
        """
        self._paused = True
        transport = self.transport
        transport.producerPaused = True
        transport.startWriting()

    def _write(self) -> None:
        """Any other transport: write batches until it pauses us."""
        queue = self._queue
        transport = self.transport
        count = len(queue)
        done = 0
        try:
            while done < count and not self._paused:
                start = done
                size = len(queue[done])
                done += 1
                while done < count and size < BATCH:
                    size += len(queue[done])
                    done += 1
                self._bytes -= size
                transport.write(queue[start] if done - start == 1 else b"".join(queue[start:done]))
        finally:
            del queue[:done]

    # -- IPushProducer -------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self.overflowed:
            return  # given up: stays paused, writes nothing more
        self._paused = False
        if self._queue and not self._dirty:
            self.flush()

    def stopProducing(self) -> None:
        self._paused = True
        self.open = False
        self._drop()


def _nothing() -> None:
    pass
