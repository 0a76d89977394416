"""
Schema migrations: C{schema/NNN_name.sql}, applied in order, each once.

The functions here are synchronous and run on a database thread (or, in the
test support, directly): L{apply_migrations} takes a psycopg connection.
The asynchronous entry point is L{migrate}, which runs it through a
L{veil.store.db.Database}.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import psycopg
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from veil.errors import MigrationError

if TYPE_CHECKING:
    from veil.store.db import Database

_log = Logger()

#: The advisory lock every migrating process takes, so that several Veil
#: processes or nodes starting at once apply each migration exactly once.
MIGRATION_LOCK_KEY = 0x7665696C_6D696772  # "veilmigr"

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@attrs.frozen
class Migration:
    """One migration file: its version (the file name's stem) and its SQL."""

    version: str
    filename: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def default_schema_dir() -> Path:
    """
    Where the migrations are: C{schema/} beside the C{veil} package in a
    source checkout or editable install, or C{share/veil/schema} under the
    installation prefix for a wheel install.
    """
    here = Path(__file__).resolve().parent.parent.parent / "schema"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "veil" / "schema"


def load_migrations(schema_dir: Path) -> list[Migration]:
    """
    Read every C{NNN_name.sql} file in C{schema_dir}, in order.

    @raise MigrationError: if two files share a number, or a file in the
        directory ends in C{.sql} but is not named C{NNN_name.sql}.
    """
    if not schema_dir.is_dir():
        raise MigrationError(str(schema_dir), "schema directory not found")
    found: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted(schema_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(path.name, "migration files are named NNN_name.sql")
        number = match.group(1)
        if number in seen:
            raise MigrationError(path.name, f"number {number} is also used by {seen[number]}")
        seen[number] = path.name
        found.append(Migration(path.stem, path.name, path.read_text("utf-8")))
    return found


def apply_migrations(conn: psycopg.Connection, schema_dir: Path | None = None) -> list[str]:
    """
    Apply the migrations not yet recorded in C{schema_migrations}.

    Runs under a session advisory lock, so concurrent callers wait for each
    other and the second finds nothing left to do.  Each migration runs in
    its own transaction together with its C{schema_migrations} row: a
    failing one is rolled back entirely and stops the run.

    @param conn: a connection not inside a transaction; its autocommit
        setting is restored before returning.
    @return: the versions applied by this call, in order.
    @raise MigrationError: naming the file and PostgreSQL's message.
    """
    migrations = load_migrations(schema_dir or default_schema_dir())
    saved = conn.autocommit
    conn.autocommit = True
    applied_now: list[str] = []
    try:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            recorded = dict(
                conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            )
            for migration in migrations:
                if migration.version in recorded:
                    if recorded[migration.version] != migration.checksum:
                        _log.warn(
                            "Migration {filename} changed after it was applied;"
                            " it is not run again",
                            filename=migration.filename,
                        )
                    continue
                _apply_one(conn, migration)
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        conn.autocommit = saved
    return applied_now


def _apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    try:
        with conn.transaction():
            # No parameters: the file is sent as it is, several statements
            # at once, with no placeholder processing.
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                (migration.version, migration.checksum),
            )
    except psycopg.Error as e:
        detail = e.diag.message_primary or str(e)
        if e.diag.context:
            detail = f"{detail} ({e.diag.context.strip()})"
        raise MigrationError(migration.filename, detail) from None
    _log.info("Applied migration {filename}", filename=migration.filename)


def migrate(db: Database, schema_dir: Path | None = None) -> Deferred[list[str]]:
    """Apply pending migrations through C{db}; fires with the versions applied."""
    return db.run_with_connection("migrate", apply_migrations, schema_dir)


def migrate_sync(conninfo: str, schema_dir: Path | None = None) -> list[str]:
    """Open a connection to C{conninfo}, apply pending migrations, close it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return apply_migrations(conn, schema_dir)
