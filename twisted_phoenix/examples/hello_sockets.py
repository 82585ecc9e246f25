# -*- test-case-name: tests.test_hello_sockets -*-
"""
HelloSockets, the demo application of the Real-Time Phoenix book, in Python.

``twistd -n phoenix`` serves it on port 4000:

* ``/socket``, no authentication: ``ping`` and ``ping:*`` → :class:`PingChannel`,
  ``wild:*`` → :class:`WildcardChannel`, ``tracked`` → :class:`TrackedChannel`
  (presence keyed by the connect param ``user_id``).
* ``/auth_socket``: the ``token`` param must be a token signed with the salt
  ``"salt identifier"`` (``twisted-phoenix token USER_ID`` prints one);
  ``ping`` → :class:`PingChannel`, ``user:*`` → :class:`AuthChannel`,
  ``recurring`` → :class:`RecurringChannel`, ``tracked`` →
  :class:`TrackedChannel` (presence keyed by the token's user id).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.logger import Logger

from twisted_phoenix import Channel, Endpoint, Socket, Stop, error, ok
from twisted_phoenix.token import sign, verify

#: The salt the book's AuthSocket uses.
SALT = "salt identifier"
MAX_AGE = 86400


class PingChannel(Channel):
    """Answers pings; ``request_ping`` broadcasts come back as ``send_ping``."""

    intercept = ["request_ping"]

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "ping":
            return ok({"ping": "pong"})
        if event.startswith("ping:"):
            return ok({"ping": event[len("ping:"):]})
        if event == "pong":
            return None
        if event == "ding":
            return Stop("shutdown", ok({"msg": "shutting down"}))
        if event == "param_ping":
            if isinstance(payload, dict) and payload.get("error") is True:
                return error({"reason": "You asked for this!"})
            return ok(payload)
        if event == "broadcast":
            self.broadcast("broadcast", payload)
            return None
        return super().handle_in(event, payload)  # unhandled: the channel crashes

    def handle_out(self, event: str, payload: Any) -> None:
        if event == "request_ping":
            self.push("send_ping", {**payload, "from_node": self.endpoint.node_name})


class WildcardChannel(Channel):
    """Joins ``wild:A:B`` only when B is twice A."""

    def join(self, topic: str, payload: Any) -> Any:
        parts = topic.split(":")
        if len(parts) == 3 and _is_int(parts[1]) and _is_int(parts[2]):
            if int(parts[2]) == 2 * int(parts[1]):
                return ok()
        return error()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "ping":
            return ok({"ping": "pong"})
        return super().handle_in(event, payload)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


class AuthChannel(Channel):
    """``user:ID`` may only be joined by user ID."""

    def join(self, topic: str, payload: Any) -> Any:
        if topic == f"user:{self.assigns['user_id']}":
            return ok()
        return error({"reason": "unauthorized"})


class RecurringChannel(Channel):
    """
    Pushes a fresh token for this user every ``RECURRING_MS`` (5 s), the
    first one period after the join (the book's ``Process.send_after``).
    """

    def join(self, topic: str, payload: Any) -> Any:
        self.send_after(recurring_seconds(), "send_token")
        return ok()

    def handle_info(self, message: Any) -> None:
        if message == "send_token":
            token = sign(
                self.endpoint.secret_key_base, SALT, self.assigns["user_id"], clock=self.endpoint.reactor
            )
            self.push("new_token", {"token": token})
            self.send_after(recurring_seconds(), "send_token")
            return None
        return super().handle_info(message)


class TrackedChannel(Channel):
    """
    ``tracked``: tracks this connection's user with ``{"online_at": <unix
    seconds>}`` and pushes ``presence_state`` after the join; phoenix.js's
    ``Presence`` then follows the ``presence_diff`` broadcasts.

    The presence key is the socket's user (``/auth_socket``: the token's
    user id) or, on ``/socket``, the join payload's ``"user_id"``, else
    ``"anonymous"``.
    """

    def join(self, topic: str, payload: Any) -> Any:
        if self.assigns.get("user_id") is None:
            user_id = payload.get("user_id") if isinstance(payload, dict) else None
            if isinstance(user_id, bool) or not isinstance(user_id, (str, int)) or user_id == "":
                user_id = "anonymous"
            self.assigns["user_id"] = user_id
        self.send("after_join")
        return ok()

    def handle_info(self, message: Any) -> None:
        if message == "after_join":
            presence = self.endpoint.presence
            online_at = int(self.endpoint.reactor.seconds())
            presence.track(self, str(self.assigns["user_id"]), {"online_at": online_at})
            self.push("presence_state", presence.list(self.topic))
            return None
        return super().handle_info(message)


def recurring_seconds() -> float:
    """The period of :class:`RecurringChannel`: ``RECURRING_MS`` or 5 s."""
    return int(os.environ.get("RECURRING_MS", "5000")) / 1000.0


class UserSocket(Socket):
    """The book's UserSocket: anyone may connect."""

    channels = {
        "ping": PingChannel,
        "ping:*": PingChannel,
        "wild:*": WildcardChannel,
        "tracked": TrackedChannel,
    }

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        return True


class AuthSocket(Socket):
    """The book's AuthSocket: a signed token is required."""

    channels = {
        "ping": PingChannel,
        "user:*": AuthChannel,
        "recurring": RecurringChannel,
        "tracked": TrackedChannel,
    }
    log = Logger()

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        token = params.get("token")
        if not isinstance(token, str):
            return False
        result = verify(
            self.endpoint.secret_key_base, SALT, token, max_age=MAX_AGE, clock=self.endpoint.reactor
        )
        if not result.ok:
            self.log.warn("AuthSocket refused a connection: token {error}", error=result.error)
            return False
        self.assigns["user_id"] = result.data
        return True

    def id(self) -> str:
        return f"auth_socket:{self.assigns['user_id']}"


class HelloSocketsEndpoint(Endpoint):
    """The demo endpoint."""

    sockets = {"/socket": UserSocket, "/auth_socket": AuthSocket}
    check_origin = ["//localhost", "//127.0.0.1"]


#: What ``twistd phoenix --endpoint`` loads by default.
Endpoint = HelloSocketsEndpoint  # type: ignore[misc]
