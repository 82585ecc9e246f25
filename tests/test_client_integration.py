"""
The Python client against the real server over loopback: the demo app's
scenarios (the list tests/js/phoenix_scenarios.js runs phoenix.js through),
for both serializers, plus binary payloads, presence on ``tracked``, the
auth token subprotocol, reconnecting after the server drops the connection,
and ``wss://`` with a test CA.

The server is an endpoint served in this process
(``Site(endpoint.resource())`` on 127.0.0.1, port 0); every wait is
bounded, and every connection is gone before a test ends.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any, Callable

from twisted.internet import defer, reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from twisted_phoenix import Channel as ServerChannel
from twisted_phoenix import Socket as ServerSocket
from twisted_phoenix import ok
from twisted_phoenix.client import (
    ConnectionFailed,
    Disconnected,
    Presence,
    PushTimeout,
    ReplyError,
    Socket,
    WebSocketTransport,
)
from twisted_phoenix.examples import hello_sockets
from twisted_phoenix.examples.hello_sockets import MAX_AGE, SALT
from twisted_phoenix.token import sign, verify

from ._apps import ConformanceEndpoint
from ._cluster import ClusterPKI

SECRET = "twisted_phoenix client integration test secret key base, 64 chars!!"
NODE_NAME = "client@127.0.0.1"
#: Seconds any single wait may take.
WAIT = 10.0


class BinaryChannel(ServerChannel):
    """Echoes binary pushes: a binary push back, and a binary reply."""

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "binary_event" and isinstance(payload, bytes):
            self.push("binary_event", b"\x00\x01")
            return ok(payload + b"\x03\x04")
        if event == "broadcast_bytes":
            self.broadcast("bytes", b"\xde\xad\xbe\xef")
            return None
        return super().handle_in(event, payload)


class BinarySocket(ServerSocket):
    channels = {"bin:*": BinaryChannel}


class ClientTestEndpoint(ConformanceEndpoint):
    """The demo endpoint, tests._apps's control and token sockets, and a binary socket."""

    sockets = {**ConformanceEndpoint.sockets, "/bin_socket": BinarySocket}


class _TrackingFactory(WrappingFactory):
    """Knows the server-side connections, and when none is left."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def wait_idle(self) -> Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d.addTimeout(WAIT, reactor)


class Events:
    """What the clients observed, with bounded waits for what is yet to come."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self._waiters: list[tuple[Callable[[], bool], Deferred[None]]] = []

    def add(self, *item: Any) -> None:
        self.items.append(item)
        for entry in list(self._waiters):
            condition, d = entry
            if condition() and entry in self._waiters:
                self._waiters.remove(entry)
                # On a later turn: the test goes on once the client's
                # callbacks for this frame have all run.
                reactor.callLater(0, d.callback, None)

    def of(self, *prefix: Any) -> list[tuple[Any, ...]]:
        """The events starting with ``prefix``."""
        return [item for item in self.items if item[: len(prefix)] == prefix]

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = WAIT) -> Deferred[None]:
        if condition():
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        entry = (condition, d)
        self._waiters.append(entry)

        def timed_out(failure: Any) -> Any:
            if entry in self._waiters:
                self._waiters.remove(entry)
            failure.trap(defer.TimeoutError, defer.CancelledError)
            raise AssertionError(f"no {what} within {timeout} s; seen: {self.items}")

        return d.addTimeout(timeout, reactor).addErrback(timed_out)

    def wait_count(self, n: int, *prefix: Any) -> Deferred[None]:
        return self.wait(lambda: len(self.of(*prefix)) >= n, f"{n} x {prefix}")


def token_for(user_id: Any, *, secret: str = SECRET, signed_at: float | None = None) -> str:
    return sign(secret, SALT, user_id, signed_at=signed_at)


