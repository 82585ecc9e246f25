# -*- test-case-name: tests.test_tap -*-
"""
The ``twistd phoenix`` plugin: options and service.

``twistd -n phoenix`` serves the demo app on port 4000.  See
``twistd phoenix --help`` for every option.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import ipaddress
import os
import re
import resource
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.logfile import LogFile

from ._textlog import TextLogObserver
from .cluster import NO_NODE, ClusterTLS, Node, parse_node_name
from .cluster.portmapper import mapper_port
from .config import ConfigError, resolve_cookie, resolve_env, resolve_secret
from .endpoint import Endpoint, health_path_error
from .pubsub import PubSub
from .static import defining_module_directory, resolve_mounts

DEFAULT_ENDPOINT = "twisted_phoenix.examples.hello_sockets:Endpoint"

#: Phoenix's listeners (Ranch/ThousandIsland) keep 1,024 connections waiting
#: to be accepted; Twisted's default is 50, which a connect storm overflows.
MIN_BACKLOG = 1024

log = Logger()


def default_backlog(somaxconn: str = "/proc/sys/net/core/somaxconn") -> int:
    """
    The listen backlog: the larger of :data:`MIN_BACKLOG` and what the kernel
    allows (``net.core.somaxconn``, which caps any larger value anyway).
    """
    try:
        with open(somaxconn, encoding="ascii") as f:
            return max(MIN_BACKLOG, int(f.read().strip()))
    except (OSError, ValueError):
        return MIN_BACKLOG


def with_backlog(description: str, backlog: int) -> str:
    """Add ``backlog=N`` to a ``tcp:``/``tcp6:``/``ssl:``/``unix:`` description that has none."""
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl", "unix") or ":backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def raise_file_limit() -> tuple[int, int]:
    """
    Raise this process's soft open-file limit to its hard limit (systemd's
    default soft limit is 1,024: a few hundred clients short of a storm).
    Returns ``(before, after)``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


#: The garbage collector's thresholds for a server (CPython's are 700, 10,
#: 10).  A server holds many long-lived objects per connection: with the
#: defaults, a connect storm of 8,000 clients ran 700 collections and paused
#: everyone for up to 280 ms at a time; with these, about 20 collections and
#: pauses of a few tens of milliseconds (docs/benchmarks.rst).
GC_THRESHOLDS = (20000, 20, 50)


def tune_gc(reactor: Any, thresholds: tuple[int, int, int]) -> None:
    """
    Set the collector's thresholds, and once the reactor runs, move
    everything that exists then (modules, the application) out of its
    reach (``gc.freeze``): collections then only look at what connections
    made.
    """
    import gc

    gc.set_threshold(*thresholds)
    reactor.callWhenRunning(gc.freeze)


def _gc_thresholds(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(text)
    first, second, third = (int(p) for p in parts)
    return first, second, third


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be positive, not {text!r}")
        return value

    return parse


def _rate(text: str) -> float | None:
    """A rate per second, or ``none`` for no limit."""
    if text.lower() == "none":
        return None
    return _positive(float)(text)


#: ``twistd phoenix`` options that set an :class:`Endpoint` limit:
#: ``(option, attribute, parser, help)``.  Without the option, the
#: endpoint class's own value holds (its default shows in ``--help``).
ENDPOINT_LIMITS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("max-connections", "max_connections", _positive(int),
     "Connections served at once; past it, HTTP 503 (default: the open-file limit less a reserve)."),
    ("max-lag", "max_lag", _positive(int),
     "Bytes that may wait for a client that does not read before it is closed (1013)."),
    ("max-frame-size", "max_frame_size", _positive(int),
     "The largest frame a client may send (1009 beyond)."),
    ("handshake-timeout", "handshake_timeout", _positive(float),
     "Seconds a new connection has to send its request head (then 408)."),
    ("max-header-bytes", "max_header_bytes", _positive(int),
     "The largest request head (then 431)."),
    ("handshakes-per-turn", "handshakes_per_turn", _positive(int),
     "WebSocket handshakes and HTTP requests handled per reactor turn during a connect storm."),
    ("event-rate", "event_rate", _rate,
     "Messages a connection may send per second, on average (none: no limit)."),
    ("event-burst", "event_burst", _positive(float),
     "Messages a connection may send at once above the rate (then 'rate limited', then 1008)."),
    ("join-rate", "join_rate", _rate,
     "Joins a connection may send per second, on average (none: no limit)."),
    ("join-burst", "join_burst", _positive(float),
     "Joins a connection may send at once above the rate."),
]

