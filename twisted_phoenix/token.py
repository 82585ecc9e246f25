# -*- test-case-name: tests.test_token -*-
"""
Signed tokens, byte-compatible with Elixir's ``Phoenix.Token``.

A token made here verifies with ``Phoenix.Token.verify/4`` and vice versa,
given the same ``secret_key_base`` and salt.  The format is that of
``Plug.Crypto.sign/4`` and ``Plug.Crypto.MessageVerifier``::

    key     = PBKDF2-HMAC-SHA256(secret_key_base, salt, 1000 rounds, 32 bytes)
    message = term_to_binary({data, signed_at_ms, max_age_seconds})
    token   = "SFMyNTY." + b64url(message) + "." + b64url(HMAC(key, ...))

where the MAC covers everything before the last dot.  Tokens are signed, not
encrypted: anyone holding one can read its data.

Time comes from ``clock.seconds()`` when a clock (such as the reactor, or a
:class:`twisted.internet.task.Clock` in tests) is given, and from :func:`time.time`
otherwise.  Library code should always pass a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from twisted_phoenix._etf import Atom, ETFError, binary_to_term, term_to_binary

__all__ = [
    "DEFAULT_MAX_AGE",
    "EXPIRED",
    "INVALID",
    "MISSING",
    "Token",
    "VerifyResult",
    "derive_key",
    "generate_secret",
    "sign",
    "sign_message",
    "verify",
    "verify_message",
]

DEFAULT_MAX_AGE = 86400

EXPIRED = "expired"
INVALID = "invalid"
MISSING = "missing"

# The token header is base64url("HS256") and so on; it names the HMAC digest.
_HEADERS = {"sha256": "SFMyNTY", "sha384": "SFMzODQ", "sha512": "SFM1MTI"}
_DIGESTS = {b"HS256": "sha256", b"HS384": "sha384", b"HS512": "sha512"}
_INFINITY = Atom("infinity")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


class _Clock(Protocol):
    def seconds(self) -> float:
        ...


@dataclass(frozen=True)
class VerifyResult:
    """
    The outcome of :func:`verify`: Elixir's ``{:ok, data}`` or ``{:error, reason}``.

    It is true only when ``ok`` is, so ``if result:`` is safe.

    :ivar ok: Whether the token is authentic and fresh.
    :ivar data: The signed data when ``ok``, else ``None``.
    :ivar error: ``None`` when ``ok``, else :data:`EXPIRED`, :data:`INVALID` or
        :data:`MISSING`.
    """

    ok: bool
    data: Any = None
    error: str | None = None

    def __bool__(self) -> bool:
        return self.ok


_RESULT_INVALID = VerifyResult(False, error=INVALID)
_RESULT_EXPIRED = VerifyResult(False, error=EXPIRED)
_RESULT_MISSING = VerifyResult(False, error=MISSING)


def _bytes(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise TypeError(f"expected str or bytes, not {type(value).__name__}")


@lru_cache(maxsize=256)
def derive_key(
    secret_key_base: bytes,
    salt: bytes,
    iterations: int = 1000,
    length: int = 32,
    digest: str = "sha256",
) -> bytes:
    """
    Derive a signing key as ``Plug.Crypto.KeyGenerator`` does.

    PBKDF2 is deliberately slow, so results are cached per argument tuple.
    """
    return hashlib.pbkdf2_hmac(digest, secret_key_base, salt, iterations, length)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    # Strict, like Elixir's Base.url_decode64(text, padding: false).
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def sign_message(message: bytes, key: bytes, digest: str = "sha256") -> str:
    """
    Sign raw bytes as ``Plug.Crypto.MessageVerifier.sign/3`` does.

    :param digest: ``"sha256"``, ``"sha384"`` or ``"sha512"``.
    """
    signed = _HEADERS[digest] + "." + _b64encode(message)
    mac = hmac.new(key, signed.encode("ascii"), digest).digest()
    return signed + "." + _b64encode(mac)


def verify_message(token: str, key: bytes) -> bytes | None:
    """
    Check a token made by :func:`sign_message` (with any digest) and return its
    message, or ``None`` if it is malformed or its MAC does not match.
    """
    parts = token.split(".", 2)
    if len(parts) != 3:
        return None
    header, payload, signature = (_b64decode(part) for part in parts)
    digest = _DIGESTS.get(header or b"")
    if digest is None or payload is None or signature is None:
        return None
    signed = (parts[0] + "." + parts[1]).encode("ascii")
    if not hmac.compare_digest(hmac.new(key, signed, digest).digest(), signature):
        return None
    return payload


def _nowMs(clock: _Clock | None) -> int:
    return math.floor((clock.seconds() if clock is not None else time.time()) * 1000)


def _checkMaxAge(max_age: object) -> int | float:
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)):
        raise TypeError(f"max_age must be a number, not {type(max_age).__name__}")
    if math.isnan(max_age):
        raise ValueError("max_age must not be NaN")
    return max_age


class Token:
    """
    Signs and verifies tokens with one ``secret_key_base``.

    :param secret_key_base: The application secret, shared with any Phoenix
        nodes that must accept these tokens.
    :param clock: The default time source for :meth:`sign` and :meth:`verify`.
    :param key_iterations: ``:key_iterations``, as in ``Plug.Crypto``.
    :param key_length: ``:key_length``, as in ``Plug.Crypto``.
    :param key_digest: ``:key_digest``, as in ``Plug.Crypto``.
    """

    def __init__(
        self,
        secret_key_base: str | bytes,
        *,
        clock: _Clock | None = None,
        key_iterations: int = 1000,
        key_length: int = 32,
        key_digest: str = "sha256",
    ) -> None:
        self._secret = _bytes(secret_key_base)
        if not self._secret:
            raise ValueError("secret_key_base must not be empty")
        self._clock = clock
        self._keyOptions = (key_iterations, key_length, key_digest)

    def __repr__(self) -> str:
        return "<Token>"  # Never show the secret.

    def _key(self, salt: str | bytes) -> bytes:
        return derive_key(self._secret, _bytes(salt), *self._keyOptions)

    def sign(
        self,
        salt: str | bytes,
        data: Any,
        *,
        max_age: int | float | None = DEFAULT_MAX_AGE,
        signed_at: float | None = None,
        clock: _Clock | None = None,
    ) -> str:
        """
        Sign ``data``, which may be anything :func:`term_to_binary` encodes.

        :param max_age: Seconds the token stays valid, stored in the token
            and used by :meth:`verify` unless it is given its own.  ``None`` means
            the default (86400); ``math.inf`` means the token never expires.
        :param signed_at: The signing time in seconds since the epoch; by
            default, now.
        :param clock: The time source (anything with a ``seconds()`` method),
            overriding the one given to the constructor.
        """
        if max_age is None:
            max_age = DEFAULT_MAX_AGE
        stored: Any = _checkMaxAge(max_age)
        if stored == math.inf:
            stored = _INFINITY
        elif not math.isfinite(stored):
            raise ValueError("max_age must be finite or math.inf")
        if signed_at is None:
            signedMs = _nowMs(clock or self._clock)
        else:
            signedMs = int(signed_at * 1000)
        message = term_to_binary((data, signedMs, stored))
        return sign_message(message, self._key(salt))

    def verify(
        self,
        salt: str | bytes,
        token: str | None,
        *,
        max_age: int | float | None = None,
        clock: _Clock | None = None,
    ) -> VerifyResult:
        """
        Check ``token`` and return its data if it is authentic and fresh.

        A malformed or forged token is :data:`INVALID`, as is one signed in the
        future; an old one is :data:`EXPIRED`; ``None`` is :data:`MISSING`.

        :param max_age: Seconds the token may be old, overriding the age
            stored in it; ``math.inf`` disables the check.  ``None`` uses the
            stored age.
        :param clock: The time source, overriding the constructor's.
        :raises TypeError: if ``token`` is neither :class:`str` nor ``None``.
        """
        if token is None:
            return _RESULT_MISSING
        if not isinstance(token, str):
            raise TypeError(f"token must be str or None, not {type(token).__name__}")
        if max_age is not None:
            max_age = _checkMaxAge(max_age)
        message = verify_message(token, self._key(salt))
        if message is None:
            return _RESULT_INVALID
        try:
            term = binary_to_term(message)
        except ETFError:
            return _RESULT_INVALID
        stored: Any = DEFAULT_MAX_AGE
        if type(term) is tuple and len(term) == 3:
            data, signedMs, stored = term
        elif type(term) is tuple and len(term) == 2:
            # Plug.Crypto 1.1 tokens.
            data, signedMs = term
        elif type(term) is dict and Atom("data") in term and Atom("signed") in term:
            # Tokens from Phoenix before Plug.Crypto.sign/4 existed.
            data, signedMs = term[Atom("data")], term[Atom("signed")]
        else:
            return _RESULT_INVALID
        if max_age is None:
            if stored == _INFINITY:
                max_age = math.inf
            elif type(stored) in (int, float):
                max_age = stored
            else:
                return _RESULT_INVALID
        if type(signedMs) is not int:
            return _RESULT_INVALID
        if max_age == math.inf:
            return VerifyResult(True, data)
        if max_age <= 0:
            return _RESULT_EXPIRED
        nowMs = _nowMs(clock or self._clock)
        if signedMs > nowMs:
            return _RESULT_INVALID
        maxAgeMs = max_age * 1000
        if maxAgeMs != math.inf and signedMs + int(maxAgeMs) < nowMs:
            return _RESULT_EXPIRED
        return VerifyResult(True, data)


def sign(
    secret_key_base: str | bytes,
    salt: str | bytes,
    data: Any,
    *,
    max_age: int | float | None = DEFAULT_MAX_AGE,
    signed_at: float | None = None,
    clock: _Clock | None = None,
) -> str:
    """
    Sign ``data`` like ``Phoenix.Token.sign/4``; see :meth:`Token.sign`.
    """
    return Token(secret_key_base).sign(
        salt, data, max_age=max_age, signed_at=signed_at, clock=clock
    )


def verify(
    secret_key_base: str | bytes,
    salt: str | bytes,
    token: str | None,
    *,
    max_age: int | float | None = None,
    clock: _Clock | None = None,
) -> VerifyResult:
    """
    Verify a token like ``Phoenix.Token.verify/4``; see :meth:`Token.verify`.
    """
    return Token(secret_key_base).verify(salt, token, max_age=max_age, clock=clock)


def generate_secret(length: int = 64) -> str:
    """
    Return a random secret suitable as a ``secret_key_base``, as
    ``mix phx.gen.secret`` makes them.
    """
    if length < 32:
        raise ValueError("secrets shorter than 32 characters are too weak")
    return base64.b64encode(secrets.token_bytes(length)).decode("ascii")[:length]