class _Helpers:
    """A served endpoint and recording client sockets."""

    vsn: str
    timeout = 60
    #: Options every client socket gets (unless the test gives others).
    client_options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.events = Events()
        self.endpoint = ClientTestEndpoint(reactor, node_name=NODE_NAME, secret_key_base=SECRET)
        self.listen()

    def listen(self, tls: Any = None) -> None:
        site = Site(self.endpoint.resource())
        if tls is None:
            self.factory = _TrackingFactory(site)
        else:
            # The tracking wrapper goes outside TLS, so that Autobahn sees the TLS transport.
            self.factory = _TrackingFactory(TLSMemoryBIOFactory(tls, False, site))
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.stop_server)  # type: ignore[attr-defined]
        scheme = "ws" if tls is None else "wss"
        self.base = f"{scheme}://127.0.0.1:{self.port.getHost().port}"

    @inlineCallbacks
    def stop_server(self) -> Any:
        yield self.port.stopListening()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        yield self.factory.wait_idle()

    def socket(self, name: str, path: str = "/socket", **options: Any) -> Socket:
        """A client socket recording its events as ``name``; disconnected in cleanup."""
        for key, value in self.client_options.items():
            options.setdefault(key, value)
        options.setdefault("vsn", self.vsn)
        options.setdefault("timeout", 5.0)
        options.setdefault("rejoin_after", lambda tries: 0.1)
        options.setdefault("reconnect_after", lambda tries: 0.1)
        socket = Socket(self.base + path, reactor=reactor, **options)
        socket.on_open(lambda: self.events.add("open", name))
        socket.on_close(lambda event: self.events.add("close", name, event))
        socket.on_error(lambda error: self.events.add("error", name, error))
        socket.on_message(lambda message: self.events.add("message", name, message))
        self.addCleanup(self.disconnect, socket)  # type: ignore[attr-defined]
        return socket

    @inlineCallbacks
    def disconnect(self, socket: Socket) -> Any:
        transport = socket.conn
        yield socket.disconnect()
        if transport is not None and transport.ready_state != 3:
            # The closing handshake outlived the socket's bounded wait.
            yield self.events.wait(lambda: transport.ready_state == 3, "the transport closed")

    @inlineCallbacks
    def connected(self, name: str, path: str = "/socket", **options: Any) -> Any:
        socket = self.socket(name, path, **options)
        yield socket.connect().addTimeout(WAIT, reactor)
        return socket

    def channel(self, socket: Socket, name: str, topic: str, params: Any = None, events: tuple[str, ...] = ()) -> Any:
        """A channel recording its joins, errors, closes and the pushes of ``events``."""
        channel = socket.channel(topic, params)
        channel.join_push.receive("ok", lambda r: self.events.add("join", name, topic, "ok", r, channel.join_ref()))
        channel.join_push.receive("error", lambda r: self.events.add("join", name, topic, "error", r, channel.join_ref()))
        channel.on_error(lambda payload: self.events.add("chan_error", name, topic, payload))
        channel.on_close(lambda payload: self.events.add("chan_close", name, topic, payload))
        for event in events:
            channel.on(event, lambda payload, event=event: self.events.add("push", name, topic, event, payload))
        return channel

    @inlineCallbacks
    def joined(self, socket: Socket, name: str, topic: str, params: Any = None, events: tuple[str, ...] = ()) -> Any:
        channel = self.channel(socket, name, topic, params, events)
        yield channel.join().addTimeout(WAIT, reactor)
        return channel

    def assertStayedOpen(self, name: str) -> None:
        self.assertEqual(len(self.events.of("open", name)), 1, f"{name} opened once")  # type: ignore[attr-defined]
        self.assertEqual(self.events.of("error", name), [])  # type: ignore[attr-defined]
        self.assertEqual(self.events.of("close", name), [])  # type: ignore[attr-defined]

    def frames_in(self, name: str, topic: str) -> list[Any]:
        return [item[2] for item in self.events.of("message", name) if item[2].topic == topic]

    @inlineCallbacks
    def never_opens(self, name: str, path: str, **options: Any) -> Any:
        """The socket fails two attempts (each an error then a close), never opening; fires with the error messages."""
        socket = self.socket(name, path, **options)
        connecting = socket.connect()
        yield self.events.wait(
            lambda: len(self.events.of("error", name)) >= 2 and len(self.events.of("close", name)) >= 2,
            f"two failed attempts of {name}",
        )
        yield socket.disconnect()
        self.assertEqual(self.events.of("open", name), [])  # type: ignore[attr-defined]
        for _, _, error in self.events.of("error", name)[:2]:
            self.assertIsInstance(error, ConnectionFailed)  # type: ignore[attr-defined]
        for _, _, event in self.events.of("close", name)[:2]:
            self.assertEqual((event.code, event.was_clean), (1006, False))  # type: ignore[attr-defined]
        yield self.assertFailure(connecting, Disconnected)  # type: ignore[attr-defined]
        return [str(e[2]) for e in self.events.of("error", name)]


