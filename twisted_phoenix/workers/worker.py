# -*- test-case-name: tests.test_workers -*-
"""
A worker process of ``twistd phoenix --workers N`` (see
:mod:`twisted_phoenix.workers`).

It reads its settings, one JSON line, on its standard input; parses the
plugin's arguments as the parent did (the same endpoint, limits, static
files, secret, presence options...); becomes the cluster node the parent
named; serves on the parent's listening sockets (:mod:`.adopt`); and tells
the parent on file descriptor 3 when it is ``ready`` and when it is
``linked`` to all its siblings.

It drains and exits on SIGTERM or SIGINT, or when its standard input ends
(the parent is gone): it stops accepting, closes its WebSocket clients
with 1012 and ends its long-poll sessions (:meth:`Endpoint.drain
<twisted_phoenix.endpoint.Endpoint.drain>`), waits for its connections to
close (at most the drain timeout; then it drops the rest), and leaves the
cluster.  It exits 0 when told to stop, 1 when it stopped on its own (its
node could not start, say): the parent then starts it again.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, error, main as _main
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from zope.interface import implementer

from .._textlog import TextLogObserver
from .adopt import adopt

__all__ = ["AdoptedListener", "Worker", "boot", "configure", "main", "read_settings", "worker_metrics"]

log = Logger()

#: Where a worker writes its reports (see :mod:`.supervisor`).
REPORT_FD = 3

#: Seconds between attempts to link a sibling at start (they start at the
#: same time: each may try before the other has registered its name).
SIBLING_RETRY = (0.1, 0.25, 0.5, 1.0, 2.0)

#: Seconds after which a sibling not linked yet is worth a warning.
SIBLING_PATIENCE = 10.0


def read_settings(fd: int = 0) -> dict[str, Any]:
    """The settings line the parent writes on ``fd`` (read without reading past it)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise SystemExit("twisted_phoenix worker: no settings on standard input (started by the parent only)")
        data += chunk
    return json.loads(data)


def boot() -> None:
    """A worker process's entry point (``python -c`` of the parent)."""
    settings = read_settings()
    sys.path[:] = settings["path"]
    sys.exit(main(settings))


class _WorkerLogObserver(TextLogObserver):
    """Our text log lines, each naming the worker (``[worker-2 twisted_phoenix...#info]``)."""

    def __init__(self, out: Any, tag: str, reactor: Any = None) -> None:
        super().__init__(out, reactor)
        self.tag = tag

    def format(self, event: dict[str, Any]) -> str | None:
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        return super().format({**event, "log_system": f"{self.tag} {system}"})


