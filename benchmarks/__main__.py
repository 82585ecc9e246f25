"""
``python -m benchmarks [fanout|cluster|presence|sweep|roundtrip|memory|joinstorm|all] [options]``: run a benchmark and print its table.

See ``benchmarks/README.rst``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from benchmarks import cluster, fanout, presence, suite

WORKLOADS = ("fanout", "cluster", "presence", *suite.COMMANDS)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "fanout")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="workload", required=True)
    p = sub.add_parser(
        "fanout",
        help="deliveries/s and memory per connection, twisted_phoenix vs plain Autobahn",
        description=fanout.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=5000, help="connections joined to the topic (5000)")
    p.add_argument("--broadcasts", type=int, default=100, help="broadcasts per run (100)")
    p.add_argument("--runs", type=int, default=3, help="runs of every server, interleaved (3)")
    p.add_argument(
        "--servers",
        default="phoenix,prepared,raw",
        help="comma-separated, from: " + ", ".join(fanout.SERVERS) + " (all)",
    )
    p.add_argument("--generators", type=int, default=1, help="Node processes splitting the clients (1)")
    p.add_argument("--message-bytes", type=int, default=100, help="bytes of each broadcast's JSON text (100)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for connecting, and for the fan-out (120)")
    p.add_argument("--concurrency", type=int, default=200, help="connection attempts in flight per generator (200)")
    p.add_argument(
        "--profile",
        choices=("none", "cprofile", "py-spy"),
        default="none",
        help="after the runs, one more run of each --profile-servers server, profiled during the fan-out",
    )
    p.add_argument(
        "--profile-servers", default="phoenix", help="comma-separated servers to profile (phoenix)"
    )
    p.add_argument("--profile-top", type=int, default=25, help="profile entries to print (25)")
    p.add_argument(
        "--memory-breakdown",
        type=int,
        default=0,
        metavar="N",
        help="after the runs, one more run of each server under tracemalloc; print the N source "
        "lines that allocated most per connection",
    )
    p.add_argument("--json", dest="json_path", help="also write every run's figures to this file")
    p.add_argument("--logdir", default="", help="keep the children's stderr (and profiles) here")
    _add_cluster_parser(sub)
    presence.add_parser(sub)
    suite.add_parsers(sub)
    args = parser.parse_args(argv)
    if args.workload in suite.COMMANDS:
        return suite.run(parser, args)
    if args.workload == "cluster":
        return _run_cluster(parser, args)
    if args.workload == "presence":
        return presence.main(parser, args)

    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    profile_servers = tuple(s.strip() for s in args.profile_servers.split(",") if s.strip())
    unknown = [s for s in servers + profile_servers if s not in fanout.SERVERS]
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    if args.clients < 1 or args.broadcasts < 1 or args.runs < 1 or args.generators < 1:
        parser.error("--clients, --broadcasts, --runs and --generators must be positive")
    opts = fanout.Options(
        clients=args.clients,
        broadcasts=args.broadcasts,
        runs=args.runs,
        servers=servers,
        generators=args.generators,
        message_bytes=args.message_bytes,
        timeout=args.timeout,
        concurrency=args.concurrency,
        profile=args.profile,
        profile_servers=profile_servers,
        profile_top=args.profile_top,
        memory_breakdown=args.memory_breakdown,
        json_path=args.json_path,
        logdir=args.logdir,
    )
    # SIGTERM ends the harness like Ctrl-C: the finally clauses kill every child.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        fanout.run_fanout(opts)
    except KeyboardInterrupt:
        print("\ninterrupted; every child process was killed", file=sys.stderr)
        return 130
    except fanout.BenchmarkError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 1
    return 0


def _add_cluster_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "cluster",
        help="deliveries/s and added latency of a broadcast through a 3-node cluster vs one node",
        description=cluster.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=4000, help="subscribers for the throughput (4000)")
    p.add_argument("--broadcasts", type=int, default=100, help="broadcasts for the throughput, back to back (100)")
    p.add_argument("--runs", type=int, default=3, help="runs of every workload, interleaved (3)")
    p.add_argument(
        "--workloads",
        default="single,cluster",
        help="comma-separated, from: " + ", ".join(cluster.WORKLOADS) + " (single,cluster)",
    )
    p.add_argument("--message-bytes", type=int, default=100, help="bytes of each broadcast's JSON text (100)")
    p.add_argument("--latency-clients", type=int, default=40, help="subscribers for the latency (40)")
    p.add_argument("--latency-broadcasts", type=int, default=500, help="broadcasts for the latency (500)")
    p.add_argument("--latency-interval", type=float, default=5.0, help="ms between latency broadcasts (5)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for connecting, and for a fan-out (120)")
    p.add_argument("--concurrency", type=int, default=200, help="connection attempts in flight (200)")
    p.add_argument(
        "--profile",
        choices=("none", "cprofile", "py-spy"),
        default="none",
        help="after the runs, one more cluster run with the receiving node A and the sending node T "
        "profiled during its throughput and latency phases",
    )
    p.add_argument("--profile-top", type=int, default=25, help="profile entries to print (25)")
    p.add_argument("--json", dest="json_path", help="also write every run's figures to this file")
    p.add_argument("--logdir", default="", help="keep the children's stderr (and profiles) here")


def _run_cluster(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if min(args.clients, args.broadcasts, args.runs, args.latency_clients, args.latency_broadcasts) < 1:
        parser.error("counts must be positive")
    workloads = tuple(w.strip() for w in args.workloads.split(",") if w.strip())
    unknown = [w for w in workloads if w not in cluster.WORKLOADS]
    if unknown or not workloads:
        parser.error(f"unknown workload(s): {', '.join(unknown) or '(none)'}")
    opts = cluster.Options(
        clients=args.clients,
        broadcasts=args.broadcasts,
        runs=args.runs,
        workloads=workloads,
        message_bytes=args.message_bytes,
        latency_clients=args.latency_clients,
        latency_broadcasts=args.latency_broadcasts,
        latency_interval=args.latency_interval,
        timeout=args.timeout,
        concurrency=args.concurrency,
        profile=args.profile,
        profile_top=args.profile_top,
        json_path=args.json_path,
        logdir=args.logdir,
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        cluster.run_cluster(opts)
    except KeyboardInterrupt:
        print("\ninterrupted; every child process was killed", file=sys.stderr)
        return 130
    except fanout.BenchmarkError as e:
        print(f"\nbenchmark failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
