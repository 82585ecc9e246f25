"""
A node of the presence benchmark, started as ``twistd -n phoenix`` starts any
node::

    BENCH_PRESENCE='{"broadcast_period": 1.5, "down_period": 30, "gc_threshold": 0}' \
    twistd -n --pidfile= --logfile=node.log phoenix --no-http --name N --cookie C \
        --epmd-port P [--connect OTHER]... --endpoint benchmarks.apps.presence:Endpoint

an :class:`~twisted_phoenix.Endpoint` (its :class:`~twisted_phoenix.presence.Presence`
with the tracker options of ``$BENCH_PRESENCE``) and the plugin's cluster
:class:`~twisted_phoenix.cluster.Node` sharing its PubSub (the PubSub's
adapter).  No HTTP listener and no WebSocket clients: presences are tracked
server-side, through the Tracker API (``tracker.track(owner, topic, key,
meta)``, one owner per presence, as one channel per presence would be),
since what is measured is replication.  twistd logs to a file; standard
input and output are the harness's control channel.

Once the node listens for links it prints ``NODE <name> <replica> <path>``
(the path of the ``twisted_phoenix`` package it runs), then takes these
commands on stdin, one a line:

``status``
    ``STATUS <links> <replicas up> <entries>``: linked nodes, other
    presence replicas this tracker hears, entries in its state.
``track <topic> <n> <prefix>``
    track ``n`` presences now, in one reactor turn: owner and key
    ``<prefix><i>``, meta ``{"online_at": <int>}`` (plus the ``phx_ref``
    the tracker adds); ``topic`` may be ``a,b,c`` to spread them
    round-robin over several topics.  ``TRACKED <start> <end>`` (wall-clock
    seconds, ``time.time()``).
``await <topic> <n>``
    ``REACHED <wall time>`` as soon as the topics' entries number ``n``
    (checked after every merge and every local change, so the time is
    exact).
``list <topic>``
    ``LISTED <size> <ms>``: the number of presences ``Presence.list``
    returns for the topic(s), and the CPU time of those calls (the least
    of three tries).
``churn <topic> <seconds> <batch> <prefix> [<rate>]``
    for ``seconds``: in every reactor turn, ``batch`` times, track a new
    presence (key ``<prefix><i>``) and untrack this node's oldest one (so
    the number of entries stays the same), then yield to the reactor (at
    once, or, with a ``rate`` in changes/s, when the next batch is due).
    ``CHURNED <changes> <start> <end> <clock>``: joins plus leaves made,
    and this replica's clock at the end.
``await-clock <replica> <clock>``
    ``CAUGHT <wall time> <entries>`` once this node has seen every event of
    ``replica`` up to ``clock``.
``gossip``
    ``GOSSIP <tracker bytes> <link bytes> <messages> <heartbeats>
    <transfer_reqs> <transfer_acks> <transfer_ack bytes> <merges>
    <first delta sent> <GC seconds> <GC collections> <dropped>``: the
    tracker's ``gossip_bytes`` (JSON payload bytes, once per message),
    the payload bytes written to the cluster links for presence topics
    (once per link: a broadcast crosses each of the two links), the
    messages this tracker sent and, of them, the heartbeats with a delta,
    the transfer requests and the transfer answers (and their bytes), the
    gossip messages merged here, and when the first heartbeat carrying a
    delta left since the last ``mark`` (0 if none did), and the CPU time
    spent in the cyclic garbage collector (timed by ``gc.callbacks``) and
    the number of its collections, and the broadcasts (of any topic) the
    cluster links dropped because they were congested.
``mark``
    ``MARKED``: forget when the last delta left (see ``gossip``).
``profile-start``, ``profile-stop <path>``
    cProfile on, and off with its stats written to ``path``; ``OK``.
``quit`` (or the end of stdin)
    stop the reactor (twistd shuts down, the node leaves the cluster).
"""

from __future__ import annotations

import collections
import cProfile
import gc
import json
import os
import time
from typing import Any, Callable

from twisted.internet import stdio
from twisted.protocols.basic import LineReceiver

from twisted_phoenix import Endpoint as BaseEndpoint

#: Tracker options and the GC threshold, from the harness.
OPTIONS: dict[str, Any] = json.loads(os.environ.get("BENCH_PRESENCE") or "{}")


