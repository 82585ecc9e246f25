"""
Tests for :mod:`twisted_phoenix.cluster.link`: what a link accepts from a
peer, heartbeats, congestion, cookie checks; in memory, with a fake node.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.spread import jelly, pb
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix.cluster.auth import login_secret
from twisted_phoenix.cluster.link import (
    BUFFER_LIMIT,
    CHUNK,
    METHODS,
    ClusterRealm,
    CookieChecker,
    Link,
    NodeMind,
    PeerPerspective,
    RejectedCall,
    WrongCookie,
    proof,
)

from ._cluster import LogWatcher


class FakeNode:
    """What a Link needs of its node; records what the link hands it."""

    name = "me@127.0.0.1"

    def __init__(self) -> None:
        self.reactor = Clock()
        self.heartbeat_interval = 1.0
        self.heartbeat_timeout = 3.0
        self.calls: list[tuple[Any, ...]] = []
        self.lost: list[Link] = []
        self.broadcasts_dropped = 0

    def _hello_received(self, link: Link, info: Any) -> Any:
        self.calls.append(("hello", info))
        return {"name": "me@127.0.0.1"}

    def _broadcast_received(self, link: Link, *args: Any) -> None:
        self.calls.append(("broadcast", *args))

    def _peer_up(self, name: str, address: Any) -> None:
        self.calls.append(("peer_up", name, address))

    def _peer_leaving(self, link: Link) -> None:
        self.calls.append(("bye",))

    def _link_lost(self, link: Link) -> None:
        self.lost.append(link)


class FakeTransport(StringTransport):
    """A StringTransport whose abort disconnects the fake broker."""

    def __init__(self) -> None:
        super().__init__()
        self.broker: FakeBroker | None = None
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        if self.broker is not None:
            self.broker.connection_lost()


class FakeBroker:
    """The parts of a PB broker a Link touches."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.transport.broker = self
        self.disconnects: list[Any] = []
        self.unserialize_error: Exception | None = None

    def notifyOnDisconnect(self, notifier: Any) -> None:
        self.disconnects.append(notifier)

    def connection_lost(self) -> None:
        for notifier in list(self.disconnects):
            notifier()

    def unserialize(self, value: Any) -> Any:
        if self.unserialize_error is not None:
            raise self.unserialize_error
        return value

    def serialize(self, value: Any, perspective: Any = None) -> Any:
        return ("serialized", value)


class FakeRemote:
    """A remote reference that records calls and answers them on demand."""

    def __init__(self) -> None:
        self.broker = FakeBroker()
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.answers: list[defer.Deferred[Any]] = []
        self.dead = False

    def callRemote(self, method: str, *args: Any, **kw: Any) -> defer.Deferred[Any]:
        if self.dead:
            raise pb.DeadReferenceError("dead")
        self.calls.append((method, args, kw))
        d: defer.Deferred[Any] = defer.Deferred()
        self.answers.append(d)
        return d


def make_link(test: SynchronousTestCase, up: bool = True) -> tuple[Link, FakeNode, FakeRemote, LogWatcher]:
    node = FakeNode()
    remote = FakeRemote()
    link = Link(node, remote, initiator="peer@127.0.0.1", peer="peer@127.0.0.1")  # type: ignore[arg-type]
    logs = LogWatcher(node.reactor)
    globalLogPublisher.addObserver(logs)
    test.addCleanup(globalLogPublisher.removeObserver, logs)
    if up:
        link.start()
        test.addCleanup(lambda: link._heartbeat.running and link._heartbeat.stop())
    return link, node, remote, logs


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


