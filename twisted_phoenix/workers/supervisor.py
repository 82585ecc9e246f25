# -*- test-case-name: tests.test_workers -*-
"""
The parent of ``twistd phoenix --workers N``: it binds every ``--listen``,
starts the workers, restarts those that die, and drains them at shutdown
(see :mod:`twisted_phoenix.workers`).

The parent serves no client: its listening sockets are bound with the
plugin's backlog and logged as a single process logs them
(``twisted_phoenix listening on tcp:0 port=N``), then left to the workers
(it never accepts on them).  Each worker gets, through ``spawnProcess``'s
``childFDs``:

* on its standard input, one JSON line with its settings (its name, its
  siblings', the cluster cookie, the plugin's arguments...; nothing secret
  on a command line), then nothing: the end of that pipe tells a worker
  that its parent is gone, and it drains and exits;
* the parent's standard output and error when the parent logs there
  (``twistd -n``), else pipes whose lines the parent writes to its log file;
* on file descriptor 3, a pipe for its reports to the parent (``ready``,
  ``linked``), one JSON object a line;
* from file descriptor 4 on, the listening sockets, in ``--listen`` order.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, error
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..tap import generated_node_name, with_backlog
from . import worker_names

__all__ = ["BACKOFF", "STABLE", "STOP_MARGIN", "Supervisor", "supervisor_service"]

log = Logger()

#: Seconds before restarting a worker that died: the first entry after a
#: worker that ran :data:`STABLE` seconds or more, then the next ones while
#: it keeps dying sooner (a crash loop backs off, it does not spin).
BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

#: Seconds a worker must run for its next death to count as a new one, not
#: a crash loop.
STABLE = 30.0

#: Seconds the parent waits, beyond the drain timeout, for the workers to
#: leave the cluster and exit before it kills them.
STOP_MARGIN = 10.0

#: The worker's first file descriptor for the listening sockets; 3 is its
#: report pipe.
FIRST_LISTEN_FD = 4
REPORT_FD = 3

#: How a worker process starts: its settings come on standard input (see
#: :func:`twisted_phoenix.workers.worker.main`).
BOOT = "from twisted_phoenix.workers.worker import boot; boot()"


class _NoClients(Factory):
    """The parent's listening sockets' factory: it never accepts (reading is stopped), and would refuse."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class _Lines:
    """Splits a stream into lines for ``sink`` (a partial line waits for its end)."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.partial = b""

    def feed(self, data: bytes) -> None:
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self.sink(line + b"\n")

    def close(self) -> None:
        if self.partial:
            self.sink(self.partial + b"\n")
            self.partial = b""


class WorkerProcess(ProcessProtocol):
    """One worker process, as the parent sees it."""

    def __init__(self, supervisor: Supervisor, index: int, name: str, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.name = name
        self.started = started
        self.pid: int | None = None
        self.ready = False
        self.linked = False
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self._reports = _Lines(self._report)
        sink = supervisor.sink
        self._output = {fd: _Lines(sink) for fd in (1, 2)} if sink is not None else {}

    def __repr__(self) -> str:
        return f"Worker {self.index} ({self.name}, pid {self.pid})"

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == REPORT_FD:
            self._reports.feed(data)
        elif childFD in self._output:
            self._output[childFD].feed(data)

    def _report(self, line: bytes) -> None:
        try:
            report = json.loads(line)
            event = report["event"]
        except (ValueError, TypeError, KeyError):
            log.warn("Ignored a report of {worker}: {line!r}", worker=self, line=line[:200])
            return
        self.supervisor.reported(self, event, report)

    def signal(self, name: str) -> None:
        """Send the signal ``name`` (``TERM``, ``KILL``), unless it has exited."""
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def processEnded(self, reason: Failure) -> None:
        for lines in self._output.values():
            lines.close()
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        self.exit_signal = getattr(value, "signal", None)
        self.supervisor.exited(self)
        self.ended.callback(None)

    def describe_exit(self) -> str:
        if self.exit_signal is not None:
            try:
                return f"was killed by {signal.Signals(self.exit_signal).name}"
            except ValueError:
                return f"was killed by signal {self.exit_signal}"
        return f"exited with code {self.exit_code}"


class Supervisor(service.Service):
    """
    Binds the listening sockets, runs ``count`` workers and keeps them
    running; drains them when stopped.

    :param reactor: the reactor (spawns processes, keeps time).
    :param options: the parsed :class:`~twisted_phoenix.tap.Options`.
    :param sink: where the workers' output lines go; ``None``: the workers
        write to the parent's standard output and error themselves.
    :param executable: the Python that runs the workers.
    """

    def __init__(
        self,
        reactor: Any,
        options: Any,
        *,
        sink: Callable[[bytes], None] | None = None,
        executable: str = sys.executable,
    ) -> None:
        self.reactor = reactor
        self.options = options
        self.count: int = options["workers"]
        self.drain_timeout: float = options["drain-timeout"]
        self.sink = sink
        self.executable = executable
        self.listen: list[str] = list(options["listen"])
        self.ports: list[Any] = []
        self.workers: dict[int, WorkerProcess] = {}
        self._crashes: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._bound: defer.Deferred[Any] | None = None
        self._stopping = False
        self._all_linked = False
        self._mapper_port: Any = None
        # The cluster of the workers: named after --name, else generated.
        self.generated = not options["cluster"]
        base = options["name"] if options["cluster"] else _generated_base(options["name"])
        self.names = worker_names(base, self.count)
        if self.generated:
            cookie = options["cookie"] or os.environ.get("PHOENIX_COOKIE")
            self.cookie: str = cookie or secrets.token_urlsafe(24)
            self.epmd_port: int | None = None  # the parent's own mapper, once listening
        else:
            self.cookie = options["cookie"]
            self.epmd_port = options["epmd-port"]

    # -- service -------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bound before twistd drops privileges (ports below 1024).
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        super().startService()
        if self._bound is None:
            self._bind()
        assert self._bound is not None
        self._bound.addCallback(lambda _: self._start_mapper())
        self._bound.addCallback(lambda _: self._spawn_all())
        self._bound.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        log.failure("Cannot start the workers", failure)
        self.reactor.stop()

    def _bind(self) -> None:
        backlog = self.options["backlog"]
        self.ports = [None] * len(self.listen)
        waits = []
        for i, description in enumerate(self.listen):
            d = defer.maybeDeferred(
                lambda description=description: serverFromString(
                    self.reactor, with_backlog(description, backlog)
                ).listen(_NoClients())
            )
            d.addCallback(self._listening, description, i)
            waits.append(d)
        self._bound = defer.gatherResults(waits, consumeErrors=True).addErrback(
            lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f
        )

    def _listening(self, port: Any, description: str, i: int) -> Any:
        # The workers accept; the parent never does.
        port.stopReading()
        self.ports[i] = port
        address = port.getHost()
        log.info(
            "twisted_phoenix listening on {description} port={port}",
            description=description, port=getattr(address, "port", None),
        )
        return port

    def _start_mapper(self) -> None:
        """Without ``--name``: a port mapper for the workers' names, on a free loopback port."""
        if not self.generated:
            return
        from ..cluster.portmapper import PortMapper

        mapper = PortMapper(self.cookie, self.reactor)
        self._mapper_port = self.reactor.listenTCP(0, mapper, interface="127.0.0.1")
        self.epmd_port = self._mapper_port.getHost().port

    # -- workers ---------------------------------------------------------------------

    def _spawn_all(self) -> None:
        log.info(
            "Starting {count} workers: {names}", count=self.count, names=", ".join(self.names)
        )
        for index in range(1, self.count + 1):
            self._spawn(index)

    def config(self, index: int) -> dict[str, Any]:
        """What worker ``index`` (from 1) is told on its standard input."""
        options = self.options
        name = self.names[index - 1]
        dist_port = 0
        if not self.generated and options["dist-port"]:
            dist_port = options["dist-port"] + index - 1
        return {
            "index": index,
            "count": self.count,
            "name": name,
            "siblings": [n for n in self.names if n != name],
            "generated": self.generated,
            "cookie": self.cookie,
            "epmd_port": self.epmd_port,
            "dist_port": dist_port,
            "args": list(getattr(options, "argv", [])),
            "cwd": getattr(options, "cwd", "") or os.getcwd(),
            "listen": [FIRST_LISTEN_FD + i for i in range(len(self.ports))],
            "drain_timeout": self.drain_timeout,
            "path": list(sys.path),
            "reactor": _reactor_name(options),
        }

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        name = self.names[index - 1]
        worker = WorkerProcess(self, index, name, self.reactor.seconds())
        fds: dict[int, Any] = {0: "w", REPORT_FD: "r"}
        if self.sink is None:
            fds[1], fds[2] = 1, 2
        else:
            fds[1], fds[2] = "r", "r"
        for i, port in enumerate(self.ports):
            fds[FIRST_LISTEN_FD + i] = port.fileno()
        self.reactor.spawnProcess(
            worker, self.executable, [self.executable, "-c", BOOT], env=dict(os.environ), childFDs=fds
        )
        self.workers[index] = worker
        # Its settings, then the pipe stays open: its end means we are gone.
        worker.transport.writeToChild(0, json.dumps(self.config(index)).encode() + b"\n")
        log.info("Worker {index} started: {name}, pid {pid}", index=index, name=name, pid=worker.pid)

    def reported(self, worker: WorkerProcess, event: str, report: dict[str, Any]) -> None:
        """A worker's report (``ready``, ``linked``)."""
        if self.workers.get(worker.index) is not worker:
            return
        if event == "ready":
            worker.ready = True
            log.info("Worker {index} ({name}, pid {pid}) ready", index=worker.index, name=worker.name, pid=worker.pid)
        elif event == "linked":
            worker.linked = True
            if self.count > 1:
                log.info(
                    "Worker {index} ({name}) linked to its {n} siblings",
                    index=worker.index, name=worker.name, n=self.count - 1,
                )
        else:
            return
        everyone = len(self.workers) == self.count and all(w.ready and w.linked for w in self.workers.values())
        if everyone and not self._all_linked and not self._stopping:
            log.info("All {count} workers ready and linked", count=self.count)
        self._all_linked = everyone

    def exited(self, worker: WorkerProcess) -> None:
        """A worker has exited: restart it, unless stopping."""
        if self.workers.get(worker.index) is not worker:
            return
        del self.workers[worker.index]
        self._all_linked = False
        if self._stopping:
            log.info("{worker} {how}", worker=worker, how=worker.describe_exit())
            return
        ran = self.reactor.seconds() - worker.started
        crashes = 0 if ran >= STABLE else self._crashes.get(worker.index, 0) + 1
        self._crashes[worker.index] = crashes
        delay = BACKOFF[min(crashes, len(BACKOFF) - 1)]
        log.error(
            "{worker} {how} after {ran:.1f} s; restarting it in {delay:g} s{loop}",
            worker=worker, how=worker.describe_exit(), ran=ran, delay=delay,
            loop=f" (died {crashes + 1} times in a row within {STABLE:g} s of its start)" if crashes else "",
        )
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    # -- stopping ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Drain: close the listening sockets, SIGTERM every worker (each
        drains its clients), wait for them (the drain timeout and a
        margin), then kill what is left.
        """
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        # New connections are refused once every worker has closed its copy.
        yield defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in self.ports if port is not None]
        )
        workers = list(self.workers.values())
        if workers:
            log.info(
                "Draining {n} workers (at most {timeout:g} s)", n=len(workers), timeout=self.drain_timeout
            )
        for worker in workers:
            worker.signal("TERM")
        waits = defer.DeferredList([w.ended for w in workers])
        timer = self.reactor.callLater(self.drain_timeout + STOP_MARGIN, self._kill, workers)
        yield waits
        drained = timer.active()
        if drained:
            timer.cancel()
        if self._mapper_port is not None:
            yield defer.maybeDeferred(self._mapper_port.stopListening)
        if workers:
            log.info("Every worker has stopped")
        if drained:
            clean_exit(self.reactor)

    def _kill(self, workers: list[WorkerProcess]) -> None:
        left = [w for w in workers if not w.ended.called]
        if left:
            log.error(
                "Killing {n} workers still running {t:g} s after SIGTERM: {workers}",
                n=len(left), t=self.drain_timeout + STOP_MARGIN, workers=", ".join(map(repr, left)),
            )
        for worker in left:
            worker.signal("KILL")


def clean_exit(reactor: Any) -> None:
    """
    twistd ends a process that SIGTERM or SIGINT stopped by that signal (the
    reactor's ``_exitSignal``, read once it has stopped): after a drain that
    went to its end, the parent exits 0 instead.  (When workers had to be
    killed, it keeps twistd's way: terminated by the signal.)
    """
    from twisted.internet.interfaces import _ISupportsExitSignalCapturing

    if _ISupportsExitSignalCapturing.providedBy(reactor):
        reactor._exitSignal = None


def _generated_base(name: str) -> str:
    """``--name`` is ``nonode@nohost`` (or a generated name for Redis): a generated base name."""
    from ..cluster.names import NO_NODE

    return generated_node_name() if name == NO_NODE else name


def _reactor_name(options: Any) -> str | None:
    """The reactor twistd was asked for (``--reactor``), for the workers to install too."""
    twistd = getattr(options, "parent", None)
    if twistd is None:
        return None
    try:
        return twistd["reactor"]
    except KeyError:
        return None


def _log_sink(top: Any, options: Any) -> Callable[[bytes], None] | None:
    """
    Where the workers' output goes: ``None`` when the parent logs to its
    standard output (the workers write there too), else a function
    writing each line to the parent's log file (which it rotates), or, with
    syslog or another logger, logging it.
    """
    from ..tap import _twistd_log_path

    if _twistd_log_path(options) == "-":
        return None
    out = getattr(top.log_observer, "out", None)
    if out is not None:
        def write(line: bytes) -> None:
            out.write(line.decode("utf-8", "replace"))
            out.flush()

        return write

    def emit(line: bytes) -> None:
        log.info("{line}", line=line.decode("utf-8", "replace").rstrip("\n"))

    return emit


def supervisor_service(reactor: Any, options: Any, top: Any) -> Any:
    """The parent's service, under ``top`` (the plugin's top service, which carries the log observer)."""
    Supervisor(reactor, options, sink=_log_sink(top, options)).setServiceParent(top)
    return top