class Stats:
    """What this node's tracker sent and merged (counted around its methods)."""

    def __init__(self) -> None:
        self.link_bytes = 0
        self.messages = 0
        self.heartbeats = 0
        self.transfer_reqs = 0
        self.transfer_acks = 0
        self.transfer_ack_bytes = 0
        self.merges = 0
        #: When the first heartbeat with a delta left since ``mark``.
        self.first_delta_sent = 0.0
        self.gc_seconds = 0.0
        self.gc_collections = 0
        self._gc_started = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            self.gc_seconds += time.thread_time() - self._gc_started
            self.gc_collections += 1


def instrument(tracker: Any, stats: Stats, after_change: Callable[[], None]) -> None:
    """
    Count the tracker's messages and merges, and call ``after_change`` after
    every local change and every merge.  Wraps instance attributes only;
    the library's code is what runs.
    """
    send, merge, on_diff = tracker._send, tracker._merge, tracker.on_diff

    def _send(event: str, payload: dict[str, Any], node: str | None = None) -> None:
        before = tracker.gossip_bytes
        send(event, payload, node)
        stats.messages += 1
        if event == "heartbeat" and payload.get("delta") is not None:
            stats.heartbeats += 1
            if not stats.first_delta_sent:
                stats.first_delta_sent = time.time()
        elif event == "transfer_req":
            stats.transfer_reqs += 1
        elif event == "transfer_ack":
            stats.transfer_acks += 1
            stats.transfer_ack_bytes += tracker.gossip_bytes - before

    def _merge(fragment: Any) -> None:
        merge(fragment)
        stats.merges += 1
        after_change()

    def _on_diff(diff: Any) -> None:
        on_diff(diff)
        after_change()

    tracker._send = _send
    tracker._merge = _merge
    tracker.on_diff = _on_diff


def count_link_bytes(stats: Stats) -> None:
    """Add the payload bytes of every presence broadcast written to a link."""
    from twisted_phoenix.cluster import link

    original = link.Link.send_broadcast

    def send_broadcast(self: Any, topic: str, event: str, chunks: list[bytes], binary: bool) -> bool:
        if topic.startswith("phx_presence:"):
            stats.link_bytes += sum(len(c) for c in chunks)
        return original(self, topic, event, chunks, binary)

    link.Link.send_broadcast = send_broadcast  # type: ignore[method-assign]


