"""
Tests for :mod:`twisted_phoenix.workers` in one process: the ``--workers``
options, the parent's restarts and drain with a fake process reactor, a
worker's options, and adopting a listening socket (real loopback sockets).

The real processes are in ``tests/test_workers_processes.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, error, reactor
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from twisted_phoenix.tap import ListeningService, Options, makeService
from twisted_phoenix.workers import DEFAULT_DRAIN_TIMEOUT, available_cores, parse_workers, worker_names
from twisted_phoenix.workers.adopt import adopt, socket_family
from twisted_phoenix.workers.supervisor import BACKOFF, FIRST_LISTEN_FD, STABLE, STOP_MARGIN, Supervisor, WorkerProcess
from twisted_phoenix.workers.worker import configure

from .test_tap import isolate_environment, parse


class OptionsTests(SynchronousTestCase):
    """``--workers`` and ``--drain-timeout``."""

    def setUp(self) -> None:
        isolate_environment(self)

    def test_count(self) -> None:
        """``--workers N`` is N; without it, None (one process, as before)."""
        self.assertEqual(parse("--workers", "3")["workers"], 3)
        self.assertIsNone(parse()["workers"])

    def test_auto(self) -> None:
        """``--workers auto`` is the number of cores this process may run on."""
        self.assertEqual(parse("--workers", "auto")["workers"], available_cores())
        self.assertEqual(available_cores(), len(os.sched_getaffinity(0)))

    def test_bad_count(self) -> None:
        """Zero, negative or non-numeric counts are usage errors."""
        for text in ("0", "-1", "two", ""):
            with self.assertRaises(usage.UsageError, msg=text) as caught:
                parse("--workers", text)
            self.assertIn("--workers", str(caught.exception))
        self.assertRaises(ValueError, parse_workers, "1.5")

    def test_one(self) -> None:
        """``--workers 1`` is allowed: a parent that restarts its one worker."""
        self.assertEqual(parse("--workers", "1")["workers"], 1)

    def test_no_http(self) -> None:
        """``--workers`` with ``--no-http`` is a usage error."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--workers", "2", "--no-http", "--name", "a@127.0.0.1", "--cookie", "c")
        self.assertIn("--no-http", str(caught.exception))

    def test_drain_timeout(self) -> None:
        """``--drain-timeout`` takes positive seconds; 15 by default."""
        self.assertEqual(parse()["drain-timeout"], DEFAULT_DRAIN_TIMEOUT)
        self.assertEqual(parse("--drain-timeout", "2.5")["drain-timeout"], 2.5)
        self.assertRaises(usage.UsageError, parse, "--drain-timeout", "0")
        self.assertRaises(usage.UsageError, parse, "--drain-timeout", "soon")

    def test_dist_port_range(self) -> None:
        """Worker i links on --dist-port + i - 1, which must stay a port number."""
        parse("--workers", "2", "--name", "a@127.0.0.1", "--cookie", "c", "--dist-port", "65534")
        self.assertRaises(
            usage.UsageError, parse, "--workers", "3", "--name", "a@127.0.0.1", "--cookie", "c", "--dist-port", "65534"
        )

    def test_argv_kept(self) -> None:
        """The options keep the arguments they parsed: the workers parse the same."""
        self.assertEqual(parse("--workers", "2", "--port", "0").argv, ["--workers", "2", "--port", "0"])

    def test_help(self) -> None:
        """``--help`` documents both options."""
        text = str(Options())
        self.assertIn("--workers", text)
        self.assertIn("--drain-timeout", text)

    def test_names(self) -> None:
        """Workers of ``base@host`` are ``base-1@host`` ... ``base-N@host``."""
        self.assertEqual(worker_names("a@127.0.0.1", 3), ["a-1@127.0.0.1", "a-2@127.0.0.1", "a-3@127.0.0.1"])


