"""
The connection storm: N clients connect and join ``ping`` at once against a
server at its defaults, while a canary that joined before the storm sends a
heartbeat every 100 ms.

``storm``
    The canary (its own generator process, so that the storm's work in the
    generator does not delay it) joins and starts its heartbeats; then the
    storm generators (``loadgen.js storm``, as many processes as the open-files
    cap needs: at most 15,000 clients each) open their clients at once
    (``--concurrency 0``; or at most C handshakes in flight per process), each
    connecting to phoenix.js's URL and joining ``ping``.  Printed: the seconds
    from the start until every client joined, how many never joined within
    ``--timeout`` and why (refused, reset, timeout, an HTTP status, a join
    error), the join latency, and the canary's heartbeat reply latency during
    the storm (median, p99, max, unanswered), and the server's CPU time over
    the storm per client (what a connect and join cost it, whatever share
    of the cores the generators take).  Targets: all joined within 15 s;
    the canary's max at most 1 s.
``storm --herd``
    N phoenix.js clients connect (``--setup-concurrency`` at a time) and join;
    the canary starts; the server is killed (``--restart-signal``, KILL by
    default) and started again on the same port; every client reconnects with
    phoenix.js's backoff (10, 50, 100, 150, 200, 250, 500, 1000, 2000, then
    5000 ms) and rejoins.  Printed: the time from the kill (and from the new
    server accepting) until every client rejoined, reconnect attempts and why
    they failed, join failures, and the canary's stall (its longest time
    without a heartbeat reply) and its latency once rejoined.
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import _cli, _report
from benchmarks._loadgen import Generator, split
from benchmarks._proc import BenchmarkError
from benchmarks._servers import PHOENIX_SPECS, Server, Spec, start

NAME = "storm"
HELP = "N clients connect and join at once (or reconnect after a restart: --herd); a canary's heartbeat latency"
#: Clients per generator process: the open-files cap is 20,000 per process.
PER_GENERATOR = 15_000
TARGET_SECONDS = 15.0
TARGET_CANARY_MS = 1000.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=10_000, help="clients in the storm (10000)")
    p.add_argument("--concurrency", type=int, default=0,
                   help="handshakes in flight per generator process; 0: all at once (0)")
    p.add_argument("--generators", type=int, default=0,
                   help=f"generator processes; 0: one per {PER_GENERATOR:,} clients (0)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds after the start after which a client not joined counts as never joined (60)")
    p.add_argument("--canary-interval", type=float, default=100.0, help="ms between the canary's heartbeats (100)")
    p.add_argument("--runs", type=int, default=1, help="runs of every server, interleaved (1)")
    p.add_argument("--herd", action="store_true",
                   help="the thundering herd instead: N clients joined, the server restarted, all reconnect")
    p.add_argument("--restart-signal", choices=("KILL", "TERM"), default="KILL",
                   help="--herd: how the server is ended before it is started again (KILL)")
    p.add_argument("--setup-concurrency", type=int, default=200,
                   help="--herd: handshakes in flight per process while the clients first connect (200)")
    _cli.add_servers(p, "phoenix", PHOENIX_SPECS)
    _cli.add_output(p)


@dataclass
class Result:
    server: str
    run: int
    herd: bool
    settings: str
    clients: int
    figures: dict[str, Any] = field(default_factory=dict)
    canary: dict[str, Any] = field(default_factory=dict)
    server_samples: dict[str, Any] = field(default_factory=dict)
    generator_busy: float = 0.0


def generators_for(args: argparse.Namespace) -> int:
    return args.generators or max(1, math.ceil(args.clients / PER_GENERATOR))


def canary(ws: _cli.Run, server: Server, tag: str, args: argparse.Namespace, reconnect: bool) -> Generator:
    g = Generator(ws.logdir, f"{tag}-canary", "canary", wait=60, url=server.url(), kind="heartbeat",
                  interval=args.canary_interval, reconnect=reconnect)
    ready = g.event("ready")
    if not ready.get("joined"):
        raise BenchmarkError(f"{tag}: the canary could not join: {ready.get('why')}")
    return g


def measure_storm(ws: _cli.Run, args: argparse.Namespace, spec: Spec, n: int) -> Result:
    tag = f"storm-{spec.name}-{n}"
    server = start(spec, ws.logdir, tag, timeout=args.external_timeout if spec.kind == "external" else 60.0)
    gens: list[Generator] = []
    try:
        can = canary(ws, server, tag, args, reconnect=False)
        gens.append(can)
        for i, clients in enumerate(split(args.clients, generators_for(args))):
            gens.append(Generator(ws.logdir, f"{tag}-gen{i}", "storm", wait=args.timeout + 60, url=server.url(),
                                  clients=clients, concurrency=args.concurrency, timeout=args.timeout))
        storms = gens[1:]
        for g in storms:
            g.event("ready")
        time.sleep(1.0)
        before = server.sample()
        can.command("go")  # the canary's window is the storm's
        for g in storms:
            g.command("go")
        dones = [g.event("done") for g in storms]
        report = can.ask("report", "canary")
        after = server.sample()
        peak_kib = after.hwm_kib if after else None
    finally:
        for g in gens:
            g.stop()
        server.stop()
    go_at = min(d["go_at"] for d in dones)
    joined = sum(d["joined"] for d in dones)
    failed = sum(d["failed"] for d in dones)
    last = max((d["last_join_at"] for d in dones if d["last_join_at"]), default=None)
    join_ms = [d["join_ms"] for d in dones if d["join_ms"]]
    figures = {
        "joined": joined,
        "failed": failed,
        "failures": _report.merge_counts(*(d["failures"] for d in dones)),
        "closed_after_join": _report.merge_counts(*(d["closed_after_join"] for d in dones)),
        "last_join_seconds": (last - go_at) / 1000 if last else None,
        "all_joined_seconds": (last - go_at) / 1000 if last and failed == 0 else None,
        "join_p50_ms": statistics.median(j["p50"] for j in join_ms) if join_ms else None,
        "join_max_ms": max(j["max"] for j in join_ms) if join_ms else None,
        "joined_late": sum(d["joined_late"] for d in dones),
    }
    busy = max((d["cpu_user"] + d["cpu_sys"]) / max(1e-3, (d["end_at"] - d["go_at"]) / 1000) for d in dones)
    return Result(spec.name, n, False, server.settings, args.clients, figures, report,
                  _samples(before, peak_kib, after), busy)


def measure_herd(ws: _cli.Run, args: argparse.Namespace, spec: Spec, n: int) -> Result:
    tag = f"herd-{spec.name}-{n}"
    server = start(spec, ws.logdir, tag, timeout=args.external_timeout if spec.kind == "external" else 60.0)
    if server.child is None:
        server.stop()
        raise BenchmarkError(f"{spec.label}: --herd restarts the server; give its command with --external")
    gens: list[Generator] = []
    try:
        setup_wait = args.timeout + args.clients / 100
        for i, clients in enumerate(split(args.clients, generators_for(args))):
            gens.append(Generator(ws.logdir, f"{tag}-gen{i}", "storm", wait=setup_wait + 60, herd=True,
                                  url=server.url(), clients=clients, setup_concurrency=args.setup_concurrency,
                                  timeout=setup_wait))
        readies = [g.event("ready") for g in gens]
        joined = sum(r["joined"] for r in readies)
        if joined < args.clients:
            failures = _report.merge_counts(*(r["failures"] for r in readies), *(r["join_failures"] for r in readies))
            print(f"  ! {tag}: only {joined:,} of {args.clients:,} clients joined before the restart; "
                  f"failures: {_report.counts(failures)}", flush=True)
        can = canary(ws, server, tag, args, reconnect=True)
        gens.append(can)
        time.sleep(1.0)
        before = server.sample()
        can.command("go")
        time.sleep(1.0)
        kill_at = time.time() * 1000
        up_at = server.restart(getattr(signal, "SIG" + args.restart_signal)) * 1000
        dones = [g.event("done", args.timeout + 60) for g in gens[:-1]]
        time.sleep(1.0)  # the canary's heartbeats after the herd settled
        report = can.ask("report", "canary")
        after = server.sample()
        peak_kib = after.hwm_kib if after else None  # the new process's high-water mark
    finally:
        for g in gens:
            g.stop()
        server.stop()
    last = max((d["last_rejoin_at"] for d in dones if d["last_rejoin_at"]), default=None)
    not_rejoined = sum(d["not_rejoined"] for d in dones)
    rejoin = [d["rejoin_ms"] for d in dones if d["rejoin_ms"]]
    figures = {
        "joined_before": joined,
        "went_down": sum(d["went_down"] for d in dones),
        "rejoined": sum(d["rejoined"] for d in dones),
        "not_rejoined": not_rejoined,
        "restart_seconds": (up_at - kill_at) / 1000,
        "all_rejoined_after_kill": (last - kill_at) / 1000 if last and not not_rejoined else None,
        "all_rejoined_after_up": (last - up_at) / 1000 if last and not not_rejoined else None,
        "last_rejoin_after_kill": (last - kill_at) / 1000 if last else None,
        "rejoin_p50_ms": statistics.median(r["p50"] for r in rejoin) if rejoin else None,
        "attempts": sum(d["attempts"] for d in dones),
        "max_attempts": max(d["max_attempts"] for d in dones),
        "attempt_failures": _report.merge_counts(*(d["attempt_failures"] for d in dones)),
        "join_failures": _report.merge_counts(*(d["join_failures"] for d in dones)),
        "closes": _report.merge_counts(*(d["closes"] for d in dones)),
    }
    busy = max((d["cpu_user"] + d["cpu_sys"]) / max(1e-3, (d["end_at"] - (d["first_down_at"] or d["end_at"])) / 1000)
               for d in dones)
    return Result(spec.name, n, True, server.settings, args.clients, figures, report,
                  _samples(before, peak_kib, after), busy)


def _samples(before: Any, peak_kib: int | None, after: Any) -> dict[str, Any]:
    return {
        "rss_before_kib": before.rss_kib if before else None,
        "rss_peak_kib": peak_kib,
        "rss_after_kib": after.rss_kib if after else None,
        "cpu_seconds": (after.cpu_seconds - before.cpu_seconds) if before and after else None,
        "fds_after": after.fds if after else None,
    }


def _cpu_per_client(r: Result) -> str:
    """The server's CPU time from the start until every client joined (or gave up), per client."""
    cpu = r.server_samples.get("cpu_seconds")
    return f"{1e6 * cpu / r.clients:.0f} µs" if cpu is not None and r.clients else "-"


