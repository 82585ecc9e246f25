"""
The fan-out workload: C clients joined to one topic, N broadcasts, against
twisted_phoenix and two plain-Autobahn floors, side by side in one run.

For each run and each server (the order rotates from run to run so that the
machine's noise falls on every server alike):

1. start the server process; it prints its port;
2. warm up: 50 clients join, 5 broadcasts, the clients leave;
3. read the server's RSS (the baseline, after ``gc.collect()``);
4. start the Node load generator(s): C connections, each joined (Phoenix's
   V2 ``phx_join``; the floors answer the same frame);
5. read the server's RSS again: KiB per connection =
   (RSS loaded - RSS baseline) / C;
6. "go": one client pushes N ``broadcast`` events back to back, every client
   counts deliveries until C x N have arrived; deliveries/s =
   C x N / (last delivery - first trigger);
7. stop the generators and the server.

Every child process is killed when the harness ends, however it ends.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import platform
import queue
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JS_DIR = os.path.join(ROOT, "benchmarks", "js")
LOADGEN = os.path.join(JS_DIR, "loadgen.js")

WARMUP_CLIENTS = 50
WARMUP_BROADCASTS = 5


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    argv: tuple[str, ...]
    path: str  # the WebSocket path to connect to


SERVERS: dict[str, Server] = {
    s.name: s
    for s in (
        Server(
            "phoenix",
            "twisted_phoenix (demo app, Channel.broadcast)",
            ("-m", "benchmarks.server_phoenix"),
            "/socket/websocket?vsn=2.0.0",
        ),
        Server(
            "prepared",
            "Autobahn sendPreparedMessage",
            ("-m", "benchmarks.server_autobahn", "prepared"),
            "/",
        ),
        Server(
            "raw",
            "Autobahn transport.write (raw floor)",
            ("-m", "benchmarks.server_autobahn", "raw"),
            "/",
        ),
    )
}


class BenchmarkError(Exception):
    pass


# -- child processes ----------------------------------------------------------------


try:
    # Looked up here, not in the forked child (no dlopen between fork and exec).
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the harness dies, however it dies."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Child:
    """A child process whose stdout lines arrive on a queue; stderr goes to a file."""

    _all: list["Child"] = []

    def __init__(self, name: str, argv: list[str], logdir: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stderr_path = os.path.join(logdir, f"{name}.stderr")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_die_with_parent,
        )
        Child._all.append(self)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\n"))
        self.lines.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def expect(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The next stdout line for which ``predicate`` holds; others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError(f"{self.name}: no answer within {timeout:.0f} s{self._tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise BenchmarkError(f"{self.name} exited (code {self.proc.poll()}){self._tail()}")
            if predicate(line):
                return line

    def _tail(self) -> str:
        try:
            with open(self.stderr_path, "rb") as f:
                text = f.read()[-2000:].decode(errors="replace").strip()
        except OSError:
            return ""
        return f"; stderr:\n{text}" if text else ""

    def stop(self, quit_line: str = "quit", grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.send(quit_line)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self._close()

    def _close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._stderr.close()
        if self in Child._all:
            Child._all.remove(self)

    @classmethod
    def kill_all(cls) -> None:
        for child in list(cls._all):
            child.kill()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB, read from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def ensure_node_modules() -> None:
    if os.path.exists(os.path.join(JS_DIR, "node_modules", "ws", "package.json")):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise BenchmarkError("the load generator needs Node and npm (benchmarks/js)")
    print("Installing the load generator's dependencies (npm ci in benchmarks/js) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True)


# -- one measurement -------------------------------------------------------------------


@dataclass
class Options:
    clients: int = 5000
    broadcasts: int = 100
    runs: int = 3
    servers: tuple[str, ...] = ("phoenix", "prepared", "raw")
    generators: int = 1
    message_bytes: int = 100
    timeout: float = 120.0
    concurrency: int = 200
    profile: str = "none"  # none, cprofile, py-spy
    profile_servers: tuple[str, ...] = ("phoenix",)
    profile_top: int = 25
    memory_breakdown: int = 0  # source lines to show; 0: no tracemalloc run
    json_path: str | None = None
    logdir: str = ""


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
    rss_baseline_kib: int
    rss_loaded_kib: int
    hwm_after_kib: int
    kib_per_connection: float
    server_cpu_seconds: float
    generator_cpu_seconds: float
    generator_busy: float  # the busiest generator's CPU time / its window
    connect_seconds: float
    delivery_bytes: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return self.expected - self.deliveries


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _loadgen(
    opts: Options, name: str, url: str, clients: int, broadcasts: int, trigger: bool
) -> Child:
    node = shutil.which("node")
    if node is None:
        raise BenchmarkError("node is not on PATH")
    argv = [
        node,
        LOADGEN,
        "--url", url,
        "--clients", str(clients),
        "--broadcasts", str(broadcasts),
        "--message-bytes", str(opts.message_bytes),
        "--concurrency", str(opts.concurrency),
        "--timeout", str(opts.timeout),
        "--connect-timeout", str(opts.timeout),
    ]
    if trigger:
        argv.append("--trigger")
    return Child(name, argv, opts.logdir)


def _event(kind: str) -> Callable[[str], bool]:
    return lambda line: line.startswith("{") and json.loads(line).get("event") == kind


def _server_command(server: Child, command: str, answer: str, timeout: float = 60.0) -> str:
    server.send(command)
    return server.expect(lambda line: line.startswith(answer), timeout)


def _rss(server: Child) -> dict[str, int]:
    _server_command(server, "rss", "RSS")  # the server collects garbage first
    return proc_status(server.pid)


def measure(
    opts: Options,
    spec: Server,
    run: int,
    profile: str = "none",
    on_profile: Callable[[Child, str], Any] | None = None,
    memtrace: int = 0,
) -> Result:
    tag = f"{spec.name}-{run}"
    server = Child(tag, [sys.executable, *spec.argv], opts.logdir, env=_env())
    generators: list[Child] = []
    try:
        line = server.expect(lambda l: l.startswith("PORT "), 60)
        url = f"ws://127.0.0.1:{int(line.split()[1])}{spec.path}"

        # Warm up: the code paths of connecting, joining, broadcasting, closing.
        warm = _loadgen(opts, f"{tag}-warmup", url, WARMUP_CLIENTS, WARMUP_BROADCASTS, True)
        warm.expect(_event("ready"), 60)
        warm.send("go")
        done = json.loads(warm.expect(_event("done"), opts.timeout + 30))
        warm.stop()
        if done["missing"]:
            raise BenchmarkError(f"{tag}: the warm-up lost {done['missing']} deliveries")
        time.sleep(1.0)
        baseline = _rss(server)["VmRSS"]
        if memtrace:
            _server_command(server, "memtrace-start", "OK")

        # Connect and join.
        share, extra = divmod(opts.clients, opts.generators)
        for i in range(opts.generators):
            n = share + (1 if i < extra else 0)
            generators.append(_loadgen(opts, f"{tag}-gen{i}", url, n, opts.broadcasts, i == 0))
        readies = [json.loads(g.expect(_event("ready"), opts.timeout + 60)) for g in generators]
        joined = sum(r["joined"] for r in readies)
        connect_seconds = max(r["connect_seconds"] for r in readies)
        if joined < opts.clients:
            errors: collections.Counter[str] = collections.Counter()
            for r in readies:
                errors.update(r["errors"])
            print(f"  ! {tag}: only {joined} of {opts.clients} clients joined; errors: {dict(errors)}", flush=True)
        time.sleep(1.0)
        loaded = _rss(server)["VmRSS"]
        memtrace_lines: list[str] = []
        if memtrace:
            server.send(f"memtrace-report {memtrace}")
            while True:
                line = server.expect(lambda l: True, 120)
                if line == "END":
                    break
                memtrace_lines.append(line)

        # Fan out.
        if profile == "cprofile":
            _server_command(server, "profile-start", "OK")
        if on_profile is not None:
            on_profile(server, "start")
        cpu_before = proc_cpu(server.pid)
        for g in generators:
            g.send("go")
        dones = [json.loads(g.expect(_event("done"), opts.timeout + 60)) for g in generators]
        cpu_after = proc_cpu(server.pid)
        if on_profile is not None:
            on_profile(server, "stop")
        if profile == "cprofile":
            _server_command(server, f"profile-stop {os.path.join(opts.logdir, tag + '.prof')}", "OK")
        hwm = proc_status(server.pid)["VmHWM"]

        trigger_at = dones[0]["trigger_at"]
        last_at = max(d["last_at"] for d in dones)
        deliveries = sum(d["deliveries"] for d in dones)
        expected = sum(d["expected"] for d in dones)
        seconds = (last_at - trigger_at) / 1000.0
        busy = max(
            (d["cpu_user"] + d["cpu_sys"]) / max(1e-9, (d["last_at"] - d["go_at"]) / 1000.0) for d in dones
        )
        sizes = {d["first_delivery_bytes"] for d in dones if d["first_delivery_bytes"] is not None}
        return Result(
            server=spec.name,
            run=run,
            clients=opts.clients,
            joined=joined,
            broadcasts=opts.broadcasts,
            deliveries=deliveries,
            expected=expected,
            seconds=seconds,
            rate=deliveries / seconds if seconds > 0 else 0.0,
            rss_baseline_kib=baseline,
            rss_loaded_kib=loaded,
            hwm_after_kib=hwm,
            kib_per_connection=(loaded - baseline) / max(1, joined),
            server_cpu_seconds=cpu_after - cpu_before,
            generator_cpu_seconds=sum(d["cpu_user"] + d["cpu_sys"] for d in dones),
            generator_busy=busy,
            connect_seconds=connect_seconds,
            delivery_bytes=sizes.pop() if len(sizes) == 1 else None,
            extra={"closed_early": sum(d["closed_early"] for d in dones), "memtrace": memtrace_lines},
        )
    finally:
        for g in generators:
            g.stop()
        server.stop()


# -- the whole benchmark ----------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def machine_info() -> dict[str, str]:
    import autobahn
    import twisted

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(JS_DIR, "node_modules", "ws", "package.json")) as f:
        ws_version = json.load(f)["version"]
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "node": node,
        "ws": ws_version,
        "reactor": _reactor_name(),
    }


def _reactor_name() -> str:
    code = "from twisted.internet import reactor; print(type(reactor).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def print_run(r: Result) -> None:
    missing = f", MISSING {r.missing:,}" if r.missing else ""
    print(
        f"  run {r.run} {r.server:9s} {_fmt_rate(r.rate):>10s} deliveries/s  "
        f"({r.deliveries:,} in {r.seconds:.2f} s{missing}); "
        f"{r.kib_per_connection:.1f} KiB/conn (RSS {r.rss_baseline_kib / 1024:.0f} -> "
        f"{r.rss_loaded_kib / 1024:.0f} MiB, peak {r.hwm_after_kib / 1024:.0f} MiB); "
        f"server CPU {r.server_cpu_seconds:.2f} s ({100 * r.server_cpu_seconds / max(r.seconds, 1e-9):.0f}% busy); generator CPU {r.generator_cpu_seconds:.2f} s "
        f"(busiest {100 * r.generator_busy:.0f}%); connect {r.connect_seconds:.1f} s; "
        f"{r.delivery_bytes} B/delivery",
        flush=True,
    )


def summarize(opts: Options, results: list[Result]) -> str:
    by_server: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_server[r.server].append(r)
    medians = {name: statistics.median(r.rate for r in rs) for name, rs in by_server.items()}

    def ratio(name: str, floor: str) -> str:
        if floor not in medians or not medians[floor]:
            return "-"
        return f"{medians[name] / medians[floor]:.2f}"

    header = (
        "server",
        "deliveries/s (median)",
        "min",
        "max",
        "vs raw",
        "vs prepared",
        "KiB/conn (median)",
        "server CPU/delivery",
        "server busy",
        "generator CPU",
    )
    rows = []
    for name in opts.servers:
        rs = by_server.get(name)
        if not rs:
            continue
        rates = [r.rate for r in rs]
        server_busy = statistics.median(r.server_cpu_seconds / r.seconds for r in rs if r.seconds > 0)
        rows.append(
            (
                SERVERS[name].label,
                _fmt_rate(medians[name]),
                _fmt_rate(min(rates)),
                _fmt_rate(max(rates)),
                ratio(name, "raw"),
                ratio(name, "prepared"),
                f"{statistics.median(r.kib_per_connection for r in rs):.1f}",
                f"{1e6 * statistics.median(r.server_cpu_seconds / max(1, r.deliveries) for r in rs):.2f} µs",
                f"{100 * server_busy:.0f}%",
                f"{statistics.median(r.generator_cpu_seconds for r in rs):.2f} s "
                f"({100 * statistics.median(r.generator_busy for r in rs):.0f}%)",
            )
        )
    return rst_table(header, rows)


def rst_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            (str(c).ljust(w) if i == 0 else str(c).rjust(w)) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def run_fanout(opts: Options) -> list[Result]:
    soft, hard = raise_nofile()
    need = opts.clients + 200  # the server holds every connection, plus its own files
    if soft < need:
        raise BenchmarkError(
            f"open files are capped at {soft} (ulimit -Hn); {opts.clients} clients need {need}"
        )
    ensure_node_modules()
    own_logdir = not opts.logdir
    if own_logdir:
        opts.logdir = tempfile.mkdtemp(prefix="twisted-phoenix-bench-")
    else:
        os.makedirs(opts.logdir, exist_ok=True)
    info = machine_info()
    print(
        f"fanout: {opts.clients:,} clients on one topic, {opts.broadcasts} broadcasts of "
        f"{opts.message_bytes} B, {opts.runs} runs, {opts.generators} generator process(es); "
        f"open files {soft}",
        flush=True,
    )
    print(
        "machine: {nproc} x {cpu}; Python {python}, Twisted {twisted} ({reactor}), "
        "Autobahn {autobahn}, Node {node}, ws {ws}".format(**info),
        flush=True,
    )
    results: list[Result] = []
    started = time.monotonic()
    try:
        for run in range(1, opts.runs + 1):
            k = (run - 1) % len(opts.servers)
            for name in opts.servers[k:] + opts.servers[:k]:
                r = measure(opts, SERVERS[name], run)
                print_run(r)
                results.append(r)
        print()
        print(
            f"fanout: {opts.clients:,} clients, {opts.broadcasts} broadcasts, median of {opts.runs} "
            f"runs ({time.monotonic() - started:.0f} s)"
        )
        print(summarize(opts, results), flush=True)
        if any(r.generator_busy > 0.9 for r in results):
            print(
                "\nWARNING: a load generator was busy over 90% of the time; "
                f"try --generators {opts.generators + 1} (fewer on a 2-core machine).",
                flush=True,
            )
        if any(r.missing for r in results):
            print("\nWARNING: some deliveries never arrived (see the runs above).", flush=True)
        if opts.profile != "none":
            for name in opts.profile_servers:
                print()
                profile(opts, SERVERS[name], opts.profile)
        if opts.memory_breakdown:
            for name in opts.servers:
                print()
                memory_breakdown(opts, SERVERS[name], opts.memory_breakdown)
        if opts.json_path:
            with open(opts.json_path, "w") as f:
                json.dump(
                    {"options": opts.__dict__, "machine": info, "results": [r.__dict__ for r in results]},
                    f,
                    indent=2,
                    default=str,
                )
            print(f"\nraw results written to {opts.json_path}")
    finally:
        Child.kill_all()
        if own_logdir:
            shutil.rmtree(opts.logdir, ignore_errors=True)
    return results


# -- profiling ---------------------------------------------------------------------------


def memory_breakdown(opts: Options, spec: Server, top: int) -> None:
    """One more run with tracemalloc on from the baseline to the loaded RSS reading."""
    r = measure(opts, spec, 0, memtrace=top)
    print(
        f"tracemalloc, {spec.label}: what {r.joined:,} joined clients allocated "
        f"(per connection; RSS under tracemalloc {r.kib_per_connection:.1f} KiB/conn):"
    )
    shown = 0
    rows = []
    everything = ""
    for line in r.extra["memtrace"]:
        size, count, where = line.split(" ", 2)
        if size == "TOTAL":
            everything = f"{int(count) / r.joined:9.0f} B {int(where) / r.joined:7.2f} blocks  in all"
            continue
        shown += int(size)
        rows.append(f"{int(size) / r.joined:9.0f} B {int(count) / r.joined:7.2f} blocks  {_short_path(where)}")
    print("\n".join(rows))
    print(f"{shown / r.joined:9.0f} B in these {len(rows)} lines")
    if everything:
        print(everything)


def _short_path(path: str) -> str:
    for marker in ("site-packages/", ROOT + os.sep):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def profile(opts: Options, spec: Server, how: str) -> None:
    """One more run of ``spec`` with a profiler on the server during the fan-out."""
    tag = f"{spec.name}-0"
    if how == "cprofile":
        r = measure(opts, spec, 0, profile="cprofile")
        print(f"cProfile of {spec.label} during the fan-out (rate under the profiler: "
              f"{_fmt_rate(r.rate)} deliveries/s, {r.deliveries:,} deliveries):")
        import pstats

        stats = pstats.Stats(os.path.join(opts.logdir, f"{tag}.prof"))
        stats.sort_stats("tottime").print_stats(opts.profile_top)
        return

    spy = require_py_spy()
    out = os.path.join(opts.logdir, f"{tag}.py-spy.txt")
    holder: dict[str, subprocess.Popen[bytes]] = {}

    def on_profile(server: Child, phase: str) -> None:
        if phase == "start":
            holder["p"] = start_py_spy(spy, server.pid, out)
            time.sleep(1.0)  # let py-spy attach
        else:
            stop_py_spy(holder["p"])

    r = measure(opts, spec, 0, on_profile=on_profile)
    print(
        f"py-spy of {spec.label} during the fan-out ({_fmt_rate(r.rate)} deliveries/s, "
        f"server CPU {r.server_cpu_seconds:.2f} s):"
    )
    print(collapsed_report(out, opts.profile_top))


def require_py_spy() -> str:
    """The py-spy executable; a BenchmarkError when it is not installed."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchmarkError("py-spy is not installed (pip install py-spy)")
    return spy


def start_py_spy(spy: str, pid: int, out: str, rate: int = 500) -> subprocess.Popen[bytes]:
    """Start sampling process ``pid`` into ``out`` (raw collapsed stacks); give it ~1 s to attach."""
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", out, "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def stop_py_spy(p: subprocess.Popen[bytes]) -> None:
    """Stop a :func:`start_py_spy` sampler; it writes its output as it exits."""
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


def collapsed_report(path: str, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [_strip_line(fr) for fr in stack.split(";")]
            total += n
            own[frames[-1]] += n
            own_lines[_short_path(stack.split(";")[-1])] += n
            for fr in set(frames):
                inclusive[fr] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples", "", "self %   function"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in own.most_common(top)]
    lines += ["", "self %   line"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in own_lines.most_common(top)]
    lines += ["", "incl %   function"]
    lines += [f"{100 * n / total:6.1f}   {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _strip_line(frame: str) -> str:
    # py-spy writes "function (path/to/file.py:123)"; group by function and file.
    name, _, where = frame.partition(" (")
    path = _short_path(where.rstrip(")").rsplit(":", 1)[0])
    return f"{name} ({path})" if path else name
