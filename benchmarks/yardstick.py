"""
The yardstick: twisted_phoenix against the plain-Autobahn floors and its
Python peers, on four workloads, side by side in one run.

Servers (each its own process on a free loopback port; see
``benchmarks/README.rst``):

``phoenix``     twisted_phoenix, the demo app (``benchmarks/server_phoenix.py``)
``prepared``    plain Autobahn: ``sendPreparedMessage`` fan-out, ``sendMessage`` echo
``raw``         plain Autobahn: ``transport.write`` of pre-built frames (the floor)
``websockets``  ``websockets`` (asyncio), its ``broadcast()`` helper
``socketio``    python-socketio 5 on aiohttp, rooms and acks
``channels``    Daphne + Django Channels 4, ``channels_redis`` (a ``redis-server``
                child on a free port)

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
Every child (servers, redis, generators, py-spy) is killed at the end,
however the harness ends.
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from benchmarks.fanout import (
    JS_DIR,
    BenchmarkError,
    Child,
    _env,
    _event,
    collapsed_report,
    require_py_spy,
    start_py_spy,
    stop_py_spy,
    ensure_node_modules,
    machine_info,
    proc_cpu,
    proc_status,
    raise_nofile,
    rst_table,
)

GENERATOR = os.path.join(JS_DIR, "yardstick.js")
WARMUP_CLIENTS = 50
WARMUP_BROADCASTS = 5
WARMUP_ROUNDTRIP_SECONDS = 0.5

# -- the servers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    label: str
    argv: tuple[str, ...]  # after the Python executable
    path: str  # the WebSocket path (and query) to connect to
    protocol: str = "phoenix"  # what the generator speaks: phoenix or socketio
    modules: tuple[str, ...] = ()  # must be importable
    redis: bool = False  # needs a redis-server; its port is the last argument


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec("phoenix", "twisted_phoenix", ("-m", "benchmarks.server_phoenix"), "/socket/websocket?vsn=2.0.0"),
        Spec("prepared", "Autobahn (prepared / sendMessage)", ("-m", "benchmarks.peers.server_floor", "prepared"), "/"),
        Spec("raw", "Autobahn raw transport.write", ("-m", "benchmarks.peers.server_floor", "raw"), "/"),
        Spec(
            "websockets",
            "websockets (asyncio)",
            ("-m", "benchmarks.peers.server_websockets"),
            "/",
            modules=("websockets.asyncio.server",),
        ),
        Spec(
            "socketio",
            "python-socketio + aiohttp",
            ("-m", "benchmarks.peers.server_socketio"),
            "/socket.io/?EIO=4&transport=websocket",
            protocol="socketio",
            modules=("socketio", "aiohttp"),
        ),
        Spec(
            "channels",
            "Daphne + Channels (redis layer)",
            ("-m", "benchmarks.peers.server_channels"),
            "/ws/",
            modules=("daphne", "channels", "channels_redis", "django"),
            redis=True,
        ),
    )
}

#: The floor each workload's ratios are taken against.
FLOORS = {"sweep": "raw", "roundtrip": "prepared", "memory": "prepared", "joinstorm": "prepared"}
WORKLOAD_TITLES = {
    "sweep": "fan-out",
    "roundtrip": "round trip",
    "memory": "memory",
    "joinstorm": "join storm",
}
UNITS = {"sweep": "deliveries/s", "roundtrip": "replies/s", "memory": "KiB/conn", "joinstorm": "joins/s"}


def unavailable(spec: Spec) -> str | None:
    """Why ``spec`` cannot run here, or None."""
    for module in spec.modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"{module.split('.')[0]} not installed: pip install '.[bench]'"
    if spec.redis and shutil.which("redis-server") is None:
        return "redis-server not on PATH: apt-get install redis-server"
    return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("websockets", "python-socketio", "python-engineio", "aiohttp", "daphne", "channels",
                 "channels-redis", "Django", "redis", "orjson"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    if shutil.which("redis-server"):
        text = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        for part in text.split():
            if part.startswith("v="):
                out["redis-server"] = part[2:]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A started server (and its redis-server), warmed up."""

    def __init__(self, opts: "Options", spec: Spec, tag: str) -> None:
        self.spec = spec
        self.tag = tag
        self.redis: Child | None = None
        argv = [sys.executable, *spec.argv]
        try:
            if spec.redis:
                port = _free_port()
                self.redis = Child(
                    f"{tag}-redis",
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--protected-mode", "no"],
                    opts.logdir,
                )
                self.redis.expect(lambda l: "Ready to accept connections" in l, 30)
                argv.append(str(port))
            self.server = Child(tag, argv, opts.logdir, env=_env())
            line = self.server.expect(lambda l: l.startswith("PORT "), 60)
        except BaseException:
            self.stop()
            raise
        self.url = f"ws://127.0.0.1:{int(line.split()[1])}{spec.path}"

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in (self.server, self.redis) if c is not None]

    def cpu(self) -> float:
        return proc_cpu(self.server.pid)

    def redis_cpu(self) -> float:
        return proc_cpu(self.redis.pid) if self.redis is not None else 0.0

    def rss(self) -> int:
        """The server's RSS (KiB) after it collected garbage."""
        self.server.send("rss")
        self.server.expect(lambda l: l.startswith("RSS"), 60)
        return proc_status(self.server.pid)["VmRSS"]

    def redis_rss(self) -> int:
        return proc_status(self.redis.pid)["VmRSS"] if self.redis is not None else 0

    def stop(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.stop()
        if self.redis is not None:
            self.redis.kill()


# -- the generator -------------------------------------------------------------------


class Generator:
    """One Node process of ``benchmarks/js/yardstick.js``."""

    def __init__(self, opts: "Options", running: Running, name: str, clients: int, join: bool = True,
                 trigger: bool = False) -> None:
        node = shutil.which("node")
        if node is None:
            raise BenchmarkError("node is not on PATH")
        argv = [
            node, GENERATOR,
            "--url", running.url,
            "--protocol", running.spec.protocol,
            "--clients", str(clients),
            "--message-bytes", str(opts.message_bytes),
            "--concurrency", str(opts.concurrency),
            "--timeout", str(opts.timeout),
            "--connect-timeout", str(opts.timeout),
        ]
        if not join:
            argv.append("--no-join")
        if trigger:
            argv.append("--trigger")
        self.child = Child(name, argv, opts.logdir)
        self.timeout = opts.timeout
        self.clients = clients
        self.join = join

    def ready(self) -> dict[str, Any]:
        r = json.loads(self.child.expect(_event("ready"), self.timeout + 30))
        got = r["joined"] if self.join else r["connected"]
        if got < self.clients:
            print(f"  ! {self.child.name}: only {got} of {self.clients} clients "
                  f"{'joined' if self.join else 'connected'}; errors: {r['errors']}", flush=True)
        return r

    def command(self, line: str) -> None:
        self.child.send(line)

    def done(self) -> dict[str, Any]:
        return json.loads(self.child.expect(_event("done"), self.timeout + 60))

    def stop(self) -> None:
        self.child.stop()


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
    servers: tuple[str, ...] = tuple(SPECS)
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
            "joined": ready["joined"], "replies": done["replies"], "p50_ms": done["p50_ms"],
            "p90_ms": done["p90_ms"], "p99_ms": done["p99_ms"], "max_ms": done["max_ms"],
            "mean_ms": done["mean_ms"], "outstanding": done["outstanding"], "redis_cpu": rcpu,
            "generator_cpu": done["cpu_user"] + done["cpu_sys"],
        },
    )