def _canary_text(c: dict[str, Any]) -> str:
    lat = c.get("latency_ms") or {}
    return (f"canary {c['replies']:,} of {c['sent']:,} heartbeats answered, p50 {_report.ms(lat.get('p50'))}, "
            f"p99 {_report.ms(lat.get('p99'))}, max {_report.ms(c['max_ms'])}, longest gap "
            f"{_report.ms(c['max_gap_ms'])} (its own timer lag at most {_report.ms(c['timer_lag_max_ms'])})")


def print_run(r: Result) -> None:
    f, s = r.figures, r.server_samples
    memory = f"RSS {_report.mib(s['rss_before_kib'])} -> peak {_report.mib(s['rss_peak_kib'])}"
    if not r.herd:
        joined = (f"all {f['joined']:,} joined in {f['all_joined_seconds']:.2f} s" if f["all_joined_seconds"] is not None
                  else f"{f['joined']:,} of {r.clients:,} joined (last at {f['last_join_seconds'] or 0:.2f} s), "
                       f"{f['failed']:,} never: {_report.counts(f['failures'])}")
        late = f", {f['closed_after_join'] and _report.counts(f['closed_after_join'])} closed after joining" \
            if f["closed_after_join"] else ""
        print(f"  run {r.run} {r.server}: {joined}{late}; join p50 {_report.ms(f['join_p50_ms'])}, "
              f"max {_report.ms(f['join_max_ms'])}; {_canary_text(r.canary)}; {memory}; "
              f"server CPU {_cpu_per_client(r)} per client; generator busy {100 * r.generator_busy:.0f}%",
              flush=True)
        return
    rejoined = (f"all {f['rejoined']:,} rejoined {f['all_rejoined_after_kill']:.2f} s after the kill "
                f"({f['all_rejoined_after_up']:.2f} s after the new server accepted)"
                if f["all_rejoined_after_kill"] is not None
                else f"{f['rejoined']:,} of {f['joined_before']:,} rejoined, {f['not_rejoined']:,} did not")
    memory = (f"RSS {_report.mib(s['rss_before_kib'])} before the restart, the new server's peak "
              f"{_report.mib(s['rss_peak_kib'])}")
    print(f"  run {r.run} {r.server}: restarted in {f['restart_seconds']:.2f} s; the clients saw "
          f"{_report.counts(f['closes'])}; {rejoined}; "
          f"{f['attempts']:,} reconnect attempts (at most {f['max_attempts']} by one client), failed: "
          f"{_report.counts(f['attempt_failures'])}; join failures: {_report.counts(f['join_failures'])}; "
          f"canary down for {_report.ms(r.canary['max_gap_ms'])}, after rejoining "
          f"p99 {_report.ms((r.canary.get('after_rejoin_ms') or {}).get('p99'))}; {memory}", flush=True)


