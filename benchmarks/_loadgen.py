"""
The Node load generator, ``benchmarks/js/loadgen.js``: one process per
:class:`Generator`, a subcommand and its options; JSON events come back on
its standard output, commands go to its standard input (see the comment at
the top of ``loadgen.js``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from benchmarks._proc import ROOT, BenchmarkError, Child

JS_DIR = os.path.join(ROOT, "benchmarks", "js")
LOADGEN = os.path.join(JS_DIR, "loadgen.js")


def ensure_node_modules() -> None:
    """``npm ci`` in benchmarks/js on first use (its one dependency: ``ws``)."""
    if os.path.exists(os.path.join(JS_DIR, "node_modules", "ws", "package.json")):
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise BenchmarkError("the load generator needs Node 18+ and npm (benchmarks/js)")
    print("Installing the load generator's dependencies (npm ci in benchmarks/js) ...", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True)


def ws_version() -> str:
    try:
        with open(os.path.join(JS_DIR, "node_modules", "ws", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return "?"


def _argv(options: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


class Generator:
    """One ``node loadgen.js <subcommand>`` process."""

    def __init__(self, logdir: str, name: str, subcommand: str, wait: float = 120.0, **options: Any) -> None:
        node = shutil.which("node")
        if node is None:
            raise BenchmarkError("node is not on PATH")
        self.name = name
        self.wait = wait  # seconds to wait for an event, by default
        self.child = Child(name, [node, LOADGEN, subcommand, *_argv(options)], logdir)

    @property
    def pid(self) -> int:
        return self.child.pid

    def event(self, kind: str, timeout: float | None = None) -> dict[str, Any]:
        """The next event ``kind`` it prints (others are skipped)."""
        def wanted(line: str) -> bool:
            if not line.startswith("{"):
                return False
            event = json.loads(line)
            if event.get("event") == "error":
                raise BenchmarkError(f"{self.name}: {event.get('message')}")
            return event.get("event") == kind

        return json.loads(self.child.expect(wanted, self.wait if timeout is None else timeout))

    def command(self, line: str) -> None:
        self.child.send(line)

    def ask(self, line: str, kind: str, timeout: float | None = None) -> dict[str, Any]:
        self.command(line)
        return self.event(kind, timeout)

    def stop(self) -> None:
        self.child.stop(grace=10.0)

    def kill(self) -> None:
        self.child.kill()


def split(total: int, parts: int) -> list[int]:
    """``total`` clients over ``parts`` processes, as evenly as possible."""
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]
