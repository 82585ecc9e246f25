# -*- test-case-name: tests.test_cluster -*-
"""
A cluster node: its name, its links to the other nodes, and the PubSub
adapter that carries broadcasts over them.

A node listens for links (Perspective Broker, optionally over TLS),
registers its name with the host's :mod:`port mapper
<twisted_phoenix.cluster.portmapper>`, and connects to other nodes by name.
The mesh is transitive: a new link introduces each side's peers to the
other, and every node links to every other directly.

Broadcasts cross each link once (the payload encoded once for all links) and
are dispatched on the receiving node by its own :class:`~twisted_phoenix.pubsub.PubSub`.
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
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.spread import pb

from ..message import Broadcast
from ..pubsub import PubSub
from ..serializers import json_dumps
from .link import CHUNK, ClusterRealm, CookieChecker, Link, NodeMind, proof
from .names import is_local_host, parse_address, parse_node_name
from .portmapper import DEFAULT_PORT, MapperClient
from .tls import ClusterTLS

__all__ = ["Node"]

log = Logger()

#: Seconds between attempts to relink a lost peer.
BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class Node(service.Service):
    """
    This process as a member of a cluster.

    :param reactor: the reactor.
    :param name: this node's name, ``name@host``.
    :param cookie: the shared secret every node of the cluster must know.
    :param pubsub: the local PubSub; the node becomes its adapter.
    :param interface: where to listen for links (``127.0.0.1`` by default).
    :param port: the link port; 0 picks a free one (found through the port mapper).
    :param tls: certificates for TLS links, or ``None`` for plaintext.
    :param mapper_port: the port mapper's port on 127.0.0.1.
    :param heartbeat_interval: seconds between heartbeats on each link.
    :param heartbeat_timeout: seconds of silence after which a peer is dropped.
    :param connect: node names (or ``name=host:port``) to connect to at start.
    """

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
        mapper_port: int = DEFAULT_PORT,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 3.0,
        connect: Iterable[str] = (),
    ) -> None:
        self.reactor = reactor
        self.node_name = parse_node_name(name)
        self.name = name
        self.cookie = cookie
        self.pubsub = pubsub
        self.interface = interface
        self.port = port
        self.tls = tls
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.initial = list(connect)
        #: A new one each start: peers tell a restarted node from a stale link.
        self.incarnation = secrets.token_hex(8)
        self.links: dict[str, Link] = {}
        self.address: str | None = None
        self.mapper = MapperClient(reactor, mapper_port)
        self._addresses: dict[str, str] = {}
        self._retrying: set[str] = set()
        self._listening: Any = None
        self._stopping = False
        self.started: defer.Deferred[None] = defer.Deferred()
        #: Called with a peer's name each time a link to it comes up.
        self.node_up_callbacks: list[Any] = []
        pubsub.adapter = self
        pubsub.node_name = name

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
        realm = ClusterRealm(self)
        factory = pb.PBServerFactory(Portal(realm, [CookieChecker(self.cookie)]))
        factory.noisy = False
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
            yield self.mapper.register(self.node_name.name, port)
        log.info(
            "Node {name} listening for cluster links on {interface}:{port}{tls}",
            name=self.name, interface=self.interface, port=port, tls=" (TLS)" if self.tls else "",
        )
        self.started.callback(None)
        for target in self.initial:
            self.connect(target).addCallback(self._initial_connected, target)

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
        links = list(self.links.values())
        goodbyes = [link.call("bye").addTimeout(2, self.reactor) for link in links]
        yield defer.DeferredList(goodbyes, consumeErrors=True)
        for link in links:
            link.close()
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

    @defer.inlineCallbacks
    def connect(self, target: str, address: str | None = None, *, quiet: bool = False) -> Any:
        """
        Link to the node ``target`` (``name@host``, or ``name@host=addr:port``).
        Fires with ``True`` once linked (or already linked), ``False`` if
        the node cannot be reached or refuses us; the reason is logged
        (at debug level with ``quiet``, for retries).
        """
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
        if address is not None:
            self._addresses[target] = address
        try:
            host, port = yield self._resolve(target)
        except LookupError as e:
            log.emit(level, "Cannot connect to node {target}: {error}", target=target, error=str(e))
            return False
        factory = pb.PBClientFactory()
        factory.noisy = False
        if self.tls is not None:
            endpoint: Any = SSL4ClientEndpoint(
                self.reactor, host, port, self.tls.client_options(wanted.host), timeout=5
            )
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, host, port, timeout=5)
        mind = NodeMind()
        try:
            yield endpoint.connect(factory)
            login = factory.login(UsernamePassword(self.name.encode(), self.cookie.encode()), client=mind)
            perspective = yield login.addTimeout(5, self.reactor)
        except Exception as e:
            factory.disconnect()
            log.emit(level, "Cannot connect to node {target} at {host}:{port}: {error}",
                     target=target, host=host, port=port, error=_describe(e))
            return False
        link = mind.link = Link(self, perspective, initiator=self.name, peer=target)
        nonce = secrets.token_hex(16)
        try:
            info = yield link.call("hello", self._hello(nonce)).addTimeout(5, self.reactor)
        except Exception as e:
            link.close()
            log.warn("Node {target} did not answer our hello: {error}", target=target, error=_describe(e))
            return False
        if not isinstance(info, dict) or info.get("name") != target or info.get("proof") != proof(
            self.cookie, nonce, target
        ):
            link.close()
            log.error("Refused node at {host}:{port}: it is not {target} or does not know the cookie",
                      host=host, port=port, target=target)
            return False
        return self._link_up(link, info)

    @defer.inlineCallbacks
    def _resolve(self, target: str) -> Any:
        """``(host, port)`` of a node: the port mapper for this host, else a known address."""
        name = parse_node_name(target)
        local = is_local_host(name.host)
        if local:
            port = yield self.mapper.lookup(name.name)
            if port is not None:
                return ("127.0.0.1", port)
        address = self._addresses.get(target)
        if address is None:
            raise LookupError(
                "no node of that name is registered on this host" if local
                else "it is on another host: give its address, as name@host=ADDRESS:PORT"
            )
        return parse_address(address)

    # -- links ---------------------------------------------------------------------

    def _hello(self, nonce: str | None, peer_nonce: str | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "incarnation": self.incarnation,
            "address": self.address,
            "nodes": {name: link.address for name, link in self.links.items() if link.address},
            "nonce": nonce,
            "proof": None if peer_nonce is None else proof(self.cookie, peer_nonce, self.name),
        }

    def _hello_received(self, link: Link, info: dict[str, Any]) -> dict[str, Any]:
        """The accepting side: a peer that logged in introduces itself."""
        if info.get("name") != link.peer or not isinstance(info.get("nonce"), str):
            link.close()
            raise ValueError("bad hello")
        answer = self._hello(None, peer_nonce=info["nonce"])
        self._link_up(link, info)
        return answer

    def _link_up(self, link: Link, info: dict[str, Any]) -> bool:
        peer = info["name"]
        link.info = info
        existing = self.links.get(peer)
        if existing is not None and not existing.closed:
            if existing.info.get("incarnation") != info.get("incarnation"):
                existing.close()  # the peer restarted; that link is stale
            elif existing.initiator == link.initiator or existing.initiator < link.initiator:
                link.close()  # both ends keep the link opened by the smaller name
                return True
            else:
                existing.close()
        self.links[peer] = link
        self._learn_address(peer, info.get("address"))
        link.start()
        log.info("Node {peer} connected to {name}", peer=peer, name=self.name)
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
        return True

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
        # right when they restart on another port.
        if isinstance(address, str) and not is_local_host(parse_node_name(name).host):
            self._addresses.setdefault(name, address)

    def _peer_leaving(self, link: Link) -> None:
        """The peer is shutting down on purpose: do not try to relink it."""
        log.info("Node {peer} is leaving the cluster", peer=link.peer)
        link.leaving = True

    def _link_lost(self, link: Link) -> None:
        peer = link.peer
        if peer is None or self.links.get(peer) is not link:
            return
        del self.links[peer]
        if link.leaving:
            log.info("Node {peer} left", peer=peer)
            return
        log.warn("Node {peer} is down (link from {name} lost)", peer=peer, name=self.name)
        if not self._stopping:
            self._retry(peer)

    def _retry(self, peer: str, attempt: int = 0) -> None:
        """Relink ``peer`` with backoff until it is back or this node stops."""
        if peer in self._retrying and attempt == 0:
            return
        self._retrying.add(peer)
        delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]

        def again(_: Any) -> Any:
            if self._stopping or peer in self.links:
                self._retrying.discard(peer)
                return None
            return self.connect(peer, quiet=attempt > 0).addCallback(done)

        def done(ok: bool) -> None:
            if ok or self._stopping:
                self._retrying.discard(peer)
            else:
                self._retry(peer, attempt + 1)

        deferLater(self.reactor, delay, lambda: None).addCallback(again).addErrback(
            lambda f: log.failure("Relinking {peer}", f, peer=peer)
        )

    # -- PubSub adapter ----------------------------------------------------------------

    def broadcast(self, message: Broadcast) -> None:
        """Send ``message`` to every other node (the payload encoded once)."""
        if not self.links:
            return
        chunks, binary = _encode(message.payload)
        for link in list(self.links.values()):
            link.send_broadcast(message.topic, message.event, chunks, binary)

    def direct_broadcast(self, node: str, message: Broadcast) -> bool:
        """Send ``message`` to the subscribers on ``node`` only."""
        link = self.links.get(node)
        if link is None:
            log.warn("Direct broadcast to {node} dropped: not connected", node=node)
            return False
        chunks, binary = _encode(message.payload)
        return link.send_broadcast(message.topic, message.event, chunks, binary)

    def _broadcast_received(self, link: Link, topic: str, event: str, chunks: list[Any], binary: bool) -> None:
        if not all(isinstance(c, bytes) for c in chunks):
            raise ValueError("payload chunks must be bytes")
        data = b"".join(chunks)
        payload = data if binary else orjson.loads(data)
        self.pubsub.dispatch(Broadcast(topic, event, payload))


def _encode(payload: Any) -> tuple[list[bytes], bool]:
    binary = isinstance(payload, bytes)
    data = payload if binary else json_dumps(payload)
    return [data[i : i + CHUNK] for i in range(0, max(len(data), 1), CHUNK)], binary


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
