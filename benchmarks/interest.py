"""
Interest routing on the cluster links: what a node without subscribers
saves, with routing off and on, side by side in one run.

Three ``twistd -n phoenix`` nodes of one cluster (``--name a/t/c@127.0.0.1``,
a shared ``--cookie`` and their own ``--epmd-port``; T and C ``--connect
a@127.0.0.1``), the demo app:

* **A** holds every subscriber (S clients joined to ``ping``);
* **T** holds the trigger, one client joined to ``ping`` that pushes
  ``broadcast``: every broadcast starts on T;
* **C** holds no client at all: no node needs to send it a broadcast on
  ``ping``.

Every node runs with ``--event-rate none`` (the trigger pushes every
broadcast, more than a connection's default burst of 200).  Two modes, every
node started the same way but for one option:

``off``
    ``--no-interest-routing`` on every node: every broadcast crosses to A
    and to C (the mesh as it was);
``on``
    the default: T sends ``ping``'s broadcasts to A only.

For each run and each mode (the order alternates from run to run):

1. start the nodes; wait until each has logged its links to the two others;
2. warm up: 20 subscribers on A, 5 broadcasts (the probe waits until
   broadcasts from T reach A);
3. connect the S subscribers; then the trigger pushes N broadcasts of
   ``--message-bytes`` back to back; over that fan-out, each node's CPU
   time (``/proc/<pid>/stat``) and the bytes it received on its TCP
   connections (``bytes_received`` from ``ss -tinp``: the links' TLS
   records on C, which has no client; the links and the clients' frames on
   A and T), and every delivery is counted (none may be missing in either
   mode);
4. stop the generator and the nodes.

The table gives the medians: deliveries/s, and for each node its CPU time
and the bytes it received per broadcast.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import _cli, _report
from benchmarks._loadgen import Generator
from benchmarks._proc import BenchmarkError
from benchmarks._servers import Server, start_mesh, stop_all
from benchmarks.cluster import connect_clients, warm_up

NAME = "interest"
HELP = "interest routing on the cluster links, off vs on: bytes and CPU on a node without subscribers"
MODES = ("off", "on")
LABELS = {
    "off": "off: --no-interest-routing (every broadcast to every node)",
    "on": "on: the default (broadcasts only to nodes with subscribers)",
}
KEYS = ("A", "T", "C")

WARMUP_CLIENTS = 20

#: Seconds the nodes have to link to each other.
LINK_TIMEOUT = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=100, help="subscribers on A (100)")
    p.add_argument("--broadcasts", type=int, default=2000, help="broadcasts from T, back to back (2000)")
    p.add_argument("--message-bytes", type=int, default=1000, help="bytes of each broadcast's JSON text (1000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each mode, interleaved (3)")
    p.add_argument("--modes", default="off,on", help="comma-separated, from: off, on (off,on)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed for connecting, and for a fan-out (120)")
    p.add_argument("--concurrency", type=int, default=200, help="connection attempts in flight (200)")
    _cli.add_output(p)


@dataclass
class Result:
    mode: str
    run: int
    clients: int
    joined: int
    broadcasts: int
    deliveries: int
    expected: int
    seconds: float
    rate: float
    cpu: dict[str, float]  # node -> CPU seconds over the fan-out
    read: dict[str, int]  # node -> bytes received over the fan-out
    settings: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.expected - self.deliveries


def received_bytes(pids: dict[str, int | None]) -> dict[str, int]:
    """
    Bytes each process has received on its established TCP connections, by
    key: the ``bytes_received`` of every socket it holds, from ``ss -tinp``
    (iproute2).  (``rchar`` of ``/proc/<pid>/io`` does not count ``recv``.)
    """
    if shutil.which("ss") is None:
        raise BenchmarkError("this workload reads TCP byte counts with ss: apt-get install iproute2")
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True,
                         check=True).stdout
    by_pid = {pid: key for key, pid in pids.items() if pid is not None}
    totals = {key: 0 for key in pids}
    owners: list[str] = []
    for line in out.splitlines():
        if not line[:1].isspace():
            owners = [by_pid[int(m)] for m in re.findall(r"pid=(\d+)", line) if int(m) in by_pid]
            continue
        found = re.search(r"bytes_received:(\d+)", line)
        if found and owners:
            totals[owners[0]] += int(found.group(1))
    return totals


class Topology:
    """The three nodes of one mode."""

    def __init__(self, logdir: str, mode: str, tag: str) -> None:
        self.logdir = logdir
        self.mode = mode
        self.tag = tag
        self.nodes: dict[str, Server] = {}

    @property
    def options(self) -> list[str]:
        # The trigger pushes every broadcast: past 200 back to back the
        # per-connection event rate limit would refuse them.
        return ["--event-rate", "none", *(["--no-interest-routing"] if self.mode == "off" else [])]

    def start(self) -> None:
        self.nodes = start_mesh(self.logdir, self.tag, KEYS, self.options)
        self._wait_linked()

    def _wait_linked(self) -> None:
        """Until every node has logged a link to each of the two others."""
        deadline = time.monotonic() + LINK_TIMEOUT
        wanted = {key: [f"Node {other.lower()}@127.0.0.1 connected to {key.lower()}@127.0.0.1"
                        for other in KEYS if other != key] for key in KEYS}
        while True:
            missing = [key for key in KEYS if not all(line in self.log(key) for line in wanted[key])]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.tag}: nodes {missing} did not link within {LINK_TIMEOUT:.0f} s")
            time.sleep(0.1)

    def log(self, key: str) -> str:
        try:
            with open(os.path.join(self.logdir, f"{self.nodes[key].tag}.log"), encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    @property
    def settings(self) -> str:
        return f"--name a/t/c@127.0.0.1 --cookie C --epmd-port P {' '.join(self.options)}; t, c: --connect a@127.0.0.1"

    def cpu(self) -> dict[str, float]:
        return {key: node.cpu() for key, node in self.nodes.items()}

    def read(self) -> dict[str, int]:
        return received_bytes({key: node.pid for key, node in self.nodes.items()})

    def stop(self) -> None:
        stop_all(self.nodes)


def measure(ws: _cli.Run, opts: argparse.Namespace, mode: str, run: int) -> Result:
    tag = f"{mode}-{run}"
    topo = Topology(ws.logdir, mode, tag)
    gens: list[Generator] = []

    def gen(name: str, clients: int, probe: bool = False) -> Generator:
        g = Generator(ws.logdir, name, "clients", wait=opts.timeout + 60, url=[topo.nodes["A"].url()],
                      trigger_url=topo.nodes["T"].url(), clients=clients, message_bytes=opts.message_bytes,
                      concurrency=opts.concurrency, timeout=opts.timeout, connect_timeout=opts.timeout,
                      probe=probe)
        gens.append(g)
        return g

    try:
        topo.start()
        warm_up(gen(f"{tag}-warmup", WARMUP_CLIENTS, probe=True), WARMUP_CLIENTS, tag)
        g = gen(f"{tag}-fanout", opts.clients)
        joined = connect_clients(g, opts.clients)
        time.sleep(1.0)
        cpu_before, read_before = topo.cpu(), topo.read()
        done = g.ask(f"fanout {opts.broadcasts}", "done")
        cpu_after, read_after = topo.cpu(), topo.read()
        g.stop()
        seconds = (done["last_at"] - done["trigger_at"]) / 1000.0 if done["trigger_at"] else 0.0
        return Result(
            mode=mode,
            run=run,
            clients=opts.clients,
            joined=joined["joined"],
            broadcasts=opts.broadcasts,
            deliveries=done["deliveries"],
            expected=done["expected"],
            seconds=seconds,
            rate=done["deliveries"] / seconds if seconds > 0 else 0.0,
            cpu={k: cpu_after[k] - cpu_before[k] for k in KEYS},
            read={k: read_after[k] - read_before[k] for k in KEYS},
            settings=topo.settings,
            extra={"commands": {k: n.command_line for k, n in topo.nodes.items()}},
        )
    finally:
        for g in gens:
            g.kill()
        topo.stop()


def print_run(r: Result, broadcasts: int) -> None:
    missing = f", MISSING {r.missing:,}" if r.missing else ""
    nodes = "; ".join(
        f"{k} CPU {r.cpu[k]:.2f} s, received {r.read[k] / 1024:,.0f} KiB ({r.read[k] / broadcasts:,.0f} B/broadcast)"
        for k in KEYS
    )
    print(f"  run {r.run} {r.mode:3s} {_report.rate(r.rate):>10s} deliveries/s ({r.deliveries:,} in "
          f"{r.seconds:.2f} s{missing}); {nodes}", flush=True)


def summarize(modes: tuple[str, ...], results: list[Result]) -> str:
    by: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by[r.mode].append(r)
    header = ("mode", "server options", "deliveries/s", "missing",
              "C received/broadcast", "C CPU", "T CPU", "A CPU", "A received/broadcast")
    rows = []
    for mode in modes:
        rs = by.get(mode)
        if not rs:
            continue

        def med(f: Any) -> float:
            return statistics.median(f(r) for r in rs)

        rows.append((
            LABELS[mode],
            rs[0].settings,
            _report.rate(med(lambda r: r.rate)),
            f"{sum(r.missing for r in rs):,}",
            f"{med(lambda r: r.read['C'] / r.broadcasts):,.0f} B",
            f"{med(lambda r: r.cpu['C']):.2f} s",
            f"{med(lambda r: r.cpu['T']):.2f} s",
            f"{med(lambda r: r.cpu['A']):.2f} s",
            f"{med(lambda r: r.read['A'] / r.broadcasts):,.0f} B",
        ))
    return _report.rst_table(header, rows)


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.clients, args.broadcasts, args.runs, args.message_bytes) < 1:
        parser.error("counts must be positive")
    modes = _cli.split(args.modes)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"unknown mode(s): {', '.join(unknown) or '(none)'}")
    with _cli.workspace(args, need_files=args.clients + 200) as ws:
        print(f"interest: {args.clients:,} subscribers of ping on A, {args.broadcasts:,} broadcasts of "
              f"{args.message_bytes} B from T, nobody on C; {args.runs} runs of {', '.join(modes)}", flush=True)
        results: list[Result] = []
        started = time.monotonic()
        for n, mode in _cli.interleaved(args.runs, modes):
            r = measure(ws, args, mode, n)
            print_run(r, args.broadcasts)
            results.append(r)
        print()
        print(f"interest: median of {args.runs} runs ({time.monotonic() - started:.0f} s); CPU and bytes received "
              f"over the fan-out of {args.broadcasts:,} broadcasts")
        print(summarize(modes, results), flush=True)
        _report.print_load_end()
        if any(r.missing for r in results):
            print("\nWARNING: some deliveries never arrived (see the runs above).", flush=True)
        _report.write_json(args.json_path, {"options": vars(args), "machine": ws.machine, "results": results})


def register(sub: Any) -> None:
    _cli.subcommand(sub, NAME, HELP, __doc__, add_arguments, run)
