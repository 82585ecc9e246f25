# -*- test-case-name: tests.test_origin -*-
"""
Phoenix's ``check_origin``: which web pages may open a socket.

The check applies only to requests with an ``Origin`` header (browsers always
send one; wscat and Node clients do not).  The setting is the socket's
``check_origin``, else the endpoint's:

``True`` (the default)
    The page's host must be the endpoint's ``host`` (any scheme, any port).
    In the ``dev`` environment, pages from ``localhost``, ``127.0.0.1`` and
    ``[::1]`` on any port are accepted too (:data:`DEV_HOSTS`).
a list
    ``"//example.com"`` (that host, any scheme and port), ``"//*.example.com"``
    (it and its subdomains), ``"https://example.com"`` (that scheme, and its
    default port), ``"//localhost:4000"`` (that port, any scheme).
a function
    Called with the ``Origin`` string (``"null"`` included), returns whether
    it may connect.
``False``
    No check: any page of any site may connect, with the user's cookies.

A page opened from disk (``file://``) or a sandboxed frame sends ``Origin:
null``, which has no host: ``True`` and every list refuse it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Union
from urllib.parse import urlsplit

__all__ = ["DEV_HOSTS", "OriginSetting", "origin_allowed"]

#: ``False`` (no check), ``True`` (the origin's host must be the endpoint's
#: host), a list of ``"//host"``, ``"//*.host"`` or ``"scheme://host:port"``
#: entries, or a function of the origin string returning a boolean.
OriginSetting = Union[bool, Iterable[str], Callable[[str], bool]]

#: Hosts ``check_origin = True`` also accepts in the ``dev`` environment,
#: on any port: a page served by the development server itself, whichever
#: name the browser used for it.
DEV_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _port(parts: Any) -> int | None:
    try:
        port = parts.port
    except ValueError:
        return None
    return port if port is not None else _DEFAULT_PORTS.get(parts.scheme)


def origin_allowed(origin: str | None, setting: OriginSetting, host: str, *, dev: bool = False) -> bool:
    """
    Whether a request with ``Origin: origin`` may connect.

    :param host: the endpoint's public host, for ``setting=True``.
    :param dev: whether the endpoint runs in the ``dev`` environment, where
        ``setting=True`` also accepts :data:`DEV_HOSTS`.
    """
    if origin is None or setting is False:
        return True
    if callable(setting):
        return bool(setting(origin))
    parts = urlsplit(origin)
    origin_host = parts.hostname
    if not origin_host:
        return False
    if setting is True:
        return origin_host == host.lower().strip("[]") or (dev and origin_host in DEV_HOSTS)
    for entry in setting:  # type: ignore[union-attr]
        allowed = urlsplit(entry)
        want = (allowed.hostname or "").lower()
        if want.startswith("*."):
            if origin_host != want[2:] and not origin_host.endswith(want[1:]):
                continue
        elif origin_host != want:
            continue
        if allowed.scheme and allowed.scheme != parts.scheme:
            continue
        if (allowed.scheme or allowed.port) and _port(allowed) != _port(parts):
            continue
        return True
    return False
