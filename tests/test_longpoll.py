"""
Tests for L{twisted_phoenix.transports.longpoll}: Phoenix's long-poll
transport, driven in memory through L{Endpoint.site} (the server's whole
HTTP stack) on a L{MemoryReactorClock}, and across two in-memory cluster
nodes for the forwarding of requests.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix import Channel, Endpoint, Socket, ok
from twisted_phoenix.transports.longpoll import TOKEN_SALT
from twisted_phoenix.token import Token

from .test_presence_tracker import Network

SECRET = "long-poll test secret key base, at least sixty-four characters long."
NOW = 1_700_000_000
WINDOW = 10.0


class EchoChannel(Channel):
    """Joins anything; answers ping, the size of a binary push, and terminates into a list."""

    terminated: list[Any] = []

    def join(self, topic: str, payload: Any) -> Any:
        return ok()

    def handle_in(self, event: str, payload: Any) -> Any:
        if event == "ping":
            return ok({"ping": "pong"})
        if event == "size" and isinstance(payload, bytes):
            return ok({"size": len(payload)})
        if event == "shout":
            self.broadcast("shout", payload)
            return None
        return super().handle_in(event, payload)

    def terminate(self, reason: Any) -> None:
        EchoChannel.terminated.append((self.topic, reason))


class EchoSocket(Socket):
    """Anyone connects, except with ``refuse=1``; ``connect_info`` is kept for the tests."""

    channels = {"room:*": EchoChannel}
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        EchoSocket.seen.append((params, connect_info))
        return params.get("refuse") != "1"

    def id(self) -> str | None:
        user = self.assigns.get("user")
        return None if user is None else f"user:{user}"


class UserEchoSocket(EchoSocket):
    """Has a socket id (``user:<user param>``)."""

    def connect(self, params: dict[str, Any], connect_info: dict[str, Any]) -> bool:
        self.assigns["user"] = params.get("user", "1")
        return True


class TokenSocket(EchoSocket):
    """Takes phoenix.js's authToken."""

    auth_token = True


class NoLongPollSocket(EchoSocket):
    """Turns long-poll off."""

    longpoll = False


class LongPollEndpoint(Endpoint):
    sockets = {
        "/socket": EchoSocket,
        "/user": UserEchoSocket,
        "/token": TokenSocket,
        "/ws_only": NoLongPollSocket,
        "/rooms/:room": EchoSocket,
    }
    check_origin = ["//example.com"]
    max_longpoll_body = 4096


class Response:
    """One HTTP response read off a L{StringTransport}."""

    def __init__(self, transport: StringTransport) -> None:
        raw = transport.value()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split(b" ")[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode()] = value.strip().decode()
        self.body = body
        self.closed = transport.disconnecting

    def json(self) -> Any:
        return json.loads(self.body)


class LongPollTestCase(SynchronousTestCase):
    """An endpoint served by its own site on a memory reactor."""

    endpoint_class = LongPollEndpoint

    def setUp(self) -> None:
        EchoChannel.terminated = []
        EchoSocket.seen = []
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.endpoint = self.make_endpoint()

    def make_endpoint(self, **kwargs: Any) -> Endpoint:
        endpoint = self.endpoint_class(self.reactor, secret_key_base=SECRET, **kwargs)
        endpoint.site_ = endpoint.site()  # type: ignore[attr-defined]
        return endpoint

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        endpoint: Endpoint | None = None,
        chunked: bool = False,
    ) -> StringTransport:
        """Send one request on a new connection; the transport holds the answer once there is one."""
        endpoint = endpoint or self.endpoint
        site = endpoint.site_  # type: ignore[attr-defined]
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif (body or method == "POST") and "Content-Length" not in (headers or {}):
            lines.append(f"Content-Length: {len(body)}")
        protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.reactor.advance(0)  # the site's turnstile
        if body and not chunked:
            protocol.dataReceived(body)
        self.reactor.advance(0)
        transport.protocol_ = protocol  # type: ignore[attr-defined]
        return transport

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, **kw: Any) -> Response:
        transport = self.send(method, path, body, headers, **kw)
        self.assertTrue(transport.value(), f"no answer yet to {method} {path}")
        return Response(transport)

    def open(self, path: str = "/socket/longpoll?vsn=2.0.0", **kw: Any) -> str:
        """Start a session; its token."""
        answer = self.request("GET", path, **kw).json()
        self.assertEqual(answer["status"], 410, answer)
        return answer["token"]

    def post(self, token: str, *lines: Any, mount: str = "/socket", **kw: Any) -> dict[str, Any]:
        body = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()
        return self.request(
            "POST", f"{mount}/longpoll?vsn=2.0.0&token={token}", body,
            {"Content-Type": "application/x-ndjson"}, **kw,
        ).json()

    def poll(self, token: str, mount: str = "/socket", **kw: Any) -> dict[str, Any]:
        return self.request("GET", f"{mount}/longpoll?vsn=2.0.0&token={token}", **kw).json()

    def sessions(self, mount: str = "/socket", endpoint: Endpoint | None = None) -> dict[str, Any]:
        return (endpoint or self.endpoint).longpoll_resources()[mount].sessions


