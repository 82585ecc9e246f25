"""
Tests for L{twisted_phoenix.token}.
"""

from __future__ import annotations

import base64
import math
import struct
import tracemalloc
import zlib

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._etf import Atom, binary_to_term, term_to_binary
from twisted_phoenix.token import (
    DEFAULT_MAX_DECOMPRESSED_SIZE,
    EXPIRED,
    INVALID,
    MISSING,
    Token,
    VerifyResult,
    decrypt,
    decrypt_message,
    derive_key,
    encrypt,
    encrypt_message,
    generate_secret,
    sign,
    sign_message,
    verify,
)

from .test_etf import terms

SECRET = "a" * 64
SALT = "user auth"
SIGNED_AT = 1_700_000_000
VECTOR = "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x2GV8fzmggTQdkMlzdkfE2mSNoVoWKMMirhPRqMzXSc"

# The spec's Appendix C: tokens made by Phoenix 1.7.21 / plug_crypto 2.1.0.
C_SECRET = "b" * 64
C_SALT = "salt identifier"
C_COMPRESSED = (
    "SFMyNTY.g1AAAACBeJzLYC5hYGBgygUSLHmJuakgRkBiEnUhyFD20uLUovjMlEStPDYGhri"
    "wdwsZkxgYAxsASF4p_w.etstPqZzS1UzOOesNPHkNpNcsvcw05c_jAYNLNsvnzY"
)
C_COMPRESSED_DATA = {"user_id": 42, "name": "ab" * 40}
C_COMPRESSED_SIGNED_AT = 1_795_000_000
C_ENCRYPTED = [
    (
        "XCP.k5jAdbuFJ8CyxLQL0ZkmcMDZJ7r0nBmdaR9d3o5_TOtNzr0t0RZWmlUgNUNSiYf9bziB"
        "JRI8YIL-B_D1g3fpn8MVenhtoaHoOjqdJSs",
        {"user_id": 42},
    ),
    ("XCP.ZJYuuCX2hahSZqsCFhBZ33v0sAuHjfatNsaa-Sgu4ZaDAmJG0v7Axoi8NRSMiqDNflDeSXjLr2HyODqA", 42),
]
# What those XCP tokens hold as signed_at: 1 795 000 000 000 000 ms, a
# thousand times Appendix C's signed tokens' (the seconds were given in
# milliseconds), which is far in the future, not "early December 2026".
C_ENCRYPTED_SIGNED_AT = 1_795_000_000_000

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def clockAt(seconds: float) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


