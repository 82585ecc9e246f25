# -*- test-case-name: tests.test_workers -*-
"""
Serving a ``--listen`` description on a socket the parent bound.

A worker parses each ``--listen`` description as a single process would
(:func:`~twisted.internet.endpoints.serverFromString`), so that ``ssl:``
keeps its certificates and every option its meaning; only where the
endpoint would bind a new socket, :class:`AdoptingReactor` adopts the
parent's instead (``reactor.adoptStreamPort``), wrapping the factory in TLS
for ``ssl:`` as ``listenSSL`` does.  The endpoints reach the reactor only
through its public ``listenTCP``, ``listenSSL`` and ``listenUNIX``, so
``tcp:``, ``tcp6:``, ``ssl:`` and ``unix:`` descriptions work; any other
kind is refused with a clear error.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import defer, fdesc
from twisted.internet.endpoints import serverFromString
from twisted.protocols.tls import TLSMemoryBIOFactory

__all__ = ["AdoptingReactor", "adopt", "socket_family"]


def socket_family(fd: int) -> int:
    """The address family of the socket ``fd`` (``AF_INET``, ``AF_INET6``, ``AF_UNIX``)."""
    with socket.socket(fileno=os.dup(fd)) as s:
        return s.family


class AdoptingReactor:
    """
    Looks like the reactor to one endpoint, but its ``listen*`` methods
    adopt the listening socket ``fd`` rather than bind one; everything else
    goes to ``reactor``.

    :param reactor: the real reactor (an ``IReactorSocket``).
    :param fd: a listening stream socket, inherited from the parent; it is
        closed once adopted (the port holds a copy).
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self.adopted: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> Any:
        if self.adopted is not None:
            raise RuntimeError("the socket is adopted already")
        fd = self._fd
        fdesc.setNonBlocking(fd)
        port = self._reactor.adoptStreamPort(fd, socket_family(fd), factory)
        os.close(fd)
        self.adopted = port
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._adopt(factory)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address: Any, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0) -> Any:
        return self._adopt(factory)


def adopt(reactor: Any, description: str, fd: int, factory: Any) -> Any:
    """
    Serve ``factory`` on the inherited listening socket ``fd``, the one
    the parent bound for ``description``.  Returns a Deferred of the port.
    """
    shim = AdoptingReactor(reactor, fd)
    try:
        endpoint = serverFromString(shim, description)
    except ValueError as e:
        return defer.fail(e)

    def listened(port: Any) -> Any:
        if shim.adopted is None or port is not shim.adopted:
            raise ValueError(
                f"{description!r}: --workers serves tcp:, tcp6:, ssl: and unix: descriptions only"
            )
        return port

    return defer.maybeDeferred(endpoint.listen, factory).addCallback(listened)