class LongPollTests(LongPollTestCase):
    """
    Tests for the long-poll transport on one node.
    """

    def test_newSession(self) -> None:
        """A GET without a token connects and answers 410 with a session token, in an HTTP 200 with CORS headers."""
        response = self.request("GET", "/socket/longpoll?vsn=2.0.0&x=1")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["access-control-allow-origin"], "*")
        self.assertEqual(response.headers["cache-control"], "no-store")
        self.assertTrue(response.headers["content-type"].startswith("application/json"))
        answer = response.json()
        self.assertEqual((answer["status"], answer["messages"]), (410, []))
        result = Token(SECRET, clock=self.reactor).verify(TOKEN_SALT, answer["token"])
        self.assertTrue(result.ok)
        version, node, mount, session_id = result.data
        self.assertEqual((version, node, mount), ("v1", "nonode@nohost", "/socket"))
        self.assertEqual(list(self.sessions()), [session_id])
        params, info = EchoSocket.seen[0]
        self.assertEqual(params, {"vsn": "2.0.0", "x": "1"})
        self.assertEqual(info["uri"]["path"], "/socket/longpoll")
        self.assertEqual(info["peer_data"]["address"], "127.0.0.1")

    def test_refused(self) -> None:
        """A GET whose connect refuses answers {"status": 403} and starts no session."""
        self.assertEqual(self.request("GET", "/socket/longpoll?vsn=2.0.0&refuse=1").json(), {"status": 403})
        self.assertEqual(self.sessions(), {})

    def test_badVsn(self) -> None:
        """An unknown vsn is refused with 403."""
        self.assertEqual(self.request("GET", "/socket/longpoll?vsn=9.0.0").json(), {"status": 403})

    def test_origin(self) -> None:
        """check_origin applies: Origin: null and a foreign origin get 403; an allowed one connects."""
        for origin in ("null", "https://evil.example.org"):
            response = self.request("GET", "/socket/longpoll?vsn=2.0.0", headers={"Origin": origin})
            self.assertEqual(response.json(), {"status": 403}, origin)
            self.assertEqual(response.headers["access-control-allow-origin"], "*")
        self.open(headers={"Origin": "https://example.com"})

    def test_preflight(self) -> None:
        """OPTIONS is answered as Phoenix's CORS preflight."""
        response = self.request(
            "OPTIONS", "/socket/longpoll", headers={"Access-Control-Request-Headers": "content-type, x-phoenix-authtoken"}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["access-control-allow-origin"], "*")
        self.assertEqual(response.headers["access-control-allow-headers"], "content-type, x-phoenix-authtoken")
        self.assertEqual(response.headers["access-control-allow-methods"], "get, post, options")
        self.assertEqual(response.headers["access-control-max-age"], "3600")
        self.assertEqual(response.body, b"")

    def test_otherMethod(self) -> None:
        """Any other method gets HTTP 400."""
        self.assertEqual(self.request("PUT", "/socket/longpoll").code, 400)

    def test_postAndPoll(self) -> None:
        """An ndjson post of a join and a ping answers 200; the next poll carries both replies, as frame text."""
        token = self.open()
        self.assertEqual(
            self.post(token, ["1", "1", "room:a", "phx_join", {}], ["1", "2", "room:a", "ping", {}]), {"status": 200}
        )
        answer = self.poll(token)
        self.assertEqual((answer["status"], answer["token"]), (200, token))
        self.assertEqual(
            answer["messages"],
            [
                '["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]',
                '["1","2","room:a","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]',
            ],
        )

    def test_singleFramePost(self) -> None:
        """A post that is not ndjson is one frame (a V1 JSON object here)."""
        token = self.request("GET", "/socket/longpoll?vsn=1.0.0").json()["token"]
        body = json.dumps({"topic": "room:a", "event": "phx_join", "payload": {}, "ref": "1"}).encode()
        answer = self.request("POST", f"/socket/longpoll?vsn=1.0.0&token={token}", body).json()
        self.assertEqual(answer, {"status": 200})
        messages = self.poll(token)["messages"]
        self.assertEqual(json.loads(messages[0])["event"], "phx_reply")

    def test_binaryLine(self) -> None:
        """A line that is not JSON is base64 of a binary frame (V2's binary push)."""
        token = self.open()
        self.post(token, ["1", "1", "room:a", "phx_join", {}])
        self.poll(token)
        push = bytes([0, 1, 1, 6, 4]) + b"1" + b"7" + b"room:a" + b"size" + b"\x00" * 300
        self.assertEqual(self.post(token, base64.b64encode(push).decode()), {"status": 200})
        (message,) = self.poll(token)["messages"]
        self.assertEqual(json.loads(message), ["1", "7", "room:a", "phx_reply", {"response": {"size": 300}, "status": "ok"}])

    def test_pollHeldUntilWindow(self) -> None:
        """A poll with nothing to send is held for the window, then answered 204 with the token."""
        token = self.open()
        transport = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        self.reactor.advance(WINDOW - 0.01)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.01)
        self.assertEqual(Response(transport).json(), {"status": 204, "token": token, "messages": []})

    def test_pollWokenByBroadcast(self) -> None:
        """A held poll is answered in the turn a broadcast arrives, with the shared frame's text."""
        token = self.open()
        self.post(token, ["1", "1", "room:a", "phx_join", {}])
        self.poll(token)
        transport = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        self.assertEqual(transport.value(), b"")
        self.endpoint.broadcast("room:a", "news", {"n": 1})
        self.reactor.advance(0)
        self.assertEqual(
            Response(transport).json()["messages"], ['[null,null,"room:a","news",{"n":1}]']
        )

    def test_newerPollReplacesOlder(self) -> None:
        """A second poll of the same session answers the first one 204 at once."""
        token = self.open()
        first = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        second = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        self.assertEqual(Response(first).json()["status"], 204)
        self.assertEqual(second.value(), b"")

    def test_clientGoneDuringPoll(self) -> None:
        """A poll whose client went away takes no messages with it: the next poll gets them."""
        token = self.open()
        self.post(token, ["1", "1", "room:a", "phx_join", {}])
        self.poll(token)
        transport = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
        transport.protocol_.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.endpoint.broadcast("room:a", "news", {"n": 2})
        self.reactor.advance(0)
        self.assertEqual(self.poll(token)["messages"], ['[null,null,"room:a","news",{"n":2}]'])

    def test_inactiveSessionEnds(self) -> None:
        """A session not polled for 1.5 windows ends: its channels terminate, its token starts a new session."""
        token = self.open()
        self.post(token, ["1", "1", "room:a", "phx_join", {}])
        self.reactor.advance(1.5 * WINDOW - 0.01)
        self.assertEqual(len(self.sessions()), 1)
        self.reactor.advance(0.01)
        self.assertEqual(self.sessions(), {})
        self.assertEqual(EchoChannel.terminated, [("room:a", ("shutdown", "closed"))])
        answer = self.poll(token)
        self.assertEqual(answer["status"], 410)
        self.assertNotEqual(answer["token"], token)

    def test_pollingKeepsSessionAlive(self) -> None:
        """A session polled every window lives on."""
        token = self.open()
        for _ in range(5):
            self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}")
            self.reactor.advance(WINDOW)
        self.assertEqual(len(self.sessions()), 1)
        self.assertEqual(EchoChannel.terminated, [])

    def test_postUnknownSession(self) -> None:
        """A post without a valid token, or for a session that ended, answers 410."""
        self.assertEqual(self.post("garbage", ["1", "1", "room:a", "phx_join", {}]), {"status": 410})
        token = self.open()
        self.reactor.advance(3 * WINDOW)
        self.assertEqual(self.post(token, ["1", "1", "room:a", "phx_join", {}]), {"status": 410})

    def test_tokenOfAnotherSocket(self) -> None:
        """A session token resumes only on its own socket."""
        token = self.open()
        self.assertEqual(self.post(token, ["1", "1", "room:a", "phx_join", {}], mount="/user"), {"status": 410})

    def test_malformedFrame(self) -> None:
        """A frame the serializer cannot decode ends the session (400), as a malformed WebSocket frame closes it."""
        token = self.open()
        self.assertEqual(self.post(token, '["1","1","room:a"]'), {"status": 400})
        self.assertEqual(self.sessions(), {})
        self.assertEqual(self.post(token, ["1", "1", "room:a", "phx_join", {}]), {"status": 410})

    def test_notBase64(self) -> None:
        """A line that is neither JSON nor base64 ends the session (400)."""
        token = self.open()
        self.assertEqual(self.post(token, "not base64!"), {"status": 400})
        self.assertEqual(self.sessions(), {})

    def test_batchLimit(self) -> None:
        """A post of more than longpoll_max_batch lines is refused (413) and none of it is dispatched."""
        token = self.open()
        lines = [["1", "1", "room:a", "phx_join", {}]] + [["1", str(i), "room:a", "ping", {}] for i in range(2, 102)]
        self.assertEqual(self.post(token, *lines), {"status": 413})
        self.assertEqual(self.sessions()[next(iter(self.sessions()))].session.channels, {})
        self.assertEqual(self.post(token, *lines[:100]), {"status": 200})

    def test_bodyLimitFromContentLength(self) -> None:
        """A body over max_longpoll_body is refused from its Content-Length, before a byte of it is sent."""
        token = self.open()
        transport = self.send(
            "POST", f"/socket/longpoll?vsn=2.0.0&token={token}", headers={"Content-Length": "4097"}
        )
        response = Response(transport)
        self.assertEqual((response.code, response.json()), (200, {"status": 413}))
        self.assertEqual(response.headers["access-control-allow-origin"], "*")
        self.assertTrue(response.closed)

    def test_bodyLimitChunked(self) -> None:
        """A chunked body is refused as soon as it grows past max_longpoll_body."""
        token = self.open()
        transport = self.send("POST", f"/socket/longpoll?vsn=2.0.0&token={token}", chunked=True)
        protocol = transport.protocol_  # type: ignore[attr-defined]
        protocol.dataReceived(b"800\r\n" + b"x" * 2048 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"800\r\n" + b"x" * 2048 + b"\r\n")
        protocol.dataReceived(b"1\r\nx\r\n")
        response = Response(transport)
        self.assertEqual(response.json(), {"status": 413})
        self.assertTrue(response.closed)
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_bodyAtLimit(self) -> None:
        """A body of exactly max_longpoll_body bytes is read."""
        token = self.open()
        prefix, suffix = '["1","1","room:a","phx_join",{"pad":"', '"}]'
        body = prefix + "x" * (4096 - len(prefix) - len(suffix)) + suffix
        self.assertEqual(len(body), 4096)
        self.assertEqual(self.post(token, body), {"status": 200})

    def test_maxLag(self) -> None:
        """A session more than max_lag bytes behind ends; its waiting frames go."""
        self.patch(LongPollEndpoint, "max_lag", 1000)
        endpoint = self.make_endpoint()
        token = self.open(endpoint=endpoint)
        self.post(token, ["1", "1", "room:a", "phx_join", {}], endpoint=endpoint)
        for _ in range(20):
            endpoint.broadcast("room:a", "news", {"body": "x" * 100})
        self.reactor.advance(0)
        self.assertEqual(self.sessions(endpoint=endpoint), {})
        self.assertEqual(EchoChannel.terminated, [("room:a", ("shutdown", "closed"))])

    def test_disconnectBroadcast(self) -> None:
        """A disconnect broadcast to the socket id ends the session; the waiting poll hears 410."""
        token = self.open("/user/longpoll?vsn=2.0.0&user=7")
        transport = self.send("GET", f"/user/longpoll?vsn=2.0.0&token={token}")
        self.endpoint.broadcast("user:7", "disconnect", {})
        self.assertEqual(Response(transport).json(), {"status": 410})
        self.assertEqual(self.sessions("/user"), {})

    def test_authTokenHeader(self) -> None:
        """With auth_token, the x-phoenix-authtoken header reaches connect_info["auth_token"]."""
        self.open("/token/longpoll?vsn=2.0.0", headers={"X-Phoenix-AuthToken": "secret-token"})
        self.assertEqual(EchoSocket.seen[-1][1]["auth_token"], "secret-token")
        self.open("/socket/longpoll?vsn=2.0.0", headers={"X-Phoenix-AuthToken": "secret-token"})
        self.assertNotIn("auth_token", EchoSocket.seen[-1][1])

    def test_applicationTokenParam(self) -> None:
        """An application's own token param reaches connect; phoenix.js's session token (the last one) does not."""
        self.open("/socket/longpoll?token=app-token&vsn=2.0.0")
        self.assertEqual(EchoSocket.seen[-1][0]["token"], "app-token")
        self.open("/socket/longpoll?token=app-token&vsn=2.0.0&token=stale-session-token")
        self.assertEqual(EchoSocket.seen[-1][0]["token"], "app-token")

    def test_pathParams(self) -> None:
        """A mount's :name segments reach connect as params."""
        self.open("/rooms/lobby/longpoll?vsn=2.0.0")
        self.assertEqual(EchoSocket.seen[-1][0]["room"], "lobby")

    def test_longpollOff(self) -> None:
        """Socket.longpoll = False: no /longpoll for that socket."""
        self.assertEqual(self.request("GET", "/ws_only/longpoll?vsn=2.0.0").code, 404)

    def test_maxSessions(self) -> None:
        """Past max_longpoll_sessions a new session is refused with HTTP 503; the others are unharmed."""
        self.patch(LongPollEndpoint, "max_longpoll_sessions", 2)
        token = self.open()
        self.open()
        response = self.request("GET", "/socket/longpoll?vsn=2.0.0")
        self.assertEqual((response.code, response.body), (503, b""))
        self.assertEqual(self.post(token, ["1", "1", "room:a", "phx_join", {}]), {"status": 200})

    def test_binaryFramesDropped(self) -> None:
        """A binary frame for a long-poll client is dropped (phoenix.js reads messages as text)."""
        token = self.open()
        self.post(token, ["1", "1", "room:a", "phx_join", {}])
        self.poll(token)
        self.endpoint.broadcast("room:a", "blob", b"\x00\x01")
        self.endpoint.broadcast("room:a", "news", {"n": 3})
        self.reactor.advance(0)
        self.assertEqual(self.poll(token)["messages"], ['[null,null,"room:a","news",{"n":3}]'])


