"""
The tutorial (``docs/tutorial/``), run as written.

Its code (``docs/tutorial/code/``) is copied to a directory of its own, as a
reader's ``myapp`` directory, and each page's shell commands are read from
the page (the ``$`` lines of its code blocks) and run there by a small
shell: ``twistd`` and ``twisted-phoenix`` from this tree, ``npx wscat`` as
tests/js's wscat on a pty (typed into as a person types), ``node`` with
tests/js's phoenix and ws, ``python`` as this interpreter, ``VAR=$(...)``,
``$VAR``, ``$(cat FILE)`` and ``kill -9 PID`` as a shell does them.  Blocks
captioned ``Terminal N: ...`` share that terminal's variables and wscat.

Only the ports change: every ``localhost:4000``/``localhost:4001`` in the
commands and in the copied code becomes a port that was free on 127.0.0.1,
each server listens there (``--listen tcp:PORT:interface=127.0.0.1``
instead of ``--port``), and the cluster gets its own node-name mapper
(``PHOENIX_EPMD_PORT``) and cookie (``PHOENIX_COOKIE``), never the user's
cookie file.  wscat gets ``--no-color``.  The servers get no secret, as in
the tutorial: they and ``twisted-phoenix token`` use the development secret.

What the pages show is checked against what happens: wscat transcripts
message by message (``...`` in a message stands for any text inside a JSON
string), program output as lines in order, server log lines as substrings of
the server's output, and the prose's claims that the tests check (a quoted
log line, a timing) are looked up in the page too.  Each page's test also
checks that it ran every command of its page; the setup commands that no
test runs are listed in :data:`NOT_RUN`, with the reason.

Step 1's browser page is loaded in headless Chromium when it is installed
(:class:`BrowserTests` is skipped otherwise); its script also runs under
Node's own WebSocket in any case.

Needs ``npm ci`` in ``tests/js`` (``phoenix``, ``ws`` and ``wscat``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ._cluster import free_port, wait_until
from ._server import (
    CHROMIUM,
    JS_DIR,
    PLUGIN_SOURCE,
    REPO_ROOT,
    ChildProcess,
    _clean_env,
    require_node_modules,
    require_program,
    wait_ended,
)

TUTORIAL = Path(REPO_ROOT) / "docs" / "tutorial"
CODE = TUTORIAL / "code"
WSCAT = os.path.join(JS_DIR, "node_modules", "wscat", "bin", "wscat")

#: The pages, in the order of the tutorial's table of contents.
PAGES = [
    "first-channel",
    "replies-and-pushes",
    "authentication",
    "recurring",
    "cluster",
    "presence",
    "testing",
    "python-client",
]

#: Commands the tutorial shows and these tests do not run, and why.
NOT_RUN = {
    "mkdir myapp && cd myapp": "the tests make their own directory",
    "npm install phoenix ws wscat": "tests/js has them installed (npm ci): the copy links to them",
}

#: Headless Chromium, for step 1's page (:class:`BrowserTests`), if installed.

#: Seconds any one wait may take (a busy 2-core machine is slow to start Python).
WAIT = 30.0

#: ``twistd`` as its console script runs it (the current directory is not on
#: ``sys.path``: ``twistd phoenix`` puts it there for ``--endpoint``).
TWISTD = (
    "import sys; del sys.path[0]; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)
#: ``twisted-phoenix`` as its console script runs it.
CLI = "import sys; del sys.path[0]; from twisted_phoenix.cli import main; sys.exit(main())"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LISTENING = re.compile(r"twisted_phoenix listening on \S+ port=(\d+)")
_SUBSTITUTION = re.compile(r"\$\(([^()]*)\)")
_VARIABLE = re.compile(r"\$([A-Z_][A-Z0-9_]*)")
_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


# -- reading the pages ---------------------------------------------------------------


@dataclass
class Block:
    """One ``code-block`` of a page: its caption and its lines."""

    caption: str
    language: str
    lines: list[str]

    @property
    def terminal(self) -> str:
        """``Terminal 3`` for the caption ``Terminal 3: alice, on node a``."""
        return self.caption.split(":", 1)[0]

    def commands(self) -> list[str]:
        return [line[2:] for line in self.lines if line.startswith("$ ")]

    def output(self, command: str) -> list[str]:
        """The lines shown after ``$ command``, up to the next command."""
        start = self.lines.index(f"$ {command}") + 1
        end = start
        while end < len(self.lines) and not self.lines[end].startswith("$ "):
            end += 1
        return self.lines[start:end]


@dataclass
class Page:
    """A tutorial page's text and code blocks."""

    name: str
    text: str = ""
    blocks: list[Block] = field(default_factory=list)

    @classmethod
    def read(cls, name: str) -> Page:
        text = (TUTORIAL / f"{name}.rst").read_text(encoding="utf-8")
        return cls(name, text, _code_blocks(text))

    def commands(self) -> list[str]:
        """Every ``$`` command of the page, in order."""
        return [command for block in self.blocks for command in block.commands()]

    def block(self, caption: str, index: int = 0) -> Block:
        """The ``index``-th block whose caption starts with ``caption``."""
        found = [block for block in self.blocks if block.caption.startswith(caption)]
        if len(found) <= index:
            raise AssertionError(f"{self.name}.rst has {len(found)} blocks captioned {caption!r}")
        return found[index]

    def command(self, prefix: str) -> str:
        """The one command of the page that starts with ``prefix``."""
        found = sorted({command for command in self.commands() if command.startswith(prefix)})
        if len(found) != 1:
            raise AssertionError(f"{self.name}.rst should have one command {prefix!r}..., has {found}")
        return found[0]

    def says(self, text: str) -> bool:
        """Whether the page's prose contains ``text`` (line breaks as spaces)."""
        return " ".join(text.split()) in " ".join(self.text.split())


