"""
The deployment guide's configurations (``docs/deployment/``, shown in
``docs/deployment.rst`` with ``literalinclude``), run for real: the systemd
units' command lines start real ``twistd phoenix`` servers, and real nginx
and HAProxy, with the guide's files adapted only in ports and paths, stand
in front of them while the real phoenix.js under Node talks through them
(WebSocket and long-poll, over TLS, with a browser's ``Origin``); the
container's command and health check, the Kubernetes arguments and the
cluster CA script run too.

Nothing is installed here.  Without ``nginx`` (Debian: ``nginx-light``),
``haproxy``, ``systemd-analyze`` (``systemd``) or ``openssl`` their tests
are skipped, saying so; with ``CI`` set they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ._client import HandshakeRefused, connect
from ._cluster import ClusterPKI, free_port, wait_until
from ._server import (
    TEST_SECRET,
    ChildFailed,
    ChildProcess,
    ServerProcess,
    require_node_modules,
    require_program,
    run_node_scenario,
    start_server,
)
from .test_static import request

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = ROOT / "docs" / "deployment"

#: The public host name of the guide's examples; its pages' origin.
HOST = "chat.example.com"
ORIGIN = f"https://{HOST}"

#: An X-Forwarded-For the client sends itself: the proxy adds the client's address after it.
FORGED = "203.0.113.9"

#: What every wait for a child may take, on a busy machine.
TIMEOUT = 30.0

_METRICS = re.compile(r"twisted_phoenix metrics on .*? port=(?P<port>\d+)")


# -- the guide's files ---------------------------------------------------------------


def guide_file(name: str) -> str:
    """The text of ``docs/deployment/NAME``."""
    return (DEPLOYMENT / name).read_text(encoding="utf-8")


def adapt(text: str, name: str, replacements: dict[str, str]) -> str:
    """
    ``text`` with each key replaced by its value; each key must be there,
    so that the guide cannot change under the test unnoticed.
    """
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"docs/deployment/{name} no longer contains {old!r}: update tests/test_deployment.py")
        text = text.replace(old, new)
    return text


def exec_start(unit: str) -> list[str]:
    """The ``ExecStart=`` command line of a unit file, split as systemd does (continuation lines joined)."""
    lines = unit.replace("\\\n", " ").splitlines()
    (line,) = [line for line in lines if line.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart="):])


def environment_file(text: str) -> dict[str, str]:
    """The ``NAME=value`` lines of an ``EnvironmentFile``."""
    pairs = [line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {name.strip(): value.strip() for name, value in pairs}


def phoenix_options(argv: list[str], name: str) -> tuple[list[str], list[str]]:
    """
    The ``twistd phoenix`` options of a command line of the guide's
    (``twistd -n --pidfile= phoenix ...``), adapted: the application is
    ``tests._deploy_app`` (for ``myapp``) and ``--metrics`` listens on a
    free port.  Returns ``(options, listen)``: the ``--listen`` values
    apart, for :func:`start_server`.
    """
    if os.path.basename(argv[0]) != "twistd" or argv[1:4] != ["-n", "--pidfile=", "phoenix"]:
        raise AssertionError(f"{name}: the command is not 'twistd -n --pidfile= phoenix ...': {argv[:4]}")
    options: list[str] = []
    listen: list[str] = []
    rest = iter(argv[4:])
    for option in rest:
        option, _, value = option.partition("=") if "=" in option else (option, "", next(rest))
        if option == "--listen":
            listen.append(value)
        elif option == "--endpoint":
            options += [option, adapt(value, name, {"myapp:Endpoint": "tests._deploy_app:Endpoint"})]
        elif option == "--metrics":
            options += [option, "tcp:0:interface=127.0.0.1"]
        else:
            options += [option, value]
    return options, listen


def unit_server_options(unit_name: str, replacements: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """:func:`phoenix_options` of a unit's ``ExecStart``, after ``replacements`` in the unit."""
    argv = exec_start(adapt(guide_file(unit_name), unit_name, replacements or {}))
    if argv[0] != "/opt/phoenix/venv/bin/twistd":
        raise AssertionError(f"{unit_name}: ExecStart runs {argv[0]}, not the venv's twistd")
    return phoenix_options(argv, unit_name)


