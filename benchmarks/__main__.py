"""
``python -m benchmarks [fanout] [options]``: run a benchmark and print its table.

See ``benchmarks/README.rst``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from benchmarks import fanout

WORKLOADS = ("fanout",)


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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
