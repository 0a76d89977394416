"""
The live stream: C{GET /api/v1/stream?site_id=…}, every request of a site
as it happens, as Server-Sent Events.

L{LiveStream} is a C{twisted.web} resource; the dashboard mounts it and
gives it what it cannot know: who the caller is (C{authenticate}) and
whether they may see the site (C{may_view}).

The wire format (UTF-8, one blank line after each event)::

    retry: 3000                       once, at the start
    event: hydrate                    the most recent rows of the site, oldest
    id: 5f0c1a2b3c4d-7-1041           first: replace whatever is shown
    data: {"reason": "start", "rows": [{...}, ...]}
    event: request                    one request, as it happens
    id: 5f0c1a2b3c4d-7-1042
    data: {...}                       (veil.live.hub.row_data)
    event: gap                        rows may be missing from here on (the
    id:                               client fell behind, or the server
    data: {"reason": "overflow", "lost": 120}   could not vouch); a hydrate follows
    event: error                      the rows could not be read; retrying
    data: {"code": "hydration_failed", "message": "..."}
    event: end                        the stream is over (revoked session,
    data: {"reason": "revoked"}       shut-down): do not reconnect
    : keep-alive                      every 15 s, to keep proxies from timing out

Event ids.  The hub numbers every row it sees (its I{cursor}; its own and
other processes' rows, see L{veil.live.hub}), and rows reach it before
they reach the database, where they get their ids only when their batch is
written.  A stream's ids are therefore positions in the hub: C{ORIGIN-S-C},
the hub's origin, the hydration I{snapshot} C{S} the stream started from,
and the hub cursor C{C} it has delivered up to.  The C{hydrate} event
carries the cursor it joins the live events at, so nothing is sent twice
and nothing is skipped between the two:

  - Hydration subscribes to the hub first (queueing every row after cursor
    C{c0}), then reads the site's most recent rows from the database, adds
    the rows still in the hub's ring up to C{c0} that the database does not
    have yet (this process's rows waiting to be written), keeps the latest,
    and then delivers the queued rows that are not among them.  Rows are
    matched by their start time and request id (the proxy's ids are unique
    per process and random across processes).
  - A row of the snapshot can still reach the hub later (another process's
    row, written before the query but announced after C{c0}).  The
    snapshot's keys are kept, while the stream lives and for the hub's
    C{linger} after, and every row delivered is checked against them.
  - On reconnection (C{Last-Event-ID}, or C{?after=} for clients that
    cannot set headers), the hub replays its ring after C{C} when the id is
    its own, the snapshot is still known and the ring can vouch for every
    row since (L{veil.live.hub.Hub.subscribe}): then the resumption is
    exact.  Otherwise (another process, too long ago) the stream says
    C{gap} and hydrates again.  A resumption cannot be computed from the
    database: rows are logged with their start time when they end, and
    their ids are drawn when their batch is written, so neither orders rows
    as the stream delivered them.

Bounds.  Each stream's queue in the hub is bounded (C{queue_limit}); a
stream that falls behind gets a C{gap} and a new hydration (at most one per
C{rehydrate_interval}).  The stream is a push producer on its HTTP
connection: when the transport's buffer is full it stops taking rows (the
hub's bound then applies), sends no keep-alives, and a client that reads
nothing for C{stall_timeout} is disconnected.  Streams are capped per
process and per user (429).  Hydrations of one site that start in the same
reactor turn share one query.  Rows are encoded once per delivery round,
however many streams get them, and deliveries are gathered for
C{coalesce} seconds.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import attrs
import psycopg
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from veil.errors import StoreUnavailable, VeilError
from veil.live.hub import Event, Gap, Hub, Subscription, row_data
from veil.logs import Throttle
from veil.metrics import Registry
from veil.store.logrows import LogRow

_log = Logger()

_HEADERS = {
    b"content-type": b"text/event-stream; charset=utf-8",
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    # Proxies in front (nginx) must not buffer the stream.
    b"x-accel-buffering": b"no",
}
_KEEPALIVE = b": keep-alive\n\n"


@attrs.frozen
class StreamId:
    """A stream's event id: C{ORIGIN-SNAPSHOT-CURSOR} (see the module's description)."""

    origin: str
    snapshot: int
    cursor: int

    def text(self) -> str:
        return f"{self.origin}-{self.snapshot}-{self.cursor}"

    @classmethod
    def parse(cls, text: str) -> StreamId | None:
        """The id in C{text}, or C{None} if it is not one."""
        parts = text.strip().split("-")
        if len(parts) != 3 or len(text) > 80:
            return None
        origin, snapshot, cursor = parts
        if not (origin.isalnum() and origin.isascii() and snapshot.isdigit()
                and cursor.isdigit() and len(snapshot) <= 18 and len(cursor) <= 18):
            return None
        return cls(origin, int(snapshot), int(cursor))


def row_key(row: LogRow) -> int | None:
    """What matches a row of the hub with the same row read from the database."""
    return None if row.request_id is None else hash((row.ts, row.request_id))


def _event(kind: bytes, data: bytes, event_id: bytes | None = None) -> bytes:
    if event_id is None:
        return b"event: " + kind + b"\ndata: " + data + b"\n\n"
    return b"event: " + kind + b"\nid: " + event_id + b"\ndata: " + data + b"\n\n"


def _json(value: Any) -> bytes:
    # ASCII only: nothing in the data can end an SSE line.
    return json.dumps(value, separators=(",", ":")).encode("ascii")


@attrs.define(eq=False)
class _Snapshot:
    """The rows a hydration sent (their keys), for the streams that resume from it."""

    site_id: uuid.UUID
    keys: frozenset[int]
    holders: int = 0
    expires: float | None = None


@attrs.define(eq=False)
class _Round:
    """One delivery round's encodings, shared by every stream of the round."""

    encoded: dict[int, tuple[Event, int | None, bytes]] = attrs.field(factory=dict)

    def get(self, event: Event) -> tuple[int | None, bytes]:
        """The event's key, and what follows the id's prefix: the cursor and the data."""
        found = self.encoded.get(id(event))
        if found is None:
            # The event is kept with its encoding, so its id() stays its own.
            tail = b"%d\ndata: %s\n\n" % (event.cursor, _json(event.data()))
            found = self.encoded[id(event)] = (event, row_key(event.row), tail)
        return found[1], found[2]


