"""
The database: a psycopg 3 connection pool used from a dedicated thread pool.

Every call returns a L{Deferred} that fires on the reactor thread.  Work
functions run on a database thread and must return plain values (tuples,
attrs records), never cursors.  Transactions are retried on serialization
failures, deadlocks and lost connections, so a work function must be safe
to run again.  A database that cannot be reached within C{connect_timeout}
fails the call with L{StoreUnavailable}; nothing waits forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from veil.errors import StoreUnavailable
from veil.metrics import Registry

T = TypeVar("T")

#: SQLSTATEs after which the whole transaction is simply run again.
_RETRY_STATES = (pgerrors.SerializationFailure, pgerrors.DeadlockDetected)
_MAX_RETRIES = 5


@attrs.define(eq=False)
class Database:
    """
    A connection pool on its own thread pool.

    @ivar healthy: whether the last attempt to reach the database worked,
        as seen by calls and by the pool's reconnection attempts.
    @ivar last_error: the last connection problem, for C{/ready}.
    """

    conninfo: str
    reactor: Any  # IReactorThreads and IReactorTime
    min_size: int = 2
    max_size: int = 6
    connect_timeout: float = 5.0
    statement_timeout: float = 30.0
    application_name: str = "veil"
    metrics: Registry = attrs.field(factory=Registry)
    healthy: bool = attrs.field(default=False, init=False)
    last_error: str | None = attrs.field(default=None, init=False)
    _pool: ConnectionPool = attrs.field(init=False)
    _threads: ThreadPool = attrs.field(init=False)
    _log: Logger = attrs.field(factory=Logger, init=False)
    _waits: Any = attrs.field(default=None, init=False)
    _runs: Any = attrs.field(default=None, init=False)
    _retries: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        assert IReactorThreads.providedBy(self.reactor)
        assert IReactorTime.providedBy(self.reactor)
        options = "-c statement_timeout={}".format(int(self.statement_timeout * 1000))
        self._pool = ConnectionPool(
            self.conninfo,
            open=False,
            min_size=self.min_size,
            max_size=self.max_size,
            name=self.application_name,
            timeout=self.connect_timeout,
            # Give up re-creating a connection after this long; the next
            # request grows the pool again, so recovery needs no restart.
            reconnect_timeout=max(10.0, self.connect_timeout * 2),
            reconnect_failed=self._reconnect_failed,
            check=ConnectionPool.check_connection,
            max_lifetime=3600.0,
            max_idle=600.0,
            kwargs={
                "application_name": self.application_name,
                "connect_timeout": max(2, int(self.connect_timeout + 0.999)),
                "options": options,
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
        self._threads = ThreadPool(minthreads=0, maxthreads=self.max_size, name="veil-db")
        self._waits = self.metrics.histogram(
            "veil_db_thread_wait_seconds", "Time a database call waited for a thread"
        )
        self._runs = self.metrics.histogram(
            "veil_db_run_seconds", "Time a database call ran on its thread"
        )
        self._retries = self.metrics.counter(
            "veil_db_retries_total", "Transactions run again after a retryable error"
        )

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        """
        Start the threads and open the pool without waiting: connections
        are made in the background, and the first call waits for one (at
        most C{connect_timeout}).
        """
        self._threads.start()
        self._pool.open(wait=False)

    def close(self) -> Deferred[None]:
        """Close the pool and join the threads; fires when both are done."""
        async def close() -> None:
            try:
                await deferToThreadPool(self.reactor, self._threads, self._pool.close, 5.0)
            finally:
                self._threads.stop()

        return Deferred.fromCoroutine(close())

    # -- calls ----------------------------------------------------------------

    def _in_thread(self, desc: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        queued = time.monotonic()

        def timed() -> T:
            started = time.monotonic()
            self._waits.observe(started - queued, desc=desc)
            try:
                return fn(*args, **kwargs)
            finally:
                self._runs.observe(time.monotonic() - started, desc=desc)

        d = deferToThreadPool(self.reactor, self._threads, timed)
        d.addCallbacks(self._worked, self._failed)
        return d

    def _worked(self, result: T) -> T:
        if not self.healthy:
            self._log.info("Database reachable")
        self.healthy, self.last_error = True, None
        return result

    def _failed(self, failure: Any) -> Any:
        if failure.check(StoreUnavailable):
            if self.healthy:
                self._log.warn("Database unreachable: {error}", error=failure.value)
            self.healthy, self.last_error = False, str(failure.value)
        return failure

    def _reconnect_failed(self, pool: ConnectionPool) -> None:
        # Called on one of the pool's own threads.
        self.reactor.callFromThread(self._mark_unreachable, "reconnection attempts failed")

    def _mark_unreachable(self, reason: str) -> None:
        self.healthy, self.last_error = False, reason

    def unreachable(self) -> str | None:
        """
        Why the database is known to be unreachable (the last call, or the
        pool's reconnection attempts, failed to reach it), or L{None}; from
        what is already known, without I/O.
        """
        if self.healthy:
            return None
        return self.last_error or "the database has not answered yet"

    def _connection(self, timeout: float | None = None) -> _unavailable_on_timeout:
        """
        A pooled connection as a context manager; entering it raises
        L{StoreUnavailable} when none comes within C{timeout} (default:
        C{connect_timeout}) or the pool is closed.
        """
        wait = self.connect_timeout if timeout is None else timeout
        return _unavailable_on_timeout(self._pool.connection(timeout=wait))

    def transact(self, desc: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """
        Run C{fn(cursor, *args, **kwargs)} in one transaction on a database
        thread and fire with its result once committed.

        Serialization failures, deadlocks and lost connections run the
        whole transaction again (so C{fn} must be re-runnable).
        """
        return self._in_thread(desc, self._transact, desc, fn, args, kwargs)

    def _transact(self, desc: str, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._connection() as conn:
                    with conn.transaction():
                        with conn.cursor() as cur:
                            return fn(cur, *args, **kwargs)
            except _RETRY_STATES as e:
                if attempt >= _MAX_RETRIES:
                    raise
                self._retries.inc(desc=desc, reason=type(e).__name__)
                time.sleep(0.01 * attempt)  # on a database thread, not the reactor
            except psycopg.OperationalError as e:
                if not _connection_lost(e) or attempt >= 3:
                    raise
                self._retries.inc(desc=desc, reason="connection_lost")

    def run_with_connection(self, desc: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """
        Run C{fn(connection, *args, **kwargs)} on a database thread with a
        pooled connection, managing no transaction for it (what is left
        uncommitted is committed when C{fn} returns, rolled back if it
        raises).  Not retried.
        """
        def run() -> T:
            with self._connection() as conn:
                return fn(conn, *args, **kwargs)

        return self._in_thread(desc, run)

    def query(self, desc: str, statement: str | sql.Composable, params: Sequence[Any] | None = None) -> Deferred[list[tuple]]:
        """Run one statement and fire with all its rows as tuples."""
        def fetch(cur: psycopg.Cursor) -> list[tuple]:
            cur.execute(statement, params)
            return cur.fetchall() if cur.description else []

        return self.transact(desc, fetch)

    def ping(self, timeout: float | None = None) -> Deferred[float]:
        """
        Check that the database answers; fire with the round trip in
        seconds, or fail with L{StoreUnavailable}.
        """
        def ping() -> float:
            started = time.monotonic()
            try:
                with self._connection(timeout) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as e:
                raise StoreUnavailable(f"database connection failed: {e}") from None
            return time.monotonic() - started

        return self._in_thread("ping", ping)

    def copy_rows(self, desc: str, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Deferred[int]:
        """
        Append C{rows} to C{table} with C{COPY ... FROM STDIN} in one
        transaction; fire with the number of rows written.
        """
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        batch = list(rows)

        def copy(cur: psycopg.Cursor) -> int:
            with cur.copy(statement) as out:
                for row in batch:
                    out.write_row(row)
            return len(batch)

        return self.transact(desc, copy)


class _unavailable_on_timeout:
    """Turn the pool's timeout into L{StoreUnavailable} when entering."""

    def __init__(self, cm: Any) -> None:
        self._cm = cm

    def __enter__(self) -> psycopg.Connection:
        try:
            return self._cm.__enter__()
        except PoolTimeout as e:
            raise StoreUnavailable(f"no database connection: {e}") from None
        except PoolClosed as e:
            raise StoreUnavailable(f"the connection pool is closed: {e}") from None

    def __exit__(self, *exc: Any) -> Any:
        return self._cm.__exit__(*exc)


def _connection_lost(e: psycopg.OperationalError) -> bool:
    """Whether C{e} means the connection died (rather than a bad query)."""
    if isinstance(e, (pgerrors.AdminShutdown, pgerrors.CrashShutdown,
                      pgerrors.CannotConnectNow)):
        return True
    return e.sqlstate is None or e.sqlstate.startswith("08")
