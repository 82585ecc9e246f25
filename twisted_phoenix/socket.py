# -*- test-case-name: tests.test_socket -*-
"""
The user socket: authenticates a connection and routes its topics to
channels (Phoenix's ``use Phoenix.Socket``).

Example::

    class UserSocket(Socket):
        channels = {"room:*": RoomChannel, "ping": PingChannel}

        def connect(self, params, connect_info):
            result = verify(self.endpoint.secret_key_base, "user socket", params.get("token"))
            if not result.ok:
                return False
            self.assigns["user_id"] = result.data
            return True

        def id(self):
            return f"user_socket:{self.assigns['user_id']}"

``Endpoint.broadcast(socket_id, "disconnect", {})`` then closes every
connection of that user, on every node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from twisted.internet.defer import Deferred

from .channel import Channel

if TYPE_CHECKING:
    from ._session import Session
    from .endpoint import Endpoint

__all__ = ["Socket", "ConnectRefused", "match_route"]


class ConnectRefused(Exception):
    """
    Raise from :meth:`Socket.connect` to refuse a connection with an HTTP
    status other than 403 (Phoenix's ``{:error, reason}`` with an error handler).
    """

    def __init__(self, status: int = 403, reason: str = "Forbidden") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


def match_route(routes: Mapping[str, type[Channel]], topic: str) -> type[Channel] | None:
    """
    The channel class of the first route matching ``topic``: an exact topic,
    or a ``"prefix*"`` wildcard.
    """
    for pattern, channel_class in routes.items():
        if pattern.endswith("*"):
            if topic.startswith(pattern[:-1]):
                return channel_class
        elif pattern == topic:
            return channel_class
    return None


class Socket:
    """
    Base class of user sockets; one instance per connection.

    :cvar channels: topic pattern → :class:`~twisted_phoenix.channel.Channel`
        subclass, in priority order.  A ``*`` may end a pattern only.
    :cvar max_channels: channels one connection may join at once (Phoenix's
        ``max_channels_per_transport``).
    :cvar max_backlog: frames a connection may send while one of its joins is
        pending before it is closed (1008).
    :cvar timeout: seconds without any inbound data after which the
        connection is closed (Phoenix's websocket ``timeout``).
    :cvar auth_token: accept phoenix.js's ``authToken`` in the
        ``Sec-WebSocket-Protocol`` header (``connect_info["auth_token"]``).
    :cvar check_origin: ``None`` to use the endpoint's setting, else as
        :attr:`twisted_phoenix.endpoint.Endpoint.check_origin`.
    :cvar longpoll: serve the long-poll transport at ``<mount>/longpoll``
        (Phoenix's ``longpoll: true``); ``False`` turns it off.
    :cvar longpoll_window: seconds a poll is held waiting for messages
        (Phoenix's ``window_ms``); a session not polled for 1.5 windows ends.
    :cvar longpoll_pubsub_timeout: seconds a request for a session held by
        another node of the cluster waits for that node's answer before the
        session counts as gone (Phoenix's ``pubsub_timeout_ms``).
    :cvar longpoll_max_batch: messages one long-poll ``POST`` may carry
        (phoenix.js sends at most 100).
    :cvar longpoll_token_max_age: seconds a long-poll session token stays
        valid (Phoenix's ``crypto: [max_age: 1209600]``).
    :ivar assigns: per-connection state; each channel starts with a copy.
    :ivar endpoint: the :class:`~twisted_phoenix.endpoint.Endpoint`.
    """

    channels: ClassVar[Mapping[str, type[Channel]]] = {}
    max_channels: ClassVar[int] = 100
    max_backlog: ClassVar[int] = 1000
    timeout: ClassVar[float] = 60.0
    auth_token: ClassVar[bool] = False
    check_origin: ClassVar[Any] = None
    longpoll: ClassVar[bool] = True
    longpoll_window: ClassVar[float] = 10.0
    longpoll_pubsub_timeout: ClassVar[float] = 2.0
    longpoll_max_batch: ClassVar[int] = 100
    longpoll_token_max_age: ClassVar[float] = 1209600

    session: Session | None

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.assigns: dict[str, Any] = {}
        self.session = None

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool | Deferred[bool]:
        """
        Accept (``True``) or refuse (``False``, HTTP 403) a connection.

        :param params: the query parameters, ``vsn`` included.
        :param connect_info: ``peer_data``, ``uri``, ``x_headers``,
            ``trace_context_headers``, ``user_agent``,
            ``sec_websocket_headers`` (WebSocket only) and, with
            :attr:`auth_token`, ``auth_token`` (phoenix.js's ``authToken``:
            the ``Sec-WebSocket-Protocol`` header of a WebSocket, the
            ``x-phoenix-authtoken`` header of a long-poll request).
        """
        return True

    def id(self) -> str | None:
        """A topic naming this user's connections, or ``None``."""
        return None

    @classmethod
    def route(cls, topic: str) -> type[Channel] | None:
        """The channel class for ``topic``, or ``None`` (unmatched topic)."""
        return match_route(cls.channels, topic)
