"""
The live hub: this process's request-log rows, and other processes', to the
subscribers that watch them (the dashboard's live stream).

The request log calls L{Hub.publish} once per request, on the reactor
thread.  Every row gets the next I{cursor} (an integer, increasing by one per
row) and goes into a bounded I{ring} of recent rows; subscribers of the
row's site, and subscribers of every site, get an L{Event} in their own
bounded queue.  With nobody subscribed, publishing is a counter increment
and a C{deque.append}; an event and its JSON-ready dict are made only for
rows somebody watches.

A subscriber that falls more than C{limit} items behind loses what it had
queued and is given a L{Gap} instead: its memory never grows past the bound,
and it knows it must re-hydrate from the database.  A subscriber that
reconnects passes the last event id it saw (C{Last-Event-ID}); the hub
replays the ring after it, or, when it cannot vouch that nothing is missing
(the id is another process's or too old, or this process was not fetching
other processes' rows for that site the whole time), starts the queue with
a L{Gap}.

Other processes' rows come in through L{veil.live.peers.PeerFeed}, which
publishes them here like local ones; the hub tells it which sites are
watched (L{Hub.wanted}), keeps fetching a site's rows for C{linger} seconds
after its last subscriber leaves (so that a reconnecting browser can
resume), and records its gaps (L{Hub.mark_gap}) in the ring and in every
queue.
"""

from __future__ import annotations

import secrets
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime
from itertools import islice
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from veil.metrics import Registry
from veil.store.requestlog import LogRow

_log = Logger()

#: The key of the operator view (every site) in the hub's bookkeeping.
EVERY_SITE = None


def row_data(row: LogRow) -> dict[str, Any]:
    """A request-log row as a JSON-ready dict (UUIDs and times as strings)."""
    return {
        "site_id": None if row.site_id is None else str(row.site_id),
        "ts": row.ts.isoformat() if isinstance(row.ts, datetime) else row.ts,
        "host": row.host,
        "method": row.method,
        "path": row.path,
        "query": row.query,
        "status": row.status,
        "bytes_in": row.bytes_in,
        "bytes_out": row.bytes_out,
        "duration_ms": row.duration_ms,
        "origin_ms": row.origin_ms,
        "client_ip": None if row.client_ip is None else str(row.client_ip),
        "request_id": row.request_id,
        "user_agent": row.user_agent,
        "classification": row.classification,
        "classifier": row.classifier,
        "confidence": row.confidence,
        "attack_type": row.attack_type,
        "blocked": row.blocked,
        "rule_ids": None if row.rule_ids is None else list(row.rule_ids),
        "anomaly_score": row.anomaly_score,
        "excerpt": row.excerpt,
    }


def event_id(hub: str, cursor: int) -> str:
    """The SSE id of the item at C{cursor} of hub C{hub}."""
    return f"{hub}-{cursor}"


def parse_event_id(text: str) -> tuple[str, int] | None:
    """The hub and cursor of an SSE id made by L{event_id}, or C{None}."""
    hub, sep, cursor = text.strip().rpartition("-")
    if not sep or not hub or not cursor.isdigit() or len(cursor) > 18:
        return None
    return hub, int(cursor)


@attrs.define(eq=False, slots=True)
class Event:
    """
    One request-log row, as a subscriber gets it.

    @ivar cursor: its place in the hub's sequence (increasing).
    @ivar hub: the hub's id (see L{Hub.origin}).
    """

    hub: str
    cursor: int
    row: LogRow
    _data: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)

    @property
    def id(self) -> str:
        """The SSE C{id:} (C{Last-Event-ID} on reconnection)."""
        return event_id(self.hub, self.cursor)

    @property
    def site_id(self) -> uuid.UUID | None:
        return self.row.site_id

    def data(self) -> dict[str, Any]:
        """The row as a JSON-ready dict (made once, shared: do not change it)."""
        if self._data is None:
            self._data = row_data(self.row)
        return self._data


@attrs.frozen
class Gap:
    """
    Events may be missing before this point: re-hydrate from the database.

    @ivar reason: C{"overflow"} (the subscriber fell more than its limit
        behind), C{"resume"} (the hub cannot replay from the id given),
        C{"reconnect"} (the change listener reconnected, so other processes'
        rows may have been missed), C{"behind"} (this process fell behind
        fetching them) or C{"fetch"} (fetching them failed).
    @ivar cursor: the hub's cursor when the gap was noticed; later events
        have larger cursors.
    """

    hub: str
    cursor: int
    reason: str

    @property
    def id(self) -> str:
        return event_id(self.hub, self.cursor)