#: ``twistd phoenix`` options for the presence tracker: ``(option, tracker
#: option, parser, help)``; they override the endpoint class's
#: ``presence_options``.
PRESENCE_OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("presence-broadcast", "broadcast_period", _positive(float),
     "Presence: seconds between gossip rounds to the other nodes [default: 1.5]."),
    ("presence-down", "down_period", _positive(float),
     "Presence: seconds a silent node's presences stay listed [default: 30]."),
    ("presence-permdown", "permdown_period", _positive(float),
     "Presence: seconds of silence after which a node's presences are dropped for good [default: 1200]."),
]


def parse_host(text: str) -> str:
    """
    A ``--host`` value: a host name or IP address, lower-cased, without
    scheme, port or brackets (``[::1]`` → ``::1``).
    """
    host = text.strip().lower()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    problem = not bare or any(c in bare for c in "/@?# \t")
    if not problem and ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            problem = True
    if problem:
        raise usage.UsageError(f"--host takes a host name such as example.com, without scheme or port, not {text!r}")
    return bare


def _static_directory(path: str) -> str:
    """A ``--static`` value: an existing directory, made absolute (twistd may change directory later)."""
    directory = os.path.abspath(path)
    if not os.path.isdir(directory):
        raise usage.UsageError(f"--static takes a directory; {path!r} is not one")
    return directory