class _Scenarios(_Helpers):
    """The scenarios, run once per serializer by the subclasses below."""

    # -- /socket: PingChannel -------------------------------------------------------------

    @inlineCallbacks
    def test_ping(self) -> Any:
        """PingChannel answers ping, ping:PHRASE and param_ping (ok/error) on ping and ping:*; pong never."""
        s = yield self.connected("a")
        ping = yield self.joined(s, "a", "ping")
        self.assertEqual((yield ping.push("ping", {})), {"ping": "pong"})
        self.assertEqual((yield ping.push("ping:hello world", {})), {"ping": "hello world"})
        failure = yield self.assertFailure(ping.push("pong", {}, timeout=0.3), PushTimeout)
        self.assertEqual(failure.timeout, 0.3)
        error = yield self.assertFailure(ping.push("param_ping", {"error": True}), ReplyError)
        self.assertEqual(error.response, {"reason": "You asked for this!"})
        payload = {"error": False, "nested": {"list": [1, 2.5, "é"], "none": None}}
        self.assertEqual((yield ping.push("param_ping", payload)), payload)
        lobby = yield self.joined(s, "a", "ping:lobby")
        self.assertEqual((yield lobby.push("ping", {})), {"ping": "pong"})
        self.assertEqual((yield lobby.push("ping:lobby phrase", {})), {"ping": "lobby phrase"})
        self.assertEqual(self.events.of("join", "a", "ping"), [("join", "a", "ping", "ok", {}, ping.join_ref())])
        self.assertStayedOpen("a")

    @inlineCallbacks
    def test_ding(self) -> Any:
        """ding replies ok, then phx_close closes the channel for good; the socket and other channels live on."""
        s = yield self.connected("a")
        ping = yield self.joined(s, "a", "ping")
        other = yield self.joined(s, "a", "ping:other")
        self.assertEqual((yield ping.push("ding", {})), {"msg": "shutting down"})
        yield self.events.wait_count(1, "chan_close", "a", "ping")
        self.assertEqual(self.events.of("chan_close", "a", "ping"), [("chan_close", "a", "ping", {})])
        self.assertTrue(ping.is_closed())
        self.assertFalse(ping.rejoin_timer.pending)
        self.assertEqual([c.topic for c in s.channels], ["ping:other"])
        self.assertEqual((yield other.push("ping", {})), {"ping": "pong"})
        self.assertEqual(self.events.of("chan_error", "a"), [])
        self.assertEqual(len(self.events.of("join", "a", "ping")), 1)
        self.assertStayedOpen("a")

    @inlineCallbacks
    def test_crash_rejoins(self) -> Any:
        """An unhandled event crashes the channel (phx_error channel_crash); the client rejoins with a new join_ref."""
        s = yield self.connected("a")
        ping = yield self.joined(s, "a", "ping")
        side = yield self.joined(s, "a", "ping:side")
        first_ref = ping.join_ref()
        crash = ping.push("no_such_event", {"x": 1}, timeout=1.0)
        yield self.events.wait_count(1, "chan_error", "a", "ping")
        self.assertEqual(self.events.of("chan_error", "a", "ping")[0][3], {"reason": "channel_crash"})
        yield self.events.wait_count(2, "join", "a", "ping")
        self.assertNotEqual(ping.join_ref(), first_ref)
        self.assertTrue(ping.is_joined())
        self.assertEqual((yield ping.push("ping", {})), {"ping": "pong"})
        self.assertEqual((yield side.push("ping", {})), {"ping": "pong"})
        yield self.assertFailure(crash, PushTimeout)
        self.assertEqual(self.events.of("chan_error", "a", "ping:side"), [])
        # The server logs the crash.
        self.assertEqual(len(self.flushLoggedErrors(NotImplementedError)), 1)
        self.assertStayedOpen("a")

    @inlineCallbacks
    def test_broadcast(self) -> Any:
        """broadcast reaches every client on the topic, the sender included; no reply."""
        a = yield self.connected("a")
        b = yield self.connected("b")
        pa = yield self.joined(a, "a", "ping", events=("broadcast",))
        yield self.joined(b, "b", "ping", events=("broadcast",))
        replied = pa.push("broadcast", {"body": "hi", "n": 1}, timeout=0.3)
        yield self.events.wait_count(1, "push", "a", "ping", "broadcast")
        yield self.events.wait_count(1, "push", "b", "ping", "broadcast")
        for name in ("a", "b"):
            self.assertEqual(self.events.of("push", name, "ping", "broadcast"), [("push", name, "ping", "broadcast", {"body": "hi", "n": 1})])
            (frame,) = [m for m in self.frames_in(name, "ping") if m.event == "broadcast"]
            self.assertEqual((frame.join_ref, frame.ref), (None, None))
        yield self.assertFailure(replied, PushTimeout)

    @inlineCallbacks
    def test_wildcard(self) -> Any:
        """wild:A:B joins only when B = 2A; a refused join fails with ReplyError {} and leave() stops its retries."""
        s = yield self.connected("a")
        good = yield self.joined(s, "a", "wild:1:2")
        self.assertEqual((yield good.push("ping", {})), {"ping": "pong"})
        for topic in ("wild:1:3", "wild:a:b", "wild:1:2:4"):
            channel = self.channel(s, "a", topic)
            error = yield self.assertFailure(channel.join(), ReplyError)
            self.assertEqual((error.response, error.topic), ({}, topic))
            yield channel.leave()
            self.assertFalse(channel.rejoin_timer.pending)
        yield self.joined(s, "a", "wild:21:42")
        self.assertStayedOpen("a")

    @inlineCallbacks
    def test_heartbeat(self) -> Any:
        """Heartbeats every 100 ms are answered and keep the connection open."""
        s = yield self.connected("a", heartbeat_interval=0.1)
        ping = yield self.joined(s, "a", "ping")

        def replies() -> list[Any]:
            return [m for m in self.frames_in("a", "phoenix") if m.event == "phx_reply"]

        yield self.events.wait(lambda: len(replies()) >= 4, "four heartbeat replies")
        for reply in replies()[:4]:
            self.assertEqual((reply.payload, reply.join_ref), ({"response": {}, "status": "ok"}, None))
        self.assertEqual((yield ping.push("ping", {})), {"ping": "pong"})
        self.assertStayedOpen("a")

    # -- /auth_socket ------------------------------------------------------------------

    @inlineCallbacks
    def test_auth(self) -> Any:
        """A signed token connects and joins only its own user:ID; bad, expired, forged or no tokens never connect."""
        s = yield self.connected("u42", "/auth_socket", params={"token": token_for(42)})
        yield self.joined(s, "u42", "user:42")
        other = self.channel(s, "u42", "user:43")
        error = yield self.assertFailure(other.join(), ReplyError)
        self.assertEqual(error.response, {"reason": "unauthorized"})
        yield other.leave()
        ping = yield self.joined(s, "u42", "ping")
        self.assertEqual((yield ping.push("ping", {})), {"ping": "pong"})
        self.assertStayedOpen("u42")
        bad_tokens = {
            "garbage": {"token": "garbage"},
            "expired": {"token": token_for(42, signed_at=time.time() - 2 * MAX_AGE)},
            "forged": {"token": token_for(42, secret="another secret key base, 64 characters long, not the server's")},
            "missing": {},
        }
        yield defer.gatherResults([self.never_opens(name, "/auth_socket", params=p) for name, p in bad_tokens.items()])

    @inlineCallbacks
    def test_bad_token_error_names_403(self) -> Any:
        """A refused handshake is reported as a ConnectionFailed naming the HTTP 403."""
        messages = yield self.never_opens("garbage", "/auth_socket", params={"token": "garbage"})
        self.assertIn("403", messages[0])

    @inlineCallbacks
    def test_recurring(self) -> Any:
        """RecurringChannel pushes new_token from join on, periodically; each token verifies for the user."""
        self.patch(hello_sockets, "recurring_seconds", lambda: 0.2)  # type: ignore[attr-defined]
        s = yield self.connected("u42", "/auth_socket", params={"token": token_for(42)})
        channel = yield self.joined(s, "u42", "recurring", events=("new_token",))
        yield self.events.wait_count(2, "push", "u42", "recurring", "new_token")
        for item in self.events.of("push", "u42", "recurring", "new_token"):
            result = verify(SECRET, SALT, item[4]["token"], max_age=MAX_AGE)
            self.assertTrue(result.ok, result.error)
            self.assertEqual(result.data, 42)
        yield channel.leave()
        self.assertStayedOpen("u42")

    # -- tests._apps: Endpoint.broadcast and auth_token -------------------------------------

    @inlineCallbacks
    def test_send_ping(self) -> Any:
        """request_ping comes out as send_ping with from_node and the join_ref; other broadcasts with null refs."""
        s = yield self.connected("a")
        ping = yield self.joined(s, "a", "ping", events=("send_ping", "news"))
        c = yield self.connected("control", "/control_socket")
        control = yield self.joined(c, "control", "control:1")
        yield control.push("broadcast", {"topic": "ping", "event": "request_ping", "payload": {"hello": "world"}})
        yield self.events.wait_count(1, "push", "a", "ping", "send_ping")
        yield control.push("broadcast", {"topic": "ping", "event": "news", "payload": {"headline": "extra"}})
        yield self.events.wait_count(1, "push", "a", "ping", "news")
        self.assertEqual(self.events.of("push", "a", "ping", "send_ping")[0][4], {"hello": "world", "from_node": NODE_NAME})
        self.assertEqual(self.events.of("push", "a", "ping", "news")[0][4], {"headline": "extra"})
        frames = {m.event: m for m in self.frames_in("a", "ping")}
        if self.vsn.startswith("2."):
            self.assertEqual(frames["send_ping"].join_ref, ping.join_ref())
        self.assertEqual((frames["news"].join_ref, frames["news"].ref), (None, None))
        self.assertStayedOpen("a")

    @inlineCallbacks
    def test_disconnect_broadcast_reconnects(self) -> Any:
        """A "disconnect" broadcast closes that user's connection (1001); the client reconnects and rejoins."""
        u42 = yield self.connected("u42", "/auth_socket", params={"token": token_for(42)})
        u43 = yield self.connected("u43", "/auth_socket", params={"token": token_for(43)})
        yield self.joined(u42, "u42", "ping")
        p43 = yield self.joined(u43, "u43", "ping")
        c = yield self.connected("control", "/control_socket")
        control = yield self.joined(c, "control", "control:1")
        yield control.push("broadcast", {"topic": "auth_socket:42", "event": "disconnect", "payload": {}})
        yield self.events.wait_count(1, "close", "u42")
        (close,) = self.events.of("close", "u42")
        self.assertEqual(close[2].code, 1001)
        yield self.events.wait_count(2, "open", "u42")
        yield self.events.wait_count(2, "join", "u42", "ping")
        self.assertEqual([j[3] for j in self.events.of("join", "u42", "ping")], ["ok", "ok"])
        self.assertEqual((yield p43.push("ping", {})), {"ping": "pong"})
        self.assertStayedOpen("u43")

    @inlineCallbacks
    def test_auth_token_subprotocol(self) -> Any:
        """auth_token reaches connect_info["auth_token"]; the server picks the "phoenix" subprotocol."""
        s = yield self.connected("t7", "/token_socket", auth_token=token_for(7))
        self.assertEqual(s.conn.protocol, "phoenix")
        whoami = self.channel(s, "t7", "whoami")
        self.assertEqual((yield whoami.join()), {"user_id": 7})
        self.assertStayedOpen("t7")
        forged = token_for(7, secret="another secret key base, 64 characters long, not the server's")
        yield defer.gatherResults([
            self.never_opens("anonymous", "/token_socket"),
            self.never_opens("forged", "/token_socket", auth_token=forged),
        ])

    # -- presence, reconnects -------------------------------------------------------------

    @inlineCallbacks
    def test_presence_tracked(self) -> Any:
        """Presence on tracked: each client sees the state, then the others join and leave through diffs."""
        alice_socket = yield self.connected("alice")
        alice_channel = alice_socket.channel("tracked", {"user_id": "alice"})
        alice = Presence(alice_channel)
        alice.on_join(lambda key, current, new: self.events.add("p_join", "alice", key, current is None))
        alice.on_leave(lambda key, current, left: self.events.add("p_leave", "alice", key, len(current["metas"])))
        alice.on_sync(lambda: self.events.add("p_sync", "alice", sorted(alice.list(lambda k, p: k))))
        yield alice_channel.join()
        yield self.events.wait(lambda: ("p_sync", "alice", ["alice"]) in self.events.items, "alice's own state")
        (meta,) = alice.state["alice"]["metas"]
        self.assertEqual(set(meta), {"online_at", "phx_ref"})

        bob_socket = yield self.connected("bob")
        bob_channel = bob_socket.channel("tracked", {"user_id": "bob"})
        bob = Presence(bob_channel)
        bob.on_sync(lambda: self.events.add("p_sync", "bob", sorted(bob.list(lambda k, p: k))))
        yield bob_channel.join()
        yield self.events.wait(lambda: ("p_sync", "bob", ["alice", "bob"]) in self.events.items, "bob sees both")
        yield self.events.wait(lambda: ("p_sync", "alice", ["alice", "bob"]) in self.events.items, "alice sees bob")
        self.assertIn(("p_join", "alice", "bob", True), self.events.items)

        yield bob_channel.leave()
        yield self.events.wait(lambda: ("p_leave", "alice", "bob", 0) in self.events.items, "alice sees bob leave")
        self.assertEqual(alice.list(lambda k, p: k), ["alice"])

    @inlineCallbacks
    def test_reconnect_after_server_drops(self) -> Any:
        """When the server drops the TCP connection, the client reconnects and its channels rejoin."""
        s = yield self.connected("a")
        ping = yield self.joined(s, "a", "ping")
        first_ref = ping.join_ref()
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()
        yield self.events.wait_count(1, "close", "a")
        (close,) = self.events.of("close", "a")
        self.assertEqual((close[2].code, close[2].was_clean), (1006, False))
        self.assertEqual(self.events.of("chan_error", "a", "ping"), [("chan_error", "a", "ping", {"source": "transport", "reason": "connection_closed"})])
        yield self.events.wait_count(2, "open", "a")
        yield self.events.wait_count(2, "join", "a", "ping")
        self.assertNotEqual(ping.join_ref(), first_ref)
        self.assertEqual((yield ping.push("ping", {})), {"ping": "pong"})

    @inlineCallbacks
    def test_push_buffered_before_connect(self) -> Any:
        """A join and pushes made before the socket connects go out once it opens, in order."""
        s = self.socket("a")
        ping = self.channel(s, "a", "ping")
        joined = ping.join()
        pongs = [ping.push("ping", {}), ping.push("ping:x", {})]
        yield s.connect().addTimeout(WAIT, reactor)
        self.assertEqual((yield joined), {})
        self.assertEqual((yield defer.gatherResults(pongs)), [{"ping": "pong"}, {"ping": "x"}])


