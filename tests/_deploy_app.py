"""
The application ``tests/test_deployment.py`` serves behind real proxies, in
place of the deployment guide's ``myapp:Endpoint``: the demo's ``/socket``
with ``check_origin = True`` (so ``--host`` decides, as for an application
of one's own; the demo lists its origins), and ``/info_socket``, whose
``whoami`` topic answers with what the server saw of the connection.
"""

from __future__ import annotations

from typing import Any

from twisted_phoenix import Channel, Socket, ok
from twisted_phoenix.examples.hello_sockets import HelloSocketsEndpoint, UserSocket


class WhoamiChannel(Channel):
    """Joins with what ``connect`` saw: the peer, the ``x-`` headers, the URI's host."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok(self.assigns["seen"])


class InfoSocket(Socket):
    """Accepts everyone and keeps its ``connect_info``'s peer and proxy headers."""

    channels = {"whoami": WhoamiChannel}

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        self.assigns["seen"] = {
            "peer": connect_info["peer_data"]["address"],
            "x_headers": dict(connect_info["x_headers"]),
            "host": connect_info["uri"]["host"],
        }
        return True


class Endpoint(HelloSocketsEndpoint):
    """The demo's ``/socket``, ``check_origin = True``, and ``/info_socket``."""

    sockets = {"/socket": UserSocket, "/info_socket": InfoSocket}
    check_origin = True
