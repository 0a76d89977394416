"""
The foundation's two housekeeping workers: request-log partitions and
expired sessions.  Both run once per cluster (advisory lock per run).
"""

from __future__ import annotations

import psycopg
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.store.db import Database
from veil.store.locks import LockSession
from veil.workers.base import PeriodicWorker

_log = Logger()


def _maintain_partitions(cur: psycopg.Cursor, retention_months: int) -> list[tuple[str, str]]:
    cur.execute("SELECT action, partition_name FROM veil_request_log_maintain(%s)",
                (retention_months,))
    return [(action, name) for action, name in cur.fetchall()]


def _delete_expired_sessions(cur: psycopg.Cursor) -> int:
    cur.execute("DELETE FROM sessions WHERE expires_at < now()")
    return cur.rowcount


def partition_worker(db: Database, locks: LockSession, clock: IReactorTime,
                     retention_months: int, every: float = 86400.0) -> PeriodicWorker:
    """
    Create this month's and next month's C{request_log} partitions and drop
    those older than C{retention_months}, every C{every} seconds.
    """
    async def job() -> None:
        changes = await db.transact("partitions.maintain", _maintain_partitions, retention_months)
        for action, name in changes:
            _log.info("Request log partition {partition}: {action}", partition=name, action=action)

    return PeriodicWorker(
        "partitions", lambda: Deferred.fromCoroutine(job()), clock, every,
        lock=lambda: locks.try_lock("worker:partitions"),
    )


def session_cleanup_worker(db: Database, locks: LockSession, clock: IReactorTime,
                           every: float = 3600.0) -> PeriodicWorker:
    """Delete expired dashboard sessions every C{every} seconds."""
    async def job() -> None:
        removed = await db.transact("sessions.cleanup", _delete_expired_sessions)
        if removed:
            _log.info("Removed {count} expired sessions", count=removed)

    return PeriodicWorker(
        "session-cleanup", lambda: Deferred.fromCoroutine(job()), clock, every,
        lock=lambda: locks.try_lock("worker:session-cleanup"),
    )