class LinkReceivedTests(SynchronousTestCase):
    """A link accepts only the methods in METHODS, with plain-data arguments of the listed types."""

    def assertRejected(self, link: Link, logs: LogWatcher, method: str, *args: Any) -> None:
        before = len(logs.find("Rejected a call from node peer@127.0.0.1", LogLevel.error))
        with self.assertRaises(RejectedCall, msg=f"{method}{args!r:.80}"):
            link.received(method, args)
        after = len(logs.find("Rejected a call from node peer@127.0.0.1", LogLevel.error))
        self.assertEqual(after, before + 1, f"not logged: {method}")

    def test_methods(self) -> None:
        """The vocabulary of a link is hello, ping, broadcast, peer_up, bye and the three interest messages."""
        self.assertEqual(set(METHODS), {"hello", "ping", "broadcast", "peer_up", "bye", "interest_set",
                                        "interest_update", "interest_all"})

    def test_routes_calls(self) -> None:
        """Each accepted call reaches the node (ping answers True)."""
        link, node, _, _ = make_link(self)
        self.assertEqual(link.received("hello", ({"name": "peer@127.0.0.1", "nonce": "n"},)), {"name": "me@127.0.0.1"})
        self.assertIs(link.received("ping", ()), True)
        self.assertIsNone(link.received("broadcast", ("t", "e", [b"{}"], False)))
        self.assertIsNone(link.received("peer_up", ("x@127.0.0.1", "127.0.0.1:1")))
        self.assertIsNone(link.received("peer_up", ("y@127.0.0.1", None)))
        self.assertIsNone(link.received("bye", ()))
        self.assertEqual(node.calls, [
            ("hello", {"name": "peer@127.0.0.1", "nonce": "n"}),
            ("broadcast", "t", "e", [b"{}"], False),
            ("peer_up", "x@127.0.0.1", "127.0.0.1:1"),
            ("peer_up", "y@127.0.0.1", None),
            ("bye",),
        ])

    def test_unknown_method(self) -> None:
        """A method outside METHODS is rejected and logged; the node never sees it."""
        link, node, _, logs = make_link(self)
        for method in ("eval", "remote_broadcast", "__init__", "close", ""):
            self.assertRejected(link, logs, method)
        self.assertEqual(node.calls, [])

    def test_wrong_arity(self) -> None:
        """Too few or too many arguments are rejected and logged."""
        link, node, _, logs = make_link(self)
        self.assertRejected(link, logs, "ping", 1)
        self.assertRejected(link, logs, "bye", None)
        self.assertRejected(link, logs, "hello")
        self.assertRejected(link, logs, "hello", {}, {})
        self.assertRejected(link, logs, "broadcast", "t", "e", [b"{}"])
        self.assertRejected(link, logs, "broadcast", "t", "e", [b"{}"], False, 1)
        self.assertRejected(link, logs, "peer_up", "x@127.0.0.1")
        self.assertEqual(node.calls, [])

    def test_wrong_types(self) -> None:
        """Arguments of other types than listed are rejected and logged (an int is not a bool)."""
        link, node, _, logs = make_link(self)
        self.assertRejected(link, logs, "hello", "name")
        self.assertRejected(link, logs, "hello", [("name", "x")])
        self.assertRejected(link, logs, "broadcast", 1, 2, 3, 4)
        self.assertRejected(link, logs, "broadcast", b"t", "e", [b"{}"], False)
        self.assertRejected(link, logs, "broadcast", "t", "e", b"{}", False)
        self.assertRejected(link, logs, "broadcast", "t", "e", [b"{}"], 0)
        self.assertRejected(link, logs, "broadcast", "t", "e", [b"{}"], None)
        self.assertRejected(link, logs, "peer_up", "x@127.0.0.1", 4370)
        self.assertRejected(link, logs, "peer_up", None, None)
        self.assertEqual(node.calls, [])

    def test_not_plain_data(self) -> None:
        """Objects, tuples, sets, non-str dict keys and deep nesting are rejected and logged."""
        link, node, _, logs = make_link(self)
        self.assertRejected(link, logs, "hello", {"name": object()})
        self.assertRejected(link, logs, "hello", {"name": Exception("x")})
        self.assertRejected(link, logs, "hello", {1: "x"})
        self.assertRejected(link, logs, "hello", {b"name": "x"})
        self.assertRejected(link, logs, "hello", {"nodes": {("a", "b"): "x"}})
        self.assertRejected(link, logs, "hello", {"nodes": ("a", "b")})
        self.assertRejected(link, logs, "hello", {"nodes": {"a", "b"}})
        self.assertRejected(link, logs, "hello", {"deep": nested(40)})
        self.assertRejected(link, logs, "broadcast", "t", "e", [b"{}", object()], False)
        self.assertRejected(link, logs, "broadcast", "t", "e", [nested(100)], False)
        self.assertEqual(node.calls, [])

    def test_plain_data_accepted(self) -> None:
        """Scalars, lists and str-keyed dicts, nested 30 deep, are plain data."""
        link, node, _, _ = make_link(self)
        info = {"s": "x", "b": b"\x00", "i": -1, "f": 1.5, "t": True, "n": None, "l": [1, [2, {"k": [3]}]],
                "deep": nested(30)}
        link.received("hello", (info,))
        self.assertEqual(node.calls, [("hello", info)])

    def test_before_hello(self) -> None:
        """Before its hello, a peer may only ping or say bye (a duplicate link going away)."""
        link, node, _, logs = make_link(self, up=False)
        self.assertRejected(link, logs, "broadcast", "t", "e", [b"{}"], False)
        self.assertRejected(link, logs, "peer_up", "x@127.0.0.1", None)
        self.assertIsNone(link.received("ping", ()))
        self.assertIsNone(link.received("bye", ()))
        self.assertEqual(node.calls, [])

    def test_hello_on_own_link(self) -> None:
        """On a link this node opened, the peer may not say hello (it would skip proving the cookie)."""
        node = FakeNode()
        remote = FakeRemote()
        logs = LogWatcher(node.reactor)
        globalLogPublisher.addObserver(logs)
        self.addCleanup(globalLogPublisher.removeObserver, logs)
        link = Link(node, remote, initiator=node.name, peer="peer@127.0.0.1")  # type: ignore[arg-type]
        with self.assertRaises(RejectedCall):
            link.received("hello", ({"name": "peer@127.0.0.1", "nonce": "n"},))
        self.assertEqual(node.calls, [])
        self.assertTrue(logs.find("hello on a link we opened", LogLevel.error))

    def test_greeted_duplicate(self) -> None:
        """A link whose hello succeeded but that is not the one kept still delivers the peer's calls."""
        link, node, _, _ = make_link(self, up=False)
        link.greeted = True
        self.assertIsNone(link.received("broadcast", ("t", "e", [b"{}"], False)))
        self.assertIsNone(link.received("peer_up", ("x@127.0.0.1", None)))
        self.assertIsNone(link.received("bye", ()))
        self.assertEqual([c[0] for c in node.calls], ["broadcast", "peer_up", "bye"])

    def test_last_seen(self) -> None:
        """An accepted call counts as a sign of life; a rejected one does not."""
        link, node, _, logs = make_link(self)
        node.reactor.advance(2.5)
        self.assertRejected(link, logs, "ping", 1)
        self.assertEqual(link.last_seen, 0)
        link.received("ping", ())
        self.assertEqual(link.last_seen, 2.5)


