"""
The yardstick: twisted_phoenix against the plain-Autobahn floors and its
Python peers, on four workloads, side by side in one run.

``python -m benchmarks sweep|roundtrip|memory|joinstorm|all``.

Servers (each its own process on a free port, started by
``benchmarks/_servers.py``; see ``benchmarks/README.rst``):

``phoenix``     twisted_phoenix: ``twistd -n phoenix``, the demo app, the plugin's defaults
``workers``     the same with ``--workers 2`` (on request: ``--servers phoenix,workers``)
``prepared``    plain Autobahn: ``sendPreparedMessage`` fan-out, ``sendMessage`` echo
``raw``         plain Autobahn: ``transport.write`` of pre-built frames (the floor)
``websockets``  ``websockets`` (asyncio), its ``broadcast()`` helper
``socketio``    python-socketio 5 on aiohttp, rooms and acks
``channels``    Daphne + Django Channels 4, ``channels_redis`` (a ``redis-server``
                child on a free port)
``external``    ``--external COMMAND --external-port N``: any server speaking the
                demo app's protocol (a Phoenix app, for one)

Workloads (each measurement starts a fresh server and warms it up):

``sweep`` (fan-out)
    C subscribers of one topic, N broadcasts of ~100 bytes pushed back to
    back by one of them; deliveries/s = C x N / (last delivery - first push);
    for each C of ``--sizes``.
``roundtrip``
    100 clients, each pushing ``ping`` and awaiting the reply, in a loop, for
    S seconds: replies/s, and the p50/p99 latency of every round trip.
``memory``
    server RSS growth per connected client with one joined channel (or the
    peer's equivalent: a set, a room, a group), at 8,000 clients.
``joinstorm``
    5,000 connections open and idle, then every client sends its join at
    once: joins/s = joins / (last join reply - first join sent).

For every measurement the server's CPU time over the window (from
``/proc/<pid>/stat``) and the Node generator's (``process.cpuUsage()``) are
recorded: a generator near 100 % busy would be the limit, not the server.
Memory is the server's VmRSS (``/proc``) before and after.
Every child (servers, redis, generators, py-spy) is killed at the end,
however the harness ends.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from benchmarks import _cli, _pyspy, _report
from benchmarks._loadgen import Generator as NodeGenerator
from benchmarks._loadgen import split
from benchmarks._proc import BenchmarkError
from benchmarks._servers import DEFAULT_SPECS, SPECS, Server, Spec, start, unavailable

COMMANDS = ("sweep", "roundtrip", "memory", "joinstorm", "all")
HELP = {
    "sweep": "fan-out deliveries/s at several subscriber counts: twisted_phoenix, floors and peers",
    "roundtrip": "ping/reply round trips: replies/s and p50/p99 latency, twisted_phoenix, floors and peers",
    "memory": "server RSS per connected, joined client: twisted_phoenix, floors and peers",
    "joinstorm": "joins/s when every open connection joins at once: twisted_phoenix, floors and peers",
    "all": "every workload (and the cluster fan-out), one combined table",
}
WARMUP_CLIENTS = 50
WARMUP_BROADCASTS = 5
WARMUP_ROUNDTRIP_SECONDS = 0.5

#: The floor each workload's ratios are taken against.
FLOORS = {"sweep": "raw", "roundtrip": "prepared", "memory": "prepared", "joinstorm": "prepared"}
WORKLOAD_TITLES = {
    "sweep": "fan-out",
    "roundtrip": "round trip",
    "memory": "memory",
    "joinstorm": "join storm",
}
UNITS = {"sweep": "deliveries/s", "roundtrip": "replies/s", "memory": "KiB/conn", "joinstorm": "joins/s"}


class Running:
    """A started server (and its redis-server), for one measurement."""

    def __init__(self, opts: "Options", spec: Spec, tag: str) -> None:
        self.spec = spec
        self.tag = tag
        self.server: Server = start(spec, opts.logdir, tag,
                                    timeout=opts.external_timeout if spec.kind == "external" else 60.0)
        self.url = self.server.url()

    def cpu(self) -> float:
        return self.server.cpu()

    def redis_cpu(self) -> float:
        s = self.server.redis_sample()
        return s.cpu_seconds if s else 0.0

    def rss(self) -> int | None:
        s = self.server.sample()
        return s.rss_kib if s else None

    def redis_rss(self) -> int:
        s = self.server.redis_sample()
        return s.rss_kib if s else 0

    def stop(self) -> None:
        self.server.stop()


# -- the generator -------------------------------------------------------------------


class Generator:
    """One ``loadgen.js clients`` process."""

    def __init__(self, opts: "Options", running: Running, name: str, clients: int, join: bool = True,
                 trigger: bool = False) -> None:
        self.node = NodeGenerator(
            opts.logdir, name, "clients", wait=opts.timeout + 60, url=running.url, protocol=running.spec.protocol,
            clients=clients, message_bytes=opts.message_bytes, concurrency=opts.concurrency, timeout=opts.timeout,
            connect_timeout=opts.timeout, no_join=not join, trigger=trigger,
        )
        self.name = name
        self.clients = clients
        self.join = join

    def ready(self) -> dict[str, Any]:
        r = self.node.event("ready", self.node.wait + 30)
        got = r["joined"] if self.join else r["connected"]
        if got < self.clients:
            print(f"  ! {self.name}: only {got} of {self.clients} clients "
                  f"{'joined' if self.join else 'connected'}; failures: {_report.counts(r['failures'])}",
                  flush=True)
        return r

    def command(self, line: str) -> None:
        self.node.command(line)

    def done(self) -> dict[str, Any]:
        return self.node.event("done")

    def stop(self) -> None:
        self.node.stop()


def _busy(done: dict[str, Any], end_key: str = "end_at") -> float:
    window = max(1e-9, (done[end_key] - done["go_at"]) / 1000.0)
    return (done["cpu_user"] + done["cpu_sys"]) / window


def warm_up(opts: "Options", running: Running) -> None:
    """Connect, join, broadcast, round-trip and leave: every code path once."""
    g = Generator(opts, running, f"{running.tag}-warmup", WARMUP_CLIENTS, trigger=True)
    try:
        g.ready()
        g.command(f"fanout {WARMUP_BROADCASTS}")
        done = g.done()
        if done["missing"]:
            raise BenchmarkError(f"{running.tag}: the warm-up lost {done['missing']} deliveries")
    finally:
        g.stop()
    g = Generator(opts, running, f"{running.tag}-warmup-rt", WARMUP_CLIENTS)
    try:
        g.ready()
        g.command(f"roundtrip {WARMUP_ROUNDTRIP_SECONDS}")
        done = g.done()
        if not done["replies"]:
            raise BenchmarkError(f"{running.tag}: no reply to a ping in the warm-up")
    finally:
        g.stop()
    time.sleep(0.5)


# -- options and results -------------------------------------------------------------


@dataclass
class Options:
    servers: tuple[str, ...] = DEFAULT_SPECS
    specs: dict[str, Spec] = field(default_factory=lambda: dict(SPECS))  # name -> spec, the external one too
    external_timeout: float = 120.0
    runs: int = 3
    sizes: tuple[int, ...] = (500, 1000, 2000, 5000)  # sweep: subscriber counts
    broadcasts: int = 100  # sweep: broadcasts per measurement, at least
    min_deliveries: int = 500_000  # sweep: more broadcasts at small sizes, to reach this many
    budget: float = 30.0  # sweep: seconds a fan-out may take; a slower one is cut there
    roundtrip_clients: int = 100
    roundtrip_seconds: float = 10.0
    memory_clients: int = 8000
    memory_generators: int = 1
    join_clients: int = 5000
    message_bytes: int = 100
    timeout: float = 300.0
    concurrency: int = 200
    profile: str = "none"  # none or py-spy
    profile_servers: tuple[str, ...] = ("phoenix",)
    profile_top: int = 25
    profile_rate: int = 1000
    json_path: str | None = None
    logdir: str = ""


@dataclass
class Row:
    """One measurement: ``value`` is the workload's headline figure (see UNITS)."""

    workload: str
    server: str
    run: int
    size: int  # clients
    value: float
    server_cpu: float = 0.0  # seconds over the window
    ops: int = 0  # deliveries, replies, joins (for CPU per operation)
    generator_busy: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a workload produced: its rows, and the servers that could not run (with why)."""

    workload: str
    rows: list[Row] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    sizes: tuple[int, ...] = ()


# -- the measurements ----------------------------------------------------------------


Hook = Callable[[Running, str], Any]


def sweep_broadcasts(opts: Options, clients: int) -> int:
    """``--broadcasts``, or more at small sizes: at least ``--min-deliveries`` deliveries."""
    return max(opts.broadcasts, -(-opts.min_deliveries // clients))


def measure_sweep(opts: Options, running: Running, run: int, clients: int, hook: Hook | None = None) -> Row:
    broadcasts = sweep_broadcasts(opts, clients)
    g = Generator(opts, running, f"{running.tag}-gen", clients, trigger=True)
    try:
        ready = g.ready()
        time.sleep(0.5)
        if hook:
            hook(running, "start")
        cpu0, rcpu0 = running.cpu(), running.redis_cpu()
        g.command(f"fanout {broadcasts} {opts.budget}")
        done = g.done()
        cpu, rcpu = running.cpu() - cpu0, running.redis_cpu() - rcpu0
        if hook:
            hook(running, "stop")
    finally:
        g.stop()
    seconds = (done["last_at"] - done["trigger_at"]) / 1000.0 if done["trigger_at"] else 0.0
    return Row(
        "sweep", running.spec.name, run, clients,
        value=done["deliveries"] / seconds if seconds > 0 else 0.0,
        server_cpu=cpu,
        ops=done["deliveries"],
        generator_busy=_busy(done, "last_at"),
        extra={
            "trouble": trouble(ready, done),
            "joined": ready["joined"], "broadcasts": broadcasts, "deliveries": done["deliveries"],
            "cut": done["cut"], "missing": 0 if done["cut"] else done["missing"],
            "expected": done["expected"], "closed_early": done["closed_early"],
            "seconds": seconds, "delivery_bytes": done["first_delivery_bytes"],
            "connect_seconds": ready["connect_seconds"], "redis_cpu": rcpu,
            "generator_cpu": done["cpu_user"] + done["cpu_sys"],
        },
    )


def measure_roundtrip(opts: Options, running: Running, run: int, hook: Hook | None = None) -> Row:
    g = Generator(opts, running, f"{running.tag}-gen", opts.roundtrip_clients)
    try:
        ready = g.ready()
        time.sleep(0.5)
        if hook:
            hook(running, "start")
        cpu0, rcpu0 = running.cpu(), running.redis_cpu()
        g.command(f"roundtrip {opts.roundtrip_seconds}")
        done = g.done()
        cpu, rcpu = running.cpu() - cpu0, running.redis_cpu() - rcpu0
        if hook:
            hook(running, "stop")
    finally:
        g.stop()
    return Row(
        "roundtrip", running.spec.name, run, opts.roundtrip_clients,
        value=done["replies"] / opts.roundtrip_seconds,
        server_cpu=cpu,
        ops=done["replies"],
        generator_busy=_busy(done),
        extra={
            "trouble": trouble(ready, done),
            "joined": ready["joined"], "replies": done["replies"], "p50_ms": done["p50_ms"],
            "p90_ms": done["p90_ms"], "p99_ms": done["p99_ms"], "max_ms": done["max_ms"],
            "mean_ms": done["mean_ms"], "outstanding": done["outstanding"], "redis_cpu": rcpu,
            "generator_cpu": done["cpu_user"] + done["cpu_sys"],
        },
    )


def measure_memory(opts: Options, running: Running, run: int, hook: Hook | None = None) -> Row:
    baseline, redis_baseline = running.rss(), running.redis_rss()
    if baseline is None:
        raise BenchmarkError("its process cannot be read in /proc (another user's?): no memory figure")
    n = opts.memory_clients
    gens = [
        Generator(opts, running, f"{running.tag}-gen{i}", clients)
        for i, clients in enumerate(split(n, opts.memory_generators))
    ]
    try:
        readies = [g.ready() for g in gens]
        time.sleep(1.0)
        loaded, redis_loaded = running.rss(), running.redis_rss()
    finally:
        for g in gens:
            g.stop()
    joined = sum(r["joined"] for r in readies)
    per_server = ((loaded or baseline) - baseline) / max(1, joined)
    per_redis = (redis_loaded - redis_baseline) / max(1, joined)
    return Row(
        "memory", running.spec.name, run, n,
        value=per_server + per_redis,
        ops=joined,
        extra={
            "joined": joined, "rss_baseline_kib": baseline, "rss_loaded_kib": loaded,
            "server_kib_per_conn": per_server, "redis_kib_per_conn": per_redis,
            "redis_baseline_kib": redis_baseline, "redis_loaded_kib": redis_loaded,
            "connect_seconds": max(r["connect_seconds"] for r in readies),
        },
    )


def measure_joinstorm(opts: Options, running: Running, run: int, hook: Hook | None = None) -> Row:
    g = Generator(opts, running, f"{running.tag}-gen", opts.join_clients, join=False)
    try:
        ready = g.ready()
        time.sleep(1.0)
        if hook:
            hook(running, "start")
        cpu0, rcpu0 = running.cpu(), running.redis_cpu()
        g.command("join")
        done = g.done()
        cpu, rcpu = running.cpu() - cpu0, running.redis_cpu() - rcpu0
        if hook:
            hook(running, "stop")
    finally:
        g.stop()
    last = done["last_at"] or done["end_at"]
    seconds = (last - done["trigger_at"]) / 1000.0 if done["trigger_at"] else 0.0
    return Row(
        "joinstorm", running.spec.name, run, opts.join_clients,
        value=done["replies"] / seconds if seconds > 0 else 0.0,
        server_cpu=cpu,
        ops=done["replies"],
        generator_busy=_busy(done),
        extra={
            "trouble": trouble(ready, done),
            "connected": ready["connected"], "joins": done["replies"], "missing": done["missing"],
            "seconds": seconds, "connect_seconds": ready["connect_seconds"], "redis_cpu": rcpu,
            "first_reply_ms": (done["first_reply_at"] - done["trigger_at"]) if done["first_reply_at"] else None,
            "generator_cpu": done["cpu_user"] + done["cpu_sys"],
        },
    )


MEASURES = {
    "sweep": measure_sweep,
    "roundtrip": measure_roundtrip,
    "memory": measure_memory,
    "joinstorm": measure_joinstorm,
}


def trouble(ready: dict[str, Any], done: dict[str, Any]) -> str:
    """Connections that failed or closed, and error replies: "" when there were none."""
    parts = []
    failures = _report.merge_counts(ready.get("failures"), done.get("failures"))
    if failures:
        parts.append(f"failed to connect or join: {_report.counts(failures)}")
    if done.get("closed_early"):
        parts.append(f"{done['closed_early']} closed early: {_report.counts(done['close_codes'])}")
    if done.get("server_errors"):
        parts.append(f"error replies: {_report.counts(done['server_errors'])}")
    return "; ".join(parts)


def print_row(r: Row) -> None:
    e = r.extra
    head = f"  {WORKLOAD_TITLES[r.workload]:10s} run {r.run} {r.server:10s}"
    busy = f"server CPU {r.server_cpu:.2f} s; generator busy {100 * r.generator_busy:.0f}%"
    if e.get("trouble"):
        busy += f"; {e['trouble']}"
    if r.extra.get("redis_cpu"):
        busy += f"; redis CPU {e['redis_cpu']:.2f} s"
    if r.workload == "sweep":
        missing = f", MISSING {e['missing']:,}" if e["missing"] else ""
        if e["cut"]:
            missing = f" of {e['expected']:,}: cut at the {opts_budget(e)} s budget"
        if e["closed_early"]:
            missing += f", {e['closed_early']} clients closed early"
        print(f"{head} C={r.size:<5d} N={e['broadcasts']:<4d} {r.value:>9,.0f} deliveries/s ({e['deliveries']:,} in {e['seconds']:.2f} s"
              f"{missing}); {busy}; connect {e['connect_seconds']:.1f} s; {e['delivery_bytes']} B/delivery",
              flush=True)
    elif r.workload == "roundtrip":
        print(f"{head} {r.value:>10,.0f} replies/s, p50 {_ms(e['p50_ms'])}, p99 {_ms(e['p99_ms'])}, "
              f"max {_ms(e['max_ms'])} ({r.size} clients); {busy}", flush=True)
    elif r.workload == "memory":
        split = ""
        if e["redis_loaded_kib"]:
            split = f" (server {e['server_kib_per_conn']:.1f} + redis {e['redis_kib_per_conn']:.1f})"
        print(f"{head} {r.value:6.1f} KiB/conn{split} "
              f"({e['joined']:,} joined; RSS {e['rss_baseline_kib'] / 1024:.0f} -> {e['rss_loaded_kib'] / 1024:.0f} "
              f"MiB); connect {e['connect_seconds']:.1f} s", flush=True)
    else:
        missing = f", MISSING {e['missing']:,}" if e["missing"] else ""
        print(f"{head} {r.value:>10,.0f} joins/s ({e['joins']:,} in {e['seconds']:.3f} s{missing}); {busy}",
              flush=True)


def opts_budget(extra: dict[str, Any]) -> str:
    return f"{extra['seconds']:.0f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} ms"


def run_workload(opts: Options, workload: str) -> Outcome:
    """Every run of every server (order rotating from run to run), for one workload."""
    sizes = opts.sizes if workload == "sweep" else (0,)
    out = Outcome(workload, sizes=sizes if workload == "sweep" else ())
    servers = [s for s in opts.servers]
    for name in list(servers):
        why = unavailable(opts.specs[name])
        if why:
            out.unavailable[name] = why
            servers.remove(name)
    for run in range(1, opts.runs + 1):
        k = (run - 1) % max(1, len(servers))
        for size in sizes:
            for name in servers[k:] + servers[:k]:
                if name in out.unavailable:
                    continue
                try:
                    row = measure_once(opts, workload, opts.specs[name], run, size)
                except BenchmarkError as e:
                    reason = str(e).splitlines()[0][:200]
                    print(f"  ! {WORKLOAD_TITLES[workload]} {name}: n/a ({reason})", flush=True)
                    out.unavailable[name] = reason
                    continue
                print_row(row)
                out.rows.append(row)
    return out


def measure_once(opts: Options, workload: str, spec: Spec, run: int, size: int = 0,
                 hook: Hook | None = None) -> Row:
    tag = f"{workload}-{spec.name}-{run}" + (f"-{size}" if size else "")
    running = Running(opts, spec, tag)
    try:
        warm_up(opts, running)
        if workload == "sweep":
            return measure_sweep(opts, running, run, size, hook)
        return MEASURES[workload](opts, running, run, hook)
    finally:
        running.stop()


# -- the tables ----------------------------------------------------------------------


def _fmt(workload: str, x: float) -> str:
    return f"{x:.1f}" if workload == "memory" else f"{x:,.0f}"


def table_rows(outcome: Outcome, servers: Iterable[str], specs: dict[str, Spec]) -> list[tuple[str, ...]]:
    """Per size and server: median, range, ratios, CPU per operation, generator busy, details."""
    w = outcome.workload
    rows: list[tuple[str, ...]] = []
    for size in outcome.sizes or (None,):
        rs_by: dict[str, list[Row]] = collections.defaultdict(list)
        for r in outcome.rows:
            if size is None or r.size == size:
                rs_by[r.server].append(r)
        med = {name: statistics.median(r.value for r in rs) for name, rs in rs_by.items()}
        floor = FLOORS[w]
        title = WORKLOAD_TITLES[w] + (f" C={size:,}" if size else "")
        for name in servers:
            label = specs[name].label
            if name in outcome.unavailable and name not in rs_by:
                rows.append((title, label, f"n/a ({outcome.unavailable[name]})", "", "", "", "", "", ""))
                continue
            rs = rs_by.get(name)
            if not rs:
                continue
            values = [r.value for r in rs]
            ratio = lambda base: f"{med[name] / med[base]:.2f}" if med.get(base) else "-"  # noqa: E731
            cpu_per_op = (
                f"{1e6 * statistics.median(r.server_cpu / max(1, r.ops) for r in rs):.1f} µs"
                if w != "memory" else "-"
            )
            busy = f"{100 * statistics.median(r.generator_busy for r in rs):.0f}%" if w != "memory" else "-"
            rows.append((
                title,
                label,
                _fmt(w, med[name]),
                f"{_fmt(w, min(values))}-{_fmt(w, max(values))}",
                ratio(floor),
                ratio("phoenix"),
                cpu_per_op,
                busy,
                _detail(w, rs),
            ))
    return rows


def _detail(workload: str, rs: list[Row]) -> str:
    med = lambda key: statistics.median(r.extra[key] for r in rs)  # noqa: E731
    if workload == "roundtrip":
        return f"p50 {med('p50_ms'):.2f} ms, p99 {med('p99_ms'):.2f} ms"
    if workload == "memory":
        if any(r.extra["redis_loaded_kib"] for r in rs):
            return f"server {med('server_kib_per_conn'):.1f} + redis {med('redis_kib_per_conn'):.1f}"
        return f"RSS {med('rss_baseline_kib') / 1024:.0f} -> {med('rss_loaded_kib') / 1024:.0f} MiB"
    if workload == "joinstorm":
        return f"all in {1000 * med('seconds'):.0f} ms"
    missing = sum(r.extra["missing"] for r in rs)
    cut = sum(1 for r in rs if r.extra["cut"])
    text = f"N={rs[0].extra['broadcasts']}, {rs[0].extra['delivery_bytes']} B/delivery"
    if cut:
        text += f"; {cut} of {len(rs)} cut at {rs[0].extra['seconds']:.0f} s"
    return text + (f"; {missing:,} MISSING" if missing else "")


HEADER = (
    "workload",
    "server",
    "median",
    "min-max",
    "vs floor",
    "vs twisted_phoenix",
    "server CPU/op",
    "generator busy",
    "detail",
)


def combined_table(outcomes: list[Outcome], servers: Iterable[str], specs: dict[str, Spec],
                   extra_rows: list[tuple[str, ...]] = ()) -> str:
    servers = list(servers)
    rows: list[tuple[str, ...]] = []
    for o in outcomes:
        rows.extend(table_rows(o, servers, specs))
    rows.extend(extra_rows)
    return _report.rst_table(HEADER, rows)


def legend(outcomes: list[Outcome]) -> str:
    lines = ["median: of the runs; the unit is the workload's:"]
    for o in outcomes:
        floor = SPECS[FLOORS[o.workload]].label
        lines.append(f"  {WORKLOAD_TITLES[o.workload]}: {UNITS[o.workload]}; 'vs floor' is against {floor}")
    lines.append("ratios are of the medians (for memory, higher means more memory); server CPU/op is the")
    lines.append("server's CPU time over the window per delivery, reply or join; generator busy is the")
    lines.append("Node generator's CPU time over the window (near 100% it would be the limit)")
    return "\n".join(lines)


# -- profiles ------------------------------------------------------------------------


def profile(opts: Options, workload: str, spec: Spec, size: int = 0) -> str:
    """One more measurement with py-spy on the server during the window; the report."""
    _pyspy.require()
    holder: dict[str, Any] = {}

    def hook(running: Running, phase: str) -> None:
        if phase == "start":
            holder["cm"] = _pyspy.profiling({"server": running.server.pid}, opts.logdir,
                                            f"{workload}-{spec.name}-profile", opts.profile_rate)
            holder["outs"] = holder["cm"].__enter__()
        else:
            holder["cm"].__exit__(None, None, None)

    row = measure_once(opts, workload, spec, 0, size or (opts.sizes[-1] if workload == "sweep" else 0), hook)
    head = (
        f"py-spy ({opts.profile_rate} Hz) of {spec.label} during the {WORKLOAD_TITLES[workload]} "
        f"({_fmt(workload, row.value)} {UNITS[workload]} under the profiler, server CPU {row.server_cpu:.2f} s):"
    )
    return head + "\n" + _pyspy.report(holder["outs"]["server"], opts.profile_top)


# -- the commands --------------------------------------------------------------------


def need_files(opts: Options, workloads: Iterable[str]) -> int:
    n = 0
    for w in workloads:
        n = max(n, {"sweep": max(opts.sizes, default=0), "roundtrip": opts.roundtrip_clients,
                    "memory": opts.memory_clients, "joinstorm": opts.join_clients}[w])
    return n + 200


def describe(opts: Options, workload: str) -> str:
    if workload == "sweep":
        return (f"fan-out: C = {', '.join(f'{c:,}' for c in opts.sizes)} subscribers of one topic, "
                f"N = {', '.join(str(sweep_broadcasts(opts, c)) for c in opts.sizes)} broadcasts of "
                f"{opts.message_bytes} B back to back (at least {opts.min_deliveries:,} deliveries; "
                f"a fan-out is cut after {opts.budget:g} s)")
    if workload == "roundtrip":
        return (f"round trip: {opts.roundtrip_clients} clients, each pushing ping and awaiting the reply, "
                f"for {opts.roundtrip_seconds:g} s")
    if workload == "memory":
        return f"memory: RSS growth per client, {opts.memory_clients:,} clients joined"
    return f"join storm: {opts.join_clients:,} open connections all sending their join at once"


def run_all(opts: Options, workloads: tuple[str, ...], machine: dict[str, str],
            cluster_hook: Callable[[], list[tuple[str, ...]]] | None = None) -> list[Outcome]:
    """Run ``workloads`` in order; print each one's runs, then one combined table."""
    print(f"{opts.runs} run(s) of every server ({', '.join(opts.servers)}), interleaved; every figure "
          "measured side by side in this one invocation", flush=True)
    print("peers: " + ", ".join(f"{k} {v}" for k, v in _report.peer_versions().items()), flush=True)
    for name in opts.servers:
        spec = opts.specs[name]
        if spec.kind == "phoenix":
            print(f"  {name}: twistd -n phoenix --port N (the plugin's defaults)", flush=True)
        elif spec.kind == "external":
            print(f"  {name}: {spec.command or '(already running)'} on port {spec.port}", flush=True)
    outcomes: list[Outcome] = []
    extra_rows: list[tuple[str, ...]] = []
    profiles: dict[str, str] = {}
    started = time.monotonic()
    for w in workloads:
        print(f"\n{describe(opts, w)}", flush=True)
        outcomes.append(run_workload(opts, w))
    if cluster_hook is not None:
        extra_rows = cluster_hook()
    print(f"\nall workloads, median of {opts.runs} run(s) ({time.monotonic() - started:.0f} s):")
    for w in workloads:
        print(f"  {describe(opts, w)}")
    print(combined_table(outcomes, opts.servers, opts.specs, extra_rows))
    print(legend(outcomes))
    _report.print_load_end()
    rows = [r for o in outcomes for r in o.rows]
    if any(r.generator_busy > 0.9 for r in rows):
        print("\nWARNING: a load generator was busy over 90% of the time: it may be the limit.", flush=True)
    if any(r.extra.get("missing") for r in rows):
        print("\nWARNING: some deliveries or join replies never arrived (see the runs above).", flush=True)
    if opts.profile == "py-spy":
        for w in workloads:
            if w == "memory":
                continue
            for name in opts.profile_servers:
                if name in opts.servers and not unavailable(opts.specs[name]):
                    print()
                    text = profile(opts, w, opts.specs[name])
                    profiles[f"{w}/{name}"] = text
                    print(text, flush=True)
    _report.write_json(opts.json_path, {
        "options": {k: v for k, v in asdict(opts).items() if k != "specs"},
        "machine": machine,
        "labels": {name: spec.label for name, spec in opts.specs.items()},
        "outcomes": [
            {"workload": o.workload, "sizes": list(o.sizes), "unavailable": o.unavailable,
             "rows": [asdict(r) for r in o.rows]}
            for o in outcomes
        ],
        "profiles": profiles,
        "extra_rows": extra_rows,
    })
    return outcomes


