# -*- test-case-name: tests.test_textlog -*-
"""
A text log observer that writes what twistd's writes, faster.

twistd logs with :func:`twisted.logger.textFileLogObserver`, which spends
tens of microseconds on each line: a time zone object and ``strftime`` per
timestamp, and a pure-Python :class:`string.Formatter` per message.  A
server that logs a line for each connection and each join (as Phoenix does)
spends more on those lines than on the handshake.  This observer writes the
same bytes: the timestamp is formatted once a second, and a message whose
format is plain (no ``{callable()}`` fields) is formatted by ``str.format_map``.
Anything else (a failure's traceback, a legacy or flattened event, a format
that fails) goes through Twisted's own formatting.

Given the reactor, it also writes less often: the lines of one reactor turn
go out in one write and one flush at the end of the turn (a storm's two
lines per connection were two system calls each), an error or a critical
line at once, with those before it.
"""

from __future__ import annotations

from typing import IO, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText, formatTime
from zope.interface import implementer

__all__ = ["TextLogObserver"]

#: Lines held for the end of the turn past this many characters are written at once.
HOLD = 64 * 1024

_AT_ONCE = (LogLevel.error, LogLevel.critical)


@implementer(ILogObserver)
class TextLogObserver:
    """
    Writes each event as twistd's ``textFileLogObserver`` would, to
    ``out`` (a text file).

    :param reactor: when given, the lines logged while it runs are written
        and flushed once at the end of the reactor turn, errors and
        critical lines at once; without it (and while it is not running)
        each line is written and flushed as it comes.
    """

    def __init__(self, out: IO[str], reactor: IReactorTime | None = None) -> None:
        self.out = out
        self.reactor = reactor
        self._second = -1
        self._stamp = ""
        self._held: list[str] = []
        self._held_size = 0

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._stamp = formatTime(second) + " "
        return self._stamp

    def format(self, event: dict[str, Any]) -> str | None:
        """The line for ``event`` (with its newline), or ``None``."""
        text = None
        fmt = event.get("log_format")
        if type(fmt) is str and "()" not in fmt and "log_failure" not in event and "log_flattened" not in event:
            try:
                text = fmt.format_map(event)
            except Exception:
                text = None
        if text is None:
            return formatEventAsClassicLogText(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        when = event.get("log_time")
        stamp = self._time(when) if when is not None else "- "
        return f"{stamp}[{system}] {text}".replace("\n", "\n\t") + "\n"

    def __call__(self, event: dict[str, Any]) -> None:
        text = self.format(event)
        if not text:
            return
        reactor = self.reactor
        if reactor is None or not getattr(reactor, "running", True) or event.get("log_level") in _AT_ONCE:
            self._held.append(text)
            self.flush()
            return
        if not self._held:
            reactor.callLater(0, self.flush)
        self._held.append(text)
        self._held_size += len(text)
        if self._held_size > HOLD:
            self.flush()

    def flush(self) -> None:
        """Write and flush the lines held."""
        held, self._held = self._held, []
        self._held_size = 0
        if held:
            self.out.write(held[0] if len(held) == 1 else "".join(held))
            self.out.flush()
