# -*- test-case-name: tests.test_endpoint -*-
"""
The endpoint: an application's sockets, mounted at their paths, and its
PubSub (Phoenix's ``use Phoenix.Endpoint``).

Example::

    class Endpoint(twisted_phoenix.Endpoint):
        sockets = {"/socket": UserSocket}

    endpoint = Endpoint(reactor, secret_key_base=secret)
    site = Site(endpoint.resource())

A socket mounted at ``/socket`` serves WebSocket clients at
``/socket/websocket``, which is where phoenix.js connects.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from .message import Broadcast
from .origin import OriginSetting
from .presence import Presence
from .pubsub import CallbackSubscriber, PubSub
from .socket import Socket

__all__ = ["Endpoint"]

#: Phoenix's websock_adapter applies 10 MB; a Python process pays more for
#: each byte of JSON, so the default here is 1 MiB.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024


class _Node(Resource):
    """A level of the mount tree; ``var_child`` matches any segment (``:name``)."""

    var_child: Resource | None = None

    def getChild(self, path: bytes, request: Any) -> Any:
        if self.var_child is not None and path:
            return self.var_child
        return super().getChild(path, request)


class Endpoint:
    """
    An application: its sockets and its PubSub.

    :cvar sockets: mount path → :class:`~twisted_phoenix.socket.Socket` subclass.
        A ``:name`` segment (``/rooms/:room``) matches any one segment, whose
        value reaches ``connect`` as ``params["room"]``.
    :cvar presence_class: the :class:`~twisted_phoenix.presence.Presence`
        subclass for :attr:`presence` (override ``fetch`` there).
    :cvar presence_options: tracker options, e.g. ``{"broadcast_period": 1.5,
        "down_period": 30, "permdown_period": 1200}``.
    :cvar check_origin: see :func:`twisted_phoenix.origin.origin_allowed`;
        the default ``True`` accepts pages served from :attr:`host`.
    :cvar host: the public host name, for ``check_origin = True``.
    :cvar max_frame_size: the largest frame or message a client may send;
        larger ones close the connection with 1009.
    :cvar max_send_buffer: bytes that may wait for a client that does not
        read (once the socket's own buffer is full) before it is dropped.
    :cvar handshake_timeout: seconds a client has to complete its HTTP
        request and WebSocket handshake (a silent connection is dropped).
    :cvar event_rate: messages a connection may send per second, on
        average; every message but ``phx_join`` counts, heartbeats
        included.  ``None``: no limit.
    :cvar event_burst: messages a connection may send at once, above
        :attr:`event_rate`.  A message over the limit gets the error reply
        ``{"reason": "rate limited"}`` (a ``phx_leave`` of a joined topic is
        never refused); a connection that keeps sending after a further
        ``event_burst`` refusals (net of ``event_rate`` per second) is
        closed with 1008.
    :cvar join_rate: ``phx_join`` messages a connection may send per
        second, on average.  ``None``: no limit.
    :cvar join_burst: ``phx_join`` messages a connection may send at once.
        Over the limit, as for events: ``{"reason": "rate limited"}``, then
        1008.

    :param reactor: provides time and networking (a
        :class:`~twisted.internet.testing.MemoryReactorClock` in tests).
    :param node_name: this node's name, e.g. ``server@127.0.0.1``.
    :param secret_key_base: the secret tokens are signed with.
    :param pubsub: a :class:`~twisted_phoenix.pubsub.PubSub` to share (a
        cluster node passes one wired to its adapter); a new one by default.
    """

    sockets: ClassVar[Mapping[str, type[Socket]]] = {}
    presence_class: ClassVar[type[Presence]] = Presence
    presence_options: ClassVar[Mapping[str, Any]] = {}
    check_origin: ClassVar[OriginSetting] = True
    host: ClassVar[str] = "localhost"
    max_frame_size: ClassVar[int] = DEFAULT_MAX_FRAME_SIZE
    max_send_buffer: ClassVar[int] = 4 * 1024 * 1024
    handshake_timeout: ClassVar[float] = 10.0
    close_timeout: ClassVar[float] = 5.0
    # Generous for phoenix.js apps: a heartbeat every 30 s, pushes as fast
    # as a person or a chatty UI makes them.
    event_rate: ClassVar[float | None] = 100.0
    event_burst: ClassVar[float] = 200.0
    # phoenix.js rejoins every channel at once when it reconnects, and a
    # Socket holds at most 100 (max_channels): a burst of twice that lets a
    # client rejoin all of them at once, on a new connection (whose bucket
    # starts full) or on the same one (after every channel errored, say),
    # and 20/s brings back a full rejoin within 5 s.  phoenix.js's own
    # rejoin backoff (1, 2, 5, then 10 s per channel) stays well inside.
    join_rate: ClassVar[float | None] = 20.0
    join_burst: ClassVar[float] = 200.0

    def __init__(
        self,
        reactor: IReactorTime,
        *,
        node_name: str = "nonode@nohost",
        secret_key_base: str | None = None,
        pubsub: PubSub | None = None,
    ) -> None:
        self.reactor = reactor
        self.node_name = node_name
        self.secret_key_base = secret_key_base
        self.pubsub = pubsub if pubsub is not None else PubSub(node_name)
        #: This endpoint's :class:`~twisted_phoenix.presence.Presence`.
        self.presence: Presence = self.presence_class(self, **self.presence_options)
        self._callbacks: dict[tuple[str, Callable[[Broadcast], Any]], CallbackSubscriber] = {}

    # -- serving --------------------------------------------------------------------

    def resource(self) -> IResource:
        """
        A :mod:`twisted.web` resource tree serving every socket at
        ``<mount>/websocket``.
        """
        from .transports.websocket import PhoenixServerFactory
        from autobahn.twisted.resource import WebSocketResource

        root = _Node()
        for mount, socket_class in self.sockets.items():
            node = root
            for segment in [s for s in mount.split("/") if s]:
                if segment.startswith(":"):  # a path param: any one segment
                    child = node.var_child
                    if child is None:
                        child = node.var_child = _Node()
                else:
                    child = node.children.get(segment.encode())
                    if child is None:
                        child = _Node()
                        node.putChild(segment.encode(), child)
                node = child
            factory = PhoenixServerFactory(
                self, socket_class, max_frame_size=self.max_frame_size, mount=mount
            )
            node.putChild(b"websocket", WebSocketResource(factory))
        return root

    def site(self) -> Site:
        """
        A :class:`twisted.web.server.Site` serving :meth:`resource`, which
        drops a connection that has not sent a complete HTTP request within
        :attr:`handshake_timeout` seconds of silence (twisted.web's default
        is 60 s).
        """
        return Site(self.resource(), timeout=self.handshake_timeout)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the endpoint's background work (presence replication)."""
        self.presence.start()

    def stop(self) -> None:
        """Stop it; the other nodes drop this node's presences at once."""
        self.presence.stop()

    # -- PubSub -----------------------------------------------------------------------

    def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Send to every subscriber of ``topic`` on every node."""
        self.pubsub.broadcast(topic, event, payload)

    def broadcast_from(self, sender: Any, topic: str, event: str, payload: Any) -> None:
        """As :meth:`broadcast`, skipping the subscriber ``sender``."""
        self.pubsub.broadcast_from(sender, topic, event, payload)

    def local_broadcast(self, topic: str, event: str, payload: Any) -> None:
        """Send to the subscribers of ``topic`` on this node only."""
        self.pubsub.local_broadcast(topic, event, payload)

    def subscribe(self, topic: str, callback: Callable[[Broadcast], Any]) -> None:
        """Call ``callback`` with every :class:`~twisted_phoenix.message.Broadcast` on ``topic``."""
        subscriber = self._callbacks.setdefault((topic, callback), CallbackSubscriber(callback))
        self.pubsub.subscribe(topic, subscriber)

    def unsubscribe(self, topic: str, callback: Callable[[Broadcast], Any]) -> None:
        """Undo :meth:`subscribe`."""
        subscriber = self._callbacks.pop((topic, callback), None)
        if subscriber is not None:
            self.pubsub.unsubscribe(topic, subscriber)
