"""
Tests for :mod:`twisted_phoenix.cluster.discovery`: DNS discovery with a
fake resolver and a ``task.Clock``; :class:`DNSServerResolver` against a DNS
server in this process (``twisted.names``, on loopback UDP); the
``twistd phoenix`` options of discovery and interest routing.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from twisted_phoenix.cluster.discovery import (
    DEFAULT_INTERVAL,
    DNSDiscovery,
    DNSServerResolver,
    parse_discovery,
    parse_nameserver,
)
from twisted_phoenix.cluster.names import parse_node_name

from ._cluster import TapOptionsMixin, bindable, free_port, watch_logs
from ._dns import DNSServer


class FakeResolver:
    """An IHostnameResolver that answers what the test says, now or later."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.queries: list[tuple[Any, ...]] = []
        self.hold = False
        self.held: list[Any] = []
        self.error: Exception | None = None

    def resolveHostName(self, receiver: Any, name: str, port: int = 0, types: Any = None,
                        semantics: str = "TCP") -> Any:
        self.queries.append((name, port, tuple(types or ()), semantics))
        if self.error is not None:
            raise self.error
        receiver.resolutionBegan(None)
        if self.hold:
            self.held.append((receiver, name))
        else:
            self.complete(receiver, name)
        return receiver

    def complete(self, receiver: Any, name: str) -> None:
        for address in self.answers.get(name, []):
            kind = IPv6Address if ":" in address else IPv4Address
            receiver.addressResolved(kind("TCP", address, 0))
        receiver.resolutionComplete()


class FakeNode:
    """What discovery needs of a node: its name, port, links, and connect()."""

    def __init__(self, name: str = "app@10.0.0.1", port: int = 9100) -> None:
        self.name = name
        self.node_name = parse_node_name(name)
        self.port = port
        self.reactor = Clock()
        self.links: dict[str, Any] = {}
        self._pending: dict[str, int] = {}
        self._retrying: set[str] = set()
        self.started: defer.Deferred[None] = defer.Deferred()
        self.connects: list[tuple[str, bool]] = []
        self.results: dict[str, bool] = {}

    def connect(self, target: str, address: Any = None, *, quiet: bool = False) -> defer.Deferred[bool]:
        self.connects.append((target, quiet))
        peer = target.partition("=")[0]
        ok = self.results.get(peer, True)
        if ok:
            self.links[peer] = object()
        return defer.succeed(ok)


