"""
The cluster fan-out workload: the same broadcasts to the same subscribers,
on one node and across a three-node cluster, side by side in one run.

Two topologies, every node its own ``twistd -n phoenix`` process (the demo
app's ``PingChannel``, topic ``ping``):

``single``
    one node S, no cluster (the plugin's defaults): the subscribers and the
    trigger all on S;
``cluster``
    three nodes A, B and T (``--name a@127.0.0.1`` ..., a shared
    ``--cookie`` and their own ``--epmd-port``; B and T ``--connect
    a@127.0.0.1`` and the mesh completes itself): half the subscribers on A,
    half on B, and only the trigger on T; every broadcast starts on T and
    crosses one link to A and one to B.  The cluster is ready when
    broadcasts from T reach A and B (the warm-up's probe).

The trigger is one more WebSocket client, joined to ``ping`` on its node,
that pushes event ``broadcast``; its PingChannel calls
``Channel.broadcast``: the same trigger in both topologies.  The broadcasts
it gets back are not counted.

For each run and each topology (the order alternates from run to run):

1. start the node(s); in the cluster, wait until every node is linked to
   the two others;
2. warm up: 50 subscribers, 5 broadcasts;
3. **throughput**: the Node generator (``loadgen.js clients``)
   connects C subscribers, then the trigger pushes N broadcasts back to
   back; deliveries/s = C x N / (last delivery - first push), timed in the
   generator; the nodes' CPU time (``/proc/<pid>/stat``) over the same window;
4. **latency**: the generator connects L subscribers (spread the same way),
   then the trigger pushes M broadcasts, one every I ms; each payload
   carries its index, and the generator, which stamped each push with its
   own clock, measures every delivery's latency (push to arrival): p50, p90
   and p99 over all deliveries, and p50 of each broadcast's first delivery;
5. stop the generator and the node(s).

Every child process is killed when the harness ends, however it ends.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from benchmarks import _cli, _pyspy, _report
from benchmarks._loadgen import Generator
from benchmarks._proc import BenchmarkError, Child, free_port
from benchmarks._servers import SPECS, Server, start, start_mesh, stop_all

NAME = "cluster"
HELP = "deliveries/s and added latency of a broadcast through a 3-node cluster vs one node"
WORKLOADS = ("single", "cluster", "redis")
LABELS = {
    "single": "single: one node, subscribers and trigger on it",
    "cluster": "cluster: subscribers on A and B, trigger on T",
    "redis": "redis: the same three nodes, linked only through a redis-server (--pubsub)",
}

WARMUP_CLIENTS = 50
WARMUP_BROADCASTS = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=4000, help="subscribers for the throughput (4000)")
    p.add_argument("--broadcasts", type=int, default=100, help="broadcasts for the throughput, back to back (100)")
    p.add_argument("--runs", type=int, default=3, help="runs of every workload, interleaved (3)")
    p.add_argument("--workloads", default="single,cluster",
                   help="comma-separated, from: " + ", ".join(WORKLOADS) + " (single,cluster)")
    p.add_argument("--message-bytes", type=int, default=100, help="bytes of each broadcast's JSON text (100)")
    p.add_argument("--latency-clients", type=int, default=40, help="subscribers for the latency (40)")
    p.add_argument("--latency-broadcasts", type=int, default=500, help="broadcasts for the latency (500)")
    p.add_argument("--latency-interval", type=float, default=5.0, help="ms between latency broadcasts (5)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds allowed for connecting, and for a fan-out (120)")
    p.add_argument("--concurrency", type=int, default=200, help="connection attempts in flight (200)")
    p.add_argument("--profile", choices=("none", "py-spy"), default="none",
                   help="after the runs, one more cluster run with the receiving node A and the sending node T "
                        "profiled during its throughput and latency phases")
    p.add_argument("--profile-top", type=int, default=25, help="profile entries to print (25)")
    _cli.add_output(p)


@dataclass
class Result:
    workload: str
    run: int
    clients: int
    joined: int
    broadcasts: int
    deliveries: int
    expected: int
    seconds: float
    rate: float
    node_cpu: dict[str, float]  # node -> CPU seconds over the throughput fan-out
    generator_cpu_seconds: float
    generator_busy: float
    connect_seconds: float
    delivery_bytes: int | None
    latency: dict[str, float] | None  # ms, over every delivery
    first_latency: dict[str, float] | None  # ms, over each broadcast's first delivery
    latency_missing: int
    latency_generator_busy: float
    latency_node_cpu: dict[str, float]  # node -> CPU seconds over the latency phase
    latency_broadcasts: int
    settings: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.expected - self.deliveries

    @property
    def cpu_total(self) -> float:
        return sum(self.node_cpu.values())

    @property
    def cores_used(self) -> float:
        """CPU seconds of the nodes and the generator over the fan-out, per second."""
        return (self.cpu_total + self.generator_cpu_seconds) / max(self.seconds, 1e-9)


# -- the nodes ----------------------------------------------------------------------


class Topology:
    """The ``twistd -n phoenix`` nodes of one workload, and the URLs the generator uses."""

    def __init__(self, logdir: str, workload: str, tag: str) -> None:
        self.logdir = logdir
        self.workload = workload
        self.tag = tag
        self.nodes: dict[str, Server] = {}
        self.redis: Child | None = None

    def start(self) -> None:
        if self.workload == "single":
            self.nodes["S"] = start(SPECS["phoenix"], self.logdir, f"{self.tag}-S")
            return
        if self.workload == "redis":
            port = free_port()
            self.redis = Child(
                f"{self.tag}-redis",
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                self.logdir,
            )
            self.redis.expect(lambda line: "Ready to accept connections" in line, 30)
            for key in ("A", "B", "T"):
                options = ["--name", f"{key.lower()}@127.0.0.1", "--pubsub", f"redis://127.0.0.1:{port}"]
                self.nodes[key] = start(SPECS["phoenix"], self.logdir, f"{self.tag}-{key}", options)
            return
        # The nodes' own port mapper port and cookie: nothing else on the machine is touched.
        self.nodes = start_mesh(self.logdir, self.tag, ("A", "B", "T"))

    @property
    def settings(self) -> str:
        if self.workload == "single":
            return "defaults"
        if self.workload == "redis":
            return "--name a/b/t@127.0.0.1 --pubsub redis://127.0.0.1:P (no cluster links)"
        return "--name a/b/t@127.0.0.1 --cookie C --epmd-port P; b, t: --connect a@127.0.0.1"

    @property
    def sub_urls(self) -> list[str]:
        keys = ["S"] if self.workload == "single" else ["A", "B"]
        return [self.nodes[k].url() for k in keys]

    @property
    def trigger_url(self) -> str:
        return self.nodes["S" if self.workload == "single" else "T"].url()

    def cpu(self) -> dict[str, float]:
        return {key: node.cpu() for key, node in self.nodes.items()}

    def stop(self) -> None:
        stop_all(self.nodes)
        if self.redis is not None:
            self.redis.kill()
            self.redis = None


def _generator(logdir: str, args: argparse.Namespace, name: str, topo: Topology, clients: int,
               probe: bool = False) -> Generator:
    return Generator(logdir, name, "clients", wait=args.timeout + 60, url=topo.sub_urls,
                     trigger_url=topo.trigger_url, clients=clients, message_bytes=args.message_bytes,
                     concurrency=args.concurrency, timeout=args.timeout, connect_timeout=args.timeout, probe=probe)


def connect_clients(gen: Generator, clients: int) -> dict[str, Any]:
    """Wait until ``gen``'s clients and trigger have joined (a shortfall is reported); its "ready" event."""
    ready = gen.event("ready")
    if not ready["trigger"]:
        raise BenchmarkError(f"{gen.name}: the trigger could not join; failures: {_report.counts(ready['failures'])}")
    if ready["joined"] < clients:
        print(f"  ! {gen.name}: only {ready['joined']} of {clients} clients joined; failures: "
              f"{_report.counts(ready['failures'])}", flush=True)
    if ready.get("probed") is not None and ready["probed"] < len(ready["joined_per_url"]):
        raise BenchmarkError(f"{gen.name}: broadcasts from the trigger's node did not reach every node "
                             f"within {gen.wait:.0f} s (the cluster did not link)")
    return ready