@attrs.define(eq=False)
class Subscription:
    """
    One subscriber: a filter and a bounded queue of L{Event}s and L{Gap}s.

    @ivar site_id: the site watched, or C{None} for every site (including
        requests to unknown hosts).
    @ivar limit: the most items queued; past it the queue is replaced by a
        L{Gap}.
    @ivar on_ready: called with the subscription when its queue goes from
        empty to not empty (not for items queued by L{Hub.subscribe}
        itself); it should L{take} now or soon.
    @ivar lost: events dropped because the subscriber was too slow.
    """

    site_id: uuid.UUID | None
    limit: int
    on_ready: Callable[[Subscription], object] | None
    _hub: Hub
    lost: int = 0
    active: bool = True
    _queue: deque[Event | Gap] = attrs.field(factory=deque, init=False)

    def __len__(self) -> int:
        return len(self._queue)

    def take(self, most: int | None = None) -> list[Event | Gap]:
        """Remove and return the queued items (at most C{most}), oldest first."""
        queue = self._queue
        if most is None or most >= len(queue):
            items = list(queue)
            queue.clear()
            return items
        return [queue.popleft() for _ in range(most)]

    def cancel(self) -> None:
        """Stop receiving (on disconnect); idempotent."""
        self._hub._remove(self)

    def _offer(self, item: Event | Gap) -> None:
        queue = self._queue
        was_empty = not queue
        if len(queue) >= self.limit:
            lost = sum(1 for queued in queue if isinstance(queued, Event))
            self.lost += lost
            self._hub._overflowed(lost)
            queue.clear()
            queue.append(Gap(self._hub.origin, item.cursor - 1, "overflow"))
        queue.append(item)
        if was_empty and self.on_ready is not None:
            try:
                self.on_ready(self)
            except Exception:
                _log.failure("A live-stream subscriber failed")