class ReceiverTests(SynchronousTestCase):
    """The PB entry points (PeerPerspective, NodeMind) route every call through Link.received."""

    def test_routes_to_link(self) -> None:
        """A call on either side is unserialized, handled by the link, and its answer serialized."""
        link, node, remote, _ = make_link(self)
        for side in (PeerPerspective(link), NodeMind()):
            side.link = link
            receive = getattr(side, "perspectiveMessageReceived", None) or side.remoteMessageReceived
            self.assertEqual(receive(remote.broker, b"ping", [], {}), ("serialized", True))

    def test_keywords_rejected(self) -> None:
        """Keyword arguments are rejected and logged."""
        link, node, remote, logs = make_link(self)
        side = PeerPerspective(link)
        with self.assertRaises(RejectedCall):
            side.perspectiveMessageReceived(remote.broker, "bye", [], {"now": True})
        self.assertTrue(logs.find("bye with keyword arguments", LogLevel.error))
        self.assertEqual(node.calls, [])

    def test_insecure_jelly_rejected(self) -> None:
        """Arguments jelly refuses to unserialize (objects) are rejected and logged, not a crash."""
        link, node, remote, logs = make_link(self)
        remote.broker.unserialize_error = jelly.InsecureJelly("class not allowed")
        with self.assertRaises(RejectedCall):
            NodeMind.remoteMessageReceived(_with_link(link), remote.broker, "hello", [], {})
        self.assertTrue(logs.find("not plain data", LogLevel.error))

    def test_no_link(self) -> None:
        """A call that arrives on a side without a link is rejected."""
        mind = NodeMind()
        with self.assertRaises(RejectedCall):
            mind.remoteMessageReceived(FakeBroker(), "ping", [], {})

    def test_rejections_are_pb_errors(self) -> None:
        """Rejections are pb.Errors: PB answers them to the caller without logging a traceback."""
        self.assertTrue(issubclass(RejectedCall, pb.Error))
        self.assertTrue(issubclass(WrongCookie, pb.Error))
        self.assertTrue(issubclass(WrongCookie, cred_error.UnauthorizedLogin))


