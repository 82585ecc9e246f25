"""
What every benchmark server process shares: logging, listening, and the
control lines the harness sends on the server's standard input.

A server prints ``PORT <n>`` once it listens, then answers one line per
command on standard output:

``rss``
    collect garbage, then ``RSS <KiB>`` (VmRSS) and ``HWM <KiB>`` (VmHWM).
``profile-start``
    start cProfile; ``OK``.
``profile-stop <path>``
    stop cProfile and write its stats to ``path``; ``OK``.
``memtrace-start``
    start tracemalloc and take a snapshot (after ``gc.collect()``); ``OK``.
``memtrace-report <n>``
    ``TOTAL <bytes> <blocks>`` allocated since ``memtrace-start``, then the
    ``n`` source lines whose allocations grew most, one a line
    (``<bytes> <blocks> <file>:<line>``), then ``END``.
``quit`` (or end of input)
    stop the reactor.

The servers are scripts: they use the global reactor, which library code
never does.
"""

from __future__ import annotations

import cProfile
import gc
import os
import resource
import sys
import tracemalloc
from typing import Any

from twisted.internet import stdio
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver

#: The listen backlog: the load generator opens many connections at once.
BACKLOG = 1024


def raise_nofile() -> None:
    """Raise the soft limit on open files to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_logging() -> None:
    """
    Warnings and errors to stderr; the rest is dropped.

    Without an observer Twisted keeps the last 65,536 events in memory, which
    would count as memory per connection (two info events per Phoenix join).
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def vm_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in KiB."""
    out = {}
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


class Control(LineReceiver):
    """The harness's commands, one a line on stdin."""

    delimiter = b"\n"

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.profiler: cProfile.Profile | None = None
        self.snapshot: tracemalloc.Snapshot | None = None

    def reply(self, text: str) -> None:
        self.transport.write(text.encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        command, _, arg = line.decode().strip().partition(" ")
        if command == "rss":
            gc.collect()
            status = vm_status()
            self.reply(f"RSS {status['VmRSS']} HWM {status['VmHWM']}")
        elif command == "profile-start":
            self.profiler = cProfile.Profile()
            self.profiler.enable()
            self.reply("OK")
        elif command == "profile-stop":
            if self.profiler is not None:
                self.profiler.disable()
                self.profiler.dump_stats(arg)
                self.profiler = None
            self.reply("OK")
        elif command == "memtrace-start":
            if not tracemalloc.is_tracing():
                tracemalloc.start()
            gc.collect()
            self.snapshot = tracemalloc.take_snapshot()
            self.reply("OK")
        elif command == "memtrace-report":
            gc.collect()
            if self.snapshot is not None:
                stats = tracemalloc.take_snapshot().compare_to(self.snapshot, "lineno")
                size = sum(stat.size_diff for stat in stats)
                count = sum(stat.count_diff for stat in stats)
                self.reply(f"TOTAL {size} {count}")
                for stat in stats[: int(arg or 25)]:
                    frame = stat.traceback[0]
                    self.reply(f"{stat.size_diff} {stat.count_diff} {frame.filename}:{frame.lineno}")
            self.reply("END")
        elif command == "quit":
            self._quit()
        elif command:
            self.reply(f"ERROR unknown command {command!r}")

    def connectionLost(self, reason: Any = None) -> None:
        self._quit()

    def _quit(self) -> None:
        if self.reactor.running:
            self.reactor.stop()


def serve(reactor: Any, factory: Any) -> None:
    """Listen on a free loopback port, print it, take commands, run."""
    raise_nofile()
    start_logging()
    port = reactor.listenTCP(0, factory, backlog=BACKLOG, interface="127.0.0.1")
    # Standard input and output are the control channel, one line each way.
    control = Control(reactor)
    stdio.StandardIO(control, reactor=reactor)
    control.reply(f"PORT {port.getHost().port}")
    reactor.run()