class ClientV1Tests(_Scenarios, TestCase):
    """The Python client with the V1 JSON-object serializer (``vsn=1.0.0``)."""

    vsn = "1.0.0"


class ClientV2Tests(_Scenarios, TestCase):
    """The Python client with the V2 serializer (``vsn=2.0.0``)."""

    vsn = "2.0.0"

    @inlineCallbacks
    def test_binary(self) -> Any:
        """bytes pushes travel as binary frames; binary pushes, replies and broadcasts come back as bytes."""
        s = yield self.connected("a", "/bin_socket")
        channel = yield self.joined(s, "a", "bin:lobby", events=("binary_event", "bytes"))
        self.assertEqual((yield channel.push("binary_event", b"\x01\x02")), b"\x01\x02\x03\x04")
        yield self.events.wait_count(1, "push", "a", "bin:lobby", "binary_event")
        self.assertEqual(self.events.of("push", "a", "bin:lobby", "binary_event")[0][4], b"\x00\x01")
        no_reply = channel.push("broadcast_bytes", {}, timeout=0.3)
        yield self.events.wait_count(1, "push", "a", "bin:lobby", "bytes")
        self.assertEqual(self.events.of("push", "a", "bin:lobby", "bytes")[0][4], b"\xde\xad\xbe\xef")
        yield self.assertFailure(no_reply, PushTimeout)


