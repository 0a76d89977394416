"""Tests for L{veil.store.locks.LockSession} against a real PostgreSQL."""

from __future__ import annotations

import time

import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from tests.support.postgres import fresh_database
from veil.store.locks import LockSession


def session(testcase: TestCase, conninfo: str) -> LockSession:
    locks = LockSession(conninfo, reactor)
    locks.start()
    testcase.addCleanup(locks.close)
    return locks


class LockSessionTests(TestCase):
    """Advisory locks are exclusive across processes and within one."""

    timeout = 30

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)

    async def test_exclusive_until_released(self) -> None:
        """Another session gets None until the holder releases; then it gets the lock."""
        one, two = session(self, self.conninfo), session(self, self.conninfo)
        first = await one.try_lock("worker:test")
        self.assertIsNotNone(first)
        self.assertIsNone(await two.try_lock("worker:test"))
        await first.release()
        second = await two.try_lock("worker:test")
        self.assertIsNotNone(second)
        await second.release()

    async def test_not_reentrant_within_process(self) -> None:
        """The same process cannot take a name twice, though PostgreSQL would allow it."""
        locks = session(self, self.conninfo)
        held = await locks.try_lock("cert:shop.test")
        self.assertIsNone(await locks.try_lock("cert:shop.test"))
        await held.release()
        again = await locks.try_lock("cert:shop.test")
        self.assertIsNotNone(again)
        await again.release()

    async def test_many_locks_one_connection(self) -> None:
        """Twenty locks held at once use a single database connection."""
        locks = session(self, self.conninfo)
        held = [await locks.try_lock(f"cert:n{i}.test") for i in range(20)]
        self.assertNotIn(None, held)
        with psycopg.connect(self.conninfo) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'veil-locks'"
                " AND datname = current_database()").fetchone()
        self.assertEqual(count, 1)
        for lock in held:
            await lock.release()

    async def test_connection_loss_releases(self) -> None:
        """When the lock connection dies its locks are gone: marked lost, and takeable again."""
        one, two = session(self, self.conninfo), session(self, self.conninfo)
        held = await one.try_lock("worker:x")
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            gone = [pid for (pid, _) in conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'veil-locks' AND datname = current_database()")]
            # Termination is a signal: the backend (and its locks) may outlive
            # the call for a moment on a loaded machine.
            for _ in range(200):
                if not conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                    (gone,)).fetchone()[0]:
                    break
                time.sleep(0.05)
        other = await two.try_lock("worker:x")
        self.assertIsNotNone(other)
        # The first session notices on its next use and reconnects.
        self.assertFalse(held.lost)
        fresh = await one.try_lock("worker:y")
        self.assertIsNotNone(fresh)
        self.assertTrue(held.lost)
        self.assertFalse(fresh.lost)
        await held.release()
        await fresh.release()
        await other.release()
