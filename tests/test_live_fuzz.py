"""
A bounded live fuzz run: a real ``twistd -n phoenix`` at its defaults,
clients sending random, mutated and hostile frames and handshakes, and a
canary that must be served throughout.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ._client import HandshakeRefused, connect, raw_connect
from ._server import start_server

SEED = 20261206
FUZZERS = 6
FRAMES = 250
RAW = 20

TOPICS = ["ping", "ping:x", "tracked", "recurring", "nope", "phoenix", "", "x" * 300]
EVENTS = ["phx_join", "phx_leave", "ping", "heartbeat", "param_ping", "broadcast", "shout", "nope", ""]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 1.5e308, -0.0])
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(12)))
    if kind == 4:
        return rng.choice(["1", "ref", "x" * 70])
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_value(rng, depth + 1))[:8]: _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _frame(rng: random.Random) -> tuple[str, bytes]:
    """A frame to send: ("text" | "binary" | "raw", data)."""
    kind = rng.randrange(10)
    message = [
        rng.choice([None, "1", str(rng.randrange(100)), _value(rng)]),
        rng.choice([None, str(rng.randrange(1000)), _value(rng)]),
        rng.choice(TOPICS + [_value(rng)]),
        rng.choice(EVENTS + [_value(rng)]),
        _value(rng),
    ]
    data = orjson.dumps(message)
    if kind < 4:
        return "text", data
    if kind == 4:  # mutated bytes, valid UTF-8 or not
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return "text", bytes(mutated)
    if kind == 5:  # deep nesting, or numbers no JSON library holds
        if rng.random() < 0.3:
            return "text", b'["1","1","ping","param_ping",{"n":1' + b"0" * rng.choice([20, 400, 5000]) + b"}]"
        depth = rng.choice([250, 255, 600, 1100])
        return "text", b'["1","1","ping","ping",' + b"[" * depth + b"]" * depth + b"]"
    if kind == 6:  # a V2 binary push, sometimes truncated or lying about its sizes
        fields = [b"1", b"2", rng.choice([b"ping", b"bin", b"\xff\xfe"]), b"ping"]
        frame = bytes([0, *map(len, fields)]) + b"".join(fields) + rng.randbytes(rng.randrange(20))
        if rng.random() < 0.5:
            frame = frame[: rng.randrange(len(frame))]
        return "binary", frame
    if kind == 7:  # a V1 object
        return "text", orjson.dumps({"topic": message[2], "event": message[3], "payload": message[4], "ref": message[1]})
    if kind == 8:  # random bytes
        return rng.choice(["text", "binary"]), rng.randbytes(rng.randrange(64))
    # a raw WebSocket frame: any opcode, fin or not, any payload
    return "raw", bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(40))


class LiveFuzzTests(TestCase):
    """
    Random and hostile input from several connections at once.
    """

    timeout = 120

    @inlineCallbacks
    def test_fuzzWithCanary(self) -> Any:
        """
        The canary gets every reply while fuzzers hammer the server; the
        server stays up, logs no unhandled error, and serves a new client.
        """
        server = yield start_server(self)
        port = server.ports[0]
        canary = yield connect(reactor, port, test=self)
        yield canary.join_and_ping("ping", "c")
        rng = random.Random(SEED)
        pongs = []

        @inlineCallbacks
        def canary_loop() -> Any:
            for n in range(40):
                reply = yield canary.request(["c", f"p{n}", "ping", "ping", {}], timeout=10)
                pongs.append(reply[1])
                yield deferLater(reactor, 0.05, lambda: None)

        @inlineCallbacks
        def fuzzer(seed: int) -> Any:
            frng = random.Random(seed)
            sent = 0
            while sent < FRAMES:
                try:
                    client = yield connect(reactor, port, query=frng.choice(["vsn=2.0.0", "vsn=1.0.0", "vsn=2.0.0&x[y][]=1"]), test=self)
                except HandshakeRefused:
                    continue
                while sent < FRAMES and client.is_open:
                    kind, data = _frame(frng)
                    if kind == "text":
                        client.send_text(data)
                    elif kind == "binary":
                        client.send_binary(data)
                    else:
                        client.protocol.transport.write(data)
                    sent += 1
                    if sent % 10 == 0:
                        yield deferLater(reactor, 0, lambda: None)
                yield client.disconnect()

        @inlineCallbacks
        def raw_fuzzer(seed: int) -> Any:
            # A mutated handshake head: every one gets an HTTP answer (101,
            # 400, 403, 408 at the deadline, 431, ...), then is dropped.
            frng = random.Random(seed)
            head = (
                b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            raw = yield raw_connect(reactor, port, test=self)
            mutated = bytearray(head)
            for _ in range(frng.randrange(1, 6)):
                mutated[frng.randrange(len(mutated))] = frng.randrange(256)
            raw.write(bytes(mutated) + frng.randbytes(frng.randrange(100)))
            yield raw.wait_for(b"HTTP/1.1 ", timeout=15)
            yield raw.disconnect()

        runs = [canary_loop()]
        runs += [fuzzer(rng.randrange(2**32)) for _ in range(FUZZERS)]
        runs += [raw_fuzzer(rng.randrange(2**32)) for _ in range(RAW)]
        results = yield DeferredList(runs, consumeErrors=True)
        for ok, result in results:
            self.assertTrue(ok, result)
        self.assertEqual(pongs, [f"p{n}" for n in range(40)])
        fresh = yield connect(reactor, port, test=self)
        yield fresh.join_and_ping("ping", "f")
        self.assertTrue(server.child.running)
        output = server.output()
        for marker in ("Unhandled Error", "Unhandled error in Deferred", "Traceback"):
            self.assertNotIn(marker, output)
