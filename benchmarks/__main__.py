"""
``python -m benchmarks <workload> [options]``: run a benchmark and print its tables.

Workloads: fanout (the default), cluster, interest, presence, sweep, roundtrip, memory,
joinstorm, all, storm, slow, flood, soak.  ``python -m benchmarks <workload>
--help`` lists each one's options; ``benchmarks/README.rst`` says what each
measures and its targets.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import _cli, cluster, fanout, flood, interest, presence, slow, soak, storm, yardstick

#: Every workload module: its ``register(sub)`` adds its subcommand(s).
MODULES = (fanout, cluster, interest, presence, yardstick, storm, slow, flood, soak)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="workload", required=True, metavar="workload")
    for module in MODULES:
        module.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "fanout")
    args = parser().parse_args(argv)
    return _cli.main(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