def b64decode(text: str) -> bytes:
    """Decode base64url without padding, leniently."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def nonCanonical(part: str) -> str:
    """
    C{part} with its last character's unused low bits set: the same bytes
    to a lenient decoder, a different string.
    """
    assert len(part) % 4 in (2, 3), part
    last = _ALPHABET.index(part[-1])
    assert last & 1 == 0, part
    return part[:-1] + _ALPHABET[last | 1]


def legacyEncrypt(message: bytes, key: bytes, cek: bytes, keyIV: bytes, iv: bytes) -> str:
    """
    A token in Plug.Crypto 1.x's encrypted format, built as its
    C{MessageEncryptor.encrypt/3} built them (C{aes128_gcm_encrypt} and
    C{aes_gcm_key_wrap}), with the empty signing secret C{Plug.Crypto.encrypt/4}
    gave it.  No Phoenix-made vector of this format is available.
    """
    wrapped = AESGCM(key).encrypt(keyIV, cek, b"")  # cipher text + tag
    sealed = AESGCM(cek).encrypt(iv, message, b"A128GCM")
    parts = [b"A128GCM", wrapped + keyIV, iv, sealed[:-16], sealed[-16:]]
    return ".".join(b64encode(part) for part in parts)


def assertRefusedCheaply(test: SynchronousTestCase, call: object, *args: object) -> None:
    """
    C{call(*args)} is invalid, having allocated a few times the 64 KiB cap at
    most: nothing near what the token would inflate to.
    """
    tracemalloc.start()
    test.addCleanup(tracemalloc.stop)
    tracemalloc.reset_peak()
    result = call(*args)  # type: ignore[operator]
    test.assertEqual(result, VerifyResult(False, error=INVALID))
    test.assertLess(tracemalloc.get_traced_memory()[1], 8 * DEFAULT_MAX_DECOMPRESSED_SIZE)


class VectorTests(SynchronousTestCase):
    """
    Tests against a token computed with Elixir's C{Phoenix.Token}.
    """

    def test_derivedKey(self) -> None:
        """The key is PBKDF2-HMAC-SHA256 with 1000 rounds and 32 bytes."""
        self.assertEqual(
            derive_key(SECRET.encode(), SALT.encode()).hex(),
            "31fbb3adecec68c972fd2697491c1a02763359667d5ac06901233fb98a57fb14",
        )

    def test_message(self) -> None:
        """The signed message is the ETF of {data, signed_at_ms, max_age}."""
        self.assertEqual(
            term_to_binary((42, SIGNED_AT * 1000, 86400)),
            bytes.fromhex("836803612a6e06000068e5cf8b016200015180"),
        )

    def test_sign(self) -> None:
        """Signing reproduces the Elixir token exactly."""
        self.assertEqual(sign(SECRET, SALT, 42, signed_at=SIGNED_AT), VECTOR)
        self.assertEqual(sign(SECRET, SALT, 42, clock=clockAt(SIGNED_AT)), VECTOR)
        token = Token(SECRET.encode(), clock=clockAt(SIGNED_AT))
        self.assertEqual(token.sign(SALT, 42), VECTOR)

    def test_verify(self) -> None:
        """The token verifies shortly after signing."""
        result = verify(SECRET, SALT, VECTOR, clock=clockAt(SIGNED_AT + 5))
        self.assertEqual(result, VerifyResult(True, 42))
        self.assertTrue(result)

    def test_expired(self) -> None:
        """The token expires after a day."""
        lastMoment = clockAt(SIGNED_AT + 86400)
        self.assertEqual(verify(SECRET, SALT, VECTOR, clock=lastMoment).data, 42)
        result = verify(SECRET, SALT, VECTOR, clock=clockAt(SIGNED_AT + 86401))
        self.assertEqual(result, VerifyResult(False, error=EXPIRED))
        self.assertFalse(result)

    def test_fromTheFuture(self) -> None:
        """A token verified before its signing time is invalid."""
        result = verify(SECRET, SALT, VECTOR, clock=clockAt(SIGNED_AT - 1))
        self.assertEqual(result.error, INVALID)


class RoundTripTests(SynchronousTestCase):
    """
    Tests for data surviving L{Token.sign} and L{Token.verify}.
    """

    def setUp(self) -> None:
        self.clock = clockAt(SIGNED_AT)
        self.token = Token(generate_secret(), clock=self.clock)

    def test_values(self) -> None:
        """Ints, strings, dicts, lists and nested values round-trip."""
        for data in [
            1,
            -(2**80),
            "user:1",
            {"id": 7, "roles": ["admin", "dev"]},
            [1, 2, 300],
            {"a": ({"b": [None, True, 1.5]}, Atom("ok"))},
        ]:
            result = self.token.verify(SALT, self.token.sign(SALT, data))
            self.assertEqual(result, VerifyResult(True, data))

    def test_bytesSaltAndSecret(self) -> None:
        """Bytes and str secrets and salts are interchangeable."""
        token = sign(SECRET.encode(), SALT.encode(), 1, clock=self.clock)
        self.assertTrue(verify(SECRET, SALT, token, clock=self.clock))

    def test_wrongSaltOrSecret(self) -> None:
        """A token does not verify with another salt or secret."""
        token = sign(SECRET, SALT, 1, clock=self.clock)
        for secret, salt in [(SECRET, "other"), ("b" * 64, SALT)]:
            result = verify(secret, salt, token, clock=self.clock)
            self.assertEqual(result.error, INVALID)

    def test_defaultClock(self) -> None:
        """Without a clock or signed_at, the wall clock is used."""
        result = verify(SECRET, SALT, sign(SECRET, SALT, 5))
        self.assertEqual(result, VerifyResult(True, 5))

    def test_repr(self) -> None:
        """A Token's repr does not reveal its secret."""
        self.assertNotIn(SECRET, repr(Token(SECRET)))


class TamperingTests(SynchronousTestCase):
    """
    Tests for forged and malformed tokens.
    """

    def test_tampered(self) -> None:
        """Changing any part of a token makes it invalid."""
        header, payload, mac = VECTOR.split(".")
        forged = sign("b" * 64, SALT, 43, signed_at=SIGNED_AT).split(".")[1]
        for token in [
            f"{header}.{payload}.{mac[:-1]}A",
            f"{header}.{payload}.{mac[:-2]}",
            f"{header}.{forged}.{mac}",
            f"{header}.{payload[:-1]}.{mac}",
            f"SFMzODQ.{payload}.{mac}",
            f"{header}.{payload}.{mac}.",
            f"{header}.{payload}.{mac}=",
            f"{header}.{payload}./{mac[1:]}",
            f"{header}.{payload}.{mac}".upper(),
        ]:
            result = verify(SECRET, SALT, token, clock=clockAt(SIGNED_AT))
            self.assertEqual(result.error, INVALID)

    def test_garbage(self) -> None:
        """Malformed strings are invalid rather than errors."""
        garbage = ["", "abc", "a.b.c", "SFMyNTY..", "SFMyNTY.!!.??", "é.é.é", "..."]
        for token in garbage:
            result = verify(SECRET, SALT, token)
            self.assertEqual(result, VerifyResult(False, error=INVALID))

    def test_badTerms(self) -> None:
        """Correctly signed messages that are not valid tokens are invalid."""
        key = derive_key(SECRET.encode(), SALT.encode())
        for message in [
            b"\x83\x70",  # a fun
            b"junk",
            term_to_binary(42),
            term_to_binary((1, 2, 3, 4)),
            term_to_binary((1, "soon", 86400)),
            term_to_binary((1, SIGNED_AT * 1000, "forever")),
            term_to_binary({"data": 1, "signed": SIGNED_AT * 1000}),
        ]:
            token = sign_message(message, key)
            result = verify(SECRET, SALT, token, clock=clockAt(SIGNED_AT))
            self.assertEqual(result.error, INVALID)

    def test_missing(self) -> None:
        """None is missing; other non-strings are a programming error."""
        self.assertEqual(verify(SECRET, SALT, None), VerifyResult(False, error=MISSING))
        self.assertRaises(TypeError, verify, SECRET, SALT, VECTOR.encode())


