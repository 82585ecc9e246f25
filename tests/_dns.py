"""
A DNS server for the discovery tests: ``twisted.names`` on loopback TCP and UDP,
answering ``A`` and ``AAAA`` records the test sets (and changes) as it
goes, like a Kubernetes headless service as pods come and go.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.names import common, dns, error, server

__all__ = ["DNSServer"]


class _Zone(common.ResolverBase):
    """Names and their addresses, answered with a TTL of 0 (nothing cached)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, list[str]] = {}

    def _lookup(self, name: Any, cls: int, type: int, timeout: Any = None) -> defer.Deferred[Any]:
        key = (name.decode() if isinstance(name, bytes) else str(name)).lower().rstrip(".")
        addresses = self.names.get(key)
        if addresses is None:
            return defer.fail(error.DomainError(key))
        answers = []
        for address in addresses:
            if ":" in address and type in (dns.AAAA, dns.ALL_RECORDS):
                answers.append(dns.RRHeader(key, dns.AAAA, dns.IN, 0, dns.Record_AAAA(address, 0), auth=True))
            elif ":" not in address and type in (dns.A, dns.ALL_RECORDS):
                answers.append(dns.RRHeader(key, dns.A, dns.IN, 0, dns.Record_A(address, 0), auth=True))
        return defer.succeed((answers, [], []))


class DNSServer:
    """A DNS server on 127.0.0.1, on a free UDP port (:attr:`port` once started)."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.zone = _Zone()
        self.port = 0
        self._listening: Any = None

    def set(self, name: str, addresses: list[str]) -> None:
        """Answer ``addresses`` for ``name`` from now on."""
        self.zone.names[name.lower().rstrip(".")] = list(addresses)

    def start(self) -> defer.Deferred[None]:
        """Listen on TCP (what DNSServerResolver asks over) and UDP, on one free port."""
        factory = server.DNSServerFactory(authorities=[self.zone])
        factory.noisy = False
        tcp = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self._listening = [tcp]
        self.port = tcp.getHost().port
        protocol = dns.DNSDatagramProtocol(controller=factory)
        protocol.noisy = False
        try:
            self._listening.append(self.reactor.listenUDP(self.port, protocol, interface="127.0.0.1"))
        except OSError:
            pass  # the port is taken for UDP: TCP is enough for the tests
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[Any]:
        listening, self._listening = self._listening or [], None
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in listening])