def _code_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = re.match(r"^\.\. code-block:: *(\S+)\s*$", lines[i])
        i += 1
        if not match:
            continue
        caption = ""
        while i < len(lines) and re.match(r"^   :\w+:", lines[i]):
            key, _, value = lines[i].strip()[1:].partition(":")
            if key == "caption":
                caption = value.strip()
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
            body.append(lines[i][3:])
            i += 1
        while body and not body[0].strip():
            body.pop(0)
        while body and not body[-1].strip():
            body.pop()
        blocks.append(Block(caption, match.group(1), body))
    return blocks


def matches(expected: str, actual: str) -> bool:
    """``actual`` is ``expected``, where ``...`` stands for any text inside a JSON string."""
    if "..." not in expected:
        return expected == actual
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern.replace(".*?", '[^"]*'), actual) is not None


def in_order(expected: list[str], actual: list[str]) -> bool:
    """Whether ``expected`` are lines of ``actual``, in that order (others may come between)."""
    rest = iter(actual)
    return all(any(line == got for got in rest) for line in expected)


# -- children ---------------------------------------------------------------------------


class Child(ChildProcess):
    """A :class:`ChildProcess` that can tell its output lines and when each came."""

    def __init__(self, name: str) -> None:
        super().__init__(name, reactor)
        self.marks: list[tuple[float, int]] = []

    def outReceived(self, data: bytes) -> None:
        self.marks.append((reactor.seconds(), len(self.stdout) + len(data)))
        super().outReceived(data)

    def text(self) -> str:
        return _ANSI.sub("", self.stdout.decode("utf-8", "replace"))

    def lines(self, since: int = 0) -> list[str]:
        """Output lines (colours stripped), from byte ``since`` of the output on."""
        text = _ANSI.sub("", self.stdout[since:].decode("utf-8", "replace"))
        return [line for line in re.split(r"[\r\n]+", text) if line.strip()]

    def mark(self) -> int:
        """A position in the output, for :meth:`lines` and :meth:`wait_lines`."""
        return len(self.stdout)

    def wait_lines(self, expected: list[str], since: int = 0, timeout: float = WAIT) -> defer.Deferred[Any]:
        """Fire once ``expected`` have been printed, in order, after ``since``."""
        return self.wait_for_output(
            lambda _: in_order(expected, self.lines(since)), timeout, f"the lines {expected}"
        )