class MaxAgeTests(SynchronousTestCase):
    """
    Tests for token lifetimes.
    """

    def setUp(self) -> None:
        self.token = Token(SECRET)

    def verifyAt(
        self, seconds: float, token: str, max_age: float | None = None
    ) -> VerifyResult:
        return self.token.verify(SALT, token, max_age=max_age, clock=clockAt(seconds))

    def test_stored(self) -> None:
        """The max_age given at signing is stored and honoured."""
        token = self.token.sign(SALT, 1, max_age=60, signed_at=SIGNED_AT)
        self.assertTrue(self.verifyAt(SIGNED_AT + 60, token))
        self.assertEqual(self.verifyAt(SIGNED_AT + 61, token).error, EXPIRED)

    def test_override(self) -> None:
        """verify's max_age overrides the stored one in both directions."""
        token = self.token.sign(SALT, 1, max_age=60, signed_at=SIGNED_AT)
        self.assertTrue(self.verifyAt(SIGNED_AT + 600, token, 3600))
        self.assertEqual(self.verifyAt(SIGNED_AT + 11, token, 10).error, EXPIRED)
        self.assertTrue(self.verifyAt(SIGNED_AT + 1.5, token, 1.5))

    def test_nonPositive(self) -> None:
        """A max_age of zero or less is always expired."""
        token = self.token.sign(SALT, 1, max_age=0, signed_at=SIGNED_AT)
        self.assertEqual(self.verifyAt(SIGNED_AT, token).error, EXPIRED)
        token = self.token.sign(SALT, 1, signed_at=SIGNED_AT)
        self.assertEqual(self.verifyAt(SIGNED_AT, token, -1).error, EXPIRED)

    def test_infinity(self) -> None:
        """math.inf is stored as :infinity and never expires."""
        token = self.token.sign(SALT, 1, max_age=math.inf, signed_at=SIGNED_AT)
        payload = base64.urlsafe_b64decode(token.split(".")[1] + "==")
        stored = (1, SIGNED_AT * 1000, Atom("infinity"))
        self.assertEqual(binary_to_term(payload), stored)
        self.assertTrue(self.verifyAt(SIGNED_AT + 10**9, token))
        stored = self.token.sign(SALT, 1, signed_at=SIGNED_AT)
        self.assertTrue(self.verifyAt(SIGNED_AT + 10**9, stored, math.inf))

    def test_none(self) -> None:
        """max_age=None at signing means the default of one day."""
        self.assertEqual(
            self.token.sign(SALT, 42, max_age=None, signed_at=SIGNED_AT), VECTOR
        )

    def test_badMaxAge(self) -> None:
        """Non-numeric or NaN max_age values are rejected."""
        self.assertRaises(TypeError, self.token.sign, SALT, 1, max_age="1")
        self.assertRaises(TypeError, self.token.verify, SALT, VECTOR, max_age=True)
        self.assertRaises(ValueError, self.token.verify, SALT, VECTOR, max_age=math.nan)
        self.assertRaises(ValueError, self.token.sign, SALT, 1, max_age=-math.inf)


class CompatibilityTests(SynchronousTestCase):
    """
    Tests for tokens in formats Elixir accepts but does not make by default.
    """

    def setUp(self) -> None:
        self.key = derive_key(SECRET.encode(), SALT.encode())
        self.clock = clockAt(SIGNED_AT + 1)

    def test_otherDigests(self) -> None:
        """HS384 and HS512 tokens, with the same key, verify."""
        message = term_to_binary((42, SIGNED_AT * 1000, 86400))
        for digest, header in [("sha384", "SFMzODQ."), ("sha512", "SFM1MTI.")]:
            token = sign_message(message, self.key, digest)
            self.assertTrue(token.startswith(header))
            self.assertEqual(verify(SECRET, SALT, token, clock=self.clock).data, 42)

    def test_pairFormat(self) -> None:
        """Plug.Crypto 1.1's {data, signed} tokens verify with a day's max_age."""
        token = sign_message(term_to_binary(("x", SIGNED_AT * 1000)), self.key)
        self.assertEqual(verify(SECRET, SALT, token, clock=self.clock).data, "x")
        later = clockAt(SIGNED_AT + 86401)
        self.assertEqual(verify(SECRET, SALT, token, clock=later).error, EXPIRED)

    def test_mapFormat(self) -> None:
        """Old Phoenix %{data: .., signed: ..} tokens verify with a day's max_age."""
        term = {Atom("data"): [1], Atom("signed"): SIGNED_AT * 1000}
        token = sign_message(term_to_binary(term), self.key)
        self.assertEqual(verify(SECRET, SALT, token, clock=self.clock).data, [1])
        later = clockAt(SIGNED_AT + 86401)
        self.assertEqual(verify(SECRET, SALT, token, clock=later).error, EXPIRED)


class KeyCacheTests(SynchronousTestCase):
    """
    Tests for caching derived keys.
    """

    def test_cached(self) -> None:
        """Each (secret, salt) pair is derived once, however often it is used."""
        derive_key.cache_clear()
        token = Token(SECRET, clock=clockAt(SIGNED_AT))
        for _ in range(3):
            token.verify(SALT, token.sign(SALT, 1))
        verify(SECRET, SALT, VECTOR)
        self.assertEqual(derive_key.cache_info().misses, 1)
        self.assertEqual(derive_key.cache_info().hits, 6)
        token.sign("other", 1)
        self.assertEqual(derive_key.cache_info().misses, 2)