class PresenceControl(LineReceiver):
    """The harness's commands (see the module docstring)."""

    delimiter = b"\n"

    def __init__(self, reactor: Any, node: Any, presence: Any, stats: Stats) -> None:
        self.reactor = reactor
        self.profiler: cProfile.Profile | None = None
        self.node = node
        self.presence = presence
        self.tracker = presence.tracker
        self.stats = stats
        self.waiters: list[tuple[Callable[[], bool], Callable[[], None]]] = []
        instrument(self.tracker, stats, self.check)
        #: This node's tracked (owner, topic, key), oldest first, for churn.
        self.mine: collections.deque[tuple[str, str, str]] = collections.deque()

    # -- waiting on the state ------------------------------------------------------

    def check(self) -> None:
        if not self.waiters:
            return
        for entry in list(self.waiters):
            condition, fire = entry
            if condition():
                self.waiters.remove(entry)
                fire()

    def when(self, condition: Callable[[], bool], fire: Callable[[], None]) -> None:
        if condition():
            fire()
        else:
            self.waiters.append((condition, fire))

    def count(self, topics: list[str]) -> int:
        # The size of the topic index: O(1) a check.  No replica is down in
        # the benchmark (down_period is long), so it is what list() returns;
        # REACHED checks that with list() itself.
        index = self.tracker.state._by_topic
        return sum(len(index.get(t, ())) for t in topics)

    # -- commands ---------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if not words:
            return
        command, args = words[0], words[1:]
        handler = getattr(self, "do_" + command.replace("-", "_"), None)
        if handler is None:
            self.reply(f"ERROR unknown command {command!r}")
            return
        try:
            handler(*args)
        except Exception as e:  # a harness bug: say so rather than hang it
            self.reply(f"ERROR {command}: {type(e).__name__}: {e}")

    def do_status(self) -> None:
        up = sum(1 for r in self.tracker.replicas.values() if r.up)
        self.reply(f"STATUS {len(self.node.links)} {up} {len(self.tracker.state.values)}")

    def do_track(self, topic: str, n: str, prefix: str) -> None:
        topics = topic.split(",")
        track = self.tracker.track
        online_at = int(time.time())
        start = time.time()
        for i in range(int(n)):
            name = f"{prefix}{i}"
            t = topics[i % len(topics)]
            track(name, t, name, {"online_at": online_at})
            self.mine.append((name, t, name))
        self.reply(f"TRACKED {start:.6f} {time.time():.6f}")

    def do_await(self, topic: str, n: str) -> None:
        topics, target = topic.split(","), int(n)

        self.when(lambda: self.count(topics) >= target, lambda: self.reply(f"REACHED {time.time():.6f}"))

    def do_list(self, topic: str) -> None:
        times = []
        size = 0
        for _ in range(3):
            # CPU time: the other nodes may be busy at this moment.
            t0 = time.thread_time()
            size = sum(len(self.presence.list(t)) for t in topic.split(","))
            times.append(1000 * (time.thread_time() - t0))
        self.reply(f"LISTED {size} {min(times):.2f}")

    def do_churn(self, topic: str, seconds: str, batch: str, prefix: str, rate: str = "0") -> None:
        topics = topic.split(",")
        tracker, mine = self.tracker, self.mine
        per_turn = int(batch)
        per_second = float(rate)
        start = time.time()
        end = start + float(seconds)
        done = [0, 0]  # changes, next key

        def turn() -> None:
            track, untrack = tracker.track, tracker.untrack
            i = done[1]
            for _ in range(per_turn):
                name = f"{prefix}{i}"
                t = topics[i % len(topics)]
                track(name, t, name, {"online_at": 0})
                mine.append((name, t, name))
                untrack(*mine.popleft())
                i += 1
            done[1] = i
            done[0] += 2 * per_turn
            now = time.time()
            if now < end:
                due = start + done[0] / per_second if per_second else now
                self.reactor.callLater(max(0.0, due - now), turn)
            else:
                self.reply(f"CHURNED {done[0]} {start:.6f} {now:.6f} {tracker.state.clock}")

        turn()

    def do_await_clock(self, replica: str, clock: str) -> None:
        target = int(clock)
        context = self.tracker.state.context

        def caught() -> None:
            self.reply(f"CAUGHT {time.time():.6f} {len(self.tracker.state.values)}")

        self.when(lambda: context.get(replica, 0) >= target, caught)

    def do_gossip(self) -> None:
        s = self.stats
        self.reply(
            f"GOSSIP {self.tracker.gossip_bytes} {s.link_bytes} {s.messages} {s.heartbeats} "
            f"{s.transfer_reqs} {s.transfer_acks} {s.transfer_ack_bytes} {s.merges} {s.first_delta_sent:.6f} "
            f"{s.gc_seconds:.6f} {s.gc_collections} {sum(link.dropped for link in self.node.links.values())}"
        )

    def do_mark(self) -> None:
        self.stats.first_delta_sent = 0.0
        self.reply("MARKED")


    def do_profile_start(self) -> None:
        self.profiler = cProfile.Profile()
        self.profiler.enable()
        self.reply("OK")

    def do_profile_stop(self, path: str) -> None:
        if self.profiler is not None:
            self.profiler.disable()
            self.profiler.dump_stats(path)
            self.profiler = None
        self.reply("OK")

    def do_quit(self) -> None:
        self.connectionLost()

    def reply(self, text: str) -> None:
        self.transport.write(text.encode() + b"\n")

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


class Endpoint(BaseEndpoint):
    """An endpoint whose start() opens the control channel once the node listens."""

    presence_options = {k: OPTIONS[k] for k in ("broadcast_period", "down_period") if k in OPTIONS}

    def start(self) -> None:
        if OPTIONS.get("gc_threshold"):
            gc.set_threshold(int(OPTIONS["gc_threshold"]), *gc.get_threshold()[1:])
        stats = Stats()
        count_link_bytes(stats)
        node = self.pubsub.adapter
        control = PresenceControl(self.reactor, node, self.presence, stats)
        super().start()

        def started(_: Any) -> None:
            import twisted_phoenix

            stdio.StandardIO(control, reactor=self.reactor)
            control.reply(f"NODE {node.name} {self.presence.tracker.replica} {twisted_phoenix.__file__}")

        node.started.addCallback(started)