class WscatTerminal:
    """wscat on a pty: what was typed, and what came back."""

    def __init__(self, child: Child) -> None:
        self.child = child
        #: The messages the page shows arriving (``< ...``), and other lines wscat prints.
        self.expected: list[str] = []
        self.notices: list[str] = []
        #: When each message arrived.
        self.times: list[float] = []

    def incoming(self) -> list[str]:
        return [line[2:] for line in self.child.lines() if line.startswith("< ")]

    def printed(self) -> list[str]:
        return [line for line in self.child.lines() if not line.startswith(("< ", ">"))]

    def arrival(self, index: int) -> float:
        """When the ``index``-th message arrived."""
        for seconds, size in self.child.marks:
            text = _ANSI.sub("", self.child.stdout[:size].decode("utf-8", "replace"))
            if len([line for line in re.split(r"[\r\n]+", text) if line.startswith("< ")]) > index:
                return seconds
        raise AssertionError(f"message {index} never arrived")

    def caught_up(self) -> bool:
        got = self.incoming()
        return len(got) >= len(self.expected) and in_order(self.notices, self.printed())

    def wait(self, timeout: float = WAIT) -> defer.Deferred[Any]:
        """Fire once every message and notice expected so far has come; check the messages."""
        d = self.child.wait_for_output(lambda _: self.caught_up(), timeout, f"wscat to show {self.expected}")
        return d.addCallback(lambda _: self.check())

    def check(self, exact: bool = False) -> None:
        got = self.incoming()
        if exact and len(got) != len(self.expected):
            raise AssertionError(f"wscat received {got}, expected {self.expected}")
        for expected, actual in zip(self.expected, got):
            if not matches(expected, actual):
                raise AssertionError(f"wscat received {actual}, expected {expected}\nall: {got}")

    def type(self, line: str) -> None:
        self.child.transport.write(line.encode("utf-8") + b"\r")

    @defer.inlineCallbacks
    def sync(self) -> Any:
        """A heartbeat and its reply: whatever the server sent before has arrived."""
        self.type('[null,"999","phoenix","heartbeat",{}]')
        self.expected.append('[null,"999","phoenix","phx_reply",{"response":{},"status":"ok"}]')
        yield self.wait()
        self.check(exact=True)


# -- the shell --------------------------------------------------------------------------