class GenerateSecretTests(SynchronousTestCase):
    """
    Tests for L{generate_secret}.
    """

    def test_secret(self) -> None:
        """Secrets are 64 random printable characters by default."""
        first, second = generate_secret(), generate_secret()
        self.assertEqual(len(first), 64)
        self.assertNotEqual(first, second)
        self.assertTrue(first.isascii() and first.isprintable())
        self.assertEqual(len(generate_secret(32)), 32)
        self.assertRaises(ValueError, generate_secret, 16)


class PhoenixVectorTests(SynchronousTestCase):
    """
    Tests against the spec's Appendix C tokens, made with Phoenix's own code.
    """

    def test_compressedVerify(self) -> None:
        """Phoenix's compressed token verifies, to the map it holds."""
        result = verify(C_SECRET, C_SALT, C_COMPRESSED, max_age=math.inf)
        self.assertEqual(result, VerifyResult(True, C_COMPRESSED_DATA))
        message = b64decode(C_COMPRESSED.split(".")[1])
        self.assertEqual(message[:2], b"\x83\x50")

    def test_compressedAge(self) -> None:
        """Its stored max_age (a day from 1 795 000 000 s) is honoured."""
        for seconds, expected in [
            (C_COMPRESSED_SIGNED_AT + 86400, VerifyResult(True, C_COMPRESSED_DATA)),
            (C_COMPRESSED_SIGNED_AT + 86401, VerifyResult(False, error=EXPIRED)),
            (C_COMPRESSED_SIGNED_AT - 1, VerifyResult(False, error=INVALID)),
        ]:
            result = verify(C_SECRET, C_SALT, C_COMPRESSED, clock=clockAt(seconds))
            self.assertEqual(result, expected, seconds)

    def test_compressedSign(self) -> None:
        """compressed=True reproduces Phoenix's compressed token byte for byte."""
        token = sign(
            C_SECRET,
            C_SALT,
            C_COMPRESSED_DATA,
            signed_at=C_COMPRESSED_SIGNED_AT,
            compressed=True,
        )
        self.assertEqual(token, C_COMPRESSED)
        uncompressed = sign(
            C_SECRET, C_SALT, C_COMPRESSED_DATA, signed_at=C_COMPRESSED_SIGNED_AT
        )
        self.assertLess(len(token), len(uncompressed))

    def test_compressedOtherSalt(self) -> None:
        """Phoenix's compressed token does not verify with another salt."""
        result = verify(C_SECRET, "other salt", C_COMPRESSED, max_age=math.inf)
        self.assertEqual(result, VerifyResult(False, error=INVALID))

    def test_decrypt(self) -> None:
        """Phoenix's encrypted tokens decrypt, with max_age disabled."""
        token = Token(C_SECRET)
        for vector, data in C_ENCRYPTED:
            result = token.decrypt(C_SALT, vector, max_age=math.inf)
            self.assertEqual(result, VerifyResult(True, data), vector)
            self.assertEqual(decrypt(C_SECRET, C_SALT, vector, max_age=math.inf).data, data)

    def test_decryptOtherSalt(self) -> None:
        """Phoenix's encrypted tokens are invalid with the secret "other salt"."""
        for vector, _ in C_ENCRYPTED:
            result = decrypt(C_SECRET, "other salt", vector, max_age=math.inf)
            self.assertEqual(result, VerifyResult(False, error=INVALID))

    def test_decryptAge(self) -> None:
        """With a fixed clock, the encrypted tokens' own signed_at and max_age apply."""
        for vector, data in C_ENCRYPTED:
            for seconds, expected in [
                (C_ENCRYPTED_SIGNED_AT, VerifyResult(True, data)),
                (C_ENCRYPTED_SIGNED_AT + 86400, VerifyResult(True, data)),
                (C_ENCRYPTED_SIGNED_AT + 86401, VerifyResult(False, error=EXPIRED)),
                (C_ENCRYPTED_SIGNED_AT - 1, VerifyResult(False, error=INVALID)),
            ]:
                result = decrypt(C_SECRET, C_SALT, vector, clock=clockAt(seconds))
                self.assertEqual(result, expected, (vector, seconds))

    def test_encryptWithTheirIV(self) -> None:
        """Given Phoenix's IV, encrypting the same message gives Phoenix's token."""
        key = derive_key(C_SECRET.encode(), C_SALT.encode())
        for vector, data in C_ENCRYPTED:
            iv = b64decode(vector[len("XCP.") :])[:24]
            message = term_to_binary((data, C_ENCRYPTED_SIGNED_AT * 1000, 86400))
            self.assertEqual(encrypt_message(message, key, iv=iv), vector)
            self.assertEqual(decrypt_message(vector, key), message)

    def test_encryptBuildsTheSameMessage(self) -> None:
        """Token.encrypt seals the message Phoenix seals, under the derived key."""
        key = derive_key(C_SECRET.encode(), C_SALT.encode())
        for _, data in C_ENCRYPTED:
            token = encrypt(C_SECRET, C_SALT, data, signed_at=C_ENCRYPTED_SIGNED_AT)
            message = term_to_binary((data, C_ENCRYPTED_SIGNED_AT * 1000, 86400))
            self.assertEqual(decrypt_message(token, key), message)
            iv = b64decode(token[len("XCP.") :])[:24]
            self.assertEqual(encrypt_message(message, key, iv=iv), token)