def unit_environment() -> dict[str, str]:
    """
    The variables of the guide's ``phoenix.env``, but the test secret (the
    file's placeholder is too short to start in ``prod``, on purpose).
    """
    variables = environment_file(guide_file("phoenix.env"))
    return {**variables, "SECRET_KEY_BASE": TEST_SECRET}


def metrics_port(server: ServerProcess) -> int:
    """The ``--metrics`` port the server logged."""
    match = _METRICS.search(server.child.stdout.decode("utf-8", "replace"))
    assert match is not None, server.output()
    return int(match.group("port"))


def program(name: str, package: str) -> str:
    """The path of ``name`` (also looked for in ``/usr/sbin``), or skip (fail in CI)."""
    return require_program(shutil.which(name) or f"/usr/sbin/{name}", package)


def workdir(test: TestCase, prefix: str) -> str:
    """A temporary directory, removed in cleanup."""
    path = tempfile.mkdtemp(prefix=f"twisted_phoenix_{prefix}_")
    test.addCleanup(shutil.rmtree, path, True)
    return path


def connectable(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@defer.inlineCallbacks
def start_proxy(test: TestCase, name: str, argv: list[str], ports: list[int]) -> Any:
    """
    Run a proxy in the foreground (killed in cleanup) and fire with its
    :class:`ChildProcess` once every one of ``ports`` accepts connections.
    """
    child = ChildProcess(name, reactor)
    reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ))
    test.addCleanup(child.stop, 5.0)

    def ready() -> bool:
        if not child.running:
            raise ChildFailed(f"{name} exited ({child.exit_code})\n{child.output()}")
        return all(connectable(port) for port in ports)

    yield wait_until(reactor, ready, TIMEOUT, 0.1, f"{name} accepting on {ports}")
    return child


def scenario_events(run: Any, ev: str) -> list[dict[str, Any]]:
    return [e for e in run.events if e["ev"] == ev]


# -- systemd -------------------------------------------------------------------------


