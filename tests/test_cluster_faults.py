"""
Faults under load, with real processes: a ``twistd`` node streams
broadcasts (``tests._cluster:StreamEndpoint``) while another node is killed
with SIGKILL, a link is cut, black-holed or delayed by a proxy
(``tests/_faultproxy.py``), or a node restarts.  The observer is a node in
this process, so that it can see every broadcast and time every event.

What must hold: nothing is lost between live nodes while their link is up
(messages are lost only while the link they cross is down: at most once,
as Phoenix), order is kept, and the cluster heals by itself.  Detection
and healing times are printed (run with ``-s`` to see them) and logged.

A node is pointed at the proxy with ``name@host=ADDRESS:PORT``; for a node
on this host its port mapper would be asked first (and give the real port),
so the two nodes of a proxied link each have their own port mapper port,
as two hosts would: each then knows the other only by the address given.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ._cluster import Collector, free_port, start_node, wait_until, watch_logs
from ._faultproxy import FaultProxy
from .test_cluster_processes import TIMEOUT, ProcessTestCase, node

STREAM = "tests._cluster:StreamEndpoint"

#: Heartbeats of every node in these tests: a silent peer is dropped within 1.2 s.
HEARTBEAT = ("--heartbeat-interval", "0.2", "--heartbeat-timeout", "1")

log = Logger()


def timing(text: str) -> None:
    """Report a measured time: in the test log, and on stderr (pytest -s)."""
    log.info("{text}", text=text)
    sys.__stderr__.write(f"\n[faults] {text}\n")


class FaultTestCase(ProcessTestCase):
    """Nodes of one cluster, a streaming node, and an observer in this process."""

    def setUp(self) -> None:
        super().setUp()
        self.logs = watch_logs(self, reactor)

    @defer.inlineCallbacks
    def observer(self, mapper_port: int) -> Any:
        """The node ``o@127.0.0.1`` in this process, with the tests' heartbeats; its stream collector."""
        o = yield start_node(self, reactor, node("o"), mapper_port=mapper_port,
                             heartbeat_interval=0.2, heartbeat_timeout=1.0)
        return o, Collector(reactor, o.pubsub, "stream")

    def stream(self, o: Any, source: str, count: int, rate: int = 500) -> None:
        """Have node ``source`` broadcast ``count`` stream messages, ``rate`` a second."""
        o.pubsub.direct_broadcast(node(source), "stream-control", "start",
                                  {"count": count, "rate": rate, "batch": max(1, rate // 100)})

    def seqs(self, stream: Collector) -> list[int]:
        return [b.payload["seq"] for b in stream.received if b.event == "msg"]

    def wait_received(self, stream: Collector, count: int) -> defer.Deferred[Any]:
        # The stream announces nothing per message to wait on: poll (bounded).
        return wait_until(reactor, lambda: len(self.seqs(stream)) >= count, TIMEOUT, what=f"{count} received")

    def wait_done(self, stream: Collector, timeout: float = 40.0) -> defer.Deferred[Any]:
        # Links are ordered: once "done" is in, so is everything sent before on that link.
        return wait_until(reactor, lambda: any(b.event == "done" for b in stream.received), timeout,
                          what="the stream's end")

    @defer.inlineCallbacks
    def timed_log(self, text: str, since: float) -> Any:
        """Seconds from ``since`` until this process logs ``text``."""
        yield self.logs.wait_for(text, TIMEOUT)
        return reactor.seconds() - since

    def assertInOrder(self, seqs: list[int]) -> None:
        self.assertEqual(seqs, sorted(set(seqs)), "duplicated or out of order")


class KillTests(FaultTestCase):
    """SIGKILL of a node while another streams."""

    @defer.inlineCallbacks
    def test_kill_during_stream(self) -> None:
        """kill -9 of a node (the port mapper's) mid-stream: every message still reaches the live nodes."""
        v = yield self.start("v", *HEARTBEAT, http=False)
        yield self.start("s", "--connect", node("v"), "--endpoint", STREAM, *HEARTBEAT, http=False)
        o, stream = yield self.observer(int(self.env["PHOENIX_EPMD_PORT"]))
        self.assertTrue((yield o.connect(node("s"))))
        yield wait_until(reactor, lambda: o.list() == [node("s"), node("v")], TIMEOUT, what="o linked to s and v")
        self.assertIsNone(o.mapper.serving)
        count = 3000
        self.stream(o, "s", count, rate=600)
        yield self.wait_received(stream, 600)
        registration = o.mapper._connection
        self.assertIsNotNone(registration)
        killed = reactor.seconds()
        v.child.transport.signalProcess("KILL")
        detected = yield self.timed_log("Node v@127.0.0.1 is down (link from o@127.0.0.1 lost)", killed)
        # The port mapper's server is gone too: o or s serves it, o registers again (a new connection).
        yield wait_until(reactor, lambda: o.mapper._connection not in (None, registration),
                         TIMEOUT, what="o registered with a port mapper again")
        mapper_back = reactor.seconds() - killed
        yield self.wait_done(stream)
        seqs = self.seqs(stream)
        self.assertEqual(seqs, list(range(count)), f"lost: {sorted(set(range(count)) - set(seqs))[:20]}")
        self.assertEqual(o.list(), [node("s")])
        self.assertLess(detected, 2.0)
        timing(f"kill -9 of v mid-stream: o saw it down after {detected * 1000:.0f} ms; port mapper served and "
               f"o registered again after {mapper_back * 1000:.0f} ms; {len(seqs)}/{count} stream messages "
               f"from s received, in order")


class ProxyTests(FaultTestCase):
    """One link through the fault proxy: cut, black-holed, delayed, restored."""

    @defer.inlineCallbacks
    def outage(self, o: Any, stream: Collector, fault: Any, proxy: FaultProxy, what: str) -> Any:
        """
        Apply ``fault``, wait until o sees s down, keep it 1 s, restore, wait
        until relinked; the highest seq before and the first after.
        """
        before = max(self.seqs(stream))
        started = reactor.seconds()
        fault()
        detected = yield self.timed_log("Node s@127.0.0.1 is down (link from o@127.0.0.1 lost)", started)
        yield deferLater(reactor, 1.0, lambda: None)  # the outage lasts a second more
        restored = reactor.seconds()
        proxy.restore()
        # o relinks on its own schedule (backoff): poll, bounded.
        yield wait_until(reactor, lambda: o.list() == [node("s")], 20.0, what="s relinked")
        healed = reactor.seconds() - restored
        received = len(self.seqs(stream))
        yield self.wait_received(stream, received + 100)
        after = min(seq for seq in self.seqs(stream)[received:])
        timing(f"{what}: o saw s down after {detected * 1000:.0f} ms; relinked {healed * 1000:.0f} ms after "
               f"the proxy was restored; messages {before + 1}..{after - 1} (sent between the fault and the relink) lost")
        self.logs.events.clear()
        return before, after, detected, healed

    @defer.inlineCallbacks
    def test_cut_drop_delay_restore(self) -> None:
        """
        A link cut (reset), then black-holed, then delayed, through a proxy:
        each outage is seen and heals by itself; messages are lost only
        while the link is down, and none while it is merely slow.
        """
        # Two "hosts": each node its own port mapper, so the proxy is the only way between them.
        s = yield self.start("s", "--endpoint", STREAM, *HEARTBEAT, http=False,
                             PHOENIX_EPMD_PORT=str(free_port()))
        o, stream = yield self.observer(free_port())
        proxy = FaultProxy(reactor, int(self.link_address(s).rpartition(":")[2]))
        yield proxy.start()
        self.addCleanup(proxy.stop)
        self.assertTrue((yield o.connect(f"{node('s')}={proxy.address}")))
        count = 9000
        self.stream(o, "s", count, rate=500)
        yield self.wait_received(stream, 500)

        cut = yield self.outage(o, stream, proxy.cut, proxy, "link cut (reset) by the proxy")
        self.assertLess(cut[2], 1.0)  # a reset is seen at once
        drop = yield self.outage(o, stream, proxy.drop, proxy, "link black-holed by the proxy")
        self.assertLess(drop[2], 1.0 + 0.2 + 1.0)  # heartbeat timeout + interval, and slack

        # Slow, not down: 300 ms of delay for a second, under the 1 s heartbeat timeout.
        before = max(self.seqs(stream))
        proxy.delay(0.3)
        yield deferLater(reactor, 1.0, lambda: None)
        proxy.restore()
        yield self.wait_received(stream, len(self.seqs(stream)) + 300)
        self.assertEqual(self.logs.find("is down"), [])
        timing("link delayed 300 ms for 1 s by the proxy: stayed up, nothing lost")

        yield self.wait_done(stream)
        seqs = self.seqs(stream)
        self.assertInOrder(seqs)
        lost = set(range(count)) - set(seqs)
        windows = [range(cut[0] + 1, cut[1]), range(drop[0] + 1, drop[1])]
        self.assertEqual([seq for seq in lost if not any(seq in w for w in windows)], [],
                         "lost while the link was up")
        self.assertEqual(max(seqs), count - 1)
        self.assertFalse(set(range(before, before + 300)) & lost)
        timing(f"stream of {count}: {len(seqs)} received, {len(lost)} lost, all in the two outages")


class RestartTests(FaultTestCase):
    """A node restarts while the cluster is busy."""

    @defer.inlineCallbacks
    def test_restart_under_load(self) -> None:
        """kill -9 and restart of a node during a stream: it rejoins and gets the stream; the others lose nothing."""
        v = yield self.start("v", *HEARTBEAT, http=False)
        yield self.start("s", "--connect", node("v"), "--endpoint", STREAM, *HEARTBEAT, http=False)
        o, stream = yield self.observer(int(self.env["PHOENIX_EPMD_PORT"]))
        self.assertTrue((yield o.connect(node("s"))))
        yield wait_until(reactor, lambda: o.list() == [node("s"), node("v")], TIMEOUT, what="o linked to s and v")
        counts = Collector(reactor, o.pubsub, "stream-count")
        count = 6000
        self.stream(o, "s", count, rate=500)
        yield self.wait_received(stream, 500)
        killed = reactor.seconds()
        v.child.transport.signalProcess("KILL")
        detected = yield self.timed_log("Node v@127.0.0.1 is down (link from o@127.0.0.1 lost)", killed)
        restarting = reactor.seconds()
        yield self.start("v", "--connect", node("s"), "--endpoint", STREAM, *HEARTBEAT, http=False)
        started = reactor.seconds() - restarting
        yield wait_until(reactor, lambda: node("v") in o.list(), TIMEOUT, what="v relinked to o")
        healed = reactor.seconds() - restarting
        # v gets the stream again.
        yield self.wait_received(stream, len(self.seqs(stream)) + 250)
        o.pubsub.direct_broadcast(node("v"), "stream-control", "query", {"reply_to": o.name})
        answer = (yield counts.wait_for(1, TIMEOUT))[0].payload
        self.assertGreater(answer["received"], 0)
        yield self.wait_done(stream)
        seqs = self.seqs(stream)
        self.assertEqual(seqs, list(range(count)), f"lost: {sorted(set(range(count)) - set(seqs))[:20]}")
        timing(f"kill -9 and restart of v under a 500/s stream: o saw v down after {detected * 1000:.0f} ms; "
               f"v started in {started:.2f} s and was linked to o {healed:.2f} s after the restart began; "
               f"v had {answer['received']} stream messages by then; o lost none of s's {count}")