class Shell:
    """
    Runs the tutorial's commands in a copy of its code, as a reader's shell
    would, with the ports changed (see the module docstring).
    """

    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.workdir = tempfile.mkdtemp(prefix="twisted_phoenix-tutorial-")
        test.addCleanup(shutil.rmtree, self.workdir, True)
        self.ports = {4000: free_port(), 4001: free_port(), 8000: free_port()}
        for path in CODE.iterdir():
            if path.is_file():
                Path(self.workdir, path.name).write_text(self.localize(path.read_text(encoding="utf-8")))
        os.symlink(os.path.join(JS_DIR, "node_modules"), os.path.join(self.workdir, "node_modules"))
        plugins = tempfile.mkdtemp(prefix="twisted_phoenix-tutorial-plugin-")
        test.addCleanup(shutil.rmtree, plugins, True)
        os.makedirs(os.path.join(plugins, "twisted", "plugins"))
        shutil.copy(PLUGIN_SOURCE, os.path.join(plugins, "twisted", "plugins", "phoenix.py"))
        self.env = _clean_env({
            "PORT": None, "SECRET_KEY_BASE": None, "PHOENIX_ENV": None,
            "PHOENIX_EPMD_PORT": str(free_port()), "PHOENIX_COOKIE": f"tutorial-{os.urandom(8).hex()}",
            "PYTHONUNBUFFERED": "1", "NODE_PATH": os.path.join(JS_DIR, "node_modules"),
        })
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (REPO_ROOT, plugins, os.environ.get("PYTHONPATH", "")) if p
        )
        self.vars: dict[str, dict[str, str]] = {}
        self.terminals: dict[str, WscatTerminal] = {}
        #: The commands run so far, as the pages show them.
        self.ran: set[str] = set()

    def localize(self, text: str) -> str:
        """``localhost:4000`` and ``:4001`` become this test's ports on 127.0.0.1."""
        for port, actual in self.ports.items():
            text = text.replace(f"localhost:{port}", f"127.0.0.1:{actual}")
        return text

    @defer.inlineCallbacks
    def expand(self, terminal: str, command: str) -> Any:
        """Command substitutions, then variables, as the shell does them."""
        parts, position = [], 0
        for match in _SUBSTITUTION.finditer(command):
            parts.append(command[position:match.start()])
            out, _ = yield self.capture(shlex.split(match.group(1)))
            parts.append(out.strip())
            position = match.end()
        parts.append(command[position:])
        variables = self.vars.setdefault(terminal, {})
        return _VARIABLE.sub(lambda m: variables[m.group(1)], "".join(parts))

    @defer.inlineCallbacks
    def capture(self, argv: list[str]) -> Any:
        """Run a short command for its output: ``(stdout, stderr)``."""
        if argv[0] == "cat":
            return Path(self.workdir, argv[1]).read_text(), ""
        program, args = self.program(argv)
        out, err, code = yield getProcessOutputAndValue(program, args, env=self.env, path=self.workdir, reactor=reactor)
        if code != 0:
            raise AssertionError(f"{argv} exited {code}: {out!r} {err!r}")
        return out.decode("utf-8"), err.decode("utf-8")

    def program(self, argv: list[str]) -> tuple[str, list[str]]:
        """The executable and arguments that run ``argv`` here."""
        name, args = argv[0], [self.localize(arg) for arg in argv[1:]]
        if name == "twistd":
            if "--port" in args:
                i = args.index("--port")
                port = int(args.pop(i + 1))
                args.pop(i)
            else:
                port = 4000
            return sys.executable, ["-c", TWISTD, *args, "--listen", f"tcp:{self.ports[port]}:interface=127.0.0.1"]
        if name == "twisted-phoenix":
            return sys.executable, ["-c", CLI, *args]
        if name == "python":
            if args[:2] == ["-m", "http.server"]:
                return sys.executable, [*args[:2], str(self.ports[int(args[2])]), "--bind", "127.0.0.1"]
            return sys.executable, args
        if name == "node":
            return shutil.which("node") or "node", args
        if name == "npx" and args[:1] == ["wscat"]:
            return shutil.which("node") or "node", [WSCAT, "--no-color", *args[1:]]
        raise AssertionError(f"the tutorial's shell cannot run {argv}")

    @defer.inlineCallbacks
    def assign(self, terminal: str, command: str) -> Any:
        """``VAR=$(...)``: fires with what the substitution wrote on stderr."""
        match = _ASSIGNMENT.match(command)
        assert match, command
        inner = _SUBSTITUTION.fullmatch(match.group(2).strip('"'))
        assert inner, command
        out, err = yield self.capture(shlex.split(inner.group(1)))
        self.vars.setdefault(terminal, {})[match.group(1)] = out.strip()
        self.ran.add(command)
        return err

    @defer.inlineCallbacks
    def call(self, terminal: str, command: str) -> Any:
        """Run ``command`` to its end: fires with ``(stdout, stderr)``."""
        argv = shlex.split((yield self.expand(terminal, command)))
        program, args = self.program(argv)
        out, err, code = yield getProcessOutputAndValue(program, args, env=self.env, path=self.workdir, reactor=reactor)
        self.ran.add(command)
        if code != 0:
            raise AssertionError(f"{command} exited {code}\n{out.decode()}\n{err.decode()}")
        return out.decode("utf-8"), err.decode("utf-8")

    @defer.inlineCallbacks
    def start(self, terminal: str, command: str, name: str, use_pty: bool = False) -> Any:
        """Start a long-running ``command``; fires with its :class:`Child`."""
        argv = shlex.split((yield self.expand(terminal, command)))
        program, args = self.program(argv)
        child = Child(name)
        reactor.spawnProcess(child, program, [program, *args], env=self.env, path=self.workdir, usePTY=use_pty)
        self.test.addCleanup(child.stop, 5.0)
        self.ran.add(command)
        return child

    @defer.inlineCallbacks
    def serve(self, terminal: str, command: str, name: str, ready: str | None = None) -> Any:
        """Start a ``twistd`` command; fires with its :class:`Child` once it listens."""
        child = yield self.start(terminal, command, name)
        yield child.wait_for_output(
            lambda out: _LISTENING.search(out) and (ready is None or ready in out), WAIT, f"{name} listening"
        )
        return child

    @defer.inlineCallbacks
    def kill(self, terminal: str, command: str) -> Any:
        """``kill -SIGNAL PID``."""
        argv = shlex.split((yield self.expand(terminal, command)))
        assert argv[0] == "kill" and argv[1].startswith("-"), argv
        number = int(argv[1][1:]) if argv[1][1:].isdigit() else getattr(signal, f"SIG{argv[1][1:]}")
        os.kill(int(argv[2]), number)
        self.ran.add(command)
        return int(argv[2])

    @defer.inlineCallbacks
    def replay(self, block: Block) -> Any:
        """
        Play a wscat transcript in its terminal: start wscat at ``$``, type
        each ``>`` line once everything shown before it has come, and check
        each ``<`` line and every other line wscat prints.
        """
        terminal = block.terminal
        for line in block.lines:
            if line.startswith("$ "):
                child = yield self.start(terminal, line[2:], f"wscat ({block.caption})", use_pty=True)
                self.terminals[terminal] = WscatTerminal(child)
            elif line.startswith("> "):
                yield self.terminals[terminal].wait()
                self.terminals[terminal].type(line[2:])
            elif line.startswith("< "):
                self.terminals[terminal].expected.append(line[2:])
            else:
                self.terminals[terminal].notices.append(line)
        yield self.terminals[terminal].wait()
        return self.terminals[terminal]

    def assert_ran(self, page: Page, elsewhere: Iterable[str] = ()) -> None:
        """
        Every command of ``page`` has been run, but those in :data:`NOT_RUN`
        and those another test runs (``elsewhere``).
        """
        skip = {*NOT_RUN, *elsewhere}
        missing = [c for c in page.commands() if c not in self.ran and c not in skip]
        self.test.assertEqual(missing, [], f"{page.name}.rst commands this test did not run")


