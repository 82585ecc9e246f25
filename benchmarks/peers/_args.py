"""What every floor and peer script shares: ``--port`` (and ``--redis-port``), the open-files limit, logging."""

from __future__ import annotations

import argparse
import logging
import resource
import sys

#: The listen backlog: the load generator opens many connections at once.
BACKLOG = 1024


def parse(prog: str, argv: list[str] | None = None, modes: tuple[str, ...] = (), redis: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog)
    if modes:
        parser.add_argument("mode", choices=modes)
    parser.add_argument("--port", type=int, required=True, help="the port to serve on (127.0.0.1)")
    if redis:
        parser.add_argument("--redis-port", type=int, required=True, help="the redis-server's port")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Warnings and errors to stderr (the run's log); no log buffer grows with the connections.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return args


def start_twisted_logging() -> None:
    """Warnings and errors to stderr; without an observer Twisted would keep the last 65,536 events."""
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
