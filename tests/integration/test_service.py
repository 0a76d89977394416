"""Tests for L{veil.service.VeilService} in this process, on a real PostgreSQL."""

from __future__ import annotations

import json

import psycopg
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.integration.test_migrate import DATA_MODEL, empty_database, tables
from tests.support.postgres import cluster
from veil.config import load
from veil.service import VeilService


def make_service(testcase: TestCase, conninfo: str, **env: str) -> tuple[VeilService, list[int]]:
    environ = {"VEIL_DATABASE_URL": conninfo, "VEIL_DASHBOARD_PORT": "0",
               "VEIL_EDGE_PORT": "0", "VEIL_HTTP_PORT": "0",
               "VEIL_DATABASE_CONNECT_TIMEOUT": "1", "VEIL_DATA_DIR": testcase.mktemp()}
    environ.update(env)
    exits: list[int] = []
    service = VeilService(load(None, environ), reactor, exits.append)
    service.privilegedStartService()
    service.startService()
    testcase.addCleanup(lambda: service.running and service.stopService())
    return service, exits


async def get_json(service: VeilService, path: str) -> tuple[int, dict]:
    port = service.dashboard_port.getHost().port
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False)
    return response.code, json.loads(await response.content())


async def ready_becomes(service: VeilService, wanted: int, within: float = 30.0) -> dict:
    """Poll /ready until it answers C{wanted}, for at most C{within} seconds."""
    deadline = reactor.seconds() + within
    while True:
        code, body = await get_json(service, "/ready")
        if code == wanted:
            return body
        if reactor.seconds() > deadline:
            raise AssertionError(f"/ready still {code} ({body}) after {within} s")
        await deferLater(reactor, 0.2, lambda: None)


class StartupTests(TestCase):
    """Veil migrates, starts its workers and reports ready; a bad migration is fatal."""

    timeout = 60

    async def test_ready_and_health(self) -> None:
        """After start-up /ready is 200 with the database healthy, /health lists the workers."""
        conninfo = empty_database(self)
        service, exits = make_service(self, conninfo)
        self.assertEqual(await service.readiness.settled(), "running")
        code, body = await get_json(service, "/ready")
        self.assertEqual(code, 200)
        self.assertTrue(body["ready"])
        self.assertTrue(body["database"]["ok"])
        self.assertLessEqual(DATA_MODEL, tables(conninfo))

        code, health = await get_json(service, "/health")
        self.assertEqual(code, 200)
        self.assertEqual(health["status"], "ok")
        self.assertIn("version", health)
        for worker in ("partitions", "session-cleanup", "listener"):
            self.assertIn(worker, health["workers"])
        self.assertEqual(exits, [])

    async def test_workers_run(self) -> None:
        """The session clean-up worker deletes expired sessions and records its run."""
        conninfo = empty_database(self)
        service, _ = make_service(self, conninfo)
        await service.readiness.settled()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            user = conn.execute(
                "INSERT INTO users (email) VALUES ('a@example.com') RETURNING id").fetchone()[0]
            conn.execute(
                "INSERT INTO sessions (id_hash, user_id, expires_at) VALUES"
                " (sha256('old'), %s, now() - interval '1 hour'),"
                " (sha256('new'), %s, now() + interval '1 hour')", (user, user))
        worker = next(w for w in service.workers if w.name == "session-cleanup")
        runs = worker.runs
        worker.run_now()
        while worker.runs == runs:
            await deferLater(reactor, 0.05, lambda: None)
        with psycopg.connect(conninfo) as conn:
            left = conn.execute("SELECT count(*) FROM sessions").fetchone()
        self.assertEqual(left, (1,))

    async def test_failed_migration_is_fatal(self) -> None:
        """A migration that fails stops Veil with exit status 1 and says which file."""
        conninfo = empty_database(self)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("CREATE TABLE users (something_else int)")
        service, exits = make_service(self, conninfo)
        self.assertEqual(await service.readiness.settled(), "failed")
        self.assertEqual(exits, [1])
        self.assertIn("001_", service.readiness.detail)
        code, body = await get_json(service, "/ready")
        self.assertEqual(code, 503)
        self.assertIn("001_", body["reason"])

    async def test_metrics(self) -> None:
        """/metrics serves Prometheus text including the database call timings."""
        service, _ = make_service(self, empty_database(self))
        await service.readiness.settled()
        port = service.dashboard_port.getHost().port
        response = await treq.get(f"http://127.0.0.1:{port}/metrics", persistent=False)
        text = (await response.content()).decode()
        self.assertEqual(response.code, 200)
        self.assertIn('veil_db_run_seconds_count{desc="migrate"}', text)


class DatabaseOutageTests(TestCase):
    """When the database goes away /ready says so, and recovers when it returns."""

    timeout = 90

    async def test_ready_follows_database(self) -> None:
        """PostgreSQL stopped: /ready 503 and nothing crashes; started again: /ready 200."""
        service, exits = make_service(self, empty_database(self))
        self.assertEqual(await service.readiness.settled(), "running")
        await ready_becomes(service, 200)
        pg = cluster()
        pg.stop("immediate")
        try:
            body = await ready_becomes(service, 503, within=15)
            self.assertFalse(body["database"]["ok"])
            self.assertIn("error", body["database"])
            code, health = await get_json(service, "/health")
            self.assertEqual(code, 200)
        finally:
            pg.start()
        await ready_becomes(service, 200, within=40)
        self.assertEqual(exits, [])
        self.flushLoggedErrors()
