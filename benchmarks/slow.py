"""
Slow clients: H healthy clients and S stalled ones on one topic, then a
burst of broadcasts.

1. H healthy clients, S more and a trigger connect (phoenix.js's URL) and
   join ``ping``; the server's RSS is read (**before**);
2. the S clients stall: they stop reading (their TCP sockets paused, as a
   frozen browser tab or a dead mobile link would) and stop heartbeating;
3. the trigger pushes B ``broadcast`` events of P bytes (back to back, as
   fast as its socket takes them, or ``--rate`` a second); ``PingChannel``
   broadcasts each to the topic; the generator waits until every healthy
   client has them all, or nothing arrived for ``--settle`` seconds.  The
   server's RSS is read after (**after the broadcasts**), and its VmHWM
   (**peak**, the kernel's high-water mark of the process's RSS);
4. the stalled clients read again: each one the server dropped sees its
   close (the code, if a close frame came before the end of the connection);
   the others receive what the server kept for them;
5. the stalled clients still open are closed; RSS (**stalled gone**);
6. ``--fresh`` (3,000) new clients connect, join, leave and close; RSS
   (**after fresh**): memory the server freed is reused, not grown.

Printed: how many broadcasts each healthy client got (target: all), how many
stalled clients the server dropped and the close codes they saw, and the
server's RSS at each step; target: the peak at most 100 MiB above the
RSS before.  Whether the trigger itself was refused or closed (a push rate
limit) is printed too: the harness reports what the server does.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import _cli, _report
from benchmarks._loadgen import Generator
from benchmarks._servers import Spec, start

NAME = "slow"
HELP = "healthy and stalled clients on one topic, a burst of broadcasts: deliveries, drops, server memory"
TARGET_GROWTH_MIB = 100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--healthy", type=int, default=200, help="clients that keep reading (200)")
    p.add_argument("--stalled", type=int, default=1000, help="clients that stop reading after joining (1000)")
    p.add_argument("--broadcasts", type=int, default=2000, help="broadcasts in the burst (2000)")
    p.add_argument("--message-bytes", type=int, default=4096, help="bytes of each broadcast's JSON text (4096)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="broadcasts a second the trigger pushes; 0: as fast as its socket takes them (0)")
    p.add_argument("--fresh", type=int, default=3000,
                   help="new clients that connect, join, leave and close at the end (3000)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds without a delivery after which a phase is over (5)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds any one phase may take (300)")
    p.add_argument("--concurrency", type=int, default=200, help="handshakes in flight (200)")
    p.add_argument("--runs", type=int, default=1, help="runs of every server, interleaved (1)")
    _cli.add_servers(p, "phoenix", ("phoenix",))
    _cli.add_output(p)


@dataclass
class Result:
    server: str
    run: int
    settings: str
    ready: dict[str, Any]
    burst: dict[str, Any]
    resumed: dict[str, Any]
    fresh: dict[str, Any]
    rss_kib: dict[str, int | None] = field(default_factory=dict)

    @property
    def growth_mib(self) -> float | None:
        before, peak = self.rss_kib.get("before"), self.rss_kib.get("peak")
        return None if before is None or peak is None else (peak - before) / 1024


def measure(ws: _cli.Run, args: argparse.Namespace, spec: Spec, n: int) -> Result:
    tag = f"slow-{spec.name}-{n}"
    server = start(spec, ws.logdir, tag, timeout=args.external_timeout if spec.kind == "external" else 60.0)
    wait = args.timeout + 60
    g = Generator(ws.logdir, f"{tag}-gen", "slow", wait=wait, url=server.url(), healthy=args.healthy,
                  stalled=args.stalled, broadcasts=args.broadcasts, message_bytes=args.message_bytes, rate=args.rate,
                  settle=args.settle, timeout=args.timeout, concurrency=args.concurrency)
    rss: dict[str, int | None] = {}

    def read(name: str) -> None:
        s = server.sample()
        rss[name] = s.rss_kib if s else None

    try:
        ready = g.event("ready")
        time.sleep(1.0)
        read("before")
        g.ask("stall", "stalled")
        time.sleep(0.5)
        burst = g.ask("broadcast", "broadcast-done")
        read("after broadcasts")
        s = server.sample()
        rss["peak"] = s.hwm_kib if s else None
        resumed = g.ask("resume", "resumed")
        g.ask("close-stalled", "closed-stalled")
        time.sleep(2.0)
        read("stalled gone")
        fresh = g.ask(f"fresh {args.fresh}", "fresh-done")
        time.sleep(2.0)
        read("after fresh")
    finally:
        g.stop()
        server.stop()
    return Result(spec.name, n, server.settings, ready, burst, resumed, fresh, rss)


def print_run(r: Result) -> None:
    b, s, f, m = r.burst, r.resumed, r.fresh, r.rss_kib
    trigger = ""
    if b["trigger_closed"]:
        t = b["trigger_closed"]
        trigger = (f"; THE TRIGGER WAS CLOSED after {t.get('sent', 0):,} pushes "
                   f"({t.get('error') or t.get('code')} {t.get('reason') or ''})")
    print(
        f"  run {r.run} {r.server}: joined {r.ready['healthy_joined']:,} healthy + {r.ready['stalled_joined']:,} stalled "
        f"(failures: {_report.counts(r.ready['failures'])}); {b['sent']:,} broadcasts sent in "
        f"{b['sending_seconds']:.2f} s{trigger}; healthy clients got min {b['healthy_min']:,}, median "
        f"{b['healthy_median']:,.0f}, max {b['healthy_max']:,} ({b['healthy_got_all']:,} of {b['healthy']:,} all; "
        f"closed: {_report.counts(b['healthy_closed'])}); stalled: {s['dropped']:,} of {s['stalled']:,} dropped by "
        f"the server (close codes: {_report.counts(s['close_codes'])}), {s['still_open']:,} still open, "
        f"{s['got_all']:,} got everything; fresh: {f['left']:,} of {f['clients']:,} joined and left "
        f"(failures: {_report.counts(f['failures'])}); RSS "
        + ", ".join(f"{k} {_report.mib(v)}" for k, v in m.items()),
        flush=True,
    )


def table(results: list[Result], specs: list[Spec]) -> str:
    header = ("server", "server options", "broadcasts sent", "healthy with all", "target: all", "stalled dropped",
              "close codes seen", "RSS before", "peak", "after broadcasts", "stalled gone", "after fresh",
              "peak growth", "target <= 100 MiB")
    rows = []
    for r in results:
        b, s, m = r.burst, r.resumed, r.rss_kib
        label = next(x.label for x in specs if x.name == r.server)
        sent = f"{b['sent']:,}" + (" (trigger closed)" if b["trigger_closed"] else "")
        growth = r.growth_mib
        rows.append((
            label, r.settings, sent, f"{b['healthy_got_all']:,} of {b['healthy']:,}",
            _report.verdict(b["healthy_got_all"] == b["healthy"] and b["sent"] == b["broadcasts"]),
            f"{s['dropped']:,} of {s['stalled']:,}", _report.counts(s["close_codes"]),
            _report.mib(m.get("before")), _report.mib(m.get("peak")), _report.mib(m.get("after broadcasts")),
            _report.mib(m.get("stalled gone")), _report.mib(m.get("after fresh")),
            f"{growth:,.0f} MiB" if growth is not None else "-",
            _report.verdict(None if growth is None else growth <= TARGET_GROWTH_MIB),
        ))
    return _report.rst_table(header, rows)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    specs = _cli.servers(parser, args, ("phoenix",))
    if min(args.healthy, args.broadcasts, args.runs) < 1 or min(args.stalled, args.fresh) < 0:
        parser.error("--healthy, --broadcasts and --runs must be positive")
    need = args.healthy + args.stalled + max(args.fresh, 0) + 200
    with _cli.workspace(args, need_files=min(need, 19_000)) as ws:
        print(f"slow: {args.healthy:,} healthy and {args.stalled:,} stalled clients on ping, "
              f"{args.broadcasts:,} broadcasts of {args.message_bytes:,} B "
              f"{'back to back' if not args.rate else f'at {args.rate:g}/s'}, then {args.fresh:,} fresh clients",
              flush=True)
        results: list[Result] = []
        for n, spec in _cli.interleaved(args.runs, specs):
            r = measure(ws, args, spec, n)
            print_run(r)
            results.append(r)
        print(f"\nslow: {args.healthy:,} healthy, {args.stalled:,} stalled, {args.broadcasts:,} x "
              f"{args.message_bytes:,} B")
        print(table(results, specs))
        print("targets: every healthy client gets every broadcast; the server's peak RSS at most 100 MiB above "
              "its RSS before the burst")
        _report.print_load_end()
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "results": results})


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
