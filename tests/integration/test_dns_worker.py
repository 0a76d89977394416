"""
Tests for the DNS verification worker and "Check now" (L{veil.workers.dns},
L{veil.store.dns}) against a real PostgreSQL and a DNS server on loopback,
with the worker's clock injected.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.integration.test_dns_check import SETTINGS, world
from tests.integration.test_service import make_service
from tests.support.dns_server import NetworkWithClock, a, cname, dns_server_for, txt
from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil.dns.resolver import StubResolver
from veil.store.admin import SiteNotFound
from veil.store.dns import CheckTooSoon, DnsCheckStore, Schedule
from veil.store.listener import ListenerService
from veil.store.locks import LockSession
from veil.store.sites import SiteStore, SiteTable
from veil.workers.dns import DnsVerifier, dns_worker

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DOMAIN = "shop.example.test"


def add_site(conninfo: str, domain: str = DOMAIN, created: datetime = T0,
             status: str = "pending") -> tuple[uuid.UUID, str]:
    """A site created at C{created}; returns its id and DNS token."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        owner = conn.execute(
            "INSERT INTO users (email) VALUES (%s) RETURNING id",
            (f"{uuid.uuid4().hex[:8]}@example.test",)).fetchone()[0]
        return conn.execute(
            "INSERT INTO sites (owner_id, domain, upstream, status, created_at)"
            " VALUES (%s, %s, 'http://192.0.2.10', %s, %s) RETURNING id, dns_token",
            (owner, domain, status, created)).fetchone()


