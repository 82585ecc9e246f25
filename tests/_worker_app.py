"""
A test application for ``twistd phoenix --workers``: the end-to-end test
app (:mod:`tests._apps`) whose ``/socket`` also routes ``where`` and
``room:*`` to :class:`WhereChannel`, which tells a client which node (which
worker) serves it.

Serve it with ``twistd -n phoenix --workers 2 --endpoint tests._worker_app:WorkersEndpoint``.
"""

from __future__ import annotations

from typing import Any

from twisted_phoenix import Channel, ok
from twisted_phoenix.examples.hello_sockets import UserSocket

from ._apps import ConformanceEndpoint


class WhereChannel(Channel):
    """
    Joins with ``{"node": Node.self(), "nodes": Node.list()}`` of the node
    serving the connection; ``where`` answers the same; ``shout`` broadcasts
    its payload to the topic (every node's subscribers).
    """

    def join(self, topic: str, payload: Any) -> Any:
        return ok(self._where())

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "where":
            return ok(self._where())
        if event == "shout":
            self.broadcast("shout", payload)
            return ok()
        return super().handle_in(event, payload)

    def _where(self) -> dict[str, Any]:
        node = self.endpoint.pubsub.adapter
        listed = node.list() if hasattr(node, "list") else []
        return {"node": self.endpoint.node_name, "nodes": listed}


class WorkersSocket(UserSocket):
    """The demo's UserSocket plus ``where`` and ``room:*``."""

    channels = {**UserSocket.channels, "where": WhereChannel, "room:*": WhereChannel}


class WorkersEndpoint(ConformanceEndpoint):
    """The end-to-end test endpoint, its ``/socket`` with :class:`WhereChannel`."""

    sockets = {**ConformanceEndpoint.sockets, "/socket": WorkersSocket}