class MakeServiceTests(SynchronousTestCase):
    """makeService with ``--workers``."""

    def setUp(self) -> None:
        isolate_environment(self)

    def test_parent_serves_nothing(self) -> None:
        """With --workers, the service is the supervisor: no endpoint, no listener of its own."""
        top = makeService(parse("--workers", "2", "--port", "0"))
        children = list(top)
        self.assertEqual([type(child) for child in children], [Supervisor])
        self.assertFalse(any(isinstance(child, ListeningService) for child in children))

    def test_without_workers(self) -> None:
        """Without --workers, makeService builds the single-process service as before."""
        top = makeService(parse("--port", "0"))
        self.assertIsInstance(top, MultiService)
        self.assertEqual(len([c for c in top if isinstance(c, ListeningService)]), 1)


class _Transport:
    """What a fake spawned process's transport records."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[tuple[int, bytes]] = []
        self.signals: list[str] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append((fd, data))

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


@implementer(_ISupportsExitSignalCapturing)
class FakeProcessReactor(Clock):
    """A clock that records spawnProcess calls, and the signal twistd would exit with."""

    _exitSignal: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[WorkerProcess, list[str], dict[int, Any]]] = []
        self.stopped = False

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None, childFDs: Any = None) -> Any:
        transport = _Transport(1000 + len(self.spawned))
        protocol.makeConnection(transport)
        self.spawned.append((protocol, args, childFDs))
        return transport

    def stop(self) -> None:
        self.stopped = True


class _Port:
    """A listening port as the parent keeps it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def stopListening(self) -> None:
        self.closed = True


def _exit(code: int | None = None, sig: int | None = None) -> Failure:
    return Failure(error.ProcessTerminated(exitCode=code, signal=sig))


