"""
Rate limits (GCRA in PostgreSQL, shared by every process) and the failed
sign-in limits built on them: growing delays per account and per address,
no permanent lock-out, audited.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.support.dashboard import PASSWORD, start_dashboard
from tests.support.postgres import fresh_database, started_database
from veil.auth.accounts import Client, SignInRefused
from veil.auth.ratelimit import Limit, RateLimiter, Tier, ip_bucket
from veil.store.db import Database

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class GcraTests(TestCase):
    """The limiter's arithmetic on a real PostgreSQL, with explicit times."""

    timeout = 60

    def _db(self) -> Database:
        db = Database(fresh_database(self), reactor, min_size=1, max_size=2)
        db.start()
        self.addCleanup(db.close)
        return db

    async def test_burst_then_rate(self) -> None:
        """Five at once, the sixth waits 30 s; 30 s later one more; then waits again."""
        limiter = RateLimiter(self._db(), b"k" * 32)
        limit = Limit("t", (Tier(5, 30.0),))
        results = [await limiter.hit(limit, "a", T0) for _ in range(6)]
        self.assertEqual(results[:5], [None] * 5)
        self.assertAlmostEqual(results[5], 30.0)
        self.assertIsNone(await limiter.hit(limit, "a", T0 + timedelta(seconds=30)))
        self.assertAlmostEqual(await limiter.hit(limit, "a", T0 + timedelta(seconds=30)), 30.0)
        self.assertIsNone(await limiter.hit(limit, "b", T0), "another value has its own bucket")

    async def test_shared_between_processes(self) -> None:
        """Two connection pools (two processes) draw from the same bucket."""
        conninfo = fresh_database(self)
        pools = []
        for _ in range(2):
            db = started_database(self, conninfo, max_size=2)
            pools.append(RateLimiter(db, b"k" * 32))
        limit = Limit("t", (Tier(4, 60.0),))
        results = [await pools[i % 2].hit(limit, "a", T0) for i in range(6)]
        self.assertEqual([r is None for r in results], [True] * 4 + [False] * 2)

    async def test_tiers_all_or_nothing(self) -> None:
        """A refused hit charges no tier; the slower tier brings the long waits."""
        limiter = RateLimiter(self._db(), b"k" * 32)
        limit = Limit("t", (Tier(2, 10.0), Tier(3, 1000.0)))
        at = T0
        self.assertIsNone(await limiter.hit(limit, "a", at))
        self.assertIsNone(await limiter.hit(limit, "a", at))
        self.assertAlmostEqual(await limiter.hit(limit, "a", at), 10.0)
        at += timedelta(seconds=10)
        self.assertIsNone(await limiter.hit(limit, "a", at))
        at += timedelta(seconds=10)
        wait = await limiter.hit(limit, "a", at)
        self.assertGreater(wait, 900)
        at += timedelta(seconds=wait)
        self.assertIsNone(await limiter.hit(limit, "a", at), "waiting always opens the door")

    async def test_refund_and_reset(self) -> None:
        """A refund gives one hit back; a reset empties the bucket."""
        limiter = RateLimiter(self._db(), b"k" * 32)
        limit = Limit("t", (Tier(1, 60.0),))
        self.assertIsNone(await limiter.hit(limit, "a", T0))
        self.assertIsNotNone(await limiter.hit(limit, "a", T0))
        await limiter.refund(limit, "a")
        self.assertIsNone(await limiter.hit(limit, "a", T0))
        await limiter.reset(limit, "a")
        self.assertIsNone(await limiter.hit(limit, "a", T0))

    async def test_keys_hide_values(self) -> None:
        """Bucket keys carry an HMAC of the value, never the value."""
        db = self._db()
        limiter = RateLimiter(db, b"k" * 32)
        await limiter.hit(Limit("login", (Tier(5, 60.0),)), "bob@example.com", T0)
        [(key,)] = await db.query("test.keys", "SELECT key FROM rate_limits")
        self.assertNotIn("bob", key)
        self.assertTrue(key.startswith("login:0:"))

    def test_ip_buckets(self) -> None:
        """IPv4 addresses are limited one by one, IPv6 per /64."""
        self.assertEqual(ip_bucket("203.0.113.7"), "203.0.113.7")
        self.assertEqual(ip_bucket("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(ip_bucket("::ffff:203.0.113.7"), "203.0.113.7")


class SignInLimitTests(TestCase):
    """Failed sign-ins are limited per account and per address, with growing delays."""

    timeout = 120

    async def test_account(self) -> None:
        """
        After 5 failures the account waits a minute between attempts (the
        right password too, with the same answer); after the wait, it signs
        in, and the count starts again.
        """
        running = await start_dashboard(self)
        await running.user("kim@example.com")
        browser = running.browser()
        await browser.get("/login")
        codes = []
        for _ in range(6):
            reply = await browser.form("/login", {"email": "kim@example.com", "password": "nope" * 4})
            codes.append(reply.code)
        self.assertEqual(codes, [401] * 5 + [429])
        # A minute from the first failure, less the seconds the five attempts took.
        self.assertTrue(50 <= int(reply.header("retry-after")) <= 60, reply.header("retry-after"))
        self.assertIn("Too many attempts", reply.text)
        right = await browser.form("/login", {"email": "kim@example.com", "password": PASSWORD})
        self.assertEqual(right.code, 429)
        # Another address is not affected by this account's limit.
        other = running.browser()
        await other.get("/login")
        running.clock.advance(61)
        ok = await browser.form("/login", {"email": "kim@example.com", "password": PASSWORD})
        self.assertEqual(ok.code, 303)
        self.assertGreaterEqual(len(await running.audit("auth.rate_limited")), 2)
        failures = await running.audit("auth.sign_in_failed")
        self.assertEqual(len(failures), 5)
        self.assertNotIn("kim@", str(failures))
        self.assertEqual(failures[0][3], "127.0.0.1")

    async def test_growing_delays(self) -> None:
        """Past 20 failures in a row the account waits an hour: slower, never locked for good."""
        running = await start_dashboard(self)
        await running.user("kim@example.com")
        accounts = running.accounts
        waits = []
        for _ in range(60):
            try:
                await accounts.sign_in_password("kim@example.com", "wrong" * 3,
                                                Client(f"198.51.100.{len(waits)}"))
            except SignInRefused as e:
                if e.retry_after is not None:
                    waits.append(e.retry_after)
                    running.clock.advance(e.retry_after)
        self.assertTrue(50 < waits[0] <= 60, waits[0])
        self.assertGreater(max(waits), 1000)
        running.clock.advance(3600)
        grant = await accounts.sign_in_password("kim@example.com", PASSWORD, Client("192.0.2.1"))
        self.assertEqual(grant.user.email, "kim@example.com")

    async def test_address(self) -> None:
        """One address failing on many accounts is limited too."""
        running = await start_dashboard(self)
        browser = running.browser()
        await browser.get("/login")
        codes = []
        for i in range(11):
            reply = await browser.form("/login", {"email": f"u{i}@example.com",
                                                  "password": "nope" * 4})
            codes.append(reply.code)
        self.assertEqual(codes, [401] * 10 + [429])


class CleanUpTests(TestCase):
    """The auth clean-up job deletes what has expired, and nothing else."""

    timeout = 60

    async def test_clean_up(self) -> None:
        """Idle sessions, old links and drained buckets go; live ones stay."""
        running = await start_dashboard(self)
        accounts = running.accounts
        await accounts.create_setup_link()
        await running.user("kim@example.com")
        stale = await running.sign_in("kim@example.com")
        running.clock.advance(29 * 60)
        live = await running.sign_in("kim@example.com")
        await accounts.limiter.hit(Limit("drained", (Tier(5, 10.0),)), "x", accounts.now())
        running.clock.advance(2 * 60)
        await accounts.limiter.hit(Limit("fresh", (Tier(5, 600.0),)), "x", accounts.now())
        removed = await accounts.store.clean_up(accounts.now(), accounts.idle)
        self.assertEqual(removed["sessions"], 1)
        self.assertEqual(removed["links"], 0)
        buckets = await running.db.query("test.buckets", "SELECT key FROM rate_limits")
        self.assertEqual([k.split(":")[0] for (k,) in buckets], ["fresh"])
        self.assertEqual((await stale.api("GET", "/api/v1/me")).code, 401)
        self.assertEqual((await live.api("GET", "/api/v1/me")).code, 200)
        running.clock.advance(86400 + 3600)
        removed = await accounts.store.clean_up(accounts.now(), accounts.idle)
        self.assertEqual(removed["links"], 1)
        self.assertEqual(removed["sessions"], 1)
