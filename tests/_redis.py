"""
A real ``redis-server`` for the Redis adapter's tests (Debian package
``redis-server``, which also brings ``redis-cli``).

Each test starts its own on a free port, without persistence, and it is
killed and reaped in the test's cleanup.  It can be killed and started
again on the same port (a Redis restart), and asked things with
``redis-cli``.  Every wait is bounded.
"""

from __future__ import annotations

import shutil
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from ._cluster import free_port
from ._server import ChildFailed, ChildProcess, require_program

__all__ = ["RedisServer", "require_redis"]

#: Logged by redis-server once it accepts connections.
READY = "Ready to accept connections"


def require_redis() -> None:
    """redis-server and redis-cli, or a skip (a failure in CI): see require_program."""
    for program in ("redis-server", "redis-cli"):
        require_program(program, "redis-server")


class RedisServer:
    """
    A ``redis-server`` on 127.0.0.1.

    :param tls: ``{"ca": ..., "cert": ..., "key": ...}`` PEM paths to serve
        TLS only (``--tls-port``), asking clients for a certificate.
    :param args: more ``redis-server`` arguments, e.g. ``("--requirepass", "pw")``.
    """

    def __init__(self, testcase: Any, reactor: Any, *, tls: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        require_redis()
        self.testcase = testcase
        self.reactor = reactor
        self.port = free_port()
        self.tls = tls
        self.args = args
        self.child: ChildProcess | None = None
        self.starts = 0
        testcase.addCleanup(self.kill)

    def url(self, userinfo: str = "") -> str:
        """The URL a node is given (``rediss://`` with the CA and a client certificate under TLS)."""
        at = f"{userinfo}@" if userinfo else ""
        if self.tls is None:
            return f"redis://{at}127.0.0.1:{self.port}"
        return (
            f"rediss://{at}127.0.0.1:{self.port}?ssl_ca_certs={self.tls['ca']}"
            f"&ssl_certfile={self.tls['cert']}&ssl_keyfile={self.tls['key']}"
        )

    def start(self, timeout: float = 15.0) -> defer.Deferred[Any]:
        """Start it (again, on the same port); fires once it accepts connections."""
        self.starts += 1
        argv = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.tls is None:
            argv += ["--port", str(self.port)]
        else:
            argv += [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"],
                "--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", "yes",
            ]
        argv += list(self.args)
        child = self.child = ChildProcess(f"redis-server #{self.starts}", self.reactor)
        executable = shutil.which("redis-server")
        self.reactor.spawnProcess(child, executable, argv, env={}, path=None)
        return child.wait_for_output(lambda out: READY in out, timeout, "redis-server ready")

    def kill(self) -> defer.Deferred[Any]:
        """SIGKILL it (a crash: no goodbye to clients) and wait until it is reaped."""
        child = self.child
        if child is None or not child.running:
            return defer.succeed(None)
        child.transport.signalProcess("KILL")
        return child.wait_ended().addTimeout(10, self.reactor)

    def cli(self, *args: str) -> defer.Deferred[str]:
        """Run ``redis-cli`` with ``args``; fires with its output (fails on a non-zero exit)."""
        argv = ["-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls is not None:
            argv += ["--tls", "--cacert", self.tls["ca"], "--cert", self.tls["cert"], "--key", self.tls["key"]]
        argv += list(args)
        d = getProcessOutputAndValue(shutil.which("redis-cli"), argv, env={}, reactor=self.reactor)

        def check(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            if code != 0:
                raise ChildFailed(f"redis-cli {' '.join(args)} exited {code}: {out!r} {err!r}")
            return out.decode()

        return d.addCallback(check).addTimeout(10, self.reactor)

    @defer.inlineCallbacks
    def numsub(self, *channels: str) -> Any:
        """``PUBSUB NUMSUB``: ``{channel: subscribers}``."""
        out = yield self.cli("PUBSUB", "NUMSUB", *channels)
        lines = out.split()
        return {lines[i]: int(lines[i + 1]) for i in range(0, len(lines), 2)}

    @defer.inlineCallbacks
    def info(self, field: str) -> Any:
        """One field of ``INFO`` as text."""
        out = yield self.cli("INFO")
        for line in out.splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
        return None
