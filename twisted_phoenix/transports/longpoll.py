# -*- test-case-name: tests.test_longpoll -*-
"""
The long-poll transport: Phoenix's ``Phoenix.Transports.LongPoll`` at
``<mount>/longpoll``, for clients whose WebSockets are blocked (phoenix.js's
``LongPoll`` transport and its ``longPollFallbackMs``).

The HTTP side is a :mod:`twisted.web` resource, :class:`LongPoll`; the
session side is a :class:`LongPollSession`, a
:class:`~twisted_phoenix.pubsub.Connection` like a WebSocket, so channels,
broadcasts, presence and limits behave the same on both.

* ``GET`` without a session token runs the handshake
  (:mod:`twisted_phoenix._handshake`) and answers ``{"status": 410,
  "token": T, "messages": []}``, or ``{"status": 403}`` when refused.
* ``GET`` with a token holds the request up to ``Socket.longpoll_window``
  seconds and answers ``{"status": 200, "token": T, "messages": [...]}``, or
  ``{"status": 204, ...}`` when nothing came.
* ``POST`` with a token carries one frame, or an ``application/x-ndjson``
  batch of at most ``Socket.longpoll_max_batch`` lines (V2 JSON text lines
  start with ``[`` (V1 objects with ``{``), other lines are base64 of
  binary frames); answered
  ``{"status": 200}``, or ``410`` when the session is gone.
* The HTTP status is always 200 (the real one is in the body);
  ``OPTIONS`` is answered as a CORS preflight.

**Clusters.**  The session token is signed with the endpoint's secret and
names the node holding the session.  A request that reaches another node
(a load balancer without sticky sessions) is forwarded to that node through
the endpoint's PubSub, as Phoenix does: every session subscribes to its own
topic ``phx:lp:<id>``, and the node holding the request subscribes a reply
topic of its own and sends ``flush`` (a poll) or ``dispatch`` (a post) with
:meth:`~twisted_phoenix.pubsub.PubSub.direct_broadcast`.  Messages leave a
session only in answer to a ``flush``: when something arrives for a waiting
remote poll the session sends ``now_available`` and the poll flushes again,
so a poll that has timed out never takes messages with it.  Only
``subscribe`` and ``direct_broadcast`` are used, so this works over any
PubSub adapter.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qsl

import orjson
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .._handshake import (
    Connected,
    HandshakeRequest,
    Refusal,
    check_origin,
    connect_now,
    connect_info,
    params_from_pairs,
    path_params,
)
from .._log import RateLimitedLog, limited_log, truncate
from .._session import Session
from ..message import Broadcast
from ..serializers import DecodeError, Frame
from ..token import Token

if TYPE_CHECKING:
    from ..endpoint import Endpoint
    from ..socket import Socket

__all__ = [
    "BodyLimitedRequest",
    "LongPoll",
    "LongPollSession",
    "SESSION_TOPIC_PREFIX",
    "TOKEN_SALT",
]

#: The salt of session tokens (Phoenix salts them with its PubSub's name).
TOKEN_SALT = "twisted_phoenix.longpoll"
#: Each session's PubSub topic is this prefix and the session's id.
SESSION_TOPIC_PREFIX = "phx:lp:"
_REPLY_PREFIX = "phx:lp:reply:"
_NDJSON = b"application/x-ndjson"

# The events of the forwarding protocol (section "Clusters" above).
_FLUSH = "flush"
_DISPATCH = "dispatch"
_MESSAGES = "messages"
_WAITING = "waiting"
_NOW_AVAILABLE = "now_available"
_DISPATCHED = "dispatched"
_GONE = "gone"


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def _texts(frames: list[Frame]) -> list[str]:
    return [frame.data.decode("utf-8") for frame in frames]


class _Poller:
    """Where a session's messages go when they arrive for a waiting poll."""

    def wake(self, session: LongPollSession) -> None:
        """Messages are waiting."""

    def gone(self) -> None:
        """The session ended."""

    def gone_stale(self) -> None:
        """A newer poll of the same session took this one's place."""


