"""Tests for L{veil.auth.credentials}: secrets, API token format, PKCE."""

from __future__ import annotations

import base64
import hashlib

from twisted.trial.unittest import SynchronousTestCase

from veil.auth import credentials


class SecretTests(SynchronousTestCase):
    """Secrets are 256 random bits in base64url; only their SHA-256 is kept."""

    def test_shape_and_uniqueness(self) -> None:
        """A secret is 43 base64url characters (32 bytes), and never repeats."""
        made = {credentials.new_secret() for _ in range(200)}
        self.assertEqual(len(made), 200)
        for secret in made:
            self.assertTrue(credentials.looks_like_secret(secret))
            raw = base64.urlsafe_b64decode(secret + "=")
            self.assertEqual(len(raw), 32)

    def test_digest(self) -> None:
        """The stored digest is the SHA-256 of the secret's text."""
        secret = credentials.new_secret()
        self.assertEqual(credentials.digest(secret), hashlib.sha256(secret.encode()).digest())

    def test_looks_like_secret(self) -> None:
        """Anything but 43 base64url characters is refused before any lookup."""
        for text in ("", "a" * 42, "a" * 44, "a" * 42 + "=", "a" * 42 + "/", "é" * 43):
            self.assertFalse(credentials.looks_like_secret(text), text)

    def test_keyed_separates_purposes(self) -> None:
        """The same value under the same key differs by purpose."""
        key = b"k" * 32
        self.assertNotEqual(credentials.keyed(key, "a", "v"), credentials.keyed(key, "b", "v"))
        self.assertEqual(credentials.keyed(key, "a", "v"), credentials.keyed(key, "a", b"v"))


class ApiTokenTests(SynchronousTestCase):
    """API tokens have a recognisable prefix and a checksum."""

    def test_format(self) -> None:
        """veil_pat_, 43 random characters, _, six base62 characters of CRC-32."""
        token = credentials.new_api_token()
        self.assertRegex(token, r"^veil_pat_[A-Za-z0-9_-]{43}_[0-9A-Za-z]{6}$")
        self.assertTrue(credentials.is_api_token(token))
        self.assertEqual(credentials.display_prefix(token), token[:15])

    def test_checksum_catches_typos(self) -> None:
        """Changing any one character of the body or checksum makes it invalid."""
        token = credentials.new_api_token()
        for index in (len("veil_pat_"), len("veil_pat_") + 20, len(token) - 1):
            replacement = "A" if token[index] != "A" else "B"
            typo = token[:index] + replacement + token[index + 1:]
            self.assertFalse(credentials.is_api_token(typo))
        self.assertFalse(credentials.is_api_token("gho_" + token[4:]))
        self.assertFalse(credentials.is_api_token(token + "x"))


class PkceTests(SynchronousTestCase):
    """The S256 challenge of RFC 7636."""

    def test_rfc7636_example(self) -> None:
        """The example of RFC 7636 appendix B."""
        self.assertEqual(credentials.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
                         "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")
