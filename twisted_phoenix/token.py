# -*- test-case-name: tests.test_token -*-
"""
Signed and encrypted tokens, byte-compatible with Elixir's ``Phoenix.Token``.

A token made here verifies (or decrypts) with ``Phoenix.Token.verify/4`` (or
``decrypt/4``) and vice versa, given the same ``secret_key_base`` and salt (or
secret).  The formats are those of ``Plug.Crypto.sign/4``, ``encrypt/4`` and
their ``MessageVerifier`` and ``MessageEncryptor``::

    key     = PBKDF2-HMAC-SHA256(secret_key_base, salt, 1000 rounds, 32 bytes)
    message = term_to_binary({data, signed_at_ms, max_age_seconds})
    signed  = "SFMyNTY." + b64url(message) + "." + b64url(HMAC(key, ...))
    sealed  = "XCP." + b64url(iv(24) + tag(16) + XChaCha20-Poly1305(key, iv, message))

where the MAC covers everything before the last dot, and the encryption's
additional data is ``"A128GCM"``.  Signed tokens can be read by anyone
holding one; encrypted ones only by holders of the secret.  ``b64url`` is
base64url without padding, and only its canonical form is accepted: a token
part whose unused low bits are not zero is invalid.

The message may be compressed (``term_to_binary(..., [:compressed])``, Phoenix
1.8's ``compressed: true``); reading one inflates it only up to a cap,
:data:`DEFAULT_MAX_DECOMPRESSED_SIZE` by default.

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
import struct
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from twisted_phoenix._etf import (
    MAX_DECOMPRESSED_SIZE,
    Atom,
    ETFError,
    binary_to_term,
    term_to_binary,
)

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_DECOMPRESSED_SIZE",
    "EXPIRED",
    "INVALID",
    "MISSING",
    "Token",
    "VerifyResult",
    "decrypt",
    "decrypt_message",
    "derive_key",
    "encrypt",
    "encrypt_message",
    "generate_secret",
    "sign",
    "sign_message",
    "verify",
    "verify_message",
]

DEFAULT_MAX_AGE = 86400

#: The default cap, in bytes, on a compressed token's message once inflated.
#: A token declaring more, or inflating to more, is :data:`INVALID`.
DEFAULT_MAX_DECOMPRESSED_SIZE = MAX_DECOMPRESSED_SIZE

EXPIRED = "expired"
INVALID = "invalid"
MISSING = "missing"

# The token header is base64url("HS256") and so on; it names the HMAC digest.
_HEADERS = {"sha256": "SFMyNTY", "sha384": "SFMzODQ", "sha512": "SFM1MTI"}
_DIGESTS = {b"HS256": "sha256", b"HS384": "sha384", b"HS512": "sha512"}
_INFINITY = Atom("infinity")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# MessageEncryptor's formats: XChaCha20-Poly1305 since Plug.Crypto 2.0, and
# AES-GCM with a wrapped content key (header base64url("A128GCM")) before.
_XCP = "XCP."
_A128GCM = "QTEyOEdDTQ."
_AAD = b"A128GCM"
_IV_SIZE = 24
_TAG_SIZE = 16


class _Clock(Protocol):
    def seconds(self) -> float:
        ...


@dataclass(frozen=True)
class VerifyResult:
    """
    The outcome of :func:`verify` or :func:`decrypt`: Elixir's ``{:ok, data}``
    or ``{:error, reason}``.

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
    Derive a key as ``Plug.Crypto.KeyGenerator`` does, for signing (from the
    salt) or encrypting (from the secret).

    PBKDF2 is deliberately slow, so results are cached per argument tuple.
    """
    return hashlib.pbkdf2_hmac(digest, secret_key_base, salt, iterations, length)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """
    Decode base64url without padding, as ``Plug.Crypto`` writes it, and only
    in its canonical form: text that does not re-encode to itself (because
    the unused low bits of its last character are set) is refused, so each
    token has exactly one spelling.
    """
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if _b64encode(data) != text:
        return None
    return data


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


_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_MASK32 = 0xFFFFFFFF


def _hchacha20(key: bytes, nonce: bytes) -> bytes:
    """
    HChaCha20 (draft-irtf-cfrg-xchacha, section 2.2): the 32-byte subkey that
    turns XChaCha20's 24-byte nonce into ChaCha20's 12.  Pure Python, run
    once per token.
    """
    s = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce)]

    def quarter(a: int, b: int, c: int, d: int) -> None:
        s[a] = (s[a] + s[b]) & _MASK32
        x = s[d] ^ s[a]
        s[d] = ((x << 16) | (x >> 16)) & _MASK32
        s[c] = (s[c] + s[d]) & _MASK32
        x = s[b] ^ s[c]
        s[b] = ((x << 12) | (x >> 20)) & _MASK32
        s[a] = (s[a] + s[b]) & _MASK32
        x = s[d] ^ s[a]
        s[d] = ((x << 8) | (x >> 24)) & _MASK32
        s[c] = (s[c] + s[d]) & _MASK32
        x = s[b] ^ s[c]
        s[b] = ((x << 7) | (x >> 25)) & _MASK32

    for _ in range(10):
        quarter(0, 4, 8, 12)
        quarter(1, 5, 9, 13)
        quarter(2, 6, 10, 14)
        quarter(3, 7, 11, 15)
        quarter(0, 5, 10, 15)
        quarter(1, 6, 11, 12)
        quarter(2, 7, 8, 13)
        quarter(3, 4, 9, 14)
    return struct.pack("<8I", *s[0:4], *s[12:16])


def _xchacha20poly1305(key: bytes, iv: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    """The ChaCha20-Poly1305 cipher and 12-byte nonce for XChaCha20's ``iv``."""
    return ChaCha20Poly1305(_hchacha20(key, iv[:16])), b"\x00\x00\x00\x00" + iv[16:]


