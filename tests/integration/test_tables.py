"""
L{veil.store.tables} against a real PostgreSQL: rows read on the database's
threads, swapped in on the reactor thread, kept current by real
notifications and reloaded after a real reconnection.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil.secretbox import SecretBox, generate_key
from veil.store.certs import CertificateStore, NewCertificate
from veil.store.listener import ListenerService
from veil.store.tables import Keeper, KeyedRows


def _all(cur: psycopg.Cursor) -> dict[str, Any]:
    cur.execute("SELECT key, value FROM settings")
    return dict(cur.fetchall())


def _one(cur: psycopg.Cursor, key: str) -> Any:
    cur.execute("SELECT value FROM settings WHERE key = %s", (key,))
    row = cur.fetchone()
    return None if row is None else row[0]


class KeeperDatabaseTests(TestCase):
    """A Keeper over the settings table, with the real store and listener."""

    timeout = 30

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.db = started_database(self, self.conninfo)
        self.read_threads: list[int] = []
        self.swap_threads: list[int] = []
        self.loads: list[str] = []
        self.rows: KeyedRows[str, Any] = KeyedRows(
            lambda rows: self.swap_threads.append(threading.get_ident()),
            lambda key, before, after: self.swap_threads.append(threading.get_ident()))
        self.keeper = Keeper("settings", self.rows, self.load_all, reactor,
                             load_one=self.load_one)

    def load_all(self) -> Deferred[dict[str, Any]]:
        self.loads.append("all")

        def read(cur: psycopg.Cursor) -> dict[str, Any]:
            self.read_threads.append(threading.get_ident())
            return _all(cur)

        return self.db.transact("test.all", read)

    def load_one(self, key: str) -> Deferred[Any]:
        self.loads.append(key)

        def read(cur: psycopg.Cursor) -> Any:
            self.read_threads.append(threading.get_ident())
            return _one(cur, key)

        return self.db.transact("test.one", read)

    def set(self, key: str, value: Any) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            if value is None:
                conn.execute("DELETE FROM settings WHERE key = %s", (key,))
            else:
                conn.execute("INSERT INTO settings (key, value) VALUES (%s, %s) ON CONFLICT"
                             " (key) DO UPDATE SET value = EXCLUDED.value", (key, Jsonb(value)))

    def listen(self) -> ListenerService:
        listener = ListenerService(self.conninfo, reactor, poll_interval=0.1, max_backoff=1.0)
        self.keeper.follow(listener, "veil_settings")
        listener.startService()
        self.addCleanup(listener.stopService)
        return listener

    async def test_read_on_threads_swapped_on_reactor(self) -> None:
        """Rows are read on database threads and swapped in on the reactor thread."""
        self.set("a", 1)
        await self.keeper.reload()
        self.keeper.notified("a")
        await until(lambda: "a" in self.loads and not self.keeper._fetches, 10, "the read of a")
        reactor_thread = threading.get_ident()  # trial runs the reactor on this thread
        self.assertEqual(len(self.read_threads), 2)
        self.assertNotIn(reactor_thread, self.read_threads)
        self.assertEqual(self.swap_threads, [reactor_thread])  # the re-read changed nothing
        self.set("a", 2)
        self.keeper.notified("a")
        await until(lambda: self.rows.get("a") == 2, 10, "a = 2")
        self.assertEqual(self.swap_threads, [reactor_thread] * 2)

    async def test_notify_applies_one_row(self) -> None:
        """A change committed elsewhere reaches the table by reading that row alone."""
        self.set("a", 1)
        self.listen()
        await until(lambda: self.rows.loaded, 10, "the first load")
        self.assertEqual(self.loads, ["all"])
        self.set("b", {"x": True})
        await until(lambda: self.rows.get("b") == {"x": True}, 10, "b in the table")
        self.set("a", None)
        await until(lambda: self.rows.get("a") is None, 10, "a gone")
        self.assertEqual(self.loads, ["all", "b", "a"])
        self.assertEqual(self.rows.rows, {"b": {"x": True}})

    async def test_reconnect_reloads_whole(self) -> None:
        """After its connection is killed, the listener reconnects and the table reloads whole."""
        listener = self.listen()
        await until(lambda: self.rows.loaded, 10, "the first load")
        old_pid = listener.backend_pid
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        await until(lambda: self.loads.count("all") == 2, 10, "a second full load")
        self.assertNotEqual(listener.backend_pid, old_pid)
        self.set("c", 3)
        await until(lambda: self.rows.get("c") == 3, 10, "c after the reconnection")


class LatestManyTests(TestCase):
    """CertificateStore.latest_many: what the certificate cache's reload reads."""

    timeout = 30

    async def test_newest_valid_per_name(self) -> None:
        """Each name maps to its newest valid certificate, or None when it has none."""
        conninfo = fresh_database(self)
        db = started_database(self, conninfo, max_size=2)
        store = CertificateStore(db, SecretBox.from_key(generate_key()))
        now = datetime.now(UTC)

        def new(name: str, days: int, serial: str) -> NewCertificate:
            return NewCertificate(name, None, "ecdsa-p256", b"key " + serial.encode(),
                                  b"-----BEGIN CERTIFICATE-----\n" + serial.encode(),
                                  now - timedelta(days=1), now + timedelta(days=days),
                                  "test", serial)

        await store.save(new("a.test", 30, "a1"))
        await store.save(new("a.test", 60, "a2"))
        await store.save(new("b.test", 30, "b1"))
        found = await store.latest_many(["a.test", "b.test", "none.test"])
        self.assertEqual({name: c and c.serial for name, c in found.items()},
                         {"a.test": "a2", "b.test": "b1", "none.test": None})
        self.assertEqual(found["a.test"].key_pem, b"key a2")
        self.assertEqual(await store.latest_many([]), {})
