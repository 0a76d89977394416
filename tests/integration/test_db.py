"""Tests for L{veil.store.db.Database} against a real PostgreSQL."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile

import psycopg
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support.postgres import fresh_database, started_database
from tests.support.waiting import until
from veil.errors import StoreUnavailable
from veil.logs import route_stdlib_logging


class TransactTests(TestCase):
    """transact runs work in one transaction on a database thread, retrying what is retryable."""

    timeout = 30

    def setUp(self) -> None:
        self.db = started_database(self, fresh_database(self))

    async def test_result_and_commit(self) -> None:
        """The work function's result is delivered, and its writes are committed."""
        def work(cur: psycopg.Cursor) -> int:
            cur.execute("CREATE TABLE t (n int)")
            cur.execute("INSERT INTO t VALUES (1), (2)")
            cur.execute("SELECT sum(n) FROM t")
            return cur.fetchone()[0]

        self.assertEqual(await self.db.transact("t.create", work), 3)
        self.assertEqual(await self.db.query("t.count", "SELECT count(*) FROM t"), [(2,)])

    async def test_rollback_on_error(self) -> None:
        """An error rolls the whole transaction back and reaches the caller."""
        await self.db.query("t.create", "CREATE TABLE t (n int PRIMARY KEY)")

        def work(cur: psycopg.Cursor) -> None:
            cur.execute("INSERT INTO t VALUES (1)")
            cur.execute("INSERT INTO t VALUES (1)")

        with self.assertRaises(psycopg.errors.UniqueViolation):
            await self.db.transact("t.dup", work)
        self.assertEqual(await self.db.query("t.count", "SELECT count(*) FROM t"), [(0,)])

    async def test_serialization_failure_retried(self) -> None:
        """A serialization failure (SQLSTATE 40001) runs the transaction again."""
        attempts = []

        def work(cur: psycopg.Cursor) -> str:
            attempts.append(1)
            cur.execute("CREATE TABLE IF NOT EXISTS t (n int)")
            cur.execute("INSERT INTO t VALUES (%s)", (len(attempts),))
            if len(attempts) == 1:
                cur.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
            return "done"

        self.assertEqual(await self.db.transact("t.retry", work), "done")
        self.assertEqual(len(attempts), 2)
        # The first attempt's insert was rolled back.
        self.assertEqual(await self.db.query("t.rows", "SELECT n FROM t"), [(2,)])
        retries = self.db.metrics.counter("veil_db_retries_total", "")
        self.assertEqual(retries.value(desc="t.retry", reason="SerializationFailure"), 1)

    async def test_lost_connection_retried(self) -> None:
        """A connection killed under a transaction is replaced and the transaction run again."""
        attempts = []

        def work(cur: psycopg.Cursor) -> int:
            attempts.append(1)
            if len(attempts) == 1:
                cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            cur.execute("SELECT 42")
            return cur.fetchone()[0]

        self.assertEqual(await self.db.transact("t.lost", work), 42)
        self.assertEqual(len(attempts), 2)

    async def test_copy_rows(self) -> None:
        """copy_rows appends every row with COPY."""
        await self.db.query("t.create", "CREATE TABLE log (n int, label text, ip inet)")
        rows = [(i, f"row {i}", "192.0.2.1") for i in range(1000)]
        self.assertEqual(await self.db.copy_rows("log.copy", "log", ["n", "label", "ip"], rows), 1000)
        self.assertEqual(
            await self.db.query("log.sum", "SELECT count(*), sum(n) FROM log"),
            [(1000, sum(range(1000)))],
        )

    async def test_thread_and_run_histograms(self) -> None:
        """Each call is timed per description, both its wait for a thread and its run."""
        await self.db.query("t.timed", "SELECT 1")
        waits = self.db.metrics.histogram("veil_db_thread_wait_seconds", "")
        runs = self.db.metrics.histogram("veil_db_run_seconds", "")
        self.assertEqual(waits.count(desc="t.timed"), 1)
        self.assertEqual(runs.count(desc="t.timed"), 1)
        self.assertIn('veil_db_run_seconds_count{desc="t.timed"} 1', self.db.metrics.render())


class UnreachableTests(TestCase):
    """A database that cannot be reached fails calls with StoreUnavailable, never a hang."""

    timeout = 20

    async def test_store_unavailable(self) -> None:
        """With nothing listening, calls fail within the connect timeout."""
        empty = tempfile.mkdtemp(prefix="veil-nopg-")  # short: a real socket path
        self.addCleanup(os.rmdir, empty)
        db = started_database(self, f"host={empty} dbname=nothing user=nobody",
                     connect_timeout=1.0)
        started_at = reactor.seconds()
        with self.assertRaises(StoreUnavailable):
            await db.query("x", "SELECT 1")
        with self.assertRaises(StoreUnavailable):
            await db.ping(timeout=0.5)
        self.assertFalse(db.healthy)
        self.assertIsNotNone(db.last_error)
        # Bounded: far below the class timeout (not a speed assertion).
        self.assertLess(reactor.seconds() - started_at, 15)

    async def test_pool_retries_logged_once(self) -> None:
        """
        The pool's reconnection attempts during an outage, which psycopg
        logs through the standard library, reach Twisted's log as one
        line each kind (the rest counted and held back), never standard
        error, where twistd would print each as [stderr#error].
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        bridge = route_stdlib_logging(reactor)
        self.addCleanup(logging.getLogger().removeHandler, bridge)
        records: list[logging.LogRecord] = []
        counter = logging.Handler(logging.WARNING)
        counter.emit = records.append
        logging.getLogger("psycopg.pool").addHandler(counter)
        self.addCleanup(logging.getLogger("psycopg.pool").removeHandler, counter)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        empty = tempfile.mkdtemp(prefix="veil-nopg-")
        self.addCleanup(os.rmdir, empty)
        started_database(self, f"host={empty} dbname=nothing user=nobody", connect_timeout=1.0)

        def pool_events() -> list[dict]:
            return [e for e in events if e.get("log_namespace") == "psycopg.pool"]

        await until(lambda: len(records) >= 2 and pool_events(), 15,
                    "two failed connection attempts")
        self.assertEqual(len(pool_events()), 1)
        event = pool_events()[0]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("error connecting", formatEvent(event))
        self.assertNotIn("\n", formatEvent(event))
        self.assertEqual(stderr.getvalue(), "")
