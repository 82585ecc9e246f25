"""
A local attacker, for the cluster's attack tests: a process of the same
user on the same host, with no cookie.  Run as
``python -m tests._attacker MODE [options]``; it reports what it does and
sees as JSON lines on standard output, and takes ``go``/``report`` lines on
standard input where a mode waits for the test.

Modes:

``register``
    connects to the port mapper again and again and tries to register
    ``--names`` (several REGISTERs on one connection), the old way (bare
    requests) and the new way (a made-up proof); counts the ``OK`` answers.
    With ``--wait-go`` it starts on ``go``; it goes on for ``--seconds``.
``fake-mapper``
    starts two relays to ``--target-port`` (one passing bytes along, one
    terminating TLS with its own certificate), then on ``go`` binds the
    mapper port as soon as it is free and answers as a port mapper would
    (made-up proofs; every LOOKUP answered with the TLS-terminating relay's
    port); on ``report`` writes what the relays carried to
    ``--capture``.transparent and ``--capture``.mitm.
``idle``
    opens ``--count`` TCP connections to ``--port`` that say nothing, and
    reports when each is closed.
``bomb``
    sends ``--megabytes`` MB of nested Banana list openers to ``--port``
    (over TLS with ``--tls``) and reports when the connection is closed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any

from twisted.internet import defer, error, ssl, task
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineOnlyReceiver, LineReceiver


def report(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class _Commands(LineReceiver):
    """Lines from the test on standard input."""

    delimiter = b"\n"

    def __init__(self, handlers: dict[str, Any]) -> None:
        self.handlers = handlers

    def lineReceived(self, line: bytes) -> None:
        handler = self.handlers.get(line.decode().strip())
        if handler is not None:
            handler()


class _Collect(LineOnlyReceiver):
    """Sends lines, keeps the answers, fires ``done`` when the connection closes."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.done: defer.Deferred[list[str]] = defer.Deferred()
        self.waiting: defer.Deferred[str] | None = None

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line.decode("utf-8", "replace"))
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.callback(self.lines[-1])

    def next_line(self, reactor: Any, timeout: float = 2.0) -> defer.Deferred[str]:
        self.waiting = defer.Deferred()
        return self.waiting.addTimeout(timeout, reactor)

    def connectionLost(self, reason: Any = None) -> None:
        if self.waiting is not None:
            d, self.waiting = self.waiting, None
            d.errback(error.ConnectionDone())
        self.done.callback(self.lines)


# -- register ------------------------------------------------------------------------------


@defer.inlineCallbacks
def _register_attempt(reactor: Any, port: int, names: list[str]) -> Any:
    """One connection the old way, one the new way; every answer."""
    answers: list[str] = []
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
    # The old protocol: several REGISTERs at once on one connection.
    try:
        old = yield endpoint.connect(Factory.forProtocol(_Collect))
    except error.ConnectError:
        return None
    for i, name in enumerate(names):
        old.sendLine(f"REGISTER {name} {20000 + i}".encode())
    old.sendLine(b"NAMES")
    timeout = reactor.callLater(1.0, old.transport.abortConnection)
    answers += yield old.done
    if timeout.active():
        timeout.cancel()
    # The new protocol, with a made-up proof.
    try:
        new = yield endpoint.connect(Factory.forProtocol(_Collect))
    except error.ConnectError:
        return answers
    try:
        new.sendLine(f"HELLO {secrets.token_hex(16)}".encode())
        yield new.next_line(reactor)
        new.sendLine(f"PROOF {secrets.token_hex(32)}".encode())
        for i, name in enumerate(names):
            new.sendLine(f"REGISTER {name} {20000 + i} {secrets.token_hex(16)}".encode())
        timeout = reactor.callLater(1.0, new.transport.abortConnection)
        answers += yield new.done
        if timeout.active():
            timeout.cancel()
    except (defer.TimeoutError, error.ConnectionDone):
        new.transport.abortConnection()
    return answers


@defer.inlineCallbacks
def register(reactor: Any, args: argparse.Namespace) -> Any:
    names = args.names.split(",")
    if args.wait_go:
        go: defer.Deferred[None] = defer.Deferred()
        StandardIO(_Commands({"go": lambda: go.called or go.callback(None)}))
        report("ready")
        yield go
    deadline = time.monotonic() + args.seconds
    attempts = 0
    ok = 0
    seen: set[str] = set()
    while time.monotonic() < deadline:
        answers = yield _register_attempt(reactor, args.mapper_port, names)
        attempts += 1
        for answer in answers or []:
            word = answer.split(" ")[0]
            seen.add(word)
            ok += word == "OK"
        yield task.deferLater(reactor, 0.002, lambda: None)
    report("done", attempts=attempts, ok=ok, answers=sorted(seen))


# -- fake mapper and relays ---------------------------------------------------------------


class _FakeMapper(LineOnlyReceiver):
    """Answers like a port mapper that knows no cookie: made-up proofs, every name at the relay."""

    delimiter = b"\n"

    def __init__(self, relay_port: int) -> None:
        self.relay_port = relay_port

    def connectionMade(self) -> None:
        report("mapper-connection")

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        report("mapper-line", line=text[:200])
        words = text.split(" ")
        if words[0] == "HELLO":
            self.sendLine(f"HELLO {secrets.token_hex(16)} {secrets.token_hex(32)}".encode())
        elif words[0] == "REGISTER":
            self.sendLine(b"OK")
        elif words[0] == "LOOKUP":
            self.sendLine(f"PORT {self.relay_port}".encode())
        elif words[0] == "NAMES":
            self.sendLine(b"NAMES")