class SupervisorTests(SynchronousTestCase):
    """The parent: settings, restarts with backoff, drain, with a fake process reactor."""

    def setUp(self) -> None:
        isolate_environment(self)
        self.reactor = FakeProcessReactor()

    def supervisor(self, *argv: str, sink: Any = None) -> Supervisor:
        options = parse("--port", "0", *argv)
        supervisor = Supervisor(self.reactor, options, sink=sink)
        # As if bound: two sockets, fds 7 and 9.
        supervisor.ports = [_Port(7), _Port(9)]
        supervisor.epmd_port = supervisor.epmd_port or 4444
        return supervisor

    def test_named_workers(self) -> None:
        """With --name, each worker is base-i@host, told its siblings, the cookie, the mapper and the link port."""
        supervisor = self.supervisor(
            "--workers", "3", "--name", "srv@127.0.0.1", "--cookie", "secret", "--epmd-port", "4999",
            "--dist-port", "9100",
        )
        config = supervisor.config(2)
        self.assertEqual(config["name"], "srv-2@127.0.0.1")
        self.assertEqual(config["siblings"], ["srv-1@127.0.0.1", "srv-3@127.0.0.1"])
        self.assertEqual((config["cookie"], config["epmd_port"], config["dist_port"]), ("secret", 4999, 9101))
        self.assertFalse(config["generated"])
        self.assertEqual(config["listen"], [FIRST_LISTEN_FD, FIRST_LISTEN_FD + 1])
        self.assertIn("--workers", config["args"])
        self.assertEqual(config["path"], sys.path)

    def test_generated_names(self) -> None:
        """Without --name, workers get generated names and a random cookie of their own cluster."""
        first, second = self.supervisor("--workers", "2"), self.supervisor("--workers", "2")
        self.assertTrue(first.generated)
        name = first.config(1)["name"]
        self.assertRegex(name, r"^phoenix-[0-9a-f]{8}-1@")
        self.assertEqual(first.config(2)["siblings"], [name])
        self.assertNotEqual(first.cookie, second.cookie)
        self.assertGreaterEqual(len(first.cookie), 24)
        self.assertEqual(first.config(1)["dist_port"], 0)

    def test_configured_cookie(self) -> None:
        """Without --name, a configured cookie is used all the same."""
        self.assertEqual(self.supervisor("--workers", "2", "--cookie", "mine").cookie, "mine")
        os.environ["PHOENIX_COOKIE"] = "from-env"
        self.addCleanup(os.environ.pop, "PHOENIX_COOKIE", None)
        self.assertEqual(self.supervisor("--workers", "2").cookie, "from-env")

    def test_spawn(self) -> None:
        """Each worker gets its settings on stdin, reports on fd 3, the sockets from fd 4, our stdout and stderr."""
        supervisor = self.supervisor("--workers", "2")
        supervisor._spawn_all()
        self.assertEqual(len(self.reactor.spawned), 2)
        worker, args, fds = self.reactor.spawned[0]
        self.assertEqual(fds, {0: "w", 1: 1, 2: 2, 3: "r", 4: 7, 5: 9})
        self.assertEqual(args[0], sys.executable)
        ((fd, line),) = worker.transport.written
        self.assertEqual(fd, 0)
        self.assertEqual(json.loads(line), supervisor.config(1))

    def test_output_piped(self) -> None:
        """With a sink (a log file), the workers' output comes through pipes, one whole line at a time."""
        lines: list[bytes] = []
        supervisor = self.supervisor("--workers", "1", sink=lines.append)
        supervisor._spawn_all()
        worker, _, fds = self.reactor.spawned[0]
        self.assertEqual((fds[1], fds[2]), ("r", "r"))
        worker.childDataReceived(1, b"one\ntw")
        worker.childDataReceived(2, b"err\n")
        worker.childDataReceived(1, b"o\n")
        self.assertEqual(lines, [b"one\n", b"err\n", b"two\n"])

    def test_reports(self) -> None:
        """Reports on fd 3 mark a worker ready and linked."""
        supervisor = self.supervisor("--workers", "2")
        supervisor._spawn_all()
        first, second = (spawned[0] for spawned in self.reactor.spawned)
        first.childDataReceived(3, b'{"event": "ready"}\n{"event": "linked"}\n')
        self.assertTrue(first.ready and first.linked)
        self.assertFalse(supervisor._all_linked)
        second.childDataReceived(3, b'{"event": "ready"}\n{"event": "li')
        second.childDataReceived(3, b'nked"}\nnot json\n')
        self.assertTrue(supervisor._all_linked)

    def test_restart(self) -> None:
        """A worker that dies is started again under the same name, after a short delay."""
        supervisor = self.supervisor("--workers", "2")
        supervisor.startService = lambda: None  # type: ignore[method-assign]
        supervisor._spawn_all()
        self.reactor.advance(STABLE)
        first = self.reactor.spawned[0][0]
        first.processEnded(_exit(sig=9))
        self.assertNotIn(1, supervisor.workers)
        self.reactor.advance(BACKOFF[0])
        self.assertEqual(len(self.reactor.spawned), 3)
        again = self.reactor.spawned[2][0]
        self.assertEqual((again.index, again.name), (1, first.name))
        self.assertIs(supervisor.workers[1], again)

    def test_crash_loop_backs_off(self) -> None:
        """A worker that keeps dying soon after its start is restarted ever more slowly, up to the last delay."""
        supervisor = self.supervisor("--workers", "1")
        supervisor._spawn_all()
        delays = []
        for _ in range(len(BACKOFF) + 2):
            worker = supervisor.workers[1]
            worker.processEnded(_exit(code=1))
            call = supervisor._restarts[1]
            delays.append(round(call.getTime() - self.reactor.seconds(), 6))
            self.reactor.advance(delays[-1])
        self.assertEqual(delays, [*BACKOFF[1:], BACKOFF[-1], BACKOFF[-1], BACKOFF[-1]])
        # Once it has run long enough, the next death restarts it at once again.
        self.reactor.advance(STABLE)
        supervisor.workers[1].processEnded(_exit(code=1))
        self.assertAlmostEqual(supervisor._restarts[1].getTime() - self.reactor.seconds(), BACKOFF[0])

    def test_stop_drains(self) -> None:
        """Stopping closes the sockets, SIGTERMs the workers, waits for them, and restarts nobody."""
        supervisor = self.supervisor("--workers", "2")
        supervisor.running = 1
        supervisor._spawn_all()
        first, second = (spawned[0] for spawned in self.reactor.spawned)
        first.processEnded(_exit(code=1))  # a restart is pending...
        d = supervisor.stopService()
        self.assertTrue(all(port.closed for port in supervisor.ports))
        self.assertEqual(second.transport.signals, ["TERM"])
        self.assertNoResult(d)
        second.processEnded(_exit(code=0))
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)  # ...and cancelled

    def test_clean_exit(self) -> None:
        """After a complete drain, the parent clears the signal twistd would exit with: it exits 0."""
        # The real reactor has it (twistd reads it): this fails if Twisted changes.
        self.assertTrue(_ISupportsExitSignalCapturing.providedBy(reactor))
        self.assertIsNone(reactor._exitSignal)  # type: ignore[attr-defined]
        self.reactor._exitSignal = signal.SIGTERM
        supervisor = self.supervisor("--workers", "1")
        supervisor.running = 1
        supervisor._spawn_all()
        d = supervisor.stopService()
        supervisor.workers[1].processEnded(_exit(code=0))
        self.successResultOf(d)
        self.assertIsNone(self.reactor._exitSignal)  # type: ignore[attr-defined]

    def test_stop_kills_stragglers(self) -> None:
        """A worker still running after the drain timeout and a margin is killed."""
        supervisor = self.supervisor("--workers", "1", "--drain-timeout", "3")
        supervisor.running = 1
        supervisor._spawn_all()
        worker = supervisor.workers[1]
        d = supervisor.stopService()
        self.reactor.advance(3 + STOP_MARGIN - 0.1)
        self.assertEqual(worker.transport.signals, ["TERM"])
        self.reactor.advance(0.1)
        self.assertEqual(worker.transport.signals, ["TERM", "KILL"])
        self.reactor._exitSignal = signal.SIGTERM  # type: ignore[attr-defined]
        worker.processEnded(_exit(sig=9))
        self.successResultOf(d)
        # Not a clean drain: twistd's way, terminated by the signal.
        self.assertEqual(self.reactor._exitSignal, signal.SIGTERM)  # type: ignore[attr-defined]


