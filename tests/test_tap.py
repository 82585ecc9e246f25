"""
Tests for :mod:`twisted_phoenix.tap`, the ``twistd phoenix`` plugin.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from twisted_phoenix import Endpoint
from twisted_phoenix._textlog import TextLogObserver
from twisted_phoenix.cli import main as cli_main
from twisted_phoenix.config import DEV_SECRET_KEY_BASE
from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint
from twisted_phoenix.static import PHOENIX_JS_DIR
from twisted_phoenix.tap import (
    ENDPOINT_LIMITS,
    GC_THRESHOLDS,
    MIN_BACKLOG,
    ListeningService,
    Options,
    _twistd_log_path,
    default_backlog,
    load_endpoint_class,
    makeService,
    raise_file_limit,
    tune_gc,
    with_backlog,
)
from twisted_phoenix.transports.http import PhoenixSite

from ._client import HandshakeRefused, connect

ROOT = Path(__file__).resolve().parent.parent

SECRET = "x" * 64

#: Variables that change what Options resolve.
ENVIRONMENT = ("PORT", "SECRET_KEY_BASE", "PHOENIX_ENV")


class CustomEndpoint(Endpoint):
    """An app for the --endpoint tests."""


class Namespace:
    """Holds an endpoint class one attribute deeper."""

    Inner = CustomEndpoint


def isolate_environment(test: SynchronousTestCase, **values: str) -> None:
    """Run ``test`` with none of :data:`ENVIRONMENT` set except ``values``."""
    patcher = mock.patch.dict(os.environ)
    patcher.start()
    test.addCleanup(patcher.stop)
    for name in ENVIRONMENT:
        os.environ.pop(name, None)
    os.environ.update(values)


def parse(*argv: str) -> Options:
    """Parse ``argv`` as ``twistd phoenix`` options."""
    options = Options()
    options.parseOptions(list(argv))
    return options


def listeners(top: MultiService) -> list[ListeningService]:
    """The ListeningServices among the services makeService made."""
    return [child for child in top if isinstance(child, ListeningService)]


class OptionsTests(SynchronousTestCase):
    """
    ``twistd phoenix`` option parsing.
    """

    def setUp(self) -> None:
        isolate_environment(self)
        self.patch(sys, "path", sys.path[:])

    def test_defaults(self) -> None:
        """With nothing given, the demo is served on port 4000 in dev with the dev secret."""
        options = parse()
        self.assertEqual(options["listen"], ["tcp:4000"])
        self.assertIs(options["endpoint_class"], HelloSocketsEndpoint)
        self.assertEqual(options["env"], "dev")
        self.assertEqual(options["secret"], DEV_SECRET_KEY_BASE)
        self.assertEqual(options["name"], "nonode@nohost")

    def test_port_environment(self) -> None:
        """``PORT`` sets the port when ``--port`` is not given."""
        os.environ["PORT"] = "5001"
        self.assertEqual(parse()["listen"], ["tcp:5001"])

    def test_port_option_wins(self) -> None:
        """``--port`` overrides ``PORT``."""
        os.environ["PORT"] = "5001"
        self.assertEqual(parse("--port", "5002")["listen"], ["tcp:5002"])
        self.assertEqual(parse("-p", "5003")["listen"], ["tcp:5003"])

    def test_bad_port(self) -> None:
        """A port that is not a number from 0 to 65535 is a usage error."""
        for bad in ("http", "-1", "65536", "4000x", "٤٠٠٠"):
            self.assertRaises(usage.UsageError, parse, "--port", bad)
        os.environ["PORT"] = "abc"
        self.assertRaises(usage.UsageError, parse)

    def test_listen_repeatable(self) -> None:
        """``--listen`` may be given several times, and then ``--port`` and ``PORT`` are ignored."""
        os.environ["PORT"] = "5001"
        options = parse(
            "--port", "5002",
            "--listen", "tcp:4000:interface=127.0.0.1",
            "--listen", "ssl:4443:privateKey=key.pem:certKey=cert.pem",
        )
        self.assertEqual(
            options["listen"],
            ["tcp:4000:interface=127.0.0.1", "ssl:4443:privateKey=key.pem:certKey=cert.pem"],
        )

    def test_listen_not_shared(self) -> None:
        """Each Options instance has its own ``--listen`` list."""
        parse("--listen", "tcp:1")
        self.assertEqual(parse()["listen"], ["tcp:4000"])

    def test_endpoint(self) -> None:
        """``--endpoint package.module:Name`` loads that Endpoint class, dotted attributes included."""
        self.assertIs(parse("--endpoint", "tests.test_tap:CustomEndpoint")["endpoint_class"], CustomEndpoint)
        self.assertIs(parse("-e", "tests.test_tap:Namespace.Inner")["endpoint_class"], CustomEndpoint)

    def test_bad_endpoint(self) -> None:
        """An --endpoint that is malformed, missing or not an Endpoint class is a usage error."""
        for bad in (
            "tests.test_tap",
            "tests.test_tap:",
            ":CustomEndpoint",
            "tests.no_such_module:Endpoint",
            "tests.test_tap:NoSuchName",
            "tests.test_tap:Namespace.Missing",
            "tests.test_tap:Namespace",
            "tests.test_tap:SECRET",
        ):
            with self.assertRaises(usage.UsageError, msg=bad) as caught:
                parse("--endpoint", bad)
            self.assertIn(repr(bad), str(caught.exception))

    def test_endpoint_in_current_directory(self) -> None:
        """``--endpoint myapp:Endpoint`` finds ``myapp.py`` in the current directory, as the README says."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, directory)
        (directory / "tp_cwd_app.py").write_text(
            "from twisted_phoenix import Endpoint as Base\n\nclass Endpoint(Base):\n    pass\n"
        )
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        self.addCleanup(sys.modules.pop, "tp_cwd_app", None)
        sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
        endpoint_class = parse("--endpoint", "tp_cwd_app:Endpoint")["endpoint_class"]
        self.assertEqual(endpoint_class.__module__, "tp_cwd_app")
        self.assertTrue(issubclass(endpoint_class, Endpoint))

    def test_load_endpoint_class(self) -> None:
        """load_endpoint_class accepts the Endpoint base class and subclasses only."""
        self.assertIs(load_endpoint_class("twisted_phoenix:Endpoint"), Endpoint)
        self.assertRaises(usage.UsageError, load_endpoint_class, "twisted_phoenix:Socket")

    def test_prod_needs_secret(self) -> None:
        """``--env prod`` (or ``PHOENIX_ENV=prod``) without a secret is a usage error."""
        self.assertRaises(usage.UsageError, parse, "--env", "prod")
        os.environ["PHOENIX_ENV"] = "prod"
        self.assertRaises(usage.UsageError, parse)

    def test_prod_short_secret(self) -> None:
        """In prod a secret shorter than 64 characters is a usage error."""
        self.assertRaises(usage.UsageError, parse, "--env", "prod", "--secret-key-base", "x" * 63)

    def test_prod_with_secret(self) -> None:
        """In prod the secret comes from ``--secret-key-base`` or ``SECRET_KEY_BASE``."""
        options = parse("--env", "prod", "--secret-key-base", SECRET)
        self.assertEqual((options["env"], options["secret"]), ("prod", SECRET))
        os.environ.update(PHOENIX_ENV="prod", SECRET_KEY_BASE="y" * 64)
        options = parse()
        self.assertEqual((options["env"], options["secret"]), ("prod", "y" * 64))
        self.assertEqual(parse("--secret-key-base", SECRET)["secret"], SECRET)

    def test_unknown_env(self) -> None:
        """An environment other than dev, test or prod is a usage error."""
        self.assertRaises(usage.UsageError, parse, "--env", "staging")

    def test_name(self) -> None:
        """``--name`` sets the node name."""
        self.assertEqual(parse("--name", "a@127.0.0.1", "--cookie", "c")["name"], "a@127.0.0.1")

    def test_help_documents_every_option(self) -> None:
        """``twistd phoenix --help`` names every option and environment variable."""
        text = str(Options())
        for option in ("--port", "-p,", "--listen", "--endpoint", "-e,", "--name", "--secret-key-base", "--env"):
            self.assertIn(option, text)
        for variable in ENVIRONMENT:
            self.assertIn(variable, text)
        self.assertIn("ssl:4443:privateKey=key.pem:certKey=cert.pem", text)
        self.assertIn("ws://localhost:4000/socket/websocket", text)