def load_endpoint_class(spec: str) -> type[Endpoint]:
    """
    Import ``package.module:Name`` and check that it is an Endpoint class.

    The current directory is importable, as with ``python -m``, so that
    ``--endpoint myapp:Endpoint`` finds ``./myapp.py``.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise usage.UsageError(f"--endpoint takes package.module:Endpoint, not {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        value: Any = importlib.import_module(module_name)
        for name in attribute.split("."):
            value = getattr(value, name)
    except (ImportError, AttributeError) as e:
        raise usage.UsageError(f"cannot load endpoint {spec!r}: {e}") from None
    if not (isinstance(value, type) and issubclass(value, Endpoint)):
        raise usage.UsageError(f"{spec!r} is not a twisted_phoenix.Endpoint subclass")
    return value


#: The order ``twistd phoenix --help`` lists its options in.
_OPTION_ORDER = [
    "port", "endpoint", "listen", "static", "host", "env", "secret-key-base", "name", "connect", "pubsub",
    "cookie", "dist-interface", "dist-port", "dist-cert", "dist-key", "dist-ca", "dist-plaintext",
    "dist-login-timeout", "dist-max-pending", "epmd-port",
    "heartbeat-interval", "heartbeat-timeout", "discover", "discover-interval", "discover-nameserver",
    "no-interest-routing", "interest-linger", "interest-max-topics", "no-http", "backlog", "workers",
    "drain-timeout", "metrics", "health",
    *[option for option, _, _, _ in ENDPOINT_LIMITS],
    *[option for option, _, _, _ in PRESENCE_OPTIONS],
    "gc-threshold", "log-max-bytes", "log-max-files", "version", "help",
]


class Options(usage.Options):
    """Options of ``twistd phoenix``."""

    synopsis = "[options]"
    longdesc = (
        "Serve a twisted_phoenix Endpoint (Phoenix Channels over WebSocket). "
        "Without --endpoint, serves the HelloSockets demo app at "
        "ws://localhost:4000/socket/websocket. The environment variables PORT, "
        "SECRET_KEY_BASE and PHOENIX_ENV give the defaults of --port, "
        "--secret-key-base and --env. For tokens and secrets, see: "
        "twisted-phoenix --help"
    )

    # In order of importance: what a first run needs comes first.
    optParameters = [
        ["port", "p", None, "TCP port to serve on (default: $PORT, else 4000); ignored with --listen."],
        ["endpoint", "e", DEFAULT_ENDPOINT, "The app: package.module:EndpointClass."],
        ["static", None, None,
         "Serve the files of this directory at / (index.html for a directory; the sockets' paths win), "
         "and phoenix.js at /phoenix/phoenix.js."],
        ["host", None, None,
         "The host name pages are served from, for check_origin=True (default: the endpoint's host, "
         "localhost). In dev, pages from localhost, 127.0.0.1 and [::1] on any port are accepted too."],
        ["env", None, None, "dev, test or prod (default: $PHOENIX_ENV, else dev). prod requires a secret."],
        ["secret-key-base", None, None, "Secret for signing tokens (default: $SECRET_KEY_BASE)."],
        ["name", None, "nonode@nohost", "This node's name, e.g. server@127.0.0.1."],
        ["pubsub", None, None,
         "Carry broadcasts between nodes through Redis instead of cluster links: a URL, "
         "redis://[user:password@]host[:port] or rediss://... for TLS (see the docs' Redis page)."],
        ["cookie", None, None, "Cluster cookie (default: $PHOENIX_COOKIE, else ~/.twisted_phoenix.cookie)."],
        ["dist-interface", None, "127.0.0.1", "Interface for cluster links (0.0.0.0 to link across hosts)."],
        ["dist-port", None, "0", "Port for cluster links (default: any free port, found by name on this host)."],
        ["dist-cert", None, None, "Cluster links: this node's certificate (PEM) from the cluster CA "
         "(default: a self-signed one, made at start; links are TLS either way)."],
        ["dist-key", None, None, "Cluster links: its private key (PEM)."],
        ["dist-ca", None, None, "Cluster links: the CA certificate that signed every node's."],
        ["dist-login-timeout", None, "10", "Seconds a connection to the link port or the port mapper "
         "has to prove the cookie."],
        ["dist-max-pending", None, "100", "Connections to the link port (and to the port mapper) that "
         "have not proved the cookie yet, at once; more are closed at once."],
        ["epmd-port", None, None, "Port of the node-name mapper on 127.0.0.1 (default: $PHOENIX_EPMD_PORT, else 4370)."],
        ["heartbeat-interval", None, "1.0", "Seconds between heartbeats on each cluster link."],
        ["heartbeat-timeout", None, "3.0", "Seconds of silence after which a peer node is dropped."],
        ["discover", None, None, "Link to every node a DNS name resolves to, dns:NAME (a Kubernetes headless "
         "service): each address is a node <basename>@<address> on this node's --dist-port."],
        ["discover-interval", None, "5", "Seconds between resolutions of the --discover name."],
        ["discover-nameserver", None, None, "Resolve the --discover name with this DNS server, ADDRESS[:PORT] "
         "(default: the system's resolver)."],
        ["interest-linger", None, "5", "Seconds a topic stays wanted from the other nodes after its last "
         "subscriber on this node left."],
        ["interest-max-topics", None, "100000", "Past this many topics with subscribers here, ask the other "
         "nodes for every broadcast; a node that declares more is sent every broadcast."],
        ["backlog", None, None, "Connections the kernel queues until accepted (default: the larger of 1024 and net.core.somaxconn)."],
        ["workers", None, None,
         "Serve with N worker processes sharing the listening sockets, linked as a cluster "
         "(auto: one per core); workers of --name base@host are base-1@host ... base-N@host."],
        ["drain-timeout", None, None,
         "With --workers: seconds the workers have to drain at SIGTERM (clients closed with 1012) "
         "before they are killed [default: 15]."],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this Twisted endpoint, apart from the clients' port, "
         "e.g. tcp:9100:interface=127.0.0.1 (needs prometheus-client: pip install 'twisted_phoenix[metrics]')."],
        ["health", None, None,
         "Answer GET PATH with 200 ok on the clients' port, for the health checks of load balancers "
         "and orchestrators, e.g. /health (default: no such path)."],
        *[
            [option, None, None, text if getattr(Endpoint, attribute) is None else f"{text} [default: {getattr(Endpoint, attribute)}]"]
            for option, attribute, _, text in ENDPOINT_LIMITS
        ],
        *[[option, None, None, text] for option, _, _, text in PRESENCE_OPTIONS],
        ["gc-threshold", None, ",".join(map(str, GC_THRESHOLDS)),
         "The garbage collector's thresholds (gen0,gen1,gen2; Python's own: 700,10,10)."],
        ["log-max-bytes", None, "10000000", "With a log file (--logfile, or when daemonized): rotate it at this size."],
        ["log-max-files", None, "10", "With a log file: keep this many rotated files (older ones are deleted)."],
    ]

    optFlags = [
        ["no-http", None, "Serve no sockets: a cluster node for workers and broadcasts only."],
        ["dist-plaintext", None, "Cluster links without TLS (every node of the cluster must agree)."],
        ["no-interest-routing", None, "Send every broadcast to every node, and ask for every broadcast, "
         "rather than only the topics each node has subscribers for."],
    ]

    def getUsage(self, width: int | None = None) -> str:
        # Twisted lists options alphabetically; ours go in order of
        # importance: the order of optParameters, then the rest.
        text = super().getUsage(width)
        head, sep, rest = text.partition("Options:\n")
        lines = rest.split("\n")
        end = next((i for i, line in enumerate(lines) if line and not line.startswith(" ")), len(lines))
        while end and not lines[end - 1]:
            end -= 1
        chunks: list[list[str]] = []
        for line in lines[:end]:
            match = re.match(r"  (?:-\w, |    )--([\w-]+)", line)
            if match or not chunks:
                chunks.append([])
            chunks[-1].append(line)
        order = {name: i for i, name in enumerate(_OPTION_ORDER)}

        def rank(chunk: list[str]) -> tuple[int, str]:
            match = re.match(r"  (?:-\w, |    )--([\w-]+)", chunk[0])
            name = match.group(1) if match else ""
            return (order.get(name, len(order)), name)

        chunks.sort(key=rank)
        return head + sep + "\n".join(line for chunk in chunks for line in chunk) + "\n" + "\n".join(lines[end:])

    def opt_version(self) -> None:
        """Print twisted_phoenix's version (and Twisted's, Autobahn's, Python's), then exit."""
        from . import __version__

        import autobahn
        import twisted

        print(
            f"twisted_phoenix {__version__} (Twisted {twisted.__version__}, "
            f"Autobahn {autobahn.__version__}, Python {sys.version.split()[0]})"
        )
        sys.exit(0)

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["connect"] = []
        #: The arguments parsed, and where (a worker parses the same: :mod:`twisted_phoenix.workers`).
        self.argv: list[str] = []
        self.cwd = ""

    def parseOptions(self, options: Any = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        self.cwd = os.getcwd()
        super().parseOptions(options)

    def opt_connect(self, node: str) -> None:
        self["connect"].append(node)

    opt_connect.__doc__ = (
        "Connect to this node at start (name@host, or name@host=ADDRESS:PORT for another host); repeatable."
    )

    def opt_listen(self, description: str) -> None:
        self["listen"].append(description)

    # One line: usage.Options prints a docstring's indentation as it is.
    opt_listen.__doc__ = (
        "A Twisted endpoint string to serve on; repeatable. E.g. tcp:4000:interface=127.0.0.1 "
        "or ssl:4443:privateKey=key.pem:certKey=cert.pem (replaces --port)."
    )

    def postOptions(self) -> None:
        if not self["listen"]:
            port = self["port"] or os.environ.get("PORT") or "4000"
            if not (port.isascii() and port.isdigit() and int(port) <= 65535):
                raise usage.UsageError(f"--port takes a port number (0-65535), not {port!r}")
            self["listen"] = [f"tcp:{port}"]
        try:
            self["backlog"] = _positive(int)(self["backlog"]) if self["backlog"] is not None else default_backlog()
        except ValueError:
            raise usage.UsageError(f"--backlog takes a positive number, not {self['backlog']!r}") from None
        limits = {}
        for option, attribute, parse, _ in ENDPOINT_LIMITS:
            if self[option] is not None:
                try:
                    limits[attribute] = parse(self[option])
                except ValueError:
                    raise usage.UsageError(f"--{option} takes a positive number, not {self[option]!r}") from None
        self["limits"] = limits
        presence = {}
        for option, name, parse, _ in PRESENCE_OPTIONS:
            if self[option] is not None:
                try:
                    presence[name] = parse(self[option])
                except ValueError:
                    raise usage.UsageError(f"--{option} takes a positive number, not {self[option]!r}") from None
        self["presence"] = presence
        try:
            self["gc-threshold"] = _gc_thresholds(self["gc-threshold"])
        except ValueError:
            raise usage.UsageError(f"--gc-threshold takes three numbers, e.g. 20000,20,50, not {self['gc-threshold']!r}") from None
        try:
            self["log-max-bytes"] = _positive(int)(self["log-max-bytes"])
            self["log-max-files"] = _positive(int)(self["log-max-files"])
        except ValueError:
            raise usage.UsageError("--log-max-bytes and --log-max-files take positive numbers") from None
        self["endpoint_class"] = load_endpoint_class(self["endpoint"])
        cls = self["endpoint_class"]
        try:
            resolve_mounts(cls.static, defining_module_directory(cls, "static"))
        except ValueError as e:
            raise usage.UsageError(f"{self['endpoint']}: {e}") from None
        if self["static"] is not None:
            self["static"] = _static_directory(self["static"])
        if self["host"] is not None:
            self["host"] = parse_host(self["host"])
        health = self["health"] if self["health"] is not None else cls.health_path
        if health is not None:
            problem = health_path_error(health, cls.sockets)
            if problem is not None:
                raise usage.UsageError(f"--health: {problem}" if self["health"] is not None else f"{self['endpoint']}: {problem}")
            if self["no-http"] and self["health"] is not None:
                raise usage.UsageError("--health answers on the clients' port, which --no-http turns off")
        if self["presence"]:
            self["endpoint_class"] = _with_presence_options(self["endpoint_class"], self["presence"])
        try:
            self["env"] = resolve_env(self["env"])
            self["secret"] = resolve_secret(self["secret-key-base"], self["env"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["metrics"] is not None and importlib.util.find_spec("prometheus_client") is None:
            raise usage.UsageError("--metrics needs prometheus-client: pip install 'twisted_phoenix[metrics]'")
        self["cluster"] = self["name"] != NO_NODE
        self["redis"] = _redis_option(self["pubsub"])
        if self["cluster"]:
            self._cluster_options()
        elif self["connect"]:
            raise usage.UsageError("--connect needs --name (a node name)")
        elif self["discover"]:
            raise usage.UsageError("--discover needs --name (a node name, app@ITS-ADDRESS)")
        elif self["redis"] is None and self["no-http"]:
            raise usage.UsageError("--no-http needs --name (a node name) or --pubsub")
        elif self["redis"] is not None:
            # Nodes on Redis need names to be told apart; no cluster links.
            self["name"] = generated_node_name()
        self._workers_options()

    def _workers_options(self) -> None:
        """``--workers`` and ``--drain-timeout``: see :mod:`twisted_phoenix.workers`."""
        from .workers import DEFAULT_DRAIN_TIMEOUT, parse_workers

        timeout = self["drain-timeout"]
        try:
            self["drain-timeout"] = DEFAULT_DRAIN_TIMEOUT if timeout is None else _positive(float)(timeout)
        except ValueError:
            raise usage.UsageError(f"--drain-timeout takes a positive number of seconds, not {timeout!r}") from None
        if self["workers"] is None:
            return
        try:
            self["workers"] = parse_workers(self["workers"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if self["no-http"]:
            raise usage.UsageError("--workers serves clients: it cannot go with --no-http")
        if self["cluster"] and self["dist-port"] and self["dist-port"] + self["workers"] - 1 > 65535:
            raise usage.UsageError("--dist-port: worker i listens on --dist-port + i - 1, which must be a port number")

    def _cluster_options(self) -> None:
        try:
            parse_node_name(self["name"])
            self["cookie"] = resolve_cookie(self["cookie"])
            self["dist-port"] = int(self["dist-port"])
            self["epmd-port"] = int(self["epmd-port"] or mapper_port())
            self["heartbeat-interval"] = float(self["heartbeat-interval"])
            self["heartbeat-timeout"] = float(self["heartbeat-timeout"])
            self["dist-login-timeout"] = float(self["dist-login-timeout"])
            self["dist-max-pending"] = int(self["dist-max-pending"])
        except (ValueError, ConfigError) as e:
            raise usage.UsageError(str(e)) from None
        if not 0 <= self["dist-port"] <= 65535 or not 0 < self["epmd-port"] <= 65535:
            raise usage.UsageError("--dist-port and --epmd-port take port numbers")
        if not 0 < self["heartbeat-interval"] < self["heartbeat-timeout"]:
            raise usage.UsageError(
                "--heartbeat-interval must be above 0 and below --heartbeat-timeout "
                "(a peer is dropped after the timeout without an answer)"
            )
        if not self["dist-login-timeout"] > 0 or not self["dist-max-pending"] > 0:
            raise usage.UsageError("--dist-login-timeout and --dist-max-pending must be above 0")
        tls_files = [self["dist-cert"], self["dist-key"], self["dist-ca"]]
        if any(tls_files) and not all(tls_files):
            raise usage.UsageError("TLS cluster links need --dist-cert, --dist-key and --dist-ca")
        if any(tls_files) and self["dist-plaintext"]:
            raise usage.UsageError("--dist-plaintext and --dist-cert/--dist-key/--dist-ca: choose one")
        self["tls"] = ClusterTLS.from_files(*tls_files) if all(tls_files) else None
        self._routing_options()
        self._discovery_options()

    def _routing_options(self) -> None:
        try:
            self["interest-linger"] = float(self["interest-linger"])
            self["interest-max-topics"] = int(self["interest-max-topics"])
        except ValueError as e:
            raise usage.UsageError(f"--interest-linger and --interest-max-topics take numbers: {e}") from None
        if self["interest-linger"] < 0 or self["interest-max-topics"] < 1:
            raise usage.UsageError("--interest-linger must be 0 or more, --interest-max-topics 1 or more")

    def _discovery_options(self) -> None:
        from .cluster.discovery import parse_discovery, parse_nameserver

        if self["discover"] is None:
            if self["discover-nameserver"] is not None:
                raise usage.UsageError("--discover-nameserver goes with --discover")
            return
        try:
            self["discover"] = parse_discovery(self["discover"])
            self["discover-interval"] = _positive(float)(self["discover-interval"])
            if self["discover-nameserver"] is not None:
                self["discover-nameserver"] = parse_nameserver(self["discover-nameserver"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        host = parse_node_name(self["name"]).host
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise usage.UsageError(
                f"--discover names every node <basename>@<address>: this node's --name must be too "
                f"(name@ITS-IP-ADDRESS), not {self['name']!r}"
            ) from None
        if not self["dist-port"]:
            raise usage.UsageError("--discover needs a fixed --dist-port, the same on every node")


def _with_presence_options(endpoint_class: type[Endpoint], overrides: dict[str, Any]) -> type[Endpoint]:
    """
    A subclass of ``endpoint_class`` whose ``presence_options`` include
    ``overrides``, checked now (a bad combination is a usage error, not a
    traceback at start).
    """
    from .presence.tracker import check_periods

    merged = {**endpoint_class.presence_options, **overrides}
    try:
        check_periods(**merged)
    except (TypeError, ValueError) as e:
        raise usage.UsageError(f"presence options: {e}") from None
    return type(endpoint_class.__name__, (endpoint_class,), {"presence_options": merged, "__module__": endpoint_class.__module__})


def generated_node_name() -> str:
    """A unique node name, for a node on Redis started without ``--name``."""
    import secrets
    import socket

    host = socket.gethostname()
    try:
        parse_node_name(f"n@{host}")
    except ValueError:
        host = "localhost"
    return f"phoenix-{secrets.token_hex(4)}@{host}"


def _redis_option(url: str | None) -> Any:
    """``--pubsub``: ``None``, or the parsed Redis URL (the client must be installed)."""
    if url is None:
        return None
    from .adapters.redis_url import parse_redis_url

    try:
        config = parse_redis_url(url)
    except ValueError as e:
        raise usage.UsageError(f"--pubsub: {e}") from None
    if importlib.util.find_spec("txredisapi") is None:
        raise usage.UsageError("--pubsub redis:// needs txredisapi: pip install 'twisted_phoenix[redis]'")
    for path in (config.ca, config.cert, config.key):
        if path is not None and not os.path.isfile(path):
            raise usage.UsageError(f"--pubsub: no such file: {path}")
    return config


def _exit_now(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def stop_failed(reactor: Any) -> None:
    """
    Stop twistd because a service could not start, so that it exits (with
    status 1, for a supervisor's ``Restart=on-failure``) rather than serve
    without it.  twistd starts its services before the reactor runs, when
    the reactor cannot be stopped yet: then it is stopped as soon as it runs.
    """

    def stop() -> None:
        # After twistd's own cleanup (its pid file), the process ends with 1.
        reactor.addSystemEventTrigger("after", "shutdown", atexit.register, _exit_now, 1)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # another service failed first

    if reactor.running:
        stop()
    else:
        reactor.callWhenRunning(stop)


class ListeningService(service.Service):
    """
    Listens on one endpoint string while running, and logs the address it
    bound (so ``tcp:0`` reports its port: the tests read that line).
    """

    log = Logger()
    #: What it logs once bound.
    announce = "twisted_phoenix listening on {description} port={port}"

    def __init__(self, reactor: Any, description: str, factory: Any, backlog: int | None = None) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        #: Added to the description unless it has its own (see :func:`with_backlog`).
        self.backlog = backlog
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        description = self.description
        if self.backlog is not None:
            description = with_backlog(description, self.backlog)
        d = serverFromString(self.reactor, description).listen(self.factory)

        def listening(port: Any) -> None:
            self._port = port
            address = port.getHost()
            self.log.info(self.announce, description=self.description, port=getattr(address, "port", None))

        def failed(failure: Any) -> None:
            self.log.failure("Cannot listen on {description}", failure, description=self.description)
            stop_failed(self.reactor)

        d.addCallbacks(listening, failed)

    def stopService(self) -> Any:
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()
        return None


class MetricsService(ListeningService):
    """Serves the endpoint's Prometheus metrics (``--metrics``); logs its port as the client port is."""

    announce = "twisted_phoenix metrics on {description} port={port}"

    def __init__(self, reactor: Any, description: str, endpoint: Endpoint) -> None:
        from twisted.web.server import Site

        site = Site(endpoint.metrics.resource(), reactor=reactor)
        site.noisy = False
        site.log = lambda request: None  # no access log line per scrape
        super().__init__(reactor, description, site)


class NodeService(service.Service):
    """
    Runs the cluster node.  A node that cannot start (its name taken on
    this host, its port busy) stops twistd, rather than serve alone.
    """

    log = Logger()

    def __init__(self, reactor: Any, node: Node) -> None:
        self.reactor = reactor
        self.node = node

    def startService(self) -> None:
        super().startService()

        def failed(failure: Any) -> None:
            self.log.failure("Node {name} cannot start", failure, name=self.node.name)
            stop_failed(self.reactor)

        self.node.start().addErrback(failed)

    def stopService(self) -> Any:
        super().stopService()
        return self.node.stop()


class EndpointService(service.Service):
    """Runs the endpoint's background work (presence) while the app runs."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def startService(self) -> None:
        super().startService()
        self.endpoint.start()

    def stopService(self) -> Any:
        super().stopService()
        self.endpoint.stop()


class _Top(service.MultiService):
    """
    The plugin's top service.  Parented by twistd's application, it gives it
    the log observer to use when there is one (twistd asks the application
    for it once makeService has run).
    """

    log_observer: Any = None

    def setServiceParent(self, parent: Any) -> Any:
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)


def rotating_log_observer(path: str, max_bytes: int, max_files: int, reactor: Any = None) -> Any:
    """
    A log observer writing to ``path``, rotated at ``max_bytes`` with at most
    ``max_files`` rotated files kept (twistd's own keeps them all); given
    ``reactor``, a turn's lines are written together.
    """
    directory, name = os.path.split(os.path.abspath(path))
    logfile = LogFile(name, directory, rotateLength=max_bytes, maxRotatedFiles=max_files)
    return TextLogObserver(logfile, reactor)


def _twistd_log_path(options: Options) -> str | None:
    """
    Where twistd would log, from its own options: a file name, ``"-"`` for
    standard output, or ``None`` when it logs elsewhere (syslog, --logger)
    or is not running us.
    """
    twistd = getattr(options, "parent", None)
    if twistd is None:
        return None
    logfile = twistd.get("logfile")
    if twistd.get("syslog") or twistd.get("logger"):
        return None
    if logfile == "-" or (twistd.get("nodaemon") and not logfile):
        return "-"
    return logfile or "twistd.log"


def makeService(options: Options) -> service.IService:
    """
    Build the service: the endpoint served on every ``--listen``; with
    ``--workers``, the parent of the worker processes that serve it
    (:mod:`twisted_phoenix.workers`).
    """
    from ._reactor import install_default

    install_default()  # unless twistd installed one (--reactor)
    from twisted.internet import reactor

    if options["workers"] is not None:
        from .workers.supervisor import supervisor_service

        return supervisor_service(reactor, options, _logging_top(options, reactor))
    return serving_service(options, reactor)


def _logging_top(options: Options, reactor: Any) -> _Top:
    """The top service, with the log observer twistd should use, if ours."""
    top = _Top()
    # twistd's own observer writes the same lines, much slower.
    log_path = _twistd_log_path(options)
    if log_path == "-":
        top.log_observer = TextLogObserver(sys.stdout, reactor)
    elif log_path is not None:
        top.log_observer = rotating_log_observer(
            log_path, options["log-max-bytes"], options["log-max-files"], reactor
        )
    return top


def serving_service(
    options: Options, reactor: Any, listen: Callable[[str, Any], service.IService] | None = None
) -> service.IService:
    """
    The service of a process that serves: the endpoint, its node and
    PubSub adapter, and a :class:`ListeningService` on every ``--listen``
    (or what ``listen(description, site)`` makes: a worker adopts the
    parent's sockets instead).
    """
    tune_gc(reactor, options["gc-threshold"])
    before, after = raise_file_limit()
    if after != before:
        log.info("Raised the open-file limit from {before} to {after}", before=before, after=after)
    pubsub = PubSub(options["name"], clock=reactor)
    endpoint = options["endpoint_class"](
        reactor, node_name=options["name"], secret_key_base=options["secret"], pubsub=pubsub
    )
    for attribute, value in options["limits"].items():
        setattr(endpoint, attribute, value)
    endpoint.env = options["env"]
    if options["host"] is not None:
        endpoint.host = options["host"]
    if options["static"] is not None:
        endpoint.static = {**endpoint.static, "/": options["static"]}
    if options["health"] is not None:
        endpoint.health_path = options["health"]
    top = _logging_top(options, reactor)
    if options["cluster"]:
        node = Node(
            reactor,
            options["name"],
            cookie=options["cookie"],
            pubsub=pubsub,
            interface=options["dist-interface"],
            port=options["dist-port"],
            tls=options["tls"],
            plaintext=options["dist-plaintext"],
            login_timeout=options["dist-login-timeout"],
            max_pending=options["dist-max-pending"],
            mapper_port=options["epmd-port"],
            heartbeat_interval=options["heartbeat-interval"],
            heartbeat_timeout=options["heartbeat-timeout"],
            connect=options["connect"],
            interest_routing=not options["no-interest-routing"],
            interest_linger=options["interest-linger"],
            max_interest_topics=options["interest-max-topics"],
        )
        NodeService(reactor, node).setServiceParent(top)
        endpoint.metrics.add_source(node)
        if options["discover"] is not None:
            from .cluster.discovery import DNSDiscovery, DNSServerResolver

            nameserver = options["discover-nameserver"]
            resolver = reactor.nameResolver if nameserver is None else DNSServerResolver(reactor, [nameserver])
            DNSDiscovery(node, options["discover"], resolver=resolver,
                         interval=options["discover-interval"]).setServiceParent(top)
    if options["redis"] is not None:
        # Broadcasts, direct broadcasts and presence go through Redis only;
        # cluster links, if any, still serve Node.list and the console.
        # Created after the Node, it takes over as the PubSub's adapter; it
        # stops after the endpoint, so that presence's goodbye goes out.
        from .adapters.redis import RedisAdapter

        redis = RedisAdapter(reactor, pubsub, options["redis"])
        redis.setServiceParent(top)
        endpoint.metrics.add_source(redis)
    EndpointService(endpoint).setServiceParent(top)
    if not options["no-http"]:
        site = endpoint.site()
        site.noisy = False
        for description in options["listen"]:
            if listen is None:
                ListeningService(reactor, description, site, options["backlog"]).setServiceParent(top)
            else:
                listen(description, site).setServiceParent(top)
    if options["metrics"] is not None:
        MetricsService(reactor, options["metrics"], endpoint).setServiceParent(top)
    return top
