"""
Cluster-wide locks: PostgreSQL session advisory locks on one connection.

Every lock a process holds lives on a single dedicated connection, driven by
a single thread, so holding many locks at once (twenty certificate
issuances, a few workers) costs one connection, not one each.  Session
locks are re-entrant within a session, so the process also remembers which
names it holds and never hands one out twice.  If the lock connection dies,
PostgreSQL releases its locks: the holders are told through L{Lock.lost}
and the next attempt reconnects.
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import psycopg
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from veil.errors import StoreUnavailable

_log = Logger()


def lock_key(name: str) -> int:
    """The signed 64-bit advisory lock key Veil uses for C{name}."""
    digest = hashlib.sha256(b"veil-lock:" + name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@attrs.define(eq=False)
class Lock:
    """A held lock; release it when the guarded work is done."""

    name: str
    _session: LockSession
    _generation: int

    @property
    def lost(self) -> bool:
        """Whether the lock connection died since the lock was taken."""
        return self._generation != self._session._generation

    def release(self) -> Deferred[None]:
        return self._session._release(self)


@attrs.define(eq=False)
class LockSession:
    """One connection and one thread holding this process's advisory locks."""

    conninfo: str
    reactor: Any
    connect_timeout: float = 5.0
    _conn: psycopg.Connection | None = attrs.field(default=None, init=False)
    _thread: ThreadPool = attrs.field(init=False)
    _held: set[str] = attrs.field(factory=set, init=False)
    _generation: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._thread = ThreadPool(minthreads=0, maxthreads=1, name="veil-locks")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> Deferred[None]:
        async def close() -> None:
            try:
                await deferToThreadPool(self.reactor, self._thread, self._disconnect)
            finally:
                self._thread.stop()

        return Deferred.fromCoroutine(close())

    def try_lock(self, name: str) -> Deferred[Lock | None]:
        """
        Take the lock C{name} without waiting; fire with a L{Lock}, or with
        L{None} when this or another process holds it.
        """
        if name in self._held:
            return succeed(None)
        self._held.add(name)
        d = deferToThreadPool(self.reactor, self._thread, self._take, lock_key(name))

        def taken(result: tuple[bool, int]) -> Lock | None:
            ok, generation = result
            if not ok:
                self._held.discard(name)
                return None
            return Lock(name, self, generation)

        def failed(failure: Any) -> Any:
            self._held.discard(name)
            return failure

        return d.addCallbacks(taken, failed)

    def _release(self, lock: Lock) -> Deferred[None]:
        if lock.name not in self._held:
            return succeed(None)

        def released(_: object) -> None:
            self._held.discard(lock.name)

        d = deferToThreadPool(self.reactor, self._thread, self._give_back,
                              lock_key(lock.name), lock._generation)
        return d.addBoth(released)

    # -- on the lock thread --------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._disconnect()
        try:
            self._conn = psycopg.connect(
                self.conninfo, autocommit=True, application_name="veil-locks",
                connect_timeout=max(2, int(self.connect_timeout + 0.999)))
        except psycopg.OperationalError as e:
            raise StoreUnavailable(f"lock connection failed: {e}") from None
        self._generation += 1
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _take(self, key: int) -> tuple[bool, int]:
        for attempt in (1, 2):
            conn = self._connection()
            try:
                (ok,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                return bool(ok), self._generation
            except psycopg.OperationalError:
                self._disconnect()
                if attempt == 2:
                    raise StoreUnavailable("lock connection lost") from None
        raise AssertionError("unreachable")

    def _give_back(self, key: int, generation: int) -> None:
        if generation != self._generation or self._conn is None:
            return  # that session is gone, and the lock with it
        try:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        except psycopg.OperationalError:
            self._disconnect()
