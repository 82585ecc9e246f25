"""
Tests for L{twisted_phoenix._textlog}: the same lines as twistd's observer.
"""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._textlog import HOLD, TextLogObserver


class _Out(io.StringIO):
    """A text file counting its writes and flushes."""

    writes = 0
    flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def _info(text: str, when: float = 5.5) -> dict[str, Any]:
    return {"log_format": text, "log_time": when, "log_level": LogLevel.info, "log_namespace": "x"}


def _twisted(event: dict[str, Any]) -> str | None:
    return formatEventAsClassicLogText(event)


class TextLogObserverTests(SynchronousTestCase):
    """
    L{TextLogObserver} writes what C{textFileLogObserver} writes.
    """

    def assertSameLine(self, event: dict[str, Any]) -> None:
        self.assertEqual(TextLogObserver(io.StringIO()).format(dict(event)), _twisted(dict(event)))

    def test_plain(self) -> None:
        """A plain event: timestamp, namespace#level, message."""
        self.assertSameLine(
            {"log_format": "JOINED {topic} in {channel}", "topic": "room:1", "channel": "Room",
             "log_namespace": "twisted_phoenix._session.Session", "log_level": LogLevel.info,
             "log_time": 1795000000.25}
        )

    def test_conversionsAndSpecs(self) -> None:
        """!r conversions, format specs, attribute and index fields."""
        self.assertSameLine(
            {"log_format": "{a!r} {b:.2f} {c[0]} {d.real}", "a": "x'y", "b": 1.234, "c": [5], "d": 3,
             "log_namespace": "n", "log_level": LogLevel.warn, "log_time": 1795000000.0}
        )

    def test_system(self) -> None:
        """log_system wins over namespace and level."""
        self.assertSameLine({"log_format": "hi", "log_system": "sys", "log_time": 1.0})

    def test_noTimeNoLevel(self) -> None:
        """Missing time and level render as twistd renders them."""
        self.assertSameLine({"log_format": "hi"})

    def test_multiline(self) -> None:
        """Newlines in a message are continued with a tab."""
        self.assertSameLine({"log_format": "a\n{b}", "b": "c\nd", "log_time": 2.0, "log_level": LogLevel.info})

    def test_empty(self) -> None:
        """An event without text writes nothing."""
        out = io.StringIO()
        TextLogObserver(out)({"log_format": "", "log_time": 1.0})
        TextLogObserver(out)({"log_time": 1.0})
        self.assertEqual(out.getvalue(), "")

    def test_fallbacks(self) -> None:
        """Call fields, missing keys, failures: Twisted's own text."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        for event in (
            {"log_format": "{f()}", "f": lambda: "called", "log_time": 3.0},
            {"log_format": "{missing}", "log_time": 3.0},
            {"log_format": "{}", "log_time": 3.0},
            {"log_format": "boom", "log_failure": failure, "log_time": 3.0, "log_level": LogLevel.critical},
        ):
            self.assertSameLine(event)

    def test_writesAndFlushes(self) -> None:
        """Without a reactor, each line is written and flushed."""
        out = _Out()
        observer = TextLogObserver(out)
        observer(_info("one"))
        observer(_info("two", 6.5))
        self.assertEqual(out.getvalue().count("\n"), 2)
        self.assertEqual((out.writes, out.flushes), (2, 2))
        self.assertTrue(out.getvalue().endswith("[x#info] two\n"))

    def test_turnWrittenTogether(self) -> None:
        """With a reactor, a turn's lines go out in one write and one flush at its end."""
        clock = Clock()
        out = _Out()
        observer = TextLogObserver(out, clock)
        observer(_info("one"))
        observer(_info("two"))
        self.assertEqual(out.getvalue(), "")
        clock.advance(0)
        self.assertEqual((out.writes, out.flushes), (1, 1))
        self.assertEqual(out.getvalue(), TextLogObserver(io.StringIO()).format(_info("one")) + TextLogObserver(io.StringIO()).format(_info("two")))
        clock.advance(0)
        self.assertEqual((out.writes, out.flushes), (1, 1))  # nothing more to write

    def test_errorsAtOnce(self) -> None:
        """An error or critical line is written at once, after the lines held before it."""
        for level in (LogLevel.error, LogLevel.critical):
            clock = Clock()
            out = _Out()
            observer = TextLogObserver(out, clock)
            observer(_info("before"))
            observer({**_info("bad"), "log_level": level})
            lines = out.getvalue().splitlines()
            self.assertEqual([line.rsplit(" ", 1)[1] for line in lines], ["before", "bad"])
            self.assertEqual(out.flushes, 1)

    def test_notRunning(self) -> None:
        """While the reactor is not running (before it starts, after it stops) lines are written at once."""
        clock = Clock()
        clock.running = False  # type: ignore[attr-defined]
        out = _Out()
        TextLogObserver(out, clock)(_info("stopping"))
        self.assertEqual(out.flushes, 1)
        self.assertIn("stopping", out.getvalue())

    def test_heldBounded(self) -> None:
        """Past HOLD characters held, the lines are written without waiting for the turn's end."""
        clock = Clock()
        out = _Out()
        observer = TextLogObserver(out, clock)
        event = _info("x" * 1000)
        fit = HOLD // len(observer.format(event))
        for _ in range(fit):
            observer(event)
        self.assertEqual(out.writes, 0)
        observer(event)
        self.assertEqual(out.writes, 1)
        self.assertEqual(out.getvalue().count("\n"), fit + 1)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        st.text(max_size=40),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(st.integers(), st.text(max_size=10)), max_size=3),
        st.floats(min_value=0, max_value=4e9),
    )
    def test_anyEvent(self, fmt: str, fields: dict[str, Any], when: float) -> None:
        """For any format and fields, the same line as Twisted's."""
        self.assertSameLine({"log_format": fmt, "log_time": when, "log_level": LogLevel.info, "log_namespace": "n", **fields})
