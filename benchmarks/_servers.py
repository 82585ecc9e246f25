"""
The one way every benchmark starts a server: :func:`start`.

twisted_phoenix is started exactly as a user starts it::

    twistd -n --pidfile= phoenix --port <free port> [options]

with the plugin's defaults (the demo app, ``twisted_phoenix.examples.hello_sockets``,
topic ``ping``), and only the options a workload needs (``--endpoint`` of a
benchmark app, ``--name``/``--connect`` for a cluster), which the tables
print next to the figures.  Its log (standard output and error) goes to a
file in the run's log directory.  The floors and the peers are scripts
started the same way (``python -m benchmarks.peers.server_... --port N``);
an **external** server is a shell command given a port
(``--external "mix phx.server" --external-port 4000``), or just a port
something already listens on.  Every server is ready when its port accepts
a TCP connection.  :func:`sample` (``/proc``) reads any of them, external
ones included (the process listening on the port).
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

from benchmarks._proc import (
    ROOT, BenchmarkError, Child, Sample, accepts, env, free_port, pid_listening_on, sample, sample_tree,
)

#: phoenix.js's URL for a socket mounted at /socket.
PHOENIX_PATH = "/socket/websocket?vsn=2.0.0"
PLUGIN_SOURCE = os.path.join(ROOT, "twistd_plugins", "phoenix.py")


@dataclass(frozen=True)
class Spec:
    """A server the benchmarks can start (see :data:`SPECS`)."""

    name: str
    label: str
    kind: str  # phoenix (twistd), script (python -m ...), external
    argv: tuple[str, ...] = ()  # script: the module and its arguments
    path: str = PHOENIX_PATH  # WebSocket path and query
    protocol: str = "phoenix"  # what the generator speaks: phoenix or socketio
    modules: tuple[str, ...] = ()  # must be importable
    redis: bool = False  # needs a redis-server, given with --redis-port
    command: str = ""  # external: the shell command ("" if already running)
    port: int = 0  # external: its port
    options: tuple[str, ...] = ()  # phoenix: options of this server before the workload's (and --phoenix-options)
    ready: str = ""  # phoenix: also wait for this line in its log (its workers started)


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("phoenix", "twisted_phoenix", "phoenix"),
        Spec("workers", "twisted_phoenix --workers 2", "phoenix", options=("--workers", "2"),
             ready="All 2 workers ready and linked"),
        Spec("prepared", "Autobahn (prepared / sendMessage)", "script",
             ("benchmarks.peers.server_floor", "prepared"), path="/"),
        Spec("raw", "Autobahn raw transport.write", "script", ("benchmarks.peers.server_floor", "raw"), path="/"),
        Spec("websockets", "websockets (asyncio)", "script", ("benchmarks.peers.server_websockets",), path="/",
             modules=("websockets.asyncio.server",)),
        Spec("socketio", "python-socketio + aiohttp", "script", ("benchmarks.peers.server_socketio",),
             path="/socket.io/?EIO=4&transport=websocket", protocol="socketio", modules=("socketio", "aiohttp")),
        Spec("channels", "Daphne + Channels (redis layer)", "script", ("benchmarks.peers.server_channels",),
             path="/ws/", modules=("daphne", "channels", "channels_redis", "django"), redis=True),
    )
}


#: Servers run by default when a workload compares "every" server: not the
#: variants of twisted_phoenix itself (ask for ``--servers phoenix,workers``).
DEFAULT_SPECS = tuple(name for name in SPECS if name != "workers")

#: The twisted_phoenix servers, for the workloads that measure only ours.
PHOENIX_SPECS = ("phoenix", "workers")


def external_spec(command: str, port: int, path: str, label: str = "") -> Spec:
    """The ``--external`` server: a command started with the port, or (no command) one already running."""
    if not port:
        raise BenchmarkError("--external needs --external-port (the port the server listens on)")
    return Spec("external", label or (f"external: {command}" if command else f"external on port {port}"),
                "external", path=path, command=command, port=port)


def unavailable(spec: Spec) -> str | None:
    """Why ``spec`` cannot run here, or None."""
    for module in spec.modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{module.split('.')[0]} not installed: pip install '.[bench]'"
    if spec.redis and shutil.which("redis-server") is None:
        return "redis-server not on PATH: apt-get install redis-server"
    return None


def twistd_argv(options: list[str], twistd_options: list[str] = ()) -> list[str]:
    """``twistd -n --pidfile= [twistd_options] phoenix [options]``, run by this Python."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(twistd):
        head = [sys.executable, twistd]
    else:
        head = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
    return [*head, "-n", "--pidfile=", *twistd_options, "phoenix", *options]


