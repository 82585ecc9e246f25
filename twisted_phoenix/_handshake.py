# -*- test-case-name: tests.test_websocket,tests.test_longpoll -*-
"""
Phoenix's connection handshake, the same for every transport.

A transport (WebSocket, long-poll) turns its request into a
:class:`HandshakeRequest` and asks :func:`check_origin`, then
:func:`connect`: the origin check, the params (query and path), the
serializer chosen by ``vsn``, the user socket's ``connect`` and ``id``.  The
answer is a :class:`Connected` socket, or a :class:`Refusal` with the HTTP
status the transport answers with (403 unless ``connect`` raised
:class:`~twisted_phoenix.socket.ConnectRefused` with another).

What is logged follows section 8.3 of the protocol notes: a refused origin
at error level, a bad ``vsn`` or ``id()`` as a warning, a refused
``connect`` at info level with sensitive params filtered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, NamedTuple
from urllib.parse import parse_qsl, unquote

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._log import limited_log, truncate, truncate_repr
from .origin import origin_allowed
from .serializers import Serializer, VersionError, select_serializer
from .socket import ConnectRefused, Socket

if TYPE_CHECKING:
    from .endpoint import Endpoint

__all__ = [
    "Connected",
    "HandshakeRequest",
    "Refusal",
    "check_origin",
    "connect_info",
    "connect_now",
    "filter_params",
    "parse_params",
    "path_params",
]

log = Logger()


class Refusal(Exception):
    """A refused handshake: the transport answers with ``status``."""

    def __init__(self, status: int = 403, reason: str = "Forbidden") -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class Connected(NamedTuple):
    """An accepted handshake: the connected user socket and its serializer."""

    socket: Socket
    serializer: Serializer
    params: dict[str, Any]


class HandshakeRequest(NamedTuple):
    """
    The parts of a request the handshake reads.

    :ivar path: the request path (decoded).
    :ivar query: the raw query string.
    :ivar headers: header name (lower case) → value.
    :ivar peer: ``(address, port)`` of the client.
    :ivar secure: whether the request came over TLS.
    """

    path: str
    query: str
    headers: Mapping[str, str]
    peer: tuple[Any, Any]
    secure: bool


def parse_params(query: str) -> dict[str, Any]:
    """
    Parse a query string into Phoenix's params: ``a[b]=c`` nests,
    ``a[]=x`` builds a list, a repeated plain key keeps its last value.
    """
    return params_from_pairs(parse_qsl(query, keep_blank_values=True))


def params_from_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """:func:`parse_params` of already split ``(key, value)`` pairs."""
    params: dict[str, Any] = {}
    for key, value in pairs:
        head, sep, rest = key.partition("[")
        if not sep or not rest.endswith("]") or not head:
            params[key] = value
            continue
        path = [head] + rest[:-1].split("][")
        target: Any = params
        for name, child in zip(path, path[1:]):
            nxt = target.get(name) if isinstance(target, dict) else None
            if child == "":
                if not isinstance(nxt, list):
                    nxt = target[name] = []
            elif not isinstance(nxt, dict):
                nxt = target[name] = {}
            target = nxt
        last = path[-1]
        if isinstance(target, list):
            target.append(value)
        elif isinstance(target, dict):
            target[last] = value
    return params


def path_params(mount: str, path: str) -> dict[str, str]:
    """The values of ``mount``'s ``:name`` segments in the request ``path``."""
    names = [s for s in mount.split("/") if s]
    values = [unquote(s) for s in path.split("/") if s]
    return {n[1:]: v for n, v in zip(names, values) if n.startswith(":") and len(n) > 1}


_SENSITIVE = ("password", "secret", "token")


def filter_params(params: dict[str, Any]) -> dict[str, Any]:
    """Hide parameters whose name looks sensitive, as Phoenix's logger does."""
    return {
        k: (
            "[FILTERED]"
            if any(s in k.lower() for s in _SENSITIVE)
            else (filter_params(v) if isinstance(v, dict) else v)
        )
        for k, v in params.items()
    }


def connect_info(request: HandshakeRequest) -> dict[str, Any]:
    """
    Phoenix's ``connect_info`` for ``request``: ``peer_data``, ``uri``,
    ``x_headers``, ``trace_context_headers`` and ``user_agent``.  A
    transport adds its own keys (``sec_websocket_headers``, ``auth_token``).
    """
    headers = request.headers
    secure = request.secure
    host, _, port = headers.get("host", "").rpartition(":")
    if not host or not port.isdigit():
        host, port = headers.get("host", ""), ("443" if secure else "80")
    return {
        "peer_data": {"address": request.peer[0], "port": request.peer[1]},
        "uri": {
            "scheme": "https" if secure else "http",
            "host": host,
            "port": int(port),
            "path": request.path,
            "query": request.query,
        },
        "x_headers": [(k, v) for k, v in headers.items() if k.startswith("x-")],
        "trace_context_headers": [(k, headers[k]) for k in ("traceparent", "tracestate") if k in headers],
        "user_agent": headers.get("user-agent"),
    }


