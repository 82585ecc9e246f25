# -*- test-case-name: tests.test_metrics -*-
"""
Counters of what an endpoint does, and their Prometheus exposition.

Every endpoint has a :class:`Metrics` (``endpoint.metrics``).  Counting
costs nothing measurable: a counter is a plain integer attribute, added to
where the thing happens (one ``+= 1`` per message; on the broadcast path
one addition per broadcast, however many subscribers it reaches).  What
can be read from live state when scraped (open connections, presence
entries, cluster nodes) is, and is not counted at all.

:meth:`Metrics.families` reads everything as plain data;
:meth:`Metrics.resource` serves it at ``/metrics`` in Prometheus's text
format (it needs ``prometheus-client``: ``pip install
'twisted_phoenix[metrics]'``).  ``twistd phoenix --metrics
tcp:9100:interface=127.0.0.1`` serves that on a port of its own, never on
the clients' port.  Every metric is listed in the documentation's
*Metrics and telemetry* page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource

if TYPE_CHECKING:
    from ._session import Session
    from .endpoint import Endpoint

__all__ = ["DROP_REASONS", "Family", "Metrics", "MetricsPage", "REFUSAL_STATUSES"]

#: Every way the server closes a client (``phoenix_clients_dropped_total``'s
#: ``reason``): it fell ``max_lag`` behind (``slow``), sent over its rate
#: limit (``rate``), queued too much behind a pending join (``backlog``),
#: was idle for the socket's ``timeout`` (``idle``), sent a frame the
#: serializer cannot decode (``malformed``), a frame whose handling failed
#: (``error``), broke the WebSocket protocol (``protocol``), sent a frame
#: over ``max_frame_size`` (``too_large``), or was sent ``disconnect``
#: through its socket id (``disconnect``).
DROP_REASONS = (
    "slow", "rate", "backlog", "idle", "malformed", "error", "protocol", "too_large", "disconnect",
)

#: The statuses of refused connections reported even before one happens.
REFUSAL_STATUSES = (400, 403, 408, 431, 503)

_log = Logger()


class Family(NamedTuple):
    """
    One metric, read at one moment.

    :ivar name: its name (a counter's ends with ``_total``).
    :ivar type: ``"counter"`` or ``"gauge"``.
    :ivar help: what it counts.
    :ivar labels: its label names.
    :ivar samples: ``(label values, value)`` pairs.
    """

    name: str
    type: str
    help: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]]


class Metrics:
    """
    The counters of one endpoint.

    The message counters are plain attributes that the session layer adds
    to; the broadcast counters live on the endpoint's
    :class:`~twisted_phoenix.pubsub.PubSub` (``broadcasts``, ``deliveries``,
    ``fastlane_deliveries``), the cluster's on its
    :class:`~twisted_phoenix.cluster.Node` (``broadcasts_dropped``) and the
    Redis adapter's in its ``counters()``; all are read when scraped.

    :param endpoint: the endpoint whose state the gauges read.
    """

    __slots__ = (
        "endpoint",
        "joins_received",
        "leaves_received",
        "events_received",
        "heartbeats_received",
        "replies_sent",
        "pushes_sent",
        "dropped",
        "refused",
        "connects",
        "channels",
        "joins",
        "crashes",
        "sources",
    )

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        #: Messages received from clients, by kind.
        self.joins_received = 0
        self.leaves_received = 0
        self.events_received = 0
        self.heartbeats_received = 0
        #: Frames written to clients: replies, and pushes (``push``,
        #: ``phx_close``, ``phx_error``, intercepted broadcasts).
        self.replies_sent = 0
        self.pushes_sent = 0
        #: Clients the server closed, by reason (see :data:`DROP_REASONS`).
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: Connections and requests refused, by HTTP status.
        self.refused: dict[int, int] = dict.fromkeys(REFUSAL_STATUSES, 0)
        #: Connections accepted, by (socket class name, transport).
        self.connects: dict[tuple[str, str], int] = {}
        #: Channels joined now, by channel class (a gauge kept as they
        #: join and end: reading it from every connection would make a
        #: scrape's cost grow with the connections).
        self.channels: dict[type, int] = {}
        #: Joins answered, by (channel class name, ``ok`` or ``error``).
        self.joins: dict[tuple[str, str], int] = {}
        #: Channels crashed (a callback raised, or an abnormal stop), by class name.
        self.crashes: dict[str, int] = {}
        #: More objects to read cluster counters from (see :meth:`add_source`).
        self.sources: list[Any] = []

    # -- counting (the rare events; the frequent ones are inline) ----------------------

    def drop(self, reason: str, session: Session | None) -> None:
        """
        The server closes a client for ``reason`` (one of
        :data:`DROP_REASONS`): count it, and emit the ``drop`` event.
        """
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        telemetry = self.endpoint.telemetry
        if telemetry.observers and session is not None:
            telemetry.emit(
                "drop", reason=reason, **session.describe(),
            )

    def refuse(self, status: int) -> None:
        """A connection or handshake was refused with HTTP ``status``."""
        self.refused[status] = self.refused.get(status, 0) + 1

    def add_source(self, source: Any) -> None:
        """
        Read a cluster's counters from ``source`` too: a
        :class:`~twisted_phoenix.cluster.Node` or a
        :class:`~twisted_phoenix.adapters.redis.RedisAdapter` that is not
        (or no longer) the PubSub's adapter.  The PubSub's adapter is
        always read.
        """
        if source not in self.sources:
            self.sources.append(source)

    # -- reading -------------------------------------------------------------------------

    def families(self) -> list[Family]:
        """Every metric, read now (see the documentation for each one's meaning)."""
        endpoint = self.endpoint
        pubsub = endpoint.pubsub
        out = [
            Family(
                "phoenix_connections", "gauge", "Client connections open now.", ("socket", "transport"),
                self._connections(),
            ),
            Family(
                "phoenix_connects_total", "counter", "Client connections accepted (handshakes that succeeded).",
                ("socket", "transport"), [(key, n) for key, n in sorted(self.connects.items())],
            ),
            Family(
                "phoenix_channels", "gauge", "Channels joined now.", ("channel",),
                _by_name(self.channels),
            ),
            Family(
                "phoenix_channel_joins_total", "counter", "Joins answered, by channel and result (ok, error).",
                ("channel", "result"), [(key, n) for key, n in sorted(self.joins.items())],
            ),
            Family(
                "phoenix_channel_crashes_total", "counter",
                "Channels that crashed (a callback raised, or stopped with an abnormal reason).",
                ("channel",), [((name,), n) for name, n in sorted(self.crashes.items())],
            ),
            Family(
                "phoenix_messages_received_total", "counter", "Messages received from clients.", ("kind",),
                [
                    (("join",), self.joins_received),
                    (("leave",), self.leaves_received),
                    (("event",), self.events_received),
                    (("heartbeat",), self.heartbeats_received),
                ],
            ),
            Family(
                "phoenix_messages_sent_total", "counter", "Frames written to clients.", ("kind",),
                [
                    (("reply",), self.replies_sent),
                    (("push",), self.pushes_sent),
                    (("broadcast",), pubsub.fastlane_deliveries),
                ],
            ),
            Family(
                "phoenix_broadcasts_total", "counter",
                "Broadcasts dispatched on this node (its own and those from other nodes).", (),
                [((), pubsub.broadcasts)],
            ),
            Family(
                "phoenix_deliveries_total", "counter", "Subscribers on this node that broadcasts reached.", (),
                [((), pubsub.deliveries)],
            ),
            Family(
                "phoenix_clients_dropped_total", "counter", "Clients the server closed, by reason.", ("reason",),
                [((reason,), n) for reason, n in self.dropped.items()],
            ),
            Family(
                "phoenix_handshakes_refused_total", "counter",
                "Connections and handshakes refused, by HTTP status.", ("status",),
                [((str(status),), n) for status, n in sorted(self.refused.items())],
            ),
            Family(
                "phoenix_presence_entries", "gauge",
                "Presence entries listed on this node, tracked here (local) or on other nodes (remote).",
                ("origin",), self._presence(),
            ),
        ]
        out.extend(self._cluster())
        return out

    def _connections(self) -> list[tuple[tuple[str, ...], float]]:
        counts: dict[tuple[str, str], int] = {}
        endpoint = self.endpoint
        for factory in endpoint.websocket_factories().values():
            key = (factory.socket_class.__name__, "websocket")
            counts[key] = counts.get(key, 0) + len(factory.idle.connections)
        for resource in endpoint.longpoll_resources().values():
            key = (resource.socket_class.__name__, "longpoll")
            counts[key] = counts.get(key, 0) + len(resource.sessions)
        return sorted(counts.items())

    def _presence(self) -> list[tuple[tuple[str, ...], float]]:
        state = self.endpoint.presence.tracker.state
        down, own = state.down, state.replica
        local = remote = 0
        for replica, _ in state.values:
            if replica == own:
                local += 1
            elif replica not in down:
                remote += 1
        return [(("local",), local), (("remote",), remote)]

    def _cluster(self) -> Iterable[Family]:
        adapter = self.endpoint.pubsub.adapter
        sources = [adapter] if adapter is not None else []
        sources += [s for s in self.sources if s is not adapter]
        nodes = len(adapter.list()) if adapter is not None and hasattr(adapter, "list") else 0
        yield Family(
            "phoenix_cluster_nodes", "gauge", "Other nodes this node exchanges broadcasts with now.", (),
            [((), nodes)],
        )
        dropped = sum(getattr(s, "broadcasts_dropped", 0) for s in sources)
        yield Family(
            "phoenix_cluster_broadcasts_dropped_total", "counter",
            "Broadcasts to other nodes dropped over cluster links (congested, or the node not connected).", (),
            [((), dropped)],
        )
        skipped = sum(getattr(s, "skipped", 0) for s in sources)
        yield Family(
            "phoenix_cluster_broadcasts_skipped_total", "counter",
            "Broadcast sends to other nodes saved by interest routing (the node had no subscriber).", (),
            [((), skipped)],
        )
        for source in sources:
            counters = getattr(source, "counters", None)
            if counters is None:
                continue
            yield Family(
                "phoenix_redis_connected", "gauge", "1 while both connections to Redis are up.", (),
                [((), int(bool(source.connected)))],
            )
            for name, value in counters().items():
                yield Family(
                    f"phoenix_redis_{name}_total", "counter", f"The Redis adapter's {name} counter.", (),
                    [((), value)],
                )
            break  # one Redis adapter per node

    # -- serving -------------------------------------------------------------------------

    def registry(self) -> Any:
        """
        A ``prometheus_client`` registry with this endpoint's metrics (read
        when scraped) and the process's (CPU, memory, open files, GC).

        :raises ImportError: without ``prometheus-client``.
        """
        from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        return registry

    def resource(self) -> IResource:
        """
        A :mod:`twisted.web` resource serving the metrics at ``/metrics``
        (Prometheus text, or OpenMetrics when the scraper asks for it), to
        serve on a port of its own.

        :raises ImportError: without ``prometheus-client``.
        """
        root = Resource()
        root.putChild(b"metrics", MetricsPage(self.registry()))
        return root


def _by_name(counts: dict[type, int]) -> list[tuple[tuple[str, ...], float]]:
    """Counts by class, summed by class name."""
    names: dict[str, int] = {}
    for cls, n in counts.items():
        names[cls.__name__] = names.get(cls.__name__, 0) + n
    return [((name,), n) for name, n in sorted(names.items())]


class _Collector:
    """A ``prometheus_client`` collector reading :meth:`Metrics.families` at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for family in self.metrics.families():
            kind = CounterMetricFamily if family.type == "counter" else GaugeMetricFamily
            name = family.name[: -len("_total")] if family.type == "counter" else family.name
            metric = kind(name, family.help, labels=family.labels)
            for labels, value in family.samples:
                metric.add_metric(list(labels), value)
            yield metric


class MetricsPage(Resource):
    """``/metrics``: ``registry`` in the exposition format the scraper asks for."""

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        try:
            body = encoder(self.registry)
        except Exception:
            _log.failure("Reading the metrics failed")
            request.setResponseCode(500)
            return b"reading the metrics failed\n"
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return body
