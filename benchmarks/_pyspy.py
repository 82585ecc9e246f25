"""The py-spy helper: sample a process for a while, then report self and inclusive shares."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time
from typing import Iterator
from contextlib import contextmanager

from benchmarks._proc import ROOT, BenchmarkError, _die_with_parent


def require() -> str:
    """The py-spy executable; a BenchmarkError when it is not installed."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchmarkError("py-spy is not installed (pip install py-spy, or pip install '.[bench]')")
    return spy


def start(pid: int, out: str, rate: int = 500) -> subprocess.Popen[bytes]:
    """Start sampling process ``pid`` into ``out`` (raw collapsed stacks); give it ~1 s to attach."""
    return subprocess.Popen(
        [require(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", out,
         "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )


def stop(p: subprocess.Popen[bytes]) -> None:
    """Stop a :func:`start` sampler; it writes its output as it exits."""
    p.send_signal(signal.SIGINT)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()


@contextmanager
def profiling(pids: dict[str, int], logdir: str, tag: str, rate: int = 500) -> Iterator[dict[str, str]]:
    """py-spy on every process of ``pids`` (name -> pid) for the block; yields name -> output file."""
    outs = {name: os.path.join(logdir, f"{tag}-{name}.py-spy.txt") for name in pids}
    spies = [start(pid, outs[name], rate) for name, pid in pids.items()]
    time.sleep(1.0)  # let py-spy attach
    try:
        yield outs
    finally:
        for p in spies:
            stop(p)


def report(path: str, top: int) -> str:
    """Self and inclusive sample shares per function (and self per line) from py-spy's raw output."""
    if not os.path.exists(path):
        return "(no profile)"
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
            frames = [_function(fr) for fr in stack.split(";")]
            total += n
            own[frames[-1]] += n
            own_lines[short_path(stack.split(";")[-1])] += n
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


def short_path(path: str) -> str:
    for marker in ("site-packages/", ROOT + os.sep):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _function(frame: str) -> str:
    # py-spy writes "function (path/to/file.py:123)"; group by function and file.
    name, _, where = frame.partition(" (")
    path = short_path(where.rstrip(")").rsplit(":", 1)[0])
    return f"{name} ({path})" if path else name