def warm_up(warm: Generator, clients: int, tag: str) -> None:
    """
    Connecting, joining, broadcasting (across the links: ``warm`` probes
    until broadcasts cross the cluster), closing: every code path once.
    """
    connect_clients(warm, clients)
    done = warm.ask(f"fanout {WARMUP_BROADCASTS}", "done")
    warm.stop()
    if done["missing"]:
        raise BenchmarkError(f"{tag}: the warm-up lost {done['missing']} deliveries")


# -- one measurement ------------------------------------------------------------------


def measure(
    ws: _cli.Run,
    opts: argparse.Namespace,
    workload: str,
    run: int,
    on_profile: Callable[[Topology, str, str], Any] | None = None,
    latency: bool = True,
) -> Result:
    tag = f"{workload}-{run}"
    topo = Topology(ws.logdir, workload, tag)
    gens: list[Generator] = []

    def gen(name: str, clients: int, probe: bool = False) -> Generator:
        g = _generator(ws.logdir, opts, name, topo, clients, probe)
        gens.append(g)
        return g

    try:
        topo.start()

        warm_up(gen(f"{tag}-warmup", WARMUP_CLIENTS, probe=True), WARMUP_CLIENTS, tag)
        time.sleep(0.5)

        # Throughput.
        g = gen(f"{tag}-throughput", opts.clients)
        ready = connect_clients(g, opts.clients)
        time.sleep(1.0)
        if on_profile is not None:
            on_profile(topo, "throughput", "start")
        before = topo.cpu()
        done = g.ask(f"fanout {opts.broadcasts}", "done")
        after = topo.cpu()
        if on_profile is not None:
            on_profile(topo, "throughput", "stop")
        g.stop()
        seconds = (done["last_at"] - done["trigger_at"]) / 1000.0 if done["trigger_at"] else 0.0
        window = max(1e-9, (done["last_at"] - done["go_at"]) / 1000.0)

        # Latency: few subscribers, one broadcast every few ms.
        lat = None
        if latency:
            time.sleep(1.0)
            lg = gen(f"{tag}-latency", opts.latency_clients)
            connect_clients(lg, opts.latency_clients)
            time.sleep(0.5)
            if on_profile is not None:
                on_profile(topo, "latency", "start")
            lat_before = topo.cpu()
            lat = lg.ask(f"fanout {opts.latency_broadcasts} 0 {opts.latency_interval} 1", "done")
            lat_after = topo.cpu()
            if on_profile is not None:
                on_profile(topo, "latency", "stop")
            lg.stop()

        return Result(
            workload=workload,
            run=run,
            clients=opts.clients,
            joined=ready["joined"],
            broadcasts=opts.broadcasts,
            deliveries=done["deliveries"],
            expected=done["expected"],
            seconds=seconds,
            rate=done["deliveries"] / seconds if seconds > 0 else 0.0,
            node_cpu={k: after[k] - before[k] for k in before},
            generator_cpu_seconds=done["cpu_user"] + done["cpu_sys"],
            generator_busy=(done["cpu_user"] + done["cpu_sys"]) / window,
            connect_seconds=ready["connect_seconds"],
            delivery_bytes=done["first_delivery_bytes"],
            latency=lat and lat["latency_ms"],
            first_latency=lat and lat["first_latency_ms"],
            latency_missing=lat["missing"] if lat else 0,
            latency_generator_busy=(
                (lat["cpu_user"] + lat["cpu_sys"]) / max(1e-9, (lat["last_at"] - lat["go_at"]) / 1000.0)
                if lat else 0.0
            ),
            latency_node_cpu={k: lat_after[k] - lat_before[k] for k in lat_before} if lat else {},
            latency_broadcasts=opts.latency_broadcasts,
            settings=topo.settings,
            extra={"joined_per_node": ready["joined_per_url"], "closed_early": done["closed_early"],
                   "close_codes": done["close_codes"],
                   "commands": {k: n.command_line for k, n in topo.nodes.items()}},
        )
    finally:
        for g in gens:
            g.kill()
        topo.stop()


