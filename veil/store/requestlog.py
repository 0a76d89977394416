"""
The request log pipeline: one row per request, written in batches, never lost.

The proxy calls L{RequestLog.append} with a L{LogRow}: the row goes to the
live hub, and into an in-memory L{Batch} as a line of C{COPY} text
(L{veil.store.logrows}), at once, and the request moves on.
Every C{interval} seconds, or as soon as C{batch_max} rows are waiting, the
buffer becomes a batch.  One batch at a time is written, on a thread and a
connection of the log's own (so flushes never starve other queries): its
ids are drawn from C{request_log_id_seq} in one block, the rows go in with
C{COPY}, and one C{NOTIFY veil_requests} (an L{Announcement}: the writer's
origin, the id ranges and the sites touched) lets the other processes' live
hubs fetch exactly those rows.

When the database is away, the batch that failed and every later one are
appended to spool files in the data directory, in order; once a write
works again the spool is replayed, oldest first, before anything newer.
Stopping drains everything: to the database if it answers, else to the
spool, which the next start replays.  Rows are only ever dropped when the
disk itself refuses them (counted in C{veil_request_log_dropped_total}),
or when PostgreSQL rejects the data itself (C{..._rejected_total}).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg import errors as pgerrors
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from veil.metrics import Registry
from veil.store.locks import lock_key
from veil.store.logrows import COLUMNS, Batch, LogRow, copy_line

_log = Logger()



#: The channel of the flusher's announcements.
CHANNEL = "veil_requests"
#: Held while a batch's ids are drawn, so that they are one contiguous block.
ID_LOCK_KEY = lock_key("request_log.ids")
#: Announcements stay well under PostgreSQL's 8000-byte NOTIFY limit.
ANNOUNCEMENT_MAX = 6000
_MAX_SITES = 100
_MAX_RANGES = 32


@attrs.frozen
class Announcement:
    """
    What one written batch tells the other processes (C{NOTIFY veil_requests}).

    @ivar origin: the writing log's C{origin} (its process's hub id).
    @ivar count: rows in the batch.
    @ivar ranges: the batch's ids as inclusive C{(first, last)} ranges, in
        order; empty when they could not be listed (then readers can only
        note a gap).
    @ivar sites: the sites touched, or C{None} when there were too many to
        list (any site may have rows).
    """

    origin: str
    count: int
    ranges: tuple[tuple[int, int], ...]
    sites: tuple[uuid.UUID, ...] | None

    @classmethod
    def for_batch(cls, origin: str, batch: Batch, ids: Sequence[int]) -> Announcement:
        return cls(origin, len(batch), id_ranges(ids), tuple(sorted(batch.sites)))

    def payload(self) -> str:
        """The NOTIFY payload: JSON, at most L{ANNOUNCEMENT_MAX} bytes."""
        body: dict[str, Any] = {"v": 1, "origin": self.origin, "count": self.count}
        if self.ranges and len(self.ranges) <= _MAX_RANGES:
            body["ids"] = [list(r) for r in self.ranges]
        if self.sites is not None and len(self.sites) <= _MAX_SITES:
            body["sites"] = [str(site) for site in self.sites]
        text = json.dumps(body, separators=(",", ":"))
        if len(text) > ANNOUNCEMENT_MAX:
            body.pop("sites", None)
            text = json.dumps(body, separators=(",", ":"))
        return text

    @classmethod
    def parse(cls, payload: str) -> Announcement:
        """Read a payload made by L{payload}; C{ValueError} if it is not one."""
        try:
            body = json.loads(payload)
            if not isinstance(body, dict) or body.get("v") != 1:
                raise ValueError("not a version 1 announcement")
            ranges = tuple((int(lo), int(hi)) for lo, hi in body.get("ids", ()))
            sites = body.get("sites")
            return cls(str(body["origin"]), int(body["count"]), ranges,
                       None if sites is None else tuple(uuid.UUID(s) for s in sites))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed announcement: {e}") from None


def id_ranges(ids: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """C{ids} as sorted inclusive C{(first, last)} ranges."""
    ranges: list[list[int]] = []
    for value in sorted(ids):
        if ranges and value <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], value)
        else:
            ranges.append([value, value])
    return tuple((lo, hi) for lo, hi in ranges)


def _legacy_line(line: str) -> str:
    """A spooled row in the JSON form of earlier versions, as a COPY line."""
    values = []
    for value in json.loads(line):
        if isinstance(value, dict) and "t" in value:
            values.append(datetime.fromisoformat(value["t"]))
        elif isinstance(value, dict) and "u" in value:
            values.append(uuid.UUID(value["u"]))
        else:
            values.append(value)
    return copy_line(LogRow(*values))


@attrs.define(eq=False)
class Spool:
    """
    Batches waiting for the database, one file each, named in order; each
    line of a file is a row's C{COPY} line.

    Used only from the log's writer thread.
    """

    directory: Path
    _next: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        numbers = [int(p.stem) for p in self._files()]
        self._next = max(numbers, default=-1) + 1

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("*.rows") if p.stem.isdigit())

    def __bool__(self) -> bool:
        return bool(self._files())

    def rows(self) -> int:
        return sum(1 for p in self._files() for _ in p.open("r", encoding="utf-8"))

    def append(self, batch: Batch) -> None:
        """Write C{batch} as the newest file (atomically, synced)."""
        path = self.directory / f"{self._next:012d}.rows"
        temporary = path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as f:
            f.writelines(batch.lines)
            f.flush()
            os.fsync(f.fileno())
        temporary.rename(path)
        self._next += 1

    def oldest(self) -> tuple[Path, Batch] | None:
        files = self._files()
        if not files:
            return None
        with files[0].open("r", encoding="utf-8", newline="\n") as f:
            lines = [_legacy_line(line) if line.startswith("[") else line
                     for line in f if line.strip()]
        return files[0], Batch.from_lines(lines)


@attrs.define(eq=False)
class RequestLog(Service):
    """
    @ivar publish: called with every row at once (the live hub).
    @ivar origin: this log's id in its announcements; the process's hub
        uses the same id to recognise (and skip) the process's own batches.
    @ivar memory_cap: rows held in memory while the database is away before
        they go to the spool; they always go there when stopping.
    """

    conninfo: str
    reactor: Any  # IReactorTime and IReactorThreads
    spool_dir: Path
    publish: Callable[[LogRow], object] = lambda row: None
    origin: str = attrs.field(factory=lambda: secrets.token_hex(6))
    metrics: Registry = attrs.field(factory=Registry)
    interval: float = 0.25
    batch_max: int = 5000
    memory_cap: int = 50000
    connect_timeout: float = 5.0
    max_backoff: float = 10.0
    _buffer: Batch = attrs.field(factory=Batch, init=False)
    _queue: deque[Batch] = attrs.field(factory=deque, init=False)
    _writing: Deferred[None] | None = attrs.field(default=None, init=False)
    _timer: IDelayedCall | None = attrs.field(default=None, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _thread: ThreadPool = attrs.field(init=False)
    _conn: psycopg.Connection | None = attrs.field(default=None, init=False)
    _spool: Spool | None = attrs.field(default=None, init=False)
    _spooling: bool = attrs.field(default=False, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _written: Any = attrs.field(default=None, init=False)
    _spooled: Any = attrs.field(default=None, init=False)
    _dropped: Any = attrs.field(default=None, init=False)
    _rejected: Any = attrs.field(default=None, init=False)
    _batch_seconds: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._thread = ThreadPool(minthreads=0, maxthreads=1, name="veil-requestlog")
        self._written = self.metrics.counter("veil_request_log_written_total",
                                             "Request log rows written to the database")
        self._spooled = self.metrics.counter("veil_request_log_spooled_total",
                                             "Request log rows written to the spool")
        self._dropped = self.metrics.counter("veil_request_log_dropped_total",
                                             "Request log rows lost (the disk refused them)")
        self._rejected = self.metrics.counter("veil_request_log_rejected_total",
                                              "Request log rows PostgreSQL refused as data")
        self._batch_seconds = self.metrics.histogram(
            "veil_request_log_batch_seconds",
            "Time to write one request-log batch to the database (ids, COPY, commit)")

    # -- the hot path ----------------------------------------------------------

    def append(self, row: LogRow) -> None:
        """Record one request; never waits."""
        self._buffer.add(row)
        try:
            self.publish(row)
        except Exception:
            _log.failure("Publishing a request to the live hub failed")
        if len(self._buffer) >= self.batch_max:
            self._cut()
            self._kick()

    @property
    def pending(self) -> int:
        """Rows appended but not yet written to the database or the spool."""
        return len(self._buffer) + sum(len(b) for b in self._queue)

    # -- life cycle ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._thread.start()
        self._spool = Spool(self.spool_dir)
        self._spooling = bool(self._spool)
        if self._spooling:
            _log.info("Request log: replaying spooled rows from {dir}", dir=str(self.spool_dir))
        self._schedule(0)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        if self._writing is not None:
            await _settled(self._writing)
        self._cut()
        # Everything to the database while it answers (spool first, in
        # order); once it does not, everything left goes to the spool.
        while self._queue or self._spooling:
            batch = self._queue[0] if self._queue else None
            consumed, error = await deferToThreadPool(self.reactor, self._thread, self._step,
                                                      batch, True)
            if consumed and batch is not None:
                self._queue.popleft()
            if error is not None:
                left = list(self._queue)
                self._queue.clear()
                await deferToThreadPool(self.reactor, self._thread, self._spool_all, left)
                _log.warn("Request log: database unavailable at shut-down ({error}); rows kept"
                          " in the spool for the next start", error=error)
                break
        await deferToThreadPool(self.reactor, self._thread, self._close)
        self._thread.stop()

    # -- batching --------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if not self._stopping:
            self._timer = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._cut()
        self._kick()
        if self._writing is None:
            self._schedule(self.interval)

    def _cut(self) -> None:
        if self._buffer:
            self._queue.append(self._buffer)
            self._buffer = Batch()

    def _kick(self) -> None:
        if self._writing is not None or self._stopping:
            return
        if not self._queue and not self._spooling:
            return
        batch = self._queue[0] if self._queue else None
        spill = self.pending > self.memory_cap
        d = deferToThreadPool(self.reactor, self._thread, self._step, batch, spill)
        self._writing = d
        d.addCallbacks(self._stepped, self._step_failed, callbackArgs=(batch,))

    def _stepped(self, outcome: tuple[bool, str | None], batch: Batch | None) -> None:
        self._writing = None
        consumed, error = outcome
        if consumed and batch is not None and self._queue and self._queue[0] is batch:
            self._queue.popleft()
        if error is not None:
            self._failures += 1
            delay = min(self.max_backoff, 0.25 * 2 ** min(self._failures, 8))
            if self._failures == 1:
                _log.warn("Request log: database unavailable ({error}); retrying in"
                          " {delay:.1f} s", error=error, delay=delay)
            if self._timer is None:
                self._schedule(delay)
            return
        if self._failures:
            _log.info("Request log: database available again")
        self._failures = 0
        if self._queue or self._spooling:
            self._kick()
        if self._writing is None and self._timer is None:
            self._schedule(self.interval)

    def _step_failed(self, failure: Failure) -> None:
        # Database trouble is reported by _step itself; this is a bug.
        self._writing = None
        self._failures += 1
        _log.failure("Request log: writing a batch failed", failure)
        if self._timer is None:
            self._schedule(min(self.max_backoff, 0.25 * 2 ** min(self._failures, 8)))

    # -- the writer thread -----------------------------------------------------

    def _step(self, batch: Batch | None, spill: bool) -> tuple[bool, str | None]:
        """
        One unit of work: replay the oldest spool file if the spool is in
        use, else write C{batch}.

        @return: whether C{batch} was consumed (written, or safe in the
            spool), and the database error that stopped the work, if any.
        """
        assert self._spool is not None
        if self._spooling:
            consumed = False
            if batch is not None:
                # Keep the order: while older rows wait in the spool, newer
                # batches join them there.
                self._to_spool(batch)
                consumed = True
            oldest = self._spool.oldest()
            if oldest is None:
                self._spooling = False
                return consumed, None
            path, rows = oldest
            try:
                self._write(rows)
            except psycopg.OperationalError as e:
                return consumed, _brief(e)
            path.unlink()
            if not self._spool:
                self._spooling = False
            return consumed, None
        assert batch is not None
        try:
            self._write(batch)
        except psycopg.OperationalError as e:
            if spill:
                self._to_spool(batch)
                self._spooling = True
                return True, _brief(e)
            return False, _brief(e)
        return True, None

    def _spool_all(self, batches: list[Batch]) -> None:
        for batch in batches:
            self._to_spool(batch)
        self._spooling = True

    def _to_spool(self, batch: Batch) -> None:
        assert self._spool is not None
        try:
            self._spool.append(batch)
        except OSError as e:
            self._dropped.inc(len(batch))
            _log.error("Request log: the spool refused {count} rows ({error}); they are lost",
                       count=len(batch), error=str(e))
            return
        self._spooled.inc(len(batch))

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._close()
            self._conn = psycopg.connect(
                self.conninfo, application_name="veil-requestlog",
                connect_timeout=max(2, int(self.connect_timeout + 0.999)))
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _write(self, batch: Batch) -> None:
        """COPY one batch and NOTIFY, in one transaction (retried once for partitions)."""
        started = time.monotonic()
        try:
            ids = self._draw_ids(len(batch))
            self._copy(batch, ids)
        except pgerrors.CheckViolation:
            # No partition for some row's month (clock skew, or the worker
            # has not run yet): make the partitions, then try once more.
            self._make_partitions(batch)
            try:
                self._copy(batch, ids)
            except (pgerrors.CheckViolation, pgerrors.DataError) as e:
                self._reject(batch, e)
        except pgerrors.DataError as e:
            self._reject(batch, e)
        except psycopg.OperationalError:
            self._close()
            raise
        self._batch_seconds.observe(time.monotonic() - started)
        self._written.inc(len(batch))

    def _draw_ids(self, count: int) -> range:
        """
        C{count} fresh ids, ascending and consecutive: one block reserved
        under the transaction lock every flusher takes, so the
        announcement stays one range (schema 002).
        """
        conn = self._connection()
        try:
            with conn.transaction():
                [first] = conn.execute("SELECT veil_request_log_reserve_ids(%s, %s)",
                                       (count, ID_LOCK_KEY)).fetchone()
        except psycopg.OperationalError:
            self._close()
            raise
        return range(first, first + count)

    def _copy(self, batch: Batch, ids: Sequence[int]) -> None:
        conn = self._connection()
        statement = psycopg.sql.SQL("COPY request_log ({}) FROM STDIN").format(
            psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, ("id",) + COLUMNS)))
        payload = Announcement.for_batch(self.origin, batch, ids).payload()
        data = copy_text(batch, ids)
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    with cur.copy(statement) as copy:
                        copy.write(data)
                    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        except psycopg.OperationalError:
            self._close()
            raise

    def _make_partitions(self, batch: Batch) -> None:
        conn = self._connection()
        with conn.transaction():
            for year, month in sorted(batch.months):
                conn.execute("SELECT veil_request_log_maintain(1200, %s)",
                             (datetime(year, month, 1, tzinfo=timezone.utc),))

    def _reject(self, batch: Batch, error: Exception) -> None:
        self._rejected.inc(len(batch))
        _log.error("Request log: PostgreSQL refused a batch of {count} rows as data: {error}",
                   count=len(batch), error=_brief(error))


def copy_text(batch: Batch, ids: Sequence[int]) -> bytes:
    """The C{COPY} text of C{batch}: each row's line, led by its id from C{ids}."""
    return "".join([f"{row_id}\t{line}" for row_id, line in zip(ids, batch.lines)]).encode("utf-8")


async def _settled(d: Deferred[Any]) -> None:
    done: Deferred[None] = Deferred()
    d.addBoth(lambda result: (done.callback(None), result)[1])
    await done


def _brief(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
