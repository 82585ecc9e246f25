"""
Tests for :mod:`twisted_phoenix.cli`, the ``twisted-phoenix`` command.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from typing import TextIO
from unittest import mock

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import cli
from twisted_phoenix.config import DEV_SECRET_KEY_BASE
from twisted_phoenix.examples.hello_sockets import SALT
from twisted_phoenix.tap import Options
from twisted_phoenix.token import EXPIRED, INVALID, decrypt, verify

SECRET = "s" * 64


def run(*argv: str) -> tuple[int, str, str]:
    """Run ``twisted-phoenix argv`` and return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def isolate_environment(test: SynchronousTestCase, **values: str) -> None:
    """Run ``test`` without SECRET_KEY_BASE, PHOENIX_ENV or PORT, except ``values``."""
    patcher = mock.patch.dict(os.environ)
    patcher.start()
    test.addCleanup(patcher.stop)
    for name in ("PORT", "SECRET_KEY_BASE", "PHOENIX_ENV"):
        os.environ.pop(name, None)
    os.environ.update(values)


class TokenCommandTests(SynchronousTestCase):
    """
    ``twisted-phoenix token``.
    """

    def setUp(self) -> None:
        isolate_environment(self)

    def token(self, *argv: str) -> str:
        code, out, err = run("token", *argv)
        self.assertEqual(code, 0, err)
        self.assertEqual(out.count("\n"), 1)
        return out.strip()

    def test_dev_default(self) -> None:
        """With nothing configured, the token is signed with the dev secret for the demo's salt, on stdout only."""
        code, out, err = run("token", "42")
        self.assertEqual(code, 0)
        result = verify(DEV_SECRET_KEY_BASE, "salt identifier", out.strip())
        self.assertTrue(result.ok)
        self.assertEqual(result.data, 42)
        self.assertIn("development secret", err)

    def test_same_secret_as_server(self) -> None:
        """The token verifies with the secret ``twistd phoenix`` resolves from the same settings."""
        for argv, environment in (
            ((), {}),
            (("--secret-key-base", SECRET), {}),
            ((), {"SECRET_KEY_BASE": SECRET}),
            ((), {"SECRET_KEY_BASE": SECRET, "PHOENIX_ENV": "prod"}),
            (("--env", "test"), {}),
        ):
            with mock.patch.dict(os.environ, environment):
                server = Options()
                server.parseOptions(list(argv))
                token = self.token("7", *argv)
            self.assertEqual(verify(server["secret"], SALT, token).data, 7, (argv, environment))

    def test_user_id_types(self) -> None:
        """A user id made of digits is signed as an integer, anything else as a string."""
        for text, expected in (("42", 42), ("007", 7), ("-3", -3), ("alice", "alice"), ("4a", "4a"), ("٤٢", "٤٢")):
            token = self.token(text, "--secret-key-base", SECRET)
            data = verify(SECRET, SALT, token).data
            self.assertEqual((type(data), data), (type(expected), expected))

    def test_explicit_secret(self) -> None:
        """``--secret-key-base`` signs with that secret, silently."""
        code, out, err = run("token", "42", "--secret-key-base", SECRET)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(verify(SECRET, SALT, out.strip()).data, 42)
        self.assertEqual(verify(DEV_SECRET_KEY_BASE, SALT, out.strip()).error, INVALID)

    def test_environment_secret(self) -> None:
        """``SECRET_KEY_BASE`` is used when no ``--secret-key-base`` is given."""
        os.environ["SECRET_KEY_BASE"] = SECRET
        self.assertEqual(verify(SECRET, SALT, self.token("42")).data, 42)

    def test_salt(self) -> None:
        """``--salt`` signs for another salt."""
        token = self.token("42", "--salt", "other", "--secret-key-base", SECRET)
        self.assertEqual(verify(SECRET, "other", token).data, 42)
        self.assertEqual(verify(SECRET, SALT, token).error, INVALID)

    def test_max_age(self) -> None:
        """``--max-age`` is stored in the token: it expires after that many seconds."""
        token = self.token("42", "--max-age", "60", "--secret-key-base", SECRET)
        clock = Clock()
        clock.advance(time.time() + 30)
        self.assertTrue(verify(SECRET, SALT, token, clock=clock).ok)
        clock.advance(40)
        self.assertEqual(verify(SECRET, SALT, token, clock=clock).error, EXPIRED)

    def test_encrypt(self) -> None:
        """``--encrypt`` prints an encrypted token, which decrypts with the salt as secret."""
        token = self.token("42", "--encrypt", "--salt", "other", "--secret-key-base", SECRET)
        self.assertTrue(token.startswith("XCP."))
        self.assertEqual(decrypt(SECRET, "other", token).data, 42)
        self.assertEqual(decrypt(SECRET, SALT, token).error, INVALID)
        self.assertEqual(verify(SECRET, "other", token).error, INVALID)

    def test_compressed(self) -> None:
        """``--compressed`` compresses a long user id, signed or encrypted."""
        user = "user-" + "x" * 200
        token = self.token(user, "--compressed", "--secret-key-base", SECRET)
        self.assertTrue(token.startswith("SFMyNTY.g1A"))  # 131, 80: compressed
        self.assertLess(len(token), len(self.token(user, "--secret-key-base", SECRET)))
        self.assertEqual(verify(SECRET, SALT, token).data, user)
        token = self.token(user, "--compressed", "--encrypt", "--secret-key-base", SECRET)
        self.assertEqual(decrypt(SECRET, SALT, token).data, user)

    def test_bad_max_age(self) -> None:
        """A max age that is not a positive whole number is a usage error (2)."""
        for bad in ("0", "-5", "1.5", "day"):
            code, out, err = run("token", "42", "--max-age", bad)
            self.assertEqual((code, out), (2, ""), bad)
            self.assertIn("--max-age", err)

    def test_prod_without_secret(self) -> None:
        """In prod without a secret nothing is printed on stdout, an error on stderr, exit 2."""
        for argv, environment in ((("--env", "prod"), {}), ((), {"PHOENIX_ENV": "prod"})):
            with mock.patch.dict(os.environ, environment):
                code, out, err = run("token", "42", *argv)
            self.assertEqual((code, out), (2, ""))
            self.assertIn("twisted-phoenix token: error: ", err)
            self.assertIn("SECRET_KEY_BASE", err)

    def test_prod_short_secret(self) -> None:
        """In prod a secret shorter than 64 characters is refused (2)."""
        code, out, err = run("token", "42", "--env", "prod", "--secret-key-base", "short")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("64", err)

    def test_unknown_env(self) -> None:
        """An unknown environment is refused (2)."""
        code, out, err = run("token", "42", "--env", "staging")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("staging", err)

    def test_missing_user_id(self) -> None:
        """Without USER_ID, the usage and an error go to stderr (2)."""
        code, out, err = run("token")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("usage: twisted-phoenix token", err)
        self.assertIn("USER_ID", err)


