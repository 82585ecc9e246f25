"""
Tests of the packaging: a real, non-editable install of a copy of this tree
into a fresh virtualenv, then ``twistd`` and ``twisted-phoenix`` from it.

Editable installs do not expose the ``twistd`` plugin (it lives in
``twistd_plugins/`` and must land in ``twisted/plugins/``), so only a real
install shows whether ``twistd phoenix`` works for a user.

The virtualenv sees the already installed dependencies
(``--system-site-packages``), and pip installs with ``--no-deps
--no-build-isolation --no-index``: nothing is downloaded.  Every process is
bounded by a timeout; the virtualenv is made once per test run and removed
when the process exits.
"""

from __future__ import annotations

import atexit
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.config import DEV_SECRET_KEY_BASE
from twisted_phoenix.token import verify

ROOT = Path(__file__).resolve().parent.parent

#: What the copy of the tree leaves out: VCS data, caches and build output.
IGNORED = shutil.ignore_patterns(
    ".git", "node_modules", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".hypothesis", ".pytest_cache", "_trial_temp*", ".venv", ".benchmarks", "_build",
    "twistd.pid", "twistd.log*",
)

#: The console script ``twistd``, run by the virtualenv's Python (Twisted
#: itself, and so its ``twistd`` script, is outside the virtualenv).
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; sys.exit(run())"

#: Seconds any one command may take.
TIMEOUT = 120


class Installed:
    """A virtualenv with this tree installed in it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.venv = base / "venv"
        self.bin = self.venv / "bin"
        self.python = self.bin / "python"
        self.env = {
            k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "SECRET_KEY_BASE", "PHOENIX_ENV", "PORT", "VIRTUAL_ENV")
        }
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        self.env["PYTHONDONTWRITEBYTECODE"] = "1"

    def run(self, *argv: str | Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run a command outside the source tree, so that only installed code is importable."""
        return subprocess.run(
            [str(a) for a in argv], cwd=self.base, env=self.env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )

    def check(self, *argv: str | Path) -> str:
        """Run a command that must succeed, and return its standard output."""
        result = self.run(*argv)
        if result.returncode != 0:
            raise AssertionError(f"{argv} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def twistd(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-c", TWISTD, *argv)


_installed: list[Installed] = []


