# -*- test-case-name: tests.test_console -*-
"""
``twisted-phoenix console``: a Python prompt on a cluster node, like
``iex --name remote@127.0.0.1 -S mix``.

In scope: ``Node`` (the :class:`~twisted_phoenix.cluster.Node`:
``Node.connect(name)``, ``Node.list()``, ``Node.self()``), ``Endpoint``
(the app's endpoint on this node: ``Endpoint.broadcast(topic, event,
payload)``) and ``reactor``.  A result that is a Deferred is waited for and
its result shown.

On a terminal the prompt is Twisted's manhole, with the reactor running;
with piped input, each statement is run in turn; ``-c CODE`` runs the code
once, waits for any Deferred it produces, and exits.

A broadcast reaches only the nodes this one is linked to, and linking to one
node of a cluster links to the others a moment later (the node introduces
its peers).  So the console waits for that mesh before it runs anything:
after ``--connect``, the prompt, piped statements and ``-c`` start once this
node is linked to every node its peers introduced (:func:`wait_for_mesh`),
and ``Node.connect(name)`` in the console fires only then.  The wait is
bounded (``--mesh-timeout``, 10 s); nodes still not linked then are named on
standard error, and the console goes on.
"""

from __future__ import annotations

import argparse
import ast
import codeop
import os
import sys
import traceback
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

__all__ = ["MESH_TIMEOUT", "add_arguments", "evaluate", "introduced", "run", "wait_for_mesh"]

log = Logger()

#: Seconds the console waits for the nodes its peers introduce to be linked.
MESH_TIMEOUT = 10.0


def evaluate(source: str, namespace: dict[str, Any]) -> Any:
    """
    Run ``source`` in ``namespace``; return the value of its last statement
    when that is an expression, else ``None``.
    """
    tree = ast.parse(source, "<console>", "exec")
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        exec(compile(ast.Module(tree.body[:-1], []), "<console>", "exec"), namespace)
        return eval(compile(ast.Expression(last.value), "<console>", "eval"), namespace)
    exec(compile(tree, "<console>", "exec"), namespace)
    return None


def introduced(node: Any) -> set[str]:
    """
    The nodes ``node``'s peers named when their links came up (each link's
    hello lists the peer's own links), other than ``node`` itself.
    """
    names: set[str] = set()
    for link in list(node.links.values()):
        nodes = link.info.get("nodes")
        if isinstance(nodes, dict):
            names.update(name for name in nodes if isinstance(name, str))
    names.discard(node.name)
    return names


def wait_for_mesh(node: Any, clock: Any, timeout: float = MESH_TIMEOUT) -> defer.Deferred[list[str]]:
    """
    Wait until ``node`` is linked to every node its peers introduced, and
    to those these introduce in turn: the transitive mesh that linking to one
    node of a cluster starts.

    :param node: a started :class:`~twisted_phoenix.cluster.Node`.
    :param clock: provides ``callLater``.
    :param timeout: seconds to wait at most.
    :return: a Deferred that fires with the sorted names still not linked:
        ``[]`` once the mesh is formed (at once if it already is), or what
        is missing after ``timeout`` seconds.
    """
    d: defer.Deferred[list[str]] = defer.Deferred()

    def missing() -> list[str]:
        return sorted(introduced(node) - set(node.links))

    def finish(names: list[str]) -> None:
        if node_up in node.node_up_callbacks:
            node.node_up_callbacks.remove(node_up)
        if timer.active():
            timer.cancel()
        if not d.called:
            d.callback(names)

    def node_up(peer: str) -> None:
        # Each new link may complete the mesh, or introduce more nodes.
        if not missing():
            finish([])

    if not missing():
        return defer.succeed([])
    timer = clock.callLater(timeout, lambda: finish(missing()))
    node.node_up_callbacks.append(node_up)
    return d


class _MeshNode:
    """
    The console's ``Node``: the node itself, except that ``connect`` fires
    once the mesh the new link starts is formed (see :func:`wait_for_mesh`).
    """

    def __init__(self, node: Any, clock: Any, timeout: float) -> None:
        self._node = node
        self._clock = clock
        self._timeout = timeout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._node, name)

    def __repr__(self) -> str:
        return repr(self._node)

    @defer.inlineCallbacks
    def connect(self, target: str, *args: Any, **kwargs: Any) -> Any:
        ok = yield self._node.connect(target, *args, **kwargs)
        if ok:
            yield _await_mesh(self._node, self._clock, self._timeout)
        return ok


