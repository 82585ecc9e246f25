# -*- test-case-name: tests.test_websocket,tests.test_client -*-
"""
Autobahn glue shared by the server transport and the Python client.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReactorTimer"]


class ReactorTimer:
    """
    Autobahn's ``factory._batched_timer`` interface on a given reactor's
    ``callLater``.  Not txaio's batched timer: it runs on the global reactor
    and rounds deadlines down to whole seconds, so a 0.5 s timeout could
    fire at once.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> Any:
        return _TimerCall(self._reactor.callLater(delay, func, *args, **kwargs))


class _TimerCall:
    """A delayed call whose ``cancel`` is a no-op once it ran."""

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()