class EncryptTests(SynchronousTestCase):
    """
    Tests for L{Token.encrypt} and L{Token.decrypt}.
    """

    def setUp(self) -> None:
        self.clock = clockAt(SIGNED_AT)
        self.token = Token(SECRET, clock=self.clock)

    def test_format(self) -> None:
        """A token is XCP. and base64url of a 24-byte IV, a 16-byte tag and the cipher text."""
        token = self.token.encrypt(SALT, 42)
        self.assertTrue(token.startswith("XCP."))
        raw = b64decode(token[4:])
        self.assertEqual(len(raw), 24 + 16 + len(term_to_binary((42, SIGNED_AT * 1000, 86400))))
        self.assertNotIn(b"\x83h\x03", raw)  # the message is not in clear

    def test_values(self) -> None:
        """Data of every kind round-trips."""
        for data in [1, "user:1", {"id": 7, "roles": ["a"]}, (None, True, 1.5), b"\xff"]:
            result = self.token.decrypt(SALT, self.token.encrypt(SALT, data))
            self.assertEqual(result, VerifyResult(True, data))

    def test_randomIV(self) -> None:
        """Each encryption has a fresh IV, so equal data gives unequal tokens."""
        tokens = {self.token.encrypt(SALT, 1) for _ in range(20)}
        self.assertEqual(len(tokens), 20)
        self.assertEqual(len({b64decode(t[4:])[:24] for t in tokens}), 20)

    def test_wrongSecret(self) -> None:
        """Another secret, secret_key_base or key option makes the token invalid."""
        encrypted = self.token.encrypt(SALT, 1)
        for token, secret in [
            (self.token, "other"),
            (Token("c" * 64, clock=self.clock), SALT),
            (Token(SECRET, clock=self.clock, key_iterations=999), SALT),
            (Token(SECRET, clock=self.clock, key_digest="sha512"), SALT),
        ]:
            self.assertEqual(token.decrypt(secret, encrypted).error, INVALID)

    def test_notInterchangeable(self) -> None:
        """An encrypted token does not verify, nor a signed one decrypt."""
        self.assertEqual(self.token.verify(SALT, self.token.encrypt(SALT, 1)).error, INVALID)
        self.assertEqual(self.token.decrypt(SALT, self.token.sign(SALT, 1)).error, INVALID)

    def test_tampered(self) -> None:
        """Flipping any bit of the IV, tag or cipher text makes the token invalid."""
        encrypted = self.token.encrypt(SALT, {"id": 1})
        raw = b64decode(encrypted[4:])
        for index in range(len(raw)):
            for bit in (0x01, 0x80):
                forged = bytearray(raw)
                forged[index] ^= bit
                token = "XCP." + b64encode(bytes(forged))
                self.assertEqual(self.token.decrypt(SALT, token).error, INVALID, index)
        for token in [
            "XCP." + b64encode(raw[:-1]),
            "XCP." + b64encode(raw + b"\x00"),
            "XCP." + b64encode(raw[:40]),
            "XCP." + b64encode(raw[:39]),
            "XCP.",
            "xcp." + encrypted[4:],
            "XCP" + encrypted[4:],
            encrypted + ".",
            encrypted + "=",
        ]:
            self.assertEqual(self.token.decrypt(SALT, token).error, INVALID, token)

    def test_additionalData(self) -> None:
        """The additional data "A128GCM" is authenticated: another one is invalid."""
        key = derive_key(SECRET.encode(), SALT.encode())
        message = term_to_binary((1, SIGNED_AT * 1000, 86400))
        other = encrypt_message(message, key, aad=b"A256GCM")
        self.assertEqual(self.token.decrypt(SALT, other).error, INVALID)
        self.assertEqual(decrypt_message(other, key, aad=b"A256GCM"), message)
        self.assertIsNone(decrypt_message(self.token.encrypt(SALT, 1), key, aad=b""))

    def test_maxAge(self) -> None:
        """max_age is stored, honoured, overridden, and infinite as for signed tokens."""
        encrypted = self.token.encrypt(SALT, 1, max_age=60)
        for seconds, max_age, expected in [
            (SIGNED_AT + 60, None, VerifyResult(True, 1)),
            (SIGNED_AT + 61, None, VerifyResult(False, error=EXPIRED)),
            (SIGNED_AT + 600, 3600, VerifyResult(True, 1)),
            (SIGNED_AT + 11, 10, VerifyResult(False, error=EXPIRED)),
            (SIGNED_AT, 0, VerifyResult(False, error=EXPIRED)),
            (SIGNED_AT + 10**9, math.inf, VerifyResult(True, 1)),
            (SIGNED_AT - 1, None, VerifyResult(False, error=INVALID)),
        ]:
            result = self.token.decrypt(
                SALT, encrypted, max_age=max_age, clock=clockAt(seconds)
            )
            self.assertEqual(result, expected, (seconds, max_age))
        forever = self.token.encrypt(SALT, 1, max_age=math.inf)
        self.assertTrue(self.token.decrypt(SALT, forever, clock=clockAt(SIGNED_AT + 10**9)))

    def test_injectedClock(self) -> None:
        """The constructor's clock is used, and advancing it expires the token."""
        encrypted = self.token.encrypt(SALT, 1)
        self.clock.advance(86400)
        self.assertTrue(self.token.decrypt(SALT, encrypted))
        self.clock.advance(1)
        self.assertEqual(self.token.decrypt(SALT, encrypted).error, EXPIRED)

    def test_signedAt(self) -> None:
        """signed_at sets the time, in seconds."""
        encrypted = encrypt(SECRET, SALT, 1, signed_at=100)
        key = derive_key(SECRET.encode(), SALT.encode())
        self.assertEqual(binary_to_term(decrypt_message(encrypted, key)), (1, 100_000, 86400))

    def test_missing(self) -> None:
        """None is missing; other non-strings are a programming error."""
        self.assertEqual(self.token.decrypt(SALT, None), VerifyResult(False, error=MISSING))
        self.assertEqual(decrypt(SECRET, SALT, None).error, MISSING)
        self.assertRaises(TypeError, self.token.decrypt, SALT, b"XCP.")
        self.assertRaises(TypeError, self.token.decrypt, SALT, 1)
        self.assertRaises(TypeError, self.token.decrypt, SALT, "XCP.", max_age="1")

    def test_keyLength(self) -> None:
        """XChaCha20 needs 32-byte keys: other key lengths cannot encrypt."""
        short = Token(SECRET, key_length=16)
        self.assertRaises(ValueError, short.encrypt, SALT, 1)
        encrypted = self.token.encrypt(SALT, 1)
        self.assertEqual(short.decrypt(SALT, encrypted).error, INVALID)
        key = derive_key(SECRET.encode(), SALT.encode())
        self.assertRaises(ValueError, encrypt_message, b"x", key, iv=b"\x00" * 12)

    def test_keyCache(self) -> None:
        """The key is derived once per secret, however many tokens use it."""
        derive_key.cache_clear()
        for _ in range(3):
            self.token.decrypt("cached", self.token.encrypt("cached", 1))
        self.assertEqual(derive_key.cache_info().misses, 1)
        self.assertEqual(derive_key.cache_info().hits, 5)

    def test_garbage(self) -> None:
        """Malformed strings are invalid rather than errors."""
        for token in ["", "XCP", "XCP.!", "XCP.é", "QTEyOEdDTQ.", "QTEyOEdDTQ.a.b.c.d", "a.b"]:
            result = self.token.decrypt(SALT, token)
            self.assertEqual(result, VerifyResult(False, error=INVALID), token)


