"""
Tests for ``Endpoint.health_path`` and ``twistd phoenix --health``: a path
answered ``200 ok`` for load balancers' and orchestrators' health checks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from twisted_phoenix import Endpoint
from twisted_phoenix.endpoint import health_path_error
from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket
from twisted_phoenix.tap import Options, makeService

from ._client import connect, serve
from .test_static import request
from .test_tap import isolate_environment, listeners, parse


class HealthPathErrorTests(SynchronousTestCase):
    """:func:`health_path_error` accepts plain paths off the sockets' paths."""

    def test_accepted(self) -> None:
        """Plain absolute paths, under a mount too, are accepted."""
        mounts = ["/socket", "/rooms/:room"]
        for path in ("/health", "/healthz", "/internal/health", "/socket/health", "/-/ready"):
            self.assertIsNone(health_path_error(path, mounts), path)

    def test_notAPath(self) -> None:
        """Relative paths, empty segments, queries, escapes, colons and dot segments are refused."""
        for path in ("", "/", "health", "/health/", "//health", "/a//b", "/health?x=1", "/h#x", "/h%41",
                     "/:id", "/a b", "/a/../b", "/."):
            self.assertIsNotNone(health_path_error(path, []), path)

    def test_socketPaths(self) -> None:
        """A mount, a level above one, <mount>/websocket or /longpoll (or below), or a :param level are refused."""
        mounts = ["/socket", "/api/v1/socket", "/rooms/:room"]
        for path in ("/socket", "/socket/websocket", "/socket/longpoll", "/socket/websocket/x", "/api",
                     "/api/v1", "/api/v1/socket/longpoll", "/rooms", "/rooms/lobby", "/rooms/lobby/health"):
            problem = health_path_error(path, mounts)
            self.assertIsNotNone(problem, path)
            self.assertIn("socket at", problem)

    def test_rootMount(self) -> None:
        """Beside a socket mounted at /, only /websocket and /longpoll are taken."""
        self.assertIsNone(health_path_error("/health", ["/"]))
        self.assertIsNotNone(health_path_error("/websocket", ["/"]))
        self.assertIsNotNone(health_path_error("/longpoll", ["/"]))

    def test_treeRefusesBadPath(self) -> None:
        """An endpoint whose health_path collides with a socket cannot build its tree."""
        endpoint = type("Bad", (HelloSocketsEndpoint,), {"health_path": "/socket/websocket"})(reactor)
        self.assertRaises(ValueError, endpoint.resource)


class HealthServingTests(TestCase):
    """``health_path`` served by ``Endpoint.site()`` over real loopback HTTP."""

    def serve(self, **attributes: Any) -> int:
        cls = type("HealthEndpoint", (Endpoint,), {"sockets": {"/socket": UserSocket}, **attributes})
        return serve(self, cls(reactor)).port

    @defer.inlineCallbacks
    def test_ok(self) -> Any:
        """GET answers 200 ok, plain text, not cached; HEAD the same headers without a body."""
        port = self.serve(health_path="/health")
        response = yield request(self, port, "/health")
        self.assertEqual((response.status, response.body), (200, b"ok"))
        self.assertEqual(response.headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(response.headers["cache-control"], "no-store")
        head = yield request(self, port, "/health", "HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.headers["content-length"], "2")

    @defer.inlineCallbacks
    def test_onlyThatPath(self) -> Any:
        """Other methods get 405; paths below it, and everything without health_path, 404."""
        port = self.serve(health_path="/health")
        response = yield request(self, port, "/health", "POST", content_length="0")
        self.assertEqual((response.status, response.headers["allow"]), (405, "GET, HEAD"))
        for target in ("/health/x", "/health/", "/healthz"):
            response = yield request(self, port, target)
            self.assertEqual(response.status, 404, target)
        port = self.serve()
        response = yield request(self, port, "/health")
        self.assertEqual(response.status, 404)

    @defer.inlineCallbacks
    def test_nestedBesideStaticAndSocket(self) -> Any:
        """A nested path wins over a file of that name; the other files and the socket are still served."""
        directory = tempfile.mkdtemp(prefix="twisted_phoenix-health-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        os.makedirs(os.path.join(directory, "internal"))
        for name in ("health", "other.txt"):
            with open(os.path.join(directory, "internal", name), "w") as f:
                f.write(f"the file {name}")
        port = self.serve(health_path="/internal/health", static={"/": directory})
        response = yield request(self, port, "/internal/health")
        self.assertEqual((response.status, response.body), (200, b"ok"))
        response = yield request(self, port, "/internal/other.txt")
        self.assertEqual((response.status, response.body), (200, b"the file other.txt"))
        client = yield connect(reactor, port, test=self)
        joined = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(joined[4], {"response": {}, "status": "ok"})
        yield client.disconnect()

    @defer.inlineCallbacks
    def test_inOwnSite(self) -> Any:
        """``Endpoint.resource()`` in a site of one's own serves it too."""
        endpoint = type("HealthEndpoint", (Endpoint,), {"sockets": {"/socket": UserSocket}, "health_path": "/up"})(
            reactor
        )
        port = reactor.listenTCP(0, Site(endpoint.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        response = yield request(self, port.getHost().port, "/up")
        self.assertEqual((response.status, response.body), (200, b"ok"))


class HealthOptionTests(SynchronousTestCase):
    """``twistd phoenix --health PATH``."""

    def setUp(self) -> None:
        isolate_environment(self)

    def test_sets_endpoint(self) -> None:
        """``--health`` sets the served endpoint's health_path; without it, the class's holds."""
        site = listeners(makeService(parse("--health", "/health")))[0].factory
        self.assertEqual(site.endpoint.health_path, "/health")
        self.assertIn(b"health", site.web.resource.children)
        self.assertIsNone(HelloSocketsEndpoint.health_path)
        site = listeners(makeService(parse()))[0].factory
        self.assertIsNone(site.endpoint.health_path)
        self.assertNotIn(b"health", site.web.resource.children)

    def test_bad_path(self) -> None:
        """A path that is not one, or a socket's, is a usage error before anything listens."""
        for value, text in (("health", "a path such as /health"), ("/socket/websocket", "socket at '/socket'")):
            error = self.assertRaises(usage.UsageError, parse, "--health", value)
            self.assertIn("--health: ", str(error))
            self.assertIn(text, str(error))

    def test_bad_class_path(self) -> None:
        """An endpoint class whose own health_path collides is a usage error naming it."""
        from unittest import mock

        bad = type("Bad", (HelloSocketsEndpoint,), {"health_path": "/socket"})
        with mock.patch("twisted_phoenix.tap.load_endpoint_class", return_value=bad):
            error = self.assertRaises(usage.UsageError, parse)
        self.assertIn("socket at '/socket'", str(error))

    def test_no_http(self) -> None:
        """``--health`` with ``--no-http`` is a usage error: there is no port to answer on."""
        error = self.assertRaises(
            usage.UsageError, parse, "--health", "/health", "--no-http", "--name", "w@127.0.0.1", "--cookie", "c"
        )
        self.assertIn("--no-http", str(error))

    def test_help(self) -> None:
        """``--help`` lists --health after --metrics."""
        text = str(Options())
        self.assertLess(text.index("--metrics"), text.index("--health"))
        self.assertIn("200 ok", " ".join(text.split()))
