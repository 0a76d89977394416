"""
Origins a site may not have, in a running Veil (real PostgreSQL, the real
plain-HTTP port, real origins on loopback): Veil's own ports, loopback
when private origins are not allowed (also behind a name, checked at the
address connected to), metadata addresses; and the same policy when a
site is saved.  Plus the per-site proxy settings in the store.
"""

from __future__ import annotations

import psycopg
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThreadPool
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.integration.test_edge import add_site, start_veil
from tests.integration.test_proxy import get, talk
from tests.support.origin import client_threads, listen_origin
from tests.support.postgres import fresh_database
from veil.proxy.origins import OriginPolicy
from veil.store.admin import InvalidValue, OperatorAccount, SiteAdmin, SiteNotFound
from veil.store.db import Database
from veil.store.site_limits import SiteLimits
from veil.store.sites import SiteStore


class OriginGuardTests(TestCase):
    """The proxy refuses to connect to origins the policy refuses, at the address it would use."""

    timeout = 60

    async def start(self, **env: str) -> None:
        self.conninfo = fresh_database(self)
        self.veil = await start_veil(self, self.conninfo, **env)
        self.port = self.veil.edge.ports["http"].getHost().port
        self.threads = client_threads(self, "test-proxy-origins", 2)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    async def site(self, domain: str, upstream: str) -> None:
        """A live site that allows plain HTTP, straight into the store (as saved long ago)."""
        add_site(self.conninfo, domain, status="live", upstream=upstream)
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("UPDATE sites SET allow_plain_http = true WHERE domain = %s", (domain,))
        await self.veil.edge.sites.reload()

    async def status(self, host: str) -> int:
        [r], _ = await deferToThreadPool(reactor, self.threads, talk, self.port,
                                         get("/echo", host=host))
        return r.status

    def refused(self) -> list[str]:
        return [e["error"] for e in self.events
                if "Refused to connect to the origin" in e.get("log_format", "")]

    async def test_own_ports(self) -> None:
        """A site whose origin is Veil's own plain-HTTP port gets 502: Veil never connects to itself."""
        await self.start()
        await self.site("self.test", f"http://127.0.0.1:{self.port}")
        self.assertEqual(await self.status("self.test"), 502)
        [reason] = self.refused()
        self.assertIn("own listening", reason)
        dashboard = self.veil.dashboard_port.getHost().port
        await self.site("dash.test", f"http://127.0.0.1:{dashboard}")
        self.assertEqual(await self.status("dash.test"), 502)

    async def test_private_refused_after_resolution(self) -> None:
        """
        With private origins not allowed, an origin named "localhost" (saved
        while it meant something else, say) resolves to loopback and is
        refused at the connection; the origin sees nothing.
        """
        await self.start(VEIL_PROXY_ALLOW_PRIVATE_ORIGINS="false")
        origin, upstream = listen_origin(self)
        port = upstream.rsplit(":", 1)[1]
        await self.site("rebound.test", f"http://localhost:{port}")
        await self.site("literal.test", upstream)
        self.assertEqual(await self.status("rebound.test"), 502)
        self.assertEqual(await self.status("literal.test"), 502)
        self.assertEqual(origin.connections, 0)
        self.assertTrue(all("loopback" in reason for reason in self.refused()))

    async def test_private_allowed(self) -> None:
        """With private origins allowed (the loopback default), the same origins are served."""
        await self.start()
        _, upstream = listen_origin(self)
        await self.site("rebound.test", "http://localhost:" + upstream.rsplit(":", 1)[1])
        self.assertEqual(await self.status("rebound.test"), 200)

    async def test_metadata_address(self) -> None:
        """An origin on the metadata address is refused even with private origins allowed."""
        await self.start()
        await self.site("meta.test", "http://169.254.169.254")
        self.assertEqual(await self.status("meta.test"), 502)
        [reason] = self.refused()
        self.assertIn("link-local", reason)


class SaveTests(TestCase):
    """Sites are refused origins by the same policy when they are saved."""

    timeout = 30

    def setUp(self) -> None:
        self.db = Database(fresh_database(self), reactor, min_size=1, max_size=2)
        self.db.start()
        self.addCleanup(self.db.close)

    async def test_refused_when_saved(self) -> None:
        """
        Metadata addresses and names are refused whatever the policy; with
        private origins not allowed, loopback and private addresses too,
        and Veil's own listening address; public origins are saved.
        """
        owner = await OperatorAccount(self.db).ensure()
        strict = OriginPolicy(allow_private=False)
        strict.add_listener("203.0.113.5", 443)
        for admin, origin in ((SiteAdmin(self.db), "http://169.254.169.254"),
                              (SiteAdmin(self.db), "http://[fd00:ec2::254]"),
                              (SiteAdmin(self.db), "http://metadata.google.internal"),
                              (SiteAdmin(self.db, strict), "http://10.0.0.5:8080"),
                              (SiteAdmin(self.db, strict), "http://localhost:9000"),
                              (SiteAdmin(self.db, strict), "https://203.0.113.5")):
            with self.assertRaises(InvalidValue) as caught:
                admin.add("shop.example.com", origin, owner)
            self.assertIn("the origin may not be", str(caught.exception))
        site = await SiteAdmin(self.db, strict).add("shop.example.com", "https://203.0.113.6",
                                                    owner)
        self.assertEqual(site.upstream, "https://203.0.113.6")
        site = await SiteAdmin(self.db).add("local.example.com", "http://127.0.0.1:9000", owner)
        self.assertEqual(site.upstream, "http://127.0.0.1:9000")


class SiteLimitsTests(TestCase):
    """A site's max_body_size and allow_trace: stored, audited, loaded into the Site record."""

    timeout = 30

    def setUp(self) -> None:
        self.db = Database(fresh_database(self), reactor, min_size=1, max_size=2)
        self.db.start()
        self.addCleanup(self.db.close)

    async def test_set_and_load(self) -> None:
        """New sites have 100 MiB and no TRACE; changes are stored, audited and loaded."""
        owner = await OperatorAccount(self.db).ensure()
        added = await SiteAdmin(self.db).add("shop.example.com", "https://203.0.113.6", owner)
        limits = SiteLimits(self.db)
        record = await limits.get("shop.example.com")
        self.assertEqual((record.max_body_size, record.allow_trace), (100 * 1024 * 1024, False))
        record = await limits.set("Shop.Example.com", owner, max_body_size=5000)
        self.assertEqual((record.max_body_size, record.allow_trace), (5000, False))
        record = await limits.set("shop.example.com", owner, allow_trace=True)
        self.assertEqual((record.max_body_size, record.allow_trace), (5000, True))
        site = await SiteStore(self.db).one(added.id)
        self.assertEqual((site.max_body_size, site.allow_trace), (5000, True))
        with psycopg.connect(self.db.conninfo) as conn:
            details = [row[0] for row in conn.execute(
                "SELECT detail FROM audit_log WHERE action = 'site.update' ORDER BY id")]
        self.assertEqual(details, [{"max_body_size": 5000}, {"allow_trace": True}])

    async def test_bad_input(self) -> None:
        """Sizes out of range are refused at once; an unknown site in the Deferred."""
        limits = SiteLimits(self.db)
        for bad in (0, -1, 2 ** 41, True, "10"):
            with self.assertRaises(InvalidValue):
                limits.set("shop.example.com", None, max_body_size=bad)  # type: ignore[arg-type]
        with self.assertRaises(SiteNotFound):
            await limits.set("nope.example.com", None, max_body_size=10)