@attrs.define(eq=False)
class Hub:
    """
    The process's live hub; see the module's description.

    @ivar origin: this hub's id: the prefix of its event ids, and the id the
        process's request log puts in its announcements, so that the
        process's own batches are not fetched again.
    @ivar ring_size: how many recent rows are kept for resumption.
    @ivar queue_limit: the default bound of a subscriber's queue.
    @ivar linger: seconds a site's rows from other processes are still
        fetched after its last subscriber left.
    """

    clock: IReactorTime
    ring_size: int = 10000
    queue_limit: int = 1000
    linger: float = 60.0
    metrics: Registry = attrs.field(factory=Registry)
    origin: str = attrs.field(factory=lambda: secrets.token_hex(6))
    _cursor: int = attrs.field(default=0, init=False)
    # (cursor, row), or (cursor, None) where a gap was marked.
    _ring: deque[tuple[int, LogRow | None]] = attrs.field(init=False)
    _by_site: dict[uuid.UUID, tuple[Subscription, ...]] = attrs.field(factory=dict, init=False)
    _every: tuple[Subscription, ...] = attrs.field(default=(), init=False)
    _count: int = attrs.field(default=0, init=False)
    # Since which cursor other processes' rows of a site (or of every site,
    # key EVERY_SITE) have been fetched without a break; and until when a
    # site nobody watches any more is still fetched.
    _covered: dict[uuid.UUID | None, int] = attrs.field(factory=dict, init=False)
    _lingering: dict[uuid.UUID | None, float] = attrs.field(factory=dict, init=False)
    _lost: Any = attrs.field(default=None, init=False)
    _gaps: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if "-" in self.origin or not self.origin:
            raise ValueError("a hub's origin is a non-empty string without '-'")
        if self.queue_limit < 2:
            raise ValueError("a subscriber's queue holds at least 2 items (a gap and an event)")
        self._ring = deque(maxlen=self.ring_size)
        self._lost = self.metrics.counter(
            "veil_live_lost_total", "Live events dropped because a subscriber was too slow")
        self._gaps = self.metrics.counter(
            "veil_live_gaps_total", "Gaps in the live stream, by reason")

    # -- the hot path ----------------------------------------------------------

    def publish(self, row: LogRow) -> None:
        """Hand one request-log row to its subscribers; never waits."""
        self._cursor = cursor = self._cursor + 1
        self._ring.append((cursor, row))
        if not self._count:
            return
        watchers = self._by_site.get(row.site_id, ()) if row.site_id is not None else ()
        every = self._every
        if not watchers and not every:
            return
        event = Event(self.origin, cursor, row)
        for subscription in watchers:
            subscription._offer(event)
        for subscription in every:
            subscription._offer(event)

    @property
    def cursor(self) -> int:
        """The cursor of the latest row or gap (0 before any)."""
        return self._cursor

    @property
    def subscribers(self) -> int:
        return self._count

    def recent(self, site_id: uuid.UUID, most: int) -> list[Event]:
        """
        The ring's latest C{most} rows of C{site_id}, oldest first, as
        events (the live stream's hydration takes the rows not yet in the
        database from here).
        """
        found: list[Event] = []
        if most <= 0:
            return found
        for cursor, row in reversed(self._ring):
            if row is not None and row.site_id == site_id:
                found.append(Event(self.origin, cursor, row))
                if len(found) >= most:
                    break
        found.reverse()
        return found

    # -- subscribers -----------------------------------------------------------

    def subscribe(self, site_id: uuid.UUID | None,
                  on_ready: Callable[[Subscription], object] | None = None,
                  last_event_id: str | None = None, limit: int | None = None) -> Subscription:
        """
        Watch one site (or, with C{None}, every site).

        With C{last_event_id}, the subscription's queue starts with the
        ring's events after it, or with a L{Gap} (reason C{"resume"}) when
        the hub cannot vouch for them; call L{Subscription.take} at once.
        """
        limit = self.queue_limit if limit is None else limit
        if limit < 2:
            raise ValueError("a subscriber's queue holds at least 2 items (a gap and an event)")
        subscription = Subscription(site_id, limit, None, self)
        if last_event_id is not None:
            self._replay(subscription, last_event_id)
        subscription.on_ready = on_ready
        key = site_id
        if not self._watched(key):
            self._covered[key] = self._cursor
        self._lingering.pop(key, None)
        if site_id is None:
            self._every = self._every + (subscription,)
        else:
            self._by_site[site_id] = self._by_site.get(site_id, ()) + (subscription,)
        self._count += 1
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        if not subscription.active:
            return
        subscription.active = False
        subscription._queue.clear()
        self._count -= 1
        key = subscription.site_id
        if key is None:
            self._every = tuple(s for s in self._every if s is not subscription)
            left = bool(self._every)
        else:
            others = tuple(s for s in self._by_site.get(key, ()) if s is not subscription)
            if others:
                self._by_site[key] = others
            else:
                self._by_site.pop(key, None)
            left = bool(others)
        if not left:
            self._lingering[key] = self.clock.seconds() + self.linger

    def _replay(self, subscription: Subscription, last_event_id: str) -> None:
        parsed = parse_event_id(last_event_id)
        ring = self._ring
        if parsed is None or parsed[0] != self.origin or parsed[1] > self._cursor:
            self._resume_gap(subscription)
            return
        after = parsed[1]
        first = ring[0][0] if ring else self._cursor + 1
        if after < first - 1 or not self._complete_since(subscription.site_id, after):
            self._resume_gap(subscription)
            return
        site = subscription.site_id
        for cursor, row in islice(ring, after + 1 - first, None):
            if row is None:
                subscription._offer(Gap(self.origin, cursor, "resume"))
            elif site is None or row.site_id == site:
                subscription._offer(Event(self.origin, cursor, row))

    def _resume_gap(self, subscription: Subscription) -> None:
        self._gaps.inc(reason="resume")
        subscription._offer(Gap(self.origin, self._cursor, "resume"))

    def _complete_since(self, site: uuid.UUID | None, after: int) -> bool:
        """Whether other processes' rows of C{site} were fetched from C{after} on."""
        for key in {site, EVERY_SITE}:
            if self._watched(key) and self._covered.get(key, after + 1) <= after:
                return True
        return False

    # -- other processes' rows (for PeerFeed) ---------------------------------

    def _watched(self, key: uuid.UUID | None) -> bool:
        """Whether C{key}'s rows are fetched now (subscribers, or lingering)."""
        if (self._every if key is None else key in self._by_site):
            return True
        until = self._lingering.get(key)
        if until is not None and until > self.clock.seconds():
            return True
        self._lingering.pop(key, None)
        self._covered.pop(key, None)
        return False

    def wanted(self, sites: Iterable[uuid.UUID] | None) -> frozenset[uuid.UUID] | None:
        """
        Which of another process's rows to fetch, given the sites its batch
        touched (C{None}: not listed).

        @return: C{None} for none, an empty set for every row, or the sites
            whose rows to fetch.
        """
        now = self.clock.seconds()
        for key, until in list(self._lingering.items()):
            if until <= now:
                self._watched(key)
        if self._watched(EVERY_SITE):
            return frozenset()
        watched = set(self._by_site)
        watched.update(key for key in self._lingering if key is not None)
        if sites is not None:
            watched.intersection_update(sites)
        return frozenset(watched) if watched else None

    def mark_gap(self, reason: str) -> None:
        """
        Rows may have been missed (from other processes): say so to every
        subscriber, and to any that resumes from before this point.
        """
        self._cursor = cursor = self._cursor + 1
        self._ring.append((cursor, None))
        self._gaps.inc(reason=reason)
        if not self._count:
            return
        gap = Gap(self.origin, cursor, reason)
        for watchers in list(self._by_site.values()):
            for subscription in watchers:
                subscription._offer(gap)
        for subscription in self._every:
            subscription._offer(gap)

    def _overflowed(self, lost: int) -> None:
        self._lost.inc(lost)
        self._gaps.inc(reason="overflow")
