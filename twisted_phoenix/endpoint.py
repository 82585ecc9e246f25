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
``/socket/websocket``, which is where phoenix.js connects.  ``static``
serves a page next to it (and phoenix.js at ``/phoenix/phoenix.js``; see
:mod:`twisted_phoenix.static`)::

    class Endpoint(twisted_phoenix.Endpoint):
        sockets = {"/socket": UserSocket}
        static = {"/": "static"}  # the directory static/ next to this module
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Mapping

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from ._output import Flusher
from .message import Broadcast
from .metrics import Metrics
from .origin import OriginSetting
from .presence import Presence
from .pubsub import CallbackSubscriber, PubSub
from .socket import Socket
from .static import (
    DEFAULT_CACHE_CONTROL,
    PHOENIX_JS_DIR,
    PHOENIX_JS_PREFIX,
    StaticFiles,
    defining_module_directory,
    resolve_mounts,
)
from .telemetry import Telemetry

__all__ = ["Endpoint"]

#: Phoenix's drainer: connections told to go per batch, and seconds between batches.
DRAIN_BATCH_SIZE = 10_000
DRAIN_BATCH_INTERVAL = 2.0

#: Phoenix's websock_adapter applies 10 MB; a Python process pays more for
#: each byte of JSON, so the default here is 1 MiB.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024


class _Node(Resource):
    """
    A level of the mount tree; ``var_child`` matches any segment (``:name``).
    A path the tree does not serve goes to the static files, if any
    (``static``; ``depth``: this level's segments below the tree's root).
    """

    var_child: Resource | None = None
    static: StaticFiles | None = None
    depth = 0

    def getChild(self, path: bytes, request: Any) -> Any:
        if self.var_child is not None and path:
            return self.var_child
        if self.static is not None:
            # request.prepath ends with this level's segments, then ``path``.
            return self.static.resource(request.prepath[len(request.prepath) - self.depth - 1:], request)
        return super().getChild(path, request)

    def render(self, request: Any) -> Any:
        if self.static is not None:
            segments = request.prepath[len(request.prepath) - self.depth:] if self.depth else []
            return self.static.resource(segments, request).render(request)
        return super().render(request)


