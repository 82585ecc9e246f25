# -*- test-case-name: tests.test_cluster_link -*-
"""
One Perspective Broker link between two nodes.

Both ends of a link are alike: each holds a :class:`Link` wrapping the
other's remote reference, and each answers the same small set of remote
methods (:data:`METHODS`), whose arguments must be plain data of the listed
types; anything else is rejected and logged.  PB only ever calls
``perspective_*``/``remote_*`` methods, and these two classes route every
one of them through :meth:`Link.received`.

Authentication (:mod:`~twisted_phoenix.cluster.auth`): the connecting node
logs in with its node name and the cluster cookie bound to the TLS channel
(PB's challenge-response: the cookie never crosses the wire); then it
challenges the accepting node to prove it knows the cookie too
(:func:`proof`), over the same binding.  Links are TLS by default
(:mod:`~twisted_phoenix.cluster.tls`).
"""

from __future__ import annotations

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

from .auth import hello_proof, login_secret
from .routing import BATCH, DEFAULT_MAX_TOPICS, MAX_TOPIC_LENGTH, PeerInterest
from .tls import channel_binding

if TYPE_CHECKING:
    from .node import Node

__all__ = [
    "METHODS",
    "BUFFER_LIMIT",
    "CookieChecker",
    "ClusterRealm",
    "Link",
    "NodeMind",
    "PeerPerspective",
    "RejectedCall",
    "WrongCookie",
    "proof",
]

log = Logger()

#: Broadcast payloads travel as JSON split into chunks below Banana's
#: 640 KiB string limit.
CHUNK = 512 * 1024

#: Bytes of broadcasts a link still takes once Twisted has paused it (its
#: write buffer holds more than 64 KiB): a burst of broadcasts within one
#: reactor turn is normal, but a peer that does not read must not make us
#: buffer without bound.  Past this, broadcasts are dropped and counted.
BUFFER_LIMIT = 4 * 1024 * 1024

_PLAIN = (str, bytes, int, float, bool, type(None))


class RejectedCall(pb.Error):
    """
    A call from a peer that is not one of :data:`METHODS` with plain-data
    arguments.  A :class:`pb.Error`, so PB sends it back to the caller
    without logging a traceback: the rejection is logged once, by us.
    """


class WrongCookie(pb.Error, cred_error.UnauthorizedLogin):
    """A node logged in with the wrong cookie (sent back to it, logged by us)."""