class SystemdUnitTests(TestCase):
    """The guide's systemd units: valid for systemd, and their command lines serve."""

    timeout = 120

    def verify(self, name: str, instance: str) -> None:
        """``systemd-analyze verify`` the unit, adapted in its paths: no error, no warning about it."""
        analyze = program("systemd-analyze", "systemd")
        directory = workdir(self, "systemd")
        twistd = os.path.join(directory, "twistd")  # verify checks that it is executable
        with open(twistd, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(twistd, 0o755)
        env_file = os.path.join(directory, "phoenix.env")
        shutil.copy(DEPLOYMENT / "phoenix.env", env_file)
        text = adapt(guide_file(name), name, {
            "/opt/phoenix/venv/bin/twistd": twistd, "/etc/phoenix/phoenix.env": env_file,
        })
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
        result = subprocess.run(
            [analyze, "verify", os.path.join(directory, instance)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 0, output)
        # Unknown keys and the like are warnings only: none may name the unit.
        self.assertEqual([line for line in output.splitlines() if "phoenix" in line], [], output)

    def test_verify_unit(self) -> None:
        """phoenix.service passes systemd-analyze verify."""
        self.verify("phoenix.service", "phoenix.service")

    def test_verify_template(self) -> None:
        """phoenix@.service passes systemd-analyze verify as phoenix@4000.service."""
        self.verify("phoenix@.service", "phoenix@4000.service")

    @defer.inlineCallbacks
    def test_unit_command_serves(self) -> Any:
        """The unit's command line serves: /health answers ok, /metrics too, pages of --host connect, others not."""
        options, listen = unit_server_options("phoenix.service")
        self.assertEqual(listen, ["tcp:4000:interface=127.0.0.1"])
        server = yield start_server(
            self, *options, env=unit_environment(), listen=["tcp:0:interface=127.0.0.1"],
            ready="twisted_phoenix metrics on", timeout=TIMEOUT,
        )
        health = yield request(self, server.port, "/health")
        self.assertEqual((health.status, health.body), (200, b"ok"))
        metrics = yield request(self, metrics_port(server), "/metrics")
        self.assertEqual(metrics.status, 200)
        self.assertIn(b"phoenix_connections", metrics.body)
        client = yield connect(reactor, server.port, origin=ORIGIN, test=self)
        joined = yield client.request(["1", "1", "ping", "phx_join", {}])
        self.assertEqual(joined[4]["status"], "ok")
        yield client.disconnect()
        for origin in ("https://evil.example", "http://localhost:4000"):  # prod: no dev hosts
            refused = yield self.assertFailure(connect(reactor, server.port, origin=origin), HandshakeRefused)
            self.assertEqual(refused.status, 403, origin)
        self.assertIn("Could not check origin", server.output())

    @defer.inlineCallbacks
    def test_placeholder_secret_refused(self) -> Any:
        """The environment file's placeholder secret is refused in prod: the server never starts with it."""
        options, _ = unit_server_options("phoenix.service")
        placeholder = environment_file(guide_file("phoenix.env"))["SECRET_KEY_BASE"]
        with self.assertRaises(ChildFailed) as caught:
            yield start_server(self, *options, env={"SECRET_KEY_BASE": placeholder}, timeout=TIMEOUT)
        self.assertIn("at least 64 characters", str(caught.exception))

    @defer.inlineCallbacks
    def test_sigterm(self) -> Any:
        """On SIGTERM (systemctl stop) the server stops listening, drops its WebSockets without a close frame, and ends by the signal."""
        options, _ = unit_server_options("phoenix.service")
        server = yield start_server(self, *options, env=unit_environment(), timeout=TIMEOUT)
        client = yield connect(reactor, server.port, origin=ORIGIN, test=self)
        yield client.join_and_ping()
        code = yield server.child.stop()
        self.assertEqual(code, -15, server.output())  # twistd ends itself with the signal it got
        was_clean, close_code, _ = yield client.wait_closed()
        self.assertFalse(was_clean)
        self.assertEqual(close_code, 1006)  # no WebSocket close frame: phoenix.js reconnects
        self.assertIn("Received SIGTERM, shutting down.", server.output())
        self.assertFalse(connectable(server.port))

    @defer.inlineCallbacks
    def test_busy_port_exits_1(self) -> Any:
        """A server whose port is taken exits with status 1 (for Restart=on-failure), instead of serving nothing."""
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        options, _ = unit_server_options("phoenix.service")
        with self.assertRaises(ChildFailed) as caught:
            yield start_server(
                self, *options, env=unit_environment(), timeout=TIMEOUT,
                listen=[f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"],
            )
        self.assertIn("exited (1)", str(caught.exception))
        self.assertIn("Cannot listen on", str(caught.exception))


# -- TLS in the server -----------------------------------------------------------------


class _First(Protocol):
    """Sends a request once TLS is up; keeps what comes back, and the protocol ALPN chose."""

    def __init__(self) -> None:
        self.received = b""
        self.protocol: bytes | None = None
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.protocol is None:
            self.protocol = self.transport.negotiatedProtocol

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.received)


class ServerTLSTests(TestCase):
    """``--listen ssl:...``, as the guide shows it, for clients that offer ALPN as browsers do."""

    timeout = 60

    @defer.inlineCallbacks
    def test_browser_like_client(self) -> Any:
        """A TLS client offering ALPN h2 and http/1.1 gets http/1.1 and its answer."""
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        directory = workdir(self, "tls")
        pki = ClusterPKI(directory, "deployment test CA")
        cert, key = pki.issue("localhost")
        server = yield start_server(
            self, "--health", "/health", listen=[f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"],
            timeout=TIMEOUT,
        )
        with open(pki.ca_path, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        options = optionsForClientTLS("localhost", trustRoot=trust, acceptableProtocols=[b"h2", b"http/1.1"])
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", server.port, options)
        protocol = yield endpoint.connect(Factory.forProtocol(_First))
        received = yield protocol.done.addTimeout(TIMEOUT, reactor)
        self.assertEqual(protocol.protocol, b"http/1.1")
        self.assertTrue(received.startswith(b"HTTP/1.1 200 OK"), received)
        self.assertTrue(received.endswith(b"\r\n\r\nok"), received)


# -- proxies -------------------------------------------------------------------------------


class ProxyTestCase(TestCase):
    """Common ground: a CA and a certificate for 127.0.0.1, Node trusting it."""

    timeout = 150

    def setUp(self) -> None:
        try:
            require_node_modules("phoenix", "ws")
        except ChildFailed as e:
            self.fail(str(e))
        self.dir = workdir(self, "proxy")
        self.pki = ClusterPKI(self.dir, "deployment test CA")
        self.cert, self.key = self.pki.issue("localhost")  # valid for 127.0.0.1 too
        self.node_env = {"NODE_EXTRA_CA_CERTS": self.pki.ca_path}

    def scenario(self, name: str, url: str, **options: Any) -> defer.Deferred[Any]:
        """Run a phoenix.js scenario through the proxy, as a page of the guide's host."""
        return run_node_scenario(
            self, name, url, {"origin": ORIGIN, "deadlineMs": 25000, **options}, env=self.node_env,
            timeout=TIMEOUT, server=getattr(self, "server", None),
        )

    @defer.inlineCallbacks
    def assert_ping(self, url: str) -> Any:
        """phoenix.js over WebSocket and over long-poll joins ping and gets pong through ``url``."""
        for transport in ("websocket", "longpoll"):
            run = yield self.scenario("ping", url, transport=transport)
            replies = {e["label"]: (e["status"], e["response"]) for e in scenario_events(run, "reply")}
            self.assertEqual(replies["ping"], ("ok", {"ping": "pong"}), transport)
            self.assertEqual(scenario_events(run, "join")[0]["status"], "ok", transport)
            (connecting,) = scenario_events(run, "connecting")
            self.assertTrue(connecting["url"].startswith(f"{url}/socket/"), connecting)
            logs = "".join(server.output() for server in self.servers)
            self.assertIn(f"CONNECTED TO UserSocket Transport: {transport}", logs)

    @defer.inlineCallbacks
    def whoami(self, url: str) -> Any:
        """What the server saw of a WebSocket from 127.0.0.2, sending X-Forwarded-For: FORGED, through the proxy."""
        run = yield self.scenario("whoami", url, localAddress="127.0.0.2", headers={"X-Forwarded-For": FORGED})
        (joined,) = scenario_events(run, "join")
        self.assertEqual(joined["status"], "ok", run.output())
        return joined["response"]


class NginxTests(ProxyTestCase):
    """The guide's nginx site, in front of the guide's unit."""

    def nginx_conf(self, upstream: str) -> tuple[str, int, int]:
        """The guide's site, adapted, in a minimal main configuration: ``(path, http_port, https_port)``."""
        http_port, https_port = free_port(), free_port()
        site = adapt(guide_file("nginx.conf"), "nginx.conf", {
            "listen 80;": f"listen 127.0.0.1:{http_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "server 127.0.0.1:4000;": f"server {upstream};",
            "/etc/letsencrypt/live/chat.example.com/fullchain.pem": self.cert,
            "/etc/letsencrypt/live/chat.example.com/privkey.pem": self.key,
        })
        site_path = os.path.join(self.dir, "site.conf")
        with open(site_path, "w") as f:
            f.write(site)
        # Debian's nginx.conf in brief, its paths in the test's directory.
        main = "\n".join([
            "daemon off;",
            "user root;" if os.geteuid() == 0 else "",  # workers reach the test's directories
            "worker_processes 1;",
            f"pid {self.dir}/nginx.pid;",
            f"error_log {self.dir}/error.log info;",
            "events { worker_connections 256; }",
            "http {",
            f"    access_log {self.dir}/access.log;",
            f"    client_body_temp_path {self.dir}/client_body;",
            f"    proxy_temp_path {self.dir}/proxy;",
            f"    include {site_path};",
            "}",
        ])
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(main)
        return path, http_port, https_port

    @defer.inlineCallbacks
    def start(self, unix: str | None = None) -> Any:
        """The unit's server (also on the Unix socket ``unix``), then nginx in front of it; fires with the https:// port."""
        nginx = program("nginx", "nginx-light")
        options, _ = unit_server_options("phoenix.service")
        if unix is not None:
            options += ["--listen", f"unix:{unix}"]
        self.server = yield start_server(
            self, *options, env=unit_environment(), timeout=TIMEOUT, name="phoenix",
            ready=None if unix is None else f"twisted_phoenix listening on unix:{unix}",
        )
        self.servers = [self.server]
        upstream = f"127.0.0.1:{self.server.port}" if unix is None else f"unix:{unix}"
        conf, self.http_port, https_port = self.nginx_conf(upstream)
        yield start_proxy(
            self, "nginx", [nginx, "-p", self.dir, "-c", conf, "-e", f"{self.dir}/error.log"],
            [self.http_port, https_port],
        )
        return https_port

    @defer.inlineCallbacks
    def test_websocket_and_longpoll(self) -> Any:
        """Through nginx over TLS, phoenix.js joins and pings on WebSocket and long-poll; the proxy's headers arrive."""
        port = yield self.start()
        yield self.assert_ping(f"wss://127.0.0.1:{port}")
        seen = yield self.whoami(f"wss://127.0.0.1:{port}")
        self.assertEqual(seen["peer"], "127.0.0.1")  # nginx
        self.assertEqual(seen["x_headers"]["x-forwarded-for"], f"{FORGED}, 127.0.0.2")  # the client
        self.assertEqual(seen["x_headers"]["x-forwarded-proto"], "https")
        self.assertEqual(seen["host"], "127.0.0.1")  # nginx's $host: the name the client used

    @defer.inlineCallbacks
    def test_origin_and_redirect(self) -> Any:
        """Pages of another host are refused (403) through nginx; plain HTTP is redirected to https."""
        port = yield self.start()
        run = yield self.scenario("refused", f"wss://127.0.0.1:{port}", origin="https://evil.example")
        self.assertEqual(scenario_events(run, "open"), [])
        self.assertIn("Origin of the request: https://evil.example", self.server.output())
        response = yield request(self, self.http_port, "/socket/websocket?vsn=2.0.0")
        self.assertEqual(response.status, 301)
        self.assertEqual(response.headers["location"], "https://127.0.0.1/socket/websocket?vsn=2.0.0")

    @defer.inlineCallbacks
    def test_unix_socket(self) -> Any:
        """With the server on a Unix socket (the guide's alternative upstream), the same works; the peer has no address."""
        path = os.path.join(self.dir, "phoenix.sock")
        port = yield self.start(unix=path)
        yield self.assert_ping(f"wss://127.0.0.1:{port}")
        seen = yield self.whoami(f"wss://127.0.0.1:{port}")
        self.assertIsNone(seen["peer"])
        self.assertEqual(seen["x_headers"]["x-forwarded-for"], f"{FORGED}, 127.0.0.2")


class HAProxyTests(ProxyTestCase):
    """The guide's HAProxy configuration, in front of two nodes of the guide's template unit."""

    @defer.inlineCallbacks
    def start_nodes(self) -> Any:
        """Two nodes, phoenix@P1 and phoenix@P2, as the template starts them (a port mapper of their own)."""
        self.ports = [free_port(), free_port()]
        env = {**unit_environment(), "PHOENIX_EPMD_PORT": str(free_port())}
        self.servers = []
        for port in self.ports:
            options, listen = unit_server_options("phoenix@.service", {
                "node4000@127.0.0.1": f"node{self.ports[0]}@127.0.0.1", "%i": str(port),
            })
            self.assertEqual(listen, [f"tcp:{port}:interface=127.0.0.1"])
            self.assertEqual(options[options.index("--name") + 1], f"node{port}@127.0.0.1")
            server = yield start_server(
                self, *options, env=env, listen=listen, timeout=TIMEOUT, name=f"node{port}",
                ready="listening for cluster links",
            )
            self.servers.append(server)
        self.server = self.servers[0]
        # Linked: each node says so.
        for server, me, other in ((self.servers[0], *self.ports), (self.servers[1], *reversed(self.ports))):
            line = f"Node node{other}@127.0.0.1 connected to node{me}@127.0.0.1"
            yield server.child.wait_for_output(lambda out, line=line: line in out, TIMEOUT, line)

    @defer.inlineCallbacks
    def start_haproxy(self) -> Any:
        """HAProxy with the guide's sections after a global section of the test's; fires with the https:// port."""
        haproxy = program("haproxy", "haproxy")
        http_port, https_port = free_port(), free_port()
        pem = os.path.join(self.dir, "chat.example.com.pem")
        with open(pem, "w") as out:
            for path in (self.cert, self.key):
                with open(path) as f:
                    out.write(f.read())
        self.admin = os.path.join(self.dir, "admin.sock")
        config = adapt(guide_file("haproxy.cfg"), "haproxy.cfg", {
            "bind :80": f"bind 127.0.0.1:{http_port}",
            "bind :443 ssl crt /etc/haproxy/certs/chat.example.com.pem": f"bind 127.0.0.1:{https_port} ssl crt {pem}",
            "server node4000 127.0.0.1:4000 check": f"server node4000 127.0.0.1:{self.ports[0]} check",
            "server node4001 127.0.0.1:4001 check": f"server node4001 127.0.0.1:{self.ports[1]} check",
        })
        glob = f"global\n    log stdout format raw local0\n    stats socket {self.admin} mode 600 level admin\n\n"
        path = os.path.join(self.dir, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(glob + config)
        self.http_port = http_port
        self.haproxy = yield start_proxy(self, "haproxy", [haproxy, "-db", "-f", path], [http_port, https_port])
        return https_port

    def show_stat(self) -> dict[str, dict[str, str]]:
        """HAProxy's ``show stat`` for the backend's servers: name → fields."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.admin)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","))) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row["pxname"] == "phoenix" and row["svname"].startswith("node")}

    @defer.inlineCallbacks
    def test_cluster_behind_haproxy(self) -> Any:
        """Both nodes pass the /health check; phoenix.js works through HAProxy; long polls alternate nodes, no sticky sessions."""
        yield self.start_nodes()
        port = yield self.start_haproxy()
        yield wait_until(
            reactor, lambda: [row["check_status"] for row in self.show_stat().values()] == ["L7OK", "L7OK"],
            TIMEOUT, 0.2, "both servers' /health checks passing (L7OK)",
        )
        yield self.assert_ping(f"wss://127.0.0.1:{port}")
        seen = yield self.whoami(f"wss://127.0.0.1:{port}")
        self.assertEqual(seen["x_headers"]["x-forwarded-for"], f"{FORGED}, 127.0.0.2")
        self.assertEqual(seen["x_headers"]["x-forwarded-proto"], "https")
        # HAProxy's log: the long-poll requests of one session went to both nodes.
        log = self.haproxy.stdout.decode("utf-8", "replace")
        longpolls = [line for line in log.splitlines() if "/socket/longpoll" in line]
        for name in ("phoenix/node4000", "phoenix/node4001"):
            self.assertTrue(any(name in line for line in longpolls), log)
        response = yield request(self, self.http_port, "/socket/longpoll")
        self.assertEqual((response.status, response.headers["location"]), (301, "https://127.0.0.1/socket/longpoll"))


class ClusterCATests(TestCase):
    """The guide's cluster-ca.sh."""

    timeout = 90

    @defer.inlineCallbacks
    def test_certificates_link_nodes(self) -> Any:
        """Certificates the script makes (here for 127.0.0.1) link two nodes, verified against its CA."""
        openssl = program("openssl", "openssl")
        directory = workdir(self, "ca")
        env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(openssl), os.environ.get("PATH", "")])}
        result = subprocess.run(
            ["sh", str(DEPLOYMENT / "cluster-ca.sh"), "127.0.0.1"], cwd=directory, env=env,
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertEqual(sorted(os.listdir(directory)), ["127.0.0.1.key", "127.0.0.1.pem", "ca.key", "ca.pem", "ca.srl"])
        self.assertEqual(os.stat(os.path.join(directory, "127.0.0.1.key")).st_mode & 0o077, 0)
        files = [os.path.join(directory, name) for name in ("127.0.0.1.pem", "127.0.0.1.key", "ca.pem")]
        tls = ["--dist-cert", files[0], "--dist-key", files[1], "--dist-ca", files[2]]
        node_env = {**unit_environment(), "PHOENIX_EPMD_PORT": str(free_port())}
        a = yield start_server(self, "--name", "a@127.0.0.1", *tls, env=node_env, timeout=TIMEOUT,
                               ready="listening for cluster links", name="a")
        b = yield start_server(self, "--name", "b@127.0.0.1", "--connect", "a@127.0.0.1", *tls, env=node_env,
                               timeout=TIMEOUT, ready="listening for cluster links", name="b")
        yield b.child.wait_for_output(
            lambda out: "Node a@127.0.0.1 connected to b@127.0.0.1" in out, TIMEOUT, "the link from b to a"
        )
        for server in (a, b):
            self.assertIn("(TLS, certificates from the cluster CA)", server.output())


class AlertRulesTests(TestCase):
    """The guide's Prometheus alerting rules."""

    timeout = 60

    @defer.inlineCallbacks
    def test_alert_metrics_exist(self) -> Any:
        """Every metric the alerting rules use is one a node of the template unit (or the Redis adapter) reports."""
        from twisted_phoenix.adapters.redis import RedisAdapter

        options, _ = unit_server_options("phoenix@.service", {"%i": "4000"})
        env = {**unit_environment(), "PHOENIX_EPMD_PORT": str(free_port())}
        server = yield start_server(self, *options, env=env, timeout=TIMEOUT, ready="listening for cluster links")
        scraped = yield request(self, metrics_port(server), "/metrics")
        # Samples, and families without one yet (a labelled counter before its first count).
        names = set(re.findall(r"^(?:# TYPE )?(\w+)", scraped.body.decode(), re.MULTILINE))
        rules = guide_file("phoenix-alerts.yml")
        used = set(re.findall(r"\b((?:phoenix|process)_\w+)", rules))
        self.assertIn("phoenix_clients_dropped_total", used)
        for name in sorted(used):
            if name.startswith("phoenix_redis_"):
                attribute = name[len("phoenix_redis_"):].removesuffix("_total")
                self.assertTrue(hasattr(RedisAdapter, attribute), name)
            else:
                self.assertIn(name, names)


class GuideFilesTests(SynchronousTestCase):
    """The guide shows every file it tests."""

    def test_every_file_shown(self) -> None:
        """docs/deployment.rst includes every file of docs/deployment/."""
        page = (ROOT / "docs" / "deployment.rst").read_text(encoding="utf-8")
        for path in sorted(DEPLOYMENT.iterdir()):
            self.assertIn(f".. literalinclude:: deployment/{path.name}", page)


class ContainerTests(TestCase):
    """The Dockerfile's command and health check, and the Kubernetes sketch's arguments and probes, run for real."""

    timeout = 90

    @defer.inlineCallbacks
    def run_healthcheck(self, argv: list[str]) -> Any:
        """Run the HEALTHCHECK command; fire with its exit code (bounded)."""
        child = ChildProcess("healthcheck", reactor)
        argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
        reactor.spawnProcess(child, argv[0], argv, env=dict(os.environ))
        self.addCleanup(child.stop, 2.0)
        code = yield child.wait_ended().addTimeout(TIMEOUT, reactor)
        return code

    @defer.inlineCallbacks
    def test_dockerfile(self) -> Any:
        """The CMD serves; its HEALTHCHECK passes while it serves and fails once it stops."""
        dockerfile = guide_file("Dockerfile").replace("\\\n", " ")
        self.assertRegex(dockerfile, r"(?m)^USER phoenix$")
        (cmd,) = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
        (check,) = re.findall(r"^HEALTHCHECK .* CMD (\[.*\])$", dockerfile, re.MULTILINE)
        options, listen = phoenix_options(json.loads(cmd), "Dockerfile")
        self.assertEqual(listen, ["tcp:4000"])
        server = yield start_server(self, *options, env={"SECRET_KEY_BASE": TEST_SECRET}, timeout=TIMEOUT)
        healthcheck = [arg.replace(":4000/", f":{server.port}/") for arg in json.loads(check)]
        self.assertIn(f"http://127.0.0.1:{server.port}/health", healthcheck[-1])
        self.assertEqual((yield self.run_healthcheck(healthcheck)), 0)
        yield server.stop()
        self.assertNotEqual((yield self.run_healthcheck(healthcheck)), 0)

    @defer.inlineCallbacks
    def test_kubernetes(self) -> Any:
        """The container's args (POD_IP 127.0.0.1) start a cluster node on the pod's address; the probes' path answers ok."""
        text = guide_file("kubernetes.yaml")
        block = text[text.index("          args:\n"):text.index("          ports:\n")]
        argv = re.findall(r"^ {12}- (\S+)$", block, re.MULTILINE)
        argv = [arg.replace("$(POD_IP)", "127.0.0.1") for arg in argv]
        # --discover needs a fixed link port, as every pod has: a free one here.
        dist_port = free_port()
        argv = [adapt(arg, "kubernetes.yaml", {"=9000": f"={dist_port}"}) if arg.startswith("--dist-port") else arg for arg in argv]
        self.assertIn("--discover=dns:phoenix-nodes", argv)
        options, listen = phoenix_options(argv, "kubernetes.yaml")
        self.assertEqual(listen, ["tcp:4000"])
        env = {**unit_environment(), "PHOENIX_EPMD_PORT": str(free_port())}
        server = yield start_server(self, *options, env=env, timeout=TIMEOUT, ready="listening for cluster links")
        self.assertIn(f"Node chat@127.0.0.1 listening for cluster links on 127.0.0.1:{dist_port}", server.output())
        (path,) = set(re.findall(r"httpGet: \{path: (\S+), port: http\}", text))
        response = yield request(self, server.port, path)
        self.assertEqual((response.status, response.body), (200, b"ok"))