# -- the whole benchmark ------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def print_run(r: Result) -> None:
    missing = f", MISSING {r.missing:,}" if r.missing else ""
    cpu = ", ".join(f"{k} {v:.2f} s ({100 * v / max(r.seconds, 1e-9):.0f}%)" for k, v in r.node_cpu.items())
    lat = ""
    if r.latency:
        lmiss = f", MISSING {r.latency_missing:,}" if r.latency_missing else ""
        lat = (
            f"; latency p50 {_ms(r.latency['p50'])} p99 {_ms(r.latency['p99'])}, "
            f"first delivery p50 {_ms(r.first_latency and r.first_latency['p50'])} ({r.latency['n']:,} deliveries{lmiss}; "
            f"generator {100 * r.latency_generator_busy:.0f}% busy; node CPU/broadcast "
            + ", ".join(f"{k} {1e6 * v / r.latency_broadcasts:.0f} µs"
                        for k, v in r.latency_node_cpu.items())
            + ")"
        )
    print(
        f"  run {r.run} {r.workload:15s} {_report.rate(r.rate):>10s} deliveries/s "
        f"({r.deliveries:,} in {r.seconds:.2f} s{missing}); node CPU {cpu}; "
        f"generator CPU {r.generator_cpu_seconds:.2f} s ({100 * r.generator_busy:.0f}%); "
        f"cores used {r.cores_used:.2f}; connect {r.connect_seconds:.1f} s; {r.delivery_bytes} B/delivery{lat}"
        + (f"; {r.extra['closed_early']} closed early: {_report.counts(r.extra['close_codes'])}"
           if r.extra.get("closed_early") else ""),
        flush=True,
    )