def table(results: list[Result], specs: list[Spec]) -> str:
    rows = []
    if not results[0].herd:
        header = ("server", "server options", "clients", "all joined in", "target <= 15 s", "never joined (why)",
                  "canary p50", "p99", "max", "target <= 1 s", "unanswered", "RSS before -> peak",
                  "server CPU per client")
        for r in results:
            f, c, s = r.figures, r.canary, r.server_samples
            lat = c.get("latency_ms") or {}
            took = f["all_joined_seconds"]
            rows.append((
                _label(specs, r), r.settings, f"{r.clients:,}",
                f"{took:.2f} s" if took is not None else "never",
                _report.verdict(took is not None and took <= TARGET_SECONDS),
                f"{f['failed']:,}" + (f" ({_report.counts(f['failures'])})" if f["failed"] else ""),
                _report.ms(lat.get("p50")), _report.ms(lat.get("p99")), _report.ms(c["max_ms"]),
                _report.verdict(c["max_ms"] <= TARGET_CANARY_MS and c["replies"] > 0),
                f"{c['unanswered']:,}",
                f"{_report.mib(s['rss_before_kib'])} -> {_report.mib(s['rss_peak_kib'])}",
                _cpu_per_client(r),
            ))
        return _report.rst_table(header, rows)
    header = ("server", "server options", "clients", "restart", "all rejoined after the kill", "after accepting",
              "not rejoined", "reconnect attempts", "failed attempts (why)", "canary down for",
              "canary p99 after", "max after")
    for r in results:
        f, c = r.figures, r.canary
        after = c.get("after_rejoin_ms") or {}
        rows.append((
            _label(specs, r), r.settings, f"{f['joined_before']:,}", f"{f['restart_seconds']:.2f} s",
            f"{f['all_rejoined_after_kill']:.2f} s" if f["all_rejoined_after_kill"] is not None else "never",
            f"{f['all_rejoined_after_up']:.2f} s" if f["all_rejoined_after_up"] is not None else "-",
            f"{f['not_rejoined']:,}", f"{f['attempts']:,}", _report.counts(f["attempt_failures"]),
            _report.ms(c["max_gap_ms"]), _report.ms(after.get("p99")), _report.ms(after.get("max")),
        ))
    return _report.rst_table(header, rows)