class ClientTLSTests(_Helpers, TestCase):
    """The Python client over wss:// with a test CA."""

    vsn = "2.0.0"

    def setUp(self) -> None:
        self.events = Events()
        self.endpoint = ClientTestEndpoint(reactor, node_name=NODE_NAME, secret_key_base=SECRET)
        directory = tempfile.mkdtemp(prefix="twisted_phoenix_client_tls_")
        self.addCleanup(shutil.rmtree, directory, True)
        pki = ClusterPKI(directory, "twisted_phoenix client test CA")
        cert_path, key_path = pki.issue("localhost")  # valid for 127.0.0.1 and localhost
        with open(pki.ca_path, "rb") as f:
            self.ca = ssl.Certificate.loadPEM(f.read())
        self.client_options = {"trust_root": self.ca}
        self.listen(tls=ssl.DefaultOpenSSLContextFactory(key_path, cert_path))

    @inlineCallbacks
    def test_wss_ping(self) -> Any:
        """A client trusting the CA connects over wss:// (to 127.0.0.1 and to localhost), joins ping and gets pong."""
        for host, name in (("127.0.0.1", "ip"), ("localhost", "name")):
            self.base = self.base.replace("127.0.0.1", host)
            s = yield self.connected(name)
            self.assertTrue(s.conn.url.startswith(f"wss://{host}:"))
            ping = yield self.joined(s, name, "ping")
            self.assertEqual((yield ping.push("ping", {})), {"ping": "pong"})

    @inlineCallbacks
    def test_untrusted_certificate_refused(self) -> Any:
        """A client that does not trust the CA never opens; the error names the certificate."""
        messages = yield self.never_opens("a", "/socket", trust_root=None)
        self.assertIn("certificate", messages[0].lower())