# -- command line ---------------------------------------------------------------------

#: ``all --quick``: a smoke run of every code path, a few minutes.
QUICK = dict(
    runs=1,
    sizes=(200, 500),
    broadcasts=20,
    min_deliveries=20_000,
    budget=10.0,
    roundtrip_clients=20,
    roundtrip_seconds=2.0,
    memory_clients=500,
    join_clients=500,
    timeout=60.0,
)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s.replace("_", "")) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {text!r}")
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("counts must be positive")
    return sizes


def arguments(command: str) -> Callable[[argparse.ArgumentParser], None]:
    """The options of ``command``."""

    def add(p: argparse.ArgumentParser) -> None:
        d = Options()
        _cli.add_servers(p, ",".join(DEFAULT_SPECS))
        p.add_argument("--runs", type=int, default=d.runs, help=f"runs of every server, interleaved ({d.runs})")
        if command in ("sweep", "all"):
            p.add_argument("--sizes", type=_sizes, default=d.sizes,
                           help="fan-out subscriber counts (" + ",".join(map(str, d.sizes)) + ")")
            p.add_argument("--broadcasts", type=int, default=d.broadcasts,
                           help=f"fan-out broadcasts per measurement, at least ({d.broadcasts})")
            p.add_argument("--min-deliveries", type=int, default=d.min_deliveries,
                           help="more broadcasts at small sizes, so that every fan-out makes at least "
                                f"this many deliveries ({d.min_deliveries:,})")
            p.add_argument("--budget", type=float, default=d.budget,
                           help="seconds a fan-out may take; a slower server's is cut there and its rate "
                                f"taken over the deliveries made ({d.budget:g})")
        if command in ("roundtrip", "all"):
            p.add_argument("--roundtrip-clients", type=int, default=d.roundtrip_clients,
                           help=f"round-trip clients ({d.roundtrip_clients})")
            p.add_argument("--seconds", dest="roundtrip_seconds", type=float, default=d.roundtrip_seconds,
                           help=f"round-trip duration per measurement ({d.roundtrip_seconds:g})")
        if command in ("memory", "all"):
            p.add_argument("--memory-clients", type=int, default=d.memory_clients,
                           help=f"connected, joined clients for the memory figure ({d.memory_clients})")
            p.add_argument("--memory-generators", type=int, default=d.memory_generators,
                           help=f"Node processes splitting them ({d.memory_generators})")
        if command in ("joinstorm", "all"):
            p.add_argument("--join-clients", type=int, default=d.join_clients,
                           help=f"connections joining at once ({d.join_clients})")
        if command == "all":
            p.add_argument("--quick", action="store_true",
                           help="a short smoke run: 1 run, small sizes (overrides the sizes and runs)")
            p.add_argument("--no-cluster", action="store_true", help="leave out the cluster fan-out")
        p.add_argument("--message-bytes", type=int, default=d.message_bytes,
                       help=f"bytes of each broadcast's JSON text ({d.message_bytes})")
        p.add_argument("--timeout", type=float, default=d.timeout,
                       help=f"seconds allowed for connecting, and for each workload's window ({d.timeout:g})")
        p.add_argument("--concurrency", type=int, default=d.concurrency,
                       help=f"connection attempts in flight per generator ({d.concurrency})")
        if command != "memory":
            p.add_argument("--profile", choices=("none", "py-spy"), default="none",
                           help="after the runs, one more run of each --profile-servers server with py-spy "
                                "on it during the window (round trip, join storm, fan-out at the largest size)")
            p.add_argument("--profile-servers", default="phoenix", help="comma-separated (phoenix)")
            p.add_argument("--profile-top", type=int, default=25, help="profile entries to print (25)")
            p.add_argument("--profile-rate", type=int, default=d.profile_rate,
                           help=f"py-spy samples per second ({d.profile_rate})")
        _cli.add_output(p)

    return add