def summarize(workloads: tuple[str, ...], results: list[Result]) -> str:
    by: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by[r.workload].append(r)
    med = {w: statistics.median(r.rate for r in rs) for w, rs in by.items()}

    header = (
        "workload",
        "server options",
        "deliveries/s (median)",
        "min",
        "max",
        "vs single",
        "node CPU/delivery (all nodes)",
        "busiest node",
        "generator CPU",
        "cores used",
    )
    rows = []
    for w in workloads:
        rs = by.get(w)
        if not rs:
            continue
        rates = [r.rate for r in rs]
        busiest = statistics.median(max(r.node_cpu.values()) / max(r.seconds, 1e-9) for r in rs)
        rows.append((
            LABELS[w],
            rs[0].settings,
            _report.rate(med[w]),
            _report.rate(min(rates)),
            _report.rate(max(rates)),
            f"{med[w] / med['single']:.2f}" if med.get("single") else "-",
            f"{1e6 * statistics.median(r.cpu_total / max(1, r.deliveries) for r in rs):.2f} µs",
            f"{100 * busiest:.0f}%",
            f"{statistics.median(r.generator_cpu_seconds for r in rs):.2f} s "
            f"({100 * statistics.median(r.generator_busy for r in rs):.0f}%)",
            f"{statistics.median(r.cores_used for r in rs):.2f}",
        ))
    out = _report.rst_table(header, rows)

    if not any(r.latency for r in results):
        return out

    def lat(rs: list[Result], key: str, first: bool = False) -> float:
        return statistics.median((r.first_latency if first else r.latency)[key] for r in rs)  # type: ignore[index]

    header2 = (
        "workload", "latency p50", "p90", "p99", "first delivery p50", "first p99", "p50 - single",
        "p99 - single", "first p50 - single", "generator busy",
    )
    rows2 = []
    base = by.get("single")
    for w in workloads:
        rs = [r for r in by.get(w, []) if r.latency]
        if not rs:
            continue
        rows2.append((
            LABELS[w],
            _ms(lat(rs, "p50")),
            _ms(lat(rs, "p90")),
            _ms(lat(rs, "p99")),
            _ms(lat(rs, "p50", first=True)),
            _ms(lat(rs, "p99", first=True)),
            _ms(lat(rs, "p50") - lat(base, "p50")) if base else "-",
            _ms(lat(rs, "p99") - lat(base, "p99")) if base else "-",
            _ms(lat(rs, "p50", first=True) - lat(base, "p50", first=True)) if base else "-",
            f"{100 * statistics.median(r.latency_generator_busy for r in rs):.0f}%",
        ))
    return out + "\n\n" + _report.rst_table(header2, rows2)


