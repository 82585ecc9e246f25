# -*- test-case-name: tests.test_cli -*-
"""
The ``twisted-phoenix`` command.

``twisted-phoenix token USER_ID``
    Print a token that the demo's ``/auth_socket`` accepts for ``USER_ID``
    (a ``Phoenix.Token`` signed with the salt ``"salt identifier"``).  The
    secret is resolved exactly as ``twistd phoenix`` resolves it
    (``--secret-key-base``, else ``SECRET_KEY_BASE``, else, outside
    ``prod``, the public development secret), so with nothing configured
    both sides agree.  ``--encrypt`` prints an encrypted token instead
    (``Phoenix.Token.encrypt/4``), ``--compressed`` compresses the data.

``twisted-phoenix secret``
    Print a fresh random secret key base, as ``mix phx.gen.secret`` does.

``twisted-phoenix console --name NAME``
    A Python prompt on a new cluster node: see :mod:`twisted_phoenix.console`.

Each subcommand is a :class:`Command`: a name, a function that adds its
arguments to an :mod:`argparse` parser, and a function that runs it.  A new
subcommand is one more entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TextIO

from . import __version__
from .config import DEV_SECRET_KEY_BASE, ConfigError, resolve_env, resolve_secret
from .token import DEFAULT_MAX_AGE, encrypt, generate_secret, sign

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main", "parse_user_id"]

PROG = "twisted-phoenix"

#: The salt of the demo's AuthSocket (the Real-Time Phoenix book's).
DEMO_SALT = "salt identifier"

_INTEGER = re.compile(r"-?[0-9]+")


class UsageError(Exception):
    """
    A bad argument or setting: ``main`` prints it on stderr and returns 2.
    """


@dataclass(frozen=True)
class Command:
    """
    One subcommand of ``twisted-phoenix``.

    :ivar name: what the user types.
    :ivar help: a one-line summary for ``twisted-phoenix --help``.
    :ivar description: the longer text of ``twisted-phoenix NAME --help``.
    :ivar configure: adds the subcommand's arguments to its parser.
    :ivar run: runs it with the parsed arguments, writing to the given
        stdout and stderr, and returns the exit code.  It may raise
        :class:`UsageError`.
    """

    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, TextIO, TextIO], int]


def parse_user_id(text: str) -> int | str:
    """
    A user id as the demo signs it: an integer when ``text`` is made of
    (ASCII) digits, with an optional minus sign, else the string itself.
    """
    return int(text) if _INTEGER.fullmatch(text) else text


# -- token ---------------------------------------------------------------------------


def _positive_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of seconds, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def _configure_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", metavar="USER_ID", help="the user id; digits make an integer")
    parser.add_argument(
        "--salt", default=DEMO_SALT, help=f"the token's salt (default: {DEMO_SALT!r}, the demo's)"
    )
    parser.add_argument(
        "--max-age",
        type=_positive_seconds,
        default=DEFAULT_MAX_AGE,
        metavar="SECONDS",
        help=f"seconds the token stays valid (default: {DEFAULT_MAX_AGE})",
    )
    parser.add_argument(
        "--encrypt",
        action="store_true",
        help=(
            "encrypt the token (Phoenix.Token.encrypt/4), with the salt as its secret; "
            "the demo's /auth_socket only accepts signed tokens"
        ),
    )
    parser.add_argument(
        "--compressed",
        action="store_true",
        help="compress the data, as Phoenix.Token's compressed: true does",
    )
    _add_secret_options(parser)


def _add_secret_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-key-base",
        metavar="SECRET",
        help="the server's secret (default: $SECRET_KEY_BASE; in dev and test, the public development secret)",
    )
    parser.add_argument(
        "--env",
        metavar="ENV",
        help="dev, test or prod (default: $PHOENIX_ENV, else dev); prod requires a secret",
    )


def _resolve_secret(args: argparse.Namespace, stderr: TextIO) -> str:
    """The secret ``twistd phoenix`` would use with the same settings."""
    try:
        env = resolve_env(args.env)
        secret = resolve_secret(args.secret_key_base, env)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if secret == DEV_SECRET_KEY_BASE:
        stderr.write(
            f"{PROG}: no secret key base configured: signing with the public development "
            "secret, which only a dev or test server accepts\n"
        )
    return secret


def _run_token(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    secret = _resolve_secret(args, stderr)
    make = encrypt if args.encrypt else sign
    token = make(
        secret,
        args.salt,
        parse_user_id(args.user_id),
        max_age=args.max_age,
        compressed=args.compressed,
    )
    stdout.write(token + "\n")
    return 0


TOKEN = Command(
    name="token",
    help="print a token that the demo's /auth_socket accepts",
    description=(
        "Print a Phoenix.Token for USER_ID, signed with the salt the demo's "
        "/auth_socket checks.  Connect with "
        "ws://localhost:4000/auth_socket/websocket?vsn=2.0.0&token=TOKEN."
    ),
    configure=_configure_token,
    run=_run_token,
)


# -- secret --------------------------------------------------------------------------


def _configure_secret(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--length", type=int, default=64, metavar="N", help="characters (default: 64, at least 32)"
    )


def _run_secret(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    try:
        secret = generate_secret(args.length)
    except ValueError as e:
        raise UsageError(str(e)) from None
    stdout.write(secret + "\n")
    return 0


SECRET = Command(
    name="secret",
    help="print a fresh random secret key base",
    description=(
        "Print a random secret suitable for SECRET_KEY_BASE or --secret-key-base, "
        "as mix phx.gen.secret does."
    ),
    configure=_configure_secret,
    run=_run_secret,
)


# -- console -------------------------------------------------------------------------


def _configure_console(parser: argparse.ArgumentParser) -> None:
    from .console import add_arguments

    add_arguments(parser)


def _run_console(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from twisted.python.usage import UsageError as TwistedUsageError

    from .console import run

    try:
        return run(args)
    except (ConfigError, TwistedUsageError) as e:
        raise UsageError(str(e)) from None


CONSOLE = Command(
    name="console",
    help="a Python prompt on a new cluster node",
    description=(
        "Start a cluster node and give a Python prompt with Node, Endpoint and "
        "reactor in scope; see twisted_phoenix.console."
    ),
    configure=_configure_console,
    run=_run_console,
)


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: list[Command] = [TOKEN, SECRET, CONSOLE]


# -- main ----------------------------------------------------------------------------


class _ParseError(UsageError):
    """An argparse error, already worded as argparse words them."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so main returns."""

    def error(self, message: str) -> Any:
        raise _ParseError(f"{self.format_usage()}{self.prog}: error: {message}")


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser of ``twisted-phoenix`` with ``commands``."""
    parser = _Parser(
        prog=PROG,
        description="Tools for twisted_phoenix servers (the server itself is `twistd -n phoenix`).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=_Parser, required=True
    )
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.description)
        command.configure(sub)
        sub.set_defaults(_command=command)
    return parser


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run ``twisted-phoenix`` and return its exit code: the command's (0 on
    success), or 2 after a usage or configuration error (explained on
    ``stderr``).

    :param argv: the arguments, without the program name; by default
        ``sys.argv[1:]``.
    :param stdout: where results (and ``--help``) go; by default
        :data:`sys.stdout`.
    :param stderr: where errors and warnings go; by default
        :data:`sys.stderr`.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        with contextlib.redirect_stdout(out):  # where argparse prints --help
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as e:  # after --help or --version
                return e.code if isinstance(e.code, int) else 0
        command: Command = args._command
        try:
            return command.run(args, out, err)
        except UsageError as e:
            raise UsageError(f"{PROG} {command.name}: error: {e}") from None
    except UsageError as e:
        err.write(f"{e}\n")
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
