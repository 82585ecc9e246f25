# -*- test-case-name: tests.test_cluster_auth -*-
"""
What nodes (and the port mapper) prove to each other with the cluster
cookie.  Every proof is an HMAC-SHA256 keyed by the cookie, over a label
naming its use (so one proof can never be replayed as another), nonces from
both sides and, on a link, the TLS channel binding
(:func:`~twisted_phoenix.cluster.tls.channel_binding`): the cookie never
crosses the wire, and a proof made on one connection is worthless on any
other.

A link:

1. the connecting node logs in to the accepting one with Perspective
   Broker's challenge-response (the accepting node's random challenge),
   whose password is :func:`login_secret`: the cookie bound to this TLS
   connection.  A relay that terminates TLS holds two connections with two
   bindings, and cannot make the secret of either;
2. the connecting node sends a nonce in its hello; the accepting node
   answers with :func:`hello_proof` over that nonce, its name and the
   binding.

The port mapper: see :mod:`~twisted_phoenix.cluster.portmapper`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = [
    "hello_proof",
    "login_secret",
    "mapper_proof",
    "mapper_session_key",
    "line_mac",
    "new_nonce",
    "same",
]


def _hmac(cookie: str | bytes, label: str, *parts: bytes) -> bytes:
    key = cookie.encode() if isinstance(cookie, str) else cookie
    message = label.encode() + b"".join(b"\0" + len(p).to_bytes(4, "big") + p for p in parts)
    return hmac.new(key, message, hashlib.sha256).digest()


def new_nonce() -> str:
    """A fresh random nonce: 32 hex digits."""
    return secrets.token_hex(16)


def same(a: str | bytes | None, b: str | bytes) -> bool:
    """Whether a received proof equals the expected one (in constant time)."""
    if isinstance(a, str):
        a = a.encode("utf-8", "replace")
    if isinstance(b, str):
        b = b.encode()
    return isinstance(a, bytes) and hmac.compare_digest(a, b)


def login_secret(cookie: str, binding: bytes, name: str) -> bytes:
    """
    The password the node ``name`` logs in with on a link whose TLS channel
    binding is ``binding`` (empty on a plaintext link): the cookie, bound to
    that connection.
    """
    return _hmac(cookie, "twisted-phoenix link login", binding, name.encode()).hex().encode()


def hello_proof(cookie: str, nonce: str, name: str, binding: bytes = b"") -> str:
    """What the accepting node ``name`` answers to a hello carrying ``nonce``."""
    return _hmac(cookie, "twisted-phoenix link hello", nonce.encode(), name.encode(), binding).hex()


def mapper_proof(cookie: str, role: str, client_nonce: str, server_nonce: str) -> str:
    """
    The port mapper's proof (``role`` ``"server"``) or its client's
    (``"client"``) over both sides' nonces.
    """
    if role not in ("server", "client"):
        raise ValueError(role)
    return _hmac(cookie, f"twisted-phoenix mapper {role}", client_nonce.encode(), server_nonce.encode()).hex()


def mapper_session_key(cookie: str, client_nonce: str, server_nonce: str) -> bytes:
    """The key of the MACs on a mapper session's lines (:func:`line_mac`)."""
    return _hmac(cookie, "twisted-phoenix mapper session", client_nonce.encode(), server_nonce.encode())


def line_mac(key: bytes, direction: str, sequence: int, line: str) -> str:
    """
    The MAC of one line of a mapper session: ``direction`` (``"request"`` or
    ``"answer"``) and its number in that direction are covered, so lines
    cannot be replayed, reordered or turned around.
    """
    return _hmac(key, "twisted-phoenix mapper line", direction.encode(), str(sequence).encode(), line.encode()).hex()[:32]