def options(parser: argparse.ArgumentParser, args: argparse.Namespace, logdir: str) -> Options:
    specs = _cli.servers(parser, args)
    fields = {f.name for f in dataclasses.fields(Options)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields}
    values["servers"] = tuple(spec.name for spec in specs)
    values["specs"] = {spec.name: spec for spec in specs}
    values["logdir"] = logdir
    if "profile_servers" in values:
        values["profile_servers"] = _cli.split(args.profile_servers)
    if getattr(args, "quick", False):
        values.update(QUICK)
    opts = Options(**values)
    unknown = [s for s in opts.profile_servers if s not in opts.specs]
    if unknown:
        parser.error(f"unknown --profile-servers: {', '.join(unknown)}")
    counts = (opts.runs, opts.broadcasts, opts.roundtrip_clients, opts.memory_clients, opts.memory_generators,
              opts.join_clients, *opts.sizes)
    if min(counts) < 1 or opts.roundtrip_seconds <= 0 or opts.budget <= 0:
        parser.error("counts and durations must be positive")
    return opts


def runner(command: str) -> Callable[[argparse.ArgumentParser, argparse.Namespace], None]:
    def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        workloads = ("sweep", "roundtrip", "memory", "joinstorm") if command == "all" else (command,)
        checked = options(parser, args, "")  # the options are checked before anything starts
        with _cli.workspace(args, need_files=need_files(checked, workloads)) as ws:
            opts = options(parser, args, ws.logdir)
            cluster_hook = None
            if command == "all" and not args.no_cluster:
                cluster_hook = lambda: cluster_rows(ws, opts, quick=args.quick)  # noqa: E731
            run_all(opts, workloads, ws.machine, cluster_hook)

    return run


