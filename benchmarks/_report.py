"""The one table printer, and what every run prints about the machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Iterable

from benchmarks._loadgen import ws_version


def rst_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A reStructuredText simple table: the first column left-aligned, the others right-aligned."""
    header = tuple(str(c) for c in header)
    rows = [tuple("" if c is None else str(c) for c in r) for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *rows)] if rows else [len(c) for c in header]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} ms" if x >= 100 else f"{x:.2f} ms"


def mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.0f} MiB"


def rate(x: float) -> str:
    return f"{x:,.0f}"


def counts(d: dict[str, int] | None) -> str:
    """{"refused": 3, "reset": 1} -> "refused 3, reset 1"; "none" when empty."""
    if not d:
        return "none"
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1]))


def merge_counts(*ds: dict[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in ds:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def target(ok: bool | None, text: str) -> str:
    """A target's verdict next to its figure: "met (<= 15 s)" or "MISSED (<= 15 s)"."""
    if ok is None:
        return f"- ({text})"
    return f"{'met' if ok else 'MISSED'} ({text})"


def verdict(ok: bool | None) -> str:
    """A target's verdict for a table column: met, MISSED, or - (not measured)."""
    return "-" if ok is None else "met" if ok else "MISSED"


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
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("node") else "?"
    code = "from twisted.internet import reactor; print(type(reactor).__name__)"
    reactor = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() or "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "autobahn": autobahn.__version__,
        "node": node,
        "ws": ws_version(),
        "reactor": reactor,
    }


def peer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("websockets", "python-socketio", "python-engineio", "aiohttp", "daphne", "channels",
                 "channels-redis", "Django", "redis", "orjson"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    if shutil.which("redis-server"):
        text = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        for part in text.split():
            if part.startswith("v="):
                out["redis-server"] = part[2:]
    return out


def print_machine(info: dict[str, str]) -> None:
    print("machine: {nproc} x {cpu}; Python {python}, Twisted {twisted} ({reactor}), "
          "Autobahn {autobahn}, Node {node}, ws {ws}".format(**info), flush=True)
    print("load average at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


def print_load_end() -> None:
    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if not path:
        return
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=lambda o: getattr(o, "__dict__", str(o)))
    print(f"\nraw results written to {path}", flush=True)