#: The remote methods of a link and the types of their arguments.
METHODS: dict[str, tuple[Any, ...]] = {
    "hello": (dict,),
    "ping": (),
    "broadcast": (str, str, list, bool),
    "peer_up": (str, (str, type(None))),
    "bye": (),
    # Interest-based routing (:mod:`~twisted_phoenix.cluster.routing`):
    # a part of the peer's whole set of topics (topics, last part?), a
    # change to it (added, removed), or "send me everything".
    "interest_set": (list, bool),
    "interest_update": (list, list),
    "interest_all": (),
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


def proof(cookie: str, nonce: str, name: str, binding: bytes = b"") -> str:
    """
    What the accepting node ``name`` answers to a hello carrying ``nonce``,
    to prove it knows ``cookie``, on a link whose TLS channel binding is
    ``binding`` (:func:`~twisted_phoenix.cluster.auth.hello_proof`).
    """
    return hello_proof(cookie, nonce, name, binding)


@implementer(IPushProducer)
class Link:
    """
    A live link to one peer node.

    :ivar peer: the peer's node name (``None`` until its hello).
    :ivar initiator: the name of the node that opened the link.
    :ivar dropped: broadcasts dropped because the link was congested.
    :ivar interest: which topics the peer wants (:class:`~twisted_phoenix.cluster.routing.PeerInterest`).
    """

    def __init__(self, node: Node, remote: pb.RemoteReference, initiator: str, peer: str | None) -> None:
        self.node = node
        self.remote = remote
        self.initiator = initiator
        self.peer = peer
        self.info: dict[str, Any] = {}
        self.up = False
        #: The hello exchange succeeded on this link: its calls are
        #: accepted, even when it is a duplicate on its way out (the peer may
        #: have sent broadcasts on it before it learnt it was one).
        self.greeted = False
        self.closed = False
        self.paused = False
        self.leaving = False
        self.dropped = 0
        self._dropped_logged = 0
        self.interest = PeerInterest(
            peer, getattr(node, "max_interest_topics", DEFAULT_MAX_TOPICS),
            getattr(node, "interest_batch", BATCH), getattr(node, "interest_topic_length", MAX_TOPIC_LENGTH),
        )
        #: See :data:`BUFFER_LIMIT`.
        self.buffer_limit = BUFFER_LIMIT
        self._paused_bytes = 0
        self.last_seen = node.reactor.seconds()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = node.reactor
        transport = remote.broker.transport
        transport.registerProducer(self, True)
        # Small messages (broadcasts, heartbeats) must not wait for Nagle's
        # algorithm: with it, the benchmark's added p99 was ~30 ms.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
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
        # Twisted calls this again on each write while its buffer is full:
        # the allowance counts from the first call.
        if not self.paused:
            self._paused_bytes = 0
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
        (and counts it) when the link is gone or congested: paused by
        Twisted, and :attr:`buffer_limit` bytes already written since.
        """
        if self.closed:
            self._drop()
            return False
        if self.paused:
            size = sum(len(c) for c in chunks)
            if self._paused_bytes + size > self.buffer_limit:
                self._drop()
                return False
            self._paused_bytes += size
        try:
            self.remote.callRemote("broadcast", topic, event, chunks, binary, pbanswer=False)
        except pb.DeadReferenceError:
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        """Count a broadcast dropped, here and in the node's total."""
        self.dropped += 1
        self.node.broadcasts_dropped += 1

    def send_interest(self, method: str, *args: Any, answer: bool = False) -> defer.Deferred[Any] | None:
        """
        Tell the peer which topics this node wants (an ``interest_*``
        call).  Never dropped for congestion: the peer's view of this node
        must not miss a change.

        :param answer: ask for an answer, which the peer sends once it has
            read everything before on this link (joins wait for it).
        :returns: with ``answer``, the answer's Deferred (it fails if the
            link goes away first); ``None`` otherwise, or if the link is
            gone already.
        """
        if self.closed:
            return None
        try:
            if answer:
                return self.remote.callRemote(method, *args)
            self.remote.callRemote(method, *args, pbanswer=False)
        except pb.DeadReferenceError:
            pass
        return None

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
            raise RejectedCall(f"not a cluster call: {method}")
        self.last_seen = self.node.reactor.seconds()
        if method == "hello":
            if self.initiator == self.node.name:
                # We opened this link: we say hello, the peer answers with
                # its proof.  A peer that says hello here has proved nothing.
                log.error("Rejected a call from node {peer}: hello on a link we opened", peer=self.peer)
                raise RejectedCall("hello goes the other way")
            return self.node._hello_received(self, args[0])
        if not (self.up or self.greeted):
            if method in ("ping", "bye"):
                return None  # a duplicate link on its way out
            log.error("Rejected a call from node {peer}: {method} before hello", peer=self.peer, method=method)
            raise RejectedCall("hello first")
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
        if method == "interest_set":
            self.interest.set_part(*args)
            return None
        if method == "interest_update":
            self.interest.update(*args)
            return None
        if method == "interest_all":
            self.interest.everything()
            return None
        raise AssertionError(method)


def _receiver(method_prefix: str) -> Callable[..., Any]:
    def message_received(self: Any, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        peer = None if self.link is None else self.link.peer
        try:
            args = broker.unserialize(args)
            kw = broker.unserialize(kw)
        except Exception as e:
            # Jelly refuses anything but plain data (InsecureJelly).
            log.error(
                "Rejected a call from node {peer}: {method} with arguments that are not plain data ({error})",
                peer=peer, method=message, error=repr(e)[:200],
            )
            raise RejectedCall(f"not plain data: {message}") from None
        if kw:
            log.error("Rejected a call from node {peer}: {method} with keyword arguments", peer=peer, method=message)
            raise RejectedCall("cluster calls take no keyword arguments")
        if self.link is None or not isinstance(args, (list, tuple)):
            raise RejectedCall("no link")
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
    """
    Accepts a node that logs in with the cluster cookie bound to this
    connection (:func:`~twisted_phoenix.cluster.auth.login_secret`).
    """

    credentialInterfaces = (IUsernameHashedPassword,)

    def __init__(self, cookie: str) -> None:
        self._cookie = cookie

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[bytes]:
        name = credentials.username
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        transport = getattr(getattr(credentials, "broker", None), "transport", None)
        address = transport.getPeer() if transport is not None else None
        try:
            binding = channel_binding(transport)
        except ValueError:
            binding = None
        if binding is not None and credentials.checkPassword(login_secret(self._cookie, binding, name)):
            return defer.succeed(name.encode())
        if binding:
            log.error("Refused node {name} from {address}: wrong cookie (or a relay between us: "
                      "the proof is bound to this TLS connection)", name=name, address=address)
        else:
            log.error("Refused node {name} from {address}: wrong cookie", name=name, address=address)
        return defer.fail(WrongCookie("wrong cookie"))


@implementer(IRealm)
class ClusterRealm:
    """Gives each connecting node a :class:`PeerPerspective` and a :class:`Link`."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def requestAvatar(self, avatar_id: bytes, mind: Any, *interfaces: Any) -> Any:
        if pb.IPerspective not in interfaces or not isinstance(mind, pb.RemoteReference):
            log.error("Refused node {name}: it logged in without a mind", name=avatar_id)
            raise RejectedCall("PB perspectives with a mind only")
        peer = avatar_id.decode("utf-8")
        if peer == self.node.name:
            log.error("Refused a node that logged in with this node's own name, {name}", name=peer)
            raise RejectedCall("that is this node's name")
        # Logged in: the peer proved the cookie on this very connection.
        authenticate = getattr(mind.broker, "authenticate", None)
        if authenticate is not None:
            authenticate()
        avatar = PeerPerspective()
        avatar.link = Link(self.node, mind, initiator=peer, peer=peer)
        return pb.IPerspective, avatar, avatar.link.close
