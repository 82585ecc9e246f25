"""
The flood: one client pushes ``ping`` as fast as its socket takes them
(without waiting for the replies) while a canary, another client on the
same server, pushes ``ping`` every 100 ms and times its replies.

The flooder (``loadgen.js flood``) and the canary (``loadgen.js canary``,
its own process, so that the flood's work in the generator does not delay
it) both join ``ping``; the canary starts; after a second the flood starts
and lasts ``--seconds``.  Printed: the canary's reply latency (median, p99,
max; target: median at most 10 ms), the flooder's pushes sent and answered
(events/s answered), the error replies it got (a rate limit, say), and
whether and when the server closed it, with which close code.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from benchmarks import _cli, _report
from benchmarks._loadgen import Generator
from benchmarks._proc import BenchmarkError
from benchmarks._servers import Spec, start

NAME = "flood"
HELP = "one client pushes as fast as it can; a canary's reply latency meanwhile, and what the server did"
TARGET_MEDIAN_MS = 10.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=30.0, help="length of the flood (30)")
    p.add_argument("--canary-interval", type=float, default=100.0, help="ms between the canary's pings (100)")
    p.add_argument("--runs", type=int, default=1, help="runs of every server, interleaved (1)")
    _cli.add_servers(p, "phoenix", ("phoenix",))
    _cli.add_output(p)


@dataclass
class Result:
    server: str
    run: int
    settings: str
    flood: dict[str, Any]
    canary: dict[str, Any]
    server_cpu: float | None
    rss_before_kib: int | None
    rss_after_kib: int | None


def measure(ws: _cli.Run, args: argparse.Namespace, spec: Spec, n: int) -> Result:
    tag = f"flood-{spec.name}-{n}"
    server = start(spec, ws.logdir, tag, timeout=args.external_timeout if spec.kind == "external" else 60.0)
    gens: list[Generator] = []
    try:
        flooder = Generator(ws.logdir, f"{tag}-flooder", "flood", wait=args.seconds + 60, url=server.url(),
                            seconds=args.seconds)
        gens.append(flooder)
        ready = flooder.event("ready")
        if not ready.get("joined"):
            raise BenchmarkError(f"{tag}: the flooder could not join: {ready.get('why')}")
        canary = Generator(ws.logdir, f"{tag}-canary", "canary", wait=60, url=server.url(), kind="ping",
                           interval=args.canary_interval)
        gens.append(canary)
        ready = canary.event("ready")
        if not ready.get("joined"):
            raise BenchmarkError(f"{tag}: the canary could not join: {ready.get('why')}")
        time.sleep(1.0)
        before = server.sample()
        # The canary's window is the flood's.
        canary.command("go")
        flooder.command("go")
        time.sleep(args.seconds)
        report = canary.ask("report", "canary")
        done = flooder.event("done")
        after = server.sample()
    finally:
        for g in gens:
            g.stop()
        server.stop()
    return Result(spec.name, n, server.settings, done, report,
                  after.cpu_seconds - before.cpu_seconds if before and after else None,
                  before.rss_kib if before else None, after.rss_kib if after else None)


def _closed(f: dict[str, Any]) -> str:
    c = f["closed"]
    if not c:
        return "no"
    how = c["error"] or f"code {c['code']}" + (f" {c['reason']}" if c["reason"] else "")
    return f"after {c['at_seconds']:.2f} s ({how})"


def print_run(r: Result) -> None:
    f, c = r.flood, r.canary
    lat = c.get("latency_ms") or {}
    print(
        f"  run {r.run} {r.server}: flooder sent {f['sent']:,} pings ({f['sent_per_s']:,.0f}/s), "
        f"{f['replies_ok']:,} answered ok ({f['answered_per_s']:,.0f}/s over {f['window_seconds']:.1f} s), "
        f"error replies: {_report.counts(f['replies_other'])}, other pushes: {_report.counts(f['pushes'])}, "
        f"closed by the server: {_closed(f)}; canary {c['replies']:,} of {c['sent']:,} answered, "
        f"p50 {_report.ms(lat.get('p50'))}, p99 {_report.ms(lat.get('p99'))}, max {_report.ms(c['max_ms'])}, "
        f"closes: {_report.counts(c['closes'])}; server CPU {r.server_cpu or 0:.1f} s; RSS "
        f"{_report.mib(r.rss_before_kib)} -> {_report.mib(r.rss_after_kib)}; flooder generator busy "
        f"{100 * (f['cpu_user'] + f['cpu_sys']) / max(f['window_seconds'], 1e-3):.0f}%",
        flush=True,
    )


def table(results: list[Result], specs: list[Spec]) -> str:
    header = ("server", "server options", "canary p50", "target <= 10 ms", "p99", "max", "unanswered",
              "flood answered/s", "pushes sent", "error replies", "flooder closed")
    rows = []
    for r in results:
        f, c = r.flood, r.canary
        lat = c.get("latency_ms") or {}
        rows.append((
            next(x.label for x in specs if x.name == r.server), r.settings,
            _report.ms(lat.get("p50")), _report.verdict(None if not lat else lat["p50"] <= TARGET_MEDIAN_MS),
            _report.ms(lat.get("p99")), _report.ms(c["max_ms"]), f"{c['unanswered']:,}",
            f"{f['answered_per_s']:,.0f}", f"{f['sent']:,}", _report.counts(f["replies_other"]), _closed(f),
        ))
    return _report.rst_table(header, rows)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    specs = _cli.servers(parser, args, ("phoenix",))
    if args.seconds <= 0 or args.runs < 1:
        parser.error("--seconds and --runs must be positive")
    with _cli.workspace(args) as ws:
        print(f"flood: one client pushes ping as fast as its socket takes them for {args.seconds:g} s; a canary "
              f"pushes ping every {args.canary_interval:g} ms", flush=True)
        results: list[Result] = []
        for n, spec in _cli.interleaved(args.runs, specs):
            r = measure(ws, args, spec, n)
            print_run(r)
            results.append(r)
        print(f"\nflood: {args.seconds:g} s")
        print(table(results, specs))
        print("target: the canary's median reply latency at most 10 ms during the flood")
        _report.print_load_end()
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "results": results})


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