class LongPollSession:
    """
    One long-poll client's :class:`~twisted_phoenix._session.Session`: the
    :class:`~twisted_phoenix.pubsub.Connection` that queues frames for the
    next poll.

    Frames are kept by reference (a broadcast's frame is shared with every
    other subscriber), at most ``Endpoint.max_lag`` bytes of them: past it
    the session ends, as a WebSocket that does not read is closed.  A
    session not polled for 1.5 × ``Socket.longpoll_window`` seconds ends;
    either way every channel's ``terminate`` runs.
    """

    log = Logger()
    #: The transport's name in metrics and telemetry.
    transport_name = "longpoll"

    # A subscriber of its own topic (the requests other nodes forward).
    fastlane = None
    serializer = None
    intercepts: frozenset[str] = frozenset()

    def __init__(self, transport: LongPoll, session_id: str, connected: Connected) -> None:
        self.transport = transport
        self.id = session_id
        self.topic = SESSION_TOPIC_PREFIX + session_id
        endpoint = transport.endpoint
        self.reactor = endpoint.reactor
        self.pubsub = endpoint.pubsub
        self.max_lag = endpoint.max_lag
        self.ended = False
        self.frames: list[Frame] = []
        #: Bytes waiting for the next poll.
        self.lag = 0
        self.poller: _Poller | None = None
        self._dirty = False
        self._overflowed = False
        self.inactive_after = 1.5 * transport.socket_class.longpoll_window
        self.last_poll = self.reactor.seconds()
        self._timer = self.reactor.callLater(self.inactive_after, self._check_inactive)
        self.pubsub.subscribe(self.topic, self)
        self.session = Session(connected.socket, connected.serializer, self)

    def __repr__(self) -> str:
        return f"<LongPollSession {self.id} {self.lag} bytes waiting>"

    # -- Connection ---------------------------------------------------------------

    def _limited(self) -> RateLimitedLog:
        """The endpoint's rate-limited log, for lines about a client."""
        return limited_log(LongPollSession.log, self.reactor, self.transport.endpoint)

    def send_frame(self, frame: Frame) -> None:
        """Queue ``frame`` (by reference) for the next poll."""
        if self.ended or self._overflowed:
            return
        if frame.binary:
            # phoenix.js reads every long-poll message as JSON text; Phoenix's
            # long-poll server has no binary messages either.
            self._limited().warn("Dropped a binary frame for a long-poll client ({n} bytes)", n=len(frame.data))
            return
        self.frames.append(frame)
        self.lag += len(frame.data)
        if self.lag > self.max_lag:
            self._overflowed = True
            self.frames = []
            self.lag = 0
        if not self._dirty:
            self._dirty = True
            self.transport.endpoint.flusher.dirty(self)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """End the session (a ``disconnect`` broadcast, a limit)."""
        self.end()

    def drain(self) -> None:
        """
        The server is draining: end the session (a waiting poll hears 410,
        and phoenix.js starts a new session, on another server); the
        channels terminate with ``("shutdown", "draining")``.
        """
        if not self.session.closed:
            self.session.close_reason = ("shutdown", "draining")
        self.end()

    # -- the Flusher's output -------------------------------------------------------

    def flush(self) -> None:
        """End of the turn: wake the waiting poll, or give up a client too far behind."""
        self._dirty = False
        if self.ended:
            return
        if self._overflowed:
            self._limited().warn(
                "Ending a long-poll session that does not poll: over {limit} bytes wait for it",
                limit=self.max_lag,
            )
            self._dropped("slow")
            self.end()
            return
        poller = self.poller
        if poller is not None and self.frames:
            self.poller = None
            poller.wake(self)

    # -- polls --------------------------------------------------------------------

    def poll(self, poller: _Poller) -> list[Frame] | None:
        """
        A poll (Phoenix's ``flush``): the waiting frames, or ``None`` after
        registering ``poller`` to be woken when some arrive.
        """
        self.last_poll = self.reactor.seconds()
        if self.frames:
            frames, self.frames, self.lag = self.frames, [], 0
            return frames
        previous, self.poller = self.poller, poller
        if previous is not None and previous is not poller:
            previous.gone_stale()
        return None

    def unpoll(self, poller: _Poller) -> None:
        """``poller`` no longer waits (its request ended)."""
        if self.poller is poller:
            self.poller = None

    def take(self) -> list[Frame]:
        """The waiting frames, now."""
        frames, self.frames, self.lag = self.frames, [], 0
        return frames

    def publish(self, lines: list[bytes], ndjson: bool) -> int:
        """
        Hand the client's frames to the session; the status for the body.

        ``ndjson`` lines starting with ``[`` are V2 text frames, other lines
        base64 of binary frames; a body that is not ``ndjson`` is one text
        frame.  A line starting with ``{`` (a V1 JSON object, which no base64
        starts with) is a text frame too: phoenix.js batches V1 messages as
        well, where Phoenix would refuse them.  A frame the serializer cannot decode ends the session, as a
        malformed WebSocket frame closes the connection (400).
        """
        session = self.session
        now = self.reactor.seconds()
        for line in lines:
            if self.ended:
                return 410
            if ndjson and not line.startswith((b"[", b"{")):
                try:
                    data, binary = base64.b64decode(line, validate=True), True
                except (binascii.Error, ValueError):
                    self._limited().error("Ending a long-poll session that sent a line that is not base64")
                    self._dropped("malformed")
                    self.end()
                    return 400
            else:
                data, binary = line, False
            try:
                session.frame_received(data, binary, now)
            except DecodeError as e:
                self._limited().error(
                    "Ending a long-poll session that sent a malformed frame: {error}", error=truncate(str(e))
                )
                self._dropped("malformed")
                self.end()
                return 400
            except Exception:
                self._limited().failure("Ending a long-poll session after an error handling its frame")
                self._dropped("error")
                self.end()
                return 400
        return 410 if self.ended else 200

    # -- requests forwarded by other nodes -------------------------------------------

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        """A request for this session that reached another node."""
        payload = broadcast.payload
        if not isinstance(payload, dict):
            return
        node, reply = payload.get("node"), payload.get("reply")
        if not isinstance(node, str) or not isinstance(reply, str) or not reply.startswith(_REPLY_PREFIX):
            return
        if broadcast.event == _FLUSH:
            poller = _RemotePoller(self.pubsub, node, reply)
            frames = self.poll(poller)
            if frames is None:
                self.pubsub.direct_broadcast(node, reply, _WAITING, {})
            else:
                self.pubsub.direct_broadcast(node, reply, _MESSAGES, {"messages": _texts(frames)})
        elif broadcast.event == _DISPATCH:
            lines = payload.get("lines")
            if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
                return
            status = self.publish([line.encode("utf-8") for line in lines], payload.get("ndjson") is True)
            self.pubsub.direct_broadcast(node, reply, _DISPATCHED, {"status": status})

    # -- end ------------------------------------------------------------------------

    def _check_inactive(self) -> None:
        self._timer = None
        idle = self.reactor.seconds() - self.last_poll
        if idle >= self.inactive_after:
            self._limited().info("Ending a long-poll session not polled for {idle:.1f} s", idle=idle)
            self._dropped("idle")
            self.end()
        else:
            self._timer = self.reactor.callLater(self.inactive_after - idle, self._check_inactive)

    def _dropped(self, reason: str) -> None:
        """The server is about to end this session: count it (and emit ``drop``)."""
        if not self.ended:
            self.transport.endpoint.metrics.drop(reason, self.session)

    def end(self) -> None:
        """End the session: every channel terminates, a waiting poll hears 410."""
        if self.ended:
            return
        self.ended = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.frames, self.lag = [], 0
        self.pubsub.unsubscribe(self.topic, self)
        self.transport.session_ended(self)
        poller, self.poller = self.poller, None
        try:
            self.session.connection_lost()
        finally:
            if poller is not None:
                poller.gone()


