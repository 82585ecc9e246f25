"""
Helpers for the cluster tests: free ports, in-process nodes that stop in
cleanup, a log watcher that waits for a message, bounded polling, test
certificates, the console as a child process, and an endpoint that relays
broadcasts (for a ``--no-http`` node that has to start one).

Every wait here is bounded.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
from typing import Any, Callable, Mapping

from twisted.internet import defer
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint
from twisted_phoenix.message import Broadcast
from twisted_phoenix.pubsub import CallbackSubscriber, PubSub

from ._client import LogCapture

__all__ = [
    "COOKIE",
    "Collector",
    "LogWatcher",
    "RelayEndpoint",
    "StreamEndpoint",
    "TapOptionsMixin",
    "ClusterPKI",
    "bindable",
    "free_port",
    "start_node",
    "run_console",
    "wait_interest",
    "wait_until",
    "watch_logs",
]

#: The cookie of every test cluster (never the developer's cookie file).
COOKIE = "twisted-phoenix-test-cookie"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bindable(address: str, port: int = 0) -> bool:
    """Whether ``address:port`` can be listened on now (a loopback alias such as 127.0.0.2 may not be)."""
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


# -- waiting ---------------------------------------------------------------------------


def wait_until(
    reactor: Any, condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> defer.Deferred[Any]:
    """
    Poll ``condition`` every ``interval`` seconds; fire with its first truthy
    value, or fail with :class:`AssertionError` after ``timeout`` seconds.

    Only for states that announce themselves with no event to wait on.
    """
    deadline = reactor.seconds() + timeout
    call: list[Any] = []

    def check() -> None:
        try:
            value = condition()
        except Exception:
            d.errback()
            return
        if value:
            d.callback(value)
        elif reactor.seconds() >= deadline:
            d.errback(AssertionError(f"not true within {timeout} s: {what or condition}"))
        else:
            call[:] = [reactor.callLater(interval, check)]

    def cancel(_: Any) -> None:
        if call and call[0].active():
            call[0].cancel()

    d: defer.Deferred[Any] = defer.Deferred(cancel)
    check()
    return d


def told(sender: Any, receiver: Any, topic: str) -> bool:
    """
    Whether ``sender`` (a :class:`~twisted_phoenix.cluster.Node`) sends
    ``receiver`` the broadcasts on ``topic`` from now on, whatever happens
    to its interest messages still in flight: ``receiver`` does not route
    by interest, or ``sender`` knows it wants the topic (or everything).
    """
    link = sender.links.get(receiver.name)
    if link is None:
        return False
    if not (sender.interest_routing and receiver.interest_routing) or receiver.pubsub.adapter is not receiver:
        return True
    state = link.interest.state
    return state in ("all", "overflow") or (state == "set" and topic in link.interest.topics)


def wait_interest(reactor: Any, nodes: Any, topic: str, timeout: float = 10.0) -> defer.Deferred[Any]:
    """
    Fire once every node of ``nodes`` that has subscribers for ``topic`` has
    told every other one (interest routing: a broadcast sent before then may
    not reach a subscriber that just arrived, as docs/cluster.rst says).
    """
    nodes = list(nodes)

    def known() -> bool:
        return all(
            told(sender, receiver, topic)
            for receiver in nodes if receiver.pubsub.subscribers(topic)
            for sender in nodes if sender is not receiver
        )

    return wait_until(reactor, known, timeout, interval=0.01, what=f"every node told of {topic!r}")


class LogWatcher(LogCapture):
    """The log events emitted while a test runs, and waiters for messages."""

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self._waiters: list[tuple[Callable[[str, dict[str, Any]], bool], defer.Deferred[str]]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        text = formatEvent(event) or ""
        for entry in list(self._waiters):
            predicate, d = entry
            if predicate(text, event) and entry in self._waiters:
                self._waiters.remove(entry)
                # Fire on the next turn: not from inside the code that logs.
                self.reactor.callLater(0, lambda d=d, text=text: d.called or d.callback(text))

    def wait_for(self, text: str, timeout: float = 10.0, level: LogLevel | None = None) -> defer.Deferred[str]:
        """
        Fire with the first message (past or future) containing ``text``,
        in a later reactor turn than the one that logged it.
        """
        found = self.find(text, level)
        if found:
            return defer.succeed(found[0])

        def predicate(message: str, event: dict[str, Any]) -> bool:
            event_level = event.get("log_level")
            if level is not None and (event_level is None or event_level < level):
                return False
            return text in message

        d: defer.Deferred[str] = defer.Deferred(lambda d: entry in self._waiters and self._waiters.remove(entry))
        entry = (predicate, d)
        self._waiters.append(entry)
        return d.addTimeout(timeout, self.reactor)


def watch_logs(testcase: Any, reactor: Any) -> LogWatcher:
    """Watch every log event until ``testcase``'s cleanup."""
    watcher = LogWatcher(reactor)
    observer = provider(ILogObserver)(watcher)
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return watcher