class _Health(Resource):
    """``Endpoint.health_path``: ``200 ok`` to ``GET`` and ``HEAD``, 405 to other methods."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return notFound()

    def render(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return b"method not allowed"
        return b"ok"


def health_path_error(path: str, mounts: Iterable[str]) -> str | None:
    """
    Why ``path`` cannot be an endpoint's ``health_path`` beside sockets
    mounted at ``mounts``, or ``None`` when it can.  It must be an absolute
    path of fixed segments, off every socket's paths: not a mount or a level
    above one, not ``<mount>/websocket`` or ``<mount>/longpoll`` or below
    them, and not below a ``:param`` segment.  (``/socket/health`` beside
    ``/socket`` is fine.)
    """
    segments = path.split("/")[1:]
    if not path.startswith("/") or not all(segments) or any(c in path for c in "?#%:\\ \t"):
        return f"the health path must be a path such as /health, not {path!r}"
    if any(s in (".", "..") for s in segments):
        return f"the health path must be a plain path, not {path!r}"
    for mount in mounts:
        pattern = [s for s in mount.split("/") if s]
        common = min(len(pattern), len(segments))
        if all(p == s or p.startswith(":") for p, s in zip(pattern[:common], segments[:common])) and (
            len(segments) <= len(pattern)
            or any(p.startswith(":") for p in pattern)
            or segments[len(pattern)] in ("websocket", "longpoll")
        ):
            return f"the health path {path!r} is on the paths of the socket at {mount!r}"
    return None


class _UpgradeFirst(Resource):
    """``<mount>/websocket`` reached by a later request of a kept-alive connection."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(400)
        return b"a WebSocket upgrade must be the first request of its connection"


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
    :cvar static: URL prefix → directory of static files (``{"/":
        "static"}``); a relative directory is relative to the module of the
        class that sets ``static``.  With any, phoenix.js is served at
        ``/phoenix/`` too, unless ``static`` has a ``"/phoenix"`` entry of
        its own.  The sockets' paths win.  See :mod:`twisted_phoenix.static`.
    :cvar static_cache_control: the ``Cache-Control`` of static files.
    :cvar health_path: a path answered ``200`` with the body ``ok`` (to
        ``GET`` and ``HEAD``), for the health checks of load balancers and
        orchestrators (``twistd phoenix --health /health``); ``None`` (the
        default): no such path.  It wins over a static file of that name,
        and may not be a socket's path.  The answer comes from the reactor,
        so it shows the process is serving; it goes through the same
        connection limits as every request.
    :cvar check_origin: see :func:`twisted_phoenix.origin.origin_allowed`;
        the default ``True`` accepts pages served from :attr:`host` (and,
        in the ``dev`` environment, from ``localhost``, ``127.0.0.1`` and
        ``[::1]`` on any port).
    :cvar host: the public host name, for ``check_origin = True``
        (``twistd phoenix --host``).
    :cvar env: ``"dev"``, ``"test"`` or ``"prod"``: ``twistd phoenix --env``
        sets it (default ``dev`` there); an endpoint made by your own code is
        ``prod`` unless you say otherwise.
    :cvar max_frame_size: the largest frame or message a client may send;
        larger ones close the connection with 1009.
    :cvar max_lag: bytes that may wait for a client that does not read
        (beyond what its socket took) before it is closed (1013).  Waiting
        frames are shared with every other subscriber, not copied.
    :cvar handshake_timeout: seconds a client has, from its connection, to
        send its whole request head (a hard deadline, answered 408), and
        then to complete the WebSocket handshake.
    :cvar max_header_bytes: the largest request head (431 beyond).
    :cvar max_connections: connections served at once; past it new ones get
        HTTP 503 at once.  ``None``: the process's open-file limit less a
        reserve (:func:`~twisted_phoenix.transports.http.default_max_connections`).
    :cvar handshakes_per_turn: requests (WebSocket handshakes, HTTP requests)
        handled per reactor turn; the rest wait their turn, so that a
        connect storm does not starve the clients already connected.
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
    :cvar max_longpoll_body: the largest request body (a long-poll ``POST``)
        in bytes; a larger one is answered ``{"status": 413}`` before it is
        read (from its ``Content-Length``, or as a chunked body grows past
        it) and its connection closed.
    :cvar max_longpoll_sessions: long-poll sessions this node holds at once;
        past it a new session is refused with HTTP 503 (phoenix.js retries
        later).  ``None``: as many as ``max_connections``' default.

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
    static: ClassVar[Mapping[str, str]] = {}
    static_cache_control: ClassVar[str] = DEFAULT_CACHE_CONTROL
    health_path: ClassVar[str | None] = None
    check_origin: ClassVar[OriginSetting] = True
    host: ClassVar[str] = "localhost"
    env: ClassVar[str] = "prod"
    max_frame_size: ClassVar[int] = DEFAULT_MAX_FRAME_SIZE
    max_lag: ClassVar[int] = 1024 * 1024
    handshake_timeout: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 16 * 1024
    max_connections: ClassVar[int | None] = None
    handshakes_per_turn: ClassVar[int] = 32
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
    max_longpoll_body: ClassVar[int] = 2 * 1024 * 1024
    max_longpoll_sessions: ClassVar[int | None] = None

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
        self.pubsub = pubsub if pubsub is not None else PubSub(node_name, clock=reactor)
        #: This endpoint's :class:`~twisted_phoenix.presence.Presence`.
        self.presence: Presence = self.presence_class(self, **self.presence_options)
        self._callbacks: dict[tuple[str, Callable[[Broadcast], Any]], CallbackSubscriber] = {}
        #: Writes what each connection queued, once per reactor turn.
        self.flusher = Flusher(reactor)
        #: This endpoint's counters (see :mod:`twisted_phoenix.metrics`).
        self.metrics = Metrics(self)
        #: Its structured events (see :mod:`twisted_phoenix.telemetry`).
        self.telemetry = Telemetry(reactor)
        self._websockets: dict[str, Any] | None = None
        self._longpolls: dict[str, Any] | None = None
        #: Set by :meth:`drain`: new long-poll sessions are refused (503).
        self.draining = False

    # -- serving --------------------------------------------------------------------

    def websocket_factories(self) -> dict[str, Any]:
        """
        Mount path → the :class:`~twisted_phoenix.transports.websocket.PhoenixServerFactory`
        of its socket (made once).
        """
        if self._websockets is None:
            from .transports.websocket import PhoenixServerFactory

            self._websockets = {
                mount: PhoenixServerFactory(self, socket_class, max_frame_size=self.max_frame_size, mount=mount)
                for mount, socket_class in self.sockets.items()
            }
        return self._websockets

    def longpoll_resources(self) -> dict[str, Any]:
        """
        Mount path → the :class:`~twisted_phoenix.transports.longpoll.LongPoll`
        resource (and long-poll sessions) of each socket whose ``longpoll``
        is on (made once).
        """
        if self._longpolls is None:
            from .transports.longpoll import LongPoll

            factories = self.websocket_factories()
            self._longpolls = {
                mount: LongPoll(self, socket_class, mount=mount, serializers=factories[mount].serializers)
                for mount, socket_class in self.sockets.items()
                if socket_class.longpoll
            }
        return self._longpolls

    def longpoll_session_count(self) -> int:
        """How many long-poll sessions this node holds."""
        return sum(len(resource.sessions) for resource in self.longpoll_resources().values())

    def longpoll_session_limit(self) -> int:
        """``max_longpoll_sessions``, or its default."""
        if self.max_longpoll_sessions is not None:
            return self.max_longpoll_sessions
        from .transports.http import default_max_connections

        return default_max_connections()

    def resource(self) -> IResource:
        """
        A :mod:`twisted.web` resource tree serving every socket at
        ``<mount>/websocket`` and ``<mount>/longpoll`` (and the :attr:`static`
        files, if any), to mount in an application's own site.  There,
        ``max_longpoll_body`` is checked once twisted.web has read the body
        (it keeps a large one in a temporary file); :meth:`site` refuses it
        before reading.
        :meth:`site` serves this endpoint with the limits on strangers, and
        takes WebSocket upgrades before twisted.web would parse them.
        """
        from .transports.websocket import WebSocketUpgrade

        return self._tree(WebSocketUpgrade)

    def _tree(self, websocket: Callable[[Any], Resource]) -> Resource:
        """
        The resource tree, with ``websocket(factory)`` at each
        ``<mount>/websocket`` and the long-poll resource at ``<mount>/longpoll``.
        """
        root = _Node()
        longpolls = self.longpoll_resources()
        for mount, factory in self.websocket_factories().items():
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
            node.putChild(b"websocket", websocket(factory))
            if mount in longpolls:
                node.putChild(b"longpoll", longpolls[mount])
        self._add_health(root)
        self._add_static(root)
        return root

    def _add_health(self, root: Resource) -> None:
        """Put :attr:`health_path` in the tree, if any."""
        if self.health_path is None:
            return
        problem = health_path_error(self.health_path, self.sockets)
        if problem is not None:
            raise ValueError(problem)
        *levels, last = [s.encode() for s in self.health_path.split("/")[1:]]
        node = root
        for segment in levels:
            child = node.children.get(segment)
            if child is None:
                child = _Node()
                node.putChild(segment, child)
            node = child
        node.putChild(last, _Health())

    def static_directories(self) -> dict[str, str]:
        """
        URL prefix → absolute directory of every static mount, phoenix.js's
        included (empty when :attr:`static` is).

        :raises ValueError: for a prefix without its leading ``/`` or a
            directory that does not exist.
        """
        # Set on the instance: relative to the endpoint class's own module.
        base = defining_module_directory(type(self), None if "static" in vars(self) else "static")
        mounts = resolve_mounts(self.static, base)
        if mounts and PHOENIX_JS_PREFIX not in mounts:
            mounts[PHOENIX_JS_PREFIX] = PHOENIX_JS_DIR
        return mounts

    def _add_static(self, root: Resource) -> None:
        """Let every level of the mount tree fall back to the static files."""
        mounts = self.static_directories()
        if not mounts:
            return
        files = StaticFiles(mounts, self.static_cache_control)
        levels = [(root, 0)]
        while levels:
            node, depth = levels.pop()
            if isinstance(node, _Node):
                node.static, node.depth = files, depth
                below = list(node.children.values()) + ([node.var_child] if node.var_child is not None else [])
                levels.extend((child, depth + 1) for child in below)

    def site(self) -> Any:
        """
        The factory to serve this endpoint with (see
        :class:`~twisted_phoenix.transports.http.PhoenixSite`): connection
        and request limits, WebSocket upgrades straight to the sockets,
        anything else to a :class:`twisted.web.server.Site` of
        :meth:`resource`.
        """
        from .transports.http import PhoenixSite

        # A WebSocket upgrade reaches twisted.web only as a later request of
        # a kept-alive connection: it must come first on its own connection.
        from .transports.longpoll import BodyLimitedRequest

        web = Site(
            self._tree(lambda factory: _UpgradeFirst()), timeout=self.handshake_timeout, reactor=self.reactor
        )
        web.noisy = False
        web.requestFactory = BodyLimitedRequest
        web.max_body_size = self.max_longpoll_body  # type: ignore[attr-defined]
        return PhoenixSite(self, web, self.websocket_factories())

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the endpoint's background work (presence replication)."""
        self.presence.start()

    def stop(self) -> None:
        """Stop it; the other nodes drop this node's presences at once."""
        self.presence.stop()

    def drain(
        self, batch_size: int = DRAIN_BATCH_SIZE, interval: float = DRAIN_BATCH_INTERVAL
    ) -> defer.Deferred[int]:
        """
        Phoenix's socket drainer, for a server about to stop: close every
        WebSocket with 1012 ("service restart") and end every long-poll
        session, ``batch_size`` connections at a time every ``interval``
        seconds (Phoenix's defaults), so that the clients reconnect
        elsewhere in waves rather than all at once.  Their channels
        terminate with ``("shutdown", "draining")``.  From now on new
        long-poll sessions are refused (503); stop listening first, so that
        no new WebSocket comes.

        Fires with the number of connections told, once the last batch is.
        """
        self.draining = True
        connections: list[Any] = [
            connection for factory in self.websocket_factories().values() for connection in list(factory.idle.connections)
        ]
        connections += [session for poll in self.longpoll_resources().values() for session in list(poll.sessions.values())]
        done: defer.Deferred[int] = defer.Deferred()

        def batch(start: int) -> None:
            for connection in connections[start : start + batch_size]:
                try:
                    connection.drain()
                except Exception:
                    Logger().failure("Draining a connection failed")
            if start + batch_size < len(connections):
                self.reactor.callLater(interval, batch, start + batch_size)  # type: ignore[attr-defined]
            else:
                done.callback(len(connections))

        batch(0)
        return done

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