class _RemotePoller(_Poller):
    """A poll held by another node: woken with ``now_available``."""

    def __init__(self, pubsub: Any, node: str, reply: str) -> None:
        self.pubsub = pubsub
        self.node = node
        self.reply = reply

    def wake(self, session: LongPollSession) -> None:
        self.pubsub.direct_broadcast(self.node, self.reply, _NOW_AVAILABLE, {})

    def gone(self) -> None:
        self.pubsub.direct_broadcast(self.node, self.reply, _GONE, {})

    def gone_stale(self) -> None:
        """A newer poll replaced this one: its node answers 204 at its window."""


class _Exchange:
    """
    One HTTP request being answered: headers, JSON, and whether the client
    is still there.
    """

    def __init__(self, request: Request, endpoint: Any = None) -> None:
        self.request = request
        #: While it drains (:meth:`Endpoint.drain`), answers close their connection.
        self.endpoint = endpoint
        self.finished = False
        self._on_gone: list[Callable[[], None]] = []
        request.notifyFinish().addBoth(self._ended)

    def _ended(self, result: Any) -> None:
        if not self.finished:
            self.finished = True
            for callback in self._on_gone:
                callback()
        self._on_gone = []

    def on_gone(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` if the client goes away before the answer."""
        self._on_gone.append(callback)

    def answer(self, body: dict[str, Any]) -> None:
        """Answer with ``body`` as JSON (HTTP 200)."""
        if self.finished:
            return
        self.finished = True
        self._on_gone = []
        request = self.request
        self._close_if_draining()
        data = _json(body)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def _close_if_draining(self) -> None:
        """A draining server's answers end their connection: the client's next one goes elsewhere."""
        if self.endpoint is not None and self.endpoint.draining:
            self.request.setHeader(b"connection", b"close")
            channel = getattr(self.request, "channel", None)
            if channel is not None:
                channel.persistent = False

    def answer_http(self, code: int) -> None:
        """Answer with an HTTP status and no body."""
        if self.finished:
            return
        self._close_if_draining()
        self.finished = True
        self._on_gone = []
        self.request.setResponseCode(code)
        self.request.setHeader(b"content-length", b"0")
        self.request.finish()


class _LocalPoller(_Poller):
    """A poll for a session of this node, held for up to the window."""

    def __init__(self, exchange: _Exchange, session: LongPollSession, token: str, window: float) -> None:
        self.exchange = exchange
        self.session = session
        self.token = token
        self._timer = session.reactor.callLater(window, self._expired)
        exchange.on_gone(self._client_gone)

    def _stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self.session.unpoll(self)
        self.exchange.answer({"status": 204, "token": self.token, "messages": []})

    def _client_gone(self) -> None:
        self._stop()
        self.session.unpoll(self)

    def wake(self, session: LongPollSession) -> None:
        self._stop()
        self.exchange.answer({"status": 200, "token": self.token, "messages": _texts(session.take())})

    def gone(self) -> None:
        self._stop()
        self.exchange.answer({"status": 410})

    def gone_stale(self) -> None:
        """A newer poll took over: this one ends now, empty."""
        self._stop()
        self.exchange.answer({"status": 204, "token": self.token, "messages": []})


class _RemoteRequest:
    """
    A request for a session another node holds: forwarded over PubSub to
    that node, answered from there (see the module's docstring).

    :param on_missing: called when the node does not answer within
        ``Socket.longpoll_pubsub_timeout`` (the session is gone).
    """

    fastlane = None
    serializer = None
    intercepts: frozenset[str] = frozenset()

    def __init__(
        self,
        transport: LongPoll,
        exchange: _Exchange,
        node: str,
        session_id: str,
        on_missing: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.exchange = exchange
        self.node = node
        self.topic = SESSION_TOPIC_PREFIX + session_id
        self.reply = _REPLY_PREFIX + secrets.token_urlsafe(16)
        self.on_missing = on_missing
        self.pubsub = transport.endpoint.pubsub
        self.reactor = transport.endpoint.reactor
        self.done = False
        self._timers: list[Any] = []
        self.pubsub.subscribe(self.reply, self)
        exchange.on_gone(self.finish)

    def _send(self, event: str, payload: dict[str, Any]) -> None:
        payload = {"node": self.transport.endpoint.pubsub.node_name, "reply": self.reply, **payload}
        if not self.pubsub.direct_broadcast(self.node, self.topic, event, payload):
            # The node is not connected: the session is as good as gone.
            self.reactor.callLater(0, self._missing)

    def _after(self, seconds: float, callback: Callable[[], None]) -> Any:
        timer = self.reactor.callLater(seconds, callback)
        self._timers.append(timer)
        return timer

    def _missing(self) -> None:
        if not self.done:
            self.finish()
            self.on_missing()

    def finish(self) -> None:
        """Stop listening and cancel the timers."""
        if self.done:
            return
        self.done = True
        self.pubsub.unsubscribe(self.reply, self)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []

    def poll(self, token: str, window: float) -> None:
        """Forward a poll: messages, or 204 after ``window`` seconds."""
        self.token = token
        self._answered = False
        self._ack = self._after(self.transport.socket_class.longpoll_pubsub_timeout, self._missing)
        self._after(window, self._expired)
        self._send(_FLUSH, {})

    def dispatch(self, lines: list[str], ndjson: bool) -> None:
        """Forward a post's frames."""
        self._ack = self._after(self.transport.socket_class.longpoll_pubsub_timeout, self._missing)
        self._send(_DISPATCH, {"lines": lines, "ndjson": ndjson})

    def _expired(self) -> None:
        self.finish()
        self.exchange.answer({"status": 204, "token": self.token, "messages": []})

    def handle_broadcast(self, broadcast: Broadcast) -> None:
        if self.done:
            return
        event, payload = broadcast.event, broadcast.payload
        if not isinstance(payload, dict):
            return
        if self._ack.active():
            self._ack.cancel()
        if event == _WAITING:
            return
        if event == _NOW_AVAILABLE:
            self._send(_FLUSH, {})
        elif event == _MESSAGES:
            messages = payload.get("messages")
            if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
                self.finish()
                self.exchange.answer({"status": 200, "token": self.token, "messages": messages})
        elif event == _DISPATCHED:
            status = payload.get("status")
            self.finish()
            self.exchange.answer({"status": status if isinstance(status, int) else 500})
        elif event == _GONE:
            self.finish()
            self.exchange.answer({"status": 410})


class LongPoll(Resource):
    """
    ``<mount>/longpoll`` for one :class:`~twisted_phoenix.socket.Socket`
    class, and the long-poll sessions of this node for it.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, endpoint: Endpoint, socket_class: type[Socket], *, mount: str, serializers: Any) -> None:
        super().__init__()
        self.endpoint = endpoint
        self.socket_class = socket_class
        self.mount = mount
        self.serializers = serializers
        #: Session id → the sessions this node holds.
        self.sessions: dict[str, LongPollSession] = {}
        secret = endpoint.secret_key_base
        if not secret:
            # Without an application secret the tokens are good on this
            # process only (a cluster needs a shared secret_key_base).
            secret = secrets.token_urlsafe(48)
        self.tokens = Token(secret, clock=endpoint.reactor)

    # -- dispatch -------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        request.setHeader(b"access-control-allow-origin", b"*")
        request.setHeader(b"cache-control", b"no-store")
        exchange = _Exchange(request, self.endpoint)
        origin = request.getHeader(b"origin")
        try:
            check_origin(
                self.endpoint, self.socket_class, origin.decode("latin-1") if origin is not None else None, "longpoll"
            )
        except Refusal:
            self.endpoint.metrics.refuse(403)
            exchange.answer({"status": 403})
            return NOT_DONE_YET
        method = request.method
        if method == b"OPTIONS":
            asked = request.requestHeaders.getRawHeaders(b"access-control-request-headers", [])
            request.setHeader(b"access-control-allow-headers", b", ".join(asked))
            request.setHeader(b"access-control-allow-methods", b"get, post, options")
            request.setHeader(b"access-control-max-age", b"3600")
            return b""
        pairs, token = self._query(request)
        if method == b"GET":
            self._get(exchange, pairs, token)
        elif method == b"POST":
            self._post(exchange, token)
        else:
            request.setResponseCode(400)
            return b""
        return NOT_DONE_YET

    def _query(self, request: Request) -> tuple[list[tuple[str, str]], str | None]:
        """
        The query's pairs for ``connect``, and the session token.

        As in Phoenix, the session token is the *last* ``token`` param (or
        the ``x-phoenix-longpoll-token`` header): phoenix.js appends its
        session token, once it has one, to the socket's own params.  An
        application's own ``token`` param (the demo's ``/auth_socket`` has
        one) comes first: when there are two, the last is left out of the
        params ``connect`` sees, so that a session started after the old one
        ended (a stale session token in the query) still authenticates.
        """
        _, _, query = request.uri.partition(b"?")
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace")
        header = request.getHeader(b"x-phoenix-longpoll-token")
        if header is not None:
            return pairs, header.decode("latin-1")
        found = [i for i, (key, _) in enumerate(pairs) if key == "token"]
        if not found:
            return pairs, None
        last = found[-1]
        token = pairs[last][1]
        if len(found) > 1:
            pairs = pairs[:last] + pairs[last + 1 :]
        return pairs, token

    def _resume(self, token: str | None) -> tuple[str, str] | None:
        """``(node, session id)`` of a valid session token of this socket."""
        if token is None:
            return None
        result = self.tokens.verify(TOKEN_SALT, token, max_age=self.socket_class.longpoll_token_max_age)
        data = result.data
        if not result.ok or type(data) is not tuple or len(data) != 4 or data[0] != "v1":
            return None
        _, node, mount, session_id = data
        if mount != self.mount or not isinstance(node, str) or not isinstance(session_id, str):
            return None
        return node, session_id

    def _local_node(self) -> str:
        return self.endpoint.pubsub.node_name

    # -- GET --------------------------------------------------------------------------

    def _get(self, exchange: _Exchange, pairs: list[tuple[str, str]], token: str | None) -> None:
        found = self._resume(token)
        if found is None:
            self._new_session(exchange, pairs)
            return
        node, session_id = found
        assert token is not None
        window = self.socket_class.longpoll_window
        if node != self._local_node():
            remote = _RemoteRequest(
                self, exchange, node, session_id, on_missing=lambda: self._new_session(exchange, pairs)
            )
            remote.poll(token, window)
            return
        session = self.sessions.get(session_id)
        if session is None:
            self._new_session(exchange, pairs)
            return
        poller = _LocalPoller(exchange, session, token, window)
        frames = session.poll(poller)
        if frames is not None:
            poller._stop()
            exchange.answer({"status": 200, "token": token, "messages": _texts(frames)})

    def _new_session(self, exchange: _Exchange, pairs: list[tuple[str, str]]) -> None:
        """Phoenix's ``new_session``: the handshake, then 410 with a token (403 if refused)."""
        if exchange.finished:
            return
        if self.endpoint.draining:
            exchange.answer_http(503)  # phoenix.js retries, through the load balancer
            return
        limit = self.endpoint.longpoll_session_limit()
        if self.endpoint.longpoll_session_count() >= limit:
            limited_log(self.log, self.endpoint.reactor, self.endpoint).warn(
                "Refused a long-poll session: {n} sessions (max_longpoll_sessions)", n=limit
            )
            self.endpoint.metrics.refuse(503)
            exchange.answer_http(503)  # phoenix.js retries with its backoff
            return
        request = exchange.request
        headers = {
            k.decode("latin-1").lower(): b", ".join(v).decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        path = request.path.decode("latin-1")
        peer = request.getClientAddress()
        handshake = HandshakeRequest(
            path=path,
            query=request.uri.partition(b"?")[2].decode("latin-1"),
            headers=headers,
            peer=(getattr(peer, "host", None), getattr(peer, "port", None)),
            secure=request.isSecure(),
        )
        info = connect_info(handshake)
        if self.socket_class.auth_token and "x-phoenix-authtoken" in headers:
            info["auth_token"] = headers["x-phoenix-authtoken"]
        params = params_from_pairs(pairs)
        params.update(path_params(self.mount, path))
        d: Deferred[Connected] = maybeDeferred(
            connect_now, self.endpoint, self.socket_class, params=params, info=info,
            serializers=self.serializers, transport="longpoll",
        )

        def connected(result: Connected) -> None:
            if exchange.finished:
                return  # the client left during connect: no session for nobody
            session_id = secrets.token_urlsafe(16)
            session = LongPollSession(self, session_id, result)
            self.sessions[session_id] = session
            token = self.tokens.sign(
                TOKEN_SALT, ("v1", self._local_node(), self.mount, session_id),
                max_age=self.socket_class.longpoll_token_max_age,
            )
            exchange.answer({"status": 410, "token": token, "messages": []})

        def refused(failure: Failure) -> None:
            # Phoenix's long-poll answers every refusal with 403.
            if not failure.check(Refusal):
                self.log.failure("Long-poll handshake failed", failure)
            self.endpoint.metrics.refuse(403)
            exchange.answer({"status": 403})

        d.addCallbacks(connected, refused).addErrback(
            lambda f: self.log.failure("Starting a long-poll session failed", f)
        )

    def session_ended(self, session: LongPollSession) -> None:
        """Forget ``session`` (called by :meth:`LongPollSession.end`)."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]

    # -- POST -------------------------------------------------------------------------

    def _post(self, exchange: _Exchange, token: str | None) -> None:
        request = exchange.request
        limit = self.endpoint.max_longpoll_body
        body = request.content.read(limit + 1) if request.content is not None else b""
        if len(body) > limit:
            exchange.answer({"status": 413})
            return
        ndjson = request.getHeader(b"content-type") == _NDJSON
        if ndjson:
            lines = [line[:-1] if line.endswith(b"\r") else line for line in body.split(b"\n")]
            lines = [line for line in lines if line]
        else:
            lines = [body]
        if len(lines) > self.socket_class.longpoll_max_batch:
            limited_log(self.log, self.endpoint.reactor, self.endpoint).warn(
                "Refused a long-poll post of {n} messages (longpoll_max_batch {limit})",
                n=len(lines), limit=self.socket_class.longpoll_max_batch,
            )
            exchange.answer({"status": 413})
            return
        found = self._resume(token)
        if found is None:
            exchange.answer({"status": 410})
            return
        node, session_id = found
        if node != self._local_node():
            try:
                texts = [line.decode("utf-8") for line in lines]
            except UnicodeDecodeError:
                exchange.answer({"status": 400})
                return
            remote = _RemoteRequest(
                self, exchange, node, session_id, on_missing=lambda: exchange.answer({"status": 410})
            )
            remote.dispatch(texts, ndjson)
            return
        session = self.sessions.get(session_id)
        if session is None:
            exchange.answer({"status": 410})
            return
        exchange.answer({"status": session.publish(lines, ndjson)})


class BodyLimitedRequest(Request):
    """
    A :class:`twisted.web.server.Request` that refuses a body larger than
    its site's ``max_body_size`` before reading it: at once from its
    ``Content-Length``, or as soon as a chunked body grows past it.  The
    client gets ``{"status": 413}`` (long-poll's answer) and the connection
    is closed.
    """

    _too_large = False
    _received = 0

    def _limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body_size", None)

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._received += len(data)
        limit = self._limit()
        if limit is not None and self._received > limit:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._too_large:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._too_large = True
        self.content = None
        # No "100 Continue" after this answer.
        self.requestHeaders.removeHeader(b"expect")
        body = _json({"status": 413})
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json; charset=utf-8\r\n"
            b"access-control-allow-origin: *\r\ncache-control: no-store\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        transport.loseConnection()
        Logger().warn("Refused a request body over {limit} bytes (max_longpoll_body)", limit=self._limit())
