"""
Real child processes for end-to-end tests: a ``twistd -n phoenix`` server
and short Node.js runs of the real phoenix.js client.

Everything here is bounded and cleans up after itself, so trial never sees
a dirty reactor::

    class SomethingTests(unittest.TestCase):
        @defer.inlineCallbacks
        def test_x(self):
            server = yield start_server(self, "--name", "a@127.0.0.1")
            url = server.url("/socket")              # ws://127.0.0.1:PORT/socket
            events = yield run_node_scenario(self, "ping", url, {"vsn": "2.0.0"})

:func:`start_server` spawns ``sys.executable`` running twistd with the
tree's code first on ``PYTHONPATH``; a temporary ``twisted/plugins``
directory holding a copy of ``twistd_plugins/phoenix.py`` makes the
``phoenix`` plugin visible whether or not the package is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Iterable, Mapping

from twisted.internet import defer, error
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = [
    "CHROMIUM",
    "JS_DIR",
    "REPO_ROOT",
    "ChildFailed",
    "ChildProcess",
    "NodeRun",
    "ServerProcess",
    "require_node_modules",
    "require_program",
    "run_node",
    "spawn_node",
    "wait_ended",
    "run_node_scenario",
    "start_server",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Debian's Chromium, for the browser tests (``$CHROMIUM`` for another).
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
JS_DIR = os.path.join(REPO_ROOT, "tests", "js")
PLUGIN_SOURCE = os.path.join(REPO_ROOT, "twistd_plugins", "phoenix.py")

#: The secret the test servers sign tokens with, unless a test gives another.
TEST_SECRET = "twisted_phoenix end-to-end test secret key base, 64 characters long!!"

#: Logged by ``twisted_phoenix.tap.ListeningService`` once a port is bound.
_LISTENING = re.compile(r"twisted_phoenix listening on (?P<description>.*?) port=(?P<port>\d+|None)")


class ChildFailed(Exception):
    """A child process did not do what the test needed; the message holds its output."""


class ChildProcess(ProcessProtocol):
    """
    Collects a child's output and tells when it has exited and been reaped.

    :ivar exit_code: the exit code, ``-signal`` if killed, ``None`` while running.
    """

    def __init__(self, name: str, reactor: Any) -> None:
        self.name = name
        self.reactor = reactor
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit_code: int | None = None
        self._end_waiters: list[defer.Deferred[int]] = []
        self._waiters: list[tuple[Any, defer.Deferred[Any]]] = []
        self._ended = False

    # -- ProcessProtocol ------------------------------------------------------

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._check_waiters()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._check_waiters()

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, error.ProcessTerminated) and value.exitCode is None:
            self.exit_code = -(value.signal or 0)
        else:
            self.exit_code = getattr(value, "exitCode", 0) or 0
        self._ended = True
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(ChildFailed(f"{self.name} exited ({self.exit_code}) first\n{self.output()}"))
        end_waiters, self._end_waiters = self._end_waiters, []
        for d in end_waiters:
            d.callback(self.exit_code)

    # -- helpers ----------------------------------------------------------------

    def wait_ended(self) -> defer.Deferred[int]:
        """Fire with the exit code once the process is reaped and its pipes closed."""
        if self._ended:
            return defer.succeed(self.exit_code)
        d: defer.Deferred[int] = defer.Deferred()
        self._end_waiters.append(d)
        return d

    @property
    def running(self) -> bool:
        """Whether the process has not been reaped yet."""
        return not self._ended

    def output(self) -> str:
        """Both streams, decoded, for failure messages."""
        out = self.stdout.decode("utf-8", "replace")
        err = self.stderr.decode("utf-8", "replace")
        return f"--- {self.name} stdout ---\n{out}\n--- {self.name} stderr ---\n{err}"

    def wait_for_output(self, predicate: Any, timeout: float, what: str) -> defer.Deferred[Any]:
        """
        Fire with ``predicate(stdout_text)`` once it is truthy; fail with the
        collected output after ``timeout`` seconds or if the child exits first.
        """
        d: defer.Deferred[Any] = defer.Deferred()
        result = predicate(self.stdout.decode("utf-8", "replace"))
        if result:
            d.callback(result)
            return d
        if self._ended:
            d.errback(ChildFailed(f"{self.name} exited ({self.exit_code}) before {what}\n{self.output()}"))
            return d
        entry = (predicate, d)
        self._waiters.append(entry)

        def timed_out(failure: Failure) -> Failure:
            if entry in self._waiters:
                self._waiters.remove(entry)
            if failure.check(defer.TimeoutError, defer.CancelledError):
                raise ChildFailed(f"no {what} within {timeout} s\n{self.output()}")
            return failure

        d.addTimeout(timeout, self.reactor)
        d.addErrback(timed_out)
        return d

    def _check_waiters(self) -> None:
        if not self._waiters:
            return
        text = self.stdout.decode("utf-8", "replace")
        for entry in list(self._waiters):
            predicate, d = entry
            result = predicate(text)
            if result and entry in self._waiters:
                self._waiters.remove(entry)
                d.callback(result)

    def stop(self, grace: float = 5.0) -> defer.Deferred[int | None]:
        """
        SIGTERM, then SIGKILL after ``grace`` seconds; fires once the process
        is reaped (at most ``2 * grace`` seconds).
        """
        if self._ended:
            return defer.succeed(self.exit_code)
        self._signal("TERM")
        kill = self.reactor.callLater(grace, self._signal, "KILL")
        d: defer.Deferred[int] = defer.Deferred()

        def ended(code: int) -> int:
            if kill.active():
                kill.cancel()
            if not d.called:
                d.callback(code)
            return code

        self.wait_ended().addCallback(ended)
        d.addTimeout(2 * grace, self.reactor)

        def gave_up(failure: Failure) -> Failure:
            if kill.active():
                kill.cancel()
            return failure

        d.addErrback(gave_up)
        return d

    def _signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


def _spawn(
    reactor: Any,
    name: str,
    argv: list[str],
    env: Mapping[str, str],
    path: str | None,
    use_pty: bool = False,
) -> ChildProcess:
    protocol = ChildProcess(name, reactor)
    reactor.spawnProcess(protocol, argv[0], argv, env=dict(env), path=path, usePTY=use_pty)
    return protocol


def _clean_env(extra: Mapping[str, str | None] | None) -> dict[str, str]:
    """This process's environment updated with ``extra``; a ``None`` value unsets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRIAL_"))}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# -- the server ------------------------------------------------------------------------