def run_cluster(ws: _cli.Run, opts: argparse.Namespace, workloads: tuple[str, ...]) -> list[Result]:
    """Every run of every workload, printed as they go, then the tables; the results."""
    print(
        f"cluster: throughput {opts.clients:,} subscribers of one topic, {opts.broadcasts} broadcasts of "
        f"{opts.message_bytes} B back to back; latency {opts.latency_clients:,} subscribers, "
        f"{opts.latency_broadcasts} broadcasts, one every {opts.latency_interval:g} ms; {opts.runs} runs",
        flush=True,
    )
    results: list[Result] = []
    started = time.monotonic()
    for run, w in _cli.interleaved(opts.runs, workloads):
        r = measure(ws, opts, w, run)
        print_run(r)
        results.append(r)
    print()
    print(
        f"cluster: {opts.clients:,} subscribers x {opts.broadcasts} broadcasts; latency "
        f"{opts.latency_clients:,} subscribers x {opts.latency_broadcasts} broadcasts every "
        f"{opts.latency_interval:g} ms; median of {opts.runs} runs ({time.monotonic() - started:.0f} s)"
    )
    print(summarize(workloads, results), flush=True)
    _report.print_load_end()
    if any(r.missing or r.latency_missing for r in results):
        print("\nWARNING: some deliveries never arrived (see the runs above).", flush=True)
    if any(r.generator_busy > 0.9 for r in results):
        print("\nWARNING: the load generator was busy over 90% of the time: it may be the limit.", flush=True)
    return results


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.clients, args.broadcasts, args.runs, args.latency_clients, args.latency_broadcasts) < 1:
        parser.error("counts must be positive")
    workloads = _cli.split(args.workloads)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or not workloads:
        parser.error(f"unknown workload(s): {', '.join(unknown) or '(none)'}")
    with _cli.workspace(args, need_files=args.clients + 200) as ws:
        results = run_cluster(ws, args, workloads)
        if args.profile == "py-spy":
            print()
            profile(ws, args)
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "results": results})


# -- profiling -------------------------------------------------------------------------------


def profile(ws: _cli.Run, opts: argparse.Namespace) -> None:
    """
    One more cluster run, the receiving node A and the sending node T
    profiled with py-spy during the throughput fan-out and during the latency phase.
    """
    _pyspy.require()
    roles = {"A": "receiving, half the subscribers", "T": "sending, the trigger only"}
    stages = ("throughput", "latency")
    outs: dict[str, dict[str, str]] = {}
    active: dict[str, Any] = {}

    def on_profile(topo: Topology, stage: str, phase: str) -> None:
        if phase == "start":
            cm = _pyspy.profiling({k: topo.nodes[k].pid for k in roles}, ws.logdir, f"cluster-0-{stage}")
            outs[stage] = cm.__enter__()
            active["cm"] = cm
        else:
            active.pop("cm").__exit__(None, None, None)

    r = measure(ws, opts, "cluster", 0, on_profile=on_profile)
    print(f"under py-spy: {_report.rate(r.rate)} deliveries/s; latency p50 {_ms(r.latency and r.latency['p50'])}, "
          f"first delivery p50 {_ms(r.first_latency and r.first_latency['p50'])}")
    for stage in stages:
        for key, what in roles.items():
            cpu = (r.node_cpu if stage == "throughput" else r.latency_node_cpu)[key]
            print(f"\npy-spy of node {key} ({what}) during the {stage} phase (node CPU {cpu:.2f} s):")
            print(_pyspy.report(outs[stage][key], opts.profile_top))


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