def _label(specs: list[Spec], r: Result) -> str:
    label = next(s.label for s in specs if s.name == r.server)
    return label + (f" (run {r.run})" if r.run > 1 else "")


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    specs = _cli.servers(parser, args, PHOENIX_SPECS)
    if args.clients < 1 or args.runs < 1 or args.concurrency < 0:
        parser.error("--clients and --runs must be positive, --concurrency at least 0")
    gens = generators_for(args)
    if math.ceil(args.clients / gens) > PER_GENERATOR + 2000:
        parser.error(f"{args.clients:,} clients over {gens} generator(s): at most {PER_GENERATOR:,} each")
    with _cli.workspace(args, need_files=min(args.clients, 19_000) + 200) as ws:
        what = "herd" if args.herd else "storm"
        if args.herd:
            print(f"herd: {args.clients:,} phoenix.js clients joined to ping, the server restarted "
                  f"({args.restart_signal}), every client reconnects with phoenix.js's backoff and rejoins; "
                  f"a canary heartbeats every {args.canary_interval:g} ms", flush=True)
        else:
            print(f"storm: {args.clients:,} clients connect and join ping "
                  f"{'at once' if not args.concurrency else f'({args.concurrency} handshakes in flight per process)'}"
                  f" over {gens} generator process(es); a canary heartbeats every {args.canary_interval:g} ms; "
                  f"a client not joined after {args.timeout:g} s never joined", flush=True)
        results: list[Result] = []
        for n, spec in _cli.interleaved(args.runs, specs):
            r = (measure_herd if args.herd else measure_storm)(ws, args, spec, n)
            print_run(r)
            results.append(r)
        print(f"\n{what}: {args.clients:,} clients")
        print(table(results, specs))
        if not args.herd:
            print("targets: every client joined within 15 s; the canary's max heartbeat latency at most 1 s "
                  "(max counts a heartbeat still unanswered at the end by its age)")
        _report.print_load_end()
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "results": results})


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