class _Recorder:
    """A TransportHandler that records what it is told (also into ``events``, for waits)."""

    def __init__(self, events: Events | None = None) -> None:
        self.events: list[tuple[str, Any]] = []
        self._also = events or Events()
        self.closed: Deferred[None] = Deferred()

    def _record(self, kind: str, value: Any) -> None:
        self.events.append((kind, value))
        self._also.add(kind, value)

    def transport_open(self) -> None:
        self._record("open", None)

    def transport_message(self, data: bytes, binary: bool) -> None:
        self._record("message", (data, binary))

    def transport_error(self, error: BaseException) -> None:
        self._record("error", error)

    def transport_close(self, event: Any) -> None:
        self._record("close", event)
        self.closed.callback(None)


class WebSocketTransportTests(_Helpers, TestCase):
    """L{WebSocketTransport} on its own, against the served endpoint."""

    vsn = "2.0.0"

    def setUp(self) -> None:
        self.events = Events()
        self.endpoint = ClientTestEndpoint(reactor, node_name=NODE_NAME, secret_key_base=SECRET)
        self.listen()

    def test_badUrl(self) -> None:
        """Only ws:// and wss:// URLs are accepted."""
        for url in ("http://127.0.0.1/socket/websocket", "ws:///nohost"):
            self.assertRaises(ValueError, WebSocketTransport, url, None, _Recorder(), reactor=reactor)

    @inlineCallbacks
    def test_closeBeforeConnecting(self) -> Any:
        """close() right after creation: only a close event (1006), on a later turn, and no connection."""
        handler = _Recorder()
        transport = WebSocketTransport(self.base + "/socket/websocket?vsn=2.0.0", None, handler, reactor=reactor)
        transport.close()
        self.assertEqual(handler.events, [])
        yield handler.closed.addTimeout(WAIT, reactor)
        self.assertEqual([kind for kind, _ in handler.events], ["close"])
        self.assertEqual(handler.events[0][1].code, 1006)
        self.assertEqual(transport.ready_state, 3)

    @inlineCallbacks
    def test_openSendClose(self) -> Any:
        """open, a frame each way, then a clean close with the code given, reported once."""
        handler = _Recorder(self.events)
        transport = WebSocketTransport(self.base + "/socket/websocket?vsn=2.0.0", None, handler, reactor=reactor)
        self.assertEqual(transport.ready_state, 0)
        yield self.events.wait_count(1, "open")
        self.assertEqual(transport.ready_state, 1)
        transport.send(b'["1","1","ping","phx_join",{}]', False)
        yield self.events.wait_count(1, "message")
        transport.close(4001, "done")
        self.assertEqual(transport.ready_state, 2)
        transport.close()  # a no-op while closing
        yield handler.closed.addTimeout(WAIT, reactor)
        self.assertEqual(
            handler.events,
            [
                ("open", None),
                ("message", (b'["1","1","ping","phx_reply",{"response":{},"status":"ok"}]', False)),
                ("close", handler.events[-1][1]),
            ],
        )
        self.assertEqual(handler.events[-1][1].was_clean, True)
        self.assertIsNone(transport.protocol)