def measure_memory(opts: Options, running: Running, run: int, hook: Hook | None = None) -> Row:
    baseline, redis_baseline = running.rss(), running.redis_rss()
    n = opts.memory_clients
    share, extra = divmod(n, opts.memory_generators)
    gens = [
        Generator(opts, running, f"{running.tag}-gen{i}", share + (1 if i < extra else 0))
        for i in range(opts.memory_generators)
    ]
    try:
        readies = [g.ready() for g in gens]
        time.sleep(1.0)
        loaded, redis_loaded = running.rss(), running.redis_rss()
    finally:
        for g in gens:
            g.stop()
    joined = sum(r["joined"] for r in readies)
    per_server = (loaded - baseline) / max(1, joined)
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


def print_row(r: Row) -> None:
    e = r.extra
    head = f"  {WORKLOAD_TITLES[r.workload]:10s} run {r.run} {r.server:10s}"
    busy = f"server CPU {r.server_cpu:.2f} s; generator busy {100 * r.generator_busy:.0f}%"
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
        why = unavailable(SPECS[name])
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
                    row = measure_once(opts, workload, SPECS[name], run, size)
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


def table_rows(outcome: Outcome, servers: Iterable[str]) -> list[tuple[str, ...]]:
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
            label = SPECS[name].label
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