def encrypt_message(
    message: bytes, key: bytes, *, aad: bytes = _AAD, iv: bytes | None = None
) -> str:
    """
    Encrypt raw bytes as ``Plug.Crypto.MessageEncryptor.encrypt/4`` does, in
    the ``XCP.`` format (XChaCha20-Poly1305).

    :param key: 32 bytes.
    :param aad: The additional authenticated data; ``"A128GCM"``, as
        ``Phoenix.Token`` uses, by default.
    :param iv: The 24-byte nonce, random by default.  Pass one only to
        reproduce known bytes in tests: a nonce must never be reused with
        the same key.
    :raises ValueError: if ``key`` is not 32 bytes or ``iv`` not 24.
    """
    if len(key) != 32:
        raise ValueError("XChaCha20-Poly1305 needs a 32-byte key (key_length=32)")
    if iv is None:
        iv = secrets.token_bytes(_IV_SIZE)
    elif len(iv) != _IV_SIZE:
        raise ValueError(f"the iv must be {_IV_SIZE} bytes")
    cipher, nonce = _xchacha20poly1305(key, iv)
    sealed = cipher.encrypt(nonce, message, aad)
    ciphertext, tag = sealed[:-_TAG_SIZE], sealed[-_TAG_SIZE:]
    return _XCP + _b64encode(iv + tag + ciphertext)


def decrypt_message(token: str, key: bytes, *, aad: bytes = _AAD) -> bytes | None:
    """
    Decrypt a token made by :func:`encrypt_message`, or by
    ``Plug.Crypto.MessageEncryptor``: its ``XCP.`` format, and the
    ``QTEyOEdDTQ.`` (AES-GCM) format of Plug.Crypto 1.x, whose signing secret
    ``Plug.Crypto.encrypt/4`` always left empty.  Returns the message, or
    ``None`` if the token is malformed or fails authentication.
    """
    if token.startswith(_XCP):
        raw = _b64decode(token[len(_XCP) :])
        if raw is None or len(raw) < _IV_SIZE + _TAG_SIZE or len(key) != 32:
            return None
        iv, tag = raw[:_IV_SIZE], raw[_IV_SIZE : _IV_SIZE + _TAG_SIZE]
        cipher, nonce = _xchacha20poly1305(key, iv)
        try:
            return cipher.decrypt(nonce, raw[_IV_SIZE + _TAG_SIZE :] + tag, aad)
        except InvalidTag:
            return None
    if token.startswith(_A128GCM):
        return _decryptA128GCM(token[len(_A128GCM) :], key, aad)
    return None


def _decryptA128GCM(rest: str, key: bytes, aad: bytes) -> bytes | None:
    parts = rest.split(".")
    if len(parts) != 4 or len(key) not in (16, 24, 32):
        return None
    wrapped, iv, ciphertext, tag = (_b64decode(part) for part in parts)
    if wrapped is None or iv is None or ciphertext is None or tag is None:
        return None
    # The content key, wrapped as cipher text (16, 24 or 32 bytes), tag (16)
    # and iv (12), with the derived key and an empty signing secret as AAD.
    if len(iv) != 12 or len(tag) != _TAG_SIZE or len(wrapped) - 28 not in (16, 24, 32):
        return None
    try:
        contentKey = AESGCM(key).decrypt(wrapped[-12:], wrapped[:-12], b"")
        return AESGCM(contentKey).decrypt(iv, ciphertext + tag, aad)
    except InvalidTag:
        return None


