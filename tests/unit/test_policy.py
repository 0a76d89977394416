"""Tests for L{veil.edge.policy.IssuancePolicy}."""

from __future__ import annotations

import uuid

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from veil.edge.policy import IssuancePolicy
from veil.errors import IssuanceRefused
from veil.store.sites import Site


def site(domain: str, status: str) -> Site:
    return Site(uuid.uuid4(), domain, "http://127.0.0.1:9000", status, "block", 1, False,
                False, True)


class NamePolicyTests(SynchronousTestCase):
    """Only verified sites and the dashboard host may get certificates."""

    def setUp(self) -> None:
        self.sites = {s.domain: s for s in (
            site("live.test", "live"), site("active.test", "active"),
            site("prov.test", "ssl_provisioning"), site("err.test", "error"),
            site("pending.test", "pending"), site("off.test", "disabled"))}
        self.policy = IssuancePolicy(self.sites.get, "dash.test", Clock())

    def test_verified_statuses_allowed(self) -> None:
        """active, ssl_provisioning, live (and error, after a failed issuance) qualify."""
        for name in ("live.test", "active.test", "prov.test", "err.test"):
            self.assertIs(self.policy.check_name(name), self.sites[name])

    def test_dashboard_host_allowed(self) -> None:
        """The dashboard's own host name qualifies, with no site."""
        self.assertIsNone(self.policy.check_name("dash.test"))

    def test_others_refused(self) -> None:
        """Unknown names and sites without verified DNS are refused, saying why."""
        e = self.assertRaises(IssuanceRefused, self.policy.check_name, "nobody.test")
        self.assertIn("not a site", str(e))
        for name in ("pending.test", "off.test"):
            e = self.assertRaises(IssuanceRefused, self.policy.check_name, name)
            self.assertIn("DNS not verified", str(e))


class RatePolicyTests(SynchronousTestCase):
    """Failures back off per name; a token bucket caps issuances per minute."""

    def test_backoff_doubles(self) -> None:
        """After failures a name waits 60, 120, 240 s... and is free again after success."""
        clock = Clock()
        policy = IssuancePolicy(lambda n: None, None, clock, backoff_base=60.0)
        self.assertEqual(policy.failed("a.test"), 60.0)
        self.assertRaises(IssuanceRefused, policy.check_rate, "a.test")
        clock.advance(59)
        self.assertRaises(IssuanceRefused, policy.check_rate, "a.test")
        clock.advance(1)
        policy.check_rate("a.test")
        self.assertEqual(policy.failed("a.test"), 120.0)
        self.assertEqual(policy.failed("a.test"), 240.0)
        policy.succeeded("a.test")
        policy.check_rate("a.test")
        policy.check_rate("b.test")  # other names were never affected

    def test_backoff_capped(self) -> None:
        """The back-off stops growing at its maximum."""
        policy = IssuancePolicy(lambda n: None, None, Clock(), backoff_base=60.0,
                                backoff_max=3600.0)
        self.assertEqual(policy.retry_delay(30), 3600.0)

    def test_backoff_from_elsewhere(self) -> None:
        """A back-off recorded by another node is respected here."""
        clock = Clock()
        policy = IssuancePolicy(lambda n: None, None, clock)
        policy.backing_off("c.test", 3, clock.seconds() + 500)
        e = self.assertRaises(IssuanceRefused, policy.check_rate, "c.test")
        self.assertIn("3 time(s)", str(e))

    def test_token_bucket(self) -> None:
        """At most per_minute issuances at once, then one more per 60/per_minute seconds."""
        clock = Clock()
        policy = IssuancePolicy(lambda n: None, None, clock, per_minute=3)
        for i in range(3):
            policy.check_rate(f"n{i}.test")
        e = self.assertRaises(IssuanceRefused, policy.check_rate, "n3.test")
        self.assertIn("rate limit", str(e))
        clock.advance(20)
        policy.check_rate("n3.test")
        self.assertRaises(IssuanceRefused, policy.check_rate, "n4.test")
