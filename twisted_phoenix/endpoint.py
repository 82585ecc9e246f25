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

from .message import Broadcast
from .origin import OriginSetting
from .pubsub import CallbackSubscriber, PubSub
from .socket import Socket

__all__ = ["Endpoint"]

#: Phoenix's websock_adapter applies 10 MB; a Python process pays more for
#: each byte of JSON, so the default here is 1 MiB.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024


class Endpoint:
    """
    An application: its sockets and its PubSub.

    :cvar sockets: mount path → :class:`~twisted_phoenix.socket.Socket` subclass.
    :cvar check_origin: see :func:`twisted_phoenix.origin.origin_allowed`;
        the default ``True`` accepts pages served from :attr:`host`.
    :cvar host: the public host name, for ``check_origin = True``.
    :cvar max_frame_size: the largest frame or message a client may send;
        larger ones close the connection with 1009.

    :param reactor: provides time and networking (a
        :class:`~twisted.internet.testing.MemoryReactorClock` in tests).
    :param node_name: this node's name, e.g. ``server@127.0.0.1``.
    :param secret_key_base: the secret tokens are signed with.
    :param pubsub: a :class:`~twisted_phoenix.pubsub.PubSub` to share (a
        cluster node passes one wired to its adapter); a new one by default.
    """

    sockets: ClassVar[Mapping[str, type[Socket]]] = {}
    check_origin: ClassVar[OriginSetting] = True
    host: ClassVar[str] = "localhost"
    max_frame_size: ClassVar[int] = DEFAULT_MAX_FRAME_SIZE
    handshake_timeout: ClassVar[float] = 10.0
    close_timeout: ClassVar[float] = 5.0

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
        self._callbacks: dict[tuple[str, Callable[[Broadcast], Any]], CallbackSubscriber] = {}

    # -- serving --------------------------------------------------------------------

    def resource(self) -> IResource:
        """
        A :mod:`twisted.web` resource tree serving every socket at
        ``<mount>/websocket``.
        """
        from .transports.websocket import PhoenixServerFactory
        from autobahn.twisted.resource import WebSocketResource

        root = Resource()
        for mount, socket_class in self.sockets.items():
            node = root
            for segment in [s for s in mount.split("/") if s]:
                child = node.children.get(segment.encode())
                if child is None:
                    child = Resource()
                    node.putChild(segment.encode(), child)
                node = child
            factory = PhoenixServerFactory(self, socket_class, max_frame_size=self.max_frame_size)
            node.putChild(b"websocket", WebSocketResource(factory))
        return root

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
