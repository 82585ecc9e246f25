"""
The command line of the yardstick workloads (``benchmarks/yardstick.py``):
``sweep``, ``roundtrip``, ``memory``, ``joinstorm`` and ``all``, added to
``python -m benchmarks`` by :func:`add_parsers`.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import statistics
import sys
from typing import Any

from benchmarks import yardstick
from benchmarks.fanout import BenchmarkError

COMMANDS = ("sweep", "roundtrip", "memory", "joinstorm", "all")

HELP = {
    "sweep": "fan-out deliveries/s at several subscriber counts: twisted_phoenix, floors and peers",
    "roundtrip": "ping/reply round trips: replies/s and p50/p99 latency, twisted_phoenix, floors and peers",
    "memory": "server RSS per connected, joined client: twisted_phoenix, floors and peers",
    "joinstorm": "joins/s when every open connection joins at once: twisted_phoenix, floors and peers",
    "all": "every workload (and the cluster fan-out), one combined table",
}

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


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for command in COMMANDS:
        p = sub.add_parser(
            command,
            help=HELP[command],
            description=yardstick.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        d = yardstick.Options()
        p.add_argument(
            "--servers",
            default=",".join(yardstick.SPECS),
            help="comma-separated, from: " + ", ".join(yardstick.SPECS) + " (all)",
        )
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
        p.add_argument("--json", dest="json_path", help="also write every run's figures to this file")
        p.add_argument("--logdir", default="", help="keep the children's stderr (and profiles) here")


def _split(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> yardstick.Options:
    fields = {f.name for f in dataclasses.fields(yardstick.Options)}
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields}
    values["servers"] = _split(args.servers)
    if "profile_servers" in values:
        values["profile_servers"] = _split(args.profile_servers)
    if getattr(args, "quick", False):
        values.update(QUICK)
    opts = yardstick.Options(**values)
    unknown = [s for s in opts.servers + opts.profile_servers if s not in yardstick.SPECS]
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    counts = (opts.runs, opts.broadcasts, opts.roundtrip_clients, opts.memory_clients, opts.memory_generators,
              opts.join_clients, *opts.sizes)
    if min(counts) < 1 or opts.roundtrip_seconds <= 0 or opts.budget <= 0:
        parser.error("counts and durations must be positive")
    return opts


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    opts = options(parser, args)
    if args.workload == "all":
        workloads: tuple[str, ...] = ("sweep", "roundtrip", "memory", "joinstorm")
    else:
        workloads = (args.workload,)
    cluster_hook = None
    if args.workload == "all" and not args.no_cluster:
        cluster_hook = lambda: cluster_rows(opts, quick=args.quick)  # noqa: E731
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        yardstick.run(opts, workloads, cluster_hook)
    except KeyboardInterrupt:
        print("\ninterrupted; every child process was killed", file=sys.stderr)
        return 130
    except BenchmarkError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 1
    return 0


def cluster_rows(opts: yardstick.Options, quick: bool) -> list[tuple[str, ...]]:
    """
    The cluster fan-out (``benchmarks/cluster.py``, when present), run with
    its own defaults (or small sizes with ``--quick``); its table is printed
    as it runs, and its medians become rows of the combined table.
    """
    blank = ("", "", "", "", "", "")
    try:
        from benchmarks import cluster
    except ImportError as e:
        return [("cluster fan-out", "twisted_phoenix, 3 nodes", f"n/a (benchmarks/cluster.py: {e})", *blank)]
    try:
        fields = {f.name for f in dataclasses.fields(cluster.Options)}
        values: dict[str, Any] = {"runs": opts.runs, "logdir": ""}
        if quick:
            values.update(clients=500, broadcasts=20, latency_clients=20, latency_broadcasts=50, timeout=60.0)
        copts = cluster.Options(**{k: v for k, v in values.items() if k in fields})
        print("\ncluster fan-out (benchmarks/cluster.py):", flush=True)
        results = cluster.run_cluster(copts)
    except Exception as e:  # noqa: BLE001 - someone else's harness: report it, keep the run
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        return [("cluster fan-out", "twisted_phoenix, 3 nodes", f"n/a ({reason})", *blank)]
    by: dict[str, list[Any]] = {}
    for r in results:
        by.setdefault(r.workload, []).append(r)
    labels = getattr(cluster, "LABELS", {})
    med = {w: statistics.median(r.rate for r in rs) for w, rs in by.items()}
    rows = []
    for w, rs in by.items():
        rates = [r.rate for r in rs]
        cpu = statistics.median(
            sum(r.node_cpu.values()) / max(1, r.deliveries) for r in rs
        ) if all(hasattr(r, "node_cpu") for r in rs) else None
        latency = ""
        lat = [r.latency for r in rs if getattr(r, "latency", None)]
        if lat:
            latency = (f"latency p50 {statistics.median(x['p50'] for x in lat):.2f} ms, "
                       f"p99 {statistics.median(x['p99'] for x in lat):.2f} ms")
        rows.append((
            f"cluster fan-out C={rs[0].clients:,}",
            "twisted_phoenix, " + str(labels.get(w, w)).split(":")[0],
            f"{med[w]:,.0f}",
            f"{min(rates):,.0f}-{max(rates):,.0f}",
            "-",
            f"{med[w] / med['single']:.2f}" if med.get("single") else "-",
            f"{1e6 * cpu:.1f} µs" if cpu is not None else "-",
            f"{100 * statistics.median(r.generator_busy for r in rs):.0f}%",
            latency,
        ))
    return rows