def installed() -> Installed:
    """
    Copy the tree, make the virtualenv and install the copy into it, once per
    process; the files are removed when the process exits.
    """
    if _installed:
        return _installed[0]
    base = Path(tempfile.mkdtemp(prefix="twisted_phoenix-packaging-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    env = Installed(base)
    env.check(sys.executable, "-m", "venv", "--system-site-packages", env.venv)
    env.check(
        env.bin / "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", source
    )
    _installed.append(env)
    return env


class InstallTests(SynchronousTestCase):
    """
    ``pip install .`` (not editable) into a fresh virtualenv.
    """

    def setUp(self) -> None:
        self.env = installed()

    def test_installed_copy_is_used(self) -> None:
        """The virtualenv imports twisted_phoenix from its own site-packages, where the plugin is installed."""
        out = self.env.check(
            self.env.python, "-c",
            "import twisted_phoenix, twisted.plugins.phoenix as p; print(twisted_phoenix.__file__); print(p.__file__)",
        )
        paths = out.split()
        self.assertEqual(len(paths), 2, out)
        self.assertTrue(Path(paths[0]).resolve().is_relative_to(self.env.venv.resolve()), paths[0])
        self.assertTrue(paths[1].endswith(os.path.join("twisted", "plugins", "phoenix.py")))
        # The plugin file is in the venv's own site-packages.  (Which copy
        # Python imports depends on the base install: with the package also
        # installed outside the venv, as CI does, that copy comes first.)
        installed = list(self.env.venv.glob("lib/python*/site-packages/twisted/plugins/phoenix.py"))
        self.assertEqual(len(installed), 1)

    def test_no_plugins_init(self) -> None:
        """The install adds twisted/plugins/phoenix.py only: no twisted/__init__.py, no twisted/plugins/__init__.py."""
        records = list(self.env.venv.glob("lib/python*/site-packages/twisted_phoenix-*.dist-info/RECORD"))
        self.assertEqual(len(records), 1)
        files = [line.split(",")[0] for line in records[0].read_text().splitlines()]
        twisted_files = [f for f in files if f.startswith("twisted/") and "__pycache__" not in f]
        self.assertEqual(twisted_files, ["twisted/plugins/phoenix.py"])
        (site,) = self.env.venv.glob("lib/python*/site-packages")
        self.assertFalse((site / "twisted" / "plugins" / "__init__.py").exists())
        self.assertFalse((site / "twisted" / "__init__.py").exists())

    def test_twistd_lists_phoenix(self) -> None:
        """``twistd --help`` lists ``phoenix`` beside Twisted's own plugins."""
        result = self.env.twistd("--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        commands = re.findall(r"^ {4}(\S+) +", result.stdout, re.MULTILINE)
        self.assertIn("phoenix", commands)
        for other in ("web", "dns", "ftp"):
            self.assertIn(other, commands)
        self.assertIn("Phoenix Channels server", result.stdout)

    def test_plugin_help(self) -> None:
        """``twistd phoenix --help`` documents every option."""
        result = self.env.twistd("phoenix", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--port", "--listen", "--endpoint", "--name", "--secret-key-base", "--env"):
            self.assertIn(option, result.stdout)

    def test_plugin_usage_error(self) -> None:
        """``twistd phoenix --env prod`` without a secret fails with a message, before serving."""
        result = self.env.twistd("-n", "--pidfile=", "phoenix", "--env", "prod")
        self.assertNotEqual(result.returncode, 0)
        # twistd prints usage errors on stdout.
        self.assertIn("set --secret-key-base or SECRET_KEY_BASE", result.stdout + result.stderr)
        self.assertNotIn("listening on", result.stdout + result.stderr)

    def test_token_command(self) -> None:
        """The ``twisted-phoenix`` script prints a token the demo's /auth_socket accepts for user 42."""
        out = self.env.check(self.env.bin / "twisted-phoenix", "token", "42")
        result = verify(DEV_SECRET_KEY_BASE, "salt identifier", out.strip())
        self.assertTrue(result.ok, result)
        self.assertEqual(result.data, 42)

    def test_command_error_exit_code(self) -> None:
        """The script exits with 2 and a message on stderr after a bad argument."""
        result = self.env.run(self.env.bin / "twisted-phoenix", "token")
        self.assertEqual(result.returncode, 2)
        self.assertIn("USER_ID", result.stderr)

    def test_twistd_serves(self) -> None:
        """``twistd -n phoenix`` from the install binds, logs its port and answers a WebSocket handshake."""
        process = subprocess.Popen(
            [str(self.env.python), "-c", TWISTD, "-n", "--pidfile=", "phoenix",
             "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=self.env.base, env=self.env.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(_stop, process)
        port = _wait_for_port(process, deadline=time.monotonic() + 30)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(
                b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                response += chunk
        self.assertTrue(response.startswith(b"HTTP/1.1 101 "), response)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", response)


def _wait_for_port(process: subprocess.Popen[bytes], deadline: float) -> int:
    """Read the server's log until it says which port it bound."""
    assert process.stdout is not None
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            match = re.search(rb"twisted_phoenix listening on \S+ port=(\d+)", output)
            if match:
                return int(match.group(1))
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"twistd did not report its port in time:\n{output.decode()}")
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"twistd exited ({process.wait(5)}):\n{output.decode()}")
            output += chunk


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a child with SIGTERM (SIGKILL after 10 s), and reap it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


class ReadmeTests(SynchronousTestCase):
    """
    The README's two commands and CI agree.
    """

    def test_ci_runs_the_readme_test_command(self) -> None:
        """``.ci/run`` runs exactly the test command the README gives."""
        readme = (ROOT / "README.rst").read_text(encoding="utf-8")
        match = re.search(r"^ +(python -m pip install '\.\[test\]' && .+)$", readme, re.MULTILINE)
        assert match is not None, "the README has no test command"
        command = match.group(1).strip()
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        self.assertIn("\n" + command + "\n", ci)
        self.assertIn("set -euo pipefail", ci)

    def test_readme_run_command(self) -> None:
        """The README's run command installs the package and starts ``twistd -n phoenix``."""
        readme = (ROOT / "README.rst").read_text(encoding="utf-8")
        self.assertRegex(readme, r"(?m)^ +python -m pip install \. && twistd -n phoenix$")