def _with_link(link: Link) -> NodeMind:
    mind = NodeMind()
    mind.link = link
    return mind


class LinkBroadcastTests(SynchronousTestCase):
    """Sending broadcasts: fire and forget, dropped and counted when the link is gone or congested."""

    def test_producer(self) -> None:
        """A link is the streaming producer of its connection's transport."""
        link, _, remote, _ = make_link(self)
        self.assertIs(remote.broker.transport.producer, link)
        self.assertTrue(remote.broker.transport.streaming)

    def test_send(self) -> None:
        """A broadcast is one call that wants no answer."""
        link, _, remote, _ = make_link(self)
        self.assertTrue(link.send_broadcast("t", "e", [b'{"a":1}'], False))
        self.assertEqual(remote.calls, [("broadcast", ("t", "e", [b'{"a":1}'], False), {"pbanswer": False})])
        self.assertEqual(link.dropped, 0)

    def test_closed(self) -> None:
        """On a closed link a broadcast is dropped and counted."""
        link, node, remote, _ = make_link(self)
        link.close()
        self.assertTrue(link.closed)
        self.assertEqual(node.lost, [link])
        self.assertFalse(link.send_broadcast("t", "e", [b"{}"], False))
        self.assertEqual(link.dropped, 1)

    def test_dead_reference(self) -> None:
        """A broadcast on a reference PB says is dead is dropped and counted, not raised."""
        link, _, remote, _ = make_link(self)
        remote.dead = True
        self.assertFalse(link.send_broadcast("t", "e", [b"{}"], False))
        self.assertEqual(link.dropped, 1)

    def test_paused_bounded(self) -> None:
        """Paused by its transport, a link takes buffer_limit more bytes, then drops and counts."""
        link, _, remote, _ = make_link(self)
        self.assertEqual(link.buffer_limit, BUFFER_LIMIT)
        link.buffer_limit = 100
        link.pauseProducing()
        self.assertTrue(link.send_broadcast("t", "e", [b"x" * 60], False))
        link.pauseProducing()  # Twisted repeats it on each write while full
        self.assertTrue(link.send_broadcast("t", "e", [b"x" * 20, b"x" * 20], False))
        link.pauseProducing()
        self.assertFalse(link.send_broadcast("t", "e", [b"x"], False))
        self.assertFalse(link.send_broadcast("t", "e", [b"x" * 60], False))
        self.assertEqual(len(remote.calls), 2)
        self.assertEqual(link.dropped, 2)
        link.resumeProducing()
        self.assertTrue(link.send_broadcast("t", "e", [b"x" * 500], False))
        link.pauseProducing()
        self.assertTrue(link.send_broadcast("t", "e", [b"x" * 100], False))
        self.assertFalse(link.send_broadcast("t", "e", [b"x"], False))
        self.assertEqual(len(remote.calls), 4)
        self.assertEqual(link.dropped, 3)

    def test_stopped(self) -> None:
        """A producer told to stop takes no more than its allowance either."""
        link, _, remote, _ = make_link(self)
        link.buffer_limit = 0
        link.stopProducing()
        self.assertFalse(link.send_broadcast("t", "e", [b"{}"], False))
        self.assertEqual(remote.calls, [])

    def test_chunk_size(self) -> None:
        """Payload chunks stay below Banana's 640 KiB string limit."""
        self.assertLess(CHUNK, 640 * 1024)


