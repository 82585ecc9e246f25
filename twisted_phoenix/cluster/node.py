# -*- test-case-name: tests.test_cluster -*-
"""
A cluster node: its name, its links to the other nodes, and the PubSub
adapter that carries broadcasts over them.

A node listens for links (Perspective Broker over TLS, unless asked for
plaintext), registers its name with the host's :mod:`port mapper
<twisted_phoenix.cluster.portmapper>`, and connects to other nodes by name.
Every link and every exchange with the port mapper proves the cluster
cookie (:mod:`~twisted_phoenix.cluster.auth`); what a peer may do before it
has is bounded (:mod:`~twisted_phoenix.cluster.broker`).
The mesh is transitive: a new link introduces each side's peers to the
other, and every node links to every other directly.

Broadcasts cross each link once (the payload encoded once for all links) and
are dispatched on the receiving node by its own :class:`~twisted_phoenix.pubsub.PubSub`.
With interest routing (the default; :mod:`~twisted_phoenix.cluster.routing`)
the nodes tell each other which topics they have subscribers for, and a
broadcast crosses only to the nodes that want its topic, or that have not
said yet; a join on a topic new to this node is answered once every peer
has acknowledged the news (:meth:`Node.prepare_interest`).
A broadcast to a node that is down or congested is dropped and counted,
never queued without bound: as in Phoenix, delivery is at most once.

Heartbeats on each link notice a dead or partitioned peer within
``heartbeat_timeout + heartbeat_interval`` seconds; lost links are retried
with backoff for as long as the node runs.
"""

from __future__ import annotations

import secrets
from typing import Any, Iterable

import orjson
from twisted.application import service
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.endpoints import (
    SSL4ClientEndpoint,
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
)
from twisted.logger import Logger, LogLevel
from twisted.spread import pb

from ..adapters.interest import DEFAULT_LINGER, DEFAULT_PREPARE_TIMEOUT
from ..message import Broadcast
from ..pubsub import PubSub
from ..serializers import json_dumps
from .auth import login_secret, new_nonce, same
from .broker import (
    LOGIN_TIMEOUT,
    MAX_PENDING,
    PEER_HELLO_BYTES,
    PEER_HELLO_ITEMS,
    PRE_AUTH_BYTES,
    PRE_AUTH_DEPTH,
    PRE_AUTH_ITEMS,
    LinkClientFactory,
    LinkServerFactory,
)
from .link import CHUNK, ClusterRealm, CookieChecker, Link, NodeMind, RejectedCall, proof
from .names import is_local_host, parse_address, parse_node_name
from .portmapper import DEFAULT_PORT, MapperClient, MapperError
from .routing import BATCH, DEFAULT_MAX_TOPICS, MAX_TOPIC_LENGTH, InterestAnnouncer
from .tls import ClusterTLS, channel_binding

__all__ = ["Node"]

log = Logger()

#: Seconds between attempts to relink a lost peer.
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)

#: Seconds :meth:`Node.stop` waits for the peers' goodbyes and for its
#: connections to be gone.
STOP_TIMEOUT = 5.0

#: Seconds a link we open has to log in, and then to get the hello answer.
CONNECT_TIMEOUT = 5.0

#: Link interfaces reachable at 127.0.0.1, where the port mapper's answers
#: point: a local node listening on one of these registers with it.
_MAPPED_INTERFACES = frozenset({"127.0.0.1", "0.0.0.0", "", "localhost"})


class _Connections:
    """Every PB connection of a node, so that :meth:`Node.stop` can drop them all."""

    def __init__(self) -> None:
        self.brokers: set[pb.Broker] = set()

    def add(self, broker: pb.Broker) -> None:
        self.brokers.add(broker)
        broker.notifyOnDisconnect(lambda: self.brokers.discard(broker))

    def close_all(self, reactor: Any) -> defer.Deferred[Any]:
        """Abort every connection; fires once all are gone."""
        waits = []
        for broker in list(self.brokers):
            d: defer.Deferred[None] = defer.Deferred()
            broker.notifyOnDisconnect(lambda d=d: d.called or d.callback(None))
            waits.append(d.addTimeout(STOP_TIMEOUT, reactor))
            if broker.transport is not None:
                broker.transport.abortConnection()
        return defer.DeferredList(waits, consumeErrors=True)