class Collector:
    """Subscribes to a topic on a PubSub and collects the broadcasts it gets."""

    def __init__(self, reactor: Any, pubsub: PubSub, topic: str) -> None:
        self.reactor = reactor
        self.received: list[Broadcast] = []
        self._waiters: list[tuple[int, defer.Deferred[list[Broadcast]]]] = []
        self.subscriber = CallbackSubscriber(self._got)
        pubsub.subscribe(topic, self.subscriber)

    def _got(self, broadcast: Broadcast) -> None:
        self.received.append(broadcast)
        for entry in list(self._waiters):
            count, d = entry
            if len(self.received) >= count:
                self._waiters.remove(entry)
                # Fire on the next turn: not from inside the node's dispatch.
                self.reactor.callLater(0, lambda d=d, got=list(self.received): d.called or d.callback(got))

    def wait_for(self, count: int, timeout: float = 10.0) -> defer.Deferred[list[Broadcast]]:
        """Fire with everything received once there are ``count`` broadcasts."""
        if len(self.received) >= count:
            return defer.succeed(list(self.received))
        d: defer.Deferred[list[Broadcast]] = defer.Deferred(
            lambda d: entry in self._waiters and self._waiters.remove(entry)
        )
        entry = (count, d)
        self._waiters.append(entry)
        return d.addTimeout(timeout, self.reactor)

    def payloads(self) -> list[Any]:
        return [(b.event, b.payload) for b in self.received]


# -- in-process nodes ----------------------------------------------------------------------


@defer.inlineCallbacks
def start_node(
    testcase: Any, reactor: Any, name: str, *, mapper_port: int, cookie: str = COOKIE, **options: Any
) -> Any:
    """
    Start a :class:`~twisted_phoenix.cluster.Node` named ``name`` (with its
    own :class:`PubSub`, as ``node.pubsub``) on loopback; stopped in cleanup.
    """
    from twisted_phoenix.cluster import Node

    options.setdefault("heartbeat_interval", 0.5)
    options.setdefault("heartbeat_timeout", 5.0)
    node = Node(reactor, name, cookie=cookie, pubsub=PubSub(name), mapper_port=mapper_port, **options)
    testcase.addCleanup(node.stop)
    yield node.start()
    return node


# -- certificates ----------------------------------------------------------------------------


