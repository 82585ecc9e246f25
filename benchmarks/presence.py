"""
The presence workload: P presences tracked across a cluster of K nodes
(three by default), replicated by the Presence Tracker.

Every run of every ``broadcast_period`` starts a fresh cluster: K
``twistd -n phoenix --no-http --name benchI@127.0.0.1`` processes with their
own ``--epmd-port`` and ``--cookie``, each ``--connect``-ing to the nodes
started before it, serving the benchmark app
``--endpoint benchmarks.apps.presence:Endpoint`` (presences tracked
server-side, driven on the node's standard input; its tracker options come
from ``$BENCH_PRESENCE``), waits until each node links and hears every other
replica, then:

1. **convergence**: at a random moment of the gossip round, every node
   tracks its share of the P presences (keys different on each node), all
   in one reactor turn; each node reports the instant its state holds all P
   entries (checked after every merge); convergence = last node's instant -
   first node's start, and the part of it after the last node's first delta
   left.  Then ``Presence.list`` of the topic(s) on every node: its size is
   checked, its CPU time reported.
2. **churn**: node 0 tracks a new presence and untracks its oldest, over and
   over (``--churn-batch`` pairs a reactor turn), for ``--churn-seconds``;
   the other nodes replicate.  Changes/s = joins and leaves made / time;
   **lag** = how long after the churn ends the slowest other node has seen
   every one of those changes.
3. **gossip bytes per change**: the bytes of presence gossip all nodes sent
   during each phase (the Tracker's ``gossip_bytes``: JSON payload, once a
   message; and the payload bytes written to cluster links, once a link),
   over the changes made; and the nodes' CPU time, and the part of it spent
   in the cyclic garbage collector.

``--compare TREE`` runs every measurement a second time, interleaved, with
the ``twisted_phoenix`` package of another checkout: before and after a
change, from one invocation.

Every child process is killed when the harness ends, however it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import secrets
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import _cli, _pyspy, _report
from benchmarks._proc import ROOT, BenchmarkError, Child, cpu_seconds, free_port
from benchmarks._servers import twistd_argv, twistd_env

NAME = "presence"
HELP = "presence replication across 3 nodes: convergence of a burst of joins, churn, gossip bytes"
ENDPOINT = "benchmarks.apps.presence:Endpoint"
TOPIC = "room:lobby"


@dataclass
class Options:
    presences: int = 10_000
    nodes: int = 3
    runs: int = 3
    periods: tuple[float, ...] = (1.5, 0.1)
    topics: int = 1
    churn_seconds: float = 10.0
    churn_batch: int = 50
    churn_rate: float = 0.0  # changes/s; 0: as fast as it goes
    down_period: float = 30.0
    gc_threshold: int = 0  # the nodes' gc.set_threshold first value; 0: Python's (700)
    compare: str = ""  # another tree whose twisted_phoenix the nodes also run, interleaved
    timeout: float = 120.0
    profile: str = "none"  # none, cprofile, py-spy
    profile_period: float | None = None  # default: the shortest period
    profile_top: int = 25
    json_path: str | None = None
    logdir: str = ""


@dataclass
class Result:
    tree: str  # "" for this tree, else the --compare path
    period: float
    run: int
    presences: int
    # convergence
    convergence: float
    after_gossip: float  # from the last node's first delta leaving to every node converged
    track_seconds: float  # the slowest node's local tracking of its share
    reached: list[float]  # each node's convergence time, from the burst start
    list_ms: float  # median over nodes of the CPU time of Presence.list() of all P
    burst_cpu: list[float]
    burst_tracker_bytes: int
    burst_link_bytes: int
    burst_transfers: int
    burst_messages: int
    burst_gc: list[float]  # seconds in the cyclic GC, per node
    burst_dropped: int  # broadcasts the links dropped (congested)
    # churn
    churn_changes: int
    churn_seconds: float
    churn_rate: float
    churn_lag: float  # the slowest other node's catch-up time after the churn ends
    churn_cpu: list[float]  # busy: CPU time over the churn and catch-up, per node
    churn_cpu_seconds: list[float]
    churn_tracker_bytes: int
    churn_link_bytes: int
    churn_transfers: int
    churn_messages: int
    churn_gc: list[float]
    churn_dropped: int
    extra: dict[str, Any] = field(default_factory=dict)


class Cluster:
    """K presence nodes linked to each other, for one run."""

    def __init__(self, opts: Options, period: float, tag: str, tree: str = "") -> None:
        self.opts = opts
        self.period = period
        epmd = free_port()
        cookie = secrets.token_hex(16)
        names = [f"bench{i}@127.0.0.1" for i in range(opts.nodes)]
        self.names = names
        self.children: list[Child] = []
        self.replicas: list[str] = []
        env = twistd_env(opts.logdir, tree)
        env["BENCH_PRESENCE"] = json.dumps({"broadcast_period": period, "down_period": opts.down_period,
                                            "gc_threshold": opts.gc_threshold})
        for i, name in enumerate(names):
            options = ["--no-http", "--name", name, "--cookie", cookie, "--epmd-port", str(epmd),
                       "--endpoint", ENDPOINT]
            for other in names[:i]:
                options += ["--connect", other]
            log = os.path.join(opts.logdir, f"{tag}-node{i}.log")
            argv = twistd_argv(options, [f"--logfile={log}"])
            self.children.append(Child(f"{tag}-node{i}", argv, opts.logdir, env=env))
            # Start them one after the other: the first serves the port mapper.
            line = self.children[-1].expect(lambda l: l.startswith(("NODE ", "ERROR")), 60)
            if line.startswith("ERROR"):
                raise BenchmarkError(f"{tag}-node{i}: {line}")
            self.replicas.append(line.split()[2])
            library = os.path.dirname(line.split(" ", 3)[3])
            expected = os.path.join(os.path.abspath(tree or ROOT), "twisted_phoenix")
            if os.path.realpath(library) != os.path.realpath(expected):
                raise BenchmarkError(f"{tag}-node{i} runs the twisted_phoenix of {library}, not of {expected}")

    def ask(self, i: int, command: str, answer: str, timeout: float | None = None) -> list[str]:
        child = self.children[i]
        child.send(command)
        line = child.expect(
            lambda l: l == answer or l.startswith((answer + " ", "ERROR")), timeout or self.opts.timeout
        )
        if line.startswith("ERROR"):
            raise BenchmarkError(f"{child.name}: {line}")
        return line.split()[1:]

    def wait_linked(self) -> None:
        """Until every node has K-1 links and hears K-1 replicas; then let the transfers settle."""
        want = self.opts.nodes - 1
        deadline = time.monotonic() + 60
        while True:
            statuses = [self.ask(i, "status", "STATUS") for i in range(self.opts.nodes)]
            if all(int(s[0]) == want and int(s[1]) == want for s in statuses):
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the cluster did not form within 60 s: {statuses}")
            time.sleep(0.1)
        time.sleep(2 * self.period + 0.5)

    def gossip(self) -> list[list[float]]:
        return [[float(x) for x in self.ask(i, "gossip", "GOSSIP")] for i in range(self.opts.nodes)]

    def cpu(self) -> list[float]:
        return [cpu_seconds(c.pid) for c in self.children]

    def stop(self) -> None:
        # All at once (each node's peers see it leave), then wait; one "quit" each.
        for child in self.children:
            child.send("quit")
        deadline = time.monotonic() + 10
        for child in self.children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            child.kill()  # if it is still running; closes its pipes either way


def _sum_delta(after: list[list[float]], before: list[list[float]], column: int) -> int:
    return int(sum(a[column] - b[column] for a, b in zip(after, before)))


# gossip columns (see server_presence's ``gossip`` command)
(TRACKER_BYTES, LINK_BYTES, MESSAGES, HEARTBEATS, TRANSFER_REQS, TRANSFER_ACKS, TRANSFER_ACK_BYTES, MERGES,
 FIRST_DELTA_SENT, GC_SECONDS, GC_COLLECTIONS, DROPPED) = range(12)


def measure(
    opts: Options, period: float, run: int, profile: str = "none", on_profile: Any = None, tree: str = ""
) -> Result:
    tag = f"p{period:g}-{run}" + ("-compare" if tree else "")
    cluster = Cluster(opts, period, tag, tree)
    topics = ",".join(TOPIC if opts.topics == 1 else f"{TOPIC}:{t}" for t in range(opts.topics))
    k = opts.nodes
    try:
        cluster.wait_linked()

        # -- convergence ----------------------------------------------------------
        share, extra = divmod(opts.presences, k)
        for i in range(k):
            cluster.children[i].send(f"await {topics} {opts.presences}")
            cluster.ask(i, "mark", "MARKED")
        # The burst starts at a random moment of the gossip rounds.
        time.sleep(random.uniform(0, period))
        gossip0, cpu0 = cluster.gossip(), cluster.cpu()
        if on_profile is not None:
            on_profile(cluster, "burst", "start")
        for i in range(k):
            cluster.children[i].send(f"track {topics} {share + (1 if i < extra else 0)} n{i}k")
        tracked = []
        for i in range(k):
            line = cluster.children[i].expect(lambda l: l.startswith(("TRACKED ", "ERROR")), opts.timeout)
            if line.startswith("ERROR"):
                raise BenchmarkError(f"{cluster.children[i].name}: {line}")
            tracked.append([float(x) for x in line.split()[1:]])
        reached = []
        for i in range(k):
            line = cluster.children[i].expect(lambda l: l.startswith("REACHED "), opts.timeout)
            reached.append(line.split()[1:])
        cpu1 = cluster.cpu()
        if on_profile is not None:
            on_profile(cluster, "burst", "stop")
        gossip1 = cluster.gossip()
        start = min(t[0] for t in tracked)
        at = [float(r[0]) - start for r in reached]
        last_sent = max(g[FIRST_DELTA_SENT] for g in gossip1)
        listed = [cluster.ask(i, f"list {topics}", "LISTED") for i in range(k)]
        sizes = [int(r[0]) for r in listed]
        if any(s != opts.presences for s in sizes):
            raise BenchmarkError(f"{tag}: Presence.list sizes {sizes}, not {opts.presences}")

        # -- churn -------------------------------------------------------------------
        time.sleep(2 * period + 0.5)
        gossip2, cpu2 = cluster.gossip(), cluster.cpu()
        if on_profile is not None:
            on_profile(cluster, "churn", "start")
        changes, c_start, c_end, clock = cluster.ask(
            0, f"churn {topics} {opts.churn_seconds} {opts.churn_batch} c {opts.churn_rate}", "CHURNED",
            opts.churn_seconds + opts.timeout,
        )
        caught = [
            cluster.ask(i, f"await-clock {cluster.replicas[0]} {clock}", "CAUGHT") for i in range(1, k)
        ]
        cpu3 = cluster.cpu()
        if on_profile is not None:
            on_profile(cluster, "churn", "stop")
        gossip3 = cluster.gossip()
        entries = [int(c[1]) for c in caught]
        if any(e != opts.presences for e in entries):
            raise BenchmarkError(f"{tag}: after the churn the other nodes hold {entries} entries")
        churn_wall = float(c_end) - float(c_start)
        catch_up_end = max(float(c[0]) for c in caught)
        return Result(
            tree=tree,
            period=period,
            run=run,
            presences=opts.presences,
            convergence=max(at),
            after_gossip=max(float(r[0]) for r in reached) - last_sent,
            track_seconds=max(t[1] - t[0] for t in tracked),
            reached=at,
            list_ms=statistics.median(float(r[1]) for r in listed),
            burst_cpu=[b - a for a, b in zip(cpu0, cpu1)],
            burst_tracker_bytes=_sum_delta(gossip1, gossip0, TRACKER_BYTES),
            burst_link_bytes=_sum_delta(gossip1, gossip0, LINK_BYTES),
            burst_transfers=_sum_delta(gossip1, gossip0, TRANSFER_ACKS),
            burst_messages=_sum_delta(gossip1, gossip0, MESSAGES),
            burst_dropped=_sum_delta(gossip1, gossip0, DROPPED),
            burst_gc=[b[GC_SECONDS] - a[GC_SECONDS] for a, b in zip(gossip0, gossip1)],
            churn_changes=int(changes),
            churn_seconds=churn_wall,
            churn_rate=int(changes) / churn_wall,
            churn_lag=max(0.0, catch_up_end - float(c_end)),
            churn_cpu=[(b - a) / max(1e-9, catch_up_end - float(c_start)) for a, b in zip(cpu2, cpu3)],
            churn_cpu_seconds=[b - a for a, b in zip(cpu2, cpu3)],
            churn_tracker_bytes=_sum_delta(gossip3, gossip2, TRACKER_BYTES),
            churn_link_bytes=_sum_delta(gossip3, gossip2, LINK_BYTES),
            churn_transfers=_sum_delta(gossip3, gossip2, TRANSFER_ACKS),
            churn_messages=_sum_delta(gossip3, gossip2, MESSAGES),
            churn_dropped=_sum_delta(gossip3, gossip2, DROPPED),
            churn_gc=[b[GC_SECONDS] - a[GC_SECONDS] for a, b in zip(gossip2, gossip3)],
            extra={"burst_gossip": [gossip0, gossip1], "churn_gossip": [gossip2, gossip3]},
        )
    finally:
        cluster.stop()


# -- output -----------------------------------------------------------------------------


def print_run(r: Result) -> None:
    print(
        f"  run {r.run} period {r.period:g} s{f' ({r.tree})' if r.tree else ''}: converged in {r.convergence:.3f} s, "
        f"{r.after_gossip:.3f} s after the last delta left (nodes {', '.join(f'{x:.3f}' for x in r.reached)}; tracking took {1000 * r.track_seconds:.0f} ms; "
        f"list() {r.list_ms:.1f} ms CPU; CPU {', '.join(f'{c:.2f}' for c in r.burst_cpu)} s "
        f"(GC {', '.join(f'{c:.2f}' for c in r.burst_gc)} s); "
        f"gossip {r.burst_tracker_bytes / r.presences:.1f} B/change, links {r.burst_link_bytes / r.presences:.1f} B/change, "
        f"{r.burst_messages} messages, {r.burst_transfers} transfers"
        f"{f', {r.burst_dropped} DROPPED by congested links' if r.burst_dropped else ''})\n"
        f"      churn {r.churn_rate:,.0f} changes/s ({r.churn_changes:,} in {r.churn_seconds:.1f} s), "
        f"lag {r.churn_lag:.3f} s, busy {', '.join(f'{100 * c:.0f}%' for c in r.churn_cpu)} "
        f"(GC {', '.join(f'{100 * g / max(c, 1e-9):.0f}%' for g, c in zip(r.churn_gc, r.churn_cpu_seconds))} of CPU); "
        f"gossip {r.churn_tracker_bytes / r.churn_changes:.1f} B/change, "
        f"links {r.churn_link_bytes / r.churn_changes:.1f} B/change, "
        f"{r.churn_messages} messages, {r.churn_transfers} transfers"
        f"{f', {r.churn_dropped} DROPPED by congested links' if r.churn_dropped else ''}",
        flush=True,
    )


def _mmm(values: list[float], fmt: str) -> tuple[str, str]:
    return fmt.format(statistics.median(values)), f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def summarize(opts: Options, results: list[Result]) -> str:
    convergence_header = (
        "broadcast_period",
        "convergence (median)",
        "min-max",
        "after the last delta left",
        "local tracking",
        "list() of all (CPU)",
        "gossip/change",
        "messages",
        "GC/CPU",
    )
    churn_header = (
        "broadcast_period",
        "churn changes/s (median)",
        "min-max",
        "lag at end",
        "busy: churner / others",
        "gossip/change",
        "messages",
        "GC/CPU: churner / others",
    )
    convergence_rows = []
    churn_rows = []
    for period, tree in [(p, t) for p in opts.periods for t in (["", opts.compare] if opts.compare else [""])]:
        rs = [r for r in results if r.period == period and r.tree == tree]
        if not rs:
            continue
        label = f"{period:g} s" + ("" if not opts.compare else f", {tree or 'this tree'}")
        conv, conv_range = _mmm([r.convergence for r in rs], "{:.2f} s")
        rate, rate_range = _mmm([r.churn_rate for r in rs], "{:,.0f}")
        convergence_rows.append(
            (
                label,
                conv,
                conv_range,
                f"{statistics.median(r.after_gossip for r in rs):.2f} s",
                f"{1000 * statistics.median(r.track_seconds for r in rs):.0f} ms",
                f"{statistics.median(r.list_ms for r in rs):.1f} ms",
                f"{statistics.median(r.burst_tracker_bytes / r.presences for r in rs):.0f} B "
                f"({statistics.median(r.burst_link_bytes / r.presences for r in rs):.0f} B)",
                f"{statistics.median(r.burst_messages for r in rs):.0f}",
                f"{100 * statistics.median(sum(r.burst_gc) / max(sum(r.burst_cpu), 1e-9) for r in rs):.0f}%",
            )
        )
        churn_rows.append(
            (
                label,
                rate,
                rate_range,
                f"{statistics.median(r.churn_lag for r in rs):.2f} s",
                f"{100 * statistics.median(r.churn_cpu[0] for r in rs):.0f}% / "
                f"{100 * statistics.median(max(r.churn_cpu[1:]) for r in rs):.0f}%",
                f"{statistics.median(r.churn_tracker_bytes / r.churn_changes for r in rs):.0f} B "
                f"({statistics.median(r.churn_link_bytes / r.churn_changes for r in rs):.0f} B)",
                f"{statistics.median(r.churn_messages for r in rs):.0f}",
                f"{100 * statistics.median(r.churn_gc[0] / max(r.churn_cpu_seconds[0], 1e-9) for r in rs):.0f}% / "
                f"{100 * statistics.median(max(g / max(c, 1e-9) for g, c in zip(r.churn_gc[1:], r.churn_cpu_seconds[1:])) for r in rs):.0f}%",
            )
        )
    return "\n\n".join([_report.rst_table(convergence_header, convergence_rows), _report.rst_table(churn_header, churn_rows)])


def run_presence(opts: Options) -> list[Result]:
    print(
        f"presence: {opts.presences:,} presences across {opts.nodes} nodes, "
        f"{opts.topics} topic(s), broadcast_period {', '.join(f'{p:g}' for p in opts.periods)} s, "
        f"churn {opts.churn_seconds:g} s ({opts.churn_batch} pairs a turn"
        f"{f', at most {opts.churn_rate:g} changes/s' if opts.churn_rate else ''}), {opts.runs} runs"
        f"{f', GC threshold {opts.gc_threshold}' if opts.gc_threshold else ''}; nodes: twistd -n phoenix --no-http "
        f"--name benchI@127.0.0.1 --cookie C --epmd-port P --endpoint {ENDPOINT} [--connect ...]",
        flush=True,
    )
    results: list[Result] = []
    started = time.monotonic()
    for run in range(1, opts.runs + 1):
        k = (run - 1) % len(opts.periods)
        trees = ["", opts.compare] if opts.compare else [""]
        j = (run - 1) % len(trees)
        for period in opts.periods[k:] + opts.periods[:k]:
            for tree in trees[j:] + trees[:j]:
                r = measure(opts, period, run, tree=tree)
                print_run(r)
                results.append(r)
    print()
    print(
        f"presence: {opts.presences:,} presences, {opts.nodes} nodes, median of {opts.runs} runs "
        f"({time.monotonic() - started:.0f} s, load average now {os.getloadavg()[0]:.1f}); gossip/change: "
        "the Tracker's gossip_bytes (in brackets: bytes written to the cluster links)"
    )
    print(summarize(opts, results), flush=True)
    if any(r.burst_dropped or r.churn_dropped for r in results):
        print(
            "\nWARNING: cluster links dropped broadcasts (congested): the deltas lost were repaired by "
            "whole-state transfers (see the runs above).",
            flush=True,
        )
    if opts.profile != "none":
        period = opts.profile_period if opts.profile_period is not None else min(opts.periods)
        print()
        profile(opts, period, opts.profile)
    return results


# -- profiling -----------------------------------------------------------------------------


def profile(opts: Options, period: float, how: str) -> None:
    """One more run, every node profiled during each phase; the busiest node's profile is shown."""
    if how == "py-spy":
        _pyspy.require()
    spies: dict[tuple[str, int], subprocess.Popen[bytes]] = {}

    def path(phase: str, i: int) -> str:
        return os.path.join(opts.logdir, f"profile-{phase}-node{i}.{'prof' if how == 'cprofile' else 'txt'}")

    def on_profile(cluster: Cluster, phase: str, step: str) -> None:
        for i in range(opts.nodes):
            if how == "cprofile":
                if step == "start":
                    _plain(cluster, i, "profile-start")
                else:
                    _plain(cluster, i, f"profile-stop {path(phase, i)}")
            elif step == "start":
                spies[(phase, i)] = _pyspy.start(cluster.children[i].pid, path(phase, i))
            else:
                _pyspy.stop(spies.pop((phase, i)))
        if how == "py-spy" and step == "start":
            time.sleep(1.0)  # let py-spy attach

    r = measure(opts, period, 0, on_profile=on_profile)
    print(f"profiled run ({how}), broadcast_period {period:g} s:")
    print_run(r)
    for phase, cpu in (("burst", r.burst_cpu), ("churn", r.churn_cpu)):
        busiest = max(range(opts.nodes), key=lambda i: cpu[i])
        shown = [busiest] if phase == "burst" else sorted({0, busiest, 1})
        for i in shown:
            role = "the churning node" if (phase == "churn" and i == 0) else (
                "a replicating node" if phase == "churn" else "the busiest node")
            print(f"\n{how} of node {i} ({role}) during the {phase}:")
            if how == "cprofile":
                import pstats

                pstats.Stats(path(phase, i)).sort_stats("tottime").print_stats(opts.profile_top)
            else:
                print(_pyspy.report(path(phase, i), opts.profile_top))