def check_origin(
    endpoint: Endpoint, socket_class: type[Socket], origin: str | None, transport: str | None = None
) -> None:
    """
    Phoenix's ``check_origin`` (the socket's setting, else the endpoint's).

    :param transport: the transport's name, for the ``connect_refused`` event.
    :raises Refusal: 403, logged at error level, when ``origin`` may not connect.
    """
    setting = socket_class.check_origin
    if setting is None:
        setting = endpoint.check_origin
    if not origin_allowed(origin, setting, endpoint.host, dev=endpoint.env == "dev"):
        _limited(endpoint).error(
            "Could not check origin for Phoenix.Socket transport. Origin of the request: "
            "{origin}. This happens when you are attempting a socket connection to a "
            "different host than the one configured in your endpoint (check_origin).",
            origin=truncate(origin),
        )
        refused_event(endpoint, socket_class, transport, 403, "origin")
        raise Refusal(403, "Forbidden")


def connect_now(
    endpoint: Endpoint,
    socket_class: type[Socket],
    *,
    params: dict[str, Any],
    info: dict[str, Any],
    serializers: Any,
    transport: str,
) -> Connected | Deferred[Connected]:
    """
    Choose the serializer by ``params["vsn"]``, then run the user socket's
    ``connect(params, info)`` and ``id()``.

    Without a Deferred when the socket's ``connect`` answers at once (the
    usual case, and the handshake's hot path): returns :class:`Connected`
    or raises :class:`Refusal`; a Deferred only when ``connect`` returned
    one (wrap the call in ``maybeDeferred`` for a Deferred always).

    :param transport: the transport's name for the log (``"websocket"``,
        ``"longpoll"``).
    """
    try:
        serializer = select_serializer(params.get("vsn"), serializers)
    except VersionError as e:
        _limited(endpoint).warn("{error}", error=truncate(str(e)))
        refused_event(endpoint, socket_class, transport, 403, "vsn")
        raise Refusal(403, "Forbidden") from None

    socket = socket_class(endpoint)
    name = socket_class.__name__
    started = endpoint.reactor.seconds()

    def connected(accepted: Any) -> Connected:
        if accepted is not True:
            if accepted is not False:
                _limited(endpoint).error(
                    "{socket}.connect returned {value}; expected True or False",
                    socket=name, value=truncate_repr(accepted),
                )
            else:
                _limited(endpoint).info(
                    "REFUSED CONNECTION TO {socket} Transport: {transport} Parameters: {params}",
                    socket=name, transport=transport, params=truncate_repr(filter_params(params)),
                )
            refused_event(endpoint, socket_class, transport, 403, "connect")
            raise Refusal(403, "Forbidden")
        socket_id = socket.id()
        if socket_id is not None and not isinstance(socket_id, str):
            _limited(endpoint).warn("{socket}.id() must return a str or None", socket=name)
            refused_event(endpoint, socket_class, transport, 403, "id")
            raise Refusal(403, "Forbidden")
        log.info(
            "CONNECTED TO {socket} Transport: {transport} Serializer: {serializer} Parameters: {params}",
            socket=name, transport=transport, serializer=type(serializer).__name__,
            params=truncate_repr(filter_params(params)),
        )
        connects = endpoint.metrics.connects
        connects[name, transport] = connects.get((name, transport), 0) + 1
        if endpoint.telemetry.observers:
            endpoint.telemetry.emit(
                "connect", socket=name, transport=transport, serializer=type(serializer).__name__,
                socket_id=socket_id, duration=endpoint.reactor.seconds() - started,
            )
        return Connected(socket, serializer, params)

    def refused(failure: Failure) -> Any:
        if failure.check(Refusal):
            return failure
        if failure.check(ConnectRefused):
            refused_event(endpoint, socket_class, transport, failure.value.status, "connect")
            raise Refusal(failure.value.status, failure.value.reason)
        _limited(endpoint).failure("{socket}.connect failed", failure, socket=name)
        refused_event(endpoint, socket_class, transport, 403, "error")
        raise Refusal(403, "Forbidden")

    try:
        accepted = socket.connect(params, info)
    except (Refusal, ConnectRefused):
        refused(Failure())  # raises the Refusal to answer with
        raise
    except Exception:
        _limited(endpoint).failure("{socket}.connect failed", Failure(), socket=name)
        refused_event(endpoint, socket_class, transport, 403, "error")
        raise Refusal(403, "Forbidden") from None
    if isinstance(accepted, Deferred):
        return accepted.addCallback(connected).addErrback(refused)
    return connected(accepted)


def refused_event(
    endpoint: Endpoint, socket_class: type[Socket], transport: str | None, status: int, reason: str
) -> None:
    """
    Emit ``connect_refused`` (``reason``: ``origin``, ``vsn``, ``connect``,
    ``id``, ``error`` or ``auth_token``); the transport counts the status
    it answers with.
    """
    if endpoint.telemetry.observers:
        endpoint.telemetry.emit(
            "connect_refused", socket=socket_class.__name__, transport=transport, status=status, reason=reason
        )


def _limited(endpoint: Endpoint) -> Any:
    """The endpoint's rate-limited log for refusals: strangers may be thousands."""
    return limited_log(log, endpoint.reactor, endpoint)
