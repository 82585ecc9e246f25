"""
The demo app (``twisted_phoenix.examples.hello_sockets``) with tracemalloc
driven by signals, for ``python -m benchmarks fanout --memory-breakdown N``::

    BENCH_MEMTRACE=/path/report.txt twistd -n phoenix --endpoint benchmarks.apps.memtrace:Endpoint

``SIGUSR1``
    collect garbage, start tracemalloc and take a snapshot;
``SIGUSR2``
    collect garbage and write to ``$BENCH_MEMTRACE`` what was allocated
    since: ``TOTAL <bytes> <blocks>``, then one line per source line whose
    allocations grew most (``<bytes> <blocks> <file>:<line>``), then ``END``.
    The file appears (renamed into place) once complete.

:func:`install` gives the floors the same two signals.
"""

from __future__ import annotations

import gc
import os
import signal
import tracemalloc
from typing import Any

from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint

#: Source lines listed by a report.
TOP = 40

_snapshot: list[tracemalloc.Snapshot] = []


def _start(*_: Any) -> None:
    gc.collect()
    if not tracemalloc.is_tracing():
        tracemalloc.start()
    _snapshot[:] = [tracemalloc.take_snapshot()]


def _report(path: str) -> None:
    gc.collect()
    lines = []
    if _snapshot:
        stats = tracemalloc.take_snapshot().compare_to(_snapshot[0], "lineno")
        lines.append(f"TOTAL {sum(s.size_diff for s in stats)} {sum(s.count_diff for s in stats)}")
        for stat in stats[:TOP]:
            frame = stat.traceback[0]
            lines.append(f"{stat.size_diff} {stat.count_diff} {frame.filename}:{frame.lineno}")
    lines.append("END")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def install(path: str | None = None) -> None:
    """SIGUSR1 and SIGUSR2 as above, writing to ``path`` (default: ``$BENCH_MEMTRACE``); nothing without one."""
    path = path or os.environ.get("BENCH_MEMTRACE")
    if not path:
        return
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, lambda *_: _report(path))


class Endpoint(HelloSocketsEndpoint):
    """The demo endpoint; the signals are installed when twistd starts it."""

    def start(self) -> None:
        install()
        super().start()