class LegacyEncryptedTests(SynchronousTestCase):
    """
    Tests for decrypting Plug.Crypto 1.x's C{QTEyOEdDTQ.} (AES-GCM) tokens.
    """

    def setUp(self) -> None:
        self.key = derive_key(SECRET.encode(), SALT.encode())
        self.message = term_to_binary(({"id": 5}, SIGNED_AT * 1000, 86400))
        self.clock = clockAt(SIGNED_AT + 1)

    def legacy(self, cek: bytes = b"k" * 16) -> str:
        return legacyEncrypt(self.message, self.key, cek, b"w" * 12, b"i" * 12)

    def test_decrypt(self) -> None:
        """Tokens with 128, 192 and 256-bit content keys decrypt."""
        for size in (16, 24, 32):
            token = self.legacy(b"k" * size)
            self.assertTrue(token.startswith("QTEyOEdDTQ."))
            result = decrypt(SECRET, SALT, token, clock=self.clock)
            self.assertEqual(result, VerifyResult(True, {"id": 5}))

    def test_tampered(self) -> None:
        """A changed byte in any part, or a wrong secret, makes it invalid."""
        token = self.legacy()
        parts = token.split(".")
        for index in range(1, 5):
            raw = bytearray(b64decode(parts[index]))
            raw[0] ^= 1
            forged = parts[:index] + [b64encode(bytes(raw))] + parts[index + 1 :]
            result = decrypt(SECRET, SALT, ".".join(forged), clock=self.clock)
            self.assertEqual(result.error, INVALID, index)
        self.assertEqual(decrypt(SECRET, "other", token, clock=self.clock).error, INVALID)

    def test_malformed(self) -> None:
        """Wrong part counts or lengths are invalid."""
        parts = self.legacy().split(".")
        short = b64encode(b64decode(parts[3])[:-1])
        for token in [
            ".".join(parts[:4]),
            ".".join(parts + ["x"]),
            ".".join(parts[:2] + [b64encode(b"i" * 11)] + parts[3:]),
            ".".join(parts[:4] + [short]),
            ".".join(parts[:1] + [b64encode(b64decode(parts[1])[1:])] + parts[2:]),
        ]:
            self.assertEqual(decrypt(SECRET, SALT, token, clock=self.clock).error, INVALID)