def combined_table(outcomes: list[Outcome], servers: Iterable[str], extra_rows: list[tuple[str, ...]] = ()) -> str:
    servers = list(servers)
    rows: list[tuple[str, ...]] = []
    for o in outcomes:
        rows.extend(table_rows(o, servers))
    rows.extend(extra_rows)
    return rst_table(HEADER, rows)


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
    spy = require_py_spy()
    out = os.path.join(opts.logdir, f"{workload}-{spec.name}-profile.py-spy.txt")
    holder: dict[str, subprocess.Popen[bytes]] = {}

    def hook(running: Running, phase: str) -> None:
        if phase == "start":
            holder["p"] = start_py_spy(spy, running.server.pid, out, opts.profile_rate)
            time.sleep(1.0)  # let py-spy attach
        else:
            stop_py_spy(holder["p"])

    row = measure_once(opts, workload, spec, 0, size or (opts.sizes[-1] if workload == "sweep" else 0), hook)
    head = (
        f"py-spy ({opts.profile_rate} Hz) of {spec.label} during the {WORKLOAD_TITLES[workload]} "
        f"({_fmt(workload, row.value)} {UNITS[workload]} under the profiler, server CPU {row.server_cpu:.2f} s):"
    )
    return head + "\n" + collapsed_report(out, opts.profile_top)


# -- the commands --------------------------------------------------------------------


def prepare(opts: Options, need_files: int) -> tuple[dict[str, str], bool]:
    soft, _ = raise_nofile()
    if soft < need_files:
        raise BenchmarkError(f"open files are capped at {soft} (ulimit -Hn); this run needs {need_files}")
    ensure_node_modules()
    own = not opts.logdir
    if own:
        opts.logdir = tempfile.mkdtemp(prefix="twisted-phoenix-bench-")
    else:
        os.makedirs(opts.logdir, exist_ok=True)
    info = machine_info()
    info.update(versions())
    return info, own


def print_machine(info: dict[str, str]) -> None:
    print(
        "machine: {nproc} x {cpu}; Python {python}, Twisted {twisted} ({reactor}), "
        "Autobahn {autobahn}, Node {node}, ws {ws}".format(**info),
        flush=True,
    )
    peers = ", ".join(f"{k} {v}" for k, v in info.items()
                      if k not in ("nproc", "cpu", "python", "twisted", "reactor", "autobahn", "node", "ws"))
    print(f"peers: {peers}", flush=True)
    print("load average at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


def need_files(opts: Options, workloads: Iterable[str]) -> int:
    n = 0
    for w in workloads:
        n = max(n, {"sweep": max(opts.sizes, default=0), "roundtrip": opts.roundtrip_clients,
                    "memory": opts.memory_clients, "joinstorm": opts.join_clients}[w])
    return n + 200


def write_json(opts: Options, info: dict[str, str], outcomes: list[Outcome], extra: dict[str, Any]) -> None:
    if not opts.json_path:
        return
    with open(opts.json_path, "w") as f:
        json.dump(
            {
                "options": asdict(opts),
                "machine": info,
                "labels": {name: spec.label for name, spec in SPECS.items()},
                "outcomes": [
                    {"workload": o.workload, "sizes": list(o.sizes), "unavailable": o.unavailable,
                     "rows": [asdict(r) for r in o.rows]}
                    for o in outcomes
                ],
                **extra,
            },
            f,
            indent=2,
            default=str,
        )
    print(f"\nraw results written to {opts.json_path}", flush=True)


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


def run(opts: Options, workloads: tuple[str, ...], cluster_hook: Callable[[], list[tuple[str, ...]]] | None = None,
        ) -> list[Outcome]:
    """Run ``workloads`` in order; print each one's runs, then one combined table."""
    info, own_logdir = prepare(opts, need_files(opts, workloads))
    print(f"{opts.runs} run(s) of every server ({', '.join(opts.servers)}), interleaved; every figure "
          "measured side by side in this one invocation", flush=True)
    print_machine(info)
    outcomes: list[Outcome] = []
    extra_rows: list[tuple[str, ...]] = []
    profiles: dict[str, str] = {}
    started = time.monotonic()
    try:
        for w in workloads:
            print(f"\n{describe(opts, w)}", flush=True)
            outcomes.append(run_workload(opts, w))
        if cluster_hook is not None:
            extra_rows = cluster_hook()
        print(f"\nall workloads, median of {opts.runs} run(s) ({time.monotonic() - started:.0f} s):")
        for w in workloads:
            print(f"  {describe(opts, w)}")
        print(combined_table(outcomes, opts.servers, extra_rows))
        print(legend(outcomes))
        print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
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
                    if name in opts.servers and not unavailable(SPECS[name]):
                        print()
                        text = profile(opts, w, SPECS[name])
                        profiles[f"{w}/{name}"] = text
                        print(text, flush=True)
        write_json(opts, info, outcomes, {"profiles": profiles, "extra_rows": extra_rows})
    finally:
        Child.kill_all()
        if own_logdir:
            shutil.rmtree(opts.logdir, ignore_errors=True)
    return outcomes