class ClusterLongPollTests(LongPollTestCase):
    """
    Tests for requests that reach another node than the session's: forwarded
    over PubSub (an in-memory L{Network}) and answered from there.
    """

    def setUp(self) -> None:
        super().setUp()
        self.network = Network()
        self.a = self.make_endpoint(node_name="a", pubsub=self.network.node("a"))
        self.b = self.make_endpoint(node_name="b", pubsub=self.network.node("b"))

    def flush(self) -> None:
        for _ in range(5):
            self.network.flush()
            self.reactor.advance(0)

    def test_postAndPollOnTheOtherNode(self) -> None:
        """A session opened on a is posted to and polled through b; the replies come from a."""
        token = self.open(endpoint=self.a)
        transport = self.send(
            "POST", f"/socket/longpoll?vsn=2.0.0&token={token}",
            b'["1","1","room:a","phx_join",{}]\n["1","2","room:a","ping",{}]',
            {"Content-Type": "application/x-ndjson"}, endpoint=self.b,
        )
        self.assertEqual(transport.value(), b"")
        self.flush()
        self.assertEqual(Response(transport).json(), {"status": 200})
        self.assertEqual(self.sessions(endpoint=self.b), {})
        poll = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}", endpoint=self.b)
        self.flush()
        self.assertEqual(
            Response(poll).json()["messages"],
            [
                '["1","1","room:a","phx_reply",{"response":{},"status":"ok"}]',
                '["1","2","room:a","phx_reply",{"response":{"ping":"pong"},"status":"ok"}]',
            ],
        )

    def test_heldRemotePoll(self) -> None:
        """A remote poll waits; a broadcast wakes it (now_available, flush) and the messages come through b."""
        token = self.open(endpoint=self.a)
        self.post(token, ["1", "1", "room:a", "phx_join", {}], endpoint=self.a)
        self.poll(token, endpoint=self.a)
        poll = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}", endpoint=self.b)
        self.flush()
        self.assertEqual(poll.value(), b"")
        self.reactor.advance(3)  # past the PubSub timeout: the "waiting" answer counted
        self.assertEqual(poll.value(), b"")
        self.a.broadcast("room:a", "news", {"n": 1})
        self.flush()
        self.assertEqual(Response(poll).json()["messages"], ['[null,null,"room:a","news",{"n":1}]'])
        self.assertEqual(
            [e for e in self.network.events() if e in ("flush", "waiting", "now_available", "messages")],
            ["flush", "waiting", "now_available", "flush", "messages"],
        )

    def test_remotePollTimesOutWithoutTakingMessages(self) -> None:
        """A remote poll ends 204 at its window; what arrives later waits on a for the next poll."""
        token = self.open(endpoint=self.a)
        self.post(token, ["1", "1", "room:a", "phx_join", {}], endpoint=self.a)
        self.poll(token, endpoint=self.a)
        poll = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}", endpoint=self.b)
        self.flush()
        self.reactor.advance(WINDOW)
        self.assertEqual(Response(poll).json(), {"status": 204, "token": token, "messages": []})
        self.a.broadcast("room:a", "news", {"n": 2})
        self.flush()
        self.assertEqual(self.poll(token, endpoint=self.a)["messages"], ['[null,null,"room:a","news",{"n":2}]'])

    def test_remoteSessionGone(self) -> None:
        """A session a no longer holds: after the PubSub timeout b starts a new session (GET) or answers 410 (POST)."""
        token = self.open(endpoint=self.a)
        self.reactor.advance(3 * WINDOW)
        self.assertEqual(self.sessions(endpoint=self.a), {})
        poll = self.send("GET", f"/socket/longpoll?vsn=2.0.0&token={token}", endpoint=self.b)
        post = self.send(
            "POST", f"/socket/longpoll?vsn=2.0.0&token={token}", b'["1","1","room:a","phx_join",{}]', endpoint=self.b
        )
        self.flush()
        self.assertEqual((poll.value(), post.value()), (b"", b""))
        self.reactor.advance(2.0)
        answer = Response(poll).json()
        self.assertEqual(answer["status"], 410)
        self.assertEqual(len(self.sessions(endpoint=self.b)), 1)
        self.assertEqual(Response(post).json(), {"status": 410})

    def test_unknownNode(self) -> None:
        """A token naming a node that is not connected starts a new session at once."""
        self.network.nodes.pop("a")
        token = Token(SECRET, clock=self.reactor).sign(TOKEN_SALT, ("v1", "a", "/socket", "x"))
        answer = self.poll(token, endpoint=self.b)
        self.assertEqual(answer["status"], 410)
        self.assertEqual(len(self.sessions(endpoint=self.b)), 1)

    def test_remoteSessionEndsDuringPoll(self) -> None:
        """A session that ends while b holds a poll for it: b answers 410."""
        token = self.open("/user/longpoll?vsn=2.0.0&user=9", endpoint=self.a)
        poll = self.send("GET", f"/user/longpoll?vsn=2.0.0&token={token}", endpoint=self.b)
        self.flush()
        self.a.broadcast("user:9", "disconnect", {})
        self.flush()
        self.assertEqual(Response(poll).json(), {"status": 410})
