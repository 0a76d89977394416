"""
The PostgreSQL the dashboard benchmarks use.

With C{VEIL_BENCH_DATABASE_URL} set, that database (it must hold Veil's
schema, or be empty: the migrations are applied).  Otherwise a cluster of
its own under C{/tmp/veil-bench/dashboard/pg} (C{VEIL_BENCH_DIR} moves it),
made with the same initdb and settings as Veil's embedded cluster except
C{shared_buffers} (C{VEIL_BENCH_SHARED_BUFFERS}, default 256MB), started if
it is not running, and left running for the next script (C{stop} stops it):

    .venv/bin/python bench/dashboard/benchdb.py start|stop|url
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from veil.store.embedded import (
    find_bindir,
    is_postmaster_for,
    pg_ctl_sync,
    prepare_cluster_dirs,
    read_postmaster_pid,
    run_as_user,
    run_initdb_sync,
    server_settings,
    settings_argv,
    socket_conninfo,
)
from veil.store.migrate import default_schema_dir, migrate_sync

BASE = Path(os.environ.get("VEIL_BENCH_DIR", "/tmp/veil-bench/dashboard"))


def _layout():
    user = run_as_user(None)
    bindir = find_bindir(None)
    return user, bindir, prepare_cluster_dirs(BASE / "pg", user, bindir)


def start() -> None:
    """Make the cluster if there is none, and start it if it is not running."""
    if os.environ.get("VEIL_BENCH_DATABASE_URL"):
        return
    BASE.mkdir(parents=True, exist_ok=True)
    user, bindir, layout = _layout()
    if not (layout.pgdata / "PG_VERSION").exists():
        run_initdb_sync(bindir, layout.pgdata, user, sync=False)
    info = read_postmaster_pid(layout.pgdata)
    if info is not None and is_postmaster_for(info.pid, layout.pgdata):
        return
    log = BASE / "postgres.log"
    log.touch(0o600)
    if user.switch:
        os.chown(log, user.uid, user.gid)
    settings = server_settings(
        layout.socket_dir, fsync=False, max_connections=700,
        shared_buffers=os.environ.get("VEIL_BENCH_SHARED_BUFFERS", "256MB"),
        extra={"max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    options = " ".join(shlex.quote(a) for a in settings_argv(settings))
    pg_ctl_sync(layout.pgdata, ["start", "-w", "-t", "120", "-l", str(log), "-o", options],
                bindir=bindir, run_as=user.name, timeout=180)


def stop() -> None:
    user, bindir, layout = _layout()
    info = read_postmaster_pid(layout.pgdata)
    if info is not None and is_postmaster_for(info.pid, layout.pgdata):
        pg_ctl_sync(layout.pgdata, ["stop", "-w", "-m", "fast"], bindir=bindir,
                    run_as=user.name, timeout=180)


def url(dbname: str = "veil_bench") -> str:
    """The connection string of the benchmark database C{dbname} (created and migrated)."""
    configured = os.environ.get("VEIL_BENCH_DATABASE_URL")
    if configured:
        migrate_sync(configured, default_schema_dir())
        return configured
    start()
    _, _, layout = _layout()
    admin = socket_conninfo(layout.socket_dir, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    conninfo = socket_conninfo(layout.socket_dir, dbname)
    migrate_sync(conninfo, default_schema_dir())
    return conninfo


def drop(dbname: str) -> None:
    """Drop the benchmark database C{dbname} of the bench cluster."""
    _, _, layout = _layout()
    admin = socket_conninfo(layout.socket_dir, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(dbname)))


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "url"
    if command == "start":
        start()
    elif command == "stop":
        stop()
    elif command == "url":
        print(url())
    else:
        sys.exit(__doc__)