class DNSDiscoveryTests(SynchronousTestCase):
    """Every address of the name is a node basename@address; new ones are linked at each resolution."""

    def make(self, addresses: list[str], **options: Any) -> tuple[DNSDiscovery, FakeNode, FakeResolver]:
        node = FakeNode()
        resolver = FakeResolver()
        resolver.answers["app.svc"] = addresses
        options.setdefault("interval", 5.0)
        discovery = DNSDiscovery(node, "app.svc", resolver=resolver, **options)
        discovery.startService()
        self.addCleanup(discovery.stopService)
        return discovery, node, resolver

    def test_after_start(self) -> None:
        """Nothing is resolved before the node listens; then every other address is linked."""
        discovery, node, resolver = self.make(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        self.assertEqual(resolver.queries, [])
        node.started.callback(None)
        self.assertEqual(resolver.queries, [("app.svc", 0, (IPv4Address, IPv6Address), "TCP")])
        self.assertEqual(node.connects, [("app@10.0.0.2=10.0.0.2:9100", False), ("app@10.0.0.3=10.0.0.3:9100", False)])
        self.assertEqual(discovery.addresses, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])

    def test_periodic(self) -> None:
        """The name is resolved again every interval; only new addresses are connected to."""
        discovery, node, resolver = self.make(["10.0.0.1", "10.0.0.2"], interval=2.0)
        node.started.callback(None)
        resolver.answers["app.svc"] = ["10.0.0.2", "10.0.0.1", "10.0.0.4"]
        node.reactor.advance(1.9)
        self.assertEqual(len(resolver.queries), 1)
        node.reactor.advance(0.1)
        self.assertEqual(len(resolver.queries), 2)
        self.assertEqual([c[0] for c in node.connects], ["app@10.0.0.2=10.0.0.2:9100", "app@10.0.0.4=10.0.0.4:9100"])
        self.assertEqual(discovery.resolutions, 2)

    def test_gone_left_to_links(self) -> None:
        """An address gone from the answer is not disconnected: its link's own failure handling decides."""
        discovery, node, resolver = self.make(["10.0.0.1", "10.0.0.2"])
        node.started.callback(None)
        resolver.answers["app.svc"] = ["10.0.0.1"]
        node.reactor.advance(DEFAULT_INTERVAL)
        self.assertIn("app@10.0.0.2", node.links)
        self.assertEqual(discovery.addresses, ["10.0.0.1"])

    def test_busy_names_skipped(self) -> None:
        """Nodes being connected to, or retried after a lost link, are left alone."""
        discovery, node, resolver = self.make(["10.0.0.2", "10.0.0.3"])
        node._pending["app@10.0.0.2"] = 1
        node._retrying.add("app@10.0.0.3")
        node.started.callback(None)
        self.assertEqual(node.connects, [])

    def test_failed_connect_retried(self) -> None:
        """An address that could not be linked is tried again at the next resolution, quietly."""
        discovery, node, resolver = self.make(["10.0.0.2"])
        node.results["app@10.0.0.2"] = False
        node.started.callback(None)
        node.reactor.advance(DEFAULT_INTERVAL)
        self.assertEqual(node.connects, [("app@10.0.0.2=10.0.0.2:9100", False), ("app@10.0.0.2=10.0.0.2:9100", True)])
        resolver.answers["app.svc"] = []
        node.reactor.advance(DEFAULT_INTERVAL)
        self.assertEqual(len(node.connects), 2, "gone from DNS: no longer tried")

    def test_ipv6(self) -> None:
        """An IPv6 address names app@<address> and is reached at [address]:port."""
        discovery, node, resolver = self.make(["fd00::2"])
        node.started.callback(None)
        self.assertEqual(node.connects, [("app@fd00::2=[fd00::2]:9100", False)])
        self.assertEqual(parse_node_name("app@fd00::2").host, "fd00::2")

    def test_port(self) -> None:
        """The peers' link port is this node's, or the one given; 0 is refused; so is an interval of 0."""
        node = FakeNode(port=0)
        self.assertRaises(ValueError, DNSDiscovery, node, "x", resolver=FakeResolver())
        self.assertEqual(DNSDiscovery(node, "x", resolver=FakeResolver(), port=7000).port, 7000)
        self.assertRaises(ValueError, DNSDiscovery, FakeNode(), "x", resolver=FakeResolver(), interval=0)

    def test_no_address(self) -> None:
        """A name with no address is logged once (a warning) and counted; its return is logged too."""
        logs = watch_logs(self, Clock())
        discovery, node, resolver = self.make([])
        node.started.callback(None)
        node.reactor.advance(DEFAULT_INTERVAL)
        self.assertEqual(discovery.failures, 2)
        self.assertEqual(len(logs.find("DNS name app.svc resolves to no address (no address)", LogLevel.warn)), 1)
        resolver.answers["app.svc"] = ["10.0.0.2"]
        node.reactor.advance(DEFAULT_INTERVAL)
        self.assertTrue(logs.find("DNS name app.svc resolves again"))
        self.assertEqual([c[0] for c in node.connects], ["app@10.0.0.2=10.0.0.2:9100"])

    def test_resolver_error(self) -> None:
        """A resolver that raises is a failed resolution; the period goes on."""
        logs = watch_logs(self, Clock())
        discovery, node, resolver = self.make(["10.0.0.2"])
        resolver.error = OSError("resolver broken")
        node.started.callback(None)
        self.assertTrue(logs.find("resolves to no address (resolver broken)", LogLevel.warn))
        resolver.error = None
        node.reactor.advance(DEFAULT_INTERVAL)
        self.assertEqual([c[0] for c in node.connects], ["app@10.0.0.2=10.0.0.2:9100"])

    def test_resolution_times_out(self) -> None:
        """A resolution that never completes times out; the next one happens; a late answer is ignored."""
        discovery, node, resolver = self.make(["10.0.0.2"], interval=1.0)
        resolver.hold = True
        node.started.callback(None)
        node.reactor.advance(4.9)
        self.assertEqual(len(resolver.queries), 1, "no second resolution while one is in flight")
        node.reactor.advance(0.1)  # 5 s: the timeout
        self.assertEqual(discovery.failures, 1)
        late = resolver.held.pop()
        resolver.complete(*late)
        self.assertEqual(node.connects, [])
        resolver.hold = False
        node.reactor.advance(1.0)
        self.assertEqual(len(resolver.queries), 2)
        self.assertEqual([c[0] for c in node.connects], ["app@10.0.0.2=10.0.0.2:9100"])

    def test_stop(self) -> None:
        """Stopped, it resolves no more; stopped before the node listens, it never starts."""
        discovery, node, resolver = self.make(["10.0.0.2"])
        node.started.callback(None)
        discovery.stopService()
        node.reactor.advance(10 * DEFAULT_INTERVAL)
        self.assertEqual(len(resolver.queries), 1)
        discovery, node, resolver = self.make(["10.0.0.2"])
        discovery.stopService()
        node.started.callback(None)
        self.assertEqual(resolver.queries, [])