class ClusterPKI:
    """
    A certificate authority made at test time, and node certificates it
    signs (for 127.0.0.1), written as PEM files under ``directory``.
    """

    def __init__(self, directory: str, name: str = "Test cluster CA") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._name = subject
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = self._write(f"{_slug(name)}-ca.pem", self.certificate)

    def _write(self, filename: str, certificate: Any = None, key: Any = None) -> str:
        from cryptography.hazmat.primitives import serialization

        path = os.path.join(self.directory, filename)
        with open(path, "wb") as f:
            if certificate is not None:
                f.write(certificate.public_bytes(serialization.Encoding.PEM))
            if key is not None:
                f.write(
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
        return path

    def issue(self, node: str) -> tuple[str, str]:
        """A certificate for ``node`` (valid for 127.0.0.1): ``(cert_path, key_path)``."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        slug = _slug(node)
        return self._write(f"{slug}-cert.pem", certificate), self._write(f"{slug}-key.pem", key=key)

    def tls(self, node: str) -> Any:
        """A :class:`ClusterTLS` for ``node``, loaded from its PEM files."""
        from twisted_phoenix.cluster import ClusterTLS

        cert, key = self.issue(node)
        return ClusterTLS.from_files(cert, key, self.ca_path)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


# -- child processes ----------------------------------------------------------------------------

#: Runs the console the way ``twisted-phoenix console`` will.
CONSOLE_PROGRAM = (
    "import sys, argparse; from twisted_phoenix.console import add_arguments, run; "
    "p = argparse.ArgumentParser(); add_arguments(p); sys.exit(run(p.parse_args(sys.argv[1:])))"
)


def run_console(
    testcase: Any,
    reactor: Any,
    *args: str,
    env: Mapping[str, str],
    stdin: bytes | None = None,
    timeout: float = 20.0,
    name: str = "console",
) -> defer.Deferred[Any]:
    """
    Run the console (``*args``: ``--name``, ``--connect``, ``-c`` ...) as a
    child process; fire with the ended :class:`tests._server.ChildProcess`
    (its ``exit_code``, ``stdout``, ``stderr``).  With ``stdin``, that is
    written to it and its stdin closed (the piped console).  Killed after
    ``timeout`` seconds (the Deferred then fails with its output) and in
    ``testcase``'s cleanup.
    """
    from ._server import REPO_ROOT, _clean_env, _spawn, wait_ended

    child_env = _clean_env(env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    child_env["PYTHONUNBUFFERED"] = "1"
    child = _spawn(reactor, name, [sys.executable, "-c", CONSOLE_PROGRAM, *args], child_env, path=REPO_ROOT)
    testcase.addCleanup(child.stop, 2.0)
    if stdin is not None:
        child.transport.write(stdin)
    child.transport.closeStdin()
    return wait_ended(child, timeout, reactor)


class RelayEndpoint(HelloSocketsEndpoint):
    """
    The demo app, plus: a broadcast on the topic ``relay`` whose payload is
    ``{"topic", "event", "payload"}`` makes this node broadcast that to the
    whole cluster.  Lets a test start a broadcast on a ``--no-http`` node.
    """

    def __init__(self, reactor: Any, **kwargs: Any) -> None:
        super().__init__(reactor, **kwargs)
        self.subscribe("relay", self._relay)

    def _relay(self, broadcast: Broadcast) -> None:
        payload = broadcast.payload
        self.broadcast(payload["topic"], payload["event"], payload["payload"])


class StreamEndpoint(HelloSocketsEndpoint):
    """
    The demo app, plus a broadcast stream for the fault tests: a broadcast
    on ``stream-control`` (event ``start``, payload ``{"count", "rate",
    "batch"}``) makes this node broadcast ``count`` messages on ``stream``
    (event ``msg``, payload ``{"seq", "from"}``), ``batch`` at a time,
    ``rate`` a second, then one with event ``done``.  It counts the
    ``stream`` messages it receives, and answers a ``stream-control``
    ``query`` (payload ``{"reply_to"}``) with a ``stream-count`` broadcast
    (``{"node", "received"}``) sent to that node only.
    """

    def __init__(self, reactor: Any, **kwargs: Any) -> None:
        super().__init__(reactor, **kwargs)
        self.received = 0
        self._loop: Any = None
        self.subscribe("stream-control", self._control)
        self.subscribe("stream", self._counted)

    def _counted(self, broadcast: Broadcast) -> None:
        if broadcast.event == "msg":
            self.received += 1

    def _control(self, broadcast: Broadcast) -> None:
        from twisted.internet.task import LoopingCall

        payload = broadcast.payload
        if broadcast.event == "query":
            self.pubsub.direct_broadcast(
                payload["reply_to"], "stream-count", "count", {"node": self.node_name, "received": self.received}
            )
            return
        if broadcast.event != "start" or self._loop is not None:
            return
        count, batch = int(payload["count"]), int(payload.get("batch", 1))
        sent = [0]

        def tick() -> None:
            for _ in range(batch):
                if sent[0] >= count:
                    self._loop.stop()
                    self._loop = None
                    self.broadcast("stream", "done", {"sent": count, "from": self.node_name})
                    return
                self.broadcast("stream", "msg", {"seq": sent[0], "from": self.node_name})
                sent[0] += 1

        self._loop = LoopingCall(tick)
        self._loop.clock = self.reactor
        self._loop.start(batch / float(payload["rate"]))


class TapOptionsMixin:
    """
    For tests of ``twistd phoenix``'s options: an environment without the
    cluster's variables (and with a secret), and :meth:`parse`.
    """

    def setUp(self) -> None:
        from unittest import mock

        patcher = mock.patch.dict("os.environ")
        patcher.start()
        self.addCleanup(patcher.stop)  # type: ignore[attr-defined]
        for name in ("PHOENIX_EPMD_PORT", "PHOENIX_COOKIE", "PORT", "PHOENIX_ENV"):
            os.environ.pop(name, None)
        os.environ["SECRET_KEY_BASE"] = "s" * 64

    def parse(self, *argv: str) -> Any:
        """The plugin's options, parsed from ``argv``."""
        from twisted_phoenix.tap import Options

        options = Options()
        options.parseOptions(list(argv))
        return options