class ServerProcess:
    """
    A running ``twistd -n phoenix`` child.

    :ivar ports: the bound port of each ``--listen``, in order of binding.
    :ivar port: the first of :attr:`ports`.
    :ivar child: the :class:`ChildProcess` (its collected output).
    """

    def __init__(self, child: ChildProcess, ports: list[int], workdir: str) -> None:
        self.child = child
        self.ports = ports
        self.port = ports[0] if ports else None  # None for a --no-http node
        self.workdir = workdir

    def url(self, path: str = "", scheme: str = "ws", host: str = "127.0.0.1") -> str:
        """``scheme://host:port`` followed by ``path``, e.g. ``url("/socket")``."""
        return f"{scheme}://{host}:{self.port}{path}"

    def output(self) -> str:
        """Everything the server logged so far."""
        return self.child.output()

    def stop(self) -> defer.Deferred[Any]:
        """Terminate the server and wait for it to be reaped; removes its work dir."""
        d = self.child.stop()

        def cleanup(result: Any) -> Any:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return result

        return d.addBoth(cleanup)


def start_server(
    testcase: Any,
    *args: str,
    env: Mapping[str, str | None] | None = None,
    listen: Iterable[str] = ("tcp:0:interface=127.0.0.1",),
    reactor: Any = None,
    timeout: float = 20.0,
    name: str = "server",
    ready: str | None = None,
    twistd_args: Iterable[str] = (),
) -> defer.Deferred[ServerProcess]:
    """
    Spawn ``twistd -n [twistd_args] phoenix --listen ... *args`` and fire with a
    :class:`ServerProcess` once every listen description is bound.

    :param testcase: a trial ``TestCase``; the server is stopped (and
        reaped) in its cleanup.  ``None`` leaves stopping to the caller.
    :param args: more ``twistd phoenix`` options, e.g. ``"--name", "a@b"``
        or ``"--endpoint", "tests._apps:ConformanceEndpoint"``.
    :param env: extra environment variables (``SECRET_KEY_BASE`` defaults
        to :data:`TEST_SECRET`).
    :param listen: ``--listen`` endpoint descriptions; use port 0.  Empty
        for a ``--no-http`` node (give ``ready`` then).
    :param ready: text the server must also have logged before it counts as
        started, e.g. ``"listening for cluster links"`` for a cluster node.
    :param twistd_args: twistd's own options, e.g. ``("--reactor", "poll")``.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    listen = list(listen)
    workdir = tempfile.mkdtemp(prefix="twisted_phoenix_server_")
    plugins = os.path.join(workdir, "twisted", "plugins")
    os.makedirs(plugins)
    shutil.copy(PLUGIN_SOURCE, os.path.join(plugins, "phoenix.py"))
    child_env = _clean_env({"SECRET_KEY_BASE": TEST_SECRET, **(env or {})})
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO_ROOT, workdir, os.environ.get("PYTHONPATH", "")) if p
    )
    child_env["PYTHONUNBUFFERED"] = "1"
    argv = [
        sys.executable, "-c",
        "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
        "--nodaemon", "--pidfile=", "--logfile=-", *twistd_args,
        "phoenix",
    ]
    for description in listen:
        argv += ["--listen", description]
    argv += list(args)
    child = _spawn(reactor, name, argv, child_env, path=workdir)
    server_holder: list[ServerProcess] = []

    def stop_in_cleanup() -> defer.Deferred[Any]:
        if server_holder:
            return server_holder[0].stop()
        return child.stop().addBoth(lambda r: shutil.rmtree(workdir, ignore_errors=True))

    if testcase is not None:
        testcase.addCleanup(stop_in_cleanup)

    def bound(text: str) -> tuple[list[int]] | None:
        ports = [int(m.group("port")) for m in _LISTENING.finditer(text) if m.group("port") != "None"]
        if len(ports) < len(listen) or (ready is not None and ready not in text):
            return None
        return (ports,)

    what = f"'twisted_phoenix listening on' line for {listen}" + (f" and {ready!r}" if ready else "")
    d = child.wait_for_output(bound, timeout, what)

    def started(found: tuple[list[int]]) -> ServerProcess:
        server = ServerProcess(child, found[0], workdir)
        server_holder.append(server)
        return server

    d.addCallback(started)
    if testcase is None:
        def failed(failure: Failure) -> defer.Deferred[Any]:
            return child.stop().addBoth(lambda _: failure)
        d.addErrback(failed)
    return d


# -- Node.js ----------------------------------------------------------------------------


def require_program(path_or_name: str, package: str) -> str:
    """
    The path of a program the tests need from the system (Chromium,
    redis-server).  Without it, the test is skipped, naming the Debian
    package; unless ``CI`` is set: CI installs it (``.ci/run``), so there
    its absence is a failure.
    """
    import shutil
    from unittest import SkipTest

    found = path_or_name if os.path.isabs(path_or_name) and os.access(path_or_name, os.X_OK) else None
    found = found or shutil.which(path_or_name)
    if found:
        return found
    reason = f"{path_or_name} is not installed (Debian: apt-get install {package})"
    if os.environ.get("CI"):
        raise AssertionError(reason + "; CI is set, so this is a failure, not a skip")
    raise SkipTest(reason)


def require_node_modules(*packages: str) -> None:
    """
    Fail (not skip) with instructions when ``tests/js/node_modules`` lacks
    one of ``packages`` or ``node`` is not installed.
    """
    if shutil.which("node") is None:
        raise ChildFailed("Node.js (`node`) is not on PATH; these tests run the real phoenix.js under Node 20")
    for package in packages or ("phoenix", "ws"):
        if not os.path.isfile(os.path.join(JS_DIR, "node_modules", package, "package.json")):
            raise ChildFailed(
                f"tests/js/node_modules/{package} is missing: run `npm ci` in tests/js "
                "(CI does this before the tests)"
            )


class NodeRun:
    """
    What a Node child printed: :attr:`events` are its JSON lines.

    :ivar exit_code: the process's exit code.
    """

    def __init__(self, child: ChildProcess) -> None:
        self.child = child
        self.exit_code = child.exit_code
        self.events: list[dict[str, Any]] = []
        for line in child.stdout.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    pass

    def output(self) -> str:
        """Everything the child printed, for failure messages."""
        return self.child.output()


def spawn_node(
    testcase: Any,
    argv: list[str],
    *,
    env: Mapping[str, str | None] | None = None,
    reactor: Any = None,
    name: str = "node",
    use_pty: bool = False,
) -> ChildProcess:
    """
    Start ``node *argv`` in ``tests/js`` (on a pty with ``use_pty``); it is
    killed and reaped in ``testcase``'s cleanup.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    node = shutil.which("node")
    if node is None:
        raise ChildFailed("Node.js (`node`) is not on PATH")
    child = _spawn(reactor, name, [node, *argv], _clean_env(env), path=JS_DIR, use_pty=use_pty)
    if testcase is not None:
        testcase.addCleanup(child.stop, 2.0)
    return child


