# -*- test-case-name: tests.test_discovery -*-
"""
Finding the nodes of a cluster through DNS, as libcluster's DNS strategy
does: every address a name resolves to is a node named
``<basename>@<address>``, listening for links on the same port as this one.

This fits a Kubernetes headless service, whose name resolves to the address
of every ready pod: each pod runs ::

    twistd -n phoenix --name "app@$POD_IP" --dist-interface 0.0.0.0 --dist-port 9100 \\
        --discover dns:app-headless.default.svc.cluster.local

The name is resolved at start and again every ``interval`` seconds; the node
connects to each address it is not linked to yet.  An address that is gone
from the answer is left to the link's own failure handling (heartbeats, then
relinking with backoff, as for any lost peer).  An address that answered
but could not be linked is tried again at each resolution while it stays in
the answer.

The resolver is any :class:`~twisted.internet.interfaces.IHostnameResolver`:
the reactor's ``nameResolver`` (the system's, through ``getaddrinfo``) by
default, or :class:`DNSServerResolver`, which asks given DNS servers
(``--discover-nameserver``).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IResolutionReceiver
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

__all__ = ["DEFAULT_INTERVAL", "DNSDiscovery", "DNSServerResolver", "parse_discovery", "parse_nameserver"]

log = Logger()

#: Seconds between two resolutions of the name.
DEFAULT_INTERVAL = 5.0


def parse_discovery(text: str) -> str:
    """
    The DNS name of a ``--discover`` value, ``dns:NAME``.

    :raises ValueError: for anything else.
    """
    kind, sep, name = text.partition(":")
    name = name.strip().rstrip(".")
    if kind != "dns" or not sep or not name or any(c in name for c in "/@ \t:"):
        raise ValueError(f"--discover takes dns:NAME (a DNS name, e.g. dns:app.default.svc.cluster.local), not {text!r}")
    return name


def parse_nameserver(text: str) -> tuple[str, int]:
    """
    A ``--discover-nameserver`` value: an IP address, with an optional port
    (``10.0.0.10``, ``127.0.0.1:5353``, ``[::1]:5353``); port 53 by default.

    :raises ValueError: for anything else.
    """
    host, port = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"a name server is ADDRESS[:PORT], not {text!r}")
        port = rest[1:] or "53"
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a name server is an IP address with an optional port, not {text!r}") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a name server is ADDRESS[:PORT], not {text!r}")
    return host, int(port)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        """Nothing to cancel: the lookups time out by themselves."""


class _Controller:
    """What :class:`twisted.names.dns.DNSProtocol` needs of its controller, for one connection."""

    def __init__(self) -> None:
        self.connected: defer.Deferred[Any] = defer.Deferred()

    def connectionMade(self, protocol: Any) -> None:
        if not self.connected.called:
            self.connected.callback(protocol)

    def connectionLost(self, protocol: Any) -> None:
        pass

    def messageReceived(self, message: Any, protocol: Any, address: Any = None) -> None:
        pass  # not an answer to our query: ignored


@implementer(IHostnameResolver)
class DNSServerResolver:
    """
    An :class:`~twisted.internet.interfaces.IHostnameResolver` that asks the
    given DNS servers (not the system's resolver) for a name's ``A`` and
    ``AAAA`` records, and answers every address.

    Each resolution is one TCP connection to a server (the next server when
    one cannot be reached): no answer is ever truncated, as a UDP one would
    be past about 30 addresses, and nothing is logged for each query.  A
    failure is logged (once until another kind of failure, or a success) and
    resolves no address.

    :param reactor: the reactor (TCP, time).
    :param servers: ``(address, port)`` of each server.
    :param timeout: seconds to connect, and for each answer.
    """

    def __init__(self, reactor: Any, servers: Sequence[tuple[str, int]], timeout: float = 3.0) -> None:
        if not servers:
            raise ValueError("no DNS server")
        self.reactor = reactor
        self.servers = list(servers)
        self.timeout = timeout
        self._next = 0
        self._open: set[Any] = set()
        self._failing: str | None = None

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type] | None = None,
        transportSemantics: str = "TCP",
    ) -> IResolutionReceiver:
        """Look up ``hostName``; tell ``resolutionReceiver`` every address, then that it is complete."""
        from twisted.names import dns

        resolutionReceiver.resolutionBegan(_Resolution(hostName))
        kinds = []
        if addressTypes is None or IPv4Address in addressTypes:
            kinds.append(dns.A)
        if addressTypes is None or IPv6Address in addressTypes:
            kinds.append(dns.AAAA)

        def answered(records: list[Any]) -> None:
            if self._failing is not None:
                self._failing = None
                log.info("DNS servers {servers} answer again", servers=self._describe())
            for record in records:
                if record.type == dns.A:
                    address: Any = IPv4Address(
                        transportSemantics, socket.inet_ntop(socket.AF_INET, record.payload.address), portNumber
                    )
                else:
                    address = IPv6Address(
                        transportSemantics, socket.inet_ntop(socket.AF_INET6, record.payload.address), portNumber
                    )
                resolutionReceiver.addressResolved(address)

        def failed(failure: Any) -> None:
            why = failure.getErrorMessage() or failure.type.__name__
            log.emit(LogLevel.warn if why != self._failing else LogLevel.debug,
                     "Cannot resolve {name} with the DNS servers {servers}: {why}",
                     name=hostName, servers=self._describe(), why=why)
            self._failing = why

        self._ask(hostName, kinds).addCallbacks(answered, failed).addBoth(
            lambda _: resolutionReceiver.resolutionComplete()
        )
        return resolutionReceiver

    def stop(self) -> None:
        """Drop the connections of the resolutions in progress."""
        for protocol in list(self._open):
            protocol.transport.abortConnection()

    def _describe(self) -> str:
        return " ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.servers)

    @defer.inlineCallbacks
    def _ask(self, name: str, kinds: list[int]) -> Any:
        """The records of ``kinds`` for ``name``, from the first server that answers."""
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
        from twisted.internet.protocol import Factory
        from twisted.names import dns, error

        error_: Exception = OSError("no DNS server")
        for _ in range(len(self.servers)):
            host, port = self.servers[self._next % len(self.servers)]
            self._next += 1
            controller = _Controller()
            factory = Factory.forProtocol(lambda: dns.DNSProtocol(controller, self.reactor))
            factory.noisy = False
            kind = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
            endpoint = kind(self.reactor, host, port, timeout=max(1, int(self.timeout)))
            try:
                yield endpoint.connect(factory)
                protocol = yield controller.connected.addTimeout(self.timeout, self.reactor)
            except Exception as e:
                error_ = e
                continue
            self._open.add(protocol)
            try:
                found = []
                for kind_ in kinds:
                    message = yield protocol.query([dns.Query(name, kind_, dns.IN)], self.timeout)
                    if message.rCode == dns.OK:
                        found.extend(r for r in message.answers if r.type == kind_)
                    elif message.rCode != dns.ENAME:  # no such name: no address
                        raise error.DNSServerError(f"DNS error code {message.rCode}")
                return found
            except Exception as e:
                error_ = e
            finally:
                self._open.discard(protocol)
                protocol.transport.loseConnection()
        raise error_


@implementer(IResolutionReceiver)
class _Collect:
    """Collects the addresses of one resolution into a Deferred."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: defer.Deferred[list[str]] = defer.Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self.addresses:
            self.addresses.append(host)

    def resolutionComplete(self) -> None:
        if not self.done.called:
            self.done.callback(self.addresses)


class DNSDiscovery(service.Service):
    """
    Links ``node`` to every node a DNS name resolves to, again every
    ``interval`` seconds (see the module docstring).

    :param node: this node (:class:`~twisted_phoenix.cluster.node.Node`);
        its base name (``app`` of ``app@10.0.0.5``) names the others.
    :param query: the DNS name.
    :param resolver: an :class:`~twisted.internet.interfaces.IHostnameResolver`
        (the reactor's ``nameResolver``, say); its ``stop()``, if it has one,
        is called when discovery stops.
    :param interval: seconds between resolutions.
    :param port: the link port of every node (default: this node's, which
        must then be fixed: ``--dist-port``).
    :param clock: for the period (default: the node's reactor).

    :ivar addresses: the addresses of the last answer.
    :ivar resolutions: resolutions made.
    :ivar failures: resolutions that failed or found no address.
    """

    def __init__(
        self,
        node: Any,
        query: str,
        *,
        resolver: Any,
        interval: float = DEFAULT_INTERVAL,
        port: int | None = None,
        clock: Any = None,
    ) -> None:
        if not interval > 0:
            raise ValueError("the discovery interval must be above 0")
        self.node = node
        self.query = query
        self.resolver = resolver
        self.interval = interval
        self.port = port if port is not None else node.port
        if not self.port:
            raise ValueError("DNS discovery needs the link port every node listens on (--dist-port), not 0")
        self.clock = clock if clock is not None else node.reactor
        self.basename = node.node_name.name
        self.addresses: list[str] = []
        self.resolutions = 0
        self.failures = 0
        self._tried: set[str] = set()
        self._failing: str | None = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        """Resolve once the node is listening, then every ``interval`` seconds."""
        super().startService()
        log.info("Node {name} discovers its peers through DNS: {query}, every {interval:g} s",
                 name=self.node.name, query=self.query, interval=self.interval)
        self.node.started.addCallback(self._begin)

    def stopService(self) -> Any:
        """Resolve no more (links made stay up); stop the resolver, if it has a ``stop()``."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        stop = getattr(self.resolver, "stop", None)
        if stop is not None:
            stop()
        return None

    def _begin(self, result: Any) -> Any:
        if self.running and self._loop is None:
            self._loop = LoopingCall(self.resolve)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=True)
        return result

    def resolve(self) -> defer.Deferred[list[str]]:
        """Resolve the name now, and connect to the new addresses; fires with them all (never fails)."""
        self.resolutions += 1
        collect = _Collect()
        try:
            self.resolver.resolveHostName(collect, self.query, 0, [IPv4Address, IPv6Address], "TCP")
        except Exception as e:
            collect.done.errback(e)
        # A resolver that never completes must not stop the period.
        timeout = max(self.interval, 5.0)
        d = collect.done.addTimeout(timeout, self.clock)
        return d.addCallbacks(self._found, self._failed)

    def _found(self, addresses: list[str]) -> list[str]:
        if not addresses:
            self._failed(None)
            return []
        if self._failing is not None:
            log.info("DNS name {query} resolves again", query=self.query)
            self._failing = None
        if sorted(addresses) != sorted(self.addresses):
            log.info("DNS name {query}: {addresses}", query=self.query, addresses=" ".join(addresses))
        self.addresses = addresses
        for address in addresses:
            self._connect(address)
        return addresses

    def _failed(self, failure: Any) -> list[str]:
        self.failures += 1
        self.addresses = []
        why = "no address" if failure is None else failure.getErrorMessage() or failure.type.__name__
        level = LogLevel.warn if self._failing != why else LogLevel.debug
        log.emit(level, "DNS name {query} resolves to no address ({why}); trying again every {interval:g} s",
                 query=self.query, why=why, interval=self.interval)
        self._failing = why
        return []

    def _connect(self, address: str) -> None:
        node = self.node
        name = f"{self.basename}@{address}"
        if name == node.name or name in node.links or name in node._pending or name in node._retrying:
            return
        quiet = address in self._tried
        self._tried.add(address)
        host = f"[{address}]" if ":" in address else address
        node.connect(f"{name}={host}:{self.port}", quiet=quiet).addErrback(
            lambda f: log.failure("Linking to {name}", f, name=name)
        )