class CompressedTokenTests(SynchronousTestCase):
    """
    Tests for compressed tokens and the cap on what they inflate to.
    """

    def setUp(self) -> None:
        self.clock = clockAt(SIGNED_AT)
        self.token = Token(SECRET, clock=self.clock)
        self.key = derive_key(SECRET.encode(), SALT.encode())

    def test_roundTrip(self) -> None:
        """Compressed tokens verify and decrypt, and are shorter for large data."""
        data = {"permissions": ["read:everything"] * 50}
        signed = self.token.sign(SALT, data, compressed=True)
        self.assertLess(len(signed), len(self.token.sign(SALT, data)))
        self.assertEqual(self.token.verify(SALT, signed), VerifyResult(True, data))
        encrypted = self.token.encrypt(SALT, data, compressed=True)
        self.assertLess(len(encrypted), len(self.token.encrypt(SALT, data)))
        self.assertEqual(self.token.decrypt(SALT, encrypted), VerifyResult(True, data))

    def test_smallStaysPlain(self) -> None:
        """Data that compression would not shrink is signed uncompressed, as Erlang does."""
        self.assertEqual(sign(SECRET, SALT, 42, signed_at=SIGNED_AT, compressed=True), VECTOR)

    def signed(self, message: bytes) -> str:
        return sign_message(message, self.key)

    def test_cap(self) -> None:
        """A token inflating past 64 KiB is invalid; the cap is configurable."""
        data = "x" * 70_000
        signed = self.token.sign(SALT, data, max_age=math.inf, compressed=True)
        self.assertLess(len(signed), 1000)
        self.assertEqual(self.token.verify(SALT, signed).error, INVALID)
        encrypted = self.token.encrypt(SALT, data, max_age=math.inf, compressed=True)
        self.assertEqual(self.token.decrypt(SALT, encrypted).error, INVALID)
        roomy = Token(SECRET, max_decompressed_size=100_000)
        self.assertEqual(roomy.verify(SALT, signed).data, data)
        self.assertEqual(roomy.decrypt(SALT, encrypted).data, data)
        self.assertEqual(verify(SECRET, SALT, signed, max_decompressed_size=100_000).data, data)
        self.assertEqual(
            decrypt(SECRET, SALT, encrypted, max_decompressed_size=100_000).data, data
        )
        tight = Token(SECRET, max_decompressed_size=100)
        small = self.token.sign(SALT, "y" * 200, max_age=math.inf, compressed=True)
        self.assertEqual(self.token.verify(SALT, small).data, "y" * 200)
        self.assertEqual(tight.verify(SALT, small).error, INVALID)
        self.assertRaises(ValueError, Token, SECRET, max_decompressed_size=-1)

    def test_capBoundary(self) -> None:
        """A message of exactly the cap's size is accepted, one byte more is not."""
        cap = DEFAULT_MAX_DECOMPRESSED_SIZE
        self.assertEqual(cap, 65536)
        for size, ok in [(cap, True), (cap + 1, False)]:
            # {binary, signed_at_ms, :infinity}: 2 + 5 + 9 + 10 bytes around the data.
            data = "z" * (size - 26)
            message = term_to_binary((data, SIGNED_AT * 1000, Atom("infinity")), compressed=True)
            self.assertEqual(struct.unpack(">I", message[2:6])[0], size)
            result = self.token.verify(SALT, self.signed(message))
            self.assertEqual(result.ok, ok, size)

    def test_bombDeclaringLittle(self) -> None:
        """A signed message declaring 100 bytes but inflating to 10 MB is invalid, cheaply."""
        stream = zlib.compress(b"\x6b" + b"\x00" * 10_000_000, 9)
        message = struct.pack(">BBI", 131, 80, 100) + stream
        assertRefusedCheaply(self, self.token.verify, SALT, self.signed(message))
        sealed = encrypt_message(message, self.key)
        assertRefusedCheaply(self, self.token.decrypt, SALT, sealed)

    def test_bombDeclaringMuch(self) -> None:
        """A message declaring 4 GB is invalid before anything is inflated."""
        stream = zlib.compress(b"\x6b" + b"\x00" * 10_000_000, 9)
        message = struct.pack(">BBI", 131, 80, 2**32 - 1) + stream
        assertRefusedCheaply(self, self.token.verify, SALT, self.signed(message))
        assertRefusedCheaply(self, self.token.decrypt, SALT, encrypt_message(message, self.key))

    def test_badStreams(self) -> None:
        """Truncated or garbage zlib inside an authentic token is invalid."""
        good = term_to_binary(("w" * 500, SIGNED_AT * 1000, 86400), compressed=True)
        self.assertTrue(self.token.verify(SALT, self.signed(good)))
        for message in [
            good[:-1],
            good[:-10],
            good[:6],
            good[:4],
            good[:6] + b"not zlib at all",
            good + b"\x00",
            good[:2] + struct.pack(">I", 5) + good[6:],
        ]:
            result = self.token.verify(SALT, self.signed(message))
            self.assertEqual(result, VerifyResult(False, error=INVALID))
            result = self.token.decrypt(SALT, encrypt_message(message, self.key))
            self.assertEqual(result, VerifyResult(False, error=INVALID))


