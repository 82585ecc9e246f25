"""
Tests for ``twistd phoenix --metrics``: the option, and a real server's
``/metrics`` scraped over loopback.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from twisted_phoenix.tap import ListeningService, MetricsService, Options, makeService

from ._client import connect
from ._server import start_server
from .test_tap import isolate_environment

#: Logged by ``MetricsService`` once its port is bound.
_METRICS = re.compile(r"twisted_phoenix metrics on (?P<description>.*?) port=(?P<port>\d+)")


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class MetricsOptionTests(SynchronousTestCase):
    """``--metrics``: parsed, checked, and a service of its own."""

    def setUp(self) -> None:
        isolate_environment(self)
        self.patch(sys, "path", sys.path[:])

    def test_default(self) -> None:
        """Without --metrics there is no metrics service."""
        top = makeService(parse())
        self.assertFalse([s for s in top if isinstance(s, MetricsService)])

    def test_service(self) -> None:
        """--metrics adds a listener of its own for the endpoint's metrics, after the clients' listeners."""
        top = makeService(parse("--metrics", "tcp:9100:interface=127.0.0.1"))
        services = [s for s in top if isinstance(s, ListeningService)]
        self.assertIsInstance(services[-1], MetricsService)
        metrics = services[-1]
        self.assertEqual(metrics.description, "tcp:9100:interface=127.0.0.1")
        clients = services[0].factory
        self.assertIsNot(metrics.factory, clients)
        self.assertIn(b"metrics", metrics.factory.resource.children)
        # The clients' site does not serve the metrics.
        self.assertNotIn(b"metrics", clients.web.resource.children)

    def test_listensWhereTold(self) -> None:
        """The metrics service listens on the description it was given, apart from the clients."""
        memory = MemoryReactor()
        top = makeService(parse("--metrics", "tcp:9100:interface=127.0.0.1"))
        service = [s for s in top if isinstance(s, MetricsService)][0]
        service.reactor = memory
        service.startService()
        self.addCleanup(service.stopService)
        port, factory, _, interface = memory.tcpServers[0]
        self.assertEqual((port, interface), (9100, "127.0.0.1"))

    def test_needsPrometheusClient(self) -> None:
        """Without prometheus-client, --metrics is a usage error that says what to install."""
        real = importlib.util.find_spec
        self.patch(importlib.util, "find_spec", lambda name, *a: None if name == "prometheus_client" else real(name, *a))
        with self.assertRaises(usage.UsageError) as caught:
            parse("--metrics", "tcp:9100")
        self.assertIn("twisted_phoenix[metrics]", str(caught.exception))
        parse()  # no --metrics, no need

    def test_help(self) -> None:
        """--help lists --metrics with an example."""
        text = str(Options())
        self.assertIn("--metrics", text)
        self.assertIn("tcp:9100:interface=127.0.0.1", text)


def get(url: str, test: TestCase, accept: str | None = None) -> defer.Deferred[tuple[int, dict[str, Any], bytes]]:
    """GET ``url`` (bounded); fires with ``(code, headers, body)``."""
    from twisted.web.http_headers import Headers

    pool = HTTPConnectionPool(reactor, persistent=False)
    test.addCleanup(pool.closeCachedConnections)
    agent = Agent(reactor, pool=pool)
    headers = Headers({b"accept": [accept.encode()]}) if accept else None
    d = agent.request(b"GET", url.encode(), headers)

    def got(response: Any) -> Any:
        return readBody(response).addCallback(lambda body: (response.code, response.headers, body))

    return d.addCallback(got).addTimeout(20, reactor)


class MetricsServerTests(TestCase):
    """A real ``twistd -n phoenix --metrics tcp:0``, scraped over loopback."""

    @defer.inlineCallbacks
    def test_scrape(self) -> None:
        """/metrics on the metrics port reports a connected, joined client; the clients' port does not serve it."""
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError as e:  # pragma: no cover
            raise self.skipTest(f"needs prometheus-client: {e}")
        server = yield start_server(
            self, "--metrics", "tcp:0:interface=127.0.0.1", ready="twisted_phoenix metrics on"
        )
        match = _METRICS.search(server.output())
        self.assertIsNotNone(match, server.output())
        metrics_port = int(match.group("port"))  # type: ignore[union-attr]
        self.assertNotIn(metrics_port, server.ports)

        client = yield connect(reactor, server.ports[0], test=self)
        yield client.join_and_ping()
        code, headers, body = yield get(f"http://127.0.0.1:{metrics_port}/metrics", self)
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        socket = frozenset({("socket", "UserSocket"), ("transport", "websocket")})
        found = {k: v for k, v in samples.items() if k[0] == "phoenix_connections"}
        self.assertEqual(found.get(("phoenix_connections", socket)), 1, found)
        self.assertEqual(samples["phoenix_messages_received_total", frozenset({("kind", "join")})], 1)
        self.assertEqual(samples["phoenix_messages_received_total", frozenset({("kind", "event")})], 1)
        self.assertEqual(samples["phoenix_messages_sent_total", frozenset({("kind", "reply")})], 2)
        self.assertGreater(samples["process_resident_memory_bytes", frozenset()], 0)

        yield client.disconnect()
        code, _, body = yield get(f"http://127.0.0.1:{metrics_port}/metrics", self)
        self.assertIn(b'phoenix_connections{socket="UserSocket",transport="websocket"} 0.0', body)

        code, _, _ = yield get(f"http://127.0.0.1:{server.ports[0]}/metrics", self)
        self.assertEqual(code, 404)
