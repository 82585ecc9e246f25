# -*- test-case-name: tests.test_presence_cluster -*-
"""
The demo app tuned for presence cluster tests (``twistd phoenix --endpoint
tests._presence_apps:PresenceClusterEndpoint``):

* short presence periods (:data:`PRESENCE_OPTIONS`), so that a silent node
  is down within seconds;
* on ``/socket``, the topic ``tracked`` also takes an ``update`` event whose
  payload is merged into this connection's meta (``Presence.update``);
* ``/control``, topic ``control``: a test's hooks into the node.  Its events:

  - ``partition`` ``{"peer": NAME}``: drop the cluster link to ``NAME`` and
    refuse to link it again, both ways, until ``heal``.  The process keeps
    running: only the link goes, as in a network partition.
  - ``heal`` ``{"peer": NAME}``: stop refusing; the nodes relink by themselves
    (their retries, with backoff).
  - ``links``: replies ``{"links": [names of the linked nodes]}``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from twisted_phoenix import Channel, Socket, error, ok
from twisted_phoenix.cluster.link import RejectedCall
from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, TrackedChannel, UserSocket

__all__ = ["PRESENCE_OPTIONS", "PresenceClusterEndpoint"]

log = Logger()

#: A gossip round every 0.2 s, an empty heartbeat at least every 0.4 s
#: (``max_silent_periods`` 2), down after 2 s of silence (five heartbeats:
#: a loaded machine does not make a live node look down), dropped after 60 s
#: (longer than any test: a restarted node's old entries go because it
#: restarted, not because time passed).
PRESENCE_OPTIONS: dict[str, Any] = {
    "broadcast_period": 0.2,
    "max_silent_periods": 2,
    "down_period": 2.0,
    "permdown_period": 60.0,
}


class UpdatableTrackedChannel(TrackedChannel):
    """``tracked``, plus ``update``: merge the payload into this connection's meta."""

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "update" and isinstance(payload, dict):
            presence = self.endpoint.presence
            ref = presence.update(self, self.assigns["user_id"], lambda meta: {**meta, **payload})
            if ref is None:
                return error({"reason": "not tracked"})
            return ok({"phx_ref": ref})
        return super().handle_in(event, payload)


class PresenceSocket(UserSocket):
    channels = {**UserSocket.channels, "tracked": UpdatableTrackedChannel}


class _Partition:
    """
    Cuts this node off from some peers: closes the links and refuses new
    ones, whichever side opens them.  Installed on the node instance.
    """

    def __init__(self, node: Any) -> None:
        self.node = node
        self.blocked: set[str] = set()
        connect, hello_received = node._connect, node._hello_received

        def _connect(target: str, address: str | None = None, *, quiet: bool = False) -> Any:
            peer = target.partition("=")[0]
            if peer in self.blocked:
                log.info("Partitioned: not linking to {peer}", peer=peer)
                return defer.succeed(False)
            return connect(target, address, quiet=quiet)

        def _hello_received(link: Any, info: dict[str, Any]) -> Any:
            if link.peer in self.blocked:
                log.info("Partitioned: refused a link from {peer}", peer=link.peer)
                raise RejectedCall("partitioned")
            return hello_received(link, info)

        node._connect = _connect
        node._hello_received = _hello_received

    def cut(self, peer: str) -> None:
        self.blocked.add(peer)
        link = self.node.links.get(peer)
        log.info("Partitioned from {peer}", peer=peer)
        if link is not None:
            link.close()

    def heal(self, peer: str) -> None:
        self.blocked.discard(peer)
        log.info("Partition from {peer} healed", peer=peer)


class ControlChannel(Channel):
    """``control``: see the module docstring."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        node = self.endpoint.pubsub.adapter
        if node is None:
            return error({"reason": "not a cluster node"})
        if event == "links":
            return ok({"links": node.list()})
        peer = payload.get("peer") if isinstance(payload, dict) else None
        if event in ("partition", "heal") and isinstance(peer, str):
            partition = getattr(node, "_test_partition", None)
            if partition is None:
                partition = node._test_partition = _Partition(node)
            if event == "partition":
                partition.cut(peer)
            else:
                partition.heal(peer)
            return ok({"links": node.list()})
        return super().handle_in(event, payload)


class ControlSocket(Socket):
    channels = {"control": ControlChannel}

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        return True


class PresenceClusterEndpoint(HelloSocketsEndpoint):
    """The demo app with short presence periods, ``update``, and ``/control``."""

    presence_options = PRESENCE_OPTIONS
    sockets = {"/socket": PresenceSocket, "/control": ControlSocket}
