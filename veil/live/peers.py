"""
Other processes' request-log rows, into this process's live hub.

Every flusher announces each batch it wrote on C{veil_requests} (an
L{Announcement}: its origin, the batch's id ranges, the sites touched).
L{PeerFeed} listens; for a batch of another process that touches a watched
site (L{Hub.wanted}), it reads exactly those rows back (by id range and
site, on the database's thread pool) and publishes them to the hub.  The
process's own batches are skipped: the hub had them at once.

One fetch runs at a time; announcements that arrive meanwhile wait, and are
fetched together.  If more than C{max_pending} wait, or a fetch fails, or the
listener reconnects (notifications are never replayed), the hub marks a
gap, so subscribers know to re-hydrate.
"""

from __future__ import annotations

import uuid
from collections import deque
from typing import Any

import attrs
import psycopg
from psycopg import sql
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from veil.errors import VeilError
from veil.live.hub import Hub
from veil.metrics import Registry
from veil.store.logrows import select_list
from veil.store.requestlog import CHANNEL, COLUMNS, Announcement, LogRow

_log = Logger()

# The columns of a LogRow, in order, as request_log gives them back.
_SELECT = select_list(COLUMNS)


@attrs.define(eq=False)
class PeerFeed(Service):
    """
    Feeds L{hub} with the rows other processes write.

    @ivar listener: anything with L{veil.store.listener.ListenerService}'s
        C{subscribe(channel, on_notify, on_reload)}.
    @ivar db: a L{veil.store.db.Database}.
    @ivar batch_announcements: announcements fetched together at most.
    """

    hub: Hub
    db: Any
    listener: Any
    clock: IReactorTime
    metrics: Registry = attrs.field(factory=Registry)
    max_pending: int = 200
    batch_announcements: int = 16
    fetch_timeout: float = 30.0
    _subscription: Any = attrs.field(default=None, init=False)
    _pending: deque[Announcement] = attrs.field(factory=deque, init=False)
    _fetching: Deferred[None] | None = attrs.field(default=None, init=False)
    _idle: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _rows: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._rows = self.metrics.counter(
            "veil_live_peer_rows_total", "Rows of other processes fetched for the live hub")

    def startService(self) -> None:
        super().startService()
        self._subscription = self.listener.subscribe(CHANNEL, self.notified, self.reloaded)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self._pending.clear()
        d: Deferred[None] = Deferred()
        if self._fetching is None:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    # -- notifications (reactor thread) ---------------------------------------

    def notified(self, payload: str) -> None:
        """One C{veil_requests} notification."""
        try:
            note = Announcement.parse(payload)
        except ValueError as e:
            _log.warn("Ignoring a malformed request-log announcement: {error}", error=str(e))
            return
        if note.origin == self.hub.origin or not self.running:
            return
        if self.hub.wanted(note.sites) is None:
            return
        if not note.ranges:
            # Its ids could not be listed: rows of watched sites are missing.
            self.hub.mark_gap("fetch")
            return
        if len(self._pending) >= self.max_pending:
            self._pending.clear()
            _log.warn("Fetching other processes' request-log rows fell behind; the live"
                      " stream has a gap")
            self.hub.mark_gap("behind")
        self._pending.append(note)
        self._next()

    def reloaded(self) -> None:
        """The listener (re)connected: announcements may have been missed."""
        self.hub.mark_gap("reconnect")

    # -- fetching ----------------------------------------------------------------

    def _next(self) -> None:
        if self._fetching is not None or not self._pending:
            return
        notes = [self._pending.popleft()
                 for _ in range(min(self.batch_announcements, len(self._pending)))]
        wanted = self.hub.wanted(_sites(notes))
        if wanted is None:
            self._next()
            return
        ranges = [r for note in notes for r in note.ranges]
        sites = sorted(wanted) if wanted else None
        d = self.db.transact("live.peer_rows", _fetch, ranges, sites)
        d.addTimeout(self.fetch_timeout, self.clock)
        d.addCallbacks(self._fetched, self._failed)
        self._fetching = d
        d.addBoth(self._done)

    def _fetched(self, rows: list[LogRow]) -> None:
        if not self.running:
            return
        self._rows.inc(len(rows))
        for row in rows:
            self.hub.publish(row)

    def _failed(self, failure: Failure) -> None:
        if failure.check(VeilError, psycopg.Error, TimeoutError):
            _log.warn("Fetching other processes' request-log rows failed ({error}); the live"
                      " stream has a gap", error=failure.value)
        else:
            _log.failure("Fetching other processes' request-log rows failed", failure)
        self.hub.mark_gap("fetch")

    def _done(self, _: object) -> None:
        self._fetching = None
        if self.running:
            self._next()
        if self._fetching is None:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)


def _sites(notes: list[Announcement]) -> set[uuid.UUID] | None:
    sites: set[uuid.UUID] = set()
    for note in notes:
        if note.sites is None:
            return None
        sites.update(note.sites)
    return sites


def _fetch(cur: psycopg.Cursor, ranges: list[tuple[int, int]],
           sites: list[uuid.UUID] | None) -> list[LogRow]:
    """The rows of C{sites} (C{None}: all) with ids in C{ranges}, by id (DB thread)."""
    rows: list[LogRow] = []
    for first, last in ranges:
        if sites is None:
            cur.execute(sql.SQL("SELECT {} FROM request_log WHERE id BETWEEN %s AND %s"
                                " ORDER BY id").format(_SELECT), (first, last))
        else:
            cur.execute(sql.SQL("SELECT {} FROM request_log WHERE id BETWEEN %s AND %s"
                                " AND site_id = ANY(%s) ORDER BY id").format(_SELECT),
                        (first, last, sites))
        rows.extend(LogRow(*values) for values in cur.fetchall())
    return rows
