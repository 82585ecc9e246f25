"""
``twistd phoenix --pubsub redis://...``: the option, the node name, and how
makeService wires the Redis adapter (beside the cluster node, if any).
"""

from __future__ import annotations

import sys

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.adapters.redis import RedisAdapter
from twisted_phoenix.cluster import NO_NODE, Node, parse_node_name
from twisted_phoenix.tap import NodeService, Options, makeService

from .test_tap import isolate_environment, parse


def children(top: object, kind: type) -> list:
    return [child for child in top if isinstance(child, kind)]  # type: ignore[attr-defined]


class PubSubOptionTests(SynchronousTestCase):
    """The ``--pubsub`` option."""

    def setUp(self) -> None:
        isolate_environment(self)
        self.patch(sys, "path", sys.path[:])

    def test_default(self) -> None:
        """Without --pubsub there is no Redis and the name stays nonode@nohost."""
        options = parse()
        self.assertIsNone(options["redis"])
        self.assertEqual(options["name"], NO_NODE)

    def test_generated_name(self) -> None:
        """With --pubsub and no --name, the node gets a unique name and no cluster links."""
        one = parse("--pubsub", "redis://127.0.0.1:6390/2")
        two = parse("--pubsub", "redis://127.0.0.1:6390/2")
        self.assertFalse(one["cluster"])
        self.assertNotEqual(one["name"], two["name"])
        self.assertTrue(one["name"].startswith("phoenix-"))
        parse_node_name(one["name"])
        self.assertEqual((one["redis"].host, one["redis"].port, one["redis"].db), ("127.0.0.1", 6390, 2))

    def test_with_name(self) -> None:
        """With --name too, the node keeps its name and its cluster links."""
        options = parse("--pubsub", "redis://h", "--name", "a@127.0.0.1", "--cookie", "c")
        self.assertTrue(options["cluster"])
        self.assertEqual(options["name"], "a@127.0.0.1")

    def test_no_http(self) -> None:
        """--no-http needs a name or Redis; --connect still needs --name."""
        self.assertTrue(parse("--pubsub", "redis://h", "--no-http")["no-http"])
        self.assertRaises(usage.UsageError, parse, "--no-http")
        with self.assertRaises(usage.UsageError) as caught:
            parse("--pubsub", "redis://h", "--connect", "b@127.0.0.1")
        self.assertIn("--connect needs --name", str(caught.exception))

    def test_bad_url(self) -> None:
        """A malformed URL or a missing certificate file is a usage error naming --pubsub."""
        for url in ("http://h", "redis://u@h", "rediss://h?ssl_ca_certs=/nonexistent/ca.pem"):
            with self.assertRaises(usage.UsageError, msg=url) as caught:
                parse("--pubsub", url)
            self.assertIn("--pubsub", str(caught.exception))

    def test_help(self) -> None:
        """--help documents --pubsub, right after --connect."""
        text = str(Options())
        self.assertIn("through Redis", text)
        self.assertLess(text.index("--connect"), text.index("--pubsub"))


class PubSubServiceTests(SynchronousTestCase):
    """makeService with ``--pubsub``."""

    def setUp(self) -> None:
        isolate_environment(self)
        self.patch(sys, "path", sys.path[:])

    def test_redis_only(self) -> None:
        """The Redis adapter is the PubSub's adapter, named as the node; no cluster node."""
        options = parse("--pubsub", "redis://127.0.0.1:6390?prefix=app")
        top = makeService(options)
        (adapter,) = children(top, RedisAdapter)
        self.assertEqual(children(top, NodeService), [])
        self.assertIs(adapter.pubsub.adapter, adapter)
        self.assertEqual(adapter.name, options["name"])
        self.assertEqual(adapter.pubsub.node_name, options["name"])
        self.assertEqual(adapter.node_channel, f"app:n:{options['name']}".encode())

    def test_beside_cluster_node(self) -> None:
        """With --name, the cluster node runs too, but broadcasts go through Redis only."""
        top = makeService(parse("--pubsub", "redis://127.0.0.1:6390", "--name", "a@127.0.0.1", "--cookie", "c"))
        (node_service,) = children(top, NodeService)
        (adapter,) = children(top, RedisAdapter)
        self.assertIsInstance(node_service.node, Node)
        self.assertIs(node_service.node.pubsub.adapter, adapter)
        services = list(top)
        # Stopped in reverse: the endpoint (presence's goodbye) before Redis, Redis before the node.
        self.assertLess(services.index(node_service), services.index(adapter))
        self.assertEqual(type(services[services.index(adapter) + 1]).__name__, "EndpointService")
