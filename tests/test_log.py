"""
Tests for L{twisted_phoenix._log}: bounded renderings of client-controlled
values, and the rate-limited log.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._log import LIMIT, RateLimitedLog, limited_log, truncate, truncate_repr


class Recorder:
    """A log observer that keeps the events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class TruncateTests(SynchronousTestCase):
    """
    Tests for L{truncate} and L{truncate_repr}.
    """

    def test_shortUnchanged(self) -> None:
        """Short values render as str() and repr() would."""
        self.assertEqual(truncate("room:1"), "room:1")
        self.assertEqual(truncate_repr("room:1"), "'room:1'")
        value = {"a": [1, 2.5, None, True], "b": ("x",), "c": b"\x00"}
        self.assertEqual(truncate_repr(value), repr(value))
        self.assertEqual(truncate(value), repr(value))
        self.assertEqual(truncate_repr(("shutdown", "left")), "('shutdown', 'left')")

    def test_longString(self) -> None:
        """A long string is cut at the limit, with an ellipsis and its length."""
        text = "x" * (1024 * 1024)
        self.assertEqual(truncate(text), "x" * LIMIT + "… (1048576 chars)")
        self.assertEqual(truncate_repr(text), repr("x" * LIMIT) + "… (1048576 chars)")
        self.assertEqual(truncate("abcdef", 3), "abc… (6 chars)")

    def test_exactlyAtLimit(self) -> None:
        """A string of exactly the limit is not cut."""
        self.assertEqual(truncate("y" * LIMIT), "y" * LIMIT)

    def test_longBytes(self) -> None:
        """Long bytes are cut, with their length in bytes."""
        self.assertEqual(truncate_repr(b"\x01" * 1000, 4), repr(b"\x01" * 4) + "… (1000 bytes)")

    def test_bigContainer(self) -> None:
        """A big container is rendered up to the limit, with its item count."""
        text = truncate_repr(list(range(100000)))
        self.assertTrue(text.startswith("[0, 1, 2, 3"), text)
        self.assertTrue(text.endswith("… (100000 items)"), text)
        self.assertLessEqual(len(text), LIMIT + len("… (100000 items)"))

    def test_longStringInside(self) -> None:
        """A long string inside a container is cut too."""
        text = truncate_repr({"k": "v" * 10**6})
        self.assertLessEqual(len(text), LIMIT + 20)
        self.assertTrue(text.startswith("{'k': 'vvv"), text)

    def test_deepNesting(self) -> None:
        """Nesting deeper than a few levels is elided, without recursion trouble."""
        deep: Any = []
        for _ in range(5000):
            deep = [deep]
        text = truncate_repr(deep)
        self.assertIn("[…]", text)
        self.assertLessEqual(len(text), LIMIT + 20)

    def test_badRepr(self) -> None:
        """An object whose repr raises is named, not allowed to raise."""

        class Bad:
            def __repr__(self) -> str:
                raise ValueError("no")

        self.assertEqual(truncate_repr([Bad()]), "[<unrepresentable Bad>]")


class RateLimitedLogTests(SynchronousTestCase):
    """
    Tests for L{RateLimitedLog}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorder = Recorder()
        self.log = RateLimitedLog(Logger("test", observer=self.recorder), self.clock, period=10, burst=3)

    def test_burstThenSuppressed(self) -> None:
        """Within a period, a kind is logged burst times; the rest is suppressed."""
        for i in range(10):
            self.log.warn("Bad {n}", n=i)
        self.assertEqual(self.recorder.texts(), ["Bad 0", "Bad 1", "Bad 2"])
        self.assertEqual(self.log.suppressed("Bad {n}"), 7)

    def test_countReportedAfterPeriod(self) -> None:
        """The first message after the period says how many were suppressed."""
        for i in range(10):
            self.log.warn("Bad {n}", n=i)
        self.clock.advance(10)
        self.log.warn("Bad {n}", n=10)
        self.log.warn("Bad {n}", n=11)
        self.assertEqual(
            self.recorder.texts()[3:],
            ["Bad 10 (suppressed 7 similar messages)", "Bad 11"],
        )
        self.assertEqual(self.recorder.events[3]["log_level"], LogLevel.warn)
        self.assertEqual(self.log.suppressed("Bad {n}"), 0)

    def test_kindsIndependent(self) -> None:
        """Each format string has its own budget."""
        for _ in range(5):
            self.log.warn("A")
            self.log.error("B")
        self.assertEqual(self.recorder.texts(), ["A", "B"] * 3)

    def test_explicitKey(self) -> None:
        """Messages sharing a key share a budget."""
        for i in range(5):
            self.log.info("one {i}", key="k", i=i)
            self.log.info("two {i}", key="k", i=i)
        self.assertEqual(self.recorder.texts(), ["one 0", "two 0", "one 1"])

    def test_returnsWhetherLogged(self) -> None:
        """emit and friends return whether the message went out."""
        self.assertEqual([self.log.debug("x") for _ in range(4)], [True, True, True, False])

    def test_failure(self) -> None:
        """failure() logs the failure in flight within the budget."""
        for _ in range(5):
            try:
                1 / 0
            except ZeroDivisionError:
                self.log.failure("Boom {n}", n=1)
        self.assertEqual(len(self.recorder.events), 3)
        event = self.recorder.events[0]
        self.assertIsInstance(event["log_failure"], Failure)
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.log.failure("Other", Failure(ValueError()), LogLevel.error)
        self.assertEqual(self.recorder.events[-1]["log_level"], LogLevel.error)

    def test_flush(self) -> None:
        """flush() reports the counts not yet reported, once."""
        for _ in range(5):
            self.log.warn("A")
        self.log.flush()
        self.log.flush()
        self.assertEqual(self.recorder.texts()[3:], ["Suppressed 2 messages like: A"])

    def test_noClock(self) -> None:
        """Without a clock nothing is suppressed."""
        log = RateLimitedLog(Logger("test", observer=self.recorder), None, burst=1)
        for _ in range(5):
            log.warn("A")
        self.assertEqual(len(self.recorder.events), 5)


class LimitedLogTests(SynchronousTestCase):
    """
    Tests for L{limited_log}.
    """

    def test_shared(self) -> None:
        """Callers with the same logger namespace and scope share one RateLimitedLog."""
        clock, scope = Clock(), Clock()
        log = Logger("a")
        self.assertIs(limited_log(log, clock), limited_log(Logger("a"), clock))
        self.assertIsNot(limited_log(log, clock), limited_log(Logger("b"), clock))
        self.assertIsNot(limited_log(log, clock), limited_log(log, clock, scope))
        self.assertIs(limited_log(log, clock, scope), limited_log(log, Clock(), scope))
        self.assertIs(limited_log(log, clock).clock, clock)