class TutorialTestCase(TestCase):
    """A shell in a fresh copy of the tutorial's code."""

    timeout = 240

    def setUp(self) -> None:
        require_node_modules("phoenix", "ws", "wscat")
        self.shell = Shell(self)

    def page(self, name: str) -> Page:
        return Page.read(name)

    @defer.inlineCallbacks
    def serve_one(self) -> Any:
        """Step 1's server, from step 1's command."""
        step1 = self.page("first-channel")
        block = step1.block("Terminal 1")
        server = yield self.shell.serve(block.terminal, step1.command("twistd -n phoenix"), "server")
        return server

    @defer.inlineCallbacks
    def token(self, terminal: str) -> Any:
        """Step 3's ``TOKEN=$(...)`` (user 42), in ``terminal``; fires with its stderr."""
        command = self.page("authentication").command("TOKEN=")
        err = yield self.shell.assign(terminal, command)
        return err

    def assertLog(self, server: Child, *texts: str) -> None:
        output = server.output()
        for text in texts:
            self.assertIn(text, output)


# -- the steps ---------------------------------------------------------------------------


class FirstChannelTests(TutorialTestCase):
    """Step 1: the server, wscat, phoenix.js under Node and the browser script."""

    @defer.inlineCallbacks
    def test_first_channel(self) -> Any:
        """The ping channel answers wscat and phoenix.js as the page shows; a stray event crashes it."""
        page = self.page("first-channel")
        server = yield self.serve_one()
        yield self.shell.replay(page.block("Terminal 2: wscat"))
        self.assertTrue(page.says("``CONNECTED TO UserSocket``") and page.says("``JOINED ping in PingChannel``"))
        self.assertTrue(page.says("It warns that no secret key base is configured"))
        self.assertLog(
            server, "No secret key base configured", "CONNECTED TO UserSocket", "JOINED ping in PingChannel",
            "PingChannel 'ping' crashed", "NotImplementedError",
        )

        block = page.block("Terminal 2", 1)
        [command] = block.commands()
        node = yield self.shell.start(block.terminal, command, "client.js")
        yield node.wait_lines(block.output(command))

        # browser.js, as an ES module, with Node's own (browser-like) WebSocket.
        source = Path(self.shell.workdir, "browser.js").read_text(encoding="utf-8")
        self.assertIn(f"ws://127.0.0.1:{self.shell.ports[4000]}/socket", source)
        browser = Child("browser.js")
        node_path = shutil.which("node") or "node"
        argv = [node_path, "--experimental-websocket", "--input-type=module", "-e", source]
        reactor.spawnProcess(browser, node_path, argv, env=self.shell.env, path=JS_DIR)
        self.addCleanup(browser.stop, 5.0)
        yield browser.wait_lines(block.output(command))

        # The page's module map names the phoenix package that npm installs.
        html = (CODE / "index.html").read_text(encoding="utf-8")
        module = re.search(r'"phoenix": "\./([^"]+)"', html).group(1)
        self.assertTrue(os.path.isfile(os.path.join(JS_DIR, module)), module)
        self.assertIn('<script type="module" src="browser.js"></script>', html)
        self.shell.assert_ran(page, elsewhere=[page.command("python -m http.server")])


class BrowserTests(TutorialTestCase):
    """Step 1's page, served as the page says, in headless Chromium."""

    def setUp(self) -> None:
        # (browser.js also runs under Node, in FirstChannelTests.)
        require_program(CHROMIUM, "chromium")
        return super().setUp()

    def chromium(self, url: str) -> Child:
        """Headless Chromium, showing ``url``; stopped in cleanup."""
        profile = tempfile.mkdtemp(prefix="twisted_phoenix-tutorial-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        args = [
            "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
            "--enable-logging=stderr", "--v=0", url,
        ]
        browser = Child("chromium")
        reactor.spawnProcess(browser, CHROMIUM, [CHROMIUM, *args], env=self.shell.env, path=self.shell.workdir)
        self.addCleanup(browser.stop, 5.0)
        return browser

    @staticmethod
    def console(browser: Child) -> list[str]:
        """What the page logged on the browser's console."""
        return re.findall(r':CONSOLE[^\]]*\] "([^"]*)"', browser.stderr.decode("utf-8", "replace"))

    @defer.inlineCallbacks
    def test_page(self) -> Any:
        """index.html, from localhost and (in dev) from 127.0.0.1, joins ping and gets its reply."""
        page = self.page("first-channel")
        server = yield self.serve_one()
        http = yield self.shell.start("Terminal 3", page.command("python -m http.server"), "http.server")
        yield http.wait_for_output(lambda out: "Serving HTTP" in out, WAIT, "http.server listening")

        self.assertTrue(page.says("and open http://localhost:8000/ : the browser's console shows ``joined ping``"))
        browser = self.chromium(f"http://localhost:{self.shell.ports[8000]}/")
        said = ["joined ping", "got [object Object]"]  # how Chromium logs console.log("got", reply)
        yield browser.wait_for_output(lambda _: self.console(browser) == said, WAIT, f"the console to say {said}")
        yield browser.stop(5.0)
        self.assertLog(server, "JOINED ping in PingChannel")

        self.assertTrue(page.says("so http://127.0.0.1:8000/ works too"))
        browser = self.chromium(f"http://127.0.0.1:{self.shell.ports[8000]}/")
        yield browser.wait_for_output(lambda _: self.console(browser) == said, WAIT, f"the console to say {said}")
        yield browser.stop(5.0)
        self.assertNotIn("Could not check origin", server.output())


