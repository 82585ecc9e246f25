# -*- test-case-name: tests.test_client -*-
"""
Connect params in the query string, as phoenix.js's ``Ajax.serialize`` and
``Ajax.appendParams`` write them.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

__all__ = ["append_params", "serialize_params"]


def _scalar(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


def serialize_params(params: Any, parent_key: str | None = None) -> str:
    """
    phoenix.js's ``Ajax.serialize``: ``{"a": 1, "b": {"c": "d"}}`` →
    ``a=1&b[c]=d`` (keys and values percent-encoded as
    ``encodeURIComponent`` does; lists as ``k[0]=…&k[1]=…``).
    """
    if isinstance(params, Mapping):
        items: Any = params.items()
    else:
        items = enumerate(params)
    parts = []
    for key, value in items:
        param_key = f"{parent_key}[{key}]" if parent_key else str(key)
        if isinstance(value, (Mapping, list, tuple)):
            parts.append(serialize_params(value, param_key))
        else:
            parts.append(quote(param_key, safe="-_.!~*'()") + "=" + quote(_scalar(value), safe="-_.!~*'()"))
    return "&".join(parts)


def append_params(url: str, params: Mapping[str, Any]) -> str:
    """phoenix.js's ``Ajax.appendParams``."""
    if not params:
        return url
    prefix = "&" if "?" in url else "?"
    return f"{url}{prefix}{serialize_params(params)}"