def twistd_env(logdir: str, tree: str = "") -> dict[str, str]:
    """
    This tree first on ``PYTHONPATH`` (or ``tree``'s ``twisted_phoenix``
    package, for comparisons), and a ``twisted/plugins`` directory holding
    the ``phoenix`` plugin, so that ``twistd phoenix`` finds it whether or not
    the package is installed.
    """
    plugins = os.path.join(logdir, "plugins")
    target = os.path.join(plugins, "twisted", "plugins", "phoenix.py")
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(PLUGIN_SOURCE, target)
    paths = [plugins]
    if tree:
        # Only the other tree's library: its benchmarks package must not hide ours.
        shadow = os.path.join(logdir, "tree-" + os.path.basename(os.path.abspath(tree)))
        os.makedirs(shadow, exist_ok=True)
        link = os.path.join(shadow, "twisted_phoenix")
        if not os.path.exists(link):
            os.symlink(os.path.join(os.path.abspath(tree), "twisted_phoenix"), link)
        out = env(*paths)
        out["PYTHONPATH"] = os.pathsep.join([shadow, out["PYTHONPATH"]])
        return out
    return env(*paths)


def display(options: list[str]) -> str:
    """The options as the tables print them; ``defaults`` when there are none."""
    return " ".join(options) if options else "defaults"


