"""
The HelloSockets wscat transcript, verbatim, against a real ``twistd -n
phoenix`` process::

    $ wscat -c 'ws://localhost:4000/socket/websocket?vsn=2.0.0'
    > ["1","1","ping","phx_join",{}]
    < ["1","1","ping","phx_reply",{"response":{},"status":"ok"}]
    > ["1","2","ping","ping",{}]
    < ["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]

Once with the real ``wscat`` CLI (npm ``wscat``, interactive, on a pty), and
once with a raw WebSocket client written here that compares the frames the
server writes byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial import unittest

from ._server import JS_DIR, ChildFailed, require_node_modules, spawn_node, start_server, wait_ended

TRANSCRIPT = [
    ('["1","1","ping","phx_join",{}]', '["1","1","ping","phx_reply",{"response":{},"status":"ok"}]'),
    ('["1","2","ping","ping",{}]', '["1","2","ping","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]'),
]

#: The same exchange in the V1 format (no ``vsn``), as Phoenix writes it.
V1_TRANSCRIPT = [
    (
        '{"topic":"ping","event":"phx_join","payload":{},"ref":"1"}',
        '{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"ping"}',
    ),
    (
        '{"topic":"ping","event":"ping","payload":{},"ref":"2"}',
        '{"event":"phx_reply","payload":{"response":{"ping":"pong"},"status":"ok"},"ref":"2","topic":"ping"}',
    ),
]

WAIT = 10.0
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def wscat_incoming(output: bytes) -> list[str]:
    """The messages an interactive wscat printed as ``< message`` lines."""
    text = _ANSI.sub(b"", output).decode("utf-8", "replace")
    return [part[2:] for part in re.split(r"[\r\n]+", text) if part.startswith("< ")]


class RawWebSocketClient(Protocol):
    """
    A minimal RFC 6455 client: one upgrade request, masked text frames out,
    every server frame kept as its raw bytes.
    """

    def __init__(self, reactor: Any, path: str, host: str) -> None:
        self.reactor = reactor
        self.path = path
        self.host = host
        self.key = base64.b64encode(os.urandom(16))
        self.buffer = b""
        self.response_head: bytes | None = None
        self.frames: list[bytes] = []
        self.upgraded: defer.Deferred[bytes] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._frame_waiters: list[defer.Deferred[bytes]] = []

    def connectionMade(self) -> None:
        self.transport.write(
            b"GET " + self.path.encode() + b" HTTP/1.1\r\n"
            b"Host: " + self.host.encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + self.key + b"\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.response_head is None:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.response_head, self.buffer = head, rest
            self.upgraded.callback(head)
        while True:
            size = self._frame_size(self.buffer)
            if size is None or len(self.buffer) < size:
                return
            frame, self.buffer = self.buffer[:size], self.buffer[size:]
            self.frames.append(frame)
            if self._frame_waiters:
                self._frame_waiters.pop(0).callback(frame)

    @staticmethod
    def _frame_size(data: bytes) -> int | None:
        if len(data) < 2:
            return None
        length, offset = data[1] & 0x7F, 2
        if length == 126:
            if len(data) < 4:
                return None
            (length,), offset = struct.unpack("!H", data[2:4]), 4
        elif length == 127:
            if len(data) < 10:
                return None
            (length,), offset = struct.unpack("!Q", data[2:10]), 10
        return offset + (4 if data[1] & 0x80 else 0) + length

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        for d in self._frame_waiters:
            d.errback(ChildFailed("connection lost while waiting for a frame"))
        self._frame_waiters = []
        self.lost.callback(None)

    def accept_key(self) -> bytes:
        """The Sec-WebSocket-Accept a server must answer this client's key with."""
        return base64.b64encode(hashlib.sha1(self.key + _WS_GUID).digest())

    def send_text(self, text: str) -> None:
        """Send one masked text frame."""
        payload = text.encode("utf-8")
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x81, 0x80 | size)
        else:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        self.transport.write(header + mask + masked)

    def next_frame(self) -> defer.Deferred[bytes]:
        """The next server frame, raw (bounded by :data:`WAIT`)."""
        d: defer.Deferred[bytes] = defer.Deferred()
        self._frame_waiters.append(d)
        return d.addTimeout(WAIT, self.reactor)

    def close(self) -> defer.Deferred[None]:
        """Drop the connection and wait until it is gone."""
        if not self.lost.called:
            self.transport.abortConnection()
        d: defer.Deferred[None] = defer.Deferred()
        self.lost.addBoth(lambda r: d.callback(None) or r)
        return d.addTimeout(WAIT, self.reactor)