class RepliesAndPushesTests(TutorialTestCase):
    """Step 2: alice and bob in room:lobby, over wscat."""

    @defer.inlineCallbacks
    def test_two_members(self) -> Any:
        """Replies, pushes, broadcasts, broadcast_from, the mute filter and the late reply, as shown."""
        page = self.page("replies-and-pushes")
        yield self.serve_one()
        terminals = {}
        for block in page.blocks:
            if block.caption.startswith("Terminal"):
                terminals[block.terminal] = yield self.shell.replay(block)
        alice, bob = terminals["Terminal 2"], terminals["Terminal 3"]
        # Nothing more came: not bob's shout to alice, nor his typing to bob.
        yield alice.sync()
        yield bob.sync()
        # The answer came about a second after the message before it.
        answer = next(i for i, line in enumerate(alice.expected) if '"answer":42' in line)
        self.assertGreaterEqual(alice.arrival(answer) - alice.arrival(answer - 1), 0.5)
        self.shell.assert_ran(page)


class AuthenticationTests(TutorialTestCase):
    """Step 3: the token command, the refused and the accepted connection, sign_out."""

    @defer.inlineCallbacks
    def test_authentication(self) -> Any:
        """No token: 403; a token for 42: user:42 only; sign_out closes with 1001; the log says so."""
        page = self.page("authentication")
        server = yield self.serve_one()
        block = page.block("Terminal 2")
        [command] = block.commands()
        err = yield self.shell.assign(block.terminal, command)
        self.assertEqual(err.splitlines(), block.output(command))
        for block in page.blocks[page.blocks.index(block) + 1:]:
            if block.commands() and block.commands()[0].startswith("npx wscat"):
                terminal = yield self.shell.replay(block)
                yield wait_ended(terminal.child, WAIT)
                terminal.check(exact=True)
        self.assertTrue(page.says("(``REFUSED CONNECTION TO AuthSocket``)"))
        self.assertLog(server, "REFUSED CONNECTION TO AuthSocket", "CONNECTED TO AuthSocket", "'token': '[FILTERED]'")
        self.shell.assert_ran(page)


class RecurringTests(TutorialTestCase):
    """Step 4: fresh tokens on a timer, and terminate."""

    @defer.inlineCallbacks
    def test_recurring(self) -> Any:
        """A fresh, valid token 5 s after the join and 5 s later; a leave logs terminate's reason."""
        from twisted_phoenix.config import DEV_SECRET_KEY_BASE
        from twisted_phoenix.token import verify

        page = self.page("recurring")
        server = yield self.serve_one()
        terminal_name = page.block("Terminal 2").terminal
        yield self.token(terminal_name)
        terminal = yield self.shell.replay(page.block("Terminal 2"))
        got = terminal.incoming()
        tokens = [i for i, line in enumerate(terminal.expected) if '"new_token"' in line]
        self.assertEqual(len(tokens), 2)
        joined = terminal.arrival(tokens[0] - 1)
        first, second = terminal.arrival(tokens[0]), terminal.arrival(tokens[1])
        # One period (5 s) after the join, then one more; never early.
        self.assertGreaterEqual(first - joined, 3.0)
        self.assertGreaterEqual(second - first, 3.0)
        for i in tokens:
            token = json.loads(got[i])[4]["token"]
            self.assertEqual(verify(DEV_SECRET_KEY_BASE, "user socket", token).data, 42)
        self.assertNotEqual(got[tokens[0]], got[tokens[1]])
        self.assertTrue(page.says("A token arrives five seconds after the join, and another five seconds later"))
        for line in page.block("Terminal 1: the server").lines:
            yield server.wait_for_output(lambda out, line=line: line in out, WAIT, line)
        self.shell.assert_ran(page)


