# -*- test-case-name: tests.test_log -*-
"""
Log lines a client cannot blow up.

A client controls topics, events, refs, payloads and, through them, some
reasons; any of these may be a megabyte long, and a client may make the
server log the same complaint thousands of times a second.  So:

* :func:`truncate` and :func:`truncate_repr` render a value for a log line
  in bounded space *and time* (a huge payload costs what its first few
  items cost), marking a cut with an ellipsis and the original size;
* :class:`RateLimitedLog` wraps a :class:`~twisted.logger.Logger` and lets
  through at most ``burst`` messages of each kind per ``period`` seconds,
  then says how many it suppressed; :func:`limited_log` gives every caller
  in one scope (an endpoint, say) the same one, so that a thousand
  connections share one budget.

Example::

    from twisted_phoenix._log import limited_log, truncate_repr

    class Session:
        log = Logger()

        def unmatched(self, topic):
            limited_log(Session.log, self.reactor, self.endpoint).warn(
                "Ignoring unmatched topic {topic}", topic=truncate_repr(topic)
            )
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

__all__ = ["LIMIT", "RateLimitedLog", "limited_log", "truncate", "truncate_repr"]

#: Characters of a client-controlled value that a log line shows.
LIMIT = 200

#: Nesting a rendering descends before it writes "…".
_MAX_DEPTH = 8

_ELLIPSIS = "…"


def truncate(value: Any, limit: int = LIMIT) -> str:
    """
    ``value`` as text for a log line, at most ``limit`` characters plus a
    marker: a :class:`str` as it is, anything else as
    :func:`truncate_repr` renders it.

    ``truncate("x" * 10**6)`` is 200 ``x`` followed by
    ``… (1000000 chars)``.
    """
    if type(value) is str:
        if len(value) <= limit:
            return value
        return f"{value[:limit]}{_ELLIPSIS} ({len(value)} chars)"
    return truncate_repr(value, limit)


def truncate_repr(value: Any, limit: int = LIMIT) -> str:
    """
    The :func:`repr` of ``value``, cut after about ``limit`` characters.

    Strings and bytes are cut before they are rendered, and containers are
    rendered item by item until the text is long enough, so the cost does
    not grow with the size of ``value``.  A cut is marked with ``…`` and,
    for a string, bytes or a container at the top, its size:
    ``'xxx'… (1000000 chars)``, ``[0, 1, 2, 3… (50000 items)``.
    """
    t = type(value)
    if t is str or t is bytes or t is bytearray:
        if len(value) <= limit:
            return repr(value)
        unit = "chars" if t is str else "bytes"
        return f"{value[:limit]!r}{_ELLIPSIS} ({len(value)} {unit})"
    writer = _Writer(limit)
    complete = writer.render(value, 0)
    text = "".join(writer.parts)
    if complete:
        return text
    text = text[:limit] + _ELLIPSIS
    if t is dict or t is list or t is tuple:
        text += f" ({len(value)} items)"
    return text


class _Writer:
    """Renders a repr piece by piece until ``budget`` characters are written."""

    __slots__ = ("parts", "size", "budget")

    def __init__(self, budget: int) -> None:
        self.parts: list[str] = []
        self.size = 0
        self.budget = budget

    def write(self, text: str) -> bool:
        """Add ``text``; ``False`` once the budget is spent."""
        self.parts.append(text)
        self.size += len(text)
        return self.size <= self.budget

    def render(self, value: Any, depth: int) -> bool:
        """Write the repr of ``value``; ``False`` if it stopped short."""
        t = type(value)
        if t is dict:
            opening, closing, items = "{", "}", value.items()
        elif t is list:
            opening, closing, items = "[", "]", value
        elif t is tuple:
            opening, closing, items = "(", ")", value
        else:
            room = self.budget - self.size + 1
            if t is str or t is bytes or t is bytearray:
                text = repr(value[:room])
            else:
                try:
                    text = repr(value)
                except Exception:
                    text = f"<unrepresentable {t.__name__}>"
            return self.write(text[:room]) and len(text) <= room
        if depth >= _MAX_DEPTH:
            self.write(opening + _ELLIPSIS + closing)
            return False
        if not self.write(opening):
            return False
        first = True
        for item in items:
            if not first and not self.write(", "):
                return False
            first = False
            if t is dict:
                key, item = item
                if not (self.render(key, depth + 1) and self.write(": ")):
                    return False
            if not self.render(item, depth + 1):
                return False
        if t is tuple and len(value) == 1 and not self.write(","):
            return False
        return self.write(closing)


class RateLimitedLog:
    """
    A :class:`~twisted.logger.Logger` that lets through at most ``burst``
    messages of each kind per ``period`` seconds.

    A message's kind is its format string (or the ``key`` it is given):
    always a constant, never text a client chose.  The first message of a
    kind in a period opens a window of ``period`` seconds; the first
    ``burst`` messages of the window are logged, the rest are counted, and
    the first message logged after the window ends gets
    ``" (suppressed {log_suppressed} similar messages)"`` appended.  No
    timer is involved: counts still pending are logged by :meth:`flush`.

    :param logger: where messages go.
    :param clock: gives the time (``seconds()``); ``None`` suppresses
        nothing.
    :param period: the window, in seconds.
    :param burst: messages of one kind logged per window.
    """

    def __init__(
        self, logger: Logger, clock: Any, *, period: float = 10.0, burst: int = 10
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.period = period
        self.burst = burst
        # kind → [window start, messages in the window, suppressed]
        self._kinds: dict[str, list[Any]] = {}

    def _admit(self, kind: str) -> tuple[bool, int]:
        """Whether to log a message of ``kind`` now, and the count to report with it."""
        if self.clock is None:
            return True, 0
        now = self.clock.seconds()
        state = self._kinds.get(kind)
        if state is None:
            self._kinds[kind] = [now, 1, 0]
            return True, 0
        if now - state[0] >= self.period or now < state[0]:
            state[0], state[1] = now, 0
        state[1] += 1
        if state[1] > self.burst:
            state[2] += 1
            return False, 0
        suppressed, state[2] = state[2], 0
        return True, suppressed

    def emit(self, level: LogLevel, format: str, *, key: str | None = None, **kwargs: Any) -> bool:
        """
        Log ``format`` at ``level`` unless this kind is over its budget.

        :returns: whether it was logged.
        """
        admitted, suppressed = self._admit(key or format)
        if admitted:
            if suppressed:
                format += " (suppressed {log_suppressed} similar messages)"
                kwargs["log_suppressed"] = suppressed
            self.logger.emit(level, format, **kwargs)
        return admitted

    def debug(self, format: str, **kwargs: Any) -> bool:
        """:meth:`emit` at debug level."""
        return self.emit(LogLevel.debug, format, **kwargs)

    def info(self, format: str, **kwargs: Any) -> bool:
        """:meth:`emit` at info level."""
        return self.emit(LogLevel.info, format, **kwargs)

    def warn(self, format: str, **kwargs: Any) -> bool:
        """:meth:`emit` at warn level."""
        return self.emit(LogLevel.warn, format, **kwargs)

    def error(self, format: str, **kwargs: Any) -> bool:
        """:meth:`emit` at error level."""
        return self.emit(LogLevel.error, format, **kwargs)

    def critical(self, format: str, **kwargs: Any) -> bool:
        """:meth:`emit` at critical level."""
        return self.emit(LogLevel.critical, format, **kwargs)

    def failure(
        self,
        format: str,
        failure: Failure | None = None,
        level: LogLevel = LogLevel.critical,
        **kwargs: Any,
    ) -> bool:
        """
        Log a :class:`~twisted.python.failure.Failure` (by default the
        exception being handled) with its traceback, as
        :meth:`twisted.logger.Logger.failure` does, within the budget.
        """
        if failure is None:
            failure = Failure()
        return self.emit(level, format, log_failure=failure, **kwargs)

    def suppressed(self, kind: str) -> int:
        """How many messages of ``kind`` are suppressed and not yet reported."""
        state = self._kinds.get(kind)
        return 0 if state is None else state[2]

    def flush(self, level: LogLevel = LogLevel.info) -> None:
        """Log, for every kind, the count suppressed and not yet reported."""
        for kind, state in self._kinds.items():
            if state[2]:
                count, state[2] = state[2], 0
                self.logger.emit(
                    level,
                    "Suppressed {log_suppressed} messages like: {log_kind}",
                    log_suppressed=count,
                    log_kind=kind,
                )


_SHARED: WeakKeyDictionary[Any, dict[str, RateLimitedLog]] = WeakKeyDictionary()


def limited_log(logger: Logger, clock: Any, scope: Any = None) -> RateLimitedLog:
    """
    The :class:`RateLimitedLog` for ``logger``'s namespace in ``scope``,
    on ``clock`` (a reactor or a :class:`~twisted.internet.task.Clock`),
    created on first use and shared by every caller: e.g. with the
    endpoint as ``scope``, all the connections of a server share the budget
    of each kind of message.

    :param scope: what shares a budget (held weakly); by default
        ``clock``.
    """
    key = clock if scope is None else scope
    per_scope = _SHARED.get(key)
    if per_scope is None:
        per_scope = _SHARED[key] = {}
    limited = per_scope.get(logger.namespace)
    if limited is None:
        limited = per_scope[logger.namespace] = RateLimitedLog(
            Logger(logger.namespace, observer=logger.observer), clock
        )
    return limited