class ConfigureTests(SynchronousTestCase):
    """A worker's options: the parent's, made this worker's."""

    def setUp(self) -> None:
        isolate_environment(self)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        settings = {
            "name": "w-2@127.0.0.1", "siblings": ["w-1@127.0.0.1"], "generated": False, "cookie": "c0",
            "epmd_port": 4999, "dist_port": 0,
        }
        settings.update(overrides)
        return settings

    def test_named(self) -> None:
        """A worker of --name is its own node name, with the parent's cookie and link port; no --workers."""
        options = parse("--workers", "2", "--name", "w@127.0.0.1", "--cookie", "c0", "--connect", "x@127.0.0.1")
        configure(options, self.settings(dist_port=9101))
        self.assertIsNone(options["workers"])
        self.assertEqual(options["name"], "w-2@127.0.0.1")
        self.assertEqual((options["cookie"], options["epmd-port"], options["dist-port"]), ("c0", 4999, 9101))
        self.assertEqual(options["connect"], ["x@127.0.0.1"])

    def test_generated(self) -> None:
        """Without --name, a worker is still a cluster node, on loopback, with the parent's mapper and cookie."""
        options = parse("--workers", "2")
        self.assertFalse(options["cluster"])
        configure(options, self.settings(name="phoenix-12345678-2@localhost", generated=True, cookie="gen"))
        self.assertTrue(options["cluster"])
        self.assertEqual(options["name"], "phoenix-12345678-2@localhost")
        self.assertEqual((options["cookie"], options["epmd-port"], options["dist-port"]), ("gen", 4999, 0))
        self.assertEqual(options["dist-interface"], "127.0.0.1")
        self.assertIsInstance(options["heartbeat-interval"], float)


class _Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello")
        self.transport.loseConnection()


class _Collect(Protocol):
    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


