# -*- test-case-name: tests.test_workers -*-
"""
``twistd -n phoenix --workers N``: one server on every core.

A Python process serves on one core.  With ``--workers N`` (``auto``: one
per core this process may run on), twistd's process becomes a small
**parent** that binds every ``--listen`` and serves no client itself, and N
**worker** processes share its listening sockets (each adopts them, as
Twisted's "Scaling a server across multiple processes" shows: the socket's
file descriptor passed with ``spawnProcess``'s ``childFDs``, then
``reactor.adoptStreamPort``).  The kernel hands each new connection to one
of the workers.

Each worker serves the same endpoint with the same options as a single
process would, and is a node of a cluster made of the workers (and of any
other node), so broadcasts, presence and long-poll sessions span them:

* with ``--name base@host`` the workers are ``base-1@host`` ...
  ``base-N@host``, registered with the host's port mapper like any node
  (``--connect`` one of them from another node); with ``--dist-port P``
  worker *i* listens for links on ``P + i - 1``;
* without ``--name``, the workers still link to one another, under
  generated names (``phoenix-<random>-<i>@<hostname>``), with the
  ``--cookie`` (or ``$PHOENIX_COOKIE``) if one is configured, else a random
  cookie the parent makes; the parent serves them a port mapper of their
  own on a free loopback port, so that they never meet another cluster's
  mapper, and no race for a port is possible;
* ``--connect other@host`` links every worker to the other nodes too;
  ``--pubsub redis://...`` carries their broadcasts through Redis, as for
  any node.

The parent restarts a worker that dies (after 0.1 s, then backing off up
to 30 s while it keeps dying within 30 s of its start), and on SIGTERM or
SIGINT drains: it closes its listening sockets, tells every worker to drain
(each stops accepting, closes its WebSocket clients with 1012 and ends its
long-poll sessions, as Phoenix's drainer does, then leaves the cluster),
waits for them at most ``--drain-timeout`` seconds and a margin, kills
what is left, and exits 0.

:mod:`.supervisor` is the parent, :mod:`.worker` the worker's side,
:mod:`.adopt` the reactor wrapper that turns a ``--listen`` description
into an adopted socket.
"""

from __future__ import annotations

import os

from ..cluster.names import parse_node_name

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "parse_workers", "worker_names"]

#: Seconds the workers have to drain at shutdown, by default (then the
#: parent kills what is left, after a margin for leaving the cluster).
DEFAULT_DRAIN_TIMEOUT = 15.0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_workers(text: str) -> int:
    """
    A ``--workers`` value: a positive number, or ``auto`` for
    :func:`available_cores`.

    :raises ValueError: for anything else.
    """
    if text.strip().lower() == "auto":
        return available_cores()
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"--workers takes a positive number or auto, not {text!r}")
    return int(text)


def worker_names(name: str, count: int) -> list[str]:
    """
    The node names of ``count`` workers of the node ``name``:
    ``base@host`` → ``base-1@host`` ... ``base-N@host``.
    """
    base, host = parse_node_name(name)
    return [f"{base}-{i}@{host}" for i in range(1, count + 1)]
