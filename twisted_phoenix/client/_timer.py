# -*- test-case-name: tests.test_client -*-
"""
phoenix.js's ``Timer`` and its two default backoffs, on a reactor's clock.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Backoff", "Timer", "default_reconnect_after", "default_rejoin_after"]

#: ``tries`` (1 for the first retry) → seconds to wait.
Backoff = Callable[[int], float]

_RECONNECT = (0.010, 0.050, 0.100, 0.150, 0.200, 0.250, 0.500, 1.0, 2.0)
_REJOIN = (1.0, 2.0, 5.0)


def default_reconnect_after(tries: int) -> float:
    """
    phoenix.js's ``reconnectAfterMs``, in seconds: 0.01, 0.05, 0.1, 0.15,
    0.2, 0.25, 0.5, 1, 2, then 5 for every later try.
    """
    return _RECONNECT[tries - 1] if 1 <= tries <= len(_RECONNECT) else 5.0


def default_rejoin_after(tries: int) -> float:
    """phoenix.js's ``rejoinAfterMs``, in seconds: 1, 2, 5, then 10."""
    return _REJOIN[tries - 1] if 1 <= tries <= len(_REJOIN) else 10.0


class Timer:
    """
    Calls ``callback`` after ``timer_calc(tries + 1)`` seconds each time it
    is scheduled, counting the tries until :meth:`reset` (phoenix.js's
    ``Timer``, used for reconnects and rejoins).
    """

    def __init__(self, callback: Callable[[], Any], timer_calc: Backoff, clock: IReactorTime) -> None:
        self.callback = callback
        self.timer_calc = timer_calc
        self.clock = clock
        self.tries = 0
        self._call: IDelayedCall | None = None

    @property
    def pending(self) -> bool:
        """Whether a call is scheduled."""
        return self._call is not None

    def reset(self) -> None:
        """Forget the tries and cancel the scheduled call."""
        self.tries = 0
        self.cancel()

    def cancel(self) -> None:
        """Cancel the scheduled call, keeping the tries (phoenix.js's ``clearTimeout(timer.timer)``)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def schedule_timeout(self) -> None:
        """Cancel any scheduled call and schedule the next one."""
        self.cancel()
        self._call = self.clock.callLater(self.timer_calc(self.tries + 1), self._fire)

    def _fire(self) -> None:
        self._call = None
        self.tries += 1
        self.callback()