def _plain(cluster: Cluster, i: int, command: str) -> None:
    child = cluster.children[i]
    child.send(command)
    child.expect(lambda l: l == "OK", 60)


# -- command line (``python -m benchmarks presence``) ----------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``presence`` subcommand's options."""
    p.add_argument("--presences", type=int, default=10_000, help="presences tracked, split across the nodes (10000)")
    p.add_argument("--nodes", type=int, default=3, help="cluster nodes, each its own process (3)")
    p.add_argument("--runs", type=int, default=3, help="runs of every broadcast period, interleaved (3)")
    p.add_argument(
        "--periods", default="1.5,0.1",
        help="comma-separated broadcast_period values in seconds, a fresh cluster for each (1.5,0.1)",
    )
    p.add_argument("--topics", type=int, default=1, help="topics the presences are spread over (1)")
    p.add_argument("--churn-seconds", type=float, default=10.0, help="length of the churn (10)")
    p.add_argument("--churn-batch", type=int, default=50, help="join+leave pairs per reactor turn (50)")
    p.add_argument(
        "--churn-rate", type=float, default=0.0,
        help="changes/s to churn at; 0: as fast as the node goes (0)",
    )
    p.add_argument(
        "--down-period", type=float, default=30.0,
        help="the trackers' down_period (30, the default of a 1.5 s period): a busy node is never taken for down",
    )
    p.add_argument(
        "--gc-threshold", type=int, default=0,
        help="the nodes' first garbage-collector threshold (gc.set_threshold); 0: Python's, 700",
    )
    p.add_argument(
        "--compare", default="", metavar="TREE",
        help="also run every measurement with the twisted_phoenix package of another checkout, interleaved "
        "(e.g. a git worktree of an older commit): before and after from one invocation",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for any one step (120)")
    p.add_argument(
        "--profile", choices=("none", "cprofile", "py-spy"), default="none",
        help="after the runs, one more run with every node profiled during the burst and the churn",
    )
    p.add_argument("--profile-period", type=float, default=None, help="the period of the profiled run (the shortest)")
    p.add_argument("--profile-top", type=int, default=25, help="profile entries to print (25)")
    _cli.add_output(p)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Run the ``presence`` subcommand."""
    try:
        periods = tuple(float(p) for p in args.periods.split(",") if p.strip())
    except ValueError:
        parser.error("--periods: comma-separated numbers of seconds")
    if not periods or min(periods) <= 0:
        parser.error("--periods must be positive")
    if min(args.presences, args.runs, args.topics, args.churn_batch) < 1 or args.nodes < 2:
        parser.error("--presences, --runs, --topics and --churn-batch must be positive, --nodes at least 2")
    if args.down_period < 2 * max(periods):
        parser.error("--down-period must be at least twice the longest period")
    with _cli.workspace(args, node=False) as ws:
        opts = Options(
            presences=args.presences,
            nodes=args.nodes,
            runs=args.runs,
            periods=periods,
            topics=args.topics,
            churn_seconds=args.churn_seconds,
            churn_batch=args.churn_batch,
            churn_rate=args.churn_rate,
            down_period=args.down_period,
            gc_threshold=args.gc_threshold,
            compare=args.compare,
            timeout=args.timeout,
            profile=args.profile,
            profile_period=args.profile_period,
            profile_top=args.profile_top,
            json_path=args.json_path,
            logdir=ws.logdir,
        )
        results = run_presence(opts)
        _report.write_json(opts.json_path, {"options": opts.__dict__, "machine": ws.machine, "results": results})


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