class LinkHeartbeatTests(SynchronousTestCase):
    """Heartbeats: a ping every interval; a peer silent past the timeout is dropped."""

    def test_pings(self) -> None:
        """Each interval the link pings; an answer counts as a sign of life."""
        link, node, remote, _ = make_link(self)
        node.reactor.advance(0.9)
        self.assertEqual(remote.calls, [])
        node.reactor.advance(0.1)
        self.assertEqual([c[0] for c in remote.calls], ["ping"])
        node.reactor.advance(0.5)
        remote.answers[0].callback(True)
        self.assertEqual(link.last_seen, 1.5)

    def test_silent_peer_dropped(self) -> None:
        """A peer that answers nothing is dropped at the first beat past the timeout, with a warning."""
        link, node, remote, logs = make_link(self)
        node.reactor.pump([1.0] * 3)
        self.assertFalse(remote.broker.transport.aborted)
        node.reactor.advance(1.0)
        self.assertTrue(remote.broker.transport.aborted)
        self.assertTrue(link.closed)
        self.assertEqual(node.lost, [link])
        self.assertTrue(logs.find("Node peer@127.0.0.1 silent for 4.0 s: dropping the link", LogLevel.warn))
        self.assertFalse(link._heartbeat.running)

    def test_answers_keep_alive(self) -> None:
        """A peer that answers its pings stays linked."""
        link, node, remote, _ = make_link(self)
        for _ in range(10):
            node.reactor.advance(1.0)
            remote.answers[-1].callback(True)
        self.assertFalse(remote.broker.transport.aborted)

    def test_dropped_logged(self) -> None:
        """Dropped broadcasts are reported at the next beat, once, with the running total."""
        link, node, remote, logs = make_link(self)
        link.close = lambda: None  # type: ignore[method-assign]
        link.closed = True
        link.send_broadcast("t", "e", [b"{}"], False)
        link.send_broadcast("t", "e", [b"{}"], False)
        node.reactor.advance(1.0)
        node.reactor.advance(1.0)
        self.assertEqual(
            logs.find("broadcasts to peer@127.0.0.1", LogLevel.warn),
            ["Dropped 2 broadcasts to peer@127.0.0.1: the link is congested (2 in all)"],
        )

    def test_disconnect_stops_heartbeat(self) -> None:
        """When the connection goes, heartbeats stop and the node is told."""
        link, node, remote, _ = make_link(self)
        remote.broker.connection_lost()
        self.assertTrue(link.closed)
        self.assertEqual(node.lost, [link])
        self.assertFalse(link._heartbeat.running)
        self.assertEqual(node.reactor.getDelayedCalls(), [])


class ProofTests(SynchronousTestCase):
    """The accepting node's proof that it knows the cookie."""

    def test_hmac(self) -> None:
        """The proof is the HMAC-SHA256 hello proof keyed by the cookie (see tests.test_cluster_auth)."""
        label = b"twisted-phoenix link hello"
        parts = [b"nonce", b"a@h", b"binding"]
        message = label + b"".join(b"\0" + len(p).to_bytes(4, "big") + p for p in parts)
        expected = hmac.new(b"cookie", message, hashlib.sha256).hexdigest()
        self.assertEqual(proof("cookie", "nonce", "a@h", b"binding"), expected)

    def test_depends_on_everything(self) -> None:
        """Another cookie, nonce, name or channel binding gives another proof."""
        base = proof("cookie", "nonce", "a@h", b"binding")
        self.assertNotEqual(proof("cookie2", "nonce", "a@h", b"binding"), base)
        self.assertNotEqual(proof("cookie", "nonce2", "a@h", b"binding"), base)
        self.assertNotEqual(proof("cookie", "nonce", "b@h", b"binding"), base)
        self.assertNotEqual(proof("cookie", "nonce", "a@h", b"other"), base)
        self.assertNotEqual(proof("cookie", "nonce", "a@h"), base)


