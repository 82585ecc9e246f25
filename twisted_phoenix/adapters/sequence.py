# -*- test-case-name: tests.test_redis_adapter -*-
"""
Sequence numbers that tell a receiver what it missed.

Each message a node publishes on a channel carries ``(incarnation, run,
seq)``: the publishing process's random incarnation, a *run* number, and
the message's number within that run.  A run is numbered per channel, not
per publisher: a node subscribed to some channels only sees some of a
publisher's messages, and a single per-publisher count would show gaps for
every message on a channel it is not subscribed to.

A receiver keeps, per channel it is subscribed to and per publisher, the
last number seen.  A jump (10 then 14) means 3 messages were lost.  The
subscription connection to Redis delivers every message in order while it
lasts, so gaps appear only across a lost connection (a Redis restart, a
network cut, Redis dropping a subscriber that reads too slowly).

A publisher forgets a channel's count once it has been idle for
``idle`` to ``2 * idle`` seconds (see :meth:`Outgoing.sweep`), so memory
follows the channels in use, not every channel ever published to; its next
message there starts a new run at 1.  A new run (or a restarted publisher)
is no loss in itself, but when the receiver lost its connection since it
last heard that publisher on that channel, the end of the previous run may
have been lost, in a number nobody can tell: that is counted and logged as
an *unknown gap*, never passed over in silence.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Gap", "Incoming", "Outgoing"]


class Outgoing:
    """The numbers of the messages this node publishes, one run per channel."""

    __slots__ = ("_current", "_previous", "_runs")

    def __init__(self) -> None:
        self._current: dict[bytes, list[int]] = {}
        self._previous: dict[bytes, list[int]] = {}
        self._runs = 0

    def next(self, channel: bytes) -> tuple[int, int]:
        """``(run, seq)`` of the next message on ``channel``."""
        entry = self._current.get(channel)
        if entry is None:
            entry = self._previous.pop(channel, None)
            if entry is None:
                self._runs += 1
                entry = [self._runs, 0]
            self._current[channel] = entry
        entry[1] += 1
        return entry[0], entry[1]

    def sweep(self) -> None:
        """
        Forget the channels not published to since the sweep before: call
        every ``idle`` seconds, and a channel is forgotten after ``idle`` to
        ``2 * idle`` seconds without messages.
        """
        self._previous = self._current
        self._current = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)


class Gap(NamedTuple):
    """What one message revealed: ``missed`` messages lost before it, and
    whether an unknown number may have been lost too."""

    missed: int
    unknown: bool


#: No gap.
NO_GAP = Gap(0, False)


class Incoming:
    """
    The last number seen per subscribed channel and publisher, and the
    losses found.

    The adapter calls :meth:`connection_lost` each time its subscription
    connection goes, :meth:`subscribed` and :meth:`unsubscribed` when Redis
    confirms a (un)subscription (or when a subscription is dropped while
    disconnected), and :meth:`received` for each message.

    :ivar lost: messages known to be lost (the sum of the gaps).
    :ivar gaps: the number of gaps found.
    :ivar unknown_gaps: times messages may have been lost in a number the
        sequence cannot tell (see the module's docstring).
    """

    __slots__ = ("generation", "_last", "_since", "lost", "gaps", "unknown_gaps")

    def __init__(self) -> None:
        #: Bumped at each lost connection: "was there an outage since?"
        self.generation = 0
        # channel -> {publisher: [incarnation, run, seq, generation]}
        self._last: dict[bytes, dict[str, list]] = {}
        # channel -> generation when first subscribed (kept across reconnects)
        self._since: dict[bytes, int] = {}
        self.lost = 0
        self.gaps = 0
        self.unknown_gaps = 0

    def connection_lost(self) -> None:
        """The subscription connection is gone: what follows may have gaps."""
        self.generation += 1

    def subscribed(self, channel: bytes) -> None:
        """Redis confirmed a subscription to ``channel`` (a new one or a resubscription)."""
        self._since.setdefault(channel, self.generation)

    def unsubscribed(self, channel: bytes) -> None:
        """No longer subscribed to ``channel``: forget it."""
        self._since.pop(channel, None)
        self._last.pop(channel, None)

    def received(self, channel: bytes, publisher: str, incarnation: str, run: int, seq: int) -> Gap:
        """Account for message ``seq`` of ``run`` from ``publisher`` on ``channel``."""
        generation = self.generation
        peers = self._last.get(channel)
        if peers is None:
            peers = self._last[channel] = {}
        last = peers.get(publisher)
        if last is None:
            peers[publisher] = [incarnation, run, seq, generation]
            # The first message of this publisher here.  If the connection
            # was lost since we subscribed, the ones before it may have been
            # published during the outage, or before we subscribed.
            if seq > 1 and self._since.get(channel, generation) < generation:
                self.unknown_gaps += 1
                return Gap(0, True)
            return NO_GAP
        if last[0] == incarnation and last[1] == run:
            missed = seq - last[2] - 1
            last[2] = seq
            last[3] = generation
            if missed > 0:
                self.lost += missed
                self.gaps += 1
                return Gap(missed, False)
            return NO_GAP
        # A new run: the publisher restarted, or forgot this channel after
        # idling.  We have been subscribed since before it began, so its
        # first seq - 1 messages were lost; the old run's last ones too,
        # perhaps, if our connection went since we last heard it.
        unknown = last[3] < generation
        missed = seq - 1
        last[:] = [incarnation, run, seq, generation]
        if missed > 0:
            self.lost += missed
            self.gaps += 1
        if unknown:
            self.unknown_gaps += 1
        return Gap(missed, unknown) if missed > 0 or unknown else NO_GAP

    def publishers(self, channel: bytes) -> int:
        """How many publishers of ``channel`` are being followed."""
        return len(self._last.get(channel, ()))
