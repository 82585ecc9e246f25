# -*- test-case-name: tests.test_redis_adapter -*-
"""
Where a node finds Redis: ``redis://`` and ``rediss://`` URLs.

::

    redis://[[username]:password@]host[:port][/db][?prefix=NAME&linger=5
                                                   &ping_interval=5&max_pending=1000]
    rediss://[[username]:password@]host[:port][/db][?ssl_ca_certs=CA.pem
                                                    &ssl_certfile=CERT.pem
                                                    &ssl_keyfile=KEY.pem
                                                    &prefix=NAME&...]

``rediss://`` is Redis over TLS.  The server's certificate is checked against
``ssl_ca_certs`` (a PEM file; the system's trusted authorities without it)
and must name ``host``; ``ssl_certfile`` and ``ssl_keyfile`` give this node's
client certificate, for a server that asks for one (``tls-auth-clients``).
The query names are redis-py's.  A password alone (``redis://:secret@host``)
is ``AUTH secret``; a username too is Redis 6's ``AUTH username secret``.

Pub/sub channels are not scoped by database number in Redis: the ``db`` is
accepted for familiarity and ignored.  ``prefix`` (default ``phx``) begins
every channel name this adapter uses; nodes that should see each other's
broadcasts need the same prefix, and different apps on one Redis different
ones.

The adapter's own settings may be given in the query too (see
:class:`~twisted_phoenix.adapters.redis.RedisAdapter`): ``linger`` (seconds
a topic stays subscribed after its last local subscriber left, 5),
``ping_interval`` (seconds of silence before a PING; twice that and the
connection is dropped, 5) and ``max_pending`` (broadcasts kept until the
first connection, 1000).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "RedisConfig", "parse_redis_url"]

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "phx"

_QUERY = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "prefix", "linger", "ping_interval", "max_pending"}


@dataclass(frozen=True)
class RedisConfig:
    """
    A parsed Redis URL.

    :ivar tls: ``rediss://``.
    :ivar ca: PEM file of the authorities that may sign the server's
        certificate (``None``: the system's).
    :ivar cert: PEM file of this node's client certificate (TLS only).
    :ivar key: PEM file of its private key.
    :ivar linger: seconds a topic stays subscribed after its last local subscriber left.
    :ivar ping_interval: seconds of silence after which a connection is pinged.
    :ivar max_pending: broadcasts kept until the first connection.
    """

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    prefix: str = DEFAULT_PREFIX
    linger: float = 5.0
    ping_interval: float = 5.0
    max_pending: int = 1000

    def address(self) -> str:
        """``redis://host:port`` or ``rediss://host:port``, without secrets, for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}"


def parse_redis_url(url: str) -> RedisConfig:
    """
    Parse a ``redis://`` or ``rediss://`` URL (see the module's docstring).

    :raises ValueError: for anything else, saying what is wrong.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a Redis URL ({e}): {_redacted(url)!r}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"a Redis URL starts with redis:// or rediss://, not {_redacted(url)!r}")
    if not parts.hostname:
        raise ValueError(f"a Redis URL needs a host: {_redacted(url)!r}")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"the database of a Redis URL is a number, not {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - _QUERY
    if unknown:
        raise ValueError(f"unknown Redis URL parameter(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_QUERY))})")
    options = {name: values[-1] for name, values in query.items()}
    tls = parts.scheme == "rediss"
    if not tls and any(options.get(name) for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")):
        raise ValueError("ssl_ca_certs, ssl_certfile and ssl_keyfile need a rediss:// (TLS) URL")
    if bool(options.get("ssl_certfile")) != bool(options.get("ssl_keyfile")):
        raise ValueError("a client certificate needs both ssl_certfile and ssl_keyfile")
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if not prefix:
        raise ValueError("the prefix of a Redis URL cannot be empty")
    numbers: dict[str, Any] = {}
    for name, kind, low in (("linger", float, 0.0), ("ping_interval", float, 1e-9), ("max_pending", int, 0)):
        if name in options:
            try:
                value = kind(options[name])
            except ValueError:
                value = None
            if value is None or value != value or value < low or value == float("inf"):
                raise ValueError(f"the Redis URL parameter {name} takes a {'positive' if low else 'non-negative'} number, not {options[name]!r}")
            numbers[name] = value
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        raise ValueError(
            "a Redis URL with a user needs a password too: redis://user:password@host "
            "(or redis://:password@host for a password alone)"
        )
    return RedisConfig(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_PORT,
        db=int(path) if path else 0,
        username=username,
        password=password,
        tls=tls,
        ca=options.get("ssl_ca_certs") or None,
        cert=options.get("ssl_certfile") or None,
        key=options.get("ssl_keyfile") or None,
        prefix=prefix,
        **numbers,
    )


def _redacted(url: str) -> str:
    """``url`` without the password, for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{host}"