@implementer(IPushProducer)
class _Stream:
    """One client's stream (see L{LiveStream})."""

    def __init__(self, live: LiveStream, request: IRequest, site_id: uuid.UUID,
                 user: Hashable, keys: frozenset[Hashable]) -> None:
        self.live = live
        self.request = request
        self.site_id = site_id
        self.user = user
        self.keys = keys
        self.state = "starting"   # hydrating, waiting, live, closed
        self.paused = False
        self.subscription: Subscription | None = None
        self.snapshot_id = 0
        self.snapshot: _Snapshot | None = None
        self.last_hydration: float | None = None
        self.lost_seen = 0
        self.failures = 0
        self._timer: IDelayedCall | None = None   # a hydration waiting
        self._stall: IDelayedCall | None = None

    # -- life --------------------------------------------------------------------

    def open(self, resume: StreamId | None, claimed: bool) -> None:
        """Start: the headers, then a resumption from the hub or a hydration."""
        live = self.live
        request = self.request
        request.setResponseCode(200)
        for name, value in _HEADERS.items():
            request.setHeader(name, value)
        request.registerProducer(self, True)
        request.write(b"retry: %d\n\n" % live.retry_ms)
        snapshot = None
        if resume is not None and resume.origin == live.hub.origin:
            snapshot = live._snapshots.get(resume.snapshot)
            if snapshot is not None and snapshot.site_id != self.site_id:
                snapshot = None
        if snapshot is not None and resume is not None:
            live._hold(snapshot)
            self.snapshot, self.snapshot_id = snapshot, resume.snapshot
            self.subscription = live.hub.subscribe(
                self.site_id, self._ready, f"{resume.origin}-{resume.cursor}",
                limit=live.queue_limit)
            self.state = "live"
            live.metrics_resumed.inc()
            self._ready(self.subscription)
            return
        self.subscription = live.hub.subscribe(self.site_id, self._ready,
                                               limit=live.queue_limit)
        if claimed:
            self.hydrate("resume", gap=True)
        else:
            self.hydrate("start")

    def close(self) -> None:
        """Stop receiving and forget the stream; idempotent."""
        if self.state == "closed":
            return
        self.state = "closed"
        for call in (self._timer, self._stall):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._stall = None
        if self.subscription is not None:
            self.subscription.cancel()
        if self.snapshot is not None:
            self.live._release(self.snapshot)
            self.snapshot = None
        self.live._forget(self)

    def end(self, reason: str) -> None:
        """Tell the client the stream is over, and finish the response."""
        if self.state == "closed":
            return
        request = self.request
        self.close()
        try:
            request.write(_event(b"end", _json({"reason": reason})))
            request.unregisterProducer()
            request.finish()
        except RuntimeError:
            pass  # the connection went first

    # -- IPushProducer (the HTTP connection's back-pressure) -------------------

    def pauseProducing(self) -> None:
        if self.state == "closed" or self.paused:
            return
        self.paused = True
        self._stall = self.live.clock.callLater(self.live.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        if self.state == "live" and self.subscription is not None and len(self.subscription):
            self.live._schedule(self)

    def stopProducing(self) -> None:
        self.close()

    def _stalled(self) -> None:
        self._stall = None
        _log.info("Live stream: a client read nothing for {seconds:.0f} s; disconnected",
                  seconds=self.live.stall_timeout)
        self.live.metrics_stalled.inc()
        transport = self.request.transport
        self.close()
        if transport is not None:
            transport.abortConnection()

    # -- writing -----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.state != "closed":
            self.request.write(data)

    def keepalive(self) -> None:
        if self.state != "closed" and not self.paused:
            self._write(_KEEPALIVE)

    def _ready(self, subscription: Subscription) -> None:
        if self.state == "live" and not self.paused:
            self.live._schedule(self)

    def deliver(self, round: _Round) -> None:
        """Send what the hub has queued (at most C{max_items} now)."""
        subscription = self.subscription
        if self.state != "live" or self.paused or subscription is None:
            return
        items = subscription.take(self.live.max_items)
        keys = self.snapshot.keys if self.snapshot is not None else frozenset()
        head = f"event: request\nid: {self.live.hub.origin}-{self.snapshot_id}-".encode("ascii")
        out: list[bytes] = []
        for item in items:
            if isinstance(item, Gap):
                if out:
                    self._write(b"".join(out))
                self._gap(item.reason)
                return
            key, tail = round.get(item)
            if key is not None and key in keys:
                continue
            out.append(head)
            out.append(tail)
        if out:
            self._write(b"".join(out))
        if len(subscription) and self.state == "live":
            self.live._schedule(self)

    def _gap(self, reason: str) -> None:
        subscription = self.subscription
        lost = 0
        if subscription is not None:
            lost = subscription.lost - self.lost_seen
            self.lost_seen = subscription.lost
        self.hydrate(reason, gap=True, lost=lost)

    # -- hydration -----------------------------------------------------------------

    def hydrate(self, reason: str, gap: bool = False, lost: int = 0) -> None:
        """Send a C{gap} (if C{gap}), then the site's most recent rows."""
        if self.state == "closed":
            return
        live = self.live
        if gap:
            self._write(_event(b"gap", _json({"reason": reason, "lost": lost}), b""))
        if self.subscription is not None:
            self.subscription.take()
        now = live.clock.seconds()
        if self.last_hydration is not None and \
                now - self.last_hydration < live.rehydrate_interval:
            # Falling behind again at once: wait, dropping what comes meanwhile.
            self.state = "waiting"
            self._timer = live.clock.callLater(
                self.last_hydration + live.rehydrate_interval - now, self._hydrate_now, reason)
            return
        self._hydrate_now(reason)

    def _hydrate_now(self, reason: str) -> None:
        self._timer = None
        if self.state == "closed":
            return
        live = self.live
        self.state = "hydrating"
        self.last_hydration = live.clock.seconds()
        if self.subscription is not None:
            self.subscription.take()
        start = live.hub.cursor
        live.metrics_hydrations.inc(reason=reason)
        d = live._query(self.site_id)
        d.addCallbacks(self._hydrated, self._hydration_failed,
                       callbackArgs=(start, reason), errbackArgs=(reason,))

    def _hydrated(self, found: tuple[list[LogRow], set[int | None]], start: int,
                  reason: str) -> None:
        if self.state != "hydrating" or self.subscription is None:
            return
        live = self.live
        self.failures = 0
        rows, stored = found
        most = live.hydrate_rows
        # This process's rows still on their way to the database.
        pending = [e.row for e in live.hub.recent(self.site_id, most)
                   if e.cursor <= start and row_key(e.row) not in stored]
        merged = sorted(rows + pending, key=lambda r: r.ts)[-most:]
        items = self.subscription.take()
        if any(isinstance(item, Gap) for item in items):
            gap = next(item for item in items if isinstance(item, Gap))
            self.hydrate(gap.reason, gap=True)
            return
        keys = frozenset(k for k in map(row_key, merged) if k is not None)
        snapshot_id, snapshot = live._snapshot(self.site_id, keys)
        if self.snapshot is not None:
            live._release(self.snapshot)
        self.snapshot, self.snapshot_id = snapshot, snapshot_id
        through = items[-1].cursor if items else start
        prefix = f"{live.hub.origin}-{snapshot_id}-".encode("ascii")
        out = [_event(b"hydrate",
                      _json({"reason": reason, "rows": [row_data(r) for r in merged]}),
                      prefix + str(through).encode("ascii"))]
        for item in items:
            assert isinstance(item, Event)
            if row_key(item.row) not in keys:
                out.append(_event(b"request", _json(item.data()),
                                  prefix + str(item.cursor).encode("ascii")))
        self.state = "live"
        self._write(b"".join(out))

    def _hydration_failed(self, failure: Failure, reason: str) -> None:
        # Logged once per query, by LiveStream._issue.
        if self.state != "hydrating":
            return
        live = self.live
        self.failures += 1
        delay = min(30.0, 2.0 ** min(self.failures, 5))
        self._write(_event(b"error", _json({
            "code": "hydration_failed",
            "message": "The request log cannot be read just now; retrying."})))
        self.state = "waiting"
        self._timer = live.clock.callLater(delay, self._hydrate_now, reason)


def _default_request_id(request: IRequest) -> str:
    found = request.responseHeaders.getRawHeaders(b"x-request-id")
    if found:
        return found[0].decode("ascii", "replace")
    request_id = secrets.token_hex(8)
    request.setHeader(b"x-request-id", request_id.encode("ascii"))
    return request_id


class LiveStream(Resource):
    """
    C{GET ?site_id=…[&after=…]}: the live stream of one site (see the
    module's description).

    @param hub: the process's L{Hub}.
    @param recent_rows: C{(site_id, n)} to the site's C{n} most recent rows
        from the database, newest first (L{veil.store.logquery.RequestLogQueries.latest},
        or anything giving records with a C{log_row()}, or L{LogRow}s).
    @param authenticate: the request to its principal, or C{None} (401).
    @param may_view: C{(principal, site_id)} to whether they may watch the
        site; C{False} answers 404, as for a site that does not exist.
    @param user_key: the principal to the key its streams are counted
        under for C{max_per_user} (default: the principal itself).
    @param revocation_keys: the principal to the keys that
        L{close_streams_of} can end its streams by (default: its user key),
        for example its user, its session and its API token.
    @param request_id: the request to its id for error bodies (default: the
        C{X-Request-Id} response header, set if absent).
    """

    isLeaf = True

    def __init__(self, hub: Hub, recent_rows: Callable[[uuid.UUID, int], Deferred[Any]],
                 authenticate: Callable[[IRequest], Deferred[Any]],
                 may_view: Callable[[Any, uuid.UUID], Deferred[bool]],
                 clock: IReactorTime, *,
                 user_key: Callable[[Any], Hashable] = lambda principal: principal,
                 revocation_keys: Callable[[Any], Iterable[Hashable]] | None = None,
                 request_id: Callable[[IRequest], str] = _default_request_id,
                 metrics: Registry | None = None, hydrate_rows: int = 100,
                 queue_limit: int = 500, max_items: int = 200, keepalive: float = 15.0,
                 retry_ms: int = 3000, max_streams: int = 1000, max_per_user: int = 8,
                 stall_timeout: float = 60.0, coalesce: float = 0.05,
                 rehydrate_interval: float = 2.0) -> None:
        super().__init__()
        self.hub = hub
        self.recent_rows = recent_rows
        self.authenticate = authenticate
        self.may_view = may_view
        self.clock = clock
        self.user_key = user_key
        self.revocation_keys = revocation_keys or (lambda principal: (user_key(principal),))
        self.request_id = request_id
        self.hydrate_rows = hydrate_rows
        self.queue_limit = queue_limit
        self.max_items = max_items
        self.keepalive = keepalive
        self.retry_ms = retry_ms
        self.max_streams = max_streams
        self.max_per_user = max_per_user
        self.stall_timeout = stall_timeout
        self.coalesce = coalesce
        self.rehydrate_interval = rehydrate_interval
        self._streams: set[_Stream] = set()
        self._per_user: dict[Hashable, int] = {}
        self._by_key: dict[Hashable, set[_Stream]] = {}
        self._ready: dict[_Stream, None] = {}
        self._round: IDelayedCall | None = None
        self._keepalive: LoopingCall | None = None
        self._queries: dict[uuid.UUID, list[Deferred[Any]]] = {}
        self._failures = Throttle(clock, 60.0)
        self._snapshots: OrderedDict[int, _Snapshot] = OrderedDict()
        self._next_snapshot = 0
        metrics = metrics if metrics is not None else Registry()
        self.metrics_opened = metrics.counter(
            "veil_live_streams_opened_total", "Live streams opened")
        self.metrics_refused = metrics.counter(
            "veil_live_streams_refused_total", "Live streams refused, by reason")
        self.metrics_resumed = metrics.counter(
            "veil_live_streams_resumed_total", "Live streams resumed from the hub's ring")
        self.metrics_hydrations = metrics.counter(
            "veil_live_hydrations_total", "Live stream hydrations, by reason")
        self.metrics_stalled = metrics.counter(
            "veil_live_streams_stalled_total", "Live streams closed because the client read"
            " nothing")

    # -- what the dashboard calls ------------------------------------------------

    @property
    def streams(self) -> int:
        """Open streams in this process."""
        return len(self._streams)

    def streams_of(self, user: Hashable) -> int:
        return self._per_user.get(user, 0)

    def close_streams_of(self, key: Hashable, site_id: uuid.UUID | None = None) -> int:
        """
        End at once every stream whose principal has C{key} among its
        revocation keys (of C{site_id} only, if given): an C{end} event
        (reason C{revoked}), then the response ends.  Returns how many.
        """
        found = [s for s in self._by_key.get(key, ())
                 if site_id is None or s.site_id == site_id]
        for stream in found:
            stream.end("revoked")
        return len(found)

    def close_all(self, reason: str = "shutdown") -> None:
        """End every stream (for shut-down: clients reconnect elsewhere)."""
        for stream in list(self._streams):
            stream.end(reason)

    # -- HTTP ------------------------------------------------------------------------

    def render(self, request: IRequest) -> Any:
        if request.method != b"GET":
            request.setHeader(b"allow", b"GET")
            return self._error(request, 405, "method_not_allowed",
                               "The live stream is read with GET.")
        return self.render_GET(request)

    def render_GET(self, request: IRequest) -> Any:
        site_text = _arg(request, b"site_id")
        try:
            site_id = uuid.UUID(site_text or "")
        except ValueError:
            return self._error(request, 400, "invalid_request", "The request is not valid.",
                               {"fields": [{"field": "site_id", "code": "invalid",
                                            "message": "A site id (a UUID) is required."}]})
        after = _arg(request, b"after")
        resume: StreamId | None = None
        claimed = False
        if after is not None:
            resume = StreamId.parse(after)
            if resume is None:
                return self._error(request, 400, "invalid_request", "The request is not valid.",
                                   {"fields": [{"field": "after", "code": "invalid",
                                                "message": "Not an event id of this stream."}]})
            claimed = True
        else:
            header = request.getHeader(b"last-event-id")
            if header:
                claimed = True
                resume = StreamId.parse(header.decode("ascii", "replace"))
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        d = maybeDeferred(self.authenticate, request)
        d.addCallback(self._authenticated, request, site_id, resume, claimed, gone)
        d.addErrback(self._failed, request, gone)
        return NOT_DONE_YET

    def _authenticated(self, principal: Any, request: IRequest, site_id: uuid.UUID,
                       resume: StreamId | None, claimed: bool, gone: list[bool]) -> Any:
        if gone:
            return None
        if principal is None:
            self.metrics_refused.inc(reason="unauthenticated")
            self._finish_error(request, 401, "unauthenticated", "Sign in to watch this site.")
            return None
        d = maybeDeferred(self.may_view, principal, site_id)
        d.addCallback(self._authorized, principal, request, site_id, resume, claimed, gone)
        return d

    def _authorized(self, allowed: bool, principal: Any, request: IRequest,
                    site_id: uuid.UUID, resume: StreamId | None, claimed: bool,
                    gone: list[bool]) -> None:
        if gone:
            return
        if not allowed:
            self.metrics_refused.inc(reason="not_found")
            self._finish_error(request, 404, "not_found", "There is no such site.")
            return
        user = self.user_key(principal)
        if len(self._streams) >= self.max_streams:
            self.metrics_refused.inc(reason="process_cap")
            request.setHeader(b"retry-after", b"30")
            self._finish_error(request, 429, "too_many_streams",
                               "This server has as many live streams open as it allows;"
                               " try again shortly.",
                               {"limit": self.max_streams, "scope": "process"})
            return
        if self._per_user.get(user, 0) >= self.max_per_user:
            self.metrics_refused.inc(reason="user_cap")
            request.setHeader(b"retry-after", b"30")
            self._finish_error(request, 429, "too_many_streams",
                               "You have as many live streams open as you may; close one"
                               " (another tab?) and try again.",
                               {"limit": self.max_per_user, "scope": "user"})
            return
        keys = frozenset(self.revocation_keys(principal))
        stream = _Stream(self, request, site_id, user, keys)
        self._streams.add(stream)
        self._per_user[user] = self._per_user.get(user, 0) + 1
        for key in keys:
            self._by_key.setdefault(key, set()).add(stream)
        request.notifyFinish().addBoth(lambda _: stream.close())
        self.metrics_opened.inc()
        if self._keepalive is None:
            self._keepalive = LoopingCall(self._keepalives)
            self._keepalive.clock = self.clock
            self._keepalive.start(self.keepalive, now=False)
        stream.open(resume, claimed)

    def _failed(self, failure: Failure, request: IRequest, gone: list[bool]) -> None:
        if request.startedWriting:
            # The stream had begun: a bug past that point ends it.
            _log.failure("Live stream: starting a stream failed", failure)
            if not gone:
                request.finish()
            return
        if failure.check(StoreUnavailable):
            _log.warn("Live stream: cannot authorize ({error})", error=failure.value)
            status, code, message = 503, "store_unavailable", "The database is unavailable."
        else:
            _log.failure("Live stream: authorizing a request failed", failure)
            status, code, message = 500, "internal_error", "Something went wrong."
        if not gone:
            self._finish_error(request, status, code, message)

    def _error(self, request: IRequest, status: int, code: str, message: str,
               detail: object = None) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        body = {"error": {"code": code, "message": message, "detail": detail},
                "request_id": self.request_id(request)}
        return json.dumps(body).encode("utf-8") + b"\n"

    def _finish_error(self, request: IRequest, status: int, code: str, message: str,
                      detail: object = None) -> None:
        request.write(self._error(request, status, code, message, detail))
        request.finish()

    # -- the streams' shared work --------------------------------------------------

    def _forget(self, stream: _Stream) -> None:
        if stream not in self._streams:
            return
        self._streams.discard(stream)
        self._ready.pop(stream, None)
        left = self._per_user.get(stream.user, 1) - 1
        if left:
            self._per_user[stream.user] = left
        else:
            self._per_user.pop(stream.user, None)
        for key in stream.keys:
            holders = self._by_key.get(key)
            if holders is not None:
                holders.discard(stream)
                if not holders:
                    del self._by_key[key]
        if not self._streams and self._keepalive is not None:
            self._keepalive.stop()
            self._keepalive = None

    def _keepalives(self) -> None:
        for stream in list(self._streams):
            stream.keepalive()

    def _schedule(self, stream: _Stream) -> None:
        self._ready[stream] = None
        if self._round is None:
            self._round = self.clock.callLater(self.coalesce, self._deliver)

    def _deliver(self) -> None:
        self._round = None
        ready, self._ready = self._ready, {}
        shared = _Round()
        for stream in ready:
            try:
                stream.deliver(shared)
            except Exception:  # noqa: BLE001 - one stream's bug must not stop the others
                _log.failure("Live stream: delivering to a stream failed")
                stream.close()

    def _query(self, site_id: uuid.UUID) -> Deferred[tuple[list[LogRow], set[int | None]]]:
        """
        The site's most recent rows and their keys, for a hydration; the
        hydrations of one site that start in the same reactor turn share
        one query (each gets its own Deferred).
        """
        mine: Deferred[tuple[list[LogRow], set[int | None]]] = Deferred()
        waiting = self._queries.get(site_id)
        if waiting is None:
            waiting = self._queries[site_id] = []
            self.clock.callLater(0, self._issue, site_id)
        waiting.append(mine)
        return mine

    def _issue(self, site_id: uuid.UUID) -> None:
        waiting = self._queries.pop(site_id)
        d = maybeDeferred(self.recent_rows, site_id, self.hydrate_rows)
        d.addCallback(_rows_and_keys)

        def fan_out(result: Any) -> None:
            if isinstance(result, Failure):
                if result.check(VeilError, psycopg.Error):
                    self._failures.emit(
                        _log.warn, "hydration", "Live stream: reading the recent rows failed"
                        " ({error}){suppressed_text}", error=result.value)
                else:
                    _log.failure("Live stream: reading the recent rows failed", result)
            for each in waiting:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        d.addBoth(fan_out)

    def _snapshot(self, site_id: uuid.UUID, keys: frozenset[int]) -> tuple[int, _Snapshot]:
        self._next_snapshot += 1
        snapshot = _Snapshot(site_id, keys)
        self._snapshots[self._next_snapshot] = snapshot
        self._hold(snapshot)
        self._prune()
        return self._next_snapshot, snapshot

    def _hold(self, snapshot: _Snapshot) -> None:
        snapshot.holders += 1
        snapshot.expires = None

    def _release(self, snapshot: _Snapshot) -> None:
        snapshot.holders -= 1
        if snapshot.holders <= 0:
            snapshot.expires = self.clock.seconds() + self.hub.linger

    def _prune(self) -> None:
        """Forget snapshots nobody holds once expired, or the oldest past the bound."""
        now = self.clock.seconds()
        bound = 2 * self.max_streams
        for number, snapshot in list(self._snapshots.items()):
            if snapshot.holders > 0:
                continue
            if (snapshot.expires is not None and snapshot.expires <= now) or \
                    len(self._snapshots) > bound:
                del self._snapshots[number]


def _rows_and_keys(records: Sequence[Any]) -> tuple[list[LogRow], set[int | None]]:
    """Records (newest first) as log rows oldest first, and their keys."""
    rows = [r if isinstance(r, LogRow) else r.log_row() for r in reversed(records)]
    return rows, {row_key(r) for r in rows}


def _arg(request: IRequest, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace")
