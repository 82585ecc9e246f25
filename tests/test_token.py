"""
Tests for L{twisted_phoenix.token}.
"""

from __future__ import annotations

import base64
import math

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_phoenix._etf import Atom, binary_to_term, term_to_binary
from twisted_phoenix.token import (
    EXPIRED,
    INVALID,
    MISSING,
    Token,
    VerifyResult,
    derive_key,
    generate_secret,
    sign,
    sign_message,
    verify,
)

SECRET = "a" * 64
SALT = "user auth"
SIGNED_AT = 1_700_000_000
VECTOR = "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x2GV8fzmggTQdkMlzdkfE2mSNoVoWKMMirhPRqMzXSc"


def clockAt(seconds: float) -> Clock:
    clock = Clock()
    clock.advance(seconds)
    return clock


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