@defer.inlineCallbacks
def fake_mapper(reactor: Any, args: argparse.Namespace) -> Any:
    from twisted_phoenix.cluster.tls import ClusterTLS

    from tests._faultproxy import FaultProxy

    transparent = yield FaultProxy(reactor, args.target_port, capture=True).start()
    mitm = yield FaultProxy(reactor, args.target_port, capture=True,
                            terminate_tls=ClusterTLS.generate("relay")).start()
    go: defer.Deferred[None] = defer.Deferred()

    def write_report() -> None:
        for name, proxy in (("transparent", transparent), ("mitm", mitm)):
            with open(f"{args.capture}.{name}", "wb") as f:
                f.write(bytes(proxy.captured["to_server"]) + b"\n----\n" + bytes(proxy.captured["to_client"]))
        report("report", transparent_connections=transparent.accepted, mitm_connections=mitm.accepted,
               transparent_bytes=sum(map(len, transparent.captured.values())),
               mitm_bytes=sum(map(len, mitm.captured.values())))

    StandardIO(_Commands({"go": lambda: go.called or go.callback(None), "report": write_report}))
    report("relays", transparent=transparent.port, mitm=mitm.port)
    yield go
    factory = Factory.forProtocol(lambda: _FakeMapper(mitm.port))
    endpoint = TCP4ServerEndpoint(reactor, args.mapper_port, interface="127.0.0.1")
    started = time.monotonic()
    while True:
        try:
            yield endpoint.listen(factory)
            break
        except error.CannotListenError:
            if time.monotonic() - started > args.seconds:
                report("not-bound")
                return
            yield task.deferLater(reactor, 0.001, lambda: None)
    report("bound", after=round(time.monotonic() - started, 4))
    yield defer.Deferred()  # until killed


# -- idle connections ------------------------------------------------------------------------


class _Idle(Protocol):
    def __init__(self, index: int, opened: float, closed: list[Any], all_closed: defer.Deferred[None], count: int) -> None:
        self.index = index
        self.opened = opened
        self.closed = closed
        self.all_closed = all_closed
        self.count = count

    def connectionLost(self, reason: Any = None) -> None:
        after = round(time.monotonic() - self.opened, 3)
        self.closed.append(after)
        report("closed", index=self.index, after=after)
        if len(self.closed) == self.count and not self.all_closed.called:
            self.all_closed.callback(None)


@defer.inlineCallbacks
def idle(reactor: Any, args: argparse.Namespace) -> Any:
    closed: list[float] = []
    all_closed: defer.Deferred[None] = defer.Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=5)
    opened = 0
    for i in range(args.count):
        try:
            yield endpoint.connect(Factory.forProtocol(
                lambda i=i: _Idle(i, time.monotonic(), closed, all_closed, args.count)))
            opened += 1
        except error.ConnectError as e:
            report("connect-failed", index=i, error=repr(e))
    report("opened", count=opened)
    try:
        yield all_closed.addTimeout(args.seconds, reactor)
    except defer.TimeoutError:
        pass
    report("done", opened=opened, closed=sorted(closed))


# -- Banana bomb ---------------------------------------------------------------------------------


class _Bomb(Protocol):
    def __init__(self, payload_size: int, lost: defer.Deferred[float]) -> None:
        self.payload_size = payload_size
        self.lost = lost
        self.started = 0.0

    def connectionMade(self) -> None:
        self.started = time.monotonic()
        chunk = b"\x01\x80" * 32 * 1024
        for _ in range(self.payload_size // len(chunk)):
            self.transport.write(chunk)
        report("sent", bytes=self.payload_size)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(round(time.monotonic() - self.started, 3))


@defer.inlineCallbacks
def bomb(reactor: Any, args: argparse.Namespace) -> Any:
    lost: defer.Deferred[float] = defer.Deferred()
    size = int(args.megabytes * 1024 * 1024)
    if args.tls:
        options = ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_3)
        endpoint: Any = SSL4ClientEndpoint(reactor, "127.0.0.1", args.port, options, timeout=5)
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port, timeout=5)
    yield endpoint.connect(Factory.forProtocol(lambda: _Bomb(size, lost)))
    try:
        after = yield lost.addTimeout(args.seconds, reactor)
        report("closed", after=after)
    except defer.TimeoutError:
        report("still-open")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests._attacker")
    parser.add_argument("mode", choices=["register", "fake-mapper", "idle", "bomb"])
    parser.add_argument("--mapper-port", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--target-port", type=int)
    parser.add_argument("--names", default="")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--megabytes", type=float, default=10.0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--capture", default=os.devnull)
    args = parser.parse_args(argv)
    modes = {"register": register, "fake-mapper": fake_mapper, "idle": idle, "bomb": bomb}

    def run(reactor: Any) -> defer.Deferred[Any]:
        return modes[args.mode](reactor, args)

    task.react(run)


if __name__ == "__main__":
    main(sys.argv[1:])
