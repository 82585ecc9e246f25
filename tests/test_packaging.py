"""
Tests of the packaging: a real, non-editable install of a copy of this tree
into a fresh virtualenv, then ``twistd`` and ``twisted-phoenix`` from it.

Editable installs do not expose the ``twistd`` plugin (it lives in
``twistd_plugins/`` and must land in ``twisted/plugins/``), so only a real
install shows whether ``twistd phoenix`` works for a user.

The running interpreter builds a wheel of the copy (``pip wheel
--no-build-isolation``: its own setuptools and wheel, from the ``test``
extra) and installs it into a virtualenv made with ``venv --without-pip``
(``pip --python``: the running pip).  Only then is a ``.pth`` file added that
puts the running environment's site-packages directories (the virtualenv's,
the system's, or the user's, whichever the tests run from) after the
virtualenv's own, so that the install finds its dependencies and nothing is
downloaded.  The ``.pth`` files in those directories are not processed,
so an editable install of this package there cannot shadow the installed
copy.  This works from a
virtualenv, from the system Python with ``pip install --user`` or
``--break-system-packages``, and from a clean clone.  Every process is
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
import site
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

#: The ``.pth`` file that shows the virtualenv the running environment's packages.
DEPENDENCIES_PTH = "_twisted_phoenix_test_dependencies.pth"


def dependency_paths() -> list[str]:
    """
    The running interpreter's site-packages directories, user site included
    when it is enabled, in ``sys.path`` order: where the dependencies the
    installed copy needs (Twisted, Autobahn, ...) were installed.  Nothing
    else of ``sys.path`` (the source tree, ``PYTHONPATH``) is included.
    """
    candidates = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    wanted = {os.path.realpath(p) for p in candidates}
    paths: list[str] = []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real in wanted and real not in paths and os.path.isdir(real):
            paths.append(real)
    return paths


class Installed:
    """A virtualenv with this tree installed in it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.venv = base / "venv"
        self.bin = self.venv / "bin"
        self.python = self.bin / "python"
        # No variable from the caller's shell or pip configuration decides
        # what is imported or where pip installs.
        self.env = {
            k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "SECRET_KEY_BASE", "PHOENIX_ENV", "PORT", "VIRTUAL_ENV")
            and not k.startswith("PIP_")
        }
        self.env["PIP_CONFIG_FILE"] = os.devnull
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        self.env["PIP_NO_INPUT"] = "1"
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

    def site_packages(self) -> Path:
        """The virtualenv's own site-packages directory."""
        (path,) = self.venv.glob("lib/python*/site-packages")
        return path


_installed: list[Installed] = []


