"""Tests for L{veil.store.migrate} and the first migration, against a real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from datetime import date
from pathlib import Path

import psycopg
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support.postgres import cluster, fresh_database, started_database
from veil.errors import MigrationError
from veil.store.migrate import (
    default_schema_dir,
    load_migrations,
    migrate,
    migrate_sync,
)

#: Every table of the data model (DESIGN §3): the seed tables and Veil's additions.
DATA_MODEL = {
    "users", "sessions", "sites", "threats", "request_log", "agent_log", "rules",
    "decisions", "ip_reputation", "behavioral_sessions", "endpoint_profiles", "threat_ips",
    "threat_feeds", "hub_rules", "github_tokens", "site_repos", "code_findings",
    "certificates", "acme_accounts", "audit_log", "schema_migrations",
}


def empty_database(testcase: SynchronousTestCase) -> str:
    """A new database with nothing in it (not cloned from the migrated template)."""
    name = "empty_" + uuid.uuid4().hex[:12]
    with cluster().admin_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with cluster().admin_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    testcase.addCleanup(drop)
    return cluster().conninfo(name)


def tables(conninfo: str) -> set[str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        ).fetchall()
    return {name for (name,) in rows}


class MigrationRunTests(SynchronousTestCase):
    """Migrations apply in order, once each, and a failure rolls back and names the file."""

    def write_schema(self, files: dict[str, str]) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        for name, text in files.items():
            (directory / name).write_text(text)
        return directory

    def test_real_schema_creates_data_model(self) -> None:
        """The shipped migrations create every table of the data model."""
        conninfo = empty_database(self)
        applied = migrate_sync(conninfo)
        self.assertEqual(applied, [m.version for m in load_migrations(default_schema_dir())])
        self.assertTrue(applied)
        self.assertLessEqual(DATA_MODEL, tables(conninfo))

    def test_rerun_applies_nothing(self) -> None:
        """An applied migration never runs again."""
        conninfo = empty_database(self)
        migrate_sync(conninfo)
        self.assertEqual(migrate_sync(conninfo), [])

    def test_failure_rolls_back_and_names_file(self) -> None:
        """A failing migration leaves nothing behind, names its file, and stops later ones."""
        schema = self.write_schema({
            "001_first.sql": "CREATE TABLE first_table (id int);",
            "002_broken.sql": "CREATE TABLE second_table (id int);\nSELECT no_such_column FROM first_table;",
            "003_later.sql": "CREATE TABLE later_table (id int);",
        })
        conninfo = empty_database(self)
        e = self.assertRaises(MigrationError, migrate_sync, conninfo, schema)
        self.assertEqual(e.filename, "002_broken.sql")
        self.assertIn("no_such_column", e.detail)
        self.assertIn("002_broken.sql", str(e))
        self.assertEqual(tables(conninfo), {"schema_migrations", "first_table"})
        with psycopg.connect(conninfo) as conn:
            versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
        self.assertEqual(versions, [("001_first",)])

        # Once the file is fixed, the run picks up where it stopped.
        (schema / "002_broken.sql").write_text("CREATE TABLE second_table (id int);")
        self.assertEqual(migrate_sync(conninfo, schema), ["002_broken", "003_later"])

    def test_bad_file_name(self) -> None:
        """A .sql file not named NNN_name.sql is refused before anything runs."""
        schema = self.write_schema({"001_ok.sql": "SELECT 1;", "two.sql": "SELECT 2;"})
        e = self.assertRaises(MigrationError, load_migrations, schema)
        self.assertEqual(e.filename, "two.sql")

    def test_duplicate_number(self) -> None:
        """Two files with one number are refused."""
        schema = self.write_schema({"001_a.sql": "SELECT 1;", "001_b.sql": "SELECT 2;"})
        self.assertRaises(MigrationError, load_migrations, schema)

    def test_concurrent_runs_apply_once(self) -> None:
        """Several processes migrating at once apply each migration exactly once."""
        conninfo = empty_database(self)
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                results.append(migrate_sync(conninfo))
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        flat = sorted(v for r in results for v in r)
        self.assertEqual(flat, sorted(m.version for m in load_migrations(default_schema_dir())))


class AsyncMigrateTests(TestCase):
    """migrate() applies migrations through the Database without blocking the reactor."""

    timeout = 60

    async def test_migrate_through_database(self) -> None:
        """The asynchronous entry point applies everything, then nothing."""
        conninfo = empty_database(self)
        db = started_database(self, conninfo, max_size=2)
        self.assertTrue(await migrate(db))
        self.assertEqual(await migrate(db), [])
        self.assertLessEqual(DATA_MODEL, tables(conninfo))


class PartitionTests(SynchronousTestCase):
    """request_log is partitioned by month, with partitions made ahead and old ones dropped."""

    def partitions(self, conn: psycopg.Connection) -> set[str]:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'request_log'::regclass").fetchall()
        return {name for (name,) in rows}

    def test_current_and_next_month_exist(self) -> None:
        """Right after migrating, this month and next month have partitions, and rows go in."""
        with psycopg.connect(fresh_database(self), autocommit=True) as conn:
            today = conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]
            following = date(today.year + today.month // 12, today.month % 12 + 1, 1)
            names = self.partitions(conn)
            self.assertIn(f"request_log_y{today.year:04d}m{today.month:02d}", names)
            self.assertIn(f"request_log_y{following.year:04d}m{following.month:02d}", names)
            conn.execute(
                "INSERT INTO request_log (ts, method, path, status, client_ip, request_id)"
                " VALUES (now(), 'GET', '/', 200, '192.0.2.7', 'r1')")
            self.assertEqual(conn.execute("SELECT count(*) FROM request_log").fetchone(), (1,))

    def test_maintenance_drops_old_and_is_idempotent(self) -> None:
        """Partitions older than the retention are dropped; a second run changes nothing."""
        with psycopg.connect(fresh_database(self), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE request_log_y2001m01 PARTITION OF request_log"
                " FOR VALUES FROM ('2001-01-01') TO ('2001-02-01')")
            changes = conn.execute("SELECT * FROM veil_request_log_maintain(6)").fetchall()
            self.assertIn("request_log_y2001m01", [name for _, name in changes])
            self.assertNotIn("request_log_y2001m01", self.partitions(conn))
            kept = self.partitions(conn)
            self.assertEqual(conn.execute("SELECT * FROM veil_request_log_maintain(6)").fetchall(), [])
            self.assertEqual(self.partitions(conn), kept)