def wait_ended(child: ChildProcess, timeout: float, reactor: Any = None) -> defer.Deferred[ChildProcess]:
    """
    Fire with ``child`` once it exits; if it outlives ``timeout`` seconds,
    kill it and fail with its output.
    """
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    d: defer.Deferred[Any] = defer.Deferred()
    child.wait_ended().addCallback(lambda _: None if d.called else d.callback(child))
    d.addTimeout(timeout, reactor)

    def timed_out(failure: Failure) -> defer.Deferred[Any]:
        failure.trap(defer.TimeoutError, defer.CancelledError)
        return child.stop(2.0).addBoth(
            lambda _: Failure(ChildFailed(f"{child.name} still running after {timeout} s\n{child.output()}"))
        )

    return d.addErrback(timed_out)


def run_node(
    testcase: Any,
    argv: list[str],
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 30.0,
    reactor: Any = None,
    name: str = "node",
) -> defer.Deferred[ChildProcess]:
    """
    Run ``node *argv`` in ``tests/js`` and fire with the ended
    :class:`ChildProcess`; killed if it outlives ``timeout`` seconds (the
    Deferred then fails with its output).  Killed in ``testcase``'s cleanup.
    """
    child = spawn_node(testcase, argv, env=env, reactor=reactor, name=name)
    return wait_ended(child, timeout, reactor)


def run_node_scenario(
    testcase: Any,
    scenario: str,
    url: str,
    options: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 30.0,
    server: ServerProcess | None = None,
) -> defer.Deferred[NodeRun]:
    """
    Run one named scenario of ``tests/js/phoenix_scenarios.js`` against
    ``url`` (the server's base URL, e.g. ``ws://127.0.0.1:PORT``) and fire
    with its :class:`NodeRun`.  Fails with the script's and the server's
    output unless the script exited 0 after printing ``{"ev": "done"}``.
    """
    require_node_modules("phoenix", "ws")
    argv = ["phoenix_scenarios.js", scenario, url, json.dumps(dict(options or {}))]
    d = run_node(testcase, argv, env=env, timeout=timeout, name=f"phoenix.js {scenario}")

    def check(child: ChildProcess) -> NodeRun:
        run = NodeRun(child)
        if run.exit_code != 0 or not any(e.get("ev") == "done" for e in run.events):
            server_log = server.output() if server is not None else ""
            raise ChildFailed(
                f"scenario {scenario!r} failed (exit {run.exit_code})\n{run.output()}\n{server_log}"
            )
        return run

    return d.addCallback(check)
