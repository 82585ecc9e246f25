# -*- test-case-name: tests.test_chat -*-
"""
A chat room with "who is online" and typing indicators: a page, its
script and style, and the channel they talk to.

Serve it with::

    twistd -n phoenix --endpoint twisted_phoenix.examples.chat:Endpoint

and open http://localhost:4000/ (or http://127.0.0.1:4000/).  On a cluster,
each node serves the page and the people on every node see each other::

    twistd -n --pidfile a.pid phoenix --endpoint twisted_phoenix.examples.chat:Endpoint \\
        --name a@127.0.0.1 --port 4000
    twistd -n --pidfile b.pid phoenix --endpoint twisted_phoenix.examples.chat:Endpoint \\
        --name b@127.0.0.1 --port 4001 --connect a@127.0.0.1

The page (``static/index.html``, ``static/chat.js``, ``static/chat.css``)
loads phoenix.js from ``/phoenix/phoenix.mjs``, which the endpoint serves
because it serves static files.  It joins ``room:lobby`` with the name the
user chose, ``{"name": "alice"}``.  The channel (:class:`RoomChannel`):

* refuses a join without a usable name (``{"reason": ...}``);
* tracks the user with Presence, keyed by name, with the meta
  ``{"online_at": ms, "typing": false, "node": "a@127.0.0.1"}``, and pushes
  ``presence_state``; phoenix.js's ``Presence`` then follows the
  ``presence_diff`` broadcasts;
* takes ``new_msg`` ``{"body": text}`` and broadcasts ``new_msg`` ``{"name",
  "body", "at"}`` (``at``: the server's time, in milliseconds) to the room,
  on every node;
* takes ``typing`` ``{"typing": true|false}`` and sets the ``typing`` meta
  (so the indicator reaches every node with the presence diffs); it goes
  back to false by itself after :data:`TYPING_TIMEOUT` seconds, and when
  the user sends a message.

Two people who choose the same name share one entry in the list (one
presence key with two metas): the example has no accounts.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from twisted_phoenix import Channel, Endpoint as BaseEndpoint, Socket, error, ok

__all__ = ["MAX_BODY", "MAX_NAME", "ChatEndpoint", "ChatSocket", "Endpoint", "RoomChannel", "clean_text"]

#: The longest name, in characters.
MAX_NAME = 32
#: The longest message, in characters.
MAX_BODY = 2000
#: Seconds after which "typing" goes back to false without news from the page.
TYPING_TIMEOUT = 6.0


def clean_text(value: Any, limit: int) -> str | None:
    """
    ``value`` as text to show: a string with its surrounding whitespace and
    control characters removed, 1 to ``limit`` characters, else ``None``.
    """
    if not isinstance(value, str):
        return None
    text = "".join(c for c in value if c in "\n\t" or unicodedata.category(c) != "Cc").strip()
    if not text or len(text) > limit:
        return None
    return text


class RoomChannel(Channel):
    """``room:NAME``: messages, presence and typing (see the module docstring)."""

    _typing_timer: Any = None

    def join(self, topic: str, payload: Any) -> Any:
        name = clean_text(payload.get("name") if isinstance(payload, dict) else None, MAX_NAME)
        if name is None or "\n" in name or "\t" in name:
            return error({"reason": f"choose a name of 1 to {MAX_NAME} characters"})
        self.assigns["name"] = name
        self.assigns["typing"] = False
        self.send("after_join")
        return ok({"name": name, "node": self.endpoint.node_name})

    def handle_info(self, message: Any) -> None:
        if message == "after_join":
            presence = self.endpoint.presence
            presence.track(self, self.assigns["name"], {
                "online_at": self._now_ms(), "typing": False, "node": self.endpoint.node_name,
            })
            self.push("presence_state", presence.list(self.topic))
            return None
        if message == "typing_timeout":
            self._typing_timer = None
            self._set_typing(False)
            return None
        return super().handle_info(message)

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "new_msg":
            body = clean_text(payload.get("body") if isinstance(payload, dict) else None, MAX_BODY)
            if body is None:
                return error({"reason": f"a message has 1 to {MAX_BODY} characters"})
            self._set_typing(False)
            self.broadcast("new_msg", {"name": self.assigns["name"], "body": body, "at": self._now_ms()})
            return ok()
        if event == "typing":
            self._set_typing(isinstance(payload, dict) and payload.get("typing") is True)
            return None
        return error({"reason": f"unknown event {event}"})

    def _set_typing(self, typing: bool) -> None:
        if self._typing_timer is not None:
            self._typing_timer.cancel()
            self._typing_timer = None
        if typing:
            self._typing_timer = self.send_after(TYPING_TIMEOUT, "typing_timeout")
        if typing != self.assigns["typing"]:
            self.assigns["typing"] = typing
            self.endpoint.presence.update(self, self.assigns["name"], lambda meta: {**meta, "typing": typing})

    def _now_ms(self) -> int:
        return int(self.endpoint.reactor.seconds() * 1000)


class ChatSocket(Socket):
    """Anyone may connect; the name comes with the join."""

    channels = {"room:*": RoomChannel}

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        return True


class ChatEndpoint(BaseEndpoint):
    """The chat: the socket at ``/socket``, the page at ``/``."""

    sockets = {"/socket": ChatSocket}
    static = {"/": "static"}
    #: A node that stops answering (killed, cut off) takes its people out of
    #: the other nodes' lists after 5 s (Phoenix's default is 30 s): a
    #: heartbeat at least every second, a round every half second.
    presence_options = {"broadcast_period": 0.5, "max_silent_periods": 2, "down_period": 5.0}


#: What ``twistd phoenix --endpoint twisted_phoenix.examples.chat:Endpoint`` loads.
Endpoint = ChatEndpoint
