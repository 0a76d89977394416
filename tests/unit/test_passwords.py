"""Tests for L{veil.auth.passwords}: the rules for new passwords, and argon2id off the reactor."""

from __future__ import annotations

import unicodedata

from argon2 import PasswordHasher as Argon2
from argon2 import profiles
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase, TestCase

from veil.auth.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    HasherBusy,
    PasswordHasher,
    PasswordRules,
    WeakPassword,
    load_common_passwords,
    normalise,
)

GOOD = "orbit velvet canyon 42"


class RulesTests(SynchronousTestCase):
    """NIST SP 800-63B rules: length, no composition rules, no common passwords."""

    rules = PasswordRules()

    def test_length_boundaries(self) -> None:
        """11 and 129 characters are refused, 12 and 128 accepted."""
        self.assertIsNotNone(self.rules.problem("q7Zr!m2Kx9Lp"[:MIN_LENGTH - 1]))
        self.assertIsNone(self.rules.problem("q7Zr!m2Kx9Lp"[:MIN_LENGTH]))
        long = ("vxk3" * 40)[:MAX_LENGTH]
        self.assertIsNone(self.rules.problem(long))
        self.assertIsNotNone(self.rules.problem(long + "z"))

    def test_no_composition_rules(self) -> None:
        """Lower-case letters and spaces alone are fine when long enough."""
        self.assertIsNone(self.rules.problem("correct horse battery staple"))

    def test_common_passwords(self) -> None:
        """A listed password is refused whatever its case; repeated characters too."""
        for password in ("password1234", "Password1234", "QWERTYUIOP123", "123456789012",
                         "aaaaaaaaaaaaaaa", "iloveyou2024!"):
            self.assertIsNotNone(self.rules.problem(password), password)
        with self.assertRaises(WeakPassword):
            self.rules.check("letmein123456")

    def test_own_address(self) -> None:
        """The account's address or its local part (with digits) is refused."""
        email = "margaret.hamilton@example.com"
        self.assertIsNotNone(self.rules.problem(email, email))
        self.assertIsNotNone(self.rules.problem("margaret.hamilton", email))
        self.assertIsNotNone(self.rules.problem("margaret.hamilton1969", email))
        self.assertIsNone(self.rules.problem(GOOD, email))

    def test_unicode_counted_after_normalisation(self) -> None:
        """Length counts NFKC characters; accents are allowed and kept."""
        decomposed = unicodedata.normalize("NFD", "éléphant rosé")
        self.assertIsNone(self.rules.problem(decomposed))
        self.assertEqual(normalise(decomposed), unicodedata.normalize("NFKC", "éléphant rosé"))

    def test_shipped_list(self) -> None:
        """The shipped list is lower case, 12+ characters, and big enough to matter."""
        common = load_common_passwords()
        self.assertGreater(len(common), 5000)
        for password in common:
            self.assertEqual(password, password.lower())
            self.assertGreaterEqual(len(password), MIN_LENGTH)


class HasherTests(TestCase):
    """argon2id with RFC 9106's second recommendation, on its own threads."""

    timeout = 60

    async def asyncStart(self, **kwargs: object) -> PasswordHasher:
        hasher = PasswordHasher(reactor, **kwargs)
        await hasher.start()
        self.addCleanup(hasher.stop)
        return hasher

    async def test_parameters(self) -> None:
        """The hash is argon2id, m=64 MiB, t=3, p=4, and verifies the password only."""
        hasher = await self.asyncStart()
        hashed = await hasher.hash(GOOD)
        self.assertTrue(hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$"))
        self.assertTrue((await hasher.verify(hashed, GOOD)).ok)
        self.assertFalse((await hasher.verify(hashed, GOOD.upper())).ok)

    async def test_normalised(self) -> None:
        """A password typed decomposed verifies against the composed one."""
        hasher = await self.asyncStart()
        hashed = await hasher.hash("éléphant rosé 1")
        verdict = await hasher.verify(hashed, unicodedata.normalize("NFD", "éléphant rosé 1"))
        self.assertTrue(verdict.ok)

    async def test_unknown_account(self) -> None:
        """With no stored hash the answer is no, after the same work."""
        hasher = await self.asyncStart()
        self.assertFalse((await hasher.verify(None, GOOD)).ok)
        self.assertFalse((await hasher.verify("not-a-hash", GOOD)).ok)

    async def test_rehash_weaker(self) -> None:
        """A hash with weaker parameters verifies and comes with a new, stronger one."""
        hasher = await self.asyncStart()
        weak = Argon2.from_parameters(profiles.CHEAPEST).hash(GOOD)
        verdict = await hasher.verify(weak, GOOD)
        self.assertTrue(verdict.ok)
        self.assertIsNotNone(verdict.rehash)
        self.assertIn("m=65536,t=3,p=4", verdict.rehash)
        self.assertIsNone((await hasher.verify(verdict.rehash, GOOD)).rehash)

    async def test_bounded_queue(self) -> None:
        """Beyond threads + queue, hashing fails at once with HasherBusy."""
        hasher = await self.asyncStart(threads=1, queue=1)
        first, second = hasher.hash(GOOD), hasher.hash(GOOD)
        refused = hasher.hash(GOOD)
        self.failureResultOf(refused, HasherBusy)
        await gatherResults([first, second])
        self.assertEqual(hasher.pending, 0)

    async def test_reactor_keeps_running(self) -> None:
        """While several hashes run, the reactor keeps firing timers."""
        hasher = await self.asyncStart(threads=2)
        ticks = []
        ticker = LoopingCall(lambda: ticks.append(reactor.seconds()))
        ticker.start(0.005)
        try:
            await gatherResults([hasher.hash(GOOD) for _ in range(4)])
        finally:
            ticker.stop()
        self.assertGreater(len(ticks), 3)