def register(sub: Any) -> None:
    for command in COMMANDS:
        _cli.subcommand(sub, command, HELP[command], __doc__, arguments(command), runner(command))


def cluster_rows(ws: _cli.Run, opts: Options, quick: bool) -> list[tuple[str, ...]]:
    """
    The cluster fan-out (``benchmarks/cluster.py``), run with its own
    defaults (or small sizes with ``--quick``); its table is printed as it
    runs, and its medians become rows of the combined table.
    """
    from benchmarks import cluster

    blank = ("", "", "", "", "", "")
    values: dict[str, Any] = {
        "clients": 4000, "broadcasts": 100, "runs": opts.runs, "message_bytes": 100, "latency_clients": 40,
        "latency_broadcasts": 500, "latency_interval": 5.0, "timeout": 120.0, "concurrency": opts.concurrency,
    }
    if quick:
        values.update(clients=500, broadcasts=20, latency_clients=20, latency_broadcasts=50, timeout=60.0)
    try:
        print("\ncluster fan-out (benchmarks/cluster.py):", flush=True)
        results = cluster.run_cluster(ws, argparse.Namespace(**values), cluster.WORKLOADS)
    except BenchmarkError as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return [("cluster fan-out", "twisted_phoenix, 3 nodes", f"n/a ({reason})", *blank)]
    by: dict[str, list[Any]] = {}
    for r in results:
        by.setdefault(r.workload, []).append(r)
    med = {w: statistics.median(r.rate for r in rs) for w, rs in by.items()}
    rows = []
    for w, rs in by.items():
        rates = [r.rate for r in rs]
        cpu = statistics.median(sum(r.node_cpu.values()) / max(1, r.deliveries) for r in rs)
        latency = ""
        lat = [r.latency for r in rs if r.latency]
        if lat:
            latency = (f"latency p50 {statistics.median(x['p50'] for x in lat):.2f} ms, "
                       f"p99 {statistics.median(x['p99'] for x in lat):.2f} ms")
        rows.append((
            f"cluster fan-out C={rs[0].clients:,}",
            "twisted_phoenix, " + cluster.LABELS[w].split(":")[0],
            f"{med[w]:,.0f}",
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            "-",
            f"{med[w] / med['single']:.2f}" if med.get("single") else "-",
            f"{1e6 * cpu:.1f} µs",
            f"{100 * statistics.median(r.generator_busy for r in rs):.0f}%",
            latency,
        ))
    return rows