@implementer(IReadDescriptor)
class _ParentWatch:
    """Calls ``gone`` when the pipe ``fd`` from the parent ends (the parent has exited)."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self.fd = fd
        self.gone = gone

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "parent"

    def doRead(self) -> Any:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        return None if data else _main.CONNECTION_DONE

    def connectionLost(self, reason: Any) -> None:
        self.gone()


def configure(options: Any, settings: dict[str, Any]) -> None:
    """
    Turn the plugin's options, as parsed by the parent, into this worker's:
    its node name, cookie, port mapper, link port and the nodes it links to.
    """
    options["workers"] = None
    options["name"] = settings["name"]
    options["cookie"] = settings["cookie"]
    options["epmd-port"] = settings["epmd_port"]
    if settings["generated"]:
        options["cluster"] = True
        options["dist-interface"] = "127.0.0.1"
        options["dist-port"] = "0"
        options._cluster_options()
    options["dist-port"] = settings["dist_port"]
    if options.get("metrics"):
        options["metrics"] = worker_metrics(options["metrics"], settings["index"])


def worker_metrics(description: str, index: int) -> str:
    """
    Worker ``index``'s ``--metrics`` description: each worker serves its own
    metrics, worker i on the given port plus i - 1 (``tcp:9100`` → 9100,
    9101, ...; port 0 stays 0; a Unix socket path gets ``-i``).
    """
    kind, sep, rest = description.partition(":")
    if kind == "unix" and sep:
        path, colon, more = rest.partition(":")
        return f"unix:{path}-{index}{colon}{more}"
    if kind in ("tcp", "tcp6", "ssl") and sep:
        port, colon, more = rest.partition(":")
        if port.isdigit() and int(port):
            return f"{kind}:{int(port) + index - 1}{colon}{more}"
    return description


class AdoptedListener(service.Service):
    """Serves ``site`` on the parent's listening socket ``fd`` (bound for ``description``)."""

    def __init__(self, reactor: Any, description: str, fd: int, site: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.fd = fd
        self.site = site
        self.port: Any = None
        self.listening: defer.Deferred[Any] = defer.Deferred()

    def startService(self) -> None:
        super().startService()

        def adopted(port: Any) -> None:
            self.port = port
            log.info(
                "Serving {description} on the parent's socket (port={port})",
                description=self.description, port=getattr(port.getHost(), "port", None),
            )
            self.listening.callback(port)

        def failed(failure: Any) -> None:
            log.failure("Cannot serve {description}", failure, description=self.description)
            self.reactor.stop()

        adopt(self.reactor, self.description, self.fd, self.site).addCallbacks(adopted, failed)

    def stop_accepting(self, close: bool) -> Any:
        """
        Accept no more connections.  ``close``: close this copy of the
        socket too (the server is stopping); else leave it to the parent
        and the other workers (a unix socket keeps its path).
        """
        port, self.port = self.port, None
        if port is None:
            return None
        if close:
            return port.stopListening()
        port.stopReading()
        return None

    def stopService(self) -> Any:
        super().stopService()
        return self.stop_accepting(close=True)


class Worker:
    """
    This worker: the serving service (:func:`twisted_phoenix.tap.serving_service`)
    on adopted sockets, its reports, and its drain.

    :param report: called with each report (a dict) for the parent.
    """

    def __init__(self, reactor: Any, options: Any, settings: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
        from ..tap import serving_service

        self.reactor = reactor
        self.settings = settings
        self.report = report
        self.drain_timeout: float = settings["drain_timeout"]
        self.siblings: set[str] = set(settings["siblings"])
        self.listeners: list[AdoptedListener] = []
        #: Whether we were told to stop (a signal, or the parent gone), not stopped on our own.
        self.requested = False
        self._stopping: defer.Deferred[None] | None = None
        self._linked = False
        self._warned: set[str] = set()
        self.service = serving_service(options, reactor, listen=self._listen)
        self.node: Any = None
        for child in self.service:
            node = getattr(child, "node", None)
            if node is not None:
                self.node = node

    def _listen(self, description: str, site: Any) -> AdoptedListener:
        listener = AdoptedListener(self.reactor, description, self.settings["listen"][len(self.listeners)], site)
        self.listeners.append(listener)
        return listener

    def start(self) -> None:
        """Start serving; report ``ready``, then ``linked``."""
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.service.privilegedStartService()
        self.service.startService()
        waits = [listener.listening for listener in self.listeners]
        if self.node is not None:
            waits.append(self.node.started)
            self.node.node_up_callbacks.append(self._node_up)
        defer.gatherResults(waits).addCallback(self._ready).addErrback(
            lambda f: log.failure("Reporting this worker ready", f)
        )

    def _ready(self, _: Any) -> None:
        self.report({"event": "ready", "name": self.settings["name"], "pid": os.getpid()})
        for sibling in sorted(self.siblings):
            self._link_sibling(sibling, self.reactor.seconds())
        self._node_up(None)

    def _link_sibling(self, name: str, since: float, attempt: int = 0) -> None:
        """
        Link the sibling ``name``, quietly: it may not have registered its
        name yet (a warning after :data:`SIBLING_PATIENCE` seconds).  Once
        linked, the node relinks it by itself whenever the link is lost.
        """
        node = self.node
        if node is None or self._stopping is not None or name in node.links:
            return

        def done(ok: bool) -> None:
            if ok or self._stopping is not None:
                return
            if name not in self._warned and self.reactor.seconds() - since >= SIBLING_PATIENCE:
                self._warned.add(name)
                log.warn("Worker {name} cannot link its sibling {sibling} yet; still trying",
                         name=self.settings["name"], sibling=name)
            delay = SIBLING_RETRY[min(attempt, len(SIBLING_RETRY) - 1)]
            self.reactor.callLater(delay, self._link_sibling, name, since, attempt + 1)

        node.connect(name, quiet=True).addCallback(done).addErrback(
            lambda f: log.failure("Linking sibling {sibling}", f, sibling=name)
        )

    def _node_up(self, peer: str | None) -> None:
        if self._linked or self.node is None or not self.node.started.called:
            return
        if self.siblings <= set(self.node.links):
            self._linked = True
            self.report({"event": "linked", "peers": self.node.list()})

    def shutdown(self) -> None:
        """We are told to stop (a signal, the parent gone): drain, then stop."""
        self.requested = True
        try:
            self.reactor.stop()
        except error.ReactorNotRunning:
            pass

    def stop(self) -> defer.Deferred[None]:
        """Drain, then stop the services (a before-shutdown trigger)."""
        if self._stopping is None:
            self._stopping = defer.ensureDeferred(self._drain_and_stop())
        return self._stopping

    async def _drain_and_stop(self) -> None:
        deadline = self.reactor.seconds() + self.drain_timeout
        for listener in self.listeners:
            listener.stop_accepting(close=self.requested)
        sites = [listener.site for listener in self.listeners]
        if sites:
            endpoint = sites[0].endpoint
            try:
                told = await endpoint.drain().addTimeout(max(0.0, deadline - self.reactor.seconds()), self.reactor)
            except defer.TimeoutError:
                told = None
            log.info(
                "Draining: {told} clients told to reconnect elsewhere (WebSocket 1012, long-poll sessions ended)",
                told="all" if told is None else told,
            )
            idle = defer.gatherResults([site.when_idle() for site in sites])
            try:
                await idle.addTimeout(max(0.0, deadline - self.reactor.seconds()), self.reactor)
            except defer.TimeoutError:
                left = sum(site.connections for site in sites)
                log.warn(
                    "Dropping {n} connections still open {t:g} s after the drain began (--drain-timeout)",
                    n=left, t=self.drain_timeout,
                )
                for site in sites:
                    site.abort_all()
        await self.service.stopService()


def _install_reactor(name: str | None) -> Any:
    """The reactor the parent's twistd was given (``--reactor``), else the plugin's default."""
    if name:
        from twisted.application.reactors import installReactor

        installReactor(name)
    else:
        from .._reactor import install_default

        install_default()
    from twisted.internet import reactor

    return reactor


def _report(settings: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def report(message: dict[str, Any]) -> None:
        try:
            os.write(REPORT_FD, json.dumps(message).encode() + b"\n")
        except OSError:
            pass  # the parent is gone; its pipe's end tells us too

    return report


def main(settings: dict[str, Any]) -> int:
    """Run the worker ``settings`` describe until told to stop; the exit code."""
    from twisted.logger import globalLogBeginner
    from twisted.python import usage

    reactor = _install_reactor(settings.get("reactor"))
    observer = _WorkerLogObserver(sys.stdout, f"worker-{settings['index']}", reactor)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from ..tap import Options

    options = Options()
    here = os.getcwd()
    try:
        # Where the parent parsed them (twistd may have changed directory
        # since, with --rundir): relative paths mean the same.
        os.chdir(settings["cwd"])
        try:
            options.parseOptions(settings["args"])
        finally:
            os.chdir(here)
        configure(options, settings)
    except usage.UsageError as e:
        log.error("Worker {index}: {error}", index=settings["index"], error=str(e))
        return 2
    worker = Worker(reactor, options, settings, _report(settings))

    def on_signal(signum: int, frame: Any) -> None:
        reactor.callFromThread(worker.shutdown)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reactor.addReader(_ParentWatch(0, worker.shutdown))
    reactor.callWhenRunning(worker.start)
    reactor.run(installSignalHandlers=False)
    return 0 if worker.requested else 1
