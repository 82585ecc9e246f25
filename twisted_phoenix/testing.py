# -*- test-case-name: tests.test_session,tests.test_channel,tests.test_hello_sockets -*-
"""
Test your sockets and channels in memory: the twin of Phoenix's
``Phoenix.ChannelTest``.

Nothing here opens a network connection.  A :class:`ClientSocket` plays a
phoenix.js client on one in-memory connection: it encodes its frames the way
phoenix.js does and feeds them to the real per-connection session, and
everything the server writes goes through the real serializer before the
client decodes it again.  So a test sees exactly what a browser would.

Time is the endpoint's reactor: pass a :class:`twisted.internet.task.Clock`
(the default) and move it with :meth:`ChannelTest.advance` to fire
:meth:`~twisted_phoenix.channel.Channel.send_after` timers.

Example, with ``trial``'s :class:`~twisted.trial.unittest.SynchronousTestCase`::

    from twisted.trial.unittest import SynchronousTestCase

    from twisted_phoenix import Channel, Socket, ok
    from twisted_phoenix.testing import ANY, ChannelTest

    class RoomChannel(Channel):
        def join(self, topic, payload):
            self.send_after(5, "tick")

        def handle_in(self, event, payload):
            if event == "ping":
                return ok(payload)
            if event == "shout":
                self.broadcast("shout", payload)

        def handle_info(self, message):
            self.push(message, {})

    class UserSocket(Socket):
        channels = {"room:*": RoomChannel}

    class RoomChannelTests(SynchronousTestCase):
        def test_room(self):
            \"\"\"A room answers pings, relays shouts and ticks after 5 s.\"\"\"
            harness = ChannelTest()  # a plain Endpoint on a new Clock
            client = self.successResultOf(harness.connect(UserSocket, {"token": "abc"}))
            reply = self.successResultOf(client.join("room:lobby", {}))
            self.assertEqual(reply.status, "ok")

            ref = client.push("room:lobby", "ping", {"hello": "there"})
            client.assert_reply(ref, "ok", {"hello": "there"})

            lobby = harness.subscribe("room:lobby")
            client.push("room:lobby", "shout", {"body": "hi"})
            lobby.assert_broadcast("shout", {"body": "hi"})
            client.assert_broadcast("shout", {"body": "hi"})

            harness.advance(5)  # fires the send_after timer
            client.assert_push("tick", ANY)

Phoenix's helpers map onto these:

=============================  ==================================================
``Phoenix.ChannelTest``        here
=============================  ==================================================
``connect/3``                  :meth:`ChannelTest.connect` (a Deferred)
``socket/3``                   :meth:`ChannelTest.socket` (skips ``connect``)
``subscribe_and_join/4``       :meth:`ClientSocket.join` plus :meth:`ChannelTest.subscribe`
``push/3``                     :meth:`ClientSocket.push` (returns the ref)
``leave/1``, ``close/1``       :meth:`ClientSocket.leave`, :meth:`ClientSocket.close`
``assert_reply``               :meth:`ClientSocket.assert_reply`
``assert_push``                :meth:`ClientSocket.assert_push`
``assert_broadcast``           :meth:`BroadcastRecorder.assert_broadcast` (what was
                               broadcast on a topic) or
                               :meth:`ClientSocket.assert_broadcast` (the broadcast
                               frames this client received)
``refute_*``                   ``refute_reply``, ``refute_push``, ``refute_broadcast``
=============================  ==================================================

The ``assert_*`` methods behave like Elixir's ``assert_receive`` on an
already-filled mailbox: each consumes the first matching message not yet
asserted, so asserting the same push twice requires it to have arrived twice.
The lists :attr:`ClientSocket.messages`, :attr:`~ClientSocket.replies`,
:attr:`~ClientSocket.pushes` and :attr:`~ClientSocket.broadcasts` always hold
everything received, in order.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Union

import orjson
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import Logger

from ._session import Session
from .endpoint import Endpoint
from .message import (
    HEARTBEAT,
    HEARTBEAT_TOPIC,
    PHX_CLOSE,
    PHX_ERROR,
    PHX_JOIN,
    PHX_LEAVE,
    PHX_REPLY,
    Broadcast,
    Message,
    Reply,
)
from .serializers import SERIALIZERS, DecodeError, Frame, Serializer, json_dumps, select_serializer
from .socket import Socket

__all__ = [
    "ANY",
    "BroadcastRecorder",
    "ChannelTest",
    "ClientSocket",
    "FakeConnection",
    "decode_server_frame",
    "encode_client_message",
]

#: CLOSE code the WebSocket transport uses for a malformed frame.
CLOSE_INTERNAL_ERROR = 1011

Received = Union[Message, Reply, Broadcast]


class _Any:
    """Matches any value in the ``assert_*`` helpers."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __repr__(self) -> str:
        return "ANY"

    __hash__ = object.__hash__


