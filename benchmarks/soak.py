"""
The soak: a two-node cluster under steady, mixed traffic for ``--minutes``
(60), checked every minute.

Two ``twistd -n phoenix`` nodes, ``--name a@127.0.0.1`` and ``--name
b@127.0.0.1`` (the second ``--connect a@127.0.0.1``), with their own
``--epmd-port`` and ``--cookie``, the demo app otherwise at its defaults.
The cluster is ready when a broadcast made on b reaches a client on a.  One
generator process (``loadgen.js soak``) then runs, against both nodes:

* ``--subscribers`` phoenix.js clients per node joined to ``ping:soak`` for
  the whole run (heartbeats every 30 s, reconnect and rejoin if dropped);
* one sender per node pushing a ``broadcast`` every ``--interval`` ms, so
  that every broadcast reaches the subscribers of both nodes, half of them
  across the cluster link;
* ``--churners`` clients per node that, over and over, connect, join a
  topic of their own, push ``ping`` 3 times (awaiting each reply), leave,
  close and pause up to ``--churn-pause`` ms (2 s).

Every minute (``--report-every``) and at the end it prints, per node, the
RSS and open file descriptors (``/proc``) and CPU use; the errors of the
minute (connections refused or closed, heartbeat and reply timeouts, join
errors); and the **delivery ratio**: deliveries / expected, where a
broadcast is expected at every subscriber that was joined when it was sent
(both nodes alive throughout), over the broadcasts sent more than 5 s
before.  A node that exits ends the soak, reported.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import _cli, _report
from benchmarks._loadgen import Generator
from benchmarks._proc import BenchmarkError
from benchmarks._servers import Server, start_mesh, stop_all

NAME = "soak"
HELP = "a two-node cluster under joins, pushes, leaves, reconnects and cross-node broadcasts, for an hour"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=60.0, help="how long to run (60)")
    p.add_argument("--subscribers", type=int, default=100, help="long-lived subscribers per node (100)")
    p.add_argument("--churners", type=int, default=20,
                   help="clients per node that connect, join, push, leave and reconnect over and over (20)")
    p.add_argument("--churn-pause", type=float, default=2000.0,
                   help="a churning client waits a random 0 to this many ms between cycles (2000)")
    p.add_argument("--interval", type=float, default=200.0, help="ms between broadcasts, per node (200)")
    p.add_argument("--message-bytes", type=int, default=200, help="bytes of each broadcast's JSON text (200)")
    p.add_argument("--report-every", type=float, default=60.0, help="seconds between reports (60)")
    _cli.add_output(p)


@dataclass
class Minute:
    """One report: the generator's figures for the window and the nodes' /proc readings."""

    at_seconds: float
    stats: dict[str, Any]
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)


def wait_linked(ws: _cli.Run, nodes: dict[str, Server]) -> None:
    """Until a broadcast made on b reaches a subscriber on a (the link is up)."""
    g = Generator(ws.logdir, "soak-probe", "clients", wait=90, url=[nodes["a"].url()], trigger_url=nodes["b"].url(),
                  clients=2, probe=True, connect_timeout=60)
    try:
        ready = g.event("ready")
        if not ready.get("probed"):
            raise BenchmarkError("the two nodes did not link within 60 s (a broadcast on b never reached a)")
    finally:
        g.stop()


def read_nodes(nodes: dict[str, Server], last_cpu: dict[str, float], seconds: float) -> dict[str, dict[str, Any]]:
    out = {}
    for key, node in nodes.items():
        s = node.sample()
        if s is None:
            out[key] = {"alive": False}
            continue
        out[key] = {"alive": node.alive(), "rss_kib": s.rss_kib, "fds": s.fds,
                    "cpu": (s.cpu_seconds - last_cpu.get(key, 0.0)) / max(seconds, 1e-3)}
        last_cpu[key] = s.cpu_seconds
    return out


def row(m: Minute) -> tuple[str, ...]:
    w, st = m.stats["window"], m.stats
    lat = w.get("reply_ms") or {}
    cells = [f"{m.at_seconds / 60:.1f}"]
    for key in ("a", "b"):
        n = m.nodes.get(key, {})
        cells += [_report.mib(n.get("rss_kib")) if n.get("alive", True) else "EXITED",
                  f"{n.get('fds', '-')}", f"{100 * n.get('cpu', 0):.0f}%"]
    errors = sum(w["errors"].values())
    cells += [
        f"{st['joined_now']:,}/{st['subscribers']:,}",
        f"{w['broadcasts']:,}",
        f"{100 * w['ratio']:.3f}%" if w["ratio"] is not None else "-",
        f"{w['cycles']:,}",
        _report.ms(lat.get("p99")),
        f"{errors:,}" + (f" ({_report.counts(w['errors'])})" if errors else ""),
    ]
    return tuple(cells)


HEADER = ("minute", "a RSS", "a fds", "a CPU", "b RSS", "b fds", "b CPU", "subscribers joined", "broadcasts",
          "delivery ratio", "churn cycles", "churn reply p99", "errors")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.minutes <= 0 or args.subscribers < 1 or args.churners < 0 or args.report_every <= 0:
        parser.error("--minutes, --subscribers and --report-every must be positive")
    need = 2 * (args.subscribers + args.churners) + 300
    with _cli.workspace(args, need_files=need) as ws:
        nodes = start_mesh(ws.logdir, "soak", ("a", "b"))
        settings = "--name a@127.0.0.1 / b@127.0.0.1 --cookie C --epmd-port P; b: --connect a@127.0.0.1"
        print(f"soak: {args.minutes:g} minutes; nodes a and b ({settings}); per node {args.subscribers} "
              f"subscribers of ping:soak, a broadcast every {args.interval:g} ms, {args.churners} churning clients",
              flush=True)
        for key, node in nodes.items():
            print(f"  {key}: {node.command_line}", flush=True)
        try:
            wait_linked(ws, nodes)
            g = Generator(ws.logdir, "soak-gen", "soak", wait=120, url=[nodes["a"].url(), nodes["b"].url()],
                          subscribers=args.subscribers, churners=args.churners, pause=args.churn_pause,
                          interval=args.interval,
                          message_bytes=args.message_bytes)
            minutes: list[Minute] = []
            last_cpu = {key: node.cpu() for key, node in nodes.items()}
            started = time.monotonic()
            end = started + args.minutes * 60
            last = started
            exited: list[str] = []
            while not exited:
                now = time.monotonic()
                time.sleep(max(0.0, min(args.report_every - (now - last), end - now)))
                now = time.monotonic()
                stats = g.ask("stats", "stats", 120)
                m = Minute(now - started, stats, read_nodes(nodes, last_cpu, now - last))
                last = now
                minutes.append(m)
                print("  " + "; ".join(f"{h} {c}" for h, c in zip(HEADER, row(m))), flush=True)
                exited = [k for k, n in nodes.items() if not n.alive()]
                if now >= end - 0.5:
                    break
            g.stop()
        finally:
            stop_all(nodes)
        print()
        print(f"soak: {minutes[-1].at_seconds / 60:.1f} minutes, one row every {args.report_every:g} s")
        print(_report.rst_table(HEADER, [row(m) for m in minutes]))
        totals = minutes[-1].stats["totals"]
        first = minutes[0].nodes
        final = minutes[-1].nodes
        growth = ", ".join(
            f"{k}: RSS {_report.mib(first[k].get('rss_kib'))} -> {_report.mib(final[k].get('rss_kib'))}, "
            f"fds {first[k].get('fds')} -> {final[k].get('fds')}" for k in nodes)
        ratio = f"{100 * totals['ratio']:.4f}%" if totals["ratio"] is not None else "-"
        print(f"totals: {totals['broadcasts']:,} broadcasts settled, delivery ratio {ratio} "
              f"({totals['delivered']:,} of {totals['expected']:,}); {totals['cycles']:,} churn cycles, "
              f"{totals['replies']:,} of {totals['pings']:,} pings answered; {totals['errors']:,} errors "
              f"({_report.counts(minutes[-1].stats['errors'])})")
        print(f"first to last report: {growth}")
        _report.print_load_end()
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "minutes": minutes})
        if exited:
            raise BenchmarkError(f"node(s) {', '.join(exited)} exited during the soak (see the table); "
                                 f"logs in {ws.logdir if not ws.own_logdir else '--logdir'}")


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
