# -*- test-case-name: tests.test_redis_adapter,tests.test_redis_processes -*-
"""
A PubSub adapter that links nodes through Redis pub/sub, the twin of
phoenix_pubsub_redis, but interest-based and never silent about losses.

``twistd phoenix --pubsub redis://host:6379`` makes one; in code::

    pubsub = PubSub("a@host")
    adapter = RedisAdapter(reactor, pubsub, "redis://127.0.0.1:6379")
    adapter.setServiceParent(application)   # or adapter.startService()

Channels (``phx`` is the URL's ``prefix``):

* ``phx:t:<topic>``: the broadcasts of a topic.  A node is subscribed to it
  only while it has local subscribers to the topic (and ``linger`` seconds
  more; see :mod:`~twisted_phoenix.adapters.interest`).  A join on a topic
  the node is not subscribed to yet waits until Redis has confirmed the
  ``SUBSCRIBE`` (:meth:`RedisAdapter.prepare_interest`), so that its client,
  once it has its reply, misses nothing published after.
* ``phx:n:<node name>``: direct broadcasts to one node; each node is always
  subscribed to its own.
* ``phx:nodes``: ``hello`` and ``bye`` of the nodes, for membership.

A broadcast is one ``PUBLISH``: a small JSON header line (version, node
name, incarnation, run, seq, topic, event, binary flag) and then the
payload, encoded once: the same JSON bytes the PB mesh sends, or the bytes
of a binary payload.  The publishing node has delivered it to its own
subscribers already; when it comes back from Redis it is skipped.

A node that cannot publish (Redis down, the connection lost) drops the
broadcast and counts it (:attr:`RedisAdapter.publish_dropped`); before its
first connection it keeps up to ``max_pending`` of them instead, so that
what a node publishes while starting is not lost.  Lost connections are
retried with backoff, and every topic subscribed again.  Each message
carries a sequence number per publisher and channel, so a receiver counts
what it missed across a lost connection (:attr:`RedisAdapter.lost`; see
:mod:`~twisted_phoenix.adapters.sequence`).  Every loss is counted and
logged, at most once a ``log_interval`` per kind.

Membership: on each (re)connection a node publishes ``hello`` on
``phx:nodes``; every node answers it directly, and calls its
:attr:`~RedisAdapter.node_up_callbacks` for each ``hello`` it hears, as the
PB mesh does when a link comes up (presence asks the new node for its
state then).
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

import orjson
from twisted.application import service
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..message import Broadcast
from ..pubsub import PubSub
from ..serializers import json_dumps
from ._reconnect import Reconnector
from ._redis_protocol import CommandProtocol, SubscriberProtocol
from .._log import RateLimitedLog
from .interest import DEFAULT_PREPARE_TIMEOUT, Confirmation, Interest
from .redis_url import RedisConfig, parse_redis_url
from .sequence import Incoming, Outgoing

__all__ = ["RedisAdapter"]

#: The version of the message header.
VERSION = 1

#: Channels per SUBSCRIBE command when subscribing to many at once.
SUBSCRIBE_BATCH = 1000

#: Topics named in one log line about losses.
LOG_TOPICS = 5


class RedisAdapter(service.Service):
    """
    Moves broadcasts between nodes through Redis (see the module docstring).

    :param reactor: the reactor (time and connections).
    :param pubsub: this node's PubSub; the adapter becomes its adapter.  Its
        ``node_name`` names this node; it must be unique among the nodes on
        this Redis.
    :param config: a ``redis://``/``rediss://`` URL or a parsed :class:`RedisConfig`.
    :param linger: seconds a topic stays subscribed after its last local
        subscriber left (default: the URL's ``linger``, else 5).
    :param ping_interval: a connection silent this long is sent a PING; one
        silent for twice as long is dropped and reconnected (default: the
        URL's ``ping_interval``, else 5 s).
    :param sequence_idle: seconds after which a channel not published to is
        forgotten by the sequence counters (300; see
        :class:`~twisted_phoenix.adapters.sequence.Outgoing`).
    :param max_pending: broadcasts kept until the first connection (default:
        the URL's ``max_pending``, else 1000).
    :param log_interval: seconds over which losses are summed in one log line (1).
    :param backoff: ``(initial, maximum)`` seconds between reconnection attempts.
    :param prepare_timeout: seconds a join on a topic this node is not
        subscribed to waits at most for Redis to confirm the subscription
        (1; see :meth:`prepare_interest`); past it a warning, and the join
        goes on.

    Counters, for metrics (they only grow):

    :ivar published: broadcasts and direct broadcasts published.
    :ivar received: broadcasts received from other nodes and dispatched.
    :ivar publish_dropped: broadcasts not published because Redis was not
        connected (or the buffer before the first connection was full).
    :ivar publish_unconfirmed: broadcasts published on a connection that was
        lost before Redis acknowledged them: they may or may not have gone
        out (receivers' :attr:`lost` tells).
    :ivar lost: broadcasts from other nodes this node is known to have missed
        (sequence gaps).
    :ivar gaps: the number of such gaps.
    :ivar unknown_gaps: times broadcasts may have been missed in a number the
        sequence cannot tell (a publisher's sequence restarted across a
        lost connection).
    :ivar direct_undelivered: direct broadcasts that reached no subscriber
        (the node is down, or not on this Redis).
    :ivar rejected: messages on our channels that were not ours to read.
    :ivar disconnects: Redis connections lost (either of the two).
    :ivar reconnects: Redis connections made again after a loss.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        pubsub: PubSub,
        config: RedisConfig | str,
        *,
        linger: float | None = None,
        ping_interval: float | None = None,
        sequence_idle: float = 300.0,
        max_pending: int | None = None,
        log_interval: float = 1.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        prepare_timeout: float = DEFAULT_PREPARE_TIMEOUT,
    ) -> None:
        if isinstance(config, str):
            config = parse_redis_url(config)
        linger = config.linger if linger is None else linger
        ping_interval = config.ping_interval if ping_interval is None else ping_interval
        max_pending = config.max_pending if max_pending is None else max_pending
        if ping_interval <= 0 or sequence_idle <= 0 or log_interval <= 0 or max_pending < 0 or prepare_timeout <= 0:
            raise ValueError(
                "ping_interval, sequence_idle, log_interval and prepare_timeout must be positive, "
                "max_pending not negative"
            )
        self.reactor = reactor
        self.pubsub = pubsub
        self.config = config
        self.name = pubsub.node_name
        #: A new one each start: tells this process from an earlier one of the same name.
        self.incarnation = secrets.token_hex(8)
        self.ping_interval = ping_interval
        self.sequence_idle = sequence_idle
        self.max_pending = max_pending
        self.log_interval = log_interval
        self.backoff = backoff
        self.prepare_timeout = prepare_timeout
        prefix = config.prefix.encode()
        self._topic_prefix = prefix + b":t:"
        self._node_prefix = prefix + b":n:"
        #: This node's own channel (direct broadcasts, answers to hello).
        self.node_channel = self.channel_for_node(self.name)
        #: The channel of ``hello`` and ``bye``.
        self.nodes_channel = prefix + b":nodes"
        #: Called with a node's name each time it says hello (it connected
        #: or reconnected to Redis), or when it is first heard of.
        self.node_up_callbacks: list[Callable[[str], Any]] = []
        #: The other nodes heard of: name -> incarnation.
        self.nodes: dict[str, str] = {}

        self.published = 0
        self.received = 0
        self.publish_dropped = 0
        self.publish_unconfirmed = 0
        self.direct_undelivered = 0
        self.rejected = 0
        self.disconnects = 0
        self.reconnects = 0

        self.interest = Interest(reactor, self._want, self._unwant, linger)
        self._outgoing = Outgoing()
        self._incoming = Incoming()
        # The channels to be subscribed to, in order: ours first.
        self._channels: dict[bytes, None] = {self.node_channel: None, self.nodes_channel: None}
        self._publisher: CommandProtocol | None = None
        self._subscriber: SubscriberProtocol | None = None
        self._connections: set[Any] = set()
        # Channels Redis confirmed on the current subscription connection.
        self._live: set[bytes] = set()
        # SUBSCRIBEs sent on it and not confirmed yet, by channel.
        self._subscribing: dict[bytes, int] = {}
        # Joins waiting for those confirmations, by channel.
        self._confirmations: dict[bytes, Confirmation] = {}
        self._rlog = RateLimitedLog(self.log, reactor)
        self._ever_ready: set[type] = set()
        self._pending: list[tuple[bytes, bytes, str | None, str]] | None = []
        self._base_subscribed = False
        self._hello_sent = False
        self._stopping = False
        self._connectors: list[Reconnector] = []
        self._loops: list[LoopingCall] = []
        self._unlogged: dict[tuple[str, str], list[Any]] = {}
        self._log_call: Any = None
        self._clashes: set[str] = set()
        self._failing = False
        pubsub.adapter = self
        self.interest.update(pubsub.topics())

    # -- counters and state ------------------------------------------------------

    @property
    def lost(self) -> int:
        """Broadcasts from other nodes this node is known to have missed."""
        return self._incoming.lost

    @property
    def gaps(self) -> int:
        """Sequence gaps found (each one of ``lost``'s holes)."""
        return self._incoming.gaps

    @property
    def unknown_gaps(self) -> int:
        """Times an unknown number of broadcasts may have been missed."""
        return self._incoming.unknown_gaps

    @property
    def connected(self) -> bool:
        """Whether both connections to Redis are up (publishing and subscribed)."""
        return self._publisher is not None and self._subscriber is not None

    def counters(self) -> dict[str, int]:
        """Every counter by name, for metrics and logs."""
        return {
            name: getattr(self, name)
            for name in (
                "published", "received", "publish_dropped", "publish_unconfirmed", "lost", "gaps",
                "unknown_gaps", "direct_undelivered", "rejected", "disconnects", "reconnects",
            )
        }

    def is_subscribed(self, topic: str) -> bool:
        """Whether this node is subscribed to ``topic``'s channel now (Redis confirmed it on this connection)."""
        return self.channel_for_topic(topic) in self._live

    def list(self) -> list[str]:
        """The other nodes on this Redis that said hello and not goodbye, sorted."""
        return sorted(self.nodes)

    def channel_for_topic(self, topic: str) -> bytes:
        """The Redis channel of ``topic``."""
        return self._topic_prefix + topic.encode()

    def channel_for_node(self, node: str) -> bytes:
        """The Redis channel of the node named ``node``."""
        return self._node_prefix + node.encode()

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        """Connect to Redis (two connections) and keep them up until stopped."""
        super().startService()
        self._stopping = False
        endpoint = self._endpoint()
        self._connectors = [
            Reconnector(self.reactor, endpoint, lambda kind=kind: self._build(kind), self._cannot_connect, self.backoff)
            for kind in (CommandProtocol, SubscriberProtocol)
        ]
        for connector in self._connectors:
            connector.start()
        self._loops = [LoopingCall(self._keepalive), LoopingCall(self._outgoing.sweep)]
        for loop, interval in zip(self._loops, (self.ping_interval, self.sequence_idle)):
            loop.clock = self.reactor
            loop.start(interval, now=False)
        self.log.info(
            "Node {name} connecting to Redis at {address} (channel prefix {prefix!r})",
            name=self.name, address=self.config.address(), prefix=self.config.prefix,
        )

    def stopService(self) -> defer.Deferred[Any]:
        """Say goodbye, then close both connections (what was written is sent first)."""
        super().stopService()
        self._stopping = True
        if self._publisher is not None:
            self._publish_control(self.nodes_channel, "bye")
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self.interest.stop()
        self._release_joins()
        pending, self._pending = self._pending, None
        for _, _, node, topic in pending or ():
            # Never connected: what waited is dropped, and said so.
            self.publish_dropped += 1
            self._note("dropped", node or "", topic, 1)
        if self._log_call is not None and self._log_call.active():
            self._log_call.cancel()
        self._flush_log()
        connectors, self._connectors = self._connectors, []
        return defer.gatherResults([c.stop() for c in connectors], consumeErrors=True)

    def _endpoint(self) -> Any:
        config = self.config
        endpoint: Any = HostnameEndpoint(self.reactor, config.host, config.port, timeout=5)
        if config.tls:
            trust: Any = None
            if config.ca is not None:
                with open(config.ca, "rb") as f:
                    trust = ssl.Certificate.loadPEM(f.read())
            client = None
            if config.cert is not None and config.key is not None:
                with open(config.cert, "rb") as f:
                    cert = f.read()
                with open(config.key, "rb") as f:
                    key = f.read()
                client = ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)
            options = ssl.optionsForClientTLS(config.host, trustRoot=trust, clientCertificate=client)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def _build(self, kind: type) -> Any:
        protocol = kind(self.reactor)
        protocol.adapter = self
        return protocol

    # -- the PubSub adapter ------------------------------------------------------

    def broadcast(self, message: Broadcast) -> None:
        """Publish ``message`` once, on its topic's channel."""
        self._publish(self._topic_prefix + message.topic.encode(), message, None)

    def direct_broadcast(self, node: str, message: Broadcast) -> bool:
        """
        Publish ``message`` on ``node``'s channel.  ``False`` when it could
        not be published (Redis not connected); a node that turns out to be
        absent is logged and counted (:attr:`direct_undelivered`) once Redis
        answers.
        """
        return self._publish(self._node_prefix + node.encode(), message, node)

    def topic_subscribed(self, topic: str) -> None:
        """PubSub: ``topic`` has its first local subscriber."""
        self.interest.gained(topic)

    def topic_unsubscribed(self, topic: str) -> None:
        """PubSub: ``topic`` has lost its last local subscriber."""
        self.interest.lost(topic)

    def prepare_interest(self, topic: str) -> defer.Deferred[None] | None:
        """
        PubSub (:meth:`~twisted_phoenix.pubsub.PubSub.prepare`): a join is
        about to subscribe to ``topic``.  Unless Redis has confirmed this
        node's subscription to the topic's channel already, subscribe now and
        return a Deferred that fires once Redis confirms it, or after
        :attr:`prepare_timeout` seconds at most (a warning then).  ``None``
        when subscribed already, or while the subscription connection is
        down (nothing is received then anyway; the reconnection subscribes
        again).
        """
        channel = self._topic_prefix + topic.encode()
        if channel in self._live and channel not in self._subscribing and channel in self._channels:
            return None
        if self._subscriber is None:
            return None
        self.interest.prepare(topic, self.interest.linger + 2 * self.prepare_timeout)
        confirmation = self._confirmations.get(channel)
        if confirmation is None:
            if channel not in self._subscribing:
                return None
            confirmation = self._confirmations[channel] = Confirmation(
                self.reactor, self.prepare_timeout, lambda: self._slow(channel)
            )
        elif confirmation.done:
            return None  # it timed out: later joins do not wait for it again
        return confirmation.wait()

    def _slow(self, channel: bytes) -> None:
        confirmation = self._confirmations.get(channel)
        self._rlog.warn(
            "Redis at {address} did not confirm the subscription to {channel} within {timeout:g} s: "
            "{joins} join(s) went on without it (a broadcast published meanwhile may miss them)",
            address=self.config.address(), channel=channel.decode("utf-8", "replace")[:200],
            timeout=self.prepare_timeout, joins=0 if confirmation is None else confirmation.waiting,
        )

    def _release_joins(self) -> None:
        """No join waits for a confirmation any more (the connection is gone, or the adapter stops)."""
        self._subscribing.clear()
        confirmations, self._confirmations = self._confirmations, {}
        for confirmation in confirmations.values():
            confirmation.fire()

    # -- publishing ------------------------------------------------------------------

    def _publish(self, channel: bytes, message: Broadcast, node: str | None) -> bool:
        run, seq = self._outgoing.next(channel)
        payload = message.payload
        binary = isinstance(payload, bytes)
        body = payload if binary else json_dumps(payload)
        head = orjson.dumps([VERSION, self.name, self.incarnation, run, seq, message.topic, message.event, binary])
        data = head + b"\n" + body
        publisher = self._publisher
        if publisher is None:
            if self._pending is not None and len(self._pending) < self.max_pending:
                self._pending.append((channel, data, node, message.topic))
                return True
            # The sequence number is used all the same: receivers see the gap.
            self.publish_dropped += 1
            self._note("dropped", node or "", message.topic, 1)
            return False
        self._send_publish(publisher, channel, data, node, message.topic)
        return True

    def _send_publish(self, publisher: CommandProtocol, channel: bytes, data: bytes, node: str | None, topic: str) -> None:
        self.published += 1
        if node is None:
            publisher.command(self._published, b"PUBLISH", channel, data)
        else:
            publisher.command(lambda reply: self._direct_published(reply, node, topic), b"PUBLISH", channel, data)

    def _published(self, reply: Any) -> None:
        if isinstance(reply, Exception):
            self.log.error("Redis refused a PUBLISH: {error}", error=str(reply))

    def _direct_published(self, reply: Any, node: str, topic: str) -> None:
        if isinstance(reply, Exception):
            self._published(reply)
        elif reply == 0:
            self.direct_undelivered += 1
            self.log.warn(
                "Direct broadcast to {node} on {topic} reached no one: that node is not connected to Redis",
                node=node, topic=topic,
            )

    def _publish_control(self, channel: bytes, event: str) -> None:
        publisher = self._publisher
        if publisher is not None:
            head = orjson.dumps([VERSION, self.name, self.incarnation, 0, 0, None, event, False])
            publisher.command(self._published, b"PUBLISH", channel, head + b"\n")

    def _maybe_hello(self) -> None:
        if self._publisher is not None and self._base_subscribed and not self._hello_sent and not self._stopping:
            self._hello_sent = True
            self._publish_control(self.nodes_channel, "hello")

    # -- subscriptions ------------------------------------------------------------------

    def _want(self, topic: str) -> None:
        channel = self.channel_for_topic(topic)
        self._channels[channel] = None
        if self._subscriber is not None:
            self._send_subscribe(self._subscriber, [channel])

    def _send_subscribe(self, protocol: SubscriberProtocol, channels: list[bytes]) -> None:
        protocol.send(b"SUBSCRIBE", *channels)
        subscribing = self._subscribing
        for channel in channels:
            subscribing[channel] = subscribing.get(channel, 0) + 1

    def _unwant(self, topic: str) -> None:
        channel = self.channel_for_topic(topic)
        self._channels.pop(channel, None)
        if self._subscriber is not None:
            self._subscriber.send(b"UNSUBSCRIBE", channel)  # forgotten once Redis confirms
        else:
            self._incoming.unsubscribed(channel)

    def _subscribed(self, channel: bytes) -> None:
        self._live.add(channel)
        self._incoming.subscribed(channel)
        count = self._subscribing.get(channel)
        if count is not None:
            if count > 1:
                self._subscribing[channel] = count - 1
            else:
                del self._subscribing[channel]
                confirmation = self._confirmations.pop(channel, None)
                if confirmation is not None:
                    confirmation.fire()
        if channel == self.nodes_channel and not self._base_subscribed:
            self._base_subscribed = True
            self._maybe_hello()

    def _unsubscribed(self, channel: bytes) -> None:
        # Nothing of it is delivered from now until a new subscription is
        # confirmed: a gap there is no loss.
        self._live.discard(channel)
        self._incoming.unsubscribed(channel)

    # -- receiving ---------------------------------------------------------------------------

    def _message(self, channel: bytes, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        try:
            version, node, incarnation, run, seq, topic, event, binary = orjson.loads(head)
        except (ValueError, TypeError):
            return self._reject(channel, "not a twisted_phoenix message")
        if (
            version != VERSION or type(node) is not str or type(incarnation) is not str
            or type(run) is not int or type(seq) is not int or type(event) is not str
            or not (topic is None or type(topic) is str)
        ):
            return self._reject(channel, f"a bad header (version {version!r})")
        if node == self.name:
            if incarnation == self.incarnation:
                return None  # our own, delivered locally when sent
            if incarnation not in self._clashes:
                self._clashes.add(incarnation)
                self.log.error(
                    "Another process uses this node's name {name} on Redis: give each node its own --name "
                    "(direct broadcasts and presence go wrong otherwise)", name=node,
                )
        if topic is None:
            return self._control(node, incarnation, event)
        if self.nodes.get(node) != incarnation:
            self._node_up(node, incarnation, first=True)
        if seq:
            gap = self._incoming.received(channel, node, incarnation, run, seq)
            if gap.missed:
                self._note("lost", node, topic, gap.missed)
            if gap.unknown:
                self._note("unknown", node, topic, 1)
        payload: Any
        if binary is True:
            payload = body
        else:
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError:
                payload = None
            if not isinstance(payload, dict):
                return self._reject(channel, "a payload that is not a JSON object")
        self.received += 1
        try:
            self.pubsub.dispatch(Broadcast(topic, event, payload))
        except Exception:
            self.log.failure("Dispatching a broadcast from {node} on {topic} failed", node=node, topic=topic)
        return None

    def _control(self, node: str, incarnation: str, event: str) -> None:
        if node == self.name:
            return
        if event == "hello":
            self._node_up(node, incarnation)
            self._publish_control(self.channel_for_node(node), "hello_ack")
        elif event == "hello_ack":
            self._node_up(node, incarnation)
        elif event == "bye":
            if self.nodes.get(node) == incarnation:
                del self.nodes[node]
                self.log.info("Node {node} left (Redis)", node=node)

    def _node_up(self, node: str, incarnation: str, first: bool = False) -> None:
        known = self.nodes.get(node)
        self.nodes[node] = incarnation
        if known != incarnation:
            self.log.info("Node {node} is up (Redis)", node=node)
        elif first:
            return
        for callback in list(self.node_up_callbacks):
            try:
                callback(node)
            except Exception:
                self.log.failure("A node-up callback failed")

    def _reject(self, channel: bytes, why: str) -> None:
        self.rejected += 1
        self.log.error(
            "Ignored a message on Redis channel {channel}: {why}",
            channel=channel.decode("utf-8", "replace"), why=why,
        )

    # -- connections ------------------------------------------------------------------------

    def _cannot_connect(self, failure: Any) -> None:
        """A connection attempt failed (it is tried again, with backoff)."""
        if self._stopping or failure.check(defer.CancelledError):
            return
        first = not self._failing
        self._failing = True
        self.log.emit(
            LogLevel.warn if first else LogLevel.debug,
            "Cannot connect to Redis at {address}: {error}; retrying{quietly}",
            address=self.config.address(), error=failure.getErrorMessage(),
            quietly=" (further failures are logged at debug level)" if first else "",
        )

    def _connection_made(self, protocol: Any) -> None:
        self._connections.add(protocol)
        if self._stopping:
            protocol.transport.loseConnection()
            return
        # The first reply proves the connection usable (TLS handshake done,
        # AUTH accepted): only then is it used, and the backoff reset.
        config = self.config
        if config.password is None:
            first: list[Any] = [b"PING"]
        elif config.username is None:
            first = [b"AUTH", config.password.encode()]
        else:
            first = [b"AUTH", config.username.encode(), config.password.encode()]
        if isinstance(protocol, CommandProtocol):
            protocol.command(lambda reply: self._authenticated(protocol, reply), *first)
        else:
            protocol.handshaking = True
            protocol.send(*first)

    def _subscriber_reply(self, protocol: SubscriberProtocol, reply: Any) -> None:
        if protocol.handshaking:
            protocol.handshaking = False
            self._authenticated(protocol, reply)
        elif isinstance(reply, Exception):
            self.log.error("Redis refused a subscription: {error}", error=str(reply))

    def _authenticated(self, protocol: Any, reply: Any) -> None:
        if isinstance(reply, Exception):
            if self.config.password is None:
                self.log.error(
                    "Redis at {address} refused our PING: {error} (does it need a password?); retrying",
                    address=self.config.address(), error=str(reply),
                )
            else:
                self.log.error(
                    "Redis at {address} refused our AUTH: {error} (check the URL's user and password); retrying",
                    address=self.config.address(), error=str(reply),
                )
            protocol.transport.loseConnection()
            return
        self._ready(protocol)

    def _ready(self, protocol: Any) -> None:
        self._failing = False
        protocol.ready = True
        if protocol.factory is not None:
            protocol.factory.ready(protocol)
        kind = type(protocol)
        again = kind in self._ever_ready
        self._ever_ready.add(kind)
        if again:
            self.reconnects += 1
        if isinstance(protocol, CommandProtocol):
            self._publisher = protocol
            pending, self._pending = self._pending, None
            for channel, data, node, topic in pending or ():
                self._send_publish(protocol, channel, data, node, topic)
        else:
            self._subscriber = protocol
            self._base_subscribed = False
            channels = list(self._channels)
            for i in range(0, len(channels), SUBSCRIBE_BATCH):
                self._send_subscribe(protocol, channels[i : i + SUBSCRIBE_BATCH])
        self._hello_sent = False
        what = "publishing" if isinstance(protocol, CommandProtocol) else "subscribed"
        if again:
            self.log.warn(
                "Node {name} reconnected to Redis at {address} ({what}){topics}",
                name=self.name, address=self.config.address(), what=what,
                topics=f": resubscribing {len(self._channels) - 2} topic(s)" if what == "subscribed" else "",
            )
        else:
            self.log.info(
                "Node {name} connected to Redis at {address} ({what})",
                name=self.name, address=self.config.address(), what=what,
            )
        self._maybe_hello()

    def _connection_lost(self, protocol: Any, reason: Any) -> None:
        self._connections.discard(protocol)
        if not protocol.ready:
            # Lost before it was usable (TLS refused, AUTH refused, Redis
            # closed it): a failed attempt, retried with backoff.
            error = ConnectionLost(reason.getErrorMessage() if reason is not None else "closed")
            self._cannot_connect(Failure(error))
            return
        was_ready = protocol is self._publisher or protocol is self._subscriber
        unconfirmed = 0
        if protocol is self._publisher:
            self._publisher = None
            unconfirmed = protocol.waiting
            self.publish_unconfirmed += unconfirmed
        elif protocol is self._subscriber:
            self._subscriber = None
            self._base_subscribed = False
            self._live.clear()
            self._incoming.connection_lost()
            self._release_joins()
        if was_ready:
            self.disconnects += 1
        if was_ready and not self._stopping:
            self.log.warn(
                "Lost the connection to Redis at {address} ({what}): {reason}; reconnecting, "
                "broadcasts are dropped and counted meanwhile{unconfirmed}",
                address=self.config.address(),
                what="publishing" if isinstance(protocol, CommandProtocol) else "subscribed",
                reason=reason.getErrorMessage() if reason is not None else "closed",
                unconfirmed=(
                    f" ({unconfirmed} broadcast(s) sent but not acknowledged: publish_unconfirmed="
                    f"{self.publish_unconfirmed})" if unconfirmed else ""
                ),
            )

    def _keepalive(self) -> None:
        now = self.reactor.seconds()
        for protocol in list(self._connections):
            silent = now - protocol.last_received
            if silent >= 2 * self.ping_interval:
                self.log.warn(
                    "Redis at {address} has not answered for {silent:.1f} s: reconnecting",
                    address=self.config.address(), silent=silent,
                )
                protocol.transport.abortConnection()
            elif silent >= self.ping_interval:
                if isinstance(protocol, CommandProtocol):
                    protocol.command(None, b"PING")
                else:
                    protocol.send(b"PING")

    # -- loss logs ---------------------------------------------------------------------------

    def _note(self, kind: str, node: str, topic: str, count: int) -> None:
        entry = self._unlogged.get((kind, node))
        if entry is None:
            entry = self._unlogged[(kind, node)] = [0, {}]
        entry[0] += count
        topics = entry[1]
        if topic in topics or len(topics) < LOG_TOPICS:
            topics[topic] = topics.get(topic, 0) + count
        if self._log_call is None or not self._log_call.active():
            self._log_call = self.reactor.callLater(self.log_interval, self._flush_log)

    def _flush_log(self) -> None:
        unlogged, self._unlogged = self._unlogged, {}
        for (kind, node), (count, topics) in unlogged.items():
            others = count - sum(topics.values())
            where = ", ".join(f"{topic} {n}" for topic, n in topics.items())
            if others:
                where += f", other topics {others}"
            if kind == "dropped":
                self.log.warn(
                    "Redis not connected: {count} broadcast(s) not published (by topic: {topics}); "
                    "publish_dropped={total}",
                    count=count, topics=where, total=self.publish_dropped,
                )
            elif kind == "lost":
                self.log.warn(
                    "Lost {count} broadcast(s) from node {node} (sequence gap; by topic: {topics}); lost={total}",
                    count=count, node=node, topics=where, total=self.lost,
                )
            else:
                self.log.warn(
                    "Broadcasts from node {node} may have been lost while the connection to Redis was down, "
                    "in a number nobody can tell (its sequence restarted; by topic: {topics}); unknown_gaps={total}",
                    node=node, topics=where, total=self.unknown_gaps,
                )
