"""Tests for L{veil.store.listener.ListenerService} against a real PostgreSQL."""

from __future__ import annotations

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from tests.support.postgres import fresh_database
from veil.store.listener import ListenerService


class Recorder:
    """A subscriber that records what it is told, and lets a test wait for it."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.reloads = 0
        self._waiting: list[tuple[object, Deferred[None]]] = []

    def notified(self, payload: str) -> None:
        self.payloads.append(payload)
        self._check()

    def reloaded(self) -> None:
        self.reloads += 1
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            condition, d = entry
            if condition():
                self._waiting.remove(entry)
                d.callback(None)

    def until(self, condition) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((condition, d))
        self._check()
        return d.addTimeout(15, reactor)


class ListenerTests(TestCase):
    """Notifications reach subscribers; reconnections trigger a full reload."""

    timeout = 40

    def setUp(self) -> None:
        self.conninfo = fresh_database(self)
        self.listener = ListenerService(self.conninfo, reactor, poll_interval=0.1,
                                        max_backoff=1.0)
        self.recorder = Recorder()
        self.listener.subscribe("veil_sites", self.recorder.notified, self.recorder.reloaded)
        self.listener.startService()
        self.addCleanup(self.listener.stopService)

    def notify(self, channel: str, payload: str) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    async def test_notification_reaches_subscriber(self) -> None:
        """A NOTIFY on a subscribed channel calls the subscriber with the payload."""
        await self.recorder.until(lambda: self.recorder.reloads == 1)
        self.notify("veil_other", "ignored")
        self.notify("veil_sites", "site-1")
        await self.recorder.until(lambda: self.recorder.payloads)
        self.assertEqual(self.recorder.payloads, ["site-1"])

    async def test_reconnect_after_backend_terminated(self) -> None:
        """After pg_terminate_backend, the listener reconnects, listens again and asks for a reload."""
        await self.recorder.until(lambda: self.recorder.reloads == 1)
        old_pid = self.listener.backend_pid
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        await self.recorder.until(lambda: self.recorder.reloads == 2)
        self.assertNotEqual(self.listener.backend_pid, old_pid)
        self.assertEqual(self.listener.connections, 2)
        self.notify("veil_sites", "after")
        await self.recorder.until(lambda: "after" in self.recorder.payloads)
        self.flushLoggedErrors()

    async def test_stop_ends_thread(self) -> None:
        """stopService fires once the listener thread has ended and closed its connection."""
        await self.recorder.until(lambda: self.recorder.reloads == 1)
        await self.listener.stopService()
        self.assertIsNone(self.listener.backend_pid)
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'veil-listener'"
                " AND datname = current_database()").fetchone()
        self.assertEqual(rows, (0,))
