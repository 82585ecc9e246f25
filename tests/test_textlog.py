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
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._textlog import TextLogObserver


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
        """Each line is written and flushed."""

        class Out(io.StringIO):
            flushes = 0

            def flush(self) -> None:
                self.flushes += 1

        out = Out()
        observer = TextLogObserver(out)
        observer({"log_format": "one", "log_time": 5.5, "log_level": LogLevel.info, "log_namespace": "x"})
        observer({"log_format": "two", "log_time": 6.5, "log_level": LogLevel.info, "log_namespace": "x"})
        self.assertEqual(out.getvalue().count("\n"), 2)
        self.assertEqual(out.flushes, 2)
        self.assertTrue(out.getvalue().endswith("[x#info] two\n"))

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        st.text(max_size=40),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), st.one_of(st.integers(), st.text(max_size=10)), max_size=3),
        st.floats(min_value=0, max_value=4e9),
    )
    def test_anyEvent(self, fmt: str, fields: dict[str, Any], when: float) -> None:
        """For any format and fields, the same line as Twisted's."""
        self.assertSameLine({"log_format": fmt, "log_time": when, "log_level": LogLevel.info, "log_namespace": "n", **fields})
