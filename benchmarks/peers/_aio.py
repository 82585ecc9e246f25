"""
The harness's control channel for the asyncio servers (the peers), as
:mod:`benchmarks._control` is for the Twisted ones.

The server prints ``PORT <n>`` once it listens, then answers one line per
command read on standard input:

``rss``
    collect garbage, then ``RSS <KiB> HWM <KiB>``.
``quit`` (or end of input)
    stop the server.

Any other command is answered ``ERROR ...``.  Logging: warnings and errors
to stderr (Python's default), so that no log buffer grows with the
connections.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from typing import Callable

from benchmarks._control import raise_nofile, vm_status

#: The listen backlog, as for the Twisted servers.
BACKLOG = 1024


def setup() -> None:
    raise_nofile()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def reply(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def handle(command: str, on_quit: Callable[[], None]) -> None:
    if command == "rss":
        gc.collect()
        status = vm_status()
        reply(f"RSS {status['VmRSS']} HWM {status['VmHWM']}")
    elif command == "quit":
        on_quit()
    elif command:
        reply(f"ERROR unknown command {command!r}")


def start_control(loop: asyncio.AbstractEventLoop, on_quit: Callable[[], None]) -> None:
    """Read commands on a thread; run them on ``loop``."""

    def read() -> None:
        for line in sys.stdin:
            command = line.strip().partition(" ")[0]
            loop.call_soon_threadsafe(handle, command, on_quit)
        loop.call_soon_threadsafe(on_quit)

    threading.Thread(target=read, daemon=True).start()


async def serve_until_quit(port: int) -> None:
    """Print the port, take commands until ``quit``."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def on_quit() -> None:
        if not stop.done():
            stop.set_result(None)

    start_control(loop, on_quit)
    reply(f"PORT {port}")
    await stop
