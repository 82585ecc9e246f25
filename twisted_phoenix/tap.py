# -*- test-case-name: tests.test_tap -*-
"""
The ``twistd phoenix`` plugin: options and service.

``twistd -n phoenix`` serves the demo app on port 4000.  See
``twistd phoenix --help`` for every option.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from .config import ConfigError, resolve_env, resolve_secret
from .endpoint import Endpoint

DEFAULT_ENDPOINT = "twisted_phoenix.examples.hello_sockets:Endpoint"


def load_endpoint_class(spec: str) -> type[Endpoint]:
    """Import ``package.module:Name`` and check that it is an Endpoint class."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise usage.UsageError(f"--endpoint takes package.module:Endpoint, not {spec!r}")
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
        "ws://localhost:4000/socket/websocket."
    )

    optParameters = [
        ["port", "p", None, "TCP port to serve on (default: $PORT, else 4000); ignored with --listen."],
        ["endpoint", "e", DEFAULT_ENDPOINT, "The app: package.module:EndpointClass."],
        ["name", None, "nonode@nohost", "This node's name, e.g. server@127.0.0.1."],
        ["secret-key-base", None, None, "Secret for signing tokens (default: $SECRET_KEY_BASE)."],
        ["env", None, None, "dev, test or prod (default: $PHOENIX_ENV, else dev). prod requires a secret."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        A Twisted endpoint string to serve on, repeatable, e.g.
        tcp:4000:interface=127.0.0.1 or ssl:4443:privateKey=key.pem:certKey=cert.pem
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        if not self["listen"]:
            port = self["port"] or os.environ.get("PORT") or "4000"
            if not port.isdigit():
                raise usage.UsageError(f"--port takes a number, not {port!r}")
            self["listen"] = [f"tcp:{port}"]
        self["endpoint_class"] = load_endpoint_class(self["endpoint"])
        try:
            self["env"] = resolve_env(self["env"])
            self["secret"] = resolve_secret(self["secret-key-base"], self["env"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


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


def makeService(options: Options) -> service.IService:
    """Build the service: the endpoint served on every ``--listen``."""
    from twisted.internet import reactor

    endpoint = options["endpoint_class"](
        reactor, node_name=options["name"], secret_key_base=options["secret"]
    )
    site = Site(endpoint.resource())
    site.noisy = False
    top = service.MultiService()
    for description in options["listen"]:
        ListeningService(reactor, description, site).setServiceParent(top)
    return top