class CookieCheckerTests(SynchronousTestCase):
    """Logging in to a node takes the cluster cookie."""

    def test_right_cookie(self) -> None:
        """The right cookie (bound to the connection: none here, plaintext) gives the node's name as avatar id."""
        checker = CookieChecker("secret")
        secret = login_secret("secret", b"", "a@127.0.0.1")
        self.assertEqual(
            self.successResultOf(checker.requestAvatarId(UsernamePassword(b"a@127.0.0.1", secret))),
            b"a@127.0.0.1",
        )

    def test_bare_cookie_refused(self) -> None:
        """The bare cookie as password is refused: only the secret derived from it logs in."""
        checker = CookieChecker("secret")
        self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(b"a@127.0.0.1", b"secret")), cred_error.UnauthorizedLogin
        )

    def test_secret_of_another_name(self) -> None:
        """A secret made for one node name does not log in another."""
        checker = CookieChecker("secret")
        secret = login_secret("secret", b"", "a@127.0.0.1")
        self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(b"b@127.0.0.1", secret)), cred_error.UnauthorizedLogin
        )

    def test_wrong_cookie(self) -> None:
        """A wrong cookie is refused, and the refusal logged as an error naming the node."""
        logs = LogWatcher(Clock())
        globalLogPublisher.addObserver(logs)
        self.addCleanup(globalLogPublisher.removeObserver, logs)
        checker = CookieChecker("secret")
        failure = self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(b"a@127.0.0.1", b"guess")), cred_error.UnauthorizedLogin
        )
        self.assertIsInstance(failure.value, WrongCookie)
        self.assertTrue(logs.find("Refused node a@127.0.0.1 from None: wrong cookie", LogLevel.error))


class ClusterRealmTests(SynchronousTestCase):
    """The accepting side gives each logged-in node a perspective with a link."""

    def test_avatar(self) -> None:
        """A node with a mind gets a PeerPerspective whose link's peer and initiator are its name."""
        node = FakeNode()
        broker = FakeBroker()
        mind = pb.RemoteReference(None, broker, 1, 0)
        interface, avatar, logout = ClusterRealm(node).requestAvatar(b"a@127.0.0.1", mind, pb.IPerspective)  # type: ignore[arg-type]
        self.assertIs(interface, pb.IPerspective)
        self.assertIsInstance(avatar, PeerPerspective)
        self.assertEqual((avatar.link.peer, avatar.link.initiator, avatar.link.up), ("a@127.0.0.1", "a@127.0.0.1", False))
        self.assertIs(avatar.link.remote, mind)
        logout()
        self.assertTrue(broker.transport.aborted)

    def test_own_name(self) -> None:
        """A node may not log in with the accepting node's own name."""
        node = FakeNode()
        mind = pb.RemoteReference(None, FakeBroker(), 1, 0)
        with self.assertRaises(RejectedCall):
            ClusterRealm(node).requestAvatar(node.name.encode(), mind, pb.IPerspective)  # type: ignore[arg-type]

    def test_no_mind(self) -> None:
        """A login without a mind (a bare PB client) is rejected and logged."""
        logs = LogWatcher(Clock())
        globalLogPublisher.addObserver(logs)
        self.addCleanup(globalLogPublisher.removeObserver, logs)
        with self.assertRaises(RejectedCall):
            ClusterRealm(FakeNode()).requestAvatar(b"a@127.0.0.1", None, pb.IPerspective)  # type: ignore[arg-type]
        self.assertTrue(logs.find("it logged in without a mind", LogLevel.error))