class SecretCommandTests(SynchronousTestCase):
    """
    ``twisted-phoenix secret``.
    """

    def test_fresh_secret(self) -> None:
        """Each call prints a different 64-character secret that prod accepts."""
        first, second = run("secret"), run("secret")
        for code, out, err in (first, second):
            self.assertEqual((code, err), (0, ""))
            self.assertEqual(len(out.strip()), 64)
            self.assertTrue(out.endswith("\n"))
        self.assertNotEqual(first[1], second[1])
        options = Options()
        with mock.patch.dict(os.environ, {"PHOENIX_ENV": "prod", "SECRET_KEY_BASE": first[1].strip()}):
            options.parseOptions([])
        self.assertEqual(options["secret"], first[1].strip())

    def test_length(self) -> None:
        """``--length`` chooses the length; fewer than 32 characters is refused (2)."""
        code, out, err = run("secret", "--length", "40")
        self.assertEqual((code, len(out.strip())), (0, 40))
        code, out, err = run("secret", "--length", "31")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("twisted-phoenix secret: error: ", err)


class MainTests(SynchronousTestCase):
    """
    The command line as a whole.
    """

    def test_help(self) -> None:
        """``--help`` lists every subcommand on stdout and exits 0."""
        code, out, err = run("--help")
        self.assertEqual((code, err), (0, ""))
        for command in cli.COMMANDS:
            self.assertIn(command.name, out)
            self.assertIn(command.help, out)

    def test_subcommand_help(self) -> None:
        """``token --help`` documents its options."""
        code, out, err = run("token", "--help")
        self.assertEqual(code, 0)
        for option in (
            "USER_ID",
            "--salt",
            "--max-age",
            "--encrypt",
            "--compressed",
            "--secret-key-base",
            "--env",
        ):
            self.assertIn(option, out)

    def test_version(self) -> None:
        """``--version`` prints the package version."""
        from twisted_phoenix import __version__

        self.assertEqual(run("--version"), (0, f"twisted-phoenix {__version__}\n", ""))

    def test_no_command(self) -> None:
        """Without a subcommand, usage goes to stderr and the exit code is 2."""
        code, out, err = run()
        self.assertEqual((code, out), (2, ""))
        self.assertIn("usage: twisted-phoenix", err)

    def test_unknown_command(self) -> None:
        """An unknown subcommand is an error (2) naming it."""
        code, out, err = run("frobnicate")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("frobnicate", err)

    def test_default_streams(self) -> None:
        """Without streams, main writes to sys.stdout and reads sys.argv."""
        out = io.StringIO()
        with mock.patch("sys.argv", ["twisted-phoenix", "secret"]), mock.patch("sys.stdout", out):
            self.assertEqual(cli.main(), 0)
        self.assertEqual(len(out.getvalue().strip()), 64)

    def test_new_command(self) -> None:
        """A Command added to COMMANDS becomes a subcommand with its own arguments."""
        seen: list[argparse.Namespace] = []

        def configure(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--node")

        def run_it(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
            seen.append(args)
            stdout.write("ran\n")
            return 3

        cli.COMMANDS.append(cli.Command("example", "an example", "An example.", configure, run_it))
        self.addCleanup(cli.COMMANDS.pop)
        self.assertEqual(run("example", "--node", "a@b"), (3, "ran\n", ""))
        self.assertEqual(seen[0].node, "a@b")
        self.assertIn("an example", run("--help")[1])

    def test_command_usage_error(self) -> None:
        """A UsageError raised by a command is reported on stderr with exit code 2."""

        def run_it(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
            raise cli.UsageError("no node named 'x'")

        cli.COMMANDS.append(cli.Command("example", "", "", lambda parser: None, run_it))
        self.addCleanup(cli.COMMANDS.pop)
        self.assertEqual(run("example"), (2, "", "twisted-phoenix example: error: no node named 'x'\n"))


class ConsoleCommandTests(SynchronousTestCase):
    """
    ``twisted-phoenix console``'s command line (the console itself is tested in tests/test_console.py).
    """

    def test_needs_name(self) -> None:
        """Without ``--name`` the console refuses to start (2)."""
        code, out, err = run("console")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("--name", err)

    def test_config_error(self) -> None:
        """A configuration error is reported on stderr with exit code 2, before any node starts."""
        code, out, err = run("console", "--name", "a@127.0.0.1", "--cookie", "c", "--env", "staging")
        self.assertEqual((code, out), (2, ""))
        self.assertIn("twisted-phoenix console: error: ", err)
        self.assertIn("staging", err)
