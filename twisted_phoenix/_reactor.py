# -*- test-case-name: tests.test_reactor -*-
"""
The reactor ``twistd phoenix`` runs on unless told otherwise: Twisted's
epoll reactor, dispatching each I/O event with a plain call.

Twisted's poll-like reactors call every ``doRead``/``doWrite`` through
``log.callWithLogger``: it asks the selectable for its log prefix, copies
the current log context into a new dictionary with it, and pushes and pops
that context around the call, all for the ``system`` field of legacy
``twisted.python.log`` events logged meanwhile.  For a server whose every
message is one read, that is about a tenth of its CPU.  This reactor makes
the call directly; errors are caught and logged as Twisted's reactor does
(``_doReadOrWrite`` logs what the application raises and disconnects the
selectable), but legacy events logged while handling I/O (Twisted's
"Unhandled Error") carry the system ``-`` rather than the connection's log
prefix.  Events of :mod:`twisted.logger`, which this server logs with, never
read that context.

The plugin installs it when no reactor is installed yet and none was asked
for (``twistd --reactor NAME`` wins), on platforms with epoll.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

from twisted.python import log

__all__ = ["DirectEPollReactor", "install", "install_default"]

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this platform
    EPollReactor = None  # type: ignore[assignment, misc]

if EPollReactor is not None:

    class DirectEPollReactor(EPollReactor):  # type: ignore[valid-type, misc]
        """:class:`~twisted.internet.epollreactor.EPollReactor`, without a log context per I/O event."""

        def doPoll(self, timeout: float | None) -> None:
            """Poll for events and dispatch each to its selectable."""
            if timeout is None:
                timeout = -1  # wait indefinitely
            try:
                # As many events as there are selectables, as Twisted's does.
                events = self._poller.poll(timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            dispatch = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
                        dispatch(selectable, fd, event)
                    except Exception:
                        # _doReadOrWrite catches what the selectable raises;
                        # this is for what escapes it (callWithLogger's net).
                        log.err(None, "Dispatching an I/O event failed")

        doIteration = doPoll

else:  # pragma: no cover - platforms without epoll
    DirectEPollReactor = None  # type: ignore[assignment, misc]


def install() -> Any:
    """Install a :class:`DirectEPollReactor` as the global reactor and return it."""
    from twisted.internet.main import installReactor

    if DirectEPollReactor is None:
        raise RuntimeError("epoll is not available on this platform")
    reactor = DirectEPollReactor()
    installReactor(reactor)
    return reactor


def install_default() -> bool:
    """
    Install :class:`DirectEPollReactor` if no reactor is installed yet and
    epoll is available (Twisted would pick its own epoll reactor then);
    whether it did.
    """
    if "twisted.internet.reactor" in sys.modules or DirectEPollReactor is None:
        return False
    install()
    return True