class StaticAndHostTests(SynchronousTestCase):
    """
    ``--static``, ``--host`` and ``--env`` reach the endpoint.
    """

    def setUp(self) -> None:
        isolate_environment(self)
        self.directory = tempfile.mkdtemp(prefix="twisted_phoenix-tap-static-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)

    def endpoint(self, *argv: str) -> Endpoint:
        return listeners(makeService(parse(*argv)))[0].factory.endpoint

    def test_static(self) -> None:
        """``--static DIR`` serves DIR at / (made absolute at parse time), phoenix.js beside it."""
        relative = os.path.relpath(self.directory)
        options = parse("--static", relative)
        self.assertEqual(options["static"], self.directory)
        endpoint = self.endpoint("--static", relative)
        self.assertEqual(endpoint.static, {"/": self.directory})
        self.assertEqual(endpoint.static_directories(), {"/": self.directory, "/phoenix": PHOENIX_JS_DIR})
        self.assertEqual(HelloSocketsEndpoint.static, {})

    def test_staticAddsToEndpoints(self) -> None:
        """``--static`` replaces the endpoint class's / and keeps its other prefixes."""

        class WithAssets(Endpoint):
            static = {"/": ".", "/assets": "."}

        with mock.patch("twisted_phoenix.tap.load_endpoint_class", return_value=WithAssets):
            endpoint = self.endpoint("--static", self.directory)
        self.assertEqual(endpoint.static, {"/": self.directory, "/assets": "."})

    def test_noStatic(self) -> None:
        """Without ``--static`` the endpoint's own static files (none for the demo) are served."""
        self.assertIsNone(parse()["static"])
        self.assertEqual(self.endpoint().static_directories(), {})

    def test_badStatic(self) -> None:
        """``--static`` of something that is not a directory is a usage error."""
        for path in (os.path.join(self.directory, "missing"), __file__):
            error = self.assertRaises(usage.UsageError, parse, "--static", path)
            self.assertIn("--static takes a directory", str(error))

    def test_endpointStaticChecked(self) -> None:
        """An endpoint class whose static directory does not exist is a usage error."""

        class Broken(Endpoint):
            static = {"/": "no such directory"}

        with mock.patch("twisted_phoenix.tap.load_endpoint_class", return_value=Broken):
            error = self.assertRaises(usage.UsageError, parse)
        self.assertIn("is not a directory", str(error))

    def test_host(self) -> None:
        """``--host`` sets the endpoint's host: lower-cased, IPv6 without brackets."""
        self.assertEqual(self.endpoint().host, "localhost")
        self.assertEqual(self.endpoint("--host", "Chat.Example.COM").host, "chat.example.com")
        self.assertEqual(self.endpoint("--host", "127.0.0.1").host, "127.0.0.1")
        self.assertEqual(self.endpoint("--host", "[::1]").host, "::1")

    def test_badHost(self) -> None:
        """A scheme, port, path or nothing is not a host."""
        for value in ("", "http://example.com", "example.com:4000", "example.com/", "a b", "user@host"):
            error = self.assertRaises(usage.UsageError, parse, "--host", value)
            self.assertIn("--host takes a host name", str(error))

    def test_env(self) -> None:
        """``--env`` (default dev) is the endpoint's env."""
        self.assertEqual(self.endpoint().env, "dev")
        self.assertEqual(self.endpoint("--env", "test").env, "test")
        self.assertEqual(self.endpoint("--env", "prod", "--secret-key-base", SECRET).env, "prod")

    def test_help(self) -> None:
        """``--help`` documents --static and --host right after --listen."""
        text = str(Options())
        names = re.findall(r"^  (?:-\w, |    )--([\w-]+)", text, re.MULTILINE)
        self.assertEqual(names[:6], ["port", "endpoint", "listen", "static", "host", "env"])
        self.assertIn("phoenix.js at /phoenix/phoenix.js", " ".join(text.split()))


class PluginTests(SynchronousTestCase):
    """
    ``twistd_plugins/phoenix.py``, which setup.py installs into ``twisted/plugins``.
    """

    def test_service_maker(self) -> None:
        """The plugin names the ``phoenix`` subcommand and twisted_phoenix.tap."""
        path = ROOT / "twistd_plugins" / "phoenix.py"
        spec = importlib.util.spec_from_file_location("_phoenix_plugin", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        maker = module.phoenix
        self.assertTrue(IServiceMaker.providedBy(maker))
        self.assertEqual(maker.tapname, "phoenix")
        self.assertIs(maker.options, Options)
        self.assertIs(maker.makeService, makeService)

    def test_no_package_init(self) -> None:
        """twistd_plugins has no __init__.py: one would hide every other Twisted plugin."""
        self.assertFalse((ROOT / "twistd_plugins" / "__init__.py").exists())


class LimitOptionsTests(SynchronousTestCase):
    """
    The options that set the listen backlog, the endpoint's limits and the
    log rotation.
    """

    def setUp(self) -> None:
        isolate_environment(self)

    def test_backlogDefault(self) -> None:
        """The backlog is the larger of 1024 and net.core.somaxconn."""
        # (Not self.mktemp(): under pytest it makes directories in the
        # current one, the repository.)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "somaxconn")
        for written, expected in (("4096\n", 4096), ("128", MIN_BACKLOG), ("junk", MIN_BACKLOG)):
            with open(path, "w") as f:
                f.write(written)
            self.assertEqual(default_backlog(path), expected)
        self.assertEqual(default_backlog(path + ".missing"), MIN_BACKLOG)
        self.assertEqual(parse()["backlog"], default_backlog())
        self.assertEqual(parse("--backlog", "77")["backlog"], 77)
        for bad in ("0", "-1", "x"):
            self.assertRaises(usage.UsageError, parse, "--backlog", bad)

    def test_withBacklog(self) -> None:
        """backlog=N is added to stream descriptions that have none."""
        self.assertEqual(with_backlog("tcp:4000", 9), "tcp:4000:backlog=9")
        self.assertEqual(with_backlog("ssl:443:privateKey=k.pem", 9), "ssl:443:privateKey=k.pem:backlog=9")
        self.assertEqual(with_backlog("unix:/tmp/s", 9), "unix:/tmp/s:backlog=9")
        self.assertEqual(with_backlog("tcp:4000:backlog=3", 9), "tcp:4000:backlog=3")
        self.assertEqual(with_backlog("systemd:domain=INET:index=0", 9), "systemd:domain=INET:index=0")

    def test_listensWithBacklog(self) -> None:
        """makeService's listeners listen with the backlog."""
        reactor = MemoryReactor()
        factory = Site(HelloSocketsEndpoint(reactor).resource())
        ListeningService(reactor, "tcp:4321:interface=127.0.0.1", factory, 2048).startService()
        self.assertEqual(reactor.tcpServers, [(4321, factory, 2048, "127.0.0.1")])
        self.assertEqual([child.backlog for child in listeners(makeService(parse("--backlog", "99")))], [99])

    def test_endpointLimits(self) -> None:
        """Each limit option sets its Endpoint attribute; without it, the class's value holds."""
        values = {
            "max-connections": ("max_connections", "500", 500),
            "max-lag": ("max_lag", "65536", 65536),
            "max-frame-size": ("max_frame_size", "2048", 2048),
            "handshake-timeout": ("handshake_timeout", "2.5", 2.5),
            "max-header-bytes": ("max_header_bytes", "4096", 4096),
            "handshakes-per-turn": ("handshakes_per_turn", "8", 8),
            "event-rate": ("event_rate", "50", 50.0),
            "event-burst": ("event_burst", "60", 60.0),
            "join-rate": ("join_rate", "none", None),
            "join-burst": ("join_burst", "10", 10.0),
        }
        self.assertEqual(sorted(values), sorted(option for option, _, _, _ in ENDPOINT_LIMITS))
        argv = [item for option, (_, text, _) in values.items() for item in (f"--{option}", text)]
        site = listeners(makeService(parse(*argv)))[0].factory
        for option, (attribute, _, value) in values.items():
            self.assertEqual(getattr(site.endpoint, attribute), value, option)
        self.assertEqual(site.max_connections, 500)
        self.assertEqual(site.handshakes_per_turn, 8)
        default = listeners(makeService(parse()))[0].factory.endpoint
        self.assertEqual(default.max_lag, Endpoint.max_lag)
        self.assertNotIn("max_lag", vars(default))
        for option in values:
            for bad in ("0", "-3", "lots"):
                self.assertRaises(usage.UsageError, parse, f"--{option}", bad)

    def test_presenceOptions(self) -> None:
        """The presence options reach the endpoint's tracker; impossible combinations are usage errors."""
        options = parse("--presence-broadcast", "0.5", "--presence-down", "5", "--presence-permdown", "60")
        endpoint_class = options["endpoint_class"]
        self.assertTrue(issubclass(endpoint_class, HelloSocketsEndpoint))
        self.assertEqual(endpoint_class.__name__, "HelloSocketsEndpoint")
        self.assertEqual(HelloSocketsEndpoint.presence_options, {})  # the app's class is left alone
        endpoint = listeners(makeService(options))[0].factory.endpoint
        tracker = endpoint.presence.tracker
        self.assertEqual(
            (tracker.broadcast_period, tracker.down_period, tracker.permdown_period, tracker.max_silent_periods),
            (0.5, 5.0, 60.0, 10),
        )
        self.assertIs(parse()["endpoint_class"], HelloSocketsEndpoint)
        self.assertRaises(usage.UsageError, parse, "--presence-down", "1", "--presence-broadcast", "1")
        self.assertRaises(usage.UsageError, parse, "--presence-permdown", "10")
        self.assertRaises(usage.UsageError, parse, "--presence-down", "soon")

    def test_helpShowsDefaults(self) -> None:
        """--help shows each limit's default, in order of importance (port first)."""
        text = Options().getUsage()
        self.assertIn("(1013). [default: 1048576]", " ".join(text.split()))
        names = re.findall(r"^  (?:-\w, |    )--([\w-]+)", text, re.MULTILINE)
        self.assertEqual(names[:7], ["port", "endpoint", "listen", "static", "host", "env", "secret-key-base"])
        self.assertEqual(sorted(names), sorted(set(names)))
        self.assertEqual(names[-2:], ["version", "help"])

    def test_version(self) -> None:
        """--version prints twisted_phoenix's version and exits."""
        from twisted_phoenix import __version__

        output = io.StringIO()
        self.patch(sys, "stdout", output)
        with self.assertRaises(SystemExit) as raised:
            parse("--version")
        self.assertEqual(raised.exception.code, 0)
        self.assertTrue(output.getvalue().startswith(f"twisted_phoenix {__version__} (Twisted "))

    def _twistd(self, *argv: str) -> Any:
        # twistd's own options, as the parent of ours (a plugin's options
        # see twistd's through .parent).
        from twisted.scripts.twistd import ServerOptions

        twistd = ServerOptions()
        twistd.parseOptions(list(argv))
        options = Options()
        options.parent = twistd
        options.parseOptions(["--port", "0"])
        return options

    def test_logRotationBounded(self) -> None:
        """With a log file, the application gets an observer keeping at most --log-max-files files."""
        from twisted.application.service import Application

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "server.log")
        options = self._twistd("--logfile", path)
        options["log-max-bytes"] = 100
        options["log-max-files"] = 2
        application = Application("phoenix")
        makeService(options).setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsNotNone(observer)
        for n in range(30):
            observer({"log_format": "line {n} " + "x" * 40, "n": n, "log_time": 0.0, "log_level": LogLevel.info})
        names = sorted(os.listdir(os.path.dirname(path)))
        self.assertEqual(names, ["server.log", "server.log.1", "server.log.2"])

    def test_stdoutObserver(self) -> None:
        """In the foreground without --logfile, the application logs to standard output with our observer."""
        from twisted.application.service import Application

        application = Application("phoenix")
        makeService(self._twistd("--nodaemon")).setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        self.assertIsInstance(observer, TextLogObserver)
        self.assertIs(observer.out, sys.stdout)
        self.assertEqual(_twistd_log_path(self._twistd()), "twistd.log")
        self.assertEqual(_twistd_log_path(self._twistd("--nodaemon", "--logfile", "-")), "-")

    def test_otherLoggersKept(self) -> None:
        """With --syslog or --logger, twistd's choice stays."""
        from twisted.application.service import Application

        for argv in (("--syslog",), ("--logger", "twisted.logger.jsonFileLogObserver")):
            self.assertIsNone(_twistd_log_path(self._twistd(*argv)))
            application = Application("phoenix")
            makeService(self._twistd(*argv)).setServiceParent(application)
            self.assertIsNone(application.getComponent(ILogObserver))

    def test_gcThresholds(self) -> None:
        """--gc-threshold sets the collector's thresholds; everything alive at start is frozen."""
        import gc

        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        self.assertEqual(parse()["gc-threshold"], GC_THRESHOLDS)
        self.assertEqual(parse("--gc-threshold", "1000,5,7")["gc-threshold"], (1000, 5, 7))
        for bad in ("1000", "a,b,c", "1,2,3,4", "-1,2,3"):
            self.assertRaises(usage.UsageError, parse, "--gc-threshold", bad)
        reactor = MemoryReactor()
        tune_gc(reactor, (1234, 5, 6))
        self.assertEqual(gc.get_threshold(), (1234, 5, 6))
        self.assertEqual([call[0] for call in reactor.whenRunningHooks], [gc.freeze])

    def test_raiseFileLimit(self) -> None:
        """The soft open-file limit is raised to the hard limit."""
        limits: list[tuple[int, int]] = [(1024, 4096)]
        self.patch(resource, "getrlimit", lambda which: limits[-1])
        self.patch(resource, "setrlimit", lambda which, value: limits.append(value))
        self.assertEqual(raise_file_limit(), (1024, 4096))
        self.assertEqual(limits[-1], (4096, 4096))
        self.assertEqual(raise_file_limit(), (4096, 4096))


class MakeServiceTests(SynchronousTestCase):
    """
    :func:`makeService` and :class:`ListeningService`, in memory.
    """

    def setUp(self) -> None:
        isolate_environment(self)

    def test_one_listener_per_listen(self) -> None:
        """makeService serves one Site on every --listen description."""
        options = parse("--listen", "tcp:0:interface=127.0.0.1", "--listen", "tcp:0:interface=::1")
        top = makeService(options)
        self.assertIsInstance(top, MultiService)
        children = listeners(top)
        self.assertEqual(
            [child.description for child in children],
            ["tcp:0:interface=127.0.0.1", "tcp:0:interface=::1"],
        )
        for child in children:
            self.assertIsInstance(child, ListeningService)
            self.assertTrue(IService.providedBy(child))
            self.assertIsInstance(child.factory, PhoenixSite)
        self.assertIs(children[0].factory, children[1].factory)

    def test_site_serves_sockets(self) -> None:
        """The site of the default app serves ``/socket/websocket`` and ``/auth_socket/websocket``."""
        site = listeners(makeService(parse()))[0].factory
        self.assertEqual(sorted(site.endpoint.websocket_factories()), ["/auth_socket", "/socket"])
        root = site.web.resource
        for mount in (b"socket", b"auth_socket"):
            self.assertIn(b"websocket", root.children[mount].children)
        self.assertFalse(site.noisy)
        self.assertFalse(site.web.noisy)

    def test_listens_while_running(self) -> None:
        """A ListeningService listens when started, logs its port, and stops listening when stopped."""
        reactor = MemoryReactor()
        factory = Site(HelloSocketsEndpoint(reactor).resource())
        service = ListeningService(reactor, "tcp:4321:interface=127.0.0.1", factory)
        events: list[dict[str, Any]] = []
        service.log = Logger(observer=events.append)
        service.startService()
        self.assertEqual(reactor.tcpServers, [(4321, factory, 50, "127.0.0.1")])
        self.assertEqual([e["port"] for e in events], [4321])
        self.assertEqual(events[0]["description"], "tcp:4321:interface=127.0.0.1")
        self.assertIsNone(self.successResultOf(defer.maybeDeferred(service.stopService)))
        self.assertFalse(service.running)

    def test_cannot_listen(self) -> None:
        """When the port cannot be bound, the failure is logged and the reactor stopped."""

        class Refusing(MemoryReactor):
            def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
                raise CannotListenError(interface, port, OSError("in use"))

        reactor = Refusing()
        reactor.running = True
        service = ListeningService(reactor, "tcp:4000", Site(HelloSocketsEndpoint(reactor).resource()))
        events: list[dict[str, Any]] = []
        service.log = Logger(observer=events.append)
        service.startService()
        self.assertTrue(reactor.hasStopped)
        self.assertEqual(len(events), 1)
        self.assertTrue(events[0]["log_failure"].check(CannotListenError))
        self.assertIsNone(service.stopService())
        # Once shut down, the process will end with status 1.
        self.assertEqual(len(reactor.triggers["after"]["shutdown"]), 1)

    def test_cannot_listen_before_running(self) -> None:
        """twistd starts services before the reactor runs: a failure then stops it as soon as it runs."""

        class Refusing(MemoryReactor):
            def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
                raise CannotListenError(interface, port, OSError("in use"))

        reactor = Refusing()
        service = ListeningService(reactor, "tcp:4000", Site(HelloSocketsEndpoint(reactor).resource()))
        service.log = Logger(observer=lambda event: None)
        service.startService()
        self.assertFalse(reactor.hasStopped)
        reactor.run()  # runs the callWhenRunning hooks
        self.assertTrue(reactor.hasStopped)


class _Tracking(WrappingFactory):
    """Knows the server's open connections, to close them all in cleanup."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.idle: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self.idle = self.idle, []
            for d in waiting:
                d.callback(None)

    def close_all(self, reactor: Any) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.idle.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d.addTimeout(5, reactor)


class ServeTests(TestCase):
    """
    ``makeService`` serving for real on loopback, with the real reactor.
    """

    timeout = 30

    def setUp(self) -> None:
        isolate_environment(self)
        from twisted.internet import reactor

        self.reactor = reactor

    def serve(self, *argv: str) -> int:
        """Start makeService's service on a free loopback port; stopped in cleanup."""
        top = makeService(parse("--listen", "tcp:0:interface=127.0.0.1", *argv))
        (child,) = listeners(top)
        tracking = child.factory = _Tracking(child.factory)
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "twisted_phoenix.tap.ListeningService":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        try:
            top.startService()
        finally:
            globalLogPublisher.removeObserver(observe)

        @defer.inlineCallbacks
        def stop() -> Any:
            yield top.stopService()
            yield tracking.close_all(self.reactor)

        self.addCleanup(stop)
        (event,) = events
        self.assertEqual(event["description"], "tcp:0:interface=127.0.0.1")
        return int(event["port"])

    @defer.inlineCallbacks
    def test_websocket_ping(self) -> Any:
        """``twistd phoenix`` serves the demo: the README's join and ping over a real WebSocket."""
        port = self.serve()
        client = yield connect(self.reactor, port, query="vsn=2.0.0", test=self)
        joined = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(joined, ["1", "1", "ping", "phx_reply", {"response": {}, "status": "ok"}])
        pong = yield client.request(["1", "2", "ping", "ping", {}])
        self.assertEqual(pong, ["1", "2", "ping", "phx_reply", {"response": {"ping": "pong"}, "status": "ok"}])
        yield client.disconnect()

    @defer.inlineCallbacks
    def test_auth_socket_with_cli_token(self) -> Any:
        """A ``twisted-phoenix token`` made with the server's secret opens /auth_socket; another is refused."""
        import io

        port = self.serve("--secret-key-base", SECRET)
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli_main(["token", "42", "--secret-key-base", SECRET], out, err), 0)
        token = out.getvalue().strip()
        client = yield connect(
            self.reactor, port, path="/auth_socket/websocket", query=f"vsn=2.0.0&token={token}", test=self
        )
        joined = yield client.request(["1", "1", "user:42", "phx_join", {}])
        self.assertEqual(joined, ["1", "1", "user:42", "phx_reply", {"response": {}, "status": "ok"}])
        yield client.disconnect()

        out = io.StringIO()
        self.assertEqual(cli_main(["token", "42"], out, io.StringIO()), 0)  # the dev secret
        refused = yield self.assertFailure(
            connect(
                self.reactor, port, path="/auth_socket/websocket",
                query=f"vsn=2.0.0&token={out.getvalue().strip()}", test=self,
            ),
            HandshakeRefused,
        )
        self.assertEqual(refused.status, 403)
