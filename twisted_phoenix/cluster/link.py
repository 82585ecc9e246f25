# -*- test-case-name: tests.test_cluster_link -*-
"""
One Perspective Broker link between two nodes.

Both ends of a link are alike: each holds a :class:`Link` wrapping the
other's remote reference, and each answers the same small set of remote
methods (:data:`METHODS`), whose arguments must be plain data of the listed
types; anything else is rejected and logged.  PB only ever calls
``perspective_*``/``remote_*`` methods, and these two classes route every
one of them through :meth:`Link.received`.

Authentication: the connecting node logs in with its node name and the
cluster cookie (PB's challenge-response: the cookie never crosses the wire);
then it challenges the accepting node to prove it knows the cookie too
(:func:`proof`).  For privacy as well, run links over TLS.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any, Callable

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword
from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

if TYPE_CHECKING:
    from .node import Node

__all__ = ["METHODS", "CookieChecker", "ClusterRealm", "Link", "NodeMind", "PeerPerspective", "proof"]

log = Logger()

#: Broadcast payloads travel as JSON split into chunks below Banana's
#: 640 KiB string limit.
CHUNK = 512 * 1024

_PLAIN = (str, bytes, int, float, bool, type(None))

#: The remote methods of a link and the types of their arguments.
METHODS: dict[str, tuple[Any, ...]] = {
    "hello": (dict,),
    "ping": (),
    "broadcast": (str, str, list, bool),
    "peer_up": (str, (str, type(None))),
    "bye": (),
}


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain data: dicts, lists and scalars only."""
    if isinstance(value, _PLAIN):
        return True
    if depth > 32:
        return False
    if isinstance(value, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def proof(cookie: str, nonce: str, name: str) -> str:
    """What a node answers to prove it knows ``cookie``."""
    return hmac.new(cookie.encode(), f"{nonce}:{name}".encode(), hashlib.sha256).hexdigest()


@implementer(IPushProducer)
class Link:
    """
    A live link to one peer node.

    :ivar peer: the peer's node name (``None`` until its hello).
    :ivar initiator: the name of the node that opened the link.
    :ivar dropped: broadcasts dropped because the link was congested.
    """

    def __init__(self, node: Node, remote: pb.RemoteReference, initiator: str, peer: str | None) -> None:
        self.node = node
        self.remote = remote
        self.initiator = initiator
        self.peer = peer
        self.info: dict[str, Any] = {}
        self.up = False
        self.closed = False
        self.paused = False
        self.leaving = False
        self.dropped = 0
        self._dropped_logged = 0
        self.last_seen = node.reactor.seconds()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = node.reactor
        transport = remote.broker.transport
        transport.registerProducer(self, True)
        remote.broker.notifyOnDisconnect(self._disconnected)

    def __repr__(self) -> str:
        return f"<Link to {self.peer} {'up' if self.up else 'pending'}>"

    @property
    def address(self) -> str | None:
        """The peer's advertised ``host:port``."""
        return self.info.get("address")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """The hello exchange succeeded: heartbeats begin."""
        self.up = True
        self._heartbeat.start(self.node.heartbeat_interval, now=False)

    def close(self) -> None:
        """Drop the TCP connection at once."""
        if not self.closed:
            self.remote.broker.transport.abortConnection()

    def _disconnected(self) -> None:
        self.closed = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        self.node._link_lost(self)

    def _beat(self) -> None:
        silent = self.node.reactor.seconds() - self.last_seen
        if silent > self.node.heartbeat_timeout:
            log.warn(
                "Node {peer} silent for {silent:.1f} s: dropping the link", peer=self.peer, silent=silent
            )
            self.close()
            return
        if self.dropped > self._dropped_logged:
            log.warn(
                "Dropped {n} broadcasts to {peer}: the link is congested ({total} in all)",
                n=self.dropped - self._dropped_logged, peer=self.peer, total=self.dropped,
            )
            self._dropped_logged = self.dropped
        self.call("ping").addCallback(self._alive).addErrback(lambda f: None)

    def _alive(self, _: Any) -> None:
        self.last_seen = self.node.reactor.seconds()

    # -- IPushProducer: Twisted pauses us when the socket buffer is full -------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    # -- calls --------------------------------------------------------------------

    def call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        """Call a remote method and wait for its answer."""
        try:
            return self.remote.callRemote(method, *args)
        except pb.DeadReferenceError:
            return defer.fail()

    def send_broadcast(self, topic: str, event: str, chunks: list[bytes], binary: bool) -> bool:
        """
        Send a broadcast without waiting for an answer.  Returns ``False``
        (and counts it) when the link is congested or gone.
        """
        if self.paused or self.closed:
            self.dropped += 1
            return False
        try:
            self.remote.callRemote("broadcast", topic, event, chunks, binary, pbanswer=False)
        except pb.DeadReferenceError:
            self.dropped += 1
            return False
        return True

    def received(self, method: str, args: tuple[Any, ...]) -> Any:
        """Validate and handle one call from the peer."""
        spec = METHODS.get(method)
        if spec is None or len(args) != len(spec) or not all(
            isinstance(a, t) for a, t in zip(args, spec)
        ) or not all(_plain(a) for a in args):
            log.error(
                "Rejected a call from node {peer}: {method}{args!r:.200}",
                peer=self.peer, method=method, args=args,
            )
            raise ValueError(f"not a cluster call: {method}")
        self.last_seen = self.node.reactor.seconds()
        if method == "hello":
            return self.node._hello_received(self, args[0])
        if not self.up:
            if method in ("ping", "bye"):
                return None  # a duplicate link on its way out
            raise ValueError("hello first")
        if method == "broadcast":
            self.node._broadcast_received(self, *args)
            return None
        if method == "ping":
            return True
        if method == "peer_up":
            self.node._peer_up(args[0], args[1])
            return None
        if method == "bye":
            self.node._peer_leaving(self)
            return None
        raise AssertionError(method)


def _receiver(method_prefix: str) -> Callable[..., Any]:
    def message_received(self: Any, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        args = broker.unserialize(args)
        if kw and broker.unserialize(kw):
            raise ValueError("cluster calls take no keyword arguments")
        if self.link is None:
            raise ValueError("no link")
        return broker.serialize(self.link.received(message, tuple(args)), self.perspective_for_serialize)

    message_received.__name__ = method_prefix + "MessageReceived"
    return message_received


class PeerPerspective(pb.Avatar):
    """The accepting node's side: the connecting peer calls these."""

    perspective_for_serialize = None

    def __init__(self, link: Link | None = None) -> None:
        self.link = link

    perspectiveMessageReceived = _receiver("perspective")


class NodeMind(pb.Referenceable):
    """The connecting node's side: the accepting peer calls these."""

    perspective_for_serialize = None

    def __init__(self) -> None:
        self.link: Link | None = None

    remoteMessageReceived = _receiver("remote")


@implementer(ICredentialsChecker)
class CookieChecker:
    """Accepts a node that logs in with the cluster cookie."""

    credentialInterfaces = (IUsernameHashedPassword,)

    def __init__(self, cookie: str) -> None:
        self._cookie = cookie.encode()

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        name = credentials.username
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        peer = getattr(getattr(credentials, "broker", None), "transport", None)
        address = peer.getPeer() if peer is not None else None
        if credentials.checkPassword(self._cookie):
            return defer.succeed(name.encode())
        log.error("Refused node {name} from {address}: wrong cookie", name=name, address=address)
        return defer.fail(cred_error.UnauthorizedLogin("wrong cookie"))


@implementer(IRealm)
class ClusterRealm:
    """Gives each connecting node a :class:`PeerPerspective` and a :class:`Link`."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> Any:
        if pb.IPerspective not in interfaces or not isinstance(mind, pb.RemoteReference):
            raise NotImplementedError("PB perspectives with a mind only")
        peer = avatar_id.decode("utf-8")
        avatar = PeerPerspective()
        avatar.link = Link(self.node, mind, initiator=peer, peer=peer)
        return pb.IPerspective, avatar, avatar.link.close