class Node(service.Service):
    """
    This process as a member of a cluster.

    :param reactor: the reactor.
    :param name: this node's name, ``name@host``.
    :param cookie: the shared secret every node of the cluster must know.
    :param pubsub: the local PubSub; the node becomes its adapter.
    :param interface: where to listen for links (``127.0.0.1`` by default).
    :param port: the link port; 0 picks a free one (found through the port mapper).
    :param tls: certificates from the cluster's CA for TLS links; ``None``
        (the default): a self-signed certificate made at start, links
        encrypted all the same.
    :param plaintext: links without TLS (only with ``tls=None``); such a
        node and a TLS node cannot link.
    :param mapper_port: the port mapper's port on 127.0.0.1.
    :param login_timeout: seconds a connection to the link port (or the port
        mapper this node serves) has to prove the cookie.
    :param max_pending: connections to the link port (or to the port
        mapper) that have not proved it yet, at once; more are closed at once.
    :param heartbeat_interval: seconds between heartbeats on each link.
    :param heartbeat_timeout: seconds of silence after which a peer is dropped.
    :param connect: node names (or ``name=host:port``) to connect to at start.
    :param interest_routing: tell the peers which topics this node has
        subscribers for, and send each broadcast only to the peers that
        want its topic (or have not said); ``False``: every broadcast to
        every peer, and every peer's to this node.
    :param interest_linger: seconds a topic stays wanted from the peers
        after its last local subscriber left.
    :param max_interest_topics: past this many wanted topics, this node
        asks its peers for everything; a peer that declares more is sent
        everything.
    :param prepare_timeout: seconds a join on a topic new to this node
        waits at most for every peer to acknowledge that this node wants it
        (:meth:`prepare_interest`); past it a warning names the slow peers
        and the join goes on.

    :cvar pre_auth_bytes: bytes a peer connecting to the link port may send
        before it has logged in.
    :cvar pre_auth_items: Banana items it may send before.
    :cvar pre_auth_depth: how deep any peer may nest Banana lists before it
        is authenticated.
    :cvar peer_hello_bytes: bytes a node we connect to may send before its
        hello proof checks out.
    :cvar peer_hello_items: Banana items it may send before.
    :cvar interest_batch: topics in one interest message, sent or accepted
        (every node of a cluster should use the same).
    :cvar interest_topic_length: the longest topic declared, or accepted
        from a peer (characters).
    """

    pre_auth_bytes = PRE_AUTH_BYTES
    pre_auth_items = PRE_AUTH_ITEMS
    pre_auth_depth = PRE_AUTH_DEPTH
    peer_hello_bytes = PEER_HELLO_BYTES
    peer_hello_items = PEER_HELLO_ITEMS
    interest_batch = BATCH
    interest_topic_length = MAX_TOPIC_LENGTH

    def __init__(
        self,
        reactor: Any,
        name: str,
        *,
        cookie: str,
        pubsub: PubSub,
        interface: str = "127.0.0.1",
        port: int = 0,
        tls: ClusterTLS | None = None,
        plaintext: bool = False,
        mapper_port: int = DEFAULT_PORT,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        connect: Iterable[str] = (),
        login_timeout: float = LOGIN_TIMEOUT,
        max_pending: int = MAX_PENDING,
        interest_routing: bool = True,
        interest_linger: float = DEFAULT_LINGER,
        max_interest_topics: int = DEFAULT_MAX_TOPICS,
        prepare_timeout: float = DEFAULT_PREPARE_TIMEOUT,
    ) -> None:
        if plaintext and tls is not None:
            raise ValueError("plaintext links and TLS certificates: choose one")
        self.reactor = reactor
        self.node_name = parse_node_name(name)
        self.name = name
        self.cookie = cookie
        self.pubsub = pubsub
        self.interface = interface
        self.port = port
        self.tls = tls
        self.plaintext = plaintext
        self.login_timeout = login_timeout
        self.max_pending = max_pending
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.initial = list(connect)
        #: A new one each start: peers tell a restarted node from a stale link.
        self.incarnation = secrets.token_hex(8)
        self.links: dict[str, Link] = {}
        #: Broadcasts to other nodes dropped: a link congested or gone
        #: (every link's ``dropped``), or a direct broadcast to a node not
        #: connected (for metrics; it only grows).
        self.broadcasts_dropped = 0
        self.address: str | None = None
        self.mapper = MapperClient(
            reactor, mapper_port, cookie, login_timeout=login_timeout, max_pending=max_pending
        )
        self._addresses: dict[str, str] = {}
        self._retrying: set[str] = set()
        self._listening: Any = None
        self._stopping = False
        self._connections = _Connections()
        self._timers: set[Any] = set()
        self._connecting: set[defer.Deferred[Any]] = set()
        self._pending: dict[str, int] = {}
        self._lost_while_connecting: set[str] = set()
        self.started: defer.Deferred[None] = defer.Deferred()
        #: Called with a peer's name each time a link to it comes up.
        self.node_up_callbacks: list[Any] = []
        self.interest_routing = interest_routing
        self.max_interest_topics = max_interest_topics
        #: What this node tells its peers it wants.
        self.announcer = InterestAnnouncer(
            reactor, self._interest_links, linger=interest_linger, max_topics=max_interest_topics,
            batch=self.interest_batch, max_length=self.interest_topic_length, timeout=prepare_timeout,
        )
        #: Copies of broadcasts not sent to a peer that wanted none of their topic.
        self.skipped = 0
        pubsub.adapter = self
        pubsub.node_name = name
        if interest_routing:
            self.announcer.interest.update(pubsub.topics())

    # -- service ---------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        d = self.start()
        d.addErrback(lambda f: log.failure("Node {name} failed to start", f, name=self.name))

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return self.stop()

    @defer.inlineCallbacks
    def start(self) -> Any:
        """Listen, register with the port mapper, connect to the initial nodes."""
        if self.tls is None and not self.plaintext:
            # No certificates configured: our own, made now (an EC key:
            # about a millisecond).  The cookie proof, bound to each TLS
            # connection, is what authenticates peers.
            self.tls = ClusterTLS.generate(self.name)
        realm = ClusterRealm(self)
        factory = LinkServerFactory(
            Portal(realm, [CookieChecker(self.cookie)]), self.reactor,
            login_timeout=self.login_timeout, max_pending=self.max_pending,
            track=self._connections.add, limits=self._limits(),
        )
        self._server_factory = factory
        if self.tls is not None:
            endpoint: Any = SSL4ServerEndpoint(
                self.reactor, self.port, self.tls.server_options(), interface=self.interface
            )
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, self.port, interface=self.interface)
        self._listening = yield endpoint.listen(factory)
        port = self._listening.getHost().port
        self.address = f"{self.node_name.host}:{port}"
        if is_local_host(self.node_name.host):
            if self.interface in _MAPPED_INTERFACES:
                yield self.mapper.register(self.node_name.name, port)
            else:
                # The mapper's answers are ports on 127.0.0.1: a node that
                # listens elsewhere (a loopback alias, one address of the
                # host) is reached by its address, as across hosts.
                log.info("Node {name} is not registered with the port mapper (it does not listen on "
                         "127.0.0.1): other nodes reach it by address", name=self.name)
        log.info(
            "Node {name} listening for cluster links on {interface}:{port} ({tls})",
            name=self.name, interface=self.interface, port=port, tls=self._security(),
        )
        self.started.callback(None)
        for target in self.initial:
            self.connect(target).addCallback(self._initial_connected, target)

    def _security(self) -> str:
        if self.tls is None:
            return "plaintext"
        return "TLS, self-signed certificate" if self.tls.self_signed else "TLS, certificates from the cluster CA"

    def _limits(self, accepting: bool = True) -> dict[str, int]:
        """What a broker allows a peer before it is authenticated."""
        if accepting:
            return {"max_bytes": self.pre_auth_bytes, "max_items": self.pre_auth_items,
                    "max_depth": self.pre_auth_depth}
        return {"max_bytes": self.peer_hello_bytes, "max_items": self.peer_hello_items,
                "max_depth": self.pre_auth_depth}

    def _initial_connected(self, ok: bool, target: str) -> None:
        if not ok:
            self._retry(target.partition("=")[0])

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """
        Leave the cluster cleanly: tell every peer (so they do not try to
        relink), wait until each has received everything sent before, close
        the links, stop listening and leave the port mapper.
        """
        self._stopping = True
        self.announcer.stop()
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for attempt in list(self._connecting):
            attempt.cancel()
        links = list(self.links.values())
        goodbyes = [link.call("bye").addTimeout(2, self.reactor) for link in links]
        yield defer.DeferredList(goodbyes, consumeErrors=True)
        # Every connection, links and half-open ones alike, and wait until
        # they are gone, so that nothing of this node outlives stop().
        yield self._connections.close_all(self.reactor)
        waits = [self.mapper.stop()]
        if self._listening is not None:
            waits.append(defer.maybeDeferred(self._listening.stopListening))
        yield defer.gatherResults(waits)

    # -- Node API ----------------------------------------------------------------

    def list(self) -> list[str]:
        """The names of the connected nodes (not this one), sorted."""
        return sorted(self.links)

    def self(self) -> str:
        """This node's name."""
        return self.name

    def connect(self, target: str, address: str | None = None, *, quiet: bool = False) -> defer.Deferred[bool]:
        """
        Link to the node ``target`` (``name@host``, or ``name@host=addr:port``).
        Fires with ``True`` once linked (or already linked), ``False`` if
        the node cannot be reached or refuses us; the reason is logged
        (at debug level with ``quiet``, for retries).
        """
        peer = target.partition("=")[0]
        self._pending[peer] = self._pending.get(peer, 0) + 1

        def done(ok: Any) -> Any:
            self._pending[peer] -= 1
            if not self._pending[peer]:
                del self._pending[peer]
                if peer in self._lost_while_connecting:
                    # A link to it went while we were connecting anew (see
                    # _link_lost); only now do we know whether it is down.
                    self._lost_while_connecting.discard(peer)
                    if peer not in self.links and not self._stopping:
                        log.warn("Node {peer} is down (link from {name} lost)", peer=peer, name=self.name)
                        self._retry(peer)
            return ok

        return self._connect(target, address, quiet=quiet).addBoth(done)

    @defer.inlineCallbacks
    def _connect(self, target: str, address: str | None = None, *, quiet: bool = False) -> Any:
        level = LogLevel.debug if quiet else LogLevel.warn
        if "=" in target and address is None:
            target, _, address = target.partition("=")
        try:
            wanted = parse_node_name(target)
            if address is not None:
                parse_address(address)
        except ValueError as e:
            log.error("Cannot connect: {error}", error=str(e))
            return False
        if target == self.name or target in self.links:
            return True
        if self._stopping:
            return False
        if address is not None:
            self._addresses[target] = address
        try:
            host, port = yield self._resolve(target)
        except Exception as e:
            log.emit(level, "Cannot connect to node {target}: {error}", target=target,
                     error=str(e) if isinstance(e, LookupError) else _describe(e))
            return False
        if self._stopping:
            return False
        factory = LinkClientFactory(track=self._connections.add, limits=self._limits(accepting=False))
        if self.tls is not None:
            endpoint: Any = SSL4ClientEndpoint(
                self.reactor, host, port, self.tls.client_options(wanted.host), timeout=5
            )
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=5)
        mind = NodeMind()
        broker = None
        try:
            connecting = endpoint.connect(factory)
            self._connecting.add(connecting)
            connecting.addBoth(lambda r: self._connecting.discard(connecting) or r)
            broker = yield connecting
            perspective = yield self._login(factory, broker, mind).addTimeout(CONNECT_TIMEOUT, self.reactor)
        except Exception as e:
            # factory.disconnect() only knows a connection that got as far as
            # PB's version exchange; drop ours whatever state it is in.
            if broker is not None and broker.transport is not None:
                broker.transport.abortConnection()
            hint = self._hint(e)
            if self._stopping:
                level = LogLevel.debug
            elif not quiet and (_refused_login(e) or hint):
                level = LogLevel.error  # a configuration error: say so loudly
            log.emit(level, "Cannot connect to node {target} at {host}:{port}: {error}{hint}",
                     target=target, host=host, port=port, error=_describe(e), hint=hint)
            return False
        link = mind.link = Link(self, perspective, initiator=self.name, peer=target)
        nonce = new_nonce()
        try:
            info = yield link.call("hello", self._hello(nonce)).addTimeout(CONNECT_TIMEOUT, self.reactor)
        except Exception as e:
            link.close()
            log.warn("Node {target} did not answer our hello: {error}", target=target, error=_describe(e))
            return False
        if not isinstance(info, dict) or info.get("name") != target or not same(
            info.get("proof"), proof(self.cookie, nonce, target, broker.binding)
        ):
            link.close()
            log.error("Refused node at {host}:{port}: it is not {target} or does not know the cookie",
                      host=host, port=port, target=target)
            return False
        if link.closed or self._stopping:
            link.close()
            return False
        broker.authenticate()
        return self._link_up(link, info)

    @defer.inlineCallbacks
    def _login(self, factory: LinkClientFactory, broker: Any, mind: NodeMind) -> Any:
        """Log in on a new connection with the cookie bound to it; fires with the peer's perspective."""
        # The root object comes once the peer has spoken: past the TLS
        # handshake, so the channel binding is known.
        yield factory.getRootObject()
        broker.binding = channel_binding(broker.transport)
        secret = login_secret(self.cookie, broker.binding, self.name)
        perspective = yield factory.login(UsernamePassword(self.name.encode(), secret), client=mind)
        return perspective

    def _hint(self, e: BaseException) -> str:
        """What a failed login probably means, when it is a mismatch of configuration."""
        text = repr(e)
        if _refused_login(e):
            if self.tls is not None:
                return " (wrong cookie, or a relay between us: the proof is bound to this TLS connection)"
            return ""
        if self.tls is None and isinstance(e, (defer.TimeoutError, defer.CancelledError)):
            return (" (no answer to a plaintext login: is it a TLS node? This node's links are plaintext "
                    "(--dist-plaintext); every node of a cluster must use TLS, or every one plaintext)")
        if self.tls is not None and ("SSL" in text or "ssl" in text or "TLS" in text):
            return (" (the TLS handshake failed: is it a plaintext node (--dist-plaintext)? Every node of a "
                    "cluster must use TLS, or every one plaintext; with --dist-ca, its certificate must be "
                    "from the same CA)")
        return ""

    @defer.inlineCallbacks
    def _resolve(self, target: str) -> Any:
        """``(host, port)`` of a node: the port mapper for this host, else a known address."""
        name = parse_node_name(target)
        local = is_local_host(name.host)
        mapper_error = None
        if local:
            try:
                port = yield self.mapper.lookup(name.name)
            except MapperError as e:
                port, mapper_error = None, e
            if port is not None:
                return ("127.0.0.1", port)
        address = self._addresses.get(target)
        if address is None:
            if mapper_error is not None:
                raise LookupError(str(mapper_error))
            raise LookupError(
                "no node of that name is registered on this host" if local
                else "it is on another host: give its address, as name@host=ADDRESS:PORT"
            )
        return parse_address(address)

    # -- links ---------------------------------------------------------------------

    def _hello(self, nonce: str | None, peer_nonce: str | None = None, binding: bytes = b"") -> dict[str, Any]:
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "address": self.address,
            "nodes": {name: link.address for name, link in self.links.items() if link.address},
            # Whether this node declares its topics (and routes by its peers').
            "interest": self._routes(),
            "nonce": nonce,
            "proof": None if peer_nonce is None else proof(self.cookie, peer_nonce, self.name, binding),
        }

    def _hello_received(self, link: Link, info: dict[str, Any]) -> dict[str, Any]:
        """The accepting side: a peer that logged in introduces itself."""
        if link.greeted:
            log.error("Rejected a call from node {peer}: a second hello", peer=link.peer)
            raise RejectedCall("hello twice")
        if info.get("name") != link.peer or link.peer == self.name or not isinstance(info.get("nonce"), str):
            log.error("Refused node {peer}: bad hello", peer=link.peer)
            link.close()
            raise RejectedCall("bad hello")
        if self._stopping:
            link.close()
            raise RejectedCall("this node is stopping")
        try:
            binding = channel_binding(link.remote.broker.transport)
        except ValueError:
            link.close()
            raise RejectedCall("no TLS channel binding") from None
        answer = self._hello(None, peer_nonce=info["nonce"], binding=binding)
        self._link_up(link, info, answering=True)
        return answer

    def _link_up(self, link: Link, info: dict[str, Any], *, answering: bool = False) -> bool:
        """
        A link has passed its hello: keep it (unless it duplicates a better
        one), start its heartbeats and tell the world.

        :param answering: we are the accepting side, still to answer the
            hello: the peer only treats the link as up once it has our
            answer, so nothing may be sent on it before.
        """
        peer = info["name"]
        link.info = info
        link.greeted = True
        existing = self.links.get(peer)
        if existing is not None and not existing.closed:
            if existing.info.get("incarnation") != info.get("incarnation"):
                existing.close()  # the peer restarted; that link is stale
            elif existing.initiator == link.initiator or existing.initiator < link.initiator:
                # Both ends keep the link opened by the smaller name.  When
                # answering, the peer closes this one once it has our answer
                # (closing it first would fail its connect); if it does not,
                # we do, later.
                if answering:
                    self._later(STOP_TIMEOUT, link.close)
                else:
                    link.close()
                return True
            else:
                existing.close()
        self.links[peer] = link
        self._learn_address(peer, info.get("address"))
        link.start()
        log.info("Node {peer} connected to {name}", peer=peer, name=self.name)
        if answering:
            self._later(0, self._announce, link)
        else:
            self._announce(link)
        return True

    def _later(self, delay: float, f: Any, *args: Any) -> None:
        """Call ``f(*args)`` in ``delay`` seconds, unless this node stops first."""

        def run() -> None:
            self._timers.discard(call)
            f(*args)

        call = self.reactor.callLater(delay, run)
        self._timers.add(call)

    def _announce(self, link: Link) -> None:
        """A new link is up: node-up callbacks, and introductions both ways."""
        peer = link.peer
        if link.closed or self._stopping or self.links.get(peer) is not link:  # type: ignore[arg-type]
            return
        info = link.info
        if self._routes() and info.get("interest") is True:
            # First: what the node-up callbacks send (presence asks for
            # the peer's state) must find the peer knowing our topics.
            self.announcer.announce(link)
        for callback in list(self.node_up_callbacks):
            try:
                callback(peer)
            except Exception:
                log.failure("A node-up callback failed")
        for other in list(self.links.values()):
            if other is not link:
                other.call("peer_up", peer, link.address).addErrback(lambda f: None)
        nodes = info.get("nodes")
        if isinstance(nodes, dict):
            for name, address in nodes.items():
                self._peer_up(name, address)

    def _peer_up(self, name: str, address: str | None) -> None:
        """A peer names a node it is linked to: link to it too."""
        if name == self.name or name in self.links or self._stopping:
            return
        try:
            parse_node_name(name)
        except ValueError:
            return
        self._learn_address(name, address)
        self.connect(name).addErrback(lambda f: log.failure("Linking to {name}", f, name=name))

    def _learn_address(self, name: str, address: Any) -> None:
        # Nodes on this host are found through the port mapper, which stays
        # right when they restart on another port; but one on a loopback
        # alias (127.0.0.2, ...) may listen there only, unregistered: its
        # address is kept, for when the mapper does not know it.
        if not isinstance(address, str):
            return
        try:
            host, _ = parse_address(address)
        except ValueError:
            return
        if not is_local_host(parse_node_name(name).host) or (host.startswith("127.") and host != "127.0.0.1"):
            self._addresses.setdefault(name, address)

    def _peer_leaving(self, link: Link) -> None:
        """The peer is shutting down on purpose: do not try to relink it."""
        log.info("Node {peer} is leaving the cluster", peer=link.peer)
        link.leaving = True
        registered = self.links.get(link.peer)  # type: ignore[arg-type]
        if registered is not None:
            registered.leaving = True  # it may have said so on a duplicate link

    def _link_lost(self, link: Link) -> None:
        peer = link.peer
        if peer is None or self.links.get(peer) is not link:
            return
        del self.links[peer]
        if self._stopping:
            log.info("Link from {name} to {peer} closed", name=self.name, peer=peer)
            return
        if self._pending.get(peer) and not link.leaving:
            # We are connecting to it again: this is a duplicate link that
            # the other end dropped in favour of the one we are opening
            # (both ends connected at once).  Down only if that fails.
            log.debug("Link from {name} to {peer} replaced", name=self.name, peer=peer)
            self._lost_while_connecting.add(peer)
            return
        if link.leaving:
            log.info("Node {peer} left", peer=peer)
            return
        log.warn("Node {peer} is down (link from {name} lost)", peer=peer, name=self.name)
        if not self._stopping:
            self._retry(peer)

    def _retry(self, peer: str, attempt: int = 0) -> None:
        """Relink ``peer`` with backoff until it is back or this node stops."""
        if self._stopping or (peer in self._retrying and attempt == 0):
            return
        self._retrying.add(peer)
        delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]

        def again() -> None:
            self._timers.discard(timer)
            if self._stopping or peer in self.links:
                self._retrying.discard(peer)
                return
            d = self.connect(peer, quiet=attempt > 0)
            # connect() answers False rather than failing; should it fail
            # all the same, keep trying rather than give the peer up.
            d.addErrback(lambda f: log.failure("Relinking {peer}", f, peer=peer) or False)
            d.addCallback(done)

        def done(ok: bool) -> None:
            if ok or self._stopping or peer in self.links:
                self._retrying.discard(peer)
            else:
                self._retry(peer, attempt + 1)

        timer = self.reactor.callLater(delay, again)
        self._timers.add(timer)

    # -- PubSub adapter ----------------------------------------------------------------

    def broadcast(self, message: Broadcast) -> None:
        """
        Send ``message`` to every other node that wants its topic, or has
        not said which topics it wants (the payload encoded once, and only
        if one does).
        """
        links = self.links
        if not links:
            return
        if self.announcer.pending:
            self.announcer.flush()  # our news first: a peer's answer to this must find us
        topic = message.topic
        if self.interest_routing:
            targets = [link for link in links.values() if (w := link.interest.topics) is None or topic in w]
            if len(targets) < len(links):
                self.skipped += len(links) - len(targets)
                if not targets:
                    return
        else:
            targets = list(links.values())
        chunks, binary = _encode(message.payload)
        for link in targets:
            link.send_broadcast(topic, message.event, chunks, binary)

    def direct_broadcast(self, node: str, message: Broadcast) -> bool:
        """Send ``message`` to the subscribers on ``node`` only."""
        link = self.links.get(node)
        if link is None:
            log.warn("Direct broadcast to {node} dropped: not connected", node=node)
            self.broadcasts_dropped += 1
            return False
        if self.announcer.pending:
            self.announcer.flush()
        chunks, binary = _encode(message.payload)
        return link.send_broadcast(message.topic, message.event, chunks, binary)

    @property
    def prepare_timeout(self) -> float:
        """Seconds a join waits at most for the peers' acknowledgement (see :meth:`prepare_interest`)."""
        return self.announcer.timeout

    @prepare_timeout.setter
    def prepare_timeout(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("prepare_timeout must be positive")
        self.announcer.timeout = seconds

    def prepare_interest(self, topic: str) -> defer.Deferred[None] | None:
        """
        PubSub (:meth:`~twisted_phoenix.pubsub.PubSub.prepare`): a join is
        about to subscribe to ``topic``.  Unless every peer that routes by
        interest knows already that this node wants it, tell them now and
        return a Deferred that fires once each has acknowledged (or its
        link went away), or after :attr:`prepare_timeout` seconds at most;
        ``None`` when there is nothing to wait for (no peer, routing off,
        the topic known to every peer).  A peer that does not route by
        interest sends everything anyway: it is not waited for.
        """
        if not self.links or not self.interest_routing or self.pubsub.adapter is not self:
            return None
        acks = self.announcer.prepare(topic)
        if acks is None:
            return None
        return acks.wait()

    def topic_subscribed(self, topic: str) -> None:
        """PubSub: ``topic`` has its first local subscriber (the peers are told at once)."""
        if self.interest_routing:
            self.announcer.gained(topic)

    def topic_unsubscribed(self, topic: str) -> None:
        """PubSub: ``topic`` has lost its last local subscriber (the peers are told after the linger)."""
        if self.interest_routing:
            self.announcer.lost(topic)

    def wanted_by(self, node: str) -> set[str] | None:
        """
        The topics ``node`` said it wants (a copy), or ``None`` when it is
        sent every broadcast (it has not said, asked for everything, or
        this node does not route by interest).
        """
        link = self.links.get(node)
        if link is None or not self.interest_routing or link.interest.topics is None:
            return None
        return set(link.interest.topics)

    def _routes(self) -> bool:
        """Whether this node routes by interest now: asked to, and it carries its PubSub's broadcasts."""
        return self.interest_routing and self.pubsub.adapter is self

    def _interest_links(self) -> list[Link]:
        """The links to tell of changes to this node's topics."""
        if not self._routes():
            return []
        return [link for link in self.links.values() if link.info.get("interest") is True and not link.closed]

    def _broadcast_received(self, link: Link, topic: str, event: str, chunks: list[Any], binary: bool) -> None:
        if not all(isinstance(c, bytes) for c in chunks):
            log.error("Rejected a broadcast from node {peer}: its payload is not bytes", peer=link.peer)
            raise RejectedCall("payload chunks must be bytes")
        data = b"".join(chunks)
        if binary:
            payload: Any = data
        else:
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                payload = None
            if not isinstance(payload, dict):
                log.error("Rejected a broadcast from node {peer}: its payload is not a JSON object", peer=link.peer)
                raise RejectedCall("the payload must be a JSON object")
        self.pubsub.dispatch(Broadcast(topic, event, payload))


def _encode(payload: Any) -> tuple[list[bytes], bool]:
    binary = isinstance(payload, bytes)
    data = payload if binary else json_dumps(payload)
    return [data[i : i + CHUNK] for i in range(0, max(len(data), 1), CHUNK)], binary


def _refused_login(e: BaseException) -> bool:
    """Whether ``e`` is the peer's refusal of our login (a wrong cookie)."""
    remote_type = getattr(e, "remoteType", b"")
    if isinstance(remote_type, bytes):
        remote_type = remote_type.decode("utf-8", "replace")
    return remote_type.endswith(("WrongCookie", "UnauthorizedLogin"))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