def _nowMs(clock: _Clock | None) -> int:
    return math.floor((clock.seconds() if clock is not None else time.time()) * 1000)


def _checkMaxAge(max_age: object) -> int | float:
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)):
        raise TypeError(f"max_age must be a number, not {type(max_age).__name__}")
    if math.isnan(max_age):
        raise ValueError("max_age must not be NaN")
    return max_age


def _checkToken(token: object) -> None:
    if not isinstance(token, str):
        raise TypeError(f"token must be str or None, not {type(token).__name__}")


class Token:
    """
    Signs, verifies, encrypts and decrypts tokens with one ``secret_key_base``.

    :param secret_key_base: The application secret, shared with any Phoenix
        nodes that must accept these tokens.
    :param clock: The default time source for every method.
    :param key_iterations: ``:key_iterations``, as in ``Plug.Crypto``.
    :param key_length: ``:key_length``, as in ``Plug.Crypto``; encryption
        needs the default, 32.
    :param key_digest: ``:key_digest``, as in ``Plug.Crypto``.
    :param max_decompressed_size: The most bytes a compressed token's
        message may inflate to (:data:`DEFAULT_MAX_DECOMPRESSED_SIZE`, 64 KiB,
        by default).  A token declaring or holding more is :data:`INVALID`,
        found out without inflating more than this.
    """

    def __init__(
        self,
        secret_key_base: str | bytes,
        *,
        clock: _Clock | None = None,
        key_iterations: int = 1000,
        key_length: int = 32,
        key_digest: str = "sha256",
        max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
    ) -> None:
        self._secret = _bytes(secret_key_base)
        if not self._secret:
            raise ValueError("secret_key_base must not be empty")
        self._clock = clock
        self._keyOptions = (key_iterations, key_length, key_digest)
        if type(max_decompressed_size) is not int or max_decompressed_size < 0:
            raise ValueError("max_decompressed_size must be a non-negative int")
        self._maxDecompressed = max_decompressed_size

    def __repr__(self) -> str:
        return "<Token>"  # Never show the secret.

    def _key(self, salt: str | bytes) -> bytes:
        return derive_key(self._secret, _bytes(salt), *self._keyOptions)

    def _message(
        self,
        data: Any,
        max_age: int | float | None,
        signed_at: float | None,
        clock: _Clock | None,
        compressed: bool,
    ) -> bytes:
        """``term_to_binary({data, signed_at_ms, max_age}, compressed?)``."""
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
        return term_to_binary((data, signedMs, stored), compressed=bool(compressed))

    def _read(
        self, message: bytes | None, max_age: int | float | None, clock: _Clock | None
    ) -> VerifyResult:
        """Decode an authentic message and check its age, as Plug.Crypto does."""
        if message is None:
            return _RESULT_INVALID
        try:
            term = binary_to_term(message, max_decompressed_size=self._maxDecompressed)
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
        self,
        salt: str | bytes,
        data: Any,
        *,
        max_age: int | float | None = DEFAULT_MAX_AGE,
        signed_at: float | None = None,
        clock: _Clock | None = None,
        compressed: bool = False,
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
        :param compressed: Compress the message as Phoenix's ``compressed:
            true`` does (zlib, when that makes it shorter), for large data.
        """
        message = self._message(data, max_age, signed_at, clock, compressed)
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
        future, one with a non-canonical base64 part, and a compressed one
        larger than the cap; an old one is :data:`EXPIRED`; ``None`` is
        :data:`MISSING`.

        :param max_age: Seconds the token may be old, overriding the age
            stored in it; ``math.inf`` disables the check.  ``None`` uses the
            stored age.
        :param clock: The time source, overriding the constructor's.
        :raises TypeError: if ``token`` is neither :class:`str` nor ``None``.
        """
        if token is None:
            return _RESULT_MISSING
        _checkToken(token)
        if max_age is not None:
            max_age = _checkMaxAge(max_age)
        return self._read(verify_message(token, self._key(salt)), max_age, clock)

    def encrypt(
        self,
        secret: str | bytes,
        data: Any,
        *,
        max_age: int | float | None = DEFAULT_MAX_AGE,
        signed_at: float | None = None,
        clock: _Clock | None = None,
        compressed: bool = False,
    ) -> str:
        """
        Encrypt ``data`` like ``Phoenix.Token.encrypt/4``: only holders of the
        ``secret_key_base`` can read it.

        :param secret: Plays the part of the salt: the key is derived from
            it, and :meth:`decrypt` must be given the same one.
        :param max_age: As for :meth:`sign`.
        :param signed_at: As for :meth:`sign`.
        :param clock: As for :meth:`sign`.
        :param compressed: As for :meth:`sign`.  Compression before
            encryption lets the token's length reveal something about its
            data; leave it off if the data mixes secrets with values an
            attacker chooses.
        :raises ValueError: if the ``key_length`` given to the constructor is
            not 32, which XChaCha20 needs.
        """
        message = self._message(data, max_age, signed_at, clock, compressed)
        return encrypt_message(message, self._key(secret))

    def decrypt(
        self,
        secret: str | bytes,
        token: str | None,
        *,
        max_age: int | float | None = None,
        clock: _Clock | None = None,
    ) -> VerifyResult:
        """
        Decrypt a token made by :meth:`encrypt` or ``Phoenix.Token.encrypt/4``
        and return its data if it is authentic and fresh; the results are
        those of :meth:`verify`.

        :param max_age: As for :meth:`verify`.
        :param clock: As for :meth:`verify`.
        :raises TypeError: if ``token`` is neither :class:`str` nor ``None``.
        """
        if token is None:
            return _RESULT_MISSING
        _checkToken(token)
        if max_age is not None:
            max_age = _checkMaxAge(max_age)
        return self._read(decrypt_message(token, self._key(secret)), max_age, clock)


