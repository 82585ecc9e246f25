# -*- test-case-name: tests.test_limits -*-
"""
Rate limits as plain values: token buckets driven by the ``now`` their
caller passes in, so that they cost no clock call and can be tested without
time passing.

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate``
tokens per second; each message takes one, and a message that finds no
token is over the limit.  A :class:`RateLimit` is a token bucket that also
tells a client that exceeds the limit now and then from one that keeps at
it: the messages it refuses take their tokens from a second bucket of the
same rate and size, and once that one is empty too the client persists.  So
a client is closed after ``burst`` messages refused in excess of ``rate``
refusals a second: one blast of ``2 × burst + 1`` messages, or a steady
stream above ``2 × rate`` messages a second, while a client that only now
and then goes over the limit is refused those messages and nothing more.
"""

from __future__ import annotations

__all__ = ["RateLimit", "TokenBucket"]

# A whole token, give or take the rounding of ``elapsed * rate`` (0.3 - 0.1
# seconds at 10/s is 1.9999999999999998 tokens).
_ALMOST_ONE = 1.0 - 1e-9


class TokenBucket:
    """
    ``rate`` tokens a second, up to ``burst`` of them; full at first.

    :param rate: tokens gained per second (> 0).
    :param burst: the most tokens the bucket holds (>= 1): how many messages
        may arrive at once.
    :param now: the time the bucket starts at, in seconds.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not rate > 0:
            raise ValueError(f"a rate must be positive, not {rate!r}")
        if not burst >= 1:
            raise ValueError(f"a burst must be at least 1, not {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        #: Tokens left at :attr:`stamp`.
        self.tokens = self.burst
        #: When :attr:`tokens` was last brought up to date.
        self.stamp = now

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.tokens:.2f}/{self.burst:g} at {self.rate:g}/s>"

    def take(self, now: float) -> bool:
        """
        Take a token at time ``now``: ``True`` if there was one.

        A ``now`` earlier than the last one (a clock set back) adds nothing;
        the bucket counts from it onwards.
        """
        tokens = self.tokens
        elapsed = now - self.stamp
        self.stamp = now
        if elapsed > 0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
        if tokens > _ALMOST_ONE:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


class RateLimit(TokenBucket):
    """
    A :class:`TokenBucket` for one kind of message on one connection, with
    the patience to tell a client that persists.

    Call :meth:`take` for every message; for one it refused, call
    :meth:`refuse`, which says whether the client may go on.

    :ivar refused: how many messages :meth:`refuse` counted.
    """

    __slots__ = ("refused", "_excess")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        super().__init__(rate, burst, now)
        self.refused = 0
        # Created at the first refusal: most connections never need it.
        self._excess: TokenBucket | None = None

    def refuse(self, now: float) -> bool:
        """
        Count a message :meth:`take` refused at time ``now``.

        :returns: ``True`` while the client stays within its patience,
            ``False`` once it persists: more than ``burst`` messages refused
            beyond ``rate`` refusals a second.
        """
        self.refused += 1
        excess = self._excess
        if excess is None:
            excess = self._excess = TokenBucket(self.rate, self.burst, now)
        return excess.take(now)