def unmasked_text_frame(text: str) -> bytes:
    """How a server frames ``text``: FIN + text opcode, unmasked."""
    payload = text.encode("utf-8")
    if len(payload) < 126:
        return struct.pack("!BB", 0x81, len(payload)) + payload
    return struct.pack("!BBH", 0x81, 126, len(payload)) + payload


class TranscriptTests(unittest.TestCase):
    """The book's wscat session against ``twistd -n phoenix`` (the demo app)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_wscat_transcript(self) -> Any:
        """The real wscat CLI (interactive, on a pty) receives exactly the transcript's two replies."""
        try:
            require_node_modules("wscat", "ws")
        except ChildFailed as e:
            self.fail(str(e))
        server = yield start_server(self)
        url = server.url("/socket/websocket?vsn=2.0.0")
        wscat = os.path.join(JS_DIR, "node_modules", "wscat", "bin", "wscat")
        child = spawn_node(self, [wscat, "--no-color", "-c", url], use_pty=True, name="wscat")
        yield child.wait_for_output(lambda out: "Connected" in out, WAIT, "wscat's Connected line")
        for n, (sent, expected) in enumerate(TRANSCRIPT, 1):
            child.transport.write(sent.encode() + b"\r")  # typed, then Enter
            received = yield child.wait_for_output(
                lambda out, n=n: len(wscat_incoming(out.encode())) >= n and wscat_incoming(out.encode()),
                WAIT, f"wscat's reply to {sent}",
            )
            self.assertEqual(received[n - 1], expected, child.output())
        child.transport.write(b"\x04")  # ^D: wscat closes the connection and exits
        yield wait_ended(child, WAIT)
        self.assertEqual(child.exit_code, 0, child.output())
        self.assertEqual(wscat_incoming(bytes(child.stdout)), [reply for _, reply in TRANSCRIPT])
        self.assertIn("CONNECTED TO UserSocket", server.output())

    @defer.inlineCallbacks
    def test_raw_websocket_transcript(self) -> Any:
        """A raw WebSocket client receives the transcript's replies byte for byte (V2), and the V1 twin without vsn."""
        from twisted.internet import reactor

        server = yield start_server(self)
        for path, transcript in (
            ("/socket/websocket?vsn=2.0.0", TRANSCRIPT),
            ("/socket/websocket", V1_TRANSCRIPT),
        ):
            client = RawWebSocketClient(reactor, path, f"127.0.0.1:{server.port}")
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, timeout=WAIT)
            yield connectProtocol(endpoint, client).addTimeout(WAIT, reactor)
            self.addCleanup(client.close)
            head = yield client.upgraded.addTimeout(WAIT, reactor)
            status, *header_lines = head.split(b"\r\n")
            self.assertEqual(status, b"HTTP/1.1 101 Switching Protocols")
            headers = dict(line.split(b": ", 1) for line in header_lines)
            headers = {k.lower(): v for k, v in headers.items()}
            self.assertEqual(headers[b"sec-websocket-accept"], client.accept_key())
            for sent, expected in transcript:
                client.send_text(sent)
                frame = yield client.next_frame()
                self.assertEqual(frame, unmasked_text_frame(expected))
            yield client.close()
