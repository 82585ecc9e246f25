"""
The fan-out workload: C clients joined to one topic, N broadcasts, against
twisted_phoenix and the two plain-Autobahn floors (and an ``--external``
server), side by side in one run.

For each run and each server (the order rotates from run to run so that the
machine's noise falls on every server alike):

1. start the server (``twistd -n phoenix --port N``, a floor script, or the
   external command);
2. warm up: 50 clients join, 5 broadcasts, the clients leave;
3. read the server's RSS (the baseline, ``/proc/<pid>/status``);
4. start the Node load generator(s) (``loadgen.js clients``): C
   connections, each joined as phoenix.js joins (the floors answer the same
   frame);
5. read the server's RSS again: KiB per connection =
   (RSS loaded - RSS baseline) / C;
6. one client pushes N ``broadcast`` events back to back, every client
   counts deliveries until C x N have arrived; deliveries/s =
   C x N / (last delivery - first push);
7. stop the generators and the server.

Every child process is killed when the harness ends, however it ends.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from benchmarks import _cli, _pyspy, _report
from benchmarks._loadgen import Generator, split
from benchmarks._proc import BenchmarkError
from benchmarks._servers import Server, Spec, start

NAME = "fanout"
HELP = "deliveries/s and memory per connection, twisted_phoenix vs plain Autobahn"
SERVERS = ("phoenix", "prepared", "raw")
WARMUP_CLIENTS = 50
WARMUP_BROADCASTS = 5
MEMTRACE_ENDPOINT = "benchmarks.apps.memtrace:Endpoint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=5000, help="connections joined to the topic (5000)")
    p.add_argument("--broadcasts", type=int, default=100, help="broadcasts per run (100)")
    p.add_argument("--runs", type=int, default=3, help="runs of every server, interleaved (3)")
    _cli.add_servers(p, ",".join(SERVERS), (*SERVERS, "workers"))
    p.add_argument("--generators", type=int, default=1, help="Node processes splitting the clients (1)")
    p.add_argument("--message-bytes", type=int, default=100, help="bytes of each broadcast's JSON text (100)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds allowed for connecting, and for the fan-out (120)")
    p.add_argument("--concurrency", type=int, default=200, help="connection attempts in flight per generator (200)")
    p.add_argument("--profile", choices=("none", "py-spy"), default="none",
                   help="after the runs, one more run of each --profile-servers server, py-spy on it during "
                        "the fan-out")
    p.add_argument("--profile-servers", default="phoenix", help="comma-separated servers to profile (phoenix)")
    p.add_argument("--profile-top", type=int, default=25, help="profile entries to print (25)")
    p.add_argument("--memory-breakdown", type=int, default=0, metavar="N",
                   help="after the runs, one more run of each server under tracemalloc (twisted_phoenix with "
                        f"--endpoint {MEMTRACE_ENDPOINT}); print the N source lines that allocated most per "
                        "connection")
    _cli.add_output(p)


@dataclass
class Result:
    server: str
    run: int
    clients: int
    joined: int
    broadcasts: int
    deliveries: int
    expected: int
    seconds: float
    rate: float
    rss_baseline_kib: int | None
    rss_loaded_kib: int | None
    hwm_after_kib: int | None
    kib_per_connection: float | None
    server_cpu_seconds: float
    generator_cpu_seconds: float
    generator_busy: float  # the busiest generator's CPU time / its window
    connect_seconds: float
    delivery_bytes: int | None
    settings: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.expected - self.deliveries


def generator(run: _cli.Run, server: Server, name: str, clients: int, args: argparse.Namespace,
              trigger: bool) -> Generator:
    return Generator(run.logdir, name, "clients", wait=args.timeout + 60, url=server.url(),
                     protocol=server.spec.protocol, clients=clients, message_bytes=args.message_bytes,
                     concurrency=args.concurrency, timeout=args.timeout, connect_timeout=args.timeout,
                     trigger=trigger)


def warm_up(run: _cli.Run, server: Server, args: argparse.Namespace, tag: str) -> None:
    """Connecting, joining, broadcasting, closing: every code path once."""
    g = generator(run, server, f"{tag}-warmup", WARMUP_CLIENTS, args, True)
    try:
        g.event("ready")
        done = g.ask(f"fanout {WARMUP_BROADCASTS}", "done")
        if done["missing"]:
            raise BenchmarkError(f"{tag}: the warm-up lost {done['missing']} deliveries "
                                 f"(failures {done['failures']}, closes {done['close_codes']})")
    finally:
        g.stop()


def measure(run: _cli.Run, args: argparse.Namespace, spec: Spec, n: int,
            on_window: Callable[[Server, str], Any] | None = None, memtrace: bool = False) -> Result:
    tag = f"{spec.name}-{n}"
    options = ["--endpoint", MEMTRACE_ENDPOINT] if memtrace and spec.kind == "phoenix" else []
    report = os.path.join(run.logdir, f"{tag}.memtrace")
    if memtrace:
        os.environ["BENCH_MEMTRACE"] = report
    try:
        server = start(spec, run.logdir, tag, options,
                       timeout=args.external_timeout if spec.kind == "external" else 60.0)
    finally:
        os.environ.pop("BENCH_MEMTRACE", None)
    gens: list[Generator] = []
    try:
        warm_up(run, server, args, tag)
        time.sleep(1.0)
        before = server.sample()
        if memtrace:
            server.child.signal(signal.SIGUSR1)
            time.sleep(1.0)
        for i, clients in enumerate(split(args.clients, args.generators)):
            gens.append(generator(run, server, f"{tag}-gen{i}", clients, args, i == 0))
        readies = [g.event("ready") for g in gens]
        joined = sum(r["joined"] for r in readies)
        if joined < args.clients:
            failures = _report.merge_counts(*(r["failures"] for r in readies))
            print(f"  ! {tag}: only {joined:,} of {args.clients:,} clients joined; failures: "
                  f"{_report.counts(failures)}", flush=True)
        time.sleep(1.0)
        loaded = server.sample()
        memtrace_lines: list[str] = []
        if memtrace:
            server.child.signal(signal.SIGUSR2)
            deadline = time.monotonic() + 120
            while not os.path.exists(report):
                if time.monotonic() > deadline:
                    raise BenchmarkError(f"{tag}: no tracemalloc report")
                time.sleep(0.2)
            with open(report) as f:
                memtrace_lines = [line.strip() for line in f if line.strip() and line.strip() != "END"]

        if on_window is not None:
            on_window(server, "start")
        cpu_before = server.cpu()
        for g in gens:
            g.command(f"fanout {args.broadcasts}")
        dones = [g.event("done", args.timeout + 60) for g in gens]
        cpu_after = server.cpu()
        if on_window is not None:
            on_window(server, "stop")
        after = server.sample()

        trigger_at = dones[0]["trigger_at"] or dones[0]["go_at"]
        last_at = max(d["last_at"] for d in dones)
        deliveries = sum(d["deliveries"] for d in dones)
        expected = sum(d["expected"] for d in dones)
        seconds = (last_at - trigger_at) / 1000.0
        busy = max((d["cpu_user"] + d["cpu_sys"]) / max(1e-9, (d["last_at"] - d["go_at"]) / 1000.0) for d in dones)
        sizes = {d["first_delivery_bytes"] for d in dones if d["first_delivery_bytes"] is not None}
        base = before.rss_kib if before else None
        load = loaded.rss_kib if loaded else None
        return Result(
            server=spec.name, run=n, clients=args.clients, joined=joined, broadcasts=args.broadcasts,
            deliveries=deliveries, expected=expected, seconds=seconds,
            rate=deliveries / seconds if seconds > 0 else 0.0,
            rss_baseline_kib=base, rss_loaded_kib=load, hwm_after_kib=after.hwm_kib if after else None,
            kib_per_connection=(load - base) / max(1, joined) if base is not None and load is not None else None,
            server_cpu_seconds=cpu_after - cpu_before,
            generator_cpu_seconds=sum(d["cpu_user"] + d["cpu_sys"] for d in dones),
            generator_busy=busy,
            connect_seconds=max(r["connect_seconds"] for r in readies),
            delivery_bytes=sizes.pop() if len(sizes) == 1 else None,
            settings=server.settings,
            extra={"closed_early": sum(d["closed_early"] for d in dones),
                   "close_codes": _report.merge_counts(*(d["close_codes"] for d in dones)),
                   "server_errors": _report.merge_counts(*(d["server_errors"] for d in dones)),
                   "memtrace": memtrace_lines, "command": server.command_line},
        )
    finally:
        for g in gens:
            g.stop()
        server.stop()


def print_run(r: Result) -> None:
    missing = f", MISSING {r.missing:,}" if r.missing else ""
    closed = f", {r.extra['closed_early']} closed early ({_report.counts(r.extra['close_codes'])})" \
        if r.extra.get("closed_early") else ""
    if r.extra.get("server_errors"):
        closed += f", error replies: {_report.counts(r.extra['server_errors'])}"
    memory = (f"{r.kib_per_connection:.1f} KiB/conn (RSS {_report.mib(r.rss_baseline_kib)} -> "
              f"{_report.mib(r.rss_loaded_kib)}, peak {_report.mib(r.hwm_after_kib)})"
              if r.kib_per_connection is not None else "memory n/a")
    print(
        f"  run {r.run} {r.server:9s} {_report.rate(r.rate):>10s} deliveries/s "
        f"({r.deliveries:,} in {r.seconds:.2f} s{missing}{closed}); {memory}; "
        f"server CPU {r.server_cpu_seconds:.2f} s ({100 * r.server_cpu_seconds / max(r.seconds, 1e-9):.0f}% busy); "
        f"generator CPU {r.generator_cpu_seconds:.2f} s (busiest {100 * r.generator_busy:.0f}%); "
        f"connect {r.connect_seconds:.1f} s; {r.delivery_bytes} B/delivery",
        flush=True,
    )


def summarize(specs: list[Spec], results: list[Result]) -> str:
    by_server: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_server[r.server].append(r)
    medians = {name: statistics.median(r.rate for r in rs) for name, rs in by_server.items()}

    def ratio(name: str, floor: str) -> str:
        if floor not in medians or not medians[floor]:
            return "-"
        return f"{medians[name] / medians[floor]:.2f}"

    header = ("server", "server options", "deliveries/s (median)", "min", "max", "vs raw", "vs prepared",
              "KiB/conn (median)", "server CPU/delivery", "server busy", "generator CPU")
    rows = []
    for spec in specs:
        rs = by_server.get(spec.name)
        if not rs:
            continue
        rates = [r.rate for r in rs]
        kib = [r.kib_per_connection for r in rs if r.kib_per_connection is not None]
        rows.append((
            spec.label, rs[0].settings,
            _report.rate(medians[spec.name]), _report.rate(min(rates)), _report.rate(max(rates)),
            ratio(spec.name, "raw"), ratio(spec.name, "prepared"),
            f"{statistics.median(kib):.1f}" if kib else "-",
            f"{1e6 * statistics.median(r.server_cpu_seconds / max(1, r.deliveries) for r in rs):.2f} µs",
            f"{100 * statistics.median(r.server_cpu_seconds / max(r.seconds, 1e-9) for r in rs):.0f}%",
            f"{statistics.median(r.generator_cpu_seconds for r in rs):.2f} s "
            f"({100 * statistics.median(r.generator_busy for r in rs):.0f}%)",
        ))
    return _report.rst_table(header, rows)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    specs = _cli.servers(parser, args, (*SERVERS, "workers"))
    profile_names = _cli.split(args.profile_servers)
    if any(n not in SERVERS and n != "external" for n in profile_names):
        parser.error(f"--profile-servers: from {', '.join(SERVERS)}")
    if min(args.clients, args.broadcasts, args.runs, args.generators) < 1:
        parser.error("--clients, --broadcasts, --runs and --generators must be positive")
    with _cli.workspace(args, need_files=args.clients + 200) as ws:
        print(f"fanout: {args.clients:,} clients on one topic, {args.broadcasts} broadcasts of "
              f"{args.message_bytes} B, {args.runs} runs, {args.generators} generator process(es)", flush=True)
        results: list[Result] = []
        started = time.monotonic()
        for n, spec in _cli.interleaved(args.runs, specs):
            r = measure(ws, args, spec, n)
            print_run(r)
            results.append(r)
        print()
        print(f"fanout: {args.clients:,} clients, {args.broadcasts} broadcasts, median of {args.runs} runs "
              f"({time.monotonic() - started:.0f} s)")
        print(summarize(specs, results), flush=True)
        for spec in specs:
            rs = [r for r in results if r.server == spec.name]
            if rs:
                print(f"  {spec.name}: {rs[0].extra['command']}")
        _report.print_load_end()
        if any(r.generator_busy > 0.9 for r in results):
            print("\nWARNING: a load generator was busy over 90% of the time; "
                  f"try --generators {args.generators + 1} (fewer on a 2-core machine).", flush=True)
        if any(r.missing for r in results):
            print("\nWARNING: some deliveries never arrived (see the runs above).", flush=True)
        if args.profile == "py-spy":
            for spec in specs:
                if spec.name in profile_names:
                    print()
                    profile(ws, args, spec)
        if args.memory_breakdown:
            for spec in specs:
                if spec.kind != "external":
                    print()
                    memory_breakdown(ws, args, spec)
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "results": results})


def memory_breakdown(ws: _cli.Run, args: argparse.Namespace, spec: Spec) -> None:
    """One more run with tracemalloc on from the baseline to the loaded RSS reading."""
    r = measure(ws, args, spec, 0, memtrace=True)
    settings = f" ({r.settings})" if spec.kind == "phoenix" else ""
    print(f"tracemalloc, {spec.label}{settings}: what {r.joined:,} joined clients allocated "
          f"(per connection; RSS under tracemalloc {r.kib_per_connection or 0:.1f} KiB/conn):")
    shown = 0
    rows = []
    everything = ""
    for line in r.extra["memtrace"][: args.memory_breakdown + 1]:
        size, count, where = line.split(" ", 2)
        if size == "TOTAL":
            everything = f"{int(count) / r.joined:9.0f} B {int(where) / r.joined:7.2f} blocks  in all"
            continue
        shown += int(size)
        rows.append(f"{int(size) / r.joined:9.0f} B {int(count) / r.joined:7.2f} blocks  {_pyspy.short_path(where)}")
    print("\n".join(rows))
    print(f"{shown / r.joined:9.0f} B in these {len(rows)} lines")
    if everything:
        print(everything)


def profile(ws: _cli.Run, args: argparse.Namespace, spec: Spec) -> None:
    """One more run of ``spec`` with py-spy on the server during the fan-out."""
    _pyspy.require()
    holder: dict[str, Any] = {}

    def on_window(server: Server, phase: str) -> None:
        if phase == "start":
            holder["cm"] = _pyspy.profiling({"server": server.pid}, ws.logdir, f"{spec.name}-profile")
            holder["outs"] = holder["cm"].__enter__()
        else:
            holder["cm"].__exit__(None, None, None)

    r = measure(ws, args, spec, 0, on_window=on_window)
    print(f"py-spy of {spec.label} during the fan-out ({_report.rate(r.rate)} deliveries/s, "
          f"server CPU {r.server_cpu_seconds:.2f} s):")
    print(_pyspy.report(holder["outs"]["server"], args.profile_top))


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
