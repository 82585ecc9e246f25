"""
Child processes and what the harness reads about them in ``/proc``.

:class:`Child` runs a process that dies with the harness (``PR_SET_PDEATHSIG``),
its standard output either read line by line (the generators' JSON events,
the presence nodes' answers) or sent to a log file (the servers).
:func:`sample` is the one place that reads a process's memory, CPU time and
open files.
"""

from __future__ import annotations

import ctypes
import os
import queue
import resource
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchmarkError(Exception):
    """A benchmark could not run (a child failed, an answer did not come)."""


try:
    # Looked up here, not in the forked child (no dlopen between fork and exec).
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the harness dies, however it dies."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _new_session_dying_with_parent() -> None:
    os.setsid()
    _die_with_parent()


def env(*paths: str) -> dict[str, str]:
    """The environment for a child: this tree (and ``paths``) first on ``PYTHONPATH``."""
    out = dict(os.environ)
    parts = [ROOT, *paths] + ([out["PYTHONPATH"]] if out.get("PYTHONPATH") else [])
    out["PYTHONPATH"] = os.pathsep.join(parts)
    out["PYTHONUNBUFFERED"] = "1"
    return out


class Child:
    """
    A child process of the harness.

    ``log`` given: standard output and error go to that file (a server).
    Otherwise standard output arrives line by line on :meth:`expect` and
    standard error goes to ``<logdir>/<name>.stderr``.  ``shell``: run
    ``argv[0]`` with ``sh -c`` in its own process group (an external
    server's command), killed as a group.
    """

    _all: list["Child"] = []

    def __init__(
        self,
        name: str,
        argv: list[str],
        logdir: str,
        env: dict[str, str] | None = None,
        log: str | None = None,
        shell: bool = False,
        cwd: str | None = None,
    ) -> None:
        self.name = name
        self.shell = shell
        self.stderr_path = log or os.path.join(logdir, f"{name}.stderr")
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            argv[0] if shell else argv,
            shell=shell,
            cwd=cwd or ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._stderr if log else subprocess.PIPE,
            stderr=self._stderr,
            preexec_fn=_new_session_dying_with_parent if shell else _die_with_parent,
        )
        Child._all.append(self)
        self.lines: queue.Queue[str | None] = queue.Queue()
        if not log:
            threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

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
        except (BrokenPipeError, OSError, ValueError):
            pass

    def expect(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """The next stdout line for which ``predicate`` holds; others are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchmarkError(f"{self.name}: no answer within {timeout:.0f} s{self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                raise BenchmarkError(f"{self.name} exited (code {self.proc.poll()}){self.tail()}")
            if predicate(line):
                return line

    def tail(self, size: int = 2000) -> str:
        """The end of what the child wrote to its log (or stderr)."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f"; its output ends:\n{text}" if text else ""

    def signal(self, signum: int) -> None:
        if self.proc.poll() is not None:
            return
        try:
            if self.shell:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def stop(self, quit_line: str | None = "quit", grace: float = 10.0, signum: int | None = None) -> None:
        """Ask it to end (a line on stdin, or a signal), wait ``grace`` seconds, then kill it."""
        if self.proc.poll() is None:
            if signum is not None:
                self.signal(signum)
            elif quit_line:
                self.send(quit_line)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
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


# -- /proc -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of a process: memory (KiB), CPU time (s), open file descriptors."""

    rss_kib: int
    hwm_kib: int
    cpu_seconds: float
    fds: int


def sample(pid: int) -> Sample:
    """VmRSS, VmHWM, user + system CPU time and open fds of ``pid``, from ``/proc``."""
    status: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                status[key] = int(value.split()[0])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return Sample(status.get("VmRSS", 0), status.get("VmHWM", 0), cpu_seconds(pid), fds)


def descendants(pid: int) -> list[int]:
    """The children of ``pid``, their children, and so on (from ``/proc``)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def sample_tree(pid: int) -> Sample:
    """:func:`sample` of ``pid`` and of every descendant, added up (their peaks too, an upper bound)."""
    total = sample(pid)
    for child in descendants(pid):
        try:
            s = sample(child)
        except (OSError, ValueError):
            continue  # it just exited
        total = Sample(total.rss_kib + s.rss_kib, total.hwm_kib + s.hwm_kib,
                       total.cpu_seconds + s.cpu_seconds, total.fds + s.fds)
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_listening_on(port: int) -> int | None:
    """The process listening on TCP ``port`` (any address), found through ``/proc``; None if unseen."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    return int(entry)
        except OSError:
            continue
    return None


# -- the machine -------------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard limit (children inherit it); the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    """A TCP port nothing listens on now (on every address)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connection to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
