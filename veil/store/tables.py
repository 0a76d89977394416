"""
Hot-path tables: in-memory copies of store tables, kept current.

Everything a request needs lives in memory (DESIGN §2): read in the
database's thread pool, swapped in on the reactor thread, and kept current
by NOTIFY plus a periodic full reload as a safety net (store rules 3 and 5).
L{Keeper} is that mechanism, the one every such table uses:

  - L{Keeper.reload} reads every row (C{load_all}) and hands them to the
    table whole (L{Rows.replace}).  When reloads overlap, a snapshot older
    than the one already in is dropped.  Each caller's Deferred fires once a
    snapshot read after its call is in, or fails when none can be.
  - A notification's payload names one row: the keeper reads it
    (C{load_one}) and hands it to the table (L{Rows.put}, with L{None} when
    the row is gone).  Of several reads of one key, only the last one started
    is applied.  Keys notified while a reload is in flight are read again
    once its snapshot is in, since the snapshot may be older than the change
    (a row deleted meanwhile would otherwise come back).  A table without
    C{load_one}, or a payload that names no key, is reloaded whole.
  - After every (re)connection of the listener: a full reload, because
    PostgreSQL never replays a notification.
  - L{Keeper.refresher} is the supervised worker that reloads periodically.
  - A failed read leaves the table as it was.  The keeper then asks the
    refresher to run again soon, and the refresher retries with back-off.

The tables keep their own hot-path structures (dictionaries, prefix sets),
which their L{Rows} keeps up to date; L{KeyedRows} is the common case: rows
in a dictionary by key, with change callbacks and optional index hooks.
Only the reactor thread reads or changes a table: the loaders' Deferreds
fire there (L{veil.store.db.Database} calls do).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

import attrs
import psycopg
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.errors import VeilError
from veil.store.listener import ListenerService, Subscription
from veil.workers.base import PeriodicWorker

_log = Logger()

K = TypeVar("K")
V = TypeVar("V")


class Rows(Protocol[K, V]):
    """What a table does with what its keeper reads (on the reactor thread)."""

    def replace(self, rows: Mapping[K, V]) -> None:
        """Take C{rows} as the whole table."""

    def put(self, key: K, value: V | None) -> None:
        """Take C{value} as the row C{key} (L{None}: the row is gone)."""


@attrs.define(eq=False)
class KeyedRows(Generic[K, V]):
    """
    Rows in a dictionary by key: the L{Rows} of most tables.

    @ivar index_all: called with the new rows after a whole replacement, to
        rebuild the table's own lookup structures.
    @ivar index_one: called as C{index_one(key, before, after)} after one
        row changed (C{before} or C{after} L{None} for added or removed).
    @ivar rows: the rows by key; replaced (not changed in place) by a reload.
    @ivar loaded: whether a whole table has been taken at least once.
    """

    index_all: Callable[[dict[K, V]], object] | None = None
    index_one: Callable[[K, V | None, V | None], object] | None = None
    rows: dict[K, V] = attrs.field(factory=dict, init=False)
    loaded: bool = attrs.field(default=False, init=False)
    _callbacks: list[Callable[[V | None, V | None], object]] = attrs.field(
        factory=list, init=False)

    def get(self, key: K) -> V | None:
        return self.rows.get(key)

    def __len__(self) -> int:
        return len(self.rows)

    def values(self) -> list[V]:
        return list(self.rows.values())

    def on_change(self, callback: Callable[[V | None, V | None], object]) -> None:
        """
        Call C{callback(before, after)} for every row added (C{before} is
        L{None}), changed, or removed (C{after} is L{None}).
        """
        self._callbacks.append(callback)

    def replace(self, rows: Mapping[K, V]) -> None:
        before = self.rows
        after = self.rows = rows if type(rows) is dict else dict(rows)
        if self.index_all is not None:
            self.index_all(after)
        self.loaded = True
        if self._callbacks:
            for key in before.keys() | after.keys():
                old, new = before.get(key), after.get(key)
                if old != new:
                    self._changed(old, new)

    def put(self, key: K, value: V | None) -> None:
        before = self.rows.get(key)
        if before == value:
            return
        if value is None:
            del self.rows[key]
        else:
            self.rows[key] = value
        if self.index_one is not None:
            self.index_one(key, before, value)
        self._changed(before, value)

    def _changed(self, before: V | None, after: V | None) -> None:
        for callback in list(self._callbacks):
            try:
                callback(before, after)
            except Exception:  # noqa: BLE001 - one bad callback must not stop the rest
                _log.failure("Table change callback failed")


def _nothing() -> None:
    return None


@attrs.define(eq=False)
class Keeper(Generic[K, V]):
    """
    Keeps one table current (see the module docstring).

    @ivar name: the table's name, in logs and as its refresher's name.
    @ivar rows: the table.
    @ivar load_all: reads every row, by key.
    @ivar load_one: reads one row by key (L{None} when it is gone); without
        it, every notification reloads the whole table.
    @ivar key: a notification's payload as a key; C{ValueError} when the
        payload is not one.
    @ivar wants: for a cache that holds only some keys: whether a notified
        key is held (the others are not read).
    """

    name: str
    rows: Rows[K, V]
    load_all: Callable[[], Deferred[Mapping[K, V]]]
    clock: IReactorTime
    load_one: Callable[[K], Deferred[V | None]] | None = None
    key: Callable[[str], K] = str  # type: ignore[assignment]
    wants: Callable[[K], bool] | None = None
    _generation: int = attrs.field(default=0, init=False)
    _installed: int = attrs.field(default=0, init=False)
    _inflight: set[int] = attrs.field(factory=set, init=False)
    _waiters: list[tuple[int, Deferred[None]]] = attrs.field(factory=list, init=False)
    # Keys notified since the oldest reload still in flight started.
    _touched: set[K] | None = attrs.field(default=None, init=False)
    # The latest read per key: an older read's answer is dropped.
    _fetches: dict[K, int] = attrs.field(factory=dict, init=False)
    _fetch_seq: int = attrs.field(default=0, init=False)
    _refresher: PeriodicWorker | None = attrs.field(default=None, init=False)

    # -- wiring ------------------------------------------------------------------

    def follow(self, listener: ListenerService, *channels: str) -> list[Subscription]:
        """
        Apply the notifications of C{channels} (each payload a key), and
        reload whole after every (re)connection of C{listener}.
        """
        return [listener.subscribe(channel, self.notified,
                                   self._reconnected if i == 0 else _nothing)
                for i, channel in enumerate(channels)]

    def refresher(self, every: float) -> PeriodicWorker:
        """
        The supervised worker that reloads the table every C{every} seconds
        (for its owner to run).  After a failed read the keeper asks it to
        run again soon; it retries with back-off up to C{every}.
        """
        self._refresher = PeriodicWorker(
            self.name, self.reload, self.clock, every,
            backoff=backoffPolicy(initialDelay=1.0, maxDelay=every))
        return self._refresher

    # -- whole reloads -------------------------------------------------------------

    def reload(self) -> Deferred[None]:
        """
        Read every row and replace the table with them.  Fires once a
        snapshot read after this call is in; fails with the read's error when
        no reload in flight can provide one.
        """
        self._generation += 1
        generation = self._generation
        self._inflight.add(generation)
        if self._touched is None:
            self._touched = set()
        done: Deferred[None] = Deferred()
        self._waiters.append((generation, done))
        maybeDeferred(self.load_all).addCallbacks(
            self._loaded, self._load_failed,
            callbackArgs=(generation,), errbackArgs=(generation,))
        return done

    def _loaded(self, rows: Mapping[K, V], generation: int) -> None:
        self._inflight.discard(generation)
        if generation > self._installed:
            self._installed = generation
            touched = self._touched or set()
            self._touched = set() if self._newer_inflight(generation) else None
            try:
                self.rows.replace(rows)
            except Exception:  # noqa: BLE001 - a bug in the table: keep the keeper going
                _log.failure("Replacing table {table} failed", table=self.name)
            # A change notified while the snapshot was read may be missing
            # from it, or was applied to the table it has just replaced.
            for key in touched:
                self._fetch(key)
        elif not self._inflight:
            self._touched = None
        self._settle()

    def _load_failed(self, failure: Failure, generation: int) -> None:
        self._inflight.discard(generation)
        if not self._inflight:
            self._touched = None
        self._settle(failure, generation)

    def _newer_inflight(self, generation: int) -> bool:
        return any(g > generation for g in self._inflight)

    def _settle(self, failure: Failure | None = None, generation: int = 0) -> None:
        waiting = []
        for entry in self._waiters:
            wanted, d = entry
            if wanted <= self._installed:
                d.callback(None)
            elif (failure is not None and wanted <= generation
                  and not any(g >= wanted for g in self._inflight)):
                d.errback(failure)
            else:
                waiting.append(entry)
        self._waiters = waiting

    # -- notifications -------------------------------------------------------------

    def notified(self, payload: str) -> Deferred[None] | None:
        """A row changed: read it (or everything) again."""
        if self.load_one is None:
            return self._refresh("a change")
        try:
            key = self.key(payload)
        except ValueError:
            _log.warn("Unexpected change payload {payload!r} for {table}; reloading it whole",
                      payload=payload[:100], table=self.name)
            return self._refresh("an unexpected change payload")
        if self.wants is not None and not self.wants(key):
            return None
        return self._fetch(key)

    def _fetch(self, key: K) -> Deferred[None]:
        assert self.load_one is not None
        self._fetch_seq += 1
        seq = self._fetch_seq
        self._fetches[key] = seq
        if self._touched is not None:
            self._touched.add(key)

        def fetched(value: V | None) -> None:
            if self._fetches.get(key) != seq:
                return  # a later read of the same key answers instead
            del self._fetches[key]
            self.rows.put(key, value)

        def failed(failure: Failure) -> None:
            if self._fetches.get(key) == seq:
                del self._fetches[key]
            _log.error("Reading {key} for {table} after a change failed ({error});"
                       " reloading it soon", key=str(key), table=self.name,
                       error=failure.value)
            self._retry()

        return maybeDeferred(self.load_one, key).addCallbacks(fetched, failed)

    def _reconnected(self) -> Deferred[None]:
        return self._refresh("the change listener (re)connected")

    def _refresh(self, why: str) -> Deferred[None]:
        return self.reload().addErrback(self._refresh_failed, why)

    def _refresh_failed(self, failure: Failure, why: str) -> None:
        if failure.check(VeilError, psycopg.Error):
            _log.warn("Reloading {table} after {why} failed ({error}); trying again soon",
                      table=self.name, why=why, error=failure.value)
        else:
            _log.failure("Reloading {table} after {why} failed", failure, table=self.name,
                         why=why)
        self._retry()

    def _retry(self) -> None:
        if self._refresher is not None:
            self._refresher.run_soon()
