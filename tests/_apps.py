"""
A test application for the end-to-end tests: the HelloSockets demo endpoint
plus two sockets that let a phoenix.js client do what only server code can.

Serve it with ``twistd -n phoenix --endpoint tests._apps:ConformanceEndpoint``.

* ``/socket`` and ``/auth_socket``: the demo's own sockets, unchanged.
* ``/control_socket``: ``control:*`` → :class:`ControlChannel`, whose
  ``broadcast`` event calls ``Endpoint.broadcast(topic, event, payload)``
  (e.g. ``request_ping`` to ``ping``, or ``disconnect`` to a socket id).
* ``/token_socket``: ``auth_token = True``; the token phoenix.js sends in
  ``Sec-WebSocket-Protocol`` must verify like the demo's ``token`` param;
  ``whoami`` → :class:`WhoAmIChannel`, which joins with ``{"user_id": ID}``.
"""

from __future__ import annotations

from typing import Any

from twisted_phoenix import Channel, Socket, error, ok
from twisted_phoenix.examples.hello_sockets import MAX_AGE, SALT, HelloSocketsEndpoint
from twisted_phoenix.token import verify


class ControlChannel(Channel):
    """Lets a client drive ``Endpoint.broadcast``."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "broadcast":
            self.endpoint.broadcast(payload["topic"], payload["event"], payload["payload"])
            return ok()
        return error({"reason": f"unknown event {event}"})


class ControlSocket(Socket):
    """Anyone may connect (tests only)."""

    channels = {"control:*": ControlChannel}


class WhoAmIChannel(Channel):
    """Tells the client which user its socket authenticated as."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok({"user_id": self.assigns["user_id"]})


class TokenSocket(Socket):
    """Authenticates with phoenix.js's ``authToken`` option."""

    auth_token = True
    channels = {"whoami": WhoAmIChannel}

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        token = connect_info.get("auth_token")
        if not isinstance(token, str):
            return False
        result = verify(self.endpoint.secret_key_base, SALT, token, max_age=MAX_AGE, clock=self.endpoint.reactor)
        if not result.ok:
            return False
        self.assigns["user_id"] = result.data
        return True


class ConformanceEndpoint(HelloSocketsEndpoint):
    """The demo endpoint plus the test sockets."""

    sockets = {
        **HelloSocketsEndpoint.sockets,
        "/control_socket": ControlSocket,
        "/token_socket": TokenSocket,
    }
