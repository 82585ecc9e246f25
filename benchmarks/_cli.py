"""
What every workload's command line shares: the servers (and the external
one), the log directory, ``--json``; and running a workload (the run's log
directory, the open-files limit, every child killed at the end).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import signal
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from benchmarks import _report
from benchmarks._loadgen import ensure_node_modules
from benchmarks._proc import BenchmarkError, Child, raise_nofile
from benchmarks._servers import SPECS, Spec, external_spec

T = TypeVar("T")


def interleaved(runs: int, items: Sequence[T]) -> Iterator[tuple[int, T]]:
    """
    ``(run, item)`` for runs 1 to ``runs``, every item once a run, the order
    rotated run by run, so that a noisy moment falls on each item alike.
    """
    for run in range(1, runs + 1):
        k = (run - 1) % len(items)
        for item in (*items[k:], *items[:k]):
            yield run, item


def split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def add_servers(p: argparse.ArgumentParser, default: str, choices: Iterable[str] | None = None) -> None:
    """--servers and the external server's options."""
    choices = tuple(choices or SPECS)
    p.add_argument("--servers", default=default,
                   help=f"comma-separated, from: {', '.join(choices)} ({default})")
    p.add_argument("--phoenix-options", default="", metavar="OPTIONS",
                   help="more `twistd phoenix` options for twisted_phoenix, e.g. \"--event-rate none\" "
                   "(printed next to its figures)")
    add_external(p)


def add_external(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("an external server, measured side by side with twisted_phoenix")
    g.add_argument("--external", metavar="COMMAND", default="",
                   help="a shell command that starts it (run in the current directory), e.g. \"mix phx.server\"")
    g.add_argument("--external-port", type=int, default=0,
                   help="the port it listens on (alone: a server already running there)")
    g.add_argument("--external-path", default="/socket/websocket?vsn=2.0.0",
                   help="its WebSocket path (/socket/websocket?vsn=2.0.0)")
    g.add_argument("--external-label", default="", help="its name in the tables")
    g.add_argument("--external-timeout", type=float, default=120.0,
                   help="seconds its command may take to listen (120)")


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", dest="json_path", help="also write every figure to this file")
    p.add_argument("--logdir", default="", help="keep the servers' logs, the generators' stderr and profiles here")


def servers(parser: argparse.ArgumentParser, args: argparse.Namespace,
            choices: Iterable[str] | None = None) -> list[Spec]:
    """The specs of --servers, plus the external server when given."""
    choices = tuple(choices or SPECS)
    names = split(args.servers)
    unknown = [n for n in names if n not in choices and n != "external"]
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    specs = [SPECS[n] for n in names if n != "external"]
    if getattr(args, "phoenix_options", ""):
        extra = tuple(shlex.split(args.phoenix_options))
        specs = [dataclasses.replace(s, options=s.options + extra) if s.kind == "phoenix" else s for s in specs]
    if args.external or args.external_port:
        try:
            specs.append(external_spec(args.external, args.external_port, args.external_path, args.external_label))
        except BenchmarkError as e:
            parser.error(str(e))
    elif "external" in names:
        parser.error("server 'external' needs --external-port (and --external COMMAND)")
    if not specs:
        parser.error("no server to measure")
    return specs


@dataclass
class Run:
    """One invocation's working state: its log directory and what it learned about the machine."""

    logdir: str
    machine: dict[str, str] = field(default_factory=dict)
    own_logdir: bool = False


@contextmanager
def workspace(args: argparse.Namespace, need_files: int = 0, node: bool = True) -> Iterator[Run]:
    """The run's log directory, the open-files limit, node_modules; every child killed at the end."""
    soft = raise_nofile()
    if soft < need_files:
        raise BenchmarkError(f"open files are capped at {soft} (ulimit -Hn); this run needs {need_files}")
    if node:
        ensure_node_modules()
    own = not args.logdir
    logdir = tempfile.mkdtemp(prefix="twisted-phoenix-bench-") if own else args.logdir
    os.makedirs(logdir, exist_ok=True)
    run = Run(logdir, _report.machine_info(), own)
    _report.print_machine(run.machine)
    try:
        yield run
    finally:
        Child.kill_all()
        if own:
            shutil.rmtree(logdir, ignore_errors=True)


def main(body: Callable[[], Any]) -> int:
    """Run a workload: Ctrl-C and SIGTERM end it cleanly, a BenchmarkError is reported, not raised."""
    # SIGTERM ends the harness like Ctrl-C: the finally clauses kill every child.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        body()
    except KeyboardInterrupt:
        print("\ninterrupted; every child process was killed", file=sys.stderr)
        return 130
    except BenchmarkError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        Child.kill_all()
    return 0


def subcommand(sub: Any, name: str, help: str, description: str | None,
               add_arguments: Callable[[argparse.ArgumentParser], None],
               run: Callable[[argparse.ArgumentParser, argparse.Namespace], Any]) -> argparse.ArgumentParser:
    """Add ``python -m benchmarks <name>``: its options, and what runs it."""
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=lambda args: run(p, args))
    return p
