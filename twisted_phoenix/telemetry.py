# -*- test-case-name: tests.test_metrics_telemetry -*-
"""
Structured events an application can observe: the role of Phoenix's
``:telemetry`` events.

Every endpoint has a :class:`Telemetry` (``endpoint.telemetry``).  An
observer is any :mod:`twisted.logger` observer: a callable taking one
event, a dict::

    def observe(event):
        if event["phoenix_event"] == "join":
            stats.timing("join", event["duration"])

    endpoint.telemetry.observe(observe)

Each event is a :mod:`twisted.logger` event (``log_namespace``
``"twisted_phoenix.telemetry"``, ``log_level`` info, ``log_format``,
``log_time``) carrying ``phoenix_event``, the event's stable name (see
:data:`EVENTS`), and its fields.  Any :mod:`twisted.logger` observer works
(``FilteringLogObserver``, ``jsonFileLogObserver``); to have the events in
the server's log as well, ``endpoint.telemetry.observe(globalLogPublisher)``.

Unlike the log lines meant for people, which are rate-limited
(:mod:`twisted_phoenix._log`), every event is delivered.  Without an
observer nothing is built: the code that emits checks
:attr:`Telemetry.observers` first.  An observer that raises is logged
(rate-limited) and keeps observing; the others still get the event.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger, LogLevel

from ._log import RateLimitedLog

__all__ = ["EVENTS", "NAMESPACE", "Telemetry"]

#: The ``log_namespace`` of every telemetry event.
NAMESPACE = "twisted_phoenix.telemetry"

#: Every event's name (``phoenix_event``) and its ``log_format``, which
#: names its fields.
EVENTS: dict[str, str] = {
    "connect": "connect {socket} {transport} ({serializer}) id={socket_id} in {duration:.6f} s",
    "connect_refused": "connect_refused {socket} {transport}: {status} ({reason})",
    "join": "join {topic} {channel} on {socket} in {duration:.6f} s",
    "join_refused": "join_refused {topic} {channel} on {socket}: {reason}",
    "leave": "leave {topic} {channel} on {socket}: {reason} after {duration:.3f} s",
    "crash": "crash {topic} {channel} on {socket} ({phase}): {reason} after {duration:.3f} s",
    "drop": "drop {socket} {transport}: {reason} after {duration:.3f} s",
    "disconnect": "disconnect {socket} {transport} after {duration:.3f} s",
}

_log = Logger(namespace="twisted_phoenix.telemetry.Telemetry")

Observer = Callable[[dict[str, Any]], Any]


class Telemetry:
    """
    The observers of one endpoint's events.

    :param clock: gives each event's ``log_time`` (the endpoint's reactor).
    :ivar observers: the observers, in the order they were added.  Code
        that emits checks that it is not empty before it builds an event.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.observers: list[Observer] = []
        self._rlog = RateLimitedLog(_log, clock)

    def observe(self, observer: Observer) -> None:
        """Call ``observer`` with every event from now on (added once)."""
        if observer not in self.observers:
            self.observers.append(observer)

    def unobserve(self, observer: Observer) -> None:
        """Stop calling ``observer``; a no-op if it does not observe."""
        if observer in self.observers:
            self.observers.remove(observer)

    def emit(self, name: str, **fields: Any) -> None:
        """
        Deliver the event ``name`` (one of :data:`EVENTS`) with ``fields``
        to every observer.
        """
        event = {
            "log_namespace": NAMESPACE,
            "log_level": LogLevel.info,
            "log_format": EVENTS[name],
            "log_time": self.clock.seconds(),
            "log_source": None,
            "phoenix_event": name,
            **fields,
        }
        for observer in tuple(self.observers):
            try:
                observer(event)
            except Exception:
                self._rlog.failure(
                    "A telemetry observer failed on {name}", name=name, level=LogLevel.error
                )
