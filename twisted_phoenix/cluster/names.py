# -*- test-case-name: tests.test_cluster_names -*-
"""
Node names, as in Erlang: ``name@host`` (``server@127.0.0.1``).
"""

from __future__ import annotations

import re
import socket as _socket
from typing import NamedTuple

__all__ = ["NO_NODE", "NodeName", "parse_node_name", "parse_address", "is_local_host"]

#: The name of a node that is not part of a cluster (Erlang's ``nonode@nohost``).
NO_NODE = "nonode@nohost"

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HOST = re.compile(r"[A-Za-z0-9_.:-]+")


class NodeName(NamedTuple):
    """A parsed node name."""

    name: str
    host: str

    def __str__(self) -> str:
        return f"{self.name}@{self.host}"


def parse_node_name(text: str) -> NodeName:
    """
    Parse ``name@host``.

    :raises ValueError: for anything else.
    """
    name, sep, host = text.partition("@")
    if not sep or not _NAME.fullmatch(name) or not _HOST.fullmatch(host):
        raise ValueError(f"a node name is name@host, e.g. server@127.0.0.1, not {text!r}")
    return NodeName(name, host)


def parse_address(text: str) -> tuple[str, int]:
    """
    Parse ``host:port`` (``[::1]:9100`` for IPv6).

    :raises ValueError: when it is not one.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an address is host:port, not {text!r}")
    return host, int(port)


def is_local_host(host: str) -> bool:
    """
    Whether ``host`` names this machine, so that its nodes are found through
    the local port mapper.
    """
    if host in ("localhost", "::1") or host.startswith("127."):
        return True
    return host in (_socket.gethostname(), _socket.getfqdn())