def installed() -> Installed:
    """
    Copy the tree, build its wheel, make the virtualenv and install the wheel
    into it, once per process; the files are removed when the process exits.
    """
    if _installed:
        return _installed[0]
    base = Path(tempfile.mkdtemp(prefix="twisted_phoenix-packaging-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=IGNORED)
    env = Installed(base)
    wheels = base / "wheels"
    env.check(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", wheels, source,
    )
    (wheel,) = wheels.glob("twisted_phoenix-*.whl")
    env.check(sys.executable, "-m", "venv", "--without-pip", env.venv)
    env.check(
        sys.executable, "-m", "pip", "--python", env.python, "install", "--quiet", "--no-deps", "--no-index", wheel
    )
    # After the install, so that pip saw an empty virtualenv.
    (env.site_packages() / DEPENDENCIES_PTH).write_text(
        "".join(path + "\n" for path in dependency_paths()), encoding="utf-8"
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

    def test_static_files_installed(self) -> None:
        """The wheel carries phoenix.js (with its licence) and the chat example's page, where the code finds them."""
        out = self.env.check(
            self.env.python, "-c",
            "import os, twisted_phoenix.static as s, twisted_phoenix.examples.chat as c\n"
            "print(s.PHOENIX_JS_DIR); print(c.Endpoint(None).static_directories()['/'])",
        )
        phoenix_dir, chat_dir = (Path(line) for line in out.split())
        site_packages = self.env.site_packages().resolve()
        for directory in (phoenix_dir, chat_dir):
            self.assertTrue(directory.resolve().is_relative_to(site_packages), directory)
        for name in ("phoenix.js", "phoenix.min.js", "phoenix.mjs", "phoenix.mjs.map", "LICENSE.md"):
            installed = phoenix_dir / name
            self.assertEqual(installed.read_bytes(), (ROOT / "twisted_phoenix" / "phoenix_js" / name).read_bytes(), name)
        for name in ("index.html", "chat.js", "chat.css"):
            self.assertEqual((chat_dir / name).read_bytes(),
                             (ROOT / "twisted_phoenix" / "examples" / "chat" / "static" / name).read_bytes(), name)

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


def readme_test_command() -> str:
    """The README's test command, as written there."""
    readme = (ROOT / "README.rst").read_text(encoding="utf-8")
    match = re.search(r"^ +(python -m pip install '\.\[test\]' && .+)$", readme, re.MULTILINE)
    assert match is not None, "the README has no test command"
    return match.group(1).strip()


class ReadmeTests(SynchronousTestCase):
    """
    The README's two commands and CI agree.
    """

    def test_ci_runs_the_readme_test_command(self) -> None:
        """``.ci/run`` ends with exactly the test command the README gives, after activating its virtualenv."""
        command = readme_test_command()
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        self.assertIn("\n" + command + "\n", ci)
        self.assertIn("set -euo pipefail", ci)
        lines = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        self.assertEqual(lines[-1], command)
        self.assertEqual(lines[-3:-1], ["python3 -m venv .venv", ". .venv/bin/activate"])
        # The virtualenv the README tells a user to make first.
        readme = (ROOT / "README.rst").read_text(encoding="utf-8")
        self.assertRegex(readme, r"(?m)^ +python3 -m venv \.venv && \. \.venv/bin/activate$")

    def test_readme_run_command(self) -> None:
        """The README's run command installs the package and starts ``twistd -n phoenix``."""
        readme = (ROOT / "README.rst").read_text(encoding="utf-8")
        self.assertRegex(readme, r"(?m)^ +python -m pip install \. && twistd -n phoenix$")


#: A ``python`` that logs how it was called; ``python -m pytest`` exits with
#: $FAKE_PYTEST_EXIT, ``python -m pip`` with $FAKE_PIP_EXIT.
FAKE_PYTHON = """#!/bin/sh
echo "$0 $* | $PWD | $VIRTUAL_ENV" >> "$FAKE_LOG"
case "$1 $2" in
    "-m pytest") exit "$FAKE_PYTEST_EXIT" ;;
    "-m pip") exit "$FAKE_PIP_EXIT" ;;
esac
"""

#: A ``python3`` whose ``-m venv DIR`` makes a real virtualenv (the real
#: activate script) whose ``python`` is :data:`FAKE_PYTHON`.
FAKE_PYTHON3 = """#!/bin/sh
echo "$0 $* | $PWD" >> "$FAKE_LOG"
[ "$1 $2" = "-m venv" ] && [ "$#" -eq 3 ] || exit 97
"$REAL_PYTHON" -m venv --without-pip "$3" || exit 98
rm -f "$3/bin/python" && cp "$FAKE_PYTHON" "$3/bin/python" && chmod +x "$3/bin/python"
"""

#: An ``npm`` that logs how and where it was called.
FAKE_NPM = """#!/bin/sh
echo "$0 $* | $PWD" >> "$FAKE_LOG"
"""


class CIScriptTests(SynchronousTestCase):
    """
    ``.ci/run``, run by bash with stand-ins for ``python3``, ``python`` and
    ``npm`` that log their calls (nothing is installed and no test runs).
    """

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="twisted_phoenix-ci-"))
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        self.repo = self.base / "repo"
        (self.repo / ".ci").mkdir(parents=True)
        (self.repo / "tests" / "js").mkdir(parents=True)
        shutil.copy(ROOT / ".ci" / "run", self.repo / ".ci" / "run")
        self.log = self.base / "log"
        self.log.touch()
        fakes = self.base / "fakes"
        fakes.mkdir()
        for name, text in (("python", FAKE_PYTHON), ("python3", FAKE_PYTHON3), ("npm", FAKE_NPM)):
            (fakes / name).write_text(text, encoding="utf-8")
            (fakes / name).chmod(0o755)
        # An activated virtualenv the script runs in, as CI may: its python
        # must not be the one that runs the command.
        self.outer = self.base / "outer"
        (self.outer / "bin").mkdir(parents=True)
        shutil.copy(fakes / "python", self.outer / "bin" / "python")
        self.bin = self.base / "bin"
        self.bin.mkdir()
        shutil.copy(fakes / "python3", self.bin / "python3")
        shutil.copy(fakes / "npm", self.bin / "npm")
        self.env = {
            "PATH": os.pathsep.join([str(self.outer / "bin"), str(self.bin), "/usr/bin", "/bin"]),
            "VIRTUAL_ENV": str(self.outer),
            "HOME": str(self.base),
            "FAKE_LOG": str(self.log),
            "FAKE_PYTHON": str(fakes / "python"),
            "REAL_PYTHON": sys.executable,
            "FAKE_PYTEST_EXIT": "0",
            "FAKE_PIP_EXIT": "0",
        }

    def run_ci(self, **env: str) -> tuple[int, list[str], str]:
        """Run ``bash .ci/run`` from another directory; its exit code, the calls logged, its stderr."""
        result = subprocess.run(
            ["bash", str(self.repo / ".ci" / "run")], cwd=self.base, env={**self.env, **env},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
        )
        calls = self.log.read_text(encoding="utf-8").splitlines()
        return result.returncode, calls, result.stdout + result.stderr

    def test_runs_the_readme_command_in_its_virtualenv(self) -> None:
        """The script makes .venv with python3 and runs the README's command with .venv's python, from the root."""
        code, calls, output = self.run_ci()
        self.assertEqual(code, 0, output)
        root = str(self.repo)
        venv = str(self.repo / ".venv")
        self.assertEqual(calls, [
            f"{self.bin}/python3 -m venv .venv | {root}",
            f"{venv}/bin/python -m pip install .[test] | {root} | {venv}",
            f"{self.bin}/npm ci | {root}/tests/js",
            f"{venv}/bin/python -m pytest tests | {root} | {venv}",
        ])
        self.assertEqual(readme_test_command(),
                         "python -m pip install '.[test]' && (cd tests/js && npm ci) && python -m pytest tests")

    def test_exit_code_is_pytests(self) -> None:
        """pytest's exit code (5 for no tests collected, say) is the script's."""
        code, calls, output = self.run_ci(FAKE_PYTEST_EXIT="5")
        self.assertEqual(code, 5, output)
        self.assertTrue(calls[-1].endswith("-m pytest tests | " + f"{self.repo} | {self.repo / '.venv'}"), calls)

    def test_failed_install_stops(self) -> None:
        """A failed pip install fails the script before npm and pytest run."""
        code, calls, output = self.run_ci(FAKE_PIP_EXIT="1")
        self.assertEqual(code, 1, output)
        self.assertEqual(len(calls), 2, calls)
        self.assertIn("-m pip install", calls[-1])


class DebianPackagesTests(SynchronousTestCase):
    """
    ``need_debian_packages`` of ``.ci/run``, with stand-ins for ``dpkg-query``,
    ``id`` and ``apt-get``.
    """

    def setUp(self) -> None:
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        match = re.search(r"^need_debian_packages\(\) \{\n.*?^\}\n", ci, re.MULTILINE | re.DOTALL)
        assert match is not None, ".ci/run defines no need_debian_packages"
        self.function = match.group(0)
        self.base = Path(tempfile.mkdtemp(prefix="twisted_phoenix-apt-"))
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        self.log = self.base / "log"
        self.log.touch()
        self.bin = self.base / "bin"
        self.bin.mkdir()
        fakes = {
            # Installed: the packages named in $FAKE_INSTALLED.
            "dpkg-query": 'for p in $FAKE_INSTALLED; do [ "$p" = "$3" ] && { echo "install ok installed"; exit 0; }; done\n'
                          'echo "dpkg-query: no packages found matching $3" >&2; exit 1\n',
            "id": 'echo "$FAKE_UID"\n',
            "apt-get": 'echo "apt-get $*" >> "$FAKE_LOG"\n',
        }
        for name, body in fakes.items():
            (self.bin / name).write_text("#!/bin/sh\n" + body, encoding="utf-8")
            (self.bin / name).chmod(0o755)

    def need(self, *packages: str, uid: int = 0, installed: str = "") -> tuple[int, list[str], str]:
        script = "set -euo pipefail\n" + self.function + 'need_debian_packages "$@"\necho done\n'
        result = subprocess.run(
            ["bash", "-c", script, "bash", *packages],
            env={"PATH": os.pathsep.join([str(self.bin), "/usr/bin", "/bin"]), "FAKE_LOG": str(self.log),
                 "FAKE_UID": str(uid), "FAKE_INSTALLED": installed},
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT,
        )
        return result.returncode, self.log.read_text(encoding="utf-8").splitlines(), result.stdout + result.stderr

    def test_none(self) -> None:
        """Without packages nothing is checked or installed."""
        self.assertEqual(self.need(), (0, [], "done\n"))

    def test_installed(self) -> None:
        """Packages already installed are not installed again."""
        code, calls, output = self.need("chromium", "redis-server", installed="chromium redis-server")
        self.assertEqual((code, calls), (0, []), output)

    def test_root_installs_missing(self) -> None:
        """As root, the missing packages (only those) are installed with apt-get, after an update."""
        code, calls, output = self.need("chromium", "redis-server", installed="chromium")
        self.assertEqual(code, 0, output)
        self.assertEqual(calls, ["apt-get update -qq",
                                 "apt-get install -y -qq --no-install-recommends redis-server"])
        self.assertIn("installing redis-server", output)
        self.assertIn("done\n", output)

    def test_user_is_told(self) -> None:
        """Not as root, the script names the missing packages and the command, installs nothing, and stops."""
        code, calls, output = self.need("chromium", "redis-server", uid=1000)
        self.assertEqual((code, calls), (1, []), output)
        self.assertIn("missing: chromium redis-server", output)
        self.assertIn("sudo apt-get install chromium redis-server", output)
        self.assertNotIn("done", output)
