"""
The throwaway PostgreSQL cluster of the integration tests (Synapse's pattern).

Each test process gets one cluster, created on first use in a temporary
directory under C{/tmp} (C{initdb}, then C{pg_ctl start -w} on a Unix socket,
no TCP), and stopped and removed when the process exits.  The migrations run
once into the template database C{veil_tmpl}; L{fresh_database} clones it
for each test.  When the tests run as root, the cluster runs as the user
L{veil.store.embedded.run_as_user} picks.

The binaries are those L{veil.store.embedded.find_bindir} finds, or
C{$VEIL_TEST_PG_BINDIR}.  Blocking calls are fine here: this is test support.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg import sql
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from veil.errors import EmbeddedPostgresError
from veil.store.db import Database
from veil.store.embedded import (
    RunAs,
    find_bindir,
    is_postmaster_for,
    pg_ctl_sync,
    pid_alive,
    prepare_cluster_dirs,
    read_postmaster_pid,
    run_as_user,
    run_initdb_sync,
    server_settings,
    settings_argv,
    socket_conninfo,
)
from veil.store.migrate import default_schema_dir, migrate_sync

TEMPLATE = "veil_tmpl"
_PREFIX = "veil-test-pg-"


@attrs.define(eq=False)
class TestCluster:
    """
    One PostgreSQL cluster for this test process.

    @ivar base: the temporary directory holding everything (removed at exit).
    """

    __test__ = False  # not a test case, whatever a collector thinks

    base: Path
    bindir: Path
    run_as: RunAs
    pgdata: Path
    socket_dir: Path
    log_file: Path

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq connection string for C{dbname} as the superuser C{veil}."""
        return socket_conninfo(self.socket_dir, dbname)

    def admin_connect(self) -> psycopg.Connection:
        """An autocommit connection to the C{postgres} database (close it)."""
        return psycopg.connect(self.conninfo("postgres"), autocommit=True, connect_timeout=10)

    def pg_ctl(self, *args: str, timeout: float = 90.0) -> str:
        """Run C{pg_ctl -D PGDATA args…} as the cluster's user; its output."""
        try:
            return pg_ctl_sync(self.pgdata, list(args), bindir=self.bindir,
                               run_as=self.run_as.name, timeout=timeout)
        except EmbeddedPostgresError as e:
            raise EmbeddedPostgresError(f"{e}\nserver log:\n{self.log_tail()}") from None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_file.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        settings = server_settings(self.socket_dir, fsync=False, max_connections=300,
                                   extra={"max_locks_per_transaction": "128"})
        options = " ".join(shlex.quote(a) for a in settings_argv(settings))
        self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file), "-o", options)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (C{smart}, C{fast} or C{immediate}) and wait for it."""
        self.pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def running(self) -> bool:
        info = read_postmaster_pid(self.pgdata)
        return info is not None and is_postmaster_for(info.pid, self.pgdata)

    def destroy(self) -> None:
        """Stop the server if it runs and remove every file."""
        try:
            if self.running():
                self.stop("fast")
        except (EmbeddedPostgresError, subprocess.SubprocessError, OSError):
            _kill_postmaster(self.pgdata)
        shutil.rmtree(self.base, ignore_errors=True)


def _kill_postmaster(pgdata: Path) -> None:
    """Stop the postmaster of C{pgdata} with signals (immediate shutdown), bounded."""
    info = read_postmaster_pid(pgdata)
    if info is None or not is_postmaster_for(info.pid, pgdata):
        return
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(info.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while pid_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(info.pid):
            return


def _reap_abandoned() -> None:
    """
    Remove the clusters of earlier test processes that died without their
    C{atexit} clean-up (their C{owner.pid} is not running).
    """
    for base in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((base / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        _kill_postmaster(base / "postgres")
        shutil.rmtree(base, ignore_errors=True)


def _create() -> TestCluster:
    _reap_abandoned()
    configured = os.environ.get("VEIL_TEST_PG_BINDIR")
    bindir = find_bindir(Path(configured) if configured else None)
    user = run_as_user(None)
    base = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=tempfile.gettempdir()))
    (base / "owner.pid").write_text(f"{os.getpid()}\n")
    if user.switch:
        os.chown(base, user.uid, user.gid)
    layout = prepare_cluster_dirs(base, user, bindir)
    made = TestCluster(base=base, bindir=bindir, run_as=user, pgdata=layout.pgdata,
                       socket_dir=layout.socket_dir, log_file=base / "postgres.log")
    atexit.register(made.destroy)
    try:
        run_initdb_sync(bindir, layout.pgdata, user, sync=False)
        if user.switch:
            # pg_ctl -l opens the log as the cluster's user.
            made.log_file.touch(0o600)
            os.chown(made.log_file, user.uid, user.gid)
        made.start()
        _make_template(made)
    except BaseException:
        made.destroy()
        atexit.unregister(made.destroy)
        raise
    return made


def _make_template(made: TestCluster) -> None:
    with made.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    schema = default_schema_dir()
    if not schema.is_dir():
        # No migrations yet: the template still gets schema_migrations.
        schema = made.base / "no-schema"
        schema.mkdir(exist_ok=True)
    migrate_sync(made.conninfo(TEMPLATE), schema)
    with made.admin_connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true").format(
            sql.Identifier(TEMPLATE)))


_cluster: TestCluster | None = None
_failure: BaseException | None = None


def cluster() -> TestCluster:
    """This process's cluster, created and started on first use."""
    global _cluster, _failure
    if _cluster is None:
        if _failure is not None:
            raise _failure
        try:
            _cluster = _create()
        except Exception as e:
            _failure = e
            raise
    return _cluster


def fresh_database(testcase: SynchronousTestCase) -> str:
    """
    A new database cloned from the migrated template, dropped when
    C{testcase} cleans up; returns its connection string.
    """
    made = cluster()
    name = f"test_{uuid.uuid4().hex[:16]}"
    with made.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(TEMPLATE)))

    def drop() -> None:
        with made.admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    testcase.addCleanup(drop)
    return made.conninfo(name)


def started_database(testcase: SynchronousTestCase, conninfo: str, max_size: int = 3,
                     **kwargs: Any) -> Database:
    """
    A L{Database} on C{conninfo} (one connection kept, C{max_size} at most),
    started, and closed when C{testcase} cleans up.
    """
    db = Database(conninfo, reactor, min_size=1, max_size=max_size, **kwargs)
    db.start()
    testcase.addCleanup(db.close)
    return db