@dataclass
class Server:
    """A started server: its port, URL, process, and how to stop or restart it."""

    spec: Spec
    tag: str
    logdir: str
    options: list[str] = field(default_factory=list)  # phoenix: options after --port
    port: int = 0
    child: Child | None = None
    redis: Child | None = None
    redis_port: int = 0
    pid: int | None = None  # the process to sample (the listening one, for an external server)
    command_line: str = ""
    timeout: float = 60.0
    terminated: bool = False  # SIGTERM sent by terminate(); stop() then only waits

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def settings(self) -> str:
        """The non-default options (phoenix), for the tables."""
        return display([*self.spec.options, *self.options]) if self.spec.kind == "phoenix" else "-"

    def url(self, path: str | None = None) -> str:
        return f"ws://127.0.0.1:{self.port}{self.spec.path if path is None else path}"

    def sample(self) -> Sample | None:
        """The server's memory, CPU time and open files now (None if it cannot be read)."""
        if self.pid is None:
            return None
        try:
            # With --workers, the parent and its workers together.
            return sample_tree(self.pid) if "--workers" in self.spec.options else sample(self.pid)
        except (OSError, ValueError):
            return None

    def cpu(self) -> float:
        s = self.sample()
        return s.cpu_seconds if s is not None else 0.0

    def redis_sample(self) -> Sample | None:
        if self.redis is None:
            return None
        try:
            return sample(self.redis.pid)
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        if self.child is not None:
            return self.child.alive()
        return accepts(self.port)

    # -- lifecycle ----------------------------------------------------------------

    def _argv(self) -> tuple[list[str], dict[str, str] | None, bool, str]:
        """The command, its environment, whether it is a shell command, its display."""
        spec = self.spec
        if spec.kind == "phoenix":
            options = ["--port", str(self.port), *spec.options, *self.options]
            argv = twistd_argv(options)
            return argv, twistd_env(self.logdir), False, "twistd -n --pidfile= phoenix " + " ".join(options)
        if spec.kind == "script":
            extra = ["--redis-port", str(self.redis_port)] if spec.redis else []
            argv = [sys.executable, "-m", *spec.argv, "--port", str(self.port), *extra]
            return argv, env(), False, "python -m " + " ".join(argv[2:])
        return [spec.command], None, True, spec.command

    def start(self) -> "Server":
        spec = self.spec
        if spec.kind == "external":
            self.port = spec.port
            if not spec.command:
                if not accepts(self.port):
                    raise BenchmarkError(f"nothing accepts connections on port {self.port} (--external-port)")
                self.command_line = f"(already running on port {self.port})"
                self.pid = pid_listening_on(self.port)
                return self
        elif not self.port:
            self.port = free_port()
        if spec.redis and self.redis is None:
            self.redis_port = free_port()
            self.redis = Child(
                f"{self.tag}-redis",
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no"],
                self.logdir,
            )
            self.redis.expect(lambda line: "Ready to accept connections" in line, 30)
        argv, child_env, shell, self.command_line = self._argv()
        log = os.path.join(self.logdir, f"{self.tag}.log")
        self.child = Child(self.tag, argv, self.logdir, env=child_env, log=log, shell=shell,
                           cwd=os.getcwd() if shell else None)
        deadline = time.monotonic() + self.timeout
        while not accepts(self.port):
            if not self.child.alive():
                raise BenchmarkError(f"{self.tag} ({self.command_line}) exited with code "
                                     f"{self.child.proc.poll()}{self.child.tail()}")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.tag} ({self.command_line}) did not listen on port {self.port} "
                                     f"within {self.timeout:.0f} s{self.child.tail()}")
            time.sleep(0.05)
        while spec.ready and spec.ready not in self._log_text(log):
            if not self.child.alive() or time.monotonic() > deadline:
                raise BenchmarkError(f"{self.tag} ({self.command_line}) did not log {spec.ready!r} "
                                     f"within {self.timeout:.0f} s{self.child.tail()}")
            time.sleep(0.05)
        self.pid = self.child.pid if not shell else pid_listening_on(self.port)
        return self

    @staticmethod
    def _log_text(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def terminate(self) -> None:
        """Send SIGTERM without waiting (to end several servers at once; then :meth:`stop` each)."""
        if self.child is not None:
            self.child.signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> None:
        """SIGTERM (twistd shuts down cleanly), then SIGKILL after 10 s."""
        if self.child is not None:
            if self.terminated:
                self.child.stop(quit_line=None)
            else:
                self.child.stop(signum=signal.SIGTERM)
        if self.redis is not None:
            self.redis.kill()
            self.redis = None

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def restart(self, signum: int = signal.SIGKILL) -> float:
        """End the server with ``signum`` and start it again on the same port; the time it accepted again."""
        if self.child is None:
            raise BenchmarkError(f"{self.label}: a server given only by its port cannot be restarted")
        self.child.stop(signum=signum)
        self.terminated = False
        self.start()
        return time.time()


def start(spec: Spec, logdir: str, tag: str, options: list[str] = (), port: int = 0,
          timeout: float = 60.0) -> Server:
    """Start ``spec`` (a fresh process on a free port, unless ``port``) and wait until it accepts connections."""
    server = Server(spec, tag, logdir, list(options), port=port, timeout=timeout)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


def start_mesh(logdir: str, tag: str, keys: tuple[str, ...] | list[str], options: list[str] = ()) -> dict[str, Server]:
    """
    ``twistd -n phoenix`` nodes named ``<key>@127.0.0.1`` (lower case) with
    ``options``, linked by Perspective Broker through a port mapper and a
    cookie of their own: every node but the first connects to the first.
    """
    epmd, cookie = free_port(), secrets.token_hex(16)
    first = f"{keys[0].lower()}@127.0.0.1"
    nodes: dict[str, Server] = {}
    try:
        for key in keys:
            argv = ["--name", f"{key.lower()}@127.0.0.1", "--cookie", cookie, "--epmd-port", str(epmd), *options]
            if key != keys[0]:
                argv += ["--connect", first]
            nodes[key] = start(SPECS["phoenix"], logdir, f"{tag}-{key}", argv)
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: dict[str, Server]) -> None:
    """Stop every node at once (each says goodbye to its peers), then wait for each."""
    for node in nodes.values():
        node.terminate()
    for node in nodes.values():
        node.stop()
