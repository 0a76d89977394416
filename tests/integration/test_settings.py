"""
Cluster-wide settings in a running Veil: C{veil maintenance on|off} (the
real CLI, against the real database) switches every site to the 503
maintenance page and back, through C{NOTIFY veil_settings}, without a restart.
"""

from __future__ import annotations

import io

import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.integration.test_edge import ClientThreads, add_site, start_veil, tls_get
from tests.integration.test_migrate import empty_database
from tests.integration.test_proxy import get, talk
from tests.support.origin import OriginFactory
from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil import cli
from veil.store.settings import SettingsStore, SettingsTable, maintenance_enabled


class MaintenanceSwitchTests(TestCase):
    """The global maintenance switch reaches the proxy within a second."""

    timeout = 60

    async def veil_cli(self, *argv: str) -> None:
        out, err = io.StringIO(), io.StringIO()
        status = await cli.run(reactor, list(argv),
                               environ={"VEIL_DATABASE_URL": self.conninfo}, out=out, err=err)
        self.assertEqual(status, 0, err.getvalue())

    async def test_maintenance_on_and_off(self) -> None:
        """
        After `veil maintenance on`, within a second, every site (on the TLS
        and the plain port) answers 503 with the maintenance page and
        Retry-After, and the origin sees nothing; after `off`, requests
        reach the origin again.
        """
        origin = OriginFactory(reactor)
        oport = reactor.listenTCP(0, origin, interface="127.0.0.1")
        self.addCleanup(oport.stopListening)
        self.conninfo = empty_database(self)
        veil = await start_veil(self, self.conninfo)
        add_site(self.conninfo, "shop.test", upstream=f"http://127.0.0.1:{oport.getHost().port}")
        add_site(self.conninfo, "blog.test", upstream=f"http://127.0.0.1:{oport.getHost().port}")
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("UPDATE sites SET allow_plain_http = true WHERE domain = 'blog.test'")
        await veil.edge.sites.reload()
        run = ClientThreads(self)
        port = veil.edge.ports["edge"].getHost().port
        plain = veil.edge.ports["http"].getHost().port
        cafile = str(veil.edge.ca.root_path)
        _, _, reply = await run(tls_get, port, "shop.test", cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertFalse(veil.edge.settings.maintenance)

        await self.veil_cli("maintenance", "on")
        switched = reactor.seconds()
        await until(lambda: veil.edge.settings.maintenance, 1.0, "maintenance on in the proxy")
        self.assertLess(reactor.seconds() - switched, 1.0)
        _, _, reply = await run(tls_get, port, "shop.test", cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 503"), reply[:200])
        self.assertIn(b"\r\nRetry-After: 120\r\n", reply)
        self.assertIn(b"shop.test is down for maintenance", reply)
        [r], _ = await run(talk, plain, get("/", host="blog.test"))
        self.assertEqual(r.status, 503)
        self.assertIn(b"blog.test is down for maintenance", r.body)
        self.assertEqual(len(origin.requests), 1)

        await self.veil_cli("maintenance", "off")
        await until(lambda: not veil.edge.settings.maintenance, 1.0,
                    "maintenance off in the proxy")
        _, _, reply = await run(tls_get, port, "shop.test", cafile)
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])
        self.assertEqual(len(origin.requests), 2)

    async def test_settings_worker(self) -> None:
        """Edge.start returns a settings-table reload worker (the safety net behind NOTIFY)."""
        self.conninfo = empty_database(self)
        veil = await start_veil(self, self.conninfo)
        self.assertIn("settings-table", [w.name for w in veil.workers])


class SettingsTableTests(TestCase):
    """SettingsTable loads the settings rows whole and reads the maintenance switch."""

    timeout = 30

    async def test_reload(self) -> None:
        """Values are decoded; maintenance is on for {"enabled": true} or a bare true only."""
        conninfo = fresh_database(self)
        db = started_database(self, conninfo, max_size=2)
        table = SettingsTable(SettingsStore(db), reactor)
        changes: list[bool] = []
        table.on_change(lambda t: changes.append(t.maintenance))
        await table.reload()
        self.assertEqual((table.loaded, table.maintenance, table.get("maintenance")),
                         (True, False, None))
        for value, expected in (('{"enabled": true}', True), ('true', True),
                                ('{"enabled": false}', False), ('"yes"', False)):
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("INSERT INTO settings (key, value) VALUES ('maintenance', %s)"
                             " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                             (value,))
            await table.reload()
            self.assertEqual(table.maintenance, expected, value)
        self.assertEqual(changes, [True, True, False, False])
        self.assertEqual(table.get("maintenance"), "yes")
        self.assertTrue(maintenance_enabled({"enabled": True}))