class AdoptTests(TestCase):
    """Serving a ``--listen`` description on an inherited listening socket (real loopback)."""

    def directory(self) -> str:
        """A temporary directory, removed in cleanup (not in the current directory)."""
        directory = tempfile.mkdtemp(prefix="twisted_phoenix-workers-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        return directory

    def listening(self, family: int = socket.AF_INET, address: Any = ("127.0.0.1", 0)) -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind(address)
        s.listen(5)
        self.addCleanup(s.close)
        return s

    @defer.inlineCallbacks
    def fetch(self, family: int, address: Any) -> Any:
        from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint

        done: defer.Deferred[bytes] = defer.Deferred()
        if family == socket.AF_UNIX:
            endpoint: Any = UNIXClientEndpoint(reactor, address)
        else:
            endpoint = TCP4ClientEndpoint(reactor, *address)
        yield endpoint.connect(Factory.forProtocol(lambda: _Collect(done)))
        data = yield done.addTimeout(5, reactor)
        return data

    @defer.inlineCallbacks
    def test_tcp(self) -> None:
        """A tcp: description is served on the inherited socket, whatever port it names; the fd is closed."""
        s = self.listening()
        fd = os.dup(s.fileno())
        port = yield adopt(reactor, "tcp:0:interface=127.0.0.1:backlog=7", fd, Factory.forProtocol(_Hello))
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().port, s.getsockname()[1])
        self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual((yield self.fetch(socket.AF_INET, s.getsockname())), b"hello")

    @defer.inlineCallbacks
    def test_unix(self) -> None:
        """A unix: description adopts a Unix socket."""
        path = os.path.join(self.directory(), "socket")
        s = self.listening(socket.AF_UNIX, path)
        self.assertEqual(socket_family(s.fileno()), socket.AF_UNIX)
        port = yield adopt(reactor, f"unix:{path}", os.dup(s.fileno()), Factory.forProtocol(_Hello))
        self.addCleanup(port.stopListening)
        self.assertEqual((yield self.fetch(socket.AF_UNIX, path)), b"hello")

    @defer.inlineCallbacks
    def test_ssl(self) -> None:
        """An ssl: description adopts the socket and speaks TLS with its certificate."""
        from twisted.internet import ssl
        from twisted.internet.endpoints import SSL4ClientEndpoint

        from ._cluster import ClusterPKI

        pki = ClusterPKI(self.directory())
        cert, key = pki.issue("server")
        ca = pki.ca_path
        s = self.listening()
        port = yield adopt(
            reactor, f"ssl:0:privateKey={key}:certKey={cert}", os.dup(s.fileno()), Factory.forProtocol(_Hello)
        )
        self.addCleanup(port.stopListening)
        with open(ca, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        done: defer.Deferred[bytes] = defer.Deferred()
        endpoint = SSL4ClientEndpoint(
            reactor, "127.0.0.1", s.getsockname()[1], ssl.optionsForClientTLS("127.0.0.1", authority)
        )
        yield endpoint.connect(Factory.forProtocol(lambda: _Collect(done)))
        self.assertEqual((yield done.addTimeout(5, reactor)), b"hello")

    def test_unsupported(self) -> None:
        """A description that binds no socket through listenTCP/SSL/UNIX is refused."""
        failure = self.failureResultOf(adopt(reactor, "nosuchkind:1", 99, Factory()))
        self.assertIsInstance(failure.value, ValueError)


class WorkerMetricsTests(SynchronousTestCase):
    """
    L{worker_metrics}: each worker serves its own metrics.
    """

    def test_ports(self) -> None:
        """Worker i listens on the given port plus i - 1; port 0 and Unix paths stay distinct."""
        from twisted_phoenix.workers.worker import worker_metrics

        self.assertEqual(worker_metrics("tcp:9100:interface=127.0.0.1", 1), "tcp:9100:interface=127.0.0.1")
        self.assertEqual(worker_metrics("tcp:9100:interface=127.0.0.1", 3), "tcp:9102:interface=127.0.0.1")
        self.assertEqual(worker_metrics("tcp6:9100", 2), "tcp6:9101")
        self.assertEqual(worker_metrics("tcp:0", 2), "tcp:0")
        self.assertEqual(worker_metrics("unix:/run/app/metrics.sock:mode=660", 2), "unix:/run/app/metrics.sock-2:mode=660")
