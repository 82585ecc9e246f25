# -*- test-case-name: tests.test_tap -*-
"""
The ``twistd phoenix`` plugin: options and service.

``twistd -n phoenix`` serves the demo app on port 4000.  See
``twistd phoenix --help`` for every option.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .cluster import NO_NODE, ClusterTLS, Node, parse_node_name
from .cluster.portmapper import mapper_port
from .config import ConfigError, resolve_cookie, resolve_env, resolve_secret
from .endpoint import Endpoint
from .pubsub import PubSub

DEFAULT_ENDPOINT = "twisted_phoenix.examples.hello_sockets:Endpoint"


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

    optParameters = [
        ["port", "p", None, "TCP port to serve on (default: $PORT, else 4000); ignored with --listen."],
        ["endpoint", "e", DEFAULT_ENDPOINT, "The app: package.module:EndpointClass."],
        ["name", None, "nonode@nohost", "This node's name, e.g. server@127.0.0.1."],
        ["secret-key-base", None, None, "Secret for signing tokens (default: $SECRET_KEY_BASE)."],
        ["env", None, None, "dev, test or prod (default: $PHOENIX_ENV, else dev). prod requires a secret."],
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
    ]

    optFlags = [
        ["no-http", None, "Serve no sockets: a cluster node for workers and broadcasts only."],
        ["dist-plaintext", None, "Cluster links without TLS (every node of the cluster must agree)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["connect"] = []

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
        self["endpoint_class"] = load_endpoint_class(self["endpoint"])
        try:
            self["env"] = resolve_env(self["env"])
            self["secret"] = resolve_secret(self["secret-key-base"], self["env"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self["cluster"] = self["name"] != NO_NODE
        if self["cluster"]:
            self._cluster_options()
        elif self["connect"] or self["no-http"]:
            raise usage.UsageError("--connect and --no-http need --name (a node name)")

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


class ListeningService(service.Service):
    """
    Listens on one endpoint string while running, and logs the address it
    bound (so ``tcp:0`` reports its port: the tests read that line).
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, factory: Any) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        d = serverFromString(self.reactor, self.description).listen(self.factory)

        def listening(port: Any) -> None:
            self._port = port
            address = port.getHost()
            self.log.info(
                "twisted_phoenix listening on {description} port={port}",
                description=self.description, port=getattr(address, "port", None),
            )

        def failed(failure: Any) -> None:
            self.log.failure("Cannot listen on {description}", failure, description=self.description)
            self.reactor.stop()

        d.addCallbacks(listening, failed)

    def stopService(self) -> Any:
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()
        return None


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
            self.reactor.stop()

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


def makeService(options: Options) -> service.IService:
    """Build the service: the endpoint served on every ``--listen``."""
    from twisted.internet import reactor

    pubsub = PubSub(options["name"])
    endpoint = options["endpoint_class"](
        reactor, node_name=options["name"], secret_key_base=options["secret"], pubsub=pubsub
    )
    top = service.MultiService()
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
        )
        NodeService(reactor, node).setServiceParent(top)
    EndpointService(endpoint).setServiceParent(top)
    if not options["no-http"]:
        site = endpoint.site()
        site.noisy = False
        for description in options["listen"]:
            ListeningService(reactor, description, site).setServiceParent(top)
    return top
