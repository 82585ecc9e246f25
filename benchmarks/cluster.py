"""
The cluster fan-out workload: the same broadcasts to the same subscribers,
on one node and across a three-node cluster, side by side in one run.

Two topologies, every node its own process (``benchmarks/server_cluster.py``:
the demo app's ``PingChannel``, topic ``ping``):

``single``
    one node S, no cluster: the subscribers and the trigger all on S;
``cluster``
    three nodes A, B and T linked by Perspective Broker (a port mapper on a
    free loopback port, served by A; B and T connect to A by name and the
    mesh completes itself): half the subscribers on A, half on B, and only
    the trigger on T; every broadcast starts on T and crosses one link to A
    and one to B.

The trigger is one more WebSocket client, joined to ``ping`` on its node,
that pushes event ``broadcast``; its PingChannel calls
``Channel.broadcast``: the same trigger in both topologies.  The broadcasts
it gets back are not counted.

For each run and each topology (the order alternates from run to run):

1. start the node(s); in the cluster, wait until every node is linked to
   the two others;
2. warm up: 50 subscribers, 5 broadcasts;
3. **throughput**: the Node generator (``benchmarks/js/cluster_loadgen.js``)
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

import collections
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from benchmarks.fanout import (
    JS_DIR,
    BenchmarkError,
    Child,
    _env,
    _event,
    _fmt_rate,
    collapsed_report,
    require_py_spy,
    start_py_spy,
    stop_py_spy,
    ensure_node_modules,
    machine_info,
    proc_cpu,
    raise_nofile,
    rst_table,
)

LOADGEN = os.path.join(JS_DIR, "cluster_loadgen.js")
SERVER = ("-m", "benchmarks.server_cluster")
WS_PATH = "/socket/websocket?vsn=2.0.0"
COOKIE = "benchmark-cookie"

WORKLOADS = ("single", "cluster", "cluster-nodelay")
LABELS = {
    "single": "single: one node, subscribers and trigger on it",
    "cluster": "cluster: subscribers on A and B, trigger on T",
    "cluster-nodelay": "cluster, TCP_NODELAY on the links (experiment)",
}

WARMUP_CLIENTS = 50
WARMUP_BROADCASTS = 5


@dataclass
class Options:
    clients: int = 4000
    broadcasts: int = 100
    runs: int = 3
    workloads: tuple[str, ...] = ("single", "cluster")
    message_bytes: int = 100
    latency_clients: int = 40
    latency_broadcasts: int = 500
    latency_interval: float = 5.0  # ms
    timeout: float = 120.0
    concurrency: int = 200
    profile: str = "none"  # none, cprofile, py-spy
    profile_top: int = 25
    json_path: str | None = None
    logdir: str = ""


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Topology:
    """The node processes of one workload, and the URLs the generator uses."""

    def __init__(self, opts: Options, workload: str, tag: str) -> None:
        self.opts = opts
        self.workload = workload
        self.tag = tag
        self.nodes: dict[str, Child] = {}
        self.urls: dict[str, str] = {}

    def start(self) -> None:
        if self.workload == "single":
            self._start("S", [])
            return
        # cluster, cluster-nodelay
        mapper = _free_port()
        names = {k: f"{k.lower()}@127.0.0.1" for k in ("A", "B", "T")}
        # A first: it serves the port mapper; B and T find it by name.
        for key in ("A", "B", "T"):
            argv = ["--name", names[key], "--cookie", COOKIE, "--mapper-port", str(mapper)]
            if key != "A":
                argv += ["--connect", names["A"]]
            self._start(key, argv)
        deadline = time.monotonic() + 30
        for key, child in self.nodes.items():
            want = {n for k, n in names.items() if k != key}
            while True:
                child.send("nodes")
                line = child.expect(lambda l: l.startswith("NODES"), 10)
                have = set(filter(None, line.split(" ", 1)[1].split(","))) if " " in line else set()
                if want <= have:
                    break
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"{self.tag}: node {key} linked to {sorted(have)} only after 30 s")
                time.sleep(0.05)
        if self.workload == "cluster-nodelay":
            for child in self.nodes.values():
                child.send("nodelay")
                child.expect(lambda l: l.startswith("OK"), 10)

    def _start(self, key: str, argv: list[str]) -> None:
        child = Child(f"{self.tag}-{key}", [sys.executable, *SERVER, *argv], self.opts.logdir, env=_env())
        self.nodes[key] = child
        line = child.expect(lambda l: l.startswith(("PORT ", "ERROR")), 60)
        if line.startswith("ERROR"):
            raise BenchmarkError(f"{child.name}: {line}")
        self.urls[key] = f"ws://127.0.0.1:{int(line.split()[1])}{WS_PATH}"

    @property
    def sub_urls(self) -> list[str]:
        return [self.urls["S"]] if self.workload == "single" else [self.urls["A"], self.urls["B"]]

    @property
    def trigger_url(self) -> str:
        return self.urls["S" if self.workload == "single" else "T"]

    def cpu(self) -> dict[str, float]:
        return {key: proc_cpu(child.pid) for key, child in self.nodes.items()}

    def stop(self) -> None:
        # Every node at once (each says goodbye to its peers), then wait.
        for child in self.nodes.values():
            child.send("quit")
        for child in reversed(list(self.nodes.values())):
            child.stop(quit_line="")  # an empty line: quit was sent


def _loadgen(
    opts: Options,
    name: str,
    topo: Topology,
    clients: int,
    broadcasts: int,
    interval: float = 0.0,
    latency: bool = False,
) -> Child:
    node = shutil.which("node")
    if node is None:
        raise BenchmarkError("node is not on PATH")
    argv = [node, LOADGEN, "--trigger-url", topo.trigger_url]
    for url in topo.sub_urls:
        argv += ["--sub-url", url]
    argv += [
        "--clients", str(clients),
        "--broadcasts", str(broadcasts),
        "--message-bytes", str(opts.message_bytes),
        "--interval", str(interval),
        "--concurrency", str(opts.concurrency),
        "--timeout", str(opts.timeout),
        "--connect-timeout", str(opts.timeout),
    ]
    if latency:
        argv.append("--latency")
    return Child(name, argv, opts.logdir)


def _connect(gen: Child, clients: int, timeout: float) -> dict[str, Any]:
    ready = json.loads(gen.expect(_event("ready"), timeout))
    if not ready["trigger"]:
        raise BenchmarkError(f"{gen.name}: the trigger could not join; errors: {ready['errors']}")
    if ready["joined"] < clients:
        print(f"  ! {gen.name}: only {ready['joined']} of {clients} clients joined; errors: {ready['errors']}",
              flush=True)
    return ready


# -- one measurement ------------------------------------------------------------------


def measure(
    opts: Options,
    workload: str,
    run: int,
    on_profile: Callable[[Topology, str, str], Any] | None = None,
    latency: bool = True,
) -> Result:
    tag = f"{workload}-{run}"
    topo = Topology(opts, workload, tag)
    gens: list[Child] = []

    def gen(*args: Any, **kw: Any) -> Child:
        g = _loadgen(opts, *args, **kw)
        gens.append(g)
        return g

    try:
        topo.start()

        # Warm up: connecting, joining, broadcasting (and crossing the links), closing.
        warm = gen(f"{tag}-warmup", topo, WARMUP_CLIENTS, WARMUP_BROADCASTS)
        _connect(warm, WARMUP_CLIENTS, 60)
        warm.send("go")
        done = json.loads(warm.expect(_event("done"), opts.timeout + 30))
        warm.stop()
        if done["missing"]:
            raise BenchmarkError(f"{tag}: the warm-up lost {done['missing']} deliveries")
        time.sleep(0.5)

        # Throughput.
        g = gen(f"{tag}-throughput", topo, opts.clients, opts.broadcasts)
        ready = _connect(g, opts.clients, opts.timeout + 60)
        time.sleep(1.0)
        if on_profile is not None:
            on_profile(topo, "throughput", "start")
        before = topo.cpu()
        g.send("go")
        done = json.loads(g.expect(_event("done"), opts.timeout + 60))
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
            lg = gen(f"{tag}-latency", topo, opts.latency_clients, opts.latency_broadcasts,
                     interval=opts.latency_interval, latency=True)
            _connect(lg, opts.latency_clients, opts.timeout + 60)
            time.sleep(0.5)
            if on_profile is not None:
                on_profile(topo, "latency", "start")
            lat_before = topo.cpu()
            lg.send("go")
            lat = json.loads(lg.expect(_event("done"), opts.timeout + 60))
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
            extra={"joined_per_node": ready["joined_per_url"], "closed_early": done["closed_early"]},
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
        f"  run {r.run} {r.workload:15s} {_fmt_rate(r.rate):>10s} deliveries/s "
        f"({r.deliveries:,} in {r.seconds:.2f} s{missing}); node CPU {cpu}; "
        f"generator CPU {r.generator_cpu_seconds:.2f} s ({100 * r.generator_busy:.0f}%); "
        f"cores used {r.cores_used:.2f}; connect {r.connect_seconds:.1f} s; {r.delivery_bytes} B/delivery{lat}",
        flush=True,
    )


def summarize(opts: Options, results: list[Result]) -> str:
    by: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by[r.workload].append(r)
    med = {w: statistics.median(r.rate for r in rs) for w, rs in by.items()}

    header = (
        "workload",
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
    for w in opts.workloads:
        rs = by.get(w)
        if not rs:
            continue
        rates = [r.rate for r in rs]
        busiest = statistics.median(max(r.node_cpu.values()) / max(r.seconds, 1e-9) for r in rs)
        rows.append((
            LABELS[w],
            _fmt_rate(med[w]),
            _fmt_rate(min(rates)),
            _fmt_rate(max(rates)),
            f"{med[w] / med['single']:.2f}" if med.get("single") else "-",
            f"{1e6 * statistics.median(r.cpu_total / max(1, r.deliveries) for r in rs):.2f} µs",
            f"{100 * busiest:.0f}%",
            f"{statistics.median(r.generator_cpu_seconds for r in rs):.2f} s "
            f"({100 * statistics.median(r.generator_busy for r in rs):.0f}%)",
            f"{statistics.median(r.cores_used for r in rs):.2f}",
        ))
    out = rst_table(header, rows)

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
    for w in opts.workloads:
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
    return out + "\n\n" + rst_table(header2, rows2)


def run_cluster(opts: Options) -> list[Result]:
    soft, _ = raise_nofile()
    need = opts.clients + 200
    if soft < need:
        raise BenchmarkError(f"open files are capped at {soft} (ulimit -Hn); {opts.clients} clients need {need}")
    ensure_node_modules()
    own_logdir = not opts.logdir
    if own_logdir:
        opts.logdir = tempfile.mkdtemp(prefix="twisted-phoenix-bench-")
    else:
        os.makedirs(opts.logdir, exist_ok=True)
    info = machine_info()
    print(
        f"cluster: throughput {opts.clients:,} subscribers of one topic, {opts.broadcasts} broadcasts of "
        f"{opts.message_bytes} B back to back; latency {opts.latency_clients:,} subscribers, "
        f"{opts.latency_broadcasts} broadcasts, one every {opts.latency_interval:g} ms; {opts.runs} runs; "
        f"open files {soft}",
        flush=True,
    )
    print(
        "machine: {nproc} x {cpu}; Python {python}, Twisted {twisted} ({reactor}), "
        "Autobahn {autobahn}, Node {node}, ws {ws}".format(**info),
        flush=True,
    )
    print("load average at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    results: list[Result] = []
    started = time.monotonic()
    try:
        for run in range(1, opts.runs + 1):
            k = (run - 1) % len(opts.workloads)
            for w in opts.workloads[k:] + opts.workloads[:k]:
                r = measure(opts, w, run)
                print_run(r)
                results.append(r)
        print()
        print(
            f"cluster: {opts.clients:,} subscribers x {opts.broadcasts} broadcasts; latency "
            f"{opts.latency_clients:,} subscribers x {opts.latency_broadcasts} broadcasts every "
            f"{opts.latency_interval:g} ms; median of {opts.runs} runs ({time.monotonic() - started:.0f} s)"
        )
        print(summarize(opts, results), flush=True)
        print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
        if any(r.missing or r.latency_missing for r in results):
            print("\nWARNING: some deliveries never arrived (see the runs above).", flush=True)
        if any(r.generator_busy > 0.9 for r in results):
            print("\nWARNING: the load generator was busy over 90% of the time: it may be the limit.", flush=True)
        if opts.profile != "none":
            print()
            profile(opts, opts.profile)
        if opts.json_path:
            with open(opts.json_path, "w") as f:
                json.dump(
                    {"options": opts.__dict__, "machine": info, "results": [r.__dict__ for r in results]},
                    f, indent=2, default=str,
                )
            print(f"\nraw results written to {opts.json_path}")
    finally:
        Child.kill_all()
        if own_logdir:
            shutil.rmtree(opts.logdir, ignore_errors=True)
    return results


# -- profiling -------------------------------------------------------------------------------


def profile(opts: Options, how: str) -> None:
    """
    One more cluster run, the receiving node A and the sending node T
    profiled during the throughput fan-out and during the latency phase.
    """
    roles = {"A": "receiving, half the subscribers", "T": "sending, the trigger only"}
    stages = ("throughput", "latency")

    def path(key: str, stage: str, ext: str) -> str:
        return os.path.join(opts.logdir, f"cluster-0-{key}-{stage}.{ext}")

    if how == "cprofile":

        def on_cprofile(topo: Topology, stage: str, phase: str) -> None:
            for key in roles:
                child = topo.nodes[key]
                child.send("profile-start" if phase == "start" else f"profile-stop {path(key, stage, 'prof')}")
                child.expect(lambda l: l.startswith("OK"), 60)

        r = measure(opts, "cluster", 0, on_profile=on_cprofile)
        import pstats

        for stage in stages:
            for key, what in roles.items():
                cpu = (r.node_cpu if stage == "throughput" else r.latency_node_cpu)[key]
                print(f"cProfile of node {key} ({what}) during the {stage} phase (node CPU {cpu:.2f} s):")
                pstats.Stats(path(key, stage, "prof")).sort_stats("tottime").print_stats(opts.profile_top)
        return

    spy = require_py_spy()
    spies: dict[str, subprocess.Popen[bytes]] = {}

    def on_profile(topo: Topology, stage: str, phase: str) -> None:
        if phase == "start":
            for key in roles:
                spies[key] = start_py_spy(spy, topo.nodes[key].pid, path(key, stage, "py-spy.txt"))
            time.sleep(1.0)  # let py-spy attach
        else:
            for p in spies.values():
                stop_py_spy(p)

    r = measure(opts, "cluster", 0, on_profile=on_profile)
    print(f"under py-spy: {_fmt_rate(r.rate)} deliveries/s; latency p50 {_ms(r.latency and r.latency['p50'])}, "
          f"first delivery p50 {_ms(r.first_latency and r.first_latency['p50'])}")
    for stage in stages:
        for key, what in roles.items():
            cpu = (r.node_cpu if stage == "throughput" else r.latency_node_cpu)[key]
            out = path(key, stage, "py-spy.txt")
            print(f"\npy-spy of node {key} ({what}) during the {stage} phase (node CPU {cpu:.2f} s):")
            print(collapsed_report(out, opts.profile_top) if os.path.exists(out) else "(no profile)")