class CanonicalBase64Tests(SynchronousTestCase):
    """
    Tests for refusing token parts that are not in canonical base64url.
    """

    def test_signedParts(self) -> None:
        """Setting the unused low bits of any part of a signed token makes it invalid."""
        clock = clockAt(SIGNED_AT)
        self.assertTrue(verify(SECRET, SALT, VECTOR, clock=clock))
        parts = VECTOR.split(".")
        for index in range(3):
            changed = parts[:index] + [nonCanonical(parts[index])] + parts[index + 1 :]
            self.assertEqual(b64decode(changed[index]), b64decode(parts[index]))
            result = verify(SECRET, SALT, ".".join(changed), clock=clock)
            self.assertEqual(result, VerifyResult(False, error=INVALID), index)

    def test_encrypted(self) -> None:
        """The same holds for an encrypted token's body."""
        token = Token(SECRET)
        candidates = [(C_ENCRYPTED[0][0], C_SECRET, C_SALT)] + [
            (token.encrypt(SALT, data, max_age=math.inf), SECRET, SALT)
            for data in [1, "ab", "abc"]
        ]
        remainders = set()
        for candidate, secret, salt in candidates:
            self.assertTrue(decrypt(secret, salt, candidate, max_age=math.inf))
            body = candidate[len("XCP.") :]
            if len(body) % 4 == 0:
                continue  # no unused bits to set
            remainders.add(len(body) % 4)
            changed = "XCP." + nonCanonical(body)
            self.assertEqual(b64decode(changed[4:]), b64decode(body))
            result = decrypt(secret, salt, changed, max_age=math.inf)
            self.assertEqual(result, VerifyResult(False, error=INVALID))
        self.assertEqual(remainders, {2, 3})

    def test_legacyParts(self) -> None:
        """And for every part of a Plug.Crypto 1.x encrypted token."""
        key = derive_key(SECRET.encode(), SALT.encode())
        message = term_to_binary((1, SIGNED_AT * 1000, 86400))
        token = legacyEncrypt(message, key, b"k" * 16, b"w" * 12, b"i" * 12)
        clock = clockAt(SIGNED_AT)
        self.assertTrue(decrypt(SECRET, SALT, token, clock=clock))
        parts = token.split(".")
        changedAny = False
        for index in range(1, 5):
            if len(parts[index]) % 4 == 0:
                continue  # no unused bits to set
            changedAny = True
            changed = parts[:index] + [nonCanonical(parts[index])] + parts[index + 1 :]
            result = decrypt(SECRET, SALT, ".".join(changed), clock=clock)
            self.assertEqual(result, VerifyResult(False, error=INVALID), index)
        self.assertTrue(changedAny)

    def test_padding(self) -> None:
        """Padding, which Plug.Crypto never writes, is refused."""
        parts = VECTOR.split(".")
        padded = ".".join(p + "=" * (-len(p) % 4) for p in parts)
        self.assertEqual(verify(SECRET, SALT, padded, clock=clockAt(SIGNED_AT)).error, INVALID)


_tokenChars = st.sampled_from(_ALPHABET + ".=+/ é")


class PropertyTests(SynchronousTestCase):
    """
    Hypothesis properties of signing, encrypting and corruption.
    """

    token = Token(SECRET, clock=clockAt(SIGNED_AT))

    @given(terms, st.booleans())
    def test_signRoundTrip(self, data: object, compressed: bool) -> None:
        """Whatever is signed verifies to itself."""
        token = self.token.sign(SALT, data, compressed=compressed)
        self.assertEqual(self.token.verify(SALT, token), VerifyResult(True, data))

    @given(terms, st.booleans())
    def test_encryptRoundTrip(self, data: object, compressed: bool) -> None:
        """Whatever is encrypted decrypts to itself."""
        token = self.token.encrypt(SALT, data, compressed=compressed)
        self.assertEqual(self.token.decrypt(SALT, token), VerifyResult(True, data))

    @settings(max_examples=300)
    @given(st.data(), st.booleans(), st.booleans())
    def test_corruption(self, draw: st.DataObject, encrypted: bool, compressed: bool) -> None:
        """Changing, dropping or inserting any character makes a token invalid, never an error."""
        data = {"id": 1, "name": "n" * 30}
        if encrypted:
            token = self.token.encrypt(SALT, data, compressed=compressed)
            check = self.token.decrypt
        else:
            token = self.token.sign(SALT, data, compressed=compressed)
            check = self.token.verify
        index = draw.draw(st.integers(min_value=0, max_value=len(token) - 1))
        char = draw.draw(_tokenChars)
        kind = draw.draw(st.sampled_from(["replace", "delete", "insert"]))
        if kind == "replace":
            corrupted = token[:index] + char + token[index + 1 :]
        elif kind == "delete":
            corrupted = token[:index] + token[index + 1 :]
        else:
            corrupted = token[:index] + char + token[index:]
        if corrupted == token:
            return
        self.assertEqual(check(SALT, corrupted), VerifyResult(False, error=INVALID))

    @given(st.text(max_size=200))
    def test_garbage(self, text: str) -> None:
        """Arbitrary text is invalid for verify and decrypt, never an error."""
        for check in (self.token.verify, self.token.decrypt):
            self.assertEqual(check(SALT, text), VerifyResult(False, error=INVALID))
            for prefix in ("SFMyNTY.", "XCP.", "QTEyOEdDTQ."):
                self.assertEqual(check(SALT, prefix + text), VerifyResult(False, error=INVALID))

    @given(st.binary(max_size=300))
    def test_authenticGarbage(self, message: bytes) -> None:
        """Authentic tokens around arbitrary bytes are ok or invalid, never an error."""
        key = derive_key(SECRET.encode(), SALT.encode())
        for candidate in (message, b"\x83\x50" + message, b"\x83" + message):
            for result in (
                self.token.verify(SALT, sign_message(candidate, key)),
                self.token.decrypt(SALT, encrypt_message(candidate, key)),
            ):
                self.assertIsInstance(result, VerifyResult)
                self.assertIn(result.error, (None, INVALID, EXPIRED))