@defer.inlineCallbacks
def _await_mesh(node: Any, clock: Any, timeout: float) -> Any:
    """:func:`wait_for_mesh`, telling standard error what is still missing after ``timeout``."""
    missing = yield wait_for_mesh(node, clock, timeout)
    if missing:
        sys.stderr.write(f"not linked to {', '.join(missing)} after {timeout:g} s; going on\n")
        sys.stderr.flush()


def _settled(value: Any) -> defer.Deferred[Any]:
    """A Deferred of ``value``, waiting for it when it is one."""
    return value if isinstance(value, defer.Deferred) else defer.succeed(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The console's command-line options."""
    parser.add_argument("--name", required=True, help="this node's name, e.g. remote@127.0.0.1")
    parser.add_argument("--connect", action="append", default=[], metavar="NODE",
                        help="connect to NODE (name@host, or name@host=ADDRESS:PORT) first; repeatable")
    parser.add_argument("--endpoint", default="twisted_phoenix.examples.hello_sockets:Endpoint",
                        help="the app's endpoint, package.module:Endpoint")
    parser.add_argument("--cookie", help="the cluster cookie (default: $PHOENIX_COOKIE, else ~/.twisted_phoenix.cookie)")
    parser.add_argument("--secret-key-base", help="default: $SECRET_KEY_BASE")
    parser.add_argument("--env", help="dev, test or prod (default: $PHOENIX_ENV, else dev)")
    parser.add_argument("--epmd-port", type=int, help="the port mapper's port (default: $PHOENIX_EPMD_PORT, else 4370)")
    parser.add_argument("--dist-cert", help="this node's TLS certificate (PEM) for cluster links")
    parser.add_argument("--dist-key", help="its private key (PEM)")
    parser.add_argument("--dist-ca", help="the CA certificate that signed every node's certificate")
    parser.add_argument("--dist-plaintext", action="store_true",
                        help="cluster links without TLS (when the cluster's nodes run with --dist-plaintext)")
    parser.add_argument("-c", dest="code", help="run CODE, wait for its result, print it and exit")
    parser.add_argument("--mesh-timeout", type=float, default=MESH_TIMEOUT, metavar="SECONDS",
                        help="after connecting, wait at most this long for the nodes the peers introduce "
                             f"to be linked before running anything (default {MESH_TIMEOUT:g})")


def run(args: argparse.Namespace) -> int:
    """Start the node, then the prompt (or ``-c``); returns the exit status."""
    from twisted.internet import reactor

    from .cluster import ClusterTLS, Node
    from .cluster.portmapper import mapper_port
    from .config import resolve_cookie, resolve_env, resolve_secret
    from .pubsub import PubSub
    from .tap import load_endpoint_class

    _log_problems()  # before anything that may warn (no secret key base, say)
    env = resolve_env(args.env)
    endpoint_class = load_endpoint_class(args.endpoint)
    pubsub = PubSub(args.name, clock=reactor)
    tls = None
    if args.dist_cert or args.dist_key or args.dist_ca:
        tls = ClusterTLS.from_files(args.dist_cert, args.dist_key, args.dist_ca)
    node = Node(
        reactor, args.name, cookie=resolve_cookie(args.cookie), pubsub=pubsub, tls=tls,
        plaintext=getattr(args, "dist_plaintext", False), mapper_port=args.epmd_port or mapper_port(),
    )
    endpoint = endpoint_class(
        reactor, node_name=args.name, secret_key_base=resolve_secret(args.secret_key_base, env), pubsub=pubsub
    )
    namespace: dict[str, Any] = {
        "Node": _MeshNode(node, reactor, args.mesh_timeout), "Endpoint": endpoint, "reactor": reactor,
    }
    status = [0]

    @defer.inlineCallbacks
    def start() -> Any:
        try:
            yield node.start()
            # Presence too, as in `iex --name ... -S mix`: the console's node
            # replicates the cluster's presences (Endpoint.presence.list).
            endpoint.start()
            for target in args.connect:
                ok = yield node.connect(target)
                if not ok:
                    sys.stderr.write(f"could not connect to {target}\n")
            yield _await_mesh(node, reactor, args.mesh_timeout)
            if args.code is not None:
                status[0] = yield _run_code(args.code, namespace, node)
                yield _shutdown(node, reactor, endpoint)
            elif os.isatty(0):
                _interactive(namespace, lambda: _shutdown(node, reactor, endpoint))
            else:
                _piped(namespace, lambda: _shutdown(node, reactor, endpoint))
        except Exception:
            traceback.print_exc()
            status[0] = 1
            yield _shutdown(node, reactor, endpoint)

    reactor.callWhenRunning(start)
    reactor.run()
    return status[0]


def _log_problems() -> None:
    """Warnings and errors (why a connect failed, say) go to standard error."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogPublisher,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    # Added to the publisher, not begun: beginning would replay the events
    # buffered before (whatever the process logged until now).
    globalLogPublisher.addObserver(observer)


@defer.inlineCallbacks
def _run_code(code: str, namespace: dict[str, Any], node: Any) -> Any:
    try:
        value = yield _settled(evaluate(code, namespace))
    except Exception:
        traceback.print_exc()
        return 1
    if value is not None:
        print(repr(value))
    return 0


@defer.inlineCallbacks
def _shutdown(node: Any, reactor: Any, endpoint: Any = None) -> Any:
    try:
        if endpoint is not None:
            endpoint.stop()
        yield node.stop()
    finally:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass


def _piped(namespace: dict[str, Any], done: Callable[[], Any]) -> None:
    """Statements from a pipe, one after another; Deferred results awaited."""
    from twisted.internet.stdio import StandardIO
    from twisted.protocols.basic import LineReceiver

    class PipedConsole(LineReceiver):
        delimiter = b"\n"

        def __init__(self) -> None:
            self.buffer: list[str] = []
            self.queue: list[bytes] = []
            self.waiting = False
            self.eof = False
            self.finished = False

        def lineReceived(self, line: bytes) -> None:
            if self.waiting:
                self.queue.append(line)
                return
            self.buffer.append(line.decode("utf-8"))
            source = "\n".join(self.buffer)
            try:
                complete = codeop.compile_command(source, "<console>", "exec")
            except SyntaxError:
                traceback.print_exc()
                self.buffer = []
                return
            if complete is None and line.strip():
                return
            self.buffer = []
            if not source.strip():
                return
            try:
                value = evaluate(source, namespace)
            except Exception:
                traceback.print_exc()
                return
            self.waiting = True
            _settled(value).addCallbacks(self.show, self.fail).addBoth(self.next)

        def show(self, value: Any) -> None:
            if value is not None:
                print(repr(value), flush=True)

        def fail(self, failure: Any) -> None:
            sys.stderr.write(failure.getTraceback())

        def next(self, _: Any) -> None:
            self.waiting = False
            queue, self.queue = self.queue, []
            for line in queue:
                self.lineReceived(line)
            if self.eof and not self.waiting:
                self.finish()

        def finish(self) -> None:
            if not self.finished:
                self.finished = True
                done()

        def connectionLost(self, reason: Any = None) -> None:
            self.eof = True
            rest = self.clearLineBuffer()  # a last line without a newline
            if rest:
                self.lineReceived(rest)
            if self.buffer or self.queue:
                self.lineReceived(b"")  # ends a block left open
            if not self.waiting:
                self.finish()

    StandardIO(PipedConsole())


def _interactive(namespace: dict[str, Any], done: Callable[[], Any]) -> None:
    """Twisted's manhole on the terminal; Deferred results shown when they fire."""
    import termios
    import tty

    from twisted.conch import manhole
    from twisted.conch.insults.insults import ServerProtocol
    from twisted.internet.stdio import StandardIO

    class Interpreter(manhole.ManholeInterpreter):
        def displayhook(self, obj: Any) -> None:
            if isinstance(obj, defer.Deferred):
                self.locals["_"] = obj
                obj.addCallbacks(
                    lambda v: v is not None and self.write(repr(v), True),
                    lambda f: self.write(f.getTraceback(), True),
                )
            else:
                super().displayhook(obj)

    class Console(manhole.ColoredManhole):
        def connectionMade(self) -> None:
            super().connectionMade()
            self.interpreter = Interpreter(self, self.namespace)

        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)
            done()

        def handle_EOF(self) -> None:
            if self.lineBuffer:
                self.terminal.write(b"\a")
            else:
                self.terminal.loseConnection()

    fd = sys.__stdin__.fileno()
    old = termios.tcgetattr(fd)
    tty.setraw(fd)

    def restore() -> None:
        termios.tcsetattr(fd, termios.TCSANOW, old)
        os.write(fd, b"\r\n")

    from twisted.internet import reactor

    reactor.addSystemEventTrigger("after", "shutdown", restore)
    StandardIO(ServerProtocol(Console, namespace))
