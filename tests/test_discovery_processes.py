"""
DNS discovery end to end: ``twistd -n phoenix`` nodes on loopback aliases
(``app@127.0.0.2``, ``app@127.0.0.3``, ...; on Linux all of 127/8 is
loopback), each with ``--dist-interface`` its own address and the same
``--dist-port``, as pods of a Kubernetes headless service are, and a DNS
server in this process that answers their addresses
(``--discover-nameserver``).  They find each other, a broadcast crosses, and
a node added to the name later is found too.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, TestCase

from ._client import connect
from ._cluster import COOKIE, bindable, free_port
from ._dns import DNSServer
from ._server import ServerProcess, start_server

#: Bound on any one wait.
TIMEOUT = 30.0

NODE_READY = "listening for cluster links"

NAME = "app.phoenix.test"


class DiscoveryProcessTests(TestCase):
    """Nodes that know only a DNS name find each other."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if not bindable("127.0.0.2", 0):
            raise SkipTest("this machine cannot bind loopback aliases (127.0.0.2)")
        # One link port for every node, as every pod of a service has:
        # free on each of their addresses.
        for _ in range(20):
            self.dist_port = free_port()
            if all(bindable(f"127.0.0.{i}", self.dist_port) for i in range(2, 6)):
                break
        self.env = {"PHOENIX_EPMD_PORT": str(free_port()), "PHOENIX_COOKIE": COOKIE}
        self.dns = DNSServer(reactor)
        self.addCleanup(self.dns.stop)
        yield self.dns.start()

    def start(self, host: str) -> defer.Deferred[ServerProcess]:
        """The node app@<host>: links on host:dist_port, HTTP on 127.0.0.1, discovery through our DNS."""
        return start_server(
            self, "--name", f"app@{host}", "--dist-interface", host, "--dist-port", str(self.dist_port),
            "--discover", f"dns:{NAME}", "--discover-interval", "0.5",
            "--discover-nameserver", f"127.0.0.1:{self.dns.port}",
            env=self.env, ready=NODE_READY, name=host, timeout=TIMEOUT,
        )

    def wait_log(self, server: ServerProcess, *texts: str) -> defer.Deferred[Any]:
        return server.child.wait_for_output(
            lambda out: all(t in out for t in texts), TIMEOUT, f"{texts} in the log of {server.child.name}"
        )

    def linked(self, servers: dict[str, ServerProcess]) -> defer.Deferred[Any]:
        """Fire once every node has logged a link to every other."""
        return defer.gatherResults([
            self.wait_log(server, *(f"Node app@{other} connected to app@{host}" for other in servers if other != host))
            for host, server in servers.items()
        ])

    @defer.inlineCallbacks
    def test_discovery(self) -> Any:
        """Three nodes behind one DNS name link to each other; a broadcast crosses; a fourth is found later."""
        hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        self.dns.set(NAME, hosts)
        servers = dict(zip(hosts, (yield defer.gatherResults([self.start(h) for h in hosts]))))
        yield self.linked(servers)
        for server in servers.values():
            self.assertIn("is not registered with the port mapper", server.output())
            self.assertNotIn("Traceback", server.output())

        # A broadcast from a client of one node reaches a client of another.
        listener = yield connect(reactor, servers["127.0.0.2"].port, test=self)
        reply = yield listener.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(reply[3:], ["phx_reply", {"response": {}, "status": "ok"}])
        talker = yield connect(reactor, servers["127.0.0.4"].port, test=self)
        yield talker.request(["1", "1", "ping", "phx_join", {}])
        talker.send_json(["1", "2", "ping", "broadcast", {"hello": "from .4"}])
        data, _ = yield listener.next_frame(TIMEOUT)
        self.assertEqual(orjson.loads(data), [None, None, "ping", "broadcast", {"hello": "from .4"}])

        # Scale up: a fourth address in the answer; every node links to it.
        self.dns.set(NAME, [*hosts, "127.0.0.5"])
        servers["127.0.0.5"] = yield self.start("127.0.0.5")
        yield self.linked(servers)
        yield self.wait_log(servers["127.0.0.2"], f"DNS name {NAME}: 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5")