class ParseTests(SynchronousTestCase):
    """The values of --discover and --discover-nameserver."""

    def test_discover(self) -> None:
        """dns:NAME gives NAME (a final dot dropped); anything else is refused."""
        self.assertEqual(parse_discovery("dns:app.default.svc.cluster.local"), "app.default.svc.cluster.local")
        self.assertEqual(parse_discovery("dns:app.svc."), "app.svc")
        for bad in ("app.svc", "dns:", "srv:app", "dns:a b", "dns:http://x", "dns:a:53", "DNS:x"):
            self.assertRaises(ValueError, parse_discovery, bad)

    def test_nameserver(self) -> None:
        """An IP address with an optional port (53 by default); IPv6 in brackets with a port."""
        self.assertEqual(parse_nameserver("10.0.0.10"), ("10.0.0.10", 53))
        self.assertEqual(parse_nameserver("127.0.0.1:5353"), ("127.0.0.1", 5353))
        self.assertEqual(parse_nameserver("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_nameserver("::1"), ("::1", 53))
        for bad in ("dns.example", "10.0.0.10:0", "10.0.0.10:x", "[::1", "[::1]x", "1.2.3.4:70000"):
            self.assertRaises(ValueError, parse_nameserver, bad)


class DNSServerResolverTests(TestCase):
    """DNSServerResolver asks a real DNS server (in this process, on loopback UDP) for every address."""

    def setUp(self) -> Any:
        self.dns = DNSServer(reactor)
        self.addCleanup(self.dns.stop)
        return self.dns.start()

    def resolve(self, name: str, types: Any = None) -> defer.Deferred[list[Any]]:
        resolver = DNSServerResolver(reactor, [("127.0.0.1", self.dns.port)], timeout=5.0)
        self.addCleanup(resolver.stop)
        found: list[Any] = []
        done: defer.Deferred[list[Any]] = defer.Deferred()

        class Receiver:
            def resolutionBegan(self, resolution: Any) -> None:
                found.append(("began", resolution.name))

            def addressResolved(self, address: Any) -> None:
                found.append(address)

            def resolutionComplete(self) -> None:
                done.callback(found)

        resolver.resolveHostName(Receiver(), name, 9100, types)
        return done

    @defer.inlineCallbacks
    def test_every_address(self) -> None:
        """Every A and AAAA record of the name is an address, with the port asked for."""
        self.dns.set("app.test", ["127.0.0.2", "127.0.0.3", "fd00::7"])
        found = yield self.resolve("app.test")
        self.assertEqual(found[0], ("began", "app.test"))
        self.assertEqual(sorted(found[1:], key=str), sorted([
            IPv4Address("TCP", "127.0.0.2", 9100), IPv4Address("TCP", "127.0.0.3", 9100),
            IPv6Address("TCP", "fd00::7", 9100),
        ], key=str))

    @defer.inlineCallbacks
    def test_address_types(self) -> None:
        """Asked for IPv4 only, only A records are looked up."""
        self.dns.set("app.test", ["127.0.0.2", "fd00::7"])
        found = yield self.resolve("app.test", [IPv4Address])
        self.assertEqual(found[1:], [IPv4Address("TCP", "127.0.0.2", 9100)])

    @defer.inlineCallbacks
    def test_unknown_name(self) -> None:
        """A name the server does not know completes with no address, and no warning."""
        logs = watch_logs(self, reactor)
        found = yield self.resolve("nothing.test")
        self.assertEqual(found, [("began", "nothing.test")])
        self.assertEqual(logs.find("Cannot resolve", LogLevel.warn), [])

    @defer.inlineCallbacks
    def test_many_addresses(self) -> None:
        """A name with 200 addresses (a UDP answer would be truncated) gives them all."""
        addresses = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(200)]
        self.dns.set("big.test", addresses)
        found = yield self.resolve("big.test", [IPv4Address])
        self.assertEqual(sorted(a.host for a in found[1:]), sorted(addresses))

    @defer.inlineCallbacks
    def test_no_server(self) -> None:
        """No server answers: the next one is tried; none: no address, and a warning (once)."""
        logs = watch_logs(self, reactor)
        self.dns.set("app.test", ["127.0.0.2"])
        dead = ("127.0.0.1", free_port())
        resolver = DNSServerResolver(reactor, [dead, ("127.0.0.1", self.dns.port)], timeout=5.0)
        self.addCleanup(resolver.stop)
        for _ in range(2):
            found: list[Any] = []
            done: defer.Deferred[None] = defer.Deferred()
            receiver = mock.Mock(addressResolved=found.append, resolutionComplete=lambda: done.callback(None))
            resolver.resolveHostName(receiver, "app.test", 0)
            yield done
            self.assertEqual([a.host for a in found], ["127.0.0.2"])
        resolver = DNSServerResolver(reactor, [dead], timeout=5.0)
        for _ in range(2):
            done = defer.Deferred()
            receiver = mock.Mock(addressResolved=found.append, resolutionComplete=lambda: done.callback(None))
            resolver.resolveHostName(receiver, "app.test", 0)
            yield done
        self.assertEqual(len(logs.find("Cannot resolve app.test with the DNS servers", LogLevel.warn)), 1)

    @defer.inlineCallbacks
    def test_discovery(self) -> None:
        """DNSDiscovery with DNSServerResolver sees the server's changes at its next resolution."""
        self.dns.set("app.test", ["10.9.0.1", "10.9.0.2"])
        node = FakeNode("app@10.9.0.1")
        node.started.callback(None)
        resolver = DNSServerResolver(reactor, [("127.0.0.1", self.dns.port)], timeout=5.0)
        self.addCleanup(resolver.stop)
        discovery = DNSDiscovery(node, "app.test", interval=3600, resolver=resolver)
        self.assertEqual((yield discovery.resolve()), ["10.9.0.1", "10.9.0.2"])
        self.dns.set("app.test", ["10.9.0.1", "10.9.0.2", "10.9.0.3"])
        yield discovery.resolve()
        self.assertEqual([c[0] for c in node.connects], ["app@10.9.0.2=10.9.0.2:9100", "app@10.9.0.3=10.9.0.3:9100"])


class TapTests(TapOptionsMixin, SynchronousTestCase):
    """The twistd phoenix options of discovery and interest routing."""

    def parse(self, *argv: str) -> Any:
        return super().parse("--cookie", "k", *argv)

    def test_defaults(self) -> None:
        """Without options: routing on, a 5 s linger, 100,000 topics; no discovery."""
        options = self.parse("--name", "a@127.0.0.1")
        self.assertFalse(options["no-interest-routing"])
        self.assertEqual((options["interest-linger"], options["interest-max-topics"]), (5.0, 100_000))
        self.assertIsNone(options["discover"])

    def test_discovery_options(self) -> None:
        """--discover dns:NAME with a period and a name server."""
        options = self.parse("--name", "app@10.0.0.5", "--dist-port", "9100", "--discover", "dns:app.svc",
                             "--discover-interval", "2.5", "--discover-nameserver", "10.0.0.10:5353")
        self.assertEqual((options["discover"], options["discover-interval"], options["discover-nameserver"]),
                         ("app.svc", 2.5, ("10.0.0.10", 5353)))

    def test_discovery_refused(self) -> None:
        """A host that is not an address, no --dist-port, no --name, a bad period or name server are refused."""
        good = ["--dist-port", "9100", "--discover", "dns:app.svc"]
        for argv in (
            ["--name", "app@myhost", *good],
            ["--name", "app@10.0.0.5", "--discover", "dns:app.svc"],
            ["--discover", "dns:app.svc", "--dist-port", "9100"],
            ["--name", "app@10.0.0.5", *good, "--discover-interval", "0"],
            ["--name", "app@10.0.0.5", *good, "--discover-nameserver", "dns.example"],
            ["--name", "app@10.0.0.5", "--discover", "srv:app.svc", "--dist-port", "9100"],
            ["--name", "app@10.0.0.5", "--discover-nameserver", "10.0.0.10"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *argv)

    def test_routing_options(self) -> None:
        """--no-interest-routing, --interest-linger and --interest-max-topics; bad values refused."""
        options = self.parse("--name", "a@127.0.0.1", "--no-interest-routing", "--interest-linger", "0",
                             "--interest-max-topics", "10")
        self.assertTrue(options["no-interest-routing"])
        self.assertEqual((options["interest-linger"], options["interest-max-topics"]), (0.0, 10))
        for argv in (["--interest-linger", "-1"], ["--interest-max-topics", "0"], ["--interest-linger", "x"]):
            self.assertRaises(usage.UsageError, self.parse, "--name", "a@127.0.0.1", *argv)

    def test_make_service(self) -> None:
        """makeService gives the Node the routing options, and adds a DNSDiscovery with its resolver."""
        from twisted_phoenix import tap

        options = self.parse("--name", "app@10.0.0.5", "--dist-port", "9100", "--no-http", "--no-interest-routing",
                             "--interest-linger", "1.5", "--interest-max-topics", "7", "--discover", "dns:app.svc",
                             "--discover-nameserver", "127.0.0.1:5353", "--discover-interval", "3")
        top = tap.makeService(options)
        node = next(s.node for s in top if isinstance(s, tap.NodeService))
        self.assertEqual((node.interest_routing, node.max_interest_topics, node.announcer.interest.linger),
                         (False, 7, 1.5))
        discovery = next(s for s in top if isinstance(s, DNSDiscovery))
        self.assertIs(discovery.node, node)
        self.assertEqual((discovery.query, discovery.interval, discovery.port), ("app.svc", 3.0, 9100))
        self.assertIsInstance(discovery.resolver, DNSServerResolver)
        self.assertEqual(discovery.resolver.servers, [("127.0.0.1", 5353)])
        options = self.parse("--name", "app@10.0.0.5", "--dist-port", "9100", "--no-http", "--discover", "dns:x")
        from twisted.internet import reactor as global_reactor

        discovery = next(s for s in tap.makeService(options) if isinstance(s, DNSDiscovery))
        self.assertIs(discovery.resolver, global_reactor.nameResolver)
        self.assertTrue(next(s.node for s in tap.makeService(options) if isinstance(s, tap.NodeService)).interest_routing)



class LoopbackAliasTests(TestCase):
    """Nodes on loopback aliases (127.0.0.2, ...): not in the port mapper, reached by address, meshed."""

    def setUp(self) -> None:
        if not bindable("127.0.0.2"):
            raise SkipTest("this machine cannot bind loopback aliases (127.0.0.2)")
        self.mapper_port = free_port()
        self.logs = watch_logs(self, reactor)

    def test_learn_address(self) -> None:
        """Addresses of other hosts and of loopback aliases are kept; 127.0.0.1 ones are the mapper's."""
        from twisted_phoenix.cluster.node import Node
        from twisted_phoenix.pubsub import PubSub

        node = Node(Clock(), "me@127.0.0.1", cookie="c", pubsub=PubSub("me@127.0.0.1"))
        self.addCleanup(node.announcer.stop)
        node._learn_address("app@127.0.0.3", "127.0.0.3:9100")
        node._learn_address("b@127.0.0.1", "127.0.0.1:5000")
        node._learn_address("c@10.0.0.1", "10.0.0.1:9100")
        node._learn_address("d@127.0.0.4", "not an address")
        self.assertEqual(node._addresses, {"app@127.0.0.3": "127.0.0.3:9100", "c@10.0.0.1": "10.0.0.1:9100"})

    @defer.inlineCallbacks
    def test_aliases(self) -> Any:
        """Alias nodes skip the port mapper, link by address, and introduce each other."""
        from ._cluster import start_node, wait_until

        port = free_port()
        for _ in range(20):
            if all(bindable(f"127.0.0.{i}", port) for i in (2, 3, 4)):
                break
            port = free_port()
        nodes = []
        for i in (2, 3, 4):
            nodes.append((yield start_node(self, reactor, f"app@127.0.0.{i}", mapper_port=self.mapper_port,
                                           interface=f"127.0.0.{i}", port=port)))
        self.assertEqual(len(self.logs.find("is not registered with the port mapper")), 3)
        a, b, c = nodes
        self.assertTrue((yield b.connect(f"{a.name}=127.0.0.2:{port}")))
        # c knows only a; a's hello names b, whose address c keeps.
        self.assertTrue((yield c.connect(f"{a.name}=127.0.0.2:{port}")))
        yield wait_until(reactor, lambda: all(len(n.list()) == 2 for n in nodes), 10.0, what="full mesh")
        self.assertEqual(c.list(), [a.name, b.name])