def sign(
    secret_key_base: str | bytes,
    salt: str | bytes,
    data: Any,
    *,
    max_age: int | float | None = DEFAULT_MAX_AGE,
    signed_at: float | None = None,
    clock: _Clock | None = None,
    compressed: bool = False,
) -> str:
    """
    Sign ``data`` like ``Phoenix.Token.sign/4``; see :meth:`Token.sign`.
    """
    return Token(secret_key_base).sign(
        salt, data, max_age=max_age, signed_at=signed_at, clock=clock, compressed=compressed
    )


def verify(
    secret_key_base: str | bytes,
    salt: str | bytes,
    token: str | None,
    *,
    max_age: int | float | None = None,
    clock: _Clock | None = None,
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
) -> VerifyResult:
    """
    Verify a token like ``Phoenix.Token.verify/4``; see :meth:`Token.verify`
    and, for ``max_decompressed_size``, :class:`Token`.
    """
    return Token(secret_key_base, max_decompressed_size=max_decompressed_size).verify(
        salt, token, max_age=max_age, clock=clock
    )


def encrypt(
    secret_key_base: str | bytes,
    secret: str | bytes,
    data: Any,
    *,
    max_age: int | float | None = DEFAULT_MAX_AGE,
    signed_at: float | None = None,
    clock: _Clock | None = None,
    compressed: bool = False,
) -> str:
    """
    Encrypt ``data`` like ``Phoenix.Token.encrypt/4``; see :meth:`Token.encrypt`.
    """
    return Token(secret_key_base).encrypt(
        secret, data, max_age=max_age, signed_at=signed_at, clock=clock, compressed=compressed
    )


def decrypt(
    secret_key_base: str | bytes,
    secret: str | bytes,
    token: str | None,
    *,
    max_age: int | float | None = None,
    clock: _Clock | None = None,
    max_decompressed_size: int = DEFAULT_MAX_DECOMPRESSED_SIZE,
) -> VerifyResult:
    """
    Decrypt a token like ``Phoenix.Token.decrypt/4``; see :meth:`Token.decrypt`
    and, for ``max_decompressed_size``, :class:`Token`.
    """
    return Token(secret_key_base, max_decompressed_size=max_decompressed_size).decrypt(
        secret, token, max_age=max_age, clock=clock
    )


def generate_secret(length: int = 64) -> str:
    """
    Return a random secret suitable as a ``secret_key_base``, as
    ``mix phx.gen.secret`` makes them.
    """
    if length < 32:
        raise ValueError("secrets shorter than 32 characters are too weak")
    return base64.b64encode(secrets.token_bytes(length)).decode("ascii")[:length]