def rows(conninfo: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


class ScheduleTests(SynchronousTestCase):
    """The back-off between checks of a pending site."""

    def test_delays(self) -> None:
        """2, 4, 8, 16, 32 minutes after the first to fifth failed checks, then hourly."""
        schedule = Schedule()
        self.assertEqual([schedule.delay(n) for n in range(1, 9)],
                         [120, 240, 480, 960, 1920, 3600, 3600, 3600])
        self.assertEqual(schedule.delay(10_000), 3600)
        self.assertEqual((schedule.first, schedule.give_up), (60, 7 * 86400))


class WorkerCase(TestCase):
    """Base: a migrated database, a DNS server, and a verifier on an injected clock."""

    timeout = 60

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.db = started_database(self, self.conninfo)
        self.server = dns_server_for(self, world())
        self.world = self.server.world
        self.clock = Clock()
        self.clock.advance(T0.timestamp())
        self.verifier = self.make_verifier(StubResolver(reactor, (self.server.server,),
                                                        timeout=2, attempts=1))

    def make_verifier(self, resolver: StubResolver) -> DnsVerifier:
        return DnsVerifier(resolver, SETTINGS, DnsCheckStore(self.db), self.clock)

    def at(self, seconds: float) -> None:
        """Set the clock to C{seconds} after T0."""
        self.clock.advance(T0.timestamp() + seconds - self.clock.seconds())

    def point_at_veil(self, token: str, domain: str = DOMAIN) -> None:
        self.world.set(domain, cname("edge.veil.test"))
        self.world.set(f"_veil.{domain}", txt(token))

    def state(self, site_id: uuid.UUID) -> dict[str, Any]:
        [row] = rows(self.conninfo,
                     "SELECT s.status, s.status_detail, s.dns_verified_at, s.dns_checked_at,"
                     " c.attempts, c.started_at, c.last_checked_at, c.next_check_at,"
                     " c.last_ok, c.last_report, c.gave_up_at FROM sites s"
                     " LEFT JOIN site_dns_checks c ON c.site_id = s.id WHERE s.id = %s",
                     (site_id,))
        keys = ("status", "detail", "verified_at", "dns_checked_at", "attempts", "started_at",
                "last_checked_at", "next_check_at", "last_ok", "report", "gave_up_at")
        return dict(zip(keys, row))

    def audit(self, site_id: uuid.UUID) -> list[tuple]:
        return rows(self.conninfo, "SELECT action, actor_user_id, detail FROM audit_log"
                    " WHERE target_id = %s ORDER BY id", (str(site_id),))


class BackoffTests(WorkerCase):
    """Pending sites are re-checked with growing intervals and given up after a week."""

    async def test_schedule(self) -> None:
        """First check 60 s after creation, then 2, 4, 8, 16, 32 minutes apart, then hourly."""
        site_id, _ = add_site(self.conninfo)
        self.at(59)
        self.assertEqual(await self.verifier.run_due(), 0)
        checked_at = []
        for _ in range(9):
            [(next_at,)] = rows(self.conninfo, "SELECT coalesce(c.next_check_at,"
                                " s.created_at + interval '60 seconds') FROM sites s LEFT JOIN"
                                " site_dns_checks c ON c.site_id = s.id")
            self.at((next_at - T0).total_seconds() - 1)
            self.assertEqual(await self.verifier.run_due(), 0, "checked before it was due")
            self.at((next_at - T0).total_seconds())
            self.assertEqual(await self.verifier.run_due(), 1)
            checked_at.append((next_at - T0).total_seconds())
        self.assertEqual(checked_at, [60, 180, 420, 900, 1860, 3780, 7380, 10980, 14580])
        state = self.state(site_id)
        self.assertEqual((state["status"], state["attempts"], state["started_at"]),
                         ("pending", 9, T0))
        self.assertEqual(state["last_checked_at"], T0 + timedelta(seconds=14580))
        self.assertEqual(state["dns_checked_at"], state["last_checked_at"])
        self.assertFalse(state["last_ok"])
        self.assertEqual(state["detail"], state["report"]["summary"])
        self.assertIn("shop.example.test does not exist in DNS", state["detail"])

    async def test_give_up(self) -> None:
        """A failed check a week after creation moves the site to error, with the detail."""
        site_id, _ = add_site(self.conninfo)
        week = 7 * 86400
        self.at(week - 1)
        self.assertEqual(await self.verifier.run_due(), 1)
        self.assertEqual(self.state(site_id)["status"], "pending")
        self.at(week - 1 + 120)
        self.assertEqual(await self.verifier.run_due(), 1)
        state = self.state(site_id)
        self.assertEqual((state["status"], state["next_check_at"], state["gave_up_at"]),
                         ("error", None, T0 + timedelta(seconds=week + 119)))
        self.assertTrue(state["detail"].startswith(
            "DNS verification stopped after 7 days without success: shop.example.test does"
            " not exist in DNS"))
        self.assertTrue(state["detail"].endswith(
            "Fix the records and use Check now to try again."))
        [(action, actor, detail)] = self.audit(site_id)
        self.assertEqual((action, actor), ("site.dns_gave_up", None))
        self.assertEqual((detail["from"], detail["to"], detail["checks"]), ("pending", "error", 2))
        self.at(week + 86400)
        self.assertEqual(await self.verifier.run_due(), 0)

    async def test_check_now_after_giving_up(self) -> None:
        """Check now on a given-up site starts a new round: pending again, or active."""
        site_id, token = add_site(self.conninfo)
        self.at(8 * 86400)
        await self.verifier.run_due()
        self.assertEqual(self.state(site_id)["status"], "error")
        self.at(8 * 86400 + 3600)
        result = await self.verifier.check_now(site_id)
        state = self.state(site_id)
        self.assertEqual((result.status, state["status"], state["attempts"], state["gave_up_at"]),
                         ("pending", "pending", 1, None))
        self.assertEqual(state["started_at"], T0 + timedelta(seconds=8 * 86400 + 3600))
        self.point_at_veil(token)
        self.at(8 * 86400 + 3700)
        result = await self.verifier.check_now(site_id)
        self.assertEqual((result.status, result.recorded.changed), ("active", True))
        self.assertEqual([a for a, _, _ in self.audit(site_id)],
                         ["site.dns_gave_up", "site.dns_restarted", "site.dns_verified"])


class ActivationTests(WorkerCase):
    """A site whose DNS points at Veil becomes active, and every process hears of it."""

    async def test_active_through_notify(self) -> None:
        """The worker activates the site; a site table listening on NOTIFY sees it."""
        site_id, token = add_site(self.conninfo)
        listener = ListenerService(self.conninfo, reactor)
        table = SiteTable(SiteStore(self.db), reactor)
        table.subscribe(listener)
        listener.startService()
        self.addCleanup(listener.stopService)
        await table.reload()
        self.assertEqual(table.get(DOMAIN).status, "pending")
        self.point_at_veil(token)
        self.at(90)
        self.assertEqual(await self.verifier.run_due(), 1)
        await until(lambda: table.get(DOMAIN).status == "active", within=10,
                    what="the site table hearing of the activation")
        self.assertTrue(table.get(DOMAIN).dns_verified)
        state = self.state(site_id)
        self.assertEqual((state["status"], state["verified_at"], state["next_check_at"]),
                         ("active", T0 + timedelta(seconds=90), None))
        self.assertEqual(state["detail"], "DNS points at Veil and the ownership token matches.")
        self.assertTrue(state["last_ok"])
        self.assertTrue(state["report"]["ok"])
        self.assertEqual(state["report"]["records"][0]["found"][0], "CNAME edge.veil.test")
        [(action, _, detail)] = self.audit(site_id)
        self.assertEqual((action, detail["manual"]), ("site.dns_verified", False))
        self.at(10_000)
        self.assertEqual(await self.verifier.run_due(), 0)

    async def test_other_statuses_unchanged(self) -> None:
        """Only pending sites are checked by the worker; Check now on a live site reports only."""
        site_id, _ = add_site(self.conninfo, status="live")
        self.at(3600)
        self.assertEqual(await self.verifier.run_due(), 0)
        result = await self.verifier.check_now(site_id)
        self.assertFalse(result.report.ok)
        self.assertEqual((result.status, result.recorded.changed, result.recorded.next_check_at),
                         ("live", False, None))
        self.assertEqual(self.state(site_id)["status"], "live")
        self.assertIn("no longer points at Veil", result.text())


class CheckNowTests(WorkerCase):
    """Check now runs the same check at once, rate-limited per site."""

    async def test_report_and_state(self) -> None:
        """Check now returns the report, records it, and keeps the worker's schedule."""
        site_id, token = add_site(self.conninfo)
        self.at(60)
        await self.verifier.run_due()
        before = self.state(site_id)
        self.world.set(f"_veil.{DOMAIN}", txt(token))
        self.at(75)
        result = await self.verifier.check_now(site_id, actor=None)
        self.assertFalse(result.report.ok)
        # _veil.shop.example.test exists now, so shop.example.test does too (without records).
        self.assertEqual([r.problem for r in result.report.problems], ["cname_missing"])
        after = self.state(site_id)
        self.assertEqual((after["attempts"], after["next_check_at"]),
                         (2, before["next_check_at"]))
        self.assertEqual(after["report"], result.report.to_json())
        as_json = result.to_json()
        self.assertEqual((as_json["status"], as_json["attempts"], as_json["changed"]),
                         ("pending", 2, False))
        self.assertEqual(as_json["next_check_at"], before["next_check_at"].isoformat())
        state = (await self.verifier.state(site_id)).to_json()
        self.assertEqual((state["attempts"], state["last_report"]["ok"]), (2, False))
        self.assertIn("stays pending", result.text())

    async def test_rate_limit(self) -> None:
        """A second Check now within 10 s is refused with the wait; after it, allowed."""
        site_id, _ = add_site(self.conninfo)
        self.at(100)
        await self.verifier.check_now(site_id)
        self.at(104)
        error = await self.assertFailure(self.verifier.check_now(site_id), CheckTooSoon)
        self.assertEqual(error.retry_after, 6)
        self.assertEqual(str(error), "shop.example.test was checked moments ago; check again"
                                     " in 6 s")
        self.assertEqual(self.state(site_id)["attempts"], 1)
        self.at(110)
        await self.verifier.check_now(site_id)
        self.assertEqual(self.state(site_id)["attempts"], 2)

    async def test_unknown_site(self) -> None:
        """Check now for a site that does not exist fails with SiteNotFound."""
        await self.assertFailure(self.verifier.check_now(uuid.uuid4()), SiteNotFound)

    async def test_state_before_any_check(self) -> None:
        """Before its first check a site shows its first check time and no report."""
        site_id, _ = add_site(self.conninfo)
        state = await self.verifier.state(site_id)
        self.assertEqual((state.status, state.attempts, state.next_check_at, state.last_report),
                         ("pending", 0, T0 + timedelta(seconds=60), None))
        self.assertIsNone(await self.verifier.state(uuid.uuid4()))


class LockTests(WorkerCase):
    """Two processes' DNS workers: one runs the round, the other skips it."""

    async def test_one_runs(self) -> None:
        """While one worker's round is under way, the other finds the lock held."""
        site_id, _ = add_site(self.conninfo)
        self.at(3600)
        self.world.mode = "silent"
        verifier = self.make_verifier(StubResolver(NetworkWithClock(self.clock),
                                                   (self.server.server,), timeout=5,
                                                   attempts=1))
        workers = []
        for _ in range(2):
            locks = LockSession(self.conninfo, reactor)
            locks.start()
            self.addCleanup(locks.close)
            worker = dns_worker(verifier, locks, self.clock, every=3600)
            workers.append(worker)
        first, second = workers
        first.startService()
        self.addCleanup(first.stopService)
        self.clock.advance(0)
        await until(lambda: self.world.queries, within=10, what="the first worker's lookups")
        second.startService()
        self.addCleanup(second.stopService)
        self.clock.advance(0)
        await until(lambda: second.skipped == 1, within=10, what="the second worker's turn")
        self.world.mode = "answer"
        self.clock.advance(5)  # the first round's lookups time out; the rest are answered
        await until(lambda: first.runs == 1, within=10, what="the first worker's round")
        self.assertEqual((first.runs, first.skipped, second.runs, second.skipped), (1, 0, 0, 1))
        self.assertEqual(self.state(site_id)["attempts"], 1)


class ServiceTests(TestCase):
    """In a running Veil, Check now and the worker activate sites its site table follows."""

    timeout = 90

    async def test_running_service(self) -> None:
        """Check now turns a site active; the service's site table sees it through NOTIFY."""
        server = dns_server_for(self, world())
        conninfo = fresh_database(self)
        service, exits = make_service(self, conninfo, VEIL_DNS_RESOLVERS=server.address,
                                      VEIL_DNS_PROXY_CNAME="edge.veil.test")
        self.assertEqual(await service.readiness.settled(), "running")
        self.assertIn("dns-verification", service.worker_status())
        site_id, token = add_site(conninfo, created=datetime.now(UTC))
        sites = service.edge.sites
        await until(lambda: sites.get(DOMAIN) is not None, within=10, what="the new site")
        server.world.add(DOMAIN, cname("edge.veil.test"))
        server.world.add(f"_veil.{DOMAIN}", txt(token))
        result = await service.dns.check_now(site_id)
        self.assertTrue(result.report.ok, result.report.text())
        self.assertEqual(result.status, "active")
        await until(lambda: sites.get(DOMAIN).status == "active", within=10,
                    what="the site table hearing of the activation")

        # The worker does the same for a site whose first check is due.
        _, other_token = add_site(conninfo, "www.example.test",
                                      created=datetime.now(UTC) - timedelta(minutes=5))
        server.world.add("www.example.test", cname("edge.veil.test"))
        server.world.add("_veil.www.example.test", txt(other_token))
        worker = next(w for w in service.workers if w.name == "dns-verification")
        worker.run_now()
        await until(lambda: (sites.get("www.example.test") is not None
                             and sites.get("www.example.test").status == "active"),
                    within=20, what="the worker activating www.example.test")
        self.assertEqual(exits, [])


class ProposalInputTests(WorkerCase):
    """The origin proposal checks the domain it is given first."""

    def test_bad_domain(self) -> None:
        """A domain that is not a valid site domain is refused at once, with the reason."""
        from veil.store.admin import InvalidValue

        e = self.assertRaises(InvalidValue, self.verifier.propose_origin, "not a.domain")
        self.assertIn("is not a valid domain name", str(e))
        e = self.assertRaises(InvalidValue, self.verifier.propose_origin, "203.0.113.7")
        self.assertIn("is an IP address", str(e))

    async def test_idn(self) -> None:
        """An internationalised domain is looked up in its xn-- form."""
        self.world.add("xn--bcher-kva.example.test", a("203.0.113.7"))
        proposal = await self.verifier.propose_origin("Bücher.example.test")
        self.assertEqual((proposal.domain, proposal.origin),
                         ("xn--bcher-kva.example.test", "http://203.0.113.7"))
