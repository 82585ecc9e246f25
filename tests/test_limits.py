"""
Tests for L{twisted_phoenix.limits}: token buckets and the patience of a
rate limit, driven by explicit times.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.limits import RateLimit, TokenBucket


def takes(bucket: TokenBucket, now: float, n: int) -> list[bool]:
    """The outcome of ``n`` takes at ``now``."""
    return [bucket.take(now) for _ in range(n)]


class TokenBucketTests(SynchronousTestCase):
    """
    Tests for L{TokenBucket}.
    """

    def test_startsFull(self) -> None:
        """A new bucket gives burst tokens at once, then refuses."""
        bucket = TokenBucket(10, 5, 100.0)
        self.assertEqual(takes(bucket, 100.0, 6), [True] * 5 + [False])

    def test_refillsAtRate(self) -> None:
        """An empty bucket gains rate tokens a second."""
        bucket = TokenBucket(10, 5, 0.0)
        takes(bucket, 0.0, 5)
        self.assertFalse(bucket.take(0.05))  # half a token
        self.assertTrue(bucket.take(0.1))  # the first whole one
        self.assertFalse(bucket.take(0.1))
        self.assertEqual(takes(bucket, 0.3, 3), [True, True, False])

    def test_fractionalTokensKept(self) -> None:
        """Refused takes do not lose the fraction of a token gained so far."""
        bucket = TokenBucket(1, 1, 0.0)
        bucket.take(0.0)
        for now in (0.25, 0.5, 0.75):
            self.assertFalse(bucket.take(now))
        self.assertTrue(bucket.take(1.0))

    def test_cappedAtBurst(self) -> None:
        """However long it waits, a bucket holds at most burst tokens."""
        bucket = TokenBucket(10, 5, 0.0)
        self.assertEqual(takes(bucket, 3600.0, 6), [True] * 5 + [False])

    def test_steadyRate(self) -> None:
        """Messages at exactly the rate are all accepted, forever."""
        bucket = TokenBucket(100, 1, 0.0)
        self.assertTrue(all(bucket.take(i / 100) for i in range(10000)))

    def test_clockSetBack(self) -> None:
        """A time earlier than the last adds nothing, and counting goes on from it."""
        bucket = TokenBucket(1, 2, 1000.0)
        takes(bucket, 1000.0, 2)
        self.assertFalse(bucket.take(10.0))
        self.assertFalse(bucket.take(10.5))
        self.assertTrue(bucket.take(11.0))

    def test_invalid(self) -> None:
        """A rate must be positive and a burst at least 1."""
        for rate, burst in ((0, 1), (-1, 1), (1, 0), (1, 0.5), (float("nan"), 1)):
            self.assertRaises(ValueError, TokenBucket, rate, burst, 0.0)

    def test_repr(self) -> None:
        """The repr shows tokens, burst and rate."""
        self.assertEqual(repr(TokenBucket(2, 3, 0.0)), "<TokenBucket 3.00/3 at 2/s>")


class RateLimitTests(SynchronousTestCase):
    """
    Tests for L{RateLimit}: when a refused client counts as persisting.
    """

    def test_blast(self) -> None:
        """
        One blast: burst messages accepted, burst more refused with
        patience, and the next one persists.
        """
        limit = RateLimit(100, 200, 0.0)
        self.assertEqual(takes(limit, 0.0, 200), [True] * 200)
        outcomes = [limit.take(0.0) or limit.refuse(0.0) for _ in range(201)]
        self.assertEqual(outcomes, [True] * 200 + [False])
        self.assertEqual(limit.refused, 201)

    def test_occasionalExcessTolerated(self) -> None:
        """A client that goes over the limit now and then is never found persisting."""
        limit = RateLimit(10, 10, 0.0)
        now = 0.0
        for _ in range(100):  # 15 messages at once every 1.5 s: 5 over, then 10 refilled
            for _ in range(15):
                if not limit.take(now):
                    self.assertTrue(limit.refuse(now))
            now += 1.5
        self.assertEqual(limit.refused, 500)

    def test_steadyOverTwiceRatePersists(self) -> None:
        """A steady stream above twice the rate is found persisting; at 1.5 times it is not."""
        for speed, persists in ((2.5, True), (1.5, False)):
            limit = RateLimit(10, 10, 0.0)
            found = False
            for i in range(int(60 * 10 * speed)):  # a minute
                now = i / (10 * speed)
                if not limit.take(now) and not limit.refuse(now):
                    found = True
                    break
            self.assertEqual(found, persists, speed)

    def test_patienceRefills(self) -> None:
        """Refusals spread over time are forgiven at the rate."""
        limit = RateLimit(1, 2, 0.0)
        takes(limit, 0.0, 2)
        self.assertTrue(limit.refuse(0.0))
        self.assertTrue(limit.refuse(0.0))
        self.assertTrue(limit.refuse(1.0))
        self.assertFalse(limit.refuse(1.0))