class ClusterTestCase(TutorialTestCase):
    """Step 5's two nodes."""

    @defer.inlineCallbacks
    def start_nodes(self) -> Any:
        """Nodes a and b, from step 5's commands; fires with both once linked."""
        page = self.page("cluster")
        a = yield self.shell.serve("Terminal 1", page.command("twistd -n --pidfile a.pid"), "a")
        b = yield self.shell.serve("Terminal 2", page.command("twistd -n --pidfile b.pid"), "b")
        self.assertTrue(page.says("a logs ``Node b@127.0.0.1 connected to a@127.0.0.1``"))
        yield a.wait_for_output(lambda out: "Node b@127.0.0.1 connected to a@127.0.0.1" in out, WAIT, "the link")
        return a, b


class ClusterTests(ClusterTestCase):
    """Step 5: two nodes, a client on each, and a broadcast from the console."""

    @defer.inlineCallbacks
    def test_cluster(self) -> Any:
        """A shout on a reaches bob on b; the console's broadcast reaches both; Node.list() is printed."""
        page = self.page("cluster")
        yield self.start_nodes()
        terminals = {}
        for block in page.blocks:
            if block.terminal in ("Terminal 3", "Terminal 4"):
                terminals[block.terminal] = yield self.shell.replay(block)
            elif block.terminal == "Terminal 5":
                [command] = block.commands()
                out, err = yield self.shell.call(block.terminal, command)
                self.assertEqual(out.splitlines(), block.output(command), err)
        for terminal in terminals.values():
            yield terminal.sync()
        self.shell.assert_ran(page)


class PresenceTests(ClusterTestCase):
    """Step 6: presence across the two nodes, a clean stop, a restart and a kill."""

    @defer.inlineCallbacks
    def lobby(self, block: Block, name: str) -> Any:
        """The block's ``TOKEN=`` and ``node lobby.js`` commands; fires with the client."""
        assignment, command = block.commands()
        yield self.shell.assign(block.terminal, assignment)
        client = yield self.shell.start(block.terminal, command, name)
        return client

    @defer.inlineCallbacks
    def test_presence(self) -> Any:
        """Both lists show both; a clean stop drops bob at once; a dead node's bob leaves after 15-32 s."""
        page = self.page("presence")
        cluster = self.page("cluster")
        a, b = yield self.start_nodes()
        alice_block, bob_block = page.block("Terminal 3"), page.block("Terminal 4")
        alice = yield self.lobby(alice_block, "alice")
        shown = alice_block.output(alice_block.commands()[1])
        yield alice.wait_lines(shown[:-1])
        bob = yield self.lobby(bob_block, "bob")
        yield bob.wait_lines(bob_block.output(bob_block.commands()[1]))
        yield alice.wait_lines(shown)
        # bob's client has had a fresh token from RecurringChannel (step 4).
        yield bob.wait_lines(["new token"], timeout=WAIT)

        # Ctrl-C on b: bob leaves alice's list at once.
        stopped, restarted, killed = page.block("Terminal 3", 1), page.block("Terminal 3", 2), page.block("Terminal 3", 3)
        mark = alice.mark()
        b.transport.signalProcess("INT")
        yield wait_ended(b, WAIT)
        yield alice.wait_lines(stopped.lines, since=mark, timeout=10)

        # b again: bob's client reconnects with its fresh token, and is back.
        self.assertTrue(page.says("Start node b again with the same command as in step 5"))
        mark, bob_mark = alice.mark(), bob.mark()
        b = yield self.shell.serve("Terminal 2", cluster.command("twistd -n --pidfile b.pid"), "b again")
        yield bob.wait_lines(["joined room:lobby as 7"], since=bob_mark)
        yield alice.wait_lines(restarted.lines, since=mark)

        # kill -9: the link drops at once, bob stays listed until b's replica is down.
        mark = alice.mark()
        [command] = page.block("Terminal 5").commands()
        pid = yield self.shell.kill("Terminal 5", command)
        self.assertEqual(pid, b.transport.pid)
        killed_at = reactor.seconds()
        yield a.wait_for_output(lambda out: "Node b@127.0.0.1 is down" in out, 10, "the lost link")
        self.assertNotIn(killed.lines[0], alice.lines(mark))
        yield alice.wait_lines(killed.lines, since=mark, timeout=50)
        elapsed = reactor.seconds() - killed_at
        self.assertGreaterEqual(elapsed, 10, "bob left as soon as b died")
        self.assertTrue(page.says("between 15 and about 32 seconds after the kill"))
        self.assertRegex(a.output(), r"Presence replica b@127\.0\.0\.1/\S+ is down")
        self.shell.assert_ran(page)