#: A wildcard for ``assert_*`` arguments: ``client.assert_push("tick", ANY)``.
ANY: Any = _Any()

_DEFAULT: Any = object()


class FakeConnection:
    """
    An in-memory :class:`~twisted_phoenix.pubsub.Connection`: it records
    every :class:`~twisted_phoenix.serializers.Frame` written to it.

    Like the WebSocket transport, it drops frames once closed and, when the
    server closes it, tells the :attr:`session` that the connection is gone.

    :ivar frames: the frames written, in order (the very objects the server
        wrote: one broadcast reaches every subscriber as the same object).
    :ivar closed: whether the connection is closed (by either side).
    :ivar close_code: the WebSocket close code the server asked for, or
        ``None`` while open or after a close by the client.
    :ivar close_reason: the close reason the server gave.
    :ivar session: the :class:`~twisted_phoenix._session.Session` to notify.
    """

    def __init__(self, on_frame: Callable[[Frame], Any] | None = None) -> None:
        """
        :param on_frame: called with each frame as it is written.
        """
        self.frames: list[Frame] = []
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.session: Session | None = None
        self._on_frame = on_frame

    def send_frame(self, frame: Frame) -> None:
        """Record ``frame``, unless the connection is closed."""
        if self.closed:
            return
        self.frames.append(frame)
        if self._on_frame is not None:
            self._on_frame(frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """The server closes the connection: record why, end the session."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        if self.session is not None:
            self.session.connection_lost()

    def lose(self) -> None:
        """The client goes away: the session's channels terminate."""
        if self.closed:
            return
        self.closed = True
        if self.session is not None:
            self.session.connection_lost()


def _is_v1(serializer: Serializer) -> bool:
    return serializer.vsn.startswith("1.")


def encode_client_message(serializer: Serializer, message: Message) -> tuple[bytes, bool]:
    """
    Encode ``message`` the way phoenix.js (V2) or a V1 client would send it.

    :returns: ``(data, binary)``; a :class:`bytes` payload makes a V2 binary
        push (kind 0).
    :raises TypeError: for a binary payload on V1, which cannot carry one.
    """
    if type(message.payload) is bytes:
        if _is_v1(serializer):
            raise TypeError("the V1 protocol cannot carry binary payloads")
        fields = [
            b"" if value is None else str(value).encode("utf-8")
            for value in (message.join_ref, message.ref, message.topic, message.event)
        ]
        header = bytes([0] + [len(f) for f in fields])
        return header + b"".join(fields) + message.payload, True
    if _is_v1(serializer):
        obj: dict[str, Any] = {
            "topic": message.topic,
            "event": message.event,
            "payload": message.payload,
            "ref": message.ref,
        }
        if message.join_ref is not None:
            obj["join_ref"] = message.join_ref
        return json_dumps(obj), False
    return json_dumps(
        [message.join_ref, message.ref, message.topic, message.event, message.payload]
    ), False


def decode_server_frame(serializer: Serializer, frame: Frame) -> Received:
    """
    Decode a frame the server wrote, as a client would.

    :returns: a :class:`~twisted_phoenix.message.Reply` for ``phx_reply``
        (its ``payload`` is the response), a
        :class:`~twisted_phoenix.message.Broadcast` for a fastlane broadcast
        (V2 ``[null, null, ...]`` or binary kind 2), and a
        :class:`~twisted_phoenix.message.Message` for everything else.  V1
        cannot tell a push from a broadcast: both come back as a
        :class:`~twisted_phoenix.message.Message` with ``join_ref=None``.
        In binary frames, refs are strings (an absent one is ``""``).
    """
    data = frame.data
    if frame.binary:
        kind = data[0]
        if kind == 0:
            sizes, pos = data[1:4], 4
        elif kind == 1:
            sizes, pos = data[1:5], 5
        elif kind == 2:
            sizes, pos = data[1:3], 3
        else:
            raise ValueError(f"unknown binary frame kind {kind}")
        fields = []
        for size in sizes:
            fields.append(data[pos : pos + size].decode("utf-8"))
            pos += size
        payload = data[pos:]
        if kind == 0:
            join_ref, topic, event = fields
            return Message(topic, event, payload, None, join_ref)
        if kind == 1:
            join_ref, ref, topic, status = fields
            return Reply(topic, status, payload, ref, join_ref)
        topic, event = fields
        return Broadcast(topic, event, payload)
    obj = orjson.loads(data)
    if _is_v1(serializer):
        join_ref, ref, topic, event, payload = None, obj["ref"], obj["topic"], obj["event"], obj["payload"]
    else:
        join_ref, ref, topic, event, payload = obj
    if event == PHX_REPLY:
        return Reply(topic, payload["status"], payload["response"], ref, join_ref)
    if (
        not _is_v1(serializer)
        and join_ref is None
        and ref is None
        and event not in (PHX_CLOSE, PHX_ERROR)
    ):
        return Broadcast(topic, event, payload)
    return Message(topic, event, payload, ref, join_ref)


def _describe(items: Iterable[Any]) -> str:
    lines = [f"  {item!r}" for item in items]
    return "\n".join(lines) if lines else "  (nothing)"


class ClientSocket:
    """
    A client on one in-memory connection: what phoenix.js is to a browser.

    Refs are decimal strings from one counter, as phoenix.js makes them;
    a join's ref is also its join_ref, and later pushes to that topic carry
    it.

    :ivar socket: the server's :class:`~twisted_phoenix.socket.Socket`.
    :ivar session: the server side of the connection.
    :ivar connection: the :class:`FakeConnection` the server writes to.
    :ivar serializer: the serializer the ``vsn`` selected.
    :ivar join_refs: topic → the join_ref of this client's latest join.
    """

    log = Logger()

    def __init__(self, socket: Socket, serializer: Serializer) -> None:
        self.socket = socket
        self.serializer = serializer
        self.connection = FakeConnection(self._frame_written)
        self.join_refs: dict[str, Any] = {}
        self._messages: list[Received] = []
        self._pending: list[Received] = []
        self._waiters: dict[Any, list[Deferred[Reply]]] = {}
        self._refs = itertools.count(1)
        self.session = Session(socket, serializer, self.connection)
        self.connection.session = self.session

    def __repr__(self) -> str:
        return f"<ClientSocket {type(self.socket).__name__} vsn={self.serializer.vsn}>"

    # -- what the server wrote ---------------------------------------------------

    def _frame_written(self, frame: Frame) -> None:
        received = decode_server_frame(self.serializer, frame)
        self._messages.append(received)
        self._pending.append(received)
        if type(received) is Reply:
            for d in self._waiters.pop(received.ref, []):
                d.callback(received)

    def _settle(self) -> None:
        # What is already due runs before a test looks (Phoenix's
        # assert_push waits for the channel's mailbox the same way): e.g.
        # presence diffs, which go out on the next reactor turn.
        advance = getattr(self.socket.endpoint.reactor, "advance", None)
        if advance is not None:
            advance(0)

    @property
    def messages(self) -> list[Received]:
        """Every message received, decoded, in order."""
        self._settle()
        return self._messages

    @property
    def frames(self) -> list[Frame]:
        """The raw frames the server wrote, in order."""
        self._settle()
        return self.connection.frames

    @property
    def replies(self) -> list[Reply]:
        """Every ``phx_reply`` received; ``payload`` holds the response."""
        return [m for m in self.messages if type(m) is Reply]

    @property
    def pushes(self) -> list[Message]:
        """Every push received, ``phx_close`` and ``phx_error`` included."""
        return [m for m in self.messages if type(m) is Message]

    @property
    def broadcasts(self) -> list[Broadcast]:
        """Every fastlane broadcast frame received (V2 only; see :func:`decode_server_frame`)."""
        return [m for m in self.messages if type(m) is Broadcast]

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self.connection.closed

    @property
    def close_code(self) -> int | None:
        """The close code the server used, if it closed the connection."""
        return self.connection.close_code

    # -- sending -------------------------------------------------------------------

    def next_ref(self) -> str:
        """Take the next ref from the client's counter."""
        return str(next(self._refs))

    def send(self, message: Message) -> None:
        """Encode ``message`` as the client would and hand it to the server."""
        data, binary = encode_client_message(self.serializer, message)
        self.send_frame(data, binary)

    def send_frame(self, data: bytes, binary: bool = False) -> None:
        """
        Hand raw frame bytes to the server.  As the WebSocket transport does,
        a malformed frame closes the connection with 1011 (and is logged).
        """
        session = self.session
        if self.connection.closed or session.closed:
            return
        try:
            session.frame_received(data, binary)
        except DecodeError as e:
            self.log.error("Closing a connection that sent a malformed frame: {error}", error=str(e))
            self.connection.close(CLOSE_INTERNAL_ERROR, "malformed frame")
        except Exception:
            self.log.failure("Closing a connection after an error handling its frame")
            self.connection.close(CLOSE_INTERNAL_ERROR, "internal error")

    def join(self, topic: str, payload: Any = None, *, join_ref: Any = _DEFAULT) -> Deferred[Reply]:
        """
        Send ``phx_join``.  The Deferred fires with the join's
        :class:`~twisted_phoenix.message.Reply` (``status`` ``"ok"`` or
        ``"error"``, ``payload`` the response) once the server answers.

        :param join_ref: by default a fresh ref, also used as the join's ref;
            pass ``None`` to join without one.
        """
        ref = self.next_ref()
        if join_ref is _DEFAULT:
            join_ref = ref
        self.join_refs[topic] = join_ref
        d = self.wait_reply(ref)
        self.send(Message(topic, PHX_JOIN, {} if payload is None else payload, ref, join_ref))
        return d

    def push(self, topic: str, event: str, payload: Any = None, *, join_ref: Any = _DEFAULT) -> str:
        """
        Send ``event`` to ``topic``; :class:`bytes` make a binary push.

        :param join_ref: by default that of this client's latest join of
            ``topic`` (``None`` if it never joined it).
        :returns: the ref, for :meth:`assert_reply` or :meth:`wait_reply`.
        """
        ref = self.next_ref()
        if join_ref is _DEFAULT:
            join_ref = self.join_refs.get(topic)
        self.send(Message(topic, event, {} if payload is None else payload, ref, join_ref))
        return ref

    def leave(self, topic: str, *, join_ref: Any = _DEFAULT) -> str:
        """Send ``phx_leave`` to ``topic``; returns the ref."""
        return self.push(topic, PHX_LEAVE, {}, join_ref=join_ref)

    def heartbeat(self) -> str:
        """Send a heartbeat, as phoenix.js does every 30 s; returns the ref."""
        return self.push(HEARTBEAT_TOPIC, HEARTBEAT, {}, join_ref=None)

    def wait_reply(self, ref: Any) -> Deferred[Reply]:
        """A Deferred firing with the reply to ``ref`` (at once if already received)."""
        for message in self.messages:
            if type(message) is Reply and message.ref == ref:
                return succeed(message)
        d: Deferred[Reply] = Deferred()
        self._waiters.setdefault(ref, []).append(d)
        return d

    def close(self) -> None:
        """The client disconnects: every channel terminates with ``("shutdown", "closed")``."""
        self.connection.lose()

    # -- assertions ---------------------------------------------------------------

    def _take(self, kind: type, match: Callable[[Any], bool]) -> Any:
        self._settle()
        for i, message in enumerate(self._pending):
            if type(message) is kind and match(message):
                del self._pending[i]
                return message
        return None

    def _fail(self, wanted: str) -> AssertionError:
        return AssertionError(
            f"expected {wanted}; not yet asserted:\n{_describe(self._pending)}"
        )

    def assert_reply(self, ref: Any, status: str, response: Any = ANY) -> Reply:
        """
        Assert that the reply to ``ref`` arrived with ``status`` and
        ``response``; consumes and returns it.
        """
        found = self._take(
            Reply, lambda m: m.ref == ref and m.status == status and response == m.payload
        )
        if found is None:
            raise self._fail(f"a reply to {ref!r} with status {status!r} and response {response!r}")
        return found

    def assert_push(self, event: str, payload: Any = ANY, *, topic: Any = ANY) -> Message:
        """Assert that a push ``event`` arrived with ``payload``; consumes and returns it."""
        found = self._take(
            Message, lambda m: m.event == event and payload == m.payload and topic == m.topic
        )
        if found is None:
            raise self._fail(f"a push {event!r} with payload {payload!r}")
        return found

    def assert_broadcast(self, event: str, payload: Any = ANY, *, topic: Any = ANY) -> Broadcast:
        """
        Assert that a fastlane broadcast frame ``event`` reached this client;
        consumes and returns it.  To check what was broadcast on a topic
        instead, use :meth:`ChannelTest.subscribe`.
        """
        found = self._take(
            Broadcast, lambda m: m.event == event and payload == m.payload and topic == m.topic
        )
        if found is None:
            raise self._fail(f"a broadcast {event!r} with payload {payload!r}")
        return found

    def refute_reply(self, ref: Any) -> None:
        """Assert that no reply to ``ref`` has arrived (asserted or not)."""
        for m in self.replies:
            if m.ref == ref:
                raise AssertionError(f"unexpected reply {m!r}")

    def refute_push(self, event: str, payload: Any = ANY) -> None:
        """Assert that no not-yet-asserted push ``event`` with ``payload`` is there."""
        self._settle()
        for m in self._pending:
            if type(m) is Message and m.event == event and payload == m.payload:
                raise AssertionError(f"unexpected push {m!r}")

    def refute_broadcast(self, event: str, payload: Any = ANY) -> None:
        """Assert that no not-yet-asserted broadcast frame ``event`` is there."""
        self._settle()
        for m in self._pending:
            if type(m) is Broadcast and m.event == event and payload == m.payload:
                raise AssertionError(f"unexpected broadcast {m!r}")

    def clear(self) -> None:
        """Mark everything received so far as asserted."""
        self._settle()
        del self._pending[:]


class BroadcastRecorder:
    """
    Records every :class:`~twisted_phoenix.message.Broadcast` on a topic of
    the endpoint's PubSub, whether or not it takes the fastlane.

    :ivar broadcasts: what was broadcast, in order.
    """

    def __init__(self, endpoint: Endpoint, topic: str) -> None:
        self.endpoint = endpoint
        self.topic = topic
        self.broadcasts: list[Broadcast] = []
        self._pending: list[Broadcast] = []
        endpoint.subscribe(topic, self._record)

    def _record(self, broadcast: Broadcast) -> None:
        self.broadcasts.append(broadcast)
        self._pending.append(broadcast)

    def _settle(self) -> None:
        advance = getattr(self.endpoint.reactor, "advance", None)
        if advance is not None:
            advance(0)

    def assert_broadcast(self, event: str, payload: Any = ANY) -> Broadcast:
        """Assert that ``event`` was broadcast with ``payload``; consumes and returns it."""
        self._settle()
        for i, b in enumerate(self._pending):
            if b.event == event and payload == b.payload:
                del self._pending[i]
                return b
        raise AssertionError(
            f"expected a broadcast {event!r} with payload {payload!r} on {self.topic!r}; "
            f"not yet asserted:\n{_describe(self._pending)}"
        )

    def refute_broadcast(self, event: str, payload: Any = ANY) -> None:
        """Assert that no not-yet-asserted broadcast ``event`` with ``payload`` is there."""
        self._settle()
        for b in self._pending:
            if b.event == event and payload == b.payload:
                raise AssertionError(f"unexpected broadcast {b!r}")

    def stop(self) -> None:
        """Stop recording."""
        self.endpoint.unsubscribe(self.topic, self._record)


class ChannelTest:
    """
    An endpoint with in-memory clients.

    :param endpoint: an :class:`~twisted_phoenix.endpoint.Endpoint` instance,
        or a subclass to instantiate with ``reactor`` and
        ``endpoint_kwargs`` (e.g. ``secret_key_base=...``); by default a
        plain :class:`~twisted_phoenix.endpoint.Endpoint`.
    :param reactor: the time source for a new endpoint; a new
        :class:`~twisted.internet.task.Clock` by default.  An endpoint
        instance brings its own.

    :ivar endpoint: the endpoint.
    :ivar clock: its reactor.
    """

    def __init__(
        self,
        endpoint: Endpoint | type[Endpoint] | None = None,
        reactor: IReactorTime | None = None,
        **endpoint_kwargs: Any,
    ) -> None:
        if isinstance(endpoint, Endpoint):
            if reactor is not None or endpoint_kwargs:
                raise TypeError("pass reactor and endpoint arguments only with an Endpoint class")
            self.endpoint = endpoint
        else:
            endpoint_class = Endpoint if endpoint is None else endpoint
            self.endpoint = endpoint_class(Clock() if reactor is None else reactor, **endpoint_kwargs)
        self.clock: IReactorTime = self.endpoint.reactor

    def advance(self, seconds: float) -> None:
        """Move the clock forward (it must be a :class:`~twisted.internet.task.Clock`)."""
        self.clock.advance(seconds)  # type: ignore[attr-defined]

    def connect(
        self,
        socket_class: type[Socket],
        params: dict[str, Any] | None = None,
        connect_info: dict[str, Any] | None = None,
        *,
        vsn: str | None = "2.0.0",
    ) -> Deferred[ClientSocket | None]:
        """
        Connect a client as the WebSocket transport would: select the
        serializer by ``vsn`` (``None`` sends no vsn, which selects V1), run
        ``socket_class.connect(params, connect_info)`` with ``vsn`` added to
        the params, and check ``id()``.

        :returns: a Deferred firing with the :class:`ClientSocket`, or with
            ``None`` when ``connect`` refused.  It fails with
            :class:`~twisted_phoenix.serializers.VersionError` for a bad
            ``vsn``, with what ``connect`` raised (such as
            :class:`~twisted_phoenix.socket.ConnectRefused`), and with
            :class:`TypeError` when ``connect`` or ``id`` returns a value of
            the wrong type.
        """
        params = dict(params or {})
        if vsn is not None:
            params["vsn"] = vsn
        connect_info = dict(connect_info or {})
        try:
            serializer = select_serializer(
                params.get("vsn"), getattr(socket_class, "serializers", None) or SERIALIZERS
            )
        except Exception as e:
            return fail(e)
        socket = socket_class(self.endpoint)
        d = maybeDeferred(socket.connect, params, connect_info)

        def connected(accepted: Any) -> ClientSocket | None:
            if accepted is False:
                return None
            if accepted is not True:
                raise TypeError(
                    f"{socket_class.__name__}.connect returned {accepted!r}; expected True or False"
                )
            socket_id = socket.id()
            if socket_id is not None and not isinstance(socket_id, str):
                raise TypeError(
                    f"{socket_class.__name__}.id() returned {socket_id!r}; expected a str or None"
                )
            return ClientSocket(socket, serializer)

        return d.addCallback(connected)

    def socket(
        self,
        socket_class: type[Socket] = Socket,
        *,
        id: str | None = None,
        assigns: dict[str, Any] | None = None,
        vsn: str | None = "2.0.0",
    ) -> ClientSocket:
        """
        A connected client whose socket skipped ``connect`` (Phoenix's
        ``socket/3``): its ``assigns`` and ``id()`` are given here.
        """
        serializer = select_serializer(vsn, getattr(socket_class, "serializers", None) or SERIALIZERS)
        socket = socket_class(self.endpoint)
        socket.assigns.update(assigns or {})
        if id is not None:
            socket.id = lambda: id  # type: ignore[method-assign]
        return ClientSocket(socket, serializer)

    def subscribe(self, topic: str) -> BroadcastRecorder:
        """Record every broadcast on ``topic`` from now on."""
        return BroadcastRecorder(self.endpoint, topic)

    def broadcast(self, topic: str, event: str, payload: Any) -> None:
        """``Endpoint.broadcast``: send to every subscriber of ``topic``."""
        self.endpoint.broadcast(topic, event, payload)