class TestingTests(TutorialTestCase):
    """Step 7: the tutorial's own tests, under trial and pytest."""

    @defer.inlineCallbacks
    def test_testing(self) -> Any:
        """test_myapp.py passes under both, with the output the page shows."""
        page = self.page("testing")
        block = page.block("Terminal 2")

        def normal(lines: Iterable[str]) -> list[str]:
            return [re.sub(r"in \d+\.\d+s", "in Xs", " ".join(line.split())) for line in lines if line.strip()]

        for command in block.commands():
            out, err = yield self.shell.call(block.terminal, command)
            self.assertEqual(normal(out.splitlines()), normal(block.output(command)), err)
        self.shell.assert_ran(page)


class PythonClientTests(TutorialTestCase):
    """Step 8: the bot, with a user who joins, shouts !who and leaves."""

    @defer.inlineCallbacks
    def test_bot(self) -> Any:
        """The bot prints who is online, welcomes user 42 and answers !who, as the page shows."""
        from twisted_phoenix.client import Socket

        page = self.page("python-client")
        yield self.serve_one()
        block = page.block("Terminal 6")
        [command] = block.commands()
        bot = yield self.shell.start(block.terminal, command, "bot.py")
        yield bot.wait_lines(block.output(command))

        yield self.token("Terminal 7")
        token = self.shell.vars["Terminal 7"]["TOKEN"]
        socket = Socket(f"ws://127.0.0.1:{self.shell.ports[4000]}/auth_socket", {"token": token}, reactor=reactor)
        self.addCleanup(socket.disconnect)
        room = socket.channel("room:lobby")
        shouts: list[Any] = []
        room.on("shout", shouts.append)
        yield socket.connect().addTimeout(WAIT, reactor)
        yield room.join()
        welcome, who = [json.loads(line) for line in re.findall(r'^   (\{"from": "1".*\})$', page.text, re.M)]
        yield wait_until(reactor, lambda: welcome in shouts, WAIT, what="the bot's welcome")
        yield room.push("shout", {"body": "!who"})
        yield wait_until(reactor, lambda: who in shouts, WAIT, what="the bot's answer")
        self.assertEqual(shouts, [welcome, {"from": "42", "body": "!who"}, who])
        self.assertTrue(page.says("the bot prints ``online: 1, 42``; when 42 leaves, ``online: 1``"))
        yield bot.wait_lines(["online: 1, 42"])
        mark = bot.mark()
        yield room.leave()
        yield bot.wait_lines(["online: 1"], since=mark)
        self.shell.assert_ran(page)


# -- the pages themselves ------------------------------------------------------------------


class TutorialPagesTests(SynchronousTestCase):
    """The pages these tests read are the tutorial's, and every command is accounted for."""

    def test_pages(self) -> None:
        """The tutorial's table of contents lists exactly the pages tested here, in order."""
        index = (TUTORIAL / "index.rst").read_text(encoding="utf-8")
        toctree = re.search(r"\.\. toctree::\n(?:   :.*\n)*\n((?:   \S.*\n)+)", index).group(1)
        self.assertEqual(toctree.split(), PAGES)
        self.assertIn("   tutorial/index\n", (TUTORIAL.parent / "index.rst").read_text(encoding="utf-8"))

    def test_not_run(self) -> None:
        """The commands not run are the setup commands, each shown once."""
        shown = Page.read("index").commands() + [c for name in PAGES for c in Page.read(name).commands()]
        self.assertEqual(sorted(c for c in shown if c in NOT_RUN), sorted(NOT_RUN))
        self.assertIn("python -m http.server 8000", shown)  # run by BrowserTests
        self.assertEqual(Page.read("index").commands(), ["mkdir myapp && cd myapp", "npm install phoenix ws wscat"])

    def test_code_blocks(self) -> None:
        """Every page has blocks to check, and no command continues on another line."""
        for name in PAGES:
            page = Page.read(name)
            self.assertTrue(page.commands(), name)
            for command in page.commands():
                self.assertFalse(command.endswith("\\"), command)

    def test_matches(self) -> None:
        """``...`` stands for any text inside a JSON string, nothing more."""
        self.assertTrue(matches('{"token":"SFMyNTY..."}', '{"token":"SFMyNTY.g2g.abc"}'))
        self.assertFalse(matches('{"token":"SFMyNTY..."}', '{"token":"SFMyNTY.g2g","x":"y"}'))
        self.assertTrue(in_order(["a", "c"], ["a", "b", "c"]))
        self.assertFalse(in_order(["c", "a"], ["a", "b", "c"]))
